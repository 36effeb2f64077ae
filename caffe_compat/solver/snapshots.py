"""Solver snapshots: the weights as a ``.caffemodel`` plus a resumable solver state.

Names follow Caffe: ``<snapshot_prefix>_iter_<N>.caffemodel`` (``.caffemodel.h5``
with ``snapshot_format: HDF5``) and, next to it, the state
``<snapshot_prefix>_iter_<N>.solverstate.pt``: a plain dict of tensors, ints,
strings and lists, so ``torch.load(path, weights_only=True)`` reads it.  It
holds what Caffe's ``.solverstate`` holds (``iter``, ``current_step``, the
history blobs in learnable-parameter order, ``learned_net`` = the caffemodel's
file name) plus what makes a resumed run follow the uninterrupted one bit for
bit: the read positions of data layers and the RNG states.  The learnable
parameters' names and shapes are recorded to refuse a state of another net.

:func:`read_state` also reads the fork's own binary ``.solverstate``
(``SolverState`` message; no data positions or RNG states there).

Both files are written through :func:`~caffe_compat.atomic.atomic_write`, the
state after the weights, so a state on disk always has its weights.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch
from google.protobuf.message import DecodeError

from .. import schema
from ..atomic import atomic_write
from ..errors import SolverError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

STATE_FORMAT = "caffe_compat.solverstate"
STATE_VERSION = 1
STATE_SUFFIX = ".solverstate.pt"


def snapshot_names(prefix: str, iteration: int, hdf5: bool = False):
    """``(weights file, state file)`` of the snapshot at ``iteration``."""
    base = f"{prefix}_iter_{iteration}"
    return Path(base + (".caffemodel.h5" if hdf5 else ".caffemodel")), Path(base + STATE_SUFFIX)


def write_snapshot(net, state: dict, weights_path: Path, state_path: Path) -> None:
    """Write the weights, then the state (each atomically)."""
    net.save(weights_path)
    state = dict(state, learned_net=weights_path.name)
    atomic_write(state_path, lambda tmp: torch.save(state, tmp), error=SolverError)
    log.info("snapshot at iteration %d: %s, %s", state["iter"], weights_path, state_path)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def read_state(path: PathLike) -> dict:
    """Read a state file (ours or the fork's binary ``.solverstate``) into our dict layout.

    The fork's file gives ``history`` as float32 tensors in file order (shapes
    are checked against the net on restore) and no ``params``/``shapes``.
    """
    p = Path(path)
    if not p.is_file():
        raise SolverError(f"{p}: no such solver state file")
    if _is_zip(p):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a corrupt or unsafe file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if "Weights only load failed" in first:
                first = "it holds objects other than tensors and plain containers (refused)"
            raise SolverError(f"{p}: not a readable solver state: {first}") from None
        if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
            raise SolverError(f"{p}: not a caffe_compat solver state (a checkpoint or other torch file?)")
        if obj.get("version") != STATE_VERSION:
            raise SolverError(f"{p}: solver state version {obj.get('version')!r}, this version reads {STATE_VERSION}")
        for key, typ in (("iter", int), ("current_step", int), ("history", list)):
            if not isinstance(obj.get(key), typ):
                raise SolverError(f"{p}: solver state field '{key}' is missing or not a {typ.__name__}")
        if not all(isinstance(h, torch.Tensor) for h in obj["history"]):
            raise SolverError(f"{p}: solver state history must hold tensors")
        return obj
    try:
        msg = schema.SolverState.FromString(p.read_bytes())
    except (DecodeError, RuntimeError) as e:
        raise SolverError(f"{p}: neither a caffe_compat solver state nor a Caffe .solverstate: {e}") from None
    history: List[torch.Tensor] = []
    for k, b in enumerate(msg.history):
        vals = np.asarray(b.double_data if len(b.double_data) else b.data, dtype=np.float32)
        dims = tuple(b.shape.dim) if b.HasField("shape") else None
        if dims is not None:
            if int(np.prod(dims)) != vals.size:
                raise SolverError(f"{p}: history blob {k} has shape {list(dims)} but {vals.size} values")
            vals = vals.reshape(dims)
        history.append(torch.from_numpy(vals.copy()))
    return {"format": "caffe", "iter": int(msg.iter), "current_step": int(msg.current_step),
            "history": history, "learned_net": msg.learned_net}


def weights_of_state(state: dict, state_path: PathLike) -> Optional[Path]:
    """The caffemodel a state refers to (``learned_net``), next to the state file or as given."""
    name = state.get("learned_net") or ""
    if not name:
        return None
    near = Path(state_path).parent / Path(name).name
    return near if near.is_file() else Path(name)
