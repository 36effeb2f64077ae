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

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .. import cuda, cuda_ops
from ..layers.geometry import ConvGeometry

#: Caffe's ``FLT_MAX/100`` (computed in float32 as the fork does): the distance
#: given to removed taps.  The same value is used in float64.
FLT_MAX_OVER_100 = float(np.float32(np.finfo(np.float32).max) / np.float32(100))

L1 = 1
L2 = 2

#: Upper bound on the elements of one channel chunk of pair differences in
#: :func:`window_distances` (``caffe_compat.ops.im2dist.CHUNK_ELEMENTS`` is the
#: Im2dist layer's, passed explicitly).
CHUNK_ELEMENTS = 1 << 22


#: The window geometry (kernel, stride, pad, dilation, each ``(h, w)`` in pixels): tap
#: ``(i, j)`` of output ``(y, x)`` reads image pixel ``(y*stride_h - pad_h + i*dilation_h,
#: x*stride_w - pad_w + j*dilation_w)``; the centre is tap ``(kh//2, kw//2)``.  The same type
#: as the layers' convolution geometry; here dilation 0 is allowed (NormConvMeanfield's
#: default: every tap reads the same pixel).  ``output_size`` gives 0 where the window
#: does not fit.
Window = ConvGeometry


def _as_window(geom) -> Window:
    if isinstance(geom, Window):
        return geom
    return Window(tuple(int(v) for v in geom.kernel), tuple(int(v) for v in geom.stride),
                  tuple(int(v) for v in geom.pad), tuple(int(v) for v in geom.dilation))


