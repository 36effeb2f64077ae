"""The method in pictures, with the scene nets the project trains itself (``caffe-compat demo``).

For each image (by default a bundled generated scene and the bundled photograph
``examples/photos/coffee.jpg``) this writes, into ``OUT/<image name>/``:

``image.png``                  the net input (RGB)
``labels.png``                 the ground truth (generated scenes only)
``embeddings.png``             the learned 16-channel embedding, first 3 principal components as RGB
``masks.png``, ``mask_<i>.png``  local attention masks ``exp(-|λ·‖e(p)−e(q)‖₁|)`` around marked
                               pixels ``p`` (``--window`` × ``--window`` neighbours ``q``; λ the
                               segaware net's learned scale of its first layer)
``pred_<variant>.png``         the argmax of each variant: plain convolutions, segmentation-aware
                               convolutions, segmentation-aware + NormConvMeanfield CRF (VOC colours)
``blur_plain.png``, ``blur_segaware.png``  a ``--blur`` × ``--blur`` box filter, plain and weighted
                               by the masks (it stays inside segments)

and ``OUT/sheet.png``: one row of these panels per image.  The nets are the deploy files of
``configs/scenes/`` with the weights shipped beside them (``<net>.caffemodel``, written by
``tools/train_scenes.py --ship``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import CaffeCompatError, DataError
from . import pictures as P

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
#: Folder of the scene nets and their shipped weights (in a checkout of the repository).
DEFAULT_CONFIGS = REPO / "configs" / "scenes"
#: The bundled photograph (CC0, see examples/photos/README.md).
DEFAULT_PHOTO = REPO / "examples" / "photos" / "coffee.jpg"
#: The bundled generated scene: validation image 3 of the default data set (seed 0).
DEFAULT_SCENE = ("val", 3)
VARIANTS = ("plain", "segaware", "segaware_crf")
TITLES = {"plain": "plain convolutions", "segaware": "segmentation-aware", "segaware_crf": "seg.-aware + CRF"}
#: BGR means subtracted from the input (those of the scene nets' data layers).
MEAN_BGR = (104.008, 116.669, 122.675)


@dataclass
class DemoImage:
    """One picture to explain: ``rgb`` ``H x W x 3`` uint8, ``labels`` ``H x W`` (or None)."""
    name: str
    rgb: np.ndarray
    labels: Optional[np.ndarray] = None


def bundled_scene() -> DemoImage:
    from ..datasets.scenes import SceneConfig, scene

    split, i = DEFAULT_SCENE
    rgb, labels = scene(SceneConfig(), split, i)
    return DemoImage(f"scene_{split}_{i:04d}", np.asarray(rgb, dtype=np.uint8), np.asarray(labels))


def read_photo(path, max_side: int = 161) -> DemoImage:
    """An image file as RGB, scaled down (Lanczos) so its longer side is at most ``max_side``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image '{path}': {exc}") from None
    w, h = im.size
    if max(w, h) > max_side:
        f = max_side / max(w, h)
        im = im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS)
    return DemoImage(Path(path).stem, np.asarray(im, dtype=np.uint8))


class SceneNets:
    """The embedding net and the three segmentation variants for one input size ``S`` (odd)."""

    def __init__(self, configs: Path, size: int, device: str = "cpu"):
        from ..net import Net

        if size < 3 or size % 2 == 0:
            raise DataError(f"the scene nets need an odd input side >= 3, got {size}")
        configs = Path(configs)
        defines = {"CROP_SIZE": size, "HALF_SIZE": (size + 1) // 2, "EMBS_LR1": 0, "EMBS_LR2": 0,
                   "CRF_LR1": 0, "CRF_LR2": 0}
        self.size = size
        self.nets = {}
        for name in ("embs",) + VARIANTS:
            proto, weights = configs / f"{name}_deploy.prototxt", configs / f"{name}.caffemodel"
            for f in (proto, weights):
                if not f.is_file():
                    raise CaffeCompatError(f"the demo needs {f} (train and ship the scene nets with "
                                           f"tools/train_scenes.py --ship, or give --configs)")
            self.nets[name] = Net(proto, weights=weights, phase="TEST", defines=defines, device=device)
        lam = self.nets["segaware"].params.get("weighted_conv1_1_dist")
        #: the learned mask scale λ of the segaware net's first segmentation-aware convolution
        self.scale = float(lam[0].detach().reshape(-1)[0]) if lam else 1.0

    def _data(self, rgb: np.ndarray) -> torch.Tensor:
        h, w = rgb.shape[:2]
        x = np.zeros((3, self.size, self.size), dtype=np.float32)   # padding = the mean colour
        bgr = rgb[..., ::-1].astype(np.float32) - np.asarray(MEAN_BGR, dtype=np.float32)
        x[:, :h, :w] = bgr.transpose(2, 0, 1)
        return torch.from_numpy(x)[None]

    @torch.inference_mode()
    def run(self, rgb: np.ndarray) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        """``(embeddings (E, h, w), {variant: labels (h, w)})`` for an image no larger than ``S``."""
        h, w = rgb.shape[:2]
        data = self._data(rgb)
        emb = self.nets["embs"](data=data)
        emb = next(iter(emb.values()))[0, :, :h, :w].double().numpy()
        preds = {}
        for v in VARIANTS:
            out = next(iter(self.nets[v](data=data).values()))
            preds[v] = out[0, :, :h, :w].argmax(0).numpy().astype(np.uint8)
        return emb, preds


