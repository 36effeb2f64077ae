"""NormConv / NormConvMeanfield (the segmentation-aware CRF): semantics, gradients and errors.

The golden cases of the original fork (normconvmeanfield_*) are run by
tests/test_golden_layers.py; here: the distance semantics against the fork's
Im2dist goldens, the masked convolution against an explicit im2col formula,
float64 gradchecks of both autograd Functions and of a tiny CRF, the fork's
quirks (dilation 0 / scale 0 defaults, all-removed columns, Z = +D without a
scale term), batches and other sizes, and every clear error on bad input.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

import caffe_compat
from caffe_compat import schema
from caffe_compat.errors import LayerConfigError, NotSupportedError, ShapeError
from caffe_compat.layers import BuildContext, get_layer_class, shape_only
from caffe_compat.layers.geometry import parse_conv_geometry
from caffe_compat.ops.meanfield import MeanfieldKernel, normconv_meanfield
from caffe_compat.ops.norm_conv import (FLT_MAX_OVER_100, L1, L2, Window, _dist_backward, masked_window_sum,
                                        norm_conv, normconv_mask, window_distances)

from conftest import REFERENCE_DIR, reference_path

BIG = FLT_MAX_OVER_100


# ----------------------------------------------------------------------------- helpers
def make_layer(text: str, shapes, dtype=torch.float32, seed=0):
    lp = text_format.Merge(text, schema.LayerParameter())
    g = torch.Generator().manual_seed(seed)
    return get_layer_class(lp.type)(lp, shapes, BuildContext(dtype=dtype, generator=g))


def naive_im2dist(x: np.ndarray, geom: Window, norm: int, rc: bool, rb: bool) -> np.ndarray:
    """LAYERS.md §2.2, written out with loops (float64)."""
    N, E, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom.kernel, geom.stride, geom.pad, geom.dilation
    Ho, Wo = geom.output_size(H, W)
    out = np.zeros((N, kh * kw, Ho, Wo))
    for n in range(N):
        for y in range(Ho):
            for xx in range(Wo):
                cy, cx = y * sh - ph + (kh // 2) * dh, xx * sw - pw + (kw // 2) * dw
                if not (0 <= cy < H and 0 <= cx < W):
                    continue
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        hy, hx = y * sh - ph + i * dh, xx * sw - pw + j * dw
                        if rc and (hy, hx) == (cy, cx):
                            out[n, k, y, xx] = BIG
                        elif 0 <= hy < H and 0 <= hx < W:
                            d = x[n, :, cy, cx] - x[n, :, hy, hx]
                            out[n, k, y, xx] = 0.5 * (d * d).sum() if norm == L2 else np.abs(d).sum()
                        elif rb:
                            out[n, k, y, xx] = BIG
    return out


def naive_norm_conv(img, emb, weight, bias, scale, geom: Window, group, norm, rc, rb):
    """§2.6 with an explicit im2col (F.unfold): never used at scale, only to check."""
    N, C, H, W = img.shape
    Ho, Wo = geom.output_size(H, W)
    K = geom.taps
    D = torch.from_numpy(naive_im2dist(emb.detach().double().numpy(), geom, norm, rc, rb)).to(img.dtype)
    Z = D if scale is None else -scale.reshape(()) * D
    A = torch.softmax(Z, dim=1).reshape(N, 1, K, Ho * Wo)
    X = F.unfold(img, geom.kernel, dilation=geom.dilation, padding=geom.pad, stride=geom.stride)
    R = (X.reshape(N, C, K, -1) * A).reshape(N, group, (C // group) * K, -1)
    O = weight.shape[0]
    Wg = weight.reshape(group, O // group, -1)
    y = torch.einsum("gok,ngkp->ngop", Wg, R).reshape(N, O, Ho, Wo)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y


def conv_geom_from(lp):
    cp = lp.convolution_param
    g = parse_conv_geometry(cp, lambda m: AssertionError(m))
    return Window(g.kernel, g.stride, g.pad, g.dilation)


GEOMS = [
    Window((3, 3), (1, 1), (1, 1), (1, 1)),
    Window((3, 3), (2, 2), (1, 1), (1, 1)),
    Window((3, 5), (1, 2), (2, 1), (2, 1)),
    Window((2, 4), (1, 1), (1, 2), (1, 1)),   # even kernels: asymmetric offsets
    Window((3, 3), (1, 1), (3, 2), (1, 1)),   # pad > k//2: centres outside the image
    Window((5, 5), (1, 1), (6, 6), (3, 3)),
    Window((3, 3), (1, 1), (0, 0), (0, 0)),   # dilation 0: every tap is the centre pixel
]


# ----------------------------------------------------------------------------- distances
@pytest.mark.parametrize("gi", range(len(GEOMS)))
@pytest.mark.parametrize("norm", [L1, L2])
@pytest.mark.parametrize("rc,rb", [(False, False), (True, False), (False, True), (True, True)])
def test_window_distances_match_explicit_im2dist(gi, norm, rc, rb):
    geom = GEOMS[gi]
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(gi))
    got = window_distances(x, geom, norm, rc, rb).numpy()
    want = naive_im2dist(x.numpy(), geom, norm, rc, rb)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _im2dist_cases():
    try:
        idx = json.loads(reference_path("golden", "layers", "INDEX.json").read_text())
    except BaseException:  # reference absent: the test skips (a missing part of it fails collection)
        if REFERENCE_DIR.exists():
            raise
        return ["<reference absent>"]
    return sorted(c for c, v in idx.items() if v["layer_type"] == "Im2dist")


@pytest.mark.parametrize("case", _im2dist_cases())
def test_distances_and_their_backward_match_fork_im2dist_goldens(case):
    """The fork's own Im2dist outputs/gradients (incl. L1 sigma(0) = 0) equal this module's distances."""
    d = np.load(reference_path("golden", "layers", f"{case}.npz"))
    net = text_format.Merge(str(d["prototxt"]), schema.NetParameter())
    lp = net.layer[0]
    geom = conv_geom_from(lp)
    ip = lp.im2dist_param
    norm = int(ip.norm)
    x = torch.from_numpy(d["in/x"])
    D = window_distances(x, geom, norm, bool(ip.remove_center), bool(ip.remove_bounds))
    want = d["out/y"]
    assert np.abs(D.numpy() - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-30)
    g = _dist_backward(x, torch.from_numpy(d["top_diff/y"]), geom, norm)
    want = d["bottom_diff/x"]
    assert np.abs(g.numpy() - want).max() <= 1e-4 * max(np.abs(want).max(), 1e-30)


# ----------------------------------------------------------------------------- NormConv forward
@pytest.mark.parametrize("gi", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("group", [1, 2])
def test_norm_conv_matches_explicit_formula(gi, group):
    geom = GEOMS[gi]
    g = torch.Generator().manual_seed(10 + gi)
    img = torch.randn(2, 4, 6, 7, dtype=torch.float64, generator=g)
    emb = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=g)
    w = torch.randn(6, 4 // group, *geom.kernel, dtype=torch.float64, generator=g)
    b = torch.randn(6, dtype=torch.float64, generator=g)
    s = torch.tensor([0.8], dtype=torch.float64)
    for norm, rc, rb in [(L2, False, False), (L1, True, True), (L2, True, False)]:
        got = norm_conv(img, emb, w, b, s, geom, group, norm, rc, rb)
        want = naive_norm_conv(img, emb, w, b, s, geom, group, norm, rc, rb)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_norm_conv_without_scale_term_uses_plus_distance():
    """The fork's scale_term: false gives Z = +D (no negation): far neighbours get the weight."""
    geom = GEOMS[0]
    g = torch.Generator().manual_seed(3)
    img = torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=g)
    emb = torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=g)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=g)
    got = norm_conv(img, emb, w, None, None, geom, 1, L2)
    want = naive_norm_conv(img, emb, w, None, None, geom, 1, L2, False, False)
    torch.testing.assert_close(got, want)
    A = normconv_mask(emb, None, geom, L2)
    torch.testing.assert_close(A, torch.softmax(window_distances(emb, geom, L2), 1))


