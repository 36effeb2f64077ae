"""The ``convert``, ``export`` and ``run`` commands (through ``caffe_compat.cli.main``)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import caffe_compat.cli as cli
from caffe_compat import Net
from caffe_compat.cli import run as R
from caffe_compat.pipeline.palette import read_label_png, voc_palette

MEAN = np.array([104.008, 116.669, 122.675], dtype=np.float32)

# score = identity 1x1 conv of the data (so score == data); emb = 4-channel 1x1 conv;
# label = ArgMax over the 3 score channels (1 channel of integers)
TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 5 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "emb" type: "Convolution" bottom: "data" top: "emb"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "label" type: "ArgMax" bottom: "score" top: "label" argmax_param { axis: 1 } }
"""


@pytest.fixture(autouse=True)
def only_our_commands(monkeypatch):
    """Other command modules may be missing or half-written: register only ours."""
    monkeypatch.setattr(cli, "COMMANDS", ("convert", "export", "run"))


@pytest.fixture
def tiny(tmp_path):
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    net = Net(proto, seed=0)
    with torch.no_grad():
        net.params["score"][0].copy_(torch.eye(3).reshape(3, 3, 1, 1))
        net.params["score"][1].zero_()
    weights = tmp_path / "tiny.caffemodel"
    net.save(weights)
    return proto, weights, net


def _image(tmp_path, rgb, name="img.png"):
    p = tmp_path / name
    Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB").save(p)
    return p


def _rgb_3x3():
    # distinct colours with a unique largest BGR channel each (no ties in the argmax)
    return np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                     [[200, 10, 20], [10, 200, 20], [20, 10, 200]],
                     [[90, 30, 60], [30, 90, 60], [30, 60, 90]]], dtype=np.uint8)


# ----------------------------------------------------------------------------- run
def test_run_pads_small_image_and_writes_files(tmp_path, tiny, capsys):
    proto, weights, net = tiny
    rgb = _rgb_3x3()
    img = _image(tmp_path, rgb)
    out = tmp_path / "out"
    assert cli.main(["run", str(proto), str(weights), "--image", str(img), "--out", str(out),
                     "--blobs", "data,score,emb,label"]) == 0
    files = sorted(os.listdir(out))
    # no image of the net input; score (3 channels) gets its argmax PNG
    assert files == ["data.npy", "emb.npy", "emb.png", "label.npy", "label.png", "score.npy", "score.png"]
    # data: BGR minus the mean, padded bottom/right with 0 to the input's 4x5
    data = np.load(out / "data.npy")
    assert data.shape == (1, 3, 4, 5) and data.dtype == np.float32
    bgr = rgb[..., ::-1].transpose(2, 0, 1).astype(np.float32)
    expect = np.zeros((3, 4, 5), np.float32)
    expect[:, :3, :3] = bgr - MEAN[:, None, None]
    np.testing.assert_array_equal(data[0], expect)
    np.testing.assert_allclose(np.load(out / "score.npy"), data, rtol=0, atol=1e-5)
    # label: ArgMax of the score: integer 1-channel map -> palette PNG cropped to the image's 3x3
    lab = read_label_png(out / "label.png")
    assert lab.shape == (3, 3)
    np.testing.assert_array_equal(lab, np.argmax(expect[:, :3, :3], axis=0))
    np.testing.assert_array_equal(read_label_png(out / "score.png"), lab)
    with Image.open(out / "label.png") as im:
        assert im.mode == "P"
        assert np.array_equal(np.asarray(im.getpalette()[:768], np.uint8).reshape(256, 3), voc_palette())
    # embedding: RGB PCA image of the 4 channels, cropped to 3x3
    with Image.open(out / "emb.png") as im:
        assert im.mode == "RGB" and im.size == (3, 3)
        pca = np.asarray(im)
    emb = np.load(out / "emb.npy")
    np.testing.assert_array_equal(pca, R.pca_image(emb[0, :, :3, :3]))
    assert "wrote" in capsys.readouterr().out


