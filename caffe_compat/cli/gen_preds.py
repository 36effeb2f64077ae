"""``caffe-compat gen-preds``: MatWrite ``.mat`` logits -> VOC palette PNGs (the original ``gen_preds.sh``).

See :mod:`caffe_compat.pipeline.gen_preds` and ``docs/pipeline.md``.
"""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger("caffe_compat.cli.gen_preds")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "gen-preds",
        help="turn MatWrite .mat logits into VOC palette PNG predictions (GetFastResult.m)",
        description=(
            "For every FEATURES_DIR/*.mat (sorted; id = name minus .mat, _blob_0, _blob_1): float32 "
            "softmax as MATLAB computes it, top-left crop to the size of IMAGES/<id>.jpg, first-maximum "
            "argmax (NaN skipped), written as an 8-bit VOC-palette PNG to "
            "OUT/results/VOC2012/Segmentation/<comp-id>_<testset>_cls/<id>.png (or OUT/<id>.png with "
            "--flat).  Existing PNGs are skipped unless --overwrite."))
    p.add_argument("features_dir", metavar="FEATURES_DIR", help="folder of <id>_blob_0.mat files written by MatWrite")
    p.add_argument("--images", required=True, metavar="JPEG_DIR",
                   help="JPEGImages folder (<id>.jpg; only the image size is read)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="results root (the original's results/<model>/<testset>/<feature>/none folder)")
    p.add_argument("--overwrite", action="store_true", help="regenerate PNGs that already exist")
    p.add_argument("--comp-id", default="comp6", help="VOC competition id of the results folder (default: comp6)")
    p.add_argument("--testset", default="test",
                   help="set name of the results folder, e.g. test or val (a voc_ prefix is dropped; default: test)")
    p.add_argument("--flat", action="store_true", help="write the PNGs directly into DIR")
    p.add_argument("--max-bytes", default=None, metavar="SIZE",
                   help="memory budget for reading a .mat file, e.g. 2G (default: $CAFFE_COMPAT_MAX_BYTES, "
                        "else the memory available); larger files / variables are refused before reading")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..pipeline.gen_preds import gen_preds

    summary = gen_preds(args.features_dir, args.images, args.out, overwrite=args.overwrite,
                        comp_id=args.comp_id, testset=args.testset, flat=args.flat,
                        progress=False if args.no_progress else None, max_bytes=args.max_bytes)
    print(f"wrote {len(summary.written)} PNG(s), skipped {len(summary.skipped)} existing, in {summary.png_dir}")
    return 0