def test_mask_all_taps_removed_is_uniform_and_has_no_gradient():
    """Every tap removed (centre + all neighbours outside): softmax of equal values = 1/K over all taps,
    so the column averages the centre pixel with zeros; the true derivative w.r.t. features and scale is 0."""
    geom = Window((3, 3), (1, 1), (3, 3), (3, 3))        # 2x2 image: every neighbour is outside
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(1, 2, 2, 2, dtype=torch.float64, generator=g, requires_grad=True)
    s = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    A = normconv_mask(emb, s, geom, L2, True, True)
    torch.testing.assert_close(A, torch.full_like(A, 1 / 9))
    img = torch.randn(1, 3, 2, 2, dtype=torch.float64, generator=g)
    y = masked_window_sum(img, A, geom)
    torch.testing.assert_close(y, img / 9)
    (y * torch.randn_like(y)).sum().backward()
    assert torch.all(emb.grad == 0) and torch.all(s.grad == 0)


def test_mask_removed_entries_get_exactly_zero_weight():
    geom = Window((3, 3), (1, 1), (1, 1), (1, 1))
    emb = torch.randn(1, 2, 4, 5)
    A = normconv_mask(emb, torch.tensor([1.0]), geom, L2, True, True)
    assert torch.all(A[:, 4] == 0)                           # the centre
    assert torch.all(A[:, 0, 0, :] == 0) and torch.all(A[:, 0, :, 0] == 0)   # up-left neighbour outside
    torch.testing.assert_close(A.sum(1), torch.ones(1, 4, 5))
    # without remove_bounds an outside neighbour has distance 0 (the largest weight) but adds image 0
    A2 = normconv_mask(emb, torch.tensor([1.0]), geom, L2, True, False)
    assert torch.all(A2[0, :, 0, 0].argmax() == 0)


