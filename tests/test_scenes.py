"""The generated scene data set: determinism, consistency, its VOC layout through the project's own
data layer and evaluation, and the properties that make it a test of boundaries (colour does not
tell the classes apart; many edges are texture-only)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from caffe_compat import Net
from caffe_compat.datasets import scenes as sc
from caffe_compat.errors import DataError
from caffe_compat.pipeline import voc_eval as ve
from caffe_compat.pipeline.boundary import boundary_band
from caffe_compat.pipeline.images import read_image
from caffe_compat.pipeline.palette import read_label_png

SMALL = sc.SceneConfig(size=33, num_train=10, num_val=4, seed=3)


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return sc.write_scenes(root, SMALL, progress=False)


def test_same_seed_same_bytes_other_seed_differs(small_set, tmp_path):
    again = sc.write_scenes(tmp_path / "again", SMALL, progress=False)
    first = _digest(small_set.root)
    assert first == _digest(again.root)
    assert len(first) == 3 * 14 + 6 + 1  # 3 files per image, 3 lists per split, scenes.json
    other = sc.write_scenes(tmp_path / "other", sc.SceneConfig(size=33, num_train=10, num_val=4, seed=4),
                            progress=False)
    changed = [k for k, v in _digest(other.root).items() if k.startswith("JPEGImages") and first[k] != v]
    assert len(changed) == 14
    # a split is independent of the other split's size
    rgb, lab = sc.scene(sc.SceneConfig(size=33, num_train=99, num_val=1, seed=3), "val", 2)
    np.testing.assert_array_equal(lab, read_label_png(small_set.root / "SegmentationClassAug" / "val_0002.png"))


def test_files_agree_with_the_generator(small_set):
    root = small_set.root
    assert small_set.ids["train"] == [f"train_{i:04d}" for i in range(10)]
    for split, n in (("train", 10), ("val", 4)):
        assert (root / "list" / f"{split}_id.txt").read_text().split() == small_set.ids[split]
        assert (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split() == small_set.ids[split]
        lines = (root / "list" / f"{split}.txt").read_text().splitlines()
        assert len(lines) == n
        for i, line in enumerate(lines):
            img_id = f"{split}_{i:04d}"
            assert line == f"/JPEGImages/{img_id}.jpg /SegmentationClassAug/{img_id}.png"
            rgb, lab = sc.scene(SMALL, split, i)
            assert rgb.shape == (33, 33, 3) and lab.shape == (33, 33) and lab.max() < sc.NUM_CLASSES
            np.testing.assert_array_equal(read_label_png(root / "SegmentationClass" / f"{img_id}.png"), lab)
            np.testing.assert_array_equal(read_label_png(root / "SegmentationClassAug" / f"{img_id}.png"), lab)
            bgr = read_image(str(root / "JPEGImages" / f"{img_id}.jpg"), is_color=True)
            assert bgr.shape == (33, 33, 3)
            assert np.abs(bgr[..., ::-1].astype(int) - rgb).mean() < 4  # JPEG q95, 4:4:4
            assert lab[0].size and (sc.scene(SMALL, split, i)[1] == lab).all()
    # per-class pixel counts in scenes.json are those of the labels
    counts = np.zeros(sc.NUM_CLASSES, int)
    for i in range(10):
        counts += np.bincount(sc.scene(SMALL, "train", i)[1].ravel(), minlength=sc.NUM_CLASSES)
    assert small_set.class_pixels["train"] == counts.tolist()


def test_every_class_in_train(small_set):
    assert all(c > 0 for c in small_set.class_pixels["train"])
    # the top object of image i has class 1 + i % 5 and is fully visible
    for i in range(5):
        assert (sc.scene(SMALL, "train", i)[1] == 1 + i).sum() >= 0.02 * 33 * 33


def test_read_by_imagesegdata_and_twoimagedata(small_set):
    root = small_set.root
    text = """
