"""End-to-end pipeline: ``caffe-compat test`` -> ``gen-preds`` -> ``eval`` (through ``cli.main``).

Uses the bundled example (``configs/tiny_segaware_test.prototxt``, ``examples/tiny_segaware.caffemodel``,
``examples/tiny_voc``; made by ``tools/make_example.py``) and, when the reference material is
present, the tiny VOC-style dataset of ``golden/data``.

The mIoU printed by ``eval`` is checked against one computed here independently: the net is run
directly (``Net.forward`` over its own data layer), the logits of ``crf_interp`` are cropped
top-left to the image size and arg-maxed with NumPy, and the confusion matrix against the GT
palette PNGs (read with Pillow) is a plain ``bincount``.  Taking the argmax of the logits instead
of gen-preds' MATLAB-style float32 softmax is exact here because every logit is far inside
``exp``'s range (asserted below; the softmax only changes the argmax on overflow or underflow).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from caffe_compat import Net
from caffe_compat.cli import main

from conftest import REFERENCE_DIR, REPO_ROOT, require_reference

CONFIG = REPO_ROOT / "configs" / "tiny_segaware_test.prototxt"
WEIGHTS = REPO_ROOT / "examples" / "tiny_segaware.caffemodel"
EXAMPLE = REPO_ROOT / "examples" / "tiny_voc"
GOLDEN_DATASET = REFERENCE_DIR / "golden" / "data" / "dataset"
NUM_CLASSES = 21
OUTPUT_BLOB = "crf_interp"


# ----------------------------------------------------------------------------- helpers
def defines(root: Path, list_file: Path, ids: Path, features: Path, crop: int = 65) -> Dict[str, str]:
    return {"DATA_ROOT": str(root), "LIST": str(list_file), "IDS": str(ids), "FEATURE_DIR": str(features),
            "CROP_SIZE": str(crop), "HALF_SIZE": str((crop + 1) // 2)}


def define_args(defs: Dict[str, str]) -> List[str]:
    return [f"--define={k}={v}" for k, v in defs.items()]


def run_test_cmd(defs: Dict[str, str], *extra: str, weights: Path = WEIGHTS, workers: int = 0) -> int:
    return main(["test", str(CONFIG), str(weights), *define_args(defs), "--no-progress",
                 "--workers", str(workers), *extra])


def read_ids(path: Path) -> List[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def load_mat_blob(path: Path) -> np.ndarray:
    """A MatWrite file read with SciPy: ``data`` is ``[W, H, C, N]`` column-major -> ``(N, C, H, W)``."""
    data = scipy.io.loadmat(str(path))["data"]
    assert data.dtype == np.float32
    dims = data.shape + (1,) * (4 - data.ndim)
    return data.reshape(dims).transpose(3, 2, 1, 0)


def image_rows_cols(jpg: Path) -> Tuple[int, int]:
    with Image.open(jpg) as im:
        return im.size[1], im.size[0]


def gt_labels(png: Path) -> np.ndarray:
    with Image.open(png) as im:
        assert im.mode == "P"
        return np.array(im)


def independent_scores(net_defs: Dict[str, str], ids: List[str], images: Path, gt_dir: Path,
                       weights: Path = WEIGHTS, crop: int = 65):
    """Run the net directly and score it: ``(miou, confusion, {id: logits})``."""
    net = Net(CONFIG, weights, phase="TEST", defines=net_defs)
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    logits = {}
    with torch.no_grad():
        for img_id in ids:
            net.forward()
            blob = net.blobs[OUTPUT_BLOB].numpy().copy()
            assert blob.shape == (1, NUM_CLASSES, crop, crop)
            # the largest logit of every pixel is far from float32 exp's overflow (88.7) and
            # underflow: argmax(logits) == argmax(MATLAB softmax) (smaller logits may underflow to 0)
            top = blob.max(axis=1)
            assert np.all(np.isfinite(blob)) and top.max() < 80 and top.min() > -80
            logits[img_id] = blob
            rows, cols = image_rows_cols(images / f"{img_id}.jpg")
            pred = np.argmax(blob[0, :, :rows, :cols], axis=0)
            gt = gt_labels(gt_dir / f"{img_id}.png")
            assert gt.shape == (rows, cols)
            valid = gt != 255
            assert gt[valid].max(initial=0) < NUM_CLASSES
            conf += np.bincount(gt[valid].astype(np.int64) * NUM_CLASSES + pred[valid],
                                minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    iou = tp / np.where(union == 0, 1, union)       # a class absent everywhere counts as IoU 0
    return iou.sum() / NUM_CLASSES, conf, logits      # always / 21, as the original


def run_test_and_gen_preds(tmp: Path, defs: Dict[str, str], images: Path, ids_file: Path) -> Path:
    """``test`` then ``gen-preds --testset val``; returns the prediction folder."""
    features = Path(defs["FEATURE_DIR"])
    assert run_test_cmd(defs) == 0
    results = tmp / "results"
    assert main(["gen-preds", str(features), "--images", str(images), "--out", str(results),
                 "--testset", "val", "--no-progress"]) == 0
    pred_dir = results / "results" / "VOC2012" / "Segmentation" / "comp6_val_cls"
    assert sorted(os.listdir(pred_dir)) == sorted(f"{i}.png" for i in read_ids(ids_file))
    return pred_dir


def eval_json(pred_dir: Path, gt_dir: Path, ids_file: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["eval", str(pred_dir), str(gt_dir), "--list", str(ids_file), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def no_stray_files(folder: Path, suffix: str) -> None:
    """Every file in ``folder`` is a complete ``suffix`` file (no temporary / partial files)."""
    for name in os.listdir(folder):
        assert name.endswith(suffix), f"stray file {name} in {folder}"
        if suffix == ".mat":
            load_mat_blob(folder / name)
        else:
            gt_labels(folder / name)


# ----------------------------------------------------------------------------- (a) the bundled example
@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """The bundled example through ``test`` and ``gen-preds`` (once for the module), and run directly."""
    tmp = tmp_path_factory.mktemp("example")
    features = tmp / "features"
    features.mkdir()
    defs = defines(EXAMPLE, EXAMPLE / "list.txt", EXAMPLE / "ids.txt", features)
    pred_dir = run_test_and_gen_preds(tmp, defs, EXAMPLE / "JPEGImages", EXAMPLE / "ids.txt")
    direct = tmp / "direct_features"
    direct.mkdir()
    miou, conf, logits = independent_scores(
        defines(EXAMPLE, EXAMPLE / "list.txt", EXAMPLE / "ids.txt", direct), read_ids(EXAMPLE / "ids.txt"),
        EXAMPLE / "JPEGImages", EXAMPLE / "SegmentationClass")
    return {"tmp": tmp, "features": features, "defs": defs, "pred_dir": pred_dir, "miou": miou, "conf": conf,
            "logits": logits}


def test_bundled_example_files_exist():
    ids = read_ids(EXAMPLE / "ids.txt")
    assert len(ids) >= 6
    assert [f"/JPEGImages/{i}.jpg" for i in ids] == [ln.split()[0] for ln in (EXAMPLE / "list.txt").read_text().splitlines()]
    for i in ids:
        rows, cols = image_rows_cols(EXAMPLE / "JPEGImages" / f"{i}.jpg")
        assert rows <= 65 and cols <= 65          # gen-preds cannot crop a 65x65 map to a larger image
        gt = gt_labels(EXAMPLE / "SegmentationClass" / f"{i}.png")
        assert gt.shape == (rows, cols)
        assert (gt == 255).any()                  # VOC-style void bands
    present = set()
    for i in ids:
        present |= set(np.unique(gt_labels(EXAMPLE / "SegmentationClass" / f"{i}.png")).tolist())
    assert present == set(range(NUM_CLASSES)) | {255}
    total = sum(f.stat().st_size for f in (REPO_ROOT / "examples").rglob("*") if f.is_file())
    assert total < 200_000


def test_example_chain_miou_matches_independent_computation(example_run, capsys):
    result = eval_json(example_run["pred_dir"], EXAMPLE / "SegmentationClass", EXAMPLE / "ids.txt", capsys)
    assert set(result) == {"miou", "iou", "confusion", "pixel_acc", "class_acc"}
    np.testing.assert_array_equal(np.array(result["confusion"]), example_run["conf"])
    assert result["miou"] == pytest.approx(example_run["miou"], rel=0, abs=1e-12)
    assert result["miou"] > 0.9                   # the designed colour classifier works
    assert result["miou"] < 1.0                   # ... but the even-sized images lose a few border pixels


def test_example_mat_files_equal_direct_forward(example_run):
    """The CLI (DataLoader, resumable loop) writes exactly the blobs a plain ``Net.forward`` computes."""
    features = example_run["features"]
    ids = read_ids(EXAMPLE / "ids.txt")
    assert sorted(os.listdir(features)) == sorted(f"{i}_blob_0.mat" for i in ids)
    for i in ids:
        np.testing.assert_array_equal(load_mat_blob(features / f"{i}_blob_0.mat"), example_run["logits"][i])


def test_example_with_worker_processes(example_run, tmp_path):
    """The default DataLoader workers give the same files as in-process loading."""
    out = tmp_path / "feats"
    ids = tmp_path / "ids.txt"
    lst = tmp_path / "list.txt"
    ids.write_text("".join(f"{i}\n" for i in read_ids(EXAMPLE / "ids.txt")[:3]))
    lst.write_text("".join(f"/JPEGImages/{i}.jpg\n" for i in read_ids(ids)))
    defs = defines(EXAMPLE, lst, ids, tmp_path / "unused")
    assert run_test_cmd(defs, "--out", str(out), workers=2) == 0
    for i in read_ids(ids):
        assert (out / f"{i}_blob_0.mat").read_bytes()[128:] == \
            (example_run["features"] / f"{i}_blob_0.mat").read_bytes()[128:]   # past the 128-byte header


# ----------------------------------------------------------------------------- (b) resumability
def test_test_command_is_resumable(example_run, tmp_path):
    features = tmp_path / "features"
    shutil.copytree(example_run["features"], features)
    defs = dict(example_run["defs"], FEATURE_DIR=str(features))
    before = {n: (features / n).stat().st_mtime_ns for n in os.listdir(features)}
    assert run_test_cmd(defs) == 0
    assert {n: (features / n).stat().st_mtime_ns for n in os.listdir(features)} == before

    ids = read_ids(EXAMPLE / "ids.txt")
    victim = f"{ids[3]}_blob_0.mat"
    reference = load_mat_blob(features / victim)
    (features / victim).unlink()
    assert run_test_cmd(defs) == 0
    after = {n: (features / n).stat().st_mtime_ns for n in os.listdir(features)}
    assert set(after) == set(before)
    assert {n: t for n, t in after.items() if n != victim} == {n: t for n, t in before.items() if n != victim}
    np.testing.assert_array_equal(load_mat_blob(features / victim), reference)


# ----------------------------------------------------------------------------- (c) overrides
def test_list_root_out_ids_overrides(example_run, tmp_path):
    """--list/--root/--out/--ids replace source, root_folder, the MatWrite prefix and its id list."""
    ids = read_ids(EXAMPLE / "ids.txt")
    pick = [ids[5], ids[1]]
    lst = tmp_path / "sub_list.txt"
    lst.write_text("".join(f"/JPEGImages/{i}.jpg\n" for i in pick))
    id_file = tmp_path / "sub_ids.txt"
    id_file.write_text("".join(f"{i}\n" for i in pick))
    out = tmp_path / "new" / "features"          # created by --out
    bogus = tmp_path / "does_not_exist"
    defs = defines(bogus, bogus / "list.txt", bogus / "ids.txt", bogus / "features")
    assert run_test_cmd(defs, "--list", str(lst), "--root", str(EXAMPLE), "--out", str(out),
                        "--ids", str(id_file)) == 0
    assert sorted(os.listdir(out)) == sorted(f"{i}_blob_0.mat" for i in pick)
    for i in pick:
        np.testing.assert_array_equal(load_mat_blob(out / f"{i}_blob_0.mat"), example_run["logits"][i])
    assert not bogus.exists()

    # --iterations limits the number of forward passes
    out2 = tmp_path / "one"
    assert run_test_cmd(defs, "--list", str(lst), "--root", str(EXAMPLE), "--out", str(out2),
                        "--ids", str(id_file), "--iterations", "1") == 0
    assert os.listdir(out2) == [f"{pick[0]}_blob_0.mat"]


def test_root_is_prepended_verbatim(example_run, tmp_path):
    """root_folder + list entry, no path join: a root with a trailing name prefix works like Caffe's."""
    ids = read_ids(EXAMPLE / "ids.txt")[:1]
    lst = tmp_path / "list.txt"
    lst.write_text(f"voc/JPEGImages/{ids[0]}.jpg\n")    # no leading '/': the root must end with one
    id_file = tmp_path / "ids.txt"
    id_file.write_text(f"{ids[0]}\n")
    os.symlink(EXAMPLE, tmp_path / "voc")
    out = tmp_path / "out"
    defs = defines(tmp_path / "x", lst, id_file, tmp_path / "x")
    assert run_test_cmd(defs, "--root", str(tmp_path) + "/", "--out", str(out)) == 0
    np.testing.assert_array_equal(load_mat_blob(out / f"{ids[0]}_blob_0.mat"), example_run["logits"][ids[0]])