# ---------------------------------------------------------------------------
# index helpers (pure Python ints; no tensor work)
# ---------------------------------------------------------------------------
def _span(n_out: int, n_in: int, stride: int, off: int):
    """Output indices ``y`` in ``[lo, hi)`` with ``0 <= y*stride + off < n_in``.

    Returns ``(lo, hi, first)`` with ``first = lo*stride + off`` (the image index
    of output ``lo``), or ``None`` if no output index maps inside the image.
    """
    lo = max(0, -(off // stride))          # ceil(-off / stride)
    hi = min(n_out, (n_in - 1 - off) // stride + 1)
    if hi <= lo:
        return None
    return lo, hi, lo * stride + off


def _slices(span, stride: int):
    lo, hi, first = span
    return slice(lo, hi), slice(first, first + (hi - lo - 1) * stride + 1, stride)


@dataclass
class _Plan:
    """Per-call tap geometry: which output rectangle of tap k reads which image rectangle."""

    H: int
    W: int
    Ho: int
    Wo: int
    taps: List[Tuple[int, int]]              # (i, j) per tap k
    offsets: List[Tuple[int, int]]           # image offset of tap k's neighbour from the centre
    out_sl: List[Optional[Tuple[slice, slice]]]   # output rectangle where the neighbour is inside
    in_sl: List[Optional[Tuple[slice, slice]]]    # matching image rectangle
    centre_out: Optional[Tuple[slice, slice]]     # output rectangle whose centre is inside
    centre_in: Optional[Tuple[slice, slice]]


def _plan(geom: Window, H: int, W: int) -> _Plan:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom.kernel, geom.stride, geom.pad, geom.dilation
    Ho, Wo = geom.output_size(H, W)
    ci, cj = kh // 2, kw // 2

    def rect(oy, ox):
        sy, sx = _span(Ho, H, sh, oy), _span(Wo, W, sw, ox)
        if sy is None or sx is None:
            return None, None
        (oys, iys), (oxs, ixs) = _slices(sy, sh), _slices(sx, sw)
        return (oys, oxs), (iys, ixs)

    taps, offsets, out_sl, in_sl = [], [], [], []
    for i in range(kh):
        for j in range(kw):
            taps.append((i, j))
            offsets.append(((i - ci) * dh, (j - cj) * dw))
            o, s = rect(-ph + i * dh, -pw + j * dw)
            out_sl.append(o)
            in_sl.append(s)
    co, cs = rect(-ph + ci * dh, -pw + cj * dw)
    return _Plan(H, W, Ho, Wo, taps, offsets, out_sl, in_sl, co, cs)


def _valid_1d(n_out: int, n_in: int, stride: int, off: int, device) -> torch.Tensor:
    pos = torch.arange(n_out, device=device) * stride + off
    return (pos >= 0) & (pos < n_in)


def _masks(geom: Window, plan: _Plan, device):
    """Boolean ``(Ho, Wo)`` masks: centre inside, and per tap neighbour inside."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom.kernel, geom.stride, geom.pad, geom.dilation
    ci, cj = kh // 2, kw // 2
    rc = _valid_1d(plan.Ho, plan.H, sh, -ph + ci * dh, device)
    cc = _valid_1d(plan.Wo, plan.W, sw, -pw + cj * dw, device)
    centre = rc[:, None] & cc[None, :]
    rows = [_valid_1d(plan.Ho, plan.H, sh, -ph + i * dh, device) for i in range(kh)]
    cols = [_valid_1d(plan.Wo, plan.W, sw, -pw + j * dw, device) for j in range(kw)]
    nbr = [rows[i][:, None] & cols[j][None, :] for (i, j) in plan.taps]
    return centre, nbr


def _overlap(H: int, W: int, dy: int, dx: int):
    """Image rectangles ``q`` and ``q + (dy, dx)`` where both are inside, or None."""
    y0, y1 = max(0, -dy), min(H, H - dy)
    x0, x1 = max(0, -dx), min(W, W - dx)
    if y1 <= y0 or x1 <= x0:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 + dy, y1 + dy), slice(x0 + dx, x1 + dx))


def _canonical(off: Tuple[int, int]) -> Tuple[Tuple[int, int], bool]:
    """The representative of ``{off, -off}`` (lexicographically positive) and whether off is it."""
    dy, dx = off
    if dy > 0 or (dy == 0 and dx > 0):
        return off, True
    return (-dy, -dx), False


def _pair_keys(offsets: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """The distinct canonical offsets of the non-centre taps, in tap order."""
    keys: List[Tuple[int, int]] = []
    for off in offsets:
        if off != (0, 0):
            key, _ = _canonical(off)
            if key not in keys:
                keys.append(key)
    return keys


def _pair_distance_maps(emb: torch.Tensor, offsets: Sequence[Tuple[int, int]], norm: int,
                        chunk_elements: Optional[int] = None) -> Dict[Tuple[int, int], torch.Tensor]:
    """For each canonical offset δ: ``E_δ[n, q] = dist(emb[n, :, q], emb[n, :, q+δ])`` on the image grid.

    ``E_δ`` is ``(N, H, W)``, zero where ``q`` or ``q+δ`` is outside the image.
    Distances: L2 = ``0.5*sum_e d^2``, L1 = ``sum_e |d|`` with ``d = emb[q] - emb[q+δ]``,
    accumulated in the input dtype in increasing ``e`` (the fork's order: the float32
    values are bit-identical to the fork's Im2dist; ``d`` is exactly minus the fork's
    ``centre - neighbour`` for the ``-δ`` tap, and ``|d|``, ``d*d`` ignore the sign).

    Memory: the differences are formed one offset pair and one chunk of channels at a
    time (``(N, c, h, w)`` with ``N*c*H*W <= chunk_elements`` unless ``c = 1``); the maps
    themselves are ``P*N*H*W`` (about half the ``N*K*H*W`` distances).
    """
    N, E, H, W = emb.shape
    keys = _pair_keys(offsets)
    acc = emb.new_zeros((len(keys), N, H, W))
    if not (acc.numel() and E):
        return {key: acc[p] for p, key in enumerate(keys)}
    chunk = CHUNK_ELEMENTS if chunk_elements is None else int(chunk_elements)
    step = max(1, min(E, chunk // (N * H * W)))
    src = emb.detach()
    with torch.no_grad():
        for p, key in enumerate(keys):
            ov = _overlap(H, W, *key)
            if ov is None:
                continue
            (ay, ax), (by, bx) = ov
            a = acc[p][:, ay, ax]
            for s in range(0, E, step):
                t = min(E, s + step)
                d = src[:, s:t, ay, ax] - src[:, s:t, by, bx]
                if norm == L2:
                    d.mul_(d)
                    for c in range(t - s):
                        # a + 0.5*(d*d): scaling by 0.5 is exact (barring subnormals), so this
                        # equals the fork's float sum bit for bit, fused or not
                        a.add_(d[:, c], alpha=0.5)
                else:
                    d.abs_()
                    for c in range(t - s):  # sequential over channels: the fork's summation order
                        a.add_(d[:, c])
    return {key: acc[p] for p, key in enumerate(keys)}


def window_distances(emb: torch.Tensor, geom, norm: int = L2, remove_center: bool = False,
                     remove_bounds: bool = False, chunk_elements: Optional[int] = None) -> torch.Tensor:
    """The fork's Im2dist: ``(N, E, H, W)`` features -> ``(N, K, Ho, Wo)`` distances (no grad).

    Tap ``k = i*kw + j``; values as described in the module docstring (removed
    entries ``FLT_MAX/100``, out-of-image neighbours 0, centre-outside columns 0).
    The single implementation of the distance forward: :func:`caffe_compat.ops.im2dist.im2dist`
    (the Im2dist layer) and :class:`NormConvMask` (NormConv, NormConvMeanfield) both use it.
    ``chunk_elements`` bounds the channel chunks (default :data:`CHUNK_ELEMENTS`).
    """
    geom = _as_window(geom)
    backend = cuda.backend_for(emb)  # [cuda dispatch] the CUDA kernel when one applies
    if backend is not None:
        return cuda_ops.window_distances(backend, emb, geom, norm == L1, bool(remove_center),
                                         bool(remove_bounds), FLT_MAX_OVER_100)
    N, _, H, W = emb.shape
    plan = _plan(geom, H, W)
    K = geom.taps
    D = emb.new_zeros((N, K, plan.Ho, plan.Wo))
    if plan.centre_out is None:       # every centre outside: all distances 0
        return D
    maps = _pair_distance_maps(emb, plan.offsets, norm, chunk_elements)
    for k, off in enumerate(plan.offsets):
        if off == (0, 0) or plan.out_sl[k] is None:
            continue
        key, _ = _canonical(off)
        # dist(c, c+off) is E_key read at the centre (off canonical) or at the neighbour (off = -key);
        # reading at the neighbour's position gives zero wherever the neighbour is outside,
        # and E_key is itself zero wherever the other point is outside.
        src = plan.centre_in if off == key else plan.in_sl[k]
        dst = plan.centre_out if off == key else plan.out_sl[k]
        if src is None:
            continue
        D[:, k, dst[0], dst[1]] = maps[key][:, src[0], src[1]]
    if remove_center or remove_bounds:
        centre, nbr = _masks(geom, plan, emb.device)
        big = torch.tensor(FLT_MAX_OVER_100, dtype=D.dtype, device=D.device)
        for k, off in enumerate(plan.offsets):
            if off == (0, 0):
                if remove_center:
                    D[:, k] = torch.where(centre, big, D[:, k])
            elif remove_bounds:
                D[:, k] = torch.where(centre & ~nbr[k], big, D[:, k])
    return D


def window_distances_backward(emb: torch.Tensor, dD: torch.Tensor, geom, norm: int = L2) -> torch.Tensor:
    """Im2dist backward: ``dD (N, K, Ho, Wo)`` -> ``demb (N, E, H, W)`` (no grad).

    The single implementation of the distance backward (used by
    :func:`caffe_compat.ops.im2dist.im2dist` and :class:`NormConvMask`).  For every
    entry whose centre and neighbour are both inside and distinct, per channel
    ``demb[centre] += s*g`` and ``demb[neighbour] -= s*g`` with ``g = dD``,
    ``s = d`` (L2) or ``sign(d)`` with ``sign(0) = 0`` (L1, the fork's GPU rule),
    ``d = emb[centre] - emb[neighbour]``.  Removed, out-of-image and
    centre-outside entries get no gradient (they are constants).  Peak extra
    memory: one ``(N, E, H, W)`` difference buffer per offset pair.
    """
    geom = _as_window(geom)
    backend = cuda.backend_for(emb)  # [cuda dispatch]
    if backend is not None:
        return cuda_ops.window_distances_backward(backend, emb, dD, geom, norm == L1)
    N, E, H, W = emb.shape
    plan = _plan(geom, H, W)
    demb = torch.zeros_like(emb)
    if plan.centre_out is None:
        return demb
    emb, dD = emb.detach(), dD.detach().to(emb.dtype)
    with torch.no_grad():
        # Group taps by canonical offset; coefficient map C_δ(q) on the image grid collects
        # dD of the +δ tap (centre q) and of the -δ tap (centre q+δ, neighbour q).
        coeffs: Dict[Tuple[int, int], torch.Tensor] = {}
        for k, off in enumerate(plan.offsets):
            if off == (0, 0) or plan.out_sl[k] is None:
                continue
            key, positive = _canonical(off)
            src = plan.centre_out if positive else plan.out_sl[k]
            dst = plan.centre_in if positive else plan.in_sl[k]
            c = coeffs.get(key)
            if c is None:
                c = coeffs[key] = dD.new_zeros((N, H, W))
            c[:, dst[0], dst[1]] += dD[:, k, src[0], src[1]]
        for key, c in coeffs.items():
            ov = _overlap(H, W, *key)
            if ov is None:
                continue
            (ay, ax), (by, bx) = ov
            d = emb[:, :, ay, ax] - emb[:, :, by, bx]
            if norm == L1:
                d.sign_()
            t = d.mul_(c[:, None, ay, ax])
            demb[:, :, ay, ax] += t
            demb[:, :, by, bx] -= t
    return demb


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
