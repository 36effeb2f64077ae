"""The fork's ``Scale`` parameter gradient when it *overwrites* instead of accumulating.

Caffe's ``ScaleLayer::Backward_cpu`` writes the learned scale's diff with a
``gemv`` whose beta is 0 when ``outer_dim == 1`` (e.g. batch size 1 with
``axis: 1``), or writes the elementwise product straight into the diff when the
scale has as many elements as the bottom.  In those cases the diff is
*replaced*, not added to: with a parameter shared by several Scale layers (the
res configs share every BN-Scale across the three input scales), the diff that
survives one backward is the one of the sharer that runs backward last, i.e.
the first of them in net order; with ``iter_size > 1`` only the last pass
survives.  The goldens record this, and the project follows the goldens.  In
every other case Caffe accumulates and so does this port.

:func:`scale_overwrite_grad` computes ``x * s`` with that rule: the input
gradient is the ordinary ``dy * s``, while the parameter's ``.grad`` is
assigned (not accumulated) from inside the backward.  Autograd runs the
backward of an earlier layer after the later ones that feed it, which is the
order in which Caffe's backward overwrote the diff.
"""
from __future__ import annotations

import torch


class _ScaleOverwriteGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s_view, param, sum_dims):
        ctx.save_for_backward(x, s_view)
        ctx.param = param
        ctx.sum_dims = sum_dims
        return x * s_view

    @staticmethod
    def backward(ctx, gy):
        x, s_view = ctx.saved_tensors
        gx = gy * s_view if ctx.needs_input_grad[0] else None
        param = ctx.param
        if param.requires_grad:
            ds = (gy * x).sum(dim=ctx.sum_dims) if ctx.sum_dims else gy * x
            param.grad = ds.reshape(param.shape).detach().clone()
        return gx, None, None, None


def scale_overwrite_grad(x: torch.Tensor, s_view: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    """``x * s_view`` where ``s_view`` is ``param`` reshaped to broadcast against ``x``.

    Args:
        x: bottom, any shape.
        s_view: ``param.detach()`` viewed with singleton axes so it broadcasts to ``x``.
        param: the learned scale blob; its ``.grad`` is overwritten in backward.
    """
    s_view = s_view.reshape((1,) * (x.dim() - s_view.dim()) + tuple(s_view.shape))
    sum_dims = tuple(i for i in range(x.dim()) if s_view.shape[i] == 1 and x.shape[i] != 1)
    return _ScaleOverwriteGrad.apply(x, s_view, param, sum_dims)
