"""Helpers of the solver tests: set up a golden trajectory case (golden/solver) in a folder; tiny nets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from golden import GOLDEN

SOLVER_GOLDEN = GOLDEN / "solver"


def solver_cases():
    p = SOLVER_GOLDEN / "INDEX.json"
    return sorted(json.loads(p.read_text())) if p.exists() else []


def load_case(case: str):
    """``(npz, index entry)`` of a golden solver case; skips when the reference is absent."""
    if not SOLVER_GOLDEN.exists():
        pytest.skip(f"reference material not available: {SOLVER_GOLDEN} does not exist")
    info = json.loads((SOLVER_GOLDEN / "INDEX.json").read_text())[case]
    return np.load(SOLVER_GOLDEN / info["file"]), info


def write_case(d, folder: Path) -> Path:
    """Write the case's solver, net, initial weights and (HDF5 cases) the data into ``folder``.

    The HDF5 file holds the rows the fork read, in reading order, so reading
    them cyclically from the start gives the recorded sequence.
    """
    (folder / "solver.prototxt").write_text(str(d["solver_prototxt"]))
    (folder / "net.prototxt").write_text(str(d["net_prototxt"]))
    (folder / "init.caffemodel").write_bytes(d["caffemodel_init"].tobytes())
    seq = [k for k in d.files if k.startswith("in_seq/")]
    if seq:
        import h5py
        with h5py.File(folder / "rows.h5", "w") as f:
            for k in seq:
                a = d[k]
                f[k[len("in_seq/"):]] = a.reshape((-1,) + a.shape[3:])
        (folder / "h5list.txt").write_text("rows.h5\n")
    return folder / "solver.prototxt"


def case_inputs(d):
    return {k[3:]: torch.from_numpy(d[k]) for k in d.files if k.startswith("in/")}


def rounding_noise_blob(case: str, layer: str, j: int) -> bool:
    """The Adam case's embedding bias: its gradient is float32 noise around 0 (golden README)."""
    return case.startswith("adam_embs") and layer == "emb" and j == 1


# -------------------------------------------------------------------------- tiny nets of our own
TINY_NET = """name: "tiny"
layer { name: "data" type: "HDF5Data" top: "x" top: "label"
  hdf5_data_param { source: "list.txt" batch_size: %(batch)d } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.3 }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
%(dropout)s
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
"""

DROPOUT = 'layer { name: "drop" type: "Dropout" bottom: "h" top: "h" dropout_param { dropout_ratio: 0.3 } }'

TINY_SOLVER = """net: "net.prototxt"
type: "%(type)s"
base_lr: 0.05
lr_policy: "step"
gamma: 0.5
stepsize: 3
momentum: %(momentum)s
weight_decay: 0.001
iter_size: %(iter_size)d
max_iter: %(max_iter)d
snapshot: %(snapshot)d
snapshot_prefix: "snaps/tiny"
random_seed: 7
display: 1
"""


def write_tiny(folder: Path, *, batch=2, rows=24, files=2, dropout=False, type="SGD", momentum="0.9",
               iter_size=2, max_iter=6, snapshot=3, seed=0) -> Path:
    """A tiny HDF5Data classification problem in ``folder``; returns the solver path."""
    import h5py
    rng = np.random.RandomState(seed)
    names = []
    per = rows // files
    for k in range(files):
        x = rng.randn(per, 5).astype(np.float32)
        label = rng.randint(0, 3, size=per).astype(np.float32)
        name = f"part{k}.h5"
        with h5py.File(folder / name, "w") as f:
            f["x"], f["label"] = x, label
        names.append(name)
    (folder / "list.txt").write_text("\n".join(names) + "\n")
    (folder / "net.prototxt").write_text(TINY_NET % {"batch": batch, "dropout": DROPOUT if dropout else ""})
    (folder / "snaps").mkdir(exist_ok=True)
    path = folder / "solver.prototxt"
    path.write_text(TINY_SOLVER % {"type": type, "momentum": momentum, "iter_size": iter_size,
                                   "max_iter": max_iter, "snapshot": snapshot})
    return path


def params_of(net):
    return {lp.key: lp.param.detach().clone() for lp in net.learnable_params()}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test inside ``tmp_path`` (solver paths are relative to the working directory)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


__all__ = ["solver_cases", "load_case", "write_case", "case_inputs", "rounding_noise_blob", "write_tiny",
           "params_of", "in_tmp", "SOLVER_GOLDEN"]
