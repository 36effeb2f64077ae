"""Procedural "scenes": a small, seeded segmentation data set with hard object boundaries.

Why: the paper's claim (segmentation-aware convolution and the embedding-masked CRF
sharpen predictions at object boundaries) can be checked in small on a CPU only with a
data set that anyone can make, with no download.  These scenes are built so that a net
must look at *texture* to label a pixel, and so that the edge between two objects is
often invisible in colour:

* 6 classes: 0 ``background`` (smooth "clouds"), and five textured object classes
  (:data:`CLASS_NAMES`): ``stripes`` (period ~8 px), ``fine_stripes`` (~3.6 px),
  ``checks`` (squares of ~5 px), ``dots`` (a lattice of small dots) and ``speckle``
  (fine-grained noise); stripes, checks and dots have a random orientation per object.
* every texture blends two colours drawn from **one shared distribution** for all
  classes, so colour carries no information about the class; and with probability
  ``shared_colour_prob`` an object copies (with a small jitter) the colours of the
  background or of an earlier object, so the boundary between them is visible only as
  a change of texture.
* 2..5 objects per image, each an ellipse, a rotated rectangle, a star-shaped polygon
  or a smooth blob, drawn in order (later ones occlude earlier ones); their edges are
  composited with a Gaussian-blurred alpha (``edge_sigma`` px) while the label stays
  hard; then a smooth illumination gain and additive Gaussian noise (``noise_sigma``
  grey levels).
* the top-most object of image ``i`` has class ``1 + i % 5``, so any split of at least
  5 images contains every class.

Every image is a pure function of ``(seed, split, index)`` (its own
``numpy.random.default_rng``), so the same seed gives byte-identical files and a
split can be regenerated or enlarged without changing the other split.

:func:`write_scenes` writes the VOC layout that the project's pipeline reads
(``root`` below is what ``root_folder`` / ``--define DATA_ROOT=`` point to)::

    JPEGImages/<id>.jpg              RGB, JPEG quality 95, no chroma subsampling
    SegmentationClass/<id>.png       labels as VOC-palette PNG (what ``caffe-compat eval`` reads)
    SegmentationClassAug/<id>.png    labels as 8-bit grey PNG (what the data layers read:
                                     ImageSegData / TwoImageData read labels as grey values)
    ImageSets/Segmentation/<split>.txt   ids (the eval list)
    list/<split>.txt                 "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
                                     (ImageSegData label_type PIXEL, TwoImageData)
    list/<split>_id.txt              ids, same order (MatWrite ``source``)
    scenes.json                      the parameters, class names and per-class pixel counts
                                     (written last: its presence means the set is complete)

Ids are ``train_0000``, ... and ``val_0000``, ...  All files are written atomically.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from scipy import ndimage

from ..atomic import atomic_write
from ..errors import DataError

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: class names in label order (label 0 = background)
CLASS_NAMES: Tuple[str, ...] = ("background", "stripes", "fine_stripes", "checks", "dots", "speckle")
NUM_CLASSES = len(CLASS_NAMES)
#: the splits in the order they are written, and their code in the per-image seed
SPLITS: Tuple[str, ...] = ("train", "val")
_SHAPES = ("ellipse", "rectangle", "polygon", "blob")


@dataclass(frozen=True)
class SceneConfig:
    """Parameters of a scene set (all sizes in pixels, intensities in grey levels 0..255)."""

    size: int = 81                  #: images are size x size
    num_train: int = 300
    num_val: int = 100
    seed: int = 0
    min_objects: int = 2
    max_objects: int = 5
    noise_sigma: float = 6.0        #: std of the additive Gaussian noise
    edge_sigma: float = 0.7         #: blur of the objects' compositing alpha (the label stays hard)
    shared_colour_prob: float = 0.35  #: chance that an object reuses the colours of a layer below it
    jpeg_quality: int = 95

    def check(self) -> "SceneConfig":
        """Raise :class:`DataError` for values that cannot make a sensible set."""
        for name in ("size", "num_train", "num_val", "seed", "min_objects", "max_objects", "jpeg_quality"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise DataError(f"scene {name} must be an integer, got {v!r}")
        if self.seed < 0:
            raise DataError(f"scene seed must be >= 0, got {self.seed}")
        if not 17 <= int(self.size) <= 1024:
            raise DataError(f"scene size must be 17..1024 pixels, got {self.size}")
        if self.num_train < 0 or self.num_val < 0 or self.num_train + self.num_val == 0:
            raise DataError(f"need at least one image (num_train={self.num_train}, num_val={self.num_val})")
        if not 1 <= self.min_objects <= self.max_objects <= 20:
            raise DataError(f"need 1 <= min_objects <= max_objects <= 20, got {self.min_objects}, {self.max_objects}")
        for name in ("noise_sigma", "edge_sigma"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v <= 100):
                raise DataError(f"{name} must be in 0..100, got {v}")
        if not 0 <= self.shared_colour_prob <= 1:
            raise DataError(f"shared_colour_prob must be in 0..1, got {self.shared_colour_prob}")
        if not 1 <= self.jpeg_quality <= 100:
            raise DataError(f"jpeg_quality must be 1..100, got {self.jpeg_quality}")
        return self


# ----------------------------------------------------------------------------- textures
# Each texture maps pixel coordinates to t in [0, 1], the blend between an object's two colours.

def _rotated(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    theta = rng.uniform(0.0, math.pi)
    c, s = math.cos(theta), math.sin(theta)
    return xx * c + yy * s, -xx * s + yy * c


def _standardised(a: np.ndarray) -> np.ndarray:
    sd = float(a.std())
    return (a - float(a.mean())) / (sd if sd > 0 else 1.0)


def _stripes(yy, xx, rng, period_range):
    u, _ = _rotated(yy, xx, rng)
    period = rng.uniform(*period_range)
    return 0.5 + 0.5 * np.sin(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi))


def _checks(yy, xx, rng):
    u, v = _rotated(yy, xx, rng)
    period = rng.uniform(9.0, 11.0)  # one period = two squares
    su = np.sin(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi))
    sv = np.sin(2 * math.pi * v / period + rng.uniform(0, 2 * math.pi))
    return (np.sign(su * sv) + 1.0) / 2.0


def _dots(yy, xx, rng):
    u, v = _rotated(yy, xx, rng)
    period = rng.uniform(6.0, 8.0)
    radius = rng.uniform(1.3, 2.0)
    fu = (u / period + rng.uniform()) % 1.0 - 0.5
    fv = (v / period + rng.uniform()) % 1.0 - 0.5
    r = np.hypot(fu, fv) * period
    return np.clip(radius - r + 0.5, 0.0, 1.0)  # one pixel of antialiasing


def _speckle(yy, xx, rng):
    z = _standardised(ndimage.gaussian_filter(rng.random(yy.shape), 0.8))
    return np.clip(0.5 + 0.3 * z, 0.0, 1.0)


def _clouds(yy, xx, rng):
    z = _standardised(ndimage.gaussian_filter(rng.normal(size=yy.shape), rng.uniform(5.0, 9.0)))
    return np.clip(0.5 + 0.3 * z, 0.0, 1.0)


_TEXTURES: Dict[int, Callable] = {
    0: _clouds,
    1: lambda yy, xx, rng: _stripes(yy, xx, rng, (7.0, 9.0)),
    2: lambda yy, xx, rng: _stripes(yy, xx, rng, (3.2, 4.0)),
    3: _checks,
    4: _dots,
    5: _speckle,
}


def _colour_pair(rng: np.random.Generator) -> np.ndarray:
    """``(2, 3)`` RGB floats: two colours at least ~60 grey levels apart, from one distribution for all classes."""
    a = rng.uniform(25.0, 230.0, size=3)
    d = rng.normal(size=3)
    d /= max(float(np.linalg.norm(d)), 1e-6)
    b = np.clip(a + rng.uniform(60.0, 130.0) * d, 0.0, 255.0)
    return np.stack([a, b])


# ----------------------------------------------------------------------------- shapes

def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of one object of the given kind, at a random place, size and orientation."""
    cy, cx = rng.uniform(0.15 * size, 0.85 * size, size=2)
    r = rng.uniform(0.12 * size, 0.30 * size)
    y, x = yy - cy, xx - cx
    if kind in ("ellipse", "rectangle"):
        u, v = _rotated(y, x, rng)
        a, b = r * rng.uniform(0.6, 1.3, size=2)
        if kind == "ellipse":
            return (u / a) ** 2 + (v / b) ** 2 <= 1.0
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    rho, phi = np.hypot(y, x), np.arctan2(y, x) % (2 * math.pi)
    if kind == "blob":  # radius varies smoothly with the angle
        radius = np.full_like(phi, r)
        for k in (2, 3, 4):
            radius += r * rng.uniform(0.0, 0.22) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
        return rho <= radius
    # star-shaped polygon: n vertices at jittered, sorted angles (every gap < pi, so the centre is inside)
    n = int(rng.integers(3, 8))
    step = 2 * math.pi / n
    theta = (rng.uniform(0, 2 * math.pi) + step * np.arange(n) + rng.uniform(-0.2, 0.2, n) * step) % (2 * math.pi)
    theta.sort()
    rad = r * rng.uniform(0.55, 1.2, n)
    vx, vy = rad * np.cos(theta), rad * np.sin(theta)
    i = (np.searchsorted(theta, phi, side="right") - 1) % n  # the edge whose angular sector holds the pixel
    j = (i + 1) % n
    ex, ey = vx[j] - vx[i], vy[j] - vy[i]
    side = ex * (y - vy[i]) - ey * (x - vx[i])
    centre_side = ex * (-vy[i]) - ey * (-vx[i])
    return side * centre_side >= 0


