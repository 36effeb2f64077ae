"""Softmax, loss and metric layers (LAYERS.md §3.15-3.17, BVLC Caffe for the rest).

Layers: ``Softmax``, ``SoftmaxWithLoss``, ``EuclideanLoss``,
``SigmoidCrossEntropyLoss``, ``Accuracy``, ``ArgMax``, ``SegAccuracy``.

Loss layers (``is_loss = True``) return a 0-axis loss (shape ``()``, as
Caffe's loss blob) and always produce it, even when the prototxt lists no top
(``auto_tops = 1``).  The net passes ``loss_weight`` as the loss top's
gradient, so every loss here scales its backward by the incoming gradient.

Fork / Caffe behaviours reproduced:

* **Labels are truncated** to int (C ``static_cast<int>``: 2.7 -> 2,
  -0.5 -> 0) before comparing with ``ignore_label`` or indexing.
* **SoftmaxWithLoss**: ``loss = -sum log(max(prob[label], FLT_MIN)) /
  max(1, normaliser)``; ``normalization`` FULL / VALID (default) / BATCH_SIZE
  / NONE, or the legacy ``normalize`` (true: VALID, false: BATCH_SIZE) when
  ``normalization`` is absent.  The optional second top (``prob``) carries no
  gradient back (Caffe ignores its diff).  A label outside ``[0, C)`` that is
  not the ignore label is a :class:`DataError` (the fork reads out of bounds
  there; its result changed from run to run).
* **SigmoidCrossEntropyLoss**: the fork's own version ignores ``loss_param``
  entirely and divides by the batch size; the port implements BVLC 1.0's
  extension (``ignore_label``; ``normalization``, default **BATCH_SIZE** when
  neither ``normalization`` nor ``normalize`` is given), which equals the fork
  whenever ``loss_param`` is not used (no original config uses this layer).
* **Accuracy**: ties in the top-k ranking go to the **larger class index**
  (Caffe sorts ``(value, index)`` pairs with ``std::greater``); with no
  non-ignored label the accuracy is ``0/0 = NaN``, as in Caffe.  An
  out-of-range label is a :class:`DataError` (undefined in Caffe).
* **ArgMax**: same tie rule (larger index first).  Without ``axis`` the top is
  ``(N, 1 or 2, top_k, 1...)`` (at least 3 axes); with ``out_max_val`` and no
  axis, channel 0 holds indices and channel 1 values; with ``out_max_val`` and
  an axis, only the values.
* **SegAccuracy** (DeepLab): prediction = argmax over channels with ties to
  the larger index; labels in ``ignore_label`` (repeated) are skipped, any
  other label outside ``[0, C)`` aborts in the fork (a :class:`DataError`
  here).  The confusion matrix is kept in a (non-persistent) buffer and
  cleared every forward unless ``reset: false``.  Outputs ``(1, 1, 1, 3)``:
  pixel accuracy (0 if empty), mean recall over classes with ground truth,
  mean IoU over **all** classes where a class with empty union counts 1.0.
* Metric layers (Accuracy, ArgMax, SegAccuracy) have no backward: their
  outputs carry no gradient.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..errors import DataError, ShapeError
from ..ops.losses import SigmoidCrossEntropyFunction, SoftmaxLossFunction
from ._common import count as _count, optional_int
from .base import Layer, register_layer
from .shape_ops import canonical_axis

FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3
_NORM_NAMES = {FULL: "FULL", VALID: "VALID", BATCH_SIZE: "BATCH_SIZE", NONE: "NONE"}


def _parse_normalization(layer: Layer, lp, default: int) -> int:
    if lp.HasField("normalization"):
        mode = int(lp.normalization)
    elif lp.HasField("normalize"):
        mode = VALID if lp.normalize else BATCH_SIZE
    else:
        mode = default
    if mode not in _NORM_NAMES:
        raise layer.error(f"loss_param.normalization {mode} is not FULL, VALID, BATCH_SIZE or NONE")
    return mode


def _normalizer(mode: int, full: int, batch: int, valid_count: torch.Tensor, dtype) -> torch.Tensor:
    """Caffe's ``get_normalizer``: ``max(1, n)`` as a 0-dim tensor of ``dtype``."""
    if mode == VALID:
        n = valid_count.to(dtype)
    else:
        n = torch.tensor(float({FULL: full, BATCH_SIZE: batch, NONE: 1}[mode]), dtype=dtype,
                         device=valid_count.device)
    return n.clamp_min(1.0)


