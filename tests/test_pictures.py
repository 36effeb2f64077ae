"""The picture helpers of ``caffe-compat demo`` (caffe_compat.pipeline.pictures) on hand-made inputs."""
import math

import numpy as np
import pytest
from scipy import ndimage

from caffe_compat.errors import CaffeCompatError
from caffe_compat.pipeline import pictures as P


def _two_regions(h=9, w=12, split=5, gap=2.0):
    """Embeddings: channel 0 is 0 left of column ``split`` and ``gap`` from there on; channel 1 is 0."""
    emb = np.zeros((2, h, w))
    emb[0, :, split:] = gap
    return emb


def test_masks_at_is_exp_of_l1_distance_and_zero_outside():
    emb = _two_regions()
    emb[1, 4, 4] = 0.5                     # the marked pixel differs a little in channel 1
    lam = 0.7
    (m,) = P.masks_at(emb, [(4, 4)], 5, lam)
    assert m.shape == (5, 5)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            y, x = 4 + dy, 4 + dx
            d = np.abs(emb[:, 4, 4] - emb[:, y, x]).sum()
            assert m[dy + 2, dx + 2] == pytest.approx(math.exp(-lam * d), rel=1e-12)
    (corner,) = P.masks_at(emb, [(0, 0)], 5, lam)
    assert np.all(corner[:2] == 0) and np.all(corner[:, :2] == 0)     # outside the image
    assert corner[2, 2] == 1.0


def test_masked_box_filter_plain_is_a_box_mean_and_segaware_keeps_an_edge():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 12, 3)).astype(np.float64)
    plain = P.masked_box_filter(img, None, 3)
    want = ndimage.uniform_filter(img, size=(3, 3, 1), mode="constant")
    np.testing.assert_allclose(plain[1:-1, 1:-1], want[1:-1, 1:-1], rtol=1e-12)
    # corner: the mean of the 4 in-image pixels, not of 9 with zeros
    np.testing.assert_allclose(plain[0, 0], img[:2, :2].mean((0, 1)), rtol=1e-12)

    step = np.zeros((9, 12, 3))
    step[:, 5:] = 200.0
    emb = _two_regions(gap=50.0)            # exp(-50) ~ 2e-22: nothing crosses the edge
    aware = P.masked_box_filter(step, emb, 5, 1.0)
    np.testing.assert_allclose(aware, step, atol=1e-12)
    blurred = P.masked_box_filter(step, None, 5)
    assert blurred[4, 4, 0] > 50 and blurred[4, 5, 0] < 150      # the plain filter smears it


def test_pick_points_inside_segments():
    lab = np.zeros((30, 30), np.uint8)
    lab[5:20, 5:20] = 1                      # 15 x 15 square
    lab[22:28, 2:10] = 2
    pts = P.pick_points(lab, lab.shape, count=2, inset=3)
    assert len(pts) == 2
    (y0, x0), (y1, x1) = pts
    assert lab[y0, x0] == 1 and lab[y1, x1] == 2          # largest segment first
    dist = ndimage.distance_transform_edt(lab == 1)
    assert dist[y0, x0] == pytest.approx(3.0)
    assert P.pick_points(None, (11, 21)) == [(3, 6), (6, 13), (8, 7)]


def test_mask_overview_and_colours():
    img = np.full((10, 10, 3), 100, np.uint8)
    m = np.zeros((3, 3))
    m[1, 1], m[0, 0] = 1.0, 0.5
    out = P.mask_overview(img, [(5, 5)], [m])
    assert tuple(out[0, 0]) == (35, 35, 35)                 # dimmed
    assert tuple(out[4, 4]) == (128, 128, 128)              # 0.5 of white beats the dimmed pixel
    assert tuple(out[5, 5]) == (255, 0, 0)                  # the marked pixel
    lab = np.array([[0, 1], [2, 15]])
    rgb = P.colorize_labels(lab)
    assert tuple(rgb[0, 0]) == (0, 0, 0) and tuple(rgb[0, 1]) == (128, 0, 0) and tuple(rgb[1, 0]) == (0, 128, 0)
    with pytest.raises(CaffeCompatError, match="labels"):
        P.colorize_labels(np.array([[300]]))


def test_compose_sheet_places_each_panel():
    red, blue = np.zeros((4, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    sheet = P.compose_sheet([("a", [P.Panel("red", red), P.Panel("blue", blue)])], panel_px=32, per_line=1)
    # one panel per line, each 32 px on its longer side: red 16 x 32, blue 32 x 32
    assert sheet.shape[1] == 8 + 32 + 8
    reds = np.all(sheet == (255, 0, 0), axis=-1)
    blues = np.all(sheet == (0, 0, 255), axis=-1)
    assert reds.sum() == 16 * 32 and blues.sum() == 32 * 32
    assert np.argwhere(reds)[:, 0].max() < np.argwhere(blues)[:, 0].min()    # red line above blue


def test_bad_inputs_are_refused():
    emb = _two_regions()
    with pytest.raises(CaffeCompatError, match="outside"):
        P.masks_at(emb, [(20, 1)], 3, 1.0)
    with pytest.raises(CaffeCompatError, match="odd"):
        P.masks_at(emb, [(1, 1)], 4, 1.0)
    bad = emb.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(CaffeCompatError, match="NaN"):
        P.masks_at(bad, [(1, 1)], 3, 1.0)
    with pytest.raises(CaffeCompatError, match="embeddings of size"):
        P.masked_box_filter(np.zeros((4, 4, 3)), emb, 3)


def test_save_png_is_atomic_and_checks(tmp_path):
    P.save_png(tmp_path / "a.png", np.zeros((3, 4, 3), np.uint8))
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    with pytest.raises(CaffeCompatError, match="uint8"):
        P.save_png(tmp_path / "b.png", np.zeros((3, 4, 3)))
    with pytest.raises(CaffeCompatError):
        P.save_png(tmp_path / "missing" / "c.png", np.zeros((3, 4, 3), np.uint8))
