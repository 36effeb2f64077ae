"""The custom operations on the CUDA kernels (``caffe_compat/kernels``): tensors in, tensors out.

Each function takes a kernel backend (from :func:`caffe_compat.cuda.backend_for`: cupy on a GPU,
or the CPU emulator in tests) and tensors of one device and dtype (float32 or float64), and
returns what the matching torch implementation in :mod:`caffe_compat.ops` returns; those torch
functions call these when a backend is available.  Non-contiguous inputs are made contiguous
here (the kernels assume dense NCHW).  Channel mixing (NormConv's weights) stays in torch's
matmul, i.e. cuBLAS on a GPU; the kernels do the window work no library does.

Shapes and semantics: see the torch reference named in each docstring.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .cuda import launch

__all__ = ["window_distances", "window_distances_backward", "im2parity", "dist_loss_margins",
           "dist_loss_gradient", "masked_window_sum_forward", "masked_window_sum_backward",
           "softmax_axis1", "softmax_axis1_backward"]


def _ints(*values) -> Tuple[np.int32, ...]:
    return tuple(np.int32(int(v)) for v in values)


def _window(geom) -> Tuple[np.int32, ...]:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom.kernel, geom.stride, geom.pad, geom.dilation
    return _ints(kh, kw, sh, sw, ph, pw, dh, dw)


def _scalar(value: float, dtype: torch.dtype):
    return np.float32(value) if dtype == torch.float32 else np.float64(value)


# ---------------------------------------------------------------------------- window distances
def window_distances(backend, emb: torch.Tensor, geom, l1: bool, remove_center: bool,
                     remove_bounds: bool, big: float) -> torch.Tensor:
    """``(N, E, H, W) -> (N, K, Ho, Wo)``; reference :func:`caffe_compat.ops.norm_conv.window_distances`.

    ``big`` is the value of removed entries (``FLT_MAX/100``).
    """
    emb = emb.detach().contiguous()
    N, E, H, W = emb.shape
    Ho, Wo = geom.output_size(H, W)
    D = emb.new_empty((N, geom.taps, Ho, Wo))
    launch(backend, "window_dist_fwd", emb.dtype, D.numel(), emb, D, *_ints(N, E, H, W, Ho, Wo),
           *_window(geom), *_ints(l1, remove_center, remove_bounds), _scalar(big, emb.dtype))
    return D


def window_distances_backward(backend, emb: torch.Tensor, dD: torch.Tensor, geom, l1: bool) -> torch.Tensor:
    """``dD (N, K, Ho, Wo) -> demb (N, E, H, W)``; reference ``window_distances_backward``."""
    emb = emb.detach().contiguous()
    dD = dD.detach().to(emb.dtype).contiguous()
    N, E, H, W = emb.shape
    Ho, Wo = geom.output_size(H, W)
    demb = torch.empty_like(emb)
    launch(backend, "window_dist_bwd", emb.dtype, demb.numel(), emb, dD, demb,
           *_ints(N, E, H, W, Ho, Wo), *_window(geom), *_ints(l1))
    return demb


# ---------------------------------------------------------------------------- im2parity
def im2parity(backend, labels: torch.Tensor, geom, ignore: Optional[int]) -> torch.Tensor:
    """``(N, C, H, W) -> (N, K, Ho, Wo)``; reference :func:`caffe_compat.ops.im2parity.im2parity`.

    ``ignore`` is the C-int value of ``ignore_label`` (already wrapped) or None.
    """
    labels = labels.detach().contiguous()
    N, C, H, W = labels.shape
    Ho, Wo = geom.output_size(H, W)
    out = labels.new_empty((N, geom.taps, Ho, Wo))
    launch(backend, "im2parity_fwd", labels.dtype, out.numel(), labels, out, *_ints(N, C, H, W, Ho, Wo),
           *_window(geom), np.int32(ignore is not None), np.float64(0 if ignore is None else ignore))
    return out


# ---------------------------------------------------------------------------- DistLoss
def _dist_loss_args(dist, parity, alpha, beta, ignore, first_image_only):
    dist = dist.detach().contiguous()
    parity = parity.detach().to(dist.device, dist.dtype).contiguous()
    per_image = dist[0].numel() if dist.dim() and dist.shape[0] else dist.numel()
    return dist, parity, (np.int64(dist.numel()), np.int64(per_image), _scalar(alpha, dist.dtype),
                          _scalar(beta, dist.dtype), np.int32(ignore is not None),
                          np.float64(0 if ignore is None else ignore), np.int32(bool(first_image_only)))


def dist_loss_margins(backend, dist, parity, alpha, beta, ignore, first_image_only) -> torch.Tensor:
    """Per-entry margins ``m`` (loss = ``m.sum() / count``); reference ``dist_loss_terms``."""
    dist, parity, rest = _dist_loss_args(dist, parity, alpha, beta, ignore, first_image_only)
    m = torch.empty_like(dist)
    launch(backend, "dist_loss_fwd", dist.dtype, m.numel(), dist, parity, m, *rest)
    return m


def dist_loss_gradient(backend, dist, parity, alpha, beta, ignore, first_image_only) -> torch.Tensor:
    """The fork's gradient ``g * (1/count)`` (top gradient ignored); reference ``DistLossFunction``."""
    dist, parity, rest = _dist_loss_args(dist, parity, alpha, beta, ignore, first_image_only)
    g = torch.empty_like(dist)
    inv = _scalar(1.0 / dist.numel() if dist.numel() else 1.0, dist.dtype)
    launch(backend, "dist_loss_bwd", dist.dtype, g.numel(), dist, parity, g, *rest, inv)
    return g


