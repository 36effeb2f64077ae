"""Every single-layer golden case of the original fork (golden/layers), forward and backward.

For each case: build its prototxt, copy its parameters, compare every blob the
fork recorded (rel. error <= 1e-5), back-propagate the recorded top diffs and
compare input and parameter gradients (<= 1e-4); then load the caffemodel the
fork wrote and check it holds the same parameters.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REFERENCE_DIR, require_reference
from golden import GOLDEN, assert_results, golden_index, run_case, set_params, template_defines

import caffe_compat

CASES = golden_index("layers")


def _load(case):
    d = GOLDEN / "layers"
    if not d.exists():
        require_reference(d)
    return np.load(d / CASES[case]["file"])


@pytest.mark.parametrize("case", sorted(CASES) or ["<no golden layers: reference absent>"])
def test_golden_layer_case(case):
    if case not in CASES:
        require_reference(GOLDEN / 'layers')
    meta = CASES[case]
    npz = _load(case)
    # fuse=False: every intermediate blob the fork recorded is compared (tests/test_fusion.py runs fused)
    net = caffe_compat.Net.from_string(str(npz["prototxt"]), phase=meta.get("phase", "TEST"),
                                       defines=template_defines(), source=case, fuse=False)
    set_params(net, npz)
    results = run_case(net, npz, check_backward=meta.get("backward", True))
    # DummyData cases record values after two forwards (the xy filler runs every forward).
    if meta["layer_type"] == "DummyData":
        results = run_case(net, npz, check_backward=False)
    assert_results(results)


@pytest.mark.parametrize("case", sorted(c for c in CASES if "caffemodel" in CASES[c].get("keys", [])) or ["<none>"])
def test_golden_layer_caffemodel_loads(case, tmp_path):
    if case not in CASES:
        require_reference(GOLDEN / 'layers')
    meta = CASES[case]
    npz = _load(case)
    model = tmp_path / "fork.caffemodel"
    model.write_bytes(bytes(npz["caffemodel"]))
    net = caffe_compat.Net.from_string(str(npz["prototxt"]), weights=model, phase=meta.get("phase", "TEST"),
                                       defines=template_defines(), source=case)
    for k in npz.files:
        if k.startswith("param/"):
            lname, i = k[6:].rsplit("/", 1)
            got = net.params[lname][int(i)].detach().numpy()
            np.testing.assert_array_equal(got, npz[k], err_msg=k)
