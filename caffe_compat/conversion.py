"""Conversion of a net's weights between ``.caffemodel``, Caffe HDF5 and native checkpoints.

Going back to a caffemodel keeps Caffe's own limits: a repeated layer name is
written twice, and Caffe (like :mod:`caffe_compat.weights`) gives the file's
blobs to the first layer of a name only.  Outputs are written atomically and
never over an input file.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from . import checkpoint as _ckpt
from . import weights as _weights
from .errors import CaffeCompatError, WeightsError
from .net import Net

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

_EXT_TO = {".pt": "pt", ".pth": "pt", ".ckpt": "pt", ".caffemodel": "caffemodel",
           ".h5": "h5", ".hdf5": "h5"}
FORMATS = ("pt", "caffemodel", "h5")


def format_for(path: PathLike) -> str:
    """Output format from the file name: ``.pt``/``.pth``/``.ckpt`` -> ``pt``, ``.caffemodel``, ``.h5``/``.hdf5``."""
    ext = Path(path).suffix.lower()
    if ext not in _EXT_TO:
        raise CaffeCompatError(f"{path}: cannot tell the output format from the extension {ext or '(none)'!r}; "
                               f"name it .pt, .caffemodel or .h5, or give to=/--to ({', '.join(FORMATS)})")
    return _EXT_TO[ext]


def write_weights(net: Net, out: PathLike, to: Optional[str] = None) -> str:
    """Write ``net`` as ``to`` (``pt`` checkpoint, binary ``caffemodel`` or Caffe ``h5``), whatever the extension.

    Returns the format written.
    """
    to = to or format_for(out)
    if to not in FORMATS:
        raise CaffeCompatError(f"unknown output format {to!r}; choose one of {', '.join(FORMATS)}")
    if to == "pt":
        _ckpt.save_checkpoint(net, out)
    else:
        _weights.save_net(net, out, fmt=to)
    return to


def net_with_weights(prototxt: PathLike, weights: Optional[PathLike] = None, *, phase: Optional[str] = None,
                     defines: Optional[Mapping[str, object]] = None, device: Union[str, torch.device] = "cpu",
                     dtype: Optional[torch.dtype] = None, strict: bool = True) -> Net:
    """The net of ``prototxt`` with ``weights`` (checkpoint, caffemodel or HDF5; ``None``: filler values).

    A checkpoint given as ``prototxt`` is refused: it holds its own net and
    weights (open it with :meth:`Net.from_checkpoint`).
    """
    if _ckpt.is_checkpoint_file(prototxt):
        raise CaffeCompatError(f"{prototxt} is a checkpoint, which holds its own weights; "
                               f"give either a checkpoint alone or a prototxt and its weights")
    net = Net(prototxt, phase=phase or "TEST", defines=defines, device=device, dtype=dtype or torch.float32)
    if weights is None:
        log.warning("%s: no weights given: the net runs with its filler values", prototxt)
    else:
        net.load_weights(weights, strict=strict)
    return net


def _same_file(a: PathLike, b: PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def convert(prototxt: Optional[PathLike], weights: PathLike, out: PathLike, to: Optional[str] = None,
            defines: Optional[Mapping[str, object]] = None, phase: Optional[str] = None,
            strict: bool = True) -> Net:
    """Convert weights between a caffemodel / Caffe HDF5 and a self-contained checkpoint.

    * ``weights`` a ``.caffemodel``/``.h5``: ``prototxt`` is required; the net is
      built from it (``defines``, ``phase``) and the weights loaded.
    * ``weights`` a checkpoint: with ``prototxt`` ``None`` (or ``"-"``) the
      checkpoint's own net is used; with a prototxt, that net is built and the
      checkpoint's tensors are copied into it by layer name (to move weights to
      a deploy net, say).
    * ``phase``: of the net built from ``prototxt`` (default TEST), or to
      override a checkpoint's stored phase.
    * ``to``: ``pt``, ``caffemodel`` or ``h5``; by default from ``out``'s extension.
    * ``strict=False`` keeps filler values for layers the weights lack and
      ignores extra layers (reported in the log) instead of failing.

    The output is written atomically and never over an input file.
    Returns the net that was written.
    """
    to = to or format_for(out)
    if to not in FORMATS:
        raise CaffeCompatError(f"unknown output format {to!r}; choose one of {', '.join(FORMATS)}")
    if prototxt is not None and str(prototxt) == "-":
        prototxt = None
    for p in (prototxt, weights, out):
        if p is not None and "\0" in str(p):
            raise CaffeCompatError(f"{str(p)!r}: a path cannot contain a NUL character")
    if not Path(weights).is_file():
        raise WeightsError(f"{weights}: no such weights file")
    for src in (weights, prototxt):
        if src is not None and _same_file(src, out):
            raise CaffeCompatError(f"{out}: the output would overwrite the input {src}")
    if prototxt is None:
        if not _ckpt.is_checkpoint_file(weights):
            raise CaffeCompatError(f"{weights}: a caffemodel/HDF5 file holds no net definition; "
                                   f"give the net prototxt too")
        if defines:
            log.warning("defines are ignored: the checkpoint stores its net text already substituted")
        net = Net.from_checkpoint(weights, phase=phase)
    else:
        net = net_with_weights(prototxt, weights, phase=phase, defines=defines, strict=strict)
    write_weights(net, out, to)
    return net
