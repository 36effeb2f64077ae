"""Automatic fusion of the fork's segmentation-aware convolution chain in a :class:`~caffe_compat.net.Net`.

The fork's configs (vgg) write one segmentation-aware convolution as four layers::

    cols   = Im2col(x)                         (N, C*K, Ho, Wo)
    tiled  = Tile(mask, axis 1, tiles C)       (N, C*K, Ho, Wo), mask (N, K, Ho, Wo)
    hit    = Eltwise PROD(cols, tiled)         (either bottom order)
    y      = Convolution(hit, bottom_is_im2col: true)

When ``cols``, ``tiled`` and ``hit`` feed nothing else (no other consumer, not a
net output or loss, not rewritten in place) and neither ``x`` nor ``mask`` is
rewritten in place between the chain's first layer and the Convolution, the
net runs the fused op :func:`caffe_compat.ops.segaware_conv.segaware_conv2d`
(``y`` from ``x``, ``mask`` and the Convolution's own blobs, same numbers up to
float rounding) in the Convolution's place and skips the three other layers:
the ``C*K``-channel blobs are never built.  The layers stay in the net (names,
parameters, weights files and checkpoints are unchanged); only the run order
changes.  ``Net(..., fuse=False)`` runs every layer as written and keeps every
blob (pycaffe's semantics); with fusion, ``net.blobs[name]`` for a fused-away
blob raises :class:`FusedBlobError` naming ``fuse=False``.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Set, Tuple

import torch

from .errors import CaffeCompatError, NetError
from .ops.segaware_conv import segaware_conv2d
from .ops.window import Window

__all__ = ["FusedBlobError", "FusedSegAwareConv", "FusionPlan", "plan_fusion", "schedule", "FusedBlobs"]

_PROD = 0


class FusedBlobError(NetError, KeyError):
    """A blob was fused away (never computed); build the net with ``fuse=False`` to keep it."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class FusedSegAwareConv:
    """The fused replacement of one Im2col -> Tile -> Eltwise -> Convolution chain.

    Callable ``(x, mask) -> (y,)``; reads the Convolution layer's blobs at call time
    (so loaded weights, shared parameters and training updates apply).  Not an
    ``nn.Module``: the parameters stay owned by the Convolution layer.
    """

    def __init__(self, conv_layer, window: Window, chain: Tuple[str, ...]):
        self.conv = conv_layer
        self.window = window
        self.chain = chain          # names of the fused layers (Im2col, Tile, Eltwise, Convolution)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor):
        conv = self.conv
        kh, kw = self.window.kernel
        weight = conv.blobs[0]
        weight = weight.reshape(weight.shape[0], weight.shape[1], kh, kw)
        if weight.dtype != x.dtype:
            weight = weight.to(x.dtype)
        bias = conv.blobs[1] if conv.bias_term else None
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        try:
            return (segaware_conv2d(x, mask.to(x.dtype), weight, bias, self.window, conv.group),)
        except CaffeCompatError as exc:  # name the fused layers in the message
            raise type(exc)(f"fused segmentation-aware convolution {' -> '.join(self.chain)}: {exc}") from None

    def __repr__(self) -> str:
        return f"FusedSegAwareConv({' -> '.join(self.chain)}, window={self.window})"


@dataclass
class FusionPlan:
    """Which layers are skipped, which run fused, and which blobs are never computed."""

    skip: Set[int] = field(default_factory=set)
    replace: Dict[int, Tuple[FusedSegAwareConv, List[str]]] = field(default_factory=dict)
    hidden: Dict[str, str] = field(default_factory=dict)      # blob -> the conv layer it was fused into

    def __bool__(self) -> bool:
        return bool(self.replace)


def _writers(net) -> Dict[str, List[int]]:
    out: Dict[str, List[int]] = {}
    for i, tops in enumerate(net.top_names):
        for t in tops:
            out.setdefault(t, []).append(i)
    return out


def _readers(net) -> Dict[str, List[int]]:
    out: Dict[str, List[int]] = {}
    for i, bots in enumerate(net.bottom_names):
        for b in bots:
            out.setdefault(b, []).append(i)
    return out


def _last_writer_before(writers, blob: str, idx: int):
    ws = [w for w in writers.get(blob, []) if w < idx]
    return ws[-1] if ws else None


