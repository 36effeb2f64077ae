"""``torch.library`` custom ops of the segmentation-aware functions (for ``torch.compile`` / ``torch.export``).

Registered ops (namespace ``caffe_compat``), each with a fake (meta) kernel and a
registered autograd formula whose backward is itself a custom op:

* ``segaware_conv2d(x, mask, weight, bias?, kernel, stride, pad, dilation, groups) -> y``
  (+ ``segaware_conv2d_backward``);
* ``im2dist(x, kernel, stride, pad, dilation, norm, remove_center, remove_bounds) -> D``
  (+ ``im2dist_backward``);
* ``normconv_mask(emb, scale, has_scale, kernel, stride, pad, dilation, norm, rc, rb) -> (A, D)``
  (+ ``normconv_mask_backward``);
* ``masked_window_sum(img, A, weight?, kernel, stride, pad, dilation, group) -> y``
  (+ ``masked_window_sum_backward``).

Window arguments are ``[h, w]`` integer lists (pixels).  The kernels call the same
implementations as the eager autograd Functions (``caffe_compat.ops.dispatch`` for
the fused convolution), so compiled and eager runs give the same numbers.  The
public functions of :mod:`caffe_compat.ops` route through these ops while
torch.compile / torch.export trace (:func:`tracing`), and through their autograd
Functions otherwise (no op-registration overhead in eager runs).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from . import norm_conv as _nc
from .dispatch import impl_for
from .window import Window, window_distances, window_distances_backward

__all__ = ["tracing", "window_args", "segaware_conv2d_op", "im2dist_op", "normconv_mask_op",
           "masked_window_sum_op"]

NS = "caffe_compat"


def tracing(*tensors) -> bool:
    """True while torch.compile / torch.export trace, or when a tensor is fake."""
    if torch.compiler.is_compiling():
        return True
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    if is_exporting is not None and is_exporting():
        return True
    from torch._subclasses.fake_tensor import is_fake
    return any(t is not None and is_fake(t) for t in tensors)


def window_args(window: Window) -> Tuple[List[int], List[int], List[int], List[int]]:
    return list(window.kernel), list(window.stride), list(window.pad), list(window.dilation)


def _window(kernel, stride, pad, dilation) -> Window:
    return Window(tuple(kernel), tuple(stride), tuple(pad), tuple(dilation))


# ----------------------------------------------------------------------------- segaware_conv2d
@torch.library.custom_op(f"{NS}::segaware_conv2d", mutates_args=())
def _segaware_conv2d(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     kernel: List[int], stride: List[int], pad: List[int], dilation: List[int],
                     groups: int) -> torch.Tensor:
    return impl_for("segaware_conv2d", x).forward(x, mask, weight, bias, _window(kernel, stride, pad, dilation),
                                                  groups)


@_segaware_conv2d.register_fake
def _(x, mask, weight, bias, kernel, stride, pad, dilation, groups):
    return x.new_empty((x.shape[0], weight.shape[0], mask.shape[2], mask.shape[3]))


@torch.library.custom_op(f"{NS}::segaware_conv2d_backward", mutates_args=())
def _segaware_conv2d_backward(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, grad_y: torch.Tensor,
                              kernel: List[int], stride: List[int], pad: List[int], dilation: List[int],
                              groups: int, needs: List[bool]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                        torch.Tensor]:
    dx, dm, dw, db = impl_for("segaware_conv2d", x).backward(
        x, mask, weight, grad_y, _window(kernel, stride, pad, dilation), groups, needs)
    # custom ops return tensors only: zeros stand for gradients not asked for
    dx = torch.zeros_like(x) if dx is None else dx
    dm = torch.zeros_like(mask) if dm is None else dm
    dw = torch.zeros_like(weight) if dw is None else dw
    db = grad_y.new_zeros(weight.shape[0]) if db is None else db
    return dx, dm, dw, db


@_segaware_conv2d_backward.register_fake
def _(x, mask, weight, grad_y, kernel, stride, pad, dilation, groups, needs):
    return (torch.empty_like(x), torch.empty_like(mask), torch.empty_like(weight),
            grad_y.new_empty(weight.shape[0]))


def _sc_setup(ctx, inputs, output):
    x, mask, weight, bias, kernel, stride, pad, dilation, groups = inputs
    ctx.save_for_backward(x, mask, weight)
    ctx.args = (kernel, stride, pad, dilation, groups)
    ctx.has_bias = bias is not None


def _sc_backward(ctx, gy):
    x, mask, weight = ctx.saved_tensors
    needs = [bool(v) for v in ctx.needs_input_grad[:4]]
    dx, dm, dw, db = _segaware_conv2d_backward(x, mask, weight, gy, *ctx.args[:4], ctx.args[4], needs)
    return (dx if needs[0] else None, dm if needs[1] else None, dw if needs[2] else None,
            db if (needs[3] and ctx.has_bias) else None, None, None, None, None, None)


_segaware_conv2d.register_autograd(_sc_backward, setup_context=_sc_setup)


def segaware_conv2d_op(x, mask, weight, bias, window: Window, groups: int) -> torch.Tensor:
    return _segaware_conv2d(x, mask, weight, bias, *window_args(window), int(groups))


# ----------------------------------------------------------------------------- im2dist
@torch.library.custom_op(f"{NS}::im2dist", mutates_args=())
def _im2dist(x: torch.Tensor, kernel: List[int], stride: List[int], pad: List[int], dilation: List[int],
             norm: int, remove_center: bool, remove_bounds: bool) -> torch.Tensor:
    from .im2dist import CHUNK_ELEMENTS
    with torch.no_grad():
        return window_distances(x, _window(kernel, stride, pad, dilation), norm, remove_center, remove_bounds,
                                chunk_elements=CHUNK_ELEMENTS)


@_im2dist.register_fake
def _(x, kernel, stride, pad, dilation, norm, remove_center, remove_bounds):
    ho, wo = _window(kernel, stride, pad, dilation).output_size(x.shape[2], x.shape[3])
    return x.new_empty((x.shape[0], kernel[0] * kernel[1], ho, wo))


@torch.library.custom_op(f"{NS}::im2dist_backward", mutates_args=())
def _im2dist_backward(x: torch.Tensor, grad: torch.Tensor, kernel: List[int], stride: List[int], pad: List[int],
                      dilation: List[int], norm: int) -> torch.Tensor:
    return window_distances_backward(x, grad, _window(kernel, stride, pad, dilation), norm)


@_im2dist_backward.register_fake
def _(x, grad, kernel, stride, pad, dilation, norm):
    return torch.empty_like(x)


def _id_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.args = inputs[1:6]


def _id_backward(ctx, g):
    (x,) = ctx.saved_tensors
    return (_im2dist_backward(x, g, *ctx.args),) + (None,) * 7


_im2dist.register_autograd(_id_backward, setup_context=_id_setup)


def im2dist_op(x, window: Window, norm: int, remove_center: bool, remove_bounds: bool) -> torch.Tensor:
    return _im2dist(x, *window_args(window), int(norm), bool(remove_center), bool(remove_bounds))


# ----------------------------------------------------------------------------- normconv_mask
@torch.library.custom_op(f"{NS}::normconv_mask", mutates_args=())
def _normconv_mask(emb: torch.Tensor, scale: torch.Tensor, has_scale: bool, kernel: List[int], stride: List[int],
                   pad: List[int], dilation: List[int], norm: int, remove_center: bool,
                   remove_bounds: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    win = _window(kernel, stride, pad, dilation)
    with torch.no_grad():
        D = window_distances(emb, win, norm, remove_center, remove_bounds)
        Z = D * (-scale.reshape(()).to(D.dtype)) if has_scale else D
        A = (Z - Z.amax(1, keepdim=True)).exp_()
        A /= A.sum(1, keepdim=True)
    return A, D


@_normconv_mask.register_fake
def _(emb, scale, has_scale, kernel, stride, pad, dilation, norm, remove_center, remove_bounds):
    ho, wo = _window(kernel, stride, pad, dilation).output_size(emb.shape[2], emb.shape[3])
    shape = (emb.shape[0], kernel[0] * kernel[1], ho, wo)
    return emb.new_empty(shape), emb.new_empty(shape)


@torch.library.custom_op(f"{NS}::normconv_mask_backward", mutates_args=())
def _normconv_mask_backward(emb: torch.Tensor, A: torch.Tensor, D: torch.Tensor, scale: torch.Tensor,
                            gA: torch.Tensor, has_scale: bool, kernel: List[int], stride: List[int],
                            pad: List[int], dilation: List[int], norm: int) -> Tuple[torch.Tensor, torch.Tensor]:
    gA = gA.contiguous()
    dZ = A * (gA - (A * gA).sum(1, keepdim=True))
    if has_scale:
        s = scale.reshape(()).to(D.dtype)
        ref = torch.where(s >= 0, D.amin(1, keepdim=True), D.amax(1, keepdim=True))
        dscale = (-(dZ * (D - ref)).sum()).reshape(scale.shape).to(scale.dtype)
        dD = dZ * (-s)
    else:
        dscale, dD = torch.zeros_like(scale), dZ
    return window_distances_backward(emb, dD, _window(kernel, stride, pad, dilation), norm), dscale


@_normconv_mask_backward.register_fake
def _(emb, A, D, scale, gA, has_scale, kernel, stride, pad, dilation, norm):
    return torch.empty_like(emb), torch.empty_like(scale)


def _nm_setup(ctx, inputs, output):
    emb, scale, has_scale = inputs[:3]
    A, D = output
    ctx.save_for_backward(emb, A, D, scale)
    ctx.args = (has_scale,) + tuple(inputs[3:8])


def _nm_backward(ctx, gA, gD):
    emb, A, D, scale = ctx.saved_tensors
    demb, dscale = _normconv_mask_backward(emb, A, D, scale, gA, *ctx.args)
    return (demb, dscale) + (None,) * 8


_normconv_mask.register_autograd(_nm_backward, setup_context=_nm_setup)


def normconv_mask_op(emb, scale: Optional[torch.Tensor], window: Window, norm: int, remove_center: bool,
                     remove_bounds: bool) -> torch.Tensor:
    has = scale is not None
    s = scale.reshape(1) if has else emb.new_zeros(1)
    A, _ = _normconv_mask(emb, s, has, *window_args(window), int(norm), bool(remove_center), bool(remove_bounds))
    return A


# ----------------------------------------------------------------------------- masked_window_sum
@torch.library.custom_op(f"{NS}::masked_window_sum", mutates_args=())
def _masked_window_sum(img: torch.Tensor, A: torch.Tensor, weight: Optional[torch.Tensor], kernel: List[int],
                       stride: List[int], pad: List[int], dilation: List[int], group: int) -> torch.Tensor:
    with torch.no_grad():
        return _nc.MaskedWindowSum.forward(_Ctx(), img, A, weight, _window(kernel, stride, pad, dilation), group)


@_masked_window_sum.register_fake
def _(img, A, weight, kernel, stride, pad, dilation, group):
    O = img.shape[1] if weight is None else weight.shape[0]
    return img.new_empty((img.shape[0], O, A.shape[2], A.shape[3]))


@torch.library.custom_op(f"{NS}::masked_window_sum_backward", mutates_args=())
def _masked_window_sum_backward(img: torch.Tensor, A: torch.Tensor, weight: Optional[torch.Tensor],
                                gy: torch.Tensor, kernel: List[int], stride: List[int], pad: List[int],
                                dilation: List[int], group: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ctx = _Ctx()
    ctx.geom, ctx.group, ctx.depthwise = _window(kernel, stride, pad, dilation), group, weight is None
    ctx.saved_tensors = (img, A, weight if weight is not None else img.new_zeros(()))
    ctx.needs_input_grad = (True, True, weight is not None)
    with torch.no_grad():  # the undecorated body of MaskedWindowSum.backward (once_differentiable's __wrapped__)
        dimg, dA, dW = _nc.MaskedWindowSum.backward.__wrapped__(ctx, gy)[:3]
    return dimg, dA, (img.new_zeros(()) if dW is None else dW)


@_masked_window_sum_backward.register_fake
def _(img, A, weight, gy, kernel, stride, pad, dilation, group):
    return torch.empty_like(img), torch.empty_like(A), (img.new_empty(()) if weight is None
                                                        else torch.empty_like(weight))


def _mw_setup(ctx, inputs, output):
    img, A, weight = inputs[:3]
    ctx.has_weight = weight is not None
    ctx.save_for_backward(img, A, *((weight,) if weight is not None else ()))
    ctx.args = tuple(inputs[3:8])


def _mw_backward(ctx, gy):
    saved = ctx.saved_tensors
    img, A = saved[:2]
    weight = saved[2] if ctx.has_weight else None
    dimg, dA, dW = _masked_window_sum_backward(img, A, weight, gy, *ctx.args)
    return (dimg, dA, dW if ctx.has_weight else None) + (None,) * 5


_masked_window_sum.register_autograd(_mw_backward, setup_context=_mw_setup)


class _Ctx:
    """A stand-in autograd context, so the custom ops reuse MaskedWindowSum's code."""

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def masked_window_sum_op(img, A, window: Window, weight, group: int) -> torch.Tensor:
    return _masked_window_sum(img, A, weight, *window_args(window), int(group))
