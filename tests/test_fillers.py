"""Caffe's fillers: distributions, fan computations, bilinear, errors, seeding through the Net."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe_compat import LayerConfigError, Net, schema
from caffe_compat.fillers import fill


def _filler(text):
    return text_format.Parse(text, schema.FillerParameter())


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_constant_and_default():
    t = torch.empty(3, 4)
    fill(t, _filler("type: 'constant' value: 2.5"))
    assert torch.all(t == 2.5)
    fill(t, None)
    assert torch.all(t == 0)
    fill(t, _filler(""))  # FillerParameter default: constant 0
    assert torch.all(t == 0)
    with pytest.raises(LayerConfigError, match="sparse"):
        fill(t, _filler("type: 'constant' sparse: 3"))


def test_gaussian_uniform_moments():
    t = torch.empty(200, 500)
    fill(t, _filler("type: 'gaussian' mean: 1 std: 0.5"), _g())
    assert abs(t.mean().item() - 1) < 0.01 and abs(t.std().item() - 0.5) < 0.01
    fill(t, _filler("type: 'uniform' min: -2 max: 3"), _g())
    assert t.min() >= -2 and t.max() <= 3 and abs(t.mean().item() - 0.5) < 0.02
    fill(t, _filler("type: 'gaussian' std: 1 sparse: 50"), _g())  # keep prob 50/200
    assert abs((t != 0).float().mean().item() - 0.25) < 0.01


@pytest.mark.parametrize("norm,fan", [("FAN_IN", 3 * 5 * 5), ("FAN_OUT", 4 * 5 * 5), ("AVERAGE", 3.5 * 5 * 5)])
def test_xavier_and_msra_fans(norm, fan):
    t = torch.empty(4, 3, 5, 5)
    fill(t, _filler(f"type: 'xavier' variance_norm: {norm}"), _g())
    a = math.sqrt(3.0 / fan)
    assert t.abs().max() <= a and t.abs().max() > 0.9 * a
    big = torch.empty(400, 3, 5, 5)
    fill(big, _filler(f"type: 'msra' variance_norm: {norm}"), _g())
    fan_big = {"FAN_IN": 75, "FAN_OUT": 400 * 25, "AVERAGE": (75 + 400 * 25) / 2}[norm]
    assert abs(big.std().item() / math.sqrt(2.0 / fan_big) - 1) < 0.03


def test_positive_unitball_and_bilinear():
    t = torch.empty(5, 2, 3, 3)
    fill(t, _filler("type: 'positive_unitball'"), _g())
    assert torch.all(t >= 0)
    torch.testing.assert_close(t.view(5, -1).sum(1), torch.ones(5))
    k = torch.empty(2, 1, 4, 4)
    fill(k, _filler("type: 'bilinear'"))
    # Caffe's bilinear upsampling kernel for factor 2: outer product of [0.25, 0.75, 0.75, 0.25]
    w = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(k[1, 0], w[:, None] * w[None, :])
    with pytest.raises(LayerConfigError, match="bilinear"):
        fill(torch.empty(2, 1, 3, 4), _filler("type: 'bilinear'"))


def test_unknown_filler_and_fans_of_small_blobs():
    with pytest.raises(LayerConfigError, match="unknown filler type 'zorp'"):
        fill(torch.empty(3), _filler("type: 'zorp'"))
    # Caffe: a 1-axis blob has fan_in = count / shape(0) = 1 and fan_out = count
    t = torch.empty(1000)
    fill(t, _filler("type: 'xavier' variance_norm: FAN_OUT"), _g())
    assert t.abs().max() <= math.sqrt(3.0 / 1000) and t.abs().max() > 0.9 * math.sqrt(3.0 / 1000)
    fill(t, _filler("type: 'xavier'"), _g())
    assert t.abs().max() > 0.9 and t.abs().max() <= 3 ** 0.5
    with pytest.raises(LayerConfigError, match="scalar"):
        fill(torch.empty(()), _filler("type: 'msra'"))
    with pytest.raises(LayerConfigError, match="empty blob"):
        fill(torch.empty(0, 3), _filler("type: 'xavier'"))
    with pytest.raises(LayerConfigError, match="sparse must be >= -1"):
        fill(torch.empty(3), _filler("type: 'gaussian' sparse: -2"))


def test_xy_filler_batch_bug():
    t = torch.empty(2, 2, 3, 4)
    fill(t, _filler("type: 'xy'"))
    ys, xs = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
    np.testing.assert_array_equal(t[0, 0].numpy(), xs)
    np.testing.assert_array_equal(t[0, 1].numpy(), ys)
    np.testing.assert_array_equal(t[1, 0].numpy(), ys)   # the fork's offset bug: image 1 = (y, 0)
    np.testing.assert_array_equal(t[1, 1].numpy(), 0 * ys)
    with pytest.raises(LayerConfigError, match="xy filler"):
        fill(torch.empty(1, 3, 2, 2), _filler("type: 'xy'"))


def test_net_fillers_seeded_and_errors_name_the_layer():
    text = """input: "x" input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }
    layer { name: "c" type: "Convolution" bottom: "x" top: "y"
      convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "msra" } bias_filler { type: "uniform" min: 1 max: 2 } } }"""
    a, b = Net.from_string(text, seed=7), Net.from_string(text, seed=7)
    assert torch.equal(a.params["c"][0], b.params["c"][0]) and torch.equal(a.params["c"][1], b.params["c"][1])
    assert torch.all((a.params["c"][1] >= 1) & (a.params["c"][1] <= 2))
    with pytest.raises(LayerConfigError, match="layer 'c'.*unknown filler"):
        Net.from_string(text.replace('"msra"', '"nope"'))
