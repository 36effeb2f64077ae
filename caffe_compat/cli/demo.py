"""``caffe-compat demo``: the method in pictures (embeddings, masks, three variants, masked blur).

Runs the scene nets the project trained itself (``configs/scenes/``, weights shipped beside the
prototxts) on a bundled generated scene and the bundled photograph, or on ``--image`` files, and
writes single PNGs per image plus ``OUT/sheet.png`` (see :mod:`caffe_compat.pipeline.scene_demo`).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Tuple

from . import check_device
from ..errors import CaffeCompatError

log = logging.getLogger(__name__)


def _point(text: str) -> Tuple[int, int]:
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Y,X (two integers), got {text!r}") from None
    return y, x


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..pipeline.scene_demo import DEFAULT_CONFIGS

    p = subparsers.add_parser(
        "demo", help="pictures of the method: embeddings, attention masks, plain vs seg.-aware vs CRF, masked blur",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="pictures", help="output folder (default: pictures)")
    p.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="an image to explain instead of the bundled ones (repeatable; scaled to --max-side)")
    p.add_argument("--max-side", type=int, default=161, help="longer side of --image inputs (default 161)")
    p.add_argument("--point", action="append", type=_point, default=[], metavar="Y,X",
                   help="pixel whose attention mask is drawn (repeatable; default: picked per image)")
    p.add_argument("--window", type=int, default=21, help="side of the drawn masks (odd, default 21)")
    p.add_argument("--blur", type=int, default=9, help="side of the box filter (odd, default 9)")
    p.add_argument("--configs", default=str(DEFAULT_CONFIGS),
                   help="folder of the scene nets and their .caffemodel files (default: configs/scenes)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..pipeline import scene_demo as D

    device = check_device(args.device)
    if args.max_side < 3 or args.max_side > 1025:
        raise CaffeCompatError(f"--max-side must be in 3..1025, got {args.max_side}")
    images: List[D.DemoImage] = [D.read_photo(f, args.max_side) for f in args.image]
    sheet = D.run_demo(Path(args.out), images, Path(args.configs), args.point or None, args.window, args.blur,
                       device=device, progress=not args.no_progress)
    log.info("sheet: %s", sheet)
    print(sheet)
    return 0
