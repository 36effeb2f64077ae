"""Layers that declare or fill net inputs: ``Input`` and ``DummyData``.

Neither has bottoms nor a backward.  ``Input`` tops are net inputs fed by the
caller (the net never runs the layer); ``DummyData`` tops are filled by fillers.

Fork behaviours reproduced here (see ``docs/data_layers.md``):

* the fork zeroes element 0 of every net output at the start of each
  forward; for a constant-filled DummyData top that is a net output this
  sticks (it is never refilled): see :meth:`DummyDataLayer.set_net_outputs`;
* the ``xy`` filler's batch bug (images n >= 1 are wrong), see
  :func:`caffe_compat.fillers.fill_xy`.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .. import schema
from ..errors import NetError, ShapeError
from ._common import meta_empty
from .base import Layer, check_shape, in_shape_pass, register_layer

_KNOWN_FILLERS = ("constant", "gaussian", "uniform", "xavier", "msra", "positive_unitball",
                  "bilinear", "xy")
#: fillers whose values do not change between forwards: a DummyData made only of them (the res
#: deploy net's ``xy`` grid) becomes a constant of an exported program; random ones would be frozen.
_DETERMINISTIC_FILLERS = ("constant", "xy")


# =========================================================================================== Input
@register_layer("Input")
class InputLayer(Layer):
    """``Input`` (earlier commit only; ``*/deploy.prototxt``): declares net inputs.

    Tops: N >= 1.  ``input_param.shape`` is given 0 times, once (used for every
    top) or once per top.  The net treats the tops as **net inputs** fed by the
    caller and never calls :meth:`forward`.

    Attributes:
        shapes: list of ``tuple`` shapes, one per top (empty when
            ``input_param`` has no shape: Caffe leaves such tops unshaped, and
            :meth:`input_shapes_for` then raises, since the port needs a shape
            to build the net).
        feeds_net_inputs: ``True`` (how the net builder recognises input layers).
    """

    num_bottoms = (0, 0)
    num_tops = (1, None)
    feeds_net_inputs = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.input_param
        n_top, n_shape = len(param.top), len(p.shape)
        if n_shape not in (0, 1, n_top):
            raise self.error(f"input_param.shape must be given once, once per top or not at all: "
                             f"{n_top} tops vs. {n_shape} shapes")
        self.shapes: List[Tuple[int, ...]] = []
        if n_shape:
            for i in range(n_top):
                dims = p.shape[0 if n_shape == 1 else i].dim
                try:
                    self.shapes.append(check_shape(dims, f"top '{param.top[i]}'"))
                except ShapeError as e:
                    raise self.error(str(e), ShapeError) from None

    def input_shapes_for(self, n_tops: int) -> List[Tuple[int, ...]]:
        """The shapes of the ``n_tops`` net inputs this layer declares."""
        if not self.shapes:
            raise self.error("input_param gives no shape, so the shape of its tops is unknown; "
                             "add input_param { shape { dim: ... } }")
        if len(self.shapes) != n_tops:
            raise self.error(f"{len(self.shapes)} shapes for {n_tops} tops")
        return list(self.shapes)

    def forward(self, *bottoms):
        raise self.error("Input tops are net inputs: pass them to Net.forward(); "
                         "the layer itself computes nothing", NetError)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, shapes={self.shapes}"


# ======================================================================================= DummyData
@register_layer("DummyData")
class DummyDataLayer(Layer):
    """``DummyData``: tops filled by fillers (res configs: the ``xy`` coordinate grid).

    ``dummy_data_param``: ``shape`` (once or once per top) **or** the legacy
    ``num``/``channels``/``height``/``width`` (each once or once per top; not
    both styles); ``data_filler`` 0 times (constant 0), once (all tops) or once
    per top.  Tops whose filler type is ``"constant"`` are filled once at setup;
    all others are refilled at every forward (``xy`` rewrites identical values;
    random fillers draw new values from the net's generator).  The filled
    tensors are kept as (non-persistent) buffers; forward returns copies.

    Fork quirk: the fork's ``Net::Forward`` sets element 0 of every net-output
    blob to 0 before running the layers.  A constant DummyData top is never
    refilled, so if it is a net output its element 0 reads 0 after the first
    forward (golden ``dummydata_constant``).  The net reproduces this by calling
    :meth:`set_net_outputs` with the indices of this layer's tops that are net
    outputs.
    """

    num_bottoms = (0, 0)
    num_tops = (1, None)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.dummy_data_param
        n_top = len(param.top)
        n_fill = len(p.data_filler)
        if n_fill not in (0, 1, n_top):
            raise self.error(f"dummy_data_param: the number of data_filler must be 0, 1 or the number "
                             f"of tops ({n_top}); got {n_fill}")
        legacy = bool(len(p.num) or len(p.channels) or len(p.height) or len(p.width))
        shapes: List[Tuple[int, ...]] = []
        if legacy:
            if len(p.shape):
                raise self.error("dummy_data_param: give either shape or the legacy "
                                 "num/channels/height/width, not both")
            for fname in ("num", "channels", "height", "width"):
                k = len(getattr(p, fname))
                if k not in (1, n_top):
                    raise self.error(f"dummy_data_param: '{fname}' must be given once or once per top "
                                     f"({n_top}); given {k} times")
            for i in range(n_top):
                dims = [getattr(p, f)[0 if len(getattr(p, f)) == 1 else i]
                        for f in ("num", "channels", "height", "width")]
                shapes.append(tuple(int(d) for d in dims))
        else:
            if len(p.shape) not in (1, n_top):
                raise self.error(f"dummy_data_param: 'shape' must be given once or once per top "
                                 f"({n_top}); given {len(p.shape)} times")
            for i in range(n_top):
                shapes.append(tuple(int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim))
        self.shapes: List[Tuple[int, ...]] = []
        for i, s in enumerate(shapes):
            try:
                self.shapes.append(check_shape(s, f"top '{param.top[i]}'"))
            except ShapeError as e:
                raise self.error(str(e), ShapeError) from None

        # One filler for all tops (0/1 given) or one per top, as Caffe.
        if n_fill <= 1:
            fp = schema.FillerParameter()
            if n_fill == 1:
                fp.CopyFrom(p.data_filler[0])
            else:
                fp.type = "constant"
                fp.value = 0.0
            self._fillers = [fp]
        else:
            self._fillers = [p.data_filler[i] for i in range(n_top)]
        for j, fp in enumerate(self._fillers):
            if fp.type not in _KNOWN_FILLERS:
                raise self.error(f"data_filler {j}: unknown filler type {fp.type!r} "
                                 f"(known: {', '.join(_KNOWN_FILLERS)})")
        self._constant = [fp.type == "constant" for fp in self._fillers]
        # The fork refills every non-constant top at each forward; a deterministic one (xy) gets
        # the same values each time, so it is filled once at setup and returned as is (same
        # numbers, and a forward without protobuf access traces in torch.compile).
        self._random = [fp.type not in _DETERMINISTIC_FILLERS for fp in self._fillers]
        for i, s in enumerate(self.shapes):
            fp = self._filler_of(i)
            if fp.type == "xy" and (len(s) != 4 or s[1] != 2):
                raise self.error(f"the xy filler needs a (N, 2, H, W) top, top '{param.top[i]}' has "
                                 f"shape {list(s)}", ShapeError)
        self._zero_first: set = set()
        for i, s in enumerate(self.shapes):
            self.register_buffer(f"top{i}", torch.empty(s, dtype=ctx.dtype, device=ctx.device),
                                 persistent=False)
            if not self._random[self._filler_index(i)] and ctx.device.type != "meta":
                self._fill(i)  # constant and xy tops: filled once, at setup

    def _filler_index(self, i: int) -> int:
        return i if len(self._fillers) > 1 else 0

    def _filler_of(self, i: int):
        return self._fillers[self._filler_index(i)]

    def _buf(self, i: int) -> torch.Tensor:
        return getattr(self, f"top{i}")

    def _fill(self, i: int) -> None:
        buf = self._buf(i)
        tmp = torch.empty(buf.shape, dtype=buf.dtype, device="cpu")
        from ..fillers import fill
        fill(tmp, self._filler_of(i), self.ctx.generator,
             where=f"layer '{self.name}' (DummyData) data_filler for top '{self.param.top[i]}'")
        with torch.no_grad():
            buf.copy_(tmp)

    def set_net_outputs(self, top_indices: Sequence[int]) -> None:
        """Tell the layer which of its tops are net outputs (see the class docstring).

        Constant-filled tops among them get element 0 set to 0 at every forward,
        as the fork's net does; refilled tops are unaffected (the refill
        overwrites the zero).
        """
        self._zero_first = {int(i) for i in top_indices}

    def export_refusal(self) -> Optional[str]:
        """Refused when a filler is random (its values would be frozen into the program)."""
        bad = sorted({fp.type for fp in self._fillers if fp.type not in _DETERMINISTIC_FILLERS})
        return f"DummyData with random filler {', '.join(bad)}" if bad else None

    def forward(self, *bottoms):
        if bottoms:
            raise self.error(f"takes no bottoms, got {len(bottoms)}")
        bufs = [self._buf(i) for i in range(len(self.shapes))]
        if in_shape_pass() or any(b.is_meta for b in bufs):
            return tuple(meta_empty(b.shape, b.dtype) for b in bufs)
        for i, buf in enumerate(bufs):
            j = self._filler_index(i)
            if self._random[j]:
                self._fill(i)
            elif self._constant[j] and i in self._zero_first and buf.numel():
                with torch.no_grad():
                    buf.view(-1)[0] = 0
        return tuple(b.clone() for b in bufs)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, shapes={self.shapes}, fillers={[f.type for f in self._fillers]}"


__all__ = ["InputLayer", "DummyDataLayer"]
