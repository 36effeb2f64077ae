"""Normalised masked convolution (the fork's ``NormConv``) as two autograd Functions.

The fork's NormConv (``norm_conv_layer.cpp``) computes, per image, with ``K = kh*kw``
window taps and ``P = Ho*Wo`` output positions:

1. ``D[k, p]``: the Im2dist distance between the feature vector at the window
   centre of ``p`` and at its ``k``-th (dilated) neighbour (LAYERS.md §2.2);
2. ``Z = -s*D`` (learnable or fixed scale ``s``), or ``Z = +D`` when the layer
   has no scale term;
3. ``A[k, p] = softmax_k(Z[:, p])``  -- the *mask*, summing to 1 over the window;
4. ``y[o, p] = sum_{c in group(o), k} W[o, c, k] * A[k, p] * X[c, k, p] (+ b[o])``
   where ``X`` is the Im2col of the image (zero outside).

This module splits that into two steps with a clean functional API:

* :func:`normconv_mask` -- ``(emb, scale) -> A`` (steps 1-3), autograd Function
  :class:`NormConvMask`;
* :func:`masked_window_sum` -- ``(img, A, weight) -> y`` (step 4, no bias),
  autograd Function :class:`MaskedWindowSum`;
* :func:`norm_conv` -- both, plus the bias: the whole layer.

Splitting matters for the segmentation-aware CRF: the mask depends only on the
features, so NormConvMeanfield computes it once and reuses it in every mean-field
iteration (the fork recomputes the identical mask in each iteration).

Memory and speed.  Neither Function ever materialises a ``C*K*H*W`` (im2col)
tensor: both loop over the K taps, each tap being a rectangular (strided) window
of the unpadded input.  Saved for backward: the inputs, ``A`` and ``D``
(``N*K*Ho*Wo`` each); the backward passes recompute per-tap differences.
Distances use the symmetry ``dist(q, q+δ) == dist(q+δ, q)``: for a window whose
offsets come in ± pairs (odd kernels) each pair is computed once on the image
grid, halving the dominant cost (66 feature channels x 169 taps in res/test).
The inner loops are plain torch ops, so this runs on any device; a CUDA kernel
may later replace :func:`_pair_distance_maps` / the tap loops behind the same API.
The Im2dist layer (:mod:`caffe_compat.ops.im2dist`) uses the same distance
forward (:func:`window_distances`) and backward (:func:`window_distances_backward`).

Fork semantics reproduced (documented for users in ``docs/crf_semantics.md``):

* Distances are Im2dist's: L2 is the *half squared* Euclidean distance
  ``0.5*sum_e d_e^2``, L1 is ``sum_e |d_e|`` with ``d = F[centre] - F[neighbour]``.
* A neighbour outside the image has distance **0** (it looks maximally similar
  and gets a large weight while contributing the image value 0), unless
  ``remove_bounds``: then its distance is ``FLT_MAX/100`` (float32 value
  3.4028235e36) and its weight underflows to exactly 0.
* ``remove_center`` gives ``FLT_MAX/100`` to every tap whose *position* equals the
  centre's.  The fork compares positions, not tap indices, so with dilation 0
  (NormConvMeanfield's default!) every tap is "the centre".
* Columns whose centre lies outside the image (``pad > (k//2)*dilation``) have all
  distances 0, whatever the remove flags: a uniform mask.
* When every tap of a column is removed, all ``Z`` are equal and the softmax is
  **uniform over all K taps** (``exp(0)/K``), so the column averages the in-image
  neighbours *and the centre itself* -- not zero.
* With no scale term the fork uses ``Z = +D`` (no negation): far neighbours get
  the largest weights.  Reproduced as is (``scale=None``).
* No gradient flows through the constant entries (removed taps, out-of-image
  neighbours, centre-outside columns): their stored difference is 0.
* L1 gradient: ``sign(0) = 0`` (the fork's GPU rule, the project policy; its CPU
  code used ``sign(0) = -1``).
* The fork skips the image/embedding gradients entirely for a 1x1 kernel with
  stride 1 and pad 0 (``is_1x1``); this port computes the correct gradient there.

Deliberate numerical difference (documented): the scale gradient is computed as
``ds = -sum_{k,p} dZ[k,p] * (D[k,p] - Dref[p])`` with a per-column reference
``Dref`` (the distance of the most-weighted tap).  This equals the fork's
``-sum dZ*D`` exactly in real arithmetic (``sum_k dZ[k,p] = 0``), but stays exact
where every tap of a column is removed (true derivative 0), where the fork's
float sum returns ``3.4e36`` times rounding noise.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .. import cuda, cuda_ops
from .window import (CHUNK_ELEMENTS, FLT_MAX_OVER_100, L1, L2, Window, _as_window, _plan,  # noqa: F401
                     window_distances, window_distances_backward)


#: Former private name (kept for existing imports).
_dist_backward = window_distances_backward


# ---------------------------------------------------------------------------
# the mask: emb -> A
# ---------------------------------------------------------------------------
class NormConvMask(torch.autograd.Function):
    """``A = softmax_k(Z)`` with ``Z = -s*D`` (``scale`` given) or ``Z = +D`` (``scale`` None).

    Forward inputs: ``emb (N, E, H, W)``, ``scale`` (tensor with one element, or
    None), plus static ``geom, norm, remove_center, remove_bounds``.
    Output: ``A (N, K, Ho, Wo)``.  Backward follows the fork (§2.6): ``dZ = A*(dA -
    sum_k A*dA)``, ``dD = -s*dZ``, ``demb = Im2dist backward(dD)``,
    ``ds = -sum dZ*(D - Dref)`` (see the module docstring).
    """

    @staticmethod
    def forward(ctx, emb, scale, geom, norm, remove_center, remove_bounds):
        D = window_distances(emb, geom, norm, remove_center, remove_bounds)
        if scale is None:
            Z = D
        else:
            Z = D * (-scale.reshape(()).to(D.dtype))
        # Caffe's softmax: subtract the per-position max over taps, exp, divide by the sum
        backend = cuda.backend_for(Z)  # [cuda dispatch]
        if backend is not None:
            A = cuda_ops.softmax_axis1(backend, Z)
        else:
            A = (Z - Z.amax(1, keepdim=True)).exp_()
            A /= A.sum(1, keepdim=True)
        ctx.geom, ctx.norm = geom, norm
        ctx.has_scale = scale is not None
        ctx.save_for_backward(emb, A, D, scale if scale is not None else emb.new_zeros(()))
        return A

    @staticmethod
    @once_differentiable
    def backward(ctx, gA):
        emb, A, D, scale = ctx.saved_tensors
        need_emb, need_scale = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        demb = dscale = None
        if not (need_emb or need_scale):
            return None, None, None, None, None, None
        gA = gA.contiguous()
        backend = cuda.backend_for(A)  # [cuda dispatch]
        if backend is not None:
            dZ = cuda_ops.softmax_axis1_backward(backend, A, gA)
        else:
            dZ = A * (gA - (A * gA).sum(1, keepdim=True))
        if need_scale and ctx.has_scale:
            s = scale.reshape(()).to(D.dtype)
            # reference distance of the most weighted tap: min D for s >= 0, max D for s < 0
            ref = torch.where(s >= 0, D.amin(1, keepdim=True), D.amax(1, keepdim=True))
            dscale = (-(dZ * (D - ref)).sum()).reshape(scale.shape).to(scale.dtype)
        if need_emb:
            dD = dZ * (-scale.reshape(()).to(dZ.dtype)) if ctx.has_scale else dZ
            demb = window_distances_backward(emb, dD, ctx.geom, ctx.norm)
        return demb, dscale, None, None, None, None


def normconv_mask(emb: torch.Tensor, scale: Optional[torch.Tensor], geom, norm: int = L2,
                  remove_center: bool = False, remove_bounds: bool = False) -> torch.Tensor:
    """The fork's normalised mask ``A (N, K, Ho, Wo)`` from features ``emb (N, E, H, W)``.

    Args:
        emb: features (unitless; distances are computed in their units).
        scale: tensor with one element (``s`` of ``Z = -s*D``, may require grad),
            or None for the fork's ``scale_term: false`` behaviour ``Z = +D``.
        geom: :class:`Window` / ``ConvGeometry`` (kernel, stride, pad, dilation).
        norm: :data:`L2` (half squared distance) or :data:`L1`.
        remove_center, remove_bounds: the fork's flags (``FLT_MAX/100`` distances).
    Returns:
        ``A`` with ``sum_k A[n, k, y, x] == 1``; tap ``k = i*kw + j``.
    """
    geom = _as_window(geom)
    N, _, H, W = emb.shape
    Ho, Wo = geom.output_size(H, W)
    if emb.is_meta or (scale is not None and scale.is_meta):
        return emb.new_empty((N, geom.taps, max(Ho, 0), max(Wo, 0)), device="meta")
    from .library import normconv_mask_op, tracing
    if tracing(emb, scale):  # torch.compile / torch.export: the torch.library op
        return normconv_mask_op(emb, scale, geom, int(norm), remove_center, remove_bounds)
    return NormConvMask.apply(emb, scale, geom, int(norm), bool(remove_center), bool(remove_bounds))


# ---------------------------------------------------------------------------
# the masked window sum: (img, A, W) -> y
# ---------------------------------------------------------------------------
def _tap_weight(weight: torch.Tensor, i: int, j: int, group: int) -> torch.Tensor:
    """Tap ``(i, j)`` of a ``(O, C/g, kh, kw)`` weight as ``(g, O/g, C/g)`` matrices."""
    O, cg = weight.shape[0], weight.shape[1]
    return weight[:, :, i, j].reshape(group, O // group, cg)


def _mix(wk: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Grouped channel mixing ``(g, O/g, C/g) x (N, C, h, w) -> (N, O, h, w)`` (a grouped 1x1 conv)."""
    N, C, h, w = r.shape
    g, og, cg = wk.shape
    return torch.matmul(wk, r.reshape(N, g, cg, h * w)).reshape(N, g * og, h, w)


