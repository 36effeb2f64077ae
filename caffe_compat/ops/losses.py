"""Custom autograd Functions for Caffe's SoftmaxWithLoss and SigmoidCrossEntropyLoss.

Both compute Caffe's backward formula directly instead of differentiating the
forward expression:

* **SoftmaxWithLoss**: forward ``loss = -sum_valid log(max(prob[label], FLT_MIN)) / normalizer``;
  backward ``dscores = (prob - onehot(label)) * g / normalizer`` at valid
  positions, 0 at ignored ones.  Where ``prob[label] < FLT_MIN`` the clamp makes
  the forward flat, but Caffe still returns ``prob - onehot`` -- the port
  follows Caffe (this is the one place the gradient is not the derivative of
  the forward).  ``FLT_MIN`` is the float32 constant for float64 data too
  (Caffe writes ``Dtype(FLT_MIN)``).  The ``prob`` output is
  non-differentiable: Caffe's backward never reads the diff of the optional
  ``prob`` top, so a gradient arriving there is dropped, as in Caffe.
* **SigmoidCrossEntropyLoss**: Caffe's stable forward
  ``-sum_valid [x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0]))] / normalizer``
  and backward ``(sigmoid(x) - t) * g / normalizer`` (0 at ignored targets).

Neither back-propagates to the labels/targets (Caffe aborts if asked to; the
port returns no gradient for them).
"""
from __future__ import annotations

import torch

__all__ = ["FLT_MIN", "SoftmaxLossFunction", "SigmoidCrossEntropyFunction"]

#: C's FLT_MIN (smallest positive normal float32), used by Caffe for both Dtypes.
FLT_MIN = 1.1754943508222875e-38


class SoftmaxLossFunction(torch.autograd.Function):
    """``SoftmaxLossFunction.apply(scores, label, valid, normalizer) -> (loss, prob)``.

    Args (all on one device):
        scores: ``(outer, C, inner)`` floating tensor.
        label: ``(outer, 1, inner)`` int64 class indices in ``[0, C)`` (any
            value in ``[0, C)`` at ignored positions).
        valid: ``(outer, 1, inner)`` bool, False at ignored positions.
        normalizer: 0-dim tensor of the scores' dtype (Caffe's normaliser, >= 1).

    Returns:
        ``loss`` (0-dim) and ``prob`` = softmax over axis 1 (non-differentiable).
    """

    @staticmethod
    def forward(ctx, scores, label, valid, normalizer):
        prob = torch.softmax(scores, dim=1)
        p = prob.gather(1, label).clamp_min(FLT_MIN)
        nll = torch.where(valid, -torch.log(p), torch.zeros((), dtype=p.dtype, device=p.device))
        loss = nll.sum() / normalizer
        ctx.save_for_backward(prob, label, valid, normalizer)
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss, g_prob):
        prob, label, valid, normalizer = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        d = prob.clone()
        d.scatter_add_(1, label, -valid.to(d.dtype))
        d = torch.where(valid, d, torch.zeros((), dtype=d.dtype, device=d.device))
        # Caffe: loss_weight = top_diff / normalizer, then scale the diff by it
        return d * (g_loss / normalizer), None, None, None


class SigmoidCrossEntropyFunction(torch.autograd.Function):
    """``SigmoidCrossEntropyFunction.apply(x, target, valid, normalizer) -> loss``.

    ``x`` and ``target`` have the same shape; ``valid`` is a bool mask of the
    same shape (False at ignored targets); ``normalizer`` a 0-dim tensor.
    """

    @staticmethod
    def forward(ctx, x, target, valid, normalizer):
        pos = (x >= 0).to(x.dtype)
        term = x * (target - pos) - torch.log(1 + torch.exp(x - 2 * x * pos))
        term = torch.where(valid, term, torch.zeros((), dtype=x.dtype, device=x.device))
        loss = -term.sum() / normalizer
        ctx.save_for_backward(x, target, valid, normalizer)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, target, valid, normalizer = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        d = torch.sigmoid(x) - target
        d = torch.where(valid, d, torch.zeros((), dtype=d.dtype, device=d.device))
        return d * (g / normalizer), None, None, None
