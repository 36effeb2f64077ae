"""Tests of the segaware geometry layers: Im2col, Im2dist, Im2parity, DistLoss, ChannelReduce.

* every golden case of these layers, run layer by layer (independent of the net builder);
* exact comparison with naive loop implementations of LAYERS.md §2.2/§2.3 on random
  geometries (odd/even/non-square kernels, stride, dilation, pad > k/2, remove flags);
* float64 gradcheck of the custom Im2dist Function (L2; L1 away from ties) and Im2col;
* the explicit-formula check of DistLoss's deliberate non-derivative gradient;
* the fork behaviours that are easy to get wrong, and a clear error for each bad input.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe_compat import schema
from caffe_compat.errors import CaffeCompatError, LayerConfigError, ShapeError
from caffe_compat.layers.base import REGISTRY, BuildContext, shape_only
from caffe_compat.layers.geometry import ConvGeometry
from caffe_compat.layers import segaware
from caffe_compat.layers.segaware import ChannelReduce, DistLoss, Im2col, Im2dist, Im2parity
from caffe_compat.ops import im2dist as im2dist_mod
from caffe_compat.ops.dist_loss import dist_loss
from caffe_compat.ops.im2col import im2col
from caffe_compat.ops.im2dist import FLT_MAX_OVER_100, im2dist
from caffe_compat.ops.im2parity import im2parity

from conftest import REFERENCE_DIR, reference_path

GOLDEN_PREFIXES = ("im2col_", "im2dist_", "im2parity_", "distloss_", "channelreduce_")


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add overhead (a lot on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(text: str, *shapes, ctx=None):
    """Build the layer described by a LayerParameter text for the given bottom shapes."""
    lp = text_format.Merge(text, schema.LayerParameter())
    if not lp.bottom:  # default wiring: one bottom per shape, one top
        lp.bottom.extend(f"b{i}" for i in range(len(shapes)))
    if not lp.top:
        lp.top.append("t")
    return REGISTRY[lp.type](lp, [tuple(s) for s in shapes], ctx or BuildContext())


def rel_err(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if b.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def geom(k, s=1, p=0, d=1) -> ConvGeometry:
    pair = lambda v: tuple(v) if isinstance(v, tuple) else (v, v)  # noqa: E731
    return ConvGeometry(pair(k), pair(s), pair(p), pair(d))


def _golden_cases():
    try:
        index = json.loads(reference_path("golden", "layers", "INDEX.json").read_text())
    except BaseException:  # pytest.skip outside a test: collect nothing, if the reference is absent
        if REFERENCE_DIR.exists():
            raise
        return []
    return sorted(c for c in index if c.startswith(GOLDEN_PREFIXES))


# ----------------------------------------------------------------------------- goldens
@pytest.mark.parametrize("case", _golden_cases())
def test_golden_case(case):
    """Run the case's layers in order on the golden inputs; compare outputs and input gradients."""
    d = np.load(reference_path("golden", "layers", f"{case}.npz"))
    net = text_format.Merge(str(d["prototxt"]), schema.NetParameter())
    inputs = {k[3:]: torch.tensor(d[k], requires_grad=True) for k in d.files if k.startswith("in/")}
    blobs = dict(inputs)
    for lp in net.layer:
        layer = REGISTRY[lp.type](lp, [tuple(blobs[b].shape) for b in lp.bottom], BuildContext())
        tops = layer(*[blobs[b] for b in lp.bottom])
        assert isinstance(tops, tuple)
        blobs.update(zip(lp.top, tops))
    for key in d.files:
        if key.startswith("out/"):
            got = blobs[key[4:]]
            assert tuple(got.shape) == d[key].shape, key
            assert rel_err(got.detach(), d[key]) <= 1e-5, key
    diffs = [(blobs[k[9:]], torch.tensor(d[k])) for k in d.files if k.startswith("top_diff/")]
    if any(t.requires_grad for t, _ in diffs):
        torch.autograd.backward([t for t, _ in diffs], [g for _, g in diffs])
    for key in d.files:
        if key.startswith("bottom_diff/"):
            assert rel_err(inputs[key[12:]].grad, d[key]) <= 1e-4, key


