"""``caffe-compat export``: write a ``torch.export`` program (``.pt2``) of a deploy net.

The program takes the net inputs as positional tensors in the net's input
order and returns a tuple of the net outputs (net output order); load it with
``torch.export.load(path).module()``.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
from typing import List

import torch

from . import add_define_option, check_device
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


@contextlib.contextmanager
def _layer_progress(net):
    """A tqdm bar advanced by forward hooks as torch.export traces each layer (on stderr)."""
    from tqdm import tqdm

    layers = [l for l in net.layers if not getattr(l, "feeds_net_inputs", False)]
    bar = tqdm(total=len(layers), desc="export: tracing", unit="layer", leave=False)
    seen = set()

    def hook(module, args, output, i=None):
        if id(module) not in seen:
            seen.add(id(module))
            bar.update(1)

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield bar
    finally:
        for h in handles:
            h.remove()
        bar.close()


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
    p.add_argument("--device", default="cpu", help="device the program is traced (and runs) on: cpu or cuda")
    p.add_argument("--lenient", action="store_true",
                   help="load weights that do not fit the net: layers that do not fit keep their filler values")
    add_define_option(p)
    p.set_defaults(func=run)
    return p


def size_pinning_layers(net) -> List[str]:
    """Layers (and side inputs) whose parameters fix a spatial size, each with the reason.

    These are what keep ``--dynamic`` from making height/width dynamic: an
    ``Interp`` to a given ``height``/``width``, a ``Tile`` along H or W, a
    ``DummyData`` / ``Reshape`` / ``InnerProduct`` (fixed shapes or C*H*W), and
    net inputs other than the first whose spatial size is their own.
    """
    by_name = {}
    for lp in net.net_param.layer:
        by_name.setdefault(lp.name, lp)
    out = []
    for name, typ in zip(net.layer_names, net.layer_types):
        lp = by_name.get(name)
        if lp is None:
            continue
        if typ == "Interp" and (lp.interp_param.height or lp.interp_param.width):
            out.append(f"'{name}' (Interp to {lp.interp_param.height}x{lp.interp_param.width})")
        elif typ == "Tile" and lp.tile_param.axis in (2, 3, -1, -2):
            out.append(f"'{name}' (Tile x{lp.tile_param.tiles} along axis {lp.tile_param.axis})")
        elif typ in ("DummyData", "Reshape", "InnerProduct"):
            out.append(f"'{name}' ({typ})")
    first = net.inputs[0] if net.inputs else None
    for k in net.inputs[1:]:
        s, f = net.input_shapes[k], net.input_shapes[first]
        if len(s) == 4 and len(f) == 4 and tuple(s[2:]) != tuple(f[2:]):
            out.append(f"input '{k}' ({s[2]}x{s[3]}, not the size of '{first}')")
    return out


def run(args) -> int:
    import time

    from ..export import export_program, program_input_shapes
    from .common import open_cli_net, resolve_defines

    device = check_device(args.device)
    shapes = dict(parse_input_shape(s) for s in args.input)
    t0 = time.perf_counter()
    net = open_cli_net(args.net, args.weights, phase=args.phase, defines=resolve_defines(args, args.net),
                       device=device, dtype=torch.float64 if args.float64 else None, lenient=args.lenient)
    net.eval()
    pinned = size_pinning_layers(net)
    if args.dynamic and pinned:
        log.warning("net '%s': these fix spatial sizes, so height/width stay at the example's size where they "
                    "reach: %s", net.name, "; ".join(pinned))
    log.info("tracing %d layers of net '%s' with torch.export", len(net.layers), net.name)
    with _layer_progress(net):
        ep = export_program(net, args.output, input_shapes=shapes or None, dynamic=args.dynamic)
    log.info("export took %.1f s", time.perf_counter() - t0)
    for name, dims in program_input_shapes(ep, net.inputs).items():
        print(f"input  {name}: [{', '.join(str(d) for d in dims)}]")
    for name in net.outputs:
        print(f"output {name}")
    print(f"wrote {args.output}")
    return 0
