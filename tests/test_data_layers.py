"""Data layers (Input, DummyData, ImageSegData, ImageData, TwoImageData), MatWrite and their helpers.

Goldens: every case of ``golden/data`` (the fork's data-layer tops, compared
exactly: PNG and JPEG pixels alike -- Pillow's libjpeg-turbo decodes the golden
JPEGs to the same pixels as the fork's OpenCV, measured max difference 0), the
fork's ``.mat`` files of ``golden/data/matwrite``, and the DummyData cases of
``golden/layers``.  Image decoding / resizing is also cross-checked against
OpenCV when ``cv2`` is installed (test extra), and against small fixtures
computed with OpenCV 4.14 otherwise.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe_compat import schema
from caffe_compat.errors import DataError, LayerConfigError, NetError, NotSupportedError, ShapeError
from caffe_compat.layers import BuildContext, get_layer_class, shape_only
from caffe_compat.layers.inputs import DummyDataLayer
from caffe_compat.pipeline import images as I
from caffe_compat.pipeline import lists as L
from caffe_compat.pipeline import matio as M
from conftest import REFERENCE_DIR, reference_path

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

MEAN = np.array([104.008, 116.669, 122.675], np.float32)


# ------------------------------------------------------------------------------------------ helpers
def layer_param(text: str):
    net = text_format.Merge(text, schema.NetParameter())
    return net.layer[0]


def build(text: str, bottom_shapes=(), phase="TEST", seed=0, dtype=torch.float32):
    lp = layer_param(text)
    g = torch.Generator()
    g.manual_seed(seed)
    cls = get_layer_class(lp.type, lp.name)
    return cls(lp, list(bottom_shapes), BuildContext(phase=phase, generator=g, dtype=dtype))


def seg_text(source, root="", crop=None, extra_tp="", extra_idp="", tops=("data", "label", "data_dim"),
             label_type="PIXEL", batch=1, type_="ImageSegData"):
    crop_s = f"crop_size: {crop}" if crop is not None else ""
    tops_s = " ".join(f'top: "{t}"' for t in tops)
    lt = f"label_type: {label_type}" if label_type else ""
    return (f'layer {{ name: "data" type: "{type_}" {tops_s} '
            f'transform_param {{ mirror: false {crop_s} mean_value: 104.008 mean_value: 116.669 '
            f'mean_value: 122.675 {extra_tp} }} '
            f'image_data_param {{ root_folder: "{root}" source: "{source}" batch_size: {batch} {lt} '
            f'{extra_idp} }} }}')


def write_png(path, arr):
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def make_dataset(tmp_path, sizes=((5, 7), (6, 4), (3, 9)), label_mode="L"):
    """Images whose pixels encode their coordinates; labels = column index (for mirror/crop checks)."""
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    lines = []
    for k, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 10 + k, yy * 10 + k, np.full_like(xx, 200 + k)], -1).astype(np.uint8)
        write_png(tmp_path / "img" / f"{k}.png", rgb)
        write_png(tmp_path / "lab" / f"{k}.png", (xx + 1).astype(np.uint8))
        lines.append(f"/img/{k}.png /lab/{k}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path), str(tmp_path / "list.txt")


# ============================================================================== golden/data cases
def _data_cases():
    p = reference_path("golden", "data", "INDEX.json")
    return [c for c in json.loads(p.read_text()) if c != "matwrite_pipeline"]


try:
    DATA_CASES = _data_cases()
except BaseException:  # pytest.skip raised outside a test: reference absent (a missing part fails)
    if REFERENCE_DIR.exists():
        raise
    DATA_CASES = []


@pytest.mark.parametrize("case", DATA_CASES)
def test_golden_data_case(case):
    gdir = reference_path("golden", "data")
    d = np.load(gdir / f"{case}.npz")
    text = str(d["prototxt"]).replace("${GOLDEN_DATA}", str(gdir))
    lp = layer_param(text)
    layer = get_layer_class(lp.type)(lp, [], BuildContext(phase="TEST"))
    n_iter = d["out/data"].shape[0]
    for it in range(n_iter):
        outs = layer()
        assert len(outs) == len(lp.top)
        for name, out in zip(lp.top, outs):
            want = d[f"out/{name}"][it]
            got = out.numpy()
            assert got.shape == want.shape, (name, got.shape, want.shape)
            # Exact, including the JPEG case (see the module docstring).
            assert np.array_equal(got, want), f"{case} iter {it} top {name}: max diff {np.abs(got - want).max()}"


def test_golden_jpeg_decoding_matches_fork_exactly():
    """The fork's data for the JPEG list equals Pillow's decode + the fork's transform, pixel for pixel."""
    gdir = reference_path("golden", "data")
    d = np.load(gdir / "imagesegdata_crop513_pixel_jpg.npz")
    for i, n in enumerate("abc"):
        bgr = I.read_image(str(gdir / "dataset" / "JPEGImages" / f"img_{n}.jpg"), True)
        h, w = bgr.shape[:2]
        fork = d["out/data"][i, 0][:, :h, :w].transpose(1, 2, 0) + MEAN
        assert np.abs(np.rint(fork) - bgr).max() == 0


def test_golden_data_through_net_and_shape_pass(tmp_path):
    """The net builds ImageSegData without touching files (crop given) and reports the shapes."""
    import caffe_compat
    text = seg_text(str(tmp_path / "nonexistent_list.txt"), crop=513, label_type="NONE")
    net = caffe_compat.Net.from_string(text, phase="TEST")
    assert net.blob_shapes["data"] == (1, 3, 513, 513)
    assert net.blob_shapes["label"] == (1, 1, 513, 513)
    assert net.blob_shapes["data_dim"] == (1, 1, 1, 2)
    assert net.infer_shapes()["data"] == (1, 3, 513, 513)
    with pytest.raises(DataError, match="nonexistent_list.txt"):
        net.forward()


