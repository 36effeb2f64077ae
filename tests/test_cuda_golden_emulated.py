"""The golden layer cases of the fork whose layers use a CUDA kernel, run on the kernels (CPU-emulated).

Same cases, tolerances and comparison as test_golden_layers.py (and the in-situ whole-net test of
test_golden_nets.py), but every custom operation
dispatches to caffe_compat/kernels through the emulator: Im2dist, Im2parity, DistLoss, the
segmentation-aware block (Im2dist) and NormConvMeanfield (distances, softmaxes, masked sums).
"""
from __future__ import annotations

import numpy as np
import pytest

from cuda_support import ON_GPU, kernel_backend, on_kernels
from golden import GOLDEN, assert_results, force_recorded_blobs, golden_index, run_case, set_params, template_defines

import caffe_compat

KERNEL_LAYERS = ("Im2dist", "Im2parity", "DistLoss", "NormConvMeanfield", "NormConv")
ALL_CASES = golden_index("layers")
KERNEL_CASES = {k for k, v in ALL_CASES.items() if any(t in v["layer_type"] for t in KERNEL_LAYERS)}
# on a GPU (tools/gpu_check.py) every layer case runs on CUDA; emulated, only the kernel layers'
CASES = ALL_CASES if ON_GPU else {k: ALL_CASES[k] for k in KERNEL_CASES}


def _skip(net):
    """Blobs not compared: Caffe's splits, and those a fused chain never computes (net fused, as
    by default: the segmentation-aware blocks then run on the fused op's kernels)."""
    hidden = set(net.fusion_plan.hidden)
    return lambda name: name in hidden or "_split_" in name


@pytest.mark.parametrize("case", sorted(CASES) or ["<no golden layers: reference absent>"])
def test_golden_layer_case_on_kernels(case):
    if case not in CASES:
        pytest.skip(f"reference material not available: {GOLDEN / 'layers'} does not exist")
    meta = CASES[case]
    npz = np.load(GOLDEN / "layers" / meta["file"])
    backend = kernel_backend()
    before = sum(backend.launches.values())
    with on_kernels() as dev:
        net = caffe_compat.Net.from_string(str(npz["prototxt"]), phase=meta.get("phase", "TEST"),
                                           defines=template_defines(), source=case)
        set_params(net, npz)
        net.to(dev)
        results = run_case(net, npz, check_backward=meta.get("backward", True), skip_blob=_skip(net))
        if meta["layer_type"] == "DummyData":    # recorded after two forwards (see test_golden_layers)
            results = run_case(net, npz, check_backward=False, skip_blob=_skip(net))
    if case in KERNEL_CASES:
        assert sum(backend.launches.values()) > before, "no kernel ran"
    assert_results(results)


# res's CRF (169-tap bilateral kernel) takes ~2 minutes under the serial emulator: GPU only (its
# NormConvMeanfield layer cases above run emulated in CI)
NET_NAMES = ["embs", "vgg", "res"] if ON_GPU else ["embs", "vgg"]


@pytest.mark.parametrize("name", NET_NAMES)
def test_golden_net_on_kernels(name):
    """The reduced whole-net goldens (golden/nets) with every custom operation on the kernels.

    embs and vgg run fused and end to end on their own activations (as test_golden_nets.py's
    free-run test; vgg's 14 segmentation-aware convolutions on the fused op's kernels); res (no
    fusable chain) runs with each layer fed the fork's recorded inputs (its in-situ test: float32
    drift over the ResNet trunk is not the kernels' business).
    """
    import json

    d = GOLDEN / "nets"
    if not d.exists():
        pytest.skip(f"reference material not available: {d} does not exist")
    meta = json.loads((d / f"{name}_reduced.json").read_text())
    npz = np.load(d / meta["files"]["npz"])
    backend = kernel_backend()
    before = dict(backend.launches)
    with on_kernels() as dev:
        net = caffe_compat.Net(d / meta["files"]["prototxt"], weights=d / meta["files"]["caffemodel"])
        net.to(dev)
        handles = force_recorded_blobs(net, npz) if name == "res" else []
        assert not (handles and net.fusion_plan), "in-situ forcing needs an unfused net"
        try:
            results = run_case(net, npz, check_backward=True, skip_blob=_skip(net))
        finally:
            for h in handles:
                h.remove()
    ran = {k for k, v in backend.launches.items() if v > before.get(k, 0)}
    assert ran, "no kernel ran"
    if name == "vgg":
        assert any(k.startswith("mss_fwd") for k in ran), "the fused convolutions did not use the kernel"
    # the one golden that is float32 rounding of the fork's own cancelling sum (test_golden_nets.py)
    results = [(k, e, 1e-3 if (name, k) == ("res", "param_diff/scaled_rgb/0") else tol) for k, e, tol in results]
    assert_results(results)
