"""Caffe's ``Power`` layer as an autograd function: ``y = (shift + scale * x) ** power``.

Forward (LAYERS.md §3.10), with ``diff_scale = power * scale`` in ``Dtype``:

* ``diff_scale == 0``: the input is ignored; ``y = 1`` if ``power == 0`` else
  ``shift ** power`` (a constant, NaN/inf included as C's ``pow`` gives them).
* otherwise ``x`` is scaled (if ``scale != 1``), shifted (if ``shift != 0``)
  and raised to ``power`` (if ``power != 1``), in that order.

Backward -- Caffe's formulas, which are **not** the true derivative at singular
points, so torch autograd is not used:

* ``diff_scale == 0``: ``dx = 0`` (not multiplied by ``dy``: NaN/inf in ``dy``
  do not leak through);
* ``power == 1``: ``dx = diff_scale * dy``;
* ``power == 2``: ``dx = dy * (diff_scale*scale * x + diff_scale*shift)``;
* ``shift == 0``: ``dx = dy * power * y / x`` (NaN at ``x == 0`` for
  ``power > 0``, where the true derivative may be finite);
* else ``dx = dy * diff_scale * y / (scale*x + shift)``.

The torch implementation runs on any device and dtype; constants follow
:mod:`caffe_compat.ops.scalars`.
"""
from __future__ import annotations

import numpy as np
import torch

from . import scalars as S


class _Consts:
    """Power constants in the ``Dtype`` of one tensor dtype."""

    def __init__(self, power: float, scale: float, shift: float, dtype: torch.dtype):
        self.power = S.rnd(power, dtype)
        self.scale = S.rnd(scale, dtype)
        self.shift = S.rnd(shift, dtype)
        self.diff_scale = S.mul(power, scale, dtype)
        self.dtype = dtype

    def constant_value(self) -> float:
        if self.power == 0:
            return 1.0
        return S.func(np.power, self.shift, self.power, dtype=self.dtype)


def _forward(x: torch.Tensor, c: _Consts) -> torch.Tensor:
    if c.diff_scale == 0:
        return torch.full_like(x, c.constant_value())
    t = x
    if c.scale != 1:
        t = t * c.scale
    if c.shift != 0:
        t = t + c.shift
    if c.power != 1:
        t = torch.pow(t, c.power)
    elif t is x:
        t = x.clone()
    return t


class PowerFunction(torch.autograd.Function):
    """``y = (shift + scale*x) ** power`` with Caffe's backward formulas (see module docstring)."""

    @staticmethod
    def forward(ctx, x, power: float, scale: float, shift: float):
        c = _Consts(power, scale, shift, x.dtype)
        y = _forward(x, c)
        ctx.consts = c
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, y = ctx.saved_tensors
        c: _Consts = ctx.consts
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        if c.diff_scale == 0:
            return torch.zeros_like(x), None, None, None
        if c.power == 1:
            return dy * c.diff_scale, None, None, None
        if c.power == 2:
            d = x * S.mul(c.diff_scale, c.scale, x.dtype)
            if c.shift != 0:
                d = d + S.mul(c.diff_scale, c.shift, x.dtype)
            return dy * d, None, None, None
        if c.shift == 0:
            return dy * ((y / x) * c.power), None, None, None
        d = x
        if c.scale != 1:
            d = d * c.scale
        d = d + c.shift
        d = y / d
        if c.diff_scale != 1:
            d = d * c.diff_scale
        return dy * d, None, None, None


def power_caffe(x: torch.Tensor, power: float = 1.0, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """Caffe ``Power``: ``(shift + scale*x) ** power`` (any shape, device, float dtype).

    On the ``meta`` device only the shape is computed.
    """
    if x.is_meta:
        return torch.empty_like(x)
    return PowerFunction.apply(x, float(power), float(scale), float(shift))
