#!/usr/bin/env python
"""Generate the bundled example: a tiny VOC-style dataset and designed weights for the tiny net.

Writes (deterministically; numpy is seeded) under ``--out`` (default: ``examples/``):

* ``tiny_voc/JPEGImages/<id>.jpg``: 8 small RGB images (29..65 pixels a side, never larger than
  the net's 65 x 65 crop, because the evaluation crops the prediction to the image size; see
  ``docs/example.md``) made of flat shapes (rectangles, ellipses, triangles) in the 21 VOC class
  colours (the VOC palette: class 0 "background" is black), plus mild Gaussian noise (sigma 3
  grey levels); JPEG quality 95, 4:4:4 (no chroma subsampling).  Every one of the 21 classes
  appears, so the 21-class mIoU of the evaluation can be high.
* ``tiny_voc/SegmentationClass/<id>.png``: the true class index of every pixel as an 8-bit
  VOC-palette PNG; as in VOC, a 2-pixel band along every boundary between two classes is
  "void" (255, ignored by the evaluation).
* ``tiny_voc/list.txt`` (``/JPEGImages/<id>.jpg`` per line, ImageSegData's list format with
  ``root_folder`` = the ``tiny_voc`` folder) and ``tiny_voc/ids.txt`` (MatWrite ids).
* ``tiny_segaware.caffemodel``: weights for ``configs/tiny_segaware_test.prototxt``:

  - ``fc8`` (1x1 convolution on the mean-subtracted BGR pixel ``x``) is a nearest-class-colour
    classifier: ``score_k = a * (w_k . x + b_k)`` with ``w_k = c_k - mean`` and
    ``b_k = -|c_k - mean|^2 / 2`` (``c_k`` = the BGR colour of class k), so the largest score
    is the class whose colour is nearest to the pixel (``argmax_k -|x - w_k|^2``).  ``a = 1/400``
    keeps every logit inside float32 ``exp``'s range (|logit| < 80), which the evaluation's
    MATLAB-style softmax needs (a logit above 88.7 overflows and the pixel becomes class 0);
  - ``emb`` (1x1 convolution on ``rgb_emb = x / 255``): the three colour channels and their mean;
  - the scalar Scales: ``scaled_emb`` 20, ``scaled_xy`` 0.05, ``scaled_xy2`` 0.5 (CRF features),
    ``avg_dist_sc`` 20 (averaging mask ``exp(-20 * L1 distance)``);
  - ``crf``: the Potts initialisation (``W_G = W_B = I``, compatibility ``-I``).

Run from the repository root (the files are committed; rerun only to change them)::

    python tools/make_example.py            # writes examples/
    python tools/make_example.py --verify   # ... then runs the net on it and logs the mIoU
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow running from a checkout without installing
    sys.path.insert(0, str(REPO))

log = logging.getLogger("make_example")

CONFIG = REPO / "configs" / "tiny_segaware_test.prototxt"
CROP_SIZE = 65
HALF_SIZE = (CROP_SIZE + 1) // 2
#: B, G, R mean of every original config (and of the tiny one)
MEAN_BGR = np.array([104.008, 116.669, 122.675])
NUM_CLASSES = 21
#: logit scale of the colour classifier (keeps |logit| < 80; see the module docstring)
SCORE_SCALE = 1.0 / 400.0
NOISE_SIGMA = 3.0
VOID = 255
SEED = 2017

#: (rows, cols) of the images; all <= CROP_SIZE (the evaluation cannot crop a 65 x 65 prediction
#: to a larger image), several exactly the crop size, most smaller (padded bottom/right).  The CRF
#: runs at half resolution (Interp shrink 2, then zoom 2), so an image's last row/column is sampled
#: exactly when its index is even (odd size); with an even size (tiny_02's 64 columns, tiny_07's 60
#: rows) it is interpolated half way into the padding and partly mislabelled, as on real VOC
#: images in the 513 crop (see docs/example.md).  This keeps the score just below 100 %.
SIZES: List[Tuple[int, int]] = [(65, 65), (49, 64), (65, 41), (37, 53), (57, 57), (29, 61), (60, 45), (65, 59)]

#: designed scalar Scale values (see the module docstring)
SCALES = {"scaled_emb": 20.0, "scaled_xy": 0.05, "scaled_xy2": 0.5, "avg_dist_sc": 20.0}


def class_colours_rgb() -> np.ndarray:
    """``(21, 3)`` uint8 RGB: the VOC palette colours of classes 0..20."""
    from caffe_compat.pipeline.palette import voc_palette

    return voc_palette(NUM_CLASSES)


def _shape_mask(kind: str, h: int, w: int, top: int, left: int, sh: int, sw: int, flip: bool) -> np.ndarray:
    """Boolean ``h x w`` mask of one shape inside the box ``(top, left, sh, sw)``."""
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (yy >= top) & (yy < top + sh) & (xx >= left) & (xx < left + sw)
    if kind == "rect":
        return inside
    cy, cx = top + (sh - 1) / 2.0, left + (sw - 1) / 2.0
    if kind == "ellipse":
        return ((yy - cy) / (sh / 2.0)) ** 2 + ((xx - cx) / (sw / 2.0)) ** 2 <= 1.0
    # triangle: apex at the top (or bottom when flipped), base on the other side of the box
    t = (yy - top + 0.5) / sh
    if flip:
        t = 1.0 - t
    half = t * sw / 2.0
    return inside & (np.abs(xx - cx) <= half)


def make_labels(rng: np.random.Generator) -> List[np.ndarray]:
    """One ``rows x cols`` uint8 label map per image (classes 0..20, no void yet).

    The 20 object classes are dealt out over the images (each appears at least once); each
    image gets 2-4 shapes of 11..35 pixels, drawn in order (later shapes occlude earlier ones).
    Every dealt class is checked to keep at least 40 visible pixels.
    """
    n = len(SIZES)
    order = rng.permutation(np.arange(1, NUM_CLASSES))
    per_image: List[List[int]] = [[] for _ in range(n)]
    for i, c in enumerate(order):  # 20 classes over 8 images: 2 or 3 each
        per_image[i % n].append(int(c))
    for i in range(n):  # one extra (repeated) class on some images
        if rng.random() < 0.5:
            per_image[i].append(int(rng.integers(1, NUM_CLASSES)))
    labels = []
    kinds = ("rect", "ellipse", "triangle")
    for (h, w), classes in zip(SIZES, per_image):
        for _attempt in range(100):
            lab = np.zeros((h, w), dtype=np.uint8)
            for c in classes:
                sh = int(rng.integers(11, min(36, h - 2)))
                sw = int(rng.integers(11, min(36, w - 2)))
                top = int(rng.integers(0, h - sh + 1))
                left = int(rng.integers(0, w - sw + 1))
                kind = kinds[int(rng.integers(0, len(kinds)))]
                lab[_shape_mask(kind, h, w, top, left, sh, sw, bool(rng.integers(0, 2)))] = c
            if all(int((lab == c).sum()) >= 40 for c in classes):
                break
        else:  # pragma: no cover - the seed is fixed
            raise RuntimeError(f"could not place classes {classes} in a {h}x{w} image")
        labels.append(lab)
    return labels


def void_boundaries(lab: np.ndarray) -> np.ndarray:
    """``lab`` with every pixel whose 3x3 neighbourhood holds another class set to 255 (VOC's void band)."""
    h, w = lab.shape
    padded = np.pad(lab, 1, mode="edge")
    boundary = np.zeros((h, w), dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            boundary |= padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] != lab
    out = lab.copy()
    out[boundary] = VOID
    return out


def render(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``rows x cols x 3`` uint8 RGB image: the class colours of ``lab`` plus Gaussian noise."""
    rgb = class_colours_rgb()[lab].astype(np.float64)
    rgb += rng.normal(0.0, NOISE_SIGMA, size=rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def designed_weights() -> Dict[str, List[np.ndarray]]:
    """Blob values per layer name (Caffe blob order), float32."""
    bgr = class_colours_rgb()[:, ::-1].astype(np.float64)  # (21, 3) B, G, R
    w = bgr - MEAN_BGR                                        # class colour, mean-subtracted
    b = -0.5 * (w ** 2).sum(axis=1)
    fc8_w = (SCORE_SCALE * w).reshape(NUM_CLASSES, 3, 1, 1)
    fc8_b = SCORE_SCALE * b
    emb_w = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3]], dtype=np.float64).reshape(4, 3, 1, 1)
    emb_b = np.zeros(4)
    eye = np.eye(NUM_CLASSES).reshape(1, 1, NUM_CLASSES, NUM_CLASSES)
    out = {
        "fc8": [fc8_w, fc8_b],
        "emb": [emb_w, emb_b],
        "crf": [eye, eye, -eye],
    }
    for name, v in SCALES.items():
        out[name] = [np.array(v)]
    return {k: [np.asarray(a, dtype=np.float32) for a in v] for k, v in out.items()}


def defines_for(data_root: Path, feature_dir: Path, crop_size: int = CROP_SIZE) -> Dict[str, str]:
    """The ``--define`` values of ``configs/tiny_segaware_test.prototxt`` for a VOC-style folder."""
    return {"DATA_ROOT": str(data_root), "LIST": str(data_root / "list.txt"), "IDS": str(data_root / "ids.txt"),
            "FEATURE_DIR": str(feature_dir), "CROP_SIZE": str(crop_size), "HALF_SIZE": str((crop_size + 1) // 2)}


def write_weights(path: Path) -> None:
    import torch

    from caffe_compat import Net

    net = Net(CONFIG, phase="TEST", defines=defines_for(path.parent / "tiny_voc", path.parent), seed=0)
    values = designed_weights()
    params = net.params
    if set(values) != set(params):
        raise RuntimeError(f"designed weights {sorted(values)} do not match the net's {sorted(params)}")
    with torch.no_grad():
        for name, arrays in values.items():
            for blob, arr in zip(params[name], arrays):
                blob.copy_(torch.from_numpy(arr).reshape(blob.shape))
    net.save(path)
    log.info("wrote %s (%d bytes)", path, path.stat().st_size)


def write_dataset(root: Path) -> List[str]:
    from PIL import Image

    from caffe_compat.pipeline.palette import save_palette_png

    rng = np.random.default_rng(SEED)
    labels = make_labels(rng)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    ids = []
    for i, lab in enumerate(labels):
        img_id = f"tiny_{i + 1:02d}"
        ids.append(img_id)
        Image.fromarray(render(lab, rng), mode="RGB").save(root / "JPEGImages" / f"{img_id}.jpg",
                                                             format="JPEG", quality=95, subsampling=0)
        save_palette_png(root / "SegmentationClass" / f"{img_id}.png", void_boundaries(lab))
        log.info("%s: %d x %d, classes %s", img_id, lab.shape[0], lab.shape[1],
                 sorted(int(c) for c in np.unique(lab)))
    (root / "list.txt").write_text("".join(f"/JPEGImages/{i}.jpg\n" for i in ids))
    (root / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    present = set(int(c) for lab in labels for c in np.unique(lab))
    if present != set(range(NUM_CLASSES)):  # pragma: no cover - the seed is fixed
        raise RuntimeError(f"classes missing from the example: {sorted(set(range(NUM_CLASSES)) - present)}")
    return ids


def verify(out: Path) -> float:
    """Run the whole chain in a temporary folder and return (and log) the mIoU."""
    import json
    import tempfile
    from contextlib import redirect_stdout
    from io import StringIO

    from caffe_compat.cli import main

    root = out / "tiny_voc"
    with tempfile.TemporaryDirectory() as tmp:
        feats = Path(tmp) / "features"
        feats.mkdir()
        defs = [f"--define={k}={v}" for k, v in defines_for(root, feats).items()]
        steps = [["test", str(CONFIG), str(out / "tiny_segaware.caffemodel"), *defs, "--no-progress", "--workers", "0"],
                 ["gen-preds", str(feats), "--images", str(root / "JPEGImages"), "--out", str(Path(tmp) / "preds"),
                  "--flat", "--no-progress"],
                 ["eval", str(Path(tmp) / "preds"), str(root / "SegmentationClass"), "--list", str(root / "ids.txt"),
                  "--json"]]
        buf = StringIO()
        for argv in steps:
            with redirect_stdout(buf if argv[0] == "eval" else StringIO()):
                if main(argv) != 0:
                    raise RuntimeError(f"caffe-compat {argv[0]} failed")
        result = json.loads(buf.getvalue())
    log.info("mIoU of the bundled example: %.4f (pixel accuracy %.4f)", result["miou"], result["pixel_acc"])
    return result["miou"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "examples"), help="output folder (default: examples/ of the repo)")
    p.add_argument("--verify", action="store_true", help="afterwards run test -> gen-preds -> eval and log the mIoU")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_dataset(out / "tiny_voc")
    write_weights(out / "tiny_segaware.caffemodel")
    if args.verify:
        verify(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
