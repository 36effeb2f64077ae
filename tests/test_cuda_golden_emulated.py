"""The golden layer cases of the fork whose layers use a CUDA kernel, run on the kernels (CPU-emulated).

Same cases, tolerances and comparison as test_golden_layers.py, but every custom operation
dispatches to caffe_compat/kernels through the emulator: Im2dist, Im2parity, DistLoss, the
segmentation-aware block (Im2dist) and NormConvMeanfield (distances, softmaxes, masked sums).
"""
from __future__ import annotations

import numpy as np
import pytest

from cuda_support import ON_GPU, kernel_backend, on_kernels
from golden import GOLDEN, assert_results, golden_index, run_case, set_params, template_defines

import caffe_compat

KERNEL_LAYERS = ("Im2dist", "Im2parity", "DistLoss", "NormConvMeanfield", "NormConv")
ALL_CASES = golden_index("layers")
KERNEL_CASES = {k for k, v in ALL_CASES.items() if any(t in v["layer_type"] for t in KERNEL_LAYERS)}
# on a GPU (tools/gpu_check.py) every layer case runs on CUDA; emulated, only the kernel layers'
CASES = ALL_CASES if ON_GPU else {k: ALL_CASES[k] for k in KERNEL_CASES}


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
        results = run_case(net, npz, check_backward=meta.get("backward", True))
        if meta["layer_type"] == "DummyData":    # recorded after two forwards (see test_golden_layers)
            results = run_case(net, npz, check_backward=False)
    if case in KERNEL_CASES:
        assert sum(backend.launches.values()) > before, "no kernel ran"
    assert_results(results)
