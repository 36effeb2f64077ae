"""Standard layers, group A: Convolution/Deconvolution/InnerProduct, Pooling, neuron layers,
BatchNorm/LRN/MVN.

The goldens (run by tests/test_golden_layers.py through the net) cover the configs' settings;
this file checks the layers directly against explicit reference formulas (BVLC Caffe
semantics, written with numpy loops where Caffe loops), the corner cases the goldens do not
reach, every custom autograd function with gradcheck (or an explicit formula where the
backward is deliberately not the derivative), and the errors on bad input.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from caffe_compat import schema
from caffe_compat.errors import CaffeCompatError, LayerConfigError, NotSupportedError, ShapeError
from caffe_compat.layers import BuildContext, get_layer_class, shape_only
from caffe_compat.ops import pooling as pool_ops
from caffe_compat.ops.bnll import BNLLFunction
from caffe_compat.ops.mvn import MVNFunction
from caffe_compat.ops.power import PowerFunction
from caffe_compat.ops.scalars import FLT_MAX

from conftest import reference_path

FLT_EPS_DEFAULT = float(np.float32(1e-5))


def f32(v):
    """A float proto field's value (Caffe's params are float32)."""
    return float(np.float32(v))


# ----------------------------------------------------------------------------- helpers
def make(type_name, params="", shapes=((2, 3, 5, 7),), phase="TEST", tops=None, bottoms=None,
         dtype=torch.float32, seed=0):
    """Build a layer of ``type_name`` from prototxt text ``params``."""
    bottoms = bottoms or [f"b{i}" for i in range(len(shapes))]
    tops = tops or ["t0"]
    text = f'name: "l" type: "{type_name}" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " " + \
        " ".join(f'top: "{t}"' for t in tops) + " " + params
    lp = schema.LayerParameter()
    text_format.Merge(text, lp)
    gen = torch.Generator().manual_seed(seed)
    cls = get_layer_class(type_name)
    return cls(lp, [tuple(s) for s in shapes], BuildContext(phase=phase, generator=gen, dtype=dtype))


def rand(*shape, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g, dtype=dtype)
    return t.requires_grad_(grad)


def fwd(layer, *xs):
    tops = layer(*xs)
    assert isinstance(tops, tuple)
    return tops


def grad_of(layer, x, dy=None, idx=0):
    x = x.detach().clone().requires_grad_(True)
    y = fwd(layer, x)[idx]
    dy = torch.ones_like(y) if dy is None else dy
    (g,) = torch.autograd.grad(y, x, dy, allow_unused=True)
    return y.detach(), (torch.zeros_like(x) if g is None else g)


def set_blobs(layer, *values):
    with torch.no_grad():
        for i, v in enumerate(values):
            layer.blobs[i].copy_(torch.as_tensor(v, dtype=layer.blobs[i].dtype).reshape(layer.blobs[i].shape))


# ============================================================================ golden cases, layer alone
GOLDEN_SINGLE = ["absval", "batchnorm_global_sf0.5", "batchnorm_global_sf1", "batchnorm_global_sf999.98_eps1e-3",
                 "conv_group2", "conv_im2col_k3_p1", "conv_im2col_k3_p1_nobias", "conv_im2col_k3_p2_d2",
                 "conv_k1", "conv_k1_s2_nobias", "conv_k3_p12_d12", "conv_k3_p1_s2", "conv_k3_p2_d2",
                 "conv_k7_p3_s2_nobias", "dropout_test", "exp_base2_scale0.5_shift0.1", "exp_default_shift1",
                 "exp_scale_m1", "pool_ave_k2_s2", "pool_ave_k3_s1_p1", "pool_ave_k3_s2_p1", "pool_global_ave",
                 "pool_global_max", "pool_max_k2_s2", "pool_max_k3_s1_p1", "pool_max_k3_s2_p1",
                 "power_p1_shift1e-4", "power_p2_s0.5_sh1", "power_pm1", "power_scale_1over255", "relu",
                 "relu_slope0.1"]


def _rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("case", GOLDEN_SINGLE)
def test_golden_single_layer_direct(case):
    """Each single-layer golden, with the layer class built directly (no Net), float32 and float64."""
    path = reference_path("golden", "layers", f"{case}.npz")
    d = np.load(path)
    net = schema.NetParameter()
    text_format.Merge(str(d["prototxt"]), net)
    assert len(net.layer) == 1
    lp = net.layer[0]
    x_name = lp.bottom[0]
    for dtype in (torch.float32, torch.float64):
        x = torch.from_numpy(d[f"in/{x_name}"]).to(dtype)
        layer = get_layer_class(lp.type)(lp, [tuple(x.shape)], BuildContext(phase="TEST", dtype=dtype))
        with torch.no_grad():
            for i in range(len(layer.blobs)):
                key = f"param/{lp.name}/{i}"
                if key in d.files:
                    layer.blobs[i].copy_(torch.from_numpy(d[key]))
        xr = x.clone().requires_grad_(True)
        y = fwd(layer, xr)[0]
        assert _rel(y.detach().numpy(), d[f"out/{lp.top[0]}"]) <= 1e-5
        (g,) = torch.autograd.grad(y, xr, torch.from_numpy(d[f"top_diff/{lp.top[0]}"]).to(dtype),
                                   allow_unused=True)
        g = torch.zeros_like(xr) if g is None else g
        assert _rel(g.numpy(), d[f"bottom_diff/{x_name}"]) <= 1e-4


# ============================================================================ Convolution
def np_conv(x, w, b, stride, pad, dil, group):
    """Direct Caffe convolution formula (LAYERS.md §2.5) in float64."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = stride
    ph, pw = pad
    dh, dw = dil
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    y = np.zeros((n, o, ho, wo))
    og = o // group
    for oo in range(o):
        g0 = (oo // og) * cg
        for yy in range(ho):
            for xx in range(wo):
                acc = np.zeros(n)
                for cc in range(cg):
                    for i in range(kh):
                        for j in range(kw):
                            r, q = yy * sh - ph + i * dh, xx * sw - pw + j * dw
                            if 0 <= r < h and 0 <= q < wd:
                                acc += w[oo, cc, i, j] * x[:, g0 + cc, r, q]
                y[:, oo, yy, xx] = acc + (b[oo] if b is not None else 0)
    return y


@pytest.mark.parametrize("params,shape", [
    ("num_output: 4 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 3 pad_w: 0", (2, 3, 5, 6)),
    ("num_output: 4 kernel_size: 3 pad: 4 dilation: 2 group: 2 stride: 2", (1, 4, 6, 5)),
    ("num_output: 2 kernel_size: 2 kernel_size: 3 stride: 1 stride: 2 pad: 1 pad: 2 dilation: 1 dilation: 2 "
     "bias_term: false", (2, 2, 5, 7)),
])
def test_conv_matches_direct_formula(params, shape):
    layer = make("Convolution", f"convolution_param {{ {params} }}", [shape], dtype=torch.float64)
    w = rand(*layer.blobs[0].shape, seed=1)
    b = rand(*layer.blobs[1].shape, seed=2) if len(layer.blobs) > 1 else None
    set_blobs(layer, w, *([b] if b is not None else []))
    x = rand(*shape, seed=3)
    y = fwd(layer, x)[0]
    g = layer.geom
    ref = np_conv(x.numpy(), w.numpy(), None if b is None else b.numpy(), g.stride, g.pad, g.dilation, layer.group)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-12, atol=1e-12)


