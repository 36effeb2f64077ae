"""Pictures of what the method does: embeddings, local attention masks, predictions, masked filtering.

Used by ``caffe-compat demo`` (the README's first command) with the scene nets the project trains
itself (``configs/scenes/``, ``tools/train_scenes.py``), but every function takes plain arrays and
tensors, so the pictures can be made for any embedding net.

Shapes and units:

* images are ``H x W x 3`` uint8 RGB arrays; label maps ``H x W`` integer arrays;
* embeddings are ``(E, H, W)`` float arrays (one image);
* a local attention mask around pixel ``p`` is ``m(p, q) = exp(-|λ · ‖e(p) − e(q)‖₁|)`` for ``q``
  in a ``k x k`` window centred on ``p`` (:func:`caffe_compat.nn.functional.local_attention_mask`,
  the fork's Im2dist -> Scale -> AbsVal -> Exp chain); neighbours outside the image get 0 here
  (the fork's Im2dist gives them distance 0, i.e. mask 1, which a picture should not show).

Every file is written atomically (:mod:`caffe_compat.atomic`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import DataError

__all__ = ["pca_image", "masks_at", "masked_box_filter", "pick_points", "colorize_labels", "Panel",
           "mask_overview", "compose_sheet", "save_png"]


def pca_image(emb: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 RGB of a ``C x H x W`` embedding: first 3 principal components, each to 0..255.

    Components are the right singular vectors of the centred ``(H*W) x C``
    matrix (NumPy SVD, float64); each one's sign is chosen so its largest
    absolute loading is positive (deterministic output).  A component with no
    spread (or missing, when C < 3 or H*W < 3) is 0.
    """
    c, h, w = emb.shape
    x = emb.reshape(c, h * w).T.astype(np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    out = np.zeros((h * w, 3), dtype=np.float64)
    if np.all(np.isfinite(x)) and x.size:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        k = min(3, vt.shape[0])
        comps = vt[:k]
        signs = np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])
        signs[signs == 0] = 1
        proj = x @ (comps * signs[:, None]).T
        for j in range(k):
            col = proj[:, j]
            lo, hi = col.min(), col.max()
            if hi - lo > 1e-12 * max(1.0, abs(hi), abs(lo)):
                out[:, j] = (col - lo) / (hi - lo) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(h, w, 3)


