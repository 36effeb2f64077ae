"""MATLAB ``.mat`` files as the fork's MatWrite wrote them, and a small reader.

Writing (:func:`write_mat`, :func:`write_blob_mat`) produces the same Level-5
("MATLAB 5.0 MAT-file") layout as libmatio 1.5 ``Mat_Create`` +
``Mat_VarWrite(..., MAT_COMPRESSION_NONE)`` used by the fork: a 128-byte
header, then one uncompressed ``miMATRIX`` element per variable (array flags,
dimensions, name, real data), every element padded to 8 bytes.  Apart from the
header text, a file written here for a blob is byte-identical to the fork's
(checked against ``golden/data/matwrite``).

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
arrays; ``-v7.3`` (HDF5) files through h5py when it is installed.  Cells,
structs, sparse and object arrays raise :class:`NotSupportedError`.
:func:`read_blob_mat` is the fork's ``ReadBlobFromMat`` (the inverse of
:func:`write_blob_mat`).
"""
from __future__ import annotations

import os
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional

import numpy as np

from ..atomic import atomic_write
from ..errors import DataError, NotSupportedError

# Level-5 data types
miINT8, miUINT8, miINT16, miUINT16, miINT32, miUINT32 = 1, 2, 3, 4, 5, 6
miSINGLE, miDOUBLE, miINT64, miUINT64, miMATRIX, miCOMPRESSED = 7, 9, 12, 13, 14, 15
miUTF8, miUTF16, miUTF32 = 16, 17, 18

_MI_DTYPES = {
    miINT8: "i1", miUINT8: "u1", miINT16: "i2", miUINT16: "u2", miINT32: "i4", miUINT32: "u4",
    miSINGLE: "f4", miDOUBLE: "f8", miINT64: "i8", miUINT64: "u8", miUTF8: "u1", miUTF16: "u2",
    miUTF32: "u4",
}

# array classes
mxCELL, mxSTRUCT, mxOBJECT, mxCHAR, mxSPARSE = 1, 2, 3, 4, 5
mxDOUBLE, mxSINGLE, mxINT8, mxUINT8, mxINT16, mxUINT16 = 6, 7, 8, 9, 10, 11
mxINT32, mxUINT32, mxINT64, mxUINT64 = 12, 13, 14, 15

_CLASS_DTYPES = {
    mxDOUBLE: "f8", mxSINGLE: "f4", mxINT8: "i1", mxUINT8: "u1", mxINT16: "i2", mxUINT16: "u2",
    mxINT32: "i4", mxUINT32: "u4", mxINT64: "i8", mxUINT64: "u8",
}
_CLASS_NAMES = {mxCELL: "cell", mxSTRUCT: "struct", mxOBJECT: "object", mxSPARSE: "sparse"}

# numpy kind/size -> (class, data type) for writing
_WRITE_TYPES = {
    np.dtype("f8"): (mxDOUBLE, miDOUBLE), np.dtype("f4"): (mxSINGLE, miSINGLE),
    np.dtype("i1"): (mxINT8, miINT8), np.dtype("u1"): (mxUINT8, miUINT8),
    np.dtype("i2"): (mxINT16, miINT16), np.dtype("u2"): (mxUINT16, miUINT16),
    np.dtype("i4"): (mxINT32, miINT32), np.dtype("u4"): (mxUINT32, miUINT32),
    np.dtype("i8"): (mxINT64, miINT64), np.dtype("u8"): (mxUINT64, miUINT64),
}
_LOGICAL_FLAG = 0x200
_COMPLEX_FLAG = 0x800

HEADER_TEXT_LEN = 116


def _pad8(n: int) -> int:
    return (8 - n % 8) % 8


def _element(dtype_code: int, payload: bytes, small_ok: bool = True) -> bytes:
    """One data element, in the small format when the payload fits in 4 bytes (as matio does)."""
    n = len(payload)
    if small_ok and 0 < n <= 4:
        return struct.pack("<HH", dtype_code, n) + payload + b"\0" * (4 - n)
    return struct.pack("<II", dtype_code, n) + payload + b"\0" * _pad8(n)


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


def _matrix_element(name: str, arr: np.ndarray) -> bytes:
    arr = np.asarray(arr)
    logical = arr.dtype == np.bool_
    if logical:
        arr = arr.astype(np.uint8)
    key = np.dtype(arr.dtype.str[1:])  # byte order dropped: '<f4', '>f4' -> 'f4'
    if key not in _WRITE_TYPES:
        raise DataError(f"cannot write variable {name!r}: unsupported dtype {arr.dtype} "
                        f"(real numeric or bool arrays only)")
    cls, mi = _WRITE_TYPES[key]
    if arr.ndim == 0:
        arr = arr.reshape(1, 1)
    elif arr.ndim == 1:
        arr = arr.reshape(1, -1)  # a row vector, like MATLAB and scipy's default
    flags = cls | (_LOGICAL_FLAG if logical else 0)
    body = _element(miUINT32, struct.pack("<II", flags, 0), small_ok=False)
    dims = arr.shape
    if any(d > 0x7FFFFFFF for d in dims):
        raise DataError(f"cannot write variable {name!r}: dimension too large for a MAT file")
    body += _element(miINT32, struct.pack(f"<{len(dims)}i", *dims), small_ok=False)
    body += _element(miINT8, name.encode("ascii"))
    data = np.asarray(arr, dtype=key.newbyteorder("<")).tobytes(order="F")
    body += _element(mi, data, small_ok=False)
    if len(body) > 0xFFFFFFFF:
        raise DataError(f"cannot write variable {name!r}: more than 4 GB (Level-5 MAT limit)")
    return struct.pack("<II", miMATRIX, len(body)) + body


