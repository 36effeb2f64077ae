"""Caffe's ``im2col`` (and the window geometry shared by the segaware ops).

Shapes (NCHW, 2 spatial axes only):

* input ``x``: ``(N, C, H, W)``;
* :func:`im2col` output: ``(N, C*kh*kw, Ho, Wo)`` with ``Ho, Wo`` from Caffe's
  convolution arithmetic ``(in + 2*pad - (dilation*(k-1)+1)) // stride + 1``.

Channel ``(c*kh + i)*kw + j`` of the output holds, at output position ``(y, x)``,
the input pixel ``x[n, c, y*sh - ph + i*dh, x*sw - pw + j*dw]`` or 0 when that
position is outside the image (LAYERS.md §2.1).  This is exactly the ordering
of :func:`torch.nn.functional.unfold` (channel-major, kernel-offset-minor), and
the gradient torch derives for ``unfold`` is ``fold``, i.e. Caffe's ``col2im``
(out-of-image entries dropped, overlapping windows summed), so no custom
autograd Function is needed here.

The helpers :func:`output_size`, :func:`centre_tap` and :func:`window_masks`
(defined in :mod:`caffe_compat.ops.window`, re-exported here) describe the "centre / neighbour" geometry used by Im2dist, Im2parity and the
CRF (LAYERS.md §2.2): for output position ``(y, x)`` and kernel offset
``k = i*kw + j`` the neighbour is at ``(y*sh - ph + i*dh, x*sw - pw + j*dw)``
and the centre at ``(y*sh - ph + (kh//2)*dh, x*sw - pw + (kw//2)*dw)``
(integer ``kh//2``: for even kernels the "centre" is the lower-right of the
two middle taps, as in the fork).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ShapeError
from .window import centre_outside_any, centre_tap, output_size, unfold_args, window_masks  # noqa: F401

__all__ = ["output_size", "centre_tap", "window_masks", "centre_outside_any", "unfold_args", "im2col"]


def im2col(x: torch.Tensor, geometry) -> torch.Tensor:
    """Caffe ``im2col``: ``(N, C, H, W) -> (N, C*kh*kw, Ho, Wo)``, zero outside the image.

    Differentiable through torch autograd (its backward is Caffe's ``col2im``).
    Works on any device and floating dtype, including ``meta``.
    """
    if x.dim() != 4:
        raise ShapeError(f"im2col: expected a 4-D (N, C, H, W) input, got shape {list(x.shape)}")
    n, c, h, w = (int(d) for d in x.shape)
    ho, wo = output_size(h, w, geometry)
    k = geometry.taps
    if x.is_meta:
        return x.new_empty((n, c * k, ho, wo))
    if x.numel() == 0:
        # unfold refuses zero-size channel/spatial dims; every column is padding (0).
        # ``x.sum() * 0`` keeps the output connected to ``x`` for autograd.
        return x.new_zeros((n, c * k, ho, wo)) + x.sum() * 0
    return F.unfold(x, **unfold_args(geometry)).view(n, c * k, ho, wo)
