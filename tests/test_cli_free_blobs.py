"""``Net.free_blobs`` (used by ``test`` and ``run``): intermediates dropped after their last reader."""
from __future__ import annotations

import torch

from caffe_compat import Net

TEXT = """name: "f"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "a" type: "Convolution" bottom: "data" top: "a"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" } } }
layer { name: "r" type: "ReLU" bottom: "a" top: "a" }
layer { name: "b" type: "Convolution" bottom: "a" top: "b"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" } } }
layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "b" top: "loss" }
layer { name: "out" type: "Power" bottom: "s" top: "out" }
"""


def test_free_blobs_same_outputs_and_drops_only_dead_intermediates():
    net = Net.from_string(TEXT, seed=0)
    x = torch.randn(1, 2, 5, 5)
    with torch.inference_mode():
        ref = {k: v.clone() for k, v in net(data=x).items()}
        kept = set(net.blobs)
        net.free_blobs = True
        got = net(data=x)
    assert kept == {"data", "a", "b", "s", "loss", "out"}
    assert set(got) == set(ref) == {"loss", "out"}
    for k in ref:
        assert torch.equal(got[k], ref[k])
    # 'a' (read by the in-place ReLU, b and s), 'b' (last read by the loss) and 's' (by out) are gone;
    # the input, outputs and loss tops stay
    assert set(net.blobs) == {"data", "loss", "out"}
    plan = net._release_plan()
    idx = {n: i for i, n in enumerate(net.layer_names)}
    assert plan[idx["s"]] == ["a"] and plan[idx["loss"]] == ["b"] and plan[idx["out"]] == ["s"]
