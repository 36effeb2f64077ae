"""``caffe-compat info``: layer table / blob shapes of a net, without computing activations."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import WeightsError
from . import add_define_option, parse_defines


def add_parser(sub) -> None:
    p = sub.add_parser(
        "info", help="print a net's layers, blob shapes and parameter counts (no activations computed)",
        description="Build NET.prototxt (on the meta device unless --weights is given) and print a layer "
                    "table with every blob's shape and parameter counts; full-size nets take seconds.")
    p.add_argument("prototxt", help="net prototxt (text format; ${NAME} templates filled by --define)")
    p.add_argument("--weights", help="caffemodel / .h5 to load (checks that it fits the net)")
    p.add_argument("--phase", default="TEST", choices=["TRAIN", "TEST"], help="net phase (default TEST)")
    add_define_option(p)
    p.add_argument("--json", action="store_true",
                   help='print {"blobs": {name: shape}, "params": {layer: [shapes]}} for scripts')
    p.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    from ..net import Net

    defines = parse_defines(args.define)
    device = "cpu" if args.weights else "meta"
    net = Net(args.prototxt, phase=args.phase, defines=defines, device=device)
    report = net.load_weights(args.weights, strict=False) if args.weights else None
    if args.json:
        out = {"blobs": {k: list(v) for k, v in net.blob_shapes.items()},
               "params": {k: [list(p.shape) for p in v] for k, v in net.params.items()}}
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(net.summary() + "\n")
        if report is not None:
            sys.stdout.write(f"weights {args.weights}: {report.describe()}\n")
    if report is not None and report.mismatched:
        raise WeightsError(f"{args.weights} does not fit {args.prototxt}: " + "; ".join(report.mismatched))
    return 0