def test_conv_weight_layout_and_fillers():
    layer = make("Convolution", 'convolution_param { num_output: 6 kernel_size: 3 group: 3 '
                 'weight_filler { type: "constant" value: 2 } bias_filler { type: "constant" value: -1 } }',
                 [(1, 9, 4, 4)])
    assert tuple(layer.blobs[0].shape) == (6, 3, 3, 3) and tuple(layer.blobs[1].shape) == (6,)
    assert torch.all(layer.blobs[0] == 2) and torch.all(layer.blobs[1] == -1)
    # default filler: constant 0
    layer = make("Convolution", "convolution_param { num_output: 2 kernel_size: 1 }", [(1, 3, 4, 4)])
    assert torch.all(layer.blobs[0] == 0) and torch.all(layer.blobs[1] == 0)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_bottom_is_im2col_equals_conv_on_image(group):
    """Caffe-order Im2col (F.unfold order c*K + k) + bottom_is_im2col conv == normal conv on the image."""
    c, o = 4, 6
    x = rand(2, c, 6, 7, seed=4)
    normal = make("Convolution", f"convolution_param {{ num_output: {o} kernel_size: 3 pad: 2 dilation: 2 "
                  f"group: {group} }}", [(2, c, 6, 7)], dtype=torch.float64)
    w, b = rand(o, c // group, 3, 3, seed=5), rand(o, seed=6)
    set_blobs(normal, w, b)
    cols = F.unfold(x, 3, dilation=2, padding=2).reshape(2, c * 9, 6, 7)
    im2col = make("Convolution", f"convolution_param {{ num_output: {o} kernel_size: 3 pad: 2 dilation: 2 "
                  f"stride: 3 group: {group} bottom_is_im2col: true }}", [(2, c * 9, 6, 7)], dtype=torch.float64)
    assert tuple(im2col.blobs[0].shape) == (o, c // group, 3, 3)  # same weight shape as the normal conv
    set_blobs(im2col, w, b)
    y1 = fwd(normal, x)[0]
    y2 = fwd(im2col, cols)[0]  # stride 3 is ignored: output size = input size
    assert y2.shape == (2, o, 6, 7)
    torch.testing.assert_close(y1, y2)
    # other spatial sizes work too (output = input size)
    assert fwd(im2col, rand(1, c * 9, 3, 4))[0].shape == (1, o, 3, 4)


def test_conv_multiple_bottoms_share_weights():
    layer = make("Convolution", "convolution_param { num_output: 2 kernel_size: 3 pad: 1 "
                 'weight_filler { type: "gaussian" std: 1 } }', [(1, 3, 4, 5), (1, 3, 4, 5)], tops=["a", "b"])
    x1, x2 = rand(1, 3, 4, 5, seed=1, dtype=torch.float32), rand(1, 3, 4, 5, seed=2, dtype=torch.float32)
    y1, y2 = fwd(layer, x1, x2)
    torch.testing.assert_close(y1, F.conv2d(x1, layer.blobs[0], layer.blobs[1], padding=1))
    torch.testing.assert_close(y2, F.conv2d(x2, layer.blobs[0], layer.blobs[1], padding=1))


def test_conv_other_input_size_and_meta():
    layer = make("Convolution", "convolution_param { num_output: 2 kernel_size: 3 stride: 2 }", [(1, 3, 9, 9)])
    assert fwd(layer, torch.zeros(2, 3, 11, 6))[0].shape == (2, 2, 5, 2)
    with shape_only():
        assert fwd(layer, torch.empty(2, 3, 11, 6, device="meta"))[0].shape == (2, 2, 5, 2)


@pytest.mark.parametrize("params,shapes,tops,exc", [
    ("convolution_param { num_output: 2 kernel_size: 3 axis: 2 }", [(1, 3, 5, 5)], None, LayerConfigError),
    ("convolution_param { num_output: 0 kernel_size: 3 }", [(1, 3, 5, 5)], None, LayerConfigError),
    ("convolution_param { num_output: 2 }", [(1, 3, 5, 5)], None, LayerConfigError),
    ("convolution_param { num_output: 2 kernel_size: 3 group: 2 }", [(1, 3, 5, 5)], None, ShapeError),
    ("convolution_param { num_output: 3 kernel_size: 3 group: 2 }", [(1, 4, 5, 5)], None, LayerConfigError),
    ("convolution_param { num_output: 2 kernel_size: 3 bottom_is_im2col: true }", [(1, 10, 5, 5)], None,
     ShapeError),
    ("convolution_param { num_output: 2 kernel_size: 7 }", [(1, 3, 5, 5)], None, ShapeError),
    ("convolution_param { num_output: 2 kernel_size: 3 }", [(3, 5, 5)], None, ShapeError),
    ("convolution_param { num_output: 2 kernel_size: 3 }", [(1, 3, 5, 5)], ["a", "b"], LayerConfigError),
    ("convolution_param { num_output: 2 kernel_size: 3 }", [(1, 3, 5, 5), (1, 3, 6, 5)], ["a", "b"], ShapeError),
    ("convolution_param { num_output: 2 kernel_size: 3 stride: 0 }", [(1, 3, 5, 5)], None, LayerConfigError),
])
def test_conv_errors(params, shapes, tops, exc):
    with pytest.raises(exc, match="layer 'l'"):
        make("Convolution", params, shapes, tops=tops)


def test_conv_forward_shape_errors():
    layer = make("Convolution", "convolution_param { num_output: 2 kernel_size: 3 }", [(1, 3, 5, 5)])
    with pytest.raises(ShapeError, match="channels"):
        layer(torch.zeros(1, 4, 5, 5))
    with pytest.raises(ShapeError, match="4-D"):
        layer(torch.zeros(3, 5, 5))
    with pytest.raises(ShapeError, match="not positive"):
        layer(torch.zeros(1, 3, 2, 5))


# ---------------------------------------------------------------------------- Deconvolution
def np_deconv(x, w, b, stride, pad, dil, group):
    """Caffe deconvolution = scatter of every input pixel through the kernel (col2im of W^T x)."""
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    o = og * group
    cg = c // group
    ho = stride[0] * (h - 1) + dil[0] * (kh - 1) + 1 - 2 * pad[0]
    wo = stride[1] * (wd - 1) + dil[1] * (kw - 1) + 1 - 2 * pad[1]
    y = np.zeros((n, o, ho, wo))
    for cc in range(c):
        g = cc // cg
        for oo in range(og):
            for r in range(h):
                for q in range(wd):
                    for i in range(kh):
                        for j in range(kw):
                            rr = r * stride[0] - pad[0] + i * dil[0]
                            qq = q * stride[1] - pad[1] + j * dil[1]
                            if 0 <= rr < ho and 0 <= qq < wo:
                                y[:, g * og + oo, rr, qq] += x[:, cc, r, q] * w[cc, oo, i, j]
    if b is not None:
        y += b[None, :, None, None]
    return y


@pytest.mark.parametrize("params", [
    "num_output: 4 kernel_size: 4 stride: 2 pad: 1",
    "num_output: 4 kernel_size: 3 stride: 2 pad: 3 dilation: 2 group: 2",
    "num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 1 pad_h: 0 pad_w: 1 bias_term: false",
])
def test_deconv_matches_scatter_formula(params):
    layer = make("Deconvolution", f"convolution_param {{ {params} }}", [(2, 4, 3, 4)], dtype=torch.float64)
    assert layer.blobs[0].shape[0] == 4  # (C_in, O/g, kh, kw)
    w = rand(*layer.blobs[0].shape, seed=1)
    b = rand(*layer.blobs[1].shape, seed=2) if len(layer.blobs) > 1 else None
    set_blobs(layer, w, *([b] if b is not None else []))
    x = rand(2, 4, 3, 4, seed=3)
    y = fwd(layer, x)[0]
    g = layer.geom
    ref = np_deconv(x.numpy(), w.numpy(), None if b is None else b.numpy(), g.stride, g.pad, g.dilation,
                    layer.group)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-12, atol=1e-12)


def test_deconv_errors():
    with pytest.raises(NotSupportedError, match="bottom_is_im2col"):
        make("Deconvolution", "convolution_param { num_output: 2 kernel_size: 3 bottom_is_im2col: true }",
             [(1, 9, 4, 4)])
    with pytest.raises(ShapeError, match="not positive"):
        make("Deconvolution", "convolution_param { num_output: 2 kernel_size: 1 pad: 2 }", [(1, 3, 2, 2)])


# ---------------------------------------------------------------------------- InnerProduct
@pytest.mark.parametrize("axis,transpose,bias", [(1, False, True), (2, True, True), (-1, False, False),
                                                 (0, False, True)])
def test_inner_product(axis, transpose, bias):
    shape = (2, 3, 4, 5)
    layer = make("InnerProduct", f"inner_product_param {{ num_output: 6 axis: {axis} transpose: "
                 f"{'true' if transpose else 'false'} bias_term: {'true' if bias else 'false'} }}", [shape],
                 dtype=torch.float64)
    a = axis % 4
    k = int(np.prod(shape[a:]))
    assert tuple(layer.blobs[0].shape) == ((k, 6) if transpose else (6, k))
    w = rand(*layer.blobs[0].shape, seed=1)
    b = rand(6, seed=2)
    set_blobs(layer, w, *([b] if bias else []))
    x = rand(*shape, seed=3)
    y = fwd(layer, x)[0]
    assert y.shape == shape[:a] + (6,)
    wm = w.numpy().T if transpose else w.numpy()
    ref = x.numpy().reshape(-1, k) @ wm.T + (b.numpy() if bias else 0)
    np.testing.assert_allclose(y.detach().numpy().reshape(-1, 6), ref, rtol=1e-12)


def test_inner_product_errors():
    with pytest.raises(LayerConfigError, match="num_output"):
        make("InnerProduct", "inner_product_param { num_output: 0 }", [(2, 3)])
    with pytest.raises(ShapeError, match="axis"):
        make("InnerProduct", "inner_product_param { num_output: 2 axis: 3 }", [(2, 3)])
    layer = make("InnerProduct", "inner_product_param { num_output: 2 }", [(2, 3, 4)])
    with pytest.raises(ShapeError, match="incompatible"):
        layer(torch.zeros(2, 3, 5))
    assert layer(torch.zeros(7, 12))[0].shape == (7, 2)  # only K must match


# ============================================================================ Pooling
def np_pool(x, method, kernel, stride, pad, top_grad=None):
    """Caffe's pooling loops (pooling_layer.cpp), float64; returns (y, mask, dx)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = pad
    clip = ph > 0 or pw > 0
    ho = pool_ops.pooled_size(h, kh, sh, ph, clip)
    wo = pool_ops.pooled_size(w, kw, sw, pw, clip)
    y = np.zeros((n, c, ho, wo))
    mask = -np.ones((n, c, ho, wo), dtype=np.int64)
    dx = np.zeros_like(x, dtype=np.float64)
    for a in range(n):
        for b in range(c):
            for i in range(ho):
                for j in range(wo):
                    hs, ws = i * sh - ph, j * sw - pw
                    if method == "MAX":
                        he, we = min(hs + kh, h), min(ws + kw, w)
                        hs2, ws2 = max(hs, 0), max(ws, 0)
                        best = -FLT_MAX
                        for r in range(hs2, he):
                            for q in range(ws2, we):
                                if x[a, b, r, q] > best:
                                    best = x[a, b, r, q]
                                    mask[a, b, i, j] = r * w + q
                        y[a, b, i, j] = best
                        if top_grad is not None and mask[a, b, i, j] >= 0:
                            m = mask[a, b, i, j]
                            dx[a, b, m // w, m % w] += top_grad[a, b, i, j]
                    else:
                        he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                        size = (he - hs) * (we - ws)
                        hs2, ws2, he2, we2 = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                        s = 0.0
                        for r in range(hs2, he2):
                            for q in range(ws2, we2):
                                s += x[a, b, r, q]
                        with np.errstate(all="ignore"):
                            y[a, b, i, j] = np.float64(s) / size
                        if top_grad is not None:
                            for r in range(hs2, he2):
                                for q in range(ws2, we2):
                                    dx[a, b, r, q] += top_grad[a, b, i, j] / size
    return y, mask, dx


POOL_CASES = [
    ("MAX", (3, 3), (2, 2), (1, 1)),
    ("MAX", (3, 3), (1, 1), (2, 2)),      # pad > k/2 (torch refuses this)
    ("MAX", (2, 3), (2, 1), (1, 2)),
    ("MAX", (2, 2), (3, 3), (0, 0)),      # stride > kernel without pad: ceil, no clip
    ("MAX", (2, 2), (4, 4), (0, 0)),      # windows entirely outside the image
    ("MAX", (3, 2), (2, 3), (1, 0)),      # clip applied to both axes although pad_w = 0
    ("AVE", (3, 3), (2, 2), (1, 1)),
    ("AVE", (3, 3), (1, 1), (2, 2)),
    ("AVE", (4, 2), (3, 1), (3, 1)),
    ("AVE", (2, 2), (3, 3), (0, 0)),
    ("AVE", (2, 2), (4, 4), (0, 0)),      # empty windows: 0 / size <= 0 -> NaN or -0, as Caffe
    ("AVE", (3, 2), (2, 3), (1, 0)),
]


def _pool_params(method, kernel, stride, pad):
    return (f"pooling_param {{ pool: {method} kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} "
            f"stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} }}")


@pytest.mark.parametrize("method,kernel,stride,pad", POOL_CASES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("torch_fast_path", [True, False])
def test_pooling_matches_caffe_loops(monkeypatch, method, kernel, stride, pad, ties, torch_fast_path):
    monkeypatch.setattr(pool_ops, "USE_TORCH_MAX_POOL", torch_fast_path)
    shape = (2, 2, 7, 9)
    x = rand(*shape, seed=11)
    if ties:
        x = torch.round(x * 1.5)  # many exact ties: first maximum must win
    layer = make("Pooling", _pool_params(method, kernel, stride, pad), [shape], dtype=torch.float64)
    y, dx = grad_of(layer, x, dy=None)
    dy = rand(*y.shape, seed=12)
    y, dx = grad_of(layer, x, dy=dy)
    ry, _, rdx = np_pool(x.numpy(), method, kernel, stride, pad, dy.numpy())
    np.testing.assert_allclose(y.numpy(), ry, rtol=1e-12, atol=1e-12, equal_nan=True)
    if method == "AVE" and not np.isfinite(ry).all():
        assert np.isnan(y.numpy()).any() or (np.signbit(y.numpy()) & (y.numpy() == 0)).any()
    np.testing.assert_allclose(dx.numpy(), rdx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method,kernel,stride,pad", [c for c in POOL_CASES if c[0] == "MAX"])
def test_max_pool_unfold_path_equals_tap_loop(monkeypatch, method, kernel, stride, pad):
    x = torch.round(rand(2, 3, 7, 9, seed=3) * 2)
    x[0, 0, 2:5, 1:4] = float("nan")
    x[1, 1] = float("-inf")
    out = (pool_ops.pooled_size(7, kernel[0], stride[0], pad[0], pad != (0, 0)),
           pool_ops.pooled_size(9, kernel[1], stride[1], pad[1], pad != (0, 0)))
    monkeypatch.setattr(pool_ops, "USE_TORCH_MAX_POOL", False)
    y1, i1 = pool_ops.max_pool2d_caffe(x, kernel, stride, pad, out)
    monkeypatch.setattr(pool_ops, "TAP_LOOP_MAX", 0)
    y2, i2 = pool_ops.max_pool2d_caffe(x, kernel, stride, pad, out)
    assert torch.equal(i1, i2)
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("kernel,stride,pad", [((3, 3), (2, 2), (2, 1)), ((2, 3), (2, 3), (0, 0))])
def test_pooling_gradcheck(monkeypatch, kernel, stride, pad):
    """Both pooling ops are autograd compositions (gather / pad + sum): gradcheck them in float64."""
    monkeypatch.setattr(pool_ops, "USE_TORCH_MAX_POOL", False)
    x = rand(1, 2, 6, 7, seed=8, grad=True)
    clip = pad != (0, 0)
    out = (pool_ops.pooled_size(6, kernel[0], stride[0], pad[0], clip),
           pool_ops.pooled_size(7, kernel[1], stride[1], pad[1], clip))
    assert torch.autograd.gradcheck(lambda t: pool_ops.max_pool2d_caffe(t, kernel, stride, pad, out)[0], (x,))
    assert torch.autograd.gradcheck(lambda t: pool_ops.ave_pool2d_caffe(t, kernel, stride, pad, out), (x,))


def test_max_pool_torch_fast_path_only_where_equal():
    x = rand(1, 2, 7, 9, seed=1)
    assert pool_ops._torch_max_pool(x, (3, 3), (2, 2), (1, 1), (4, 5)) is not None  # the configs' pool
    assert pool_ops._torch_max_pool(x, (3, 3), (1, 1), (2, 2), (9, 11)) is None  # pad > k/2
    assert pool_ops._torch_max_pool(x, (2, 2), (4, 4), (0, 0), (3, 3)) is None  # no clip without pad
    x[0, 0, 0, 0] = float("nan")
    assert pool_ops._torch_max_pool(x, (3, 3), (2, 2), (1, 1), (4, 5)) is None
    y = torch.full((1, 1, 4, 4), -FLT_MAX, dtype=torch.float64)
    assert pool_ops._torch_max_pool(y, (2, 2), (2, 2), (0, 0), (2, 2)) is None  # Caffe: mask -1 there


@pytest.mark.parametrize("torch_fast_path", [True, False])
def test_max_pool_nan_inf_and_flt_max(monkeypatch, torch_fast_path):
    monkeypatch.setattr(pool_ops, "USE_TORCH_MAX_POOL", torch_fast_path)
    """NaN never wins; all -inf (or NaN) windows give -FLT_MAX and mask -1 (Caffe), no gradient."""
    x = torch.tensor([[[[float("nan"), 1.0], [float("-inf"), float("nan")]]]], dtype=torch.float64)
    x2 = torch.full((1, 1, 2, 2), float("-inf"), dtype=torch.float64)
    layer = make("Pooling", "pooling_param { pool: MAX kernel_size: 2 }", [(1, 1, 2, 2)], tops=["y", "mask"],
                 dtype=torch.float64)
    y, m = fwd(layer, x)
    assert y.item() == 1.0 and m.item() == 1.0
    xr = x2.clone().requires_grad_(True)
    y, m = fwd(layer, xr)
    assert y.item() == -FLT_MAX and m.item() == -1.0
    (g,) = torch.autograd.grad(y.sum(), xr)
    assert torch.all(g == 0)


@pytest.mark.parametrize("torch_fast_path", [True, False])
def test_max_pool_mask_top_and_ties(monkeypatch, torch_fast_path):
    monkeypatch.setattr(pool_ops, "USE_TORCH_MAX_POOL", torch_fast_path)
    x = torch.tensor([[[[1., 3., 3.], [3., 2., 0.], [1., 3., 1.]]]])
    layer = make("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 1 }", [(1, 1, 3, 3)],
                 tops=["y", "mask"])
    y, mask = fwd(layer, x)
    assert y.flatten().tolist() == [3, 3, 3, 3]
    assert mask.flatten().tolist() == [1, 1, 3, 7]  # first maximum in row-major window order
    assert mask.dtype == torch.float32 and not mask.requires_grad
    _, dx = grad_of(layer, x)
    assert dx.flatten().tolist() == [0, 2, 0, 1, 0, 0, 0, 1, 0]


def test_pooling_output_sizes():
    assert pool_ops.pooled_size(513, 3, 2, 1) == 257
    assert pool_ops.pooled_size(65, 3, 1, 1) == 65
    assert pool_ops.pooled_size(7, 2, 2, 0) == 4 and pool_ops.pooled_size(9, 2, 2, 0) == 5
    assert pool_ops.pooled_size(7, 3, 2, 1) == 4
    # clip rule only with padding
    assert pool_ops.pooled_size(6, 2, 5, 0) == 2
    assert pool_ops.pooled_size(6, 2, 5, 1) == 2  # (2-1)*5 = 5 < 6+1
    assert pool_ops.pooled_size(5, 2, 5, 0, clip=True) == 1


def test_global_pooling_follows_input_size():
    layer = make("Pooling", "pooling_param { pool: AVE global_pooling: true }", [(2, 3, 4, 5)])
    x = rand(2, 3, 6, 2, dtype=torch.float32)
    y = fwd(layer, x)[0]
    assert y.shape == (2, 3, 1, 1)
    torch.testing.assert_close(y[..., 0, 0], x.mean(dim=(2, 3)))
    layer = make("Pooling", "pooling_param { pool: MAX global_pooling: true }", [(2, 3, 4, 5)])
    torch.testing.assert_close(fwd(layer, x)[0][..., 0, 0], x.amax(dim=(2, 3)))
    with shape_only():
        assert fwd(layer, torch.empty(2, 3, 9, 9, device="meta"))[0].shape == (2, 3, 1, 1)


@pytest.mark.parametrize("params,tops,exc", [
    ("pooling_param { pool: STOCHASTIC kernel_size: 2 }", None, NotSupportedError),
    ("pooling_param { pool: MAX kernel_size: 2 pad: 2 }", None, LayerConfigError),
    ("pooling_param { pool: MAX global_pooling: true kernel_size: 2 }", None, LayerConfigError),
    ("pooling_param { pool: MAX global_pooling: true stride: 2 }", None, LayerConfigError),
    ("pooling_param { pool: MAX }", None, LayerConfigError),
    ("pooling_param { pool: MAX kernel_h: 2 }", None, LayerConfigError),
    ("pooling_param { pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2 }", None, LayerConfigError),
    ("pooling_param { pool: MAX kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1 }", None, LayerConfigError),
    ("pooling_param { pool: MAX kernel_size: 2 stride_h: 1 }", None, LayerConfigError),
    ("pooling_param { pool: MAX kernel_size: 2 stride: 0 }", None, LayerConfigError),
    ("pooling_param { pool: MAX kernel_size: 0 }", None, LayerConfigError),
    ("pooling_param { pool: AVE kernel_size: 2 }", ["y", "mask"], LayerConfigError),
    ("pooling_param { pool: MAX kernel_size: 2 }", ["y", "mask", "z"], LayerConfigError),
    ("pooling_param { pool: MAX kernel_size: 9 }", None, ShapeError),
])
def test_pooling_errors(params, tops, exc):
    with pytest.raises(exc, match="layer 'l'"):
        make("Pooling", params, [(1, 2, 5, 7)], tops=tops)


def test_pooling_forward_errors():
    layer = make("Pooling", "pooling_param { pool: MAX kernel_size: 3 }", [(1, 2, 5, 7)])
    with pytest.raises(ShapeError, match="4-D"):
        layer(torch.zeros(2, 5, 7))
    with pytest.raises(ShapeError, match="not positive"):
        layer(torch.zeros(1, 2, 1, 7))


# ============================================================================ neuron layers
def test_relu_gradient_at_zero_is_negative_slope():
    x = torch.tensor([-2.0, -0.0, 0.0, 3.0], dtype=torch.float64)
    for slope in (0.0, 0.1, -0.5):
        layer = make("ReLU", f"relu_param {{ negative_slope: {slope} }}", [(4,)])
        y, dx = grad_of(layer, x)
        xn = x.numpy()
        np.testing.assert_allclose(y.numpy(), np.maximum(xn, 0) + f32(slope) * np.minimum(xn, 0))
        np.testing.assert_allclose(dx.numpy(), [f32(slope)] * 3 + [1.0])


def test_prelu_forward_backward_and_blobs():
    layer = make("PReLU", "", [(2, 3, 4)], dtype=torch.float64)
    assert tuple(layer.blobs[0].shape) == (3,) and torch.all(layer.blobs[0] == 0.25)  # default filler
    shared = make("PReLU", 'prelu_param { channel_shared: true filler { type: "constant" value: 0.5 } }',
                  [(2, 3, 4)], dtype=torch.float64)
    assert tuple(shared.blobs[0].shape) == () and shared.blobs[0].item() == 0.5  # 0-axis blob, as Caffe
    a = np.array([0.1, -0.3, 2.0])
    set_blobs(layer, a)
    x = rand(2, 3, 4, seed=5)
    x[0, 1, 2] = 0.0
    dy = rand(2, 3, 4, seed=6)
    xr = x.clone().requires_grad_(True)
    y = fwd(layer, xr)[0]
    y.backward(dy)
    xn, dyn = x.numpy(), dy.numpy()
    ref = np.maximum(xn, 0) + a[None, :, None] * np.minimum(xn, 0)
    np.testing.assert_allclose(y.detach().numpy(), ref)
    np.testing.assert_allclose(xr.grad.numpy(), dyn * np.where(xn > 0, 1, a[None, :, None]))
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), (dyn * xn * (xn <= 0)).sum(axis=(0, 2)))
    y2 = fwd(shared, xr)[0]
    y2.backward(dy)
    np.testing.assert_allclose(shared.blobs[0].grad.item(), (dyn * xn * (xn <= 0)).sum())
    with pytest.raises(ShapeError):
        make("PReLU", "", [(5,)])
    with pytest.raises(ShapeError, match="channels"):
        layer(torch.zeros(2, 4, 4, dtype=torch.float64))


def test_elu():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.7], dtype=torch.float64)
    layer = make("ELU", "elu_param { alpha: 0.7 }", [(4,)])
    y, dx = grad_of(layer, x)
    xn = x.numpy()
    a = f32(0.7)
    np.testing.assert_allclose(y.numpy(), np.maximum(xn, 0) + a * (np.exp(np.minimum(xn, 0)) - 1))
    np.testing.assert_allclose(dx.numpy(), np.where(xn > 0, 1, a + y.numpy()), rtol=1e-12)
    assert dx[2].item() == a


def test_sigmoid_tanh():
    x = rand(3, 4, seed=1)
    y, dx = grad_of(make("Sigmoid", "", [(3, 4)]), x)
    s = 1 / (1 + np.exp(-x.numpy()))
    np.testing.assert_allclose(y.numpy(), s, rtol=1e-12)
    np.testing.assert_allclose(dx.numpy(), s * (1 - s), rtol=1e-12)
    y, dx = grad_of(make("TanH", "", [(3, 4)]), x)
    t = np.tanh(x.numpy())
    np.testing.assert_allclose(y.numpy(), t, rtol=1e-12)
    np.testing.assert_allclose(dx.numpy(), 1 - t * t, rtol=1e-12)


def test_absval_sign_zero_and_inplace_refused():
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    y, dx = grad_of(make("AbsVal", "", [(3,)]), x)
    assert y.tolist() == [2, 0, 3] and dx.tolist() == [-1, 0, 1]
    with pytest.raises(LayerConfigError, match="in-place"):
        make("AbsVal", "", [(3,)], bottoms=["x"], tops=["x"])


# ---------------------------------------------------------------------------- Power
POWER_CASES = [  # power, scale, shift
    (1.0, 1.0, 0.0), (1.0, 0.5, 0.25), (2.0, 1.0, 0.0), (2.0, -0.5, 1.5), (-1.0, 1.0, 0.0), (3.0, 2.0, 0.0),
    (0.5, 2.0, 3.0), (-1.5, 0.7, 4.0), (0.0, 2.0, 1.0), (2.5, 0.0, 1.5), (-2.0, 0.0, 0.0),
]


def caffe_power_ref(x, dy, p, a, b):
    """LAYERS.md §3.10 forward and backward, written out with numpy."""
    ds = p * a
    with np.errstate(all="ignore"):
        if ds == 0:
            y = np.full_like(x, 1.0 if p == 0 else np.power(b, p))
            return y, np.zeros_like(x)
        y = np.power(b + a * x, p)
        if p == 1:
            dx = np.full_like(x, ds)
        elif p == 2:
            dx = ds * a * x + ds * b
        elif b == 0:
            dx = p * y / x
        else:
            dx = ds * y / (a * x + b)
        return y, dx * dy


@pytest.mark.parametrize("p,a,b", POWER_CASES)
def test_power_all_cases(p, a, b):
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    x[0, 0] = 0.0  # singular point for shift 0: Caffe's y/x formula (NaN / inf), not the derivative
    dy = rand(3, 5, seed=2)
    layer = make("Power", f"power_param {{ power: {p} scale: {a} shift: {b} }}", [(3, 5)])
    y, dx = grad_of(layer, x, dy)
    ry, rdx = caffe_power_ref(x.numpy(), dy.numpy(), f32(p), f32(a), f32(b))
    np.testing.assert_allclose(y.numpy(), ry, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(dx.numpy(), rdx, rtol=1e-10, equal_nan=True)


@pytest.mark.parametrize("p,a,b", [c for c in POWER_CASES if c[0] * c[1] != 0])
def test_power_function_gradcheck(p, a, b):
    x = (torch.rand(2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: PowerFunction.apply(t, p, a, b), (x,))


def test_power_constant_case_blocks_nan_diff():
    layer = make("Power", "power_param { power: 2 scale: 0 shift: 3 }", [(2,)])
    y, dx = grad_of(layer, torch.tensor([1.0, 2.0]), torch.tensor([float("nan"), float("inf")]))
    assert y.tolist() == [9.0, 9.0] and dx.tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------------- Exp / Log
@pytest.mark.parametrize("params,fn", [
    ("", lambda x: np.exp(x)),
    ("exp_param { scale: -1 }", lambda x: np.exp(-x)),
    ("exp_param { base: 2 scale: 0.5 shift: 0.1 }", lambda x: 2 ** 0.1 * np.exp(np.log(2) * 0.5 * x)),
    ("exp_param { shift: 1 }", lambda x: -np.exp(x)),      # the fork's pow(-1, shift) quirk
    ("exp_param { shift: 2 scale: 3 }", lambda x: np.exp(3 * x)),
    ("exp_param { shift: 0.5 }", lambda x: np.full_like(x, np.nan)),
])
def test_exp(params, fn):
    x = rand(3, 4, seed=3)
    y, dx = grad_of(make("Exp", params, [(3, 4)]), x)
    ref = fn(x.numpy())
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-6, equal_nan=True)
    ep = schema.message_class("ExpParameter")()
    text_format.Merge(params.replace("exp_param {", "").rstrip("} "), ep)
    inner = ep.scale * (1.0 if ep.base == -1 else np.log(ep.base))  # ln(e) taken as exactly 1
    np.testing.assert_allclose(dx.numpy(), ref * inner, rtol=1e-6, equal_nan=True)


def test_exp_float32_constants_like_caffe():
    """inner = log(base)*scale is formed in float32, as Caffe's Dtype arithmetic does."""
    layer = make("Exp", "exp_param { base: 3 scale: 0.3 }", [(1,)])
    x = torch.tensor([40.0])
    inner32 = np.float32(np.float32(np.log(np.float64(np.float32(3.0)))) * np.float32(0.3))
    assert fwd(layer, x)[0].item() == pytest.approx(float(np.exp(np.float32(40.0) * inner32)), rel=1e-6)


def test_exp_log_errors():
    for bad in ("exp_param { base: 0 }", "exp_param { base: -2 }"):
        with pytest.raises(LayerConfigError, match="base"):
            make("Exp", bad, [(2,)])
    for bad in ("log_param { base: 0 }", "log_param { base: 1 }", "log_param { base: -3 }"):
        with pytest.raises(LayerConfigError, match="base"):
            make("Log", bad, [(2,)])


@pytest.mark.parametrize("base,scale,shift", [(-1, 1, 0), (10, 2, 0.5), (2, 0.5, 3)])
def test_log(base, scale, shift):
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1
    y, dx = grad_of(make("Log", f"log_param {{ base: {base} scale: {scale} shift: {shift} }}", [(3, 4)]), x)
    lb = 1.0 if base == -1 else np.log(base)
    t = scale * x.numpy() + shift
    np.testing.assert_allclose(y.numpy(), np.log(t) / lb, rtol=1e-12)
    np.testing.assert_allclose(dx.numpy(), scale / lb / t, rtol=1e-12)


# ---------------------------------------------------------------------------- BNLL / Threshold / Dropout
def test_bnll():
    x = torch.tensor([-60.0, -3.0, 0.0, 2.0, 80.0], dtype=torch.float64)
    y, dx = grad_of(make("BNLL", "", [(5,)]), x)
    xn = x.numpy()
    ref = np.where(xn > 0, xn + np.log(1 + np.exp(-xn)), np.log(1 + np.exp(xn)))
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12)
    e = np.exp(np.minimum(xn, 50))
    np.testing.assert_allclose(dx.numpy(), e / (e + 1), rtol=1e-12)
    assert dx[2].item() == 0.5
    # float32: the log is taken in double as Caffe does
    y32 = fwd(make("BNLL", "", [(5,)]), x.float())[0]
    np.testing.assert_allclose(y32.numpy(), ref.astype(np.float32), rtol=1e-6)


