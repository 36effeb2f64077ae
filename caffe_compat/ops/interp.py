"""DeepLab's ``Interp`` bilinear resampling ("align corners"), bit-exact.

The fork (``caffe/src/caffe/util/interp.cpp``, ``caffe_cpu_interp2``) computes,
for an input region of ``Hi x Wi`` pixels and an output of ``Ho x Wo`` pixels::

    rh  = float32(Hi - 1) / float32(Ho - 1)        (0 if Ho == 1; a float32 division)
    h1r = rh * float32(y)                          (float32 product)
    h1  = int(h1r)                                 (truncation)
    h1p = 1 if h1 < Hi - 1 else 0
    l1  = h1r - h1  (float32),  l0 = 1 - l1 (in the data type)
    out[y, x] = l0h * (l0w * in[h1, w1] + l1w * in[h1, w1 + w1p])
              + l1h * (l0w * in[h1 + h1p, w1] + l1w * in[h1 + h1p, w1 + w1p])

This is PyTorch's ``interpolate(mode="bilinear", align_corners=True)`` except
for the rounding of the source coordinate, which the fork computes in float32
as ``rh * y`` (PyTorch uses a differently rounded scale).  Near-integer source
positions therefore land on different pixels, so this module does **not** use
``F.interpolate``: it precomputes the fork's index and weight vectors with
numpy float32 arithmetic and applies them separably (first along the width,
then along the height), which evaluates exactly the fork's expression above,
operation by operation, so float32 results are bit-identical.

Surprising but reproduced:

* the interpolation weights are float32 numbers even for float64 data (the
  fork computes ``h1r - h1`` in float and only then converts to ``Dtype``);
* when the output size equals the input size the fork copies (no arithmetic);
* a size-1 output samples position 0 (``rh = 0``), not the centre.

Backward is the adjoint (the fork's ``caffe_cpu_interp2_backward``): each
output gradient is distributed to the (up to) four source pixels with the same
weights.  It is implemented as a custom :class:`torch.autograd.Function` that
saves only the small index/weight vectors, not the input.
"""
from __future__ import annotations

import functools
from typing import Tuple

import numpy as np
import torch

__all__ = ["interp_axis_table", "interp2", "Interp2Function"]


