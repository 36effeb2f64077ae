"""Reading and writing Caffe weights: binary ``.caffemodel`` and Caffe's HDF5 ``.caffemodel.h5``.

Reading (:func:`read_weights`) uses the minimal ``WeightsNet`` schema (layer
``name``/``type``/``blobs`` only), so files written by BVLC Caffe, by the fork
at either of its schema versions, or by other tools parse even when their other
``LayerParameter`` fields use different numbers.  ``BlobProto`` rules follow
Caffe's ``Blob::FromProto``: legacy ``num/channels/height/width`` win when any
is present; ``double_data`` wins when non-empty; no shape and no legacy dims is
a 0-axis scalar blob with exactly one value.

Loading into a net (:func:`load_into_net`) follows ``Net::CopyTrainedLayersFrom``:
for each layer of the file (in file order) the *first* net layer of that name
receives its blobs, with blob-count and shape checks (legacy 4-D shapes are
compared right-aligned, so an old ``1x1x1xN`` bias fits ``(N,)``).  Caffe
silently ignores file layers the net lacks and keeps filler values for net
layers the file lacks; here ``strict=True`` turns either into an error that
lists them, and ``strict=False`` returns the report.

Writing (:func:`save_net`) emits per layer ``name``, ``type``, ``bottom``,
``top`` and ``blobs`` (float32 ``data``, or ``double_data`` for a float64 net, with a ``shape``), which is all Caffe's
``CopyTrainedLayersFrom`` and OpenCV's ``readNetFromCaffe`` read from a weights
file; layer parameters are left out on purpose, because their field numbers
differ between BVLC Caffe, OpenCV and the fork (PROTO.md §5).  HDF5 follows
``Net::ToHDF5``: ``/data/<layer>/<i>``, one group per layer, shared parameters
written by their owner only.  Every file is written to a temporary name and
renamed, so a failure never leaves a partial file.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple, Union

import numpy as np
import torch
from google.protobuf.message import DecodeError

from . import schema
from .atomic import atomic_write
from . import memory as _mem
from .errors import CaffeCompatError, WeightsError
from .layers.base import MAX_BLOB_ELEMENTS
from .prototxt import V1_TYPE_NAMES

if TYPE_CHECKING:  # pragma: no cover
    from .net import Net

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: Caffe's ``kMaxBlobAxes``: a blob shape with more axes is refused.
MAX_BLOB_AXES = 32
#: More blobs than this in one layer of an HDF5 file is not a Caffe file (Caffe layers have a handful).
MAX_HDF5_BLOBS_PER_LAYER = 1024


@dataclass
class WeightBlob:
    """One blob read from a weights file: its values and whether its shape is legacy 4-D."""

    array: np.ndarray
    legacy: bool = False


@dataclass
class LoadReport:
    """What :func:`load_into_net` did.

    Attributes:
        loaded: net layer names that received blobs.
        missing: net layers with learnable blobs that the file does not hold.
        unexpected: file layers with blobs that no net layer is named like.
        mismatched: human-readable descriptions of blob count/shape mismatches.
    """

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 10) -> str:
        """Mismatches first, each list cut after ``limit`` entries (``None``: all)."""
        def cut(items, sep):
            shown = items if limit is None else items[:limit]
            more = len(items) - len(shown)
            return sep.join(shown) + (f"{sep}... and {more} more" if more else "")
        parts = []
        if self.mismatched:
            parts.append("mismatched: " + cut(self.mismatched, "; "))
        if self.missing:
            parts.append(f"missing in file (kept their filler values): {cut(self.missing, ', ')}")
        if self.unexpected:
            parts.append(f"in file but not in the net: {cut(self.unexpected, ', ')}")
        return "\n".join(parts) or "all layers loaded"


# ----------------------------------------------------------------------------- reading
class _NotOnePackedRecord(Exception):
    """A blob's values are not one packed record: read the file with the element-wise schema."""