# ----------------------------------------------------------------------------- gradchecks
@pytest.mark.parametrize("gi", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("norm,rc,rb", [(L2, False, False), (L2, True, True), (L1, True, False), (L1, False, True)])
def test_gradcheck_normconv_mask(gi, norm, rc, rb):
    geom = GEOMS[gi]
    g = torch.Generator().manual_seed(20 + gi)
    emb = (0.6 * torch.randn(2, 2, 3, 4, dtype=torch.float64, generator=g)).requires_grad_()
    s = torch.tensor([0.9], dtype=torch.float64, requires_grad=True)
    # L1 away from ties: random continuous features never tie; out-of-image/removed entries are constants
    assert torch.autograd.gradcheck(lambda e, sc: normconv_mask(e, sc, geom, norm, rc, rb), (emb, s))
    assert torch.autograd.gradcheck(lambda e: normconv_mask(e, None, geom, norm, rc, rb), (emb,))


@pytest.mark.parametrize("gi", [0, 2, 3, 4, 6])
@pytest.mark.parametrize("group", [None, 1, 2])
def test_gradcheck_masked_window_sum(gi, group):
    geom = GEOMS[gi]
    g = torch.Generator().manual_seed(30 + gi)
    img = torch.randn(2, 2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    Ho, Wo = geom.output_size(3, 4)
    A = torch.rand(2, geom.taps, Ho, Wo, dtype=torch.float64, generator=g, requires_grad=True)
    if group is None:
        assert torch.autograd.gradcheck(lambda x, a: masked_window_sum(x, a, geom), (img, A))
    else:
        w = torch.randn(4, 2 // group, *geom.kernel, dtype=torch.float64, generator=g, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, a, ww: masked_window_sum(x, a, geom, ww, group), (img, A, w))


def test_gradcheck_norm_conv_all_inputs():
    geom = Window((3, 3), (1, 1), (2, 2), (2, 2))
    g = torch.Generator().manual_seed(5)
    img = torch.randn(2, 2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    emb = (0.5 * torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g)).requires_grad_()
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    s = torch.tensor([1.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: norm_conv(*a, geom=geom, group=2, norm=L2, remove_center=True, remove_bounds=False),
        (img, emb, w, b, s))


# scales as the prototxt's float32 fields hold them
TINY_BIL = MeanfieldKernel(Window((3, 3), (1, 1), (2, 2), (2, 2)), float(np.float32(0.7)), True, True)
TINY_SP = MeanfieldKernel(Window((3, 3), (1, 1), (1, 1), (1, 1)), float(np.float32(1.3)), True, True)


def test_gradcheck_tiny_meanfield():
    """T=2, C=3, 5x6: gradients to all four inputs and the three matrices."""
    g = torch.Generator().manual_seed(6)
    C, H, W = 3, 5, 6

    def r(*s, scale=1.0):
        return (scale * torch.randn(*s, dtype=torch.float64, generator=g)).requires_grad_()

    inputs = (r(1, C, H, W), r(1, C, H, W), r(1, 2, H, W, scale=0.7), r(1, 2, H, W, scale=0.7),
              r(1, 1, C, C, scale=0.5), r(1, 1, C, C, scale=0.5), r(1, 1, C, C, scale=0.5))
    assert torch.autograd.gradcheck(
        lambda *a: normconv_meanfield(*a, num_iterations=2, bilateral=TINY_BIL, spatial=TINY_SP), inputs)


# ----------------------------------------------------------------------------- layers
MF_TEXT = """name: "crf" type: "NormConvMeanfield" bottom: "unary" bottom: "Q0" bottom: "rgbxy" bottom: "xy"
top: "crf" norm_conv_meanfield_param {{ {body} }}"""
MF_BODY = ("num_iterations: 2 kernel_size: 3 pad: 2 dilation: 2 scale: 0.7 kernel_size: 3 pad: 1 dilation: 1 "
           "scale: 1.3")


def mf_layer(body=MF_BODY, shapes=((2, 3, 5, 6), (2, 3, 5, 6), (2, 2, 5, 6), (2, 2, 5, 6)), dtype=torch.float32):
    return make_layer(MF_TEXT.format(body=body), [list(s) for s in shapes], dtype=dtype)


def test_meanfield_layer_blobs_and_forward_equal_the_op():
    layer = mf_layer(dtype=torch.float64)
    assert [tuple(b.shape) for b in layer.blobs] == [(1, 1, 3, 3)] * 3
    eye = torch.eye(3, dtype=torch.float64).reshape(1, 1, 3, 3)
    torch.testing.assert_close(layer.blobs[0].data, eye)
    torch.testing.assert_close(layer.blobs[1].data, eye)
    torch.testing.assert_close(layer.blobs[2].data, -eye)
    assert layer.bilateral == TINY_BIL and layer.spatial == TINY_SP
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64) for _ in range(2)] + \
         [torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    (top,) = layer(*xs)
    want = normconv_meanfield(*xs, *layer.blobs, num_iterations=2, bilateral=TINY_BIL, spatial=TINY_SP)
    torch.testing.assert_close(top, want)


def test_meanfield_explicit_iteration_formula():
    """top = U - K (W_G S + W_B B); S/B = NormConv of softmax(Q) with unit depthwise weights."""
    layer = mf_layer(dtype=torch.float64)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for b in layer.blobs:
            b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64))
    u, q0 = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64), torch.randn(2, 3, 5, 6, generator=g,
                                                                                    dtype=torch.float64)
    fb, fs = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64), torch.randn(2, 2, 5, 6, generator=g,
                                                                                     dtype=torch.float64)
    ones = torch.ones(3, 1, 3, 3, dtype=torch.float64)
    q = q0
    for _ in range(2):
        p = torch.softmax(q, 1)
        S = naive_norm_conv(p, fs, ones, None, torch.tensor(TINY_SP.scale, dtype=torch.float64), TINY_SP.window,
                            3, L2, True, True)
        B = naive_norm_conv(p, fb, ones, None, torch.tensor(TINY_BIL.scale, dtype=torch.float64),
                            TINY_BIL.window, 3, L2, True, True)
        mm = lambda m, x: torch.einsum("rc,nchw->nrhw", m.reshape(3, 3), x)  # noqa: E731
        q = u - mm(layer.blobs[2], mm(layer.blobs[0], S) + mm(layer.blobs[1], B))
    torch.testing.assert_close(layer(u, q0, fb, fs)[0], q)


