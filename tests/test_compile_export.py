"""torch.compile(fullgraph=True) and torch.export on the caffe_compat.nn modules and on the deploy nets.

The custom ops are ``torch.library`` ops (fake kernels, registered autograd):
``torch.library.opcheck`` validates their registrations; compiled / exported
modules must give the eager numbers (and gradients).  ``backend="aot_eager"``
captures the full graph (fullgraph=True fails on any graph break) and runs the
AOT-autograd joint graph without spending CI time on inductor code generation.
Nets: the golden reduced forms of the original embs / vgg / res deploy prototxts
(the configs with fewer channels and a 65x65 crop).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from golden import GOLDEN

import caffe_compat
import caffe_compat.nn as cnn
import caffe_compat.ops.library  # noqa: F401  (registers torch.ops.caffe_compat)


def _dd(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_opcheck_custom_ops():
    ops = torch.ops.caffe_compat
    x, m = _dd(1, 2, 5, 6), torch.rand(1, 9, 5, 6, dtype=torch.float64)
    w, b = _dd(3, 2, 3, 3, seed=1), _dd(3, seed=2)
    for t in (x, m, w, b):
        t.requires_grad_(True)
    win = ([3, 3], [1, 1], [1, 1], [1, 1])
    torch.library.opcheck(ops.segaware_conv2d, (x, m, w, b, *win, 1))
    emb = _dd(1, 3, 5, 6, seed=3).requires_grad_(True)
    torch.library.opcheck(ops.im2dist, (emb, *win, 1, False, False))
    scale = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.normconv_mask, (emb, scale, True, *win, 2, True, True))
    torch.library.opcheck(ops.masked_window_sum, (x, m, w, *win, 1))
    torch.library.opcheck(ops.masked_window_sum, (x, m, None, *win, 1))


def _modules():
    torch.manual_seed(0)
    return {
        "SegAwareConv2d": (cnn.SegAwareConv2d(4, 6, 3, padding=2, dilation=2),
                           (torch.randn(2, 4, 9, 11), torch.randn(2, 3, 9, 11))),
        "Im2dist": (cnn.Im2dist(3, padding=1, norm="L1"), (torch.randn(1, 5, 9, 11),)),
        "NormConv2d": (cnn.NormConv2d(4, 5, 3, padding=1), (torch.randn(1, 4, 9, 11), torch.randn(1, 3, 9, 11))),
        "MeanfieldCRF": (cnn.MeanfieldCRF(5), (torch.randn(1, 5, 9, 11), torch.randn(1, 5, 9, 11),
                                               torch.randn(1, 2, 9, 11))),
    }


@pytest.mark.parametrize("name", list(_modules()))
def test_nn_module_compiles_fullgraph_with_gradients(name):
    module, args = _modules()[name]
    args = [a.clone().requires_grad_(True) for a in args]
    ref = module(*args)
    ref_grads = torch.autograd.grad(ref.sum(), [*args, *module.parameters()])
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out = compiled(*args)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out.sum(), [*args, *module.parameters()]), ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", list(_modules()))
def test_nn_module_exports(name):
    module, args = _modules()[name]
    ep = torch.export.export(module, tuple(args))
    assert any("caffe_compat" in str(n.target) for n in ep.graph.nodes), "custom op missing from the graph"
    torch.testing.assert_close(ep.module()(*args), module(*args))


# res (ResNet-101 x 3 scales, ~1,000 layers) takes minutes to trace on the 2-core CI machine:
# run with CAFFE_COMPAT_SLOW_TESTS=1 (done by hand for the record, see the lead's report).
NETS = ["embs", "vgg", pytest.param("res", marks=pytest.mark.skipif(
    not os.environ.get("CAFFE_COMPAT_SLOW_TESTS"), reason="res trace takes minutes; set CAFFE_COMPAT_SLOW_TESTS=1"))]


def _reduced_net(name):
    d = GOLDEN / "nets"
    if not d.exists():
        pytest.skip(f"reference material not available: {d} does not exist")
    meta = json.loads((d / f"{name}_reduced.json").read_text())
    net = caffe_compat.Net(d / meta["files"]["prototxt"], weights=d / meta["files"]["caffemodel"])
    npz = np.load(d / meta["files"]["npz"])
    inputs = {k[3:]: torch.from_numpy(np.asarray(npz[k])) for k in npz.files if k.startswith("in/")}
    return net, inputs


@pytest.mark.filterwarnings("ignore:The tensor attributes")
@pytest.mark.parametrize("name", NETS)
def test_deploy_net_exports(name):
    net, inputs = _reduced_net(name)
    with torch.no_grad():
        ref = net(**inputs)
        ep = torch.export.export(net, (), inputs)
        out = ep.module()(**inputs)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NETS)
def test_deploy_net_compiles_fullgraph(name):
    net, inputs = _reduced_net(name)
    with torch.no_grad():
        ref = net(**inputs)
        out = torch.compile(net, fullgraph=True, backend="aot_eager")(**inputs)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-5)


def test_deploy_net_compiles_fullgraph_with_gradients():
    """A compiled vgg net (the seg-aware convolutions, Interp, CRF) trains: its gradients are eager's."""
    net, inputs = _reduced_net("vgg")
    inputs = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
    params = [p for p in net.parameters() if p.requires_grad]

    def grads(fn):
        out = fn(**inputs)
        loss = sum((v.double() ** 2).sum() for v in out.values())
        leaves = [v for v in inputs.values() if v.requires_grad] + params
        return out, torch.autograd.grad(loss, leaves, allow_unused=True)

    ref, ref_g = grads(net)
    out, out_g = grads(torch.compile(net, fullgraph=True, backend="aot_eager"))
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-5)
    assert sum(g is not None for g in ref_g) > 10
    for a, b in zip(out_g, ref_g):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
