"""Elementwise layers: ``Eltwise``, ``Scale`` and ``Bias`` (LAYERS.md §3.4, §3.5).

Fork behaviours reproduced here:

* **Eltwise MAX ties** follow the fork's CPU code (what the goldens record):
  a tie between bottoms 0 and 1 goes to bottom 1, later bottoms must be
  strictly greater.  Forward values are the same either way; only the
  gradient routing differs from the fork's GPU code (every tie to the later
  bottom).  See :mod:`caffe_compat.ops.eltwise`.
* **Eltwise PROD** backward is the fork's (``stable_prod_grad`` true: product
  of the other bottoms; false: ``top / bottom``, NaN where a bottom is 0).
* **Eltwise coeff** is refused only for PROD (as in Caffe); with MAX the
  coefficients are accepted and ignored.
* **Scale/Bias with a scalar blob** (``num_axes: 0``) have a 0-axis blob of
  shape ``()`` (see PROTO.md §1.3 for how Caffe serialises it).
* **Scale filler** absent means constant 1; **bias_filler** absent means
  constant 0.  With two bottoms the scale is bottom 1 (and receives the
  gradient ``sum(dy * x)``); only the bias, if any, is learnable, and its
  shape is ``bottom0.shape[axis : axis + bottom1.ndim]``.
* Caffe's scale-parameter backward *overwrites* instead of accumulating when
  the scale has as many elements as the bottom, or is a vector (more than one
  element) with ``outer_dim == 1`` (e.g. batch 1).  Within one backward, of
  several layers sharing the scale the first in net order writes last, so only
  its gradient survives; the port reproduces this (the goldens record it: res
  shares every BN-Scale across three input scales) by giving later sharers no
  parameter gradient in those cases.  Across backward passes (Caffe's
  ``iter_size``) PyTorch's ``.grad`` accumulates as usual.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from ..errors import ShapeError
from ..ops.eltwise import eltwise_max, eltwise_prod
from .base import Layer, register_layer
from .shape_ops import canonical_axis

_PROD, _SUM, _MAX = 0, 1, 2


@register_layer("Eltwise")
class EltwiseLayer(Layer):
    """``Eltwise``: PROD / SUM (with ``coeff``) / MAX of >= 2 same-shaped bottoms."""

    num_bottoms = (2, None)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.eltwise_param
        self.op = int(p.operation)
        if self.op not in (_PROD, _SUM, _MAX):
            raise self.error(f"eltwise_param.operation {self.op} is not PROD (0), SUM (1) or MAX (2)")
        n = len(bottom_shapes)
        if len(p.coeff) not in (0, n):
            raise self.error(f"eltwise_param.coeff must be given once per bottom ({n}) or not at all, "
                             f"got {len(p.coeff)} values")
        if self.op == _PROD and len(p.coeff):
            raise self.error("eltwise_param.coeff is only allowed for SUM (operation is PROD)")
        self.coeffs = [float(c) for c in p.coeff] if len(p.coeff) else [1.0] * n
        self.stable_prod_grad = bool(p.stable_prod_grad)
        self._check_shapes([tuple(s) for s in self.bottom_shapes])

    def _check_shapes(self, shapes) -> None:
        for i, s in enumerate(shapes[1:], start=1):
            if tuple(s) != tuple(shapes[0]):
                raise self.error(f"all bottoms must have the same shape: bottom 0 is {list(shapes[0])}, "
                                 f"bottom {i} is {list(s)}", ShapeError)

    def forward(self, *xs):
        self._check_shapes([tuple(x.shape) for x in xs])
        if self.op == _PROD:
            return (eltwise_prod(*xs, stable=self.stable_prod_grad),)
        if self.op == _MAX:
            return (eltwise_max(*xs),)
        # SUM: top = 0; top += coeff_i * x_i in bottom order (caffe_axpy)
        top = None
        for c, x in zip(self.coeffs, xs):
            term = x if c == 1.0 else x * c
            top = term if top is None else top + term
        return (top,)


def _param_shape(layer: Layer, shape, axis: int, num_axes: int, what: str) -> Tuple[int, ...]:
    """``shape[axis : axis + num_axes]`` (``num_axes == -1``: to the end), with Caffe's checks."""
    nd = len(shape)
    if num_axes < -1:
        raise layer.error(f"{what}.num_axes must be >= 0, or -1 to extend to the end of bottom 0; got {num_axes}")
    if num_axes >= 0 and nd < axis + num_axes:
        raise layer.error(f"{what}: blob shape extends past bottom 0's shape {list(shape)} when applied "
                          f"from axis {axis} with num_axes {num_axes}", ShapeError)
    end = nd if num_axes == -1 else axis + num_axes
    return tuple(int(d) for d in shape[axis:end])


def _broadcast_to(layer: Layer, x: torch.Tensor, p: torch.Tensor, axis: int, what: str) -> torch.Tensor:
    """View ``p`` so that it broadcasts over ``x`` from ``axis`` on (axis 0 for a 0-axis ``p``)."""
    if p.dim() == 0:
        return p
    nd = x.dim()
    if nd < axis + p.dim():
        raise layer.error(f"{what} of shape {list(p.shape)} extends past bottom 0's shape {list(x.shape)} "
                          f"when applied from axis {axis}", ShapeError)
    if tuple(x.shape[axis:axis + p.dim()]) != tuple(p.shape):
        raise layer.error(f"dimension mismatch between bottom 0 {list(x.shape)} (axes {axis}..{axis + p.dim() - 1}) "
                          f"and {what} {list(p.shape)}", ShapeError)
    return p.reshape(tuple(p.shape) + (1,) * (nd - axis - p.dim()))