def test_meanfield_default_params_dilation0_scale0():
    """Absent lists: pad 0, stride 1, dilation 0, scale 0, remove flags true.  Every tap is the centre
    pixel, all removed -> uniform masks -> S = B = softmax(Q); features get no gradient."""
    layer = mf_layer(body="num_iterations: 3 kernel_size: 5 kernel_size: 3", dtype=torch.float64)
    assert layer.bilateral == MeanfieldKernel(Window((5, 5), (1, 1), (0, 0), (0, 0)), 0.0, True, True)
    assert layer.spatial == MeanfieldKernel(Window((3, 3), (1, 1), (0, 0), (0, 0)), 0.0, True, True)
    g = torch.Generator().manual_seed(9)
    u = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    q0 = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    fb = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    fs = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    top = layer(u, q0, fb, fs)[0]
    q = q0
    for _ in range(3):
        q = u + 2 * torch.softmax(q, 1)          # K = -I, W_G = W_B = I
    torch.testing.assert_close(top, q)
    top.sum().backward()
    assert torch.all(fb.grad == 0) and torch.all(fs.grad == 0)


def test_meanfield_batch_equals_per_image_and_other_sizes_work():
    layer = mf_layer(dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    shapes = [(3, 3, 7, 4), (3, 3, 7, 4), (3, 4, 7, 4), (3, 2, 7, 4)]   # other N, H, W and E than at build
    xs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    top = layer(*xs)[0]
    assert top.shape == (3, 3, 7, 4)
    for n in range(3):
        torch.testing.assert_close(top[n:n + 1], layer(*[x[n:n + 1] for x in xs])[0])


def test_meanfield_float32_close_to_float64():
    l32, l64 = mf_layer(), mf_layer(dtype=torch.float64)
    g = torch.Generator().manual_seed(12)
    xs = [torch.randn(s, generator=g) for s in ((2, 3, 5, 6), (2, 3, 5, 6), (2, 2, 5, 6), (2, 2, 5, 6))]
    torch.testing.assert_close(l32(*xs)[0].double(), l64(*[x.double() for x in xs])[0], rtol=1e-5, atol=1e-5)


def test_meanfield_param_grads_accumulate_like_pytorch():
    """Deliberate difference: the fork overwrites the matrices' diffs each backward; here they accumulate."""
    layer = mf_layer(dtype=torch.float64)
    g = torch.Generator().manual_seed(13)
    xs = [torch.randn(s, generator=g, dtype=torch.float64)
          for s in ((2, 3, 5, 6), (2, 3, 5, 6), (2, 2, 5, 6), (2, 2, 5, 6))]
    layer(*xs)[0].sum().backward()
    first = [b.grad.clone() for b in layer.blobs]
    layer(*xs)[0].sum().backward()
    for b, f in zip(layer.blobs, first):
        torch.testing.assert_close(b.grad, 2 * f)


def test_meanfield_shape_pass_on_meta():
    layer = mf_layer()
    xs = [torch.empty(s, device="meta") for s in ((2, 3, 9, 8), (2, 3, 9, 8), (2, 2, 9, 8), (2, 2, 9, 8))]
    with shape_only():
        (top,) = layer(*xs)
    assert top.is_meta and top.shape == (2, 3, 9, 8)


def test_meanfield_in_a_net_with_res_config_params():
    text = """
name: "t" force_backward: true
input: "fc" input_shape { dim: 1 dim: 4 dim: 10 dim: 12 }
input: "rgbxy" input_shape { dim: 1 dim: 5 dim: 10 dim: 12 }
input: "xy" input_shape { dim: 1 dim: 2 dim: 10 dim: 12 }
layer { type: 'Split' name: 'splitting' bottom: 'fc' top: 'unary' top: 'Q0' }
layer { name: "crf" type: "NormConvMeanfield" bottom: "unary" bottom: "Q0" bottom: "rgbxy" bottom: "xy"
  top: "crf" param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }
  norm_conv_meanfield_param { num_iterations: 2 kernel_size: 13 pad: 54 dilation: 9 scale: 1
    kernel_size: 5 pad: 2 dilation: 1 scale: 1 remove_center: true remove_center: true
    remove_bounds: true remove_bounds: true } }
"""
    net = caffe_compat.Net.from_string(text)
    assert net.infer_shapes(fc=(2, 4, 11, 7), rgbxy=(2, 5, 11, 7), xy=(2, 2, 11, 7))["crf"] == (2, 4, 11, 7)
    g = torch.Generator().manual_seed(14)
    out = net.forward(fc=torch.randn(1, 4, 10, 12, generator=g), rgbxy=torch.randn(1, 5, 10, 12, generator=g),
                      xy=torch.randn(1, 2, 10, 12, generator=g))["crf"]
    assert out.shape == (1, 4, 10, 12) and torch.isfinite(out).all()


def test_normconv_layer_blobs_forward_and_1x1_gradient():
    text = """name: "nc" type: "NormConv" bottom: "img" bottom: "emb" top: "y"
      convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 2
        weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.25 } }
      norm_conv_param { norm: L1 remove_center: true scale_filler { type: "constant" value: 0.5 } }"""
    layer = make_layer(text, [[2, 2, 5, 6], [2, 3, 5, 6]], dtype=torch.float64)
    assert [tuple(b.shape) for b in layer.blobs] == [(4, 1, 3, 3), (4,), (1,)]
    assert layer.blobs[2].item() == 0.5 and torch.all(layer.blobs[1] == 0.25)
    g = torch.Generator().manual_seed(15)
    img = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64)
    emb = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    want = naive_norm_conv(img, emb, layer.blobs[0], layer.blobs[1], layer.blobs[2], Window((3, 3), (1, 1), (1, 1)),
                           2, L1, True, False)
    torch.testing.assert_close(layer(img, emb)[0], want)
    # 1x1 / stride 1 / pad 0: the fork never writes the input gradients; here they are correct:
    # with one tap the mask is 1, so NormConv is a plain 1x1 convolution
    text1 = """name: "nc1" type: "NormConv" bottom: "img" bottom: "emb" top: "y"
      convolution_param { num_output: 3 kernel_size: 1 bias_term: false weight_filler { type: "gaussian" } }
      norm_conv_param { scale_filler { type: "constant" value: 1 } }"""
    l1 = make_layer(text1, [[1, 2, 4, 4], [1, 2, 4, 4]], dtype=torch.float64)
    assert [tuple(b.shape) for b in l1.blobs] == [(3, 2, 1, 1), (1,)]
    x = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    e = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = l1(x, e)[0]
    torch.testing.assert_close(y, F.conv2d(x, l1.blobs[0]))
    gy = torch.randn_like(y)
    y.backward(gy)
    torch.testing.assert_close(x.grad, F.conv_transpose2d(gy, l1.blobs[0]))
    assert torch.all(e.grad == 0)


