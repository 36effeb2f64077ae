"""The fused segmentation-aware convolution: a masked convolution that never builds im2col columns.

Shapes (NCHW), with ``K = kh*kw`` taps, tap ``k = i*kw + j``, groups ``g``:

* ``x``: image ``(N, C, H, W)``;
* ``mask``: per-position tap weights ``(N, K, Ho, Wo)`` (e.g. the local attention
  mask ``exp(-|λ·Im2dist(emb)|)``), ``Ho, Wo`` from the window (Caffe's conv arithmetic);
* ``weight``: ``(O, C/g, kh, kw)`` (Caffe's Convolution blob, also with ``bottom_is_im2col``);
* ``bias``: ``(O,)`` or None;
* output ``y``: ``(N, O, Ho, Wo)``::

    y[n, o, p] = b[o] + sum_{c in group(o), k} W[o, c, k] * mask[n, k, p] * X[n, c, k, p]

  where ``X[n, c, k, p]`` is the image pixel tap ``k`` of output position ``p`` reads
  (0 outside the image), see :mod:`caffe_compat.ops.window`.

This is exactly the fork's chain ``Im2col -> Eltwise PROD (with a Tile of the
K-channel mask over C) -> Convolution bottom_is_im2col`` (the Tile repeats the mask
for every channel: im2col channel ``c*K + k`` is multiplied by mask channel ``k``).

Algorithm (the reference implementation :class:`TorchSegAwareConv`, any device):
output **tiles** of ``T`` output rows ``[r0, r1)`` of one image, or of several whole
images where one image is small (then every step below is batched over the tile's images).
For each tile:

1. ``band``: the zero-padded input rows the tile reads, ``(C, Tb, Wb)`` with
   ``Tb = (T-1)*sh + (kh-1)*dh + 1`` and ``Wb = (Wo-1)*sw + (kw-1)*dw + 1``
   (band row ``v`` = image row ``r0*sh - ph + v``, band column ``u`` = image
   column ``u - pw``; zero where that is outside the image);
2. ``cols``: the masked columns of the tile, ``(C*K, T*Wo)`` in im2col order
   (row ``c*K + k``): ``cols[c*K + k] = band_k[c] * mask[n, k, r0:r1]`` with
   ``band_k`` a strided view of ``band`` (no copy);
3. ``y[n, :, r0:r1] = W2 @ cols + b`` with ``W2 = weight.reshape(O, C/g*K)``,
   one GEMM per group (the same GEMM Caffe runs, on a cache-sized slab).

A tile is chosen so that ``cols`` holds at most :data:`TILE_ELEMENTS` elements and
at most half of the output (at least one row; :data:`MIN_TILE_ELEMENTS` always), so the extra peak memory
stays within one output (forward: ``cols``; backward: ``cols`` and ``G``, each one
tile; plus the ``band`` buffers, about ``1/K`` of that).  Backward (recomputing ``band`` and
``cols`` per tile, never storing them)::

    dW2  += gy_t @ cols^T                       (O, C/g*K) per group
    G     = W2^T @ gy_t                          (C*K, T*Wo)
    dmask[n, k, r0:r1] = sum_c G[c*K + k] * band_k[c]
    dband_k += G[c*K + k] * mask[n, k]           (col2im into the band, then into dx)
    db    = sum_{n, p} gy

Autograd saves only ``x``, ``mask`` and ``weight`` (the inputs).

Subnormal and near-subnormal mask values (``exp(-λd)`` underflows on realistic
embeddings; the fork became 10-17x slower on them) are flushed to 0 before use
(:data:`FLUSH_BELOW`): a change below ``7.9e-31`` absolute in float32, far under the
float32 rounding of the result.

Dispatch: :class:`SegAwareConv2dFunction` calls
``caffe_compat.ops.dispatch.impl_for("segaware_conv2d", x)``; a CUDA kernel
registers an object with the same ``forward`` / ``backward`` signatures as
:class:`TorchSegAwareConv` under device type ``"cuda"``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

from ..errors import ShapeError
from .dispatch import impl_for, register_impl
from .window import Window, _as_window, output_size

__all__ = ["OP_NAME", "TILE_ELEMENTS", "TorchSegAwareConv", "SegAwareConv2dFunction", "segaware_conv2d",
           "segaware_conv2d_unfold", "check_segaware_conv_args", "flush_subnormal"]

#: Name of the op in :mod:`caffe_compat.ops.dispatch` (and of the ``torch.library`` op).
OP_NAME = "segaware_conv2d"

#: Upper bound on the elements of one tile's masked columns (``C*K*T*Wo``); read at call time.
TILE_ELEMENTS = 1 << 22

#: Tiles of up to this many elements are always allowed (256 KiB in float32), whatever the
#: output's size: below it memory does not matter and per-op overhead does.
MIN_TILE_ELEMENTS = 1 << 16


#: Mask values below ``FLUSH_BELOW * finfo.tiny`` are set to 0: not only subnormal masks but
#: tiny normal ones too, whose products with image values and weights underflow into
#: subnormals inside the GEMM (measured: 50x slower at 321^2 with exp(-U(0, 100)) masks when
#: only subnormal mask values were flushed).  float32: below 7.9e-31 -- a change far below
#: the float32 resolution of any output it contributes to.
FLUSH_BELOW = 2.0 ** 26


def flush_subnormal(t: torch.Tensor) -> torch.Tensor:
    """``t`` with values of magnitude below ``FLUSH_BELOW * tiny`` replaced by 0 (same tensor if none)."""
    tiny = torch.finfo(t.dtype).tiny * FLUSH_BELOW
    small = t.abs() < tiny
    small &= t != 0
    if not bool(small.any()):
        return t
    return t.masked_fill(small, 0)


def _tile_shape(n: int, c_k: int, ho: int, wo: int, out_total: int) -> Tuple[int, int]:
    """``(images, rows)`` of one tile: a tile is ``rows`` output rows of ``images`` images.

    The tile's masked columns (``images * c_k * rows * wo`` elements) stay within
    :data:`TILE_ELEMENTS` and within half the whole output (the backward holds two tile
    buffers, ``cols`` and ``G``, so its extra peak stays within one output), except that
    :data:`MIN_TILE_ELEMENTS` are always allowed and a tile is at least one row.  Only when a
    whole image fits does a tile span several images.
    """
    per_row = max(1, c_k * wo)
    # measured (1 thread, 64->64 3x3 at 161^2): 2-row tiles 1.7x slower than 16-32-row tiles; one
    # whole-image tile is slower again (the slab falls out of cache).  Small images (65^2, batch 8,
    # 3-16 channels: the scene nets) are the opposite case: per-op overhead dominates, so a tile
    # gathers whole images.
    budget = min(TILE_ELEMENTS, max(per_row, out_total // 2, MIN_TILE_ELEMENTS))
    rows = max(1, min(ho, budget // per_row))
    images = max(1, min(n, budget // (per_row * ho))) if rows == ho else 1
    return images, rows


class _Tiler:
    """Tile geometry of one call (pure Python integers); tensors are ``(n, C, rows, cols)`` batches."""

    def __init__(self, x_shape, window: Window, ho: int, wo: int, c_k: int, out_total: int):
        self.N, _, self.H, self.W = x_shape
        (self.kh, self.kw), (self.sh, self.sw), (self.ph, self.pw), (self.dh, self.dw) = (
            window.kernel, window.stride, window.pad, window.dilation)
        self.Ho, self.Wo = ho, wo
        self.B, self.T = _tile_shape(self.N, c_k, ho, wo, out_total)
        self.Wb = (wo - 1) * self.sw + (self.kw - 1) * self.dw + 1
        # band columns u in [u0, u1) hold image columns u - pw
        self.u0, self.u1 = max(0, self.pw), min(self.Wb, self.W + self.pw)

    def tiles(self):
        """``(n0, n1, r0, r1)``: images ``[n0, n1)``, output rows ``[r0, r1)``."""
        for n0 in range(0, self.N, self.B):
            for r0 in range(0, self.Ho, self.T):
                yield n0, min(self.N, n0 + self.B), r0, min(self.Ho, r0 + self.T)

    def band_rows(self, r0: int, r1: int) -> Tuple[int, int, int, int, int]:
        """``(Tb, v0, v1, y0, y1)``: band height; band rows ``[v0, v1)`` = image rows ``[y0, y1)``."""
        tb = (r1 - r0 - 1) * self.sh + (self.kh - 1) * self.dh + 1
        top = r0 * self.sh - self.ph
        y0, y1 = max(0, top), min(self.H, top + tb)
        return tb, y0 - top, y1 - top, y0, y1

    def band(self, xs: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """The zero-padded ``(b, C, Tb, Wb)`` input band of output rows ``[r0, r1)`` of images ``xs``."""
        tb, v0, v1, y0, y1 = self.band_rows(r0, r1)
        band = xs.new_zeros((xs.shape[0], xs.shape[1], tb, self.Wb))
        if v1 > v0 and self.u1 > self.u0:
            band[:, :, v0:v1, self.u0:self.u1] = xs[:, :, y0:y1, self.u0 - self.pw:self.u1 - self.pw]
        return band

    def tap_views(self, band: torch.Tensor, t: int):
        """Per tap ``k``: the ``(b, C, t, Wo)`` strided view of ``band`` that tap reads (no copy)."""
        b, c, tb, wb = band.shape
        views = []
        for i in range(self.kh):
            for j in range(self.kw):
                views.append(band.as_strided((b, c, t, self.Wo), (c * tb * wb, tb * wb, self.sh * wb, self.sw),
                                             band.storage_offset() + i * self.dh * wb + j * self.dw))
        return views

    def add_band_into(self, dxs: torch.Tensor, dband: torch.Tensor, r0: int, r1: int) -> None:
        """``dx`` += the in-image part of a band gradient (col2im's last step)."""
        _, v0, v1, y0, y1 = self.band_rows(r0, r1)
        if v1 > v0 and self.u1 > self.u0:
            dxs[:, :, y0:y1, self.u0 - self.pw:self.u1 - self.pw] += dband[:, :, v0:v1, self.u0:self.u1]


class TorchSegAwareConv:
    """Reference implementation (torch ops, any device): tiles of rows (or of whole images), one
    (batched) GEMM per tile and group.

    Methods have the signatures a device-specific implementation must provide.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor], window: Window, groups: int) -> torch.Tensor:
        """``y (N, O, Ho, Wo)`` from ``x (N, C, H, W)``, ``mask (N, K, Ho, Wo)``, ``weight (O, C/g, kh, kw)``."""
        N, C, H, W = x.shape
        O, K = weight.shape[0], window.taps
        Ho, Wo = mask.shape[2], mask.shape[3]
        cg, og = C // groups, O // groups
        mask = flush_subnormal(mask)
        w2 = weight.reshape(O, cg * K)
        y = x.new_empty((N, O, Ho, Wo))
        if y.numel() == 0:
            return y
        tl = _Tiler(x.shape, window, Ho, Wo, C * K, y.numel())
        cols_buf = x.new_empty((tl.B, C * K, tl.T * Wo))
        yt_buf = x.new_empty((tl.B, O, tl.T * Wo))
        for n0, n1, r0, r1 in tl.tiles():
            b, t = n1 - n0, r1 - r0
            band = tl.band(x[n0:n1], r0, r1)
            cols = cols_buf[:b, :, :t * Wo]
            cols4 = cols.view(b, C, K, t * Wo)
            for k, view in enumerate(tl.tap_views(band, t)):
                torch.mul(view, mask[n0:n1, k:k + 1, r0:r1], out=cols4[:, :, k].view(b, C, t, Wo))
            yt = yt_buf[:b, :, :t * Wo]
            for g in range(groups):
                torch.matmul(w2[g * og:(g + 1) * og], cols[:, g * cg * K:(g + 1) * cg * K],
                             out=yt[:, g * og:(g + 1) * og])
            if bias is not None:
                yt += bias.view(1, O, 1)
            y[n0:n1, :, r0:r1] = yt.view(b, O, t, Wo)
        return y

    def backward(self, x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, grad_y: torch.Tensor,
                 window: Window, groups: int, needs: Sequence[bool]):
        """Gradients ``(dx, dmask, dweight, dbias)`` (None where ``needs[i]`` is False)."""
        need_x, need_m, need_w, need_b = (bool(v) for v in needs)
        N, C, H, W = x.shape
        O, K = weight.shape[0], window.taps
        Ho, Wo = mask.shape[2], mask.shape[3]
        cg, og = C // groups, O // groups
        gy = grad_y.contiguous()
        db = gy.sum((0, 2, 3)) if need_b else None
        dx = torch.zeros_like(x) if need_x else None
        dm = torch.zeros_like(mask) if need_m else None
        w2 = weight.reshape(O, cg * K)
        dw2 = torch.zeros_like(w2) if need_w else None
        if gy.numel() == 0 or not (need_x or need_m or need_w):
            return dx, dm, None if dw2 is None else dw2.view_as(weight), db
        mask = flush_subnormal(mask)
        tl = _Tiler(x.shape, window, Ho, Wo, C * K, gy.numel())
        cols_buf = x.new_empty((tl.B, C * K, tl.T * Wo)) if need_w else None
        for n0, n1, r0, r1 in tl.tiles():
            b, t = n1 - n0, r1 - r0
            band = tl.band(x[n0:n1], r0, r1)
            views = tl.tap_views(band, t)
            mt = mask[n0:n1, :, r0:r1]
            gyt = gy[n0:n1, :, r0:r1].reshape(b, O, t * Wo)
            if need_w:
                cols = cols_buf[:b, :, :t * Wo]
                cols4 = cols.view(b, C, K, t * Wo)
                for k, view in enumerate(views):
                    torch.mul(view, mt[:, k:k + 1], out=cols4[:, :, k].view(b, C, t, Wo))
                for g in range(groups):
                    gg, cc = gyt[:, g * og:(g + 1) * og], cols[:, g * cg * K:(g + 1) * cg * K]
                    if b == 1:
                        dw2[g * og:(g + 1) * og].addmm_(gg[0], cc[0].t())
                    else:  # sum over the tile's images of (og, P) @ (P, cg*K)
                        dw2[g * og:(g + 1) * og] += torch.bmm(gg, cc.transpose(1, 2)).sum(0)
            if not (need_x or need_m):
                continue
            G = x.new_empty((b, C * K, t * Wo))
            for g in range(groups):
                torch.matmul(w2[g * og:(g + 1) * og].t(), gyt[:, g * og:(g + 1) * og],
                             out=G[:, g * cg * K:(g + 1) * cg * K])
            G5 = G.view(b, C, K, t, Wo)
            if need_m:
                for k, view in enumerate(views):
                    dm[n0:n1, k, r0:r1] = (G5[:, :, k] * view).sum(1)
            if need_x:
                G5 *= mt[:, None]
                dband = torch.zeros_like(band)
                for k, dview in enumerate(tl.tap_views(dband, t)):
                    dview += G5[:, :, k]
                tl.add_band_into(dx[n0:n1], dband, r0, r1)
        return dx, dm, None if dw2 is None else dw2.view_as(weight), db


register_impl(OP_NAME, "any", TorchSegAwareConv())


class SegAwareConv2dFunction(torch.autograd.Function):
    """Autograd wrapper of the fused op; saves ``x``, ``mask``, ``weight`` only."""

    @staticmethod
    def forward(ctx, x, mask, weight, bias, window, groups):
        ctx.window, ctx.groups = window, groups
        ctx.save_for_backward(x, mask, weight)
        return impl_for(OP_NAME, x).forward(x, mask, weight, bias, window, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, mask, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        if not any(needs):
            return None, None, None, None, None, None
        dx, dm, dw, db = impl_for(OP_NAME, x).backward(x, mask, weight, gy, ctx.window, ctx.groups, needs)
        return dx, dm, dw, db, None, None


def check_segaware_conv_args(x, mask, weight, bias, window: Window, groups: int, what: str = "segaware_conv2d"):
    """Validate shapes and dtypes; returns ``(Ho, Wo)`` or raises :class:`ShapeError`."""
    if x.dim() != 4:
        raise ShapeError(f"{what}: expected a 4-D (N, C, H, W) input, got shape {list(x.shape)}")
    N, C, H, W = (int(d) for d in x.shape)
    ho, wo = output_size(H, W, window, what)
    K = window.taps
    if weight.dim() != 4 or tuple(weight.shape[2:]) != tuple(window.kernel):
        raise ShapeError(f"{what}: weight shape {list(weight.shape)} does not match the kernel "
                         f"{list(window.kernel)} (expected (O, C/groups, kh, kw))")
    O = int(weight.shape[0])
    if groups < 1 or C % groups or O % groups or int(weight.shape[1]) * groups != C:
        raise ShapeError(f"{what}: weight {list(weight.shape)} with groups={groups} does not fit {C} input "
                         f"channels (expected ({O}, {C}/groups, kh, kw) with O and C divisible by groups)")
    if tuple(mask.shape) != (N, K, ho, wo):
        raise ShapeError(f"{what}: mask shape {list(mask.shape)} must be (N, kh*kw, Ho, Wo) = {[N, K, ho, wo]}")
    if bias is not None and tuple(bias.shape) != (O,):
        raise ShapeError(f"{what}: bias shape {list(bias.shape)} must be ({O},)")
    for name, t in (("mask", mask), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise ShapeError(f"{what}: {name} dtype {t.dtype} differs from the input's {x.dtype}")
    return ho, wo


def segaware_conv2d(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    window, groups: int = 1) -> torch.Tensor:
    """Fused masked convolution ``(N, C, H, W) -> (N, O, Ho, Wo)`` (see the module docstring).

    Args:
        x: image, floating dtype.
        mask: ``(N, kh*kw, Ho, Wo)`` tap weights (same dtype), e.g. a local attention mask.
        weight: ``(O, C/groups, kh, kw)``.
        bias: ``(O,)`` or None.
        window: :class:`~caffe_compat.ops.window.Window` (kernel, stride, pad, dilation).
        groups: channel groups.
    Differentiable w.r.t. ``x``, ``mask``, ``weight`` and ``bias``; ``meta`` tensors give the shape.
    """
    window = _as_window(window)
    groups = int(groups)
    ho, wo = check_segaware_conv_args(x, mask, weight, bias, window, groups)
    if x.is_meta or mask.is_meta or weight.is_meta:
        return x.new_empty((x.shape[0], weight.shape[0], ho, wo), device="meta")
    from .library import segaware_conv2d_op, tracing
    if tracing(x, mask, weight, bias):  # torch.compile / torch.export: the torch.library op
        return segaware_conv2d_op(x, mask, weight, bias, window, groups)
    return SegAwareConv2dFunction.apply(x, mask, weight, bias, window, groups)


def segaware_conv2d_unfold(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                           bias: Optional[torch.Tensor], window, groups: int = 1) -> torch.Tensor:
    """The same function written as the fork runs it: unfold, multiply by the tiled mask, GEMM.

    Materialises the ``(N, C*K, Ho*Wo)`` columns (memory-hungry); a reference for tests
    and the ``unfold`` baseline of ``tools/bench.py``.  Plain torch autograd.
    """
    window = _as_window(window)
    ho, wo = check_segaware_conv_args(x, mask, weight, bias, window, int(groups))
    N, C = x.shape[:2]
    O, K = weight.shape[0], window.taps
    cols = torch.nn.functional.unfold(x, window.kernel, dilation=window.dilation, padding=window.pad,
                                      stride=window.stride).view(N, C, K, ho * wo)
    hit = (cols * mask.reshape(N, 1, K, ho * wo)).reshape(N, C * K, ho, wo)
    return torch.nn.functional.conv2d(hit, weight.reshape(O, -1, 1, 1), bias, groups=int(groups))


# [cuda dispatch] registers the "cuda" implementation (the CUDA kernels) of this op
from . import segaware_conv_cuda  # noqa: E402,F401