# ----------------------------------------------------------------------------- one scene

def _layer_image(cls: int, colours: np.ndarray, yy, xx, rng) -> np.ndarray:
    t = _TEXTURES[cls](yy, xx, rng)[..., None]
    return colours[0] * (1.0 - t) + colours[1] * t


def render_scene(rng: np.random.Generator, config: SceneConfig = SceneConfig(),
                 top_class: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one scene from ``rng``.

    Args:
        rng: the random generator (consumed).
        config: sizes and strengths (:class:`SceneConfig`).
        top_class: class of the top-most (fully visible) object; random when None.

    Returns:
        ``(rgb, labels)``: ``(S, S, 3)`` uint8 RGB image and ``(S, S)`` uint8 class map
        (0..5, no ignore value), S = ``config.size``.
    """
    s = int(config.size)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    palettes = [_colour_pair(rng)]
    img = _layer_image(0, palettes[0], yy, xx, rng)
    labels = np.zeros((s, s), dtype=np.uint8)
    n_obj = int(rng.integers(config.min_objects, config.max_objects + 1))
    min_area = max(4, int(0.02 * s * s))
    for k in range(n_obj):
        cls = int(rng.integers(1, NUM_CLASSES))
        if k == n_obj - 1 and top_class is not None:
            cls = int(top_class)
        for _attempt in range(20):  # an object mostly outside the image is redrawn
            mask = _shape_mask(_SHAPES[int(rng.integers(len(_SHAPES)))], yy, xx, s, rng)
            if int(mask.sum()) >= min_area:
                break
        if rng.random() < config.shared_colour_prob:  # the colours of a layer below: an edge of texture only
            colours = np.clip(palettes[int(rng.integers(len(palettes)))] + rng.normal(0, 8.0, (2, 3)), 0, 255)
        else:
            colours = _colour_pair(rng)
        palettes.append(colours)
        tex = _layer_image(cls, colours, yy, xx, rng)
        alpha = mask.astype(np.float64)
        if config.edge_sigma > 0:
            alpha = ndimage.gaussian_filter(alpha, config.edge_sigma)
        img = img * (1.0 - alpha[..., None]) + tex * alpha[..., None]
        labels[mask] = cls
    gain = 1.0 + 0.12 * _standardised(ndimage.gaussian_filter(rng.normal(size=(s, s)), s / 4.0))
    img = img * np.clip(gain, 0.75, 1.25)[..., None]
    img = img + rng.normal(0.0, config.noise_sigma, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


def scene(config: SceneConfig, split: str, index: int) -> Tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``split`` ("train" or "val"): a pure function of ``(config, split, index)``."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([int(config.seed), SPLITS.index(split), int(index)])
    return render_scene(rng, config, top_class=1 + int(index) % (NUM_CLASSES - 1))


# ----------------------------------------------------------------------------- writing

@dataclass
class SceneSet:
    """What :func:`write_scenes` wrote."""

    root: Path
    config: SceneConfig
    ids: Dict[str, List[str]] = field(default_factory=dict)   #: split -> ids, in list order
    #: split -> ``(NUM_CLASSES,)`` pixel count per class
    class_pixels: Dict[str, List[int]] = field(default_factory=dict)

    def list_file(self, split: str) -> Path:
        """``list/<split>.txt`` (image and grey label per line, for the data layers)."""
        return self.root / "list" / f"{split}.txt"

    def id_file(self, split: str) -> Path:
        """``list/<split>_id.txt`` (ids, for MatWrite and eval)."""
        return self.root / "list" / f"{split}_id.txt"


def _write_text(path: Path, text: str) -> None:
    def writer(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
    atomic_write(path, writer, error=DataError)


def _write_image(path: Path, array: np.ndarray, mode: str, **save_args) -> None:
    from PIL import Image

    im = Image.fromarray(array, mode=mode)
    atomic_write(path, lambda tmp: im.save(tmp, **save_args), error=DataError)


def write_scenes(root: PathLike, config: SceneConfig = SceneConfig(), *,
                 progress: Optional[bool] = None) -> SceneSet:
    """Generate the scene set of ``config`` into ``root`` (created if needed; existing files replaced).

    Args:
        root: the data set folder (the layout is in the module docstring).
        config: what to generate.
        progress: tqdm progress bar (None: only on a terminal).

    Returns:
        the :class:`SceneSet` (ids and per-class pixel counts of each split).
    """
    from tqdm import tqdm

    from ..pipeline.palette import save_palette_png

    config.check()
    root = Path(root)
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "list", "ImageSets/Segmentation"):
        try:
            (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the scene folder '{root / sub}': {e}") from None
    out = SceneSet(root=root, config=config)
    jobs = [(split, i) for split, n in zip(SPLITS, (config.num_train, config.num_val)) for i in range(n)]
    for split in SPLITS:
        out.ids[split] = []
        out.class_pixels[split] = [0] * NUM_CLASSES
    for split, i in tqdm(jobs, desc="scenes", unit="img", disable=(None if progress is None else not progress)):
        image_id = f"{split}_{i:04d}"
        rgb, labels = scene(config, split, i)
        _write_image(root / "JPEGImages" / f"{image_id}.jpg", rgb, "RGB", format="JPEG",
                     quality=int(config.jpeg_quality), subsampling=0)
        save_palette_png(root / "SegmentationClass" / f"{image_id}.png", labels)
        _write_image(root / "SegmentationClassAug" / f"{image_id}.png", labels, "L", format="PNG")
        out.ids[split].append(image_id)
        counts = np.bincount(labels.ravel(), minlength=NUM_CLASSES)
        out.class_pixels[split] = [a + int(b) for a, b in zip(out.class_pixels[split], counts)]
    for split in SPLITS:
        ids = out.ids[split]
        _write_text(out.list_file(split),
                    "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids))
        _write_text(out.id_file(split), "".join(f"{i}\n" for i in ids))
        _write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    meta = {"generator": "caffe_compat.datasets.scenes", "config": asdict(config),
            "class_names": list(CLASS_NAMES), "ids": {k: len(v) for k, v in out.ids.items()},
            "class_pixels": out.class_pixels}
    _write_text(root / "scenes.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
    log.info("wrote %d train + %d val scenes (%d x %d) to %s", config.num_train, config.num_val,
             config.size, config.size, root)
    return out


__all__ = ["CLASS_NAMES", "NUM_CLASSES", "SPLITS", "SceneConfig", "SceneSet", "render_scene", "scene",
           "write_scenes"]
