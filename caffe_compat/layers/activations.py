"""Layer family: element-wise "neuron" layers.

ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, Power, Exp, Log, BNLL, Threshold,
Dropout.  Each has one bottom and one top of the same shape (any number of
axes, except PReLU: at least 2) and works on any device and float dtype.

Caffe behaviours reproduced (LAYERS.md §3.2, §3.10-3.12, §3.14):

* **ReLU**: ``y = max(x, 0) + negative_slope * min(x, 0)``; gradient
  ``dy * (x > 0 ? 1 : negative_slope)``, i.e. ``negative_slope`` (0 by
  default) at ``x == 0``.
* **PReLU**: the same with a learned slope per channel (axis 1) or one scalar
  (``channel_shared``: a 0-axis blob, as Caffe); default filler constant 0.25;
  slope gradient ``sum(dy * x)`` over ``x <= 0``.
* **ELU**: gradient ``alpha`` at ``x == 0`` (Caffe: ``x > 0 ? 1 : alpha + y``).
* **AbsVal**: ``sign(0) = 0`` in the gradient; in-place use is refused, as in Caffe.
* **Power**: every special case of §3.10, forward and Caffe's (not always
  the true) backward: see :mod:`caffe_compat.ops.power`.
* **Exp**: ``y = outer * exp(inner * x)`` with ``inner = ln(base) * scale``
  (``ln(e)`` taken as exactly 1 for the default ``base: -1``) and
  ``outer = base ** shift`` (1 if ``shift == 0``).  **Quirk reproduced**: with
  the default ``base: -1`` and ``shift != 0`` the fork computes
  ``outer = pow(-1, shift)``, not ``e ** shift``: ``exp_param { shift: 1 }``
  gives ``y = -exp(x)`` (the golden ``exp_default_shift1`` records exactly
  this), and a non-integer shift gives NaN everywhere.
* **Log**: ``y = log(scale * x + shift) / ln(base)``; base/scale/shift as Exp
  (``base: -1`` = e); base must be > 0 and != 1.
* **BNLL**: softplus with Caffe's rounding and backward clamp (see
  :mod:`caffe_compat.ops.bnll`).
* **Threshold**: ``y = x > threshold ? 1 : 0``.  Caffe has no backward for it
  (it aborts if one is requested); the port's top carries no gradient.
* **Dropout**: TEST phase: identity.  TRAIN: ``y = x * mask / (1 - ratio)``
  with ``mask ~ Bernoulli(1 - ratio)``, drawn from the net's seeded generator
  (``ctx.generator``) for CPU tensors and from torch's default RNG on other
  devices.  The masks cannot match Caffe's (Boost mt19937 / cuRAND) streams.
  The backward applies the same mask and scale (autograd).

In-place use (``top == bottom``): LAYERS.md §0.2 treats in-place layers as
ordinary functions of their input, and so does the port.  (In the original,
the backward of an in-place Power, Log or BNLL, of ELU with ``alpha < 0`` and
of ReLU with ``negative_slope < 0`` reads the *output* where it means the
input; no config does that, and the port does not reproduce it.)

Numeric constants (``inner_scale``, ``diff_scale``, ...) are derived in the
layer's ``Dtype`` as Caffe does (:mod:`caffe_compat.ops.scalars`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ShapeError
from ..ops import scalars as S
from ..ops.bnll import bnll_caffe
from ..ops.power import power_caffe
from ._common import as_dtype_of
from .base import Layer, register_layer


class NeuronLayer(Layer):
    """One bottom, one top of the same shape."""

    num_bottoms = (1, 1)
    num_tops = (1, 1)
    same_shape_tops = True


@register_layer("ReLU")
class ReLULayer(NeuronLayer):
    """``y = max(x, 0) + negative_slope * min(x, 0)``; gradient at 0 is ``negative_slope``."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.negative_slope = float(param.relu_param.negative_slope)

    def forward(self, x):
        if self.negative_slope == 0:
            return (F.relu(x),)  # gradient 0 at x == 0, as Caffe
        # leaky_relu: x > 0 ? x : slope * x, gradient (x > 0 ? 1 : slope), as Caffe.
        return (F.leaky_relu(x, S.rnd(self.negative_slope, x.dtype)),)


