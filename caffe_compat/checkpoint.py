"""The native PyTorch checkpoint format of a :class:`~caffe_compat.net.Net`.

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

Loading (:meth:`Net.from_checkpoint <caffe_compat.net.Net.from_checkpoint>`)
needs no other file: the net is rebuilt from the stored text (:func:`net_spec`)
with the stored phase/level/stages/dtype and every tensor is copied with exact
checks by :func:`load_state_into` (missing, extra and mis-shaped tensors are
:class:`~caffe_compat.errors.WeightsError`\\ s listing them; loading in the
other phase tolerates tensors of layers that phase drops).  Writing is atomic
(temporary file + :func:`os.replace`).

This module reads nets only through their public attributes and never imports
:mod:`caffe_compat.net` (which imports it).  Conversion between formats is in
:mod:`caffe_compat.conversion`, ``torch.export`` programs in
:mod:`caffe_compat.export`.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple, Union

import torch

from .atomic import atomic_write
from .errors import WeightsError
from .weights import LoadReport

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


# ----------------------------------------------------------------------------- saving
def checkpoint_dict(net: "Net") -> dict:
    """The checkpoint of ``net`` as a dict (see the module docstring); tensors are copied to the CPU."""
    from . import __version__

    if any(p.is_meta for p in net.parameters()):
        raise WeightsError(f"net '{net.name}': a net built on the meta device has no weights to save")
    text, template = net.net_text()
    keys, shared = blob_keys(net)
    state = {}
    for (li, bi), key in keys.items():
        state[key] = net.layers[li].blobs[bi].detach().to("cpu").clone().contiguous()
    return {
        "format": FORMAT,
        "version": VERSION,
        "prototxt": text,
        "template": template,
        "defines": {str(k): str(v) for k, v in (net.defines or {}).items()},
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
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp), error=WeightsError)
    log.info("wrote checkpoint of net %r (%d tensors) to %s", net.name, len(ckpt["state_dict"]), path)


# ----------------------------------------------------------------------------- loading
def is_checkpoint_file(path: PathLike) -> bool:
    """True if ``path`` looks like a torch.save file (zip container); says nothing of its content."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == _ZIP_MAGIC
    except (OSError, ValueError):
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
    try:
        if not p.is_file():
            raise WeightsError(f"{p}: no such checkpoint file")
        size = p.stat().st_size
    except (OSError, ValueError) as e:  # a NUL byte, an over-long name
        raise WeightsError(f"{str(path)!r}: cannot read: {e}") from None
    if size == 0:
        raise WeightsError(f"{p}: empty file, not a checkpoint")
    from . import memory as _mem
    _mem.check_fits(2 * size, f"{p}: reading the checkpoint ({size:,} bytes)", _mem.resolve_budget())
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
    if isinstance(obj["level"], bool) or not all(isinstance(s, str) for s in obj["stages"]):
        raise WeightsError(f"{where}: checkpoint fields 'level' (an int) / 'stages' (strings) are invalid")
    optional = {"template": (str, type(None)), "defines": dict, "param_names": dict, "inputs": dict,
                "outputs": list, "net_name": str}
    for key, typ in optional.items():
        if key in obj and not isinstance(obj[key], typ):
            raise WeightsError(f"{where}: checkpoint field '{key}' has the wrong type {type(obj[key]).__name__}")
    bad = [k for k, v in (obj.get("defines") or {}).items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise WeightsError(f"{where}: checkpoint field 'defines' must map names to strings: {bad[:5]}")
    bad = [k for k, v in obj["state_dict"].items()
           if v.layout != torch.strided or v.is_quantized or v.is_meta]
    if bad:
        raise WeightsError(f"{where}: state_dict tensors that are not dense tensors (sparse, quantized, meta): "
                           f"{bad[:5]}")


def load_state_into(net: "Net", ckpt: dict, where: str = "<checkpoint>", strict: bool = True,
                    allow_unexpected: bool = False) -> LoadReport:
    """Copy a (validated) checkpoint's tensors into ``net`` by key; see the module docstring.

    Blobs that ``net`` shares are written through their owner; a blob the
    checkpoint stored as shared is found through the checkpoint's ``shared``
    map (so a checkpoint also loads into a net wired a little differently).

    Returns a :class:`~caffe_compat.weights.LoadReport` whose entries are
    checkpoint keys (``loaded``: the keys read; ``missing``: the net's keys the
    checkpoint lacks, which keep their values; ``unexpected``: keys no net blob
    takes); with ``strict`` (default) any missing, unexpected or mis-shaped tensor is a
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
    return LoadReport(loaded=sorted(used), missing=missing, unexpected=unexpected)


@dataclass(frozen=True)
class NetSpec:
    """How to rebuild the net of a checkpoint (see :func:`net_spec`).

    Attributes:
        text: prototxt text to build from (``defines`` substituted into it when given).
        defines: template values to substitute into ``text`` (``None``: already substituted).
        stored_defines: the template values the checkpoint records (to give the rebuilt net).
        phase, level, stages, dtype: the stored net state and dtype.
    """

    text: str
    defines: Optional[Dict[str, str]]
    stored_defines: Dict[str, str]
    phase: str
    level: int
    stages: List[str]
    dtype: torch.dtype


def net_spec(ckpt: dict) -> NetSpec:
    """The text, state and dtype a validated checkpoint dict's net is rebuilt with."""
    text = ckpt["prototxt"]
    defines = None
    template = ckpt.get("template")
    stored = {str(k): str(v) for k, v in (ckpt.get("defines") or {}).items()}
    if _TEMPLATE.search(text) and isinstance(template, str):
        # A define's value itself contained ${...}: re-substitute from the template instead.
        text, defines = template, dict(stored)
    return NetSpec(text=text, defines=defines, stored_defines=stored, phase=ckpt["phase"],
                   level=ckpt["level"], stages=list(ckpt["stages"]), dtype=_DTYPES[ckpt["dtype"]])


def load_checkpoint_into(net: "Net", path: PathLike, strict: bool = True) -> LoadReport:
    """Copy a checkpoint's tensors into an existing ``net`` (built from any prototxt) by key."""
    ckpt = read_checkpoint(path)
    return load_state_into(net, ckpt, str(path), strict=strict)
