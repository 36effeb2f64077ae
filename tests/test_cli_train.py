"""``caffe-compat train``: snapshots, resume, fine-tuning weights, bad files, Ctrl-C, torchrun data parallel."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import torch

from solver_helpers import in_tmp, params_of, write_tiny  # noqa: F401

import caffe_compat
from caffe_compat.cli import main
from caffe_compat.solver import Solver
from caffe_compat.weights import read_weights


def _weights(path):
    return {name: [b.array for b in blobs] for name, _, blobs in read_weights(path)}


def _same_weights(a, b, exact=True, tol=0.0):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        for x, y in zip(wa[k], wb[k]):
            if exact:
                np.testing.assert_array_equal(x, y, err_msg=k)
            else:
                np.testing.assert_allclose(x, y, rtol=0, atol=tol * max(1.0, np.abs(y).max()), err_msg=k)


def test_train_writes_snapshots_and_resume_matches(in_tmp):
    write_tiny(in_tmp, max_iter=5, snapshot=2, dropout=True)
    assert main(["train", "solver.prototxt", "--no-progress"]) == 0
    snaps = sorted(os.listdir(in_tmp / "snaps"))
    assert snaps == [f"tiny_iter_{i}.{ext}" for i in (2, 4, 5) for ext in ("caffemodel", "solverstate.pt")]
    final = in_tmp / "final.caffemodel"
    os.replace(in_tmp / "snaps" / "tiny_iter_5.caffemodel", final)
    assert main(["train", "solver.prototxt", "--resume", "snaps/tiny_iter_2.solverstate.pt", "--no-progress"]) == 0
    _same_weights(in_tmp / "snaps" / "tiny_iter_5.caffemodel", final)


def test_train_from_weights(in_tmp):
    write_tiny(in_tmp, max_iter=1, snapshot=0)
    net = caffe_compat.Net(in_tmp / "net.prototxt", phase="TRAIN", seed=123)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.01)
    net.save_checkpoint(in_tmp / "init.pt")
    s = Solver(in_tmp / "solver.prototxt", overrides={"max_iter": 0})
    s.net.load_weights(in_tmp / "init.pt")
    s.solve(progress=False)  # 0 iterations: the snapshot holds the initial weights
    assert main(["train", "solver.prototxt", "--weights", "init.pt", "--no-progress"]) == 0
    w = _weights(in_tmp / "snaps" / "tiny_iter_1.caffemodel")
    assert not np.allclose(w["ip1"][0], 0.01)          # trained one step ...
    assert np.abs(w["ip1"][0] - 0.01).max() < 0.05      # ... from the given weights


def test_bad_solver_fails_before_training(in_tmp, caplog):
    path = write_tiny(in_tmp)
    path.write_text(path.read_text().replace('lr_policy: "step"', 'lr_policy: "steps"'))
    assert main(["train", "solver.prototxt"]) == 2
    assert "unknown policy 'steps'" in caplog.text
    assert os.listdir(in_tmp / "snaps") == []
    assert main(["train", "solver.prototxt", "--weights", "a.caffemodel", "--resume", "b.solverstate.pt"]) == 2


def test_ctrl_c_writes_a_snapshot_then_exits(in_tmp, monkeypatch):
    write_tiny(in_tmp, max_iter=50, snapshot=0)
    original = Solver._apply_update

    def interrupting(self):
        original(self)
        if self.iter == 1:  # during the 2nd iteration
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(Solver, "_apply_update", interrupting)
    assert main(["train", "solver.prototxt", "--no-progress"]) == 130
    assert sorted(os.listdir(in_tmp / "snaps")) == ["tiny_iter_2.caffemodel", "tiny_iter_2.solverstate.pt"]
    assert torch.load(in_tmp / "snaps" / "tiny_iter_2.solverstate.pt", weights_only=True)["iter"] == 2


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_processes_equal_double_batch(in_tmp):
    """2 gloo processes with batch 2 == one process with batch 4 (same rows, Caffe's interleaving)."""
    (in_tmp / "one").mkdir()
    (in_tmp / "two").mkdir()
    write_tiny(in_tmp / "one", batch=4, files=1, max_iter=3, snapshot=0)
    write_tiny(in_tmp / "two", batch=2, files=1, max_iter=3, snapshot=0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "caffe_compat", "train", "solver.prototxt", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=in_tmp / "two", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # timed out: end torchrun and its workers (its own process group)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    os.chdir(in_tmp / "one")
    assert main(["train", "solver.prototxt", "--no-progress"]) == 0
    one, two = in_tmp / "one" / "snaps" / "tiny_iter_3.caffemodel", in_tmp / "two" / "snaps" / "tiny_iter_3.caffemodel"
    _same_weights(two, one, exact=False, tol=1e-6)
    # and the runs did train (not a trivial equality)
    init = params_of(Solver(in_tmp / "one" / "solver.prototxt").net)
    assert not np.allclose(_weights(one)["ip1"][0], init["ip1/0"].numpy())
