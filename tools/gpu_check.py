#!/usr/bin/env python
"""Everything that needs a GPU, in one command (< 8 minutes on an H100/H200-class card).

Run from the repository root on a machine with a CUDA GPU, torch's CUDA build and cupy
(``pip install -e '.[test,cuda]'``)::

    python tools/gpu_check.py --reference ../shared/reference

Steps (each prints a line; the exit status is non-zero if any check failed):

1. environment: device, torch/cupy versions, kernel compile time (NVRTC, both dtypes);
2. every kernel against the torch path, and the goldens, on CUDA: the CUDA tests
   (tests/test_cuda_emulated.py, test_cuda_segaware_conv.py, test_cuda_golden_emulated.py) with
   ``CAFFE_COMPAT_KERNELS=cuda`` (the kernel side of every comparison runs on the GPU; in that
   mode the golden test covers every layer case, not only the kernel layers, and the reduced
   embs, vgg and res nets);
3. a timing table: each custom operation at the configs' sizes, torch path on CUDA vs the
   kernels, and a cuDNN ``conv2d`` of the same shape as the masked (segmentation-aware)
   convolution (standalone: tools/bench.py, written in parallel, had no ``cuda`` implementation
   to hook into when this was written);
4. the full-size res deploy forward at 513x513 (seeded weights), kernels vs torch path.

``--smoke`` runs steps 3 and 4 at toy sizes on the CPU through the kernel emulator (no GPU):
a check of this script itself, not a measurement.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from caffe_compat import cuda  # noqa: E402
from caffe_compat.layers.geometry import ConvGeometry  # noqa: E402
from caffe_compat.ops import meanfield as mf  # noqa: E402
from caffe_compat.ops.im2dist import im2dist  # noqa: E402
from caffe_compat.ops.segaware_conv import segaware_conv2d  # noqa: E402

log = logging.getLogger("gpu_check")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeat: int) -> float:
    """Median milliseconds of ``repeat`` calls after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _kernels_context(device):
    if device.type == "cuda":
        return contextlib.nullcontext()
    from caffe_compat._cuda_emu import EmulatorBackend
    from caffe_compat.ops.segaware_conv_cuda import emulated_registration

    stack = contextlib.ExitStack()
    stack.enter_context(cuda.emulate_on_cpu(EmulatorBackend()))
    stack.enter_context(emulated_registration())
    return stack


def _fwd_bwd(fn, inputs):
    def run():
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.backward(torch.ones_like(out))
    return run


