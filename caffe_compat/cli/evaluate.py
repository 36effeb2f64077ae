"""``caffe-compat eval``: VOC confusion matrix, IoU and mIoU of PNG predictions (the original ``eval.sh``).

See :mod:`caffe_compat.pipeline.voc_eval` and ``docs/pipeline.md``.
"""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="score PNG predictions against VOC ground truth: per-class IoU, mIoU (MyVOCevalseg.m)",
        description=(
            "Reads PRED_DIR/<id>.png and GT_DIR/<id>.png for every id of LIST (palette indices), "
            "counts confusion[gt, pred] over pixels with GT != 255 and prints per-class pixel accuracy "
            "and IoU, overall pixel accuracy, mean class accuracy and mIoU = sum of the 21 IoUs / 21, "
            "exactly as the original MyVOCevalseg.m.  Prediction values > 20 and size mismatches are "
            "errors."))
    p.add_argument("pred_dir", metavar="PRED_DIR", help="folder of prediction PNGs (e.g. .../Segmentation/comp6_val_cls)")
    p.add_argument("gt_dir", metavar="GT_DIR", help="folder of ground-truth PNGs (VOC2012/SegmentationClass)")
    p.add_argument("--list", required=True, metavar="LIST",
                   help="image list, one id per line (VOC2012/ImageSets/Segmentation/val.txt)")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip ids without a prediction file with a warning, as the original does (default: error)")
    p.add_argument("--strict-gt", action="store_true",
                   help="reject GT values 21..254 (the original counts them in odd cells; default: as the original)")
    p.add_argument("--num-classes", type=int, default=21, metavar="N",
                   help="number of classes, labels 0..N-1 (default 21, VOC; mIoU = sum of the N IoUs / N)")
    p.add_argument("--boundary-radius", type=float, action="append", default=[], metavar="R",
                   help="also score only the pixels within R pixels of a ground-truth boundary (trimap "
                        "accuracy and mIoU); repeat for several radii")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true",
                     help='print {"miou", "iou", "confusion", "pixel_acc", "class_acc"} as JSON (fractions; '
                          'with --boundary-radius also "boundary": [{"radius", "miou", "pixel_acc", ...}])')
    fmt.add_argument("--original-format", action="store_true",
                     help="print the text the original MATLAB script prints (percent, %%6.3f)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..pipeline.voc_eval import evaluate, format_original, format_table

    result = evaluate(args.pred_dir, args.gt_dir, args.list, allow_missing=args.allow_missing,
                      strict_gt=args.strict_gt, progress=False if (args.no_progress or args.json) else None,
                      num_classes=args.num_classes, boundary_radii=args.boundary_radius)
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), allow_nan=False) + "\n")
    elif args.original_format:
        sys.stdout.write(format_original(result))
    else:
        sys.stdout.write(format_table(result))
    return 0
