"""CUDA kernels of the custom operations: sources, compilation (CuPy), launch and device dispatch.

The kernels live in ``caffe_compat/kernels/*.cu`` (CUDA C, no host headers) with a shared
``common.cuh``; :func:`kernel_source` assembles one translation unit per dtype.  On a GPU they are
compiled by :class:`CupyBackend` with ``cupy.RawModule`` (NVRTC), once per (device, dtype), and
launched on ``torch.cuda.current_stream()`` with the tensors passed zero-copy through DLPack.

Dispatch: :func:`backend_for` returns the backend an operation should use for a tensor, or
``None`` for the torch path:

* a CUDA float32/float64 tensor with cupy installed -> :class:`CupyBackend`;
* a CUDA tensor without cupy -> ``None``, with one warning per process (``pip install
  'caffe_compat[cuda]'`` installs a cupy matching torch's CUDA);
* a CPU tensor -> ``None``, unless a CPU backend was installed with :func:`emulate_on_cpu`
  (tests and tools run the very same kernels on the CPU through ``caffe_compat._cuda_emu``);
* other dtypes (half, bfloat16) -> ``None``;
* anything inside :func:`torch_path_only` -> ``None``.

Kernel arguments follow cupy's convention: a launch is ``(grid, block, args)`` where ``args`` holds
tensors (device pointers) and numpy scalars whose types match the kernel signature exactly
(``np.int32`` for ``int``, ``np.int64`` for ``index_t``, the tensor dtype for ``scalar_t``,
``np.float64`` for ``double``).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch

__all__ = ["KERNEL_DIR", "KERNEL_FILES", "DTYPE_SUFFIX", "THREADS_PER_BLOCK", "kernel_source",
           "kernel_names", "CupyBackend", "backend_for", "emulate_on_cpu", "torch_path_only", "launch"]

log = logging.getLogger(__name__)

KERNEL_DIR = Path(__file__).with_name("kernels")
#: Every kernel file (order is the order of the assembled translation unit).
KERNEL_FILES: Tuple[str, ...] = ("window_dist.cu", "im2parity.cu", "dist_loss.cu",
                                 "masked_shift_sum.cu", "meanfield.cu")
#: scalar type and kernel-name suffix per torch dtype.
DTYPE_SUFFIX: Dict[torch.dtype, Tuple[str, str]] = {torch.float32: ("float", "_f32"),
                                                     torch.float64: ("double", "_f64")}
THREADS_PER_BLOCK = 256
#: Upper bound on the grid (the kernels use grid-stride loops, so any grid covers everything).
MAX_BLOCKS = 65535


def kernel_source(dtypes: Iterable[torch.dtype] = (torch.float32,),
                  files: Sequence[str] = KERNEL_FILES) -> str:
    """One CUDA translation unit: ``common.cuh``, then every file once per dtype.

    ``#line`` directives keep compiler messages pointing at the original file and line.
    """
    parts = ['#line 1 "common.cuh"\n', (KERNEL_DIR / "common.cuh").read_text()]
    for dtype in dtypes:
        scalar, suffix = DTYPE_SUFFIX[dtype]
        parts.append(f"\n#define scalar_t {scalar}\n#define KNAME(name) name##{suffix}\n")
        for name in files:
            parts.append(f'#line 1 "{name}"\n')
            parts.append((KERNEL_DIR / name).read_text())
        parts.append("\n#undef scalar_t\n#undef KNAME\n")
    return "".join(parts)


def kernel_names(files: Sequence[str] = KERNEL_FILES) -> Tuple[str, ...]:
    """Base names (without dtype suffix) of every ``__global__`` kernel in ``files``."""
    import re

    pat = re.compile(r"__global__\s+void\s+KNAME\((\w+)\)")
    names = []
    for name in files:
        names.extend(pat.findall((KERNEL_DIR / name).read_text()))
    return tuple(names)


def grid_for(total: int) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    """``(grid, block)`` for a grid-stride loop over ``total`` elements."""
    blocks = max(1, min(MAX_BLOCKS, -(-int(total) // THREADS_PER_BLOCK)))
    return (blocks, 1, 1), (THREADS_PER_BLOCK, 1, 1)


class CupyBackend:
    """Compiles with ``cupy.RawModule`` (cached per device and dtype), launches on torch's stream."""

    name = "cupy"

    def __init__(self, cupy_module):
        self._cupy = cupy_module
        self._modules: Dict[Tuple[int, torch.dtype], object] = {}
        self._lock = threading.Lock()
        self.launches: Dict[str, int] = {}  # kernel name -> launches (tests check the kernels ran)

    def _module(self, device_index: int, dtype: torch.dtype):
        key = (device_index, dtype)
        mod = self._modules.get(key)
        if mod is None:
            with self._lock:
                mod = self._modules.get(key)
                if mod is None:
                    with self._cupy.cuda.Device(device_index):
                        mod = self._cupy.RawModule(code=kernel_source((dtype,)), options=("--std=c++14",))
                        mod.compile()
                    self._modules[key] = mod
                    log.debug("compiled the CUDA kernels for device %d, %s", device_index, dtype)
        return mod

    def launch(self, name: str, dtype: torch.dtype, total: int, args: Sequence) -> None:
        """Run kernel ``name`` (without suffix) over ``total`` elements on the tensors' device."""
        if total <= 0:
            return
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        cp = self._cupy
        fn = self._module(device.index, dtype).get_function(name + DTYPE_SUFFIX[dtype][1])
        grid, block = grid_for(total)
        with cp.cuda.Device(device.index):
            stream = cp.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device.index)
            with stream:
                # from_dlpack: zero-copy views of the torch tensors, on torch's current stream
                cargs = tuple(cp.from_dlpack(a) if isinstance(a, torch.Tensor) else a for a in args)
                fn(grid, block, cargs)
        self.launches[name] = self.launches.get(name, 0) + 1