class MaskedWindowSum(torch.autograd.Function):
    """``y[n, o, p] = sum_{c in group(o), k} W[o, c, k] * A[n, k, p] * X[n, c, k, p]``.

    ``X`` is the (zero-padded, strided, dilated) window of ``img``; it is never
    materialised.  ``weight`` None means depthwise unit weights (``O = C``,
    ``y[c, p] = sum_k A[k, p] X[c, k, p]``), NormConvMeanfield's case.
    """

    @staticmethod
    def forward(ctx, img, A, weight, geom, group):
        ctx.geom, ctx.group, ctx.depthwise = geom, group, weight is None
        backend = cuda.backend_for(img)  # [cuda dispatch]
        if backend is not None:
            ctx.save_for_backward(img, A, weight if weight is not None else img.new_zeros(()))
            return cuda_ops.masked_window_sum_forward(backend, img, A, weight, geom, group)
        N, C, H, W = img.shape
        plan = _plan(geom, H, W)
        O = C if weight is None else weight.shape[0]
        y = img.new_zeros((N, O, plan.Ho, plan.Wo))
        for k, (i, j) in enumerate(plan.taps):
            if plan.out_sl[k] is None:
                continue                       # tap entirely outside: X = 0
            (oy, ox), (iy, ix) = plan.out_sl[k], plan.in_sl[k]
            a = A[:, k:k + 1, oy, ox]
            x = img[:, :, iy, ix]
            if weight is None:
                y[:, :, oy, ox].addcmul_(a, x)
            else:
                y[:, :, oy, ox] += _mix(_tap_weight(weight, i, j, group), a * x)
        ctx.geom, ctx.group, ctx.depthwise = geom, group, weight is None
        ctx.save_for_backward(img, A, weight if weight is not None else img.new_zeros(()))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        img, A, weight = ctx.saved_tensors
        geom, group, depthwise = ctx.geom, ctx.group, ctx.depthwise
        need_img, need_A, need_w = ctx.needs_input_grad[:3]
        backend = cuda.backend_for(img)  # [cuda dispatch]
        if backend is not None:
            dimg, dA, dW = cuda_ops.masked_window_sum_backward(
                backend, gy, img, A, None if depthwise else weight, geom, group, need_img, need_A,
                need_w and not depthwise)
            return dimg, dA, dW, None, None
        N, C, H, W = img.shape
        plan = _plan(geom, H, W)
        gy = gy.contiguous()
        dimg = torch.zeros_like(img) if need_img else None
        dA = torch.zeros_like(A) if need_A else None
        dW = torch.zeros_like(weight) if (need_w and not depthwise) else None
        if not depthwise:
            O = weight.shape[0]
            g, cg, og = group, C // group, O // group
        for k, (i, j) in enumerate(plan.taps):
            if plan.out_sl[k] is None:
                continue
            (oy, ox), (iy, ix) = plan.out_sl[k], plan.in_sl[k]
            gyk = gy[:, :, oy, ox]
            a = A[:, k:k + 1, oy, ox]
            x = img[:, :, iy, ix]
            if depthwise:
                G = gyk
            else:
                # G[c] = sum_{o in group(c)} W[o, c, k] * dy[o]
                G = _mix(_tap_weight(weight, i, j, group).transpose(1, 2), gyk)
            if need_img:
                dimg[:, :, iy, ix].addcmul_(G, a)
            if need_A:
                dA[:, k, oy, ox] = (G * x).sum(1)
            if dW is not None:
                r = (a * x).reshape(N, g, cg, -1)
                dW[:, :, i, j] = torch.einsum("ngop,ngcp->goc", gyk.reshape(N, g, og, -1), r).reshape(O, cg)
        return dimg, dA, dW, None, None


