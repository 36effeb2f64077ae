#!/usr/bin/env python
"""Peak memory of ``caffe-compat test`` on the original TEST nets at their original crop sizes.

For each net (vgg/test, res/test with ``--preset voc_val``, embs/test) a
one-image data set is made (a 500x375 image, as most VOC images are, and a
label map) and seeded filler weights are saved as a caffemodel; then the real
``test`` command runs in a fresh child process, once as before issue 11
(``torch.no_grad`` and every blob kept until the forward returns) and once as
now (``torch.inference_mode`` and ``Net.free_blobs``: each intermediate dropped
after its last reader).  Peak RSS of the child is read with
``resource.getrusage(RUSAGE_SELF)`` in the child (no DataLoader workers).  Prints a table.

The runs take several GB: wrap the call as ``flock /tmp/bigmem.lock python
tools/bench_test_memory.py --reference ../shared/reference``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NETS = {"vgg/test": "configs/vgg/test.prototxt", "res/test": "configs/res/test.prototxt",
        "embs/test": "configs/embs/test.prototxt"}


def _prepare(ref: Path, name: str, work: Path) -> list:
    """Data set, weights and the test command line for one net."""
    import numpy as np
    from PIL import Image

    import caffe_compat
    from caffe_compat import presets

    config = ref / NETS[name]
    exp = work / "segaware"
    (exp / "list").mkdir(parents=True, exist_ok=True)
    root = work / "voc"
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(root / "img" / "x.jpg")
    Image.fromarray(rng.integers(0, 21, (375, 500), dtype=np.uint8), mode="L").save(root / "img" / "x.png")
    (exp / "list" / "voc_val.txt").write_text("/img/x.jpg /img/x.png\n")
    (exp / "list" / "voc_val_id.txt").write_text("x\n")
    text = config.read_text()
    defines = presets.preset_values(text, "voc_val", str(config))
    defines.update(DATA_ROOT=str(root), EXP=str(exp), FEATURE_DIR=str(work / "features"))
    weights = work / f"{name.replace('/', '_')}.caffemodel"
    if not weights.exists():
        caffe_compat.Net(config, phase="TEST", defines=defines, seed=0).save(weights)
    argv = ["test", str(config), str(weights), "--workers", "0", "--no-progress", "--out", str(work / "feat")]
    for k, v in defines.items():
        argv += ["-D", f"{k}={v}"]
    return argv


def _child(argv: list, mode: str, threads: int) -> dict:
    import shutil

    import torch

    from caffe_compat import cli
    from caffe_compat.net import Net

    torch.set_num_threads(threads)
    out = Path(argv[argv.index("--out") + 1])
    shutil.rmtree(out, ignore_errors=True)   # test is resumable: remove the features of an earlier run
    if mode == "before":
        torch.inference_mode = lambda: torch.no_grad()   # what `test` used before
        Net.free_blobs = property(lambda self: False, lambda self, v: None)
    t0 = time.perf_counter()
    rc = cli.main(argv)
    return {"rc": rc, "seconds": time.perf_counter() - t0,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default="../shared/reference")
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None, help="folder for the data set and weights (default: a temp dir)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(_child(job["argv"], job["mode"], args.threads)))
        return 0
    ref = Path(args.reference).resolve()
    rows = []
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for name in args.nets.split(","):
            argv = _prepare(ref, name, work / name.replace("/", "_"))
            for mode in ("before", "after"):
                job = json.dumps({"argv": argv, "mode": mode})
                p = subprocess.run([sys.executable, __file__, "--child", job, "--threads", str(args.threads)],
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    sys.stderr.write(p.stderr)
                    raise SystemExit(f"{name} {mode}: child failed")
                res = json.loads(p.stdout.strip().splitlines()[-1])
                if res["rc"] != 0:
                    sys.stderr.write(p.stderr)
                    raise SystemExit(f"{name} {mode}: test exited with {res['rc']}")
                rows.append((name, mode, f"{res['peak_mb']:.0f}", f"{res['seconds']:.1f}"))
                print(rows[-1], file=sys.stderr, flush=True)
    print("| net (crop from --preset voc_val) | test as | peak RSS MB | seconds |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
