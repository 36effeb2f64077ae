"""Layer family: Convolution (incl. the fork's ``bottom_is_im2col``), Deconvolution, InnerProduct.

Weight layouts are Caffe's, so ``.caffemodel`` blobs load unchanged:

* Convolution: weight ``(O, C/g, kh, kw)``, bias ``(O,)``.
* Convolution with ``bottom_is_im2col: true`` (the fork, LAYERS.md §2.5): the
  bottom is an Im2col column blob ``(N, Cb, H, W)`` with ``Cb = C*kh*kw``
  channels in Im2col order ``c*kh*kw + i*kw + j``; the weight has shape
  ``(O, (Cb/g)/(kh*kw), kh, kw)`` -- the same as a normal convolution on the
  ``C``-channel image -- and the layer is a 1x1 convolution over channels with
  the weight flattened to ``(O, Cb/g)``.  **Output spatial size = input spatial
  size; pad, stride and dilation are ignored** (they only had to match the
  Im2col that produced the bottom).  Surprising but reproduced: the kernel
  size only shapes the weight blob.  The fork silently truncates
  ``(Cb/g)/(kh*kw)``; the port refuses a ``Cb/g`` that is not a multiple of
  ``kh*kw`` (the fork would then read misaligned channels).
* Deconvolution (BVLC semantics): weight ``(C, O/g, kh, kw)`` (input channels
  first), output size ``(in - 1)*stride - 2*pad + dilation*(k - 1) + 1``.
* InnerProduct: ``K = prod(shape[axis:])``; weight ``(O, K)``, or ``(K, O)``
  with ``transpose: true``; top shape ``shape[:axis] + (O,)``.

Convolution/Deconvolution accept several bottoms (Caffe: one top per bottom,
all bottoms of the same shape, the same weights applied to each).

Backward is torch autograd, which equals Caffe's: ``dx`` is the transposed
convolution, ``dW``/``db`` are summed over the batch (Caffe accumulates into the
param diffs, as autograd accumulates ``.grad``).  ``engine`` (CUDNN) and
``force_nd_im2col`` have no numerical effect and are ignored; the fork was
built without cuDNN, which would have ignored ``bottom_is_im2col``.  Only 2
spatial axes (4-D NCHW blobs) and channel ``axis`` 1 are supported.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import NotSupportedError, ShapeError
from ._common import as_dtype_of, check_4d, positive_int
from .base import Layer, register_layer
from .geometry import ConvGeometry, parse_conv_geometry


class _ConvBase(Layer):
    """Shared parameter parsing of Convolution and Deconvolution (``BaseConvolutionLayer``)."""

    num_bottoms = (1, None)
    num_tops = (1, None)
    reverse = False  # Deconvolution: the weight maps output channels -> input channels

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        if len(param.top) != len(bottom_shapes):
            raise self.error(f"needs one top per bottom, got {len(bottom_shapes)} bottom(s) and "
                             f"{len(param.top)} top(s)")
        cp = param.convolution_param
        shape0 = self.bottom_shapes[0]
        for i, s in enumerate(self.bottom_shapes[1:], 1):
            if s != shape0:
                raise self.error(f"all bottoms must have the same shape; bottom 0 is {list(shape0)}, "
                                 f"bottom {i} is {list(s)}", ShapeError)
        ndim = len(shape0)
        axis = int(cp.axis)
        if ndim and -ndim <= axis < 0:
            axis += ndim
        if axis != 1:
            raise self.error(f"convolution_param.axis must be 1 (the channel axis of an NCHW blob), got {cp.axis}")
        check_4d(self, shape0)
        self.geom: ConvGeometry = parse_conv_geometry(cp, self.error)
        self.num_output = positive_int(self, cp.num_output, "convolution_param.num_output")
        self.group = positive_int(self, cp.group, "convolution_param.group")
        self.channels = shape0[1]
        if self.channels % self.group:
            raise self.error(f"input channels ({self.channels}) must be a multiple of "
                             f"convolution_param.group ({self.group})", ShapeError)
        if self.num_output % self.group:
            raise self.error(f"convolution_param.num_output ({self.num_output}) must be a multiple of "
                             f"convolution_param.group ({self.group})")
        self.bottom_is_im2col = bool(cp.bottom_is_im2col)
        if self.reverse and self.bottom_is_im2col:
            raise self.error("convolution_param.bottom_is_im2col is only supported by Convolution",
                             NotSupportedError)
        self.bias_term = bool(cp.bias_term)
        kh, kw = self.geom.kernel
        if self.reverse:
            weight_shape = [self.channels, self.num_output // self.group, kh, kw]
        else:
            per_group = self.channels // self.group
            if self.bottom_is_im2col:
                if per_group % self.geom.taps:
                    raise self.error(
                        f"bottom_is_im2col: input channels per group ({per_group}) must be a multiple of "
                        f"kernel_h*kernel_w ({self.geom.taps}); the bottom must be an Im2col output", ShapeError)
                per_group //= self.geom.taps
            weight_shape = [self.num_output, per_group, kh, kw]
        self.add_blob(weight_shape, cp.weight_filler)
        if self.bias_term:
            self.add_blob([self.num_output], cp.bias_filler)
        self.output_hw(shape0[2], shape0[3])  # refuse impossible sizes at build time

    def output_hw(self, h: int, w: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_bottoms(self, bottoms: Sequence[torch.Tensor]):
        s0 = tuple(bottoms[0].shape)
        for i, b in enumerate(bottoms):
            s = tuple(b.shape)
            check_4d(self, s, f"bottom {i}")
            if s[1] != self.channels:
                raise self.error(f"bottom {i} has {s[1]} channels, the layer was built for {self.channels}",
                                 ShapeError)
            if s != s0:
                raise self.error(f"all bottoms must have the same shape; bottom 0 is {list(s0)}, "
                                 f"bottom {i} is {list(s)}", ShapeError)
        return self.output_hw(s0[2], s0[3])

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:  # pragma: no cover - abstract
        """The convolution of one bottom ``x`` with ``weight``/``bias`` already in ``x``'s dtype."""
        raise NotImplementedError

    def forward(self, *bottoms):
        ho, wo = self._check_bottoms(bottoms)
        weight = self.blobs[0]
        bias = self.blobs[1] if self.bias_term else None
        tops = []
        for x in bottoms:
            if x.is_meta:
                tops.append(x.new_empty((x.shape[0], self.num_output, ho, wo)))
                continue
            b = as_dtype_of(bias, x) if bias is not None else None
            tops.append(self._conv(x, as_dtype_of(weight, x), b))
        return tuple(tops)


