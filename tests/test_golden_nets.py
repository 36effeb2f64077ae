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
import torch

from golden import GOLDEN, assert_results, run_case

import caffe_compat

NETS = ["embs", "vgg", "res"]


def _files(name):
    d = GOLDEN / "nets"
    if not d.exists():
        pytest.skip(f"reference material not available: {d} does not exist")
    meta = json.loads((d / f"{name}_reduced.json").read_text())
    return d, meta


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            d, meta = _files(name)
            net = caffe_compat.Net(d / meta["files"]["prototxt"], weights=d / meta["files"]["caffemodel"])
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


@pytest.mark.parametrize("name", NETS)
def test_forward_backward_match_fork(built, name):
    net, npz, _ = built(name)
    assert_results(run_case(net, npz, check_backward=True))


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
