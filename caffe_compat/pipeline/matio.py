"""MATLAB ``.mat`` files as the fork's MatWrite wrote them, and a reader, on ``scipy.io`` and ``h5py``.

Writing (:func:`write_mat`, :func:`write_blob_mat`) produces the Level-5
("MATLAB 5.0 MAT-file") layout of libmatio 1.5 ``Mat_Create`` +
``Mat_VarWrite(..., MAT_COMPRESSION_NONE)`` used by the fork: a 128-byte
header, then one uncompressed ``miMATRIX`` element per variable.  The elements
are :func:`scipy.io.savemat`'s (``format="5"``, no compression, 1-D arrays as
rows): measured on every file of ``golden/data/matwrite``, they are byte for
byte the fork's.  The header is written here, as libmatio lays it out (text
padded with spaces, subsystem offset of spaces, version 0x0100, ``IM``):
scipy fills the subsystem offset with zeros, so with ours a file equals the
fork's from byte 116 on (only the header text differs: platform, date).

MatWrite's layout (:func:`write_blob_mat`): one variable ``data``, class
single (float32), dims ``[W, H, C, N]`` taken from Caffe's legacy 4-D accessors
(missing trailing axes count as 1, so an ``(N, C)`` blob gives ``[1, 1, C,
N]``), data = the blob's C-order buffer as is.  MATLAB being column-major,
``data(w+1, h+1, c+1, n+1) = blob[n, c, h, w]``; with NumPy
``loadmat(f)["data"].transpose(3, 2, 1, 0)`` is the blob.  The trailing
singleton ``N = 1`` is stored (MATLAB's ``load`` drops it on reading).

Files are written to a temporary name in the same folder and then moved into
place, so a crash or a full disk never leaves a partial ``.mat``.  An existing
file is never overwritten (:func:`write_blob_mat` returns ``False``), as in the
fork.

Reading (:func:`read_mat`): Level-5 files (MATLAB ``-v6``/``-v7`` incl.
zlib-compressed variables, libmatio, SciPy) with numeric, logical and char
arrays are parsed here, in pure Python, and ``-v7.3`` (HDF5) files through
h5py.  Why not :func:`scipy.io.loadmat`: scipy 1.17.1 crashes the process
(SIGSEGV) on damaged files, measured on MatWrite files with one flipped byte
(a small data element of unknown type; the complex flag set in the array
flags), where a reader of untrusted files must raise an error instead.  The
size of the file (Level-5 files are read whole) and the declared size of every
variable are checked against the package's memory budget
(:mod:`caffe_compat.memory`: ``max_bytes=``, else ``$CAFFE_COMPAT_MAX_BYTES``,
else the memory available) before anything is read, raising
:class:`~caffe_compat.errors.MemoryBudgetError` naming the file and the bytes; cells,
structs, sparse, complex and object arrays raise :class:`NotSupportedError`;
a corrupt file raises :class:`DataError` naming it.  :func:`read_blob_mat` is
the fork's ``ReadBlobFromMat`` (the inverse of :func:`write_blob_mat`).
"""
from __future__ import annotations

import io
import math
import os
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

from .. import memory as _mem
from ..atomic import atomic_write
from ..errors import CaffeCompatError, DataError, NotSupportedError

HEADER_TEXT_LEN = 116
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

#: dtypes a variable may be written with (complex, object and string arrays are refused)
_WRITABLE = frozenset(np.dtype(c) for c in ("f8", "f4", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "?"))
_UNSUPPORTED_CLASSES = ("cell", "struct", "object", "sparse", "function", "opaque")

