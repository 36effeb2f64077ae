"""``.mat`` logits -> VOC palette PNG predictions: the original ``GetFastResult.m`` (``mycrf`` branch).

This replaces ``scripts/gen_preds.sh`` (MATLAB ``GetFastResult`` with the
settings of ``SetupEnv.m``).  For every ``*.mat`` file of the features folder,
in sorted name order (MATLAB's ``dir`` order):

1. ``id`` = file name without ``.mat``, then every ``_blob_0`` and every
   ``_blob_1`` removed (``strrep``), so ``2007_000033_blob_0.mat`` ->
   ``2007_000033``;
2. skipped if ``<id>.png`` already exists in the output folder (the original's
   ``overwriteResults = 0``); hence ``<id>_blob_1.mat`` is skipped after
   ``<id>_blob_0.mat`` and the PNG is the ``_blob_0`` prediction;
3. ``data`` is read: MatWrite stores dims ``[W, H, C, N]``; MATLAB's ``load``
   drops the trailing ``N = 1`` and ``permute(data, [2 1 3])`` gives
   ``H x W x C`` (here kept as ``C x H x W``);
4. softmax exactly as MATLAB computes it in single precision:
   ``p = exp(data); p = p ./ sum(p, 3)`` (see "float32 details" below);
5. top-left crop to the rows x cols of ``JPEGImages/<id>.jpg`` (size from the
   JPEG header; EXIF orientation is ignored, as MATLAB's ``imread`` ignores it);
6. ``[~, classes] = max(p, [], 3)``: the FIRST maximum over channels, NaN
   entries skipped, all-NaN -> channel 1; ``classes - 1`` as uint8 -> labels
   ``0 .. C-1``;
7. written as an 8-bit indexed PNG with the 256-entry VOC palette
   (:func:`~caffe_compat.pipeline.palette.save_palette_png`, atomic).

float32 details (all reproduced, checked bit for bit against the original's
probabilities in ``golden/pipeline``):

* ``exp`` is the C library's single-precision ``expf`` (what Octave/MATLAB call
  element by element), which is *not* correctly rounded for every input: it is
  emulated by a correctly rounded float32 exp (float64 ``exp`` rounded to
  float32) whose few results lying within 0.004 ulp of a float32 rounding
  midpoint are recomputed with the platform's ``expf`` through ``ctypes`` (glibc
  ``expf`` errs by at most 0.502 ulp, i.e. it can only disagree with the correct
  rounding there).  Where no C ``expf`` can be loaded the correctly rounded value
  is kept.  Logits > ~88.72 overflow to ``Inf``; logits < ~-103.97 underflow to
  0; float32 denormals are kept (no flush-to-zero).
* the channel sum is accumulated sequentially in float32 (channel 0, +1, +2,
  ...), as Octave's ``sum`` does; ``Inf/Inf`` and ``0/0`` give NaN, ``x/Inf``
  gives 0.
* so, unlike a plain ``argmax`` of the logits: a pixel with one overflowing
  channel gets the first channel that is not NaN (all others are 0), all-NaN
  pixels (all channels overflow or underflow, a NaN logit) get class 0, a
  channel sum that overflows gives class 0, and logits that float32 ``exp``
  maps to the same value tie (first channel wins).

Output layout: the original writes to
``<results>/<model>/<testset>/<feature_type>/none/results/VOC2012/Segmentation/<id>_<set>_cls/``
(``comp6_test_cls`` for ``testset = 'voc_test'``; ``<set>`` is
``testset(5:end)``).  :func:`gen_preds` takes the folder that plays the role of
``.../none`` as ``out_dir`` and writes the PNGs into
``out_dir/results/VOC2012/Segmentation/<comp_id>_<testset>_cls/``
(:func:`results_dir`); ``flat=True`` writes them directly into ``out_dir``.

Errors (:class:`~caffe_compat.errors.DataError`, naming the file): missing
features folder or no ``*.mat`` in it, unreadable/corrupt ``.mat``, no ``data``
variable, ``data`` not single/double or with ``N > 1``, missing or unreadable
JPEG, an image larger than its feature map, more than 256 channels.  As in the
original, the run aborts at the first failing file; PNGs written before it
stay (they are complete: every PNG is written atomically, so no partial file
is ever left).

Deliberate differences from the original (documented in ``docs/pipeline.md``):

* ``overwrite=True`` regenerates existing PNGs, but each id is still written
  once per run, from the first ``.mat`` that maps to it (the original with
  ``overwriteResults = 1`` would process ``<id>_blob_1.mat`` too and replace
  the ``_blob_0`` PNG by it).  ``--overwrite`` therefore gives what a fresh run
  gives.
* a missing features folder or one without ``.mat`` files is an error (the
  original prints "found 0 mats" and does nothing); a missing JPEG folder is
  reported before anything is written.
* more than 256 channels is an error (MATLAB's ``uint8`` would saturate labels
  at 255).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple, Union

import numpy as np

from ..errors import CaffeCompatError, DataError, MemoryBudgetError
from .palette import save_palette_png

try:
    from PIL import Image
except ImportError:  # pragma: no cover
    Image = None

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: half-width (in float32 ulps) of the window around a rounding midpoint in which the
#: C library's expf may round differently from the correct rounding (glibc: 0.502 ulp max error)
_EXPF_WINDOW = 0.004
_LOW29 = (1 << 29) - 1
_HALF29 = 1 << 28
_WINDOW29 = int(_EXPF_WINDOW * (1 << 29))
_TINY = 2.0 ** -126        # smallest normal float32
_ZERO_BELOW = 2.0 ** -152  # exp values below this give 0 in every float32 exp
_HUGE = 2.0 ** 127


# --------------------------------------------------------------------------- float32 exp

_EXPF_UNSET = object()
_expf_fn = _EXPF_UNSET


def _libm_expf() -> Optional[Callable[[float], float]]:
    """The C library's ``expf`` through ctypes, or None where it cannot be loaded."""
    global _expf_fn
    if _expf_fn is _EXPF_UNSET:
        fn = None
        try:
            name = ctypes.util.find_library("m") or ("libm.so.6" if platform.system() == "Linux" else None)
            if name is not None:
                lib = ctypes.CDLL(name)
                fn = lib.expf
                fn.restype = ctypes.c_float
                fn.argtypes = [ctypes.c_float]
        except (OSError, AttributeError):  # pragma: no cover - platform without a C expf
            fn = None
        if fn is None:  # pragma: no cover
            log.debug("no C expf found: using the correctly rounded float32 exp")
        _expf_fn = fn
    return _expf_fn


