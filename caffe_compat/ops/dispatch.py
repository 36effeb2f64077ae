"""One dispatch point per custom op: which implementation runs for a tensor's device.

Every custom op of :mod:`caffe_compat.ops` that has (or may get) a device-specific
kernel is split into plain functions ``forward(...)`` / ``backward(...)`` with a
fixed signature, documented in the op's module.  The op's autograd Function (and
its ``torch.library`` custom op) asks :func:`impl_for` for the implementation
matching its input's device and calls it; nothing else in the package calls a
kernel directly.

The reference implementation of every op is written in torch and registered
under the device type ``"any"``: it runs on every device (CPU, CUDA, ...), so a
device without a dedicated kernel still works.  A CUDA kernel plugs in with::

    from caffe_compat.ops.dispatch import register_impl
    register_impl("segaware_conv2d", "cuda", MyCudaImpl())   # has .forward/.backward

(the object needs the same methods, with the same signatures, as the op's
reference implementation; see e.g. :class:`caffe_compat.ops.segaware_conv.TorchSegAwareConv`).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

__all__ = ["register_impl", "impl_for", "registered_impls"]

_IMPLS: Dict[Tuple[str, str], object] = {}


def register_impl(op: str, device_type: str, impl) -> None:
    """Register ``impl`` (an object with the op's methods) for tensors on ``device_type``.

    ``device_type`` is ``torch.device.type`` (``"cpu"``, ``"cuda"``) or ``"any"``
    (the fallback used when no device-specific implementation is registered).
    A later registration replaces an earlier one.
    """
    _IMPLS[(str(op), str(device_type))] = impl


def impl_for(op: str, tensor: torch.Tensor):
    """The implementation of ``op`` for ``tensor``'s device (falls back to ``"any"``)."""
    impl = _IMPLS.get((op, tensor.device.type))
    if impl is None:
        impl = _IMPLS[(op, "any")]
    return impl


def registered_impls() -> Dict[Tuple[str, str], str]:
    """``(op, device type) -> implementation class name`` (for diagnostics and benchmarks)."""
    return {k: type(v).__name__ for k, v in _IMPLS.items()}
