"""``caffe-compat run``: run a deploy net on images and save blobs as ``.npy`` and ``.png``.

Preprocessing is the fork's ``DataTransformer`` at TEST time (what the configs'
``transform_param`` do for their data layers), applied to one image:

1. the image is decoded as ``cv::imread`` does (:func:`caffe_compat.pipeline.images.read_image`):
   8-bit **BGR** for a 3-channel input (grey images replicated, alpha dropped),
   8-bit grey for a 1-channel input;
2. if it is smaller than the net input (``H x W`` of the input's shape), it is
   padded at the **bottom and right only** with the mean values, so padded
   pixels are exactly 0 after mean subtraction (the fork's ImageSegData);
3. if it is larger, the centre window is cropped (TEST crop:
   ``((H - h) // 2, (W - w) // 2)``);
4. ``data = (pixel - mean[c]) * scale`` in float32, channels B, G, R (mean
   subtracted *before* scaling; the default mean 104.008,116.669,122.675 is
   the B/G/R mean of every original config; ``--mean 0`` disables it).

``--no-fit`` skips 2 and 3 and feeds the image at its own size (the net
recomputes its blob shapes; most deploy nets accept any size); ``--resize``
replaces 2 and 3 by a bilinear resize to the input's size.  The batch is one
image; several ``--image`` files run one after the other (progress bar), each
into ``--out/<stem>``.  The other inputs of the original deploy nets (label,
``pos_data``, the res multi-scale inputs) are derived as
:mod:`.deploy_inputs` describes, or given with ``--feed NAME=FILE.npy``
(shape checked).

Outputs, in ``--out DIR`` (created; every file written atomically):

* ``<blob>.npy``: each chosen blob (default: the net outputs) as it came out
  of the net (float32, full blob shape).
* ``<blob>.png``: a VOC-palette PNG of *label-like* 4-D blobs: the argmax over
  channels of a blob with 2..256 channels (first maximum wins on ties and
  NaN is skipped, as ``max`` in the original MATLAB ``GetFastResult``; the
  softmax it applies first does not change the argmax except on overflow),
  or the values of a 1-channel blob holding integers in 0..255.  When the
  blob has the net input's spatial size, the PNG is cropped to the image's
  part of it (the padding is removed, like ``GetFastResult``'s top-left crop;
  a centre-cropped image cannot be restored).
* ``<blob>.png`` for an *embedding* blob instead (named with ``--embedding``,
  or any blob whose name contains ``emb`` with more than 3 channels): RGB,
  the first three principal components of the per-pixel embedding vectors
  (NumPy SVD of the centred ``(H*W) x C`` matrix; component signs fixed so
  the largest loading is positive), each stretched to 0..255.
* A batch of N > 1 would write ``<blob>_<n>.png`` per image.

Net inputs (e.g. ``--blobs data``) are saved as ``.npy`` only.  Blob names
are made file-safe (characters other than letters, digits,
``._-`` become ``_``).
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import add_define_option, check_device
from ..pipeline.pictures import pca_image  # noqa: F401  (re-exported: run saved PCA images first)
from ..errors import CaffeCompatError, DataError, NetError, ShapeError

log = logging.getLogger(__name__)

#: B, G, R means of the VOC images used by every original config.
DEFAULT_MEAN = (104.008, 116.669, 122.675)

EPILOG = """\
NET is a deploy prototxt (with WEIGHTS: .caffemodel, .caffemodel.h5 or
checkpoint) or a checkpoint .pt alone. The net must take its data from net
inputs (Input layers / input: fields), not from data layers.