def _blob_to_array(b, where: str, fast: bool = False) -> WeightBlob:
    """A ``BlobProto`` as an array; ``fast``: ``b`` is a ``FastBlobProto`` (raw packed bytes)."""
    legacy = any(b.HasField(f) for f in ("num", "channels", "height", "width"))
    if legacy:
        shape: Tuple[int, ...] = (b.num, b.channels, b.height, b.width)
    else:
        shape = tuple(b.shape.dim) if b.HasField("shape") else ()
    if len(shape) > MAX_BLOB_AXES:
        raise WeightsError(f"{where}: shape has {len(shape)} axes, more than Caffe's limit of {MAX_BLOB_AXES}")
    if any(d < 0 for d in shape):
        raise WeightsError(f"{where}: negative dimension in shape {list(shape)}")
    count = math.prod(int(d) for d in shape)
    if count > MAX_BLOB_ELEMENTS:
        raise WeightsError(f"{where}: shape {list(shape)} has {count} elements, more than the limit "
                           f"{MAX_BLOB_ELEMENTS}")
    if fast:
        for fname, size in (("double_data", 8), ("data", 4)):
            n_bytes = len(getattr(b, fname))
            if n_bytes % size:
                raise WeightsError(f"{where}: packed '{fname}' holds {n_bytes} bytes, not a whole number of "
                                   f"{size}-byte values (truncated or corrupt file)")
        raw = np.frombuffer(b.double_data, "<f8") if len(b.double_data) else np.frombuffer(b.data, "<f4")
        if raw.size != count:
            raise _NotOnePackedRecord
        data = raw.astype(raw.dtype.newbyteorder("="))  # a writable, native-order copy
    elif len(b.double_data):
        data = np.asarray(b.double_data, dtype=np.float64)
    else:
        data = np.asarray(b.data, dtype=np.float32)
    if data.size != count:
        raise WeightsError(f"{where}: shape {list(shape)} needs {count} values but the file holds {data.size}")
    return WeightBlob(data.reshape(shape), legacy)


def _read_caffemodel(path: Path) -> List[Tuple[str, str, List[WeightBlob]]]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read: {e.strerror or e}") from None
    if not data:
        raise WeightsError(f"{path}: empty file, not a caffemodel")
    # Fast schema first (packed values as raw bytes); files not packed the way Caffe
    # writes them are read again element-wise.
    for message, fast in ((schema.message_class("caffe_weights.FastWeightsNet"), True), (schema.WeightsNet, False)):
        try:
            net = message.FromString(data)
        except (DecodeError, RuntimeError, ValueError) as e:
            raise WeightsError(f"{path}: not a valid binary caffemodel (truncated or another format): {e}") from None
        try:
            out = _layers_of(net, path, fast)
            break
        except _NotOnePackedRecord:
            continue
    if not out:
        raise WeightsError(f"{path}: holds no layers; not a caffemodel (text prototxt? wrong file?)")
    if not any(name for name, _, _ in out):
        raise WeightsError(f"{path}: its layers have no names; not a caffemodel")
    return out


def _text(value) -> str:
    """A string field as str: protobuf hands back bytes for a value that is not valid UTF-8."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _layers_of(net, path: Path, fast: bool) -> List[Tuple[str, str, List[WeightBlob]]]:
    out = []
    if len(net.layer):
        for lp in net.layer:
            name = _text(lp.name)
            out.append((name, _text(lp.type), [_blob_to_array(b, f"{path}: layer '{name}' blob {j}", fast)
                                               for j, b in enumerate(lp.blobs)]))
    elif len(net.layers):
        enum = schema.message_descriptor("V1LayerParameter").fields_by_name["type"].enum_type
        for lp in net.layers:
            ev = enum.values_by_number.get(lp.type)
            typ = V1_TYPE_NAMES.get(ev.name, "") if ev is not None else f"<V1 type {lp.type}>"
            name = _text(lp.name)
            out.append((name, typ, [_blob_to_array(b, f"{path}: layer '{name}' blob {j}", fast)
                                    for j, b in enumerate(lp.blobs)]))
    return out


def _read_hdf5(path: Path, max_bytes: Optional[int] = None) -> List[Tuple[str, str, List[WeightBlob]]]:
    """Caffe's ``/data/<layer>/<i>`` layout; every dataset's declared shape and dtype are checked
    (element limit, memory budget) before it is read, and links (soft, external) are refused."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise WeightsError(f"{path}: not a readable HDF5 file: {e}") from None
    budget = _mem.resolve_budget(max_bytes)
    try:
        with f:
            return _hdf5_layers(f, path, h5py, _mem.Reservation(budget))
    except CaffeCompatError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        # h5py reports corrupt metadata / chunks from many places
        raise WeightsError(f"{path}: corrupt HDF5 file: {type(e).__name__}: {e}") from None