# ---------------------------------------------------------------------------- masked window sum
def _tap_matrix(weight: torch.Tensor, group: int) -> torch.Tensor:
    """``(O, C/g, kh, kw)`` weight as ``(g, (O/g)*K, C/g)`` matrices, row ``o_in_group*K + k``."""
    O, cg, kh, kw = weight.shape
    return weight.reshape(O, cg, kh * kw).transpose(1, 2).reshape(group, (O // group) * kh * kw, cg)


def _responses(img: torch.Tensor, weight: Optional[torch.Tensor], group: int, K: int):
    """Per-tap responses ``Z`` and its strides ``(zn, zo, zk)`` over a contiguous H*W plane.

    Weighted: ``Z[n, o, k] = sum_c W[o, c, k] x[n, c]`` (one batched GEMM, ``(N, O, K, H, W)``).
    Depthwise (weight None): ``Z = img`` itself with tap stride 0.
    """
    N, C, H, W = img.shape
    if weight is None:
        return img, (C * H * W, H * W, 0)
    O = weight.shape[0]
    cg = C // group
    Z = torch.matmul(_tap_matrix(weight.to(img.dtype), group), img.reshape(N, group, cg, H * W))
    return Z.reshape(N, O, K, H, W), (O * K * H * W, K * H * W, H * W)


def masked_window_sum_forward(backend, img: torch.Tensor, A: torch.Tensor, weight: Optional[torch.Tensor],
                              geom, group: int) -> torch.Tensor:
    """``y (N, O, Ho, Wo)``; reference :class:`caffe_compat.ops.norm_conv.MaskedWindowSum`."""
    img = img.detach().contiguous()
    A = A.detach().to(img.dtype).contiguous()
    N, C, H, W = img.shape
    Ho, Wo = geom.output_size(H, W)
    Z, (zn, zo, zk) = _responses(img, weight, group, geom.taps)
    O = Z.shape[1]
    y = img.new_empty((N, O, Ho, Wo))
    launch(backend, "mss_fwd", img.dtype, y.numel(), A, Z, y, *_ints(N, O, H, W, Ho, Wo), *_window(geom),
           np.int64(zn), np.int64(zo), np.int64(zk))
    return y


def masked_window_sum_backward(backend, gy, img, A, weight, geom, group, need_img, need_A, need_w):
    """``(dimg, dA, dW)`` (None where not needed); reference ``MaskedWindowSum.backward``."""
    img = img.detach().contiguous()
    A = A.detach().to(img.dtype).contiguous()
    gy = gy.detach().to(img.dtype).contiguous()
    N, C, H, W = img.shape
    Ho, Wo = geom.output_size(H, W)
    K = geom.taps
    win = _window(geom)
    O = C if weight is None else weight.shape[0]
    dims = _ints(N, O, H, W, Ho, Wo)
    dimg = dA = dW = None
    if need_A:
        Z, (zn, zo, zk) = _responses(img, weight, group, K)
        dA = torch.empty_like(A)
        launch(backend, "mss_bwd_mask", img.dtype, dA.numel(), gy, Z, dA, *dims, *win,
               np.int64(zn), np.int64(zo), np.int64(zk))
        del Z
    if weight is None:
        if need_img:
            dimg = torch.empty_like(img)
            launch(backend, "mss_bwd_depthwise", img.dtype, dimg.numel(), gy, A, dimg, *dims, *win)
        return dimg, dA, None
    if need_img or need_w:
        gZ = img.new_empty((N, O, K, H, W))
        launch(backend, "mss_bwd_taps", img.dtype, gZ.numel(), gy, A, gZ, *dims, *win)
        cg = C // group
        gZ = gZ.reshape(N, group, (O // group) * K, H * W)
        if need_img:
            wt = _tap_matrix(weight.to(img.dtype), group).transpose(1, 2)      # (g, C/g, (O/g)*K)
            dimg = torch.matmul(wt, gZ).reshape(N, C, H, W)
        if need_w:
            x = img.reshape(N, group, cg, H * W)
            gw = torch.matmul(gZ, x.transpose(2, 3)).sum(0)                    # (g, (O/g)*K, C/g)
            dW = gw.reshape(O, K, cg).transpose(1, 2).reshape(weight.shape).to(weight.dtype)
    return dimg, dA, dW


# ---------------------------------------------------------------------------- softmax over axis 1
def softmax_axis1(backend, x: torch.Tensor) -> torch.Tensor:
    """Caffe's softmax over axis 1 of ``(N, C, ...)``; reference ``ChannelSoftmax`` / the NormConv mask."""
    x = x.detach().contiguous()
    N, C = x.shape[0], x.shape[1]
    S = x[0, 0].numel() if N and C else 0
    y = torch.empty_like(x)
    if C:
        launch(backend, "softmax_axis1_fwd", x.dtype, N * S, x, y, *_ints(N, C), np.int64(S))
    return y


def softmax_axis1_backward(backend, y: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """``dx = y * (dy - sum_c dy*y)``."""
    y = y.detach().contiguous()
    gy = gy.detach().to(y.dtype).contiguous()
    N, C = y.shape[0], y.shape[1]
    S = y[0, 0].numel() if N and C else 0
    gx = torch.empty_like(y)
    if C:
        launch(backend, "softmax_axis1_bwd", y.dtype, N * S, y, gy, gx, *_ints(N, C), np.int64(S))
    return gx
