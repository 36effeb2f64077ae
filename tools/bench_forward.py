#!/usr/bin/env python
"""Full-size forward time and peak memory of the original vgg and res deploy nets, seeded weights.

Prints a table (one row per net): input size, parameters, build time, forward
time (median of --repeat runs after one warm-up), and peak resident memory of a
fresh process per net (so the numbers do not mix).  Run on the machine whose
numbers you record in BENCHMARKS.md::

    python tools/bench_forward.py --reference ../shared/reference --repeat 2
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
from pathlib import Path

log = logging.getLogger("bench_forward")

NETS = {
    # name: (config, {input: shape}) -- the deploy files' own input sizes
    "vgg/deploy": ("configs/vgg/deploy.prototxt", None),
    "res/deploy": ("configs/res/deploy.prototxt", None),
}


def _child(config: str, repeat: int, threads: int, backward: bool = False, fuse: bool = True) -> dict:
    import torch

    import caffe_compat

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    net = caffe_compat.Net(config, seed=0, fuse=fuse)
    build = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    inputs = {k: torch.randn(s, generator=g) * 50 for k, s in net.input_shapes.items()}
    times = []
    with torch.no_grad():
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            net(**inputs)
            times.append(time.perf_counter() - t0)
    fb_times = []
    if backward:  # forward + backward of the sum of the outputs, parameter gradients included
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            outs = net(**inputs)
            sum(v.float().sum() for v in outs.values() if v.requires_grad).backward()
            del outs
            fb_times.append(time.perf_counter() - t0)
            net.zero_grad(set_to_none=True)
    n_params = sum(p.numel() for p in {id(p): p for p in net.parameters()}.values())
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"inputs": {k: list(v) for k, v in net.input_shapes.items()}, "params": n_params,
            "build_s": build, "forward_s": statistics.median(times[1:]), "peak_rss_mb": peak_kb / 1024,
            "threads": threads, "fuse": fuse,
            "forward_backward_s": statistics.median(fb_times[1:]) if fb_times else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"),
                    help="folder holding configs/ (default ../shared/reference)")
    ap.add_argument("--repeat", type=int, default=2, help="timed forwards per net (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated subset of " + ", ".join(NETS))
    ap.add_argument("--backward", action="store_true", help="also time forward+backward (peak RSS then covers it)")
    ap.add_argument("--no-fuse", action="store_true", help="run the nets with Net(..., fuse=False)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.child:
        json.dump(_child(args.child, args.repeat, args.threads, args.backward, not args.no_fuse), sys.stdout)
        return 0
    rows = []
    for name in args.nets.split(","):
        config = str(Path(args.reference) / NETS[name][0])
        r = subprocess.run([sys.executable, __file__, "--child", config, "--repeat", str(args.repeat),
                            "--threads", str(args.threads)] + (["--backward"] if args.backward else [])
                           + (["--no-fuse"] if args.no_fuse else []), capture_output=True, text=True)
        if r.returncode != 0:
            log.error("%s failed:\n%s", name, r.stderr[-2000:])
            return 1
        rows.append((name, json.loads(r.stdout)))
    header = (f"{'net':<12} {'inputs':<48} {'params':>12} {'build s':>8} {'forward s':>10} {'fwd+bwd s':>10} "
              f"{'peak RSS MB':>12}")
    lines = [header, "-" * len(header)]
    for name, d in rows:
        ins = "; ".join(f"{k} {'x'.join(map(str, v))}" for k, v in d["inputs"].items())
        fb = f"{d['forward_backward_s']:.2f}" if d.get("forward_backward_s") else "-"
        lines.append(f"{name:<12} {ins[:48]:<48} {d['params']:>12,} {d['build_s']:>8.2f} {d['forward_s']:>10.2f} "
                     f"{fb:>10} {d['peak_rss_mb']:>12.0f}")
    sys.stdout.write("\n".join(lines) + f"\n(torch threads: {args.threads}; fuse: {not args.no_fuse})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