def _truncated(label: torch.Tensor) -> torch.Tensor:
    """Labels truncated toward zero as C's ``static_cast<int>`` does (float; float64 for integer labels)."""
    return torch.trunc(label) if label.is_floating_point() else label.to(torch.float64)


def _label_mask(layer: Layer, label: torch.Tensor, num_classes: int, ignore: Optional[int]):
    """Truncate labels to int; return ``(index, valid)`` and raise DataError for bad labels.

    ``index`` is int64 with 0 at ignored positions; ``valid`` is a bool mask.
    """
    t = _truncated(label)
    ign = (t == ignore) if ignore is not None else torch.zeros_like(t, dtype=torch.bool)
    ok = (t >= 0) & (t < num_classes)
    bad = ~(ign | ok)
    if bool(bad.any()):
        first = label.detach()[bad].reshape(-1)[0]
        n_bad = int(bad.sum())
        extra = "" if ignore is None else f" and not the ignore_label {ignore}"
        raise layer.error(f"{n_bad} label(s) outside [0, {num_classes}){extra}, e.g. {float(first)!r}", DataError)
    index = torch.where(ign, torch.zeros_like(t), t).to(torch.int64)
    return index, ~ign


def _ranked_before(scores: torch.Tensor, label: torch.Tensor, dim: int) -> torch.Tensor:
    """How many classes rank before ``label`` under Caffe's ``(value, index)`` descending order.

    ``scores`` has the class axis ``dim``; ``label`` (int64) has size 1 there.
    A class ``k`` ranks before ``l`` iff ``s_k > s_l`` or (``s_k == s_l`` and ``k > l``).
    """
    c = scores.shape[dim]
    s_l = scores.gather(dim, label)
    shape = [1] * scores.dim()
    shape[dim] = c
    k = torch.arange(c, device=scores.device).reshape(shape)
    before = (scores > s_l) | ((scores == s_l) & (k > label))
    return before.sum(dim=dim, keepdim=True)


