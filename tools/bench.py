#!/usr/bin/env python
"""Segmentation-aware convolution and CRF benchmark: time and extra peak memory per implementation.

Conv cases (the vgg config's segmentation-aware layers, 3x3; forward and forward+backward):

* ``caffe``  -- the fork's layer chain run by ``Net(..., fuse=False)`` (Tile, Im2col, Eltwise PROD,
  Convolution with ``bottom_is_im2col``);
* ``unfold`` -- the same written with ``F.unfold`` x mask -> 1x1 conv (``segaware_conv2d_unfold``);
* ``fused``  -- :func:`caffe_compat.ops.segaware_conv.segaware_conv2d`;
* ``conv2d`` -- a plain ``F.conv2d`` of the same shape (the floor: same multiply-adds).

CRF cases (the res config's NormConvMeanfield: 21 classes, bilateral 13x13 dilation 9,
spatial 5x5, 2 iterations): ``fused`` = :class:`caffe_compat.nn.MeanfieldCRF`;
``unfold`` = a straightforward unfold implementation of the same messages (for timing
only: it builds ``C*K*H*W`` windows for each message).

Each (case, implementation) runs in a fresh process: ``ms`` is the median of
``--repeat`` timed calls after one warm-up; ``peak_mb`` is the growth of the
process's peak RSS over the state after the inputs were made (forward: the outputs
and temporaries; forward+backward: also what autograd saves and the gradients).
``out_mb`` is the output's size.  ``--json`` prints
``{case: {impl: {"ms": median, "peak_mb": ...}}}``.  Run big sizes under
``flock /tmp/bigmem.lock`` on a shared machine::

    flock /tmp/bigmem.lock python tools/bench.py --threads 2
    python tools/bench.py --quick          # reduced sizes, under a minute
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time

log = logging.getLogger("bench")

# name: (C_in, C_out, size, dilation)
VGG_LAYERS = {
    "conv1_2": (64, 64, 321, 1),
    "conv2_2": (128, 128, 161, 1),
    "conv3_2": (256, 256, 81, 1),
    "conv4_2": (512, 512, 41, 1),
    "conv5_2": (512, 512, 41, 2),
}
CONV_IMPLS = ("caffe", "unfold", "fused", "conv2d")
CRF_IMPLS = ("unfold", "fused")
#: with --cuda (a GPU): ``cuda`` = the fused op on CUDA tensors (the kernels of caffe_compat/kernels
#: behind caffe_compat/ops/dispatch.py), ``cudnn`` = F.conv2d of the same shape on the GPU (its floor)
CUDA_CONV_IMPLS = ("cuda", "cudnn")
CUDA_CRF_IMPLS = ("cuda",)
#: what a CUDA impl runs, on the GPU
_ON_GPU = {"cuda": "fused", "cudnn": "conv2d"}


def conv_cases(quick: bool):
    cases = {}
    layers = {"conv1_2": (64, 64, 97, 1), "conv4_2": (512, 512, 21, 1)} if quick else VGG_LAYERS
    for name, (c, o, s, d) in layers.items():
        for n in ((1,) if quick else (1, 8)):
            cases[f"vgg_{name}_{s}_b{n}"] = dict(kind="conv", C=c, O=o, S=s, dil=d, N=n, denormal=False)
    c, o, s, d = layers["conv1_2"]
    cases[f"vgg_conv1_2_{s}_b1_subnormal_mask"] = dict(kind="conv", C=c, O=o, S=s, dil=d, N=1, denormal=True)
    return cases


def crf_cases(quick: bool):
    s = 65 if quick else 257
    return {f"res_crf_c21_{s}": dict(kind="crf", C=21, S=s, N=1)}


# ----------------------------------------------------------------------------- child side
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _caffe_chain(C, O, S, dil, N):
    import caffe_compat
    pad = dil
    text = f"""
name: "segaware_chain" force_backward: true
input: "x" input_shape {{ dim: {N} dim: {C} dim: {S} dim: {S} }}
input: "mask" input_shape {{ dim: {N} dim: 9 dim: {S} dim: {S} }}
layer {{ name: "tiled" type: "Tile" bottom: "mask" top: "tiled" tile_param {{ axis: 1 tiles: {C} }} }}
layer {{ name: "cols" type: "Im2col" bottom: "x" top: "cols"
        convolution_param {{ kernel_size: 3 pad: {pad} dilation: {dil} }} }}
layer {{ name: "hit" type: "Eltwise" bottom: "cols" bottom: "tiled" top: "hit" eltwise_param {{ operation: PROD }} }}
layer {{ name: "y" type: "Convolution" bottom: "hit" top: "y"
        convolution_param {{ num_output: {O} kernel_size: 3 pad: {pad} dilation: {dil} bottom_is_im2col: true }} }}