def matlab_exp(x: np.ndarray) -> np.ndarray:
    """``exp(x)`` as MATLAB/Octave compute it in the precision of ``x`` (float32 or float64).

    float32: the platform C ``expf`` per element (emulated, see the module
    docstring); float64: NumPy's ``exp``.
    """
    x = np.asarray(x)
    if x.dtype == np.float64:
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            return np.exp(x)
    if x.dtype != np.float32:
        raise TypeError(f"matlab_exp: expected float32 or float64, got {x.dtype}")
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        y64 = np.exp(x.astype(np.float64))
        y32 = y64.astype(np.float32)
    expf = _libm_expf()
    if expf is None or y32.size == 0:  # pragma: no cover - no C expf
        return y32
    # For a float64 value in the float32 normal range, rounding to float32 drops the low 29
    # mantissa bits; the value lies within w ulp of a float32 rounding midpoint iff those
    # bits are within w * 2^29 of 2^28.  Values near/below the denormal range and near the
    # overflow threshold are always recomputed (rare: logits below ~-87 or above ~88).
    low = (y64.view(np.uint64) & np.uint64(_LOW29)).astype(np.int64)
    near = np.abs(low - _HALF29) <= _WINDOW29
    near |= (y64 < _TINY) & (y64 >= _ZERO_BELOW)
    near |= y64 >= _HUGE
    if near.any():
        idx = np.nonzero(near)
        y32[idx] = np.array([expf(v) for v in x[idx].tolist()], dtype=np.float32)
    return y32


def matlab_softmax(logits: np.ndarray) -> np.ndarray:
    """``p = exp(d); p = p ./ sum(p, channels)`` in the precision of ``logits`` (``C x H x W``).

    The channel sum is accumulated sequentially (channel 0 first), as Octave's
    ``sum`` does; overflow/underflow give ``Inf``/0 and the division NaN/0,
    exactly as in MATLAB.
    """
    e = matlab_exp(logits)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        s = e[0].copy()
        for c in range(1, e.shape[0]):
            s += e[c]
        return e / s[None]


