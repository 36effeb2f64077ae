"""Caffe's MAX and AVE pooling (``pooling_layer.cpp``), exact in every corner case.

Geometry (per spatial axis, LAYERS.md §3.1)::

    out = int(ceil(float(in + 2*pad - k) / stride)) + 1        (float32 division, as Caffe)
    if pad_h or pad_w:                                         (the clip rule: only with padding,
        if (out - 1) * stride >= in + pad: out -= 1             then on both axes)

Window ``o`` covers rows ``[o*stride - pad, o*stride - pad + k)``.

MAX: the window is clipped to the image; the value starts at ``-FLT_MAX`` and
is replaced only by a strictly greater element, scanning the window in
row-major order.  Hence the **first** maximum wins ties (forward value and the
position the gradient is routed to), NaN never wins, and a window whose
elements are all ``<= -FLT_MAX`` (or NaN, or that lies entirely outside the
image -- possible only without padding, when ``stride > kernel``) outputs
``-FLT_MAX`` with Caffe's mask ``-1``.  For such windows Caffe's backward
writes ``bottom_diff[-1]`` (undefined behaviour); the port routes their
gradient nowhere.  The gradient of MAX pooling is the gradient of a
``gather`` at the recorded argmax (so autograd applies it, on any device).

AVE: ``pool_size = (hend - hstart) * (wend - wstart)`` with
``hend = min(hstart + k, in + pad)`` computed **before** clipping the window
to the image, so padding cells inside ``[-pad, in + pad)`` count in the
divisor and cells beyond do not; the sum is over the clipped window.  For a
window that lies entirely beyond ``in + pad`` (again only without padding and
``stride > kernel``) Caffe divides 0 by a zero or negative size, giving NaN or
-0; the port reproduces those values.  The backward spreads ``dy / pool_size``
over the clipped window, which is exactly the autograd derivative of the sum
computed here (zero padding + ``avg_pool2d`` with ``divisor_override=1``).

torch's own pooling differs: it requires ``pad <= k/2``, applies the clip rule
even without padding, propagates NaN and pads MAX with ``-inf`` (output
``-inf`` where Caffe has ``-FLT_MAX``).  Hence this module.  For speed, MAX
pooling still uses torch's ``max_pool2d`` when it provably gives Caffe's values,
indices and gradient (same first-maximum rule and flat indices; checked
conditions in :func:`_torch_max_pool`), and the exact per-tap scan otherwise.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .scalars import FLT_MAX

#: Windows with more taps than this use an unfold + argmax path instead of a per-tap loop.
TAP_LOOP_MAX = 64

#: Use torch's ``max_pool2d`` where it provably gives Caffe's result (see :func:`_torch_max_pool`).
USE_TORCH_MAX_POOL = True


def pooled_size(size: int, kernel: int, stride: int, pad: int, clip: bool = None) -> int:
    """Caffe's pooled output size along one axis (may be <= 0 for absurd settings).

    ``clip``: apply the last-window clip rule; Caffe applies it to **both** axes
    when either ``pad_h`` or ``pad_w`` is non-zero (default: ``pad > 0``).
    """
    if clip is None:
        clip = pad > 0
    num = size + 2 * pad - kernel
    if abs(num) < 1 << 24 and stride > 0:
        # Caffe divides in float32; below 2**24 a non-integer quotient stays at
        # least 1/stride > ulp away from an integer, so integer ceil-division is
        # the same number (and plain integer arithmetic traces in torch.compile).
        out = -(-num // stride) + 1
    else:
        out = _float32_ceil_div(num, stride) + 1
    if clip and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@torch.compiler.assume_constant_result
def _float32_ceil_div(num: int, stride: int) -> int:
    """``ceil(float(num) / float(stride))`` in float32 arithmetic, as Caffe computes it."""
    with np.errstate(all="ignore"):
        q = np.float32(np.float32(num) / np.float32(stride))
    return int(math.ceil(float(q)))


def _pad_to(x: torch.Tensor, pad: Tuple[int, int], need: Tuple[int, int], value: float) -> torch.Tensor:
    """Pad (or crop) ``x`` so that row ``-pad_h`` is row 0 and the height is ``need_h`` (same for width)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ph, pw = pad
    nh, nw = need
    return F.pad(x, (pw, nw - pw - w, ph, nh - ph - h), mode="constant", value=value)


def _window_starts(n_out: int, stride: int, pad: int, device) -> torch.Tensor:
    return torch.arange(n_out, device=device, dtype=torch.int64) * stride - pad


