#!/usr/bin/env python
"""Retrain the scene nets of ``configs/scenes/`` and print the ablation table (issue 13).

Steps (``docs/scenes.md``): generate the scenes (``caffe_compat.datasets.scenes``), train the
embedding net (Adam), the plain net, the segmentation-aware net (initialised from the trained
embeddings) and the segmentation-aware net + CRF (initialised from the segmentation-aware one),
all with ``caffe_compat.Solver`` from the solver files; then, per variant, ``caffe-compat test``
on the validation split -> ``gen-preds`` -> ``eval --num-classes 6 --boundary-radius ...`` and a
Markdown table of mIoU, pixel accuracy and the accuracy near boundaries.

Everything is seeded (data seed, the solvers' ``random_seed``), so a rerun with the same arguments
repeats the same numbers on the same machine.  ``--iters`` overrides every solver's ``max_iter``
(a quick check of the whole chain: ``--iters 20 --train 40 --val 10``).

    python tools/train_scenes.py --work runs/scenes            # the full recipe (hours on 2 CPU cores)
    python tools/train_scenes.py --work /tmp/s --iters 20 --train 40 --val 10   # the chain, in minutes
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow running from a checkout without installing
    sys.path.insert(0, str(REPO))

log = logging.getLogger("train_scenes")

CONFIGS = REPO / "configs" / "scenes"
VARIANTS = ("plain", "segaware", "segaware_crf")
TRAIN_CROP, TEST_CROP = 65, 81


def _defines(data: Path, out: Path, crop: int, batch: int, **extra) -> Dict[str, object]:
    d = {"DATA_ROOT": str(data), "TRAIN_SET": "train", "TEST_SET": "val", "BATCH_SIZE": batch,
         "CROP_SIZE": crop, "HALF_SIZE": (crop + 1) // 2, "OUT_DIR": str(out),
         "EMBS_LR1": 0, "EMBS_LR2": 0, "CRF_LR1": 0, "CRF_LR2": 1}
    d.update(extra)
    return d


def train(name: str, defines: Dict[str, object], weights: Sequence[Path] = (), iters: Optional[int] = None,
          progress: bool = True, prefix: Optional[str] = None, seed: Optional[int] = None) -> Path:
    """Train ``configs/scenes/<name>_solver.prototxt``; returns the final caffemodel.

    ``prefix``: another snapshot_prefix (the controls train the same solver under another name).
    """
    from caffe_compat.solver import Solver

    overrides = {} if iters is None else {"max_iter": iters, "snapshot": iters}
    if prefix is not None:
        overrides["snapshot_prefix"] = prefix
    if seed is not None:
        overrides["random_seed"] = seed
    solver = Solver(CONFIGS / f"{name}_solver.prototxt", defines, overrides=overrides)
    for w in weights:
        for net in [solver.net] + solver.test_nets:
            net.load_weights(w, strict=False)   # by layer name, as caffe train --weights
        log.info("%s: initialised from %s", name, w)
    t0 = time.time()
    solver.solve(progress=progress)
    final = Path(f"{solver.snapshot_prefix()}_iter_{solver.iter}.caffemodel")
    if not final.is_file():
        raise RuntimeError(f"{name}: no final snapshot {final}")
    log.info("%s: %d iterations in %.0f s, last smoothed loss %.4g -> %s", name, solver.iter, time.time() - t0,
             solver.smoothed_loss, final)
    return final


def evaluate(variant: str, weights: Path, data: Path, work: Path, radii: Sequence[float]) -> dict:
    """``caffe-compat test`` -> ``gen-preds`` -> ``eval`` on the val split; the eval JSON."""
    from caffe_compat.cli import main

    feats, preds = work / "features" / variant, work / "preds" / variant
    if feats.exists():  # test skips existing .mat files: features of older weights must go
        shutil.rmtree(feats)
    preds.mkdir(parents=True, exist_ok=True)
    defs = _defines(data, work, TEST_CROP, 1, FEATURE_DIR=feats)
    steps = [["test", str(CONFIGS / f"{variant}_test.prototxt"), str(weights), "--out", str(feats),
              "--no-progress", "--workers", "0", *[f"--define={k}={v}" for k, v in defs.items()]],
             ["gen-preds", str(feats), "--images", str(data / "JPEGImages"), "--out", str(preds), "--flat",
              "--overwrite", "--no-progress"],
             ["eval", str(preds), str(data / "SegmentationClass"), "--list",
              str(data / "ImageSets" / "Segmentation" / "val.txt"), "--num-classes", "6", "--json",
              *[a for r in radii for a in ("--boundary-radius", f"{r:g}")]]]
    buf = StringIO()
    for argv in steps:
        with redirect_stdout(buf if argv[0] == "eval" else StringIO()):
            if main(argv) != 0:
                raise RuntimeError(f"caffe-compat {argv[0]} failed for {variant}")
    return json.loads(buf.getvalue())


def table(results: Dict[str, dict], radii: Sequence[float]) -> str:
    head = ["variant", "mIoU %", "pixel acc %"] + [f"acc ≤{r:g} px %" for r in radii] + \
           [f"mIoU ≤{r:g} px %" for r in radii]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, res in results.items():
        b = {x["radius"]: x for x in res.get("boundary", [])}
        cells = [v, f"{100 * res['miou']:.2f}", f"{100 * res['pixel_acc']:.2f}"]
        cells += [f"{100 * b[float(r)]['pixel_acc']:.2f}" for r in radii]
        cells += [f"{100 * b[float(r)]['miou']:.2f}" for r in radii]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    from caffe_compat.atomic import atomic_write
    from caffe_compat.datasets.scenes import SceneConfig, write_scenes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for the data, snapshots, features and predictions")
    p.add_argument("--iters", type=int, help="max_iter of every solver (default: the solver files')")
    p.add_argument("--batch", type=int, default=8, help="training batch size (default 8)")
    p.add_argument("--train", type=int, default=300, help="training scenes (default 300)")
    p.add_argument("--val", type=int, default=100, help="validation scenes (default 100)")
    p.add_argument("--radius", type=float, action="append", help="boundary radii (default 1 and 3)")
    p.add_argument("--only", choices=("embs",) + VARIANTS, action="append", help="train only these (repeatable)")
    p.add_argument("--controls", action="store_true",
                   help="also train and score the controls of the CRF's extra iterations: segaware_more (the "
                        "segaware net trained on for segaware_crf's max_iter, no CRF) and plain_more (likewise)")
    p.add_argument("--ship", action="store_true",
                   help="copy the final caffemodels to configs/scenes/<net>.caffemodel (what `caffe-compat demo` loads)")
    p.add_argument("--seed", type=int, default=None,
                   help="replace every solver's random_seed (weight fillers, data order, crops): another "
                        "training run on the same data, to see the spread over seeds")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    radii = args.radius or [1.0, 3.0]
    work = Path(args.work).resolve()
    data, snaps = work / "data", work / "snapshots"
    snaps.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not (data / "scenes.json").is_file():
        write_scenes(data, SceneConfig(num_train=args.train, num_val=args.val), progress=not args.no_progress)
    todo = set(args.only or ("embs",) + VARIANTS)
    defs = _defines(data, snaps, TRAIN_CROP, args.batch)
    kw = {"iters": args.iters, "progress": not args.no_progress, "seed": args.seed}
    model: Dict[str, Path] = {}

    def previous(name: str) -> Path:
        if name not in model:  # trained in an earlier run
            found = sorted(snaps.glob(f"{name}_iter_*.caffemodel"), key=lambda q: int(q.stem.rsplit("_", 1)[1]))
            if not found:
                raise RuntimeError(f"{name} is needed but was neither trained now nor found in {snaps}")
            model[name] = found[-1]
        return model[name]

    if "embs" in todo:
        model["embs"] = train("embs", defs, **kw)
    if "plain" in todo:
        model["plain"] = train("plain", defs, **kw)
    if "segaware" in todo:
        model["segaware"] = train("segaware", defs, [previous("embs")], **kw)
    if "segaware_crf" in todo:
        model["segaware_crf"] = train("segaware_crf", defs, [previous("segaware")], **kw)
    results = {v: evaluate(v, previous(v), data, work, radii) for v in VARIANTS if v in todo}
    if args.controls:
        from caffe_compat.solver.config import read_solver

        more = args.iters or read_solver(CONFIGS / "segaware_crf_solver.prototxt", defs).param.max_iter
        for v in ("plain", "segaware"):
            w = train(v, defs, [previous(v)], iters=more, progress=kw["progress"], prefix=str(snaps / f"{v}_more"),
                      seed=args.seed)
            results[f"{v}_more"] = evaluate(v, w, data, work, radii)
    if results:
        atomic_write(work / f"results_{'_'.join(results)}.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    if args.ship:
        for name in ("embs",) + VARIANTS:
            src = previous(name)
            atomic_write(CONFIGS / f"{name}.caffemodel", lambda tmp, src=src: shutil.copyfile(src, tmp))
            log.info("shipped %s as %s", src, CONFIGS / f"{name}.caffemodel")
    print(table(results, radii))
    print(f"\n(val: {args.val} scenes; total wall time {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
