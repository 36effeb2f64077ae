"""The CUDA kernels, executed on the CPU by the emulator, against the torch path.

Every operation that dispatches to a kernel is run twice on the same random inputs: once on the
torch path (the reference) and once inside ``emulate_on_cpu`` (the kernels, built with g++ from
the same .cu sources a GPU compiles).  Sizes are odd and small, batch 2, with padding, stride and
dilation; inputs are also given non-contiguous.  float64 gradients are also checked with
``gradcheck`` through the kernels.  Each test also asserts that the kernels really ran.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cuda_support import ON_GPU, kernel_backend, on_kernels, run_both

from caffe_compat import cuda
from caffe_compat.layers.geometry import ConvGeometry
from caffe_compat.ops import dist_loss as dl
from caffe_compat.ops import im2dist as i2d
from caffe_compat.ops import im2parity as i2p
from caffe_compat.ops import meanfield as mf
from caffe_compat.ops import norm_conv as nc
from caffe_compat._cuda_emu import EmulatorError

GEOMS = [
    ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1)),
    ConvGeometry((3, 5), (2, 1), (2, 3), (2, 1)),     # stride, pad, dilation, non-square
    ConvGeometry((5, 3), (1, 2), (0, 1), (1, 3)),     # no pad in h: centres outside nothing
    ConvGeometry((3, 3), (1, 1), (3, 3), (1, 1)),     # pad > k//2: centre-outside columns
    ConvGeometry((3, 3), (1, 1), (1, 1), (0, 0)),     # dilation 0 (NormConvMeanfield's default)
]
IDS = ["k3p1", "k3x5_s2x1_p2x3_d2x1", "k5x3_s1x2_p0x1_d1x3", "k3p3", "k3p1_d0"]
TOL = {torch.float32: dict(rtol=2e-6, atol=2e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def _noncontig(t: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous tensor (a transposed copy, transposed back)."""
    return t.transpose(2, 3).contiguous().transpose(2, 3)


_both = run_both


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geom", GEOMS, ids=IDS)
def test_window_distances_forward_bitwise(geom, dtype):
    torch.manual_seed(1)
    x = _noncontig(torch.randn(2, 4, 9, 11, dtype=dtype))
    for norm in (nc.L1, nc.L2):
        for rc, rb in ((False, False), (True, False), (False, True), (True, True)):
            ref, got, n = _both(nc.window_distances, x, geom, norm, rc, rb)
            assert n == 1
            # same summation order as the torch path: identical bits, float32 included
            assert torch.equal(ref, got), (norm, rc, rb, (ref - got).abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geom", GEOMS, ids=IDS)
def test_window_distances_backward(geom, dtype):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 11, dtype=dtype)
    x[0, :, 2, 3] = x[0, :, 2, 4]           # exact L1 ties: sign(0) = 0
    dD = _noncontig(torch.randn(2, geom.taps, *geom.output_size(8, 11), dtype=dtype))
    for norm in (nc.L1, nc.L2):
        ref, got, n = _both(nc.window_distances_backward, x, dD, geom, norm)
        assert n == 1
        torch.testing.assert_close(got, ref, **TOL[dtype])


