"""Small helpers shared by several layer families (checks and conversions written once).

Every helper that raises takes the layer and uses :meth:`Layer.error`, so the
message names the layer exactly as an inline check would.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..errors import ShapeError


def as_dtype_of(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in ``like``'s dtype (differentiably), for float64 inputs with float32 blobs or vice versa."""
    return t if t.dtype == like.dtype else t.to(like.dtype)


def count(shape: Sequence[int], start: int = 0, end: Optional[int] = None) -> int:
    """Number of elements of ``shape[start:end]`` (Caffe's ``count(start, end)``)."""
    return math.prod([int(d) for d in tuple(shape)[start:end]])


def check_4d(layer, shape: Sequence[int], what: str = "bottom") -> None:
    """Refuse a shape that is not ``(N, C, H, W)`` (ShapeError naming ``what``)."""
    if len(shape) != 4:
        raise layer.error(f"{what} must be 4-D (N, C, H, W), got shape {list(shape)}", ShapeError)


def positive_int(layer, value, field: str) -> int:
    """``int(value)``, which must be > 0 (error naming ``field``, e.g. ``convolution_param.group``)."""
    v = int(value)
    if v <= 0:
        raise layer.error(f"{field} must be > 0, got {v}")
    return v


def optional_int(msg, field: str = "ignore_label") -> Optional[int]:
    """``int(msg.field)`` if the proto2 field is given, else ``None`` (e.g. an optional ``ignore_label``)."""
    return int(getattr(msg, field)) if msg.HasField(field) else None


def meta_empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An empty ``meta`` tensor: what layers with side effects return during the net's shape pass."""
    return torch.empty(tuple(shape), device="meta", dtype=dtype)
