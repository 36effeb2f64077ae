#!/usr/bin/env python
"""Cost of one training iteration of each scene net (configs/scenes), on generated scenes.

Generates a small scene set in a temporary folder, builds each TRAIN net (batch, crop as given),
runs one warm-up iteration, then times ``--repeat`` iterations of forward + backward + a
``torch.optim.SGD`` step and prints a table (median seconds per iteration and the implied time
of 3,000 iterations, the solvers' ``max_iter``)::

    python tools/bench_scenes.py --threads 1 --repeat 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow running from a checkout without installing
    sys.path.insert(0, str(REPO))

NETS = ("embs", "plain", "segaware", "segaware_crf")


def main(argv=None) -> int:
    import torch

    from caffe_compat import Net
    from caffe_compat.datasets.scenes import SceneConfig, write_scenes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=65)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, crop {args.crop}, {args.threads} torch thread(s), torch {torch.__version__}")
    print("| net | params | s / iteration | 3,000 iterations |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "scenes"
        write_scenes(data, SceneConfig(num_train=2 * args.batch, num_val=1), progress=False)
        defines = {"DATA_ROOT": str(data), "TRAIN_SET": "train", "BATCH_SIZE": args.batch,
                   "CROP_SIZE": args.crop, "HALF_SIZE": (args.crop + 1) // 2,
                   "EMBS_LR1": 0, "EMBS_LR2": 0, "CRF_LR1": 0, "CRF_LR2": 1}
        for name in NETS:
            net = Net(REPO / "configs" / "scenes" / f"{name}_train.prototxt", phase="TRAIN", defines=defines, seed=0)
            params = [q for q in net.parameters() if q.requires_grad]
            opt = torch.optim.SGD(params, lr=1e-6)
            times = []
            for i in range(args.repeat + 1):
                t0 = time.perf_counter()
                opt.zero_grad()
                net()
                net.loss.backward()
                opt.step()
                if i:  # the first is a warm-up
                    times.append(time.perf_counter() - t0)
            sec = statistics.median(times)
            n = sum(q.numel() for blobs in net.params.values() for q in blobs)
            print(f"| {name} | {n:,} | {sec:.3f} | {3000 * sec / 60:.0f} min |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
