"""The fork's ``DistLoss``: a contrastive hinge on windowed embedding distances.

Shapes: ``dist`` and ``parity`` both ``(N, K, H, W)`` (any shape, in fact, as
long as both are equal; the first axis is the batch); output: a 0-dim loss.

Forward (LAYERS.md §2.4, the fork's CPU code): with ``p = int(parity)`` (C
truncation) and ``count = dist.numel()`` (**all** entries, ignored ones too):

* ``ignore_label`` set and ``p == ignore_label`` -> skipped (0);
* ``p != 0`` (similar pair):    ``m = max(dist - alpha, 0)``, ``g = +m``;
* ``p == 0`` (dissimilar pair): ``m = max(beta - dist, 0)``,  ``g = -m``;

``loss = sum(m) / count``.

Backward (custom :class:`DistLossFunction`): ``d dist = g / count`` — this is
**not** the derivative of the reported hinge loss (it is the gradient of
``0.5 * m**2 / count``), and it **ignores the incoming gradient** (the loss
weight), exactly as the fork: a ``loss_weight: 0.5`` gives the same bottom
gradient as weight 1.  The parity input gets no gradient.

``first_image_only=True`` reproduces the fork's GPU bug (opt-in, off by
default): the CUDA kernel has no batch offset, so only image 0 contributes loss
and gradient, while ``count`` still includes the whole batch.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .. import cuda, cuda_ops
from ..errors import ShapeError
from .im2parity import as_c_int

__all__ = ["dist_loss", "dist_loss_terms", "DistLossFunction"]


def dist_loss_terms(dist: torch.Tensor, parity: torch.Tensor, alpha: float, beta: float,
                    ignore_label: Optional[int] = None, first_image_only: bool = False):
    """Per-entry margins ``m >= 0`` and signed stored gradients ``g`` (before ``/count``).

    Returns ``(m, g)``, both shaped like ``dist``.
    """
    with torch.no_grad():
        dist = dist.detach()
        # int64 compare = the fork's int comparison (no float rounding of large labels)
        p = parity.detach().to(dist.device).trunc().to(torch.int64)
        similar = p != 0
        m_sim = (dist - alpha).clamp_min_(0)
        m_dis = (beta - dist).clamp_min_(0)
        m = torch.where(similar, m_sim, m_dis)
        g = torch.where(similar, m_sim, m_dis.neg_())
        skip = None
        if ignore_label is not None:
            skip = p == as_c_int(ignore_label)
        if first_image_only and dist.shape[0] > 1:
            rest = torch.zeros_like(similar)
            rest[1:] = True
            skip = rest if skip is None else (skip | rest)
        if skip is not None:
            m.masked_fill_(skip, 0)
            g.masked_fill_(skip, 0)
    return m, g


class DistLossFunction(torch.autograd.Function):
    """Loss value of the fork; backward ``g / count`` regardless of the incoming gradient.

    The gradient deliberately is not the derivative of the forward (see the
    module docstring), so it is tested against the explicit formula instead of
    ``gradcheck``.
    """

    @staticmethod
    def forward(ctx, dist, parity, alpha, beta, ignore_label, first_image_only):
        backend = cuda.backend_for(dist)  # [cuda dispatch]
        ign = None if ignore_label is None else as_c_int(ignore_label)
        if backend is not None:
            m = cuda_ops.dist_loss_margins(backend, dist, parity, alpha, beta, ign, first_image_only)
        else:
            m, _ = dist_loss_terms(dist, parity, alpha, beta, ignore_label, first_image_only)
        count = dist.numel()
        ctx.params = (alpha, beta, ignore_label, first_image_only)
        # Save the inputs (kept alive by the net anyway), recompute g in backward.
        ctx.save_for_backward(dist, parity)
        return m.sum() / count  # 0/0 = NaN for an empty input, as the fork

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        # grad_loss (the loss weight) is ignored on purpose: the fork never reads its top diff.
        dist, parity = ctx.saved_tensors
        ddist = None
        backend = cuda.backend_for(dist)  # [cuda dispatch]
        if ctx.needs_input_grad[0] and backend is not None:
            alpha, beta, ignore_label, first = ctx.params
            ign = None if ignore_label is None else as_c_int(ignore_label)
            ddist = cuda_ops.dist_loss_gradient(backend, dist, parity, alpha, beta, ign, first)
        elif ctx.needs_input_grad[0]:
            _, g = dist_loss_terms(dist, parity, *ctx.params)
            count = dist.numel()
            # the fork scales by Dtype(1)/count (a multiplication, not a division)
            ddist = g.mul_(1.0 / count) if count else g
        return ddist, None, None, None, None, None


def dist_loss(dist: torch.Tensor, parity: torch.Tensor, alpha: float, beta: float,
              ignore_label: Optional[int] = None, first_image_only: bool = False) -> torch.Tensor:
    """The DistLoss value (0-dim tensor in the dtype of ``dist``); see the module docstring.

    Raises:
        ShapeError: ``dist`` and ``parity`` shapes differ.
    """
    if tuple(dist.shape) != tuple(parity.shape):
        raise ShapeError(f"dist_loss: dist shape {list(dist.shape)} and parity shape "
                         f"{list(parity.shape)} must be identical")
    if dist.is_meta:
        return dist.new_empty(())
    return DistLossFunction.apply(dist, parity, float(alpha), float(beta), ignore_label,
                                  bool(first_image_only))