def _argmax_last_tie(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Argmax along ``dim`` with ties resolved toward the larger index (int64, keepdim)."""
    n = x.shape[dim]
    return (n - 1) - torch.argmax(torch.flip(x, dims=(dim,)), dim=dim, keepdim=True)


def _topk_last_tie(x: torch.Tensor, k: int, dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k values and indices along ``dim`` in Caffe's ``(value, index)`` descending order."""
    n = x.shape[dim]
    if k == 1:
        idx = _argmax_last_tie(x, dim)
        return x.gather(dim, idx), idx
    flipped = torch.flip(x, dims=(dim,))
    # stable descending sort of the flipped data: among equal values the larger original index comes first
    vals, fidx = torch.sort(flipped, dim=dim, descending=True, stable=True)
    idx = (n - 1) - fidx.narrow(dim, 0, k)
    return vals.narrow(dim, 0, k), idx


def _check_loss_bottoms(layer: Layer, s0, s1) -> None:
    if len(s0) and len(s1) and int(s0[0]) != int(s1[0]):
        raise layer.error(f"the data and label must have the same number (first axis): {list(s0)} vs {list(s1)}",
                          ShapeError)


def _outer_c_inner(layer: Layer, s0, s1, axis: int) -> Tuple[int, int, int]:
    """``(outer, C, inner)`` of scores ``s0`` around the class ``axis``; ``s1`` must hold ``outer * inner`` labels."""
    outer, c, inner = _count(s0, 0, axis), int(s0[axis]), _count(s0, axis + 1)
    if outer * inner != _count(s1):
        raise layer.error(f"number of labels ({_count(s1)}, shape {list(s1)}) must match the number of "
                          f"predictions outer*inner = {outer * inner} (scores {list(s0)}, axis {axis})",
                          ShapeError)
    return outer, c, inner


def _loss_top_count(layer: Layer) -> int:
    return max(len(layer.param.top), layer.auto_tops or 0)


class _LossLayer(Layer):
    """Two bottoms; one 0-axis loss top, produced even when the prototxt lists no top."""

    num_bottoms = (2, 2)
    num_tops = (1, 1)
    auto_tops = 1
    is_loss = True

    def _parse_loss_param(self, default_normalization: int) -> None:
        """``loss_param``: the optional ``ignore_label`` and the normalization mode."""
        lp = self.param.loss_param
        self.ignore_label: Optional[int] = optional_int(lp)
        self.normalization = _parse_normalization(self, lp, default_normalization)


@register_layer("Softmax")
class SoftmaxLayer(Layer):
    """``Softmax`` over ``softmax_param.axis`` (default 1): ``exp(x - max) / sum``."""

    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self._axis = int(param.softmax_param.axis)
        canonical_axis(self, self._axis, len(self.bottom_shapes[0]), "softmax_param.axis")

    def forward(self, x):
        axis = canonical_axis(self, self._axis, x.dim(), "softmax_param.axis")
        return (torch.softmax(x, dim=axis),)


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLossLayer(_LossLayer):
    """``SoftmaxWithLoss``: softmax + multinomial logistic loss; tops ``loss`` (0-axis) and optional ``prob``.

    Bottoms: scores (class axis ``softmax_param.axis``, default 1) and labels
    with ``outer * inner`` elements.
    """

    num_tops = (1, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self._parse_loss_param(VALID)
        self._axis = int(param.softmax_param.axis)
        self._geometry(self.bottom_shapes[0], self.bottom_shapes[1])

    def _geometry(self, s0, s1) -> Tuple[int, int, int, int]:
        axis = canonical_axis(self, self._axis, len(s0), "softmax_param.axis")
        _check_loss_bottoms(self, s0, s1)
        outer, c, inner = _outer_c_inner(self, s0, s1, axis)
        return axis, outer, c, inner

    def forward(self, scores, label):
        axis, outer, c, inner = self._geometry(tuple(scores.shape), tuple(label.shape))
        n_out = _loss_top_count(self)
        if scores.is_meta or label.is_meta:
            loss = scores.new_empty(())
            return (loss, scores.new_empty(scores.shape))[:n_out]
        s3 = scores.reshape(outer, c, inner)
        index, valid = _label_mask(self, label.reshape(outer, 1, inner), c, self.ignore_label)
        norm = _normalizer(self.normalization, outer * inner, outer, valid.sum(), scores.dtype)
        loss, prob = SoftmaxLossFunction.apply(s3, index, valid, norm)
        if n_out == 1:
            return (loss,)
        return (loss, prob.reshape(scores.shape))


@register_layer("EuclideanLoss")
class EuclideanLossLayer(_LossLayer):
    """``EuclideanLoss``: ``sum((a - b)^2) / N / 2`` (N = first axis); both bottoms get gradients."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self._check(self.bottom_shapes[0], self.bottom_shapes[1])

    def _check(self, s0, s1) -> None:
        if not len(s0) or not len(s1):
            raise self.error(f"bottoms need at least one axis, got {list(s0)} and {list(s1)}", ShapeError)
        _check_loss_bottoms(self, s0, s1)
        if _count(s0, 1) != _count(s1, 1):
            raise self.error(f"inputs must have the same dimension: {list(s0)} vs {list(s1)}", ShapeError)

    def forward(self, a, b):
        self._check(tuple(a.shape), tuple(b.shape))
        diff = a - b.reshape(a.shape)
        return ((diff * diff).sum() / int(a.shape[0]) / 2,)


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(_LossLayer):
    """``SigmoidCrossEntropyLoss``: cross-entropy of ``sigmoid(x)`` against targets in [0, 1].

    ``loss_param``: ``ignore_label`` (targets whose int value equals it are
    skipped), ``normalization`` (default BATCH_SIZE, see the module docstring).
    """

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self._parse_loss_param(BATCH_SIZE)
        self._check(self.bottom_shapes[0], self.bottom_shapes[1])

    def _check(self, s0, s1) -> None:
        if not len(s0):
            raise self.error(f"bottom 0 needs at least one axis, got {list(s0)}", ShapeError)
        _check_loss_bottoms(self, s0, s1)
        if _count(s0) != _count(s1):
            raise self.error(f"inputs must have the same count: {list(s0)} vs {list(s1)}", ShapeError)

    def forward(self, x, target):
        self._check(tuple(x.shape), tuple(target.shape))
        if x.is_meta or target.is_meta:
            return (x.new_empty(()),)
        t = target.reshape(x.shape).to(x.dtype)
        if self.ignore_label is not None:
            valid = torch.trunc(t) != self.ignore_label
        else:
            valid = torch.ones_like(t, dtype=torch.bool)
        n = int(x.shape[0])
        norm = _normalizer(self.normalization, x.numel(), n, valid.sum(), x.dtype)
        return (SigmoidCrossEntropyFunction.apply(x, t, valid, norm),)


@register_layer("Accuracy")
class AccuracyLayer(Layer):
    """``Accuracy``: top-k classification accuracy (0-axis top) and optional per-class accuracy ``(C,)``."""

    num_bottoms = (2, 2)
    num_tops = (1, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        ap = param.accuracy_param
        self.top_k = int(ap.top_k)
        if self.top_k < 1:
            raise self.error(f"accuracy_param.top_k must be >= 1, got {self.top_k}")
        self.ignore_label: Optional[int] = optional_int(ap)
        self._axis = int(ap.axis)
        self._geometry(self.bottom_shapes[0], self.bottom_shapes[1])

    def _geometry(self, s0, s1):
        axis = canonical_axis(self, self._axis, len(s0), "accuracy_param.axis")
        outer, c, inner = _outer_c_inner(self, s0, s1, axis)
        if self.top_k > c:
            raise self.error(f"accuracy_param.top_k ({self.top_k}) must be <= the number of classes ({c})")
        return axis, outer, c, inner

    @torch.no_grad()
    def forward(self, scores, label):
        axis, outer, c, inner = self._geometry(tuple(scores.shape), tuple(label.shape))
        n_out = self.n_listed_tops
        if scores.is_meta or label.is_meta:
            return (scores.new_empty(()), scores.new_empty((c,)))[:n_out]
        s3 = scores.detach().reshape(outer, c, inner)
        index, valid = _label_mask(self, label.detach().reshape(outer, 1, inner).to(s3.dtype), c,
                                   self.ignore_label)
        hit = (_ranked_before(s3, index, 1) < self.top_k) & valid
        count = valid.sum()
        acc = hit.sum().to(scores.dtype) / count.to(scores.dtype)  # 0/0 = NaN, as in Caffe
        if n_out == 1:
            return (acc,)
        lab = index[valid]
        nums = torch.bincount(lab, minlength=c).to(scores.dtype)
        hits = torch.bincount(index[hit], minlength=c).to(scores.dtype)
        per_class = torch.where(nums == 0, torch.zeros_like(nums), hits / nums.clamp_min(1))
        return (acc, per_class)


@register_layer("ArgMax")
class ArgMaxLayer(Layer):
    """``ArgMax``: indices (and/or values) of the ``top_k`` largest entries.

    With ``axis``: along that axis (top shape = bottom shape with ``top_k``
    there; values instead of indices if ``out_max_val``).  Without: over each
    flattened image (top ``(N, 1 or 2, top_k, 1, ...)``).
    """

    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        ap = param.argmax_param
        self.out_max_val = bool(ap.out_max_val)
        self.top_k = int(ap.top_k)
        if self.top_k < 1:
            raise self.error(f"argmax_param.top_k must be >= 1, got {self.top_k}")
        self.has_axis = ap.HasField("axis")
        self._axis = int(ap.axis)
        self.top_shape(self.bottom_shapes[0])

    def top_shape(self, shape) -> Tuple[int, ...]:
        shape = tuple(int(d) for d in shape)
        if self.has_axis:
            axis = canonical_axis(self, self._axis, len(shape), "argmax_param.axis")
            if self.top_k > shape[axis]:
                raise self.error(f"argmax_param.top_k ({self.top_k}) must be <= the size of axis {axis} "
                                 f"({shape[axis]})")
            return shape[:axis] + (self.top_k,) + shape[axis + 1:]
        if not len(shape):
            raise self.error("bottom needs at least one axis", ShapeError)
        if self.top_k > _count(shape, 1):
            raise self.error(f"argmax_param.top_k ({self.top_k}) must be <= the size of one flattened image "
                             f"({_count(shape, 1)})")
        out = [1] * max(3, len(shape))
        out[0] = shape[0]
        out[2] = self.top_k
        if self.out_max_val:
            out[1] = 2
        return tuple(out)

    @torch.no_grad()
    def forward(self, x):
        shape = self.top_shape(tuple(x.shape))
        if x.is_meta:
            return (x.new_empty(shape),)
        x = x.detach()
        if self.has_axis:
            axis = canonical_axis(self, self._axis, x.dim(), "argmax_param.axis")
            vals, idx = _topk_last_tie(x, self.top_k, axis)
            return ((vals if self.out_max_val else idx.to(x.dtype)).contiguous(),)
        flat = x.reshape(int(x.shape[0]), -1)
        vals, idx = _topk_last_tie(flat, self.top_k, 1)
        if self.out_max_val:
            out = torch.cat([idx.to(x.dtype), vals], dim=1)
        else:
            out = idx.to(x.dtype)
        return (out.reshape(shape),)


@register_layer("SegAccuracy")
class SegAccuracyLayer(Layer):
    """DeepLab ``SegAccuracy``: confusion-matrix metrics of a dense prediction, top ``(1, 1, 1, 3)``.

    Bottoms: scores ``(N, C, H, W)`` and labels ``(N, 1, H, W)``.  The
    confusion matrix ``M[gt, pred]`` (int64 ``(C, C)``) is the buffer
    ``confusion``.
    """

    exportable = False  # its confusion matrix is state kept across forwards
    num_bottoms = (2, 2)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        sp = param.seg_accuracy_param
        self.ignore_labels = sorted({int(v) for v in sp.ignore_label})
        self.reset = bool(sp.reset)
        self._check(self.bottom_shapes[0], self.bottom_shapes[1])
        self.num_classes = int(self.bottom_shapes[0][1])
        dev = ctx.device if torch.device(ctx.device).type != "meta" else "cpu"
        self.register_buffer("confusion", torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64,
                                                      device=dev), persistent=False)

    def _check(self, s0, s1) -> None:
        if len(s0) != 4 or len(s1) != 4:
            raise self.error(f"scores and labels must be 4-D (N, C, H, W) and (N, 1, H, W), got {list(s0)} "
                             f"and {list(s1)}", ShapeError)
        if s0[1] < 1:
            raise self.error(f"scores need at least one channel (class), got {list(s0)}", ShapeError)
        if s1[1] != 1:
            raise self.error(f"the label must have one channel, got {list(s1)}", ShapeError)
        if (s0[0], s0[2], s0[3]) != (s1[0], s1[2], s1[3]):
            raise self.error(f"scores {list(s0)} and labels {list(s1)} must have the same N, H and W", ShapeError)

    def reset_confusion(self) -> None:
        """Clear the accumulated confusion matrix."""
        self.confusion.zero_()

    @torch.no_grad()
    def forward(self, scores, label):
        self._check(tuple(scores.shape), tuple(label.shape))
        c = int(scores.shape[1])
        if c != self.num_classes:
            raise self.error(f"scores have {c} channels but the layer was built for {self.num_classes} classes",
                             ShapeError)
        if scores.is_meta or label.is_meta:
            return (scores.new_empty((1, 1, 1, 3)),)
        if self.confusion.device != scores.device:
            self.confusion = self.confusion.to(scores.device)
        if self.reset:
            self.confusion.zero_()
        pred = _argmax_last_tie(scores.detach(), 1)  # (N, 1, H, W)
        t = _truncated(label.detach())
        ign = torch.zeros_like(t, dtype=torch.bool)
        for v in self.ignore_labels:
            ign |= t == v
        ok = (t >= 0) & (t < c)
        bad = ~(ign | ok)
        if bool(bad.any()):
            raise self.error(f"unexpected label {float(label[bad].reshape(-1)[0])!r} (not in [0, {c}) and not an "
                             f"ignore_label {self.ignore_labels})", DataError)
        gt = t[~ign].to(torch.int64)
        pr = pred[~ign]
        self.confusion += torch.bincount(gt * c + pr, minlength=c * c).reshape(c, c)
        m = self.confusion.to(torch.float64)
        total, diag = m.sum(), torch.diagonal(m).sum()
        acc = torch.where(total > 0, diag / total.clamp_min(1), torch.zeros_like(total))
        rows, cols, d = m.sum(1), m.sum(0), torch.diagonal(m)
        has = rows > 0
        n_cls = has.sum()
        recall = torch.where(has, d / rows.clamp_min(1), torch.zeros_like(d)).sum()
        recall = torch.where(n_cls > 0, recall / n_cls.clamp_min(1), torch.zeros_like(recall))
        union = rows + cols - d
        iou = torch.where(d == union, torch.ones_like(d), d / torch.where(union == 0, torch.ones_like(union), union))
        jac = iou.sum() / c
        out = torch.stack([acc, recall, jac]).to(scores.dtype).reshape(1, 1, 1, 3)
        return (out,)
