"""Boundary bands of label maps: the "trimap" measure of segmentation accuracy near object edges.

Segmentation papers (the paper's PASCAL VOC experiments among them) report, besides
mIoU, the accuracy of the pixels that lie within ``r`` pixels of a ground-truth
boundary, for a few radii ``r``: the part of the image where sharper predictions
show.  This module defines that band precisely:

* a **boundary pixel** is a pixel whose value differs from the value of at least
  one of its 4-neighbours (up, down, left, right) in the ground-truth map; the
  ignore value (255) counts as a value of its own, so the pixels on both sides of
  a void band are boundary pixels (on VOC every object edge lies in a void band);
  both pixels of a differing pair are boundary pixels, so the edge between two
  regions is two pixels wide;
* the **band of radius r** is every pixel whose centre is at Euclidean distance
  ``<= r`` from the centre of a boundary pixel (``r = 0``: the boundary pixels
  themselves); an image without a boundary has an empty band.

The evaluation (:func:`caffe_compat.pipeline.voc_eval.evaluate` with
``boundary_radii``) then counts, per radius, a confusion matrix over the band's
non-ignored pixels only and derives pixel accuracy and mIoU from it with the same
formulas as the whole-image scores.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import DataError


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: True where a 4-neighbour of the pixel has another value.

    Args:
        labels: ``(H, W)`` integer label map (any values; 255 is just another value here).
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise DataError(f"label map must be 2-D (H, W), got shape {tuple(lab.shape)}")
    edge = np.zeros(lab.shape, dtype=bool)
    dy = lab[1:, :] != lab[:-1, :]
    dx = lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge


def boundary_band(labels: np.ndarray, radius: float) -> np.ndarray:
    """``(H, W)`` bool: pixels within ``radius`` pixels (Euclidean, centre to centre) of a boundary pixel.

    Args:
        labels: ``(H, W)`` label map (see :func:`label_boundaries`).
        radius: band half-width in pixels, ``>= 0``.
    """
    r = float(radius)
    if not np.isfinite(r) or r < 0:
        raise DataError(f"boundary radius must be a finite number >= 0, got {radius!r}")
    edge = label_boundaries(labels)
    if not edge.any():
        return edge
    # distance of every pixel to the nearest boundary pixel (0 on the boundary itself)
    dist = ndimage.distance_transform_edt(~edge)
    return dist <= r


__all__ = ["label_boundaries", "boundary_band"]
