"""``caffe-compat train``: what ``caffe train`` does, from the original solver files.

    caffe-compat train SOLVER.prototxt [--weights INIT.caffemodel|.pt] [--resume STATE] [-D NAME=VALUE]

* ``--weights`` copies weights by layer name into the nets before training
  (fine-tuning; layers missing from the file keep their fillers, as Caffe);
  several files may be given comma-separated.
* ``--resume`` continues from a snapshot state: ours
  (``<prefix>_iter_N.solverstate.pt``) or the fork's binary ``.solverstate``.
* Snapshots are written every ``snapshot`` iterations and at the end; Ctrl-C
  finishes the current iteration, writes a snapshot and exits with status 130
  (a second Ctrl-C stops at once).
* Paths in the solver file are relative to the working directory, as in Caffe
  (net files are also looked up next to the solver file).
* Under ``torchrun --nproc_per_node N -m caffe_compat train ...`` the processes
  train one model with DistributedDataParallel (``gloo`` on CPU, ``nccl`` on
  CUDA): the effective batch is ``batch_size x iter_size x N``, the lr unchanged,
  as Caffe's multi-GPU training; rank 0 logs, tests and writes snapshots.  A
  stop request (SIGINT) reaching any worker stops all of them after the same
  iteration (send it to the workers: torchrun's own agent ends its workers on
  SIGINT).
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from ..errors import CaffeCompatError
from . import add_define_option, check_device, parse_defines

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train from a solver prototxt with the fork's solver semantics (caffe train)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("solver", help="solver prototxt (e.g. res/solver.prototxt; ${NAME} filled by --define)")
    p.add_argument("--weights", help="initial weights: caffemodel, .h5 or .pt checkpoint (comma-separated list)")
    p.add_argument("--resume", metavar="STATE", help="snapshot state to continue from (.solverstate.pt or "
                                                     "the fork's .solverstate)")
    add_define_option(p)
    p.add_argument("--device", help="cpu or cuda (default: cuda for solver_mode GPU when available); "
                                    "under torchrun cuda uses LOCAL_RANK")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise CaffeCompatError(f"{name} must be an integer, got {value!r}") from None


def _init_distributed(device):
    """Join the torchrun process group (``WORLD_SIZE`` > 1); returns the device of this process."""
    import torch
    import torch.distributed as dist
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return device, False
    local = _env_int("LOCAL_RANK", _env_int("RANK", 0))
    cuda = (device or "").startswith("cuda")
    if cuda:
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    elif device is None:
        device = "cpu"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device, True


def run_train(args: argparse.Namespace) -> int:
    if args.weights and args.resume:
        raise CaffeCompatError("give --resume to continue a run or --weights to fine-tune, not both")
    device = check_device(args.device) if args.device else None
    device, distributed = _init_distributed(device)
    if not distributed:
        return _train(args, device)
    try:
        status = _train(args, device)
    finally:
        _leave_group()
    # A torchrun worker ends here, with its status, without the interpreter's shutdown: under
    # load, gloo's threads were still being torn down during finalization and aborted a worker
    # after a successful run ("terminate called without an active exception", SIGABRT, about
    # one run in twenty on 2 busy cores).  Everything this process wrote is closed and flushed.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def _train(args: argparse.Namespace, device) -> int:
    """Build the solver, load weights or state, solve; the solver (and its DDP) is freed on return."""
    from ..solver import Solver

    logging.getLogger("caffe_compat.solver").setLevel(min(logging.getLogger().level, logging.INFO))
    solver = Solver(args.solver, parse_defines(args.define), device=device)
    try:
        if args.weights:
            for w in args.weights.split(","):
                for net in [solver.net] + solver.test_nets:
                    report = net.load_weights(w, strict=False)
                    if getattr(report, "mismatched", None):
                        raise CaffeCompatError(f"{w} does not fit {net.source}: " + "; ".join(report.mismatched))
                log.info("initialised from %s", w)
        if args.resume:
            solver.restore(args.resume)
        _solve(solver, progress=not args.no_progress)
        return 130 if solver.stopped_early else 0
    finally:
        # DistributedDataParallel holds the process group and gloo work objects: drop them (and
        # any cycles) now, while every peer is still connected, not at interpreter shutdown
        del solver
        gc.collect()


def _leave_group() -> None:
    """Wait for every rank (rank 0 may still be writing the last snapshot), then destroy the group."""
    import torch.distributed as dist
    try:
        dist.barrier()
    except Exception:  # a peer already failed; its error is the one to report
        pass
    dist.destroy_process_group()


def _solve(solver, progress: bool) -> None:
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:  # pragma: no cover - old tqdm
        solver.solve(progress=progress)
        return
    with logging_redirect_tqdm():
        solver.solve(progress=progress)
