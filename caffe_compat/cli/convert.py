"""``caffe-compat convert``: move weights between caffemodel, Caffe HDF5 and native checkpoints.

Forms::

    caffe-compat convert NET.prototxt WEIGHTS.caffemodel -o model.pt      # -> self-contained checkpoint
    caffe-compat convert NET.prototxt WEIGHTS.caffemodel -o model.h5      # -> Caffe HDF5
    caffe-compat convert model.pt -o model.caffemodel                     # checkpoint -> caffemodel
    caffe-compat convert - model.pt -o model.caffemodel                   # same ("-": no prototxt)
    caffe-compat convert deploy.prototxt model.pt -o deploy.caffemodel    # checkpoint weights into another net

The output format comes from ``--to`` or the output's extension (``.pt``/
``.pth``/``.ckpt``, ``.caffemodel``, ``.h5``/``.hdf5``).  Outputs are written
atomically; an input is never overwritten.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from . import add_define_option, check_device, parse_defines
from ..errors import CaffeCompatError, WeightsError

log = logging.getLogger(__name__)

EPILOG = """\
NET is a prototxt (template variables filled with --define), or a checkpoint
(.pt) alone, or "-" when WEIGHTS is a checkpoint: a checkpoint stores its net
text, so no prototxt is needed to convert it back to a caffemodel or HDF5
(--write-prototxt saves that text). With a prototxt AND a checkpoint, the
checkpoint's tensors are copied into the prototxt's net by layer name (e.g. a
train checkpoint into a deploy net; add --lenient if the nets differ in layers).
WEIGHTS may be a binary .caffemodel, a Caffe .caffemodel.h5 or a checkpoint
(the format is read from the content).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert", help="convert weights: caffemodel <-> HDF5 <-> self-contained PyTorch checkpoint (.pt)",
        description="Convert a net's weights between .caffemodel, Caffe HDF5 and a self-contained "
                    "PyTorch checkpoint (net text + tensors, loads with torch.load(weights_only=True)).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("net", metavar="NET", help="net prototxt, or a checkpoint .pt, or '-' (see below)")
    p.add_argument("weights", metavar="WEIGHTS", nargs="?", default=None,
                   help=".caffemodel, .caffemodel.h5 or checkpoint .pt (omit when NET is a checkpoint)")
    p.add_argument("-o", "--output", "--out", dest="output", required=True, metavar="OUT",
                   help="output file")
    p.add_argument("--to", choices=("pt", "caffemodel", "h5"), default=None,
                   help="output format (default: from OUT's extension)")
    p.add_argument("--phase", choices=("TRAIN", "TEST"), type=str.upper, default=None,
                   help="phase the net is built in (default TEST; a checkpoint's stored phase)")
    p.add_argument("--lenient", action="store_true",
                   help="keep filler values for layers the weights lack and ignore extra layers "
                        "(default: any difference is an error)")
    p.add_argument("--write-prototxt", metavar="FILE", default=None,
                   help="also write the net text (templates substituted) to FILE")
    p.add_argument("--device", default="cpu",
                   help="where the net is built while converting: cpu or cuda (default cpu; files are the same)")
    add_define_option(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..atomic import atomic_write
    from ..checkpoint import is_checkpoint_file
    from ..conversion import _same_file, convert, format_for, write_weights
    from .common import open_cli_net, resolve_defines

    net_arg, weights = args.net, args.weights
    if weights is None:
        if net_arg == "-" or not is_checkpoint_file(net_arg):
            raise CaffeCompatError(f"convert {net_arg}: give WEIGHTS (a caffemodel, HDF5 or checkpoint), "
                                   f"or a checkpoint alone")
        net_arg, weights = None, net_arg
    elif net_arg != "-" and is_checkpoint_file(net_arg):
        raise CaffeCompatError(f"{net_arg} is a checkpoint, which holds its own weights; "
                               f"convert it alone, or give a prototxt and WEIGHTS")
    device = check_device(args.device)
    if net_arg in (None, "-"):
        net = convert(None, weights, args.output, to=args.to, defines=parse_defines(args.define), phase=args.phase)
    else:
        for src in (weights, net_arg):
            if _same_file(src, args.output):
                raise CaffeCompatError(f"{args.output}: the output would overwrite the input {src}")
        to = args.to or format_for(args.output)
        net = open_cli_net(net_arg, weights, phase=args.phase, defines=resolve_defines(args, net_arg),
                           device=device, lenient=args.lenient)
        write_weights(net, args.output, to)
    if args.write_prototxt:
        text, _ = net.net_text()
        out = Path(args.write_prototxt)
        atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), error=WeightsError)
        print(f"wrote {out}")
    print(f"wrote {args.output}")
    return 0