def _hard_member(f, group, key: str, where: str, h5py):
    """``group[key]`` if it is a hard link (soft and external links are refused, never followed)."""
    link = group.get(key, getlink=True)
    if not isinstance(link, h5py.HardLink):
        raise WeightsError(f"{where}: is a {type(link).__name__}; Caffe's HDF5 layout has no links")
    return group[key]


def _hdf5_layers(f, path: Path, h5py, reservation) -> List[Tuple[str, str, List[WeightBlob]]]:
    if "data" not in f.keys():
        raise WeightsError(f"{path}: HDF5 file without a 'data' group: not Caffe's .caffemodel.h5 layout "
                           f"(top-level keys: {list(f.keys())[:20]})")
    data = _hard_member(f, f, "data", f"{path}: /data", h5py)
    if not isinstance(data, h5py.Group):
        raise WeightsError(f"{path}: /data is not a group: not Caffe's .caffemodel.h5 layout")
    out = []
    for lname in data.keys():
        grp = _hard_member(f, data, lname, f"{path}: /data/{lname}", h5py)
        if not isinstance(grp, h5py.Group):
            raise WeightsError(f"{path}: /data/{lname} is not a group: not Caffe's HDF5 layout")
        keys = list(grp.keys())
        if any(not (k.isascii() and k.isdigit()) for k in keys):
            raise WeightsError(f"{path}: /data/{lname} holds {keys[:20]}; Caffe's layout names blobs 0, 1, ...")
        idx = sorted(int(k) for k in keys)
        if idx and idx[-1] >= MAX_HDF5_BLOBS_PER_LAYER:
            raise WeightsError(f"{path}: /data/{lname} has a blob numbered {idx[-1]}; Caffe layers have "
                               f"far fewer than {MAX_HDF5_BLOBS_PER_LAYER} blobs")
        # Caffe's ToHDF5 leaves out shared blobs, so indices may have gaps: None marks them.
        blobs: List[Optional[WeightBlob]] = [None] * (idx[-1] + 1 if idx else 0)
        for i in idx:
            where = f"{path}: /data/{lname}/{i}"
            ds = _hard_member(f, grp, str(i), where, h5py)
            if not isinstance(ds, h5py.Dataset):
                raise WeightsError(f"{where} is not a dataset")
            if ds.dtype not in (np.float32, np.float64):
                raise WeightsError(f"{where} has dtype {ds.dtype}, expected float32/64")
            shape = tuple(ds.shape) if ds.shape is not None else None
            if shape is None:
                raise WeightsError(f"{where} is an empty (null-shaped) dataset")
            if len(shape) > MAX_BLOB_AXES:
                raise WeightsError(f"{where}: shape has {len(shape)} axes, more than Caffe's limit of {MAX_BLOB_AXES}")
            count = math.prod(shape)
            if count > MAX_BLOB_ELEMENTS:
                raise WeightsError(f"{where}: declared shape {list(shape)} has {count} elements, more than the "
                                   f"limit {MAX_BLOB_ELEMENTS}")
            reservation.reserve(count * ds.dtype.itemsize, f"{where} (declared shape {list(shape)}, {ds.dtype})")
            arr = np.asarray(ds[()])
            if arr.shape != shape:
                raise WeightsError(f"{where}: read shape {list(arr.shape)} differs from the declared {list(shape)}")
            blobs[i] = WeightBlob(arr)
        out.append((lname, "", blobs))
    return out


def is_hdf5(path: PathLike) -> bool:
    """True if the file starts with the HDF5 signature."""
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == HDF5_MAGIC
    except OSError as e:
        raise WeightsError(f"{path}: cannot read: {e.strerror or e}") from None


