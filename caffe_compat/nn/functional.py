"""Functional forms of the segmentation-aware operations (no prototxt needed).

These functions are the single implementation behind both faces: the modules of
:mod:`caffe_compat.nn` and the Caffe layer classes (``Im2dist``, ``NormConv``,
``NormConvMeanfield``, and the fused ``Im2col -> Eltwise -> Convolution`` chain of
:mod:`caffe_compat.fusion`) call them.  Window arguments (``kernel_size``,
``stride``, ``padding``, ``dilation``) are ints or ``(h, w)`` pairs, in pixels;
norms are ``"L1"`` (sum of absolute differences) or ``"L2"`` (**half** the squared
Euclidean distance), as in the fork.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from ..ops.dist_loss import dist_loss
from ..ops.im2dist import im2dist as _im2dist
from ..ops.im2parity import im2parity
from ..ops.meanfield import MeanfieldKernel, normconv_meanfield
from ..ops.norm_conv import masked_window_sum, normconv_mask
from ..ops.segaware_conv import segaware_conv2d as _segaware_conv2d
from ..ops.window import Window, parse_norm

__all__ = ["make_window", "im2dist", "attention_from_distances", "local_attention_mask", "segaware_conv2d",
           "embedding_distance_loss", "norm_conv2d", "meanfield_crf", "MeanfieldKernel"]

IntPair = Union[int, tuple]


def _pair(v, name: str):
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair (h, w), got {v}")
    return v


def make_window(kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1) -> Window:
    """A :class:`~caffe_compat.ops.window.Window` from torch-style arguments."""
    return Window(_pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _pair(padding, "padding"),
                  _pair(dilation, "dilation"))


def im2dist(embeddings: torch.Tensor, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
            dilation: IntPair = 1, norm="L2", remove_center: bool = False,
            remove_bounds: bool = False) -> torch.Tensor:
    """The fork's Im2dist: ``(N, E, H, W) -> (N, kh*kw, Ho, Wo)`` centre-to-neighbour distances.

    See :mod:`caffe_compat.ops.im2dist` for the exact rules (out-of-image
    neighbours 0 unless ``remove_bounds``; removed entries ``FLT_MAX/100``).
    """
    return _im2dist(embeddings, make_window(kernel_size, stride, padding, dilation), parse_norm(norm),
                    remove_center, remove_bounds)


def attention_from_distances(distances: torch.Tensor, scale) -> torch.Tensor:
    """``exp(-|scale * distances|)`` (the fork's Scale -> AbsVal -> Exp(scale -1) chain).

    ``scale`` is a float or a tensor with one element (may require grad; the
    fork's learnable ``Scale`` blob of shape ``()``).  (Subnormal mask values are
    flushed to 0 by the fused convolution, where they would slow the GEMM down.)
    """
    if not isinstance(scale, torch.Tensor):
        scale = torch.tensor(float(scale), dtype=distances.dtype, device=distances.device)
    scaled = distances * scale.reshape(()).to(distances.dtype)
    return torch.exp(-scaled.abs())


def local_attention_mask(embeddings: torch.Tensor, kernel_size: IntPair, stride: IntPair = 1,
                         padding: IntPair = 0, dilation: IntPair = 1, norm="L1", scale=0.05) -> torch.Tensor:
    """The local attention mask ``exp(-|scale * Im2dist(embeddings)|)``: ``(N, kh*kw, Ho, Wo)``.

    Example::

        >>> emb = torch.randn(1, 8, 17, 19)
        >>> local_attention_mask(emb, 3, padding=1).shape
        torch.Size([1, 9, 17, 19])
    """
    return attention_from_distances(im2dist(embeddings, kernel_size, stride, padding, dilation, norm), scale)


def segaware_conv2d(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                    stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1) -> torch.Tensor:
    """Segmentation-aware convolution: ``(N, C, H, W)`` masked by ``(N, kh*kw, Ho, Wo)`` -> ``(N, O, Ho, Wo)``.

    ``y[n,o,p] = b[o] + sum_{c,k} W[o,c,k] * mask[n,k,p] * X[n,c,k,p]`` (``X`` the
    zero-padded window of ``x``); fused, never builds im2col columns
    (:mod:`caffe_compat.ops.segaware_conv`).  ``weight``: ``(O, C/groups, kh, kw)``.
    """
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    return _segaware_conv2d(x, mask, weight, bias, make_window((kh, kw), stride, padding, dilation), groups)


def embedding_distance_loss(embeddings: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float,
                            kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                            norm="L1", ignore_label: Optional[int] = None,
                            parity_ignore_label: Optional[int] = None) -> torch.Tensor:
    """The embedding loss of the paper: ``DistLoss(Im2dist(emb), Im2parity(labels))`` (0-dim).

    Same-label pairs closer than ``alpha`` and different-label pairs farther than
    ``beta`` cost nothing; the loss divides by all ``N*K*Ho*Wo`` entries.  The
    gradient is the fork's (``±margin/count``, independent of the upstream gradient).
    ``ignore_label`` is DistLoss's, ``parity_ignore_label`` Im2parity's: the fork's embs
    configs set only the former (255), so their parities are 0/1 everywhere and a pixel
    labelled 255 is compared like any other label.
    """
    window = make_window(kernel_size, stride, padding, dilation)
    dist = _im2dist(embeddings, window, parse_norm(norm))
    parity = im2parity(labels, window, parity_ignore_label)
    return dist_loss(dist, parity.to(dist.dtype), alpha, beta, ignore_label)


def norm_conv2d(x: torch.Tensor, embeddings: torch.Tensor, weight: Optional[torch.Tensor],
                bias: Optional[torch.Tensor], scale: Optional[torch.Tensor], window: Window, groups: int = 1,
                norm="L2", remove_center: bool = False, remove_bounds: bool = False) -> torch.Tensor:
    """The fork's NormConv: a convolution with per-position softmax-normalised masks.

    ``A = softmax_k(-scale * Im2dist(embeddings))`` (``Z = +D`` when ``scale`` is
    None, the fork's ``scale_term: false``), then
    ``y = sum_{c,k} W[o,c,k] A[k,p] X[c,k,p] + b`` (``weight`` None: depthwise unit
    weights).  Shapes: ``x (N, C, H, W)``, ``embeddings (N, E, H, W)`` -> ``(N, O, Ho, Wo)``.
    """
    A = normconv_mask(embeddings.to(x.dtype), scale, window, parse_norm(norm), remove_center, remove_bounds)
    y = masked_window_sum(x, A, window, weight, groups)
    if bias is not None:
        y = y + bias.to(y.dtype).reshape(1, -1, 1, 1)
    return y


def meanfield_crf(unary: torch.Tensor, q0: torch.Tensor, bilateral_features: torch.Tensor,
                  spatial_features: torch.Tensor, w_spatial: torch.Tensor, w_bilateral: torch.Tensor,
                  compatibility: torch.Tensor, num_iterations: int, bilateral: MeanfieldKernel,
                  spatial: MeanfieldKernel) -> torch.Tensor:
    """The segmentation-aware CRF (NormConvMeanfield); see :mod:`caffe_compat.ops.meanfield`."""
    dtype = unary.dtype
    return normconv_meanfield(unary, q0.to(dtype), bilateral_features.to(dtype), spatial_features.to(dtype),
                              w_spatial, w_bilateral, compatibility, num_iterations, bilateral, spatial)
