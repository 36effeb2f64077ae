"""Caffe's ``BNLL`` ("binomial normal log likelihood", i.e. softplus) as an autograd function.

Forward: ``y = x + log(1 + exp(-x))`` for ``x > 0`` else ``log(1 + exp(x))``.
Caffe evaluates ``exp`` in ``Dtype`` and ``log(1. + e)`` in double, then stores
in ``Dtype``; the port does the same (so e.g. ``y`` is exactly 0 for
``x < -37`` in double, like Caffe, not the tiny ``log1p`` value).

Backward: ``dx = dy * e / (e + 1)`` with ``e = exp(min(x, 50))``, i.e. the
sigmoid with Caffe's clamp at 50 (``kBNLL_THRESHOLD``).  Written explicitly
because the autograd derivative of the two-branch formula is wrong at
``x == 0`` (it gives 0 there, Caffe and the true derivative give 0.5).
"""
from __future__ import annotations

import torch

#: Caffe's ``kBNLL_THRESHOLD``.
BNLL_THRESHOLD = 50.0


def _bnll_forward(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(-x.abs())  # Dtype exp of -|x| (= exp(-x) for x > 0, exp(x) otherwise)
    wide = torch.float64 if x.dtype != torch.float64 else x.dtype
    tail = torch.log(1.0 + e.to(wide))
    y = torch.where(x > 0, x.to(wide) + tail, tail)
    return y.to(x.dtype)


class BNLLFunction(torch.autograd.Function):
    """Softplus with Caffe's forward rounding and backward clamp (see module docstring)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _bnll_forward(x)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        e = torch.exp(torch.clamp(x, max=BNLL_THRESHOLD))
        return dy * (e / (e + 1.0))


def bnll_caffe(x: torch.Tensor) -> torch.Tensor:
    """Caffe ``BNLL`` (softplus); shape-only on the ``meta`` device."""
    if x.is_meta:
        return torch.empty_like(x)
    return BNLLFunction.apply(x)
