"""The window: geometry of a sliding k x k window and the distances inside it.

One module serves every window op of the port (Im2col, Im2dist, Im2parity, NormConv,
NormConvMeanfield and the fused segmentation-aware convolution):

* :class:`Window` (alias :data:`ConvGeometry`, the layers' name): kernel, stride,
  pad, dilation, each ``(h, w)`` in pixels.  Tap ``k = i*kw + j`` of output
  position ``(y, x)`` reads image pixel ``(y*sh - ph + i*dh, x*sw - pw + j*dw)``;
  the centre is tap ``(kh//2, kw//2)`` (for even kernels the lower-right of the two
  middle taps, as in the fork).  Output size is Caffe's convolution arithmetic
  ``(in + 2p - (d(k-1)+1)) // s + 1`` (0 where the window does not fit).
* :func:`output_size` (refusing empty outputs with :class:`ShapeError`),
  :func:`centre_tap`, :func:`unfold_args`, :func:`window_masks`,
  :func:`centre_outside_any`: small geometry helpers.
* :func:`window_distances` / :func:`window_distances_backward`: the fork's Im2dist
  distances ``(N, E, H, W) -> (N, K, Ho, Wo)`` and their gradient, the single
  implementation used by Im2dist and NormConv (see their docstrings).
* The norm has one spelling: the integers :data:`L1` (= 1, ``sum_e |d_e|``) and
  :data:`L2` (= 2, **half** the squared Euclidean distance ``0.5*sum_e d_e**2``),
  the values of the proto enums; :func:`parse_norm` turns ``"L1"``/``"L2"``/1/2
  into them.

Nothing here imports from :mod:`caffe_compat.layers` (the ops layer stands alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import cuda, cuda_ops
from ..errors import LayerConfigError, ShapeError

@dataclass(frozen=True)
class Window:
    """Kernel, stride, pad and dilation of a 2-D window, each as ``(h, w)`` (pixels).

    Dilation 0 is allowed here (NormConvMeanfield's default: every tap reads the
    centre pixel); the layers' ``convolution_param`` parser refuses it.
    """

    kernel: Tuple[int, int]
    stride: Tuple[int, int] = (1, 1)
    pad: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)

    @property
    def taps(self) -> int:
        """Number of window positions ``K = kh * kw``."""
        return self.kernel[0] * self.kernel[1]

    def output_size(self, h: int, w: int) -> Tuple[int, int]:
        """Caffe's conv output size: ``(in + 2p - (d(k-1)+1)) / s + 1`` with floor."""
        out = []
        for n, k, s, p, d in zip((h, w), self.kernel, self.stride, self.pad, self.dilation):
            ext = d * (k - 1) + 1
            out.append((n + 2 * p - ext) // s + 1 if n + 2 * p - ext >= 0 else 0)
        return out[0], out[1]


#: The layers' name for the same type (``convolution_param`` geometry).
ConvGeometry = Window

#: Caffe's ``FLT_MAX/100`` (computed in float32 as the fork does): the distance
#: given to removed taps.  The same value is used in float64.
FLT_MAX_OVER_100 = float(np.float32(np.finfo(np.float32).max) / np.float32(100))

L1 = 1
L2 = 2

#: Upper bound on the elements of one channel chunk of pair differences in
#: :func:`window_distances` (``caffe_compat.ops.im2dist.CHUNK_ELEMENTS`` is the
#: Im2dist layer's, passed explicitly).
CHUNK_ELEMENTS = 1 << 22




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




def parse_norm(norm) -> int:
    """The norm's one spelling: ``'L1'``/``1`` -> :data:`L1`, ``'L2'``/``2`` -> :data:`L2`."""
    if isinstance(norm, str):
        key = norm.strip().upper()
        if key in ("L1", "L2"):
            return L1 if key == "L1" else L2
    elif not isinstance(norm, bool) and norm in (L1, L2):
        return int(norm)
    raise LayerConfigError(f"unknown norm {norm!r} (choose 'L1' (1) or 'L2' (2, half squared))")


def norm_name(norm: int) -> str:
    """``L1 -> 'L1'``, ``L2 -> 'L2'``."""
    return "L1" if parse_norm(norm) == L1 else "L2"


def output_size(h: int, w: int, geometry, what: str = "im2col") -> Tuple[int, int]:
    """Output spatial size ``(Ho, Wo)`` of a window op on an ``h x w`` image.

    Raises :class:`ShapeError` when a dimension would be ``<= 0`` (the fork does
    not check this cleanly).
    """
    ho, wo = geometry.output_size(int(h), int(w))
    if ho <= 0 or wo <= 0:
        raise ShapeError(
            f"{what}: input {h}x{w} is too small for kernel {list(geometry.kernel)}, "
            f"dilation {list(geometry.dilation)}, pad {list(geometry.pad)}, stride "
            f"{list(geometry.stride)}: output size would be {ho}x{wo}")
    return ho, wo


def centre_tap(geometry) -> int:
    """Index ``k = (kh//2)*kw + kw//2`` of the centre kernel offset."""
    kh, kw = geometry.kernel
    return (kh // 2) * kw + kw // 2


def unfold_args(geometry) -> dict:
    """Keyword arguments of :func:`torch.nn.functional.unfold` / ``fold`` for ``geometry``."""
    return dict(kernel_size=tuple(geometry.kernel), dilation=tuple(geometry.dilation),
                padding=tuple(geometry.pad), stride=tuple(geometry.stride))


def window_masks(h: int, w: int, geometry, device=None):
    """Where the centre and the neighbours of every window lie inside the image.

    Args:
        h, w: input spatial size.
        geometry: a :class:`Window`.
        device: device of the returned masks.

    Returns:
        ``(centre_inside, neighbour_inside)``: bool tensors of shapes
        ``(Ho, Wo)`` and ``(K, Ho, Wo)`` (``K = kh*kw``, row-major offsets).
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry.kernel, geometry.stride, geometry.pad, geometry.dilation
    ho, wo = output_size(h, w, geometry)
    rows = (torch.arange(ho, device=device) * sh - ph)[None, :] + (torch.arange(kh, device=device) * dh)[:, None]
    cols = (torch.arange(wo, device=device) * sw - pw)[None, :] + (torch.arange(kw, device=device) * dw)[:, None]
    row_in = (rows >= 0) & (rows < h)  # (kh, Ho)
    col_in = (cols >= 0) & (cols < w)  # (kw, Wo)
    neighbour = (row_in[:, None, :, None] & col_in[None, :, None, :]).reshape(kh * kw, ho, wo)
    centre = row_in[kh // 2][:, None] & col_in[kw // 2][None, :]
    return centre, neighbour


def centre_outside_any(h: int, w: int, geometry) -> bool:
    """True if some output column's centre lies outside the image (pad > (k//2)*dilation, ...).

    Pure Python integer arithmetic (usable during the meta-device shape pass).
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry.kernel, geometry.stride, geometry.pad, geometry.dilation
    ho, wo = output_size(h, w, geometry)
    first_r, last_r = -ph + (kh // 2) * dh, (ho - 1) * sh - ph + (kh // 2) * dh
    first_c, last_c = -pw + (kw // 2) * dw, (wo - 1) * sw - pw + (kw // 2) * dw
    return first_r < 0 or last_r >= h or first_c < 0 or last_c >= w


__all__ = ["Window", "ConvGeometry", "FLT_MAX_OVER_100", "CHUNK_ELEMENTS", "L1", "L2", "parse_norm",
           "norm_name", "output_size", "centre_tap", "unfold_args", "window_masks", "centre_outside_any",
           "window_distances", "window_distances_backward"]
