"""Native checkpoints, conversion between weight formats, and torch.export programs."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from caffe_compat import Layer, Net, NotSupportedError, WeightsError, register_layer
from caffe_compat import checkpoint as C
from caffe_compat import conversion as CV
from caffe_compat import export as X

# conv/relu/pool/eltwise/concat/softmax, a template, shared params (weights and bias)
STANDARD = """
name: "std"
input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { name: "w" } param { name: "b" }
  convolution_param { num_output: ${NOUT} kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "gaussian" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "data" top: "conv2"
  param { name: "w" } param { name: "b" }
  convolution_param { num_output: ${NOUT} kernel_size: 3 pad: 1 } }
layer { name: "pool" type: "Pooling" bottom: "conv2" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "pool" top: "sum" }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "conv1" top: "cat" }
layer { name: "score" type: "Convolution" bottom: "cat" top: "score"
  convolution_param { num_output: 5 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
"""
DEFINES = {"NOUT": 4}
# the same without Pooling (which fixes the spatial sizes under dynamic export)
NO_POOL = STANDARD.replace('type: "Pooling"', 'type: "ReLU"').replace(
    "pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 }", "")

# a segaware block: embedding distances -> mask -> masked im2col convolution
SEGAWARE = """
name: "seg"
input: "data" input_shape { dim: 1 dim: 3 dim: 7 dim: 9 }
input: "emb" input_shape { dim: 1 dim: 4 dim: 7 dim: 9 }
layer { bottom: "emb" top: "dist" name: "dist" type: "Im2dist"
  convolution_param { kernel_size: 3 pad: 1 stride: 1 } im2dist_param { norm: L1 } }
layer { bottom: "dist" top: "wdist" name: "wdist" type: "Scale"
  scale_param { num_axes: 0 filler { type: "constant" value: 0.5 } bias_term: false } }
layer { bottom: "wdist" top: "adist" name: "adist" type: "AbsVal" }
layer { bottom: "adist" top: "mask" name: "mask" type: "Exp" exp_param { scale: -1 } }
layer { bottom: "mask" top: "mask3" name: "mask3" type: "Tile" tile_param { axis: 1 tiles: 3 } }
layer { bottom: "data" top: "cols" name: "cols" type: "Im2col" convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { bottom: "cols" bottom: "mask3" top: "hit" name: "hit" type: "Eltwise" eltwise_param { operation: PROD } }
layer { bottom: "hit" top: "conv" name: "conv" type: "Convolution"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 bottom_is_im2col: true
                      weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" } } }
"""


def _randomize(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blobs in net.params.values():
            for p in blobs:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def _std_net(**kw):
    net = Net.from_string(STANDARD, defines=DEFINES, seed=0, **kw)
    _randomize(net)
    return net


def _assert_same_params(a, b):
    assert list(a.params) == list(b.params)
    for name in a.params:
        assert len(a.params[name]) == len(b.params[name])
        for pa, pb in zip(a.params[name], b.params[name]):
            assert pa.dtype == pb.dtype and torch.equal(pa, pb), name


def _no_temp_files(folder):
    return not [f for f in os.listdir(folder) if f.endswith(".tmp") or ".tmp." in f]


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_exact(tmp_path):
    a = _std_net()
    path = tmp_path / "m.pt"
    C.save_checkpoint(a, path)
    b = Net.from_checkpoint(path)
    _assert_same_params(a, b)
    # sharing survives: one Parameter for both layers
    assert b.params["conv1"][0] is b.layer("conv2").blobs[0]
    assert b.params["conv1"][1] is b.layer("conv2").blobs[1]
    x = torch.randn(1, 3, 8, 8)
    oa, ob = a(data=x), b(data=x)
    assert list(oa) == list(ob) == ["prob"]
    assert torch.equal(oa["prob"], ob["prob"])
    assert b.phase == a.phase and b.dtype == a.dtype and b.inputs == a.inputs


def test_checkpoint_is_plain_data(tmp_path):
    a = _std_net()
    path = tmp_path / "m.pt"
    C.save_checkpoint(a, path)
    ck = torch.load(path, weights_only=True)
    assert ck["format"] == "caffe_compat.net" and ck["version"] == 1
    assert "${" not in ck["prototxt"] and "num_output: 4" in ck["prototxt"]
    assert ck["template"] is not None and "${NOUT}" in ck["template"]
    assert ck["defines"] == {"NOUT": "4"}
    assert ck["phase"] == "TEST" and ck["level"] == 0 and ck["stages"] == [] and ck["dtype"] == "float32"
    assert sorted(ck["state_dict"]) == ["conv1/0", "conv1/1", "score/0", "score/1"]
    assert ck["shared"] == {"conv2/0": "conv1/0", "conv2/1": "conv1/1"}
    assert ck["param_names"] == {"conv1/0": "w", "conv1/1": "b", "conv2/0": "w", "conv2/1": "b"}
    assert ck["inputs"] == {"data": [1, 3, 8, 8]} and ck["outputs"] == ["prob"]
    assert isinstance(ck["caffe_compat_version"], str)
    assert torch.equal(ck["state_dict"]["score/0"], a.params["score"][0].detach())
    assert _no_temp_files(tmp_path)
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask  # not mkstemp's 0600


def test_checkpoint_float64_phase_and_stages(tmp_path):
    text = """
name: "s"
state { stage: "deploy" }
input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
layer { name: "sc" type: "Scale" bottom: "data" top: "a" scale_param { bias_term: true filler { type: "gaussian" } } }
layer { name: "only_train" type: "Scale" bottom: "a" top: "t" include { phase: TRAIN } scale_param { axis: 0 num_axes: 0 } }
layer { name: "staged" type: "Scale" bottom: "a" top: "s" include { stage: "deploy" stage: "extra" }
  scale_param { num_axes: 0 filler { type: "constant" value: 3 } } }
"""
    a = Net.from_string(text, phase="TRAIN", stages=["extra"], level=2, dtype=torch.float64, seed=3)
    assert "staged" in a.layer_names and "only_train" in a.layer_names
    path = tmp_path / "m.pt"
    C.save_checkpoint(a, path)
    b = Net.from_checkpoint(path)
    assert b.dtype == torch.float64 and b.phase == "TRAIN" and b.level == 2
    assert set(b.stages) == {"extra", "deploy"} and b.layer_names == a.layer_names
    _assert_same_params(a, b)
    # the whole text is stored: the other phase can be selected, in another dtype
    c = Net.from_checkpoint(path, phase="TEST", dtype=torch.float32)
    assert "only_train" not in c.layer_names and c.dtype == torch.float32
    torch.testing.assert_close(c.params["sc"][0], a.params["sc"][0].float(), rtol=0, atol=0)


def test_repeated_layer_names_keep_their_own_blobs(tmp_path):
    text = """
input: "data" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }
layer { name: "sc" type: "Scale" bottom: "data" top: "a" scale_param { filler { type: "gaussian" } } }
layer { name: "sc" type: "Scale" bottom: "a" top: "b" scale_param { filler { type: "gaussian" } } }
"""
    a = Net.from_string(text, seed=0)
    path = tmp_path / "m.pt"
    C.save_checkpoint(a, path)
    ck = torch.load(path, weights_only=True)
    assert sorted(ck["state_dict"]) == ["sc#1/0", "sc/0"]
    b = Net.from_checkpoint(path)
    for la, lb in zip(a.layers, b.layers):
        for pa, pb in zip(la.blobs, lb.blobs):
            assert torch.equal(pa, pb)


def test_net_built_from_netparameter(tmp_path):
    from caffe_compat.prototxt import parse_net

    a = Net(net_param=parse_net(STANDARD, defines=DEFINES), seed=0)
    _randomize(a)
    assert a.text is None
    C.save_checkpoint(a, tmp_path / "m.pt")
    b = Net.from_checkpoint(tmp_path / "m.pt")
    _assert_same_params(a, b)


def test_template_value_containing_a_template(tmp_path):
    text = 'name: "${N}" input: "data" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n' \
           'layer { name: "p" type: "Power" bottom: "data" top: "p" }'
    a = Net.from_string(text, defines={"N": "${X}"})
    C.save_checkpoint(a, tmp_path / "m.pt")
    b = Net.from_checkpoint(tmp_path / "m.pt")
    assert b.name == "${X}"


def test_load_into_another_prototxt(tmp_path):
    a = _std_net()
    C.save_checkpoint(a, tmp_path / "m.pt")
    # the same layers without sharing: conv2 is found through the checkpoint's sharing map
    unshared = STANDARD.replace('param { name: "w" } param { name: "b" }', "")
    b = Net.from_string(unshared, defines=DEFINES)
    C.load_checkpoint_into(b, tmp_path / "m.pt")
    assert b.params["conv2"][0] is not b.params["conv1"][0]
    assert torch.equal(b.params["conv2"][0], a.params["conv1"][0])
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(a(data=x)["prob"], b(data=x)["prob"])
    # a net with one layer fewer: strict refuses, lenient reports
    fewer = STANDARD.replace('bottom: "cat" top: "score"', 'bottom: "cat" top: "score0"').split(
        'layer { name: "score"')[0]
    c = Net.from_string(fewer, defines=DEFINES)
    with pytest.raises(WeightsError, match="in checkpoint but not in the net: score/0, score/1"):
        C.load_checkpoint_into(c, tmp_path / "m.pt")
    rep = C.load_checkpoint_into(c, tmp_path / "m.pt", strict=False)
    assert rep.unexpected == ["score/0", "score/1"] and not rep.missing


# ----------------------------------------------------------------------------- errors
def _saved(tmp_path, obj, name="bad.pt"):
    p = tmp_path / name
    torch.save(obj, p)
    return p


def test_not_a_checkpoint_errors(tmp_path):
    with pytest.raises(WeightsError, match="no such checkpoint file"):
        Net.from_checkpoint(tmp_path / "missing.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty.pt: empty file"):
        Net.from_checkpoint(empty)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(300))
    with pytest.raises(WeightsError, match="junk.pt: not a readable caffe_compat checkpoint"):
        Net.from_checkpoint(junk)
    # a truncated checkpoint
    a = _std_net()
    good = tmp_path / "good.pt"
    C.save_checkpoint(a, good)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="trunc.pt: not a readable"):
        Net.from_checkpoint(trunc)
    # a caffemodel / HDF5 given as a checkpoint is named as such
    a.save(tmp_path / "w.caffemodel")
    with pytest.raises(WeightsError, match="caffemodel"):
        Net.from_checkpoint(tmp_path / "w.caffemodel")
    a.save(tmp_path / "w.h5")
    with pytest.raises(WeightsError, match="HDF5"):
        Net.from_checkpoint(tmp_path / "w.h5")
    # a plain state_dict, a list, pickled code (refused by weights_only)
    with pytest.raises(WeightsError, match="plain state_dict"):
        Net.from_checkpoint(_saved(tmp_path, {"conv1.weight": torch.zeros(2)}))
    with pytest.raises(WeightsError, match="holds a list"):
        Net.from_checkpoint(_saved(tmp_path, [1, 2]))
    with pytest.raises(WeightsError, match="not a readable"):
        Net.from_checkpoint(_saved(tmp_path, {"format": C.FORMAT, "f": np.float32}))


def _ckpt(tmp_path):
    a = _std_net()
    p = tmp_path / "m.pt"
    C.save_checkpoint(a, p)
    return torch.load(p, weights_only=True)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(format="other"), "format 'other'"),
    (lambda c: c.update(version=2), "version 2 is newer"),
    (lambda c: c.update(version="1"), "invalid checkpoint version"),
    (lambda c: c.pop("prototxt"), "no 'prototxt' field"),
    (lambda c: c.update(dtype="float16"), "unsupported dtype"),
    (lambda c: c.update(stages="x"), "'stages' must be a list"),
    (lambda c: c["state_dict"].update({"x/0": [1.0]}), "not tensors"),
    (lambda c: c["state_dict"].pop("score/1"), r"missing in checkpoint: score/1"),
    (lambda c: c["state_dict"].update({"extra/0": torch.zeros(1)}), r"not in the net: extra/0"),
    (lambda c: c["state_dict"].update({"score/0": torch.zeros(5, 8, 1, 2)}),
     r"score/0: checkpoint shape \[5, 8, 1, 2\] vs net shape \[5, 8, 1, 1\]"),
    (lambda c: c["state_dict"].update({"score/1": torch.zeros(5, dtype=torch.int64)}), "not floating point"),
    (lambda c: c.update(prototxt="layer {"), "bad.pt: the stored net does not build"),
])
def test_bad_checkpoint_content(tmp_path, edit, match):
    ck = _ckpt(tmp_path)
    edit(ck)
    with pytest.raises(WeightsError if "build" not in match else Exception, match=match):
        Net.from_checkpoint(_saved(tmp_path, ck))


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    a = _std_net()
    with pytest.raises(WeightsError, match="does not exist"):
        C.save_checkpoint(a, tmp_path / "nofolder" / "m.pt")

    def boom(obj, f, *args, **kw):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(WeightsError, match=r"m\.pt.*disk full"):
        C.save_checkpoint(a, tmp_path / "m.pt")
    assert os.listdir(tmp_path) == []


def test_meta_net_cannot_be_saved(tmp_path):
    net = Net.from_string(STANDARD, defines=DEFINES, device="meta")
    with pytest.raises(WeightsError, match="meta"):
        C.save_checkpoint(net, tmp_path / "m.pt")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- conversion
def _write_prototxt(tmp_path, text=STANDARD, name="net.prototxt"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("to, ext", [("caffemodel", ".caffemodel"), ("h5", ".h5")])
def test_convert_round_trips(tmp_path, to, ext):
    proto = _write_prototxt(tmp_path)
    a = Net(proto, defines=DEFINES, seed=0)
    _randomize(a)
    a.save(tmp_path / f"orig{ext}")
    # caffemodel/h5 -> checkpoint
    CV.convert(proto, tmp_path / f"orig{ext}", tmp_path / "m.pt", defines=DEFINES)
    b = Net.from_checkpoint(tmp_path / "m.pt")
    _assert_same_params(a, b)
    # checkpoint -> caffemodel/h5 without the prototxt ("-" or None), then back into a Net
    CV.convert("-", tmp_path / "m.pt", tmp_path / f"back{ext}", to=to)
    c = Net(proto, defines=DEFINES, weights=tmp_path / f"back{ext}")
    _assert_same_params(a, c)
    # explicit --to wins over the extension
    CV.convert(None, tmp_path / "m.pt", tmp_path / "weird.bin", to=to)
    d = Net(proto, defines=DEFINES, weights=tmp_path / "weird.bin")
    _assert_same_params(a, d)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(a(data=x)["prob"], d(data=x)["prob"])
    assert _no_temp_files(tmp_path)


def test_convert_errors_leave_no_output(tmp_path):
    proto = _write_prototxt(tmp_path)
    a = Net(proto, defines=DEFINES, seed=0)
    a.save(tmp_path / "w.caffemodel")
    out = tmp_path / "out.pt"
    with pytest.raises(WeightsError, match="no such weights file"):
        CV.convert(proto, tmp_path / "nope.caffemodel", out, defines=DEFINES)
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\x08\x96\x01garbage")
    with pytest.raises(WeightsError):
        CV.convert(proto, bad, out, defines=DEFINES)
    with pytest.raises(Exception, match="holds no net definition"):
        CV.convert(None, tmp_path / "w.caffemodel", out)
    with pytest.raises(Exception, match="cannot tell the output format"):
        CV.convert(proto, tmp_path / "w.caffemodel", tmp_path / "out.xyz", defines=DEFINES)
    with pytest.raises(Exception, match="would overwrite the input"):
        CV.convert(proto, tmp_path / "w.caffemodel", tmp_path / "w.caffemodel", to="pt", defines=DEFINES)
    # weights that do not fit the net (another num_output): strict error
    with pytest.raises(WeightsError, match="do not fit"):
        CV.convert(proto, tmp_path / "w.caffemodel", out, defines={"NOUT": 6})
    assert not out.exists() and _no_temp_files(tmp_path)


# ----------------------------------------------------------------------------- torch.export
@pytest.mark.parametrize("text", [NO_POOL, STANDARD], ids=["no_pool", "with_pool"])
def test_export_standard_net_round_trip(tmp_path, text):
    net = Net.from_string(text, defines=DEFINES, seed=0)
    _randomize(net)
    path = tmp_path / "m.pt2"
    X.export_program(net, path)
    assert _no_temp_files(tmp_path)
    prog = X.load_program(path).module()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        (out,) = prog(x)
        ref = net(data=x)["prob"]
    assert torch.equal(out, ref)


@register_layer("FixedSizeForTest")
class _FixedSize(Layer):
    """Needs a concrete batch and height (``int()`` of a size specialises it under torch.export)."""

    def forward(self, x):
        n, h = int(x.shape[0]), int(x.shape[2])
        return (x * float(h * n),)


def test_export_dynamic_shapes(tmp_path):
    net = Net.from_string(NO_POOL, defines=DEFINES, seed=0)
    _randomize(net)
    ep = X.export_program(net, tmp_path / "m.pt2", dynamic=True)
    dims = X.program_input_shapes(ep, net.inputs)["data"]
    assert dims[1] == 3 and not any(isinstance(d, int) for d in (dims[0], dims[2], dims[3]))
    prog = X.load_program(tmp_path / "m.pt2").module()
    for shape in [(3, 3, 11, 6), (1, 3, 8, 8)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            (out,) = prog(x)
            ref = net(data=x)["prob"]
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
    # a layer that needs fixed sizes: they stay the prototxt's (batch 1, not the traced 2)
    net = Net.from_string(NO_POOL + 'layer { name: "fix" type: "FixedSizeForTest" bottom: "prob" top: "out" }',
                          defines=DEFINES, seed=0)
    ep = X.export_program(net, tmp_path / "p.pt2", dynamic=True)
    dims = X.program_input_shapes(ep, net.inputs)["data"]
    assert dims[:3] == [1, 3, 8] and not isinstance(dims[3], int)  # the width stays dynamic
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        (out,) = X.load_program(tmp_path / "p.pt2").module()(x)
        assert torch.equal(out, net(data=x)["out"])
    # fixed-shape export of another input size
    X.export_program(net, tmp_path / "f.pt2", input_shapes={"data": (2, 3, 5, 7)})
    x = torch.randn(2, 3, 5, 7)
    with torch.no_grad():
        (out,) = X.load_program(tmp_path / "f.pt2").module()(x)
        assert torch.equal(out, net(data=x)["out"])


def test_export_segaware_block(tmp_path):
    net = Net.from_string(SEGAWARE, seed=0)
    _randomize(net)
    X.export_program(net, tmp_path / "s.pt2")
    prog = X.load_program(tmp_path / "s.pt2").module()
    x, e = torch.randn(1, 3, 7, 9), torch.randn(1, 4, 7, 9)
    with torch.no_grad():
        outs = prog(x, e)
        ref = net(data=x, emb=e)
    assert len(outs) == len(net.outputs)
    for o, k in zip(outs, net.outputs):
        torch.testing.assert_close(o, ref[k], rtol=1e-6, atol=1e-6)


@register_layer("ItemBranchForTest")
class _ItemBranch(Layer):
    """A layer with data-dependent Python control flow (cannot be traced)."""

    def forward(self, x):
        if x.is_meta:
            return (x.new_empty(x.shape),)
        return (x * 2 if float(x.sum()) > 0 else x,)


@register_layer("FileSourceForTest")
class _FileSource(Layer):
    """A bottomless layer, like a data layer."""

    num_bottoms = (0, 0)

    def forward(self):
        return (torch.zeros(1, 1, 2, 2),)


def test_export_errors_name_the_layer(tmp_path):
    text = NO_POOL + 'layer { name: "branchy" type: "ItemBranchForTest" bottom: "prob" top: "out" }'
    net = Net.from_string(text, defines=DEFINES)
    with pytest.raises(NotSupportedError, match=r"layer 'branchy' \(ItemBranchForTest\)"):
        X.export_program(net, tmp_path / "m.pt2")
    text = STANDARD + 'layer { name: "src" type: "FileSourceForTest" top: "extra" }'
    net = Net.from_string(text, defines=DEFINES)
    with pytest.raises(NotSupportedError, match=r"'src' \(FileSourceForTest\).*deploy net"):
        X.export_program(net, tmp_path / "m.pt2")
    with pytest.raises(Exception, match="unknown input 'nope'"):
        X.export_program(_std_net(), tmp_path / "m.pt2", input_shapes={"nope": (1, 3, 4, 4)})
    assert os.listdir(tmp_path) == []


def test_load_program_errors(tmp_path):
    with pytest.raises(WeightsError, match="no such exported program"):
        X.load_program(tmp_path / "x.pt2")
    p = tmp_path / "x.pt2"
    p.write_bytes(b"nonsense")
    with pytest.raises(WeightsError, match="x.pt2: not a readable torch.export program"):
        X.load_program(p)


def test_export_leaves_the_net_usable(tmp_path):
    # Layers must not cache tensors made while tracing (they would be fake tensors): after an
    # export, the net and the program both compute the same real values.
    text = """
input: "data" input_shape { dim: 1 dim: 2 dim: 5 dim: 6 }
layer { name: "up" type: "Interp" bottom: "data" top: "up" interp_param { zoom_factor: 2 } }
layer { name: "down" type: "Interp" bottom: "up" top: "down" interp_param { shrink_factor: 2 } }
layer { name: "sc" type: "Scale" bottom: "down" top: "out" scale_param { filler { type: "gaussian" } } }
"""
    net = Net.from_string(text, seed=0)
    X.export_program(net, tmp_path / "i.pt2")
    x = torch.randn(1, 2, 5, 6)
    with torch.no_grad():
        (out,) = X.load_program(tmp_path / "i.pt2").module()(x)
        ref = net(data=x)["out"]
    assert type(ref) is torch.Tensor and type(out) is torch.Tensor
    assert torch.equal(out, ref)


# ----------------------------------------------------------------------------- the fork's own files
def test_fork_caffemodels_convert_and_export(tmp_path):
    import h5py
    from conftest import reference_path

    nets = reference_path("golden", "nets")
    # embs: caffemodel -> checkpoint -> HDF5 equals the fork's own HDF5 dataset by dataset
    proto, model = nets / "embs_reduced.prototxt", nets / "embs_reduced.caffemodel"
    a = CV.convert(proto, model, tmp_path / "embs.pt")
    b = Net.from_checkpoint(tmp_path / "embs.pt")
    _assert_same_params(a, b)
    CV.convert(None, tmp_path / "embs.pt", tmp_path / "embs.h5")
    with h5py.File(tmp_path / "embs.h5", "r") as mine, h5py.File(nets / "embs_reduced.caffemodel.h5", "r") as fork:
        fork_sets, my_sets = {}, {}
        fork.visititems(lambda k, v: fork_sets.update({k: v[()]}) if isinstance(v, h5py.Dataset) else None)
        mine.visititems(lambda k, v: my_sets.update({k: v[()]}) if isinstance(v, h5py.Dataset) else None)
        assert sorted(fork_sets) == sorted(my_sets)
        for k in fork_sets:
            assert np.array_equal(fork_sets[k], my_sets[k]), k
    z = np.load(nets / "embs_reduced.npz")
    ins = {k: torch.from_numpy(z[f"in/{k}"]) for k in a.inputs}
    with torch.no_grad():
        ra, rb = a(**ins), b(**ins)
        assert all(torch.equal(ra[k], rb[k]) for k in ra)
        X.export_program(b, tmp_path / "embs.pt2")
        outs = X.load_program(tmp_path / "embs.pt2").module()(*[ins[k] for k in b.inputs])
        assert all(torch.equal(o, ra[k]) for o, k in zip(outs, b.outputs))
    # vgg (layer names used twice): caffemodel -> checkpoint -> caffemodel, exact
    proto, model = nets / "vgg_reduced.prototxt", nets / "vgg_reduced.caffemodel"
    a = CV.convert(proto, model, tmp_path / "vgg.pt")
    assert len(set(a.layer_names)) < len(a.layer_names)
    CV.convert("-", tmp_path / "vgg.pt", tmp_path / "vgg.caffemodel")
    c = Net(proto, weights=tmp_path / "vgg.caffemodel")
    _assert_same_params(a, c)


def test_net_hooks(monkeypatch, tmp_path):
    # the one-line hooks proposed for net.py (monkeypatched until net.py has them)
    if not hasattr(Net, "from_checkpoint"):
        monkeypatch.setattr(Net, "from_checkpoint", classmethod(
            lambda cls, path, **kw: Net.from_checkpoint(path, **kw)), raising=False)
    if not hasattr(Net, "save_checkpoint"):
        monkeypatch.setattr(Net, "save_checkpoint", C.save_checkpoint, raising=False)
    a = _std_net()
    a.save_checkpoint(tmp_path / "m.pt")
    b = Net.from_checkpoint(tmp_path / "m.pt", dtype=torch.float64)
    assert b.dtype == torch.float64
    for name in a.params:
        for pa, pb in zip(a.params[name], b.params[name]):
            assert torch.equal(pa.double(), pb)