def test_auto_top_of_imagesegdata():
    import caffe_compat
    text = seg_text("/nonexistent", crop=9, tops=("data", "label"))
    net = caffe_compat.Net.from_string(text, phase="TRAIN")
    assert len(net.top_names[0]) == 3 and net.top_names[0][2].startswith("(automatic)")


# ============================================================================= MatWrite vs goldens
def test_golden_matwrite_pipeline(tmp_path):
    import caffe_compat
    gdir = reference_path("golden", "data")
    d = np.load(gdir / "matwrite_pipeline.npz")
    (tmp_path / "fc8").mkdir()
    (tmp_path / "data").mkdir()
    text = str(d["prototxt"]).replace("${GOLDEN_DATA}/matwrite/", str(tmp_path) + "/")
    net = caffe_compat.Net.from_string(text, phase="TEST", defines={"GOLDEN_DATA": str(gdir)})
    assert net.layer("fc8_mat").iter == 0  # the build's shape pass did not count
    assert not any(os.scandir(tmp_path / "fc8"))  # ... nor write
    with torch.no_grad():
        for k in d.files:
            if k.startswith("param/"):
                lname, i = k[6:].rsplit("/", 1)
                net.params[lname][int(i)].copy_(torch.from_numpy(d[k]))
    for it in range(3):
        net.forward()
        for b in ("data", "label", "data_dim"):
            assert np.array_equal(net.blobs[b].numpy(), d[f"out/{b}"][it])
    index = json.loads((gdir / "INDEX.json").read_text())["matwrite_pipeline"]["mat_files"]
    for rel, spec in index.items():
        mine, fork = tmp_path / rel, gdir / "matwrite" / rel
        got, want = M.read_mat(mine), M.read_mat(fork)
        assert set(got) == set(want) == {"data"}
        assert got["data"].dtype == want["data"].dtype == np.float32
        assert list(got["data"].shape) == spec["data"][0] == list(want["data"].shape)
        if rel.startswith("data/"):
            assert np.array_equal(got["data"], want["data"])
        else:  # convolution output: float summation order
            err = np.abs(got["data"] - want["data"]).max() / np.abs(want["data"]).max()
            assert err <= 1e-5
        # the layout after the header text is the fork's, byte for byte (data/ holds exact values)
        if rel.startswith("data/"):
            assert mine.read_bytes()[116:] == fork.read_bytes()[116:]


def test_matwrite_files_equal_fork_byte_layout():
    gdir = reference_path("golden", "data")
    d = np.load(gdir / "matwrite_pipeline.npz")
    for i, n in enumerate("abc"):
        for sub, key, k in (("fc8", "out/score", 0), ("data", "out/data", 0), ("data", "out/label", 1)):
            fork = (gdir / "matwrite" / sub / f"img_{n}_blob_{k}.mat").read_bytes()
            mine = M.mat_bytes({"data": M.blob_to_mat_array(d[key][i])})
            assert mine[116:] == fork[116:]
            assert np.array_equal(M.read_blob_mat(gdir / "matwrite" / sub / f"img_{n}_blob_{k}.mat"), d[key][i])


def test_matwrite_matches_scipy_loadmat(tmp_path):
    sio = pytest.importorskip("scipy.io")
    blob = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert M.write_blob_mat(str(tmp_path / "x.mat"), blob)
    m = sio.loadmat(str(tmp_path / "x.mat"))
    assert m["data"].dtype == np.float32 and m["data"].shape == (5, 4, 3, 2)
    assert np.array_equal(m["data"].transpose(3, 2, 1, 0), blob.numpy())
    # N = 1 keeps the trailing singleton in the file
    assert M.write_blob_mat(str(tmp_path / "y.mat"), blob[:1])
    assert sio.loadmat(str(tmp_path / "y.mat"))["data"].shape == (5, 4, 3, 1)


# ================================================================================ MatWrite unit tests
def matwrite(prefix, source=None, strip=0, period=1, bottoms=((1, 2, 3, 4),)):
    src = f'source: "{source}" strip: {strip}' if source is not None else ""
    bot = " ".join(f'bottom: "b{i}"' for i in range(len(bottoms)))
    return build(f'layer {{ name: "mw" type: "MatWrite" {bot} mat_write_param {{ prefix: "{prefix}" '
                 f'{src} period: {period} }} }}', bottoms)


def test_matwrite_iter_names_period_and_skip_existing(tmp_path):
    mw = matwrite(str(tmp_path) + "/p_", period=2, bottoms=((1, 2, 3, 4), (2, 5)))
    x, y = torch.randn(1, 2, 3, 4), torch.randn(2, 5)
    for _ in range(5):
        assert mw(x, y) == ()
    names = sorted(os.listdir(tmp_path))
    assert names == [f"p_iter_{i}_blob_{k}.mat" for i in (0, 2, 4) for k in (0, 1)]
    # legacy accessors: a (N, C) blob is written as [W H C N] = [1 1 5 2]
    assert M.read_mat(tmp_path / "p_iter_0_blob_1.mat")["data"].shape == (1, 1, 5, 2)
    assert np.array_equal(M.read_blob_mat(tmp_path / "p_iter_2_blob_1.mat").reshape(2, 5), y.numpy())
    assert mw.iter == 5
    # existing files are not overwritten
    sentinel = tmp_path / "p_iter_0_blob_0.mat"
    before = sentinel.read_bytes()
    mw.reset()
    mw(torch.zeros(1, 2, 3, 4), y)
    assert sentinel.read_bytes() == before
    assert str(sentinel) in mw.skipped and not mw.written
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp_")]