# Level-5 data types and array classes (for reading)
miINT8, miUINT8, miINT16, miUINT16, miINT32, miUINT32 = 1, 2, 3, 4, 5, 6
miSINGLE, miDOUBLE, miINT64, miUINT64, miMATRIX, miCOMPRESSED = 7, 9, 12, 13, 14, 15
miUTF8, miUTF16, miUTF32 = 16, 17, 18
_MI_DTYPES = {
    miINT8: "i1", miUINT8: "u1", miINT16: "i2", miUINT16: "u2", miINT32: "i4", miUINT32: "u4",
    miSINGLE: "f4", miDOUBLE: "f8", miINT64: "i8", miUINT64: "u8", miUTF8: "u1", miUTF16: "u2",
    miUTF32: "u4",
}
mxCELL, mxSTRUCT, mxOBJECT, mxCHAR, mxSPARSE = 1, 2, 3, 4, 5
_CLASS_DTYPES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
_CLASS_NAMES = {mxCELL: "cell", mxSTRUCT: "struct", mxOBJECT: "object", mxSPARSE: "sparse"}
_LOGICAL_FLAG, _COMPLEX_FLAG = 0x200, 0x800

#: the environment variable of the package's one memory budget (:mod:`caffe_compat.memory`),
#: which also bounds what a ``.mat`` file may make the reader allocate
MAX_BYTES_ENV = _mem.ENV_VAR


def header(text: Optional[str] = None) -> bytes:
    """The 128-byte Level-5 header: text padded with spaces, subsystem offset of spaces,
    version 0x0100, little-endian marker ``IM`` (libmatio's layout)."""
    if text is None:
        plat = f"{os.uname().machine}-{sys.platform}" if hasattr(os, "uname") else sys.platform
        text = (f"MATLAB 5.0 MAT-file, Platform: {plat}, Created by: caffe_compat on "
                f"{time.strftime('%a %b %d %H:%M:%S %Y')}")
    raw = text.encode("ascii", errors="replace")[:HEADER_TEXT_LEN]
    raw = raw + b" " * (HEADER_TEXT_LEN - len(raw))
    return raw + b" " * 8 + struct.pack("<H", 0x0100) + b"IM"


def _checked_variable(name, arr) -> np.ndarray:
    if not isinstance(name, str) or not name or not name.isidentifier() or len(name) > 63:
        raise DataError(f"invalid MATLAB variable name {name!r}")
    arr = np.asarray(arr)
    if np.dtype(arr.dtype.str[1:] if arr.dtype.str[0] in "<>" else arr.dtype) not in _WRITABLE:
        raise DataError(f"cannot write variable {name!r}: unsupported dtype {arr.dtype} "
                        f"(real numeric or bool arrays only)")
    if any(d > 0x7FFFFFFF for d in arr.shape):
        raise DataError(f"cannot write variable {name!r}: dimension too large for a MAT file")
    if arr.nbytes > 0xFFFFFFFF - 1024:
        raise DataError(f"cannot write variable {name!r}: more than 4 GB (Level-5 MAT limit)")
    return arr


def mat_bytes(variables: Mapping[str, np.ndarray], header_text: Optional[str] = None) -> bytes:
    """The bytes of a Level-5 MAT file holding ``variables`` (uncompressed)."""
    from scipy.io import savemat

    checked = {name: _checked_variable(name, arr) for name, arr in variables.items()}
    buf = io.BytesIO()
    try:
        savemat(buf, checked, format="5", do_compression=False, oned_as="row")
    except (ValueError, TypeError, OverflowError) as e:
        raise DataError(f"cannot write variables {sorted(checked)} as a MAT file: {e}") from None
    return header(header_text) + buf.getvalue()[128:]


def write_mat(path: str, variables: Mapping[str, np.ndarray], overwrite: bool = True,
              header_text: Optional[str] = None) -> bool:
    """Write numeric arrays to a Level-5 MAT file (atomically). Returns whether it was written."""
    data = mat_bytes(variables, header_text)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), error=DataError, overwrite=overwrite)


def blob_to_mat_array(blob) -> np.ndarray:
    """A blob (tensor/array, at most 4 axes) as MatWrite's ``[W, H, C, N]`` float32 array."""
    arr = blob.detach().cpu().numpy() if hasattr(blob, "detach") else np.asarray(blob)
    if arr.ndim > 4:
        raise DataError(f"MatWrite handles blobs of at most 4 axes, got shape {list(arr.shape)}")
    # Caffe's legacy accessors: num/channels/height/width = shape(0..3), 1 where absent.
    shape4 = tuple(arr.shape) + (1,) * (4 - arr.ndim)
    arr = np.asarray(arr, dtype=np.float32).reshape(shape4)
    return arr.transpose(3, 2, 1, 0)