def bench_cases(device, smoke: bool):
    """(name, callable on fresh inputs returning a forward+backward thunk, reference conv thunk or None)."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device)

    s = (lambda full, toy: toy if smoke else full)
    cases = []
    # Im2dist on the vgg embeddings (64 channels, k3) at a deploy feature size
    H = s(161, 9)
    emb = r(1, s(64, 3), H, H)
    geom3 = ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1))
    cases.append((f"im2dist L1 k3 (1,{emb.shape[1]},{H},{H})",
                  _fwd_bwd(lambda e: im2dist(e, geom3, "L1"), [emb]), None))
    # the fused segmentation-aware convolution (mask (N, 9, H, W), k3 d2, bias) vs cuDNN conv2d
    for C, H2 in ((s(512, 4), s(65, 9)), (s(64, 3), s(161, 7))):
        geom_d2 = ConvGeometry((3, 3), (1, 1), (2, 2), (2, 2))
        img, w, b = r(1, C, H2, H2), r(C, C, 3, 3) * 0.01, r(C)
        mask = torch.rand(1, 9, H2, H2, generator=g).to(device)
        cases.append((f"segaware_conv2d k3 d2 C={C} {H2}x{H2}",
                      _fwd_bwd(lambda x, a, ww, bb, geom=geom_d2: segaware_conv2d(x, a, ww, bb, geom),
                               [img, mask, w, b]),
                      _fwd_bwd(lambda x, ww, bb: torch.nn.functional.conv2d(x, ww, bb, padding=2, dilation=2),
                               [img, w, b])))
    # the res CRF: 21 classes at 65x65, bilateral 13x13 d9 (169 taps), spatial 5x5, 2 iterations
    Cc, H3 = 21, s(65, 9)
    bil = mf.MeanfieldKernel(ConvGeometry((s(13, 3),) * 2, (1, 1), (s(54, 2),) * 2, (s(9, 2),) * 2), 1.0)
    spa = mf.MeanfieldKernel(ConvGeometry((5, 5), (1, 1), (2, 2), (1, 1)), 1.0)
    eye = torch.eye(Cc).to(device)
    crf_in = [r(1, Cc, H3, H3), r(1, Cc, H3, H3), r(1, 5, H3, H3), r(1, 2, H3, H3)]
    cases.append((f"NormConvMeanfield res ({Cc},{H3},{H3}) T=2",
                  _fwd_bwd(lambda u, q, fb, fs: mf.normconv_meanfield(u, q, fb, fs, eye, eye, -eye, 2, bil, spa),
                           crf_in), None))
    return cases


def timing_table(device, smoke: bool, repeat: int) -> None:
    print(f"\n## timing on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU (emulated)'}"
          f" (forward+backward, median of {repeat}, ms)\n")
    print("| operation | torch path | kernels | speed-up | cuDNN conv2d | kernels / cuDNN |")
    print("|---|---|---|---|---|---|")
    for name, run, ref in bench_cases(device, smoke):
        with cuda.torch_path_only():
            t_torch = _time(run, device, repeat)
        with _kernels_context(device):
            t_kern = _time(run, device, repeat)
        t_ref = _time(ref, device, repeat) if ref is not None else None
        ref_s = f"{t_ref:.2f} | {t_kern / t_ref:.2f}x" if t_ref else "- | -"
        print(f"| {name} | {t_torch:.2f} | {t_kern:.2f} | {t_torch / t_kern:.2f}x | {ref_s} |")


def res_deploy(device, reference: Path, smoke: bool, repeat: int) -> None:
    import caffe_compat

    config = reference / "configs" / "res" / "deploy.prototxt"
    if smoke:
        print("\nres deploy: skipped in --smoke (its 4 inputs are fixed at 513/385/257/65)")
        return
    if not config.exists():
        print(f"\nres deploy: {config} not found, skipped")
        return
    net = caffe_compat.Net(str(config), seed=0, device=device)
    g = torch.Generator().manual_seed(0)
    inputs = {k: (torch.randn(sh, generator=g) * 50).to(device) for k, sh in net.input_shapes.items()}
    with torch.no_grad():
        with cuda.torch_path_only():
            t_torch = _time(lambda: net(**inputs), device, repeat)
            ref = net(**inputs)
        t_kern = _time(lambda: net(**inputs), device, repeat)
        got = net(**inputs)
    worst = max(float((got[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-30)) for k in ref)
    print(f"\nres deploy forward {dict(net.input_shapes)}: torch path {t_torch:.1f} ms, kernels {t_kern:.1f} ms "
          f"per image (goal <= 50 ms); max rel. difference of the outputs {worst:.2e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=str(REPO / ".." / "shared" / "reference"))
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--skip-tests", action="store_true", help="skip step 2 (the CUDA test run)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU emulator (checks this script)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    reference = Path(args.reference).resolve()
    failed = False
    if args.smoke:
        device = torch.device("cpu")
        print("smoke mode: CPU, kernels emulated; no figure below is a GPU measurement")
    else:
        if not torch.cuda.is_available():
            print("no CUDA device visible to torch: nothing to check (use --smoke to test this script)")
            return 2
        device = torch.device("cuda", torch.cuda.current_device())
        import cupy

        t0 = time.perf_counter()
        backend = cuda.backend_for(torch.zeros(1, device=device))
        if backend is None:
            print("cupy is not usable: the kernels cannot run")
            return 1
        for dtype in cuda.DTYPE_SUFFIX:
            backend._module(device.index, dtype)
        print(f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
              f"cupy {cupy.__version__}; kernels compiled in {time.perf_counter() - t0:.1f} s")
        if not args.skip_tests:
            env = dict(os.environ, CAFFE_COMPAT_KERNELS="cuda")
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                   "tests/test_cuda_emulated.py", "tests/test_cuda_segaware_conv.py",
                                   "tests/test_cuda_golden_emulated.py"],
                                  cwd=REPO, env=env, timeout=300)
            print(f"CUDA tests (kernels vs torch path, golden layer cases): "
                  f"{'passed' if proc.returncode == 0 else 'FAILED'}")
            failed |= proc.returncode != 0
    timing_table(device, args.smoke, 2 if args.smoke else args.repeat)
    res_deploy(device, reference, args.smoke, args.repeat)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