# ----------------------------------------------------------------------------- (d) bad inputs
@pytest.fixture
def bad_setup(tmp_path):
    ids = read_ids(EXAMPLE / "ids.txt")
    features = tmp_path / "features"
    features.mkdir()
    id_file = tmp_path / "ids.txt"
    id_file.write_text("".join(f"{i}\n" for i in ids))
    return tmp_path, ids, features, id_file


def _assert_error(rc: int, caplog, *needles: str) -> None:
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors, "no error was logged"
    for needle in needles:
        assert any(needle in e for e in errors), f"{needle!r} not named in {errors}"


def test_missing_list_file(bad_setup, caplog):
    tmp, ids, features, id_file = bad_setup
    missing = tmp / "no_such_list.txt"
    rc = run_test_cmd(defines(EXAMPLE, missing, id_file, features))
    _assert_error(rc, caplog, str(missing))
    assert os.listdir(features) == []
    caplog.clear()
    rc = run_test_cmd(defines(EXAMPLE, EXAMPLE / "list.txt", id_file, features), "--list", str(missing))
    _assert_error(rc, caplog, str(missing))
    assert os.listdir(features) == []


@pytest.mark.parametrize("workers", [0, 2])
def test_missing_image(bad_setup, caplog, workers):
    tmp, ids, features, id_file = bad_setup
    lst = tmp / "list.txt"
    lst.write_text(f"/JPEGImages/{ids[0]}.jpg\n/JPEGImages/not_there.jpg\n")
    id_file.write_text(f"{ids[0]}\nnot_there\n")
    rc = run_test_cmd(defines(EXAMPLE, lst, id_file, features), workers=workers)
    _assert_error(rc, caplog, str(EXAMPLE) + "/JPEGImages/not_there.jpg")
    # the first image's features are complete; nothing partial is left for the missing one
    no_stray_files(features, ".mat")
    assert os.listdir(features) == [f"{ids[0]}_blob_0.mat"]