def test_run_saves_attention_masks_of_embedding_blobs(tmp_path, tiny, caplog):
    import math

    proto, weights, net = tiny
    img = _image(tmp_path, _rgb_3x3())
    out = tmp_path / "out"
    assert cli.main(["run", str(proto), str(weights), "--image", str(img), "--out", str(out), "--blobs", "emb",
                     "--mask-point", "1,1", "--mask-point", "0,2", "--mask-window", "3", "--mask-scale", "0.01",
                     "--no-progress"]) == 0
    emb = np.load(out / "emb.npy")[0, :, :3, :3].astype(np.float64)
    up = 160 // 3
    for j, (y, x) in enumerate([(1, 1), (0, 2)]):
        with Image.open(out / f"emb_mask_{j}.png") as im:
            m = np.asarray(im)[::up, ::up, 0]
        assert m.shape == (3, 3)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                q = (y + dy, x + dx)
                inside = 0 <= q[0] < 3 and 0 <= q[1] < 3
                want = math.exp(-0.01 * np.abs(emb[:, y, x] - emb[:, q[0], q[1]]).sum()) if inside else 0.0
                assert m[dy + 1, dx + 1] == round(255 * want), (j, dy, dx)
    for bad, msg in ((["--mask-point", "1"], "Y,X"), (["--mask-point", "1,1", "--mask-window", "4"], "odd")):
        caplog.clear()
        assert cli.main(["run", str(proto), str(weights), "--image", str(img), "--out", str(out), "--blobs", "emb",
                         *bad]) != 0
        assert msg in caplog.text


def test_run_default_blobs_score_argmax_and_crop_of_large_image(tmp_path, tiny):
    proto, weights, net = tiny
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = _image(tmp_path, rgb)
    out = tmp_path / "out"
    # the net outputs (emb, label) by default
    assert cli.main(["run", str(proto), str(weights), "--image", str(img), "--out", str(out),
                     "--mean", "0"]) == 0
    assert sorted(os.listdir(out)) == ["emb.npy", "emb.png", "label.npy", "label.png"]
    # a larger image is centre-cropped: offsets ((6-4)//2, (8-5)//2) = (1, 1)
    out2 = tmp_path / "out2"
    assert cli.main(["run", str(proto), str(weights), "--image", str(img), "--out", str(out2),
                     "--mean", "0", "--scale", "0.5", "--blobs", "score"]) == 0
    score = np.load(out2 / "score.npy")
    bgr = rgb[..., ::-1].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_allclose(score[0], bgr[:, 1:5, 1:6] * 0.5, rtol=0, atol=1e-5)
    # a 3-channel score: argmax PNG (first maximum), not cropped (the crop fills the input)
    lab = read_label_png(out2 / "score.png")
    np.testing.assert_array_equal(lab, np.argmax(score[0], axis=0))
    # --no-fit: the image at its own size
    out3 = tmp_path / "out3"
    assert cli.main(["run", str(proto), str(weights), "--image", str(img), "--out", str(out3),
                     "--mean", "0", "--blobs", "score", "--no-fit"]) == 0
    np.testing.assert_allclose(np.load(out3 / "score.npy")[0], bgr, rtol=0, atol=1e-5)


def test_run_from_checkpoint_and_grey_input(tmp_path, tiny):
    proto, weights, net = tiny
    ck = tmp_path / "tiny.pt"
    assert cli.main(["convert", str(proto), str(weights), "-o", str(ck)]) == 0
    img = _image(tmp_path, _rgb_3x3())
    out = tmp_path / "out"
    assert cli.main(["run", str(ck), "--image", str(img), "--out", str(out), "--blobs", "score"]) == 0
    assert (out / "score.npy").exists()
    grey = TINY.replace("dim: 1 dim: 3 dim: 4", "dim: 1 dim: 1 dim: 4").replace("num_output: 3", "num_output: 2")
    g = tmp_path / "grey.prototxt"
    g.write_text(grey)
    assert cli.main(["run", str(g), "--image", str(img), "--out", str(out), "--blobs", "data",
                     "--mean", "0"]) == 0
    data = np.load(out / "data.npy")
    assert data.shape == (1, 1, 4, 5)
    # grey as OpenCV's imread(GRAYSCALE) of a PNG (libpng's conversion, not Pillow's "L")
    from caffe_compat.pipeline.images import read_image
    np.testing.assert_array_equal(data[0, 0, :3, :3], read_image(str(img), is_color=False).astype(np.float32))
    assert data[0, 0, 3:].sum() == 0 and data[0, 0, :, 3:].sum() == 0


