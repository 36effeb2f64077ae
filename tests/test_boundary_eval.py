"""Boundary bands and the boundary-restricted ("trimap") scores of the evaluation, on hand-computed cases."""
from __future__ import annotations

import json
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import pytest

from caffe_compat.cli import main
from caffe_compat.errors import DataError
from caffe_compat.pipeline import voc_eval as ve
from caffe_compat.pipeline.boundary import boundary_band, label_boundaries
from caffe_compat.pipeline.palette import save_palette_png

# Two regions split between columns 2 and 3: boundary pixels are columns 2 and 3.
GT = np.array([[0, 0, 0, 1, 1, 1]] * 4, dtype=np.uint8)
# Four errors: (0, 2) and (2, 3) on the boundary, (3, 1) one pixel away, (3, 5) three pixels away.
PRED = np.array([[0, 0, 1, 1, 1, 1],
                 [0, 0, 0, 1, 1, 1],
                 [0, 0, 0, 0, 1, 1],
                 [0, 1, 0, 1, 1, 0]], dtype=np.uint8)


def test_band_of_a_vertical_edge():
    cols = lambda mask: sorted(set(np.nonzero(mask)[1].tolist()))  # noqa: E731
    assert cols(label_boundaries(GT)) == [2, 3]
    assert label_boundaries(GT)[:, [2, 3]].all()
    assert cols(boundary_band(GT, 0)) == [2, 3]
    assert cols(boundary_band(GT, 1)) == [1, 2, 3, 4]
    assert cols(boundary_band(GT, 1.9)) == [1, 2, 3, 4]   # column 0 is 2 px from column 2
    assert boundary_band(GT, 2).all()


def test_band_is_euclidean_and_void_is_a_value():
    gt = np.zeros((5, 5), dtype=np.uint8)
    gt[2, 2] = 255
    edge = label_boundaries(gt)
    assert edge.sum() == 5 and edge[2, 2] and edge[1, 2] and edge[2, 1] and not edge[1, 1]
    band1 = boundary_band(gt, 1)
    assert band1[1, 1] and band1[0, 2] and not band1[0, 0]   # (0, 0) is sqrt(5) from (1, 2)
    assert boundary_band(gt, 2 ** 0.5)[0, 1] and not boundary_band(gt, 2 ** 0.5)[0, 0]
    assert boundary_band(gt, 2.25)[0, 0]


def test_no_boundary_and_bad_radius():
    flat = np.full((3, 4), 7, dtype=np.uint8)
    assert not boundary_band(flat, 10).any()
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(DataError, match="radius"):
            boundary_band(GT, bad)
    with pytest.raises(DataError, match="2-D"):
        label_boundaries(np.zeros((2, 2, 2)))