def test_matwrite_source_strip_and_overrun(tmp_path):
    (tmp_path / "ids.txt").write_text("2008_000001.jpg\n\n2008_000002.jpg extra\n")
    out = tmp_path / "out"
    out.mkdir()
    mw = matwrite(str(out) + "/", source=str(tmp_path / "ids.txt"), strip=4)
    mw(torch.ones(1, 1, 2, 2))
    mw(torch.ones(1, 1, 2, 2))
    assert sorted(os.listdir(out)) == ["2008_000001_blob_0.mat", "2008_000002_blob_0.mat"]
    with pytest.raises(DataError, match="more iterations"):
        mw(torch.ones(1, 1, 2, 2))
    mw2 = matwrite(str(out) + "/", source=str(tmp_path / "ids.txt"), strip=15)
    with pytest.raises(DataError, match="too much stripping"):
        mw2(torch.ones(1, 1, 2, 2))


def test_matwrite_set_prefix_and_missing_folder(tmp_path):
    mw = matwrite(str(tmp_path / "missing") + "/")
    with pytest.raises(DataError, match="does not exist"):
        mw(torch.ones(1, 2, 3, 4))
    mw.set_prefix(str(tmp_path) + "/")
    mw.reset()
    mw(torch.ones(1, 2, 3, 4))
    assert os.listdir(tmp_path) == ["iter_0_blob_0.mat"]


def test_matwrite_shape_pass_writes_nothing(tmp_path):
    mw = matwrite(str(tmp_path) + "/")
    with shape_only():
        assert mw(torch.empty(1, 2, 3, 4, device="meta")) == ()
    assert mw.iter == 0 and not os.listdir(tmp_path)


def test_matwrite_bad_params(tmp_path):
    with pytest.raises(LayerConfigError, match="prefix is required"):
        build('layer { name: "mw" type: "MatWrite" bottom: "x" }', [(1, 2, 3, 4)])
    with pytest.raises(LayerConfigError, match="period must be positive"):
        matwrite(str(tmp_path), period=0)
    with pytest.raises(LayerConfigError, match="strip cannot be negative"):
        matwrite(str(tmp_path), source="ids.txt", strip=-1)
    with pytest.raises(ShapeError, match="at most 4 axes"):
        matwrite(str(tmp_path), bottoms=((1, 2, 3, 4, 5),))
    with pytest.raises(LayerConfigError, match="bottom"):
        build('layer { name: "mw" type: "MatWrite" mat_write_param { prefix: "x" } }', [])
    with pytest.raises(LayerConfigError, match="top"):
        build('layer { name: "mw" type: "MatWrite" bottom: "x" top: "y" mat_write_param { prefix: "x" } }',
              [(1, 2)])


# ======================================================================================= DummyData
@pytest.mark.parametrize("case", ["dummydata_constant", "dummydata_xy_1x2x5x7", "dummydata_xy_2x2x4x6",
                                  "dummydata_xy_3x2x3x5"])
def test_golden_dummydata(case):
    d = np.load(reference_path("golden", "layers", f"{case}.npz"))
    lp = layer_param(str(d["prototxt"]))
    layer = DummyDataLayer(lp, [], BuildContext())
    layer.set_net_outputs([0])  # the golden nets' only blob is a net output
    for _ in range(2):  # values after two forwards, as recorded
        (out,) = layer()
    assert np.array_equal(out.numpy(), d[f"out/{lp.top[0]}"])


def test_dummydata_constant_not_net_output_keeps_value():
    layer = build('layer { name: "d" type: "DummyData" top: "d" dummy_data_param { shape { dim: 2 dim: 3 } '
                  'data_filler { type: "constant" value: 0.5 } } }')
    (out,) = layer()
    assert torch.all(out == 0.5)
    out.fill_(7)  # callers cannot corrupt the stored constant
    assert torch.all(layer()[0] == 0.5)


def test_dummydata_legacy_dims_and_per_top_fillers():
    layer = build('layer { name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { num: 2 '
                  'channels: 3 channels: 1 height: 4 width: 5 data_filler { type: "constant" value: 2 } '
                  'data_filler { type: "gaussian" std: 1 } } }', seed=1)
    a, b = layer()
    assert a.shape == (2, 3, 4, 5) and b.shape == (2, 1, 4, 5)
    assert torch.all(a == 2)
    b2 = layer()[1]
    assert not torch.equal(b, b2)  # non-constant fillers are re-run at every forward
    # no filler => constant 0
    (z,) = build('layer { name: "d" type: "DummyData" top: "z" dummy_data_param { shape { dim: 3 } } }')()
    assert torch.equal(z, torch.zeros(3))


def test_dummydata_xy_float64_and_meta():
    layer = build('layer { name: "xy" type: "DummyData" top: "xy" dummy_data_param { shape { dim: 1 dim: 2 '
                  'dim: 3 dim: 4 } data_filler { type: "xy" } } }', dtype=torch.float64)
    (xy,) = layer()
    assert xy.dtype == torch.float64
    assert torch.equal(xy[0, 0], torch.arange(4, dtype=torch.float64).expand(3, 4))
    assert torch.equal(xy[0, 1], torch.arange(3, dtype=torch.float64)[:, None].expand(3, 4))
    with shape_only():
        (m,) = layer()
    assert m.is_meta and m.shape == (1, 2, 3, 4)


@pytest.mark.parametrize("body, err, match", [
    ('shape { dim: 2 } num: 1', LayerConfigError, "not both"),
    ('shape { dim: 2 } shape { dim: 3 } shape { dim: 4 }', LayerConfigError, "once or once per top"),
    ('num: 1 channels: 1 height: 1', LayerConfigError, "'width' must be given"),
    ('shape { dim: 2 } data_filler { } data_filler { } data_filler { }', LayerConfigError, "data_filler"),
    ('shape { dim: 1 dim: 3 dim: 2 dim: 2 } data_filler { type: "xy" }', ShapeError, "xy filler"),
    ('shape { dim: 2 } data_filler { type: "nope" }', LayerConfigError, "unknown filler"),
    ('shape { dim: -2 }', ShapeError, "negative"),
])
def test_dummydata_errors(body, err, match):
    with pytest.raises(err, match=match):
        build(f'layer {{ name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param {{ {body} }} }}')


