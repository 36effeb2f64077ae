"""``caffe-compat test``: what ``caffe test`` does in the original ``test_res.sh``.

The TEST net runs over its own data layer's list; its MatWrite layers write the
features.  Differences from ``caffe test`` that a user sees:

* resumable: an iteration whose MatWrite files all exist is skipped without
  running the net (MatWrite itself never overwrites a file either);
* the data layer's batches are prepared by a ``torch.utils.data.DataLoader``
  with worker processes while the net runs;
* under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) rank ``r`` runs iterations
  ``i`` with ``i % WORLD_SIZE == r``: each iteration is independent in TEST
  phase, so the files are identical to a single-process run;
* ``--list``/``--root``/``--out`` override the data layer's ``source`` and
  ``root_folder`` and the MatWrite prefix.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import CaffeCompatError, DataError, NetError
from . import add_define_option, check_device
from .common import build_net, load_weights, resolve_defines

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "test", help="run a TEST net over its data layer's list, writing MatWrite features (caffe test)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prototxt", help="TEST net prototxt (e.g. res/test.prototxt; ${NAME} filled by --define)")
    p.add_argument("weights", help="caffemodel or .caffemodel.h5 (layers missing from it keep their fillers)")
    add_define_option(p)
    p.add_argument("--iterations", type=int, help="number of forward passes (default: the list length / batch)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N); under torchrun cuda uses LOCAL_RANK")
    p.add_argument("--list", dest="list_file", help="override the data layer's list file (image_data_param.source)")
    p.add_argument("--root", help="override the data layer's root_folder (prepended verbatim, as Caffe)")
    p.add_argument("--out", help="override the MatWrite prefix: a folder, created if missing (with several "
                                  "MatWrite layers, one subfolder per layer name)")
    p.add_argument("--ids", help="override the MatWrite id list (mat_write_param.source)")
    p.add_argument("--workers", type=_non_negative, default=2, help="DataLoader worker processes (0: load in-process)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_test)


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return n


class _Batches(Dataset):
    """Batch ``i`` of a data layer (read by a worker's copy of the layer)."""

    def __init__(self, layer, iterations: List[int]):
        self.layer = layer
        self.iterations = iterations

    def __len__(self) -> int:
        return len(self.iterations)

    def __getitem__(self, k: int):
        i = self.iterations[k]
        try:
            return i, self.layer.read_batch_at(i * self.layer.batch_size)
        except CaffeCompatError as e:
            # Hand the error to the main process, which re-raises it as it is (a
            # DataLoader would wrap it in a worker traceback).
            return i, e


def _rank_world():
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise CaffeCompatError(f"RANK / WORLD_SIZE must be integers, got RANK={os.environ.get('RANK')!r} "
                               f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}") from None


def run_test(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    rank, world = _rank_world()
    if world < 1 or not 0 <= rank < world:
        raise CaffeCompatError(f"RANK={rank} / WORLD_SIZE={world} from the environment are not a valid shard")
    device = check_device(args.device)
    if device.startswith("cuda") and world > 1 and ":" not in device:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    net = build_net(args.prototxt, phase="TEST", defines=resolve_defines(args, args.prototxt))
    # As caffe test: layers the file lacks keep their fillers (logged); shape mismatches are errors.
    load_weights(net, args.weights, args.prototxt, lenient=True, strict_mismatch=True)
    net.to(device)
    net.eval()
    net.free_blobs = True   # only the outputs are read after a forward: drop intermediates early
    data_layers = [l for l in net.layers if hasattr(l, "read_batch_at")]
    writers = [l for l in net.layers if hasattr(l, "set_prefix") and hasattr(l, "filename")]
    if len(data_layers) != 1:
        raise NetError(f"{args.prototxt}: `test` needs exactly one list-driven data layer "
                       f"(ImageSegData / ImageData / TwoImageData), found {len(data_layers)}")
    data = data_layers[0]
    if args.list_file or args.root:
        data.set_source(args.list_file, args.root)
    if getattr(data, "shuffle", False):
        raise NetError(f"{args.prototxt}: layer '{data.name}' has shuffle: true; `test` needs a fixed order")
    for w in writers:
        if args.out:
            # One folder per MatWrite layer when there are several: they name files alike.
            folder = Path(args.out) / w.name if len(writers) > 1 else Path(args.out)
            folder.mkdir(parents=True, exist_ok=True)
            w.set_prefix(os.path.join(str(folder), ""))
        if args.ids:
            w.set_source(args.ids)
        folder = os.path.dirname(w.prefix) or "."
        if not os.path.isdir(folder):
            raise DataError(f"MatWrite '{w.name}': output folder {folder} does not exist (create it, or use --out)")
    n_items = data.num_items
    iterations = args.iterations if args.iterations is not None else -(-n_items // data.batch_size)
    if iterations <= 0:
        raise CaffeCompatError(f"--iterations must be positive, got {iterations}")
    mine = [i for i in range(iterations) if i % world == rank]

    def done(i: int) -> bool:
        """Nothing left to do for iteration i: all its MatWrite files exist, or it writes none."""
        if not writers:
            return False
        files = [w.filename(i, b) for w in writers if i % w.period == 0
                 for b in range(len(net.bottom_names[_index(net, w)]))]
        return all(os.path.exists(f) for f in files)

    if not writers and not net.outputs:
        log.warning("%s has neither MatWrite layers nor outputs: `test` will compute nothing visible",
                    args.prototxt)
    todo = [i for i in mine if not done(i)]
    skipped = len(mine) - len(todo)
    if skipped:
        log.info("%d of %d iterations already have their features: skipped", skipped, len(mine))
    loader = DataLoader(_Batches(data, todo), batch_size=None, shuffle=False, num_workers=max(args.workers, 0))
    sums = {}
    with torch.inference_mode():
        for i, tops in tqdm(loader, total=len(todo), disable=args.no_progress or not todo,
                            desc=f"test rank {rank}/{world}" if world > 1 else "test", unit="it"):
            if isinstance(tops, CaffeCompatError):
                raise tops
            data.feed(tops)
            for w in writers:
                w.iter = i
            outputs = net.forward()
            for name, v in outputs.items():  # caffe test's per-output scores
                v = v.detach().double().reshape(-1).cpu()
                sums[name] = v if name not in sums else sums[name] + v
    log.info("ran %d iterations (%d skipped) of %s", len(todo), skipped, args.prototxt)
    if sums:  # as caffe test: the mean over the iterations of every element of every output
        lines = []
        for name, total in sums.items():
            mean = total / len(todo)
            vals = mean.tolist() if mean.numel() <= 16 else [float(mean.mean())]
            suffix = "" if mean.numel() <= 16 else f" (mean of {mean.numel()} elements)"
            lines += [f"{name} = {v:.6g}{suffix}" for v in vals]
        sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _index(net, layer) -> int:
    for i, l in enumerate(net.layers):
        if l is layer:
            return i
    raise NetError("internal: layer not in net")
