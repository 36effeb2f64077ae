"""The fused segmentation-aware convolution on the CUDA kernels vs its torch reference.

``segaware_conv2d`` dispatches through :mod:`caffe_compat.ops.dispatch`; its ``"cuda"``
implementation (:mod:`caffe_compat.ops.segaware_conv_cuda`: one GEMM + the masked shift-sum
kernel) runs here on the CPU emulator (or on a GPU under tools/gpu_check.py) and is compared
with :class:`~caffe_compat.ops.segaware_conv.TorchSegAwareConv` on the same inputs.
"""
from __future__ import annotations

import pytest
import torch

from cuda_support import on_kernels, run_both

from caffe_compat.ops.segaware_conv import segaware_conv2d, segaware_conv2d_unfold
from caffe_compat.ops.window import Window

CASES = [  # (window, groups, with bias)
    (Window((3, 3), (1, 1), (1, 1), (1, 1)), 1, True),
    (Window((3, 3), (1, 1), (2, 2), (2, 2)), 2, False),       # the configs' dilated form, groups
    (Window((3, 5), (2, 1), (1, 3), (1, 2)), 1, True),        # stride, non-square, odd sizes
    (Window((5, 3), (1, 2), (3, 0), (2, 1)), 3, True),        # pad > k//2 in h, none in w
]
IDS = ["k3p1", "k3p2d2_g2", "k3x5_s2x1", "k5x3_p3x0_g3"]
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-11, atol=1e-11)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("window,groups,with_bias", CASES, ids=IDS)
def test_segaware_conv2d_forward_backward(window, groups, with_bias, dtype):
    torch.manual_seed(11)
    N, C, H, W, O = 2, 6, 9, 11, 6
    Ho, Wo = window.output_size(H, W)
    x = torch.randn(N, C, H, W, dtype=dtype).transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous
    mask = torch.rand(N, window.taps, Ho, Wo, dtype=dtype)
    mask[0, 0, 0, :3] = torch.tensor([1e-41, -1e-42, 0.0], dtype=dtype)  # subnormals are flushed to 0
    w = torch.randn(O, C // groups, *window.kernel, dtype=dtype)
    b = torch.randn(O, dtype=dtype) if with_bias else None
    gy = torch.randn(N, O, Ho, Wo, dtype=dtype)

    def run(x, mask, w, b):
        leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, mask, w, b)]
        y = segaware_conv2d(*leaves, window, groups)
        y.backward(gy.to(y.device))
        return [y.detach()] + [t.grad for t in leaves if t is not None]

    ref, got, launches = run_both(run, x, mask, w, b)
    assert launches >= 3                      # forward + the two backward gathers
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, **TOL[dtype])
    # and the fork's own formulation (unfold x tiled mask, then conv) agrees too
    torch.testing.assert_close(got[0], segaware_conv2d_unfold(x, mask.masked_fill(mask.abs() < 1e-30, 0), w, b,
                                                              window, groups), **TOL[dtype])


def test_segaware_conv2d_gradcheck_through_kernels():
    torch.manual_seed(12)
    window = Window((3, 3), (2, 1), (2, 1), (2, 1))
    with on_kernels() as dev:
        x = torch.randn(2, 4, 6, 5, dtype=torch.float64, device=dev, requires_grad=True)
        mask = torch.rand(2, 9, *window.output_size(6, 5), dtype=torch.float64, device=dev, requires_grad=True)
        w = torch.randn(4, 2, 3, 3, dtype=torch.float64, device=dev, requires_grad=True)
        b = torch.randn(4, dtype=torch.float64, device=dev, requires_grad=True)
        assert torch.autograd.gradcheck(lambda *t: segaware_conv2d(*t, window, 2), (x, mask, w, b))