def write_blob_mat(path: str, blob, overwrite: bool = False) -> bool:
    """MatWrite's ``WriteBlobToMat``: variable ``data``, single, dims ``[W H C N]``.

    Returns ``False`` without touching anything if the file exists (unless
    ``overwrite``).
    """
    return write_mat(path, {"data": blob_to_mat_array(blob)}, overwrite=overwrite)


# ------------------------------------------------------------------------------------- reading
def max_read_bytes(max_bytes=None) -> int:
    """The memory budget of :func:`read_mat`: :func:`caffe_compat.memory.resolve_budget` (``max_bytes``,
    else ``$CAFFE_COMPAT_MAX_BYTES``, else the memory available now), the one Net and weights use."""
    return _mem.resolve_budget(max_bytes)


def _check_declared(path: str, name: str, shape: Sequence[int], itemsize: int,
                    budget: "_mem.Reservation") -> None:
    """Refuse, before reading it, a variable whose declared size does not fit the memory budget.

    The bytes are counted in ``budget`` (a running total over the file's variables)."""
    if any(int(d) < 0 for d in shape):
        raise DataError(f"MAT file '{path}': variable {name!r} declares negative dims {list(shape)}")
    budget.reserve(_mem.nbytes(shape, itemsize),
                   lambda: f"MAT file '{path}': variable {name!r} declares dims {[int(d) for d in shape]}")


def _unsupported(path: str, name: str, kind: str) -> NotSupportedError:
    return NotSupportedError(f"MAT file '{path}': variable {name!r} is a {kind} array; only "
                             f"real numeric, logical and char arrays are supported")


def _read_v73(path: str, names: Optional[set], budget: "_mem.Reservation") -> Dict[str, object]:
    """A ``-v7.3`` (HDF5) file: every top-level dataset, dims reversed back to MATLAB's."""
    import h5py

    out: Dict[str, object] = {}
    try:
        with h5py.File(path, "r") as f:
            for key in f:
                if key.startswith("#") or (names is not None and key not in names):
                    continue
                try:
                    ds = f[key]
                except (KeyError, OSError):
                    raise DataError(f"MAT file '{path}': variable {key!r} is a link to nothing "
                                    f"(dangling or external link)") from None
                if not isinstance(ds, h5py.Dataset):
                    raise _unsupported(path, key, "struct/cell (HDF5 group)")
                cls = ds.attrs.get("MATLAB_class", b"")
                cls = cls.decode("ascii", "replace") if isinstance(cls, bytes) else str(cls)
                if cls in _UNSUPPORTED_CLASSES or ds.dtype.kind not in "biuf":
                    raise _unsupported(path, key, cls or str(ds.dtype))
                _check_declared(path, key, ds.shape, ds.dtype.itemsize, budget)
                arr = np.asarray(ds[()]).T  # HDF5 stores MATLAB's column-major dims reversed
                if cls == "logical":
                    arr = arr.astype(bool)
                elif cls == "char":
                    arr = "".join(map(chr, arr.ravel(order="F"))) if arr.ndim == 2 and arr.shape[0] == 1 else arr
                out[key] = arr
    except CaffeCompatError:
        raise
    except Exception as e:  # h5py raises OSError, KeyError, RuntimeError, ValueError on damaged files
        raise DataError(f"MAT file '{path}': corrupt v7.3 (HDF5) file: {type(e).__name__}: {e}") from None
    return out


def _pad8(n: int) -> int:
    return (8 - n % 8) % 8