def first_max_skip_nan(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """MATLAB ``[~, i] = max(p, [], dim); i - 1`` along ``axis`` (channels of ``C x H x W`` by default): int64.

    The first (lowest) index among equal maxima; NaN entries are ignored;
    an all-NaN position gives 0.  (``caffe-compat run`` labels its blobs with it too.)
    """
    masked = np.where(np.isnan(probs), -np.inf, probs)
    return masked.argmax(axis=axis)


def predict_labels(logits: np.ndarray, rows: Optional[int] = None, cols: Optional[int] = None) -> np.ndarray:
    """GetFastResult's labels of one feature map: ``C x H x W`` logits -> ``rows x cols`` uint8.

    ``rows``/``cols`` (default: the whole map) select the top-left block, as
    ``data(1:rows, 1:cols, :)``; they must not exceed ``H``/``W``.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise DataError(f"logits must be C x H x W, got shape {tuple(logits.shape)}")
    c, h, w = logits.shape
    rows = h if rows is None else int(rows)
    cols = w if cols is None else int(cols)
    if rows > h or cols > w or rows < 1 or cols < 1:
        raise DataError(f"cannot crop {rows} x {cols} (rows x cols) from a {h} x {w} feature map")
    if c > 256:
        raise DataError(f"{c} channels: labels 0..{c - 1} do not fit the uint8 PNG")
    if logits.dtype not in (np.float32, np.float64):
        raise DataError(f"logits must be single or double, got {logits.dtype}")
    # The softmax is per pixel, so cropping first gives the same values for less work.
    crop = np.ascontiguousarray(logits[:, :rows, :cols])
    return first_max_skip_nan(matlab_softmax(crop)).astype(np.uint8)


# --------------------------------------------------------------------------- files

def image_id_from_mat_name(name: str) -> str:
    """``<id>_blob_0.mat`` -> ``<id>``: drop ``.mat``, then remove every ``_blob_0`` and ``_blob_1``."""
    base = name[:-4] if name.endswith(".mat") else name
    return base.replace("_blob_0", "").replace("_blob_1", "")


def results_dir(out_dir: PathLike, comp_id: str = "comp6", testset: str = "test") -> str:
    """``<out_dir>/results/VOC2012/Segmentation/<comp_id>_<testset>_cls`` (the VOC results layout).

    ``testset`` is the devkit set name (``test``, ``val``); a ``voc_`` prefix
    is removed, as the original's ``testset(5:end)`` does for ``voc_test``.
    """
    if testset.startswith("voc_"):
        testset = testset[4:]
    if not comp_id or not testset or os.sep in comp_id or os.sep in testset:
        raise DataError(f"invalid results folder name parts: comp_id={comp_id!r}, testset={testset!r}")
    return os.path.join(os.fspath(out_dir), "results", "VOC2012", "Segmentation", f"{comp_id}_{testset}_cls")


def read_features(path: PathLike, max_bytes=None) -> np.ndarray:
    """The ``data`` variable of a MatWrite ``.mat`` file as MATLAB's GetFastResult sees it, ``C x H x W``.

    MATLAB dims ``[W, H, C(, 1)]``; trailing singleton dims are dropped as
    MATLAB's ``load`` does (``[W, H, 1]`` is one channel).  4-D data with
    ``N > 1`` is an error (``permute(data, [2 1 3])`` fails on it in MATLAB).
    float32 and float64 are kept; other classes raise.  ``max_bytes``: the memory budget
    (:func:`~caffe_compat.pipeline.matio.read_mat`): a file or variable too large for it raises
    :class:`~caffe_compat.errors.MemoryBudgetError` before it is read.
    """
    from .matio import read_mat  # owned by the data-layer code; imported lazily

    path = os.fspath(path)
    try:
        arr = read_mat(path, ["data"], max_bytes=max_bytes)["data"]
    except CaffeCompatError as e:
        if isinstance(e, (DataError, MemoryBudgetError)):
            raise
        raise DataError(str(e)) from None
    except Exception as e:  # a corrupt file must never escape as a raw exception
        raise DataError(f"cannot read MAT file '{path}': corrupt or unsupported file ({e})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind in "USb":
        raise DataError(f"MAT file '{path}': variable 'data' is not a numeric array")
    if arr.dtype not in (np.float32, np.float64):
        raise DataError(f"MAT file '{path}': variable 'data' is {arr.dtype}, expected single (float32) "
                        f"or double logits")
    dims = list(arr.shape)
    while len(dims) > 2 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise DataError(f"MAT file '{path}': variable 'data' has dims {list(arr.shape)} (W x H x C x N with "
                        f"N > 1); GetFastResult expects one image per file (W x H x C)")
    if 0 in dims:
        raise DataError(f"MAT file '{path}': variable 'data' is empty (dims {list(arr.shape)})")
    m = arr.reshape(dims + [1] * (3 - len(dims)), order="F")  # W x H x C, column-major
    return np.ascontiguousarray(m.transpose(2, 1, 0))


def jpeg_rows_cols(path: PathLike) -> Tuple[int, int]:
    """``(rows, cols)`` of a JPEG from its header, as ``size(imread(path))`` (no EXIF rotation)."""
    if Image is None:  # pragma: no cover
        raise DataError("reading JPEG sizes needs Pillow: pip install pillow")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"cannot read image '{path}': the file does not exist")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:
        raise DataError(f"cannot read image '{path}': not a readable image ({e})") from None
    return int(h), int(w)


@dataclass
class GenPredsSummary:
    """What :func:`gen_preds` did."""

    #: folder holding the PNGs
    png_dir: str
    #: ids whose PNG was written, in processing order
    written: List[str] = field(default_factory=list)
    #: ``.mat`` file names skipped because the PNG existed (or was written earlier in this run)
    skipped: List[str] = field(default_factory=list)


def _list_mats(features_dir: str) -> List[str]:
    if not os.path.exists(features_dir):
        raise DataError(f"features folder '{features_dir}' does not exist")
    if not os.path.isdir(features_dir):
        raise DataError(f"features folder '{features_dir}' is not a folder")
    names = sorted(n for n in os.listdir(features_dir)
                   if n.endswith(".mat") and os.path.isfile(os.path.join(features_dir, n)))
    if not names:
        raise DataError(f"features folder '{features_dir}' contains no *.mat files")
    return names


def gen_preds(features_dir: PathLike, images_dir: PathLike, out_dir: PathLike, *, overwrite: bool = False,
              comp_id: str = "comp6", testset: str = "test", flat: bool = False,
              progress: Optional[bool] = None, max_bytes=None) -> GenPredsSummary:
    """Write one VOC palette PNG per ``.mat`` feature file (``GetFastResult.m``).

    Args:
        features_dir: folder of MatWrite ``<id>_blob_0.mat`` files (logits, ``data`` = W x H x C single).
        images_dir: the ``JPEGImages`` folder (``<id>.jpg``: only the size is read).
        out_dir: results root; PNGs go to :func:`results_dir` ``(out_dir, comp_id, testset)``,
            or into ``out_dir`` itself when ``flat``.
        overwrite: regenerate PNGs that already exist (default: skip them, as the original).
        progress: tqdm progress bar (None: only on a terminal).
        max_bytes: memory budget for reading each ``.mat`` file (:mod:`caffe_compat.memory`;
            default ``$CAFFE_COMPAT_MAX_BYTES``, else the memory available).

    Returns a :class:`GenPredsSummary`.  Raises :class:`DataError` on the first bad
    input; PNGs written before it stay, none is ever partial.
    """
    features_dir = os.fspath(features_dir)
    images_dir = os.fspath(images_dir)
    png_dir = os.fspath(out_dir) if flat else results_dir(out_dir, comp_id, testset)
    if max_bytes is not None:
        from .. import memory as _mem
        _mem.resolve_budget(max_bytes)  # an invalid budget is reported before any work
    names = _list_mats(features_dir)
    if not os.path.isdir(images_dir):
        raise DataError(f"image folder '{images_dir}' does not exist")
    try:
        os.makedirs(png_dir, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the output folder '{png_dir}': {e}") from None
    log.info("found %d mats in %s; writing PNGs to %s", len(names), features_dir, png_dir)
    summary = GenPredsSummary(png_dir=png_dir)
    done = set()
    it = names
    if tqdm is not None:
        it = tqdm(names, desc="gen-preds", unit="img", disable=(None if progress is None else not progress))
    for name in it:
        img_id = image_id_from_mat_name(name)
        png = os.path.join(png_dir, img_id + ".png")
        if img_id in done or (not overwrite and os.path.isfile(png)):
            log.debug("skipping %s: %s exists", name, png)
            summary.skipped.append(name)
            continue
        mat_path = os.path.join(features_dir, name)
        logits = read_features(mat_path, max_bytes)
        jpg = os.path.join(images_dir, img_id + ".jpg")
        if not os.path.isfile(jpg):
            raise DataError(f"missing image for '{name}': '{jpg}' does not exist (the image size is "
                            f"needed to crop the prediction)")
        rows, cols = jpeg_rows_cols(jpg)
        _, h, w = logits.shape
        if rows > h or cols > w:
            raise DataError(f"image '{jpg}' is {rows} x {cols} (rows x cols) but the feature map in "
                            f"'{mat_path}' is only {h} x {w}: the top-left crop needs features at least "
                            f"as large as the image")
        labels = predict_labels(logits, rows, cols)
        save_palette_png(png, labels)
        done.add(img_id)
        summary.written.append(img_id)
        log.debug("wrote %s (%d x %d)", png, rows, cols)
    log.info("wrote %d PNGs, skipped %d", len(summary.written), len(summary.skipped))
    return summary


__all__ = ["gen_preds", "GenPredsSummary", "predict_labels", "matlab_softmax", "matlab_exp",
           "first_max_skip_nan", "read_features", "results_dir", "image_id_from_mat_name",
           "jpeg_rows_cols"]
