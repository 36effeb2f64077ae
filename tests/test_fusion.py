"""Automatic fusion of Im2col -> Tile -> Eltwise PROD -> Convolution(bottom_is_im2col) in ``Net``.

Fused nets must equal the fork's goldens (outputs, the blobs they still keep, input
and parameter gradients) and the unfused net; fused-away blobs raise a clear error
naming ``fuse=False``; chains whose intermediates feed something else are not fused.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from golden import GOLDEN, assert_results, run_case, set_params

import caffe_compat
from caffe_compat.fusion import FusedBlobError

BLOCKS = ["segaware_block_k3_p1", "segaware_block_k3_p2_d2"]


def _block(case):
    path = GOLDEN / "layers" / f"{case}.npz"
    if not path.exists():
        pytest.skip(f"reference material not available: {path} does not exist")
    return np.load(path)


def _fused_results(net, npz):
    """run_case on the blobs a fused net keeps."""
    hidden = set(net.fusion_plan.hidden)
    return run_case(net, npz, check_backward=True, skip_blob=lambda b: b in hidden or "_split_" in b)


@pytest.mark.parametrize("case", BLOCKS)
def test_fused_block_equals_golden(case):
    npz = _block(case)
    net = caffe_compat.Net.from_string(str(npz["prototxt"]), source=case)
    assert set(net.fusion_plan.hidden) == {"cols", "tiled", "hit"}
    set_params(net, npz)
    assert_results(_fused_results(net, npz))
    with pytest.raises(FusedBlobError, match="fuse=False") as info:
        net.blobs["cols"]
    assert "conv" in str(info.value) and isinstance(info.value, KeyError)
    assert "relu" in net.blobs and "cols" not in net.blobs
    unfused = caffe_compat.Net.from_string(str(npz["prototxt"]), source=case, fuse=False)
    assert not unfused.fusion_plan
    set_params(unfused, npz)
    unfused.forward(data=torch.from_numpy(npz["in/data"]), emb=torch.from_numpy(npz["in/emb"]))
    assert tuple(unfused.blobs["cols"].shape) == npz["out/cols"].shape


def test_no_fusion_when_an_intermediate_feeds_another_layer():
    npz = _block("segaware_block_k3_p1")
    text = str(npz["prototxt"]) + 'layer { name: "peek" type: "ReLU" bottom: "hit" top: "peek" }\n'
    net = caffe_compat.Net.from_string(text, source="peek")
    assert not net.fusion_plan
    text = str(npz["prototxt"]) + 'layer { name: "peek" type: "AbsVal" bottom: "cols" top: "peek" }\n'
    assert not caffe_compat.Net.from_string(text, source="peek2").fusion_plan


def test_no_fusion_when_the_image_is_rewritten_in_place_before_the_conv():
    npz = _block("segaware_block_k3_p1")
    text = str(npz["prototxt"]).replace(
        'layer { name: "hit"', 'layer { name: "inplace" type: "ReLU" bottom: "data" top: "data" }\nlayer { name: "hit"')
    assert not caffe_compat.Net.from_string(text, source="inplace").fusion_plan


def _vgg_reduced():
    d = GOLDEN / "nets"
    if not d.exists():
        pytest.skip(f"reference material not available: {d} does not exist")
    meta = json.loads((d / "vgg_reduced.json").read_text())
    return d, meta, np.load(d / meta["files"]["npz"])


def test_fused_vgg_reduced_net_matches_fork_and_unfused():
    d, meta, npz = _vgg_reduced()
    net = caffe_compat.Net(d / meta["files"]["prototxt"], weights=d / meta["files"]["caffemodel"])
    assert len(net.fusion_plan.replace) == 14          # every segmentation-aware convolution of vgg
    assert_results(_fused_results(net, npz))
    fused_grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    unfused = caffe_compat.Net(d / meta["files"]["prototxt"], weights=d / meta["files"]["caffemodel"], fuse=False)
    inputs = {k[3:]: torch.from_numpy(np.asarray(npz[k])) for k in npz.files if k.startswith("in/")}
    out_f, out_u = net(**inputs), unfused(**inputs)
    for k in out_u:
        torch.testing.assert_close(out_f[k], out_u[k], rtol=1e-5, atol=1e-5)
    diffs = {k[9:]: torch.from_numpy(np.asarray(npz[k])) for k in npz.files if k.startswith("top_diff/")}
    unfused.backward(**diffs)
    # per layer, gradients relative to the layer's largest (a bias whose exact gradient cancels to ~0 is
    # compared at the layer's float32 resolution, as in golden.run_case)
    scale = {}
    for n, p in unfused.named_parameters():
        if p.grad is not None:
            layer = n.rsplit(".", 2)[0]
            scale[layer] = max(scale.get(layer, 0.0), float(p.grad.abs().max()))
    checked = 0
    for n, p in unfused.named_parameters():
        if n in fused_grads:
            torch.testing.assert_close(fused_grads[n], p.grad, rtol=1e-4, atol=1e-4 * scale[n.rsplit(".", 2)[0]])
            checked += 1
    assert checked == len(fused_grads) > 0


def test_fused_equals_unfused_on_full_size_vgg_deploy():
    """The original vgg deploy at its own 321x321 size, seeded weights: fused numbers = the layers as written."""
    from conftest import REFERENCE_DIR, require_reference
    path = REFERENCE_DIR / "configs" / "vgg" / "deploy.prototxt"
    if not path.exists():
        require_reference(path)
    fused = caffe_compat.Net(path, seed=0)
    assert len(fused.fusion_plan.replace) == 14          # conv1_1 .. conv5_3 and fc6
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, blobs in fused.params.items():
            for b in blobs:
                if b.dim() == 4:       # He-scaled, so that activations stay O(1) through 16 layers
                    b.copy_(torch.randn(b.shape, generator=g) * (2.0 / math.prod(b.shape[1:])) ** 0.5)
                elif b.dim() == 1:
                    b.copy_(torch.randn(b.shape, generator=g) * 0.01)
                else:                  # the masks' lambda: 0.02 .. 0.2, one per layer
                    b.fill_(0.02 + 0.18 * float(torch.rand((), generator=g)))
    unfused = caffe_compat.Net(path, seed=0, fuse=False)
    unfused.load_state_dict(fused.state_dict())
    data = torch.randn(1, 3, 321, 321, generator=g) * 50
    label = torch.randint(0, 21, (1, 1, 321, 321), generator=g).float()
    fused_convs = [fused.layer_names[i] for i in fused.fusion_plan.replace]
    with torch.no_grad():
        out_f = fused(data=data, label=label)["fc8_interp"]
        out_u = unfused(data=data, label=label)["fc8_interp"]
        mask = unfused.blobs["exp_emb_dist1_2"]
        # every fused convolution's own output, each at its own scale: masks damp the signal
        # layer after layer, so the net's output alone would hardly see an early layer's error
        for name in fused_convs:
            top = unfused.top_names[unfused.layer_names.index(name)][0]
            a, b = fused.blobs[top], unfused.blobs[top]
            assert b.abs().max() > 1e-3, f"{name}: degenerate output, the comparison would be vacuous"
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()), msg=name)
    assert out_u.abs().max() > 1e-3, "degenerate weights: the comparison would be vacuous"
    # the masks are neither all 0 nor all 1: the segmentation-aware part is exercised
    assert 0.01 < float(mask.mean()) < 0.99 and float(mask.std()) > 0.01
    torch.testing.assert_close(out_f, out_u, rtol=1e-4, atol=1e-4 * float(out_u.abs().max()))
