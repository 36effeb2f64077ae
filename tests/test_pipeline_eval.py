"""The evaluation pipeline: palette PNGs, gen-preds (GetFastResult.m) and eval (MyVOCevalseg.m).

Golden checks read ``golden/pipeline`` (the original MATLAB scripts run under Octave) and are
data-driven (ids, scenarios and error cases are discovered from the folder), so they also run on
another set with the same layout.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REFERENCE_DIR, reference_path
from caffe_compat.errors import DataError
from caffe_compat.pipeline import gen_preds as gp
from caffe_compat.pipeline import voc_eval as ve
from caffe_compat.pipeline.palette import read_label_png, save_palette_png, voc_palette

PIPE = REFERENCE_DIR / "golden" / "pipeline"


# --------------------------------------------------------------------------- helpers

def load_npz(path):
    """All arrays of an npz file (closed again right away)."""
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def png_chunks(path):
    b = Path(path).read_bytes()
    assert b[:8] == b"\x89PNG\r\n\x1a\n"
    i, out = 8, []
    while i < len(b):
        n = struct.unpack(">I", b[i:i + 4])[0]
        out.append((b[i + 4:i + 8].decode(), b[i + 8:i + 8 + n]))
        i += 12 + n
    return out


def png_palette(path):
    with Image.open(path) as im:
        assert im.mode == "P"
        return np.array(im.getpalette(), dtype=np.uint8).reshape(-1, 3)


def write_png(path, arr, mode="P", palette=True):
    im = Image.frombytes(mode, (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes())
    if mode == "P" and palette:
        im.putpalette(voc_palette().tobytes())
    im.save(path)


def leftovers(folder):
    """Temporary / hidden files left in a folder tree."""
    return [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if f.startswith(".") or f.endswith(".tmp")]


def palette_formula(i):
    # independent re-statement of the VOC devkit colormap (bitget form)
    def bit(v, k):
        return (v >> k) & 1
    r = g = b = 0
    c = i
    for j in range(8):
        r = r | (bit(c, 0) << (7 - j))
        g = g | (bit(c, 1) << (7 - j))
        b = b | (bit(c, 2) << (7 - j))
        c = c >> 3
    return r, g, b


# --------------------------------------------------------------------------- palette

def test_voc_palette_formula_and_known_entries():
    p = voc_palette()
    assert p.shape == (256, 3) and p.dtype == np.uint8
    for i in range(256):
        assert tuple(p[i]) == palette_formula(i)
    assert tuple(p[0]) == (0, 0, 0) and tuple(p[1]) == (128, 0, 0) and tuple(p[2]) == (0, 128, 0)
    assert tuple(p[15]) == (192, 128, 128) and tuple(p[20]) == (0, 64, 128) and tuple(p[255]) == (224, 224, 192)
    assert np.array_equal(voc_palette(21), p[:21])
    with pytest.raises(ValueError):
        voc_palette(0)
    with pytest.raises(ValueError):
        voc_palette(257)


def test_palette_matches_every_reference_png():
    files = sorted(reference_path("sample_results").glob("*.png"))
    files += sorted((PIPE / "gen_preds").rglob("*.png")) + sorted((PIPE / "eval").rglob("*.png"))
    assert len(files) >= 3
    p = voc_palette()
    for f in files:
        assert np.array_equal(png_palette(f), p), f
    npz = PIPE / "gen_preds" / "gen_preds.npz"
    if npz.exists():
        assert np.array_equal(load_npz(npz)["palette"], p)


def test_sample_results_read_as_indices():
    for f in sorted(reference_path("sample_results").glob("*.png")):
        lab = read_label_png(f)
        with Image.open(f) as im:
            assert lab.shape == (im.size[1], im.size[0])
        assert lab.dtype == np.uint8 and lab.max() <= 20


def test_save_palette_png_format_and_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 21, (13, 17)).astype(np.uint8)
    lab[0, 0] = 255
    f = tmp_path / "x.png"
    save_palette_png(f, lab)
    chunks = png_chunks(f)
    assert [c for c, _ in chunks if c not in ("IDAT",)] == ["IHDR", "PLTE", "IEND"]  # no tRNS / ancillary
    w, h, depth, ctype = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (w, h, depth, ctype) == (17, 13, 8, 3)
    assert chunks[1][1] == voc_palette().tobytes()
    assert np.array_equal(read_label_png(f), lab)
    assert sorted(os.listdir(tmp_path)) == ["x.png"]
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(f).st_mode & 0o777 == 0o666 & ~mask
    # replacing an existing file is atomic and complete
    save_palette_png(f, np.zeros((2, 3), np.uint8))
    assert np.array_equal(read_label_png(f), np.zeros((2, 3), np.uint8))
    assert leftovers(tmp_path) == []


def test_save_palette_png_errors_leave_nothing(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        save_palette_png(tmp_path / "nope" / "x.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match="uint8"):
        save_palette_png(tmp_path / "x.png", np.zeros((2, 2), np.int32))
    with pytest.raises(DataError, match="2-D"):
        save_palette_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint8))

    def boom(self, fp, *a, **k):
        if isinstance(fp, (str, os.PathLike)):
            with open(fp, "wb") as f:
                f.write(b"\x89PNG partial")
        else:
            fp.write(b"\x89PNG partial")
        raise OSError("disk full")
    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(DataError, match="disk full"):
        save_palette_png(tmp_path / "x.png", np.zeros((2, 2), np.uint8))
    assert os.listdir(tmp_path) == []


def test_read_label_png_modes(tmp_path):
    lab = np.array([[0, 1, 2], [15, 20, 255]], np.uint8)
    # palette PNG with a non-VOC palette: still the indices, never the colours
    im = Image.frombytes("P", (3, 2), lab.tobytes())
    im.putpalette(list(range(256))[::-1] * 3)
    im.save(tmp_path / "p.png")
    assert np.array_equal(read_label_png(tmp_path / "p.png"), lab)
    write_png(tmp_path / "l.png", lab, mode="L")
    assert np.array_equal(read_label_png(tmp_path / "l.png"), lab)
    small = np.array([[0, 1, 2, 3]], np.uint8)
    im = Image.frombytes("P", (4, 1), small.tobytes())
    im.putpalette(voc_palette(4).tobytes())
    im.save(tmp_path / "p4.png", bits=4)  # low-bit-depth palette PNG: still indices
    assert png_chunks(tmp_path / "p4.png")[0][1][8] < 8
    assert np.array_equal(read_label_png(tmp_path / "p4.png"), small)


def test_read_label_png_errors(tmp_path):
    lab = np.zeros((4, 5), np.uint8)
    with pytest.raises(DataError, match="does not exist"):
        read_label_png(tmp_path / "missing.png")
    with pytest.raises(DataError, match="directory"):
        read_label_png(tmp_path)
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png.*RGB"):
        read_label_png(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((4, 5), np.uint16)).save(tmp_path / "g16.png")
    with pytest.raises(DataError, match="g16.png.*16-bit"):
        read_label_png(tmp_path / "g16.png")
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "x.jpg")
    shutil.copy(tmp_path / "x.jpg", tmp_path / "jpeg.png")
    with pytest.raises(DataError, match="jpeg.png.*not a PNG"):
        read_label_png(tmp_path / "jpeg.png")
    write_png(tmp_path / "ok.png", lab)
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[:len(data) - 20])
    with pytest.raises(DataError, match="trunc.png"):
        read_label_png(tmp_path / "trunc.png")
    (tmp_path / "short.png").write_bytes(data[:20])
    with pytest.raises(DataError, match="short.png"):
        read_label_png(tmp_path / "short.png")
    bad = bytearray(data)
    bad[20] ^= 0xFF  # IHDR width byte: CRC mismatch
    (tmp_path / "crc.png").write_bytes(bytes(bad))
    with pytest.raises(DataError, match="crc.png"):
        read_label_png(tmp_path / "crc.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png"):
        read_label_png(tmp_path / "empty.png")


# --------------------------------------------------------------------------- gen-preds: golden

def _gen_dir():
    return reference_path("golden", "pipeline", "gen_preds")


def test_gen_preds_golden_pngs(tmp_path):
    g = _gen_dir()
    s = gp.gen_preds(g / "features", g / "JPEGImages", tmp_path, progress=False)
    assert s.png_dir == os.path.join(str(tmp_path), "results", "VOC2012", "Segmentation", "comp6_test_cls")
    golden_pngs = sorted(p.name for p in (g / "comp6_test_cls").glob("*.png"))
    assert sorted(os.listdir(s.png_dir)) == golden_pngs
    assert sorted(i + ".png" for i in s.written) == golden_pngs
    npz = load_npz(g / "gen_preds.npz")
    assert list(npz["png_written"]) == golden_pngs
    # _blob_1 files whose id was already written are skipped (the PNG is the _blob_0 argmax)
    mats = list(npz["mat_files_in_dir_order"])
    assert sorted(s.skipped + [m for m in mats if m not in s.skipped]) == sorted(mats)
    assert all(gp.image_id_from_mat_name(m) + ".png" in golden_pngs for m in s.skipped)
    for name in golden_pngs:
        mine, ref = Path(s.png_dir) / name, g / "comp6_test_cls" / name
        assert np.array_equal(read_label_png(mine), read_label_png(ref)), name
        assert np.array_equal(read_label_png(mine), npz["pred/" + name[:-4]]), name
        assert np.array_equal(png_palette(mine), png_palette(ref)), name
        mine_ch, ref_ch = png_chunks(mine), png_chunks(ref)
        assert mine_ch[0] == ref_ch[0]  # identical IHDR (size, 8-bit, indexed)
        assert [c for c, _ in mine_ch if c != "IDAT"] == [c for c, _ in ref_ch if c != "IDAT"]
    assert leftovers(tmp_path) == []


def test_gen_preds_probe_softmax_bit_exact():
    g = _gen_dir()
    npz = load_npz(g / "gen_preds.npz")
    probes = sorted({k.split("/")[1] for k in npz if k.startswith("probe/")})
    assert probes
    for img in probes:
        ref = npz[f"probe/{img}/data"]  # H x W x C single, after the crop
        h, w = ref.shape[:2]
        logits = gp.read_features(g / "features" / f"{img}_blob_0.mat")
        p = gp.matlab_softmax(np.ascontiguousarray(logits[:, :h, :w])).transpose(1, 2, 0)
        assert p.dtype == np.float32
        same = (p.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(p) & np.isnan(ref))
        assert same.all(), f"{img}: {(~same).sum()} probabilities differ"
        assert np.array_equal(gp.first_max_skip_nan(p.transpose(2, 0, 1)), npz[f"probe/{img}/classes"])
        assert np.array_equal(gp.predict_labels(logits, h, w), npz[f"probe/{img}/classes"])


def test_read_features_layout():
    g = _gen_dir()
    npz = load_npz(g / "gen_preds.npz")
    for k in npz:
        if k.startswith("mat_dims/"):
            w, h, c, n = (int(v) for v in npz[k])
            x = gp.read_features(g / "features" / (k[len("mat_dims/"):] + ".mat"))
            assert x.shape == (c, h, w) and x.dtype == np.float32


def _gen_error_cases():
    root = PIPE / "gen_preds" / "errors"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if REFERENCE_DIR.exists() else []


@pytest.mark.parametrize("case", _gen_error_cases())
def test_gen_preds_golden_error_runs(tmp_path, case):
    d = PIPE / "gen_preds" / "errors" / case
    ids = [gp.image_id_from_mat_name(m.name) for m in sorted((d / "features").glob("*.mat"))]
    written = sorted(p.name for p in (d / "comp6_test_cls").glob("*.png"))
    failing = next(i for i in ids if i + ".png" not in written)
    with pytest.raises(DataError) as e:
        gp.gen_preds(d / "features", d / "JPEGImages", tmp_path, flat=True, progress=False)
    assert failing in str(e.value)
    # abort at the failing file: the earlier PNGs are there (identical), nothing after, nothing partial
    assert sorted(os.listdir(tmp_path)) == written
    for name in written:
        assert np.array_equal(read_label_png(tmp_path / name), read_label_png(d / "comp6_test_cls" / name))
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- gen-preds: semantics

def _write_mat(path, logits_chw):
    """A MatWrite-style file: variable data, dims [W, H, C, 1]."""
    from caffe_compat.pipeline.matio import write_blob_mat
    write_blob_mat(str(path), np.asarray(logits_chw, np.float32)[None])


def _jpeg(path, rows, cols):
    Image.fromarray(np.full((rows, cols, 3), 128, np.uint8)).save(path)


def _mini_dataset(tmp_path, specs):
    feats, imgs = tmp_path / "features", tmp_path / "JPEGImages"
    feats.mkdir()
    imgs.mkdir()
    for name, logits, rows, cols in specs:
        _write_mat(feats / name, logits)
        if rows:
            _jpeg(imgs / (gp.image_id_from_mat_name(name) + ".jpg"), rows, cols)
    return feats, imgs


def test_predict_labels_edge_cases():
    c = 21
    x = np.full((c, 1, 12), -5.0, np.float32)
    x[[4, 9], 0, 0] = 6.0                      # exact tie -> first
    x[12, 0, 1] = 100.0                        # overflow: NaN skipped, rest 0 -> channel 0
    x[0, 0, 2] = 100.0                         # overflow in channel 0 -> channel 1
    x[:, 0, 3] = np.linspace(90, 110, c)       # all overflow -> all NaN -> 0
    x[:, 0, 4] = np.linspace(-150, -120, c)    # all underflow -> 0/0 -> 0
    x[:, 0, 5] = -200.0
    x[17, 0, 5] = -95.0                        # denormal exp is kept -> 17
    x[2, 0, 6] = np.nan                        # NaN logit -> all NaN -> 0
    x[6, 0, 7], x[10, 0, 7] = 88.5, 88.6       # sum overflows -> all 0 -> 0
    x[6, 0, 8] = 88.0                          # no overflow -> 6
    x[3, 0, 9] = np.float32(0.01)              # near tie mapped to one float32 exp value -> first
    x[7, 0, 9] = np.nextafter(np.float32(0.01), np.float32(1))
    x[[0, 1], 0, 10] = -1.0                    # tie at the start
    x[20, 0, 11] = 3.0                         # plain argmax -> 20
    lab = gp.predict_labels(x)
    assert lab.dtype == np.uint8
    assert lab[0].tolist() == [4, 0, 1, 0, 0, 17, 0, 0, 6, 3, 0, 20]
    # a plain argmax of the logits would differ on several of these pixels
    assert np.nanargmax(np.where(np.isnan(x), -np.inf, x), axis=0)[0].tolist() != lab[0].tolist()
    # crop rows/cols: top-left block
    assert gp.predict_labels(x, 1, 3).tolist() == [[4, 0, 1]]
    with pytest.raises(DataError, match="crop"):
        gp.predict_labels(x, 2, 3)
    with pytest.raises(DataError, match="256"):
        gp.predict_labels(np.zeros((257, 1, 1), np.float32))
    # float64 logits are handled in double precision
    assert gp.predict_labels(x.astype(np.float64))[0, 11] == 20


def test_matlab_exp_matches_c_expf():
    fn = gp._libm_expf()
    if fn is None:
        pytest.skip("no C expf on this platform")
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-104, 89, 40000), rng.normal(0, 3, 40000), rng.uniform(-105, -86, 5000),
                        rng.uniform(88, 89, 2000),
                        [-0.11275852, 88.72283, 88.7229, -103.97, -103.98, 0.0, -0.0, np.inf, -np.inf]])
    x = x.astype(np.float32)
    ref = np.array([fn(v) for v in x.tolist()], np.float32)
    mine = gp.matlab_exp(x)
    assert np.array_equal(mine.view(np.uint32), ref.view(np.uint32))
    assert np.isnan(gp.matlab_exp(np.array([np.nan], np.float32)))[0]


def test_ids_and_results_dir():
    assert gp.image_id_from_mat_name("2007_000033_blob_0.mat") == "2007_000033"
    assert gp.image_id_from_mat_name("2007_000033_blob_1.mat") == "2007_000033"
    assert gp.image_id_from_mat_name("a_blob_0_blob_1_blob_0.mat") == "a"
    assert gp.image_id_from_mat_name("x_blob_2.mat") == "x_blob_2"
    assert gp.results_dir("R") == os.path.join("R", "results", "VOC2012", "Segmentation", "comp6_test_cls")
    assert gp.results_dir("R", "comp5", "voc_val").endswith(os.path.join("Segmentation", "comp5_val_cls"))


def test_gen_preds_skip_overwrite_and_blob1(tmp_path):
    a = np.zeros((21, 6, 7), np.float32)
    a[3] = 1.0
    b = np.zeros((21, 6, 7), np.float32)
    b[5] = 1.0
    c = np.zeros((21, 6, 7), np.float32)
    c[7] = 1.0
    feats, imgs = _mini_dataset(tmp_path, [("im1_blob_0.mat", a, 5, 6), ("im1_blob_1.mat", b, 0, 0),
                                           ("im2_blob_0.mat", c, 6, 7)])
    out = tmp_path / "out"
    s = gp.gen_preds(feats, imgs, out, flat=True, progress=False)
    assert s.written == ["im1", "im2"] and s.skipped == ["im1_blob_1.mat"]
    assert np.array_equal(read_label_png(out / "im1.png"), np.full((5, 6), 3, np.uint8))
    assert np.array_equal(read_label_png(out / "im2.png"), np.full((6, 7), 7, np.uint8))
    # an existing PNG is never touched without overwrite
    save_palette_png(out / "im2.png", np.zeros((1, 1), np.uint8))
    s = gp.gen_preds(feats, imgs, out, flat=True, progress=False)
    assert s.written == [] and len(s.skipped) == 3
    assert read_label_png(out / "im2.png").shape == (1, 1)
    # overwrite regenerates; the _blob_0 prediction still wins over _blob_1
    s = gp.gen_preds(feats, imgs, out, flat=True, overwrite=True, progress=False)
    assert s.written == ["im1", "im2"] and s.skipped == ["im1_blob_1.mat"]
    assert np.array_equal(read_label_png(out / "im1.png"), np.full((5, 6), 3, np.uint8))
    assert np.array_equal(read_label_png(out / "im2.png"), np.full((6, 7), 7, np.uint8))
    assert leftovers(tmp_path) == []


def test_gen_preds_input_errors(tmp_path):
    ok = np.zeros((21, 4, 5), np.float32)
    with pytest.raises(DataError, match="does not exist"):
        gp.gen_preds(tmp_path / "nofeats", tmp_path, tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\*.mat"):
        gp.gen_preds(tmp_path / "empty", tmp_path, tmp_path / "o")
    feats, imgs = _mini_dataset(tmp_path, [("a_blob_0.mat", ok, 4, 5)])
    with pytest.raises(DataError, match="image folder"):
        gp.gen_preds(feats, tmp_path / "noimgs", tmp_path / "o")
    assert not (tmp_path / "o").exists()

    def run_one(name, writer, rows=4, cols=5, match=None):
        d = tmp_path / name
        d.mkdir()
        (d / "f").mkdir()
        (d / "i").mkdir()
        writer(d / "f" / "x_blob_0.mat")
        if rows:
            _jpeg(d / "i" / "x.jpg", rows, cols)
        with pytest.raises(DataError, match=match):
            gp.gen_preds(d / "f", d / "i", d / "o", flat=True, progress=False)
        assert os.listdir(d / "o") == []

    from caffe_compat.pipeline.matio import write_mat
    run_one("corrupt", lambda p: p.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 40), match="x_blob_0.mat")
    run_one("garbage", lambda p: p.write_bytes(os.urandom(300)), match="x_blob_0.mat")
    run_one("novar", lambda p: write_mat(str(p), {"foo": np.zeros((5, 4, 21), np.float32)}),
            match="x_blob_0.mat.*data")
    run_one("intdata", lambda p: write_mat(str(p), {"data": np.zeros((5, 4, 21), np.int32)}),
            match="x_blob_0.mat.*int32")
    run_one("batch2", lambda p: write_mat(str(p), {"data": np.zeros((5, 4, 21, 2), np.float32)}),
            match="N > 1")
    run_one("nojpg", lambda p: _write_mat(p, ok), rows=0, match="x.jpg")
    run_one("toolarge", lambda p: _write_mat(p, ok), rows=5, cols=5, match="5 x 5.*4 x 5")
    run_one("toowide", lambda p: _write_mat(p, ok), rows=4, cols=6, match="x.jpg")

    d = tmp_path / "badjpg"
    (d / "f").mkdir(parents=True)
    (d / "i").mkdir()
    _write_mat(d / "f" / "x_blob_0.mat", ok)
    (d / "i" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="x.jpg"):
        gp.gen_preds(d / "f", d / "i", d / "o", flat=True, progress=False)


def test_gen_preds_single_channel_and_double(tmp_path):
    from caffe_compat.pipeline.matio import write_mat
    (tmp_path / "f").mkdir()
    (tmp_path / "i").mkdir()
    # [W, H, 1, 1]: MATLAB drops the trailing singletons -> one channel -> class 0
    write_mat(str(tmp_path / "f" / "a.mat"), {"data": np.ones((5, 4, 1, 1), np.float32)})
    x = np.zeros((5, 4, 3), np.float64)  # W x H x C double
    x[:, :, 2] = 1.0
    write_mat(str(tmp_path / "f" / "b.mat"), {"data": x})
    _jpeg(tmp_path / "i" / "a.jpg", 4, 5)
    _jpeg(tmp_path / "i" / "b.jpg", 3, 2)
    gp.gen_preds(tmp_path / "f", tmp_path / "i", tmp_path / "o", flat=True, progress=False)
    assert np.array_equal(read_label_png(tmp_path / "o" / "a.png"), np.zeros((4, 5), np.uint8))
    assert np.array_equal(read_label_png(tmp_path / "o" / "b.png"), np.full((3, 2), 2, np.uint8))


# --------------------------------------------------------------------------- eval: golden

def _eval_dir():
    return reference_path("golden", "pipeline", "eval")


def _eval_inputs(root, scenario=None):
    """(pred_dir, gt_dir, list) of the main run, or of a scenario overlaid on a temp copy."""
    e = _eval_dir()
    gt, pred = e / "VOC2012" / "SegmentationClass", e / "comp6_val_cls"
    lst = e / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    if scenario is None:
        return pred, gt, lst
    s = e / "scenarios" / scenario
    gt2, pred2 = root / "gt", root / "pred"
    shutil.copytree(gt, gt2)
    shutil.copytree(pred, pred2)
    for sub, dst in (("SegmentationClass", gt2), ("comp6_val_cls", pred2)):
        if (s / sub).is_dir():
            for f in (s / sub).iterdir():
                shutil.copy(f, dst / f.name)
    return pred2, gt2, lst


def _check_against_npz(r, d):
    assert np.array_equal(r.confusion, d["rawcounts"])
    assert r.confusion.dtype == np.int64
    assert np.array_equal(r.iou_percent, np.ravel(d["accuracies"]))  # bit-identical
    assert r.miou_percent == float(d["avacc"])
    assert np.array_equal(r.conf_percent, d["conf"])
    assert r.pixel_acc_percent == float(d["locals/overall_acc"])
    assert np.array_equal(r.class_accs_percent, np.ravel(d["locals/class_acc"]))
    assert r.class_acc_percent == float(d["locals/avg_class_acc"])
    assert r.count == int(d["locals/count"])
    assert len(r.missing) == int(d["locals/num_missing_img"])
    # fractions
    assert r.miou == pytest.approx(float(d["avacc"]) / 100, rel=1e-13)
    np.testing.assert_allclose(r.iou, np.ravel(d["accuracies"]) / 100, rtol=1e-13, atol=1e-16)
    assert r.pixel_acc == pytest.approx(float(d["locals/overall_acc"]) / 100, rel=1e-13)
    assert r.class_acc == pytest.approx(float(d["locals/avg_class_acc"]) / 100, rel=1e-13)


def test_eval_golden_main():
    e = _eval_dir()
    d = load_npz(e / "eval_main.npz")
    pred, gt, lst = _eval_inputs(None)
    assert ve.read_eval_list(lst) == list(d["ids"])
    assert tuple(d["classes"]) == ve.VOC_CLASSES
    r = ve.evaluate(pred, gt, lst, allow_missing=True, progress=False)
    _check_against_npz(r, d)
    assert r.missing == list(d["missing_pred"])
    assert r.ids == [i for i in d["ids"] if i not in r.missing]
    # the original's printed text, line for line
    assert str(d["printed"]).endswith(ve.format_original(r))
    assert (e / "eval_main.stdout.txt").read_text().endswith(ve.format_original(r))
    if sorted(d["ids"])[0] == "2007_000129" and len(d["ids"]) == 16:  # the shared set
        assert r.miou_percent == pytest.approx(27.0872604847, abs=1e-10)
    # missing predictions are an error by default, naming them
    if len(r.missing):
        with pytest.raises(DataError, match=r.missing[0]):
            ve.evaluate(pred, gt, lst, progress=False)


def _scenarios():
    root = PIPE / "eval" / "scenarios"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if REFERENCE_DIR.exists() else []


@pytest.mark.parametrize("scenario", _scenarios())
def test_eval_golden_scenarios(tmp_path, scenario):
    s = _eval_dir() / "scenarios" / scenario
    d = load_npz(s / f"{scenario}.npz")
    pred, gt, lst = _eval_inputs(tmp_path, scenario)
    if int(d["rc"]) != 0:
        expected = str(d["stderr"]).splitlines()[0]
        assert expected.startswith("error: ")
        with pytest.raises(DataError) as exc:
            ve.evaluate(pred, gt, lst, allow_missing=True, progress=False)
        assert expected[len("error: "):] in str(exc.value)
        # the counts accumulated before the failing image are the original's
        ids = list(d["locals/gtids"])
        k = int(d["locals/i"]) - 1
        assert ids[k] == str(d["locals/imname"])
        cc = np.zeros((21, 21), np.int64)
        count = 0
        for i in ids[:k]:
            if (pred / f"{i}.png").exists():
                count += ve.accumulate(cc, read_label_png(gt / f"{i}.png"), read_label_png(pred / f"{i}.png"), i)
        assert np.array_equal(cc, d["locals/confcounts"]) and count == int(d["locals/count"])
    else:
        r = ve.evaluate(pred, gt, lst, allow_missing=True, progress=False)
        _check_against_npz(r, d)
        assert (s / "stdout.txt").read_text().endswith(ve.format_original(r))


def test_eval_gt_out_of_range_strict(tmp_path):
    if "gt_out_of_range" not in _scenarios():
        pytest.skip("no gt_out_of_range scenario")
    pred, gt, lst = _eval_inputs(tmp_path, "gt_out_of_range")
    with pytest.raises(DataError, match="outside 0..20"):
        ve.evaluate(pred, gt, lst, allow_missing=True, strict_gt=True, progress=False)


# --------------------------------------------------------------------------- eval: crafted cases

def _crafted(tmp_path, pairs, missing=()):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    ids = []
    for i, (g, p) in enumerate(pairs):
        name = f"img{i}"
        ids.append(name)
        write_png(gt_dir / f"{name}.png", np.asarray(g, np.uint8))
        if name not in missing and p is not None:
            write_png(pred_dir / f"{name}.png", np.asarray(p, np.uint8))
    (tmp_path / "list.txt").write_text("\n".join(ids) + "\n")
    return pred_dir, gt_dir, tmp_path / "list.txt"


def hand_scores(conf):
    conf = np.asarray(conf, np.float64)
    iou = np.zeros(21)
    acc = np.zeros(21)
    for j in range(21):
        tp = conf[j, j]
        union = conf[j, :].sum() + conf[:, j].sum() - tp
        iou[j] = tp / union if union else 0.0
        acc[j] = tp / conf[j, :].sum() if conf[j, :].sum() else 0.0
    return iou, iou.sum() / 21, np.trace(conf) / conf.sum(), acc.sum() / 21


def test_eval_perfect(tmp_path):
    g = np.array([[0, 0, 1, 1], [2, 2, 255, 0]])
    r = ve.evaluate(*_crafted(tmp_path, [(g, np.where(g == 255, 7, g))]), progress=False)
    conf = np.zeros((21, 21), np.int64)
    conf[0, 0], conf[1, 1], conf[2, 2] = 3, 2, 2
    assert np.array_equal(r.confusion, conf)
    assert r.iou[:3].tolist() == [1.0, 1.0, 1.0] and r.iou[3:].sum() == 0
    assert r.miou == pytest.approx(3 / 21)  # absent classes count as 0, divided by 21
    assert r.pixel_acc == 1.0 and r.class_acc == pytest.approx(3 / 21)
    assert r.count == 7


def test_eval_all_wrong(tmp_path):
    g = np.array([[1, 1, 2], [2, 3, 3]])
    r = ve.evaluate(*_crafted(tmp_path, [(g, (g % 3) + 4)]), progress=False)
    assert r.miou == 0.0 and r.pixel_acc == 0.0 and r.class_acc == 0.0
    assert r.confusion.sum() == 6 and np.trace(r.confusion) == 0
    assert r.confusion[1, 5] == 2 and r.confusion[2, 6] == 2 and r.confusion[3, 4] == 2


def test_eval_hand_computed_mixed(tmp_path):
    rng = np.random.default_rng(5)
    pairs, conf = [], np.zeros((21, 21), np.int64)
    for _ in range(3):
        g = rng.integers(0, 6, (9, 11))
        g[rng.random(g.shape) < 0.2] = 255  # void regions are not counted
        g[0, :3] = 255
        p = np.where(rng.random(g.shape) < 0.6, np.where(g == 255, 9, g), rng.integers(0, 8, g.shape))
        p[0, :3] = 16  # a class predicted only on void pixels -> absent from the counts
        pairs.append((g, p))
        for a, b in zip(g.ravel(), p.ravel()):
            if a != 255:
                conf[a, b] += 1
    pairs.append((np.full((3, 3), 255), np.full((3, 3), 4)))  # all-void GT contributes nothing
    r = ve.evaluate(*_crafted(tmp_path, pairs), progress=False)
    assert np.array_equal(r.confusion, conf)
    iou, miou, pacc, cacc = hand_scores(conf)
    np.testing.assert_allclose(r.iou, iou, rtol=1e-14)
    assert r.miou == pytest.approx(miou, rel=1e-14) and r.pixel_acc == pytest.approx(pacc, rel=1e-14)
    assert r.class_acc == pytest.approx(cacc, rel=1e-14)
    assert r.confusion[:, 16].sum() == 0 and r.iou[16] == 0.0
    # class absent from the GT but predicted: IoU 0, class accuracy 0
    assert conf[6:].sum() == 0 and r.iou[7] == 0.0 and r.class_accs[7] == 0.0
    assert r.count == int((np.concatenate([a.ravel() for a, _ in pairs]) != 255).sum())


def test_eval_gt_out_of_range_counted_like_original(tmp_path):
    g = np.array([[21, 21, 254, 100, 0]])
    p = np.array([[0, 0, 3, 20, 0]])
    r = ve.evaluate(*_crafted(tmp_path, [(g, p)]), progress=False)
    expected = np.zeros((21, 21), np.int64)
    expected[0, 1] = 2   # gt 21, pred 0 -> flat bin 21 -> (0, 1)
    expected[2, 15] = 1  # gt 254, pred 3 -> bin 317 -> (2, 15)
    expected[0, 0] = 1   # gt 100 with pred 20 -> bin 520 > 440: dropped
    assert np.array_equal(r.confusion, expected)
    assert r.count == 5
    with pytest.raises(DataError, match="img0.png.*\\[21, 100, 254\\]"):
        ve.evaluate(*[tmp_path / "pred", tmp_path / "gt", tmp_path / "list.txt"], strict_gt=True, progress=False)


def test_eval_prediction_errors(tmp_path):
    g = np.zeros((4, 5), np.uint8)
    cases = {
        "p255": (g, np.where(np.arange(20).reshape(4, 5) == 3, 255, 0), "has out of range value 255 \\(the value should be <= 20\\)"),
        "p21": (g, np.where(np.arange(20).reshape(4, 5) == 19, 21, 0), "has out of range value 21"),
        "size": (g, np.zeros((3, 5)), "is the wrong size, was 3 x 5, should be 4 x 5\\."),
        "size2": (g, np.zeros((4, 6)), "is the wrong size, was 4 x 6, should be 4 x 5\\."),
    }
    for name, (gg, pp, msg) in cases.items():
        d = tmp_path / name
        d.mkdir()
        args = _crafted(d, [(g, g), (gg, pp)])
        with pytest.raises(DataError, match="Results image 'img1' " + msg):
            ve.evaluate(*args, progress=False)


def test_eval_missing_and_bad_files(tmp_path):
    g = np.zeros((4, 5), np.uint8)
    pred, gt, lst = _crafted(tmp_path, [(g, g), (g, None), (g, g)])
    with pytest.raises(DataError, match="img1"):
        ve.evaluate(pred, gt, lst, progress=False)
    r = ve.evaluate(pred, gt, lst, allow_missing=True, progress=False)
    assert r.missing == ["img1"] and r.ids == ["img0", "img2"] and r.confusion[0, 0] == 40
    assert ve.format_original(r).startswith("WARNING: There are 1 missing results!\n")
    # corrupt prediction: an error even with allow_missing
    (pred / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    with pytest.raises(DataError, match="img2.png"):
        ve.evaluate(pred, gt, lst, allow_missing=True, progress=False)
    write_png(pred / "img2.png", g)
    # RGB prediction
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(pred / "img0.png")
    with pytest.raises(DataError, match="img0.png"):
        ve.evaluate(pred, gt, lst, allow_missing=True, progress=False)
    write_png(pred / "img0.png", g)
    # missing / corrupt ground truth
    os.remove(gt / "img2.png")
    with pytest.raises(DataError, match="ground-truth.*img2.png"):
        ve.evaluate(pred, gt, lst, allow_missing=True, progress=False)
    (gt / "img2.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="img2.png"):
        ve.evaluate(pred, gt, lst, allow_missing=True, progress=False)
    # lists and folders
    with pytest.raises(DataError, match="does not exist"):
        ve.evaluate(pred, gt, tmp_path / "nolist.txt")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="no ids"):
        ve.evaluate(pred, gt, tmp_path / "blank.txt")
    with pytest.raises(DataError, match="prediction folder"):
        ve.evaluate(tmp_path / "nopred", gt, lst)
    # everything missing: nothing to score
    (tmp_path / "one.txt").write_text("img1\n")
    with pytest.raises(DataError, match="no image could be evaluated"):
        ve.evaluate(pred, gt, tmp_path / "one.txt", allow_missing=True)


def test_eval_list_format(tmp_path):
    (tmp_path / "l.txt").write_bytes(b"a 1\r\n\r\n  b\n\tc extra tokens\nd")
    assert ve.read_eval_list(tmp_path / "l.txt") == ["a", "b", "c", "d"]


def test_scores_all_void_is_nan_accuracy():
    r = ve.scores_from_confusion(np.zeros((21, 21)))
    assert np.isnan(r.pixel_acc) and r.miou == 0.0 and r.class_acc == 0.0
    assert r.to_dict()["pixel_acc"] is None
    assert "NaN%" in ve.format_original(r)


# --------------------------------------------------------------------------- CLI

@pytest.fixture
def cli(monkeypatch):
    import caffe_compat.cli as cli_mod
    monkeypatch.setattr(cli_mod, "COMMANDS", ("gen_preds", "evaluate"))
    return cli_mod


def test_cli_eval_json(cli, capsys):
    e = _eval_dir()
    d = load_npz(e / "eval_main.npz")
    pred, gt, lst = _eval_inputs(None)
    rc = cli.main(["eval", str(pred), str(gt), "--list", str(lst), "--allow-missing", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    j = json.loads(out)
    assert set(j) == {"miou", "iou", "confusion", "pixel_acc", "class_acc"}
    assert j["miou"] == pytest.approx(float(d["avacc"]) / 100, rel=1e-13)
    assert len(j["iou"]) == 21
    np.testing.assert_allclose(j["iou"], np.ravel(d["accuracies"]) / 100, rtol=1e-13, atol=1e-16)
    assert np.array_equal(np.array(j["confusion"]), d["rawcounts"])
    assert all(isinstance(v, int) for row in j["confusion"] for v in row)
    assert j["pixel_acc"] == pytest.approx(float(d["locals/overall_acc"]) / 100, rel=1e-13)
    assert j["class_acc"] == pytest.approx(float(d["locals/avg_class_acc"]) / 100, rel=1e-13)


def test_cli_eval_text_formats(cli, capsys):
    e = _eval_dir()
    d = load_npz(e / "eval_main.npz")
    pred, gt, lst = _eval_inputs(None)
    assert cli.main(["eval", str(pred), str(gt), "--list", str(lst), "--allow-missing", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for name in ve.VOC_CLASSES:
        assert name in out
    assert f"{float(d['avacc']):.3f}%" in out and f"{float(d['locals/overall_acc']):.3f}%" in out
    assert cli.main(["eval", str(pred), str(gt), "--list", str(lst), "--allow-missing", "--original-format"]) == 0
    assert str(d["printed"]).endswith(capsys.readouterr().out)


def test_cli_eval_errors_exit_2(cli, capsys, caplog):
    pred, gt, lst = _eval_inputs(None)
    d = load_npz(_eval_dir() / "eval_main.npz")
    rc = cli.main(["eval", str(pred), str(gt), "--list", str(lst), "--json"])
    if len(d["missing_pred"]):
        assert rc == 2 and capsys.readouterr().out == ""
        assert str(d["missing_pred"][0]) in caplog.text
    assert cli.main(["eval", str(pred), str(gt), "--list", "/nonexistent/list.txt"]) == 2


def test_cli_gen_preds(cli, tmp_path, capsys):
    g = _gen_dir()
    out = tmp_path / "res"
    rc = cli.main(["gen-preds", str(g / "features"), "--images", str(g / "JPEGImages"), "--out", str(out),
                   "--no-progress"])
    assert rc == 0
    png_dir = out / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    golden = sorted(p.name for p in (g / "comp6_test_cls").glob("*.png"))
    assert sorted(os.listdir(png_dir)) == golden
    for name in golden:
        assert np.array_equal(read_label_png(png_dir / name), read_label_png(g / "comp6_test_cls" / name))
    assert str(png_dir) in capsys.readouterr().out
    # --testset/--comp-id choose the folder; --flat writes into DIR
    assert cli.main(["gen-preds", str(g / "features"), "--images", str(g / "JPEGImages"), "--out", str(out),
                     "--testset", "voc_val", "--no-progress"]) == 0
    assert (out / "results" / "VOC2012" / "Segmentation" / "comp6_val_cls").is_dir()
    assert cli.main(["gen-preds", str(g / "features"), "--images", str(g / "JPEGImages"),
                     "--out", str(tmp_path / "flat"), "--flat", "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path / "flat")) == golden
    # errors -> exit status 2
    assert cli.main(["gen-preds", str(tmp_path / "nothing"), "--images", str(g), "--out", str(out)]) == 2