# =========================================================================================== Input
def test_input_layer_shapes_and_net():
    import caffe_compat
    lay = build('layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 3 '
                'dim: 5 dim: 5 } } }')
    assert lay.shapes == [(1, 3, 5, 5), (1, 3, 5, 5)] and lay.feeds_net_inputs
    lay = build('layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 } '
                'shape { dim: 2 dim: 3 } } }')
    assert lay.input_shapes_for(2) == [(1,), (2, 3)]
    with pytest.raises(NetError):
        lay()
    empty = build('layer { name: "in" type: "Input" top: "a" }')
    assert empty.shapes == []
    with pytest.raises(LayerConfigError, match="no shape"):
        empty.input_shapes_for(1)
    with pytest.raises(LayerConfigError, match="once per top"):
        build('layer { name: "in" type: "Input" top: "a" top: "b" top: "c" input_param { shape { dim: 1 } '
              'shape { dim: 1 } } }')
    with pytest.raises(ShapeError, match="negative"):
        build('layer { name: "in" type: "Input" top: "a" input_param { shape { dim: -1 } } }')
    net = caffe_compat.Net.from_string(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }\n'
        'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
    assert net.inputs == ["x"]
    out = net.forward(x=-torch.ones(1, 2, 3, 3))
    assert torch.equal(out["y"], torch.zeros(1, 2, 3, 3))


# ==================================================================================== ImageSegData
def test_imagesegdata_synthetic_train_crop_mirror_consistency(tmp_path):
    root, lst = make_dataset(tmp_path, sizes=((8, 9), (7, 12)))
    layer = build(seg_text(lst, root, crop=5, extra_tp="", batch=2).replace("mirror: false", "mirror: true"),
                  phase="TRAIN", seed=3)
    seen_mirror = set()
    for _ in range(6):
        data, label, dim = layer()
        assert data.shape == (2, 3, 5, 5) and label.shape == (2, 1, 5, 5)
        for n in range(2):
            x_from_data = (data[n, 2] + MEAN[2]).round() - [0, 1][n]  # R = 10*x + k (BGR order)
            x_from_label = label[n, 0] - 1
            assert torch.equal(x_from_data / 10, x_from_label)  # same crop and mirror for both
            row = x_from_label[0]
            seen_mirror.add(bool(row[0] > row[-1]))
            assert torch.all((row[1:] - row[:-1]).abs() == 1)
        assert dim[:, 0, 0].tolist() == [[5, 5], [5, 5]]
    assert seen_mirror == {True, False}


def test_imagesegdata_padding_centre_and_data_dim(tmp_path):
    root, lst = make_dataset(tmp_path, sizes=((3, 4),))
    layer = build(seg_text(lst, root, crop=6, extra_idp="ignore_label: 77"))
    data, label, dim = layer()
    assert dim.tolist() == [[[[3.0, 4.0]]]]
    assert torch.all(data[0, :, 3:, :] == 0) and torch.all(data[0, :, :, 4:] == 0)  # mean padding -> 0
    assert torch.all(label[0, 0, 3:, :] == 77) and torch.all(label[0, 0, :, 4:] == 77)
    assert torch.equal(label[0, 0, :3, :4], torch.arange(1, 5, dtype=torch.float32).expand(3, 4))


def test_imagesegdata_label_types_and_saturation(tmp_path):
    root, _ = make_dataset(tmp_path, sizes=((4, 4),))
    lst = tmp_path / "l.txt"
    lst.write_text("/img/0.png 300\n/img/0.png -5\n/img/0.png\n")
    layer = build(seg_text(str(lst), root, crop=4, label_type="IMAGE"))
    assert [float(layer()[1][0, 0, 0, 0]) for _ in range(3)] == [255.0, 0.0, 0.0]
    layer = build(seg_text(str(lst), root, crop=4, label_type="NONE"))
    assert torch.all(layer()[1] == 255)


def test_imagesegdata_scale_factors(tmp_path):
    root, lst = make_dataset(tmp_path, sizes=((8, 10),))
    layer = build(seg_text(lst, root, crop=20, extra_tp="scale_factors: 0.5"), phase="TRAIN")
    data, label, dim = layer()
    assert dim.tolist() == [[[[8.0, 10.0]]]]  # recorded before rescaling
    lab = label[0, 0]
    # 0.5 -> 4x5 image (nearest labels = every second column), then padding with 255
    assert torch.equal(lab[:4, :5], torch.tensor([1.0, 3, 5, 7, 9]).expand(4, 5))
    assert torch.all(lab[4:] == 255) and torch.all(lab[:, 5:] == 255)


def test_imagesegdata_no_crop_shape_from_first_image(tmp_path):
    root, lst = make_dataset(tmp_path, sizes=((5, 7), (6, 8), (3, 9)))
    layer = build(seg_text(lst, root))
    assert layer.top_shapes()[0] == (1, 3, 5, 7)
    layer()
    data, label, dim = layer()  # larger image: its top-left part, as the fork
    assert data.shape == (1, 3, 5, 7) and dim.tolist() == [[[[5.0, 7.0]]]]
    with pytest.raises(ShapeError, match="smaller than the first"):
        layer()
    # without the data the shape cannot be known: clear error asking for crop_size
    with pytest.raises(LayerConfigError, match="crop_size"):
        build(seg_text(str(tmp_path / "missing.txt"), root))
    # new_height/new_width give the shape without reading anything
    lay = build(seg_text(str(tmp_path / "missing.txt"), root, extra_idp="new_height: 4 new_width: 6"))
    assert lay.top_shapes()[0] == (1, 3, 4, 6)


