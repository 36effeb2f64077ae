"""Caffe's weight fillers (``FillerParameter``), applied in place to a tensor.

Random fillers draw from a seedable :class:`torch.Generator`; like every port,
they cannot reproduce Caffe's Boost mt19937 stream bit for bit, only the
distributions.  Fan-in / fan-out follow Caffe: ``fan_in = count / shape[0]``,
``fan_out = count / shape[1]``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch

from .errors import LayerConfigError


def _fans(t: torch.Tensor, where: str):
    # Caffe: CHECK(count); fan_in = count / shape(0); fan_out = count / shape(1), or count for 1 axis.
    if t.dim() < 1:
        raise LayerConfigError(f"{where}: fan-based filler needs a blob of at least 1 axis, got a scalar")
    count = t.numel()
    if count == 0:
        raise LayerConfigError(f"{where}: fan-based filler on an empty blob {list(t.shape)}")
    return count / t.shape[0], (count / t.shape[1] if t.dim() > 1 else float(count))


def _fan(t: torch.Tensor, filler, where: str) -> float:
    fan_in, fan_out = _fans(t, where)
    norm = filler.DESCRIPTOR.fields_by_name["variance_norm"].enum_type.values_by_number[filler.variance_norm].name
    if norm == "FAN_OUT":
        return fan_out
    if norm == "AVERAGE":
        return (fan_in + fan_out) / 2.0
    return fan_in


def fill(t: torch.Tensor, filler, generator: Optional[torch.Generator] = None, where: str = "filler") -> torch.Tensor:
    """Fill ``t`` in place according to the ``FillerParameter`` message ``filler``.

    ``filler`` may be ``None`` (Caffe's default: constant 0).  Raises
    :class:`LayerConfigError` naming ``where`` for an unknown type or invalid values.
    """
    kind = "constant" if filler is None else filler.type
    if filler is not None and filler.sparse < -1:
        raise LayerConfigError(f"{where}: filler sparse must be >= -1, got {filler.sparse}")
    g = generator
    # no_grad() only where it matters (a leaf that requires grad): it costs ~4 us, per blob of a net
    with torch.no_grad() if t.requires_grad else contextlib.nullcontext():
        if kind == "constant":
            if filler is not None and filler.sparse != -1:
                raise LayerConfigError(f"{where}: constant filler does not support 'sparse'")
            t.fill_(0.0 if filler is None else filler.value)
            return t
        if kind == "gaussian":
            t.normal_(filler.mean, filler.std, generator=g)
            if filler.sparse >= 0:
                if t.dim() < 1 or t.shape[0] == 0:
                    raise LayerConfigError(f"{where}: sparse gaussian filler needs a non-empty first axis")
                keep = filler.sparse / t.shape[0]
                mask = torch.rand(t.shape, generator=g, dtype=torch.float64) < keep
                t.mul_(mask.to(t.dtype))
            return t
        if kind == "uniform":
            if filler.max < filler.min:
                raise LayerConfigError(f"{where}: uniform filler needs min <= max")
            t.uniform_(filler.min, filler.max, generator=g)
            return t
        if kind == "xavier":
            a = math.sqrt(3.0 / _fan(t, filler, where))
            t.uniform_(-a, a, generator=g)
            return t
        if kind == "msra":
            std = math.sqrt(2.0 / _fan(t, filler, where))
            t.normal_(0.0, std, generator=g)
            return t
        if kind == "positive_unitball":
            if t.dim() < 1 or t.shape[0] == 0:
                raise LayerConfigError(f"{where}: positive_unitball filler needs a non-empty first axis")
            t.uniform_(0.0, 1.0, generator=g)
            flat = t.view(t.shape[0], -1)
            flat.div_(flat.sum(dim=1, keepdim=True))
            return t
        if kind == "bilinear":
            if t.dim() != 4 or t.shape[2] != t.shape[3]:
                raise LayerConfigError(f"{where}: bilinear filler needs a 4-D blob with square kernels, got {list(t.shape)}")
            k = t.shape[3]
            f = math.ceil(k / 2.0)
            c = (2 * f - 1 - f % 2) / (2.0 * f)
            idx = torch.arange(k, dtype=torch.float64)
            w1 = 1 - torch.abs(idx / f - c)
            kernel = (w1[:, None] * w1[None, :]).to(t.dtype)
            t.copy_(kernel.expand_as(t))
            return t
        if kind == "xy":
            return fill_xy(t, where)
    raise LayerConfigError(
        f"{where}: unknown filler type {kind!r} (known: constant, gaussian, uniform, xavier, msra, "
        f"positive_unitball, bilinear, xy)")


def fill_xy(t: torch.Tensor, where: str = "xy filler") -> torch.Tensor:
    """The fork's ``xy`` filler, bug included.

    For a blob ``(N, 2, H, W)``: channel 0 holds the column index ``x`` and
    channel 1 the row index ``y`` (raw pixel indices, float).  The fork writes
    image ``n`` at flat offset ``n*c*H*W`` where ``c`` is the channel loop
    variable, so only image 0 is right when N > 1 (image 1 gets ``(y, 0)`` for
    N = 2; ``(y, y)`` and image 2 ``(0, 0)`` for N = 3).  All original configs
    use N = 1.  This reproduces the fork exactly, as the goldens record.
    """
    if t.dim() != 4 or t.shape[1] != 2:
        raise LayerConfigError(f"{where}: the xy filler needs a (N, 2, H, W) blob, got {list(t.shape)}")
    n_img, _, h, w = t.shape
    flat = t.view(-1)
    flat.zero_()
    plane = h * w
    ys, xs = torch.meshgrid(torch.arange(h, dtype=t.dtype), torch.arange(w, dtype=t.dtype), indexing="ij")
    for n in range(n_img):
        for c, val in ((0, xs), (1, ys)):
            off = n * c * plane + c * plane  # the fork's offset: (n*c + c) planes
            if off + plane <= flat.numel():
                flat[off:off + plane] = val.reshape(-1)
    return t