def test_missing_image_first(bad_setup, caplog):
    tmp, ids, features, id_file = bad_setup
    lst = tmp / "list.txt"
    lst.write_text("/JPEGImages/not_there.jpg\n")
    rc = run_test_cmd(defines(EXAMPLE, lst, id_file, features))
    _assert_error(rc, caplog, "not_there.jpg")
    assert os.listdir(features) == []


def test_missing_weights(bad_setup, caplog):
    tmp, ids, features, id_file = bad_setup
    missing = tmp / "nope.caffemodel"
    rc = run_test_cmd(defines(EXAMPLE, EXAMPLE / "list.txt", id_file, features), weights=missing)
    _assert_error(rc, caplog, str(missing))
    assert os.listdir(features) == []


def test_missing_matwrite_folder_without_out(bad_setup, caplog):
    tmp, ids, features, id_file = bad_setup
    missing = tmp / "no_such_folder"
    rc = run_test_cmd(defines(EXAMPLE, EXAMPLE / "list.txt", id_file, missing))
    _assert_error(rc, caplog, str(missing))
    assert not missing.exists()


def test_missing_define(bad_setup, caplog):
    tmp, ids, features, id_file = bad_setup
    defs = defines(EXAMPLE, EXAMPLE / "list.txt", id_file, features)
    del defs["FEATURE_DIR"]
    rc = run_test_cmd(defs)
    _assert_error(rc, caplog, "FEATURE_DIR")


