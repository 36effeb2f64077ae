"""Layer family: Pooling (Caffe engine, LAYERS.md §3.1).

``pooling_param``: ``pool`` (MAX default, AVE; STOCHASTIC is refused),
``kernel_size`` or ``kernel_h`` + ``kernel_w``, ``pad`` or ``pad_h`` + ``pad_w``
(default 0), ``stride`` or ``stride_h`` + ``stride_w`` (default 1),
``global_pooling`` (kernel = the whole input plane, recomputed for every input
size; needs pad 0 and stride 1).  ``engine`` is ignored (the fork had no cuDNN).

Fork/Caffe behaviours reproduced (details in :mod:`caffe_compat.ops.pooling`):

* output size uses **ceil** rounding, and the "last window must start inside
  image + pad" clip is applied **only when pad_h or pad_w is non-zero** (then to
  both axes; ``7x9 -> 4x5`` for k2 s2);
* ``pad < kernel`` is all Caffe requires (torch's pooling needs ``pad <= k/2``;
  the port handles every allowed pad);
* AVE divides by the window size clipped to ``[-pad, in + pad)``, so padding
  cells count in the divisor near the top/left border but cells past
  ``in + pad`` do not;
* MAX starts at ``-FLT_MAX`` and needs a strictly greater element: the first
  maximum in row-major window order wins ties (value and gradient), NaN is
  skipped, and an all-``-inf`` window outputs ``-FLT_MAX``;
* with two tops (MAX only) the second is Caffe's mask: the flat index
  ``h * W + w`` of the chosen element in its plane, as floats (``-1`` where
  nothing was chosen); it carries no gradient.
"""
from __future__ import annotations

from ..errors import NotSupportedError, ShapeError
from ..ops.pooling import ave_pool2d_caffe, max_pool2d_caffe, pooled_size
from ._common import check_4d
from .base import Layer, register_layer

_MAX, _AVE, _STOCHASTIC = 0, 1, 2


@register_layer("Pooling")
class PoolingLayer(Layer):
    """Caffe ``Pooling``: bottom ``(N, C, H, W)`` -> top ``(N, C, Ho, Wo)`` (+ optional MAX mask top)."""

    num_bottoms = (1, 1)
    num_tops = (1, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        pp = param.pooling_param
        has = pp.HasField
        self.method = int(pp.pool)
        if self.method == _STOCHASTIC:
            raise self.error("pooling_param.pool STOCHASTIC is not supported by this port", NotSupportedError)
        if self.method not in (_MAX, _AVE):
            raise self.error(f"pooling_param.pool has unknown value {self.method}")
        if len(param.top) > 1 and self.method != _MAX:
            raise self.error("a second top (the argmax mask) is only allowed with pool: MAX")
        self.global_pooling = bool(pp.global_pooling)
        if self.global_pooling:
            if has("kernel_size") or has("kernel_h") or has("kernel_w"):
                raise self.error("with global_pooling: true the kernel size cannot be specified")
            self.kernel = None
        else:
            if has("kernel_size") and (has("kernel_h") or has("kernel_w")):
                raise self.error("give either pooling_param.kernel_size or kernel_h and kernel_w, not both")
            if has("kernel_size"):
                self.kernel = (int(pp.kernel_size), int(pp.kernel_size))
            elif has("kernel_h") and has("kernel_w"):
                self.kernel = (int(pp.kernel_h), int(pp.kernel_w))
            elif has("kernel_h") or has("kernel_w"):
                raise self.error("for non-square pooling windows both kernel_h and kernel_w are required")
            else:
                raise self.error("pooling_param: kernel_size (or kernel_h and kernel_w) is required "
                                 "unless global_pooling is true")
            if self.kernel[0] <= 0 or self.kernel[1] <= 0:
                raise self.error(f"pooling_param: kernel dimensions must be > 0, got {list(self.kernel)}")
        self.pad = self._pair(pp, "pad", "pad_h", "pad_w", 0)
        self.stride = self._pair(pp, "stride", "stride_h", "stride_w", 1)
        if self.stride[0] <= 0 or self.stride[1] <= 0:
            raise self.error(f"pooling_param: stride must be > 0, got {list(self.stride)}")
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("with global_pooling: true only pad = 0 and stride = 1 are allowed")
        if self.kernel is not None and (self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]):
            raise self.error(f"pooling_param: pad {list(self.pad)} must be smaller than the kernel "
                             f"{list(self.kernel)}")
        shape0 = self.bottom_shapes[0]
        check_4d(self, shape0)
        self.geometry(shape0[2], shape0[3])

    def _pair(self, pp, both: str, fh: str, fw: str, default: int):
        has = pp.HasField
        if has(fh) or has(fw):
            if has(both):
                raise self.error(f"give either pooling_param.{both} or {fh} and {fw}, not both")
            if not (has(fh) and has(fw)):
                raise self.error(f"pooling_param: {fh} and {fw} must be given together")
            return int(getattr(pp, fh)), int(getattr(pp, fw))
        v = int(getattr(pp, both)) if has(both) else default
        return v, v

    def geometry(self, h: int, w: int):
        """``(kernel, (Ho, Wo))`` for an ``h x w`` input (ShapeError if the output would be empty)."""
        kernel = (h, w) if self.global_pooling else self.kernel
        clip = self.pad != (0, 0)  # Caffe clips both axes when either pad is non-zero
        ho = pooled_size(h, kernel[0], self.stride[0], self.pad[0], clip)
        wo = pooled_size(w, kernel[1], self.stride[1], self.pad[1], clip)
        if ho <= 0 or wo <= 0 or h <= 0 or w <= 0:
            raise self.error(f"pooled output size {ho}x{wo} is not positive for input {h}x{w} "
                             f"(kernel {list(kernel)}, pad {list(self.pad)}, stride {list(self.stride)})",
                             ShapeError)
        return kernel, (ho, wo)

    def forward(self, x):
        check_4d(self, x.shape)
        kernel, out = self.geometry(int(x.shape[2]), int(x.shape[3]))
        if self.method == _MAX:
            y, idx = max_pool2d_caffe(x, kernel, self.stride, self.pad, out)
            if self.n_listed_tops > 1:
                return y, idx.to(x.dtype)
            return (y,)
        return (ave_pool2d_caffe(x, kernel, self.stride, self.pad, out),)
