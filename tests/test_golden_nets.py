"""Whole-net goldens (golden/nets): the reduced embs / vgg / res deploy nets, run by the fork.

Each net is built from the prototxt the fork was given, loads the caffemodel the
fork wrote, and must reproduce every recorded blob (Caffe's ``*_split_*`` blobs
aside), the input gradients and the parameter gradients.  The fork's HDF5 copy
of the weights must give identical parameters.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_reference
import torch

from golden import GOLDEN, assert_results, force_recorded_blobs, run_case

import caffe_compat

NETS = ["embs", "vgg", "res"]


def _files(name):
    d = GOLDEN / "nets"
    if not d.exists():
        require_reference(d)
    meta = json.loads((d / f"{name}_reduced.json").read_text())
    return d, meta


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            d, meta = _files(name)
            # fuse=False: every recorded blob is compared (tests/test_fusion.py runs the nets fused)
            net = caffe_compat.Net(d / meta["files"]["prototxt"], weights=d / meta["files"]["caffemodel"],
                                   fuse=False)
            cache[name] = (net, np.load(d / meta["files"]["npz"]), meta)
        return cache[name]
    return get


@pytest.mark.parametrize("name", NETS)
def test_caffemodel_params_equal_golden(built, name):
    net, npz, _ = built(name)
    for k in npz.files:
        if k.startswith("param/"):
            lname, i = k[len("param/"):].rsplit("/", 1)
            np.testing.assert_array_equal(net.params[lname][int(i)].detach().numpy(), npz[k], err_msg=k)


# Goldens that are float32 rounding of a cancelling sum in the FORK itself: compared at 1e-3.
# Evidence: with the fork's recorded forward values forced in, the port run in float64
# (i.e. the exact value for those inputs) differs from the fork's number by 2.4e-4 for
# scaled_rgb (a scalar Scale: a dot product of 3267 products of mixed sign), more than
# the port's float32 run does (1.7e-4).  See docs/golden_notes.md.
ILL_CONDITIONED = {("res", "param_diff/scaled_rgb/0"): 1e-3}


def in_situ_results(net, npz):
    """run_case with every recorded blob forced to the fork's value; the forward entries are each
    layer's own output measured before it was replaced (see force_recorded_blobs)."""
    measured = {}
    handles = force_recorded_blobs(net, npz, measured)
    try:
        results = run_case(net, npz, check_backward=True)
    finally:
        for h in handles:
            h.remove()
    out = []
    for k, e, tol in results:
        if k.startswith("out/") and k[4:] not in net.inputs:
            assert k in measured, f"{k}: no layer output was measured for this recorded blob"
            e = measured[k]
        out.append((k, e, tol))
    return out


@pytest.mark.parametrize("name", NETS)
def test_every_layer_in_situ_and_backward_match_fork(built, name):
    """Forward with each recorded blob forced to the fork's value, backward through our layers.

    Every layer computes from exactly the fork's inputs; its own output
    (measured before it is replaced by the fork's) is compared at 1e-5, and the
    backward, which takes the fork's discrete decisions, at 1e-4 for the input
    and parameter gradients.
    """
    net, npz, _ = built(name)
    results = in_situ_results(net, npz)
    assert sum(k.startswith("out/") and k[4:] not in net.inputs for k, _, _ in results) > 10
    results = [(k, e, ILL_CONDITIONED.get((name, k), tol)) for k, e, tol in results]
    assert_results(results)


@pytest.mark.parametrize("name", ["embs", "vgg"])
def test_free_run_matches_fork(built, name):
    """The nets run end to end on their own activations: every blob and gradient within tolerance."""
    net, npz, _ = built(name)
    assert_results(run_case(net, npz, check_backward=True))


#: a blob computed through more learnable layers than this (on its longest path from the net
#: inputs) is "in the trunk": twice the embedding branch's 8 convolutions
TRUNK_DEPTH = 16


def learnable_depths(net):
    """Per blob, the most layers with learnable blobs on any path from the net inputs to it."""
    depth = {k: 0 for k in net.inputs}
    for layer, bottoms, tops in zip(net.layers, net.bottom_names, net.top_names):
        d = max((depth[b] for b in bottoms), default=0) + (1 if len(layer.blobs) else 0)
        for t in tops:
            depth[t] = d
    return depth


def test_res_free_run_drift_is_float32_rounding(built):
    """res (ResNet-101 trunk x 3 scales) run end to end on its own activations.

    Float32 rounding accumulates over ~100 layers: at res5 the fork itself is
    ~6e-4 (relative) away from a float64 run of the port, and the float32 port
    is as far; so each blob of the trunk (from the graph: more than TRUNK_DEPTH
    learnable layers on its longest path from the inputs, which includes
    everything computed from the trunk) is bounded at 2e-3, and all other
    blobs (inputs, the embedding branch, the first residual blocks, the CRF's
    scaled_xy / scaled_rgb / rgbxy) at 1e-5.  In-situ exactness of every layer
    is the test above.
    """
    net, npz, _ = built("res")
    results = run_case(net, npz, check_backward=False)
    depth = learnable_depths(net)
    deep = {k for k, e, _ in results if depth[k[4:]] > TRUNK_DEPTH}
    assert {"out/res5c", "out/fc_fusion", "out/crf_interp"} <= deep
    assert not {"out/scaled_xy", "out/scaled_rgb", "out/rgbxy", "out/emb", "out/conv1"} & deep
    results = [(k, e, 2e-3 if k in deep else tol) for k, e, tol in results]
    assert_results(results)


@pytest.mark.parametrize("name", ["embs", "res"])
def test_hdf5_weights_identical(built, name):
    net, _, meta = built(name)
    d, _ = _files(name)
    other = caffe_compat.Net(d / meta["files"]["prototxt"], weights=d / meta["files"]["h5"])
    for lname, blobs in net.params.items():
        for a, b in zip(blobs, other.params[lname]):
            assert torch.equal(a, b), lname


def test_vgg_has_no_hdf5_because_of_duplicate_layer_names(built, tmp_path):
    """The fork cannot write vgg's HDF5 (duplicate layer names); the port writes it (names without blobs)."""
    net, _, _ = built("vgg")
    assert len(net.layer_names) != len(set(net.layer_names))
    p = tmp_path / "vgg.caffemodel.h5"
    net.save(p)
    d, meta = _files("vgg")
    again = caffe_compat.Net(d / meta["files"]["prototxt"], weights=p)
    for lname, blobs in net.params.items():
        for a, b in zip(blobs, again.params[lname]):
            assert torch.equal(a, b), lname
