"""The segmentation-aware CRF (the fork's NormConvMeanfield) as a differentiable function.

Mean-field inference with two normalised masked convolutions per iteration
(LAYERS.md §2.7)::

    Q = q0
    for t in 1..T:
        P = softmax over channels of Q
        S = masked_window_sum(P, A_spatial)       # depthwise, unit weights
        B = masked_window_sum(P, A_bilateral)
        M = W_G @ S + W_B @ B                     # C x C matrices over the channel axis
        Q = unary - K @ M
    return Q                                      # logits, not normalised

with ``A_* = normconv_mask(features_*, scale_*, window_*, L2, remove_center_*,
remove_bounds_*)`` (:mod:`caffe_compat.ops.norm_conv`).

Efficiency: the masks depend only on the features and the fixed scales, so they
are computed **once** and shared by all iterations (the fork recomputes the
identical masks in every iteration; gradients are the same because the
iteration gradients of a shared mask add up before the mask backward, which is
linear).  Everything else uses ordinary autograd: per iteration it stores only
``C*H*W``-sized tensors.

Gradients: to all four inputs (unary and both feature maps summed over the
iterations, as the fork's internal Split layers do) and to the three matrices.
The fork *overwrites* the matrices' diffs with the sum over iterations of the
current backward; this function returns ordinary gradients, which autograd
accumulates into ``.grad`` like any PyTorch parameter (identical after a single
backward from zeroed gradients; different with ``iter_size > 1`` or sharing, where
the fork keeps only the last pass).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from .. import cuda, cuda_ops
from ..errors import ShapeError
from .norm_conv import L2, Window, masked_window_sum, normconv_mask


@dataclass(frozen=True)
class MeanfieldKernel:
    """One of the CRF's two normalised convolutions (fixed, non-learnable).

    Attributes:
        window: kernel/stride/pad/dilation (pixels); dilation 0 is allowed
            (the fork's default: every tap reads the centre pixel).
        scale: ``s`` of ``Z = -s*D`` (D = half squared feature distance).
        remove_center, remove_bounds: the NormConv flags.
    """

    window: Window
    scale: float
    remove_center: bool = True
    remove_bounds: bool = True


class ChannelSoftmax(torch.autograd.Function):
    """Caffe's Softmax over axis 1 (§3.15): ``y = exp(x - max_c x) / sum_c exp(x - max_c x)``.

    Backward is Caffe's ``dx = y * (dy - sum_c dy*y)`` (the true derivative).  Written out
    instead of ``torch.softmax`` because torch's kernel for a non-last axis parallelises
    even tiny tensors, which is very slow on a busy 2-core machine; this is equally fast
    on large inputs and stores only ``y``.
    """

    @staticmethod
    def forward(ctx, x):
        backend = cuda.backend_for(x)  # [cuda dispatch]
        if backend is not None:
            y = cuda_ops.softmax_axis1(backend, x)
        else:
            y = (x - x.amax(1, keepdim=True)).exp_()
            y /= y.sum(1, keepdim=True)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        (y,) = ctx.saved_tensors
        backend = cuda.backend_for(y)  # [cuda dispatch]
        if backend is not None:
            return cuda_ops.softmax_axis1_backward(backend, y, gy)
        return y * (gy - (gy * y).sum(1, keepdim=True))


def _channel_matmul(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(C, C) x (N, C, H, W) -> (N, C, H, W)``: ``y[n, r] = sum_c m[r, c] x[n, c]``."""
    N, C, H, W = x.shape
    return torch.matmul(m, x.reshape(N, C, H * W)).reshape(N, m.shape[0], H, W)


def normconv_meanfield(unary: torch.Tensor, q0: torch.Tensor, bilateral_features: torch.Tensor,
                       spatial_features: torch.Tensor, w_spatial: torch.Tensor, w_bilateral: torch.Tensor,
                       compatibility: torch.Tensor, num_iterations: int, bilateral: MeanfieldKernel,
                       spatial: MeanfieldKernel) -> torch.Tensor:
    """Run ``num_iterations`` mean-field steps; returns the final logits ``(N, C, H, W)``.

    Args:
        unary: ``(N, C, H, W)`` unary logits, added in every iteration.
        q0: ``(N, C, H, W)`` logits fed to the first softmax.
        bilateral_features: ``(N, E1, H, W)`` features of the bilateral kernel.
        spatial_features: ``(N, E2, H, W)`` features of the spatial kernel.
        w_spatial, w_bilateral, compatibility: ``(C, C)`` matrices (any shape
            with ``C*C`` elements, e.g. Caffe's ``(1, 1, C, C)``).
        num_iterations: T >= 1 (the layer enforces the fork's T > 1).
        bilateral, spatial: the two kernels; each must map H x W to H x W.
    """
    N, C, H, W = unary.shape
    dtype, dev = unary.dtype, unary.device
    for name, kern in (("bilateral", bilateral), ("spatial", spatial)):
        if kern.window.output_size(H, W) != (H, W):
            raise ShapeError(f"{name} kernel maps {H}x{W} to {kern.window.output_size(H, W)}, not {H}x{W}")
    wg = w_spatial.reshape(C, C).to(dtype)
    wb = w_bilateral.reshape(C, C).to(dtype)
    kc = compatibility.reshape(C, C).to(dtype)
    if unary.is_meta:
        return unary.new_empty(unary.shape)

    def mask(feat, kern):
        s = torch.tensor(kern.scale, dtype=dtype, device=dev)
        return normconv_mask(feat.to(dtype), s, kern.window, L2, kern.remove_center, kern.remove_bounds)

    a_bil = mask(bilateral_features, bilateral)
    a_sp = mask(spatial_features, spatial)
    q = q0
    for _ in range(num_iterations):
        p = ChannelSoftmax.apply(q)
        s_out = masked_window_sum(p, a_sp, spatial.window)
        b_out = masked_window_sum(p, a_bil, bilateral.window)
        m = _channel_matmul(wg, s_out) + _channel_matmul(wb, b_out)
        q = unary - _channel_matmul(kc, m)
    return q


__all__ = ["ChannelSoftmax", "MeanfieldKernel", "normconv_meanfield"]