@register_layer("Convolution")
class ConvolutionLayer(_ConvBase):
    """Caffe ``Convolution`` (NCHW), incl. the fork's ``bottom_is_im2col`` mode.

    Bottom(s) ``(N, C, H, W)``; top(s) ``(N, num_output, Ho, Wo)`` with
    ``Ho = (H + 2*pad - (dilation*(k-1)+1)) // stride + 1`` (or ``Ho = H`` with
    ``bottom_is_im2col``).  Blobs: weight, then bias if ``bias_term``.
    """

    def output_hw(self, h: int, w: int):
        if self.bottom_is_im2col:
            return h, w
        ho, wo = self.geom.output_size(h, w)
        if ho <= 0 or wo <= 0:
            raise self.error(f"output size {ho}x{wo} is not positive for input {h}x{w} "
                             f"(kernel {list(self.geom.kernel)}, pad {list(self.geom.pad)}, "
                             f"stride {list(self.geom.stride)}, dilation {list(self.geom.dilation)})", ShapeError)
        return ho, wo

    def _conv(self, x, wt, b):
        if self.bottom_is_im2col:
            # A 1x1 convolution with the weight flattened over (c, i, j), which is Im2col's order.
            wt = wt.reshape(self.num_output, -1, 1, 1)
            return F.conv2d(x, wt, b, stride=1, padding=0, dilation=1, groups=self.group)
        return F.conv2d(x, wt, b, stride=self.geom.stride, padding=self.geom.pad,
                        dilation=self.geom.dilation, groups=self.group)


@register_layer("Deconvolution")
class DeconvolutionLayer(_ConvBase):
    """Caffe ``Deconvolution`` (transposed convolution), weight ``(C, num_output/g, kh, kw)``.

    Top ``(N, num_output, Ho, Wo)`` with ``Ho = stride*(H-1) + dilation*(k-1) + 1 - 2*pad``.
    """

    reverse = True

    def output_hw(self, h: int, w: int):
        out = []
        for n, k, s, p, d in zip((h, w), self.geom.kernel, self.geom.stride, self.geom.pad, self.geom.dilation):
            out.append(s * (n - 1) + d * (k - 1) + 1 - 2 * p)
        if out[0] <= 0 or out[1] <= 0:
            raise self.error(f"output size {out[0]}x{out[1]} is not positive for input {h}x{w}", ShapeError)
        return out[0], out[1]

    def _conv(self, x, wt, b):
        return F.conv_transpose2d(x, wt, b, stride=self.geom.stride, padding=self.geom.pad,
                                  output_padding=0, groups=self.group, dilation=self.geom.dilation)


@register_layer("InnerProduct")
class InnerProductLayer(Layer):
    """Caffe ``InnerProduct`` (fully connected).

    Bottom of any shape; ``K = prod(shape[axis:])``; top ``shape[:axis] + (num_output,)``.
    Blobs: weight ``(num_output, K)`` (``(K, num_output)`` if ``transpose``), bias ``(num_output,)``.
    """

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        ip = param.inner_product_param
        self.num_output = positive_int(self, ip.num_output, "inner_product_param.num_output")
        self.bias_term = bool(ip.bias_term)
        self.transpose = bool(ip.transpose)
        self.axis_param = int(ip.axis)
        shape0 = self.bottom_shapes[0]
        self.axis = self._canonical_axis(len(shape0))
        self.K = math.prod(shape0[self.axis:])
        if self.K <= 0:
            raise self.error(f"bottom {list(shape0)} has no elements after axis {self.axis}", ShapeError)
        wshape = [self.K, self.num_output] if self.transpose else [self.num_output, self.K]
        self.add_blob(wshape, ip.weight_filler)
        if self.bias_term:
            self.add_blob([self.num_output], ip.bias_filler)

    def _canonical_axis(self, ndim: int) -> int:
        a = self.axis_param
        if not -ndim <= a < ndim:
            raise self.error(f"inner_product_param.axis {a} is out of range for a {ndim}-D bottom", ShapeError)
        return a + ndim if a < 0 else a

    def forward(self, x):
        axis = self._canonical_axis(x.dim())
        lead = tuple(int(d) for d in x.shape[:axis])
        k = math.prod(int(d) for d in x.shape[axis:])
        if k != self.K:
            raise self.error(f"input size incompatible with the weights: bottom {list(x.shape)} gives "
                             f"{k} inputs per row after axis {axis}, the layer has {self.K}", ShapeError)
        out_shape = lead + (self.num_output,)
        if x.is_meta:
            return (x.new_empty(out_shape),)
        w = as_dtype_of(self.blobs[0], x)
        x2 = x.reshape(math.prod(lead), k)
        y = x2 @ w if self.transpose else x2 @ w.t()
        if self.bias_term:
            y = y + as_dtype_of(self.blobs[1], x)
        return (y.reshape(out_shape),)