def _match(net, c: int, writers, readers):
    """The fused chain ending at Convolution ``c``, or None."""
    types, bots, tops, layers = net.layer_types, net.bottom_names, net.top_names, net.layers
    conv = layers[c]
    if types[c] != "Convolution" or not getattr(conv, "bottom_is_im2col", False) or len(bots[c]) != 1:
        return None
    hit = bots[c][0]
    e = _last_writer_before(writers, hit, c)
    if e is None or types[e] != "Eltwise" or getattr(layers[e], "op", None) != _PROD or len(bots[e]) != 2:
        return None
    if len(tops[e]) != 1 or hit in bots[e]:
        return None
    pair = []
    for b in bots[e]:
        w = _last_writer_before(writers, b, e)
        if w is None:
            return None
        pair.append((types[w], w, b))
    kinds = sorted(pair)
    if [k[0] for k in kinds] != ["Im2col", "Tile"]:
        return None
    (_, i, cols), (_, t, tiled) = kinds
    im2col, tile = layers[i], layers[t]
    x, mask = bots[i][0], bots[t][0]
    window: Window = im2col.geometry
    xs, ms = net.blob_shapes.get(x), net.blob_shapes.get(mask)
    if xs is None or ms is None or len(xs) != 4 or len(ms) != 4:
        return None
    C, K = xs[1], window.taps
    if getattr(tile, "_axis", None) not in (1, -3) or tile.tiles != C or ms[1] != K:
        return None
    if conv.geom.taps != K or len(conv.blobs[0].shape) != 4:
        return None
    # the intermediates feed nothing else and are never rewritten
    for blob, only in ((cols, e), (tiled, e), (hit, c)):
        if readers.get(blob, []) != [only] or len(writers.get(blob, [])) != 1:
            return None
        if blob in net.outputs or blob in net.loss_weights or blob in net.input_shapes:
            return None
    if len(tops[i]) != 1 or len(tops[t]) != 1:
        return None
    # x and mask still hold the chain's values when the convolution runs
    for blob, start in ((x, i), (mask, t)):
        if any(start < w <= c for w in writers.get(blob, [])):
            return None
    chain = tuple(net.layer_names[j] for j in sorted((i, t, e))) + (net.layer_names[c],)
    return i, t, e, x, mask, (cols, tiled, hit), window, chain


def plan_fusion(net) -> FusionPlan:
    """Find every fusable chain of ``net`` (a built :class:`~caffe_compat.net.Net`)."""
    plan = FusionPlan()
    writers, readers = _writers(net), _readers(net)
    for c in range(len(net.layers)):
        m = _match(net, c, writers, readers)
        if m is None:
            continue
        i, t, e, x, mask, hidden, window, chain = m
        if {i, t, e} & (plan.skip | set(plan.replace)):
            continue
        plan.skip |= {i, t, e}
        plan.replace[c] = (FusedSegAwareConv(net.layers[c], window, chain), [x, mask])
        for b in hidden:
            plan.hidden[b] = net.layer_names[c]
    return plan


def schedule(net) -> Iterator[Tuple[int, object, List[str], List[str]]]:
    """``(index, callable, bottom names, top names)`` per step of a forward pass.

    Without a plan (``fuse=False`` or nothing to fuse) this is every layer as written.
    """
    plan = getattr(net, "fusion_plan", None)
    for i, (layer, bnames, tnames) in enumerate(zip(net.layers, net.bottom_names, net.top_names)):
        if plan:
            if i in plan.skip:
                continue
            if i in plan.replace:
                fused, fb = plan.replace[i]
                yield i, fused, fb, tnames
                continue
        yield i, layer, bnames, tnames


class FusedBlobs(OrderedDict):
    """``net.blobs``: a missing fused-away blob raises :class:`FusedBlobError` (naming ``fuse=False``)."""

    def __init__(self, *args, hidden=None, source: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self._hidden = dict(hidden or {})
        self._source = source

    def __missing__(self, key):
        if key in self._hidden:
            raise FusedBlobError(
                f"{self._source}: blob '{key}' was fused away (the segmentation-aware convolution "
                f"'{self._hidden[key]}' ran fused and never computed it); build the net with "
                f"Net(..., fuse=False) to keep every blob")
        raise KeyError(key)
