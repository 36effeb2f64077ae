"""Run caffe_compat's CUDA kernels on the CPU (tests and tools; no GPU needed).

:class:`EmulatorBackend` builds ``caffe_compat/kernels`` (both dtypes) with g++ against
``cuda_emu.h`` (CUDA built-ins as plain C++) into a shared library, plus one exported launcher
per kernel that loops over every block and thread of the grid, and calls it through ctypes with
cupy's ``(grid, block, args)`` convention.  It is a drop-in for :class:`caffe_compat.cuda.CupyBackend`
(install it with :func:`caffe_compat.cuda.emulate_on_cpu`).

Checks done on every launch, which a GPU would not report: each argument's type matches the
kernel's C signature (pointer dtype included), and tensors are contiguous CPU tensors.

Builds are cached by content hash under ``$CAFFE_COMPAT_EMU_CACHE`` (default: a per-user folder in
the temp dir); a build writes to a pid-unique name and is renamed into place, so pytest-xdist
workers can build concurrently.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from .. import cuda

__all__ = ["EmulatorBackend", "EmulatorError", "compiler_available", "HEADER"]

HEADER = Path(__file__).with_name("cuda_emu.h")
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-w")
_DTYPES = (torch.float32, torch.float64)

# argument codes of cuda_emu.h's emu_code
_SCALAR_CODES = {np.int32: 1, np.int64: 2, np.float32: 3, np.float64: 4}
_TENSOR_CODES = {torch.float32: 13, torch.float64: 14}
_CTYPES = {1: ctypes.c_int32, 2: ctypes.c_int64, 3: ctypes.c_float, 4: ctypes.c_double}
_MAX_ARGS = 64


class EmulatorError(RuntimeError):
    """The emulator could not build a kernel library or a launch's arguments do not fit."""


def compiler_available() -> bool:
    return shutil.which(CXX) is not None


def _cache_dir() -> Path:
    root = os.environ.get("CAFFE_COMPAT_EMU_CACHE")
    path = Path(root) if root else Path(tempfile.gettempdir()) / f"caffe_compat_emu_{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _launcher_source(files: Sequence[str]) -> str:
    lines = [f'#include "{HEADER}"', cuda.kernel_source(_DTYPES, files), ""]
    for base in cuda.kernel_names(files):
        for dtype in _DTYPES:
            fn = base + cuda.DTYPE_SUFFIX[dtype][1]
            lines.append(f'extern "C" void emu_launch_{fn}(const unsigned int* d, void** a) {{ emu_run({fn}, d, a); }}')
            lines.append(f'extern "C" int emu_signature_{fn}(int* o, int c) {{ return emu_signature({fn}, o, c); }}')
    return "\n".join(lines) + "\n"


def build_library(files: Sequence[str] = cuda.KERNEL_FILES) -> Path:
    """Compile the kernels of ``files`` for the CPU; returns the (cached) shared library path."""
    src = _launcher_source(files)
    digest = hashlib.sha256((src + HEADER.read_text() + " ".join(CXXFLAGS)).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"kernels_{digest}.so"
    if lib.exists():
        return lib
    if not compiler_available():
        raise EmulatorError(f"the CUDA emulator needs a C++ compiler ({CXX!r} not found)")
    tmp_src = lib.with_name(f"{lib.stem}.{os.getpid()}.cpp")
    tmp_lib = lib.with_name(f"{lib.stem}.{os.getpid()}.so")
    tmp_src.write_text(src)
    try:
        proc = subprocess.run([CXX, *CXXFLAGS, "-o", str(tmp_lib), str(tmp_src)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise EmulatorError(f"building the emulated kernels failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp_lib, lib)  # atomic: concurrent builders all end with a complete file
    finally:
        tmp_src.unlink(missing_ok=True)
        tmp_lib.unlink(missing_ok=True)
    return lib


class EmulatorBackend:
    """Executes the CUDA kernels on the CPU (serially over blocks and threads)."""

    name = "emulator"

    def __init__(self, files: Sequence[str] = cuda.KERNEL_FILES):
        self.library_path = build_library(files)
        self._lib = ctypes.CDLL(str(self.library_path))
        self._signatures: Dict[str, Tuple[int, ...]] = {}
        self.launches: Dict[str, int] = {}  # kernel name -> number of launches (tests check use)

    def signature(self, fn: str) -> Tuple[int, ...]:
        sig = self._signatures.get(fn)
        if sig is None:
            try:
                get = getattr(self._lib, f"emu_signature_{fn}")
            except AttributeError:
                raise EmulatorError(f"no kernel named {fn!r}") from None
            buf = (ctypes.c_int * _MAX_ARGS)()
            n = get(buf, _MAX_ARGS)
            sig = self._signatures[fn] = tuple(buf[:n])
        return sig

    def launch(self, name: str, dtype: torch.dtype, total: int, args: Sequence) -> None:
        if total <= 0:
            return
        grid, block = cuda.grid_for(total)
        self.run(name + cuda.DTYPE_SUFFIX[dtype][1], grid, block, args)

    def run(self, fn: str, grid, block, args: Sequence) -> None:
        """cupy-style launch of kernel ``fn`` (full name) with ``grid``/``block`` 3-tuples."""
        sig = self.signature(fn)
        if len(sig) != len(args):
            raise EmulatorError(f"{fn}: {len(args)} arguments given, the kernel takes {len(sig)}")
        holders = []
        for i, (code, arg) in enumerate(zip(sig, args)):
            if isinstance(arg, torch.Tensor):
                if _TENSOR_CODES.get(arg.dtype) != code:
                    raise EmulatorError(f"{fn}: argument {i} is a {arg.dtype} tensor, the kernel expects code {code}")
                if arg.device.type != "cpu" or not arg.is_contiguous():
                    raise EmulatorError(f"{fn}: argument {i} must be a contiguous CPU tensor")
                holders.append(ctypes.c_void_p(arg.data_ptr()))
            else:
                got = _SCALAR_CODES.get(type(arg))
                if got != code:
                    raise EmulatorError(f"{fn}: argument {i} is {type(arg).__name__}, the kernel expects code {code}")
                holders.append(_CTYPES[code](arg.item()))
        argv = (ctypes.c_void_p * max(1, len(holders)))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p)
                                                           for h in holders])
        dims = (ctypes.c_uint * 6)(*grid, *block)
        getattr(self._lib, f"emu_launch_{fn}")(dims, argv)
        self.launches[fn] = self.launches.get(fn, 0) + 1