def mat_bytes(variables: Mapping[str, np.ndarray], header_text: Optional[str] = None) -> bytes:
    """The bytes of a Level-5 MAT file holding ``variables`` (uncompressed)."""
    out = [header(header_text)]
    for name, arr in variables.items():
        if not isinstance(name, str) or not name or not name.isidentifier() or len(name) > 63:
            raise DataError(f"invalid MATLAB variable name {name!r}")
        out.append(_matrix_element(name, arr))
    return b"".join(out)


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
class _Reader:
    def __init__(self, data: bytes, endian: str, where: str):
        self.data, self.e, self.where = data, endian, where

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

    def matrix(self, payload: bytes):
        parts = list(self.tags(payload))
        if len(parts) < 3:
            raise DataError(f"{self.where}: malformed matrix element")
        flags = self.numeric(*parts[0]).astype(np.uint32)
        cls = int(flags[0]) & 0xFF
        dims = tuple(int(d) for d in self.numeric(*parts[1]))
        name = bytes(parts[2][1]).decode("ascii", errors="replace")
        if cls in _CLASS_NAMES:
            return name, cls, None
        if int(flags[0]) & _COMPLEX_FLAG:
            return name, -1, None
        if len(parts) < 4:
            raise DataError(f"{self.where}: variable {name!r} has no data")
        real = self.numeric(*parts[3])
        count = int(np.prod(dims)) if dims else 0
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


def _read_v73(path: str, names: Optional[Iterable[str]]) -> Dict[str, np.ndarray]:
    try:
        import h5py  # noqa: WPS433 - optional dependency
    except ImportError:
        raise NotSupportedError(f"'{path}' is a MATLAB v7.3 (HDF5) file: install h5py to read it") from None
    out = {}
    with h5py.File(path, "r") as f:
        for key in f:
            if key.startswith("#") or (names is not None and key not in names):
                continue
            ds = f[key]
            if not isinstance(ds, h5py.Dataset):
                raise NotSupportedError(f"'{path}': variable {key!r} is not a numeric array")
            arr = ds[()]
            out[key] = np.asarray(arr).T  # HDF5 stores MATLAB's column-major dims reversed
    return out


def read_mat(path: str, variable_names: Optional[Iterable[str]] = None) -> Dict[str, object]:
    """Read the variables of a MAT file: ``name -> ndarray`` with MATLAB's dims (no squeezing).

    Char row vectors come back as ``str``.  ``variable_names`` restricts what is
    read (and what must be supported).
    """
    path = os.fspath(path)
    names = set(variable_names) if variable_names is not None else None
    if not os.path.exists(path):
        raise DataError(f"cannot read MAT file '{path}': the file does not exist")
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 128:
        raise DataError(f"'{path}' is not a MAT file (only {len(data)} bytes)")
    marker = data[126:128]
    if data[:8] == b"\x89HDF\r\n\x1a\n" or data[512:520] == b"\x89HDF\r\n\x1a\n":
        return _read_v73(path, names)
    if marker == b"IM":
        endian = "<"
    elif marker == b"MI":
        endian = ">"
    else:
        if data.startswith(b"MATLAB 7.3"):
            return _read_v73(path, names)
        raise DataError(f"'{path}' is not a Level-5 MAT file (no IM/MI marker; v4 files are not supported)")
    version = struct.unpack_from(endian + "H", data, 124)[0]
    if version == 0x0200:
        return _read_v73(path, names)
    r = _Reader(data, endian, f"MAT file '{path}'")
    out: Dict[str, object] = {}
    for t, payload in r.tags(data[128:]):
        if t == miCOMPRESSED:
            try:
                payload = zlib.decompress(payload)
            except zlib.error as e:
                raise DataError(f"MAT file '{path}': corrupt compressed variable ({e})") from None
            inner = list(r.tags(payload))
            if not inner:
                continue
            t, payload = inner[0]
        if t != miMATRIX:
            continue
        name, cls, arr = r.matrix(payload)
        if names is not None and name not in names:
            continue
        if arr is None:
            kind = _CLASS_NAMES.get(cls, "complex" if cls == -1 else f"class {cls}")
            raise NotSupportedError(f"MAT file '{path}': variable {name!r} is a {kind} array; only "
                                    f"real numeric, logical and char arrays are supported")
        out[name] = arr
    if names is not None:
        missing = names - set(out)
        if missing:
            raise DataError(f"MAT file '{path}' has no variable(s) {sorted(missing)} "
                            f"(it has {sorted(out) or 'none'})")
    return out


def read_blob_mat(path: str, variable: str = "data") -> np.ndarray:
    """The fork's ``ReadBlobFromMat``: a variable of rank <= 4 as an ``(N, C, H, W)`` array.

    MATLAB dims ``[d0, d1, d2, d3]`` (missing ones = 1) map to the blob shape
    ``(d3, d2, d1, d0)`` over the same column-major buffer.
    """
    arr = read_mat(path, [variable])[variable]
    if isinstance(arr, str) or not isinstance(arr, np.ndarray):
        raise DataError(f"MAT file '{path}': variable {variable!r} is not numeric")
    if arr.ndim > 4:
        raise DataError(f"MAT file '{path}': variable {variable!r} has {arr.ndim} dims (at most 4)")
    dims = tuple(arr.shape) + (1,) * (4 - arr.ndim)
    return np.ascontiguousarray(arr.reshape(dims, order="F").transpose(3, 2, 1, 0))


__all__ = ["write_mat", "write_blob_mat", "blob_to_mat_array", "mat_bytes", "header",
           "read_mat", "read_blob_mat"]
