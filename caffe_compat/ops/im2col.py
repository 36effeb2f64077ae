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
describe the "centre / neighbour" geometry used by Im2dist, Im2parity and the
CRF (LAYERS.md §2.2): for output position ``(y, x)`` and kernel offset
``k = i*kw + j`` the neighbour is at ``(y*sh - ph + i*dh, x*sw - pw + j*dw)``
and the centre at ``(y*sh - ph + (kh//2)*dh, x*sw - pw + (kw//2)*dw)``
(integer ``kh//2``: for even kernels the "centre" is the lower-right of the
two middle taps, as in the fork).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from ..errors import ShapeError

__all__ = ["output_size", "centre_tap", "window_masks", "centre_outside_any", "unfold_args", "im2col"]


def output_size(h: int, w: int, geometry, what: str = "im2col") -> Tuple[int, int]:
    """Output spatial size ``(Ho, Wo)`` of a window op on an ``h x w`` image.

    Raises :class:`ShapeError` when a dimension would be ``<= 0`` (the fork does
    not check this cleanly).
    """
    ho, wo = geometry.output_size(int(h), int(w))
    if ho <= 0 or wo <= 0:
        raise ShapeError(
            f"{what}: input {h}x{w} is too small for kernel {list(geometry.kernel)}, "
            f"dilation {list(geometry.dilation)}, pad {list(geometry.pad)}, stride "
            f"{list(geometry.stride)}: output size would be {ho}x{wo}")
    return ho, wo


def centre_tap(geometry) -> int:
    """Index ``k = (kh//2)*kw + kw//2`` of the centre kernel offset."""
    kh, kw = geometry.kernel
    return (kh // 2) * kw + kw // 2


def unfold_args(geometry) -> dict:
    """Keyword arguments of :func:`torch.nn.functional.unfold` / ``fold`` for ``geometry``."""
    return dict(kernel_size=tuple(geometry.kernel), dilation=tuple(geometry.dilation),
                padding=tuple(geometry.pad), stride=tuple(geometry.stride))


def window_masks(h: int, w: int, geometry, device=None):
    """Where the centre and the neighbours of every window lie inside the image.

    Args:
        h, w: input spatial size.
        geometry: a :class:`~caffe_compat.layers.geometry.ConvGeometry`.
        device: device of the returned masks.

    Returns:
        ``(centre_inside, neighbour_inside)``: bool tensors of shapes
        ``(Ho, Wo)`` and ``(K, Ho, Wo)`` (``K = kh*kw``, row-major offsets).
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry.kernel, geometry.stride, geometry.pad, geometry.dilation
    ho, wo = output_size(h, w, geometry)
    rows = (torch.arange(ho, device=device) * sh - ph)[None, :] + (torch.arange(kh, device=device) * dh)[:, None]
    cols = (torch.arange(wo, device=device) * sw - pw)[None, :] + (torch.arange(kw, device=device) * dw)[:, None]
    row_in = (rows >= 0) & (rows < h)  # (kh, Ho)
    col_in = (cols >= 0) & (cols < w)  # (kw, Wo)
    neighbour = (row_in[:, None, :, None] & col_in[None, :, None, :]).reshape(kh * kw, ho, wo)
    centre = row_in[kh // 2][:, None] & col_in[kw // 2][None, :]
    return centre, neighbour


def centre_outside_any(h: int, w: int, geometry) -> bool:
    """True if some output column's centre lies outside the image (pad > (k//2)*dilation, ...).

    Pure Python integer arithmetic (usable during the meta-device shape pass).
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry.kernel, geometry.stride, geometry.pad, geometry.dilation
    ho, wo = output_size(h, w, geometry)
    first_r, last_r = -ph + (kh // 2) * dh, (ho - 1) * sh - ph + (kh // 2) * dh
    first_c, last_c = -pw + (kw // 2) * dw, (wo - 1) * sw - pw + (kw // 2) * dw
    return first_r < 0 or last_r >= h or first_c < 0 or last_c >= w


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