Preprocessing (as the fork's TEST-phase transform): the image is read as BGR,
padded bottom/right with the mean (so padding is 0 after subtraction) when
smaller than the input's HxW, centre-cropped when larger, then
(pixel - mean) * scale. --no-fit feeds the image at its own size, --resize
scales it to the input's size.

Other inputs of the original deploy nets are derived: 'label' and the 4th
channel of a 4-channel input (embs) from --label (255 = ignore without one),
embs 'pos_data' = [zeros, column, row], res 'data_res05'/'data_res075' by the
res test config's Interp of the image, 'fc1_voc12_res075_interp' from the
net's own fc1_voc12_res075 (Interp zoom 4 / shrink 3). --feed overrides any.

Writes <blob>.npy for each blob (default: the net outputs), a VOC-palette
<blob>.png for label-like blobs (argmax over 2..256 channels, or a 1-channel
integer map), and an RGB PCA image <blob>.png for embedding blobs
(--embedding, or names containing "emb" with more than 3 channels).
"""


# ----------------------------------------------------------------------------- preprocessing
def parse_floats(text: str, what: str) -> List[float]:
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise CaffeCompatError(f"{what} expects comma-separated numbers, got {text!r}") from None
    if not vals:
        raise CaffeCompatError(f"{what} expects at least one number")
    if not all(np.isfinite(vals)):
        raise CaffeCompatError(f"{what}: values must be finite, got {text!r}")
    return vals


def prepare_image(path, channels: int, size: Optional[Tuple[int, int]], mean: Sequence[float] = DEFAULT_MEAN,
                  scale: float = 1.0, resize: bool = False) -> Tuple[np.ndarray, Tuple[int, int]]:
    """One image as a ``1 x C x H x W`` float32 net input; see the module docstring.

    Args:
        path: image file.
        channels: 3 (BGR) or 1 (grey).
        size: ``(H, W)`` of the net input to pad/crop to, or ``None`` for the image's own size.
        mean: 1 or C mean values (BGR order), subtracted before scaling.
        scale: multiplier after mean subtraction.
        resize: scale the image to ``size`` (bilinear, as ``cv::resize`` in Caffe's
            ImageData ``new_height``/``new_width``) instead of padding/cropping.

    Returns ``(data, (h, w))`` where ``(h, w)`` is the part of the input the
    image covers (top-left; smaller than ``size`` where it was padded).
    """
    from ..pipeline.images import (crop_offsets, mean_values_for, pad_bottom_right, pad_value_for_image,
                                   read_image, to_caffe_data)

    if channels not in (1, 3):
        raise DataError(f"the net input has {channels} channels; run feeds 3-channel (BGR) or 1-channel "
                        f"(grey) images (give other inputs with --feed NAME=FILE.npy)")
    mean = list(DEFAULT_MEAN if channels == 3 else (0.0,)) if mean is None else list(mean)
    if len(mean) not in (1, channels):
        want = "1 value (grey input)" if channels == 1 else f"1 or {channels} values"
        raise DataError(f"--mean needs {want}, got {len(mean)}")
    rh, rw = (int(size[0]), int(size[1])) if resize and size is not None else (0, 0)
    pixels = read_image(str(path), is_color=channels == 3, new_height=rh, new_width=rw)
    mvals = mean_values_for(mean, channels) if any(m != 0 for m in mean) else None
    h, w = pixels.shape[:2]
    valid = (h, w)
    if size is not None:
        th, tw = int(size[0]), int(size[1])
        if (th, tw) != (h, w):
            img = pixels.astype(np.float64)
            img = pad_bottom_right(img, max(th - h, 0), max(tw - w, 0), pad_value_for_image(mvals))
            ho, wo = crop_offsets(img.shape[0], img.shape[1], th, tw, False, None)
            pixels = img[ho:ho + th, wo:wo + tw]
        valid = (min(h, th), min(w, tw))
    data = to_caffe_data(pixels, mvals, float(np.float32(scale)), False, dtype=np.float32)
    return data[None], valid


# ----------------------------------------------------------------------------- outputs
def safe_name(name: str) -> str:
    """A blob name as a file name."""
    out = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return out or "blob"


def _atomic(path: Path, writer) -> None:
    from ..atomic import atomic_write

    atomic_write(path, writer, error=DataError)


def save_npy(path: Path, arr: np.ndarray) -> None:
    """``np.save`` to a temporary file, then rename."""
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    _atomic(path, write)


def label_map(blob: np.ndarray) -> Optional[np.ndarray]:
    """``N x H x W`` uint8 labels of a label-like ``N x C x H x W`` blob, else ``None``.

    C in 2..256: argmax over channels (first maximum on ties, NaN skipped, as
    MATLAB's ``max``); C == 1: the
    values themselves when they are all integers in 0..255.
    """
    if blob.ndim != 4 or blob.shape[2] < 1 or blob.shape[3] < 1 or blob.shape[0] < 1:
        return None
    c = blob.shape[1]
    if 2 <= c <= 256:
        from ..pipeline.gen_preds import first_max_skip_nan

        return first_max_skip_nan(blob, axis=1).astype(np.uint8)
    if c == 1:
        v = blob[:, 0]
        if np.all(np.isfinite(v)) and np.all(v == np.round(v)) and v.min() >= 0 and v.max() <= 255:
            return v.astype(np.uint8)
    return None


def save_rgb_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB") if rgb.ndim == 3 else Image.fromarray(rgb)
    _atomic(path, lambda tmp: im.save(tmp, format="PNG"))


def is_embedding(name: str, blob: np.ndarray, embeddings: Sequence[str]) -> bool:
    if name in embeddings:
        return True
    return "emb" in name.lower() and blob.ndim == 4 and blob.shape[1] > 3


# ----------------------------------------------------------------------------- running
def _pick_image_input(net, input_name: Optional[str], feeds) -> str:
    from . import deploy_inputs as D

    if not net.inputs:
        data_layers = [f"'{n}' ({t})" for n, t, b in zip(net.layer_names, net.layer_types, net.bottom_names)
                       if not b]
        raise NetError(f"net '{net.name}' has no net inputs (its data comes from {', '.join(data_layers) or 'nowhere'}); "
                       f"run needs a deploy net with Input layers or input: fields")
    if input_name is None:
        for cand in ("data", "image_data"):
            if cand in net.inputs:
                return cand
        free = [k for k in net.inputs if k not in feeds and not D.derivable(k)]
        if len(free) != 1:
            raise NetError(f"net '{net.name}' has inputs {net.inputs}: say which one takes the image "
                           f"with --input-name")
        return free[0]
    if input_name not in net.inputs:
        raise NetError(f"net '{net.name}' has no input {input_name!r}; its inputs are {net.inputs}")
    return input_name


def _fit_label(label: np.ndarray, size: Optional[Tuple[int, int]], resize: bool) -> np.ndarray:
    """A label map taken to the net input's size as the image was (pad 255 / centre crop, or nearest resize)."""
    from ..pipeline.images import crop_offsets, pad_bottom_right, resize_nearest

    if size is None:
        return label
    th, tw = size
    if resize:
        return resize_nearest(label, tw, th)
    lab = pad_bottom_right(label.astype(np.float64), max(th - label.shape[0], 0), max(tw - label.shape[1], 0),
                           (255.0,))
    ho, wo = crop_offsets(lab.shape[0], lab.shape[1], th, tw, False, None)
    return lab[ho:ho + th, wo:wo + tw]


def run_image(net, image, out_dir, blobs: Optional[Sequence[str]] = None, mean: Sequence[float] = DEFAULT_MEAN,
              scale: float = 1.0, input_name: Optional[str] = None, feeds: Optional[Dict[str, object]] = None,
              embeddings: Sequence[str] = (), fit: bool = True, label=None, resize: bool = False,
              mask_points: Sequence[Tuple[int, int]] = (), mask_window: int = 21,
              mask_scale: float = 1.0) -> List[Path]:
    """Run ``net`` on one image and write the blobs; see the module docstring. Returns the files written.

    ``label``: optional label map file (palette/grey PNG or ``.npy``) for a
    ``label`` input or the 4th channel of a 4-channel image input;
    ``resize``: scale the image to the input's ``H x W`` instead of padding/cropping.
    Inputs other than the image are derived (:mod:`.deploy_inputs`) unless fed.
    ``mask_points``: ``(y, x)`` pixels of the embedding blobs whose local attention masks
    ``exp(-|mask_scale * L1 distance|)`` over ``mask_window``² neighbours are saved as
    ``<blob>_mask_<j>.png`` (white = 1, scaled up; :func:`caffe_compat.pipeline.pictures.masks_at`).
    """
    from ..pipeline.palette import save_palette_png
    from . import deploy_inputs as D

    feeds = dict(feeds or {})
    input_name = _pick_image_input(net, input_name, feeds)
    unknown = [k for k in feeds if k not in net.inputs or k == input_name]
    if unknown:
        raise NetError(f"--feed {unknown}: not other inputs of net '{net.name}' (inputs: {net.inputs}, "
                       f"image input: {input_name})")
    shape = net.input_shapes[input_name]
    if len(shape) != 4:
        raise ShapeError(f"input {input_name!r} has shape {list(shape)}; run feeds images to 4-D (N,C,H,W) inputs")
    with_label_channel = shape[1] == 4
    missing = [k for k in net.inputs if k != input_name and k not in feeds and not D.derivable(k)]
    if missing:
        raise NetError(f"net '{net.name}' also needs input(s) {missing} "
                       f"({', '.join(f'{k} {list(net.input_shapes[k])}' for k in missing)}); "
                       f"give them with --feed NAME=FILE.npy")
    size = (shape[2], shape[3]) if fit or resize else None
    data, valid = prepare_image(image, 3 if with_label_channel else shape[1], size, mean, scale, resize=resize)
    hw = tuple(data.shape[2:])
    lab = None
    if label is not None:
        lab = _fit_label(_read_label(label), size, resize)
        if size is None and tuple(lab.shape) != hw:
            raise ShapeError(f"--label {label}: {lab.shape[0]}x{lab.shape[1]} but the image is {hw[0]}x{hw[1]}")
        if not with_label_channel and not any(k in D.LABEL_INPUTS for k in net.inputs):
            raise NetError(f"--label: net '{net.name}' has no label input (inputs: {net.inputs})")
    if with_label_channel:
        chan = np.full(hw, D.IGNORE_LABEL, np.float32) if lab is None else lab.astype(np.float32)
        data = np.concatenate([data, chan[None, None]], axis=1)
    device = net.device
    dtype = net.dtype
    inputs = {input_name: torch.from_numpy(data).to(device=device, dtype=dtype)}
    for k, v in feeds.items():
        if not isinstance(v, (np.ndarray, torch.Tensor)):
            try:
                v = np.load(v, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"--feed {k}={v}: cannot read the .npy file: {e}") from None
        inputs[k] = torch.as_tensor(D.check_fed(net, k, np.asarray(v), input_name, hw)).to(device=device, dtype=dtype)
    derived, later = D.derive_inputs(net, input_name, inputs[input_name], lab, inputs)
    inputs.update({k: torch.as_tensor(v).to(device=device, dtype=dtype) for k, v in derived.items()})
    if later:
        inputs.update(D.second_pass_inputs(net, inputs, later))
    with torch.inference_mode():
        net(**inputs)
    names = list(blobs) if blobs else list(net.outputs)
    unknown = [b for b in names if b not in net.blobs]
    if unknown:
        raise NetError(f"no blob(s) {unknown} in net '{net.name}'; blobs: {', '.join(net.blobs)}")
    unknown = [e for e in embeddings if e not in names]
    if unknown:
        raise NetError(f"--embedding {unknown}: not among the blobs saved ({', '.join(names)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    in_hw = hw
    written: List[Path] = []
    for name in names:
        arr = net.blobs[name].detach().to("cpu").numpy()
        base = safe_name(name)
        p = out_dir / f"{base}.npy"
        save_npy(p, arr)
        written.append(p)
        if arr.ndim != 4 or name in net.inputs:
            continue  # images only of 4-D computed blobs
        crop = valid if tuple(arr.shape[2:]) == in_hw else None
        n = arr.shape[0]
        if is_embedding(name, arr, embeddings):
            for i in range(n):
                img = arr[i] if crop is None else arr[i, :, :crop[0], :crop[1]]
                p = out_dir / (f"{base}.png" if n == 1 else f"{base}_{i}.png")
                save_rgb_png(p, pca_image(img))
                written.append(p)
                if mask_points:
                    from ..pipeline.pictures import masks_at

                    up = max(1, 160 // mask_window)
                    for j, m in enumerate(masks_at(img, mask_points, mask_window, mask_scale)):
                        q = out_dir / (f"{base}_mask_{j}.png" if n == 1 else f"{base}_{i}_mask_{j}.png")
                        g = np.rint(255 * m).astype(np.uint8).repeat(up, 0).repeat(up, 1)
                        save_rgb_png(q, np.stack([g] * 3, -1))
                        written.append(q)
            continue
        labels = label_map(arr)
        if labels is None:
            continue
        for i in range(n):
            lab = labels[i] if crop is None else labels[i, :crop[0], :crop[1]]
            p = out_dir / (f"{base}.png" if n == 1 else f"{base}_{i}.png")
            save_palette_png(p, np.ascontiguousarray(lab))
            written.append(p)
    return written




def _read_label(path) -> np.ndarray:
    """A label map: ``.npy`` (2-D) or a palette / grey PNG (indices)."""
    from ..pipeline.palette import read_label_png

    p = Path(path)
    if not p.is_file():
        raise DataError(f"--label {path}: no such file")
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"--label {path}: cannot read the .npy file: {e}") from None
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise ShapeError(f"--label {path}: a 2-D label map expected, got shape {list(arr.shape)}")
        return arr
    return np.asarray(read_label_png(p))


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run", help="run a deploy net on images; save blobs as .npy and label/embedding PNGs",
        description="Run a deploy net on one or more images (preprocessed like the fork's TEST transform) and "
                    "save the chosen blobs. The original embs/vgg/res deploy nets' other inputs are derived "
                    "(see below).", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("net", metavar="NET", help="deploy prototxt or checkpoint .pt")
    p.add_argument("weights", metavar="WEIGHTS", nargs="?", default=None,
                   help=".caffemodel, .caffemodel.h5 or checkpoint .pt")
    p.add_argument("--image", "--images", dest="images", required=True, nargs="+", action="extend",
                   metavar="IMG", help="image file(s) (JPEG, PNG, ...); with several, one subfolder of --out each")
    p.add_argument("--label", "--labels", dest="labels", nargs="+", action="extend", default=None, metavar="LABEL",
                   help="label map(s) (palette/grey PNG or 2-D .npy), one per image, for a 'label' input or "
                        "the 4th channel of a 4-channel input (embs); default 255 (ignore)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder for the outputs (created)")
    p.add_argument("--blobs", default=None, metavar="B1,B2",
                   help="blobs to save (default: the net outputs)")
    p.add_argument("--mean", default=None, metavar="B,G,R",
                   help="mean subtracted per channel, BGR order, 1 or C values (default: "
                        + ",".join(str(m) for m in DEFAULT_MEAN) + " for 3-channel inputs, 0 for grey; 0: none)")
    p.add_argument("--scale", type=float, default=1.0, help="multiplier after mean subtraction (default 1)")
    p.add_argument("--input-name", default=None, metavar="NAME",
                   help="net input that takes the image (default: 'data' / 'image_data', or the only input)")
    p.add_argument("--feed", action="append", default=[], metavar="NAME=FILE.npy",
                   help="value of another net input, from a .npy file (repeatable; shape checked)")
    p.add_argument("--embedding", action="append", default=[], metavar="NAME",
                   help="save this blob as a PCA RGB image (repeatable; comma lists allowed)")
    p.add_argument("--mask-point", action="append", default=[], metavar="Y,X",
                   help="also save the local attention mask of this pixel of every embedding blob "
                        "(<blob>_mask_<j>.png; repeatable)")
    p.add_argument("--mask-window", type=int, default=21, help="side of the saved masks (odd, default 21)")
    p.add_argument("--mask-scale", type=float, default=1.0,
                   help="lambda of the saved masks exp(-lambda * L1 distance) (default 1)")
    fit = p.add_mutually_exclusive_group()
    fit.add_argument("--no-fit", action="store_true",
                     help="feed the image at its own size instead of padding/cropping it to the input shape")
    fit.add_argument("--resize", action="store_true",
                     help="resize the image (bilinear; label maps nearest) to the input's HxW instead of "
                          "padding/cropping")
    p.add_argument("--phase", choices=("TRAIN", "TEST"), type=str.upper, default=None,
                   help="phase the net is built in (default TEST)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--lenient", action="store_true",
                   help="load weights that do not fit the net: layers that do not fit keep their filler values")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_define_option(p)
    p.set_defaults(func=run)
    return p


def _out_dirs(images: Sequence[str], out: str) -> List[Path]:
    """``out`` for one image; ``out/<stem>`` for several (``<n>_<stem>`` where stems repeat)."""
    if len(images) == 1:
        return [Path(out)]
    stems = [safe_name(Path(i).stem) for i in images]
    return [Path(out) / (s if stems.count(s) == 1 else f"{n}_{s}") for n, s in enumerate(stems)]


def run(args) -> int:
    from tqdm import tqdm

    from .common import open_cli_net, resolve_defines

    device = check_device(args.device)
    for img in args.images:
        if not Path(img).is_file():
            raise DataError(f"{img}: no such image file")
    labels = args.labels or [None] * len(args.images)
    if len(labels) != len(args.images):
        raise CaffeCompatError(f"--label: {len(labels)} label map(s) for {len(args.images)} image(s); "
                               f"give one per image")
    feeds = {}
    for item in args.feed:
        if "=" not in item:
            raise CaffeCompatError(f"--feed expects NAME=FILE.npy, got {item!r}")
        k, v = item.split("=", 1)
        feeds[k.strip()] = v
    embeddings = [e.strip() for item in args.embedding for e in item.split(",") if e.strip()]
    mask_points = []
    for item in args.mask_point:
        vals = parse_floats(item, "--mask-point")
        if len(vals) != 2 or any(v != int(v) or v < 0 for v in vals):
            raise CaffeCompatError(f"--mask-point expects Y,X (two non-negative integers), got {item!r}")
        mask_points.append((int(vals[0]), int(vals[1])))
    if args.mask_window < 1 or args.mask_window % 2 == 0 or args.mask_window > 63:
        raise CaffeCompatError(f"--mask-window must be an odd number in 1..63, got {args.mask_window}")
    if not np.isfinite(args.mask_scale):
        raise CaffeCompatError(f"--mask-scale must be finite, got {args.mask_scale}")
    blobs = [b.strip() for b in args.blobs.split(",") if b.strip()] if args.blobs else None
    mean = None if args.mean is None else parse_floats(args.mean, "--mean")
    net = open_cli_net(args.net, args.weights, phase=args.phase, defines=resolve_defines(args, args.net),
                       device=device, lenient=args.lenient)
    net.eval()
    if blobs is None:
        net.free_blobs = True   # only the outputs are saved: drop intermediates as soon as they are used
    jobs = list(zip(args.images, labels, _out_dirs(args.images, args.out)))
    for img, lab, out in tqdm(jobs, desc="run", unit="image", disable=args.no_progress or len(jobs) < 2):
        written = run_image(net, img, out, blobs=blobs, mean=mean, scale=args.scale, input_name=args.input_name,
                            feeds=feeds, embeddings=embeddings, fit=not args.no_fit, label=lab,
                            resize=args.resize, mask_points=mask_points, mask_window=args.mask_window,
                            mask_scale=args.mask_scale)
        for p in written:
            tqdm.write(f"wrote {p}")
    return 0
