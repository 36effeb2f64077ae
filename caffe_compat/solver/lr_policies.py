"""Learning-rate policies with the fork's exact float32 arithmetic (``SGDSolver::GetLearningRate``).

``t`` is the number of completed updates (the solver's ``iter``).  The rounding
of each policy follows what the fork computes, so the rate is bit-identical to
the one it logged (golden ``lr/<i>``):

* ``step``, ``exp``, ``multistep``: ``pow(float gamma, int k)`` is a *double*
  pow, one rounding to float32 at the end;
* ``poly``, ``inv``, ``sigmoid``: float32 arithmetic throughout (``powf``,
  ``expf``), every intermediate rounded to float32.

``multistep`` keeps a step counter that advances at most once per call, when
``t >= stepvalue[current_step]`` (so it is solver *state*, saved in snapshots).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
from typing import Tuple

import numpy as np

from ..errors import SolverError

#: lr_policy names the fork implements.
POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

_f32 = np.float32


def _load_libm():
    """The C library's ``powf``/``expf`` (what the fork calls); ``None`` where unavailable."""
    name = ctypes.util.find_library("m")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        lib = None
    if lib is None:
        return None, None
    powf, expf = lib.powf, lib.expf
    powf.restype, powf.argtypes = ctypes.c_float, [ctypes.c_float, ctypes.c_float]
    expf.restype, expf.argtypes = ctypes.c_float, [ctypes.c_float]
    return powf, expf


_POWF, _EXPF = _load_libm()


def _powf(x, y) -> np.float32:
    """float32 ``powf`` of the C library (numpy's float32 power can differ by one ulp)."""
    if _POWF is None:  # pragma: no cover - no libm: correctly rounded double pow, then float32
        return _f32(math.pow(float(x), float(y)))
    return _f32(_POWF(float(x), float(y)))


def _expf(x) -> np.float32:
    if _EXPF is None:  # pragma: no cover
        return _f32(math.exp(float(x)))
    return _f32(_EXPF(float(x)))


def _pow_double(gamma: float, k: int) -> float:
    """``std::pow(float, int)``: promoted to double."""
    return float(np.float64(_f32(gamma)) ** k)


def learning_rate(cfg, t: int, current_step: int) -> Tuple[float, int]:
    """The rate of the update that follows ``t`` completed ones.

    Args:
        cfg: a ``SolverParameter`` (fields ``lr_policy``, ``base_lr``, ``gamma``,
            ``power``, ``stepsize``, ``stepvalue``, ``max_iter``).
        t: completed updates.
        current_step: the step counter (``step``: recomputed; ``multistep``: advanced here).

    Returns:
        ``(rate as a float32 value in a Python float, new current_step)``.
    """
    policy = cfg.lr_policy
    base = _f32(cfg.base_lr)
    if policy == "fixed":
        rate = base
    elif policy == "step":
        current_step = t // int(cfg.stepsize)
        rate = _f32(float(base) * _pow_double(cfg.gamma, current_step))
    elif policy == "exp":
        rate = _f32(float(base) * _pow_double(cfg.gamma, t))
    elif policy == "inv":
        inner = _f32(_f32(1) + _f32(_f32(cfg.gamma) * _f32(t)))
        rate = _f32(base * _powf(inner, -_f32(cfg.power)))
    elif policy == "multistep":
        if current_step < len(cfg.stepvalue) and t >= cfg.stepvalue[current_step]:
            current_step += 1
        rate = _f32(float(base) * _pow_double(cfg.gamma, current_step))
    elif policy == "poly":
        frac = _f32(_f32(t) / _f32(cfg.max_iter))
        rate = _f32(base * _powf(_f32(_f32(1) - frac), cfg.power))
    elif policy == "sigmoid":
        z = _f32(_f32(-_f32(cfg.gamma)) * _f32(_f32(t) - _f32(cfg.stepsize)))
        rate = _f32(base * _f32(_f32(1) / _f32(_f32(1) + _expf(z))))
    else:
        raise SolverError(f"unknown lr_policy {policy!r}; known: {', '.join(POLICIES)}")
    return float(rate), int(current_step)
