"""Bad inputs found by fuzzing (issue 8): each gives a CaffeCompatError naming the file / layer / blob.

One test per kind of input that used to escape as a raw exception (KeyError,
TypeError, MemoryError, std::bad_alloc ...), plus the memory budget and the
wrapping of errors raised inside a layer's forward.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat import schema
from caffe_compat.errors import (CaffeCompatError, DataError, LayerRuntimeError, MemoryBudgetError, NetError,
                                 ShapeError, WeightsError)
from caffe_compat.weights import caffemodel_bytes, read_weights

CONV = """
name: "small"
input: "data" input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" } } }
"""


def _net(text=CONV, **kw):
    return cc.Net.from_string(text, seed=0, **kw)


# ----------------------------------------------------------------------------- HDF5 weights
def _h5(path, build):
    with h5py.File(path, "w") as f:
        build(f)
    return path


def _good_h5(f):
    g = f.create_group("data/conv")
    g.create_dataset("0", data=np.ones((3, 2, 1, 1), np.float32))
    g.create_dataset("1", data=np.zeros((3,), np.float32))


def test_hdf5_good_file_still_loads(tmp_path):
    net = _net()
    net.load_weights(_h5(tmp_path / "ok.h5", _good_h5))
    assert torch.equal(net.params["conv"][0], torch.ones(3, 2, 1, 1))


@pytest.mark.parametrize("kind", ["external_missing", "dangling_soft", "soft_to_group", "soft_layer"])
def test_hdf5_links_are_refused(tmp_path, kind):
    def build(f):
        g = f.create_group("data/conv")
        if kind == "external_missing":
            g["0"] = h5py.ExternalLink("no_such_file.h5", "/x")
        elif kind == "dangling_soft":
            g["0"] = h5py.SoftLink("/nowhere")
        elif kind == "soft_to_group":
            g["0"] = h5py.SoftLink("/data")
        else:
            f.create_group("elsewhere").create_dataset("0", data=np.ones((3, 2, 1, 1), np.float32))
            f["data"]["conv2"] = h5py.SoftLink("/elsewhere")
    path = _h5(tmp_path / "links.h5", build)
    with pytest.raises(WeightsError, match="links.h5.*(Link|link)") as ei:
        read_weights(path)
    assert "/data/conv" in str(ei.value)


@pytest.mark.parametrize("blob_name", ["\u00b2", "9999999999999", "-1", "x"])
def test_hdf5_bad_blob_names(tmp_path, blob_name):
    path = _h5(tmp_path / "names.h5",
               lambda f: f.create_group("data/conv").create_dataset(blob_name, data=np.ones(3, np.float32)))
    with pytest.raises(WeightsError, match=r"names.h5: /data/conv"):
        read_weights(path)


def test_hdf5_declared_shape_checked_before_reading(tmp_path):
    # a tiny file declaring a chunked, compressed 100000 x 100000 float32 dataset (37 GiB)
    path = _h5(tmp_path / "huge.h5", lambda f: f.create_group("data/conv").create_dataset(
        "0", shape=(100000, 100000), dtype=np.float32, chunks=(100, 100), compression="gzip"))
    assert path.stat().st_size < 100_000
    with pytest.raises(MemoryBudgetError, match=r"huge.h5: /data/conv/0.*declared shape \[100000, 100000\]"):
        read_weights(path, max_bytes=2 ** 30)
    net = _net(max_bytes=2 ** 30)
    with pytest.raises(MemoryBudgetError, match="40,000,000,000 bytes"):
        net.load_weights(path)


def test_hdf5_non_float_and_scalar_datasets(tmp_path):
    path = _h5(tmp_path / "int.h5", lambda f: f.create_group("data/conv").create_dataset("0", data=np.ones(3, np.int32)))
    with pytest.raises(WeightsError, match="int.h5: /data/conv/0 has dtype int32"):
        read_weights(path)
    path = _h5(tmp_path / "null.h5", lambda f: f.create_group("data/conv").create_dataset(
        "0", data=h5py.Empty("f4")))
    with pytest.raises(WeightsError, match="null.h5: /data/conv/0"):
        read_weights(path)


def test_hdf5_byte_flipped_files(tmp_path):
    good = _h5(tmp_path / "good.h5", _good_h5).read_bytes()
    rng = np.random.default_rng(0)
    for k in range(40):
        data = bytearray(good)
        for pos in rng.integers(0, len(data), size=8):
            data[pos] ^= 0xFF
        path = tmp_path / f"flip{k}.h5"
        path.write_bytes(bytes(data))
        try:
            _net().load_weights(path)
        except CaffeCompatError as e:
            assert f"flip{k}.h5" in str(e)


# ----------------------------------------------------------------------------- caffemodel
def _caffemodel(tmp_path, mutate, name="m.caffemodel"):
    msg = schema.NetParameter()
    lp = msg.layer.add()
    lp.name, lp.type = "conv", "Convolution"
    mutate(lp)
    path = tmp_path / name
    path.write_bytes(msg.SerializeToString())
    return path


def test_caffemodel_packed_data_not_whole_floats(tmp_path):
    # a packed `data` field of 5 bytes: BlobProto.data = 5, wire type 2
    head = schema.BlobProto()
    head.shape.dim.extend([1])
    blob = head.SerializeToString() + bytes([5 << 3 | 2, 5]) + b"\x00" * 5
    layer = schema.LayerParameter(name="conv", type="Convolution").SerializeToString() + bytes([7 << 3 | 2, len(blob)]) + blob
    data = bytes([100 << 3 & 0x7F | 0x80 | 2, 6, len(layer)]) + layer
    path = tmp_path / "five.caffemodel"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match=r"five.caffemodel: layer 'conv' blob 0"):
        read_weights(path)


def test_caffemodel_too_many_axes(tmp_path):
    path = _caffemodel(tmp_path, lambda lp: lp.blobs.add().shape.dim.extend([1] * 65))
    with pytest.raises(WeightsError, match=r"layer 'conv' blob 0: shape has 65 axes"):
        read_weights(path)


def test_caffemodel_non_utf8_layer_name_strict_load(tmp_path):
    net = _net()
    data = caffemodel_bytes(net).replace(b"\x0a\x04conv", b"\x0a\x04co\xffv")
    path = tmp_path / "latin.caffemodel"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match=r"latin.caffemodel: weights do not fit") as ei:
        net.load_weights(path)
    assert "co\\xffv" in str(ei.value)


# ----------------------------------------------------------------------------- memory budget
def test_budget_refuses_weights_before_allocating():
    text = CONV.replace("num_output: 3 kernel_size: 1", "num_output: 500000 kernel_size: 120")
    with pytest.raises(MemoryBudgetError, match=r"layer 'conv' \(Convolution\) blob 0 .*57,600,000,000 bytes"):
        _net(text, max_bytes="1G")


def test_budget_from_environment(monkeypatch):
    monkeypatch.setenv("CAFFE_COMPAT_MAX_BYTES", "30")
    with pytest.raises(MemoryBudgetError, match="memory budget of 30 bytes"):
        _net()
    monkeypatch.setenv("CAFFE_COMPAT_MAX_BYTES", "lots")
    with pytest.raises(MemoryBudgetError, match="CAFFE_COMPAT_MAX_BYTES"):
        _net()
    monkeypatch.delenv("CAFFE_COMPAT_MAX_BYTES")
    assert _net().max_bytes is None   # default: the machine's available memory


@pytest.mark.parametrize("layer", [
    'layer { name: "big" type: "Interp" bottom: "data" top: "big" interp_param { zoom_factor: 1000 } }',
    'layer { name: "big" type: "Tile" bottom: "data" top: "big" tile_param { axis: 2 tiles: 100000000 } }',
    'layer { name: "big" type: "Pooling" bottom: "data" top: "big" pooling_param { kernel_size: 1 pad: 0 stride: 1 } }',
    'layer { name: "big" type: "Im2col" bottom: "data" top: "big" convolution_param { kernel_size: 3 pad: 1 } }',
    'layer { name: "big" type: "Deconvolution" bottom: "data" top: "big" '
    'convolution_param { num_output: 2 kernel_size: 4 stride: 3000 } }',
])
def test_budget_refuses_forward_blobs(layer):
    text = CONV.split("layer {")[0] + layer
    net = _net(text, max_bytes=200_000)
    x = torch.rand(1, 2, 4, 4)
    if "Pooling" in layer or "Im2col" in layer:   # fit at the prototxt size, not at a large one
        net(data=x)
        x = torch.rand(1, 2, 400, 400)
    with pytest.raises(MemoryBudgetError, match=r"forward: layer 'big' \(\w+\) tops \['big'\]: needs [\d,]+ bytes"):
        net(data=x)


def test_budget_counts_all_blobs_of_a_forward():
    chain = CONV.split("layer {")[0] + "".join(
        f'layer {{ name: "r{i}" type: "ReLU" bottom: "{"data" if i == 0 else f"r{i - 1}"}" top: "r{i}" }}\n'
        for i in range(10))
    net = _net(chain, max_bytes=5 * 2 * 1000 * 1000 * 4)  # room for 5 of the 10 blobs
    with pytest.raises(MemoryBudgetError, match=r"layer 'r5' \(ReLU\).*already needed"):
        net(data=torch.rand(1, 2, 1000, 1000))
    inplace = CONV.split("layer {")[0] + "".join(
        f'layer {{ name: "r{i}" type: "ReLU" bottom: "data" top: "data" }}\n' for i in range(10))
    _net(inplace, max_bytes=5 * 2 * 1000 * 1000 * 4)(data=torch.rand(1, 2, 1000, 1000))


# ----------------------------------------------------------------------------- forward inputs
@pytest.mark.parametrize("make", [
    lambda: torch.empty(1, 2, 4, 4, device="meta"),
    lambda: np.zeros((1, 2, 4, 4), dtype=[("a", "f4")]),
    lambda: np.full((1, 2, 4, 4), None, dtype=object),
    lambda: np.full((1, 2, 4, 4), "x"),
    lambda: np.zeros((1, 2, 4, 4), np.complex64),
    lambda: torch.nested.nested_tensor([torch.rand(2, 4, 4), torch.rand(2, 4, 4)]),
    lambda: torch.rand(1, 2, 4, 4).to_sparse(),
    lambda: [[1.0]],
])
def test_forward_refuses_unusable_inputs(make):
    with pytest.raises(DataError, match=r"<string>: input 'data'"):
        _net()(data=make())


def test_forward_accepts_big_endian_and_integer_arrays():
    net = _net()
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    want = net(data=x)["conv"]
    torch.testing.assert_close(net(data=x.astype(">f4"))["conv"], want, rtol=0, atol=0)
    torch.testing.assert_close(net(data=x.astype(">i8"))["conv"], want, rtol=0, atol=0)


def test_forward_positional_input_is_a_clear_error():
    with pytest.raises(NetError, match=r"by name, e.g. net\(data=x\)"):
        _net()(torch.rand(1, 2, 4, 4))


def test_float64_overflow_to_float32_is_caught():
    with pytest.raises(DataError, match="NaN or Inf"):
        _net()(data=np.full((1, 2, 4, 4), 1e300))


def test_zero_size_inputs():
    im2col_conv = """