def test_bnll_gradcheck():
    x = rand(3, 4, seed=7, grad=True)
    assert torch.autograd.gradcheck(BNLLFunction.apply, (x,))


def test_threshold():
    x = torch.tensor([-1.0, 0.2, 0.5, 0.7], requires_grad=True)
    y = fwd(make("Threshold", "threshold_param { threshold: 0.5 }", [(4,)]), x)[0]
    assert y.tolist() == [0, 0, 0, 1] and not y.requires_grad
    assert fwd(make("Threshold", "", [(4,)]), x)[0].tolist() == [0, 1, 1, 1]


def test_dropout_test_and_train():
    x = rand(4, 50, 20, seed=1)
    test = make("Dropout", "dropout_param { dropout_ratio: 0.3 }", [tuple(x.shape)], phase="TEST")
    y, dx = grad_of(test, x, dy=torch.full_like(x, 2.0))
    assert torch.equal(y, x) and torch.all(dx == 2)
    a = make("Dropout", "dropout_param { dropout_ratio: 0.3 }", [tuple(x.shape)], phase="TRAIN", seed=5)
    b = make("Dropout", "dropout_param { dropout_ratio: 0.3 }", [tuple(x.shape)], phase="TRAIN", seed=5)
    ya, dxa = grad_of(a, x)
    yb = fwd(b, x)[0]
    assert torch.equal(ya, yb)  # the net's generator makes masks reproducible
    kept = ya != 0
    torch.testing.assert_close(ya[kept], x[kept] / 0.7)
    assert abs(kept.double().mean().item() - 0.7) < 0.02
    torch.testing.assert_close(dxa, kept.double() / 0.7)
    for bad in ("1.0", "-0.1", "1.5"):
        with pytest.raises(LayerConfigError, match="dropout_ratio"):
            make("Dropout", f"dropout_param {{ dropout_ratio: {bad} }}", [(2,)])


