"""``torch.nn`` modules of the segmentation-aware operations (usable without any prototxt).

Each module equals the Caffe layer chain it replaces (tests: ``tests/test_nn_modules.py``,
built from the fork's golden layer cases) and calls the same functions as the
Caffe layers (:mod:`caffe_compat.nn.functional`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..errors import ShapeError
from ..ops.window import parse_norm, norm_name
from . import functional as F

__all__ = ["Im2dist", "SegAwareConv2d", "EmbeddingDistanceLoss", "NormConv2d", "MeanfieldCRF"]


def _init_conv(weight: nn.Parameter, bias: Optional[nn.Parameter]) -> None:
    # torch.nn.Conv2d's default initialisation
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
        bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
        nn.init.uniform_(bias, -bound, bound)


def _scale_tensor(scale: float, learn: bool, module: nn.Module, name: str = "scale") -> None:
    t = torch.tensor(float(scale))
    if learn:
        module.register_parameter(name, nn.Parameter(t))
    else:
        module.register_buffer(name, t)


class Im2dist(nn.Module):
    """Distances between each window centre and its neighbours: ``(N, E, H, W) -> (N, kh*kw, Ho, Wo)``.

    The fork's ``Im2dist`` layer (``norm="L2"`` is **half** the squared distance,
    its default; ``"L1"`` the sum of absolute differences).

    Example::

        >>> d = Im2dist(3, padding=1, norm="L1")(torch.randn(2, 8, 11, 13))
        >>> d.shape
        torch.Size([2, 9, 11, 13])
    """

    def __init__(self, kernel_size, stride=1, padding=0, dilation=1, norm="L2", remove_center: bool = False,
                 remove_bounds: bool = False):
        super().__init__()
        self.window = F.make_window(kernel_size, stride, padding, dilation)
        self.norm = parse_norm(norm)
        self.remove_center, self.remove_bounds = bool(remove_center), bool(remove_bounds)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        w = self.window
        return F.im2dist(embeddings, w.kernel, w.stride, w.pad, w.dilation, self.norm, self.remove_center,
                         self.remove_bounds)

    def extra_repr(self) -> str:
        w = self.window
        return (f"kernel_size={w.kernel}, stride={w.stride}, padding={w.pad}, dilation={w.dilation}, "
                f"norm={norm_name(self.norm)}, remove_center={self.remove_center}, remove_bounds={self.remove_bounds}")


class SegAwareConv2d(nn.Module):
    """Segmentation-aware convolution: each window is masked by embedding similarity before the filter.

    ``y[n,o,p] = b[o] + sum_{c,k} W[o,c,k] * m[n,k,p] * X[n,c,k,p]`` with the local
    attention mask ``m = exp(-|scale * Im2dist(embeddings)|)`` (the window of the
    convolution, ``norm`` distances).  Runs fused (no im2col columns).

    Shapes: ``x (N, in_channels, H, W)``; ``embeddings (N, E, H, W)`` (same H, W);
    or ``mask=`` a precomputed ``(N, kh*kw, Ho, Wo)`` mask used as is; or
    ``distances=`` a precomputed Im2dist ``(N, kh*kw, Ho, Wo)`` turned into a mask with
    this layer's own scale (several layers sharing one Im2dist, as in the vgg config).
    Output ``(N, out_channels, Ho, Wo)``.

    Parameters: ``weight (out, in/groups, kh, kw)``, ``bias (out,)``, ``scale`` (0-dim;
    a buffer if ``learn_scale`` is False).

    Example::

        >>> conv = SegAwareConv2d(16, 32, 3, padding=1)
        >>> y = conv(torch.randn(2, 16, 20, 24), torch.randn(2, 8, 20, 24))
        >>> y.shape
        torch.Size([2, 32, 20, 24])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, norm="L1", scale: float = 0.05, learn_scale: bool = True, groups: int = 1):
        super().__init__()
        self.window = F.make_window(kernel_size, stride, padding, dilation)
        if in_channels % groups or out_channels % groups:
            raise ShapeError(f"SegAwareConv2d: in_channels {in_channels} and out_channels {out_channels} must "
                             f"be divisible by groups {groups}")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.norm = parse_norm(norm)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.window.kernel))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        _init_conv(self.weight, self.bias)
        _scale_tensor(scale, learn_scale, self)

    def mask_from_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """This layer's local attention mask ``(N, kh*kw, Ho, Wo)``."""
        w = self.window
        return F.local_attention_mask(embeddings, w.kernel, w.stride, w.pad, w.dilation, self.norm, self.scale)

    def forward(self, x: torch.Tensor, embeddings: Optional[torch.Tensor] = None, *,
                mask: Optional[torch.Tensor] = None, distances: Optional[torch.Tensor] = None) -> torch.Tensor:
        given = [v is not None for v in (embeddings, mask, distances)]
        if sum(given) != 1:
            raise ShapeError("SegAwareConv2d.forward needs exactly one of embeddings, mask= or distances=")
        if embeddings is not None:
            mask = self.mask_from_embeddings(embeddings.to(x.dtype))
        elif distances is not None:
            mask = F.attention_from_distances(distances.to(x.dtype), self.scale)
        w = self.window
        return F.segaware_conv2d(x, mask.to(x.dtype), self.weight.to(x.dtype),
                                 None if self.bias is None else self.bias.to(x.dtype),
                                 w.stride, w.pad, w.dilation, self.groups)

    def extra_repr(self) -> str:
        w = self.window
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={w.kernel}, stride={w.stride}, "
                f"padding={w.pad}, dilation={w.dilation}, groups={self.groups}, bias={self.bias is not None}, "
                f"norm={norm_name(self.norm)}")