def test_imagesegdata_wraps_shuffles_and_skips(tmp_path):
    root, lst = make_dataset(tmp_path, sizes=((4, 4), (4, 4), (4, 4)))
    layer = build(seg_text(lst, root, crop=4, batch=2))
    assert layer.num_items == 3
    ks = []
    for _ in range(3):
        data = layer()[0]
        ks += [int(round(float(data[n, 0, 0, 0] + MEAN[0]))) - 200 for n in range(2)]  # B = 200 + k
    assert ks == [0, 1, 2, 0, 1, 2]
    layer = build(seg_text(lst, root, crop=4, extra_idp="shuffle: true"), seed=5)
    epoch = [int(round(float(layer()[0][0, 0, 0, 0] + MEAN[0]))) - 200 for _ in range(3)]
    assert sorted(epoch) == [0, 1, 2]
    skips = set()
    for seed in range(12):
        layer = build(seg_text(lst, root, crop=4, extra_idp="rand_skip: 3"), seed=seed)
        assert layer.num_items == 3
        skip = layer.cursor
        skips.add(skip)
        assert int(round(float(layer()[0][0, 0, 0, 0] + MEAN[0]))) - 200 == skip  # starts after the skip
    assert skips == {0, 1, 2}
    errors = 0
    for seed in range(12):
        try:
            build(seg_text(lst, root, crop=4, extra_idp="rand_skip: 50"), seed=seed).num_items
        except DataError as e:
            assert "not enough points to skip" in str(e)
            errors += 1
    assert errors > 0


def test_imagesegdata_set_source_and_root_concat(tmp_path):
    root, lst = make_dataset(tmp_path, sizes=((4, 4),))
    other = tmp_path / "other.txt"
    other.write_text("img/0.png lab/0.png\n")
    layer = build(seg_text(str(tmp_path / "nope.txt"), "/nonexistent", crop=4))
    layer.set_source(str(other), root + "/")  # root_folder is prepended verbatim
    assert layer.num_items == 1
    assert layer()[0].shape == (1, 3, 4, 4)


