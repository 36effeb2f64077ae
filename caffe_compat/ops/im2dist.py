"""The fork's ``Im2dist``: distances between every pixel and its window neighbours.

Shapes (NCHW, 2 spatial axes):

* input ``x``: embeddings ``(N, E, H, W)``;
* output: distances ``(N, K, Ho, Wo)`` with ``K = kh*kw`` (one channel per
  kernel offset ``k = i*kw + j``, row-major; **no** factor ``E``: distances are
  summed over the embedding channels) and ``Ho, Wo`` from Caffe's convolution
  arithmetic (§0.4).  Units: the units of ``x`` (L1) or their square (L2).

Semantics (LAYERS.md §2.2, golden/layers/README.md), for output entry
``(n, k, y, x)`` with neighbour ``(hy, hx) = (y*sh - ph + i*dh, x*sw - pw + j*dw)``
and centre ``(cy, cx) = (y*sh - ph + (kh//2)*dh, x*sw - pw + (kw//2)*dw)``:

1. centre outside the image -> the whole column is **0** (whatever the flags);
2. ``remove_center`` and ``k`` is the centre offset -> ``FLT_MAX/100``
   (= 3.4028235e36, the float32 value, also in float64);
3. neighbour inside -> ``sum_e |d_e|`` (L1) or ``sum_e 0.5 * d_e**2`` ("L2" is
   **half the squared** Euclidean distance), ``d_e = x[e, cy, cx] - x[e, hy, hx]``,
   accumulated in the input dtype in increasing ``e`` (the fork's order, so the
   float32 forward is bit-identical);
4. neighbour outside -> ``FLT_MAX/100`` if ``remove_bounds``, else **0** (the
   missing neighbour contributes nothing: it looks maximally similar).

Backward (custom :class:`Im2distFunction`, project policy = the fork's GPU
rule): for every entry whose centre is inside and whose offset is not the
centre, with ``g`` the top gradient, per channel
``dx[e, cy, cx] += s*g`` and, if the neighbour is inside, ``dx[e, hy, hx] -= s*g``
where ``s = d`` (L2) or ``s = sign(d)`` with ``sign(0) = 0`` (L1: an exact tie,
an out-of-image neighbour or a removed entry contributes nothing; the fork's
CPU code used ``sign(0) = -1``).  This is the true derivative of the forward
wherever it is differentiable (constants ``FLT_MAX/100`` and out-of-image
neighbours have zero derivative), and the L1 subgradient 0 at ties.

Implementation: this module is a thin wrapper; the distance forward and
backward are the ones of :mod:`caffe_compat.ops.window`
(:func:`~caffe_compat.ops.window.window_distances`,
:func:`~caffe_compat.ops.window.window_distances_backward`), shared with
NormConv / NormConvMeanfield so that both layers compute identical distances.

Memory: the fork kept the ``(N, E*K, Ho, Wo)`` signed-difference tensor for
backward.  This implementation never materialises it: each ``±`` pair of
offsets is computed once on the image grid, a chunk of embedding channels at a
time (bounded by :data:`CHUNK_ELEMENTS` elements), accumulated sequentially over
channels; only the input is saved for backward, which recomputes the
differences one offset pair at a time (``N*E*H*W`` extra).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..errors import ShapeError
from .window import (FLT_MAX_OVER_100, L1, L2, output_size, parse_norm,  # noqa: F401
                     window_distances, window_distances_backward)

__all__ = ["FLT_MAX_OVER_100", "CHUNK_ELEMENTS", "im2dist", "im2dist_forward", "im2dist_backward",
           "Im2distFunction", "parse_norm", "L1", "L2"]

#: Upper bound on the elements of one channel chunk of differences (read at call
#: time; ``FLT_MAX_OVER_100`` is ``FLT_MAX/100`` computed in float32 as the fork does,
#: 3.4028235e36, used for removed centre / out-of-bounds entries in every dtype).
CHUNK_ELEMENTS = 1 << 22


def _check_input(x: torch.Tensor, geometry, what: str = "im2dist"):
    if x.dim() != 4:
        raise ShapeError(f"{what}: expected a 4-D (N, E, H, W) input, got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise ShapeError(f"{what}: expected a floating-point input, got {x.dtype}")
    n, e, h, w = (int(d) for d in x.shape)
    ho, wo = output_size(h, w, geometry, what)
    return n, e, h, w, ho, wo


def im2dist_forward(x: torch.Tensor, geometry, norm, remove_center: bool = False,
                    remove_bounds: bool = False) -> torch.Tensor:
    """Forward values only (no autograd): ``(N, E, H, W) -> (N, K, Ho, Wo)``."""
    _check_input(x, geometry)
    with torch.no_grad():
        return window_distances(x.detach(), geometry, parse_norm(norm), bool(remove_center),
                                bool(remove_bounds), chunk_elements=CHUNK_ELEMENTS)


def im2dist_backward(x: torch.Tensor, grad_top: torch.Tensor, geometry, norm) -> torch.Tensor:
    """Gradient w.r.t. the embeddings (the fork's GPU rule, ``sign(0) = 0``).

    Args:
        x: embeddings ``(N, E, H, W)`` (as given to the forward).
        grad_top: gradient of the distances ``(N, K, Ho, Wo)``.
        geometry: the window geometry.
        norm: :data:`L1` or :data:`L2` (half squared), or their names.

    Returns:
        ``(N, E, H, W)``.  The remove flags need not be known: removed and
        out-of-image entries get no gradient either way.
    """
    n, e, h, w, ho, wo = _check_input(x, geometry)
    k = geometry.taps
    if tuple(grad_top.shape) != (n, k, ho, wo):
        raise ShapeError(f"im2dist backward: gradient shape {list(grad_top.shape)} does not match the "
                         f"output shape {[n, k, ho, wo]}")
    if not x.numel():
        return torch.zeros_like(x)
    return window_distances_backward(x, grad_top, geometry, parse_norm(norm))


class Im2distFunction(torch.autograd.Function):
    """Autograd wrapper: saves only the input, recomputes differences in backward."""

    @staticmethod
    def forward(ctx, x, geometry, norm, remove_center, remove_bounds):
        ctx.geometry, ctx.norm = geometry, norm
        ctx.save_for_backward(x)
        return im2dist_forward(x, geometry, norm, remove_center, remove_bounds)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_top):
        (x,) = ctx.saved_tensors
        dx = im2dist_backward(x, grad_top, ctx.geometry, ctx.norm) if ctx.needs_input_grad[0] else None
        return dx, None, None, None, None


def im2dist(x: torch.Tensor, geometry, norm="L2", remove_center: bool = False,
            remove_bounds: bool = False) -> torch.Tensor:
    """Windowed distances ``(N, E, H, W) -> (N, kh*kw, Ho, Wo)`` (see the module docstring).

    Args:
        x: embeddings, any floating dtype and device (``meta`` gives the shape only).
        geometry: a :class:`~caffe_compat.ops.window.Window`
            (kernel, stride, pad, dilation).
        norm: ``"L1"`` (sum of absolute differences) or ``"L2"`` (**half** the
            sum of squared differences); also 1 / 2.
        remove_center: write ``FLT_MAX/100`` at the centre offset.
        remove_bounds: write ``FLT_MAX/100`` where the neighbour is outside the image.

    Differentiable w.r.t. ``x`` with the custom gradient described above.
    """
    norm = parse_norm(norm)
    n, e, h, w, ho, wo = _check_input(x, geometry)
    if x.is_meta:
        return x.new_empty((n, geometry.taps, ho, wo))
    from .library import im2dist_op, tracing
    if tracing(x):  # torch.compile / torch.export: the torch.library op
        return im2dist_op(x, geometry, norm, remove_center, remove_bounds)
    return Im2distFunction.apply(x, geometry, norm, bool(remove_center), bool(remove_bounds))
