"""Native PyTorch checkpoints of a :class:`~caffe_compat.net.Net`, ``torch.export`` programs, and conversion.

Checkpoint format (``.pt``, written with :func:`torch.save`)
-------------------------------------------------------------
A checkpoint is one ``dict`` made only of ``str``/``int``/``float``/``bool``/
``None``/``list``/``dict`` and tensors, so ``torch.load(path, weights_only=True)``
reads it without unpickling any code::

    {
      "format": "caffe_compat.net",          # FORMAT
      "version": 1,                          # VERSION
      "prototxt": str,      # the whole net text, ${NAME} templates already substituted
      "template": str|None, # the text as given, before substitution (None: same as prototxt)
      "defines": {str: str},# the template values used
      "phase": "TEST"|"TRAIN", "level": int, "stages": [str],
      "dtype": "float32"|"float64",
      "net_name": str, "inputs": {blob: [dims]}, "outputs": [blob],
      "state_dict": {"<layer name>/<blob index>": tensor (CPU, contiguous)},
      "shared": {"<layer>/<i>": "<owner layer>/<j>"},  # blobs stored once, with their owner
      "param_names": {"<layer>/<i>": "<param { name }>"}, # informative: who shares under which name
      "caffe_compat_version": str,
    }

Keys follow Caffe: a layer's learnable blobs in Caffe order, under the layer
name; like ``CopyTrainedLayersFrom`` the *first* layer of a name owns the key.
A later layer reusing a name (rare, but legal in Caffe) that has blobs of its
own is stored as ``"<name>#<k>/<i>"`` (k-th reuse, k >= 1), so a checkpoint
restores every tensor of the net, unlike a caffemodel.  Blobs shared through
``param { name: ... }`` are stored once, under the layer that owns them (the
first to use the name), and listed in ``"shared"``.

Loading (:func:`load_checkpoint`) needs no other file: the net is rebuilt
from the stored text with the stored phase/level/stages/dtype and every
tensor is copied with exact checks (missing, extra and mis-shaped tensors are
:class:`~caffe_compat.errors.WeightsError`\\ s listing them; loading in the
other phase tolerates tensors of layers that phase drops).  Writing is atomic
(temporary file + :func:`os.replace`).

Conversion (:func:`convert`) moves weights between ``.caffemodel``, Caffe
HDF5 and checkpoints.  Going back to a caffemodel keeps Caffe's own limits: a
repeated layer name is written twice, and Caffe (like
:mod:`caffe_compat.weights`) gives the file's blobs to the first layer of a
name only.

``torch.export`` (:func:`export_program`) traces :class:`ExportWrapper`, which
runs the layers in net order like ``Net.forward`` minus its input checks
(``Net.forward`` tests inputs for NaN/Inf with a data-dependent ``if``).  A
layer that cannot be traced (data-dependent Python control flow such as
``bool(tensor)`` or ``.item()``, e.g. the label checks of loss layers) makes
a :class:`~caffe_compat.errors.NotSupportedError` naming it; data layers,
MatWrite and SegAccuracy are refused before tracing.  With ``dynamic=True``
dimensions that a layer turns into Python ints (``int(x.shape[2])``) are
specialised to the example size by ``Dim.AUTO`` (logged).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .atomic import atomic_write as _atomic_write
from .errors import CaffeCompatError, NotSupportedError, WeightsError

if TYPE_CHECKING:  # pragma: no cover
    from .net import Net

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

FORMAT = "caffe_compat.net"
VERSION = 1

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_TEMPLATE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_ZIP_MAGIC = b"PK\x03\x04"


# ----------------------------------------------------------------------------- helpers
def _dtype_name(dtype: torch.dtype) -> str:
    for k, v in _DTYPES.items():
        if v == dtype:
            return k
    raise WeightsError(f"cannot store a net of dtype {dtype} (float32 or float64 only)")


def atomic_write(path: PathLike, writer, keep_suffix: bool = False) -> None:
    """:func:`caffe_compat.atomic.atomic_write` raising :class:`WeightsError`."""
    _atomic_write(path, writer, error=WeightsError, keep_suffix=keep_suffix)


def _layer_keys(net: "Net") -> List[str]:
    """Per layer, the name its blobs are stored under (``name``, or ``name#k`` for the k-th reuse)."""
    seen: Dict[str, int] = {}
    out: List[str] = []
    for name in net.layer_names:
        k = seen.get(name, 0)
        seen[name] = k + 1
        out.append(name if k == 0 else f"{name}#{k}")
    taken = set(net.layer_names)
    for li, lk in enumerate(out):
        if lk != net.layer_names[li] and lk in taken:
            raise WeightsError(f"net '{net.name}': cannot name the blobs of the repeated layer "
                               f"'{net.layer_names[li]}': another layer is already called '{lk}'")
    return out


def blob_keys(net: "Net") -> Tuple[Dict[Tuple[int, int], str], Dict[str, str]]:
    """Checkpoint keys of ``net``'s blobs.

    Returns ``(keys, shared)``: ``keys[(layer index, blob index)]`` is the key
    of every blob the net owns (stored in ``state_dict``); ``shared`` maps the
    key of each blob that shares another layer's parameter to the owner's key.
    """
    layer_key = _layer_keys(net)
    keys: Dict[Tuple[int, int], str] = {}
    shared: Dict[str, str] = {}
    for li, layer in enumerate(net.layers):
        for bi in range(len(layer.blobs)):
            key = f"{layer_key[li]}/{bi}"
            owner = net.param_specs[li][bi]["owner"] if bi < len(net.param_specs[li]) else None
            if owner is None:
                keys[(li, bi)] = key
            else:
                shared[key] = f"{layer_key[owner[0]]}/{owner[1]}"
    return keys, shared


def _param_names(net: "Net") -> Dict[str, str]:
    """``{key: ParamSpec name}`` of every blob with a ``param { name: ... }`` (owners and sharers)."""
    layer_key = _layer_keys(net)
    out = {}
    for li, specs in enumerate(net.param_specs):
        for bi, spec in enumerate(specs):
            if spec.get("name"):
                out[f"{layer_key[li]}/{bi}"] = str(spec["name"])
    return out


def net_text(net: "Net") -> Tuple[str, Optional[str]]:
    """(substituted text, template text or None) of ``net``."""
    from .prototxt import substitute_templates

    text = getattr(net, "text", None)
    if text is None:
        from google.protobuf import text_format
        # Built from a NetParameter: its (already phase-filtered) message is the best text there is.
        return text_format.MessageToString(net.net_param), None
    sub = substitute_templates(text, getattr(net, "defines", None) or {}, getattr(net, "source", "<string>"))
    return sub, (text if sub != text else None)


# ----------------------------------------------------------------------------- saving
def checkpoint_dict(net: "Net") -> dict:
    """The checkpoint of ``net`` as a dict (see the module docstring); tensors are copied to the CPU."""
    from . import __version__

    if any(p.is_meta for p in net.parameters()):
        raise WeightsError(f"net '{net.name}': a net built on the meta device has no weights to save")
    text, template = net_text(net)
    keys, shared = blob_keys(net)
    state = {}
    for (li, bi), key in keys.items():
        state[key] = net.layers[li].blobs[bi].detach().to("cpu").clone().contiguous()
    return {
        "format": FORMAT,
        "version": VERSION,
        "prototxt": text,
        "template": template,
        "defines": {str(k): str(v) for k, v in (getattr(net, "defines", None) or {}).items()},
        "phase": net.phase,
        "level": int(net.level),
        "stages": [str(s) for s in net.stages],
        "dtype": _dtype_name(net.dtype),
        "net_name": net.name,
        "inputs": {k: [int(d) for d in v] for k, v in net.input_shapes.items()},
        "outputs": list(net.outputs),
        "state_dict": state,
        "shared": shared,
        "param_names": _param_names(net),
        "caffe_compat_version": __version__,
    }


def save_checkpoint(net: "Net", path: PathLike) -> None:
    """Write ``net`` (text, state, weights) as a self-contained checkpoint; atomic."""
    path = Path(path)
    ckpt = checkpoint_dict(net)
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
    log.info("wrote checkpoint of net %r (%d tensors) to %s", net.name, len(ckpt["state_dict"]), path)


# ----------------------------------------------------------------------------- loading
def is_checkpoint_file(path: PathLike) -> bool:
    """True if ``path`` looks like a torch.save file (zip container); says nothing of its content."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == _ZIP_MAGIC
    except OSError:
        return False


def _describe_other_format(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return ""
    if head.startswith(b"\x89HDF"):
        return " (it is an HDF5 file: a Caffe .caffemodel.h5? load it with its prototxt)"
    if head[:1] in (b"\x0a", b"\x12") or head[:2] == b"\xa2\x06":
        return " (it looks like a binary caffemodel: load it with its prototxt)"
    if head.lstrip()[:5] in (b"name:", b"layer", b"input") or head.lstrip().startswith(b"#"):
        return " (it looks like a prototxt text file)"
    return ""


def read_checkpoint(path: PathLike) -> dict:
    """Read and validate a checkpoint file (``weights_only`` loading; tensors on the CPU).

    Raises :class:`WeightsError` naming the file if it is missing, corrupt, not
    a caffe_compat checkpoint, or of another format/version.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: no such checkpoint file")
    if p.stat().st_size == 0:
        raise WeightsError(f"{p}: empty file, not a checkpoint")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in msg:  # never relay torch's advice to load unsafely
            msg = "it holds objects other than tensors and plain containers (refused: weights_only)"
        raise WeightsError(f"{p}: not a readable caffe_compat checkpoint{_describe_other_format(p)}: "
                           f"{type(e).__name__}: {msg}") from None
    validate_checkpoint(obj, str(p))
    return obj


def validate_checkpoint(obj, where: str = "<checkpoint>") -> None:
    """Check the structure of a loaded checkpoint dict (types of every field)."""
    if not isinstance(obj, dict) or "format" not in obj:
        what = type(obj).__name__
        hint = (" (a plain state_dict? caffe_compat checkpoints are written by save_checkpoint / "
                "`caffe-compat convert ... -o X.pt`)") if isinstance(obj, dict) else ""
        raise WeightsError(f"{where}: not a caffe_compat checkpoint: holds a {what} without a 'format' field{hint}")
    if obj["format"] != FORMAT:
        raise WeightsError(f"{where}: checkpoint format {obj['format']!r}, expected {FORMAT!r}")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise WeightsError(f"{where}: invalid checkpoint version {version!r}")
    if version > VERSION:
        raise WeightsError(f"{where}: checkpoint version {version} is newer than this caffe_compat reads "
                           f"(version {VERSION}); upgrade caffe_compat")
    want = {"prototxt": str, "phase": str, "level": int, "stages": list, "dtype": str,
            "state_dict": dict, "shared": dict}
    for key, typ in want.items():
        if key not in obj:
            raise WeightsError(f"{where}: checkpoint has no '{key}' field")
        if not isinstance(obj[key], typ):
            raise WeightsError(f"{where}: checkpoint field '{key}' must be a {typ.__name__}, "
                               f"got {type(obj[key]).__name__}")
    if obj["dtype"] not in _DTYPES:
        raise WeightsError(f"{where}: unsupported dtype {obj['dtype']!r} (float32 or float64)")
    bad = [k for k, v in obj["state_dict"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{where}: state_dict entries that are not tensors: {bad[:5]}")
    bad = [k for k, v in obj["shared"].items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise WeightsError(f"{where}: invalid 'shared' entries: {bad[:5]}")


def load_state_into(net: "Net", ckpt: dict, where: str = "<checkpoint>", strict: bool = True,
                    allow_unexpected: bool = False) -> dict:
    """Copy a (validated) checkpoint's tensors into ``net`` by key; see the module docstring.

    Blobs that ``net`` shares are written through their owner; a blob the
    checkpoint stored as shared is found through the checkpoint's ``shared``
    map (so a checkpoint also loads into a net wired a little differently).

    Returns ``{"loaded": [...], "missing": [...], "unexpected": [...]}``;
    with ``strict`` (default) any missing, unexpected or mis-shaped tensor is a
    :class:`WeightsError` listing all of them, and nothing is copied
    (``allow_unexpected``: strict about missing tensors only).
    """
    state: Dict[str, torch.Tensor] = ckpt["state_dict"]
    ck_shared: Dict[str, str] = ckpt.get("shared", {})
    keys, _ = blob_keys(net)
    missing, mismatched, plan = [], [], []
    used = set()
    for (li, bi), key in keys.items():
        src_key = key
        hops = 0
        while src_key not in state and src_key in ck_shared and hops < 16:
            src_key, hops = ck_shared[src_key], hops + 1
        if src_key not in state:
            missing.append(key)
            continue
        used.add(src_key)
        t = net.layers[li].blobs[bi]
        src = state[src_key]
        if tuple(src.shape) != tuple(t.shape):
            mismatched.append(f"{key}: checkpoint shape {list(src.shape)} vs net shape {list(t.shape)}")
            continue
        if not src.is_floating_point():
            mismatched.append(f"{key}: checkpoint dtype {src.dtype} is not floating point")
            continue
        plan.append((t, src))
    unexpected = sorted(k for k in state if k not in used)
    problems = []
    if missing:
        problems.append(f"missing in checkpoint: {', '.join(missing)}")
    if unexpected:
        problems.append(f"in checkpoint but not in the net: {', '.join(unexpected)}")
    if mismatched:
        problems.append("mismatched: " + "; ".join(mismatched))
    if mismatched or (strict and (missing or (unexpected and not allow_unexpected))):
        raise WeightsError(f"{where}: checkpoint does not fit net '{net.name}':\n" + "\n".join(problems))
    with torch.no_grad():
        for t, src in plan:
            if t.device.type != "meta":
                t.copy_(src.to(device=t.device, dtype=t.dtype))
    if problems:
        log.info("%s: %s", where, "; ".join(problems))
    return {"loaded": sorted(used), "missing": missing, "unexpected": unexpected}


def net_from_checkpoint_dict(ckpt: dict, where: str = "<checkpoint>", device: Union[str, torch.device] = "cpu",
                             dtype: Optional[torch.dtype] = None, phase: Optional[str] = None) -> "Net":
    """Rebuild the net of a validated checkpoint dict and load its tensors (strict)."""
    from .net import Net

    text = ckpt["prototxt"]
    defines = None
    template = ckpt.get("template")
    if _TEMPLATE.search(text) and isinstance(template, str):
        # A define's value itself contained ${...}: re-substitute from the template instead.
        text, defines = template, dict(ckpt.get("defines") or {})
    try:
        net = Net.from_string(text, phase=phase or ckpt["phase"], defines=defines, level=ckpt["level"],
                              stages=list(ckpt["stages"]), dtype=dtype or _DTYPES[ckpt["dtype"]],
                              device=device, source=f"{where}:prototxt")
    except CaffeCompatError as e:
        raise type(e)(f"{where}: the stored net does not build: {e}") from None
    net.defines = dict(ckpt.get("defines") or {})
    # in another phase than the stored one, layers of the stored phase may be absent: not an error
    load_state_into(net, ckpt, where, strict=True, allow_unexpected=net.phase != ckpt["phase"])
    return net


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu",
                    dtype: Optional[torch.dtype] = None, phase: Optional[str] = None) -> "Net":
    """Rebuild a :class:`Net` from a checkpoint alone (no prototxt or caffemodel needed).

    Args:
        path: the ``.pt`` written by :func:`save_checkpoint`.
        device: where the parameters go.
        dtype: override the stored dtype (e.g. ``torch.float64``).
        phase: override the stored phase (the full text is stored, so the
            other phase's layers can be selected).
    """
    ckpt = read_checkpoint(path)
    return net_from_checkpoint_dict(ckpt, str(path), device=device, dtype=dtype, phase=phase)


def load_checkpoint_into(net: "Net", path: PathLike, strict: bool = True) -> dict:
    """Copy a checkpoint's tensors into an existing ``net`` (built from any prototxt) by key."""
    ckpt = read_checkpoint(path)
    return load_state_into(net, ckpt, str(path), strict=strict)


# ----------------------------------------------------------------------------- conversion
_EXT_TO = {".pt": "pt", ".pth": "pt", ".ckpt": "pt", ".caffemodel": "caffemodel",
           ".h5": "h5", ".hdf5": "h5"}
FORMATS = ("pt", "caffemodel", "h5")


def format_for(path: PathLike) -> str:
    """Output format from the file name: ``.pt``/``.pth``/``.ckpt`` -> ``pt``, ``.caffemodel``, ``.h5``/``.hdf5``."""
    ext = Path(path).suffix.lower()
    if ext not in _EXT_TO:
        raise CaffeCompatError(f"{path}: cannot tell the output format from the extension {ext or '(none)'!r}; "
                               f"name it .pt, .caffemodel or .h5, or give to=/--to ({', '.join(FORMATS)})")
    return _EXT_TO[ext]


def write_weights(net: "Net", out: PathLike, to: Optional[str] = None) -> str:
    """Write ``net`` as ``to`` (``pt`` checkpoint, binary ``caffemodel`` or Caffe ``h5``), whatever the extension."""
    from . import weights as W

    out = Path(out)
    to = to or format_for(out)
    if to not in FORMATS:
        raise CaffeCompatError(f"unknown output format {to!r}; choose one of {', '.join(FORMATS)}")
    if to == "pt":
        save_checkpoint(net, out)
        return to
    if any(p.is_meta for p in net.parameters()):
        raise WeightsError(f"{out}: a net built on the meta device has no weights to save")
    if to == "caffemodel":
        data = W.caffemodel_bytes(net)
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    else:
        atomic_write(out, lambda tmp: W._write_hdf5(net, tmp))
    log.info("wrote %s weights of net %r to %s", to, net.name, out)
    return to


def _same_file(a: PathLike, b: PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def convert(prototxt: Optional[PathLike], weights: PathLike, out: PathLike, to: Optional[str] = None,
            defines: Optional[Mapping[str, object]] = None, phase: Optional[str] = None,
            strict: bool = True) -> "Net":
    """Convert weights between a caffemodel / Caffe HDF5 and a self-contained checkpoint.

    * ``weights`` a ``.caffemodel``/``.h5``: ``prototxt`` is required; the net is
      built from it (``defines``, ``phase``) and the weights loaded.
    * ``weights`` a checkpoint: with ``prototxt`` ``None`` (or ``"-"``) the
      checkpoint's own net is used; with a prototxt, that net is built and the
      checkpoint's tensors are copied into it by layer name (to move weights to
      a deploy net, say).
    * ``phase``: of the net built from ``prototxt`` (default TEST), or to
      override a checkpoint's stored phase.
    * ``to``: ``pt``, ``caffemodel`` or ``h5``; by default from ``out``'s extension.
    * ``strict=False`` keeps filler values for layers the weights lack and
      ignores extra layers (reported in the log) instead of failing.

    The output is written atomically and never over an input file.
    Returns the net that was written.
    """
    to = to or format_for(out)
    if to not in FORMATS:
        raise CaffeCompatError(f"unknown output format {to!r}; choose one of {', '.join(FORMATS)}")
    if prototxt is not None and str(prototxt) == "-":
        prototxt = None
    if not Path(weights).is_file():
        raise WeightsError(f"{weights}: no such weights file")
    for src in (weights, prototxt):
        if src is not None and _same_file(src, out):
            raise CaffeCompatError(f"{out}: the output would overwrite the input {src}")
    if prototxt is None:
        if not is_checkpoint_file(weights):
            raise CaffeCompatError(f"{weights}: a caffemodel/HDF5 file holds no net definition; "
                                   f"give the net prototxt too")
        if defines:
            log.warning("defines are ignored: the checkpoint stores its net text already substituted")
        net = load_checkpoint(weights, phase=phase)
    else:
        net = open_net(prototxt, weights, phase=phase, defines=defines, strict=strict)
    write_weights(net, out, to)
    return net


# ----------------------------------------------------------------------------- torch.export
#: layer types refused before tracing: they read or write files (data layers, MatWrite), or keep
#: state across forwards (SegAccuracy's confusion matrix).
#: Any other layer that cannot be traced is named from the tracing error.
NON_EXPORTABLE_TYPES = frozenset({
    "Data", "ImageData", "ImageSegData", "TwoImageData", "WindowData", "HDF5Data", "HDF5Output",
    "MemoryData", "Python", "MatWrite", "SegAccuracy",
})
#: DummyData fillers whose values do not change between forwards: such a DummyData (the res
#: deploy net's ``xy`` grid) becomes a constant of the program; random fillers would be frozen.
_DETERMINISTIC_FILLERS = ("constant", "xy")


# The layer being traced. Not a module attribute: torch.export traces a copy of the module and
# restores module attributes afterwards, so only state outside the module survives a failure.
_TRACE_STATE = threading.local()


class ExportWrapper(torch.nn.Module):
    """``forward(*inputs) -> tuple(outputs)`` of a net, for :func:`torch.export.export`.

    Inputs are positional in ``net.inputs`` order, outputs a tuple in
    ``net.outputs`` order.  It runs the layers itself (the loop of
    :meth:`Net.forward` without its input checks: ``Net.forward`` tests the
    inputs for NaN/Inf, a data-dependent branch that cannot be traced) and
    records the layer being traced, so an export failure can name it.
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
        skip = getattr(net, "_input_layers", set())
        for i, (layer, bnames, tnames) in enumerate(zip(net.layers, net.bottom_names, net.top_names)):
            if i in skip:
                continue
            _TRACE_STATE.layer = i
            tops = layer(*[blobs[b] for b in bnames])
            if isinstance(tops, torch.Tensor):
                tops = (tops,)
            for t, v in zip(tnames, tops):
                blobs[t] = v
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
    out = []
    skip = getattr(net, "_input_layers", set())
    for i, (name, typ, bn) in enumerate(zip(net.layer_names, net.layer_types, net.bottom_names)):
        if i in skip:
            continue
        if typ == "DummyData":
            fillers = list(net.layers[i].param.dummy_data_param.data_filler)
            bad = sorted({f.type for f in fillers if f.type not in _DETERMINISTIC_FILLERS})
            if bad:
                out.append(f"'{name}' ({typ} with random filler {', '.join(bad)})")
        elif typ in NON_EXPORTABLE_TYPES or not bn:
            out.append(f"'{name}' ({typ})")
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
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
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
        if ep is None or any(len(s) and isinstance(fixed[k][0], int) and s[0] != shapes[k][0] for k, s in bumped.items()):
            # ... unless a layer fixes the batch anyway: then keep the prototxt's batch size
            ep = trace(shapes, dyn)
            fixed = program_input_shapes(ep, net.inputs)
        kept = [f"{k} {list(fixed[k])}" for k in net.inputs if any(
            isinstance(fixed[k][a], int) for a in ((0, 2, 3) if len(fixed[k]) == 4 else range(min(1, len(fixed[k])))))]
        if kept:
            log.warning("net '%s': some layers need fixed sizes; the program's input shapes are %s "
                        "(ints are fixed)", net.name, ", ".join(kept))
    try:
        atomic_write(path, lambda tmp: torch.export.save(ep, tmp), keep_suffix=True)
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
    """``torch.export.load`` with errors naming the file; returns the ``ExportedProgram``."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: no such exported program")
    try:
        return torch.export.load(str(p))
    except Exception as e:
        raise WeightsError(f"{p}: not a readable torch.export program: {type(e).__name__}: {e}") from None


# ----------------------------------------------------------------------------- opening nets (CLI)
def open_net(net_path: PathLike, weights: Optional[PathLike] = None, *, phase: Optional[str] = None,
             defines: Optional[Mapping[str, object]] = None, device: Union[str, torch.device] = "cpu",
             dtype: Optional[torch.dtype] = None, strict: bool = True) -> "Net":
    """A net from what a command line names.

    * ``net_path`` a checkpoint and no ``weights``: the checkpoint's own net
      (``phase`` overrides the stored one; ``defines`` are not needed).
    * ``net_path`` a prototxt and ``weights`` a checkpoint, caffemodel or HDF5:
      the prototxt's net with those weights (checkpoint tensors by layer name).
    * ``net_path`` a prototxt alone: filler values (a warning is logged).
    """
    from .net import Net

    if weights is None and is_checkpoint_file(net_path):
        return load_checkpoint(net_path, device=device, dtype=dtype, phase=phase)
    if weights is not None and is_checkpoint_file(net_path):
        raise CaffeCompatError(f"{net_path} is a checkpoint, which holds its own weights; "
                               f"give either a checkpoint alone or a prototxt and its weights")
    net = Net(net_path, phase=phase or "TEST", defines=defines, device=device, dtype=dtype or torch.float32)
    if weights is None:
        log.warning("%s: no weights given: the net runs with its filler values", net_path)
    elif is_checkpoint_file(weights):
        load_checkpoint_into(net, weights, strict=strict)
    else:
        net.load_weights(weights, strict=strict)
    return net