@pytest.mark.parametrize("geom", GEOMS[1:3], ids=IDS[1:3])
def test_im2dist_gradcheck_through_kernels(geom):
    torch.manual_seed(3)
    with on_kernels() as dev:
        x = torch.randn(2, 2, 5, 6, dtype=torch.float64, device=dev, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: i2d.im2dist(t, geom, "L2", True, True), (x,))
        # L1 away from ties (random normals have none)
        assert torch.autograd.gradcheck(lambda t: i2d.im2dist(t, geom, "L1"), (x,), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geom", GEOMS[:4], ids=IDS[:4])   # (Im2parity layers have dilation >= 1)
def test_im2parity(geom, dtype):
    torch.manual_seed(4)
    lab = torch.randint(0, 3, (2, 2, 9, 10)).to(dtype)
    lab[:, :, 0] = 255
    lab[1, 1, 3, 3] = 1.7                    # truncation: 1.7 == 1
    lab[0, 1, 4, 4] = -0.5                   # -0.5 == 0
    lab = _noncontig(lab)
    for ign in (255, 2 ** 32 - 1):           # and a uint32 wrapping to -1
        ref, got, n = _both(i2p.im2parity, lab, geom, ign)
        assert n == 1 and torch.equal(ref, got)
    if not i2p.centre_outside_any(9, 10, geom):      # else ignore_label is required
        ref, got, n = _both(i2p.im2parity, lab, geom, None)
        assert n == 1 and torch.equal(ref, got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ignore,first", [(255, False), (None, False), (255, True)])
def test_dist_loss(dtype, ignore, first):
    torch.manual_seed(5)
    dist = (torch.rand(3, 9, 5, 7, dtype=dtype) * 4)
    parity = torch.randint(0, 2, dist.shape).to(dtype)
    parity[0, 0] = 255
    parity[1, 2, 0, :3] = torch.tensor([0.6, -0.4, 1.9], dtype=dtype)
    dist, parity = _noncontig(dist), _noncontig(parity)

    def loss_and_grad(d, p):
        d = d.clone().requires_grad_()
        loss = dl.dist_loss(d, p, 0.5, 2.0, ignore, first)
        (loss * 0.5).backward()              # the loss weight is ignored by the gradient
        return loss.detach(), d.grad

    (lr, gr), (lg, gg), n = _both(loss_and_grad, dist, parity)
    assert n == 2
    torch.testing.assert_close(lg, lr, **TOL[dtype])
    assert torch.equal(gg, gr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geom", GEOMS, ids=IDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["depthwise", "weighted"])
def test_masked_window_sum_forward_backward(geom, dtype, weighted):
    torch.manual_seed(6)
    N, C, H, W = 2, 4, 9, 10
    Ho, Wo = geom.output_size(H, W)
    group = 2 if weighted else 1
    img = _noncontig(torch.randn(N, C, H, W, dtype=dtype))
    A = torch.rand(N, geom.taps, Ho, Wo, dtype=dtype)
    w = torch.randn(6, C // group, *geom.kernel, dtype=dtype) if weighted else None
    gy = torch.randn(N, 6 if weighted else C, Ho, Wo, dtype=dtype)

    def run(img, A, w):
        leaves = [t.clone().requires_grad_() for t in (img, A)] + ([w.clone().requires_grad_()] if w is not None else [])
        y = nc.masked_window_sum(leaves[0], leaves[1], geom, leaves[2] if w is not None else None, group)
        y.backward(gy.to(y.device))
        return [y.detach()] + [t.grad for t in leaves]

    ref, got, n = _both(run, img, A, w)
    assert n >= 3
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, **TOL[dtype])


@pytest.mark.parametrize("weighted", [False, True], ids=["depthwise", "weighted"])
def test_masked_window_sum_gradcheck_through_kernels(weighted):
    torch.manual_seed(7)
    geom = GEOMS[1]
    img = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    A = torch.rand(2, geom.taps, *geom.output_size(5, 6), dtype=torch.float64, requires_grad=True)
    args = (img, A) + ((torch.randn(3, 2, *geom.kernel, dtype=torch.float64, requires_grad=True),) if weighted else ())
    with on_kernels() as dev:
        args = [a.detach().to(dev).requires_grad_() for a in args]
        assert torch.autograd.gradcheck(lambda *t: nc.masked_window_sum(t[0], t[1], geom, *t[2:]), args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channel_softmax(dtype):
    torch.manual_seed(8)
    x = _noncontig(torch.randn(2, 5, 7, 9, dtype=dtype) * 3)
    gy = torch.randn(2, 5, 7, 9, dtype=dtype)

    def run(x):
        x = x.clone().requires_grad_()
        y = mf.ChannelSoftmax.apply(x)
        y.backward(gy.to(y.device))
        return y.detach(), x.grad

    (yr, gr), (yg, gg), n = _both(run, x)
    assert n == 2
    torch.testing.assert_close(yg, yr, **TOL[dtype])
    torch.testing.assert_close(gg, gr, **TOL[dtype])
    with on_kernels() as dev:
        x64 = torch.randn(2, 4, 3, 5, dtype=torch.float64, device=dev, requires_grad=True)
        assert torch.autograd.gradcheck(mf.ChannelSoftmax.apply, (x64,))


def test_normconv_mask_and_layer_through_kernels():
    """The whole NormConv (mask + masked sum + scale gradient) and a CRF run on the kernels."""
    torch.manual_seed(9)
    geom = GEOMS[1]
    emb = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    img = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, *geom.kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    with on_kernels() as dev:
        args = [a.detach().to(dev).requires_grad_() for a in (img, emb, w, b, s)]
        assert torch.autograd.gradcheck(
            lambda *t: nc.norm_conv(t[0], t[1], t[2], t[3], t[4], geom, 1, nc.L2, True, True), args)

    C, H, W = 3, 7, 9
    kern = mf.MeanfieldKernel(ConvGeometry((5, 5), (1, 1), (4, 4), (2, 2)), 0.8)
    spat = mf.MeanfieldKernel(ConvGeometry((3, 3), (1, 1), (0, 0), (0, 0)), 1.3)   # dilation 0
    args = [torch.randn(2, C, H, W, dtype=torch.float64), torch.randn(2, C, H, W, dtype=torch.float64),
            torch.randn(2, 5, H, W, dtype=torch.float64), torch.randn(2, 2, H, W, dtype=torch.float64),
            torch.randn(C, C, dtype=torch.float64), torch.randn(C, C, dtype=torch.float64),
            -torch.eye(C, dtype=torch.float64)]
    args = [a.requires_grad_() for a in args]

    def crf(*t):
        return mf.normconv_meanfield(*t, num_iterations=3, bilateral=kern, spatial=spat)

    gq = torch.randn(2, C, H, W, dtype=torch.float64)

    def run(*t):
        q = crf(*t)
        q.backward(gq.to(q.device))
        return [q.detach()] + [a.grad.clone() for a in t]

    ref, got, n = _both(run, *args)
    assert n > 10
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_emulator_checks_argument_types():
    if ON_GPU:
        pytest.skip("emulator only")
    emu = kernel_backend()
    x = torch.zeros(4)
    with pytest.raises(EmulatorError, match="argument 2"):
        emu.run("softmax_axis1_fwd_f32", (1, 1, 1), (4, 1, 1), (x, x, 1, np.int32(1), np.int64(4)))
    with pytest.raises(EmulatorError, match="float64 tensor"):
        emu.run("softmax_axis1_fwd_f32", (1, 1, 1), (4, 1, 1), (x.double(), x, np.int32(1), np.int32(1), np.int64(4)))
    with pytest.raises(EmulatorError, match="takes 5"):
        emu.run("softmax_axis1_fwd_f32", (1, 1, 1), (4, 1, 1), (x, x))


def test_cuda_tensors_without_cupy_warn_once(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)       # import cupy -> ImportError
    monkeypatch.setattr(cuda, "_cupy_backend", None)
    monkeypatch.setattr(cuda, "_cupy_missing_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cuda._get_cupy_backend() is None
        assert cuda._get_cupy_backend() is None
    assert len([w for w in caught if "torch path" in str(w.message)]) == 1


def test_dispatch_rules():
    if ON_GPU:
        pytest.skip("emulator only")
    x = torch.zeros(2)
    assert cuda.backend_for(x) is None                    # CPU: torch path
    assert cuda.backend_for(x.half()) is None
    emu = kernel_backend()
    with cuda.emulate_on_cpu(emu):
        assert cuda.backend_for(x) is emu
        assert cuda.backend_for(x.half()) is None         # no half kernels: torch path
        assert cuda.backend_for(x.to("meta")) is None
    assert cuda.backend_for(x) is None