# ============================================================================ BatchNorm
def test_batchnorm_defaults_and_global_formula():
    layer = make("BatchNorm", "", [(2, 3, 4, 5)], dtype=torch.float64)
    assert [tuple(b.shape) for b in layer.blobs] == [(3,), (3,), (1,)]
    assert all(torch.all(b == 0) for b in layer.blobs)
    assert layer.use_global_stats and layer.eps == FLT_EPS_DEFAULT  # float32 1e-5, as Caffe read it
    # blob2 == 0: factor 0 -> mean 0, var 0: y = x / sqrt(eps)
    x = rand(2, 3, 4, 5, seed=1)
    y = fwd(layer, x)[0]
    torch.testing.assert_close(y, x / math.sqrt(FLT_EPS_DEFAULT))
    m, v, s = np.array([0.5, -1.0, 2.0]), np.array([1.0, 4.0, 0.25]), 2.5
    set_blobs(layer, m, v, [s])
    dy = rand(2, 3, 4, 5, seed=2)
    y, dx = grad_of(layer, x, dy)
    std = np.sqrt(v / s + FLT_EPS_DEFAULT)[None, :, None, None]
    np.testing.assert_allclose(y.numpy(), (x.numpy() - (m / s)[None, :, None, None]) / std, rtol=1e-12)
    np.testing.assert_allclose(dx.numpy(), dy.numpy() / std, rtol=1e-12)


