"""Reading and checking a solver prototxt before anything runs.

Everything the fork would CHECK-fail on later (and a few things it silently
accepts but that are surely mistakes) is refused here with a
:class:`~caffe_compat.errors.SolverError` naming the file and field, so a bad
file never gets as far as the first iteration.

Net paths (``net``, ``train_net``, ``test_net``), ``snapshot_prefix`` and data
sources are relative to the **current working directory**, as in Caffe.  As a
convenience, a net path that does not exist there is looked up next to the
solver file (logged), which is where the solver files of a repository usually
keep their nets.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Tuple, Union

from .. import prototxt as _pt
from .. import schema
from ..errors import CaffeCompatError, SolverError
from .lr_policies import POLICIES
from .update_rules import LEGACY_TYPES, RULES

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


@dataclass
class NetSpec:
    """Where one net of the solver comes from and in which state it is built."""

    path: Optional[Path]            #: prototxt file, or None for an embedded NetParameter
    net_param: object = None        #: the embedded ``NetParameter`` (``net_param`` / ``*_net_param``)
    phase: str = "TRAIN"
    level: int = 0
    stages: List[str] = field(default_factory=list)


@dataclass
class SolverConfig:
    """A checked solver file: the ``SolverParameter`` plus resolved nets and rule type."""

    param: object                   #: the ``SolverParameter`` message
    source: str                     #: the solver file name (for messages)
    type: str                       #: update rule, e.g. ``"SGD"`` or ``"Adam"``
    train: NetSpec
    tests: List[NetSpec]
    defines: dict


def _fail(source: str, message: str) -> SolverError:
    return SolverError(f"{source}: {message}")


def resolve_path(name: str, solver_dir: Path, what: str, source: str) -> Path:
    """Caffe's rule (relative to the working directory), else next to the solver file."""
    p = Path(name)
    if p.exists() or p.is_absolute():
        return p
    q = solver_dir / p
    if q.exists():
        log.info("%s: %s '%s' is not in the working directory; using %s", source, what, name, q)
        return q
    return p


def _state_of(state_msg) -> Tuple[int, List[str]]:
    return int(state_msg.level), list(state_msg.stage)


def _net_specs(sp, solver_dir: Path, source: str) -> Tuple[NetSpec, List[NetSpec]]:
    given = [f for f in ("train_net_param", "train_net", "net_param", "net") if sp.HasField(f)]
    if not given:
        raise _fail(source, "no train net: set one of net, train_net, net_param or train_net_param")
    if len(given) > 1:
        raise _fail(source, f"give only one train net, got {', '.join(given)}")
    kind = given[0]
    if kind.endswith("_param"):
        train = NetSpec(None, getattr(sp, kind))
    else:
        train = NetSpec(resolve_path(getattr(sp, kind), solver_dir, kind, source))
    train.level, train.stages = _state_of(sp.train_state)
    if sp.HasField("train_state") and sp.train_state.HasField("phase") and \
            schema.enum_name("NetState", "phase", sp.train_state.phase) != "TRAIN":
        raise _fail(source, "train_state.phase must be TRAIN")

    tests: List[NetSpec] = [NetSpec(None, p, "TEST") for p in sp.test_net_param]
    tests += [NetSpec(resolve_path(n, solver_dir, "test_net", source), None, "TEST") for n in sp.test_net]
    generic = kind in ("net", "net_param")
    n_iter = len(sp.test_iter)
    if generic and n_iter > len(tests):     # Caffe: the generic net once more per extra test_iter
        tests += [NetSpec(train.path, train.net_param, "TEST") for _ in range(n_iter - len(tests))]
    if n_iter != len(tests):
        raise _fail(source, f"test_iter must be given once per test net: {len(tests)} test net(s), "
                            f"{n_iter} test_iter value(s)")
    if len(sp.test_state) and len(sp.test_state) != len(tests):
        raise _fail(source, f"test_state must be given once per test net ({len(tests)}), got {len(sp.test_state)}")
    for spec, st in zip(tests, sp.test_state):
        spec.level, spec.stages = _state_of(st)
        if st.HasField("phase"):
            spec.phase = schema.enum_name("NetState", "phase", st.phase)
    for spec in [train] + tests:
        if spec.path is not None and spec.path.is_dir():
            raise _fail(source, f"net file '{spec.path}' is a folder, not a net prototxt")
        if spec.path is not None and not spec.path.is_file():
            raise _fail(source, f"net file '{spec.path}' does not exist (paths are relative to the "
                                f"working directory {os.getcwd()}, as in Caffe)")
    return train, tests


def _solver_type(sp, source: str) -> str:
    typ = sp.type
    if sp.HasField("solver_type"):
        legacy = LEGACY_TYPES[schema.enum_name("SolverParameter", "solver_type", sp.solver_type)]
        if sp.HasField("type") and sp.type != legacy:
            raise _fail(source, f"type {sp.type!r} and the deprecated solver_type {legacy} disagree")
        typ = legacy
    if typ not in RULES:
        raise _fail(source, f"type: unknown solver type {typ!r}; known: {', '.join(RULES)}")
    return typ


