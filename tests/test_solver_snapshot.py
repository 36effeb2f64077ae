"""Snapshots and resume: file names, weights_only state, bit-exact continuation, refused states."""
from __future__ import annotations

import os

import pytest
import torch

from solver_helpers import in_tmp, params_of, write_tiny  # noqa: F401

import caffe_compat
from caffe_compat.errors import SolverError


def _run(path, n, restore=None):
    s = caffe_compat.Solver(path)
    if restore is not None:
        s.restore(restore)
    s.step(n)
    return s


@pytest.mark.parametrize("kind", [dict(type="SGD", momentum="0.9", dropout=True),
                                  dict(type="Adam", momentum="0.9", dropout=False, files=1)])
def test_resume_is_bit_exact(in_tmp, kind):
    """6 updates in one go == 3 updates, snapshot, a new solver restored from it, 3 more."""
    path = write_tiny(in_tmp, snapshot=3, **kind)
    full = _run(path, 6)
    want, want_hist = params_of(full.net), full.state_dict()["history"]
    # The periodic snapshot at iteration 3 of that run is the one to resume from.
    state = in_tmp / "snaps" / "tiny_iter_3.solverstate.pt"
    assert state.is_file() and (in_tmp / "snaps" / "tiny_iter_3.caffemodel").is_file()
    resumed = _run(path, 3, restore=state)
    assert resumed.iter == 6
    got = params_of(resumed.net)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    for a, b in zip(resumed.state_dict()["history"], want_hist):
        assert torch.equal(a, b)
    # and not trivially: the weights did move after the snapshot
    assert not torch.equal(caffe_compat.Net(in_tmp / "net.prototxt", phase="TRAIN",
                                            weights=in_tmp / "snaps" / "tiny_iter_3.caffemodel")
                           .params["ip1"][0], want["ip1/0"])


def test_state_file_loads_weights_only(in_tmp):
    path = write_tiny(in_tmp, snapshot=0, max_iter=2)
    s = _run(path, 2)
    out = s.snapshot()
    assert out.resolve() == in_tmp / "snaps" / "tiny_iter_2.solverstate.pt"
    obj = torch.load(out, weights_only=True)
    assert obj["iter"] == 2 and obj["learned_net"] == "tiny_iter_2.caffemodel"
    assert obj["params"] == ["ip1/0", "ip1/1", "ip2/0", "ip2/1"]
    assert len(obj["history"]) == 4
    # nothing half-written is left behind
    assert not [f for f in os.listdir(in_tmp / "snaps") if f.startswith(".tmp")]


def test_snapshot_write_is_atomic(in_tmp, monkeypatch):
    """A failure while writing the state leaves no state file (and no temporary)."""
    path = write_tiny(in_tmp, snapshot=0, max_iter=1)
    s = _run(path, 1)

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(SolverError, match="disk full"):
        s.snapshot()
    names = os.listdir(in_tmp / "snaps")
    assert "tiny_iter_1.solverstate.pt" not in names
    assert not [f for f in names if f.startswith(".tmp")]


def test_state_of_another_net_is_refused(in_tmp):
    path = write_tiny(in_tmp, snapshot=0, max_iter=1)
    s = _run(path, 1)
    state = s.state_dict()
    other = dict(state, params=["a/0", "b/0", "c/0", "d/0"])
    fresh = caffe_compat.Solver(path)
    before = params_of(fresh.net)
    with pytest.raises(SolverError, match="another net"):
        fresh.restore(other)
    with pytest.raises(SolverError, match="history blobs"):
        fresh.restore(dict(state, history=state["history"][:2]))
    with pytest.raises(SolverError, match="Adam"):
        fresh.restore(dict(state, type="Adam"))
    bad_shape = dict(state, history=[torch.zeros(2)] + state["history"][1:])
    with pytest.raises(SolverError, match="shape"):
        fresh.restore(bad_shape)
    assert fresh.iter == 0
    for k, v in params_of(fresh.net).items():
        assert torch.equal(v, before[k])


def test_state_files_refused_cleanly(in_tmp):
    path = write_tiny(in_tmp, snapshot=0, max_iter=1)
    s = caffe_compat.Solver(path)
    with pytest.raises(SolverError, match="no such"):
        s.restore(in_tmp / "missing.solverstate.pt")
    junk = in_tmp / "junk.solverstate"
    junk.write_bytes(b"\xff\xff\xff\xff not a state")
    with pytest.raises(SolverError):
        s.restore(junk)
    net_ckpt = in_tmp / "net.pt"
    s.net.save_checkpoint(net_ckpt)
    with pytest.raises(SolverError, match="not a caffe_compat solver state"):
        s.restore(net_ckpt)
    s.step(1)
    state = s.snapshot()
    (in_tmp / "snaps" / "tiny_iter_1.caffemodel").unlink()
    with pytest.raises(SolverError, match="does not exist"):
        caffe_compat.Solver(path).restore(state)


def test_test_nets_share_weights(in_tmp):
    """A TEST net of the same file sees the trained weights (Caffe's ShareTrainedLayersWith)."""
    path = write_tiny(in_tmp, snapshot=0, max_iter=2)
    text = path.read_text() + "test_iter: 2\ntest_interval: 1\n"
    path.write_text(text)
    s = caffe_compat.Solver(path)
    assert len(s.test_nets) == 1 and s.test_nets[0].phase == "TEST"
    s.step(2)
    assert torch.equal(s.test_nets[0].params["ip1"][0], s.net.params["ip1"][0])
    means = s.test(0)
    assert set(means) == {"loss"} and torch.isfinite(means["loss"]).all()


def test_hdf5_snapshot_format_and_no_final_snapshot(in_tmp):
    path = write_tiny(in_tmp, snapshot=2, max_iter=3)
    path.write_text(path.read_text() + "snapshot_format: HDF5\nsnapshot_after_train: false\n")
    s = caffe_compat.Solver(path)
    s.solve(progress=False)
    assert sorted(os.listdir(in_tmp / "snaps")) == ["tiny_iter_2.caffemodel.h5", "tiny_iter_2.solverstate.pt"]
    want = params_of(s.net)
    again = caffe_compat.Solver(path)
    again.restore(in_tmp / "snaps" / "tiny_iter_2.solverstate.pt")
    again.step(1)
    for k, v in params_of(again.net).items():
        assert torch.equal(v, want[k]), k
