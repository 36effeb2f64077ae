"""Solver files: bad ones fail with a clear SolverError before any iteration; lr policies; param groups."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from solver_helpers import in_tmp, write_tiny  # noqa: F401

import caffe_compat
from caffe_compat.errors import CaffeCompatError, SolverError
from caffe_compat.prototxt import parse_solver
from caffe_compat.solver import learning_rate, param_groups, read_solver


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize("old,new,match", [
    ('type: "SGD"', 'type: "Adamax"', "unknown solver type 'Adamax'"),
    ('lr_policy: "step"', 'lr_policy: "cosine"', "unknown policy 'cosine'"),
    ('lr_policy: "step"\n', '', "lr_policy is not set"),
    ("base_lr: 0.05", "base_lr: -0.05", "base_lr must be a non-negative"),
    ('lr_policy: "step"', 'lr_policy: "multistep"\nstepvalue: 5\nstepvalue: 2', "strictly increasing"),
    ("stepsize: 3", "stepsize: 0", "stepsize > 0"),
    ('net: "net.prototxt"', 'net: "nowhere.prototxt"', "nowhere.prototxt' does not exist"),
    ('net: "net.prototxt"\n', '', "no train net"),
    ('net: "net.prototxt"', 'net: "net.prototxt"\ntrain_net: "net.prototxt"', "only one train net"),
    ('snapshot_prefix: "snaps/tiny"', 'snapshot_prefix: "absent/tiny"', "folder 'absent' does not exist"),
    ('snapshot_prefix: "snaps/tiny"', 'snapshot_prefix: "list.txt/tiny"', "does not exist"),
    ("iter_size: 2", "iter_size: 0", "iter_size must be >= 1"),
    ('net: "net.prototxt"', 'train_net: "net.prototxt"\ntest_iter: 3', "test_iter must be given once per test net"),
    ('type: "SGD"', 'type: "AdaGrad"', "cannot be used with momentum"),
    ("random_seed: 7", "random_seed: 7\nregularization_type: \"L3\"", "regularization_type"),
    ("random_seed: 7", "random_seed: 7\nbogus_field: 1", "bogus_field"),
])
def test_bad_solver_files(in_tmp, old, new, match):
    path = _edit(write_tiny(in_tmp), old, new)
    with pytest.raises(SolverError, match=match) as info:
        caffe_compat.Solver(path)
    assert "solver.prototxt" in str(info.value)


def test_missing_solver_file(in_tmp):
    with pytest.raises(CaffeCompatError, match="no such file"):
        caffe_compat.Solver(in_tmp / "nope.prototxt")


def test_net_path_next_to_solver(tmp_path, monkeypatch):
    """Caffe resolves net paths from the working directory; the solver's folder is the fallback."""
    path = write_tiny(tmp_path)
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    (elsewhere / "snaps").mkdir()
    monkeypatch.chdir(elsewhere)
    (elsewhere / "list.txt").write_text("".join(f"../{n}\n" for n in (tmp_path / "list.txt").read_text().split()))
    s = caffe_compat.Solver(path)
    assert s.config.train.path == tmp_path / "net.prototxt"


def test_solver_templates(in_tmp):
    path = _edit(write_tiny(in_tmp), "base_lr: 0.05", "base_lr: ${LR}")
    with pytest.raises(CaffeCompatError, match="LR"):
        caffe_compat.Solver(path)
    s = caffe_compat.Solver(path, defines={"LR": 0.125})
    assert s.param.base_lr == 0.125


def test_embs_solver_is_adam_with_beta1_zero(reference_dir):
    """The original embs solver: Adam, momentum unset => beta1 = 0, no weight decay."""
    text = (reference_dir / "configs" / "embs" / "solver_coco_trainval.prototxt").read_text()
    sp = parse_solver(text)
    assert sp.type == "Adam" and sp.momentum == 0 and sp.weight_decay == 0
    assert np.float32(sp.momentum2) == np.float32(0.999) and np.float32(sp.delta) == np.float32(1e-8)


def _sp(**fields):
    sp = parse_solver('base_lr: 0.1 lr_policy: "fixed"')
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(sp, k).extend(v)
        else:
            setattr(sp, k, v)
    return sp


def test_lr_policies_formulas():
    f32 = np.float32
    assert learning_rate(_sp(), 100, 0)[0] == f32(0.1)
    assert learning_rate(_sp(lr_policy="step", gamma=0.1, stepsize=5), 11, 0) == (float(f32(0.1 * f32(0.1) ** 2)), 2)
    assert learning_rate(_sp(lr_policy="exp", gamma=0.5), 3, 0)[0] == float(f32(0.1 * 0.125))
    r, _ = learning_rate(_sp(lr_policy="poly", power=1.0, max_iter=10), 5, 0)
    assert r == pytest.approx(0.05, rel=1e-6)
    r, _ = learning_rate(_sp(lr_policy="inv", gamma=1.0, power=1.0), 1, 0)
    assert r == pytest.approx(0.05, rel=1e-6)
    r, _ = learning_rate(_sp(lr_policy="sigmoid", gamma=1.0, stepsize=4), 4, 0)
    assert r == pytest.approx(0.05, rel=1e-6)
    # multistep: the counter advances at most once per call (the fork's rule)
    sp = _sp(lr_policy="multistep", gamma=0.5, stepvalue=[1, 2, 3])
    assert learning_rate(sp, 10, 0) == (float(f32(0.05)), 1)
    assert learning_rate(sp, 10, 1)[1] == 2