_lock = threading.Lock()
_cupy_backend: Optional[CupyBackend] = None
_cupy_missing_warned = False
_cpu_backend = None
_torch_path_only = False


def _get_cupy_backend() -> Optional[CupyBackend]:
    global _cupy_backend, _cupy_missing_warned
    if _cupy_backend is not None:
        return _cupy_backend
    with _lock:
        if _cupy_backend is None and not _cupy_missing_warned:
            try:
                import cupy  # noqa: F401  (optional dependency: the [cuda] extra)
            except Exception as exc:  # ImportError, or a cupy built for another CUDA
                _cupy_missing_warned = True
                warnings.warn(f"caffe_compat: CUDA tensors take the (slower) torch path because cupy "
                              f"could not be imported ({exc}); install caffe_compat[cuda] for the "
                              f"CUDA kernels", RuntimeWarning, stacklevel=3)
                return None
            _cupy_backend = CupyBackend(cupy)
    return _cupy_backend


def backend_for(tensor: Optional[torch.Tensor]):
    """The kernel backend for an operation on ``tensor``, or ``None`` for the torch path."""
    if tensor is None or _torch_path_only or tensor.dtype not in DTYPE_SUFFIX:
        return None
    kind = tensor.device.type
    if kind == "cuda":
        return _get_cupy_backend()
    if kind == "cpu":
        return _cpu_backend
    return None


@contextlib.contextmanager
def emulate_on_cpu(backend):
    """Within the block, CPU float32/float64 tensors dispatch to ``backend`` (e.g. the emulator).

    For tests and tools: ``with emulate_on_cpu(caffe_compat._cuda_emu.EmulatorBackend()): ...``
    runs every custom operation through its CUDA kernels, executed on the CPU.
    """
    global _cpu_backend
    previous, _cpu_backend = _cpu_backend, backend
    try:
        yield backend
    finally:
        _cpu_backend = previous


@contextlib.contextmanager
def torch_path_only():
    """Within the block every operation takes the torch path, on every device (benchmarks, debugging)."""
    global _torch_path_only
    previous, _torch_path_only = _torch_path_only, True
    try:
        yield
    finally:
        _torch_path_only = previous


def launch(backend, name: str, dtype: torch.dtype, total: int, *args) -> None:
    """Launch kernel ``name`` (base name) for ``dtype`` over ``total`` elements with ``args``."""
    backend.launch(name, dtype, int(total), args)