def read_weights(path: PathLike, max_bytes: Optional[int] = None) -> List[Tuple[str, str, List[WeightBlob]]]:
    """Read ``[(layer name, type, [WeightBlob])]`` from a caffemodel or Caffe HDF5 file.

    The format is chosen by content (HDF5 signature), not by extension.  HDF5
    files carry no layer types (empty string).  ``max_bytes``: memory budget
    (see :mod:`caffe_compat.memory`) that HDF5 datasets' declared sizes are
    checked against before they are read; a caffemodel must fit in memory
    twice (the file and its arrays).
    """
    p = Path(path)
    try:
        if not p.is_file():
            raise WeightsError(f"{p}: no such weights file")
        if is_hdf5(p):
            return _read_hdf5(p, max_bytes)
        size = p.stat().st_size
    except (OSError, ValueError) as e:  # e.g. a NUL byte or an over-long name
        raise WeightsError(f"{p}: cannot read: {e}") from None
    _mem.check_fits(2 * size, f"{p}: reading the caffemodel ({size:,} bytes)", _mem.resolve_budget(max_bytes))
    return _read_caffemodel(p)


# ----------------------------------------------------------------------------- loading
def _shape_fits(blob: WeightBlob, target: Tuple[int, ...]) -> bool:
    if not blob.legacy:
        return tuple(blob.array.shape) == tuple(target)
    if len(target) > 4:
        return False
    padded = (1,) * (4 - len(target)) + tuple(target)
    return tuple(blob.array.shape) == padded


def load_into_net(net: "Net", path: PathLike, strict: bool = True) -> LoadReport:
    """Copy a weights file into ``net`` by layer name; see the module docstring."""
    layers = read_weights(path, getattr(net, "max_bytes", None))
    hdf5 = is_hdf5(path)
    report = LoadReport()
    first_index = {}
    for i, name in enumerate(net.layer_names):
        first_index.setdefault(name, i)
    seen_net_layers = set()      # net layers that received their blobs
    attempted = set()            # net layers the file addressed (loaded or mismatched)
    with torch.no_grad():
        for name, typ, blobs in layers:
            i = first_index.get(name)
            if i is None:
                if any(b is not None for b in blobs):
                    report.unexpected.append(name)
                continue
            targets = list(net.layers[i].blobs)
            specs = net.param_specs[i]
            if not blobs and not targets:
                continue
            attempted.add(i)
            if len(blobs) > len(targets) or (not hdf5 and len(blobs) != len(targets)):
                report.mismatched.append(f"layer '{name}': file has {len(blobs)} blobs, net has {len(targets)}")
                continue
            # HDF5 (Caffe's ToHDF5) leaves out shared blobs: a missing index is fine only for a sharer.
            pairs, gaps_ok = [], True
            for j, t in enumerate(targets):
                b = blobs[j] if j < len(blobs) else None
                if b is None:
                    gaps_ok = gaps_ok and specs[j]["owner"] is not None
                else:
                    pairs.append((j, b, t))
            if not gaps_ok:
                report.mismatched.append(f"layer '{name}': file has {sum(b is not None for b in blobs)} blobs, "
                                         f"net has {len(targets)}")
                continue
            bad = [f"layer '{name}' blob {j}: file shape {list(b.array.shape)}"
                   f"{' (legacy)' if b.legacy else ''} vs net shape {list(t.shape)}"
                   for j, b, t in pairs if not _shape_fits(b, tuple(t.shape))]
            if bad:
                report.mismatched.extend(bad)
                continue
            for j, b, t in pairs:
                if not np.isfinite(b.array).all():
                    log.warning("%s: layer '%s' blob %d holds NaN/Inf values", path, name, j)
                if t.device.type != "meta":
                    src = torch.from_numpy(np.ascontiguousarray(b.array)).reshape(t.shape)
                    t.copy_(src.to(dtype=t.dtype, device=t.device))
            report.loaded.append(name)
            seen_net_layers.add(i)
    for i, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
        if not len(layer.blobs) or i in attempted:
            continue
        if first_index[name] != i:
            report.missing.append(f"{name} (a later layer of that name: Caffe loads only the first)")
            continue
        shared_only = all(s["owner"] is not None and s["owner"][0] in seen_net_layers for s in net.param_specs[i])
        if not shared_only:
            report.missing.append(name)
    if strict and not report.ok:
        raise WeightsError(f"{path}: weights do not fit net '{net.name}' ({net.source}):\n{report.describe()}\n"
                           f"(load with strict=False to keep filler values for missing layers)")
    if report.missing or report.unexpected:
        log.info("%s: %s", path, report.describe())
    return report