@functools.lru_cache(maxsize=256)
def interp_axis_table(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and float32 weights of one axis, exactly as the fork computes them.

    Args:
        n_in: input size along the axis (after cropping), >= 1.
        n_out: output size along the axis, >= 1.

    Returns:
        ``(i0, i1, lam1)``: int64 arrays of length ``n_out`` with the first and
        second source index (``i1 = i0 + p``, ``p`` the fork's ``h1p``) and the
        float32 weight ``lam1`` of the second one (the first one's weight is
        ``1 - lam1``, computed by the caller in the data type).
    """
    if n_out > 1:
        r = np.float32(n_in - 1) / np.float32(n_out - 1)  # float32 division, as in the fork
    else:
        r = np.float32(0.0)
    pos = np.arange(n_out, dtype=np.float32)
    src = (r * pos).astype(np.float32)  # float32 product rh * y
    i0 = src.astype(np.int64)  # C truncation (src >= 0)
    lam1 = (src - i0.astype(np.float32)).astype(np.float32)
    step = (i0 < n_in - 1).astype(np.int64)
    i1 = i0 + step
    for a in (i0, i1, lam1):
        a.setflags(write=False)
    return i0, i1, lam1


# Two functions: assume_constant_result has no effect on an lru_cache wrapper (dynamo traces
# into it), so the marked function is a plain one that calls the cached one.
@functools.lru_cache(maxsize=256)
def _cached_table_values(n_in: int, n_out: int) -> Tuple[tuple, tuple, tuple]:
    i0, i1, lam1 = interp_axis_table(n_in, n_out)
    return tuple(i0.tolist()), tuple(i1.tolist()), tuple(lam1.tolist())


@torch.compiler.assume_constant_result
def _table_values(n_in: int, n_out: int) -> Tuple[tuple, tuple, tuple]:
    """:func:`interp_axis_table` as tuples of Python numbers.

    A constant of the graph for ``torch.compile`` (which cannot trace the numpy
    float32 arithmetic): dynamo calls it at trace time and bakes the values in.
    """
    return _cached_table_values(n_in, n_out)


def _tables(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device):
    """The axis table as tensors on ``device``.

    Only the numpy table is cached: caching tensors would keep the fake tensors
    that ``torch.export`` / ``torch.compile`` create while tracing.
    """
    i0, i1, lam1 = _table_values(n_in, n_out)
    t_i0 = torch.tensor(i0, dtype=torch.int64, device=device)
    t_i1 = torch.tensor(i1, dtype=torch.int64, device=device)
    # lam1 holds float32 numbers (exact as Python floats); convert them exactly to the data type,
    # then 1 - lam1 in the data type.
    t_l1 = torch.tensor(lam1, dtype=torch.float32, device=device).to(dtype)
    t_l0 = 1 - t_l1
    return t_i0, t_i1, t_l0, t_l1


def _forward_impl(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Resample the last two axes of ``x`` (``(..., Hi, Wi)``) to ``(..., out_h, out_w)``."""
    hi, wi = int(x.shape[-2]), int(x.shape[-1])
    if hi == out_h and wi == out_w:
        return x.clone()  # the fork's plain copy
    hi0, hi1, hl0, hl1 = _tables(hi, out_h, x.dtype, x.device)
    wi0, wi1, wl0, wl1 = _tables(wi, out_w, x.dtype, x.device)
    # Along the width: t[..., r, x] = l0w[x] * in[..., r, w1] + l1w[x] * in[..., r, w1 + w1p]
    t = wl0 * x.index_select(-1, wi0) + wl1 * x.index_select(-1, wi1)
    # Along the height: out = l0h * t[h1] + l1h * t[h1 + h1p]  (the fork's bracketing)
    return hl0[:, None] * t.index_select(-2, hi0) + hl1[:, None] * t.index_select(-2, hi1)


def _backward_impl(g: torch.Tensor, in_h: int, in_w: int) -> torch.Tensor:
    """Adjoint of :func:`_forward_impl`: ``g`` is ``(..., Ho, Wo)``, result ``(..., in_h, in_w)``."""
    ho, wo = int(g.shape[-2]), int(g.shape[-1])
    if in_h == ho and in_w == wo:
        return g.clone()
    hi0, hi1, hl0, hl1 = _tables(in_h, ho, g.dtype, g.device)
    wi0, wi1, wl0, wl1 = _tables(in_w, wo, g.dtype, g.device)
    lead = tuple(g.shape[:-2])
    gt = g.new_zeros(lead + (in_h, wo))
    gt.index_add_(-2, hi0, hl0[:, None] * g)
    gt.index_add_(-2, hi1, hl1[:, None] * g)
    gx = g.new_zeros(lead + (in_h, in_w))
    gx.index_add_(-1, wi0, wl0 * gt)
    gx.index_add_(-1, wi1, wl1 * gt)
    return gx


class Interp2Function(torch.autograd.Function):
    """Bilinear "align corners" resampling of the last two axes with the fork's rounding.

    ``Interp2Function.apply(x, out_h, out_w)``: ``x`` is ``(..., Hi, Wi)``, the
    result ``(..., out_h, out_w)``.  Backward is the exact adjoint (linear in
    the incoming gradient); it is itself differentiable only once.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        ctx.in_hw = (int(x.shape[-2]), int(x.shape[-1]))
        return _forward_impl(x, int(out_h), int(out_w))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return _backward_impl(g.contiguous(), *ctx.in_hw), None, None


def interp2(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Functional form of :class:`Interp2Function` (meta tensors give an empty result of the right shape)."""
    if x.is_meta:
        return x.new_empty(tuple(x.shape[:-2]) + (int(out_h), int(out_w)))
    return Interp2Function.apply(x, int(out_h), int(out_w))