def masked_window_sum(img: torch.Tensor, A: torch.Tensor, geom, weight: Optional[torch.Tensor] = None,
                      group: int = 1) -> torch.Tensor:
    """Masked convolution ``(N, C, H, W) x (N, K, Ho, Wo) -> (N, O, Ho, Wo)`` (no bias).

    Args:
        img: the image (probabilities in the CRF), zero outside.
        A: per-position tap weights, e.g. from :func:`normconv_mask`.
        geom: :class:`Window` / ``ConvGeometry``.
        weight: ``(O, C/group, kh, kw)`` or None for depthwise unit weights (O = C).
        group: channel groups of ``weight`` (ignored when weight is None).
    """
    geom = _as_window(geom)
    N, C, H, W = img.shape
    Ho, Wo = geom.output_size(H, W)
    O = C if weight is None else weight.shape[0]
    if img.is_meta or A.is_meta or (weight is not None and weight.is_meta):
        return img.new_empty((N, O, max(Ho, 0), max(Wo, 0)), device="meta")
    from .library import masked_window_sum_op, tracing
    if tracing(img, A, weight):  # torch.compile / torch.export: the torch.library op
        return masked_window_sum_op(img, A, geom, weight, int(group))
    return MaskedWindowSum.apply(img, A, weight, geom, int(group))


def norm_conv(img: torch.Tensor, emb: torch.Tensor, weight: Optional[torch.Tensor],
              bias: Optional[torch.Tensor], scale: Optional[torch.Tensor], geom, group: int = 1,
              norm: int = L2, remove_center: bool = False, remove_bounds: bool = False) -> torch.Tensor:
    """The fork's NormConv: ``img (N, C, H, W)``, ``emb (N, E, H, W)`` -> ``(N, O, Ho, Wo)``.

    ``y = masked_window_sum(img, normconv_mask(emb, scale, ...), weight) + bias``.
    ``scale`` None reproduces ``scale_term: false`` (``Z = +D``).
    """
    A = normconv_mask(emb, scale, geom, norm, remove_center, remove_bounds)
    y = masked_window_sum(img, A, geom, weight, group)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1).to(y.dtype)
    return y


__all__ = ["FLT_MAX_OVER_100", "CHUNK_ELEMENTS", "L1", "L2", "Window", "window_distances",
           "window_distances_backward", "NormConvMask",
           "normconv_mask", "MaskedWindowSum", "masked_window_sum", "norm_conv"]
