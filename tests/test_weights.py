"""Reading and writing caffemodel / HDF5 weights."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

from caffe_compat import Net, WeightsError, schema
from caffe_compat.weights import read_weights

NET = """
name: "w"
input: "data" input_shape { dim: 1 dim: 3 dim: 6 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true filler { type: "gaussian" } } }
layer { name: "scalar" type: "Scale" bottom: "conv" top: "s2" scale_param { num_axes: 0 filler { type: "constant" value: 0.25 } } }
layer { name: "ip" type: "InnerProduct" bottom: "s2" top: "ip" inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
"""


def _randomize(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blobs in net.params.values():
            for p in blobs:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)


@pytest.mark.parametrize("ext", [".caffemodel", ".caffemodel.h5"])
def test_round_trip_is_exact(tmp_path, ext):
    a = Net.from_string(NET, seed=0)
    _randomize(a)
    path = tmp_path / f"m{ext}"
    a.save(path)
    b = Net.from_string(NET, weights=path, seed=1)
    for name in a.params:
        for pa, pb in zip(a.params[name], b.params[name]):
            assert torch.equal(pa, pb), name
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(a(data=x)["ip"], b(data=x)["ip"], rtol=0, atol=0)
    # the 0-axis Scale blob is written without a shape, with exactly one value (Caffe's ToProto)
    if ext == ".caffemodel":
        msg = schema.NetParameter.FromString(path.read_bytes())
        scalar = [lp for lp in msg.layer if lp.name == "scalar"][0].blobs[0]
        assert not scalar.HasField("shape") and len(scalar.data) == 1
        assert [lp.name for lp in msg.layer] == a.layer_names
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def _model_with(tmp_path, layers, v1=False):
    net = schema.NetParameter()
    for name, blobs in layers:
        lp = net.layers.add() if v1 else net.layer.add()
        lp.name = name
        for b in blobs:
            lp.blobs.add().CopyFrom(b)
    p = tmp_path / "m.caffemodel"
    p.write_bytes(net.SerializeToString())
    return p


def _blob(arr, legacy=False, double=False):
    b = schema.BlobProto()
    arr = np.asarray(arr)
    if legacy:
        shp = (1,) * (4 - arr.ndim) + arr.shape
        b.num, b.channels, b.height, b.width = shp
    else:
        b.shape.dim.extend(arr.shape)
    (b.double_data if double else b.data).extend(arr.ravel().tolist())
    return b


def test_legacy_shapes_double_data_and_v1(tmp_path):
    w = np.arange(5 * 4 * 3 * 3 * 3, dtype=np.float32)[:4 * 3 * 3 * 3].reshape(4, 3, 3, 3)
    bias = np.array([1, 2, 3, 4], np.float64)
    net = Net.from_string(NET)
    for v1 in (False, True):
        p = _model_with(tmp_path, [("conv", [_blob(w, legacy=True), _blob(bias, legacy=True, double=True)])], v1=v1)
        rep = net.load_weights(p, strict=False)
        assert rep.loaded == ["conv"] and "bn" in rep.missing
        np.testing.assert_array_equal(net.params["conv"][0].detach().numpy(), w)
        np.testing.assert_array_equal(net.params["conv"][1].detach().numpy(), bias.astype(np.float32))


def test_strict_lists_missing_unexpected_and_mismatched(tmp_path):
    net = Net.from_string(NET)
    p = _model_with(tmp_path, [("conv", [_blob(np.zeros((4, 3, 5, 5))), _blob(np.zeros(4))]),
                               ("ghost", [_blob(np.zeros(3))])])
    with pytest.raises(WeightsError) as e:
        net.load_weights(p)
    msg = str(e.value)
    assert "ghost" in msg and "bn" in msg and "conv" in msg and "[4, 3, 5, 5]" in msg
    rep = net.load_weights(p, strict=False)
    assert rep.unexpected == ["ghost"] and "conv" not in rep.loaded and rep.mismatched
    p = _model_with(tmp_path, [("conv", [_blob(np.zeros((4, 3, 3, 3)))])])
    with pytest.raises(WeightsError, match="file has 1 blobs, net has 2"):
        net.load_weights(p)


def test_bad_files_clear_errors(tmp_path):
    net = Net.from_string(NET)
    _randomize(net)
    good = tmp_path / "good.caffemodel"
    net.save(good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.caffemodel"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="trunc.caffemodel"):
        Net.from_string(NET, weights=trunc)
    text = tmp_path / "text.caffemodel"
    text.write_text(NET)
    with pytest.raises(WeightsError, match="text.caffemodel"):
        Net.from_string(NET, weights=text)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        Net.from_string(NET, weights=empty)
    with pytest.raises(WeightsError, match="no such weights file"):
        Net.from_string(NET, weights=tmp_path / "nope.caffemodel")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("weights", data=np.zeros(3))
    with pytest.raises(WeightsError, match="'data' group"):
        Net.from_string(NET, weights=other)
    badcount = _model_with(tmp_path, [("conv", [])])
    msg = schema.NetParameter.FromString(badcount.read_bytes())
    b = msg.layer[0].blobs.add()
    b.shape.dim.extend([4, 3, 3, 3])
    b.data.extend([0.0] * 7)
    badcount.write_bytes(msg.SerializeToString())
    with pytest.raises(WeightsError, match="needs 108 values but the file holds 7"):
        read_weights(badcount)


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    net = Net.from_string(NET)
    with pytest.raises(WeightsError, match="does not exist"):
        net.save(tmp_path / "no" / "dir" / "x.caffemodel")
    from pathlib import Path

    real_write = Path.write_bytes

    def half_then_fail(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(WeightsError, match="disk full"):
        net.save(tmp_path / "x.caffemodel")
    monkeypatch.undo()

    real_create = h5py.Group.create_dataset
    calls = []

    def fail_second(self, *a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise OSError("disk full")
        return real_create(self, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", fail_second)
    with pytest.raises(WeightsError, match="disk full"):
        net.save(tmp_path / "x.caffemodel.h5")
    assert os.listdir(tmp_path) == []


def test_hdf5_shared_params_stored_once(tmp_path):
    text = """
    input: "a" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }
    layer { name: "c1" type: "Convolution" bottom: "a" top: "b" param { name: "w" } param { name: "bb" }
      convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" } } }
    layer { name: "c2" type: "Convolution" bottom: "b" top: "c" param { name: "w" } param { name: "bb" }
      convolution_param { num_output: 2 kernel_size: 1 } }
    """
    net = Net.from_string(text, seed=0)
    p = tmp_path / "s.h5"
    net.save(p)
    with h5py.File(p) as f:
        assert sorted(f["data/c1"].keys()) == ["0", "1"] and list(f["data/c2"].keys()) == []
    net2 = Net.from_string(text, weights=p, seed=5)
    assert torch.equal(net2.params["c1"][0], net.params["c1"][0])
    assert net2.params["c2"][0] is net2.params["c1"][0]


def test_hdf5_sharing_only_the_weight_leaves_index_gaps(tmp_path):
    """Caffe's ToHDF5 skips shared blobs by index, so /data/c2 may hold only '1'; it must load back."""
    text = """
    input: "a" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }
    layer { name: "c1" type: "Convolution" bottom: "a" top: "b" param { name: "w" }
      convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
    layer { name: "c2" type: "Convolution" bottom: "b" top: "c" param { name: "w" }
      convolution_param { num_output: 2 kernel_size: 1 bias_filler { type: "gaussian" } } }
    """
    net = Net.from_string(text, seed=0)
    p = tmp_path / "gap.h5"
    net.save(p)
    with h5py.File(p) as f:
        assert list(f["data/c2"].keys()) == ["1"]
    again = Net.from_string(text, weights=p, seed=9)
    for name in ("c1", "c2"):
        for a, b in zip(net.params[name], again.params[name]):
            assert torch.equal(a, b)


def test_hdf5_refuses_layer_names_that_are_not_group_names(tmp_path):
    text = NET.replace('name: "conv"', 'name: "inc/1x1"').replace('bottom: "conv"', 'bottom: "conv"')
    net = Net.from_string(text)
    with pytest.raises(WeightsError, match="inc/1x1"):
        net.save(tmp_path / "x.h5")
    assert os.listdir(tmp_path) == []


def test_float64_net_round_trips_double_data(tmp_path):
    a = Net.from_string(NET, dtype=torch.float64, seed=0)
    _randomize(a)
    with torch.no_grad():
        a.params["conv"][0] += 1e-12  # not representable in float32
    for ext in (".caffemodel", ".h5"):
        a.save(tmp_path / f"m{ext}")
        b = Net.from_string(NET, weights=tmp_path / f"m{ext}", dtype=torch.float64)
        assert torch.equal(a.params["conv"][0], b.params["conv"][0])


def test_mismatched_layer_reported_once_and_huge_blob_refused(tmp_path):
    net = Net.from_string(NET)
    p = _model_with(tmp_path, [("conv", [_blob(np.zeros((4, 3, 5, 5))), _blob(np.zeros(4))])])
    rep = net.load_weights(p, strict=False)
    assert "conv" not in rep.missing and any("conv" in m for m in rep.mismatched)
    msg = schema.NetParameter()
    lp = msg.layer.add()
    lp.name = "conv"
    b = lp.blobs.add()
    b.shape.dim.extend([2 ** 32, 2 ** 32])
    p.write_bytes(msg.SerializeToString())
    with pytest.raises(WeightsError, match="more than the limit"):
        read_weights(p)


def test_unpacked_values_read_through_the_fallback(tmp_path):
    """Caffe writes packed values; a writer using the unpacked encoding (legal protobuf) must still load."""
    import struct
    net = Net.from_string(NET)
    w = np.arange(4 * 3 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 3) / 7
    b = np.arange(4, dtype=np.float32)

    def varint(n):
        out = b""
        while True:
            x, n = n & 0x7F, n >> 7
            out += bytes([x | (0x80 if n else 0)])
            if not n:
                return out

    def ld(num, payload):
        return varint(num << 3 | 2) + varint(len(payload)) + payload

    def blob_unpacked(arr):
        shape = schema.BlobShape()
        shape.dim.extend(arr.shape)
        body = ld(7, shape.SerializeToString())
        body += b"".join(varint(5 << 3 | 5) + struct.pack("<f", v) for v in arr.ravel())  # field 5, I32 each
        return body

    layer = ld(1, b"conv") + ld(7, blob_unpacked(w)) + ld(7, blob_unpacked(b))
    p = tmp_path / "unpacked.caffemodel"
    p.write_bytes(ld(100, layer))
    (name, _, blobs), = read_weights(p)
    assert name == "conv"
    np.testing.assert_array_equal(blobs[0].array, w)
    np.testing.assert_array_equal(blobs[1].array, b)
    rep = net.load_weights(p, strict=False)
    assert rep.loaded == ["conv"]