def test_batchnorm_params_get_no_gradient():
    layer = make("BatchNorm", "batch_norm_param { use_global_stats: true }", [(2, 3, 4)])
    set_blobs(layer, [1, 2, 3], [1, 1, 1], [1])
    x = torch.randn(2, 3, 4, requires_grad=True)
    fwd(layer, x)[0].sum().backward()
    assert all(b.grad is None for b in layer.blobs)


def test_batchnorm_train_batch_statistics_bvlc():
    """use_global_stats absent in TRAIN: BVLC batch statistics + moving averages; frozen backward."""
    layer = make("BatchNorm", "batch_norm_param { moving_average_fraction: 0.9 }", [(4, 3, 5, 2)],
                 phase="TRAIN", dtype=torch.float64)
    assert not layer.use_global_stats
    b0, b1 = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5, 0.5])
    set_blobs(layer, b0, b1, [2.0])
    x = rand(4, 3, 5, 2, seed=4) * 3 + 1
    dy = rand(4, 3, 5, 2, seed=5)
    y, dx = grad_of(layer, x, dy)
    xn = x.numpy()
    mean = xn.mean(axis=(0, 2, 3))
    var = xn.var(axis=(0, 2, 3))
    std = np.sqrt(var + FLT_EPS_DEFAULT)[None, :, None, None]
    np.testing.assert_allclose(y.numpy(), (xn - mean[None, :, None, None]) / std, rtol=1e-10)
    np.testing.assert_allclose(dx.numpy(), dy.numpy() / std, rtol=1e-10)  # frozen rule
    m = xn.size // 3
    maf = f32(0.9)
    np.testing.assert_allclose(layer.blobs[2].detach().numpy(), [2.0 * maf + 1])
    np.testing.assert_allclose(layer.blobs[0].detach().numpy(), mean + maf * b0, rtol=1e-10)
    np.testing.assert_allclose(layer.blobs[1].detach().numpy(), m / (m - 1) * var + maf * b1, rtol=1e-10)


