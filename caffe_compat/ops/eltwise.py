"""Custom autograd Functions for Caffe's ``Eltwise`` PROD and MAX.

Why not plain torch autograd:

* **MAX**: ``torch.maximum`` splits the gradient evenly between tied inputs;
  the fork routes it to exactly one bottom through an argmax mask.  The
  goldens record the fork's CPU rule: between bottoms 0 and 1 the tie goes to
  **bottom 1** (the test is ``a > b``, strict), and a later bottom ``i >= 2``
  wins only if it is **strictly greater** than the running maximum.  (The
  fork's GPU code sends every tie to the later bottom; the project follows the
  goldens, i.e. the CPU rule, on every device.)  ``NaN`` follows the same
  comparisons: ``a > NaN`` is false, so a NaN in bottom 1 wins over bottom 0.
* **PROD**: with ``stable_prod_grad: true`` (default) the fork computes
  ``dx_i = (prod_{j != i} x_j, multiplied left to right) * dy``; with
  ``stable_prod_grad: false`` it computes ``dx_i = (y / x_i) * dy``, which is
  *not* the derivative where ``x_i == 0`` (``0/0 = NaN``).  The Function
  reproduces both exactly, in the fork's order of operations.
"""
from __future__ import annotations

import torch

__all__ = ["EltwiseMaxFunction", "EltwiseProdFunction", "eltwise_max", "eltwise_prod"]


def _max_forward(xs):
    a, b = xs[0], xs[1]
    take_a = a > b
    top = torch.where(take_a, a, b)
    # mask: index of the winning bottom (int8 is enough for < 128 bottoms; int16 otherwise)
    mdtype = torch.int8 if len(xs) < 128 else torch.int16
    mask = torch.where(take_a, torch.zeros((), dtype=mdtype, device=a.device),
                       torch.ones((), dtype=mdtype, device=a.device))
    for i in range(2, len(xs)):
        gt = xs[i] > top
        top = torch.where(gt, xs[i], top)
        mask = torch.where(gt, torch.full((), i, dtype=mdtype, device=a.device), mask)
    return top, mask


class EltwiseMaxFunction(torch.autograd.Function):
    """``EltwiseMaxFunction.apply(x0, x1, ...)``: elementwise max with the fork's CPU tie rule."""

    @staticmethod
    def forward(ctx, *xs):
        top, mask = _max_forward(xs)
        ctx.save_for_backward(mask)
        ctx.n = len(xs)
        return top

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        zero = g.new_zeros(())
        return tuple(torch.where(mask == i, g, zero) if ctx.needs_input_grad[i] else None
                     for i in range(ctx.n))


class EltwiseProdFunction(torch.autograd.Function):
    """``EltwiseProdFunction.apply(stable, x0, x1, ...)``: product with the fork's backward."""

    @staticmethod
    def forward(ctx, *args):
        # one star-argument (not ``stable, *xs``): dynamo mis-binds a named argument before
        # ``*xs`` in an autograd.Function (torch 2.13), and fullgraph compiles must trace this
        stable, xs = args[0], args[1:]
        top = xs[0] * xs[1]
        for x in xs[2:]:
            top = top * x
        ctx.stable = bool(stable)
        if ctx.stable:
            ctx.save_for_backward(*xs)
        else:
            ctx.save_for_backward(top, *xs)
        return top

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        saved = ctx.saved_tensors
        grads = [None]
        if ctx.stable:
            xs = saved
            for i in range(len(xs)):
                if not ctx.needs_input_grad[i + 1]:
                    grads.append(None)
                    continue
                acc = None
                for j, xj in enumerate(xs):
                    if j == i:
                        continue
                    acc = xj.clone() if acc is None else xj * acc
                grads.append(acc * g)
        else:
            top, xs = saved[0], saved[1:]
            for i, xi in enumerate(xs):
                grads.append((top / xi) * g if ctx.needs_input_grad[i + 1] else None)
        return tuple(grads)


def eltwise_max(*xs: torch.Tensor) -> torch.Tensor:
    """Elementwise max of >= 2 same-shaped tensors (fork's CPU tie rule; meta-safe)."""
    if xs[0].is_meta:
        return torch.empty_like(xs[0])
    return EltwiseMaxFunction.apply(*xs)


def eltwise_prod(*xs: torch.Tensor, stable: bool = True) -> torch.Tensor:
    """Elementwise product of >= 2 same-shaped tensors with the fork's backward (meta-safe)."""
    if xs[0].is_meta:
        return torch.empty_like(xs[0])
    return EltwiseProdFunction.apply(bool(stable), *xs)
