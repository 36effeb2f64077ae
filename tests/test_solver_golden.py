"""The fork's solver trajectories (golden/solver) replayed by caffe_compat.Solver.

Every case: build the solver from the fork's own solver/net text, load the
weights the fork started from, step once per recorded update with the recorded
inputs (HDF5 cases read the recorded rows through our HDF5Data layer) and
compare, after EVERY update, every parameter (relative error <= 1e-5), the
loss and the exact float32 lr; at the end the solver history against the
fork's ``.solverstate``.  A second test feeds the fork's recorded gradient and
state into our update step alone (solver rule isolated from forward/backward).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from golden import rel_err
from solver_helpers import case_inputs, in_tmp, load_case, rounding_noise_blob, solver_cases, write_case  # noqa: F401

import caffe_compat
from caffe_compat.solver.lr_policies import learning_rate
from caffe_compat.solver.snapshots import read_state

CASES = solver_cases() or ["sgd_poly_conv3_frozen_ignore255"]
TOL = 1e-5
#: |value| bound of the Adam case's noise-driven embedding bias (README: <= 1.1e-3 for the fork).
NOISE_ABS = 3e-3


def _solver(case, folder):
    d, info = load_case(case)
    s = caffe_compat.Solver(write_case(d, folder))
    s.net.load_weights(folder / "init.caffemodel")
    return d, info, s


@pytest.mark.parametrize("case", CASES)
def test_trajectory(case, in_tmp):
    d, info, s = _solver(case, in_tmp)
    inputs = case_inputs(d)
    worst = []
    for i in range(1, info["N"] + 1):
        s.step(1, inputs=inputs)
        assert np.float32(s.lr) == d[f"lr/{i}"], f"update {i}: lr {s.lr!r} != fork {d[f'lr/{i}']!r}"
        assert rel_err(s.last_loss, d[f"loss/{i}"]) <= TOL, f"update {i}: loss {s.last_loss} vs {d[f'loss/{i}']}"
        # the displayed loss: mean over iter_size, no smoothing across step(1) calls (6 digits in the log)
        assert s.smoothed_loss == pytest.approx(d["loss_log"][i - 1], rel=1e-5)
        err_i = 0.0
        for p in info["params"]:
            got = s.net.params[p["layer"]][p["j"]].detach().numpy()
            want = d[f"param/{p['layer']}/{p['j']}/{i}"]
            if rounding_noise_blob(case, p["layer"], p["j"]):
                assert np.abs(got).max() <= NOISE_ABS and np.abs(want).max() <= NOISE_ABS
                continue
            e = rel_err(got, want)
            assert e <= TOL, f"update {i}: {p['layer']}/{p['j']} rel err {e:.3g}"
            err_i = max(err_i, e)
        worst.append(err_i)
    assert s.iter == info["N"]
    # The history equals the fork's .solverstate after the last update (same blob order).
    fork = read_state(_write(in_tmp / "fork.solverstate", d["solverstate_final"]))
    assert fork["iter"] == s.iter and fork["current_step"] == s.current_step
    ours = s.state_dict()["history"]
    assert len(ours) == len(fork["history"]) == info["history_slots"] * len(info["learnable_order"])
    for k, (a, b) in enumerate(zip(ours, fork["history"])):
        key = info["learnable_order"][k % len(info["learnable_order"])]
        layer, j = key.rsplit("/", 1)
        if rounding_noise_blob(case, layer, int(j)):
            continue
        assert rel_err(a.numpy(), b.numpy().reshape(a.shape)) <= TOL, f"history {k} ({key})"


def _write(path, arr):
    path.write_bytes(arr.tobytes())
    return path


@pytest.mark.parametrize("case", CASES)
def test_update_rule_from_recorded_gradient(case, in_tmp):
    """Recorded param(i-1), history(i-1) and gradient(i) -> our update i, per blob."""
    d, info, s = _solver(case, in_tmp)
    slots = info["history_slots"]
    owners = {(p["layer"], p["j"]) for p in info["params"] if p["owner"] == f"{p['layer']}/{p['j']}"}
    lps = {(lp.layer, lp.index): (k, lp) for k, lp in enumerate(s.learnable_params())}
    assert set(lps) == owners
    step = 0
    tol = 1e-6  # measured <= 2.4e-7 (the README re-derivation: <= 1.3e-7 SGD, 6.4e-6 Adam in float64)
    captured = []
    rule_update = s.rule.update
    s.rule.update = lambda *a: captured.append(rule_update(*a)) or captured[-1]
    for i in range(1, info["N"] + 1):
        with torch.no_grad():
            for (layer, j), (k, lp) in lps.items():
                prev = d[f"param0/{layer}/{j}"] if i == 1 else d[f"param/{layer}/{j}/{i - 1}"]
                lp.param.copy_(torch.from_numpy(prev))
                lp.param.grad = torch.from_numpy(d[f"grad/{layer}/{j}/{i}"].copy())
                for slot in range(slots):
                    h = np.zeros_like(prev) if i == 1 else d[f"hist/{slot}/{layer}/{j}/{i - 1}"]
                    s.history[k][slot].copy_(torch.from_numpy(h))
        s.iter, s.current_step = i - 1, step
        captured.clear()
        s._apply_update()
        _, step = learning_rate(s.param, i - 1, step)
        for (layer, j), (k, lp) in lps.items():
            if rounding_noise_blob(case, layer, j):
                continue
            upd = captured[k].numpy()
            want = d[f"upd/{layer}/{j}/{i}"]
            assert rel_err(upd, want) <= tol, f"update {i} {layer}/{j}: {rel_err(upd, want):.3g}"


@pytest.mark.parametrize("case", ["sgd_step_itersize2_bn_scale_clip", "adam_embs_mini_momentum_unset"])
def test_restore_fork_solverstate(case, in_tmp):
    """The fork's own .solverstate (+ its caffemodel) restores: iter, step, weights, history."""
    d, info, s = _solver(case, in_tmp)
    fork_state = read_state(_write(in_tmp / "fork.solverstate", d["solverstate_final"]))
    _write(in_tmp / fork_state["learned_net"], d["caffemodel_final"])
    s.restore(in_tmp / "fork.solverstate")
    assert s.iter == info["N"]
    N = info["N"]
    for p in info["params"]:
        np.testing.assert_array_equal(s.net.params[p["layer"]][p["j"]].detach().numpy(),
                                      d[f"param/{p['layer']}/{p['j']}/{N}"])
    for k, h in enumerate(s.state_dict()["history"]):
        np.testing.assert_array_equal(h.numpy().ravel(), fork_state["history"][k].numpy().ravel())