class EmbeddingDistanceLoss(nn.Module):
    """The paper's embedding loss (the fork's ``Im2parity`` + ``Im2dist`` + ``DistLoss``).

    ``forward(embeddings (N, E, H, W), labels (N, 1, H, W))`` -> 0-dim loss:
    ``[sum_{same label} max(d - alpha, 0) + sum_{different} max(beta - d, 0)] / (N*K*Ho*Wo)``
    with ``d`` the windowed distances.  Entries whose parity is ``ignore_label`` cost
    nothing (but still count); ``parity_ignore_label`` makes Im2parity produce such
    entries for pixels with that label (None, as in the fork's configs: labels are
    compared as they are).

    Example::

        >>> loss = EmbeddingDistanceLoss(0.5, 2.0, kernel_size=3, padding=1, ignore_label=255)
        >>> loss(torch.randn(2, 8, 11, 13), torch.randint(0, 3, (2, 1, 11, 13)).float()).shape
        torch.Size([])
    """

    def __init__(self, alpha: float, beta: float, kernel_size=3, stride=1, padding=0, dilation=1, norm="L1",
                 ignore_label: Optional[int] = None, parity_ignore_label: Optional[int] = None):
        super().__init__()
        if not 0 < alpha < beta:
            raise ValueError(f"EmbeddingDistanceLoss needs 0 < alpha < beta, got alpha {alpha}, beta {beta}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.window = F.make_window(kernel_size, stride, padding, dilation)
        self.norm = parse_norm(norm)
        self.ignore_label, self.parity_ignore_label = ignore_label, parity_ignore_label

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        w = self.window
        return F.embedding_distance_loss(embeddings, labels, self.alpha, self.beta, w.kernel, w.stride, w.pad,
                                         w.dilation, self.norm, self.ignore_label,
                                         self.parity_ignore_label)


class NormConv2d(nn.Module):
    """The fork's ``NormConv``: convolution with softmax-normalised embedding masks.

    ``A = softmax_k(-scale * Im2dist(embeddings))`` (``scale=None``: the fork's
    ``scale_term: false``, ``Z = +D``), ``y = sum_{c,k} W[o,c,k] A[k,p] X[c,k,p] + b``.
    Shapes: ``x (N, C, H, W)``, ``embeddings (N, E, H, W)`` -> ``(N, out_channels, Ho, Wo)``.

    Example::

        >>> m = NormConv2d(4, 6, 3, padding=1)
        >>> m(torch.randn(1, 4, 9, 11), torch.randn(1, 3, 9, 11)).shape
        torch.Size([1, 6, 9, 11])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, norm="L2", scale: Optional[float] = 1.0,
                 learn_scale: bool = True, remove_center: bool = False, remove_bounds: bool = False):
        super().__init__()
        self.window = F.make_window(kernel_size, stride, padding, dilation)
        self.groups = int(groups)
        self.norm = parse_norm(norm)
        self.remove_center, self.remove_bounds = bool(remove_center), bool(remove_bounds)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.window.kernel))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        _init_conv(self.weight, self.bias)
        if scale is None:
            self.scale = None
        else:
            _scale_tensor(scale, learn_scale, self)

    def forward(self, x: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return F.norm_conv2d(x, embeddings, self.weight.to(x.dtype), self.bias, self.scale, self.window,
                             self.groups, self.norm, self.remove_center, self.remove_bounds)


class MeanfieldCRF(nn.Module):
    """The segmentation-aware CRF (the fork's ``NormConvMeanfield``): ``num_iterations`` mean-field steps.

    Per step: ``P = softmax_c(Q)``; ``S``, ``B`` = the spatial / bilateral
    normalised masked averages of ``P`` (unit depthwise weights, masks from the
    spatial / bilateral features, half squared L2 distance, fixed scale);
    ``Q = unary - K @ (W_spatial @ S + W_bilateral @ B)``.  Defaults are the res
    config's (bilateral 13x13 dilation 9 pad 54, spatial 5x5 pad 2, scale 1).

    Shapes: ``unary (N, C, H, W)``, ``bilateral_features (N, E1, H, W)``,
    ``spatial_features (N, E2, H, W)``, optional ``q0`` (default ``unary``) -> logits
    ``(N, C, H, W)``.  Parameters ``w_spatial``, ``w_bilateral``, ``compatibility``
    ``(C, C)``, initialised ``I, I, -I``.

    Example::

        >>> crf = MeanfieldCRF(5)
        >>> crf(torch.randn(1, 5, 9, 11), torch.randn(1, 5, 9, 11), torch.randn(1, 2, 9, 11)).shape
        torch.Size([1, 5, 9, 11])
    """

    def __init__(self, num_classes: int, num_iterations: int = 2, bilateral_kernel: int = 13,
                 bilateral_padding: int = 54, bilateral_dilation: int = 9, bilateral_scale: float = 1.0,
                 spatial_kernel: int = 5, spatial_padding: int = 2, spatial_dilation: int = 1,
                 spatial_scale: float = 1.0, remove_center: bool = True, remove_bounds: bool = True):
        super().__init__()
        if num_iterations < 1:
            raise ValueError(f"MeanfieldCRF: num_iterations must be >= 1, got {num_iterations}")
        self.num_iterations = int(num_iterations)
        C = int(num_classes)
        self.bilateral = F.MeanfieldKernel(F.make_window(bilateral_kernel, 1, bilateral_padding, bilateral_dilation),
                                           float(bilateral_scale), remove_center, remove_bounds)
        self.spatial = F.MeanfieldKernel(F.make_window(spatial_kernel, 1, spatial_padding, spatial_dilation),
                                         float(spatial_scale), remove_center, remove_bounds)
        self.w_spatial = nn.Parameter(torch.eye(C))
        self.w_bilateral = nn.Parameter(torch.eye(C))
        self.compatibility = nn.Parameter(-torch.eye(C))

    def forward(self, unary: torch.Tensor, bilateral_features: torch.Tensor, spatial_features: torch.Tensor,
                q0: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.meanfield_crf(unary, unary if q0 is None else q0, bilateral_features, spatial_features,
                               self.w_spatial, self.w_bilateral, self.compatibility, self.num_iterations,
                               self.bilateral, self.spatial)