def test_normconv_layer_meta_and_float32():
    text = """name: "nc" type: "NormConv" bottom: "img" bottom: "emb" top: "y"
      convolution_param { num_output: 2 kernel_size: 3 stride: 2 dilation: 2 pad: 2 } norm_conv_param { }"""
    layer = make_layer(text, [[1, 2, 9, 8], [1, 3, 9, 8]])
    assert [tuple(b.shape) for b in layer.blobs] == [(2, 2, 3, 3), (2,), (1,)]   # bias and scale by default
    with shape_only():
        (y,) = layer(torch.empty(1, 2, 9, 8, device="meta"), torch.empty(1, 3, 9, 8, device="meta"))
    assert y.is_meta and y.shape == (1, 2, 5, 4)
    y = layer(torch.randn(1, 2, 9, 8), torch.randn(1, 3, 9, 8))[0]
    assert y.dtype == torch.float32 and y.shape == (1, 2, 5, 4)


# ----------------------------------------------------------------------------- errors
NC = """name: "nc" type: "NormConv" bottom: "img" bottom: "emb" top: "y" convolution_param {{ {cp} }}
norm_conv_param {{ }}"""


@pytest.mark.parametrize("cp,shapes,exc,msg", [
    ("num_output: 2 kernel_size: 3 bottom_is_im2col: true", [[1, 2, 5, 5], [1, 2, 5, 5]], NotSupportedError,
     "bottom_is_im2col"),
    ("num_output: 0 kernel_size: 3", [[1, 2, 5, 5], [1, 2, 5, 5]], LayerConfigError, "num_output"),
    ("num_output: 3 kernel_size: 3 group: 2", [[1, 2, 5, 5], [1, 2, 5, 5]], LayerConfigError, "group"),
    ("num_output: 2 kernel_size: 3 group: 2", [[1, 3, 5, 5], [1, 2, 5, 5]], LayerConfigError, "group"),
    ("num_output: 2", [[1, 2, 5, 5], [1, 2, 5, 5]], LayerConfigError, "kernel_size"),
    ("num_output: 2 kernel_size: 3 axis: 2", [[1, 2, 5, 5], [1, 2, 5, 5]], NotSupportedError, "axis"),
    ("num_output: 2 kernel_size: 3", [[1, 2, 5, 5], [1, 2, 5, 6]], ShapeError, "same N, H and W"),
    ("num_output: 2 kernel_size: 3", [[1, 2, 5, 5], [2, 2, 5, 5]], ShapeError, "same N, H and W"),
    ("num_output: 2 kernel_size: 9", [[1, 2, 5, 5], [1, 2, 5, 5]], ShapeError, "does not fit"),
    ("num_output: 2 kernel_size: 3", [[1, 2, 5], [1, 2, 5]], ShapeError, "4-D"),
])
def test_normconv_errors(cp, shapes, exc, msg):
    with pytest.raises(exc, match=msg) as ei:
        make_layer(NC.format(cp=cp), shapes)
    assert "'nc'" in str(ei.value)