class _Reader:
    """Level-5 data elements of one file (``where`` names it in errors)."""

    def __init__(self, endian: str, where: str, path: str, budget: "_mem.Reservation"):
        self.e, self.where, self.path, self.budget = endian, where, path, budget

    def tags(self, buf: bytes):
        pos, n = 0, len(buf)
        while pos + 8 <= n:
            t, nbytes = struct.unpack_from(self.e + "II", buf, pos)
            if t >> 16:  # small data element
                # the 32-bit word is (nbytes << 16) | type in either byte order
                small_n, small_t = t >> 16, t & 0xFFFF
                yield small_t, buf[pos + 4:pos + 4 + small_n]
                pos += 8
                continue
            start = pos + 8
            end = start + nbytes
            if end > n:
                raise DataError(f"{self.where}: truncated MAT file (element of {nbytes} bytes "
                                f"at offset {pos} runs past the end)")
            yield t, buf[start:end]
            pos = end + (_pad8(nbytes) if t != miCOMPRESSED else 0)

    def numeric(self, t: int, payload: bytes) -> np.ndarray:
        if t not in _MI_DTYPES:
            raise DataError(f"{self.where}: unknown MAT data type {t}")
        return np.frombuffer(payload, dtype=np.dtype(self.e + _MI_DTYPES[t]))

    def matrix(self, payload: bytes, names: Optional[set] = None):
        """``(name, class, array)``; ``array`` None for unsupported classes, and for every variable
        not in ``names`` (whose data is then neither checked nor read)."""
        parts = list(self.tags(payload))
        if len(parts) < 3:
            raise DataError(f"{self.where}: malformed matrix element")
        flags = self.numeric(*parts[0]).astype(np.uint32)
        cls = int(flags[0]) & 0xFF
        dims = tuple(int(d) for d in self.numeric(*parts[1]))
        name = bytes(parts[2][1]).decode("ascii", errors="replace")
        if names is not None and name not in names:
            return name, cls, None
        if cls in _CLASS_NAMES:
            return name, cls, None
        if int(flags[0]) & _COMPLEX_FLAG:
            return name, -1, None
        if len(parts) < 4:
            raise DataError(f"{self.where}: variable {name!r} has no data")
        _check_declared(self.path, name, dims, np.dtype(_CLASS_DTYPES.get(cls, "f8")).itemsize, self.budget)
        real = self.numeric(*parts[3])
        count = math.prod(dims) if dims else 0
        if real.size != count:
            raise DataError(f"{self.where}: variable {name!r} holds {real.size} values for dims {list(dims)}")
        if cls == mxCHAR:
            chars = real.astype(np.uint32).reshape(dims, order="F")
            if len(dims) == 2 and dims[0] == 1:
                return name, cls, "".join(map(chr, chars[0]))
            return name, cls, chars
        if cls not in _CLASS_DTYPES:
            return name, cls, None
        arr = real.astype(np.dtype(_CLASS_DTYPES[cls]).newbyteorder("=")).reshape(dims, order="F")
        if int(flags[0]) & _LOGICAL_FLAG:
            arr = arr.astype(bool)
        return name, cls, arr


def _is_v73(head: bytes) -> bool:
    if head[:8] == _HDF5_MAGIC or head[512:520] == _HDF5_MAGIC or head.startswith(b"MATLAB 7.3"):
        return True
    return head[126:128] in (b"IM", b"MI") and head[124:126] in (b"\x00\x02", b"\x02\x00")


def _read_level5(path: str, data: bytes, names: Optional[set], budget: "_mem.Reservation") -> Dict[str, object]:
    endian = "<" if data[126:128] == b"IM" else ">"
    r = _Reader(endian, f"MAT file '{path}'", path, budget)
    out: Dict[str, object] = {}
    for t, payload in r.tags(data[128:]):
        if t == miCOMPRESSED:
            room = max(0, budget.budget - budget.total)
            inflater = zlib.decompressobj()
            try:
                payload = inflater.decompress(payload, room + 1)
            except zlib.error as e:
                raise DataError(f"MAT file '{path}': corrupt compressed variable ({e})") from None
            if len(payload) > room:
                _mem.check_fits(len(payload), f"MAT file '{path}': a compressed variable inflates to more "
                                f"than {len(payload) - 1:,} bytes", budget.budget, budget.total)
            inner = list(r.tags(payload))
            if not inner:
                continue
            t, payload = inner[0]
        if t != miMATRIX:
            continue
        name, cls, arr = r.matrix(payload, names)
        if names is not None and name not in names:
            continue
        if arr is None:
            raise _unsupported(path, name, _CLASS_NAMES.get(cls, "complex" if cls == -1 else f"class {cls}"))
        out[name] = arr
    return out


