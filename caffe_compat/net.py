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
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from . import prototxt as _pt
from . import schema
from .errors import CaffeCompatError, DataError, LayerConfigError, NetError, NotSupportedError, ShapeError
from .layers import BuildContext, get_layer_class, shape_only
from .layers.base import check_shape

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
_PHASES = ("TRAIN", "TEST")


def _meta_call(layer: nn.Module, bottoms: Sequence[torch.Tensor]):
    """Run ``layer`` on meta tensors with meta copies of its parameters and buffers."""
    state = {}
    for name, t in layer.named_parameters(remove_duplicate=False):
        state[name] = t if t.is_meta else torch.empty_like(t, device="meta")
    for name, t in layer.named_buffers(remove_duplicate=False):
        state[name] = t if t.is_meta else torch.empty_like(t, device="meta")
    with shape_only():
        return torch.func.functional_call(layer, state, tuple(bottoms))


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
                 net_param=None, source: Optional[str] = None):
        super().__init__()
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
                                 source=self.source)
        self._build()
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
        available = list(shapes)            # Caffe's available_blobs (the outputs at the end)
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
            ctx = dataclasses.replace(self._ctx, shared_blobs=shared,
                                      **({"phase": phase_name[lp.phase]} if lp.HasField("phase") else {}))
            for b in lp.bottom:
                if b not in shapes:
                    raise NetError(f"{where}: bottom '{b}' is not produced by any earlier layer "
                                   f"(known blobs: {', '.join(shapes) or 'none'})")
            bottom_shapes = [shapes[b] for b in lp.bottom]
            try:
                layer = cls(lp, bottom_shapes, ctx)
            except CaffeCompatError as e:
                raise type(e)(f"{src}: {e}") from None
            except (ValueError, TypeError, IndexError, RuntimeError, ArithmeticError) as e:
                raise LayerConfigError(f"{where}: {type(e).__name__}: {e}") from e
            idx = len(self.layers)
            feeds = getattr(layer, "feeds_net_inputs", False)
            tops = list(lp.top)
            if feeds:
                top_shapes = [check_shape(s, f"{where}: top '{t}'") for t, s in
                              zip(tops, layer.input_shapes_for(len(tops)))]
                for t, s in zip(tops, top_shapes):
                    if t in self.input_shapes:
                        raise NetError(f"{where}: duplicate net input '{t}'")
                    self.input_shapes[t] = s
            else:
                try:
                    with torch.no_grad():
                        outs = _meta_call(layer, [torch.empty(s, device="meta", dtype=self.dtype)
                                                  for s in bottom_shapes])
                except CaffeCompatError as e:
                    raise type(e)(f"{src}: {e}") from None
                except (RuntimeError, ValueError, IndexError, TypeError, ArithmeticError) as e:
                    raise ShapeError(f"{where}: cannot compute its output shapes from bottoms "
                                     f"{[list(s) for s in bottom_shapes]}: {e}") from e
                outs = tuple(outs)
                if len(outs) < len(tops) or (len(outs) > len(tops) and layer.auto_tops is None):
                    raise NetError(f"{where}: lists {len(tops)} tops but produces {len(outs)}")
                while len(tops) < len(outs):   # Caffe's AutoTopBlobs (all named "(automatic)" there)
                    auto_count += 1
                    tops.append("(automatic)" if auto_count == 1 else f"(automatic)#{auto_count}")
                    auto_names.add(tops[-1])
                top_shapes = [check_shape(o.shape, f"{where}: top '{t}'") for t, o in zip(tops, outs)]
            for i, t in enumerate(tops):
                in_place = i < len(lp.bottom) and lp.bottom[i] == t
                if t in shapes and not in_place:
                    raise NetError(f"{where}: top '{t}' is produced by multiple sources (only an in-place "
                                   f"layer, top {i} == bottom {i}, may write an existing blob)")
            for b in lp.bottom:
                if b in available:
                    available.remove(b)
            for t, s in zip(tops, top_shapes):
                shapes[t] = s
                if t in available:
                    available.remove(t)
                if t not in auto_names:  # Caffe keeps automatic tops out of the net outputs
                    available.append(t)
            self._setup_params(layer, lp, idx, owners)
            self._setup_loss(layer, lp, tops)
            self.layers.append(layer)
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
        self._input_layers = {i for i, l in enumerate(self.layers) if getattr(l, "feeds_net_inputs", False)}
        # Layers that care which of their tops are net outputs (the fork zeroes element 0 of
        # every net output before each forward, which sticks for never-refilled tops).
        for layer, tnames in zip(self.layers, self.top_names):
            hook = getattr(layer, "set_net_outputs", None)
            if hook is not None:
                hook([i for i, t in enumerate(tnames) if t in self.outputs])
        log.debug("built net %r: %d layers, %d blobs", self.name, len(self.layers), len(shapes))

    def _setup_params(self, layer, lp, idx: int, owners) -> None:
        where = f"{self.source}: layer '{lp.name}' ({lp.type})"
        n_blobs = len(layer.blobs)
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
                mine = layer.blobs[i]
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
            layer.blobs[i].requires_grad_(rec["lr_mult"] != 0 or self.force_backward)
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

    def _device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def _prepare_input(self, name: str, value, device: torch.device) -> torch.Tensor:
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise DataError(f"{self.source}: input '{name}' must be a tensor or numpy array, got {type(value).__name__}")
        want = self.input_shapes[name]
        if value.dim() != len(want):
            raise ShapeError(f"{self.source}: input '{name}' has shape {list(value.shape)}, "
                             f"expected {len(want)} axes like {list(want)}")
        if len(want) >= 2 and value.shape[1] != want[1]:
            raise ShapeError(f"{self.source}: input '{name}' has {value.shape[1]} channels, "
                             f"the net was built for {want[1]} (shape {list(want)})")
        check_shape(value.shape, f"{self.source}: input '{name}'")
        if (value.device.type != "meta" and not torch.compiler.is_compiling()
                and not bool(torch.isfinite(value).all())):
            raise DataError(f"{self.source}: input '{name}' contains NaN or Inf")
        return value.to(device=device, dtype=self.dtype)

    def forward(self, **inputs) -> "OrderedDict[str, torch.Tensor]":
        """Run the net: ``net(data=x)`` -> ``{output blob: tensor}``.

        Every net input must be given (tensor or numpy array; moved to the net's
        device and dtype). Other spatial sizes than the prototxt's work wherever
        the layers allow. After the call, :attr:`blobs` holds every blob and
        :attr:`loss` the weighted sum of the loss tops (``None`` without one).
        """
        unknown = [k for k in inputs if k not in self.input_shapes]
        if unknown:
            raise NetError(f"{self.source}: unknown input(s) {unknown}; the net's inputs are {self.inputs}")
        missing = [k for k in self.inputs if k not in inputs]
        if missing:
            raise NetError(f"{self.source}: missing input(s) {missing}")
        device = self._device()
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
        for i, (layer, bnames, tnames) in enumerate(zip(self.layers, self.bottom_names, self.top_names)):
            if i in self._input_layers:
                continue
            tops = layer(*[blobs[b] for b in bnames])
            if isinstance(tops, torch.Tensor):
                tops = (tops,)
            if len(tops) != len(tnames):
                raise NetError(f"{self.source}: layer '{self.layer_names[i]}' returned {len(tops)} tops, "
                               f"expected {len(tnames)}")
            for t, v in zip(tnames, tops):
                if not bnames and v.device != device:
                    v = v.to(device)
                blobs[t] = v
            if self.free_blobs:
                for b in self._release_plan().get(i, ()):
                    blobs.pop(b, None)
        self.blobs = blobs
        self._loss_tops = OrderedDict((t, blobs[t]) for t in self.loss_weights)
        self.loss = None
        for t, w in self.loss_weights.items():
            term = w * blobs[t].sum()
            self.loss = term if self.loss is None else self.loss + term
        return OrderedDict((k, blobs[k]) for k in self.outputs)

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
            for i, (bn, tn) in enumerate(zip(self.bottom_names, self.top_names)):
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
        with torch.no_grad():
            for i, (layer, bnames, tnames) in enumerate(zip(self.layers, self.bottom_names, self.top_names)):
                if i in self._input_layers:
                    continue
                tops = _meta_call(layer, [blobs[b] for b in bnames])
                for t, v in zip(tnames, tops):
                    blobs[t] = v
                    shapes[t] = check_shape(v.shape, f"{self.source}: layer '{self.layer_names[i]}' top '{t}'")
        return shapes

    # ------------------------------------------------------------------ weights
    def load_weights(self, path: PathLike, strict: bool = True):
        """Copy weights by layer name from a ``.caffemodel``, a Caffe ``.h5`` or a native checkpoint.

        See :mod:`.weights` (Caffe formats) and :mod:`.checkpoint` (``.pt``).
        """
        from .checkpoint import is_checkpoint_file, load_checkpoint_into
        from .weights import load_into_net
        if is_checkpoint_file(path):
            return load_checkpoint_into(self, path, strict=strict)
        return load_into_net(self, path, strict=strict)

    @classmethod
    def from_checkpoint(cls, path: PathLike, **kwargs) -> "Net":
        """Rebuild a net (architecture and weights) from a native checkpoint, without the original files."""
        from .checkpoint import load_checkpoint
        return load_checkpoint(path, **kwargs)

    def save_checkpoint(self, path: PathLike) -> None:
        """Write a native PyTorch checkpoint (``torch.load(path, weights_only=True)`` reads it)."""
        from .checkpoint import save_checkpoint
        save_checkpoint(self, path)

    def save(self, path: PathLike) -> None:
        """Write the weights as a binary ``.caffemodel``, or Caffe HDF5 if ``path`` ends in ``.h5``."""
        from .weights import save_net
        save_net(self, path)

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
