"""Training with the fork's solver semantics: :class:`Solver`, :func:`param_groups`.

Modules: :mod:`.config` (reading and checking solver files), :mod:`.lr_policies`,
:mod:`.update_rules`, :mod:`.snapshots`, :mod:`.solver` (the loop),
:mod:`.param_groups` (for plain ``torch.optim``).  See ``docs/solver.md``.
"""
from __future__ import annotations

from .config import SolverConfig, read_solver
from .lr_policies import POLICIES, learning_rate
from .param_groups import param_groups
from .solver import Solver
from .update_rules import RULES

__all__ = ["Solver", "param_groups", "read_solver", "SolverConfig", "learning_rate", "POLICIES", "RULES"]
