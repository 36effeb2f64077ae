"""Caffe's convolution geometry (``ConvolutionParameter`` kernel/stride/pad/dilation).

Shared by Convolution, Deconvolution, Im2col, Im2dist, Im2parity, DistLoss and
NormConv, which all parse ``convolution_param`` the same way (LAYERS.md §0.4).
Only 2 spatial axes (NCHW) are supported by this port.
"""
from __future__ import annotations

from typing import Tuple

from ..ops.window import ConvGeometry  # the one window type (kernel, stride, pad, dilation)

__all__ = ["ConvGeometry", "parse_conv_geometry"]


def _per_dim(values, name: str, fail) -> Tuple[int, int] | None:
    vals = [int(v) for v in values]
    if not vals:
        return None
    if len(vals) == 1:
        return vals[0], vals[0]
    if len(vals) == 2:
        return vals[0], vals[1]
    raise fail(f"convolution_param.{name} must be given once or once per spatial axis (2), got {len(vals)} values")


def parse_conv_geometry(cp, fail, *, num_spatial: int = 2) -> ConvGeometry:
    """Parse a ``ConvolutionParameter`` into a :class:`ConvGeometry`.

    Args:
        cp: the ``ConvolutionParameter`` message.
        fail: ``fail(message) -> Exception`` building an error that names the
            layer (typically ``layer.error``).
        num_spatial: number of spatial axes of the bottom (only 2 supported).
    """
    if num_spatial != 2:
        raise fail(f"only 2 spatial axes (N, C, H, W) are supported, got {num_spatial}")
    # kernel
    if cp.HasField("kernel_h") or cp.HasField("kernel_w"):
        if len(cp.kernel_size):
            raise fail("convolution_param: give either kernel_size or kernel_h/kernel_w, not both")
        kernel = (int(cp.kernel_h), int(cp.kernel_w))
    else:
        kernel = _per_dim(cp.kernel_size, "kernel_size", fail)
        if kernel is None:
            raise fail("convolution_param: kernel_size (or kernel_h and kernel_w) is required")
    if kernel[0] <= 0 or kernel[1] <= 0:
        raise fail(f"convolution_param: kernel dimensions must be > 0, got {list(kernel)}")
    # stride
    if cp.HasField("stride_h") or cp.HasField("stride_w"):
        if len(cp.stride):
            raise fail("convolution_param: give either stride or stride_h/stride_w, not both")
        stride = (int(cp.stride_h), int(cp.stride_w))
    else:
        stride = _per_dim(cp.stride, "stride", fail) or (1, 1)
    if stride[0] <= 0 or stride[1] <= 0:
        raise fail(f"convolution_param: stride must be > 0, got {list(stride)}")
    # pad
    if cp.HasField("pad_h") or cp.HasField("pad_w"):
        if len(cp.pad):
            raise fail("convolution_param: give either pad or pad_h/pad_w, not both")
        pad = (int(cp.pad_h), int(cp.pad_w))
    else:
        pad = _per_dim(cp.pad, "pad", fail) or (0, 0)
    dilation = _per_dim(cp.dilation, "dilation", fail) or (1, 1)
    if dilation[0] <= 0 or dilation[1] <= 0:
        raise fail(f"convolution_param: dilation must be > 0, got {list(dilation)}")
    return ConvGeometry(kernel, stride, pad, dilation)
