"""The PASCAL VOC colour map and 8-bit indexed ("palette") label PNGs.

The original pipeline writes its predictions with MATLAB
``imwrite(uint8(classes), colormap, '<id>.png')`` and reads ground truth and
predictions with ``[im, map] = imread(file)``, i.e. it works on the palette
*indices* of 8-bit indexed PNGs, never on their colours.

* :func:`voc_palette` - the standard VOC label colour map (the palette of every
  PNG the original wrote: ``LAYERS.md`` §8.3).  Entry ``i``: for ``j = 0..7``,
  bit 0/1/2 of ``c`` (starting at ``c = i``, then ``c >>= 3``) goes to bit
  ``7 - j`` of red/green/blue.  ``0 -> (0,0,0)``, ``1 -> (128,0,0)``,
  ``15 -> (192,128,128)``, ``255 -> (224,224,192)``.
* :func:`save_palette_png` - an 8-bit indexed PNG (IHDR bit depth 8, colour
  type 3) with the full 256-entry VOC palette and no other chunks (no tRNS), as
  MATLAB/Octave write it.  The pixel data is the label array as is.  The file is
  written to a temporary name in the same folder and moved into place, so an
  interrupted run never leaves a partial PNG.  (The compressed IDAT bytes are
  Pillow's, so files are not byte-identical to MATLAB's; the decoded indices and
  the palette are.  MATLAB's own files also carry a ``tIME`` chunk.)
* :func:`read_label_png` - what ``imread`` returns for a label PNG: the palette
  indices of an indexed PNG (bit depth 1, 2, 4 or 8), the grey values of an
  8-bit greyscale PNG.  Everything else (RGB, grey + alpha, 16-bit, greyscale
  with fewer than 8 bits, corrupt or truncated files, non-PNG files) raises
  :class:`~caffe_compat.errors.DataError` naming the file.
"""
from __future__ import annotations

import os
import struct
import zlib
from typing import Union

import numpy as np

from ..atomic import atomic_write
from ..errors import DataError

try:  # Pillow is a declared dependency; keep the import error readable anyway
    from PIL import Image
except ImportError:  # pragma: no cover
    Image = None

PathLike = Union[str, "os.PathLike[str]"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE_NAMES = {0: "greyscale", 2: "RGB", 3: "indexed (palette)", 4: "greyscale + alpha", 6: "RGBA"}


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC label colour map: ``(n, 3)`` uint8 RGB, entry ``i`` = colour of label ``i``.

    ``n`` may be 1..256 (the PNGs always carry all 256 entries).
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= int(n) <= 256:
        raise ValueError(f"voc_palette: n must be an integer in 1..256, got {n!r}")
    out = np.zeros((int(n), 3), dtype=np.uint8)
    for i in range(int(n)):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def _require_pillow() -> None:
    if Image is None:  # pragma: no cover
        raise DataError("writing/reading PNG files needs Pillow: pip install pillow")


def save_palette_png(path: PathLike, labels: np.ndarray) -> None:
    """Write ``labels`` (``H x W`` uint8, the pixel = palette index) as an 8-bit VOC-palette PNG.

    The write is atomic: a temporary file in the destination folder is renamed
    over ``path`` (``os.replace``) only once it is complete.  The folder must
    exist.  An existing file at ``path`` is replaced.
    """
    _require_pillow()
    path = os.fspath(path)
    arr = np.asarray(labels)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"cannot write label PNG '{path}': labels must be a non-empty 2-D array, "
                        f"got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise DataError(f"cannot write label PNG '{path}': labels must be uint8, got {arr.dtype}")
    # frombytes in mode "P" keeps the values as indices (convert("P") would quantise colours).
    im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes())
    im.putpalette(voc_palette(256).tobytes(), rawmode="RGB")
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG", bits=8), error=DataError)


def _png_header(path: str) -> tuple:
    """``(width, height, bit_depth, colour_type)`` from the IHDR chunk, with clear errors."""
    try:
        with open(path, "rb") as f:
            head = f.read(33)
    except OSError as e:
        raise DataError(f"cannot read label PNG '{path}': {e}") from None
    if head[:8] != _PNG_SIGNATURE:
        raise DataError(f"cannot read label PNG '{path}': not a PNG file (bad signature)")
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise DataError(f"cannot read label PNG '{path}': corrupt PNG (no IHDR chunk)")
    length = struct.unpack(">I", head[8:12])[0]
    if length != 13 or zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
        raise DataError(f"cannot read label PNG '{path}': corrupt PNG header (IHDR)")
    w, h, depth, ctype = struct.unpack(">IIBB", head[16:26])
    return w, h, depth, ctype


def read_label_png(path: PathLike) -> np.ndarray:
    """The label array of a PNG as MATLAB's ``imread`` gives it: ``H x W`` uint8.

    Indexed PNGs give their palette indices (not colours); 8-bit greyscale PNGs
    their grey values.  Raises :class:`DataError` naming the file if it is
    missing, not a PNG, corrupt/truncated, or not a single-channel image of at
    most 8 bits (indexed) / exactly 8 bits (greyscale).
    """
    _require_pillow()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"cannot read label PNG '{path}': the file does not exist")
    if os.path.isdir(path):
        raise DataError(f"cannot read label PNG '{path}': it is a directory")
    w, h, depth, ctype = _png_header(path)
    if ctype == 3:
        if depth not in (1, 2, 4, 8):
            raise DataError(f"cannot read label PNG '{path}': invalid bit depth {depth} for an indexed PNG")
    elif ctype == 0:
        if depth != 8:
            # Pillow rescales 1/2/4-bit grey and MATLAB returns 16-bit grey as uint16: neither is
            # a plain 8-bit label map.
            raise DataError(f"cannot read label PNG '{path}': {depth}-bit greyscale PNG; label images "
                            f"must be 8-bit (indexed or greyscale)")
    else:
        name = _COLOR_TYPE_NAMES.get(ctype, f"colour type {ctype}")
        raise DataError(f"cannot read label PNG '{path}': it is a {depth}-bit {name} PNG; label images "
                        f"must be single-channel 8-bit (indexed or greyscale), pixel = class index")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("P", "L", "1"):
                raise DataError(f"cannot read label PNG '{path}': unexpected image mode {im.mode!r}")
            arr = np.array(im)
    except DataError:
        raise
    except Exception as e:  # truncated data, bad CRC/zlib stream, decompression bomb, ...
        raise DataError(f"cannot read label PNG '{path}': corrupt or truncated PNG ({e})") from None
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype != np.uint8 or arr.shape != (h, w):
        raise DataError(f"cannot read label PNG '{path}': decoded to {arr.dtype} {arr.shape}, "
                        f"expected uint8 ({h}, {w})")
    return arr


__all__ = ["voc_palette", "save_palette_png", "read_label_png"]
