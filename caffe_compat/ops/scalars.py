"""Scalar constants computed the way Caffe computes them: in the layer's ``Dtype``.

Caffe stores ``float`` proto fields and derives constants such as
``inner_scale = log(base) * scale`` (Exp) or ``diff_scale = power * scale``
(Power) in ``Dtype`` arithmetic, i.e. float32 for the original nets.  For a
float32 tensor the port rounds every intermediate constant to float32 the same
way (a float32 product of two float32 values is exact in float64 and then
rounded once, which is IEEE float32 multiplication); for float64 tensors the
constants are kept in float64 (what ``Dtype = double`` would do).

The difference is at most an ulp of the constant, but it is relative error in
every output element (``exp(inner * x)`` for large ``|x|``), so it is not left
to chance.

The helpers use numpy scalars (``np.float32`` rounding, ``np.errstate``), which
dynamo cannot trace; their arguments are layer parameters and dtypes, constants
of a graph, so they are marked ``torch.compiler.assume_constant_result``:
``torch.compile`` calls them at trace time and bakes the result in.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

#: ``FLT_MAX`` of C (the largest finite float32), used by Caffe as -infinity in MAX pooling.
FLT_MAX = float(np.finfo(np.float32).max)


def is_single(dtype: torch.dtype) -> bool:
    """True when Caffe's ``Dtype`` for this tensor dtype is ``float`` (anything but float64)."""
    return dtype != torch.float64


@torch.compiler.assume_constant_result
def rnd(value: float, dtype: torch.dtype) -> float:
    """Round a Python float to the precision of Caffe's ``Dtype`` for ``dtype``."""
    if is_single(dtype):
        with np.errstate(over="ignore", invalid="ignore"):
            return float(np.float32(value))
    return float(value)


@torch.compiler.assume_constant_result
def mul(a: float, b: float, dtype: torch.dtype) -> float:
    """``a * b`` in ``Dtype`` arithmetic (both operands first rounded to ``Dtype``)."""
    return rnd(rnd(a, dtype) * rnd(b, dtype), dtype)


@torch.compiler.assume_constant_result
def div(a: float, b: float, dtype: torch.dtype) -> float:
    """``a / b`` in ``Dtype`` arithmetic (IEEE: x/0 = +-inf, 0/0 = nan)."""
    a, b = rnd(a, dtype), rnd(b, dtype)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return rnd(float(np.float64(a) / np.float64(b)), dtype)


@torch.compiler.assume_constant_result
def func(f: Callable[[np.ndarray], np.ndarray], *args: float, dtype: torch.dtype) -> float:
    """Apply a numpy function to ``Dtype``-rounded arguments in float64 and round the result.

    C's ``logf``/``powf`` are (nearly always) correctly rounded, which is what
    evaluating in float64 and rounding once gives.  Domain errors give NaN or
    +-inf as in C, never a Python exception.
    """
    vals = [np.float64(rnd(a, dtype)) for a in args]
    with np.errstate(all="ignore"):
        return rnd(float(f(*vals)), dtype)


def isfinite(v: float) -> bool:
    return math.isfinite(v)
