"""Helpers shared by the golden tests (the fork's outputs in ../shared/reference/golden): load a case, run it, compare.

Relative error of an array ``a`` against the golden ``b`` is
``max|a - b| / max(max|b|, 1e-30)`` (0 when both are all zero).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from conftest import REFERENCE_DIR

GOLDEN = REFERENCE_DIR / "golden"
FWD_TOL = 1e-5
BWD_TOL = 1e-4


def golden_index(sub: str) -> Dict[str, dict]:
    """``golden/<sub>/INDEX.json``: ``{}`` when the whole reference folder is absent (the tests then
    skip); a missing index inside an existing reference folder raises (a collection error)."""
    if not REFERENCE_DIR.exists():
        return {}
    p = GOLDEN / sub / "INDEX.json"
    if not p.exists():
        raise FileNotFoundError(f"reference material incomplete: {p} is missing")
    return json.loads(p.read_text())


def template_defines() -> Dict[str, str]:
    """Values for the ``${GOLDEN_*}`` placeholders of golden prototxts."""
    return {"GOLDEN_DATA": str(GOLDEN / "data"), "GOLDEN_E2E": str(GOLDEN / "e2e")}


def rel_err(a, b, floor: float = 0.0) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != golden {b.shape}"
    scale = max(np.abs(b).max() if b.size else 0.0, floor)
    diff = np.abs(a - b).max() if b.size else 0.0
    if diff == 0.0:
        return 0.0
    return float(diff / max(scale, 1e-30))


def to_np(t) -> np.ndarray:
    if t is None:
        return None
    return t.detach().cpu().numpy()


def set_params(net, npz) -> None:
    """Copy ``param/<layer>/<i>`` arrays into the net."""
    with torch.no_grad():
        for k in npz.files:
            if not k.startswith("param/"):
                continue
            lname, i = k[len("param/"):].rsplit("/", 1)
            blob = net.params[lname][int(i)]
            arr = torch.from_numpy(np.asarray(npz[k]))
            assert tuple(arr.shape) == tuple(blob.shape), f"{k}: golden shape {arr.shape} vs net {tuple(blob.shape)}"
            blob.copy_(arr.to(blob.dtype))


def force_recorded_blobs(net, npz, measured, skip_blob=lambda name: "_split_" in name):
    """Make every recorded blob take the fork's value, keeping our autograd graph.

    A forward hook on the last layer writing each recorded blob first measures
    the layer's own output ``v`` against the fork's ``G`` (``measured["out/<blob>"]``
    = :func:`rel_err`), then replaces it by ``v + (G - v).detach()``: the value
    is the fork's, the gradient flows through our layer.  Each layer then
    computes from exactly the fork's inputs, so ``measured`` is every layer's
    error in situ (its own rounding only), and the backward takes the same
    discrete decisions (MAX routing, ReLU masks) as the fork, instead of
    amplifying float32 noise accumulated over a 100-layer trunk.  (``net.blobs``
    afterwards holds the fork's values: comparing it with the golden measures
    nothing.)  Returns the hook handles.
    """
    last_writer = {}
    for i, tops in enumerate(net.top_names):
        for t in tops:
            last_writer[t] = i
    handles = []
    for i, layer in enumerate(net.layers):
        tops = net.top_names[i]
        forced = {j: torch.from_numpy(np.asarray(npz["out/" + t])) for j, t in enumerate(tops)
                  if last_writer.get(t) == i and ("out/" + t) in npz.files and not skip_blob(t)}
        if not forced:
            continue

        def hook(module, args, output, forced=forced, tops=tops):
            out = list(output)
            for j, g in forced.items():
                v = out[j]
                measured["out/" + tops[j]] = rel_err(to_np(v), g.numpy())
                out[j] = v + (g.to(v.dtype) - v).detach()
            return tuple(out)

        handles.append(layer.register_forward_hook(hook))
    return handles


def _param_scales(npz):
    """Per layer, the largest golden |param diff| over all its blobs."""
    scales = {}
    for k in npz.files:
        if k.startswith("param_diff/"):
            lname = k[len("param_diff/"):].rsplit("/", 1)[0]
            scales[lname] = max(scales.get(lname, 0.0), float(np.abs(npz[k]).max()) if npz[k].size else 0.0)
    return scales


def run_case(net, npz, check_backward: bool = True, skip_blob=lambda name: "_split_" in name):
    """Forward (and backward) a golden case; returns a list of (key, rel error, tolerance).

    Parameter diffs are compared relative to ``max(max|golden|, 1e-3 * S)``
    where ``S`` is the largest golden diff of any blob of the same layer: a
    diff a thousand times smaller than its layer's other diffs is float32
    rounding of a cancelling sum (e.g. the embedding bias feeding Im2dist,
    whose exact gradient is 0 by translation invariance; the fork recorded
    ~1e-6 next to weight diffs of ~7e3), and only an absolute comparison at
    the layer's float32 resolution is meaningful for it.
    """
    inputs = {k[3:]: torch.from_numpy(np.asarray(npz[k])) for k in npz.files if k.startswith("in/")}
    net.forward(**inputs)
    results = []
    for k in npz.files:
        if not k.startswith("out/"):
            continue
        name = k[4:]
        if skip_blob(name):
            continue
        assert name in net.blobs, f"blob {name!r} of the golden is not in the net (blobs: {list(net.blobs)})"
        results.append((k, rel_err(to_np(net.blobs[name]), npz[k]), FWD_TOL))
    if not check_backward:
        return results
    diffs = {k[9:]: torch.from_numpy(np.asarray(npz[k])) for k in npz.files if k.startswith("top_diff/")}
    if not diffs:
        return results
    for p in net.parameters():
        p.grad = None
    in_grads = net.backward(**diffs)
    scales = _param_scales(npz)
    for k in npz.files:
        if k.startswith("bottom_diff/"):
            name = k[len("bottom_diff/"):]
            g = in_grads.get(name)
            g = np.zeros_like(npz[k]) if g is None else to_np(g)
            results.append((k, rel_err(g, npz[k]), BWD_TOL))
        elif k.startswith("param_diff/"):
            lname, i = k[len("param_diff/"):].rsplit("/", 1)
            p = net.params[lname][int(i)]
            g = np.zeros(tuple(p.shape), np.float32) if p.grad is None else to_np(p.grad)
            results.append((k, rel_err(g, npz[k], floor=1e-3 * scales.get(lname, 0.0)), BWD_TOL))
    return results


def assert_results(results) -> None:
    bad = [f"{k}: rel err {e:.3g} > {tol:g}" for k, e, tol in results if not (e <= tol)]
    assert not bad, "mismatch vs golden:\n" + "\n".join(bad)