def _torch_out(size: int, kernel: int, stride: int, pad: int) -> int:
    """torch's ``ceil_mode=True`` pooled size (it applies the clip rule even without padding)."""
    out = -((-(size + 2 * pad - kernel)) // stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_max_pool(x, kernel, stride, pad, out_size):
    """torch's ``max_pool2d`` where it equals Caffe, else ``None``.

    torch scans each window row-major keeping the first strict maximum and
    returns the same flat ``h * W + w`` indices, on CPU and CUDA.  It differs
    from Caffe only (a) for ``pad > kernel/2`` (refused by torch), (b) where its
    output size differs (clip rule without padding), (c) with NaN inputs
    (torch propagates NaN) and (d) where a window maximum is ``<= -FLT_MAX``
    (Caffe keeps ``-FLT_MAX`` and mask -1).  Cases (c) and (d) are detected
    after the fact.
    """
    h, w = int(x.shape[2]), int(x.shape[3])
    if 2 * pad[0] > kernel[0] or 2 * pad[1] > kernel[1]:
        return None
    if (_torch_out(h, kernel[0], stride[0], pad[0]), _torch_out(w, kernel[1], stride[1], pad[1])) != tuple(out_size):
        return None
    if torch.compiler.is_compiling():
        return None  # the data-dependent checks below cannot be traced: use the exact window scan
    if bool(torch.isnan(x.detach()).any()):
        return None
    y, idx = F.max_pool2d(x, kernel, stride, pad, dilation=1, ceil_mode=True, return_indices=True)
    if tuple(y.shape[2:]) != tuple(out_size) or bool((y.detach() <= -FLT_MAX).any()):
        return None
    return y, idx


def max_pool2d_caffe(x: torch.Tensor, kernel: Tuple[int, int], stride: Tuple[int, int],
                     pad: Tuple[int, int], out_size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Caffe MAX pooling of a ``(N, C, H, W)`` tensor.

    Returns ``(y, idx)``: ``y`` of shape ``(N, C, Ho, Wo)`` (differentiable), and
    ``idx`` (int64, same shape, no gradient): the flat index ``h * W + w`` of the
    selected element within its ``H x W`` plane, or ``-1`` where no element beat
    ``-FLT_MAX`` (Caffe's mask / second top).
    """
    n, c, h, w = (int(s) for s in x.shape)
    ho, wo = out_size
    kh, kw = kernel
    sh, sw = stride
    if x.is_meta:
        return x.new_empty((n, c, ho, wo)), torch.empty((n, c, ho, wo), dtype=torch.int64, device="meta")
    if USE_TORCH_MAX_POOL and n * c * ho * wo > 0:
        fast = _torch_max_pool(x, kernel, stride, pad, out_size)
        if fast is not None:
            return fast
    need = ((ho - 1) * sh + kh, (wo - 1) * sw + kw)
    hs = _window_starts(ho, sh, pad[0], x.device)
    ws = _window_starts(wo, sw, pad[1], x.device)
    with torch.no_grad():
        xp = _pad_to(x.detach(), pad, need, float("-inf"))
        if kh * kw <= TAP_LOOP_MAX:
            best = torch.full((n, c, ho, wo), -FLT_MAX, dtype=x.dtype, device=x.device)
            arg = torch.full((n, c, ho, wo), -1, dtype=torch.int64, device=x.device)
            for i in range(kh):
                rows = xp[:, :, i:i + (ho - 1) * sh + 1:sh]
                hidx = (hs + i)[:, None] * w
                for j in range(kw):
                    v = rows[:, :, :, j:j + (wo - 1) * sw + 1:sw]
                    better = v > best  # strict: the first maximum wins, NaN never wins
                    best = torch.where(better, v, best)
                    arg = torch.where(better, hidx + (ws + j)[None, :], arg)
        else:
            cols = F.unfold(xp.reshape(n * c, 1, need[0], need[1]), (kh, kw), stride=(sh, sw))
            cols = cols.reshape(n, c, kh * kw, ho * wo)
            cols = torch.where(torch.isnan(cols), torch.full_like(cols, float("-inf")), cols)
            tap = torch.argmax(cols, dim=2)  # first maximal tap in row-major window order
            best = torch.gather(cols, 2, tap.unsqueeze(2)).squeeze(2)
            ti, tj = tap // kw, tap % kw
            hh = hs.repeat_interleave(wo)[None, None, :] + ti
            ww = ws.repeat(ho)[None, None, :] + tj
            arg = (hh * w + ww).reshape(n, c, ho, wo)
            best = best.reshape(n, c, ho, wo)
            valid = best > -FLT_MAX
            best = torch.where(valid, best, torch.full_like(best, -FLT_MAX))
            arg = torch.where(valid, arg, torch.full_like(arg, -1))
    if x.requires_grad and torch.is_grad_enabled():
        valid = arg >= 0
        flat = x.reshape(n, c, h * w)
        picked = torch.gather(flat, 2, arg.clamp(min=0).reshape(n, c, ho * wo)).reshape(n, c, ho, wo)
        y = torch.where(valid, picked, best)
    else:
        y = best
    return y, arg


def ave_pool2d_caffe(x: torch.Tensor, kernel: Tuple[int, int], stride: Tuple[int, int],
                     pad: Tuple[int, int], out_size: Tuple[int, int]) -> torch.Tensor:
    """Caffe AVE pooling of a ``(N, C, H, W)`` tensor -> ``(N, C, Ho, Wo)`` (see module docstring)."""
    n, c, h, w = (int(s) for s in x.shape)
    ho, wo = out_size
    kh, kw = kernel
    sh, sw = stride
    if x.is_meta:
        return x.new_empty((n, c, ho, wo))
    need = ((ho - 1) * sh + kh, (wo - 1) * sw + kw)
    xp = _pad_to(x, pad, need, 0.0)
    total = F.avg_pool2d(xp, (kh, kw), stride=(sh, sw), padding=0, ceil_mode=False,
                         count_include_pad=True, divisor_override=1)
    hs = _window_starts(ho, sh, pad[0], x.device)
    ws = _window_starts(wo, sw, pad[1], x.device)
    size_h = torch.clamp(hs + kh, max=h + pad[0]) - hs
    size_w = torch.clamp(ws + kw, max=w + pad[1]) - ws
    pool_size = (size_h[:, None] * size_w[None, :]).to(x.dtype)
    return total / pool_size
