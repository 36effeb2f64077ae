"""``caffe-compat info``: layer table / blob shapes of a net, without computing activations.

Also: ``--list-defines`` (the file's ``${NAME}`` variables, what they do and
the original runs' values), and for a solver file what it is and which nets
it names.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import WeightsError
from . import add_define_option, check_device
from .common import build_net, is_solver_text, load_weights, read_net_text, resolve_defines, solver_message


def add_parser(sub) -> None:
    p = sub.add_parser(
        "info", help="print a net's layers, blob shapes and parameter counts (no activations computed)",
        description="Build NET.prototxt (on the meta device unless --weights is given) and print a layer "
                    "table with every blob's shape and parameter counts; full-size nets take seconds. "
                    "A solver file is recognised and the nets it names are listed.")
    p.add_argument("prototxt", help="net prototxt (text format; ${NAME} templates filled by --define/--preset)")
    p.add_argument("--weights", help="caffemodel / .h5 / checkpoint to load (checks that it fits the net)")
    p.add_argument("--phase", default="TEST", type=str.upper, choices=["TRAIN", "TEST"],
                   help="net phase (default TEST; train nets need TRAIN)")
    p.add_argument("--device", default=None,
                   help="where to build the net (default: meta, i.e. shapes only; cpu when --weights is given)")
    add_define_option(p)
    p.add_argument("--list-defines", action="store_true",
                   help="list the file's ${NAME} variables: what each does and the values of the original runs")
    p.add_argument("--lenient", action="store_true", help="with --weights: report a misfit as a warning")
    p.add_argument("--json", action="store_true",
                   help='print {"blobs": {name: shape}, "params": {layer: [shapes]}, "losses": {...}} for scripts')
    p.set_defaults(func=run_info)


def loss_lines(net) -> list:
    """``top (layer type 'name', weight w)`` for every loss top, also automatic ones (not net outputs)."""
    out = []
    for top, w in net.loss_weights.items():
        i = next(i for i, tn in enumerate(net.top_names) if top in tn)
        out.append(f"{top} (from {net.layer_types[i]} '{net.layer_names[i]}', loss_weight {w:g})")
    return out


def run_info(args: argparse.Namespace) -> int:
    from .. import presets

    text = read_net_text(args.prototxt)
    if args.list_defines:
        if text is None:
            sys.stdout.write(f"{args.prototxt} is not a prototxt (a checkpoint stores its values already)\n")
        else:
            sys.stdout.write(presets.describe_defines(text, args.prototxt) + "\n")
        return 0
    defines = resolve_defines(args, args.prototxt)
    if text is not None and is_solver_text(text):
        sys.stdout.write(solver_message(text, args.prototxt, defines) + "\n")
        return 0
    device = check_device(args.device) if args.device else ("cpu" if args.weights else "meta")
    net = build_net(args.prototxt, phase=args.phase, defines=defines, device=device)
    error = None
    if args.weights:
        try:
            load_weights(net, args.weights, args.prototxt, lenient=args.lenient)
        except WeightsError as e:
            error = e
    losses = loss_lines(net)
    if args.json:
        out = {"blobs": {k: list(v) for k, v in net.blob_shapes.items()},
               "params": {k: [list(p.shape) for p in v] for k, v in net.params.items()},
               "outputs": list(net.outputs), "losses": dict(net.loss_weights)}
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(net.summary() + "\n")
        if losses:
            sys.stdout.write(f"losses: {'; '.join(losses)}\n")
        if args.weights and error is None:
            sys.stdout.write(f"weights {args.weights}: fit the net\n")
    if error is not None:
        raise error
    return 0
