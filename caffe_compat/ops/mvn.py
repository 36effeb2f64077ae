"""Caffe's ``MVN`` (mean-variance normalisation) as an autograd function.

The input is viewed as ``(num, dim)`` rows: one row per ``(n, c)`` (default)
or per image ``n`` (``across_channels``).  Forward, per row::

    xc = x - mean(x)
    y  = xc                                   (normalize_variance: false)
    y  = xc / (sqrt(mean(xc**2)) + eps)       (normalize_variance: true)

Note that Caffe adds ``eps`` to the standard deviation, not to the variance.

Backward -- Caffe's formula, with ``s = sqrt(var) + eps``::

    dx = (dy - mean(dy) - y * mean(dy * y)) / s      (normalize_variance)
    dx = dy - mean(dy)                                (otherwise)

Without ``eps`` the first line is the exact derivative; with ``eps > 0`` it is
not (the exact one has ``sqrt(var)`` in place of ``s`` in one factor of the
second term), so the port implements Caffe's formula explicitly.
"""
from __future__ import annotations

import torch


class MVNFunction(torch.autograd.Function):
    """Row-wise MVN on a ``(num, dim)`` tensor with Caffe's backward (see module docstring)."""

    @staticmethod
    def forward(ctx, x2d: torch.Tensor, normalize_variance: bool, eps: float):
        mean = x2d.mean(dim=1, keepdim=True)
        y = x2d - mean
        s = None
        if normalize_variance:
            var = (y * y).mean(dim=1, keepdim=True)
            s = var.sqrt() + eps
            y = y / s
        ctx.normalize_variance = normalize_variance
        ctx.save_for_backward(y, s if s is not None else y.new_empty(0))
        return y

    @staticmethod
    def backward(ctx, dy):
        y, s = ctx.saved_tensors
        if ctx.normalize_variance:
            inner = (dy * y).mean(dim=1, keepdim=True)
            dx = (dy - dy.mean(dim=1, keepdim=True) - y * inner) / s
        else:
            dx = dy - dy.mean(dim=1, keepdim=True)
        return dx, None, None


def mvn_caffe(x: torch.Tensor, rows: int, normalize_variance: bool, eps: float) -> torch.Tensor:
    """MVN of ``x`` viewed as ``rows`` rows of ``x.numel() // rows`` elements; returns ``x``'s shape."""
    if x.is_meta:
        return torch.empty_like(x)
    x2d = x.reshape(rows, -1)
    return MVNFunction.apply(x2d, bool(normalize_variance), float(eps)).reshape(x.shape)
