"""``torch.export`` programs of a :class:`~caffe_compat.net.Net`: export, save, load.

:func:`export_program` traces :class:`ExportWrapper`, which runs the layers
through :meth:`Net.run_layers <caffe_compat.net.Net.run_layers>` (the loop of
``Net.forward``) without ``Net.forward``'s input checks (it tests inputs for
NaN/Inf with a data-dependent ``if``).  Layers say themselves whether they can
be exported (:meth:`Layer.export_refusal <caffe_compat.layers.base.Layer.export_refusal>`:
data layers, MatWrite and SegAccuracy refuse, as does a DummyData with a random
filler); they are refused before tracing.  Any other layer that cannot be
traced (data-dependent Python control flow such as ``bool(tensor)`` or
``.item()``, e.g. the label checks of loss layers) makes a
:class:`~caffe_compat.errors.NotSupportedError` naming it.  With
``dynamic=True`` dimensions that a layer turns into Python ints
(``int(x.shape[2])``) are specialised to the example size by ``Dim.AUTO``
(logged).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Union

import torch

from .atomic import atomic_write
from .errors import CaffeCompatError, NotSupportedError, WeightsError

if TYPE_CHECKING:  # pragma: no cover
    from .net import Net

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


# The layer being traced. Not a module attribute: torch.export traces a copy of the module and
# restores module attributes afterwards, so only state outside the module survives a failure.
_TRACE_STATE = threading.local()


def _set_traced_layer(index: int) -> None:
    _TRACE_STATE.layer = index


class ExportWrapper(torch.nn.Module):
    """``forward(*inputs) -> tuple(outputs)`` of a net, for :func:`torch.export.export`.

    Inputs are positional in ``net.inputs`` order, outputs a tuple in
    ``net.outputs`` order.  It runs the layers with :meth:`Net.run_layers`
    (without ``Net.forward``'s input checks: they test the inputs for NaN/Inf,
    a data-dependent branch that cannot be traced) and records the layer being
    traced, so an export failure can name it.
    """

    def __init__(self, net: "Net"):
        super().__init__()
        self.net = net

    @property
    def current(self) -> Optional[int]:
        """Index of the layer being traced in this thread (None when no layer is running)."""
        return getattr(_TRACE_STATE, "layer", None)

    def forward(self, *inputs):
        net = self.net
        blobs = {}
        for name, x in zip(net.inputs, inputs):
            blobs[name] = x.to(net.dtype) if x.dtype != net.dtype else x
        net.run_layers(blobs, on_layer=_set_traced_layer)
        _TRACE_STATE.layer = None
        return tuple(blobs[k] for k in net.outputs)


@contextlib.contextmanager
def _quiet_torch_logs():
    """Keep torch's tracing chatter off the terminal: a failed export prints the partial graph to
    stderr and logs warnings, and the failure is reported as a NotSupportedError instead.  The
    captured text goes to this module's debug log (shown with ``-vv``); on success it is passed on."""
    names = ("torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export", "torch._dynamo")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    buf = io.StringIO()
    real_stderr = sys.stderr
    ok = False
    try:
        with contextlib.redirect_stderr(buf):
            yield
        ok = True
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        text = buf.getvalue()
        if text.strip():
            if ok:
                real_stderr.write(text)
            else:
                log.debug("torch.export output:\n%s", text)


@contextlib.contextmanager
def _flat_grad_mode():
    """``torch.no_grad()`` blocks entered while grad mode is already off do not touch grad mode."""
    cls = torch.no_grad
    enter, exit_ = cls.__enter__, cls.__exit__

    def flat_enter(self):
        self._flat = not torch.is_grad_enabled()
        if not self._flat:
            enter(self)

    def flat_exit(self, *exc):
        if not getattr(self, "_flat", False):
            exit_(self, *exc)

    cls.__enter__, cls.__exit__ = flat_enter, flat_exit
    try:
        yield
    finally:
        cls.__enter__, cls.__exit__ = enter, exit_


def _export_blockers(net: "Net") -> List[str]:
    """``"'name' (why)"`` of every layer that refuses to be exported."""
    out = []
    for name, layer in zip(net.layer_names, net.layers):
        if layer.feeds_net_inputs:
            continue
        why = layer.export_refusal()
        if why is not None:
            out.append(f"'{name}' ({why})")
    return out