def test_normconv_errors_in_forward():
    layer = make_layer(NC.format(cp="num_output: 2 kernel_size: 3 pad: 1"), [[1, 2, 5, 5], [1, 2, 5, 5]])
    with pytest.raises(ShapeError, match="channels"):
        layer(torch.randn(1, 3, 5, 5), torch.randn(1, 2, 5, 5))
    with pytest.raises(ShapeError, match="same N, H and W"):
        layer(torch.randn(1, 2, 5, 5), torch.randn(1, 2, 4, 5))
    with pytest.raises(ShapeError, match="does not fit"):
        make_layer(NC.format(cp="num_output: 2 kernel_size: 3"), [[1, 2, 5, 5], [1, 2, 5, 5]])(
            torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2))


@pytest.mark.parametrize("body,shapes,exc,msg", [
    ("num_iterations: 1 kernel_size: 3 kernel_size: 3", None, LayerConfigError, "num_iterations"),
    ("kernel_size: 3 kernel_size: 3", None, LayerConfigError, "num_iterations"),
    ("num_iterations: 2 kernel_size: 3", None, LayerConfigError, "kernel_size"),
    ("num_iterations: 2 kernel_size: 3 kernel_size: 3 kernel_size: 3", None, LayerConfigError, "kernel_size"),
    ("num_iterations: 2 kernel_size: 0 kernel_size: 3", None, LayerConfigError, "kernel_size"),
    ("num_iterations: 2 kernel_size: 3 kernel_size: 3 pad: 1", None, LayerConfigError, "pad"),
    ("num_iterations: 2 kernel_size: 3 kernel_size: 3 pad: 1 pad: 1 pad: 1", None, LayerConfigError, "pad"),
    ("num_iterations: 2 kernel_size: 3 kernel_size: 3 scale: 1", None, LayerConfigError, "scale"),
    ("num_iterations: 2 kernel_size: 3 kernel_size: 3 dilation: 1", None, LayerConfigError, "dilation"),
    ("num_iterations: 2 kernel_size: 3 kernel_size: 3 remove_center: true", None, LayerConfigError,
     "remove_center"),
    ("num_iterations: 2 kernel_size: 3 kernel_size: 3 stride: 0 stride: 1", None, LayerConfigError, "stride"),
    # windows that do not keep H x W: the fork reads out of bounds, here a clear error
    ("num_iterations: 2 kernel_size: 3 kernel_size: 3 pad: 1 pad: 1 dilation: 1 dilation: 1 stride: 2 stride: 1",
     None, ShapeError, "bilateral"),
    ("num_iterations: 2 kernel_size: 3 kernel_size: 3 pad: 1 pad: 0 dilation: 1 dilation: 1", None, ShapeError,
     "spatial"),
    (MF_BODY, ((2, 3, 5, 6), (2, 3, 5, 5), (2, 2, 5, 6), (2, 2, 5, 6)), ShapeError, "Q0"),
    (MF_BODY, ((2, 3, 5, 6), (2, 3, 5, 6), (2, 2, 5, 7), (2, 2, 5, 6)), ShapeError, "bilateral features"),
    (MF_BODY, ((2, 3, 5, 6), (2, 3, 5, 6), (2, 2, 5, 6), (1, 2, 5, 6)), ShapeError, "spatial features"),
    (MF_BODY, ((2, 3, 5, 6), (2, 3, 5, 6), (2, 2, 5, 6), (2, 2, 5)), ShapeError, "4-D"),
])
def test_meanfield_errors(body, shapes, exc, msg):
    kw = {} if shapes is None else {"shapes": shapes}
    with pytest.raises(exc, match=msg) as ei:
        mf_layer(body=body, **kw)
    assert "'crf'" in str(ei.value)


def test_meanfield_errors_in_forward():
    layer = mf_layer()
    ok = [torch.randn(s) for s in ((2, 3, 5, 6), (2, 3, 5, 6), (2, 2, 5, 6), (2, 2, 5, 6))]
    with pytest.raises(ShapeError, match="channels"):
        layer(torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6), *ok[2:])
    with pytest.raises(ShapeError, match="spatial features"):
        layer(*ok[:3], torch.randn(2, 2, 5, 7))
    # a size where the bilateral window (pad 2, dilation 2, k 3) still fits but must keep H x W: always true
    # for stride 1; with stride 2 every size but 1 fails
    l2 = mf_layer(body="num_iterations: 2 kernel_size: 1 kernel_size: 1 stride: 2 stride: 2",
                  shapes=((1, 3, 1, 1), (1, 3, 1, 1), (1, 2, 1, 1), (1, 2, 1, 1)))
    assert l2(*[torch.randn(1, c, 1, 1) for c in (3, 3, 2, 2)])[0].shape == (1, 3, 1, 1)
    with pytest.raises(ShapeError, match="keep the size"):
        l2(*[torch.randn(1, c, 3, 3) for c in (3, 3, 2, 2)])