@register_layer("PReLU")
class PReLULayer(NeuronLayer):
    """Parametric ReLU; blob 0 = slopes ``(C,)`` (or a 0-axis scalar with ``channel_shared``)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        pp = param.prelu_param
        shape0 = self.bottom_shapes[0]
        if len(shape0) < 2:
            raise self.error(f"bottom must have at least 2 axes, got shape {list(shape0)}", ShapeError)
        self.channel_shared = bool(pp.channel_shared)
        self.channels = shape0[1]
        shape = () if self.channel_shared else (self.channels,)
        if pp.HasField("filler"):
            self.add_blob(shape, pp.filler)
        else:
            self.add_blob(shape, lambda t, g: t.fill_(0.25))

    def forward(self, x):
        if x.dim() < 2:
            raise self.error(f"bottom must have at least 2 axes, got shape {list(x.shape)}", ShapeError)
        if not self.channel_shared and x.shape[1] != self.channels:
            raise self.error(f"bottom has {x.shape[1]} channels, the slopes were built for {self.channels}",
                             ShapeError)
        a = as_dtype_of(self.blobs[0], x)
        if self.channel_shared:
            a = a.reshape(())
        else:
            a = a.reshape((1, self.channels) + (1,) * (x.dim() - 2))
        # where(): dx = dy*(x > 0 ? 1 : a) and da = sum(dy*x) over x <= 0, Caffe's formulas.
        return (torch.where(x > 0, x, x * a),)


@register_layer("ELU")
class ELULayer(NeuronLayer):
    """``y = x > 0 ? x : alpha * (exp(x) - 1)``; gradient ``alpha`` at ``x == 0``."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.alpha = float(param.elu_param.alpha)

    def forward(self, x):
        alpha = S.rnd(self.alpha, x.dtype)
        neg = alpha * (torch.exp(torch.clamp(x, max=0)) - 1)
        # clamp's gradient passes at x == 0, so the gradient there is alpha * exp(0) = alpha (Caffe).
        return (torch.where(x > 0, x, neg),)


