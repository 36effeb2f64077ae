"""The golden layer cases of the fork whose layers use a CUDA kernel, run on the kernels (CPU-emulated).

Same cases, tolerances and comparison as test_golden_layers.py, but every custom operation
dispatches to caffe_compat/kernels through the emulator: Im2dist, Im2parity, DistLoss, the
segmentation-aware block (Im2dist) and NormConvMeanfield (distances, softmaxes, masked sums).
"""
from __future__ import annotations

import numpy as np
import pytest

from cuda_support import kernel_backend, on_kernels
from golden import GOLDEN, assert_results, golden_index, run_case, set_params, template_defines

import caffe_compat

KERNEL_LAYERS = ("Im2dist", "Im2parity", "DistLoss", "NormConvMeanfield", "NormConv")
CASES = {k: v for k, v in golden_index("layers").items()
         if any(t in v["layer_type"] for t in KERNEL_LAYERS)}


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
    assert sum(backend.launches.values()) > before, "no kernel ran"
    assert_results(results)