def pictures_for(img: DemoImage, nets: SceneNets, out_dir: Path, points: Optional[Sequence[Tuple[int, int]]] = None,
                 window: int = 21, blur: int = 9) -> List[List[P.Panel]]:
    """Write the single pictures of one image into ``out_dir``; returns the sheet's panels (two lines)."""
    h, w = img.rgb.shape[:2]
    emb, preds = nets.run(img.rgb)
    points = list(points) if points else P.pick_points(img.labels, (h, w))
    masks = P.masks_at(emb, points, window, nets.scale)
    emb_rgb, overview = P.pca_image(emb), P.mask_overview(img.rgb, points, masks)
    blurs = {"plain": P.masked_box_filter(img.rgb, None, blur),
             "segaware": P.masked_box_filter(img.rgb, emb, blur, nets.scale)}
    blurs = {k: np.clip(np.rint(v), 0, 255).astype(np.uint8) for k, v in blurs.items()}
    first = [P.Panel("input", img.rgb)]
    if img.labels is not None:
        first.append(P.Panel("ground truth", P.colorize_labels(img.labels)))
    first += [P.Panel("embeddings (PCA)", emb_rgb), P.Panel(f"masks {window}x{window}, lambda {nets.scale:.2g}", overview),
              P.Panel(f"box blur {blur}x{blur}", blurs["plain"]), P.Panel("seg.-aware blur", blurs["segaware"])]
    panels = [first, [P.Panel(TITLES[v], P.colorize_labels(preds[v])) for v in VARIANTS]]
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"image": img.rgb, "embeddings": emb_rgb, "masks": overview,
             "blur_plain": blurs["plain"], "blur_segaware": blurs["segaware"]}
    if img.labels is not None:
        files["labels"] = P.colorize_labels(img.labels)
    files.update({f"pred_{v}": P.colorize_labels(preds[v]) for v in VARIANTS})
    scale_up = max(1, 160 // window)
    for i, m in enumerate(masks):
        files[f"mask_{i}"] = np.repeat(np.repeat(np.rint(255 * m).astype(np.uint8), scale_up, 0), scale_up, 1)
    for name, arr in files.items():
        P.save_png(out_dir / f"{name}.png", arr)
    log.info("%s: %d pictures in %s (points %s, λ = %.3g)", img.name, len(files), out_dir, points, nets.scale)
    return panels


def run_demo(out: Path, images: Sequence[DemoImage] = (), configs: Path = DEFAULT_CONFIGS,
             points: Optional[Sequence[Tuple[int, int]]] = None, window: int = 21, blur: int = 9,
             device: str = "cpu", progress: bool = True) -> Path:
    """Pictures for ``images`` (default: the bundled scene and photograph); returns the sheet's path."""
    from tqdm import tqdm

    out = Path(out)
    if not images:
        if not DEFAULT_PHOTO.is_file():
            raise CaffeCompatError(f"the bundled photograph {DEFAULT_PHOTO} is missing (give --image)")
        images = [bundled_scene(), read_photo(DEFAULT_PHOTO)]
    for name, v in (("--window", window), ("--blur", blur)):
        if v < 1 or v % 2 == 0 or v > 63:
            raise DataError(f"{name} must be an odd number of pixels in 1..63, got {v}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    nets_by_size: Dict[int, SceneNets] = {}
    for img in tqdm(images, desc="demo", unit="image", disable=not progress or len(images) < 2):
        side = max(img.rgb.shape[:2]) | 1        # odd square net input, the image top-left
        if side not in nets_by_size:
            nets_by_size[side] = SceneNets(configs, side, device)
        panels = pictures_for(img, nets_by_size[side], out / img.name, points, window, blur)
        rows.append((img.name, panels))
    sheet = out / "sheet.png"
    P.save_png(sheet, P.compose_sheet(rows))
    return sheet