# ----------------------------------------------------------------------------- writing
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _blob_bytes(t: torch.Tensor) -> bytes:
    double = t.dtype == torch.float64
    arr = t.detach().to("cpu", torch.float64 if double else torch.float32).contiguous().numpy()
    head = schema.BlobProto()
    head.shape.dim.extend(arr.shape)
    if arr.ndim == 0:
        head.ClearField("shape")  # Caffe's 0-axis blob: no shape field, one value
    # Packed little-endian values: BlobProto.data (5, float32) or, for a float64 net as
    # Caffe<double> writes it, double_data (8).
    if double:
        return head.SerializeToString() + _len_field(8, arr.astype("<f8", copy=False).tobytes())
    return head.SerializeToString() + _len_field(5, arr.astype("<f4", copy=False).tobytes())


def caffemodel_bytes(net: "Net") -> bytes:
    """The binary caffemodel (``NetParameter``) holding ``net``'s weights."""
    head = schema.NetParameter()
    head.name = net.name
    parts = [head.SerializeToString()]
    for name, typ, bn, tn, layer in zip(net.layer_names, net.layer_types, net.bottom_names,
                                        net.top_names, net.layers):
        lp = schema.LayerParameter()
        lp.name, lp.type = name, typ
        lp.bottom.extend(bn)
        lp.top.extend(t for t in tn if not t.startswith("(automatic)"))
        body = lp.SerializeToString() + b"".join(_len_field(7, _blob_bytes(p)) for p in layer.blobs)
        parts.append(_len_field(100, body))  # NetParameter.layer = 100
    return b"".join(parts)


def save_net(net: "Net", path: PathLike, fmt: Optional[str] = None) -> None:
    """Write ``net``'s weights as ``fmt``: ``"h5"`` (Caffe HDF5) or ``"caffemodel"`` (binary).

    Without ``fmt``: HDF5 if ``path`` ends in ``.h5``/``.hdf5``, else a binary caffemodel.
    """
    path = Path(path)
    if fmt is None:
        fmt = "h5" if path.suffix.lower() in (".h5", ".hdf5") else "caffemodel"
    if fmt not in ("h5", "caffemodel"):
        raise WeightsError(f"{path}: unknown weights format {fmt!r} (caffemodel or h5)")
    if any(p.is_meta for p in net.parameters()):
        raise WeightsError(f"{path}: a net built on the meta device has no weights to save")
    if fmt == "h5":
        atomic_write(path, lambda tmp: _write_hdf5(net, tmp), error=WeightsError)
    else:
        data = caffemodel_bytes(net)
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), error=WeightsError)
    log.info("wrote %s weights of net %r to %s", fmt, net.name, path)


def _write_hdf5(net: "Net", filename: str) -> None:
    import h5py

    with h5py.File(filename, "w") as f:
        data = f.create_group("data")
        for i, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
            if not name or "/" in name or "\0" in name or name in (".", ".."):
                raise WeightsError(f"cannot write HDF5: layer name {name!r} cannot be an HDF5 group name "
                                   f"(Caffe's layout has one group per layer name); save as .caffemodel")
            if name in data:
                if len(layer.blobs):
                    raise WeightsError(f"cannot write HDF5: layer name '{name}' is used twice and has blobs "
                                       f"(Caffe's HDF5 layout has one group per layer name)")
                continue
            g = data.create_group(name)
            for j, p in enumerate(layer.blobs):
                if net.param_specs[i][j]["owner"] is not None:
                    continue  # shared: stored with its owner, as Net::ToHDF5
                dt = torch.float64 if p.dtype == torch.float64 else torch.float32
                g.create_dataset(str(j), data=p.detach().to("cpu", dt).numpy())
