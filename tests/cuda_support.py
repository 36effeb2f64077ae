"""Helpers of the CUDA tests: where the kernels run, and nvcc.

By default the kernels run on the CPU through the emulator (``caffe_compat._cuda_emu``, built
once per process).  With ``CAFFE_COMPAT_KERNELS=cuda`` (set by tools/gpu_check.py on a machine
with a GPU and cupy) the same tests run them on the GPU instead: the kernel side of every
comparison then gets CUDA tensors, while the reference stays the torch path on the CPU.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil

import pytest
import torch

from caffe_compat import cuda
from caffe_compat._cuda_emu import EmulatorBackend, compiler_available
from caffe_compat.ops.segaware_conv_cuda import emulated_registration

NVCC = shutil.which("nvcc")
ON_GPU = os.environ.get("CAFFE_COMPAT_KERNELS") == "cuda"


@functools.lru_cache(maxsize=None)
def _emulator() -> EmulatorBackend:
    return EmulatorBackend()


def kernel_backend():
    """The backend that runs the kernels in this session (skips when none can)."""
    if ON_GPU:
        if not torch.cuda.is_available():
            pytest.fail("CAFFE_COMPAT_KERNELS=cuda but torch sees no GPU")
        backend = cuda.backend_for(torch.zeros(1, device="cuda"))
        if backend is None:
            pytest.fail("CAFFE_COMPAT_KERNELS=cuda but cupy is not usable")
        return backend
    if not compiler_available():
        pytest.skip("no C++ compiler (g++): the CUDA kernels cannot be emulated on the CPU")
    return _emulator()


@contextlib.contextmanager
def on_kernels():
    """Yields the device whose float tensors dispatch to the kernels inside the block."""
    backend = kernel_backend()
    if ON_GPU:
        yield torch.device("cuda")
    else:
        with cuda.emulate_on_cpu(backend), emulated_registration():
            yield torch.device("cpu")


def to_device(obj, device):
    """``obj`` with every tensor moved to ``device`` (lists/tuples/None kept)."""
    if isinstance(obj, torch.Tensor):
        leaf = obj.is_leaf and obj.requires_grad
        moved = obj.detach().to(device)
        return moved.requires_grad_() if leaf else moved
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    return obj


def run_both(fn, *args):
    """``(torch-path result, kernel result on the CPU, number of kernel launches)``."""
    ref = fn(*args)
    backend = kernel_backend()
    before = sum(backend.launches.values())
    with on_kernels() as dev:
        got = to_device(fn(*to_device(args, dev)), "cpu")
    return ref, got, sum(backend.launches.values()) - before