@pytest.fixture()
def pair(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    save_palette_png(gt_dir / "a.png", GT)
    save_palette_png(pred_dir / "a.png", PRED)
    # a second image without any boundary: it adds to the whole-image counts only
    save_palette_png(gt_dir / "b.png", np.ones((3, 3), dtype=np.uint8))
    save_palette_png(pred_dir / "b.png", np.ones((3, 3), dtype=np.uint8))
    (tmp_path / "ids.txt").write_text("a\nb\n")
    return pred_dir, gt_dir, tmp_path / "ids.txt"


def test_boundary_scores_by_hand(pair):
    r = ve.evaluate(*pair, num_classes=2, boundary_radii=[0, 1], progress=False)
    assert r.pixel_acc == pytest.approx(29 / 33)
    assert r.class_names == ("class 0", "class 1")
    b0, b1 = r.boundary[0.0], r.boundary[1.0]
    # radius 0: columns 2, 3 -> gt 0: 3 right, 1 wrong; gt 1: 3 right, 1 wrong
    assert b0.count == 8
    assert b0.confusion.tolist() == [[3, 1], [1, 3]]
    assert b0.pixel_acc == pytest.approx(6 / 8)
    assert b0.miou == pytest.approx((3 / 5 + 3 / 5) / 2)
    # radius 1: columns 1..4 -> gt 0 (cols 1, 2): 6 right, 2 wrong; gt 1 (cols 3, 4): 7 right, 1 wrong
    assert b1.count == 16
    assert b1.confusion.tolist() == [[6, 2], [1, 7]]
    assert b1.pixel_acc == pytest.approx(13 / 16)
    assert b1.miou == pytest.approx((6 / 9 + 7 / 10) / 2)
    assert b1.class_acc == pytest.approx((6 / 8 + 7 / 8) / 2)


def test_ignored_pixels_stay_ignored_in_the_band(tmp_path):
    gt = GT.copy()
    gt[0, 2] = 255  # the wrong boundary pixel (0, 2) is now void: not counted
    for d in ("gt", "pred"):
        (tmp_path / d).mkdir()
    save_palette_png(tmp_path / "gt" / "a.png", gt)
    save_palette_png(tmp_path / "pred" / "a.png", PRED)
    r = ve.evaluate(tmp_path / "pred", tmp_path / "gt", ["a"], num_classes=2, boundary_radii=[0], progress=False)
    b = r.boundary[0.0]
    # boundary now: columns 2, 3 plus the void pixel's neighbours (0, 1); (0, 2) itself is ignored
    assert b.count == 8
    assert b.confusion.tolist() == [[4, 0], [1, 3]]


def test_default_is_unchanged_voc(pair):
    r = ve.evaluate(*pair, progress=False)
    assert r.confusion.shape == (21, 21) and r.boundary == {}
    assert "boundary" not in r.to_dict()
    assert r.class_names == ve.VOC_CLASSES
    # gt 0: 10 right, 2 wrong; gt 1: 19 right, 2 wrong; the 19 absent classes count as IoU 0
    assert r.miou == pytest.approx((10 / 14 + 19 / 23) / 21)


def test_num_classes_limits_the_labels(pair):
    pred_dir, gt_dir, ids = pair
    save_palette_png(pred_dir / "b.png", np.full((3, 3), 2, dtype=np.uint8))
    with pytest.raises(DataError, match="should be <= 1"):
        ve.evaluate(pred_dir, gt_dir, ids, num_classes=2, progress=False)
    for bad in (0, 256, 2.5, True):
        with pytest.raises(DataError, match="num_classes"):
            ve.evaluate(pred_dir, gt_dir, ids, num_classes=bad, progress=False)
    with pytest.raises(DataError, match="radius"):
        ve.evaluate(pred_dir, gt_dir, ids, num_classes=3, boundary_radii=[-2], progress=False)


def test_cli_boundary_radius(pair):
    pred_dir, gt_dir, ids = pair
    buf = StringIO()
    with redirect_stdout(buf):
        assert main(["eval", str(pred_dir), str(gt_dir), "--list", str(ids), "--num-classes", "2",
                     "--boundary-radius", "1", "--boundary-radius", "0", "--json"]) == 0
    out = json.loads(buf.getvalue())
    assert [b["radius"] for b in out["boundary"]] == [1.0, 0.0]
    assert out["boundary"][0]["pixel_acc"] == pytest.approx(13 / 16)
    assert out["boundary"][0]["count"] == 16
    assert out["boundary"][1]["miou"] == pytest.approx(0.6)
    assert len(out["iou"]) == 2
    buf = StringIO()
    with redirect_stdout(buf):
        assert main(["eval", str(pred_dir), str(gt_dir), "--list", str(ids), "--num-classes", "2",
                     "--boundary-radius", "1", "--no-progress"]) == 0
    text = buf.getvalue()
    assert "mIoU (sum of the 2 IoUs / 2)" in text
    assert "within 1 px of a GT boundary (16 pixels): pixel accuracy 81.250%" in text
