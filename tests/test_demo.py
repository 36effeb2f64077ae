"""``caffe-compat demo`` (the README's first command) and the scene nets' shipped weights."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caffe_compat.datasets.scenes import SceneConfig, scene
from caffe_compat.pipeline import pictures as P
from caffe_compat.pipeline import scene_demo as D

REPO = Path(__file__).resolve().parents[1]
NETS = ("embs",) + D.VARIANTS


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "caffe_compat", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_weights_are_shipped_beside_the_scene_nets():
    for name in NETS:
        f = D.DEFAULT_CONFIGS / f"{name}.caffemodel"
        assert f.is_file(), f"{f} is missing (tools/train_scenes.py --ship writes it)"
        assert f.stat().st_size < 300_000


@pytest.fixture(scope="module")
def nets81():
    return D.SceneNets(D.DEFAULT_CONFIGS, 81)


def test_shipped_weights_segment_held_out_scenes(nets81):
    """The trained variants label held-out scenes far better than the all-background answer."""
    cfg = SceneConfig()
    correct = {v: 0 for v in D.VARIANTS}
    total = background = 0
    for i in range(90, 94):                 # val scenes (generated, not stored)
        rgb, labels = scene(cfg, "val", i)
        _, preds = nets81.run(np.asarray(rgb, np.uint8))
        for v in D.VARIANTS:
            correct[v] += int((preds[v] == labels).sum())
        total += labels.size
        background += int((labels == 0).sum())
    for v in D.VARIANTS:
        acc = correct[v] / total
        assert acc > background / total + 0.1, (v, acc, background / total)
    assert 0 < nets81.scale < 100          # the learned mask scale of the first seg.-aware layer


def test_demo_writes_every_picture_and_the_sheet(tmp_path):
    out = tmp_path / "pictures"
    r = _cli("demo", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip().splitlines()[-1]) == out / "sheet.png"
    scene_dir, photo_dir = out / "scene_val_0003", out / "coffee"
    common = ["image", "embeddings", "masks", "blur_plain", "blur_segaware", "mask_0"] + \
             [f"pred_{v}" for v in D.VARIANTS]
    for d, extra in ((scene_dir, ["labels", "mask_1", "mask_2"]), (photo_dir, [])):
        for name in common + extra:
            assert (d / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", d / name
    from PIL import Image

    # the files are what the functions compute: the scene's input and ground truth, bit for bit
    rgb, labels = scene(SceneConfig(), *D.DEFAULT_SCENE)
    np.testing.assert_array_equal(np.asarray(Image.open(scene_dir / "image.png")), rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(scene_dir / "labels.png")), P.colorize_labels(labels))
    photo = np.asarray(Image.open(photo_dir / "image.png"))
    assert max(photo.shape[:2]) == 161 and photo.shape[2] == 3
    sheet = np.asarray(Image.open(out / "sheet.png"))
    assert sheet.shape[0] > 4 * 240 and sheet.shape[1] >= 6 * 240
    # the seg.-aware blur differs from the plain one, and both differ from the input
    plain = np.asarray(Image.open(scene_dir / "blur_plain.png")).astype(int)
    aware = np.asarray(Image.open(scene_dir / "blur_segaware.png")).astype(int)
    assert np.abs(plain - aware).mean() > 1 and np.abs(aware - rgb).mean() > 0.5


def test_demo_on_a_given_image_with_points(tmp_path):
    from PIL import Image

    import caffe_compat.cli as cli

    rgb, _ = scene(SceneConfig(size=41), "val", 1)
    Image.fromarray(rgb).save(tmp_path / "mine.png")
    out = tmp_path / "o"
    assert cli.main(["demo", "--image", str(tmp_path / "mine.png"), "--point", "10,12", "--point", "30,5",
                     "--window", "7", "--out", str(out), "--no-progress"]) == 0
    mask = np.asarray(Image.open(out / "mine" / "mask_1.png"))
    assert mask.shape == (7 * (160 // 7),) * 2                 # a 7 x 7 mask, scaled up
    assert not (out / "mine" / "mask_2.png").exists() and not (out / "mine" / "labels.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--configs", "EMPTY"], "train_scenes.py --ship"),
    (["--image", "NOTANIMAGE"], "cannot read image"),
    (["--window", "4"], "--window must be an odd number"),
])
def test_demo_errors_are_clear(tmp_path, args, message, caplog, monkeypatch):
    import caffe_compat.cli as cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "NOTANIMAGE").write_text("not an image")
    assert cli.main(["demo", *args, "--out", str(tmp_path / "o"), "--no-progress"]) != 0
    assert message in caplog.text


def test_demo_bad_point_is_a_usage_error(capsys):
    import caffe_compat.cli as cli

    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--point", "3"])
    assert e.value.code == 2 and "expected Y,X" in capsys.readouterr().err