def test_batchnorm_update_global_stats_fork_mode():
    layer = make("BatchNorm", "batch_norm_param { use_global_stats: true update_global_stats: true "
                 "moving_average_fraction: 0.5 }", [(3, 2, 4)], phase="TRAIN", dtype=torch.float64)
    b0, b1, s = np.array([1.0, -2.0]), np.array([3.0, 5.0]), 4.0
    set_blobs(layer, b0, b1, [s])
    x = rand(3, 2, 4, seed=9)
    dy = rand(3, 2, 4, seed=10)
    y, dx = grad_of(layer, x, dy)
    gmean = (b0 / s)[None, :, None]
    vb = ((x.numpy() - gmean) ** 2).mean(axis=(0, 2))
    std = np.sqrt(vb + FLT_EPS_DEFAULT)[None, :, None]
    np.testing.assert_allclose(y.numpy(), (x.numpy() - gmean) / std, rtol=1e-10)
    np.testing.assert_allclose(dx.numpy(), dy.numpy() / std, rtol=1e-10)
    m = 12
    np.testing.assert_allclose(layer.blobs[2].detach().numpy(), [s * 0.5 + 1])
    np.testing.assert_allclose(layer.blobs[0].detach().numpy(), b0 / s + 0.5 * b0)
    np.testing.assert_allclose(layer.blobs[1].detach().numpy(), m / (m - 1) * vb + 0.5 * b1, rtol=1e-10)
    # the same layer in TEST phase does not update anything
    test = make("BatchNorm", "batch_norm_param { use_global_stats: true update_global_stats: true }", [(3, 2, 4)],
                phase="TEST", dtype=torch.float64)
    set_blobs(test, b0, b1, [s])
    fwd(test, x)
    assert test.blobs[2].item() == s