def _check_emb(emb: np.ndarray, what: str) -> torch.Tensor:
    emb = np.asarray(emb)
    if emb.ndim != 3 or min(emb.shape) < 1:
        raise DataError(f"{what}: embeddings must be a non-empty (E, H, W) array, got shape {emb.shape}")
    if not np.all(np.isfinite(emb)):
        raise DataError(f"{what}: the embeddings contain NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float64))[None]


def _valid_taps(h: int, w: int, k: int) -> torch.Tensor:
    """``(k*k, h, w)``: 1 where tap ``t`` of the ``k x k`` window centred on a pixel lies inside the image."""
    ones = torch.ones(1, 1, h, w, dtype=torch.float64)
    return torch.nn.functional.unfold(ones, k, padding=k // 2).view(k * k, h, w)


def _attention(emb: np.ndarray, k: int, scale: float, what: str) -> torch.Tensor:
    """``(k*k, H, W)`` local attention masks of every pixel; 0 for neighbours outside the image."""
    from ..nn.functional import local_attention_mask

    if k < 1 or k % 2 == 0:
        raise DataError(f"{what}: the window must be an odd number of pixels, got {k}")
    if not math.isfinite(scale):
        raise DataError(f"{what}: the mask scale must be finite, got {scale}")
    e = _check_emb(emb, what)
    _, _, h, w = e.shape
    m = local_attention_mask(e, k, padding=k // 2, norm="L1", scale=float(scale))[0]
    return m * _valid_taps(h, w, k)


def masks_at(emb: np.ndarray, points: Sequence[Tuple[int, int]], window: int, scale: float) -> List[np.ndarray]:
    """The ``window x window`` local attention mask around each ``(y, x)`` of ``points`` (float64 in [0, 1])."""
    _, h, w = np.asarray(emb).shape
    for y, x in points:
        if not (0 <= y < h and 0 <= x < w):
            raise DataError(f"masks_at: point ({y}, {x}) is outside the {h} x {w} image")
    m = _attention(emb, window, scale, "masks_at")
    return [m[:, y, x].reshape(window, window).numpy() for y, x in points]


def masked_box_filter(image: np.ndarray, emb: Optional[np.ndarray], size: int, scale: float = 1.0) -> np.ndarray:
    """A ``size x size`` box filter of ``image`` (``H x W x C``), each output pixel ``p`` the mean of its
    window weighted by the local attention mask ``m(p, q)`` (a segmentation-aware blur), or the plain
    mean of the in-image neighbours when ``emb`` is None.  Returns float64 ``H x W x C``.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3:
        raise DataError(f"masked_box_filter: image must be H x W x C, got shape {img.shape}")
    h, w, c = img.shape
    if emb is None:
        if size < 1 or size % 2 == 0:
            raise DataError(f"masked_box_filter: the window must be an odd number of pixels, got {size}")
        m = _valid_taps(h, w, size)
    else:
        if np.asarray(emb).shape[1:] != (h, w):
            raise DataError(f"masked_box_filter: embeddings of size {np.asarray(emb).shape[1:]} for a "
                            f"{h} x {w} image")
        m = _attention(emb, size, scale, "masked_box_filter")
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    cols = torch.nn.functional.unfold(x, size, padding=size // 2).view(c, size * size, h, w)
    # the centre tap always has mask 1 (distance 0), so the weights never sum to 0
    out = (cols * m[None]).sum(1) / m.sum(0)[None]
    return out.numpy().transpose(1, 2, 0)


def pick_points(labels: Optional[np.ndarray], shape: Tuple[int, int], count: int = 3,
                inset: float = 3.0) -> List[Tuple[int, int]]:
    """Pixels to mark: with a label map, one per largest non-background segment, ``inset`` pixels inside
    its boundary (where a mask is most telling); without one, fixed fractions of the image."""
    h, w = shape
    if labels is None:
        fr = [(0.3, 0.3), (0.55, 0.65), (0.75, 0.35)][:count]
        return [(int(round(a * (h - 1))), int(round(b * (w - 1)))) for a, b in fr]
    from scipy import ndimage

    labels = np.asarray(labels)
    segments = []                       # connected regions of one non-background label each
    for c in np.unique(labels):
        if c == 0 or c == 255:
            continue
        segs, n = ndimage.label(labels == c)
        segments += [segs == s for s in range(1, n + 1)]
    if not segments:
        return pick_points(None, shape, count)
    sizes = [int(m.sum()) for m in segments]
    points = []
    for s in np.argsort(-np.asarray(sizes), kind="stable")[:count]:
        inside = segments[s]
        dist = ndimage.distance_transform_edt(inside)
        score = np.where(inside, np.abs(dist - inset), np.inf)
        y, x = np.unravel_index(int(np.argmin(score)), score.shape)
        points.append((int(y), int(x)))
    return points


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """``H x W`` labels -> ``H x W x 3`` uint8 RGB in the PASCAL VOC colours."""
    from .palette import voc_palette

    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.size == 0 or lab.min() < 0 or lab.max() > 255:
        raise DataError(f"colorize_labels: labels must be a non-empty 2-D array of 0..255, got shape {lab.shape}")
    return voc_palette(256)[lab.astype(np.intp)]


def mask_overview(image: np.ndarray, points: Sequence[Tuple[int, int]], masks: Sequence[np.ndarray]) -> np.ndarray:
    """The image dimmed, each point's window replaced by its mask (white = 1), the point marked red."""
    img = np.asarray(image, dtype=np.float64) * 0.35
    h, w = img.shape[:2]
    for (y, x), m in zip(points, masks):
        r = m.shape[0] // 2
        y0, y1, x0, x1 = max(0, y - r), min(h, y + r + 1), max(0, x - r), min(w, x + r + 1)
        sub = m[y0 - (y - r):y1 - (y - r), x0 - (x - r):x1 - (x - r)]
        img[y0:y1, x0:x1] = np.maximum(img[y0:y1, x0:x1], 255.0 * sub[..., None])
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    for y, x in points:
        out[max(0, y - 1):y + 2, x] = (255, 0, 0)
        out[y, max(0, x - 1):x + 2] = (255, 0, 0)
    return out


@dataclass
class Panel:
    """One picture of a sheet: an ``H x W x 3`` uint8 image and its title."""
    title: str
    image: np.ndarray
    extra: Dict[str, object] = field(default_factory=dict)


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=13)   # Pillow >= 10.1 (FreeType build)
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def _scaled(im: np.ndarray, panel_px: int) -> np.ndarray:
    """``im`` resized (nearest neighbour: pixels stay visible) so its longer side is ``panel_px``."""
    from PIL import Image

    h, w = im.shape[:2]
    f = panel_px / max(h, w)
    size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
    return np.asarray(Image.fromarray(np.ascontiguousarray(im)).resize(size, Image.NEAREST))


def compose_sheet(rows: Sequence[Tuple[str, Sequence]], panel_px: int = 240, per_line: int = 6) -> np.ndarray:
    """One RGB sheet: per ``(title, panels)`` a title and its titled panels, ``per_line`` to a line
    (``panels`` may also be a list of lists: each list starts a new line),
    each panel scaled (nearest neighbour) so its longer side is ``panel_px`` pixels."""
    from PIL import Image, ImageDraw

    if panel_px < 16 or per_line < 1:
        raise DataError(f"compose_sheet: panel_px must be >= 16 and per_line >= 1, got {panel_px}, {per_line}")
    font = _font()
    pad, head, row_head = 8, 20, 24
    width = pad + per_line * (panel_px + pad)
    blocks = []                     # (title, [[(panel title, image), ...] per line])
    for title, panels in rows:
        groups = panels if panels and not isinstance(panels[0], Panel) else [panels]   # explicit lines
        lines = []
        for group in groups:
            tiles = [(p.title, _scaled(np.asarray(p.image), panel_px)) for p in group]
            lines += [tiles[i:i + per_line] for i in range(0, len(tiles), per_line)]
        blocks.append((title, lines))
    height = pad + sum(row_head + sum(head + max(t.shape[0] for _, t in line) + pad for line in lines)
                       for _, lines in blocks)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    top = pad
    for title, lines in blocks:
        draw.text((pad, top + 4), title, fill=(0, 0, 0), font=font)
        top += row_head
        for line in lines:
            x = pad
            for t_title, t in line:
                draw.text((x, top + 2), t_title, fill=(60, 60, 60), font=font)
                sheet.paste(Image.fromarray(np.ascontiguousarray(t)), (x, top + head))
                x += panel_px + pad
            top += head + max(t.shape[0] for _, t in line) + pad
    return np.asarray(sheet)


def save_png(path: Path, rgb: np.ndarray) -> None:
    """Write an ``H x W x 3`` (RGB) or ``H x W`` (grey) uint8 array as PNG, atomically."""
    from PIL import Image

    arr = np.ascontiguousarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise DataError(f"cannot write {path}: expected an H x W (x 3) uint8 array, got {arr.dtype} {arr.shape}")
    im = Image.fromarray(arr)
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG"), error=DataError)