def test_imagesegdata_errors(tmp_path):
    root, lst = make_dataset(tmp_path, sizes=((4, 4), (4, 5)))
    # missing list file: error at the first forward, naming the file
    layer = build(seg_text(str(tmp_path / "missing.txt"), root, crop=4))
    with pytest.raises(DataError, match="missing.txt"):
        layer()
    # missing image
    (tmp_path / "l1.txt").write_text("/img/nothere.png /lab/0.png\n")
    with pytest.raises(DataError, match="nothere.png.*does not exist"):
        build(seg_text(str(tmp_path / "l1.txt"), root, crop=4))()
    # corrupt image
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "l2.txt").write_text("/img/bad.png /lab/0.png\n")
    with pytest.raises(DataError, match="bad.png"):
        build(seg_text(str(tmp_path / "l2.txt"), root, crop=4))()
    # label image of another size
    (tmp_path / "l3.txt").write_text("/img/0.png /lab/1.png\n")
    with pytest.raises(ShapeError, match="same size"):
        build(seg_text(str(tmp_path / "l3.txt"), root, crop=4))()
    # PIXEL line without a label path
    (tmp_path / "l4.txt").write_text("/img/0.png\n")
    with pytest.raises(DataError, match="line 1"):
        build(seg_text(str(tmp_path / "l4.txt"), root, crop=4))()
    # empty list
    (tmp_path / "l5.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="no entries"):
        build(seg_text(str(tmp_path / "l5.txt"), root, crop=4))()


@pytest.mark.parametrize("extra_tp, extra_idp, match", [
    ("crop_height: 3 crop_width: 3", "", "either crop_size or both"),
    ("crop_height: 3", "", "either crop_size or both"),
    ("", "new_height: 3", "new_height and new_width"),
    ("", "batch_size: 0", "batch_size"),
    ('mean_file: "m.binaryproto"', "", "mean_file and mean_value"),
    ("scale_factors: -1", "", "scale_factors"),
])
def test_imagesegdata_bad_params(extra_tp, extra_idp, match):
    text = seg_text("/nonexistent", crop=5, extra_tp=extra_tp, extra_idp=extra_idp)
    if "batch_size: 0" in extra_idp:
        text = text.replace("batch_size: 1", "")
    with pytest.raises(LayerConfigError, match=match):
        build(text)


def test_imagesegdata_bad_mean_count_and_mean_file():
    text = ('layer { name: "d" type: "ImageSegData" top: "a" transform_param { crop_size: 3 mean_value: 1 '
            'mean_value: 2 } image_data_param { source: "x" } }')
    with pytest.raises(LayerConfigError, match="mean_value"):
        build(text)
    text = ('layer { name: "d" type: "ImageSegData" top: "a" transform_param { crop_size: 3 mean_file: "m" } '
            'image_data_param { source: "x" } }')
    with pytest.raises(LayerConfigError, match="mean_file"):
        build(text)


def test_imagesegdata_crop_height_width_and_float64(tmp_path):
    root, lst = make_dataset(tmp_path, sizes=((8, 9),))
    layer = build(seg_text(lst, root, extra_tp="crop_height: 4 crop_width: 6 scale: 0.5"), dtype=torch.float64)
    data, label, dim = layer()
    assert data.dtype == torch.float64 and data.shape == (1, 3, 4, 6)
    # centre crop: h_off = (8-4)//2 = 2, w_off = (9-6)//2 = 1; R channel (index 2, BGR) = 10*x
    want = (np.float64(10 * (np.arange(6) + 1)) - np.float64(np.float32(122.675))) * 0.5
    assert np.array_equal(data[0, 2, 0].numpy(), want)
    assert torch.all(data[0, 0] == (200 - np.float64(np.float32(104.008))) * 0.5)


# ======================================================================================= ImageData
def imagedata_text(source, root, crop=None, extra_tp="", batch=1):
    crop_s = f"crop_size: {crop}" if crop is not None else ""
    return (f'layer {{ name: "data" type: "ImageData" top: "data" top: "label" image_data_param {{ '
            f'root_folder: "{root}" source: "{source}" batch_size: {batch} }} transform_param {{ {crop_s} '
            f'mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 {extra_tp} }} }}')


def test_imagedata_crop_too_large_is_clear_error():
    gdir = reference_path("golden", "data")
    layer = build(imagedata_text(str(gdir / "dataset/list/test.txt"), str(gdir / "dataset"), crop=513))
    assert layer.top_shapes() == [(1, 3, 513, 513), (1,)]
    with pytest.raises(ShapeError, match="does not pad"):
        layer()


def test_imagedata_list_stops_at_non_integer_and_batches(tmp_path):
    root, _ = make_dataset(tmp_path, sizes=((4, 4), (4, 4), (5, 5)))
    (tmp_path / "l.txt").write_text("/img/0.png 3 /img/1.png\n7\n/img/2.png x\n")
    layer = build(imagedata_text(str(tmp_path / "l.txt"), root, batch=3))
    assert layer.num_items == 2
    data, label = layer()
    assert data.shape == (3, 3, 4, 4) and label.tolist() == [3.0, 7.0, 3.0]
    (tmp_path / "m.txt").write_text("/img/0.png 1\n/img/2.png 2\n")
    with pytest.raises(ShapeError, match="same size"):
        build(imagedata_text(str(tmp_path / "m.txt"), root, batch=2))()


def test_imagedata_mean_file(tmp_path):
    root, _ = make_dataset(tmp_path, sizes=((4, 5),))
    (tmp_path / "l.txt").write_text("/img/0.png 0\n")
    mean = np.arange(3 * 4 * 5, dtype=np.float32).reshape(1, 3, 4, 5)
    bp = schema.BlobProto()
    bp.shape.dim.extend(mean.shape)
    bp.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(bp.SerializeToString())
    text = (f'layer {{ name: "data" type: "ImageData" top: "data" top: "label" image_data_param {{ '
            f'root_folder: "{root}" source: "{tmp_path}/l.txt" }} transform_param {{ crop_size: 3 '
            f'mean_file: "{tmp_path}/mean.binaryproto" }} }}')
    data, _ = build(text)()
    img = I.read_image(f"{root}/img/0.png").transpose(2, 0, 1).astype(np.float32)
    want = (img - mean[0])[:, 0:3, 1:4]  # centre crop of 4x5 with 3: h_off 0, w_off 1
    assert np.array_equal(data[0].numpy(), want)


# =================================================================================== TwoImageData
def twoimage_text(source, root, crop=None, tops=("data", "label"), second_color="false", mirror="false"):
    crop_s = f"crop_size: {crop}" if crop is not None else ""
    t = " ".join(f'top: "{x}"' for x in tops)
    return (f'layer {{ name: "data" type: "TwoImageData" {t} image_data_param {{ root_folder: "{root}" '
            f'source: "{source}" batch_size: 1 }} two_image_data_param {{ first_is_color: true '
            f'second_is_color: {second_color} }} transform_param {{ mean_value: 104.008 mean_value: 116.669 '
            f'mean_value: 122.675 {crop_s} mirror: {mirror} }} }}')


def test_twoimagedata_padding_crop_and_label_channels(tmp_path):
    root, _ = make_dataset(tmp_path, sizes=((3, 4), (8, 9)))
    (tmp_path / "p.txt").write_text("/img/0.png /lab/0.png /img/1.png /lab/1.png")
    layer = build(twoimage_text(str(tmp_path / "p.txt"), root, crop=6))
    data, label = layer()
    assert data.shape == (1, 3, 6, 6) and label.shape == (1, 1, 6, 6)
    assert torch.all(data[0, :, 3:] == 0) and torch.all(label[0, 0, 3:] == 255)
    data, label = layer()  # 8x9 image: centre crop offsets (1, 1)
    assert torch.equal(label[0, 0, 0], torch.arange(2, 8, dtype=torch.float32))
    # colour labels: padding is Scalar(255) => 255 in channel 0, 0 in the others
    (tmp_path / "c.txt").write_text("/img/0.png /img/0.png\n")
    layer = build(twoimage_text(str(tmp_path / "c.txt"), root, crop=5, second_color="true"))
    data, label = layer()
    assert label.shape == (1, 3, 5, 5)
    assert torch.all(label[0, 0, 3:] == 255) and torch.all(label[0, 1:, 3:] == 0)
    assert torch.equal(label[0, :, :3, :4], (data[0, :, :3, :4] + torch.from_numpy(MEAN)[:, None, None]).round())


def test_twoimagedata_one_top_mirror_and_errors(tmp_path):
    root, _ = make_dataset(tmp_path, sizes=((5, 5), (5, 6)))
    (tmp_path / "p.txt").write_text("/img/0.png /lab/0.png\n")
    layer = build(twoimage_text(str(tmp_path / "p.txt"), root, crop=5, tops=("data",)))
    outs = layer()
    assert len(outs) == 1 and outs[0].shape == (1, 3, 5, 5)
    layer = build(twoimage_text(str(tmp_path / "p.txt"), root, crop=3, mirror="true"), phase="TRAIN", seed=2)
    for _ in range(4):
        data, label = layer()
        x_data = ((data[0, 2] + MEAN[2]).round()) / 10
        assert torch.equal(x_data, label[0, 0] - 1)
    (tmp_path / "bad.txt").write_text("/img/0.png /lab/1.png\n")
    with pytest.raises(ShapeError, match="same size"):
        build(twoimage_text(str(tmp_path / "bad.txt"), root, crop=3))()
    with pytest.raises(LayerConfigError, match="crop_size only"):
        build(twoimage_text(str(tmp_path / "p.txt"), root).replace("mirror: false", "crop_height: 2 crop_width: 2"))
    # without a crop: sizes from the batch's first pair
    layer = build(twoimage_text(str(tmp_path / "p.txt"), root))
    assert layer.top_shapes() == [(1, 3, 5, 5), (1, 1, 5, 5)]


# ===================================================================================== image helpers
_FIX_IMG = np.array([[0, 91, 182, 17, 108, 199, 34], [37, 141, 245, 93, 197, 45, 149],
                     [74, 191, 52, 169, 195, 56, 173], [111, 241, 115, 154, 28, 67, 197],
                     [148, 35, 87, 230, 26, 169, 221]], np.uint8)
# computed with OpenCV 4.14 cv2.resize
_FIX_LINEAR = {
    (11, 9): [[0, 41, 99, 157, 122, 17, 75, 133, 191, 109, 34], [12, 56, 116, 177, 145, 42, 103, 140, 147, 106, 72],
              [33, 79, 145, 210, 182, 84, 150, 153, 73, 102, 136], [53, 103, 163, 160, 147, 127, 171, 156, 63, 110, 160],
              [74, 127, 178, 90, 95, 169, 186, 157, 69, 120, 173], [94, 151, 207, 123, 114, 161, 123, 91, 66, 130, 186],
              [115, 162, 208, 141, 130, 162, 77, 41, 74, 144, 200], [136, 121, 103, 98, 136, 205, 91, 56, 125, 177, 213],
              [148, 96, 40, 73, 139, 230, 100, 65, 156, 197, 221]],
    (4, 3): [[48, 183, 126, 100], [118, 67, 192, 129], [124, 110, 49, 184]],
}
_FIX_NEAREST = {(10, 8): [[0, 0, 91, 182, 182, 17, 108, 108, 199, 34], [0, 0, 91, 182, 182, 17, 108, 108, 199, 34],
                          [37, 37, 141, 245, 245, 93, 197, 197, 45, 149], [37, 37, 141, 245, 245, 93, 197, 197, 45, 149],
                          [74, 74, 191, 52, 52, 169, 195, 195, 56, 173], [111, 111, 241, 115, 115, 154, 28, 28, 67, 197],
                          [111, 111, 241, 115, 115, 154, 28, 28, 67, 197], [148, 148, 35, 87, 87, 230, 26, 26, 169, 221]]}


def test_resize_matches_opencv_fixtures():
    for (w, h), want in _FIX_LINEAR.items():
        assert I.resize_linear(_FIX_IMG, w, h).tolist() == want
        rgb = np.stack([_FIX_IMG] * 3, -1)
        assert np.array_equal(I.resize_linear(rgb, w, h)[..., 1], np.array(want, np.uint8))
    for (w, h), want in _FIX_NEAREST.items():
        assert I.resize_nearest(_FIX_IMG, w, h).tolist() == want
    assert np.array_equal(I.resize_linear(_FIX_IMG, 7, 5), _FIX_IMG)
    with pytest.raises(DataError):
        I.resize_linear(_FIX_IMG, 0, 3)


def test_gray_conversions_match_opencv_fixtures(tmp_path):
    cols = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 64, 200], [1, 2, 3], [250, 251, 252],
                      [10, 10, 10], [200, 100, 50]]], np.uint8)
    Image.fromarray(cols).save(tmp_path / "c.png")
    Image.fromarray(cols).save(tmp_path / "c.bmp")
    # values of cv2.imread(..., IMREAD_GRAYSCALE) (OpenCV 4.14): libpng rule for PNG, cvtColor for BMP
    assert I.read_image(str(tmp_path / "c.png"), False).tolist() == [[76, 149, 29, 98, 1, 250, 10, 124]]
    assert I.read_image(str(tmp_path / "c.bmp"), False).tolist() == [[76, 150, 29, 99, 2, 251, 10, 124]]
    assert I.read_image(str(tmp_path / "c.png"), True)[0, 3].tolist() == [200, 64, 128]  # BGR


