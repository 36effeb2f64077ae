"""``caffe_compat.nn`` modules equal the Caffe layer chains they replace (the fork's golden layer cases).

Each module is built from plain Python arguments (the values of the golden case's
prototxt), fed the golden inputs, and compared with the fork's outputs (rel. error
<= 1e-5) and, after back-propagating the recorded top diff, its input and parameter
gradients (<= 1e-4).  Also: the fused convolution equals the unfold formulation and
passes gradcheck in float64 (stride, dilation, groups, padding beyond the kernel, tiny tiles).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from golden import BWD_TOL, FWD_TOL, GOLDEN, golden_index, rel_err, to_np

import caffe_compat.nn as cnn
import caffe_compat.ops.segaware_conv as segaware_conv
from caffe_compat.errors import ShapeError
from caffe_compat.ops.segaware_conv import segaware_conv2d, segaware_conv2d_unfold
from caffe_compat.ops.window import Window

CASES = golden_index("layers")


def _npz(case):
    path = GOLDEN / "layers" / f"{case}.npz"
    if not path.exists():
        pytest.skip(f"reference material not available: {path} does not exist")
    return np.load(path)


def _t(npz, key, grad=False):
    return torch.from_numpy(np.asarray(npz[key])).requires_grad_(grad)


def _check(pairs):
    bad = [f"{k}: rel err {e:.3g} > {tol:g}" for k, e, tol in pairs if not e <= tol]
    assert not bad, "mismatch vs golden:\n" + "\n".join(bad)


@pytest.mark.parametrize("case, padding, dilation", [("segaware_block_k3_p1", 1, 1),
                                                     ("segaware_block_k3_p2_d2", 2, 2)])
def test_segaware_conv2d_equals_the_vgg_block(case, padding, dilation):
    """Im2dist(L1) -> Scale -> AbsVal -> Exp -> Tile -> Im2col -> Eltwise -> Convolution(bottom_is_im2col) -> ReLU."""
    npz = _npz(case)
    x, emb = _t(npz, "in/data", True), _t(npz, "in/emb", True)
    w = npz["param/conv/0"]
    conv = cnn.SegAwareConv2d(w.shape[1], w.shape[0], 3, padding=padding, dilation=dilation, norm="L1",
                              scale=float(npz["param/weighted/0"]))
    with torch.no_grad():
        conv.weight.copy_(_t(npz, "param/conv/0"))
        conv.bias.copy_(_t(npz, "param/conv/1"))
    y = torch.relu(conv(x, emb))
    y.backward(_t(npz, "top_diff/relu"))
    _check([("out/relu", rel_err(to_np(y), npz["out/relu"]), FWD_TOL),
            ("bottom_diff/data", rel_err(to_np(x.grad), npz["bottom_diff/data"]), BWD_TOL),
            ("bottom_diff/emb", rel_err(to_np(emb.grad), npz["bottom_diff/emb"]), BWD_TOL),
            ("param_diff/conv/0", rel_err(to_np(conv.weight.grad), npz["param_diff/conv/0"]), BWD_TOL),
            ("param_diff/conv/1", rel_err(to_np(conv.bias.grad), npz["param_diff/conv/1"]), BWD_TOL),
            ("param_diff/weighted/0", rel_err(to_np(conv.scale.grad), npz["param_diff/weighted/0"]), BWD_TOL)])
    # the precomputed-mask and shared-distance faces give the same output
    with torch.no_grad():
        d = cnn.Im2dist(3, padding=padding, dilation=dilation, norm="L1")(emb)
        m = cnn.local_attention_mask(emb, 3, padding=padding, dilation=dilation, scale=conv.scale)
        np.testing.assert_allclose(to_np(torch.relu(conv(x, mask=m))), npz["out/relu"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(to_np(torch.relu(conv(x, distances=d))), npz["out/relu"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(to_np(m), npz["out/expd"], rtol=1e-6, atol=0)


def _im2dist_args(case):
    from caffe_compat import prototxt as pt
    net = pt.parse_net(str(_npz(case)["prototxt"]), case)
    lp = [lp for lp in net.layer if lp.type == "Im2dist"][0]
    cp, ip = lp.convolution_param, lp.im2dist_param
    one = lambda field, default: (list(getattr(cp, field)) or [default])[0]  # noqa: E731
    return lp.top[0], dict(kernel_size=one("kernel_size", 1), stride=one("stride", 1), padding=one("pad", 0),
                           dilation=one("dilation", 1), norm=int(ip.norm), remove_center=ip.remove_center,
                           remove_bounds=ip.remove_bounds)


@pytest.mark.parametrize("case", sorted(c for c in CASES if c.startswith("im2dist_")) or ["<none>"])
def test_im2dist_module_equals_the_layer_golden(case):
    npz = _npz(case)
    top, args = _im2dist_args(case)
    x = _t(npz, [k for k in npz.files if k.startswith("in/")][0], True)
    d = cnn.Im2dist(**args)(x)
    pairs = [(f"out/{top}", rel_err(to_np(d), npz[f"out/{top}"]), FWD_TOL)]
    if f"top_diff/{top}" in npz.files:
        d.backward(_t(npz, f"top_diff/{top}"))
        key = [k for k in npz.files if k.startswith("bottom_diff/")][0]
        pairs.append((key, rel_err(to_np(x.grad), npz[key]), BWD_TOL))
    _check(pairs)


@pytest.mark.parametrize("case, kernel, padding, dilation", [("distloss_chain_k3_p1", 3, 1, 1),
                                                            ("distloss_chain_k5_p6_d3", 5, 6, 3)])
def test_embedding_distance_loss_equals_im2parity_im2dist_distloss(case, kernel, padding, dilation):
    npz = _npz(case)
    emb = _t(npz, "in/emb", True)
    loss_fn = cnn.EmbeddingDistanceLoss(0.5, 2.0, kernel_size=kernel, padding=padding, dilation=dilation,
                                        norm="L1", ignore_label=255)
    loss = loss_fn(emb, _t(npz, "aux/label"))
    loss.backward(_t(npz, "top_diff/loss"))
    _check([("out/loss", rel_err(to_np(loss), npz["out/loss"]), FWD_TOL),
            ("bottom_diff/emb", rel_err(to_np(emb.grad), npz["bottom_diff/emb"]), BWD_TOL)])


@pytest.mark.parametrize("case", ["normconvmeanfield_c5_9x11", "normconvmeanfield_c21_13x15"])
def test_meanfield_crf_equals_normconvmeanfield(case):
    npz = _npz(case)
    ins = {k: _t(npz, f"in/{k}", True) for k in ("unary", "Q0", "rgbxy", "scaled_xy2")}
    crf = cnn.MeanfieldCRF(npz["in/unary"].shape[1], num_iterations=2)  # res-config defaults
    C = npz["in/unary"].shape[1]
    with torch.no_grad():
        for p, i in ((crf.w_spatial, 0), (crf.w_bilateral, 1), (crf.compatibility, 2)):
            p.copy_(_t(npz, f"param/crf/{i}").reshape(C, C))
    y = crf(ins["unary"], ins["rgbxy"], ins["scaled_xy2"], q0=ins["Q0"])
    y.backward(_t(npz, "top_diff/crf"))
    pairs = [("out/crf", rel_err(to_np(y), npz["out/crf"]), FWD_TOL)]
    pairs += [(f"bottom_diff/{k}", rel_err(to_np(v.grad), npz[f"bottom_diff/{k}"]), BWD_TOL) for k, v in ins.items()]
    for p, i in ((crf.w_spatial, 0), (crf.w_bilateral, 1), (crf.compatibility, 2)):
        g = npz[f"param_diff/crf/{i}"]
        pairs.append((f"param_diff/crf/{i}", rel_err(to_np(p.grad).reshape(g.shape), g), BWD_TOL))
    _check(pairs)


def test_norm_conv2d_is_softmax_masked_convolution():
    torch.manual_seed(0)
    x, emb = torch.randn(2, 4, 7, 9, dtype=torch.float64), torch.randn(2, 3, 7, 9, dtype=torch.float64)
    m = cnn.NormConv2d(4, 6, 3, padding=1, scale=0.7).double()
    d = cnn.Im2dist(3, padding=1)(emb)                   # L2 (half squared), the NormConv default
    A = torch.softmax(-0.7 * d, dim=1)
    cols = torch.nn.functional.unfold(x, 3, padding=1).view(2, 4, 9, 63) * A.view(2, 1, 9, 63)
    want = torch.einsum("ock,nckp->nop", m.weight.view(6, 4, 9), cols).view(2, 6, 7, 9) + m.bias.view(1, 6, 1, 1)
    torch.testing.assert_close(m(x, emb), want)


GEOMETRIES = [  # kernel, stride, pad, dilation, groups, H, W
    ((3, 3), (1, 1), (1, 1), (1, 1), 1, 7, 9),
    ((3, 3), (2, 1), (2, 0), (2, 1), 2, 8, 9),
    ((5, 3), (2, 2), (3, 1), (1, 2), 1, 9, 7),
    ((3, 3), (1, 1), (4, 4), (1, 1), 1, 3, 4),   # pad beyond the kernel: whole tiles outside the image
    ((1, 1), (1, 1), (0, 0), (1, 1), 1, 4, 5),
]


@pytest.mark.parametrize("geom", GEOMETRIES)
@pytest.mark.parametrize("tiling", ["batch", "two_images", "image", "two_rows", "row"])
def test_fused_conv_equals_unfold_forward_and_backward(geom, tiling, monkeypatch):
    k, s, p, d, g, H, W = geom
    win = Window(k, s, p, d)
    ho, wo = win.output_size(H, W)
    per_image = 4 * win.taps * ho * wo               # masked columns of one image
    tile_elements = {"batch": 1 << 20, "two_images": 2 * per_image, "image": per_image,
                     "two_rows": 2 * 4 * win.taps * wo, "row": 1}[tiling]
    monkeypatch.setattr(segaware_conv, "TILE_ELEMENTS", tile_elements)
    N = 3                                             # two_images: a tile of 2 and a tile of 1
    want = {"batch": (N, ho), "two_images": (2, ho), "image": (1, ho), "two_rows": (1, min(2, ho)),
            "row": (1, 1)}[tiling]
    assert segaware_conv._tile_shape(N, 4 * win.taps, ho, wo, N * 6 * ho * wo) == want
    torch.manual_seed(1)
    args = [torch.randn(N, 4, H, W, dtype=torch.float64), torch.rand(N, win.taps, ho, wo, dtype=torch.float64),
            torch.randn(6, 4 // g, *k, dtype=torch.float64), torch.randn(6, dtype=torch.float64)]
    for a in args:
        a.requires_grad_(True)
    y, ref = segaware_conv2d(*args, win, g), segaware_conv2d_unfold(*args, win, g)
    torch.testing.assert_close(y, ref)
    gy = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, args, gy), torch.autograd.grad(ref, args, gy)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("geom", GEOMETRIES[1:3])
def test_fused_conv_gradcheck(geom):
    k, s, p, d, g, H, W = geom
    win = Window(k, s, p, d)
    torch.manual_seed(2)
    ho, wo = win.output_size(H, W)
    args = (torch.randn(1, 2, H, W, dtype=torch.float64, requires_grad=True),
            torch.rand(1, win.taps, ho, wo, dtype=torch.float64, requires_grad=True),
            torch.randn(2, 2 // g, *k, dtype=torch.float64, requires_grad=True),
            torch.randn(2, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(lambda *a: segaware_conv2d(*a, win, g), args)


def test_fused_conv_flushes_subnormal_mask_values():
    win = Window((3, 3), (1, 1), (1, 1), (1, 1))
    x, w = torch.randn(1, 2, 5, 6), torch.randn(3, 2, 3, 3)
    mask = torch.rand(1, 9, 5, 6)
    tiny = mask.clone()
    tiny[:, :4] = 1e-40                       # subnormal in float32
    zero = mask.clone()
    zero[:, :4] = 0
    torch.testing.assert_close(segaware_conv2d(x, tiny, w, None, win), segaware_conv2d(x, zero, w, None, win),
                               rtol=0, atol=0)


def test_fused_conv_refuses_bad_shapes():
    win = Window((3, 3), (1, 1), (1, 1), (1, 1))
    x, w = torch.randn(1, 2, 5, 6), torch.randn(3, 2, 3, 3)
    with pytest.raises(ShapeError, match="mask shape"):
        segaware_conv2d(x, torch.rand(1, 8, 5, 6), w, None, win)
    with pytest.raises(ShapeError, match="weight shape"):
        segaware_conv2d(x, torch.rand(1, 9, 5, 6), torch.randn(3, 2, 5, 5), None, win)
    with pytest.raises(ShapeError, match="exactly one"):
        cnn.SegAwareConv2d(2, 3, 3, padding=1)(x)