def test_golden_cases_found():
    cases = _golden_cases()
    if not cases:
        pytest.skip("reference goldens not available")
    assert len(cases) == 34


# ----------------------------------------------------------------------------- naive references
def naive_taps(g: ConvGeometry, h_, w_):
    """Every ``(k, y, xx, (hy, hx), (cy, cx))``: tap ``k = i*kw + j`` of output ``(y, xx)``, the pixel it
    reads and the window centre, in loop order i, j, y, xx (pixels may lie outside the image)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.pad, g.dilation
    ho, wo = g.output_size(h_, w_)
    for i in range(kh):
        for j in range(kw):
            k = i * kw + j
            for y in range(ho):
                for xx in range(wo):
                    hy, hx = y * sh - ph + i * dh, xx * sw - pw + j * dw
                    cy, cx = y * sh - ph + (kh // 2) * dh, xx * sw - pw + (kw // 2) * dw
                    yield k, y, xx, (hy, hx), (cy, cx)


def naive_im2dist(x, g: ConvGeometry, l1, rc=False, rb=False):
    """Loop transcription of LAYERS.md §2.2 (float32 scalar arithmetic, channels in order)."""
    x = np.asarray(x, np.float32)
    n_, e_, h_, w_ = x.shape
    ho, wo = g.output_size(h_, w_)
    top = np.zeros((n_, g.taps, ho, wo), np.float32)
    big = np.float32(np.finfo(np.float32).max) / np.float32(100)
    for n in range(n_):
        for k, y, xx, (hy, hx), (cy, cx) in naive_taps(g, h_, w_):
            if not (0 <= cy < h_ and 0 <= cx < w_):
                continue
            if rc and (hy, hx) == (cy, cx):
                top[n, k, y, xx] = big
            elif 0 <= hy < h_ and 0 <= hx < w_:
                acc = np.float32(0)
                for e in range(e_):
                    dd = np.float32(x[n, e, cy, cx] - x[n, e, hy, hx])
                    acc = np.float32(acc + (abs(dd) if l1 else dd * dd * np.float32(0.5)))
                top[n, k, y, xx] = acc
            elif rb:
                top[n, k, y, xx] = big
    return top


def naive_im2dist_backward(x, gt, g: ConvGeometry, l1):
    """Loop transcription of the GPU-rule backward (float64 accumulation)."""
    x = np.asarray(x, np.float64)
    gt = np.asarray(gt, np.float64)
    n_, e_, h_, w_ = x.shape
    dx = np.zeros_like(x)
    for n in range(n_):
        for e in range(e_):
            for k, y, xx, (hy, hx), (cy, cx) in naive_taps(g, h_, w_):
                if not (0 <= cy < h_ and 0 <= cx < w_) or (hy, hx) == (cy, cx):
                    continue
                inside = 0 <= hy < h_ and 0 <= hx < w_
                d = x[n, e, cy, cx] - x[n, e, hy, hx] if inside else 0.0
                s = np.sign(d) if l1 else d
                dx[n, e, cy, cx] += s * gt[n, k, y, xx]
                if inside:
                    dx[n, e, hy, hx] -= s * gt[n, k, y, xx]
    return dx


def naive_im2parity(lab, g: ConvGeometry, ignore):
    lab = np.asarray(lab)
    n_, c_, h_, w_ = lab.shape
    ho, wo = g.output_size(h_, w_)
    top = np.full((n_, g.taps, ho, wo), np.nan, np.float32)
    for n in range(n_):
        for c in range(c_):
            for k, y, xx, (hy, hx), (cy, cx) in naive_taps(g, h_, w_):
                if not (0 <= cy < h_ and 0 <= cx < w_):
                    top[n, k, y, xx] = ignore
                    continue
                centre = int(lab[n, c, cy, cx])
                here = int(lab[n, c, hy, hx]) if (0 <= hy < h_ and 0 <= hx < w_) else 0
                if ignore is not None and ignore in (here, centre):
                    top[n, k, y, xx] = ignore
                else:
                    top[n, k, y, xx] = float(here == centre)
    return top


RANDOM_GEOMETRIES = [
    geom(3, 1, 1, 1), geom(3, 2, 1, 1), geom(3, 1, 2, 2), geom(3, 2, 2, 2), geom(3, 1, 3, 1),
    geom(2, 1, 0, 1), geom(2, 1, 1, 1), geom(4, 1, 2, 1), geom((2, 3), 1, (1, 0), 1),
    geom((3, 2), (1, 2), (2, 1), (2, 1)), geom(5, 1, 6, 3), geom(1, 1, 0, 1), geom((1, 3), 1, (0, 1), 1),
    geom(3, 3, 4, 2),
]


@pytest.mark.parametrize("gi", range(len(RANDOM_GEOMETRIES)))
def test_im2dist_matches_naive(gi):
    g = RANDOM_GEOMETRIES[gi]
    gen = torch.Generator().manual_seed(gi)
    x = torch.randn(2, 3, 6, 7, generator=gen)
    x[0, :, 2, 3] = x[0, :, 2, 4]  # an exact tie pair
    gt = torch.randn(2, g.taps, *g.output_size(6, 7), generator=gen)
    for l1 in (True, False):
        for rc, rb in ((False, False), (True, False), (False, True), (True, True)):
            xr = x.clone().requires_grad_()
            y = im2dist(xr, g, "L1" if l1 else "L2", rc, rb)
            ref = naive_im2dist(x.numpy(), g, l1, rc, rb)
            np.testing.assert_array_equal(y.detach().numpy(), ref)  # bit-exact forward
            y.backward(gt)
            np.testing.assert_allclose(xr.grad.numpy(), naive_im2dist_backward(x.numpy(), gt.numpy(), g, l1),
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gi", range(len(RANDOM_GEOMETRIES)))
def test_im2parity_matches_naive(gi):
    g = RANDOM_GEOMETRIES[gi]
    gen = torch.Generator().manual_seed(100 + gi)
    lab = torch.randint(0, 3, (2, 2, 6, 7), generator=gen).float()
    lab[lab == 2] = 255
    lab = lab + 0.6 * torch.rand(lab.shape, generator=gen)  # fractional parts are truncated away
    got = im2parity(lab, g, 255)
    np.testing.assert_array_equal(got.numpy(), naive_im2parity(lab.numpy(), g, 255))
    from caffe_compat.ops.im2col import centre_outside_any
    if not centre_outside_any(6, 7, g):
        np.testing.assert_array_equal(im2parity(lab, g, None).numpy(), naive_im2parity(lab.numpy(), g, None))


def test_im2dist_chunking_gives_identical_results(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 7, 8, generator=gen, requires_grad=True)
    g = geom(3, 1, 2, 2)
    gt = torch.randn(2, 9, 7, 8, generator=gen)
    y1 = im2dist(x, g, "L2")
    (d1,) = torch.autograd.grad(y1, x, gt)
    monkeypatch.setattr(im2dist_mod, "CHUNK_ELEMENTS", 10 ** 9)  # all channels in one chunk
    y2 = im2dist(x, g, "L2")
    (d2,) = torch.autograd.grad(y2, x, gt)
    assert torch.equal(y1, y2) and torch.allclose(d1, d2, atol=1e-6)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("g", [geom(2, 1, 1, 1), geom(3, 2, 2, 2), geom((2, 3), (2, 1), (1, 2), 1), geom(3, 1, 1, 1),
                               geom(3, 1, 3, 1), geom(5, 1, 6, 3)])
@pytest.mark.parametrize("flags", [(False, False), (True, True)])
def test_im2dist_l2_gradcheck(g, flags):
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)
    # full Jacobian for the small kernels, random projections (fast_mode) for the big ones
    assert torch.autograd.gradcheck(lambda t: im2dist(t, g, "L2", *flags), (x,), fast_mode=g.taps > 6)


@pytest.mark.parametrize("g", [geom(3, 1, 1, 1), geom(3, 2, 2, 2), geom((2, 3), 1, (1, 2), 1), geom(2, 1, 1, 1)])
def test_im2dist_l1_gradcheck_away_from_ties(g):
    # distinct values spaced by >= 0.1 (gradcheck's eps is 1e-6): no |d| near 0
    n = 2 * 2 * 4 * 5
    vals = torch.randperm(n, generator=torch.Generator().manual_seed(1)).double() * 0.1
    x = vals.reshape(2, 2, 4, 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: im2dist(t, g, "L1"), (x,), fast_mode=g.taps > 6)
    assert torch.autograd.gradcheck(lambda t: im2dist(t, g, "L1", True, True), (x,), fast_mode=True)


@pytest.mark.parametrize("g", [geom(3, 1, 1, 1), geom(3, 2, 2, 2), geom((2, 3), 1, (1, 2), 1), geom(3, 1, 0, 1)])
def test_im2col_gradcheck(g):
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: im2col(t, g), (x,), fast_mode=True)


def test_im2dist_l1_ties_and_out_of_image_give_no_gradient():
    g = geom(3, 1, 1, 1)
    # constant embedding: every in-image difference is an exact tie, every border
    # window has out-of-image neighbours (stored difference 0): the GPU rule gives 0;
    # the fork's CPU rule (sign(0) = -1) would give -sum(g) at every centre.
    x = torch.full((2, 3, 4, 5), 0.7, requires_grad=True)
    y = im2dist(x, g, "L1")
    assert torch.equal(y, torch.zeros_like(y))
    y.backward(torch.randn_like(y))
    assert torch.equal(x.grad, torch.zeros_like(x))
    # a single pixel: all 8 neighbours outside the image
    x1 = torch.randn(1, 2, 1, 1, requires_grad=True)
    y1 = im2dist(x1, g, "L1", remove_bounds=True)
    assert y1[0, 4].item() == 0 and (y1[0, torch.arange(9) != 4] == FLT_MAX_OVER_100).all()
    y1.backward(torch.ones_like(y1))
    assert torch.equal(x1.grad, torch.zeros_like(x1))


def test_im2dist_saves_only_its_input():
    """Memory: the (N, E*K, Ho, Wo) difference tensor must not be kept for backward."""
    saved = []
    x = torch.randn(1, 16, 20, 21, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = im2dist(x, geom(9, 1, 4, 1), "L1")
    assert sum(saved) <= x.numel()
    y.sum().backward()


def test_im2dist_semantics_details():
    x = torch.tensor([[[[0.0, 1.0, 3.0]]]])  # (1, 1, 1, 3)
    g = geom((1, 3), 1, (0, 1), 1)
    l2 = im2dist(x, g, "L2")[0, :, 0]  # (K=3, Wo=3)
    # "L2" is half the squared difference; out-of-image neighbours give 0
    assert l2.tolist() == [[0.0, 0.5, 2.0], [0.0, 0.0, 0.0], [0.5, 2.0, 0.0]]
    assert im2dist(x, g, "L1")[0, :, 0].tolist() == [[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [1.0, 2.0, 0.0]]
    # default of the layer is L2, flags write FLT_MAX/100 (float32 value, also in float64)
    assert FLT_MAX_OVER_100 == float(np.float32(np.finfo(np.float32).max) / np.float32(100))
    y64 = im2dist(x.double(), g, "L2", True, True)
    assert y64.dtype == torch.float64 and y64[0, 1, 0, 0].item() == FLT_MAX_OVER_100
    assert y64[0, 0, 0, 0].item() == FLT_MAX_OVER_100
    # even kernel: centre is offset (kh//2, kw//2) = (1, 1), i.e. the lower-right tap
    x2 = torch.arange(9.0).reshape(1, 1, 3, 3)
    y2 = im2dist(x2, geom(2, 1, 0, 1), "L1")
    assert y2[0, :, 0, 0].tolist() == [4.0, 3.0, 1.0, 0.0]
    # pad > k//2: columns whose centre is outside are 0 even with the flags
    y3 = im2dist(torch.randn(1, 2, 3, 3), geom(3, 1, 3, 1), "L1", True, True)
    assert (y3[0, :, 0, :] == 0).all() and (y3[0, :, :, 0] == 0).all()


def test_layers_run_in_float64():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    for text in ['type: "Im2col" convolution_param { kernel_size: 3 pad: 1 }',
                 'type: "Im2dist" convolution_param { kernel_size: 3 pad: 1 } im2dist_param { norm: L1 }']:
        (y,) = make('name: "l" ' + text, x.shape)(x)
        assert y.dtype == torch.float64
    (p,) = make('name: "p" type: "Im2parity" convolution_param { kernel_size: 3 pad: 1 }', (2, 1, 5, 6))(
        torch.zeros(2, 1, 5, 6, dtype=torch.float64))
    assert p.dtype == torch.float64 and (p == 1).all()


# ----------------------------------------------------------------------------- Im2parity
def test_im2parity_fork_rules():
    lab = torch.tensor([[[[0.0, 0.0, 2.9], [255.0, 2.2, 0.0]]]])  # (1, 1, 2, 3)
    g = geom(3, 1, 1, 1)
    p = im2parity(lab, g)  # no ignore_label: 255 is a normal class, out-of-image = label 0
    assert p[0, :, 0, 0].tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert p[0, 4, 0, 2].item() == 1 and p[0, 3, 0, 2].item() == 0  # 2.9 vs 0 -> 2 != 0
    assert p[0, 2, 1, 1].item() == 1  # truncation: 2.2 and 2.9 are both label 2
    pi = im2parity(lab, g, ignore_label=255)
    assert pi[0, 4, 1, 0].item() == 255 and pi[0, 7, 0, 0].item() == 255 and pi[0, 4, 0, 0].item() == 1
    # uint32 ignore_label stored in a C int: 4294967295 means -1
    assert im2parity(torch.full((1, 1, 1, 1), -1.0), geom(1), 4294967295).item() == -1.0


def test_im2parity_last_channel_wins_and_no_gradient():
    lab = torch.stack([torch.zeros(5, 6), torch.randint(0, 3, (5, 6)).float()])[None].requires_grad_()
    layer = make('name: "par" type: "Im2parity" convolution_param { kernel_size: 3 pad: 1 }', lab.shape)
    (p,) = layer(lab)
    (p1,) = layer(lab[:, 1:].detach())
    assert torch.equal(p, p1)
    assert not p.requires_grad and p.grad_fn is None


def test_im2parity_centre_outside_without_ignore_label_raises():
    layer = make('name: "par" type: "Im2parity" convolution_param { kernel_size: 3 pad: 3 }', (1, 1, 5, 5))
    with pytest.raises(ShapeError, match="layer 'par'.*ignore_label"):
        layer(torch.zeros(1, 1, 5, 5))
    with pytest.raises(ShapeError, match="layer 'par'"), shape_only():
        layer(torch.empty(1, 1, 5, 5, device="meta"))
    ok = make('name: "par" type: "Im2parity" convolution_param { kernel_size: 3 pad: 3 } '
              'im2parity_param { ignore_label: 7 }', (1, 1, 5, 5))
    (p,) = ok(torch.zeros(1, 1, 5, 5))
    assert (p[0, :, 0, :] == 7).all() and (p[0, :, 2:7, 2:7] == 1).all()
    assert (p[0, :, 7:, :] == 7).all() and (p[0, :, :, :2] == 7).all()


# ----------------------------------------------------------------------------- DistLoss
def _distloss_formula(dist, parity, alpha, beta, ignore=None, first_only=False):
    d = dist.double().numpy()
    p = np.trunc(parity.double().numpy()).astype(np.int64)
    m = np.where(p != 0, np.maximum(d - alpha, 0), np.maximum(beta - d, 0))
    g = np.where(p != 0, np.maximum(d - alpha, 0), -np.maximum(beta - d, 0))
    skip = np.zeros(d.shape, bool) if ignore is None else (p == ignore)
    if first_only:
        skip[1:] = True
    m[skip] = 0
    g[skip] = 0
    return m.sum() / d.size, g / d.size


@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("first_only", [False, True])
def test_distloss_explicit_formula(ignore, first_only):
    gen = torch.Generator().manual_seed(5)
    dist = (torch.rand(3, 9, 4, 5, generator=gen) * 4).double().requires_grad_()
    parity = torch.randint(0, 3, (3, 9, 4, 5), generator=gen).double()
    parity[parity == 2] = 255
    parity[0, 0] += 0.75  # truncated: still 0 / 1 / 255
    layer = make(f'name: "loss" type: "DistLoss" bottom: "d" bottom: "p" top: "l" '
                 f'convolution_param {{ kernel_size: 3 pad: 1 }} dist_loss_param {{ alpha: 0.5 beta: 2 '
                 f'{"" if ignore is None else f"ignore_label: {ignore}"} }}', dist.shape, parity.shape)
    layer.gpu_first_image_only = first_only
    (loss,) = layer(dist, parity)
    assert loss.shape == () and loss.dtype == torch.float64
    ref_loss, ref_grad = _distloss_formula(dist.detach(), parity, 0.5, 2.0, ignore, first_only)
    assert abs(loss.item() - ref_loss) <= 1e-12
    # the gradient ignores the incoming gradient (loss weight): 0.5 and 3.0 give the same
    for w in (0.5, 3.0):
        (gd,) = torch.autograd.grad(loss, dist, torch.tensor(w, dtype=torch.float64), retain_graph=True)
        np.testing.assert_allclose(gd.numpy(), ref_grad, rtol=0, atol=1e-15)
    # the gradient is NOT d loss / d dist (it is the gradient of 0.5*margin**2): a
    # similar pair with margin 1.5 gets 1.5/count, while the hinge's slope is 1/count
    d1 = torch.tensor([[2.0]], requires_grad=True)
    (g1,) = torch.autograd.grad(dist_loss(d1, torch.tensor([[1.0]]), 0.5, 2.0), d1)
    assert g1.item() == 1.5


def test_distloss_parity_gets_no_gradient_and_float32_loss():
    dist = torch.rand(2, 4, 3, 3, requires_grad=True)
    parity = torch.randint(0, 2, (2, 4, 3, 3)).float().requires_grad_()
    loss = dist_loss(dist, parity, 0.2, 1.5)
    assert loss.dtype == torch.float32
    gd, gp = torch.autograd.grad(loss, (dist, parity), allow_unused=True)
    assert gp is None or torch.equal(gp, torch.zeros_like(gp))


def test_distloss_errors():
    base = 'name: "loss" type: "DistLoss" bottom: "d" bottom: "p" convolution_param { kernel_size: 3 } '
    s = (2, 9, 4, 5)
    for bad, field in [("dist_loss_param { beta: 2 }", "alpha"), ("", "alpha"),
                       ("dist_loss_param { alpha: 1 }", "beta"),
                       ("dist_loss_param { alpha: 0 beta: 2 }", "alpha must be > 0"),
                       ("dist_loss_param { alpha: -1 beta: 2 }", "alpha must be > 0"),
                       ("dist_loss_param { alpha: 2 beta: 2 }", "greater than alpha"),
                       ("dist_loss_param { alpha: 3 beta: 2 }", "greater than alpha")]:
        with pytest.raises(LayerConfigError, match=f"layer 'loss'.*{field}"):
            make(base + bad, s, s)
    with pytest.raises(LayerConfigError, match="kernel_size"):
        make('name: "loss" type: "DistLoss" dist_loss_param { alpha: 1 beta: 2 }', s, s)
    layer = make(base + "dist_loss_param { alpha: 1 beta: 2 }", s, s)
    with pytest.raises(ShapeError, match="layer 'loss'.*identical"):
        layer(torch.zeros(2, 9, 4, 5), torch.zeros(2, 9, 4, 6))
    with pytest.raises(ShapeError, match="layer 'loss'.*batch"):
        layer(torch.zeros(2, 9, 4, 5), torch.zeros(3, 9, 4, 5))
    with pytest.raises(LayerConfigError, match="bottom"):
        make(base + "dist_loss_param { alpha: 1 beta: 2 }", s)
    assert DistLoss.is_loss and DistLoss.auto_tops == 1


# ----------------------------------------------------------------------------- ChannelReduce
def test_channelreduce_max_first_wins_nan_and_floor():
    layer = make('name: "cr" type: "ChannelReduce" channel_reduce_param { num_channels: 2 }', (1, 6, 1, 3))
    assert layer.operation == "MAX"  # proto default
    x = torch.tensor([[1.0, 5.0, float("nan")], [5.0, float("nan"), float("-inf")], [5.0, 2.0, float("-inf")],
                      [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]).T.reshape(1, 3, 6).permute(0, 2, 1)
    x = x.reshape(1, 6, 1, 3).contiguous().requires_grad_()
    (y,) = layer(x)
    assert y.shape == (1, 2, 1, 3)
    fm = -float(np.finfo(np.float32).max)
    assert y[0, 0, 0].tolist() == [5.0, 5.0, fm]  # NaN never wins; all -inf/NaN -> -FLT_MAX
    y.backward(torch.ones_like(y))
    gr = x.grad[0, :, 0]
    assert gr[:, 0].tolist() == [0, 1, 0, 1, 0, 0]  # ties: first maximum wins
    assert gr[:, 1].tolist() == [1, 0, 0, 1, 0, 0]
    assert gr[:, 2].tolist() == [0, 0, 0, 1, 0, 0]  # the -FLT_MAX floor gets no gradient


def test_channelreduce_sum_and_identity():
    x = torch.randn(2, 6, 3, 4, requires_grad=True)
    (y,) = make('name: "cr" type: "ChannelReduce" channel_reduce_param { num_channels: 2 operation: SUM }',
                x.shape)(x)
    assert torch.allclose(y, x.view(2, 2, 3, 3, 4).sum(2))
    y.backward(torch.arange(2.0).view(1, 2, 1, 1).expand(2, 2, 3, 4))
    assert torch.equal(x.grad[:, :3], torch.zeros(2, 3, 3, 4)) and torch.equal(x.grad[:, 3:], torch.ones(2, 3, 3, 4))
    # num_channels == C (rejected by the fork's inverted CHECK) is accepted: identity, not a view
    (z,) = make('name: "cr" type: "ChannelReduce" channel_reduce_param { num_channels: 6 operation: SUM }',
                x.shape)(x)
    assert torch.equal(z, x) and z.data_ptr() != x.data_ptr()
    # fewer than 4 axes are read as (N, C, 1, 1), as the fork's legacy accessors
    (v,) = make('name: "cr" type: "ChannelReduce" channel_reduce_param { num_channels: 3 operation: SUM }',
                (2, 6))(torch.ones(2, 6))
    assert v.shape == (2, 3, 1, 1) and (v == 2).all()


def test_channelreduce_errors():
    with pytest.raises(ShapeError, match="layer 'cr'.*multiple"):
        make('name: "cr" type: "ChannelReduce" channel_reduce_param { num_channels: 4 }', (1, 6, 2, 2))
    with pytest.raises(LayerConfigError, match="layer 'cr'.*num_channels must be > 0"):
        make('name: "cr" type: "ChannelReduce" channel_reduce_param { num_channels: 0 }', (1, 6, 2, 2))
    layer = make('name: "cr" type: "ChannelReduce" channel_reduce_param { num_channels: 3 }', (1, 6, 2, 2))
    with pytest.raises(ShapeError, match="layer 'cr'"):
        layer(torch.zeros(1, 7, 2, 2))
    with pytest.raises(ShapeError, match="layer 'cr'.*at most 4"):
        layer(torch.zeros(1, 6, 2, 2, 1))


# ----------------------------------------------------------------------------- geometry errors, meta
@pytest.mark.parametrize("ltype", ["Im2col", "Im2dist", "Im2parity"])
def test_window_layer_errors(ltype):
    with pytest.raises(LayerConfigError, match="layer 'w'.*kernel_size"):
        make(f'name: "w" type: "{ltype}"', (1, 2, 5, 5))
    with pytest.raises(LayerConfigError, match="layer 'w'.*kernel"):
        make(f'name: "w" type: "{ltype}" convolution_param {{ kernel_h: 3 }}', (1, 2, 5, 5))
    with pytest.raises(LayerConfigError, match="layer 'w'.*stride"):
        make(f'name: "w" type: "{ltype}" convolution_param {{ kernel_size: 3 stride: 0 }}', (1, 2, 5, 5))
    with pytest.raises(LayerConfigError, match="layer 'w'.*axis"):
        make(f'name: "w" type: "{ltype}" convolution_param {{ kernel_size: 3 axis: 4 }}', (1, 2, 5, 5))
    with pytest.raises(CaffeCompatError, match="layer 'w'"):
        make(f'name: "w" type: "{ltype}" convolution_param {{ kernel_size: 3 }}', (2, 5, 5))
    with pytest.raises(CaffeCompatError, match="layer 'w'"):
        make(f'name: "w" type: "{ltype}" convolution_param {{ kernel_size: 3 axis: 0 }}', (1, 2, 5, 5))
    layer = make(f'name: "w" type: "{ltype}" convolution_param {{ kernel_size: 5 dilation: 2 }}', (1, 2, 9, 9))
    with pytest.raises(ShapeError, match="layer 'w'.*too small"):
        layer(torch.zeros(1, 2, 8, 9))  # extent 9 > 8
    with pytest.raises(ShapeError, match="layer 'w'.*4-D"):
        layer(torch.zeros(2, 9, 9))
    with pytest.raises(LayerConfigError, match="layer 'w'"):
        make(f'name: "w" type: "{ltype}" bottom: "a" bottom: "b" convolution_param {{ kernel_size: 3 }}',
             (1, 2, 5, 5), (1, 2, 5, 5))


def test_meta_shape_pass_and_other_sizes():
    cases = [
        ('type: "Im2col" convolution_param { kernel_size: 3 pad: 2 dilation: 2 stride: 2 }', [(2, 3, 7, 9)],
         (2, 27, 4, 5)),
        ('type: "Im2dist" convolution_param { kernel_size: 9 pad: 4 }', [(1, 64, 33, 17)], (1, 81, 33, 17)),
        ('type: "Im2parity" convolution_param { kernel_size: 5 pad: 6 dilation: 3 }', [(2, 1, 11, 13)],
         (2, 25, 11, 13)),
        ('type: "DistLoss" convolution_param { kernel_size: 3 } dist_loss_param { alpha: 1 beta: 2 }',
         [(2, 9, 4, 5), (2, 9, 4, 5)], ()),
        ('type: "ChannelReduce" channel_reduce_param { num_channels: 21 operation: SUM }', [(1, 1701, 5, 6)],
         (1, 21, 5, 6)),
    ]
    for text, shapes, want in cases:
        layer = make('name: "m" ' + text, *shapes)
        with shape_only():
            (y,) = layer(*[torch.empty(s, device="meta") for s in shapes])
        assert y.is_meta and tuple(y.shape) == want, text
    # forward accepts other spatial sizes than at build time
    layer = make('name: "m" type: "Im2dist" convolution_param { kernel_size: 3 pad: 1 stride: 2 }', (1, 2, 5, 5))
    assert layer(torch.randn(3, 2, 8, 11))[0].shape == (3, 9, 4, 6)


def test_im2col_ordering_and_ignored_options():
    x = torch.randn(2, 3, 5, 6)
    layer = make('name: "c" type: "Im2col" convolution_param { num_output: 64 kernel_size: 3 pad: 1 '
                 'bottom_is_im2col: true bias_term: true group: 2 }', x.shape)
    (y,) = layer(x)
    assert y.shape == (2, 27, 5, 6)
    c, i, j, yy, xx = 2, 0, 2, 0, 5  # top-right tap of the top-right pixel: outside -> 0
    assert y[1, (c * 3 + i) * 3 + j, yy, xx].item() == 0.0
    assert y[1, (c * 3 + 1) * 3 + 0, 2, 3].item() == x[1, c, 2, 2].item()
    assert layer.blobs is not None and len(layer.blobs) == 0


def test_im2dist_norm_param_and_registry():
    assert REGISTRY["Im2dist"] is Im2dist and REGISTRY["ChannelReduce"] is ChannelReduce
    assert REGISTRY["Im2col"] is Im2col and REGISTRY["Im2parity"] is Im2parity and REGISTRY["DistLoss"] is DistLoss
    layer = make('name: "d" type: "Im2dist" convolution_param { kernel_size: 3 }', (1, 1, 3, 3))
    assert layer.norm == "L2" and not layer.remove_center and not layer.remove_bounds
    with pytest.raises(LayerConfigError):
        im2dist(torch.zeros(1, 1, 3, 3), geom(3), norm="L3")
    assert math.isclose(segaware.FLT_MAX, 3.4028234663852886e38)