def read_mat(path: str, variable_names: Optional[Iterable[str]] = None,
             max_bytes=None) -> Dict[str, object]:
    """Read the variables of a MAT file: ``name -> ndarray`` with MATLAB's dims (no squeezing).

    Char row vectors come back as ``str``.  ``variable_names`` restricts what is
    read (and what must be supported).  ``max_bytes``: the memory budget
    (:mod:`caffe_compat.memory`; default ``$CAFFE_COMPAT_MAX_BYTES``, else the
    memory available): a Level-5 file is read whole, so its size counts, and
    every variable read counts its declared size; both are checked before
    anything is read, and what does not fit raises :class:`MemoryBudgetError`
    naming the file, the variable and the bytes.
    """
    path = os.fspath(path)
    budget = _mem.Reservation(_mem.resolve_budget(max_bytes))
    names = set(variable_names) if variable_names is not None else None
    if not os.path.exists(path):
        raise DataError(f"cannot read MAT file '{path}': the file does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(520)
    except OSError as e:
        raise DataError(f"cannot read MAT file '{path}': {e}") from None
    if len(head) < 128:
        raise DataError(f"'{path}' is not a MAT file (only {len(head)} bytes)")
    if _is_v73(head):
        out = _read_v73(path, names, budget)
    elif head[126:128] not in (b"IM", b"MI"):
        raise DataError(f"'{path}' is not a Level-5 MAT file (no IM/MI marker; v4 files are not supported)")
    else:
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                budget.reserve(size, lambda: f"MAT file '{path}': reading the Level-5 file ({size:,} bytes on disk)")
                data = f.read()
        except OSError as e:
            raise DataError(f"cannot read MAT file '{path}': {e}") from None
        try:
            out = _read_level5(path, data, names, budget)
        except CaffeCompatError:
            raise
        except (ValueError, IndexError, TypeError, OverflowError, struct.error, MemoryError) as e:
            raise DataError(f"MAT file '{path}': corrupt Level-5 file: {type(e).__name__}: {e}") from None
    if names is not None:
        missing = names - set(out)
        if missing:
            raise DataError(f"MAT file '{path}' has no variable(s) {sorted(missing)} "
                            f"(it has {sorted(out) or 'none'})")
    return out


def read_blob_mat(path: str, variable: str = "data", max_bytes=None) -> np.ndarray:
    """The fork's ``ReadBlobFromMat``: a variable of rank <= 4 as an ``(N, C, H, W)`` array.

    MATLAB dims ``[d0, d1, d2, d3]`` (missing ones = 1) map to the blob shape
    ``(d3, d2, d1, d0)`` over the same column-major buffer.
    """
    arr = read_mat(path, [variable], max_bytes=max_bytes)[variable]
    if isinstance(arr, str) or not isinstance(arr, np.ndarray):
        raise DataError(f"MAT file '{path}': variable {variable!r} is not numeric")
    if arr.ndim > 4:
        raise DataError(f"MAT file '{path}': variable {variable!r} has {arr.ndim} dims (at most 4)")
    dims = tuple(arr.shape) + (1,) * (4 - arr.ndim)
    return np.ascontiguousarray(arr.reshape(dims, order="F").transpose(3, 2, 1, 0))


__all__ = ["write_mat", "write_blob_mat", "blob_to_mat_array", "mat_bytes", "header",
           "read_mat", "read_blob_mat", "max_read_bytes"]