def export_program(net: "Net", path: PathLike, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                   dynamic: bool = False):
    """Export ``net`` with :func:`torch.export.export` and save it (``.pt2``, atomic).

    The program takes the net inputs as positional tensors (``net.inputs``
    order, the net's dtype) and returns a tuple of the outputs (``net.outputs``
    order).  ``input_shapes`` overrides the prototxt's input shapes for the
    example inputs; ``dynamic=True`` marks batch, height and width of 4-D
    inputs as dynamic where the layers allow (``Dim.AUTO``: dimensions the code
    needs fixed are specialised to the example's size).  Only nets fed through
    net inputs (deploy files) export: data layers, file writers and metric
    layers raise :class:`NotSupportedError`, as does any layer that fails to
    trace (named in the message).  Returns the ``ExportedProgram``.
    """
    path = Path(path)
    if any(p.is_meta for p in net.parameters()):
        raise NotSupportedError(f"net '{net.name}': cannot export a net built on the meta device")
    blockers = _export_blockers(net)
    if blockers:
        raise NotSupportedError(
            f"net '{net.name}': cannot export layers {', '.join(blockers)}: data layers, file writers and "
            f"metric layers are not part of an exported program; export a deploy net whose inputs are "
            f"net inputs (Input layers / input: fields)")
    if not net.inputs:
        raise NotSupportedError(f"net '{net.name}': has no net inputs to export")
    if not net.outputs:
        raise NotSupportedError(f"net '{net.name}': has no outputs (every blob is consumed, e.g. by Silence); "
                                f"an exported program must return something")
    shapes = dict(net.input_shapes)
    for k, v in (input_shapes or {}).items():
        if k not in shapes:
            raise CaffeCompatError(f"net '{net.name}': unknown input {k!r}; its inputs are {net.inputs}")
        shapes[k] = tuple(int(d) for d in v)
    try:
        shapes = net.infer_shapes(**{k: shapes[k] for k in net.inputs}) if input_shapes else shapes
    except CaffeCompatError as e:
        raise type(e)(f"net '{net.name}': the given input shapes do not fit: {e}") from None
    device = net.device
    wrapper = ExportWrapper(net)
    _TRACE_STATE.layer = None

    def trace(example_shapes, dyn):
        gen = torch.Generator().manual_seed(0)
        example = tuple(torch.rand(example_shapes[k], generator=gen, dtype=net.dtype).to(device)
                        for k in net.inputs)
        try:
            # The layers' own `with torch.no_grad()` blocks are no-ops inside this no_grad trace, but
            # torch.export records each as a grad-mode region and then splits and recompiles the graph
            # around every one (replace_set_grad_with_hop_pass): most of the export time.  They are
            # skipped while tracing (_flat_grad_mode); the program is the same inference graph.
            with torch.no_grad(), _flat_grad_mode(), _quiet_torch_logs():
                return torch.export.export(wrapper, example, dynamic_shapes=dyn)
        except CaffeCompatError:
            raise
        except Exception as e:
            i, _TRACE_STATE.layer = wrapper.current, None
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if i is not None:
                raise NotSupportedError(
                    f"net '{net.name}': torch.export fails in layer '{net.layer_names[i]}' "
                    f"({net.layer_types[i]}): {type(e).__name__}: {first}") from e
            raise NotSupportedError(f"net '{net.name}': torch.export failed after tracing the layers: "
                                    f"{type(e).__name__}: {first}") from e

    if not dynamic:
        ep = trace(shapes, None)
    else:
        auto = torch.export.Dim.AUTO
        dyn = (tuple({0: auto, 2: auto, 3: auto} if len(shapes[k]) == 4 else {0: auto} if len(shapes[k]) else None
                     for k in net.inputs),)
        # torch.export specialises dimensions whose example size is 0 or 1: trace a batch of 2 ...
        bumped = {k: ((max(2, s[0]),) + tuple(s[1:]) if len(s) else s) for k, s in shapes.items()}
        try:
            ep = trace(bumped, dyn)
        except CaffeCompatError as e:  # a layer (e.g. DummyData xy) pins the batch: a clean shape error
            log.info("net '%s': batch %s does not trace (%s); keeping the prototxt's batch size",
                     net.name, {k: s[0] for k, s in bumped.items() if len(s)}, e)
            ep = None
        fixed = program_input_shapes(ep, net.inputs) if ep is not None else {}
        if ep is None or any(len(s) and isinstance(fixed[k][0], int) and s[0] != shapes[k][0]
                             for k, s in bumped.items()):
            # ... unless a layer fixes the batch anyway: then keep the prototxt's batch size
            ep = trace(shapes, dyn)
            fixed = program_input_shapes(ep, net.inputs)
        kept = [f"{k} {list(fixed[k])}" for k in net.inputs if any(
            isinstance(fixed[k][a], int) for a in ((0, 2, 3) if len(fixed[k]) == 4 else range(min(1, len(fixed[k])))))]
        if kept:
            log.warning("net '%s': some layers need fixed sizes; the program's input shapes are %s "
                        "(ints are fixed)", net.name, ", ".join(kept))
    try:
        atomic_write(path, lambda tmp: torch.export.save(ep, tmp), error=WeightsError, keep_suffix=True)
    except CaffeCompatError:
        raise
    except Exception as e:
        types = sorted(set(net.layer_types))
        raise NotSupportedError(f"net '{net.name}': the exported program cannot be saved "
                                f"({type(e).__name__}: {e}); layer types: {', '.join(types)}") from e
    log.info("exported net %r (inputs %s, outputs %s) to %s", net.name, net.inputs, net.outputs, path)
    return ep


def program_input_shapes(ep, names: Sequence[str]) -> Dict[str, list]:
    """``{input name: [dims]}`` of an ExportedProgram's user inputs (fixed dims as ints, dynamic as SymInts)."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    specs = [sp for sp in ep.graph_signature.input_specs if sp.kind.name == "USER_INPUT"]
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    out = {}
    for name, sp in zip(names, specs):
        val = nodes[sp.arg.name].meta.get("val") if sp.arg.name in nodes else None
        dims = list(val.shape) if val is not None else []
        out[name] = [int(d) if is_concrete_int(d) else d for d in dims]
    return out


def load_program(path: PathLike):
    """``torch.export.load`` without unsafe unpickling (:mod:`.safe_load`), errors naming the file."""
    from .safe_load import load_program_safely
    return load_program_safely(path)
