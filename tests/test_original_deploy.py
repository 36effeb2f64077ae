"""The ORIGINAL deploy files (with their `Input` layers, which the fork itself cannot parse) load weights.

Built at full size with seeded weights, saved as a caffemodel, and rebuilt from
the unchanged prototxt with those weights (strict: every layer present, every
shape right).  Forward numbers are covered by the reduced goldens
(tests/test_golden_nets.py) and timed by tools/bench_forward.py.
"""
from __future__ import annotations

import pytest
import torch

from conftest import REFERENCE_DIR, require_reference

from caffe_compat import Net

CONFIGS = REFERENCE_DIR / "configs"


@pytest.mark.parametrize("name", ["embs", "vgg", "res"])
def test_original_deploy_loads_weights_unchanged(name, tmp_path):
    path = CONFIGS / name / "deploy.prototxt"
    if not path.exists():
        require_reference(path)
    a = Net(path, seed=0)
    assert a.inputs and a.layer_types[0] == "Input"
    model = tmp_path / f"{name}.caffemodel"
    a.save(model)
    b = Net(path, weights=model, seed=1)
    for lname, blobs in a.params.items():
        for pa, pb in zip(blobs, b.params[lname]):
            assert torch.equal(pa, pb), lname
    del a, b
