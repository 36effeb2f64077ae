"""No file this package loads can execute code (issue 8).

A pickle payload that would create a marker file when unpickled is planted in
every format the package loads (checkpoints, ``.pt2`` programs in each place
``torch.export.load`` unpickles, and files of the other formats whose bytes
are the pickle); each load must fail with a CaffeCompatError and the marker
must not exist.
"""
from __future__ import annotations

import io
import json
import pickle
import zipfile

import h5py
import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.checkpoint import read_checkpoint
from caffe_compat.export import export_program, load_program
from caffe_compat.errors import CaffeCompatError, WeightsError

NET = """
name: "p"
input: "data" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" } } }
"""


class Payload:
    """Unpickling this opens (creates) the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _payload_pickle(marker) -> bytes:
    return pickle.dumps(Payload(marker))


def _payload_torch_save(marker) -> bytes:
    buf = io.BytesIO()
    torch.save({"x": Payload(marker)}, buf)
    return buf.getvalue()


def test_payload_actually_runs_when_unpickled_unsafely(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(_payload_pickle(marker))
    assert marker.exists()    # the payload is live: the tests below are meaningful


def test_checkpoint_payload_is_refused(tmp_path):
    marker = tmp_path / "ran"
    net = cc.Net.from_string(NET, seed=0)
    ckpt = tmp_path / "c.pt"
    net.save_checkpoint(ckpt)
    obj = torch.load(ckpt, weights_only=True)
    obj["param_names"] = Payload(marker)
    torch.save(obj, ckpt)
    for load in (lambda: read_checkpoint(ckpt), lambda: cc.Net.from_checkpoint(ckpt),
                 lambda: cc.Net.from_string(NET).load_weights(ckpt)):
        with pytest.raises(WeightsError, match="c.pt"):
            load()
    assert not marker.exists()


def _rewrite_zip(src, dst, replace):
    """Copy a zip archive, with ``replace(name, data) -> data`` applied to every member."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, replace(info.filename, zin.read(info.filename)))


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    path = tmp_path_factory.mktemp("pt2") / "p.pt2"
    export_program(cc.Net.from_string(NET, seed=0), path)
    return path


def test_clean_program_still_loads(program):
    x = torch.rand(1, 2, 3, 3)
    (out,) = load_program(program).module()(x)
    assert out.shape == (1, 2, 3, 3)


def test_program_sample_inputs_payload(program, tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "inputs.pt2"
    _rewrite_zip(program, bad, lambda n, d: _payload_torch_save(marker) if n.endswith("sample_inputs/model.pt") else d)
    with pytest.raises(WeightsError, match="inputs.pt2: refused"):
        load_program(bad)
    assert not marker.exists()


def test_program_pickled_weight_payload(program, tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "weights.pt2"

    def replace(name, data):
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            for meta in cfg["config"].values():
                meta["use_pickle"] = True
            return json.dumps(cfg).encode()
        if "/data/weights/weight_" in name:
            return _payload_torch_save(marker)
        return data
    _rewrite_zip(program, bad, replace)
    with pytest.raises(WeightsError, match="weights.pt2"):
        load_program(bad)
    assert not marker.exists()


def test_program_opaque_constant_payload(program, tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "const.pt2"

    def replace(name, data):
        if name.endswith("model_constants_config.json"):
            return json.dumps({"config": {"c": {"path_name": "opaque_obj_0", "is_param": False,
                                                "use_pickle": True, "tensor_meta": None}}}).encode()
        return data
    with zipfile.ZipFile(program) as z:
        prefix = z.namelist()[0].split("/")[0]
    _rewrite_zip(program, bad, replace)
    with zipfile.ZipFile(bad, "a") as z:
        z.writestr(f"{prefix}/data/constants/opaque_obj_0", _payload_pickle(marker))
    with pytest.raises(WeightsError, match="const.pt2"):
        load_program(bad)
    assert not marker.exists()


@pytest.mark.parametrize("ext", [".caffemodel", ".h5", ".prototxt", ".pt", ".pt2", ".mat"])
def test_pickle_bytes_under_every_extension(tmp_path, ext):
    marker = tmp_path / "ran"
    path = tmp_path / f"evil{ext}"
    path.write_bytes(_payload_pickle(marker))
    net = cc.Net.from_string(NET, seed=0)
    loaders = {
        ".caffemodel": lambda: net.load_weights(path), ".h5": lambda: net.load_weights(path),
        ".prototxt": lambda: cc.Net(path), ".pt": lambda: cc.Net.from_checkpoint(path),
        ".pt2": lambda: load_program(path),
    }
    if ext == ".mat":
        from caffe_compat.pipeline.matio import read_mat
        loaders[ext] = lambda: read_mat(str(path))
    with pytest.raises(CaffeCompatError):
        loaders[ext]()
    assert not marker.exists()


def test_hdf5_opaque_pickle_dataset_is_not_unpickled(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "opaque.h5"
    with h5py.File(path, "w") as f:
        f.create_group("data/conv").create_dataset("0", data=np.void(_payload_pickle(marker)))
    with pytest.raises(WeightsError, match="opaque.h5: /data/conv/0"):
        cc.Net.from_string(NET).load_weights(path)
    assert not marker.exists()
