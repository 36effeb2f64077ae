"""The ``"cuda"`` implementation of the fused segmentation-aware convolution (``segaware_conv2d``).

Same signatures and results as :class:`caffe_compat.ops.segaware_conv.TorchSegAwareConv`
(the reference); decomposition on the GPU:

1. per-tap responses ``Z[n, o, k] = sum_c W[o, c, k] x[n, c]``: one batched GEMM (cuBLAS);
2. ``y[n, o, p] = b[o] + sum_k mask[n, k, p] * Z[n, o, k, q(p, k)]``: the masked shift-sum
   kernel (``caffe_compat/kernels/masked_shift_sum.cu``), what no library does.

Backward: ``dmask`` and ``dZ`` by the shift-sum's gather kernels, then ``dx = W^T dZ`` and
``dW = dZ x^T`` (cuBLAS), ``db = sum gy``.  Subnormal mask values are flushed to 0 first, as the
reference does.  Registered for device type ``"cuda"`` in :mod:`caffe_compat.ops.dispatch`; it
falls back to the reference where :func:`caffe_compat.cuda.backend_for` gives no kernel backend
(cupy missing: one warning), and runs on any device whose tensors the backend accepts (the CPU
emulator in tests: :func:`emulated_registration`).
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch

from .. import cuda, cuda_ops
from . import dispatch
from .segaware_conv import OP_NAME, TorchSegAwareConv, flush_subnormal

__all__ = ["KernelSegAwareConv", "emulated_registration"]

_REFERENCE = TorchSegAwareConv()


class KernelSegAwareConv:
    """``segaware_conv2d`` on the CUDA kernels (see the module docstring)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor], window, groups: int) -> torch.Tensor:
        backend = cuda.backend_for(x)
        if backend is None:
            return _REFERENCE.forward(x, mask, weight, bias, window, groups)
        y = cuda_ops.masked_window_sum_forward(backend, x, flush_subnormal(mask), weight, window, groups)
        if bias is not None:
            y += bias.to(y.dtype).view(1, -1, 1, 1)
        return y

    def backward(self, x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, grad_y: torch.Tensor,
                 window, groups: int, needs: Sequence[bool]):
        backend = cuda.backend_for(x)
        if backend is None:
            return _REFERENCE.backward(x, mask, weight, grad_y, window, groups, needs)
        need_x, need_m, need_w, need_b = (bool(v) for v in needs)
        dx, dm, dw = cuda_ops.masked_window_sum_backward(backend, grad_y, x, flush_subnormal(mask), weight,
                                                         window, groups, need_x, need_m, need_w)
        db = grad_y.sum((0, 2, 3)) if need_b else None
        return dx, dm, dw, db


dispatch.register_impl(OP_NAME, "cuda", KernelSegAwareConv())


@contextlib.contextmanager
def emulated_registration():
    """Within the block CPU tensors also use :class:`KernelSegAwareConv` (with ``emulate_on_cpu``)."""
    previous = dispatch._IMPLS.get((OP_NAME, "cpu"))
    dispatch.register_impl(OP_NAME, "cpu", KernelSegAwareConv())
    try:
        yield
    finally:
        if previous is None:
            dispatch._IMPLS.pop((OP_NAME, "cpu"), None)
        else:
            dispatch.register_impl(OP_NAME, "cpu", previous)