input: "data" input_shape { dim: 1 dim: 18 dim: 4 dim: 4 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 pad: 1 bottom_is_im2col: true } }
"""
    with pytest.raises(CaffeCompatError, match=r"layer 'conv' \(Convolution\)"):
        _net(im2col_conv)(data=torch.rand(1, 18, 0, 0))
    reduce = """
input: "data" input_shape { dim: 1 dim: 4 dim: 7 dim: 9 }
layer { name: "red" type: "ChannelReduce" bottom: "data" top: "red" channel_reduce_param { num_channels: 1 } }
"""
    net = _net(reduce)
    try:
        out = net(data=torch.rand(0, 4, 7, 9))["red"]
        assert out.shape == (0, 1, 7, 9)
    except CaffeCompatError as e:
        assert "red" in str(e)


# ----------------------------------------------------------------------------- errors inside a layer
class _Boom(cc.layers.Layer):
    """Fails on real tensors only (the build's shape pass runs it on meta tensors)."""

    def forward(self, x):
        if x.is_meta:
            return (x,)
        raise KeyError("inner detail")


def test_layer_errors_are_wrapped_with_name_and_type():
    cc.register_layer("BoomForTest")(_Boom)
    try:
        net = _net(CONV.split("layer {")[0] + 'layer { name: "b" type: "BoomForTest" bottom: "data" top: "b" }')
        with pytest.raises(LayerRuntimeError, match=r"layer 'b' \(BoomForTest\): forward from bottoms \[\[1, 2, 4, 4\]\] failed: KeyError") as ei:
            net(data=torch.rand(1, 2, 4, 4))
    finally:
        cc.layers.REGISTRY.pop("BoomForTest", None)
    assert isinstance(ei.value.__cause__, KeyError)


# ----------------------------------------------------------------------------- writers
def test_writers_refuse_nul_paths(tmp_path):
    net = _net()
    for ext in (".caffemodel", ".h5", ".pt"):
        with pytest.raises(CaffeCompatError, match="NUL"):
            (net.save_checkpoint if ext == ".pt" else net.save)(str(tmp_path / f"a\0b{ext}"))
    assert list(tmp_path.iterdir()) == []


def test_h5_save_of_nul_layer_name(tmp_path):
    net = _net(CONV.replace('name: "conv"', 'name: "\\000"'))
    with pytest.raises(WeightsError, match="cannot be an HDF5 group name"):
        net.save(tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []


def test_over_long_output_name(tmp_path):
    with pytest.raises(WeightsError, match="cannot write"):
        _net().save(tmp_path / ("x" * 300 + ".caffemodel"))


# ----------------------------------------------------------------------------- checkpoints, CLI
def _ckpt(tmp_path, edit):
    path = tmp_path / "c.pt"
    _net().save_checkpoint(path)
    obj = torch.load(path, weights_only=True)
    edit(obj)
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("edit", [
    lambda o: o.__setitem__("defines", ["A", "B"]),
    lambda o: o.__setitem__("defines", torch.zeros(3)),
    lambda o: o.__setitem__("template", 7),
    lambda o: o["state_dict"].__setitem__("conv/0", o["state_dict"]["conv/0"].to_sparse()),
    lambda o: o.__setitem__("stages", [1]),
])
def test_checkpoint_bad_fields(tmp_path, edit):
    path = _ckpt(tmp_path, edit)
    with pytest.raises(WeightsError, match=r"c.pt: (checkpoint|state_dict)"):
        cc.Net.from_checkpoint(path)
    with pytest.raises(WeightsError, match=r"c.pt: (checkpoint|state_dict)"):
        _net().load_weights(path)


def test_nul_paths_in_readers_and_convert(tmp_path):
    from caffe_compat.conversion import convert
    with pytest.raises(CaffeCompatError, match="NUL|null"):
        cc.Net(str(tmp_path / "a\0.prototxt"))
    with pytest.raises(CaffeCompatError):
        _net().load_weights(str(tmp_path / "a\0.caffemodel"))
    with pytest.raises(CaffeCompatError):
        cc.Net.from_checkpoint(str(tmp_path / "a\0.pt"))
    proto = tmp_path / "n.prototxt"
    proto.write_text(CONV)
    w = tmp_path / "w.caffemodel"
    _net().save(w)
    with pytest.raises(CaffeCompatError, match="NUL"):
        convert(proto, w, str(tmp_path / "o\0.pt"))


def test_cli_prints_message_without_traceback(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: ")
    run = lambda *a: subprocess.run([sys.executable, "-m", "caffe_compat", *a], capture_output=True, text=True)
    r = run("info", str(bad))
    assert r.returncode == 2 and "bad.prototxt" in r.stderr and "Traceback" not in r.stderr
    r = run("-v", "info", str(bad))
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_cli_internal_error_is_one_line(tmp_path, caplog, monkeypatch):
    from caffe_compat import cli
    build = cli.build_parser

    def build_parser():   # every command fails with a plain KeyError
        parser = build()
        for action in parser._subparsers._group_actions:
            for sub in action.choices.values():
                sub.set_defaults(func=lambda args: {}["boom"])
        return parser
    monkeypatch.setattr(cli, "build_parser", build_parser)
    assert cli.main(["info", str(tmp_path / "x.prototxt")]) == 1
    rec = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert rec and "KeyError" in rec[0].getMessage() and not rec[0].exc_info
    caplog.clear()
    assert cli.main(["-v", "info", str(tmp_path / "x.prototxt")]) == 1
    assert [r for r in caplog.records if "internal error" in r.getMessage()][0].exc_info


@pytest.mark.parametrize("prefix", ["a\\000b/", "z" * 300])
def test_matwrite_odd_prefix(tmp_path, prefix):
    text = CONV + ('layer { name: "mw" type: "MatWrite" bottom: "conv" mat_write_param { prefix: "%s/%s" } }'
                   % (tmp_path, prefix))
    net = _net(text)
    with pytest.raises(CaffeCompatError, match=r"layer 'mw' \(MatWrite\)"):
        net(data=torch.rand(1, 2, 4, 4))
    assert [p for p in tmp_path.iterdir()] == []


def test_shape_inference_does_not_fire_forward_hooks():
    net = _net()
    calls = []
    net.layers[0].register_forward_hook(lambda m, a, out: calls.append(out[0].device.type))
    net(data=torch.rand(1, 2, 9, 9))   # a new input size: the memory check infers shapes first
    net.infer_shapes(data=(1, 2, 5, 5))
    assert calls == ["cpu"]


def test_image_resize_to_absurd_size_is_refused(tmp_path):
    from PIL import Image
    from caffe_compat.pipeline.images import read_image
    path = tmp_path / "im.png"
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(path)
    with pytest.raises(MemoryBudgetError, match=r"im.png': resizing to 70000x70000"):
        read_image(str(path), True, 70000, 70000)
    assert read_image(str(path), True, 8, 10).shape == (8, 10, 3)


def test_png_with_truncated_header_chunk(tmp_path):
    import struct
    import zlib
    from caffe_compat.pipeline.images import image_size
    # an IHDR chunk declaring 5 bytes instead of 13 (Pillow: ValueError "Truncated IHDR chunk")
    body = b"IHDR" + b"\x00" * 5
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 5) + body + struct.pack(">I", zlib.crc32(body))
    path = tmp_path / "cut.png"
    path.write_bytes(png)
    with pytest.raises(DataError, match="cut.png"):
        image_size(str(path))
