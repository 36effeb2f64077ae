"""PASCAL VOC segmentation scoring: the original ``MyVOCevalseg.m`` (called by ``EvalSegResults.m``).

This replaces ``scripts/eval.sh``.  For every id of the list (first
whitespace-separated token of each non-blank line, in file order; MATLAB's
``textread(file, '%s %d')`` on a one-id-per-line file), the ground truth
``GT_DIR/<id>.png`` and the prediction ``PRED_DIR/<id>.png`` are read as
``imread`` reads them (palette *indices* of indexed PNGs, grey values of grey
PNGs: :func:`~caffe_compat.pipeline.palette.read_label_png`), then:

* a prediction value > 20 (including 255) is an error that aborts the whole
  evaluation: ``Results image '<id>' has out of range value <max> (the value
  should be <= 20)``; then a prediction whose size differs from the GT's is an
  error: ``Results image '<id>' is the wrong size, was R x C, should be R x C.``
  (prediction rows x cols, then GT);
* only GT pixels equal to 255 are ignored (``locs = gt < 255``);
* the joint histogram ``histc(1 + gt + 21*pred, 1:441)`` is added to the
  column-major 21 x 21 matrix: ``confusion[gt, pred]``, row = GT class,
  column = predicted class.

Scores (the original prints them in percent with ``%6.3f``; this module
returns fractions, and the percent values computed exactly as the original
does in the ``*_percent`` fields):

* IoU of class j = ``TP / (GT_j + PRED_j - TP)`` (row sum + column sum -
  diagonal); a zero denominator counts as 1, so a class absent from both GT
  and predictions has IoU **0** (not NaN) and still counts;
* **mIoU = sum of the 21 IoUs / 21** -- always 21, whatever classes occur;
* overall pixel accuracy = trace / total (NaN when nothing was counted, as in
  the original: 0/0);
* per-class pixel accuracy = ``confusion[i, i] / row sum`` (zero row -> 0), and
  "mean class accuracy" = their sum / 21.

Reproduced surprises of the original:

* GT values 21..254 are *not* ignored and *not* rejected: the pixel goes to
  the flat column-major bin ``gt + 21*pred`` of the 21 x 21 matrix, i.e. to
  cell ``[(gt + 21*pred) % 21, (gt + 21*pred) // 21]`` (GT 21 with prediction 0
  lands in cell (0, 1); GT 254 with prediction 3 in (2, 15)); when
  ``gt + 21*pred > 440`` the pixel is dropped (outside ``histc``'s edges).  A
  warning is logged; ``strict_gt=True`` makes such values an error instead.
* a GT image that is entirely 255 contributes nothing (GNU Octave behaviour,
  recorded by the golden run; MATLAB's ``histc`` of an empty vector was not
  verified).
* a class that is predicted only on ignored (255) GT pixels is absent from the
  counts.

Extensions (off by default, so the default output is the original's):

* ``num_classes`` (``--num-classes``): data sets with another number of classes
  than VOC's 21 (the project's generated scenes have 6); every "21" above
  becomes that number (labels ``0 .. n-1``, mIoU = sum of the n IoUs / n).
* ``boundary_radii`` (``--boundary-radius``): the same scores restricted to the
  pixels within ``r`` pixels of a ground-truth boundary (the "trimap" measure;
  the band is defined in :mod:`caffe_compat.pipeline.boundary`), one set per
  radius, in :attr:`EvalResult.boundary`.

Deliberate differences:

* missing prediction files are an error listing every missing id; the
  original silently skips them and prints ``WARNING: There are N missing
  results!`` at the end -- ``allow_missing=True`` does exactly that (the
  skipped ids are in :attr:`EvalResult.missing`).  A prediction file that
  exists but cannot be decoded is always an error (the original's ``try/catch``
  would count it as missing).
* all missing GT files are reported before anything is computed (the original
  stops at the first); a list without ids, and a run in which no image could be
  evaluated, are errors (the original would print NaN accuracies).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DataError
from .boundary import boundary_band
from .lists import read_text_file
from .palette import read_label_png

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: the 21 VOC classes in label order (background = 0)
VOC_CLASSES: Tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
NUM_CLASSES = 21
IGNORE_LABEL = 255


@dataclass
class EvalResult:
    """Scores of one evaluation (fractions in [0, 1]; ``*_percent`` = the original's numbers)."""

    #: ``(21, 21)`` int64 pixel counts, ``confusion[gt, pred]`` (the original's ``rawcounts``)
    confusion: np.ndarray
    #: ``(21,)`` per-class IoU
    iou: np.ndarray
    #: mean IoU = sum of the 21 IoUs / 21
    miou: float
    #: overall pixel accuracy (NaN when no pixel was counted)
    pixel_acc: float
    #: ``(21,)`` per-class pixel accuracy (recall), 0 for classes absent from the GT
    class_accs: np.ndarray
    #: mean class accuracy = sum of ``class_accs`` / 21
    class_acc: float
    #: the original's values in percent, computed with its exact formulas (bit-identical)
    iou_percent: np.ndarray
    miou_percent: float
    pixel_acc_percent: float
    class_accs_percent: np.ndarray
    class_acc_percent: float
    #: the original's ``conf``: row-normalised confusion in percent (``100*n / (1e-20 + row sum)``)
    conf_percent: np.ndarray
    #: ids that were evaluated, in list order
    ids: List[str] = field(default_factory=list)
    #: ids skipped because their prediction was missing (only with ``allow_missing``)
    missing: List[str] = field(default_factory=list)
    #: pixels with GT < 255 (the original's ``count``; includes pixels dropped from the histogram)
    count: int = 0
    class_names: Tuple[str, ...] = VOC_CLASSES
    #: ``radius -> scores`` of the pixels within ``radius`` of a GT boundary (only with ``boundary_radii``)
    boundary: Dict[float, "EvalResult"] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """``{"miou", "iou", "confusion", "pixel_acc", "class_acc"}`` (fractions; NaN -> None).

        With boundary radii, also ``"boundary": [{"radius", "miou", "iou", "pixel_acc",
        "class_acc", "count"}, ...]`` (``count`` = non-ignored pixels in the band).
        """
        out = {
            "miou": _json_float(self.miou),
            "iou": [_json_float(v) for v in self.iou],
            "confusion": [[int(v) for v in row] for row in self.confusion],
            "pixel_acc": _json_float(self.pixel_acc),
            "class_acc": _json_float(self.class_acc),
        }
        if self.boundary:
            out["boundary"] = [{"radius": r, "miou": _json_float(b.miou), "iou": [_json_float(v) for v in b.iou],
                                "pixel_acc": _json_float(b.pixel_acc), "class_acc": _json_float(b.class_acc),
                                "count": b.count} for r, b in self.boundary.items()]
        return out


def _json_float(v) -> Optional[float]:
    v = float(v)
    return None if math.isnan(v) else v


def _seq_sum(values: Iterable[float]) -> float:
    # MATLAB/Octave sum a vector left to right; Python's sum() does the same (fsum would not).
    return float(sum(float(v) for v in values))


def class_names_for(num_classes: int) -> Tuple[str, ...]:
    """VOC's names for 21 classes, else ``("class 0", "class 1", ...)``."""
    n = _check_num_classes(num_classes)
    return VOC_CLASSES if n == NUM_CLASSES else tuple(f"class {i}" for i in range(n))


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or not 1 <= int(num_classes) <= IGNORE_LABEL:
        raise DataError(f"num_classes must be an integer in 1..{IGNORE_LABEL}, got {num_classes!r}")
    return int(num_classes)


def scores_from_confusion(confusion: np.ndarray, ids: Sequence[str] = (), missing: Sequence[str] = (),
                          count: Optional[int] = None, num_classes: int = NUM_CLASSES,
                          class_names: Optional[Sequence[str]] = None) -> EvalResult:
    """All scores of MyVOCevalseg from a ``(n, n)`` ``confusion[gt, pred]`` count matrix (n = ``num_classes``)."""
    n_cls = _check_num_classes(num_classes)
    cc = np.asarray(confusion)
    if cc.shape != (n_cls, n_cls):
        raise DataError(f"confusion matrix must be {n_cls} x {n_cls}, got {cc.shape}")
    cc = cc.astype(np.int64)
    f = cc.astype(np.float64)
    rows = f.sum(axis=1)
    cols = f.sum(axis=0)
    diag = np.diag(f)
    total = float(f.sum())
    trace = float(diag.sum())
    conf_percent = 100.0 * f / (1e-20 + rows)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        pixel_acc_percent = float(np.float64(100.0 * trace) / np.float64(total))
        pixel_acc = float(np.float64(trace) / np.float64(total))
    acc_den = np.where(rows == 0, 1.0, rows)
    class_accs_percent = 100.0 * diag / acc_den
    class_accs = diag / acc_den
    iou_den = rows + cols - diag
    iou_den = np.where(iou_den == 0, 1.0, iou_den)
    iou_percent = 100.0 * diag / iou_den
    iou = diag / iou_den
    names = tuple(class_names) if class_names is not None else class_names_for(n_cls)
    if len(names) != n_cls:
        raise DataError(f"{len(names)} class names for {n_cls} classes")
    return EvalResult(
        confusion=cc, iou=iou, miou=_seq_sum(iou) / n_cls,
        pixel_acc=pixel_acc, class_accs=class_accs, class_acc=_seq_sum(class_accs) / n_cls,
        iou_percent=iou_percent, miou_percent=_seq_sum(iou_percent) / n_cls,
        pixel_acc_percent=pixel_acc_percent, class_accs_percent=class_accs_percent,
        class_acc_percent=_seq_sum(class_accs_percent) / n_cls, conf_percent=conf_percent,
        ids=list(ids), missing=list(missing), count=int(total if count is None else count),
        class_names=names)


def read_eval_list(path: PathLike) -> List[str]:
    """Ids of a VOC ``ImageSets/Segmentation/*.txt`` list: the first token of every non-blank line."""
    path = os.fspath(path)
    text = read_text_file(path, f"cannot read image list '{path}'")
    ids = [line.split()[0] for line in text.splitlines() if line.split()]
    if not ids:
        raise DataError(f"image list '{path}' contains no ids")
    return ids


def accumulate(confusion: np.ndarray, gt: np.ndarray, pred: np.ndarray, image_id: str,
               gt_path: str = "", pred_path: str = "", strict_gt: bool = False) -> int:
    """Add one image pair to ``confusion`` (in place) as MyVOCevalseg does; returns its ``count``.

    The number of classes n is ``confusion``'s size (21 for VOC).  Raises
    :class:`DataError` for prediction values > n - 1, a size mismatch, and
    (with ``strict_gt``) GT values in n..254.
    """
    n_cls = int(confusion.shape[0])
    max_label = n_cls - 1
    where = f" (prediction '{pred_path}')" if pred_path else ""
    maxlabel = int(pred.max()) if pred.size else 0
    if maxlabel > max_label:
        raise DataError(f"Results image '{image_id}' has out of range value {maxlabel} "
                        f"(the value should be <= {max_label}){where}")
    if gt.shape != pred.shape:
        raise DataError(f"Results image '{image_id}' is the wrong size, was {pred.shape[0]} x {pred.shape[1]}, "
                        f"should be {gt.shape[0]} x {gt.shape[1]}.{where}")
    locs = gt < IGNORE_LABEL
    g = gt[locs].astype(np.int64)
    p = pred[locs].astype(np.int64)
    n = int(g.size)
    odd = g > max_label
    if odd.any():
        bad = np.unique(g[odd]).tolist()
        gwhere = f"'{gt_path}'" if gt_path else f"of '{image_id}'"
        if strict_gt:
            raise DataError(f"ground truth {gwhere} has label values {bad} outside 0..{max_label} and "
                            f"{IGNORE_LABEL} ({int(odd.sum())} pixels)")
        log.warning("ground truth %s has label values %s outside 0..%d and %d (%d pixels): counted as the "
                    "original does (bin gt + %d*pred of the column-major matrix; dropped beyond %d)",
                    gwhere, bad, max_label, IGNORE_LABEL, int(odd.sum()), n_cls, n_cls * n_cls)
    k = g + n_cls * p  # 0-based column-major index = histc bin - 1
    k = k[k < n_cls * n_cls]
    hs = np.bincount(k, minlength=n_cls * n_cls)
    confusion += hs.reshape(n_cls, n_cls).T  # column-major -> [gt, pred]
    return n


def evaluate(pred_dir: PathLike, gt_dir: PathLike, ids: Union[PathLike, Sequence[str]], *,
             allow_missing: bool = False, strict_gt: bool = False,
             progress: Optional[bool] = None, num_classes: int = NUM_CLASSES,
             class_names: Optional[Sequence[str]] = None,
             boundary_radii: Sequence[float] = ()) -> EvalResult:
    """Score the predictions ``pred_dir/<id>.png`` against ``gt_dir/<id>.png`` (MyVOCevalseg).

    Args:
        pred_dir: folder of prediction PNGs (e.g. ``.../Segmentation/comp6_val_cls``).
        gt_dir: folder of ground-truth PNGs (``VOC2012/SegmentationClass``).
        ids: a list file (one id per line, e.g. ``ImageSets/Segmentation/val.txt``) or a sequence of ids.
        allow_missing: skip ids without a prediction file, as the original does (default: error).
        strict_gt: raise on GT values 21..254 instead of counting them as the original does.
        progress: tqdm progress bar (None: only on a terminal).
        num_classes: number of classes n (labels 0..n-1; default VOC's 21).
        class_names: n names for the tables (default: VOC's, or "class i").
        boundary_radii: also score, per radius r, only the pixels within r pixels of a GT
            boundary (:func:`~caffe_compat.pipeline.boundary.boundary_band`): :attr:`EvalResult.boundary`.
    """
    n_cls = _check_num_classes(num_classes)
    radii = _check_radii(boundary_radii)
    pred_dir = os.fspath(pred_dir)
    gt_dir = os.fspath(gt_dir)
    if isinstance(ids, (str, os.PathLike)):
        id_list = read_eval_list(ids)
    else:
        id_list = [str(i) for i in ids]
        if not id_list:
            raise DataError("no ids to evaluate")
    for folder, what in ((gt_dir, "ground-truth"), (pred_dir, "prediction")):
        if not os.path.isdir(folder):
            raise DataError(f"{what} folder '{folder}' does not exist")
    gt_paths = [os.path.join(gt_dir, i + ".png") for i in id_list]
    pred_paths = [os.path.join(pred_dir, i + ".png") for i in id_list]
    no_gt = [p for p in gt_paths if not os.path.isfile(p)]
    if no_gt:
        raise DataError(f"{len(no_gt)} ground-truth file(s) missing: " + _some(no_gt))
    missing = [i for i, p in zip(id_list, pred_paths) if not os.path.isfile(p)]
    if missing and not allow_missing:
        raise DataError(f"{len(missing)} of {len(id_list)} prediction(s) missing in '{pred_dir}': "
                        + _some(missing) + " (allow_missing / --allow-missing skips them as the original does)")
    confusion = np.zeros((n_cls, n_cls), dtype=np.int64)
    band_confusion = {r: np.zeros((n_cls, n_cls), dtype=np.int64) for r in radii}
    band_count = {r: 0 for r in radii}
    count = 0
    done: List[str] = []
    skipped: List[str] = []
    steps = zip(id_list, gt_paths, pred_paths)
    if tqdm is not None:
        steps = tqdm(steps, total=len(id_list), desc="eval", unit="img",
                     disable=(None if progress is None else not progress))
    for image_id, gt_path, pred_path in steps:
        gt = read_label_png(gt_path)
        if not os.path.isfile(pred_path):
            skipped.append(image_id)
            continue
        pred = read_label_png(pred_path)
        count += accumulate(confusion, gt, pred, image_id, gt_path, pred_path, strict_gt=strict_gt)
        for r in radii:  # the whole-image pass above has checked values and sizes
            gt_band = np.where(boundary_band(gt, r), gt, IGNORE_LABEL).astype(gt.dtype)
            band_count[r] += accumulate(band_confusion[r], gt_band, pred, image_id)
        done.append(image_id)
    if skipped:
        log.warning("There are %d missing results! (skipped: %s)", len(skipped), _some(skipped))
    if not done:
        raise DataError(f"no image could be evaluated: all {len(id_list)} predictions are missing in '{pred_dir}'")
    result = scores_from_confusion(confusion, ids=done, missing=skipped, count=count, num_classes=n_cls,
                                   class_names=class_names)
    result.boundary = {r: scores_from_confusion(band_confusion[r], ids=done, count=band_count[r],
                                                num_classes=n_cls, class_names=result.class_names)
                       for r in radii}
    return result


def _check_radii(radii: Sequence[float]) -> List[float]:
    out: List[float] = []
    for r in radii:
        try:
            v = float(r)
        except (TypeError, ValueError):
            raise DataError(f"boundary radius must be a number, got {r!r}") from None
        if not math.isfinite(v) or v < 0:
            raise DataError(f"boundary radius must be a finite number >= 0, got {r!r}")
        if v not in out:
            out.append(v)
    return out


def _some(items: Sequence[str], n: int = 10) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _pct(v: float) -> str:
    # MATLAB prints NaN as "NaN" with %6.3f
    return "   NaN" if math.isnan(v) else f"{v:6.3f}"


def format_original(result: EvalResult) -> str:
    """The text MyVOCevalseg prints, line for line (``%6.3f`` percent values)."""
    out = []
    if result.missing:
        out.append(f"WARNING: There are {len(result.missing)} missing results!")
    out.append(f"Percentage of pixels correctly labelled overall: {_pct(result.pixel_acc_percent)}%")
    out.append("Accuracy for each class (pixel accuracy)")
    for name, v in zip(result.class_names, result.class_accs_percent):
        out.append(f"  {name:>14s}: {_pct(v)}%")
    out.append("-------------------------")
    out.append(f"Mean Class Accuracy: {_pct(result.class_acc_percent)}%")
    out.append("Accuracy for each class (intersection/union measure)")
    for name, v in zip(result.class_names, result.iou_percent):
        out.append(f"  {name:>14s}: {_pct(v)}%")
    out.append("-------------------------")
    out.append(f"Average accuracy: {_pct(result.miou_percent)}%")
    return "\n".join(out) + "\n"


def format_table(result: EvalResult) -> str:
    """A per-class table (pixel accuracy and IoU in percent) and the overall scores."""
    out = [f"{'class':<14s} {'GT px':>9s} {'pixel acc %':>12s} {'IoU %':>8s}"]
    rows = result.confusion.sum(axis=1)
    for name, n, acc, iou in zip(result.class_names, rows, result.class_accs_percent, result.iou_percent):
        out.append(f"{name:<14s} {int(n):>9d} {_pct(acc):>12s} {_pct(iou):>8s}")
    out.append("-" * 46)
    out.append(f"overall pixel accuracy: {_pct(result.pixel_acc_percent).strip()}%")
    out.append(f"mean class accuracy:    {_pct(result.class_acc_percent).strip()}%")
    n_cls = len(result.class_names)
    out.append(f"mIoU (sum of the {n_cls} IoUs / {n_cls}): {_pct(result.miou_percent).strip()}%")
    line = f"{len(result.ids)} image(s) evaluated, {result.count} pixels counted"
    if result.missing:
        line += f"; {len(result.missing)} missing prediction(s) skipped"
    out.append(line)
    for r, b in result.boundary.items():
        out.append(f"within {r:g} px of a GT boundary ({b.count} pixels): pixel accuracy "
                   f"{_pct(b.pixel_acc_percent).strip()}%, mean class accuracy {_pct(b.class_acc_percent).strip()}%, "
                   f"mIoU {_pct(b.miou_percent).strip()}%")
    return "\n".join(out) + "\n"


__all__ = ["evaluate", "EvalResult", "scores_from_confusion", "accumulate", "read_eval_list", "class_names_for",
           "format_original", "format_table", "VOC_CLASSES", "NUM_CLASSES", "IGNORE_LABEL"]