layer { name: "data" type: "%s" top: "data" top: "label"
  transform_param { mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 crop_size: 33 mirror: false }
  image_data_param { root_folder: "%s" source: "%s" batch_size: 2 %s }
  %s
}
layer { name: "sil" type: "Silence" bottom: "label" }
"""
    for kind, extra, extra2 in (("ImageSegData", "label_type: PIXEL", ""),
                                ("TwoImageData", "", "two_image_data_param { first_is_color: true second_is_color: false }")):
        net = Net.from_string(text % (kind, root, small_set.list_file("val"), extra, extra2), phase="TEST")
        net()
        data, label = net.blobs["data"], net.blobs["label"]
        assert tuple(data.shape) == (2, 3, 33, 33) and tuple(label.shape) == (2, 1, 33, 33)
        for k in range(2):
            rgb, lab = sc.scene(SMALL, "val", k)
            np.testing.assert_array_equal(label[k, 0].numpy(), lab.astype(np.float32))
            bgr = rgb[..., ::-1].transpose(2, 0, 1) - np.array([104.008, 116.669, 122.675])[:, None, None]
            assert np.abs(data[k].numpy() - bgr).mean() < 4


def test_eval_of_labels_against_themselves(small_set):
    root = small_set.root
    gt = root / "SegmentationClass"
    r = ve.evaluate(gt, gt, root / "ImageSets" / "Segmentation" / "train.txt", num_classes=sc.NUM_CLASSES,
                    class_names=sc.CLASS_NAMES, boundary_radii=[1, 3], progress=False)
    assert r.miou == 1.0 and r.pixel_acc == 1.0
    assert r.boundary[1.0].miou == 1.0 and 0 < r.boundary[1.0].count < r.boundary[3.0].count < r.count
    assert r.count == 10 * 33 * 33
    # with the VOC default of 21 classes the 15 absent classes count as IoU 0
    assert ve.evaluate(gt, gt, small_set.ids["train"], progress=False).miou == pytest.approx(6 / 21)


def _edge_steps(rgb, lab):
    """Colour steps |I(x+1) - I(x)| (summed over RGB) across label edges and inside regions."""
    img = rgb.astype(float)
    step = np.abs(img[:, 1:] - img[:, :-1]).sum(-1)
    edge = lab[:, 1:] != lab[:, :-1]
    return step[edge], step[~edge]


def test_boundary_statistics():
    cfg = sc.SceneConfig(size=48)
    bands, hidden = [], []
    for i in range(16):
        rgb, lab = sc.scene(cfg, "train", i)
        bands.append(boundary_band(lab, 2).mean())
        across, inside = _edge_steps(rgb, lab)
        hidden.append((across < np.percentile(inside, 90)).mean())
    # a substantial band around the objects, but most pixels are interior
    assert 0.1 < np.mean(bands) < 0.5 and min(bands) > 0
    # a large part of the edges is no stronger in colour than ordinary texture steps (measured 0.24)
    assert 0.12 < np.mean(hidden) < 0.6
    # ... because of the shared colours, soft edges and noise: without them edges stand out more
    plain = sc.SceneConfig(size=48, shared_colour_prob=0.0, noise_sigma=0.0, edge_sigma=0.0)
    plain_hidden = [(lambda a, b: (a < np.percentile(b, 90)).mean())(*_edge_steps(*sc.scene(plain, "train", i)))
                    for i in range(16)]
    assert np.mean(plain_hidden) < np.mean(hidden) - 0.03


def test_colour_alone_does_not_separate_the_classes():
    cfg = sc.SceneConfig(size=48)

    def pixels(split, n):
        xs, ys = zip(*(sc.scene(cfg, split, i) for i in range(n)))
        return np.concatenate([x.reshape(-1, 3) for x in xs]).astype(float), np.concatenate([y.ravel() for y in ys])

    x, y = pixels("train", 30)
    means = np.stack([x[y == c].mean(0) for c in range(sc.NUM_CLASSES)])
    xv, yv = pixels("val", 15)
    pred = np.argmin(((xv[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    balanced = np.mean([(pred[yv == c] == c).mean() for c in range(sc.NUM_CLASSES)])
    assert balanced < 0.3  # chance is 1/6; measured ~0.15
    # the class colour means are close to each other compared with the colour spread
    spread = x.std(0).mean()
    assert np.abs(means - means.mean(0)).max() < 0.6 * spread


def test_bad_config():
    with pytest.raises(DataError, match="size"):
        sc.SceneConfig(size=8).check()
    with pytest.raises(DataError, match="at least one image"):
        sc.SceneConfig(num_train=0, num_val=0).check()
    with pytest.raises(DataError, match="split"):
        sc.scene(SMALL, "test", 0)
    for bad in ({"size": 33.5}, {"seed": -1}, {"num_train": True}, {"noise_sigma": float("nan")},
                {"min_objects": 3, "max_objects": 2}, {"shared_colour_prob": 2.0}):
        with pytest.raises(DataError):
            sc.SceneConfig(**bad).check()


def test_unwritable_root(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError, match="cannot create"):
        sc.write_scenes(tmp_path / "file", SMALL, progress=False)
