"""The fork's ``Im2parity``: does each window neighbour have the centre's label?

Shapes (NCHW, 2 spatial axes):

* input ``labels``: ``(N, C, H, W)`` float label maps (C = 1 in the configs);
* output: ``(N, K, Ho, Wo)``, ``K = kh*kw``, same geometry and centre/neighbour
  definitions as Im2dist (LAYERS.md §2.3).  Values 1.0 (same label), 0.0
  (different) or ``ignore_label``.

Fork behaviours reproduced:

* labels are compared as ``int(value)`` (C truncation toward zero: 1.7 == 1.2,
  -0.5 == 0);
* an **out-of-image neighbour has label 0**: it is "similar" to background
  centres and dissimilar to every other centre;
* ``ignore_label`` has proto2 "has" semantics: absent -> no ignore handling at
  all (void 255 is then an ordinary class: 255 vs 255 -> 1); present -> a pair
  in which either label equals it gives ``ignore_label``.  The fork stores it
  in a C ``int``, so values >= 2**31 wrap to negative numbers (reproduced);
* with ``C > 1`` every channel writes the same output entries, so **the last
  channel wins**;
* a column whose centre is outside the image (pad > (k//2)*dilation) gets
  ``ignore_label``; without ``ignore_label`` the fork wrote an uninitialised
  value there, so this port raises :class:`ShapeError` instead;
* no gradient: the fork's Backward is NOT_IMPLEMENTED.  This port returns a
  tensor that does not require grad (labels get no gradient).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import cuda, cuda_ops
from ..errors import ShapeError
from .im2col import centre_outside_any, centre_tap, output_size, unfold_args, window_masks

__all__ = ["im2parity", "as_c_int"]


def as_c_int(value: int) -> int:
    """A uint32 proto value stored into a C ``int`` (two's complement wrap)."""
    value = int(value) & 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def im2parity(labels: torch.Tensor, geometry, ignore_label: Optional[int] = None) -> torch.Tensor:
    """Pairwise label parity ``(N, C, H, W) -> (N, kh*kw, Ho, Wo)``.

    Args:
        labels: label maps (any floating dtype, any device; ``meta`` gives the shape).
        geometry: a :class:`~caffe_compat.layers.geometry.ConvGeometry`.
        ignore_label: the ``im2parity_param.ignore_label`` value, or ``None`` when absent.

    Returns:
        parity in the dtype of ``labels``, not requiring grad.

    Raises:
        ShapeError: input not 4-D, output size <= 0, or some column's centre lies
            outside the image while ``ignore_label`` is ``None``.
    """
    if labels.dim() != 4:
        raise ShapeError(f"im2parity: expected a 4-D (N, C, H, W) label input, got shape {list(labels.shape)}")
    n, c, h, w = (int(d) for d in labels.shape)
    ho, wo = output_size(h, w, geometry, "im2parity")
    k, kc = geometry.taps, centre_tap(geometry)
    if c < 1:
        raise ShapeError("im2parity: the label input has 0 channels")
    if ignore_label is None and centre_outside_any(h, w, geometry):
        raise ShapeError(
            f"im2parity: with input {h}x{w}, kernel {list(geometry.kernel)}, pad {list(geometry.pad)}, "
            f"dilation {list(geometry.dilation)}, stride {list(geometry.stride)} some windows have their "
            f"centre outside the image; the fork writes ignore_label there, which is undefined when "
            f"im2parity_param.ignore_label is not set (set it, or use pad <= (kernel//2)*dilation)")
    if labels.is_meta:
        return labels.new_empty((n, k, ho, wo))
    backend = cuda.backend_for(labels)  # [cuda dispatch]
    if backend is not None and labels.numel():
        return cuda_ops.im2parity(backend, labels, geometry,
                                  None if ignore_label is None else as_c_int(ignore_label))
    with torch.no_grad():
        if labels.numel() == 0:
            return labels.new_zeros((n, k, ho, wo)).fill_(0 if ignore_label is None else as_c_int(ignore_label))
        # float64 holds every C int exactly; truncation = the fork's int(value).
        lab = labels.detach()[:, c - 1:c].to(torch.float64).trunc()  # last channel wins
        cols = F.unfold(lab, **unfold_args(geometry)).view(n, k, ho, wo)  # out-of-image -> 0
        centre = cols[:, kc:kc + 1]
        out = (cols == centre).to(labels.dtype)
        centre_in, _ = window_masks(h, w, geometry, labels.device)
        if ignore_label is not None:
            ign = as_c_int(ignore_label)
            out.masked_fill_((cols == ign) | (centre == ign), float(ign))
            out.masked_fill_(~centre_in, float(ign))
    return out