def _check_numbers(sp, source: str) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise _fail(source, msg)

    need(sp.HasField("base_lr"), "base_lr is not set")
    need(sp.base_lr >= 0 and sp.base_lr == sp.base_lr, f"base_lr must be a non-negative number, got {sp.base_lr}")
    need(sp.HasField("lr_policy"), f"lr_policy is not set (one of {', '.join(POLICIES)})")
    need(sp.lr_policy in POLICIES, f"lr_policy: unknown policy {sp.lr_policy!r}; known: {', '.join(POLICIES)}")
    need(sp.max_iter >= 0, f"max_iter must be >= 0, got {sp.max_iter}")
    if sp.lr_policy == "step":
        need(sp.stepsize > 0, f"lr_policy step needs stepsize > 0, got {sp.stepsize}")
    if sp.lr_policy == "poly":
        need(sp.max_iter > 0, f"lr_policy poly needs max_iter > 0, got {sp.max_iter}")
    if sp.lr_policy == "multistep":
        sv = list(sp.stepvalue)
        need(len(sv) > 0, "lr_policy multistep needs stepvalue")
        need(all(a < b for a, b in zip(sv, sv[1:])),
             f"stepvalue must be strictly increasing, got {sv} (the fork would silently skip steps)")
    if sp.lr_policy in ("step", "exp", "inv", "multistep", "sigmoid"):
        need(sp.HasField("gamma"), f"lr_policy {sp.lr_policy} needs gamma")
    if sp.lr_policy in ("inv", "poly"):
        need(sp.HasField("power"), f"lr_policy {sp.lr_policy} needs power")
    need(sp.iter_size >= 1, f"iter_size must be >= 1, got {sp.iter_size}")
    need(sp.average_loss >= 1, f"average_loss must be >= 1, got {sp.average_loss}")
    need(sp.weight_decay >= 0, f"weight_decay must be >= 0, got {sp.weight_decay}")
    need(sp.momentum >= 0, f"momentum must be >= 0, got {sp.momentum}")
    need(sp.delta > 0, f"delta must be > 0, got {sp.delta}")
    need(sp.regularization_type in ("L1", "L2"),
         f"regularization_type must be L1 or L2, got {sp.regularization_type!r}")
    need(sp.test_interval >= 0, f"test_interval must be >= 0, got {sp.test_interval}")
    need(all(n >= 0 for n in sp.test_iter), f"test_iter must be >= 0, got {list(sp.test_iter)}")
    need(sp.display >= 0, f"display must be >= 0, got {sp.display}")
    need(sp.snapshot >= 0, f"snapshot must be >= 0, got {sp.snapshot}")


def check_snapshot_folder(prefix: str, source: str) -> None:
    """The folder of ``snapshot_prefix`` must exist and be writable (checked before training)."""
    folder = Path(prefix).parent if str(Path(prefix).parent) else Path(".")
    if not folder.is_dir():
        raise _fail(source, f"snapshot_prefix '{prefix}': the folder '{folder}' does not exist")
    try:  # a probe file, as Caffe's CheckSnapshotWritePermissions (access() says yes to root)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=str(folder))
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise _fail(source, f"snapshot_prefix '{prefix}': the folder '{folder}' is not writable: "
                            f"{e.strerror or e}") from None


def read_solver(path: PathLike, defines: Optional[Mapping[str, object]] = None, *,
                overrides: Optional[Mapping[str, object]] = None) -> SolverConfig:
    """Parse and check a solver file.

    Args:
        path: the solver prototxt.
        defines: values of its (and its nets') ``${NAME}`` template variables.
        overrides: SolverParameter fields to set after parsing (e.g. ``{"max_iter": 10}``).
    """
    text, source = _pt.read_text(path)
    try:
        sp = _pt.parse_solver(text, source, defines)
    except SolverError:
        raise
    except CaffeCompatError as e:
        raise SolverError(str(e)) from None
    for k, v in (overrides or {}).items():
        try:
            setattr(sp, k, v)
        except (AttributeError, TypeError, ValueError) as e:
            raise _fail(source, f"cannot set {k} = {v!r}: {e}") from None
    return check_solver(sp, source, Path(path).parent, defines)


def check_solver(sp, source: str, solver_dir: Path, defines=None) -> SolverConfig:
    """Validate a parsed ``SolverParameter`` (see :func:`read_solver`)."""
    typ = _solver_type(sp, source)
    _check_numbers(sp, source)
    RULES[typ](sp, source)  # the rule's own checks (e.g. AdaGrad needs momentum 0)
    train, tests = _net_specs(sp, solver_dir, source)
    if sp.snapshot > 0 or sp.HasField("snapshot_prefix"):
        if not sp.snapshot_prefix:
            raise _fail(source, "snapshot is set but snapshot_prefix is not")
        check_snapshot_folder(sp.snapshot_prefix, source)
    return SolverConfig(sp, source, typ, train, tests, dict(defines or {}))