def test_gen_preds_image_larger_than_crop(example_run, tmp_path, caplog):
    """An image larger than the crop is centre-cropped by `test`, but its prediction cannot be cropped
    back to the image: gen-preds stops at that file with an error naming it; earlier PNGs are complete."""
    ids = read_ids(EXAMPLE / "ids.txt")
    images = tmp_path / "JPEGImages"
    shutil.copytree(EXAMPLE / "JPEGImages", images)
    big = ids[2]
    Image.new("RGB", (70, 66), (0, 0, 0)).save(images / f"{big}.jpg", quality=95)
    out = tmp_path / "preds"
    rc = main(["gen-preds", str(example_run["features"]), "--images", str(images), "--out", str(out), "--flat",
               "--no-progress"])
    _assert_error(rc, caplog, str(images / f"{big}.jpg"))
    no_stray_files(out, ".png")
    assert sorted(os.listdir(out)) == sorted(f"{i}.png" for i in sorted(ids)[:sorted(ids).index(big)])


def test_eval_missing_prediction(example_run, tmp_path, caplog):
    out = tmp_path / "preds"
    assert main(["gen-preds", str(example_run["features"]), "--images", str(EXAMPLE / "JPEGImages"),
                 "--out", str(out), "--flat", "--no-progress"]) == 0
    ids = read_ids(EXAMPLE / "ids.txt")
    (out / f"{ids[4]}.png").unlink()
    rc = main(["eval", str(out), str(EXAMPLE / "SegmentationClass"), "--list", str(EXAMPLE / "ids.txt"), "--json"])
    _assert_error(rc, caplog, ids[4])


