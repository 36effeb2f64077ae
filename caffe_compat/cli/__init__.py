"""The ``caffe-compat`` command line (also ``python -m caffe_compat``).

Each sub-command lives in its own module exposing ``add_parser(subparsers)``
(which registers the command and sets ``func``) and the function it runs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

import torch

from ..errors import CaffeCompatError

#: sub-command modules, in the order ``--help`` lists them
COMMANDS = ("info", "test", "train", "gen_preds", "evaluate", "convert", "export", "run", "demo")

log = logging.getLogger("caffe_compat.cli")


def parse_defines(items: Optional[List[str]]) -> dict:
    """``["A=1", "B=x"]`` -> ``{"A": "1", "B": "x"}`` (the ``--define NAME=VALUE`` options)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CaffeCompatError(f"--define expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def check_device(device: str) -> str:
    """Validate a ``--device`` value (``cpu``, ``cuda`` or ``cuda:N``) with a clear error."""
    device = str(device)
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise CaffeCompatError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CaffeCompatError(f"--device {device}: CUDA is not available on this machine")
    return device


def add_define_option(p: argparse.ArgumentParser) -> None:
    """The ``--define NAME=VALUE`` option shared by every command that reads a prototxt."""
    p.add_argument("--define", "-D", action="append", metavar="NAME=VALUE", default=[],
                   help="value of a ${NAME} template variable of the prototxt (repeatable; overrides --preset)")
    p.add_argument("--preset", metavar="NAME", default=None,
                   help="fill the ${NAME} variables with the original scripts' values for one of their runs "
                        "(e.g. voc_val; `info NET --list-defines` lists them)")


def _version() -> str:
    from .. import __version__
    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caffe-compat",
        description="Run, evaluate and convert models of the segmentation-aware Caffe fork in PyTorch.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging: -v for progress details, -vv for debug")
    parser.add_argument("--version", action="version", version=f"caffe-compat {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    for p in sub.choices.values():  # -v also after the command name
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="more logging: -v for progress details, -vv for debug")
        p.add_argument("--version", action="version", version=f"caffe-compat {_version()}")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Errors: the message only, the traceback with -v (no command ends in a bare traceback).
    try:
        rc = args.func(args)
    except CaffeCompatError as e:
        log.error("%s", e, exc_info=args.verbose > 0)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as e:  # a bug, or an error not yet turned into a CaffeCompatError
        first = (str(e).strip().splitlines() or [""])[0]
        log.error("internal error: %s: %s%s", type(e).__name__, first,
                  "" if args.verbose else " (run with -v for the traceback)", exc_info=args.verbose > 0)
        return 1
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