def test_run_feeds_other_inputs(tmp_path):
    text = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 2 dim: 2 } } }
layer { name: "bias" type: "Input" top: "bias" input_param { shape { dim: 1 dim: 3 dim: 2 dim: 2 } } }
layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "bias" top: "sum" }
"""
    proto = tmp_path / "two.prototxt"
    proto.write_text(text)
    img = _image(tmp_path, np.full((2, 2, 3), 10, np.uint8))
    out = tmp_path / "out"
    argv = ["run", str(proto), "--image", str(img), "--out", str(out), "--mean", "0"]
    assert cli.main(argv) == 2  # 'bias' not given
    np.save(tmp_path / "b.npy", np.ones((1, 3, 2, 2), np.float32))
    assert cli.main(argv + ["--feed", f"bias={tmp_path / 'b.npy'}"]) == 0
    np.testing.assert_array_equal(np.load(out / "sum.npy"), np.full((1, 3, 2, 2), 11, np.float32))


def test_run_errors(tmp_path, tiny, caplog):
    proto, weights, net = tiny
    img = _image(tmp_path, _rgb_3x3())
    out = tmp_path / "out"
    base = ["run", str(proto), str(weights), "--image", str(img), "--out", str(out)]

    def fails(argv, match):
        caplog.clear()
        assert cli.main(argv) == 2
        assert match in caplog.text, caplog.text

    fails(base + ["--blobs", "nope"], "no blob(s) ['nope']")
    fails(base + ["--mean", "1,2"], "--mean needs 1 or 3 values")
    fails(base + ["--mean", "a,b"], "--mean expects comma-separated numbers")
    fails(base + ["--input-name", "x"], "has no input 'x'")
    fails(base + ["--feed", "x=y.npy"], "--feed ['x']")
    fails(base + ["--embedding", "score"], "--embedding ['score']")
    fails(["run", str(proto), "--image", str(tmp_path / "none.png"), "--out", str(out)], "no such image file")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    fails(["run", str(proto), "--image", str(bad), "--out", str(out)], "bad.png")
    data_net = tmp_path / "datanet.prototxt"
    data_net.write_text('layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 1 dim: 3 '
                        'dim: 2 dim: 2 } } }\nlayer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n')
    fails(["run", str(data_net), "--image", str(img), "--out", str(out)], "has no net inputs")
    if not torch.cuda.is_available():
        fails(base + ["--device", "cuda"], "CUDA is not available")
    fails(base + ["--device", "tpu"], "--device must be cpu or cuda")
    assert not out.exists() or not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_label_map_and_pca_helpers():
    b = np.zeros((1, 3, 2, 2), np.float32)
    b[0, 1, 0, 0] = b[0, 2, 0, 0] = 1  # tie: first maximum
    b[0, 0, 1, 1] = np.nan             # NaN skipped
    b[0, 2, 1, 1] = -1
    lab = R.label_map(b)
    assert lab.dtype == np.uint8 and lab.tolist() == [[[1, 0], [0, 1]]]
    assert R.label_map(np.full((1, 1, 2, 2), 0.5, np.float32)) is None       # not integers
    assert R.label_map(np.full((1, 1, 2, 2), 300, np.float32)) is None       # out of 0..255
    assert R.label_map(np.zeros((1, 300, 2, 2), np.float32)) is None         # too many classes
    assert R.label_map(np.zeros((2, 5), np.float32)) is None                 # not 4-D
    # PCA: a 1-D embedding along a line gives a ramp in the first component, 0 elsewhere
    t = np.arange(6, dtype=np.float32).reshape(2, 3)
    emb = np.stack([t, 2 * t, -t, 0 * t])
    img = R.pca_image(emb)
    assert img.shape == (2, 3, 3) and img.dtype == np.uint8
    assert img[..., 0].tolist() in ([[0, 51, 102], [153, 204, 255]], [[255, 204, 153], [102, 51, 0]])
    assert not img[..., 1:].any()
    assert R.safe_name("conv1/relu:0") == "conv1_relu_0" and R.safe_name("..") == "blob"


# ----------------------------------------------------------------------------- convert
def test_cli_convert_round_trips(tmp_path, tiny, capsys):
    proto, weights, net = tiny
    ck = tmp_path / "m.pt"
    assert cli.main(["convert", str(proto), str(weights), "-o", str(ck)]) == 0
    torch.load(ck, weights_only=True)
    # checkpoint alone -> caffemodel and h5 (and the net text)
    assert cli.main(["convert", str(ck), "-o", str(tmp_path / "b.caffemodel"),
                     "--write-prototxt", str(tmp_path / "b.prototxt")]) == 0
    assert cli.main(["convert", "-", str(ck), "-o", str(tmp_path / "b.weights"), "--to", "h5"]) == 0
    for w in ("b.caffemodel", "b.weights"):
        b = Net(tmp_path / "b.prototxt", weights=tmp_path / w)
        for name in net.params:
            for pa, pb in zip(net.params[name], b.params[name]):
                assert torch.equal(pa, pb)
    assert "wrote" in capsys.readouterr().out


def test_cli_convert_templates_and_errors(tmp_path, tiny, caplog):
    proto, weights, net = tiny
    templ = tmp_path / "t.prototxt"
    templ.write_text(TINY.replace("num_output: 4", "num_output: ${EMB}"))
    out = tmp_path / "t.pt"
    assert cli.main(["convert", str(templ), str(weights), "-o", str(out)]) == 2
    assert "EMB" in caplog.text
    assert cli.main(["convert", str(templ), str(weights), "-o", str(out), "--define", "EMB=4"]) == 0
    ck = torch.load(out, weights_only=True)
    assert ck["defines"] == {"EMB": "4"} and "num_output: 4" in ck["prototxt"]
    caplog.clear()
    assert cli.main(["convert", str(proto), "-o", str(tmp_path / "x.pt")]) == 2
    assert "give WEIGHTS" in caplog.text
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 truncated")
    caplog.clear()
    assert cli.main(["convert", str(junk), "-o", str(tmp_path / "x.caffemodel")]) == 2
    assert "junk.pt: not a readable caffe_compat checkpoint" in caplog.text
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.caffemodel").exists()
    # --lenient: weights of a net with fewer layers
    small = tmp_path / "small.prototxt"
    small.write_text(TINY.split('layer { name: "emb"')[0])
    caplog.clear()
    assert cli.main(["convert", str(small), str(weights), "-o", str(tmp_path / "s.pt")]) == 2
    assert "emb" in caplog.text
    assert cli.main(["convert", str(small), str(weights), "-o", str(tmp_path / "s.pt"), "--lenient"]) == 0


# ----------------------------------------------------------------------------- export
def test_cli_export(tmp_path, tiny, capsys):
    proto, weights, net = tiny
    out = tmp_path / "m.pt2"
    assert cli.main(["export", str(proto), str(weights), "-o", str(out), "--input", "data=1,3,6,7"]) == 0
    text = capsys.readouterr().out
    assert "input  data: [1, 3, 6, 7]" in text and "output emb" in text and "output label" in text
    prog = torch.export.load(str(out)).module()
    x = torch.randn(1, 3, 6, 7)
    emb, label = prog(x)
    ref = net(data=x)
    assert torch.equal(emb, ref["emb"]) and torch.equal(label, ref["label"])
    assert cli.main(["export", str(proto), str(weights), "-o", str(out), "--input", "data=1,x"]) == 2