# ----------------------------------------------------------------------------- (e) golden/data dataset
def test_chain_on_golden_data_dataset(tmp_path, capsys):
    """The reference's tiny VOC-style dataset (noisy images, rectangle labels with 255 borders).

    Its images are up to 61 x 71, so the crop is 73 (the tiny net is templated on it).  Its list
    ``list/test.txt`` is the voc_test form (``/JPEGImages/x.jpg 0``; label_type NONE ignores the 0)
    and its GT is ``SegmentationClass`` (palette PNGs).  The images are not drawn in class colours,
    so the colour classifier scores poorly here: this checks the chain, not the model.
    """
    if not GOLDEN_DATASET.is_dir():
        require_reference(GOLDEN_DATASET)
    lst = GOLDEN_DATASET / "list" / "test.txt"
    ids_file = GOLDEN_DATASET / "list" / "val_id.txt"
    gt_dir = GOLDEN_DATASET / "SegmentationClass"
    images = GOLDEN_DATASET / "JPEGImages"
    ids = read_ids(ids_file)
    assert [f"/JPEGImages/{i}.jpg" for i in ids] == [ln.split()[0] for ln in lst.read_text().splitlines() if ln.strip()]
    crop = 73
    assert all(max(image_rows_cols(images / f"{i}.jpg")) <= crop for i in ids)
    features = tmp_path / "features"
    features.mkdir()
    pred_dir = run_test_and_gen_preds(tmp_path, defines(GOLDEN_DATASET, lst, ids_file, features, crop), images,
                                  ids_file)
    result = eval_json(pred_dir, gt_dir, ids_file, capsys)
    direct = tmp_path / "direct"
    direct.mkdir()
    miou, conf, logits = independent_scores(defines(GOLDEN_DATASET, lst, ids_file, direct, crop), ids, images,
                                            gt_dir, crop=crop)
    np.testing.assert_array_equal(np.array(result["confusion"]), conf)
    assert result["miou"] == pytest.approx(miou, rel=0, abs=1e-12)
    assert conf.sum() == sum(int((gt_labels(gt_dir / f"{i}.png") != 255).sum()) for i in ids)
    for i in ids:
        np.testing.assert_array_equal(load_mat_blob(features / f"{i}_blob_0.mat"), logits[i])