def test_batchnorm_shape_pass_updates_nothing_and_small_ranks():
    layer = make("BatchNorm", "", [(2, 3)], phase="TRAIN")
    with shape_only():
        assert fwd(layer, torch.empty(2, 3, device="meta"))[0].shape == (2, 3)
    assert layer.blobs[2].item() == 0
    layer1 = make("BatchNorm", "batch_norm_param { use_global_stats: true }", [(5,)], dtype=torch.float64)
    set_blobs(layer1, [1.0], [4.0], [1.0])
    x = rand(5, seed=1)
    torch.testing.assert_close(fwd(layer1, x)[0], (x - 1) / math.sqrt(4 + FLT_EPS_DEFAULT))


def test_batchnorm_errors():
    with pytest.raises(LayerConfigError, match="moving_average_fraction"):
        make("BatchNorm", "batch_norm_param { moving_average_fraction: 1.5 }", [(2, 3)])
    layer = make("BatchNorm", "", [(2, 3, 4)])
    with pytest.raises(ShapeError, match="channels"):
        layer(torch.zeros(2, 4, 4))


# ============================================================================ LRN
def np_lrn_across(x, size, alpha, beta, k):
    n, c, h, w = x.shape
    pre = (size - 1) // 2
    sq = np.zeros((n, c + size - 1, h, w))
    sq[:, pre:pre + c] = x * x
    scale = k + alpha / size * np.stack([sq[:, i:i + size].sum(axis=1) for i in range(c)], axis=1)
    return x * scale ** -beta


