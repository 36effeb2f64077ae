"""``caffe-compat export``: write a ``torch.export`` program (``.pt2``) of a deploy net.

The program takes the net inputs as positional tensors in the net's input
order and returns a tuple of the net outputs (net output order); load it with
``torch.export.load(path).module()``.
"""
from __future__ import annotations

import argparse
import logging

import torch

from . import add_define_option, parse_defines
from ..errors import CaffeCompatError

log = logging.getLogger(__name__)

EPILOG = """\
NET is a prototxt (with WEIGHTS: .caffemodel, .caffemodel.h5 or checkpoint) or
a checkpoint .pt alone. Without weights the filler values are exported.
Only nets fed by net inputs (deploy files: Input layers / input: fields)
export: data layers (except a constant/xy DummyData), MatWrite and
SegAccuracy are refused, and a layer that cannot be traced (e.g. the label
checks of SoftmaxWithLoss) is named in the error.
The program's inputs, in order, and its outputs are printed.
"""


def parse_input_shape(item: str):
    """``"data=1,3,513,513"`` -> ``("data", (1, 3, 513, 513))``."""
    if "=" not in item:
        raise CaffeCompatError(f"--input expects NAME=N,C,H,W, got {item!r}")
    name, dims = item.split("=", 1)
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise CaffeCompatError(f"--input {item!r}: dimensions must be integers") from None
    if not shape or any(d <= 0 for d in shape):
        raise CaffeCompatError(f"--input {item!r}: dimensions must be positive integers")
    return name.strip(), shape


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="export a deploy net as a torch.export program (.pt2)",
        description="Export a deploy net with torch.export (inputs positional in the net's input order, "
                    "outputs a tuple in net output order).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("net", metavar="NET", help="net prototxt or checkpoint .pt")
    p.add_argument("weights", metavar="WEIGHTS", nargs="?", default=None,
                   help=".caffemodel, .caffemodel.h5 or checkpoint .pt")
    p.add_argument("-o", "--output", "--out", dest="output", required=True, metavar="OUT.pt2",
                   help="program file to write")
    p.add_argument("--input", action="append", default=[], metavar="NAME=N,C,H,W",
                   help="shape of a net input for tracing (default: the prototxt's; repeatable)")
    p.add_argument("--dynamic", action="store_true",
                   help="make batch, height and width dynamic where the layers allow")
    p.add_argument("--phase", choices=("TRAIN", "TEST"), type=str.upper, default=None,
                   help="phase the net is built in (default TEST)")
    p.add_argument("--float64", action="store_true", help="export in float64 (default float32, as Caffe)")
    add_define_option(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..export import export_program, program_input_shapes
    from .open_net import open_net

    shapes = dict(parse_input_shape(s) for s in args.input)
    net = open_net(args.net, args.weights, phase=args.phase, defines=parse_defines(args.define),
                   dtype=torch.float64 if args.float64 else None)
    ep = export_program(net, args.output, input_shapes=shapes or None, dynamic=args.dynamic)
    for name, dims in program_input_shapes(ep, net.inputs).items():
        print(f"input  {name}: [{', '.join(str(d) for d in dims)}]")
    for name in net.outputs:
        print(f"output {name}")
    print(f"wrote {args.output}")
    return 0
