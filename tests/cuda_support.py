"""Helpers of the CUDA tests: the CPU emulator backend (built once per process) and nvcc."""
from __future__ import annotations

import functools
import shutil

import pytest

from caffe_compat._cuda_emu import EmulatorBackend, compiler_available

NVCC = shutil.which("nvcc")


@functools.lru_cache(maxsize=None)
def _backend() -> EmulatorBackend:
    return EmulatorBackend()


def emulator() -> EmulatorBackend:
    """The kernels built for the CPU (skips when there is no C++ compiler)."""
    if not compiler_available():
        pytest.skip("no C++ compiler (g++): the CUDA kernels cannot be emulated on the CPU")
    return _backend()
