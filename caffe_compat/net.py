"""``Net``: a Caffe network as a :class:`torch.nn.Module`, with a pycaffe-like API.

The builder follows Caffe's ``Net::Init`` and knows nothing layer-specific:

* layers are filtered by the net state (phase, level, stages), then built in
  file order from the :data:`~caffe_compat.layers.REGISTRY`;
* net inputs come from the legacy net-level ``input``/``input_shape``/
  ``input_dim`` fields and from layers whose class says they feed net inputs
  (``Input``);
* every bottom must be produced by an earlier layer (or be a net input);
  in-place layers simply overwrite the blob; a blob consumed by several layers
  is shared (autograd sums the gradients, like Caffe's inserted ``Split``);
* ``param { name: ... }`` shares one :class:`torch.nn.Parameter` between
  layers; ``lr_mult: 0`` freezes a parameter (``requires_grad=False``) unless
  ``force_backward`` is set (Caffe then computes every parameter diff; the
  solver still never applies an ``lr_mult: 0`` update);
* net outputs are the blobs that no later layer consumes (Caffe's rule);
* loss tops get their ``loss_weight`` (default 1 for loss layers).

Shapes are propagated at build time by running every layer on ``meta``
tensors, so absurd sizes are refused before anything is allocated and
:meth:`Net.infer_shapes` costs no activations.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import os
from collections import OrderedDict
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from . import checkpoint as _ckpt
from . import fusion as _fusion
from . import prototxt as _pt
from . import schema
from . import memory as _mem
from . import weights as _weights
from .errors import (CaffeCompatError, DataError, LayerConfigError, LayerRuntimeError, MemoryBudgetError, NetError,
                     NotSupportedError, ShapeError)
from .layers import BuildContext, Layer, get_layer_class, shape_only
from .layers.base import _append_module, blob_list, check_shape

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
_PHASES = ("TRAIN", "TEST")


class LearnableParam(NamedTuple):
    """One entry of :meth:`Net.learnable_params` (Caffe's ``learnable_params_``)."""

    key: str                #: ``"<layer>/<blob index>"`` of the owner
    layer: str              #: owner layer name
    index: int              #: blob index in that layer
    param: nn.Parameter
    lr_mult: float          #: effective multipliers after Caffe's sharing rule
    decay_mult: float


class _ForwardOnly(nn.Module):
    """Calls ``inner.forward`` directly: shape inference must not fire the user's forward hooks."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        return self.inner.forward(*args)


def _meta_call(layer: nn.Module, bottoms: Sequence[torch.Tensor]):
    """Run ``layer.forward`` (no hooks) on meta tensors with meta copies of its parameters and buffers."""
    if not any(True for _ in layer.parameters()) and not any(True for _ in layer.buffers()):
        with shape_only():   # nothing to swap: a plain call (functional_call costs ~0.1 ms)
            return layer.forward(*bottoms)
    state = {}
    for name, t in layer.named_parameters(remove_duplicate=False):
        state["inner." + name] = t if t.is_meta else torch.empty_like(t, device="meta")
    for name, t in layer.named_buffers(remove_duplicate=False):
        state["inner." + name] = t if t.is_meta else torch.empty_like(t, device="meta")
    with shape_only():
        return torch.func.functional_call(_ForwardOnly(layer), state, tuple(bottoms))


class _ShapeMemo:
    """Top shapes of layers, remembered by (layer class, parameters without names, bottom shapes, phase, dtype).

    Shape inference runs each layer on meta tensors, which costs 0.1-3 ms a layer (torch's meta
    kernels are largely Python); nets repeat the same layer on the same shapes (a ReLU after every
    conv, a stack of identical blocks), and :meth:`Net.infer_shapes` reruns every layer for each new
    input size, so each distinct case runs once.  Layers without bottoms (data layers, whose shapes
    may depend on files) are always run.
    """

    _CLEARED_FIELDS = ("name", "bottom", "top", "loss_weight", "include", "exclude", "param")
    MAX_ENTRIES = 100_000

    def __init__(self):
        self._memo: Dict[tuple, Tuple[Tuple[int, ...], ...]] = {}
        self._param_keys: Dict[int, bytes] = {}

    def _key(self, layer, bottom_shapes) -> Optional[tuple]:
        if not bottom_shapes:
            return None
        pk = self._param_keys.get(id(layer))
        if pk is None:
            m = type(layer.param)()
            m.CopyFrom(layer.param)
            for f in self._CLEARED_FIELDS:
                m.ClearField(f)
            pk = self._param_keys[id(layer)] = m.SerializeToString(deterministic=True)
        return (type(layer), pk, tuple(bottom_shapes), layer.ctx.phase, layer.ctx.dtype)

    def shapes(self, layer, bottom_shapes: Sequence[Tuple[int, ...]]) -> Tuple[Tuple[int, ...], ...]:
        """``layer``'s top shapes for these bottom shapes (meta tensors are made only on a miss)."""
        if layer.same_shape_tops and bottom_shapes:
            return (tuple(bottom_shapes[0]),) * len(layer.param.top)
        key = self._key(layer, [tuple(s) for s in bottom_shapes])
        shapes = self._memo.get(key) if key is not None else None
        if shapes is None:
            dtype = layer.ctx.dtype
            tops = _meta_call(layer, [torch.empty(s, device="meta", dtype=dtype) for s in bottom_shapes])
            shapes = tuple(tuple(t.shape) for t in tops)
            if key is not None:
                if len(self._memo) >= self.MAX_ENTRIES:
                    self._memo.clear()
                self._memo[key] = shapes
        return shapes

    def tops(self, layer, bottoms: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """Meta tensors shaped like ``layer``'s tops for these (meta) bottoms."""
        return tuple(torch.empty(s, device="meta", dtype=layer.ctx.dtype)
                     for s in self.shapes(layer, [tuple(b.shape) for b in bottoms]))


def _is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(e)
    return "bad_alloc" in text or "DefaultCPUAllocator: can't allocate memory" in text or "not enough memory" in text


def _reraise_named(e: Exception, where: str, doing: str, cls=LayerRuntimeError) -> CaffeCompatError:
    """The error to raise (``from e``) for a non-CaffeCompatError ``e`` raised while ``doing`` at ``where``."""
    first = (str(e).strip().splitlines() or [""])[0][:500]
    if _is_out_of_memory(e):
        return MemoryBudgetError(f"{where}: ran out of memory while {doing}: {type(e).__name__}: {first}")
    return cls(f"{where}: {doing} failed: {type(e).__name__}: {first}")


class Net(nn.Module):
    """A Caffe net built from a prototxt.

    Args:
        prototxt: path of the net prototxt (text format).
        weights: optional ``.caffemodel`` / ``.caffemodel.h5`` to load (strict).
        phase: ``"TRAIN"`` or ``"TEST"`` (selects layers by include/exclude rules
            and sets train/test behaviour of Dropout, BatchNorm, data layers).
        defines: values of the ``${NAME}`` template variables.
        level, stages: the rest of Caffe's ``NetState``.
        seed: seed of the filler/data RNG (fillers are random when no weights
            are given).
        device: where parameters live; ``"meta"`` builds a shape-only net.
        dtype: float32 (Caffe's) or float64.
        max_bytes: memory budget in bytes (int, or a string like ``"8G"``): building
            refuses learnable blobs and ``forward`` refuses inputs whose blobs (from
            :meth:`infer_shapes`) would exceed it, before allocating; default: the
            ``CAFFE_COMPAT_MAX_BYTES`` environment variable, else the memory available.
        fuse: run the fork's Im2col -> Tile -> Eltwise PROD -> Convolution(bottom_is_im2col)
            chains as one fused segmentation-aware convolution (default; see
            :mod:`caffe_compat.fusion`).  ``fuse=False`` runs every layer as written and
            keeps every blob in :attr:`blobs` (pycaffe's semantics).

    Attributes (pycaffe names):
        blobs: ordered ``name -> tensor`` of every blob of the last forward.
        params: ordered ``layer name -> [parameter tensors]`` (Caffe blob order).
        inputs, outputs: names of the net input / output blobs.
        layer_names, layer_types: per layer, in net order.
    """

    def __init__(self, prototxt: Optional[PathLike] = None, weights: Optional[PathLike] = None,
                 phase: str = "TEST", defines: Optional[Mapping[str, object]] = None, *,
                 level: int = 0, stages: Sequence[str] = (), seed: Optional[int] = None,
                 device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                 net_param=None, source: Optional[str] = None, max_bytes: Optional[Union[int, str]] = None,
                 fuse: bool = True):
        super().__init__()
        self.max_bytes = max_bytes
        budget = _mem.resolve_budget(max_bytes)  # validates max_bytes / the environment variable
        if (prototxt is None) == (net_param is None):
            raise NetError("Net() needs exactly one of a prototxt path or net_param")
        if net_param is None:
            self.source = str(prototxt)
            self.text, _ = _pt.read_text(prototxt)
            net_param = _pt.parse_net(self.text, self.source, defines)
        else:
            self.source = source or "<NetParameter>"
            self.text = None
        phase = str(phase).upper()
        if phase not in _PHASES:
            raise NetError(f"phase must be TRAIN or TEST, got {phase!r}")
        self.phase = phase
        self.defines = dict(defines or {})
        self.level = int(level)
        stages = [stages] if isinstance(stages, str) else list(stages)
        self.stages = stages + [s for s in net_param.state.stage if s not in stages]
        self.seed = seed
        self.dtype = dtype
        self.net_param = _pt.filter_net(net_param, phase, self.level, self.stages, self.source)
        self.name = self.net_param.name
        self.force_backward = bool(self.net_param.force_backward)
        gen = torch.Generator()
        gen.manual_seed(seed if seed is not None else torch.initial_seed() & 0x7FFFFFFF)
        self._ctx = BuildContext(phase=phase, generator=gen, device=torch.device(device), dtype=dtype,
                                 source=self.source, memory=_mem.Reservation(budget))
        # The build makes many objects and no garbage cycles: the cyclic collector would rescan the
        # growing heap again and again (a third of the build time of a 20,000-layer net).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            # one no_grad() for the whole build (shape passes, fillers), not one per layer
            with torch.no_grad():
                self._build()
        finally:
            if gc_was_enabled:
                gc.enable()
        self.fuse = bool(fuse)
        self.fusion_plan = _fusion.plan_fusion(self) if self.fuse else _fusion.FusionPlan()
        if weights is not None:
            self.load_weights(weights)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_string(cls, text: str, weights: Optional[PathLike] = None, phase: str = "TEST",
                    defines: Optional[Mapping[str, object]] = None, **kwargs) -> "Net":
        """Build a net from prototxt text instead of a file."""
        source = kwargs.pop("source", "<string>")
        net_param = _pt.parse_net(text, source, defines)
        net = cls(net_param=net_param, weights=weights, phase=phase, defines=defines, source=source, **kwargs)
        net.text = text
        return net

    def _net_level_inputs(self) -> "OrderedDict[str, Tuple[int, ...]]":
        npar, src = self.net_param, self.source
        names = list(npar.input)
        shapes: List[Tuple[int, ...]] = []
        if len(npar.input_shape):
            if len(npar.input_dim):
                raise NetError(f"{src}: give input_shape or input_dim, not both")
            if len(npar.input_shape) != len(names):
                raise NetError(f"{src}: {len(names)} input(s) but {len(npar.input_shape)} input_shape(s)")
            shapes = [tuple(s.dim) for s in npar.input_shape]
        elif len(npar.input_dim):
            if len(npar.input_dim) != 4 * len(names):
                raise NetError(f"{src}: input_dim needs 4 values per input ({len(names)} inputs, "
                               f"{len(npar.input_dim)} values)")
            dims = list(npar.input_dim)
            shapes = [tuple(dims[4 * i:4 * i + 4]) for i in range(len(names))]
        elif names:
            raise NetError(f"{src}: inputs {names} have no input_shape / input_dim")
        out = OrderedDict()
        for n, s in zip(names, shapes):
            if n in out:
                raise NetError(f"{src}: duplicate net input '{n}'")
            out[n] = check_shape(s, f"{src}: input '{n}'")
        return out

    def _build(self) -> None:
        src = self.source
        self.input_shapes: "OrderedDict[str, Tuple[int, ...]]" = self._net_level_inputs()
        shapes: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict(self.input_shapes)
        available = dict.fromkeys(shapes)   # Caffe's available_blobs (the outputs at the end), ordered
        self._shape_memo = _ShapeMemo()
        self.layers = nn.ModuleList()
        self.layer_names: List[str] = []
        self.layer_types: List[str] = []
        self.bottom_names: List[List[str]] = []
        self.top_names: List[List[str]] = []
        self.loss_weights: "OrderedDict[str, float]" = OrderedDict()
        self.param_specs: List[List[dict]] = []
        owners: Dict[str, Tuple[int, int]] = {}
        auto_count = 0
        auto_names = set()
        phase_name = {v: k for k, v in schema.enum_values("LayerParameter", "phase").items()}
        for lp in self.net_param.layer:
            where = f"{src}: layer '{lp.name}' ({lp.type})"
            try:
                cls = get_layer_class(lp.type, lp.name)
            except CaffeCompatError as e:
                raise type(e)(f"{src}: {e}") from None
            # Caffe gives a layer the net's phase unless the layer sets its own; blobs shared
            # by name with an earlier layer are handed over instead of allocated again.
            shared = {j: self.layers[owners[ps.name][0]].blobs[owners[ps.name][1]]
                      for j, ps in enumerate(lp.param) if ps.name and ps.name in owners}
            ctx = self._ctx if not shared and not lp.HasField("phase") else dataclasses.replace(
                self._ctx, shared_blobs=shared, **({"phase": phase_name[lp.phase]} if lp.HasField("phase") else {}))
            for b in lp.bottom:
                if b not in shapes:
                    raise NetError(f"{where}: bottom '{b}' is not produced by any earlier layer "
                                   f"(known blobs: {', '.join(shapes) or 'none'})")
            bottom_shapes = [shapes[b] for b in lp.bottom]
            try:
                layer = cls(lp, bottom_shapes, ctx)
            except CaffeCompatError as e:
                raise type(e)(f"{src}: {e}") from None
            except Exception as e:
                raise _reraise_named(e, where, "building the layer", LayerConfigError) from e
            idx = len(self.layers)
            tops = list(lp.top)
            if layer.feeds_net_inputs:
                top_shapes = [check_shape(s, f"{where}: top '{t}'") for t, s in
                              zip(tops, layer.input_shapes_for(len(tops)))]
                for t, s in zip(tops, top_shapes):
                    if t in self.input_shapes:
                        raise NetError(f"{where}: duplicate net input '{t}'")
                    self.input_shapes[t] = s
            else:
                try:
                    outs = self._shape_memo.shapes(layer, bottom_shapes)
                except CaffeCompatError as e:
                    raise type(e)(f"{src}: {e}") from None
                except Exception as e:
                    raise _reraise_named(e, where, f"computing its output shapes from bottoms "
                                                   f"{[list(s) for s in bottom_shapes]}", ShapeError) from e
                outs = tuple(outs)
                if len(outs) < len(tops) or (len(outs) > len(tops) and layer.auto_tops is None):
                    raise NetError(f"{where}: lists {len(tops)} tops but produces {len(outs)}")
                while len(tops) < len(outs):   # Caffe's AutoTopBlobs (all named "(automatic)" there)
                    auto_count += 1
                    tops.append("(automatic)" if auto_count == 1 else f"(automatic)#{auto_count}")
                    auto_names.add(tops[-1])
                top_shapes = [check_shape(o, f"{where}: top '{t}'") for t, o in zip(tops, outs)]
            for i, t in enumerate(tops):
                in_place = i < len(lp.bottom) and lp.bottom[i] == t
                if t in shapes and not in_place:
                    raise NetError(f"{where}: top '{t}' is produced by multiple sources (only an in-place "
                                   f"layer, top {i} == bottom {i}, may write an existing blob)")
            for b in lp.bottom:
                available.pop(b, None)
            for t, s in zip(tops, top_shapes):
                shapes[t] = s
                available.pop(t, None)
                if t not in auto_names:  # Caffe keeps automatic tops out of the net outputs
                    available[t] = None
            self._setup_params(layer, lp, idx, owners)
            self._setup_loss(layer, lp, tops)
            _append_module(self.layers, layer)
            self.layer_names.append(lp.name)
            self.layer_types.append(lp.type)
            self.bottom_names.append(list(lp.bottom))
            self.top_names.append(tops)
        for specs in self.param_specs:  # sharers report their owner's final multipliers
            for rec in specs:
                if rec["owner"] is not None:
                    o = self.param_specs[rec["owner"][0]][rec["owner"][1]]
                    rec.update({k: o[k] for k in ("lr_mult", "decay_mult", "lr_mult_set", "decay_mult_set")})
        self.inputs: List[str] = list(self.input_shapes)
        self.outputs: List[str] = sorted(available)  # Caffe: a std::set, i.e. sorted by name
        self.blob_shapes: "OrderedDict[str, Tuple[int, ...]]" = shapes
        self.blobs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        # Layers that care which of their tops are net outputs (the fork zeroes element 0 of
        # every net output before each forward, which sticks for never-refilled tops).
        for layer, tnames in zip(self.layers, self.top_names):
            layer.set_net_outputs([i for i, t in enumerate(tnames) if t in self.outputs])
        log.debug("built net %r: %d layers, %d blobs", self.name, len(self.layers), len(shapes))

    def _setup_params(self, layer, lp, idx: int, owners) -> None:
        where = f"{self.source}: layer '{lp.name}' ({lp.type})"
        blobs = blob_list(layer)
        n_blobs = len(blobs)
        if len(lp.param) > n_blobs:
            raise LayerConfigError(f"{where}: {len(lp.param)} param specs but the layer has {n_blobs} blobs")
        specs = []
        for i in range(n_blobs):
            spec = lp.param[i] if i < len(lp.param) else None
            lr = spec.lr_mult if spec is not None and spec.HasField("lr_mult") else None
            decay = spec.decay_mult if spec is not None and spec.HasField("decay_mult") else None
            name = spec.name if spec is not None else ""
            if name and name in owners:
                o_idx, o_blob = owners[name]
                owner_layer = self.layers[o_idx]
                p_owner = owner_layer.blobs[o_blob]
                mine = blobs[i]
                permissive = spec.share_mode == schema.enum_value("ParamSpec", "share_mode", "PERMISSIVE")
                if tuple(mine.shape) != tuple(p_owner.shape):
                    if permissive and mine.numel() == p_owner.numel():
                        raise NotSupportedError(
                            f"{where}: shared param '{name}' has shape {list(mine.shape)} here but "
                            f"{list(p_owner.shape)} in its owner layer '{self.layer_names[o_idx]}'; sharing "
                            f"with a different shape (share_mode PERMISSIVE) is not supported")
                    raise ShapeError(f"{where}: shared param '{name}' has shape {list(mine.shape)} here but "
                                     f"{list(p_owner.shape)} in its owner layer '{self.layer_names[o_idx]}'")
                owner_spec = self.param_specs[o_idx][o_blob]
                for key, val in (("lr_mult", lr), ("decay_mult", decay)):
                    if val is None:
                        continue
                    if owner_spec[key + "_set"] and owner_spec[key] != val:
                        raise LayerConfigError(f"{where}: shared param '{name}' has {key} {val} here but "
                                               f"{owner_spec[key]} in layer '{self.layer_names[o_idx]}'")
                    if not owner_spec[key + "_set"]:
                        owner_spec[key], owner_spec[key + "_set"] = val, True
                        if key == "lr_mult":
                            p_owner.requires_grad_(val != 0 or self.force_backward)
                layer.blobs[i] = p_owner
                specs.append({"name": name, "owner": (o_idx, o_blob)})  # multipliers: filled in _build
                continue
            rec = {"name": name, "owner": None,
                   "lr_mult": 1.0 if lr is None else float(lr), "lr_mult_set": lr is not None,
                   "decay_mult": 1.0 if decay is None else float(decay), "decay_mult_set": decay is not None}
            if name:
                owners[name] = (idx, i)
            # Caffe: lr_mult 0 => no param diff, except that force_backward turns on
            # param_propagate_down for every blob (the solver still never updates it).
            blobs[i].requires_grad_(rec["lr_mult"] != 0 or self.force_backward)
            specs.append(rec)
        self.param_specs.append(specs)

    def _setup_loss(self, layer, lp, tops) -> None:
        where = f"{self.source}: layer '{lp.name}' ({lp.type})"
        if len(lp.loss_weight) and len(lp.loss_weight) != len(tops):
            raise LayerConfigError(f"{where}: loss_weight must be given once per top ({len(tops)}), "
                                   f"got {len(lp.loss_weight)}")
        for i, t in enumerate(tops):
            w = lp.loss_weight[i] if len(lp.loss_weight) else (1.0 if layer.is_loss and i == 0 else 0.0)
            if w:
                self.loss_weights[t] = float(w)

    # ------------------------------------------------------------------ pycaffe-like API
    @property
    def params(self) -> "OrderedDict[str, List[nn.Parameter]]":
        """``layer name -> [blobs]`` for layers with learnable blobs (first layer of a name wins)."""
        out: "OrderedDict[str, List[nn.Parameter]]" = OrderedDict()
        for name, layer in zip(self.layer_names, self.layers):
            if len(layer.blobs) and name not in out:
                out[name] = list(layer.blobs)
        return out

    def layer(self, name: str) -> nn.Module:
        """The first layer called ``name``."""
        try:
            return self.layers[self.layer_names.index(name)]
        except ValueError:
            raise NetError(f"{self.source}: no layer named '{name}'") from None

    @property
    def device(self) -> torch.device:
        """Where the net's parameters (or, without any, its buffers) live; CPU for a net without either."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def _prepare_input(self, name: str, value, device: torch.device) -> torch.Tensor:
        where = f"{self.source}: input '{name}'"
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise DataError(f"{where}: numpy dtype {value.dtype} is not numeric (bool, int or float expected)")
            if value.dtype.kind != "f" or value.dtype.itemsize > 8 or not value.dtype.isnative:
                # ints, long doubles, big-endian: numpy converts (torch has no such dtypes)
                value = value.astype(np.float64 if self.dtype == torch.float64 else np.float32)
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise DataError(f"{where} must be a tensor or numpy array, got {type(value).__name__}")
        if value.is_nested or value.layout != torch.strided:
            raise DataError(f"{where}: {'nested' if value.is_nested else str(value.layout)} tensors are not "
                            f"supported; give a dense tensor (e.g. x.to_dense())")
        if value.device.type == "meta":
            raise DataError(f"{where} is on the meta device (no values); use infer_shapes() for shapes")
        if value.is_complex() or value.is_quantized:
            raise DataError(f"{where}: dtype {value.dtype} is not supported (a real-valued tensor expected)")
        want = self.input_shapes[name]
        if value.dim() != len(want):
            raise ShapeError(f"{self.source}: input '{name}' has shape {list(value.shape)}, "
                             f"expected {len(want)} axes like {list(want)}")
        if len(want) >= 2 and value.shape[1] != want[1]:
            raise ShapeError(f"{self.source}: input '{name}' has {value.shape[1]} channels, "
                             f"the net was built for {want[1]} (shape {list(want)})")
        check_shape(value.shape, where)
        value = value.to(device=device, dtype=self.dtype)
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(value).all()):
            raise DataError(f"{where} contains NaN or Inf (after conversion to {self.dtype})")
        return value

    def _check_forward_memory(self, inputs: Mapping[str, torch.Tensor]) -> None:
        """Refuse a forward whose blobs (shapes from :meth:`infer_shapes`) exceed the memory budget."""
        key = tuple((k, tuple(v.shape)) for k, v in inputs.items())
        if getattr(self, "_budget_key", None) != key:
            shapes = self.infer_shapes(**{k: tuple(v.shape) for k, v in inputs.items()})
            itemsize = self.dtype.itemsize
            plan = []   # (layer index, bytes of its new tops)
            for i, (bnames, tnames) in enumerate(zip(self.bottom_names, self.top_names)):
                if self.layers[i].feeds_net_inputs:
                    continue
                n = sum(_mem.nbytes(shapes[t], itemsize) for j, t in enumerate(tnames)
                        if not (j < len(bnames) and bnames[j] == t))   # in-place tops reuse the bottom
                plan.append((i, n))
            self._budget_key, self._budget_plan = key, plan
        budget = _mem.resolve_budget(self.max_bytes)
        held = 0
        for i, n in self._budget_plan:
            _mem.check_fits(n, f"{self.source}: forward: layer '{self.layer_names[i]}' "
                               f"({self.layer_types[i]}) tops {self.top_names[i]}", budget, held)
            held += n

    def forward(self, *args, **inputs) -> "OrderedDict[str, torch.Tensor]":
        """Run the net: ``net(data=x)`` -> ``{output blob: tensor}``.

        Every net input must be given (tensor or numpy array; moved to the net's
        device and dtype). Other spatial sizes than the prototxt's work wherever
        the layers allow. After the call, :attr:`blobs` holds every blob and
        :attr:`loss` the weighted sum of the loss tops (``None`` without one).
        The blobs' bytes are checked against the memory budget (``max_bytes``)
        before running; an error inside a layer that is not a CaffeCompatError
        is re-raised as :class:`LayerRuntimeError` naming the layer (chained).
        """
        if args:
            raise NetError(f"{self.source}: give the inputs by name, e.g. net({self.inputs[0] if self.inputs else 'data'}"
                           f"=x) (the net's inputs: {self.inputs}); got {len(args)} positional argument(s)")
        unknown = [k for k in inputs if k not in self.input_shapes]
        if unknown:
            raise NetError(f"{self.source}: unknown input(s) {unknown}; the net's inputs are {self.inputs}")
        missing = [k for k in self.inputs if k not in inputs]
        if missing:
            raise NetError(f"{self.source}: missing input(s) {missing}")
        device = self.device
        if device.type == "meta":
            raise NetError(f"{self.source}: the net was built on the meta device (shapes only); "
                           f"use infer_shapes(), or build it on a real device to run it")
        blobs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        want_input_grad = self.force_backward and torch.is_grad_enabled()
        self._input_leaves = OrderedDict()
        for k in self.inputs:
            x = self._prepare_input(k, inputs[k], device)
            if want_input_grad and not x.requires_grad:
                x = x.detach().requires_grad_(True)
            blobs[k] = self._input_leaves[k] = x
        if not torch.compiler.is_compiling():
            self._check_forward_memory(blobs)
        self.run_layers(blobs, device=device, failing="forward", schedule=_fusion.schedule(self),
                        release=self._release_plan() if self.free_blobs else None)
        self.blobs = _fusion.FusedBlobs(blobs, hidden=self.fusion_plan.hidden, source=self.source)
        self._loss_tops = OrderedDict((t, blobs[t]) for t in self.loss_weights)
        self.loss = None
        for t, w in self.loss_weights.items():
            term = w * blobs[t].sum()
            self.loss = term if self.loss is None else self.loss + term
        return OrderedDict((k, blobs[k]) for k in self.outputs)

    def layer_schedule(self) -> Iterator[Tuple[int, nn.Module, List[str], List[str]]]:
        """``(index, layer, bottom names, top names)`` of every layer, in net order."""
        return ((i, layer, b, t) for i, (layer, b, t) in enumerate(zip(self.layers, self.bottom_names,
                                                                        self.top_names)))

    def run_layers(self, blobs: Dict[str, torch.Tensor], *, device: Optional[torch.device] = None,
                   call: Optional[Callable] = None, on_layer: Optional[Callable[[int], None]] = None,
                   failing: Optional[str] = None, failing_error: type = LayerRuntimeError,
                   schedule: Optional[Iterable[Tuple[int, nn.Module, List[str], List[str]]]] = None,
                   release: Optional[Mapping[int, Sequence[str]]] = None
                   ) -> Dict[str, torch.Tensor]:
        """Run every computing layer in net order: the one loop of :meth:`forward`,
        :meth:`infer_shapes` and exported programs (:mod:`caffe_compat.export`).

        Args:
            blobs: ``blob name -> tensor`` holding (at least) the net inputs;
                each layer's tops are written into it (an in-place layer
                overwrites its bottom's entry).  No input checks are made here.
            device: tops of layers without bottoms (DummyData, data readers) are
                moved there; ``None`` moves nothing.
            call: ``call(layer, bottoms) -> tops`` instead of ``layer(*bottoms)``
                (the shape pass runs layers on meta tensors this way).
            on_layer: called with each layer's index before it runs.
            failing: what the loop does (e.g. ``"forward"``); when given, an error of a
                layer that is not a CaffeCompatError is re-raised as ``failing_error``
                naming the layer and its type (the original chained), a lack of
                memory as :class:`MemoryBudgetError`.
            schedule: what to run, as :meth:`layer_schedule` gives it (the default).
            release: ``step index -> blob names`` dropped from ``blobs`` after that step
                (:attr:`free_blobs`).

        Layers that only declare net inputs (``feeds_net_inputs``) are skipped.
        Returns ``blobs``.
        """
        for i, layer, bnames, tnames in (self.layer_schedule() if schedule is None else schedule):
            if isinstance(layer, Layer) and layer.feeds_net_inputs:  # a schedule may hold other modules
                continue
            if on_layer is not None:
                on_layer(i)
            bottoms = [blobs[b] for b in bnames]
            try:
                tops = layer(*bottoms) if call is None else call(layer, bottoms)
            except CaffeCompatError:
                raise
            except Exception as e:
                if failing is None:
                    raise
                raise _reraise_named(e, f"{self.source}: layer '{self.layer_names[i]}' ({self.layer_types[i]})",
                                     f"{failing} from bottoms {[list(b.shape) for b in bottoms]}",
                                     failing_error) from e
            if isinstance(tops, torch.Tensor):
                tops = (tops,)
            if len(tops) != len(tnames):
                raise NetError(f"{self.source}: layer '{self.layer_names[i]}' returned {len(tops)} tops, "
                               f"expected {len(tnames)}")
            for t, v in zip(tnames, tops):
                if device is not None and not bnames and v.device != device:
                    v = v.to(device)
                blobs[t] = v
            if release is not None:
                for b in release.get(i, ()):
                    blobs.pop(b, None)
        return blobs

    def backward(self, **top_diffs) -> "OrderedDict[str, Optional[torch.Tensor]]":
        """Back-propagate the last forward (pycaffe's ``net.backward``).

        Every loss top contributes its ``loss_weight`` (as Caffe, also when a
        later layer consumes it); ``top_diffs`` give the gradient of named
        output blobs (for a loss output it replaces the loss weight). Parameter
        gradients accumulate in ``p.grad``; returns the input blobs' gradients
        (``None`` unless ``force_backward`` made the inputs require grad).
        """
        if not self.blobs:
            raise NetError(f"{self.source}: backward() needs a forward() first")
        unknown = [k for k in top_diffs if k not in self.outputs]
        if unknown:
            raise NetError(f"{self.source}: diffs given for {unknown}, which are not net outputs "
                           f"(outputs: {self.outputs})")
        terms: "OrderedDict[str, Tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
        for name, w in self.loss_weights.items():
            v = self._loss_tops[name]
            terms[name] = (v, torch.full_like(v, w))
        for name, g in top_diffs.items():
            v = self.blobs[name]
            try:
                g = torch.as_tensor(g if isinstance(g, torch.Tensor) else np.asarray(g, dtype=np.float64))
            except (TypeError, ValueError) as e:
                raise DataError(f"{self.source}: diff for '{name}' is not numeric: {e}") from None
            if tuple(g.shape) != tuple(v.shape):
                raise ShapeError(f"{self.source}: diff for '{name}' has shape {list(g.shape)}, "
                                 f"the blob has {list(v.shape)}")
            terms[name] = (v, g.to(dtype=v.dtype, device=v.device))
        outs = [(v, g) for v, g in terms.values() if v.requires_grad]
        if outs:
            try:
                torch.autograd.backward([v for v, _ in outs], [g for _, g in outs])
            except RuntimeError as e:
                if "second time" in str(e):
                    raise NetError(f"{self.source}: backward() was already called for this forward; "
                                   f"run forward() again first") from None
                raise
        return OrderedDict((k, x.grad if x.requires_grad else None) for k, x in self._input_leaves.items())

    # ------------------------------------------------------------------ training support
    def learnable_params(self) -> List[LearnableParam]:
        """Every owned learnable blob, in Caffe's order (layer order, then blob order).

        Blobs shared by ``param { name }`` appear once, under their owner, with
        the owner's effective ``lr_mult``/``decay_mult``; ``lr_mult: 0`` blobs are
        included (Caffe keeps a solver history for them too).  This is the order
        of a ``.solverstate``'s history.
        """
        out = []
        for i, (lname, layer) in enumerate(zip(self.layer_names, self.layers)):
            for j, rec in enumerate(self.param_specs[i]):
                if rec["owner"] is None:
                    out.append(LearnableParam(f"{lname}/{j}", lname, j, layer.blobs[j],
                                              float(rec["lr_mult"]), float(rec["decay_mult"])))
        return out

    def share_trained_layers_with(self, other: "Net") -> None:
        """Make this net's blobs alias ``other``'s, by layer name (Caffe's ``ShareTrainedLayersWith``).

        A TEST net then always sees the train net's current weights (in-place
        updates of ``other`` are visible here).  Layers ``other`` lacks keep their
        own blobs; blob counts and shapes must match.
        """
        source = {}
        for name, layer in zip(other.layer_names, other.layers):
            source.setdefault(name, layer)
        for name, typ, layer in zip(self.layer_names, self.layer_types, self.layers):
            src = source.get(name)
            if src is None or not len(layer.blobs):
                continue
            if len(src.blobs) != len(layer.blobs):
                raise NetError(f"{self.source}: layer '{name}' ({typ}) has {len(layer.blobs)} blobs, "
                               f"the layer of that name in {other.source} has {len(src.blobs)}")
            for j, (mine, theirs) in enumerate(zip(layer.blobs, src.blobs)):
                if tuple(mine.shape) != tuple(theirs.shape):
                    raise ShapeError(f"{self.source}: layer '{name}' blob {j} has shape {list(mine.shape)}, "
                                     f"in {other.source} {list(theirs.shape)}")
                mine.data = theirs.data

    @property
    def generator(self) -> torch.Generator:
        """The net's seeded CPU generator (fillers, Dropout masks, data shuffling and crops)."""
        return self._ctx.generator

    #: when True, ``forward`` drops each intermediate blob after the last layer that reads it
    #: (net outputs, loss tops and inputs stay in :attr:`blobs`); peak memory of inference
    #: then follows the live blobs, not all of them.  Gradients still work (autograd keeps
    #: what it needs), but ``blobs`` then lacks the dropped intermediates.
    free_blobs: bool = False

    def _release_plan(self) -> Dict[int, List[str]]:
        """``layer index -> blobs last read or written by that layer`` (built once; see :attr:`free_blobs`)."""
        plan = getattr(self, "_release_plan_cache", None)
        if plan is None:
            keep = set(self.outputs) | set(self.loss_weights) | set(self.inputs)
            last: Dict[str, int] = {}
            # over what actually runs: a fused convolution reads its chain's x and mask itself
            for i, _layer, bn, tn in _fusion.schedule(self):
                for b in list(bn) + list(tn):
                    last[b] = i
            plan = {}
            for b, i in last.items():
                if b not in keep:
                    plan.setdefault(i, []).append(b)
            self._release_plan_cache = plan
        return plan

    # ------------------------------------------------------------------ shapes
    def infer_shapes(self, **input_shapes) -> "OrderedDict[str, Tuple[int, ...]]":
        """Every blob's shape for the given input shapes (defaults: the prototxt's), no activations.

        Runs every layer on ``meta`` tensors; data layers report the shapes their
        parameters imply without reading files.
        """
        unknown = [k for k in input_shapes if k not in self.input_shapes]
        if unknown:
            raise NetError(f"{self.source}: unknown input(s) {unknown}; the net's inputs are {self.inputs}")
        shapes: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
        blobs: Dict[str, torch.Tensor] = {}
        for k, default in self.input_shapes.items():
            s = check_shape(input_shapes.get(k, default), f"{self.source}: input '{k}'")
            shapes[k] = s
            blobs[k] = torch.empty(s, device="meta", dtype=self.dtype)
        current = [0]

        def shaped(layer, bottoms):
            tops = self._shape_memo.tops(layer, bottoms)
            for t, v in zip(self.top_names[current[0]], tops):
                shapes[t] = check_shape(v.shape, f"{self.source}: layer '{layer.name}' top '{t}'")
            return tops

        with torch.no_grad():
            self.run_layers(blobs, call=shaped, on_layer=lambda i: current.__setitem__(0, i),
                            failing="computing its output shapes", failing_error=ShapeError)
        return shapes

    # ------------------------------------------------------------------ weights
    def load_weights(self, path: PathLike, strict: bool = True) -> "_weights.LoadReport":
        """Copy weights by layer name from a ``.caffemodel``, a Caffe ``.h5`` or a native checkpoint.

        See :mod:`.weights` (Caffe formats) and :mod:`.checkpoint` (``.pt``).
        Returns a :class:`~caffe_compat.weights.LoadReport` for every format
        (for a checkpoint its entries are checkpoint keys ``"<layer>/<i>"``).
        """
        if _ckpt.is_checkpoint_file(path):
            return _ckpt.load_checkpoint_into(self, path, strict=strict)
        return _weights.load_into_net(self, path, strict=strict)

    @classmethod
    def from_checkpoint(cls, path: PathLike, device: Union[str, torch.device] = "cpu",
                        dtype: Optional[torch.dtype] = None, phase: Optional[str] = None) -> "Net":
        """Rebuild a net (architecture and weights) from a native checkpoint, without the original files.

        Args:
            path: the ``.pt`` written by :meth:`save_checkpoint`.
            device: where the parameters go.
            dtype: override the stored dtype (e.g. ``torch.float64``).
            phase: override the stored phase (the full text is stored, so the
                other phase's layers can be selected).
        """
        ckpt = _ckpt.read_checkpoint(path)
        return cls.from_checkpoint_dict(ckpt, str(path), device=device, dtype=dtype, phase=phase)

    @classmethod
    def from_checkpoint_dict(cls, ckpt: dict, where: str = "<checkpoint>", device: Union[str, torch.device] = "cpu",
                             dtype: Optional[torch.dtype] = None, phase: Optional[str] = None) -> "Net":
        """:meth:`from_checkpoint` for a checkpoint dict already read and validated."""
        spec = _ckpt.net_spec(ckpt)
        try:
            net = cls.from_string(spec.text, phase=phase or spec.phase, defines=spec.defines, level=spec.level,
                                  stages=spec.stages, dtype=dtype or spec.dtype, device=device,
                                  source=f"{where}:prototxt")
        except CaffeCompatError as e:
            raise type(e)(f"{where}: the stored net does not build: {e}") from None
        net.defines = dict(spec.stored_defines)
        # in another phase than the stored one, layers of the stored phase may be absent: not an error
        _ckpt.load_state_into(net, ckpt, where, strict=True, allow_unexpected=net.phase != spec.phase)
        return net

    def save_checkpoint(self, path: PathLike) -> None:
        """Write a native PyTorch checkpoint (``torch.load(path, weights_only=True)`` reads it)."""
        _ckpt.save_checkpoint(self, path)

    def save(self, path: PathLike) -> None:
        """Write the weights as a binary ``.caffemodel``, or Caffe HDF5 if ``path`` ends in ``.h5``."""
        _weights.save_net(self, path)

    def net_text(self) -> Tuple[str, Optional[str]]:
        """``(text, template)``: the net's prototxt with ``${NAME}`` templates substituted, and the
        text as given when it differs (``None`` otherwise).

        A net built from a ``NetParameter`` has no text: its (phase-filtered)
        message is printed instead.
        """
        if self.text is None:
            from google.protobuf import text_format
            return text_format.MessageToString(self.net_param), None
        sub = _pt.substitute_templates(self.text, self.defines or {}, self.source)
        return sub, (self.text if sub != self.text else None)

    # ------------------------------------------------------------------ summary
    def summary(self) -> str:
        """A table of layers: name, type, bottoms -> tops, top shapes, parameter counts."""
        rows = [("#", "name", "type", "bottoms -> tops", "top shapes", "params")]
        total = 0
        seen = set()
        for i, (name, typ, bn, tn, layer) in enumerate(zip(self.layer_names, self.layer_types,
                                                         self.bottom_names, self.top_names, self.layers)):
            n = 0
            for p in layer.blobs:
                if id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
            total += n
            shp = "; ".join("x".join(map(str, self.blob_shapes.get(t, ()))) or "scalar" for t in tn)
            rows.append((str(i), name, typ, f"{','.join(bn)} -> {','.join(tn)}", shp, f"{n:,}" if n else ""))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = [f"Net {self.name!r} ({self.phase}) from {self.source}"]
        for j, r in enumerate(rows):
            lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(f"inputs: {', '.join(f'{k} {list(v)}' for k, v in self.input_shapes.items()) or 'none'}")
        lines.append(f"outputs: {', '.join(self.outputs)}")
        lines.append(f"learnable parameters: {total:,}")
        return "\n".join(lines)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, phase={self.phase}, layers={len(self.layer_names)}"
