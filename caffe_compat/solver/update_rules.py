"""The fork's per-blob update rules (``SGDSolver::ComputeUpdateValue`` and its subclasses).

Each rule turns the prepared gradient ``g`` of one learnable blob (already
clipped, divided by ``iter_size`` and regularised) into the value the solver
subtracts from the blob, updating the blob's history in place.  Arithmetic is
elementwise float32 in the fork's order of operations.

History slots (what a ``.solverstate`` stores, in this order):

========== ===================== ====================
rule       slot 0                slot 1
========== ===================== ====================
SGD        momentum buffer h     —
Nesterov   h                     —
AdaGrad    sum of g²             —
RMSProp    running mean of g²    —
AdaDelta   running mean of g²    running mean of u²
Adam       m (first moment)      v (second moment)
========== ===================== ====================
"""
from __future__ import annotations

import math
from typing import Dict, List, Type

import torch

from ..errors import SolverError


class UpdateRule:
    """Base class; ``slots`` history tensors per blob, shaped like the blob."""

    type_name = ""
    slots = 1

    def __init__(self, cfg, where: str = "<solver>"):
        self.momentum = float(cfg.momentum)
        self.delta = float(cfg.delta)
        self.check(cfg, where)

    def check(self, cfg, where: str) -> None:
        """Refuse settings the fork's rule refuses (it CHECK-fails)."""

    def update(self, g: torch.Tensor, hist: List[torch.Tensor], local_rate: float, t: int) -> torch.Tensor:
        """The value to subtract: ``g`` (may be overwritten), history ``hist`` updated in place.

        Args:
            g: prepared gradient, float tensor.
            hist: this blob's history slots.
            local_rate: ``rate * lr_mult`` (float32 value).
            t: completed updates before this one.
        """
        raise NotImplementedError


class SGD(UpdateRule):
    """``h = momentum*h + local_rate*g``; subtract ``h``."""

    type_name = "SGD"

    def update(self, g, hist, local_rate, t):
        h = hist[0]
        h.mul_(self.momentum).add_(g, alpha=local_rate)
        return h.clone()


class Nesterov(UpdateRule):
    """``h' = momentum*h + local_rate*g``; subtract ``(1+momentum)*h' - momentum*h``."""

    type_name = "Nesterov"

    def update(self, g, hist, local_rate, t):
        h = hist[0]
        previous = h.clone()
        h.mul_(self.momentum).add_(g, alpha=local_rate)
        return h * (1.0 + self.momentum) - previous * self.momentum


def _momentum_must_be_zero(rule: str, cfg, where: str) -> None:
    if cfg.momentum != 0:
        raise SolverError(f"{where}: momentum: {rule} cannot be used with momentum "
                          f"(the fork requires momentum 0, got {cfg.momentum})")


class AdaGrad(UpdateRule):
    """``H += g²``; subtract ``local_rate * g / (sqrt(H) + delta)``."""

    type_name = "AdaGrad"

    def check(self, cfg, where):
        _momentum_must_be_zero("AdaGrad", cfg, where)

    def update(self, g, hist, local_rate, t):
        H = hist[0]
        H.add_(g * g)
        return (g / (H.sqrt() + self.delta)) * local_rate


class RMSProp(UpdateRule):
    """``H = (1-rms_decay)*g² + rms_decay*H``; subtract ``local_rate * g / (sqrt(H) + delta)``.

    ``rms_decay`` has no default in the fork's schema: unset it is 0.
    """

    type_name = "RMSProp"

    def __init__(self, cfg, where="<solver>"):
        super().__init__(cfg, where)
        self.rms_decay = float(cfg.rms_decay)

    def check(self, cfg, where):
        _momentum_must_be_zero("RMSProp", cfg, where)
        if not 0 <= cfg.rms_decay <= 1:
            raise SolverError(f"{where}: rms_decay must be in [0, 1], got {cfg.rms_decay}")

    def update(self, g, hist, local_rate, t):
        H = hist[0]
        H.mul_(self.rms_decay).add_(g * g, alpha=1.0 - self.rms_decay)
        return (g / (H.sqrt() + self.delta)) * local_rate


class AdaDelta(UpdateRule):
    """``Eg = (1-m)g² + m*Eg``; ``u = g*sqrt((Edx+delta)/(Eg+delta))``; ``Edx = (1-m)u² + m*Edx``; subtract ``local_rate*u``."""

    type_name = "AdaDelta"
    slots = 2

    def update(self, g, hist, local_rate, t):
        eg, edx = hist
        m = self.momentum
        eg.mul_(m).add_(g * g, alpha=1.0 - m)
        u = g * ((edx + self.delta) / (eg + self.delta)).sqrt()
        edx.mul_(m).add_(u * u, alpha=1.0 - m)
        return u * local_rate


class Adam(UpdateRule):
    """Adam with ``beta1 = momentum`` (0 when unset, as in the embs solver), ``beta2 = momentum2``.

    ``m = b1*m + (1-b1)g``, ``v = b2*v + (1-b2)g²``, subtract
    ``local_rate * sqrt(1-b2^k)/(1-b1^k) * m / (sqrt(v) + delta)`` with ``k = t + 1``.
    """

    type_name = "Adam"
    slots = 2

    def __init__(self, cfg, where="<solver>"):
        super().__init__(cfg, where)
        self.beta2 = float(cfg.momentum2)

    def check(self, cfg, where):
        if not 0 <= cfg.momentum < 1:
            raise SolverError(f"{where}: momentum (Adam's beta1) must be in [0, 1), got {cfg.momentum}")
        if not 0 <= cfg.momentum2 < 1:
            raise SolverError(f"{where}: momentum2 (Adam's beta2) must be in [0, 1), got {cfg.momentum2}")

    def update(self, g, hist, local_rate, t):
        m, v = hist
        b1, b2 = self.momentum, self.beta2
        k = t + 1
        # The fork: float(1) - pow(float, int) in double, std::sqrt, then stored as float.
        correction = float(torch.tensor(math.sqrt(1.0 - b2 ** k) / (1.0 - b1 ** k), dtype=torch.float32))
        m.mul_(b1).add_(g, alpha=1.0 - b1)
        v.mul_(b2).add_(g * g, alpha=1.0 - b2)
        step = float(torch.tensor(local_rate, dtype=torch.float32) * correction)
        return (m / (v.sqrt() + self.delta)) * step


#: solver ``type`` string -> rule class (the fork's names).
RULES: Dict[str, Type[UpdateRule]] = {c.type_name: c for c in (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)}

#: the legacy ``solver_type`` enum names -> ``type`` strings.
LEGACY_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                "ADADELTA": "AdaDelta", "ADAM": "Adam"}
