"""CupyBackend's own logic (compile cache per device and dtype, launch convention) with a stand-in cupy.

No GPU here, so the stand-in's ``RawModule`` records what it is asked to compile and its
functions run the kernel on the emulator with the exact ``(grid, block, args)`` the backend
passes to a cupy ``RawKernel``; ``from_dlpack`` returns the tensor (the zero-copy view).
"""
from __future__ import annotations

import contextlib

import torch

from cuda_support import kernel_backend

from caffe_compat import cuda
from caffe_compat.layers.geometry import ConvGeometry
from caffe_compat.ops import norm_conv as nc


class _FakeCupy:
    def __init__(self, emu):
        self.compiled = []
        self.streams = []
        fake = self

        class RawModule:
            def __init__(self, code, options):
                fake.compiled.append((code, options))

            def compile(self):
                pass

            def get_function(self, name):
                return lambda grid, block, args: emu.run(name, grid, block, args)

        class _Cuda:
            @staticmethod
            def Device(index):
                return contextlib.nullcontext()

            @staticmethod
            def ExternalStream(ptr, device):
                fake.streams.append(ptr)
                return contextlib.nullcontext()

        self.RawModule = RawModule
        self.cuda = _Cuda
        self.from_dlpack = lambda t: t


class _Stream:
    cuda_stream = 1234


def test_cupy_backend_launch_and_cache(monkeypatch):
    emu = kernel_backend()
    fake = _FakeCupy(emu)
    backend = cuda.CupyBackend(fake)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    geom = ConvGeometry((3, 3), (2, 1), (1, 2), (1, 2))
    for dtype in (torch.float32, torch.float64, torch.float32):
        x = torch.randn(2, 3, 7, 8, dtype=dtype)
        ref = nc.window_distances(x, geom, nc.L1, True, False)
        with cuda.emulate_on_cpu(backend):
            got = nc.window_distances(x, geom, nc.L1, True, False)
        assert torch.equal(got, ref)
    # compiled once per (device, dtype), each module holding that dtype's kernels only
    assert len(fake.compiled) == 2
    f32, f64 = fake.compiled[0][0], fake.compiled[1][0]
    assert "\n#define scalar_t float\n" in f32 and "\n#define scalar_t double\n" not in f32
    assert "\n#define scalar_t double\n" in f64 and "\n#define scalar_t float\n" not in f64
    # launched on torch's current stream
    assert fake.streams == [1234] * 3 and backend.launches == {"window_dist_fwd": 3}
