#!/usr/bin/env python
"""Generate the procedural scene data set (caffe_compat.datasets.scenes) into a folder.

Deterministic: the same arguments give byte-identical files.  The layout is VOC's
(JPEGImages, SegmentationClass, SegmentationClassAug, ImageSets/Segmentation, list/),
see ``docs/scenes.md``.  Example (the set the configs in ``configs/scenes/`` expect)::

    python tools/make_scenes.py --out data/scenes          # 300 train + 100 val, 81 x 81, seed 0
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow running from a checkout without installing
    sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from caffe_compat.datasets.scenes import SceneConfig, write_scenes

    d = SceneConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="data set folder (created)")
    p.add_argument("--size", type=int, default=d.size, help=f"image side in pixels (default {d.size})")
    p.add_argument("--train", type=int, default=d.num_train, help=f"training images (default {d.num_train})")
    p.add_argument("--val", type=int, default=d.num_val, help=f"validation images (default {d.num_val})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed (default {d.seed})")
    p.add_argument("--noise", type=float, default=d.noise_sigma, help=f"noise std, grey levels (default {d.noise_sigma})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = SceneConfig(size=args.size, num_train=args.train, num_val=args.val, seed=args.seed,
                      noise_sigma=args.noise)
    write_scenes(args.out, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