def test_decode_and_resize_against_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for t in range(6):
        h, w = rng.integers(3, 40, 2)
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        files = []
        for ext, kw in (("png", {}), ("jpg", {"quality": 90}), ("bmp", {})):
            f = str(tmp_path / f"x{t}.{ext}")
            Image.fromarray(rgb).save(f, **kw)
            files.append(f)
        for mode in ("P", "L", "RGBA"):
            f = str(tmp_path / f"m{t}{mode}.png")
            (Image.fromarray(rgb).quantize(17) if mode == "P" else Image.fromarray(rgb).convert(mode)).save(f)
            files.append(f)
        for f in files:
            for color in (True, False):
                want = cv2.imread(f, cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
                assert np.array_equal(I.read_image(f, color), want), (f, color)
        for orientation in (3, 6):  # EXIF orientation is applied, as OpenCV's imread does
            im = Image.fromarray(rgb)
            exif = im.getexif()
            exif[0x0112] = orientation
            f = str(tmp_path / f"o{t}_{orientation}.jpg")
            im.save(f, exif=exif.tobytes())
            for color in (True, False):
                want = cv2.imread(f, cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
                assert np.array_equal(I.read_image(f, color), want), (f, color)
            assert I.image_size(f) == cv2.imread(f).shape[:2]
        for s in (0.5, 0.75, 1.25, 1.5):
            nh, nw = int(np.float32(h) * np.float32(s)), int(np.float32(w) * np.float32(s))
            if min(nh, nw) < 1:
                continue
            assert np.array_equal(I.resize_linear(rgb, nw, nh), cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR))
            assert np.array_equal(I.resize_nearest(rgb[..., 0], nw, nh),
                                  cv2.resize(rgb[..., 0], (nw, nh), interpolation=cv2.INTER_NEAREST))


def test_read_image_errors_and_header(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        I.read_image(str(tmp_path / "none.png"))
    (tmp_path / "g.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="not a readable image"):
        I.read_image(str(tmp_path / "g.png"))
    write_png(tmp_path / "ok.png", np.zeros((3, 5, 3)))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match="trunc.png"):
        I.read_image(str(tmp_path / "trunc.png"))
    assert I.image_size(str(tmp_path / "ok.png")) == (3, 5)
    with pytest.raises(DataError, match="directory"):
        I.read_image(str(tmp_path))


def test_read_image_16bit_and_new_size(tmp_path):
    g16 = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert np.array_equal(I.read_image(str(tmp_path / "g16.png"), False), (g16 >> 8).astype(np.uint8))
    assert I.read_image(str(tmp_path / "g16.png"), True).shape == (3, 4, 3)
    write_png(tmp_path / "a.png", np.stack([_FIX_IMG] * 3, -1))
    out = I.read_image(str(tmp_path / "a.png"), False, new_height=3, new_width=4)
    assert out.tolist() == _FIX_LINEAR[(4, 3)]


# ============================================================================================ lists
def test_list_parsers(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("/a.jpg 1\r\n\n/b.jpg 12abc 5\n/c.jpg\n/d.jpg 4\n")
    # token stream: "12abc" -> label 12, then file name "abc" with label 5; "/c.jpg /d.jpg" stops (no int)
    assert L.read_image_label_list(str(p)) == [("/a.jpg", 1), ("/b.jpg", 12), ("abc", 5)]
    p.write_text("x.jpg y.png\nz.jpg\nw.png\nlone")
    assert L.read_pair_list(str(p)) == [("x.jpg", "y.png"), ("z.jpg", "w.png")]
    p.write_text("a b c\n\n  d  \n")
    assert L.read_seg_list(str(p), needs_second=True, pixel_labels=False) == [("a", "b"), ("d", "")]
    assert L.read_seg_list(str(p), needs_second=False, pixel_labels=False) == [("a", ""), ("d", "")]
    p.write_text("abc.jpg\nxy.jpg\n")
    assert L.read_id_list(str(p), 4) == ["abc", "xy"]
    assert [L.atoi(s) for s in ("", "42", " -7x", "x1", "+3")] == [0, 42, -7, 0, 3]
    with pytest.raises(DataError, match="does not exist"):
        L.read_id_list(str(tmp_path / "none.txt"))
    p.write_text("x 1")
    assert L.join_root("/root", "/x.jpg") == "/root/x.jpg" and L.join_root("/root", "x.jpg") == "/rootx.jpg"


# ============================================================================================ matio
def test_matio_roundtrip_dtypes(tmp_path):
    vars_ = {"a": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.array([1, 2, 3], np.uint8),
             "c": np.array([[True, False]]), "d": np.arange(24, dtype=np.int32).reshape(2, 3, 4),
             "e": np.float32(2.5)}
    assert M.write_mat(str(tmp_path / "v.mat"), vars_)
    back = M.read_mat(str(tmp_path / "v.mat"))
    assert np.array_equal(back["a"], vars_["a"]) and back["a"].dtype == np.float64
    assert back["b"].shape == (1, 3) and back["c"].dtype == bool
    assert np.array_equal(back["d"], vars_["d"]) and back["e"].shape == (1, 1)
    assert not M.write_mat(str(tmp_path / "v.mat"), {"a": np.zeros(1)}, overwrite=False)
    with pytest.raises(DataError, match="variable name"):
        M.mat_bytes({"1bad": np.zeros(1)})
    with pytest.raises(DataError, match="unsupported dtype"):
        M.mat_bytes({"x": np.zeros(2, complex)})
    with pytest.raises(DataError, match="no variable"):
        M.read_mat(str(tmp_path / "v.mat"), ["zz"])
    (tmp_path / "short.mat").write_bytes(b"MATLAB")
    with pytest.raises(DataError, match="not a MAT file"):
        M.read_mat(str(tmp_path / "short.mat"))
    with pytest.raises(DataError, match="at most 4 axes"):
        M.blob_to_mat_array(np.zeros((1, 1, 1, 1, 2)))


def test_matio_reads_scipy_compressed_and_matlab_style(tmp_path):
    sio = pytest.importorskip("scipy.io")
    cmap = np.random.default_rng(0).random((256, 3))
    sio.savemat(str(tmp_path / "cm.mat"), {"colormap": cmap, "name": "voc", "cell": np.array([[1, 2]], object)},
                do_compression=True)
    back = M.read_mat(str(tmp_path / "cm.mat"), ["colormap", "name"])
    assert np.array_equal(back["colormap"], cmap) and back["name"] == "voc"
    with pytest.raises(NotSupportedError, match="cell"):
        M.read_mat(str(tmp_path / "cm.mat"))


def test_matio_reads_v73_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    f = tmp_path / "v73.mat"
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    with h5py.File(f, "w", userblock_size=512) as h:
        h["data"] = arr.T  # MATLAB stores its column-major dims reversed
    with open(f, "r+b") as fh:
        head = b"MATLAB 7.3 MAT-file".ljust(116) + b" " * 8 + struct.pack("<H", 0x0200) + b"IM"
        fh.write(head)
    assert np.array_equal(M.read_mat(str(f))["data"], arr)
