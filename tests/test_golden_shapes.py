"""Every original config (golden/shapes) builds at full size with every blob/param shape the fork recorded.

The fork could only instantiate the configs with their data layers replaced by
net inputs and MatWrite dropped; the port builds them unchanged, WITH the data
layers (shapes from their parameters, no file read) and MatWrite, on the meta
device (no weights allocated, no activations computed).
"""
from __future__ import annotations

import json

import pytest

from golden import GOLDEN
from conftest import REFERENCE_DIR, require_reference

import caffe_compat

SHAPES = GOLDEN / "shapes"
CASES = sorted(p.stem for p in SHAPES.glob("*__*.json")) if SHAPES.exists() else []
NET_CASES = [c for c in CASES if json.loads((SHAPES / f"{c}.json").read_text())["status"] == "OK"]


def _renamed(net, rec):
    """Map the port's automatic top names to the fork run's names.

    The fork's run replaced each data layer by net inputs named after ALL the
    tops the layer LISTS (res/train lists 2 of ImageSegData's 3 tops, so the
    fork run had inputs data and label only): a data layer's automatic top has
    no counterpart there (mapped to None and not compared), and the remaining
    automatic tops are renumbered.
    """
    rename = {}
    for tops, bottoms in zip(net.top_names, net.bottom_names):
        if not bottoms:
            for t in tops:
                if t.startswith("(automatic)"):
                    rename[t] = None
    rest = [t for tops in net.top_names for t in tops if t.startswith("(automatic)") and t not in rename]
    for n, t in enumerate(rest):
        rename[t] = "(automatic)" if n == 0 else f"(automatic)#{n + 1}"
    return rename


@pytest.mark.parametrize("case", NET_CASES or ["<reference absent>"])
def test_original_config_shapes(case):
    if case not in NET_CASES:
        require_reference(SHAPES)
    rec = json.loads((SHAPES / f"{case}.json").read_text())
    folder, fname = case.split("__")
    path = REFERENCE_DIR / "configs" / folder / f"{fname}.prototxt"
    net = caffe_compat.Net(path, phase=rec["phase"], defines=rec.get("template_values") or {}, device="meta")
    shapes = net.infer_shapes()
    assert shapes == net.blob_shapes
    want_blobs = {k: tuple(v) for k, v in rec["blobs"].items() if "_split_" not in k}
    rename = _renamed(net, rec)
    got_blobs = {rename.get(k, k): tuple(v) for k, v in shapes.items() if rename.get(k, k) is not None}
    missing = sorted(set(want_blobs) - set(got_blobs))
    assert not missing, f"blobs the fork had but the port lacks: {missing}"
    wrong = {k: (got_blobs[k], v) for k, v in want_blobs.items() if got_blobs[k] != v}
    assert not wrong, f"blob shapes (port, fork) differ: {wrong}"
    want_params = {k: [tuple(s) for s in v] for k, v in rec["params"].items()}
    got_params = {k: [tuple(p.shape) for p in v] for k, v in net.params.items()}
    assert got_params == want_params
    extra = set(got_blobs) - set(want_blobs)
    # only what the fork's substitutions removed may be extra (none expected: data layers keep their tops)
    assert not extra, f"blobs the port has but the fork did not record: {sorted(extra)}"


@pytest.mark.parametrize("case", [c for c in CASES if c not in NET_CASES] or ["<reference absent>"])
def test_solver_files_parse(case):
    if case not in CASES:
        require_reference(SHAPES)
    """Each solver file parses with the fork's template values into exactly the solver the fork recorded."""
    from caffe_compat.prototxt import parse_solver, read_text
    rec = json.loads((SHAPES / f"{case}.json").read_text())
    folder, fname = case.split("__")
    text, src = read_text(REFERENCE_DIR / "configs" / folder / f"{fname}.prototxt")
    solver = parse_solver(text, src, rec.get("template_values") or {})
    assert solver.IsInitialized()
    fork = parse_solver(rec["solver"], f"{case}.json:solver")
    assert solver == fork, f"parsed solver differs from the fork's:\n{solver}\nvs\n{fork}"
    # and the recorded fields are set (not just equal defaults): e.g. base_lr, lr_policy, max_iter
    assert fork.ListFields() and all(solver.HasField(f.name) for f, _ in fork.ListFields() if f.label != 3)