def test_param_groups(in_tmp):
    path = write_tiny(in_tmp)
    text = (in_tmp / "net.prototxt").read_text().replace(
        'layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"',
        'layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y" param { lr_mult: 0 } param { lr_mult: 0 }')
    (in_tmp / "net.prototxt").write_text(text)
    net = caffe_compat.Solver(path).net
    groups = param_groups(net, lr=0.01, weight_decay=1e-3)
    assert [g["names"] for g in groups] == [["ip1/0"], ["ip1/1"]]
    assert groups[0]["lr"] == pytest.approx(0.01) and groups[0]["weight_decay"] == pytest.approx(1e-3)
    assert groups[1]["lr"] == pytest.approx(0.02) and groups[1]["weight_decay"] == 0
    opt = torch.optim.SGD(groups, lr=0.01)
    assert sum(len(g["params"]) for g in opt.param_groups) == 2


def test_read_solver_overrides(in_tmp):
    cfg = read_solver(write_tiny(in_tmp), overrides={"max_iter": 2})
    assert cfg.param.max_iter == 2 and cfg.type == "SGD"
    with pytest.raises(SolverError, match="cannot set"):
        read_solver(in_tmp / "solver.prototxt", overrides={"max_iter": "x"})


ORIGINAL_DEFINES = {"EXP": "exp", "NET_ID": "n", "TRAIN_SET": "t", "LEARNING_RATE": "0.001", "ITER_SIZE": "10",
                    "ITERS": "20", "SNAP": "5", "STEP": "3", "SOLVER_MODE": "CPU"}


@pytest.mark.parametrize("name,typ,policy", [
    ("embs/solver.prototxt", "Adam", "fixed"), ("embs/solver_coco_trainval.prototxt", "Adam", "fixed"),
    ("res/solver.prototxt", "SGD", "poly"), ("res/solver_voc_trainval_aug.prototxt", "SGD", "poly"),
    ("vgg/solver.prototxt", "SGD", "step"), ("vgg/solver_voc_train_aug.prototxt", "SGD", "step")])
def test_original_solver_files_pass_the_checks(reference_dir, in_tmp, name, typ, policy):
    """The original files are accepted once their net and snapshot folder exist (paths from the cwd)."""
    sp = parse_solver((reference_dir / "configs" / name).read_text(), name, ORIGINAL_DEFINES)
    for rel in (sp.train_net, sp.snapshot_prefix):
        (in_tmp / rel).parent.mkdir(parents=True, exist_ok=True)
    (in_tmp / sp.train_net).write_text('name: "x"\n')
    cfg = read_solver(reference_dir / "configs" / name, ORIGINAL_DEFINES)
    assert cfg.type == typ and cfg.param.lr_policy == policy and cfg.tests == []
    assert cfg.train.path == type(cfg.train.path)(sp.train_net)
    if typ == "Adam":
        assert cfg.param.momentum == 0 and not cfg.param.HasField("momentum")


def test_unreadable_net_file(in_tmp):
    path = write_tiny(in_tmp)
    (in_tmp / "net.prototxt").write_text("layer { name: 'a' type: 'ReLU' bottom: 'x' top: 'x' ")
    with pytest.raises(CaffeCompatError, match="solver.*net.prototxt"):
        caffe_compat.Solver(path)
    (in_tmp / "net.prototxt").unlink()
    (in_tmp / "net.prototxt").mkdir()
    with pytest.raises(SolverError, match="is a folder"):
        caffe_compat.Solver(path)


def test_average_loss_smoothing_within_one_step_call(in_tmp, monkeypatch):
    """Caffe's running mean over the last average_loss iterations, reset at every step() call."""
    path = _edit(write_tiny(in_tmp, iter_size=1), "display: 1", "display: 1\naverage_loss: 3")
    s = caffe_compat.Solver(path)
    losses = iter([1.0, 2.0, 3.0, 4.0, 5.0, 7.0])
    monkeypatch.setattr(s, "_forward_backward", lambda inputs, sync: next(losses))
    s.step(2)
    assert s.smoothed_loss == pytest.approx(1.5)
    s.step(3)                      # a new call: the window restarts at 3
    assert s.smoothed_loss == pytest.approx(4.0)
    s.step(1)
    assert s.smoothed_loss == 7.0 and s.iter == 6
