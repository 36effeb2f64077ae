"""Opening the net a command line names: a checkpoint alone, or a prototxt with its weights."""
from __future__ import annotations

import os
from typing import Mapping, Optional, Union

import torch

from ..checkpoint import is_checkpoint_file
from ..conversion import net_with_weights
from ..net import Net

PathLike = Union[str, os.PathLike]


def open_net(net_path: PathLike, weights: Optional[PathLike] = None, *, phase: Optional[str] = None,
             defines: Optional[Mapping[str, object]] = None, device: Union[str, torch.device] = "cpu",
             dtype: Optional[torch.dtype] = None, strict: bool = True) -> Net:
    """A net from what a command line names.

    * ``net_path`` a checkpoint and no ``weights``: the checkpoint's own net
      (``phase`` overrides the stored one; ``defines`` are not needed).
    * ``net_path`` a prototxt and ``weights`` a checkpoint, caffemodel or HDF5:
      the prototxt's net with those weights (checkpoint tensors by layer name).
    * ``net_path`` a prototxt alone: filler values (a warning is logged).
    """
    if weights is None and is_checkpoint_file(net_path):
        return Net.from_checkpoint(net_path, device=device, dtype=dtype, phase=phase)
    return net_with_weights(net_path, weights, phase=phase, defines=defines, device=device, dtype=dtype,
                            strict=strict)