class _AxisBlobLayer(Layer):
    """Bias and Scale: a blob (learned, or bottom 1) applied to bottom 0 from ``<type>_param.axis`` on."""

    num_bottoms = (1, 2)
    num_tops = (1, 1)
    _param_field = ""  # "bias_param" or "scale_param"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.axis_param = int(getattr(param, self._param_field).axis)

    def _learned_shape(self, shape0, num_axes: int) -> Tuple[int, ...]:
        """Shape of the learned blob: ``shape0[axis : axis + num_axes]``, ``axis`` from the layer's param."""
        axis = canonical_axis(self, self.axis_param, len(shape0), f"{self._param_field}.axis")
        return _param_shape(self, shape0, axis, num_axes, self._param_field)

    def _axis_for(self, pdim: int, xdim: int) -> int:
        # Caffe: a 0-axis blob is applied at axis 0 (equivalent for a scalar)
        return 0 if pdim == 0 else canonical_axis(self, self.axis_param, xdim, f"{self._param_field}.axis")


@register_layer("Bias")
class BiasLayer(_AxisBlobLayer):
    """``Bias``: ``y = x + b`` with ``b`` learned (1 bottom) or given by bottom 1.

    ``bias_param``: ``axis`` (default 1), ``num_axes`` (default 1; -1 = to the
    end; 0 = scalar), ``filler`` (absent: constant 0).  ``b`` has shape
    ``x.shape[axis : axis + num_axes]`` and broadcasts over the other axes.
    """

    _param_field = "bias_param"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.bias_param
        shape0 = self.bottom_shapes[0]
        if len(bottom_shapes) == 1:
            bshape = self._learned_shape(shape0, int(p.num_axes))
            self.add_blob(bshape, p.filler if p.HasField("filler") else None)
        else:
            self._axis_for(len(self.bottom_shapes[1]), len(shape0))

    def forward(self, x, *rest):
        b = rest[0] if rest else self.blobs[0]
        axis = self._axis_for(b.dim(), x.dim())
        return (x + _broadcast_to(self, x, b, axis, "bias"),)


@register_layer("Scale")
class ScaleLayer(_AxisBlobLayer):
    """``Scale``: ``y = x * s (+ b)`` with ``s`` learned (1 bottom) or given by bottom 1.

    ``scale_param``: ``axis`` (default 1), ``num_axes`` (default 1; -1 = to the
    end; 0 = scalar, a 0-axis blob of shape ``()``), ``filler`` (absent:
    constant 1), ``bias_term`` (default false), ``bias_filler`` (absent:
    constant 0).  Blobs (Caffe order): ``[scale, bias]`` with one bottom,
    ``[bias]`` with two.
    """

    _param_field = "scale_param"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.scale_param
        shape0 = self.bottom_shapes[0]
        self.two_bottoms = len(bottom_shapes) == 2
        if not self.two_bottoms:
            sshape = self._learned_shape(shape0, int(p.num_axes))
            if p.HasField("filler"):
                self.add_blob(sshape, p.filler)
            else:
                self.add_blob(sshape, lambda t, g: t.fill_(1.0))
            bias_num_axes = int(p.num_axes)
        else:
            bias_num_axes = len(self.bottom_shapes[1])
        # The scale blob is shared under a param name that an earlier layer owns.
        self._shared_from_earlier = not self.two_bottoms and 0 in ctx.shared_blobs
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            axis = self._axis_for(bias_num_axes, len(shape0))
            bshape = _param_shape(self, shape0, axis, bias_num_axes, "scale_param (bias)")
            # Caffe copies bias_filler into the internal Bias layer; an absent one reads as constant 0.
            self.add_blob(bshape, p.bias_filler if p.HasField("bias_filler") else None)

    def forward(self, x, *rest):
        if self.two_bottoms:
            s = rest[0]
            bias = self.blobs[0] if self.bias_term else None
        else:
            s = self.blobs[0]
            bias = self.blobs[1] if self.bias_term else None
        axis = self._axis_for(s.dim(), x.dim())
        s_b = _broadcast_to(self, x, s, axis, "scale")
        outer = math.prod(x.shape[:axis])
        if self._shared_from_earlier and (s.numel() == x.numel() or (outer == 1 and s.numel() > 1)):
            # The fork's backward OVERWRITES this diff here (gemv with beta 0, or the product
            # written straight into it) instead of adding to it: of several layers sharing the
            # scale, the first in net order backpropagates last and its diff is the one that
            # survives.  So a later sharer contributes no parameter gradient (its input
            # gradient is unchanged).  The goldens record this (res: BN-Scale shared across
            # the three input scales, batch 1).
            s_b = s_b.detach()
        y = x * s_b
        if bias is not None:
            y = y + _broadcast_to(self, x, bias, self._axis_for(bias.dim(), x.dim()), "bias")
        return (y,)