@register_layer("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """``y = 1 / (1 + exp(-x))``; gradient ``dy * y * (1 - y)``."""

    def forward(self, x):
        return (torch.sigmoid(x),)


@register_layer("TanH")
class TanHLayer(NeuronLayer):
    """``y = tanh(x)``; gradient ``dy * (1 - y^2)``."""

    def forward(self, x):
        return (torch.tanh(x),)


@register_layer("AbsVal")
class AbsValLayer(NeuronLayer):
    """``y = |x|``; gradient ``dy * sign(x)`` with ``sign(0) = 0``.  Not in-place (Caffe CHECK)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        if list(param.top) == list(param.bottom):
            raise self.error("AbsVal does not allow in-place computation (top == bottom)")

    def forward(self, x):
        return (torch.abs(x),)


@register_layer("Power")
class PowerLayer(NeuronLayer):
    """``y = (shift + scale * x) ** power`` with Caffe's special cases and backward."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        pp = param.power_param
        self.power = float(pp.power)
        self.scale = float(pp.scale)
        self.shift = float(pp.shift)

    def forward(self, x):
        return (power_caffe(x, self.power, self.scale, self.shift),)


class _BaseScaleShiftLayer(NeuronLayer):
    """Exp and Log: ``base`` / ``scale`` / ``shift`` of ``exp_param`` / ``log_param`` (``base: -1`` = e)."""

    _param_field = ""  # "exp_param" or "log_param"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = getattr(param, self._param_field)
        self.base = float(p.base)
        self.scale = float(p.scale)
        self.shift = float(p.shift)
        if self.base != -1 and not self.base > 0:
            raise self.error(f"{self._param_field}.base must be strictly positive (or -1 for e), got {self.base}")

    def _log_base(self, dtype):
        """``ln(base)`` in ``dtype``, taken as exactly 1 for the default ``base: -1``."""
        return 1.0 if self.base == -1 else S.func(np.log, self.base, dtype=dtype)


@register_layer("Exp")
class ExpLayer(_BaseScaleShiftLayer):
    """``y = outer * exp(inner * x)`` (see module docstring for the base -1 / shift quirk)."""

    _param_field = "exp_param"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        log_base = self._consts(torch.float32)[0]
        if not S.isfinite(log_base):
            raise self.error(f"exp_param.base {self.base} gives a non-finite log(base) = {log_base}")

    def _consts(self, dtype):
        log_base = self._log_base(dtype)
        inner = S.mul(log_base, self.scale, dtype)
        # The fork uses pow(base, shift) even for base -1 (meaning e): pow(-1, shift).
        outer = 1.0 if self.shift == 0 else S.func(np.power, self.base, self.shift, dtype=dtype)
        return log_base, inner, outer

    def forward(self, x):
        _, inner, outer = self._consts(x.dtype)
        t = x if inner == 1 else x * inner
        y = torch.exp(t)
        if outer != 1:  # also true for NaN
            y = y * outer
        return (y,)


@register_layer("Log")
class LogLayer(_BaseScaleShiftLayer):
    """``y = log(shift + scale * x) / ln(base)`` (``base: -1`` = e)."""

    _param_field = "log_param"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        log_base, base_scale = self._consts(torch.float32)
        if not S.isfinite(log_base) or not S.isfinite(base_scale):
            raise self.error(f"log_param.base {self.base} gives log(base) = {log_base} and "
                             f"1/log(base) = {base_scale}; both must be finite (base != 1)")

    def _consts(self, dtype):
        log_base = self._log_base(dtype)
        return log_base, S.div(1.0, log_base, dtype)

    def forward(self, x):
        _, base_scale = self._consts(x.dtype)
        t = x
        if self.scale != 1:
            t = t * S.rnd(self.scale, x.dtype)
        if self.shift != 0:
            t = t + S.rnd(self.shift, x.dtype)
        y = torch.log(t)
        if base_scale != 1:
            y = y * base_scale
        return (y,)


@register_layer("BNLL")
class BNLLLayer(NeuronLayer):
    """Softplus ``y = log(1 + exp(x))`` (Caffe's BNLL)."""

    def forward(self, x):
        return (bnll_caffe(x),)


@register_layer("Threshold")
class ThresholdLayer(NeuronLayer):
    """``y = 1 if x > threshold else 0``; no gradient (Caffe has no Threshold backward)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.threshold = float(param.threshold_param.threshold)

    def forward(self, x):
        return ((x.detach() > S.rnd(self.threshold, x.dtype)).to(x.dtype),)


@register_layer("Dropout")
class DropoutLayer(NeuronLayer):
    """TEST: identity.  TRAIN: ``x * Bernoulli(1 - ratio) / (1 - ratio)`` (masks differ from Caffe's RNG)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.ratio = float(param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_param.dropout_ratio must be in [0, 1), got {self.ratio}")
        self.train_phase = str(ctx.phase).upper() == "TRAIN"

    def forward(self, x):
        if not self.train_phase or x.is_meta:
            return (x.clone(),)
        # Caffe: scale_ = 1 / (1 - threshold_) in double, stored as Dtype.
        scale = S.rnd(1.0 / (1.0 - self.ratio), x.dtype)
        gen = self.ctx.generator
        if x.device.type == "cpu" and gen is not None and gen.device.type == "cpu":
            u = torch.rand(x.shape, generator=gen, dtype=torch.float64)
        else:
            u = torch.rand(x.shape, device=x.device, dtype=torch.float64)
        mask = (u >= self.ratio).to(x.dtype)  # P(keep) = 1 - ratio
        return (x * mask * scale,)
