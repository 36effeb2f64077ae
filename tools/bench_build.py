#!/usr/bin/env python3
"""Benchmark: cost of building a Net per layer, apart from parsing the prototxt.

    python tools/bench_build.py [--layers 20000] [--repeat 3]

Generates chains of ``--layers`` layers (element-wise layers; a conv / BatchNorm / Scale / ReLU
block pattern; and element-wise layers whose parameters all differ, so no two layers are alike)
and prints, per net, the parse time and the build time (``Net(net_param=...)``, no weights
file; filler values for the conv / BatchNorm / Scale blobs) in total and per layer: process CPU
time (robust on a shared machine), best of ``--repeat``, after one untimed build (torch's first
meta-device call imports its meta kernels and sympy: seconds once per process).
"""
from __future__ import annotations

import argparse
import time


def chain_elementwise(n: int) -> str:
    types = ["ReLU", "Sigmoid", "TanH", "AbsVal", "Power"]
    lines = ['name: "elementwise"', 'input: "data"', 'input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }']
    prev = "data"
    for i in range(n):
        lines.append(f'layer {{ name: "l{i}" type: "{types[i % len(types)]}" bottom: "{prev}" top: "b{i}" }}')
        prev = f"b{i}"
    return "\n".join(lines)


def chain_blocks(n: int) -> str:
    lines = ['name: "blocks"', 'input: "data"', 'input_shape { dim: 1 dim: 8 dim: 8 dim: 8 }']
    prev = "data"
    for i in range(n):
        kind = i % 4
        if kind == 0:
            lines.append(f'layer {{ name: "c{i}" type: "Convolution" bottom: "{prev}" top: "b{i}" '
                         f'convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 }} }}')
            prev = f"b{i}"
        elif kind == 1:
            lines.append(f'layer {{ name: "bn{i}" type: "BatchNorm" bottom: "{prev}" top: "{prev}" }}')
        elif kind == 2:
            lines.append(f'layer {{ name: "s{i}" type: "Scale" bottom: "{prev}" top: "{prev}" '
                         f'scale_param {{ bias_term: true }} }}')
        else:
            lines.append(f'layer {{ name: "r{i}" type: "ReLU" bottom: "{prev}" top: "{prev}" }}')
    return "\n".join(lines)


def chain_distinct(n: int) -> str:
    lines = ['name: "distinct"', 'input: "data"', 'input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }']
    prev = "data"
    for i in range(n):
        lines.append(f'layer {{ name: "p{i}" type: "Power" bottom: "{prev}" top: "b{i}" '
                     f'power_param {{ shift: {i} }} }}')
        prev = f"b{i}"
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    import torch
    import caffe_compat as cc
    from caffe_compat import prototxt as pt
    torch.set_num_threads(1)
    print("| net | layers | parse s (CPU) | build s (CPU) | build ms/layer |")
    print("|---|---|---|---|---|")
    cc.Net.from_string(chain_blocks(8))   # the one-time meta-kernel import, not timed
    for make in (chain_elementwise, chain_blocks, chain_distinct):
        text = make(args.layers)
        best_parse = best_build = float("inf")
        for _ in range(args.repeat):
            t0 = time.process_time()
            npar = pt.parse_net(text, make.__name__)
            t1 = time.process_time()
            net = cc.Net(net_param=npar, source=make.__name__, seed=0)
            t2 = time.process_time()
            best_parse, best_build = min(best_parse, t1 - t0), min(best_build, t2 - t1)
        n = len(net.layers)
        print(f"| {make.__name__} | {n} | {best_parse:.2f} | {best_build:.2f} | {1000 * best_build / n:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