"""
    return caffe_compat.Net.from_string(text, fuse=False, seed=0)


def _conv_setup(spec, impl):
    import torch
    import torch.nn.functional as F

    from caffe_compat.ops.segaware_conv import segaware_conv2d, segaware_conv2d_unfold
    from caffe_compat.ops.window import Window
    C, O, S, dil, N = spec["C"], spec["O"], spec["S"], spec["dil"], spec["N"]
    dev = "cuda" if impl in _ON_GPU else "cpu"
    impl = _ON_GPU.get(impl, impl)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, S, S, generator=g)
    if spec["denormal"]:  # exp(-λd) on embeddings scaled x50: many values underflow to subnormals
        mask = torch.exp(-torch.rand(N, 9, S, S, generator=g) * 100)
    else:
        mask = torch.exp(-torch.rand(N, 9, S, S, generator=g) * 2)
    w = torch.randn(O, C, 3, 3, generator=g) * 0.05
    b = torch.randn(O, generator=g)
    x, mask, w, b = (t.to(dev) for t in (x, mask, w, b))
    win = Window((3, 3), (1, 1), (dil, dil), (dil, dil))
    if impl == "caffe":
        net = _caffe_chain(C, O, S, dil, N)
        with torch.no_grad():
            net.params["y"][0].copy_(w)
            net.params["y"][1].copy_(b)

        def run(grad):
            with torch.set_grad_enabled(grad):
                return net(x=x, mask=mask)["y"]
        return run, (), lambda y: y.backward(torch.ones_like(y))
    leaves = [t.requires_grad_(True) for t in (x, mask, w, b)]
    if impl == "conv2d":
        leaves = [x, w, b]
        fn = lambda: F.conv2d(x, w, b, padding=dil, dilation=dil)  # noqa: E731
    elif impl == "unfold":
        fn = lambda: segaware_conv2d_unfold(x, mask, w, b, win)  # noqa: E731
    else:
        fn = lambda: segaware_conv2d(x, mask, w, b, win)  # noqa: E731

    def run(grad):
        with torch.set_grad_enabled(grad):
            return fn()

    def back(y):
        y.backward(torch.ones_like(y))
        for t in leaves:
            t.grad = None
    return run, leaves, back


def _crf_unfold(unary, feat_b, feat_s, kc, iters=2):
    """Mean-field with unfold-built messages (timing baseline only)."""
    import torch
    import torch.nn.functional as F

    def mask(feat, k, pad, dil):
        N, E, H, W = feat.shape
        cols = F.unfold(feat, k, dilation=dil, padding=pad).view(N, E, k * k, H * W)
        centre = feat.reshape(N, E, 1, H * W)
        d = 0.5 * ((cols - centre) ** 2).sum(1)
        return torch.softmax(-d, dim=1)

    def message(p, a, k, pad, dil):
        N, C, H, W = p.shape
        cols = F.unfold(p, k, dilation=dil, padding=pad).view(N, C, k * k, H * W)
        return (cols * a[:, None]).sum(2).view(N, C, H, W)

    ab, as_ = mask(feat_b, 13, 54, 9), mask(feat_s, 5, 2, 1)
    q = unary
    for _ in range(iters):
        p = torch.softmax(q, 1)
        m = message(p, as_, 5, 2, 1) + message(p, ab, 13, 54, 9)
        q = unary - torch.einsum("rc,nchw->nrhw", kc, m)
    return q


def _crf_setup(spec, impl):
    import torch

    import caffe_compat.nn as cnn
    C, S, N = spec["C"], spec["S"], spec["N"]
    dev = "cuda" if impl in _ON_GPU else "cpu"
    impl = _ON_GPU.get(impl, impl)
    g = torch.Generator().manual_seed(0)
    unary = torch.randn(N, C, S, S, generator=g).to(dev).requires_grad_(True)
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    xy = torch.stack([xx, yy])[None].expand(N, 2, S, S)
    feat_b = torch.cat([torch.rand(N, 3, S, S, generator=g) * 255 * 0.13, xy * 0.05], 1).to(dev).requires_grad_(True)
    feat_s = (xy * 0.05).contiguous().to(dev).requires_grad_(True)
    crf = cnn.MeanfieldCRF(C).to(dev)
    kc = (-torch.eye(C)).to(dev).requires_grad_(True)
    if impl == "fused":
        fn = lambda: crf(unary, feat_b, feat_s)  # noqa: E731
    else:
        fn = lambda: _crf_unfold(unary, feat_b, feat_s, kc)  # noqa: E731

    def run(grad):
        with torch.set_grad_enabled(grad):
            return fn()
    return run, (unary, feat_b, feat_s), lambda y: y.backward(torch.ones_like(y))


def _child(spec: dict, impl: str, repeat: int, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    gpu = impl in _ON_GPU
    if gpu and not torch.cuda.is_available():
        raise SystemExit(f"impl {impl!r} needs a CUDA device; none is visible")
    run, _, back = (_conv_setup if spec["kind"] == "conv" else _crf_setup)(spec, impl)

    def sync():  # GPU work is asynchronous: time it to completion
        if gpu:
            torch.cuda.synchronize()

    def used_mb():  # extra peak: process RSS on CPU, the allocator's peak on the GPU
        if gpu:
            return torch.cuda.max_memory_allocated() / 2 ** 20
        return _rss_mb()

    if gpu:
        sync()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2 ** 20 if gpu else _rss_mb()
    out = {}
    y = run(False)
    sync()
    out_mb = y.numel() * y.element_size() / 2 ** 20
    fwd_peak = used_mb() - base
    del y
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run(False)
        sync()
        times.append(time.perf_counter() - t0)
    out["fwd"] = {"ms": statistics.median(times) * 1e3, "peak_mb": fwd_peak, "out_mb": out_mb}
    y = run(True)
    back(y)
    del y
    sync()
    fb_peak = used_mb() - base
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        y = run(True)
        back(y)
        del y
        sync()
        times.append(time.perf_counter() - t0)
    out["fwdbwd"] = {"ms": statistics.median(times) * 1e3, "peak_mb": fb_peak, "out_mb": out_mb}
    return out


# ----------------------------------------------------------------------------- parent side
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes (under a minute on CPU)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per measurement (after a warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--cases", default="", help="comma-separated substrings selecting cases")
    ap.add_argument("--cuda", action="store_true",
                    help="also the GPU impls: cuda (the fused op's kernels) and cudnn (conv2d of the same shape)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.child:
        spec, impl = json.loads(args.child)
        json.dump(_child(spec, impl, args.repeat, args.threads), sys.stdout)
        return 0
    cases = {**conv_cases(args.quick), **crf_cases(args.quick)}
    if args.cases:
        keys = args.cases.split(",")
        cases = {k: v for k, v in cases.items() if any(s in k for s in keys)}
    if args.quick:
        args.repeat = min(args.repeat, 2)
    results, out_mb = {}, {}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda it, **k: it  # noqa: E731
    if args.cuda:
        import torch
        if not torch.cuda.is_available():
            log.error("--cuda: no CUDA device is visible")
            return 2

    def impls(spec):
        conv = spec["kind"] == "conv"
        return (CONV_IMPLS if conv else CRF_IMPLS) + ((CUDA_CONV_IMPLS if conv else CUDA_CRF_IMPLS) if args.cuda else ())
    jobs = [(c, i) for c, spec in cases.items() for i in impls(spec)]
    for case, impl in tqdm(jobs, desc="bench", file=sys.stderr):
        r = subprocess.run([sys.executable, __file__, "--child", json.dumps([cases[case], impl]),
                            "--repeat", str(args.repeat), "--threads", str(args.threads)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            log.error("%s / %s failed:\n%s", case, impl, r.stderr[-2000:])
            continue
        log.info("%s / %s: %s", case, impl, r.stdout.strip())  # partial results as they come
        for mode, v in json.loads(r.stdout).items():
            results.setdefault(f"{case}_{mode}", {})[impl] = {"ms": round(v["ms"], 2),
                                                              "peak_mb": round(v["peak_mb"], 1)}
            out_mb[f"{case}_{mode}"] = v["out_mb"]
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(format_table(results, out_mb, args.threads) + "\n")
    return 0


def format_table(results: dict, out_mb: dict, threads: int) -> str:
    impls = [i for i in CONV_IMPLS + CUDA_CONV_IMPLS if any(i in r for r in results.values())]
    gpu = any("cuda" in r for r in results.values())
    head = (["case", "out MB"] + [f"{i} ms" for i in impls] + [f"{i} peak MB" for i in impls] + ["fused/floor"]
            + (["cuda/floor"] if gpu else []))
    rows = [head]
    for case, r in results.items():
        floor = r.get("conv2d", r.get("unfold"))
        ratio = (f"{r['fused']['ms'] / floor['ms']:.2f}x" if "fused" in r and floor else "")
        gfloor = r.get("cudnn")
        gratio = [f"{r['cuda']['ms'] / gfloor['ms']:.2f}x" if "cuda" in r and gfloor else ""] if gpu else []
        rows.append([case, f"{out_mb[case]:.1f}"] + [f"{r[i]['ms']:.1f}" if i in r else "" for i in impls]
                    + [f"{r[i]['peak_mb']:.1f}" if i in r else "" for i in impls] + [ratio] + gratio)
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.append(f"(torch threads: {threads}; fused/floor = fused ms / conv2d ms, CRF: fused ms / unfold ms"
                 + ("; cuda/floor = cuda ms / cudnn ms; GPU peaks are the allocator's)" if gpu else ")"))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