def np_lrn_within(x, size, alpha, beta):
    pre = (size - 1) // 2
    avg, _, _ = np_pool(x * x, "AVE", (size, size), (1, 1), (pre, pre))
    return x * (1 + alpha * avg) ** -beta


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-2, 0.75, 1.0), (3, 2.0, 0.5, 2.0), (1, 0.5, 1.2, 0.7)])
def test_lrn_across_channels(size, alpha, beta, k):
    x = rand(2, 6, 3, 4, seed=2)
    layer = make("LRN", f"lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }}", [(2, 6, 3, 4)])
    y = fwd(layer, x)[0]
    np.testing.assert_allclose(y.numpy(), np_lrn_across(x.numpy(), size, f32(alpha), f32(beta), f32(k)), rtol=1e-12)
    xr = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: layer(t)[0], (xr,))


@pytest.mark.parametrize("size,alpha,beta", [(3, 1.0, 0.75), (5, 0.3, 2.0)])
def test_lrn_within_channel(size, alpha, beta):
    x = rand(1, 2, 4, 5, seed=3)
    layer = make("LRN", f"lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} norm_region: WITHIN_CHANNEL }}",
                 [(1, 2, 4, 5)])
    y = fwd(layer, x)[0]
    np.testing.assert_allclose(y.numpy(), np_lrn_within(x.numpy(), size, f32(alpha), f32(beta)), rtol=1e-12)
    xr = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: layer(t)[0], (xr,))


def test_lrn_errors():
    with pytest.raises(LayerConfigError, match="odd"):
        make("LRN", "lrn_param { local_size: 4 }", [(1, 3, 4, 4)])
    with pytest.raises(ShapeError, match="4-D"):
        make("LRN", "", [(3, 4, 4)])


# ============================================================================ MVN
@pytest.mark.parametrize("nv,across", [(True, False), (True, True), (False, False), (False, True)])
def test_mvn_forward_and_caffe_backward(nv, across):
    eps = 0.25  # large, so Caffe's (std + eps) backward differs visibly from the exact derivative
    x = rand(2, 3, 4, 5, seed=4)
    layer = make("MVN", f"mvn_param {{ normalize_variance: {'true' if nv else 'false'} "
                 f"across_channels: {'true' if across else 'false'} eps: {eps} }}", [(2, 3, 4, 5)])
    dy = rand(2, 3, 4, 5, seed=5)
    y, dx = grad_of(layer, x, dy)
    rows = 2 if across else 6
    xn, dyn = x.numpy().reshape(rows, -1), dy.numpy().reshape(rows, -1)
    xc = xn - xn.mean(axis=1, keepdims=True)
    if nv:
        s = np.sqrt((xc ** 2).mean(axis=1, keepdims=True)) + eps
        ry = xc / s
        rdx = (dyn - dyn.mean(axis=1, keepdims=True) - ry * (dyn * ry).mean(axis=1, keepdims=True)) / s
    else:
        ry, rdx = xc, dyn - dyn.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(y.numpy().reshape(rows, -1), ry, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx.numpy().reshape(rows, -1), rdx, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("nv", [True, False])
def test_mvn_function_gradcheck_without_eps(nv):
    """With eps = 0 Caffe's MVN backward is the exact derivative: gradcheck it."""
    x = rand(4, 7, seed=6, grad=True)
    assert torch.autograd.gradcheck(lambda t: MVNFunction.apply(t, nv, 0.0), (x,))


def test_mvn_default_eps_and_ranks():
    layer = make("MVN", "", [(2, 3)])
    assert layer.eps == float(np.float32(1e-9))
    assert fwd(layer, torch.randn(2, 3))[0].abs().max() == 0  # one element per row -> 0
    with pytest.raises(ShapeError):
        make("MVN", "", [(1, 2, 3, 4, 5)])


# ============================================================================ generic
ALL_TYPES = ["Convolution", "Deconvolution", "InnerProduct", "Pooling", "ReLU", "PReLU", "ELU", "Sigmoid", "TanH",
             "AbsVal", "Power", "Exp", "Log", "BNLL", "Threshold", "Dropout", "BatchNorm", "LRN", "MVN"]
META_PARAMS = {
    "Convolution": "convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 }",
    "Deconvolution": "convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 }",
    "InnerProduct": "inner_product_param { num_output: 4 }",
    "Pooling": "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }",
}
META_OUT = {"Convolution": (2, 4, 4, 5), "Deconvolution": (2, 4, 14, 18), "InnerProduct": (2, 4),
            "Pooling": (2, 6, 4, 5)}


@pytest.mark.parametrize("type_name", ALL_TYPES)
@pytest.mark.parametrize("phase", ["TEST", "TRAIN"])
def test_every_layer_runs_on_meta_and_float64(type_name, phase):
    shape = (2, 6, 7, 9)
    layer = make(type_name, META_PARAMS.get(type_name, ""), [shape], phase=phase)
    meta_params = {n: torch.empty_like(p, device="meta") for n, p in layer.named_parameters()}
    with shape_only():
        out = torch.func.functional_call(layer, meta_params, (torch.empty(shape, device="meta"),))
    assert out[0].shape == META_OUT.get(type_name, shape)
    layer64 = make(type_name, META_PARAMS.get(type_name, ""), [shape], phase=phase, dtype=torch.float64)
    x = torch.rand(shape, dtype=torch.float64) + 0.1
    y = layer64(x)[0]
    assert y.dtype == torch.float64 and y.shape == META_OUT.get(type_name, shape)


def test_registry_and_errors_are_library_errors():
    for t in ALL_TYPES:
        assert get_layer_class(t).type_name == t
    with pytest.raises(CaffeCompatError):
        make("ReLU", "", [(2,), (2,)])  # wrong bottom count


def test_golden_index_lists_my_cases():
    """Guard: every conv/pool/BN/... golden case of group A is exercised by the direct test above."""
    idx = json.loads(reference_path("golden", "layers", "INDEX.json").read_text())
    single = {c for c, v in idx.items() if v["layer_type"] in
              ("Convolution", "Pooling", "BatchNorm", "AbsVal", "Exp", "Power", "ReLU", "Dropout")}
    assert single <= set(GOLDEN_SINGLE)


def test_pooled_size_integer_path_is_caffes_float32_formula():
    """pooled_size divides with integers below 2**24 (traceable); Caffe divides in float32: same sizes."""
    import math as _m

    def caffe(size, kernel, stride, pad):
        with np.errstate(all="ignore"):
            q = np.float32(np.float32(size + 2 * pad - kernel) / np.float32(stride))
        out = int(_m.ceil(float(q))) + 1
        if pad > 0 and (out - 1) * stride >= size + pad:
            out -= 1
        return out

    rng = np.random.default_rng(0)
    cases = [(int(s), int(k), int(st), int(p)) for s, k, st, p in zip(
        rng.integers(1, 1 << 24, 3000), rng.integers(1, 40, 3000), rng.integers(1, 300, 3000),
        rng.integers(0, 20, 3000))]
    cases += [(1 << 24, 1, 3, 0), ((1 << 24) + 5, 2, 7, 1), (50_000_000, 3, 3, 0), (9, 3, 2, 1)]
    for s, k, st, p in cases:
        assert pool_ops.pooled_size(s, k, st, p) == caffe(s, k, st, p), (s, k, st, p)
