"""Unit tests of the standard layers, group B (elementwise, shape ops, losses/metrics, Interp).

The golden cases of these layers run in ``test_golden_layers.py``; this file
covers what the goldens do not: the layers without goldens (Bias, Flatten,
Reshape, Crop, Accuracy, EuclideanLoss, SigmoidCrossEntropyLoss) against
explicit numpy formulas of BVLC Caffe, the parameter variants, float64
gradchecks of the custom autograd Functions, meta-device shape inference, and
a clear error for every bad input.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe_compat import schema
from caffe_compat.errors import CaffeCompatError, DataError, LayerConfigError, ShapeError
from caffe_compat.layers import BuildContext, get_layer_class, shape_only
from caffe_compat.ops.eltwise import EltwiseMaxFunction, EltwiseProdFunction
from caffe_compat.ops.interp import Interp2Function, interp_axis_table
from caffe_compat.ops.losses import FLT_MIN, SigmoidCrossEntropyFunction, SoftmaxLossFunction


# --------------------------------------------------------------------------- helpers
def make(type_name, params="", bottoms=((2, 3, 4, 5),), tops=("y",), name="l", dtype=torch.float32):
    """Build one layer from a LayerParameter text snippet."""
    lp = schema.LayerParameter()
    text = f'name: "{name}" type: "{type_name}" '
    text += " ".join(f'bottom: "b{i}"' for i in range(len(bottoms))) + " "
    text += " ".join(f'top: "{t}"' for t in tops) + " " + params
    text_format.Merge(text, lp)
    cls = get_layer_class(type_name, name)
    return cls(lp, [tuple(s) for s in bottoms], BuildContext(generator=torch.Generator().manual_seed(0),
                                                             dtype=dtype))


def rnd(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def run_meta(layer, shapes, dtype=torch.float32):
    """Run a layer on meta tensors (as the net's shape inference does)."""
    state = {n: torch.empty_like(p, device="meta") for n, p in layer.named_parameters()}
    state.update({n: torch.empty_like(b, device="meta") for n, b in layer.named_buffers()})
    with shape_only(), torch.no_grad():
        outs = torch.func.functional_call(layer, state, tuple(torch.empty(s, device="meta", dtype=dtype)
                                                             for s in shapes))
    return [tuple(o.shape) for o in outs]


# =========================================================================== Eltwise
class TestEltwise:
    def test_sum_coeff_and_grad(self):
        l = make("Eltwise", "eltwise_param { operation: SUM coeff: 2 coeff: -0.5 coeff: 1 }",
                 bottoms=[(2, 3)] * 3)
        xs = [rnd(2, 3, seed=i).requires_grad_() for i in range(3)]
        (y,) = l(*xs)
        np.testing.assert_allclose(y.detach(), 2 * xs[0].detach() - 0.5 * xs[1].detach() + xs[2].detach(),
                                   rtol=1e-6)
        g = rnd(2, 3, seed=9)
        y.backward(g)
        for c, x in zip((2, -0.5, 1), xs):
            np.testing.assert_allclose(x.grad, c * g, rtol=1e-6)

    def test_max_tie_rule_forward_and_routing(self):
        # element 0: tie a==b -> bottom 1; element 1: b==c -> stays with b (c must be strictly greater)
        # element 2: a==c, a > b -> stays with a; element 3: c strictly greatest -> c
        a = torch.tensor([1.0, 0.0, 5.0, 1.0], requires_grad=True)
        b = torch.tensor([1.0, 3.0, 2.0, 1.0], requires_grad=True)
        c = torch.tensor([0.0, 3.0, 5.0, 7.0], requires_grad=True)
        l = make("Eltwise", "eltwise_param { operation: MAX }", bottoms=[(4,)] * 3)
        (y,) = l(a, b, c)
        assert y.tolist() == [1.0, 3.0, 5.0, 7.0]
        y.backward(torch.tensor([10.0, 20.0, 30.0, 40.0]))
        assert a.grad.tolist() == [0, 0, 30, 0]
        assert b.grad.tolist() == [10, 20, 0, 0]
        assert c.grad.tolist() == [0, 0, 0, 40]

    def test_max_coeff_accepted_and_ignored(self):
        l = make("Eltwise", "eltwise_param { operation: MAX coeff: 5 coeff: 5 }", bottoms=[(3,)] * 2)
        (y,) = l(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0]))
        assert y.tolist() == [3.0, 2.0, 3.0]

    def test_prod_stable_and_unstable_grad(self):
        x0 = torch.tensor([2.0, 0.0, 3.0], requires_grad=True)
        x1 = torch.tensor([5.0, 4.0, 0.0], requires_grad=True)
        g = torch.tensor([1.0, 2.0, 3.0])
        (y,) = make("Eltwise", "eltwise_param { operation: PROD }", bottoms=[(3,)] * 2)(x0, x1)
        y.backward(g)
        assert x0.grad.tolist() == [5.0, 8.0, 0.0] and x1.grad.tolist() == [2.0, 0.0, 9.0]
        # stable_prod_grad: false -> dx_i = (y / x_i) * dy : NaN where x_i == 0 (the fork's formula)
        x0.grad = x1.grad = None
        (y,) = make("Eltwise", "eltwise_param { operation: PROD stable_prod_grad: false }",
                    bottoms=[(3,)] * 2)(x0, x1)
        y.backward(g)
        assert x0.grad[0] == 5.0 and math.isnan(float(x0.grad[1])) and x0.grad[2] == 0.0
        assert x1.grad[0] == 2.0 and x1.grad[1] == 0.0 and math.isnan(float(x1.grad[2]))

    def test_gradcheck_functions(self):
        xs = [rnd(3, 4, seed=i, dtype=torch.float64).requires_grad_() for i in range(3)]
        assert torch.autograd.gradcheck(lambda *t: EltwiseMaxFunction.apply(*t), xs)  # no ties in random data
        assert torch.autograd.gradcheck(lambda *t: EltwiseProdFunction.apply(True, *t), xs)
        # the unstable PROD gradient is y/x_i * dy: equal to the derivative where no x is 0
        assert torch.autograd.gradcheck(lambda *t: EltwiseProdFunction.apply(False, *t), xs)

    def test_errors(self):
        with pytest.raises(LayerConfigError, match="coeff"):
            make("Eltwise", "eltwise_param { coeff: 1 }", bottoms=[(3,)] * 2)
        with pytest.raises(LayerConfigError, match="only allowed for SUM"):
            make("Eltwise", "eltwise_param { operation: PROD coeff: 1 coeff: 1 }", bottoms=[(3,)] * 2)
        with pytest.raises(ShapeError, match="same shape"):
            make("Eltwise", "", bottoms=[(3,), (4,)])
        with pytest.raises(LayerConfigError, match="bottom"):
            make("Eltwise", "", bottoms=[(3,)])
        l = make("Eltwise", "", bottoms=[(3,)] * 2)
        with pytest.raises(ShapeError, match="'l' \\(Eltwise\\)"):
            l(torch.zeros(3), torch.zeros(2))


# =========================================================================== Scale / Bias
class TestScaleBias:
    def test_defaults_and_shapes(self):
        l = make("Scale", "scale_param { bias_term: true }", bottoms=[(2, 3, 4, 5)])
        assert [tuple(b.shape) for b in l.blobs] == [(3,), (3,)]
        assert l.blobs[0].tolist() == [1.0] * 3 and l.blobs[1].tolist() == [0.0] * 3
        l = make("Scale", "scale_param { num_axes: 0 }", bottoms=[(2, 3, 4, 5)])
        assert tuple(l.blobs[0].shape) == ()
        l = make("Scale", "scale_param { axis: -2 num_axes: -1 }", bottoms=[(2, 3, 4, 5)])
        assert tuple(l.blobs[0].shape) == (4, 5)
        l = make("Scale", "scale_param { axis: 0 num_axes: 2 filler { type: 'constant' value: 3 } }")
        assert tuple(l.blobs[0].shape) == (2, 3) and float(l.blobs[0].detach()[0, 0]) == 3.0

    def test_forward_backward_formula(self):
        l = make("Scale", "scale_param { axis: 1 num_axes: 2 bias_term: true }", bottoms=[(2, 3, 4, 5)])
        with torch.no_grad():
            l.blobs[0].copy_(rnd(3, 4, seed=1))
            l.blobs[1].copy_(rnd(3, 4, seed=2))
        x = rnd(2, 3, 4, 5).requires_grad_()
        (y,) = l(x)
        s, b = l.blobs[0].detach().numpy(), l.blobs[1].detach().numpy()
        xn = x.detach().numpy()
        np.testing.assert_allclose(y.detach(), xn * s[None, :, :, None] + b[None, :, :, None], rtol=1e-6)
        g = rnd(2, 3, 4, 5, seed=3)
        y.backward(g)
        gn = g.numpy()
        np.testing.assert_allclose(l.blobs[0].grad, (gn * xn).sum(axis=(0, 3)), rtol=1e-5)
        np.testing.assert_allclose(l.blobs[1].grad, gn.sum(axis=(0, 3)), rtol=1e-5)
        np.testing.assert_allclose(x.grad, gn * s[None, :, :, None], rtol=1e-6)

    def test_two_bottoms(self):
        l = make("Scale", "scale_param { axis: 1 bias_term: true bias_filler { type: 'constant' value: 0.5 } }",
                 bottoms=[(2, 3, 4), (3, 4)])
        assert len(l.blobs) == 1 and tuple(l.blobs[0].shape) == (3, 4)
        x, s = rnd(2, 3, 4).requires_grad_(), rnd(3, 4, seed=5).requires_grad_()
        (y,) = l(x, s)
        np.testing.assert_allclose(y.detach(), x.detach() * s.detach() + 0.5, rtol=1e-6)
        y.sum().backward()
        np.testing.assert_allclose(s.grad, x.detach().sum(0), rtol=1e-5)
        # a 0-axis scale bottom applies to everything
        l = make("Scale", "", bottoms=[(2, 3), ()])
        (y,) = l(torch.ones(2, 3), torch.tensor(4.0))
        assert y.tolist() == [[4.0] * 3] * 2

    def test_bias_layer(self):
        l = make("Bias", "bias_param { axis: 2 num_axes: 1 }", bottoms=[(2, 3, 4)])
        assert tuple(l.blobs[0].shape) == (4,) and l.blobs[0].tolist() == [0.0] * 4
        with torch.no_grad():
            l.blobs[0].copy_(torch.arange(4.0))
        x = rnd(2, 3, 4).requires_grad_()
        (y,) = l(x)
        np.testing.assert_allclose(y.detach(), x.detach() + torch.arange(4.0), rtol=1e-6)
        y.backward(torch.ones(2, 3, 4))
        assert l.blobs[0].grad.tolist() == [6.0] * 4
        l2 = make("Bias", "", bottoms=[(2, 3, 4), (3,)])
        assert len(l2.blobs) == 0
        (y,) = l2(torch.zeros(2, 3, 4), torch.tensor([1.0, 2.0, 3.0]))
        assert y[1, 2].tolist() == [3.0] * 4
        l3 = make("Bias", "bias_param { num_axes: 0 filler { type: 'constant' value: 2 } }")
        assert tuple(l3.blobs[0].shape) == () and float(l3.blobs[0].detach()) == 2.0

    def test_errors(self):
        with pytest.raises(LayerConfigError, match="num_axes"):
            make("Scale", "scale_param { num_axes: -2 }")
        with pytest.raises(ShapeError, match="extends past"):
            make("Scale", "scale_param { axis: 3 num_axes: 2 }")
        with pytest.raises(LayerConfigError, match="axis"):
            make("Bias", "bias_param { axis: 4 }")
        l = make("Scale", "", bottoms=[(2, 3, 4)])
        with pytest.raises(ShapeError, match="mismatch"):
            l(torch.zeros(2, 5, 4))
        l = make("Scale", "", bottoms=[(2, 3, 4), (3,)])
        with pytest.raises(ShapeError, match="mismatch"):
            l(torch.zeros(2, 3, 4), torch.zeros(4))


# =========================================================================== shape ops
class TestShapeOps:
    def test_concat(self):
        l = make("Concat", "concat_param { axis: -1 }", bottoms=[(2, 3), (2, 4)])
        a, b = rnd(2, 3), rnd(2, 4, seed=1)
        np.testing.assert_array_equal(l(a, b)[0], np.concatenate([a, b], axis=1))
        l = make("Concat", "concat_param { concat_dim: 0 }", bottoms=[(2, 3), (1, 3)])
        assert tuple(l(rnd(2, 3), rnd(1, 3))[0].shape) == (3, 3)
        with pytest.raises(LayerConfigError, match="not both"):
            make("Concat", "concat_param { axis: 1 concat_dim: 1 }", bottoms=[(2, 3), (2, 3)])
        with pytest.raises(ShapeError, match="must match"):
            make("Concat", "", bottoms=[(2, 3, 4), (2, 3, 5)])
        with pytest.raises(ShapeError, match="number of axes"):
            make("Concat", "", bottoms=[(2, 3, 4), (2, 3)])
        with pytest.raises(LayerConfigError, match="out of range"):
            make("Concat", "concat_param { axis: 3 }", bottoms=[(2, 3, 4)] * 2)

    def test_slice(self):
        l = make("Slice", "slice_param { slice_dim: 1 slice_point: 1 slice_point: 4 }", bottoms=[(2, 6)],
                 tops=("a", "b", "c"))
        x = rnd(2, 6)
        outs = l(x)
        assert [tuple(o.shape) for o in outs] == [(2, 1), (2, 3), (2, 2)]
        np.testing.assert_array_equal(outs[1], x[:, 1:4])
        l = make("Slice", "slice_param { axis: -1 }", bottoms=[(2, 6)], tops=("a", "b", "c"))
        assert [tuple(o.shape) for o in l(x)] == [(2, 2)] * 3
        with pytest.raises(LayerConfigError, match="slice_point"):
            make("Slice", "slice_param { slice_point: 2 }", bottoms=[(2, 6)], tops=("a", "b", "c"))
        with pytest.raises(LayerConfigError, match="increasing"):
            make("Slice", "slice_param { slice_point: 3 slice_point: 3 }", bottoms=[(2, 6)], tops=("a", "b", "c"))
        with pytest.raises(ShapeError, match="equal parts"):
            make("Slice", "", bottoms=[(2, 5)], tops=("a", "b"))
        with pytest.raises(ShapeError, match="smaller"):
            make("Slice", "slice_param { slice_point: 6 }", bottoms=[(2, 6)], tops=("a", "b"))

    def test_split_silence(self):
        l = make("Split", "", bottoms=[(2, 3)], tops=("a", "b", "c"))
        x = rnd(2, 3).requires_grad_()
        outs = l(x)
        assert len(outs) == 3 and all(torch.equal(o, x) for o in outs)
        sum(o.sum() * (i + 1) for i, o in enumerate(outs)).backward()
        assert torch.all(x.grad == 6)
        s = make("Silence", "", bottoms=[(2, 3), (4,)], tops=())
        assert s(torch.zeros(2, 3), torch.zeros(4)) == ()
        with pytest.raises(LayerConfigError, match="top"):
            make("Silence", "", bottoms=[(2, 3)], tops=("y",))

    def test_flatten(self):
        x = rnd(2, 3, 4, 5)
        assert tuple(make("Flatten", "", bottoms=[x.shape])(x)[0].shape) == (2, 60)
        l = make("Flatten", "flatten_param { axis: 1 end_axis: 2 }", bottoms=[x.shape])
        y = l(x)[0]
        assert tuple(y.shape) == (2, 12, 5)
        np.testing.assert_array_equal(y, x.numpy().reshape(2, 12, 5))
        assert tuple(make("Flatten", "flatten_param { axis: -2 }", bottoms=[x.shape])(x)[0].shape) == (2, 3, 20)
        with pytest.raises(LayerConfigError, match="end_axis"):
            make("Flatten", "flatten_param { axis: 2 end_axis: 1 }", bottoms=[x.shape])
        with pytest.raises(LayerConfigError, match="out of range"):
            make("Flatten", "flatten_param { axis: 4 }", bottoms=[x.shape])

    @pytest.mark.parametrize("params,bottom,want", [
        ("shape { dim: 0 dim: -1 }", (2, 3, 4, 5), (2, 60)),
        ("shape { dim: 0 dim: 0 dim: 20 }", (2, 3, 4, 5), (2, 3, 20)),
        ("shape { dim: -1 dim: 6 }", (2, 3, 4, 5), (20, 6)),
        ("axis: 1 num_axes: 2 shape { dim: 12 }", (2, 3, 4, 5), (2, 12, 5)),
        ("axis: -1 shape { dim: 1 dim: 1 }", (2, 3), (2, 3, 1, 1)),      # insert axes at the end
        ("axis: 0 num_axes: 0 shape { dim: 1 }", (2, 3), (1, 2, 3)),     # insert an axis in front
        ("axis: 1 num_axes: 1 shape { dim: 0 dim: -1 }", (2, 6, 5), (2, 6, 1, 5)),
    ])
    def test_reshape(self, params, bottom, want):
        l = make("Reshape", f"reshape_param {{ {params} }}", bottoms=[bottom])
        x = torch.arange(math.prod(bottom), dtype=torch.float32).reshape(bottom)
        y = l(x)[0]
        assert tuple(y.shape) == want
        np.testing.assert_array_equal(y.reshape(-1), x.reshape(-1))

    def test_reshape_errors(self):
        with pytest.raises(LayerConfigError, match="more than one -1"):
            make("Reshape", "reshape_param { shape { dim: -1 dim: -1 } }")
        with pytest.raises(ShapeError, match="cannot reshape"):
            make("Reshape", "reshape_param { shape { dim: 7 dim: -1 } }", bottoms=[(2, 3, 4, 5)])
        with pytest.raises(ShapeError, match="cannot reshape"):
            make("Reshape", "reshape_param { shape { dim: 7 dim: 5 } }", bottoms=[(2, 3, 4, 5)])
        with pytest.raises(ShapeError, match="no axis"):
            make("Reshape", "reshape_param { axis: 1 shape { dim: 0 dim: 0 dim: 0 dim: 0 } }", bottoms=[(2, 3, 4)])
        with pytest.raises(LayerConfigError, match=">= -1"):
            make("Reshape", "reshape_param { shape { dim: -2 } }")
        l = make("Reshape", "reshape_param { shape { dim: 0 dim: 60 } }", bottoms=[(2, 3, 4, 5)])
        with pytest.raises(ShapeError, match="cannot reshape"):
            l(torch.zeros(2, 3, 4, 6))

    def test_crop(self):
        x = rnd(2, 3, 8, 9).requires_grad_()
        ref = torch.zeros(1, 1, 4, 5)
        l = make("Crop", "", bottoms=[x.shape, ref.shape])
        np.testing.assert_array_equal(l(x, ref)[0].detach(), x.detach()[:, :, :4, :5])
        l = make("Crop", "crop_param { offset: 2 }", bottoms=[x.shape, ref.shape])
        np.testing.assert_array_equal(l(x, ref)[0].detach(), x.detach()[:, :, 2:6, 2:7])
        l = make("Crop", "crop_param { axis: 1 offset: 1 offset: 3 offset: 4 }", bottoms=[x.shape, (5, 2, 4, 5)])
        y = l(x, torch.zeros(5, 2, 4, 5))[0]
        np.testing.assert_array_equal(y.detach(), x.detach()[:, 1:3, 3:7, 4:9])
        y.sum().backward()
        want = torch.zeros(2, 3, 8, 9)
        want[:, 1:3, 3:7, 4:9] = 1
        assert torch.equal(x.grad, want)
        with pytest.raises(ShapeError, match="does not fit"):
            make("Crop", "crop_param { offset: 5 }", bottoms=[x.shape, ref.shape])
        with pytest.raises(LayerConfigError, match="offset"):
            make("Crop", "crop_param { offset: 1 offset: 1 offset: 1 }", bottoms=[x.shape, ref.shape])
        with pytest.raises(ShapeError, match="same number of axes"):
            make("Crop", "", bottoms=[x.shape, (4, 5)])

    @pytest.mark.parametrize("axis", [0, 1, 2, -1])
    def test_tile(self, axis):
        x = rnd(2, 3, 4).requires_grad_()
        l = make("Tile", f"tile_param {{ axis: {axis} tiles: 3 }}", bottoms=[x.shape])
        (y,) = l(x)
        a = axis % 3
        xn = x.detach().numpy()
        outer = math.prod(xn.shape[:a])
        want = np.tile(xn.reshape(outer, -1), (1, 3)).reshape(xn.shape[:a] + (3 * xn.shape[a],) + xn.shape[a + 1:])
        np.testing.assert_array_equal(y.detach(), want)
        g = rnd(*y.shape, seed=4)
        y.backward(g)
        np.testing.assert_allclose(x.grad, g.numpy().reshape(outer, 3, -1).sum(1).reshape(xn.shape), rtol=1e-6)

    def test_tile_errors(self):
        with pytest.raises(LayerConfigError, match="tiles must be specified"):
            make("Tile", "tile_param { axis: 1 }")
        with pytest.raises(LayerConfigError, match="> 0"):
            make("Tile", "tile_param { tiles: 0 }")


# =========================================================================== softmax & losses
def _softmax_np(s, axis):
    e = np.exp(s - s.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class TestSoftmaxLosses:
    def test_softmax_axis(self):
        x = rnd(2, 3, 4, dtype=torch.float64).requires_grad_()
        l = make("Softmax", "softmax_param { axis: -1 }", bottoms=[x.shape], dtype=torch.float64)
        np.testing.assert_allclose(l(x)[0].detach(), _softmax_np(x.detach().numpy(), 2), rtol=1e-12)
        assert torch.autograd.gradcheck(lambda t: l(t)[0], (x,))

    @pytest.mark.parametrize("norm,legacy", [("FULL", None), ("VALID", None), ("BATCH_SIZE", None), ("NONE", None),
                                             (None, "true"), (None, "false"), (None, None)])
    def test_softmaxwithloss_normalization(self, norm, legacy):
        s = rnd(2, 4, 3, 5, dtype=torch.float64)
        lab = torch.randint(0, 4, (2, 1, 3, 5), generator=torch.Generator().manual_seed(1)).double()
        lab[0, 0, 0, :] = 255
        lab[1, 0, 2, 1] = 2.7   # truncated to 2
        params = "loss_param { ignore_label: 255 "
        params += f"normalization: {norm} " if norm else ""
        params += f"normalize: {legacy} " if legacy else ""
        params += "}"
        l = make("SoftmaxWithLoss", params, bottoms=[s.shape, lab.shape], tops=("loss",), dtype=torch.float64)
        sv = s.clone().requires_grad_()
        (loss,) = l(sv, lab)
        assert loss.shape == ()
        p = _softmax_np(s.numpy(), 1)
        li = np.trunc(lab.numpy()[:, 0]).astype(int)
        valid = li != 255
        nll = -np.log(np.take_along_axis(p, np.where(valid, li, 0)[:, None], 1)[:, 0])
        mode = norm or {"true": "VALID", "false": "BATCH_SIZE", None: "VALID"}[legacy]
        den = {"FULL": 30, "VALID": valid.sum(), "BATCH_SIZE": 2, "NONE": 1}[mode]
        np.testing.assert_allclose(float(loss.detach()), nll[valid].sum() / den, rtol=1e-12)
        loss.backward(torch.tensor(0.5, dtype=torch.float64))   # loss_weight 0.5
        onehot = np.zeros_like(p)
        np.put_along_axis(onehot, np.where(valid, li, 0)[:, None], 1.0, 1)
        want = (p - onehot) * valid[:, None] * 0.5 / den
        np.testing.assert_allclose(sv.grad, want, rtol=1e-10, atol=1e-15)

    def test_softmaxwithloss_prob_top_and_axis(self):
        s = rnd(3, 5, 4)
        lab = torch.tensor([[0, 1, 2], [3, 4, 0], [1, 1, 1], [2, 2, 2]], dtype=torch.float32).t()  # (3, 4)
        l = make("SoftmaxWithLoss", "softmax_param { axis: 1 }", bottoms=[s.shape, lab.shape],
                 tops=("loss", "prob"))
        sv = s.clone().requires_grad_()
        loss, prob = l(sv, lab)
        np.testing.assert_allclose(prob.detach(), _softmax_np(s.numpy(), 1), rtol=1e-6)
        assert not prob.requires_grad   # Caffe ignores the prob top's diff
        # automatic top when none is listed
        l0 = make("SoftmaxWithLoss", "", bottoms=[s.shape, lab.shape], tops=())
        assert len(l0(s, lab)) == 1 and l0.is_loss

    def test_softmaxwithloss_flt_min_clamp(self):
        # prob of the label underflows: loss uses FLT_MIN, gradient is still prob - onehot (Caffe's formula)
        s = torch.tensor([[0.0, 200.0]], dtype=torch.float64).reshape(1, 2, 1)
        lab = torch.zeros(1, 1, 1, dtype=torch.int64)
        valid = torch.ones(1, 1, 1, dtype=torch.bool)
        sv = s.clone().requires_grad_()
        loss, prob = SoftmaxLossFunction.apply(sv, lab, valid, torch.tensor(1.0, dtype=torch.float64))
        assert float(loss.detach()) == pytest.approx(-math.log(FLT_MIN))
        loss.backward()
        p = torch.softmax(s, 1)
        np.testing.assert_allclose(sv.grad, p - torch.tensor([1.0, 0.0]).reshape(1, 2, 1), rtol=1e-12)

    def test_softmaxloss_gradcheck(self):
        s = rnd(2, 4, 6, dtype=torch.float64).requires_grad_()
        lab = torch.randint(0, 4, (2, 1, 6), generator=torch.Generator().manual_seed(3))
        valid = torch.rand(2, 1, 6, generator=torch.Generator().manual_seed(4)) > 0.3
        norm = valid.sum().double()
        assert torch.autograd.gradcheck(lambda t: SoftmaxLossFunction.apply(t, lab, valid, norm)[0], (s,))

    def test_softmaxwithloss_errors(self):
        s, lab = rnd(2, 3, 4), torch.zeros(2, 1, 4)
        with pytest.raises(ShapeError, match="number of labels"):
            make("SoftmaxWithLoss", "", bottoms=[s.shape, (2, 1, 5)])
        with pytest.raises(ShapeError, match="same number"):
            make("SoftmaxWithLoss", "", bottoms=[s.shape, (4, 1, 2)])
        l = make("SoftmaxWithLoss", "loss_param { ignore_label: 255 }", bottoms=[s.shape, lab.shape])
        for bad in (3.0, -1.0, 254.0, float("nan")):
            lab2 = lab.clone()
            lab2[1, 0, 2] = bad
            with pytest.raises(DataError, match="outside \\[0, 3\\)"):
                l(s, lab2)
        lab2 = lab.clone()
        lab2[0, 0, 0] = 255.0
        l(s, lab2)   # fine
        with pytest.raises(DataError):
            make("SoftmaxWithLoss", "", bottoms=[s.shape, lab.shape])(s, lab2)   # 255 without ignore_label

    def test_euclidean(self):
        a, b = rnd(3, 4, 2, dtype=torch.float64).requires_grad_(), rnd(3, 8, seed=1, dtype=torch.float64).requires_grad_()
        l = make("EuclideanLoss", "", bottoms=[a.shape, b.shape], tops=(), dtype=torch.float64)
        (loss,) = l(a, b)
        d = a.detach().numpy() - b.detach().numpy().reshape(3, 4, 2)
        assert loss.shape == () and float(loss.detach()) == pytest.approx((d ** 2).sum() / 3 / 2, rel=1e-12)
        loss.backward(torch.tensor(2.0, dtype=torch.float64))
        np.testing.assert_allclose(a.grad, 2 * d / 3, rtol=1e-12)
        np.testing.assert_allclose(b.grad, -2 * d.reshape(3, 8) / 3, rtol=1e-12)
        with pytest.raises(ShapeError, match="same dimension"):
            make("EuclideanLoss", "", bottoms=[(3, 4), (3, 5)])
        with pytest.raises(ShapeError, match="same number"):
            make("EuclideanLoss", "", bottoms=[(3, 4), (4, 3)])

    @pytest.mark.parametrize("params,mode", [("", "BATCH_SIZE"), ("loss_param { ignore_label: -1 }", "BATCH_SIZE"),
                                             ("loss_param { ignore_label: -1 normalization: VALID }", "VALID"),
                                             ("loss_param { normalization: FULL }", "FULL"),
                                             ("loss_param { normalize: true }", "VALID"),
                                             ("loss_param { normalization: NONE }", "NONE")])
    def test_sigmoid_cross_entropy(self, params, mode):
        x = (rnd(2, 3, 4, dtype=torch.float64) * 4).requires_grad_()
        t = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        t[0, 1, :2] = -1
        l = make("SigmoidCrossEntropyLoss", params, bottoms=[x.shape, t.shape], dtype=torch.float64)
        (loss,) = l(x, t)
        xn, tn = x.detach().numpy(), t.numpy()
        valid = np.ones_like(tn, bool) if "ignore" not in params else np.trunc(tn) != -1
        # BVLC's stable formula, written out
        term = xn * (tn - (xn >= 0)) - np.log1p(np.exp(xn - 2 * xn * (xn >= 0)))
        den = {"BATCH_SIZE": 2, "VALID": valid.sum(), "FULL": 24, "NONE": 1}[mode]
        assert float(loss.detach()) == pytest.approx(-(term * valid).sum() / den, rel=1e-12)
        # the same as the naive cross-entropy of sigmoid(x)
        sig = 1 / (1 + np.exp(-xn))
        naive = -(tn * np.log(sig) + (1 - tn) * np.log(1 - sig))
        assert float(loss.detach()) == pytest.approx((naive * valid).sum() / den, rel=1e-10)
        loss.backward(torch.tensor(3.0, dtype=torch.float64))
        np.testing.assert_allclose(x.grad, 3.0 * (sig - tn) * valid / den, rtol=1e-10, atol=1e-15)

    def test_sigmoid_gradcheck_and_errors(self):
        x = rnd(2, 5, dtype=torch.float64).requires_grad_()
        t = torch.rand(2, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        valid = torch.ones(2, 5, dtype=torch.bool)
        valid[0, 0] = False
        norm = torch.tensor(2.0, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda a: SigmoidCrossEntropyFunction.apply(a, t, valid, norm), (x,))
        with pytest.raises(ShapeError, match="same count"):
            make("SigmoidCrossEntropyLoss", "", bottoms=[(2, 5), (2, 4)])


# =========================================================================== metrics
class TestMetrics:
    def test_accuracy_topk_ties_ignore_perclass(self):
        # 4 positions (N=4), 3 classes; ties resolve toward the larger class index
        s = torch.tensor([[1.0, 1.0, 0.0],    # order: 1, 0, 2
                          [0.0, 2.0, 2.0],    # order: 2, 1, 0
                          [3.0, 1.0, 2.0],    # order: 0, 2, 1
                          [0.5, 0.5, 0.5]])   # order: 2, 1, 0
        lab = torch.tensor([0.0, 1.0, 1.0, 7.0])
        l = make("Accuracy", "accuracy_param { ignore_label: 7 }", bottoms=[s.shape, lab.shape],
                 tops=("acc", "per_class"))
        acc, per = l(s, lab)
        assert acc.shape == () and float(acc) == 0.0 and per.tolist() == [0.0, 0.0, 0.0]
        l2 = make("Accuracy", "accuracy_param { top_k: 2 ignore_label: 7 }", bottoms=[s.shape, lab.shape],
                  tops=("acc", "per_class"))
        acc, per = l2(s, lab)
        assert float(acc) == pytest.approx(2 / 3) and per.tolist() == [1.0, 0.5, 0.0]
        # spatial labels with axis 1 and the 0/0 = NaN of Caffe when everything is ignored
        l3 = make("Accuracy", "accuracy_param { ignore_label: 7 }", bottoms=[(1, 3, 2), (1, 2)])
        (acc,) = l3(torch.zeros(1, 3, 2), torch.full((1, 2), 7.0))
        assert math.isnan(float(acc))

    def test_accuracy_errors(self):
        with pytest.raises(LayerConfigError, match="top_k"):
            make("Accuracy", "accuracy_param { top_k: 4 }", bottoms=[(4, 3), (4,)])
        with pytest.raises(ShapeError, match="number of labels"):
            make("Accuracy", "", bottoms=[(4, 3), (5,)])
        l = make("Accuracy", "", bottoms=[(2, 3), (2,)])
        with pytest.raises(DataError, match="outside"):
            l(torch.zeros(2, 3), torch.tensor([0.0, 3.0]))

    def test_argmax_axis_ties_and_shapes(self):
        x = torch.tensor([[[1.0, 3.0, 3.0, 0.0]], [[2.0, 2.0, 1.0, 2.0]]])   # (2, 1, 4)
        l = make("ArgMax", "argmax_param { axis: 2 }", bottoms=[x.shape])
        assert l(x)[0].reshape(-1).tolist() == [2.0, 3.0]
        l = make("ArgMax", "argmax_param { axis: 2 top_k: 3 }", bottoms=[x.shape])
        assert l(x)[0].tolist() == [[[2.0, 1.0, 0.0]], [[3.0, 1.0, 0.0]]]
        l = make("ArgMax", "argmax_param { axis: -1 top_k: 2 out_max_val: true }", bottoms=[x.shape])
        assert l(x)[0].tolist() == [[[3.0, 3.0]], [[2.0, 2.0]]]
        # no axis: per image over the flattened data, (N, 2, top_k) with indices then values
        l = make("ArgMax", "argmax_param { top_k: 2 out_max_val: true }", bottoms=[x.shape])
        y = l(x)[0]
        assert tuple(y.shape) == (2, 2, 2) and y.tolist() == [[[2.0, 1.0], [3.0, 3.0]], [[3.0, 1.0], [2.0, 2.0]]]
        l = make("ArgMax", "", bottoms=[(2, 3, 4, 5)])
        assert tuple(l(rnd(2, 3, 4, 5))[0].shape) == (2, 1, 1, 1)
        assert run_meta(make("ArgMax", "argmax_param { top_k: 3 }", bottoms=[(2, 7)]), [(2, 7)]) == [(2, 1, 3)]

    def test_argmax_errors(self):
        with pytest.raises(LayerConfigError, match="top_k"):
            make("ArgMax", "argmax_param { axis: 1 top_k: 4 }", bottoms=[(2, 3)])
        with pytest.raises(LayerConfigError, match="top_k"):
            make("ArgMax", "argmax_param { top_k: 7 }", bottoms=[(2, 3, 2)])
        with pytest.raises(LayerConfigError, match="top_k"):
            make("ArgMax", "argmax_param { top_k: 0 }")

    def _segacc_ref(self, scores, labels, ignore, conf=None):
        n, c = scores.shape[:2]
        conf = np.zeros((c, c), np.int64) if conf is None else conf
        for i in range(n):
            for h in range(scores.shape[2]):
                for w in range(scores.shape[3]):
                    col = scores[i, :, h, w]
                    pred = max(range(c), key=lambda k: (col[k], k))   # pair ordering: ties -> larger index
                    gt = int(labels[i, 0, h, w])
                    if gt in ignore:
                        continue
                    conf[gt, pred] += 1
        tot = conf.sum()
        acc = conf.trace() / tot if tot else 0.0
        rows, cols, d = conf.sum(1), conf.sum(0), np.diag(conf)
        rec = [d[k] / rows[k] for k in range(c) if rows[k] > 0]
        rec = sum(rec) / len(rec) if rec else 0.0
        jac = sum(1.0 if d[k] == rows[k] + cols[k] - d[k] else d[k] / (rows[k] + cols[k] - d[k])
                  for k in range(c)) / c
        return np.array([acc, rec, jac]), conf

    def test_segaccuracy(self):
        g = torch.Generator().manual_seed(5)
        s = torch.randint(0, 3, (2, 4, 3, 5), generator=g).float()     # many ties
        lab = torch.randint(0, 4, (2, 1, 3, 5), generator=g).float()
        lab[0, 0, 0] = 255
        lab[1, 0, 1, :2] = 254
        l = make("SegAccuracy", "seg_accuracy_param { ignore_label: 255 ignore_label: 254 }",
                 bottoms=[s.shape, lab.shape])
        (y,) = l(s, lab)
        want, _ = self._segacc_ref(s.numpy(), lab.numpy(), {254, 255})
        assert tuple(y.shape) == (1, 1, 1, 3)
        np.testing.assert_allclose(y.reshape(-1), want.astype(np.float32), rtol=1e-7)
        (y2,) = l(s, lab)   # reset (default true): same result again
        assert torch.equal(y, y2)
        # reset: false accumulates across forwards
        l = make("SegAccuracy", "seg_accuracy_param { ignore_label: 255 ignore_label: 254 reset: false }",
                 bottoms=[s.shape, lab.shape])
        l(s, lab)
        s2 = torch.randint(0, 3, (2, 4, 3, 5), generator=g).float()
        (y,) = l(s2, lab)
        _, conf = self._segacc_ref(s.numpy(), lab.numpy(), {254, 255})
        want, _ = self._segacc_ref(s2.numpy(), lab.numpy(), {254, 255}, conf)
        np.testing.assert_allclose(y.reshape(-1), want.astype(np.float32), rtol=1e-7)
        assert int(l.confusion.sum()) == 2 * int(((lab != 255) & (lab != 254)).sum())
        assert "confusion" not in l.state_dict()

    def test_segaccuracy_errors(self):
        with pytest.raises(ShapeError, match="one channel"):
            make("SegAccuracy", "", bottoms=[(2, 3, 4, 5), (2, 2, 4, 5)])
        with pytest.raises(ShapeError, match="same N, H and W"):
            make("SegAccuracy", "", bottoms=[(2, 3, 4, 5), (2, 1, 4, 6)])
        l = make("SegAccuracy", "seg_accuracy_param { ignore_label: 255 }", bottoms=[(1, 3, 2, 2), (1, 1, 2, 2)])
        with pytest.raises(DataError, match="unexpected label"):
            l(torch.zeros(1, 3, 2, 2), torch.tensor([0.0, 1.0, 2.0, 3.0]).reshape(1, 1, 2, 2))
        with pytest.raises(ShapeError, match="channels"):
            l(torch.zeros(1, 4, 2, 2), torch.zeros(1, 1, 2, 2))


# =========================================================================== Interp
def _interp_fork_loop(x, ho, wo):
    """The fork's caffe_cpu_interp2 written as its literal loop (float32 scalars), for one 2-D plane."""
    hi, wi = x.shape
    out = np.zeros((ho, wo), x.dtype)
    if hi == ho and wi == wo:
        return x.copy()
    f32 = np.float32
    rh = f32(f32(hi - 1) / f32(ho - 1)) if ho > 1 else f32(0)
    rw = f32(f32(wi - 1) / f32(wo - 1)) if wo > 1 else f32(0)
    one = x.dtype.type(1)
    for y in range(ho):
        h1r = f32(rh * f32(y))
        h1 = int(h1r)
        h1p = 1 if h1 < hi - 1 else 0
        l1h = x.dtype.type(f32(h1r - f32(h1)))
        l0h = one - l1h
        for xx in range(wo):
            w1r = f32(rw * f32(xx))
            w1 = int(w1r)
            w1p = 1 if w1 < wi - 1 else 0
            l1w = x.dtype.type(f32(w1r - f32(w1)))
            l0w = one - l1w
            out[y, xx] = (l0h * (l0w * x[h1, w1] + l1w * x[h1, w1 + w1p])
                          + l1h * (l0w * x[h1 + h1p, w1] + l1w * x[h1 + h1p, w1 + w1p]))
    return out


class TestInterp:
    @pytest.mark.parametrize("hw_in,hw_out", [((17, 17), (65, 65)), ((9, 13), (4, 5)), ((7, 5), (7, 11)),
                                              ((5, 6), (1, 1)), ((1, 4), (3, 9)), ((33, 12), (21, 12))])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_bit_exact_vs_fork_loop(self, hw_in, hw_out, dtype):
        x = np.random.default_rng(0).standard_normal((2,) + hw_in).astype(dtype)
        y = Interp2Function.apply(torch.from_numpy(x), *hw_out).numpy()
        for c in range(2):
            np.testing.assert_array_equal(y[c], _interp_fork_loop(x[c], *hw_out))

    def test_float32_source_coordinates_tables(self):
        # the index/weight tables equal the fork's scalar float32 loop at the res/test sizes:
        # 49 -> 65 (shrink 3 + zoom 4 of the res075 scale) and 513 -> 385 (shrink 4 + zoom 3)
        for n_in, n_out in ((49, 65), (513, 385), (513, 257)):
            i0, i1, lam = interp_axis_table(n_in, n_out)
            rh = np.float32(n_in - 1) / np.float32(n_out - 1)
            for y in range(n_out):
                r = np.float32(rh * np.float32(y))
                assert i0[y] == int(r) and i1[y] == min(int(r) + 1, n_in - 1)
                assert lam[y] == np.float32(r - np.float32(int(r)))
        # PyTorch's align_corners interpolation rounds the source coordinate differently: not bit-identical
        x = rnd(1, 1, 513, 3)
        ours = Interp2Function.apply(x, 385, 3)
        theirs = torch.nn.functional.interpolate(x, size=(385, 3), mode="bilinear", align_corners=True)
        assert not torch.equal(ours, theirs)
        torch.testing.assert_close(ours, theirs)

    def test_weights_are_float32_values_in_float64(self):
        x = torch.zeros(1, 1, 1, 4, dtype=torch.float64)
        x[..., 1] = 1.0
        y = Interp2Function.apply(x, 1, 7)
        lam = interp_axis_table(4, 7)[2]
        # output 1 samples position 0.5 exactly; output 3 samples 1.5
        assert float(y[0, 0, 0, 1]) == float(np.float32(lam[1]))

    def test_gradcheck_and_adjoint(self):
        x = rnd(2, 3, 5, 7, dtype=torch.float64).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: Interp2Function.apply(t, 9, 4), (x,))
        assert torch.autograd.gradcheck(lambda t: Interp2Function.apply(t, 5, 7), (x,))   # copy path
        g = rnd(2, 3, 13, 11, seed=2, dtype=torch.float64)
        y = Interp2Function.apply(x, 13, 11)
        (gx,) = torch.autograd.grad(y, x, g)
        assert float((y * g).sum().detach()) == pytest.approx(float((x * gx).sum().detach()), rel=1e-12)

    @pytest.mark.parametrize("params,hw,want", [
        ("shrink_factor: 2", (11, 13), (6, 7)),
        ("zoom_factor: 3", (4, 5), (10, 13)),
        ("height: 6 width: 8", (4, 5), (6, 8)),
        ("shrink_factor: 4 zoom_factor: 3", (17, 13), (13, 10)),
        ("shrink_factor: 2 height: 6 width: 8", (11, 13), (6, 7)),          # lone shrink beats height/width
        ("zoom_factor: 2 height: 6 width: 8", (4, 5), (7, 9)),              # lone zoom beats height/width
        ("shrink_factor: 2 zoom_factor: 2 height: 6 width: 8", (11, 13), (6, 8)),  # h/w beat shrink+zoom
        ("zoom_factor: 1 pad_beg: -1 pad_end: -2", (9, 10), (6, 7)),
        ("shrink_factor: 1", (4, 5), (4, 5)),
    ])
    def test_output_size_rules(self, params, hw, want):
        l = make("Interp", f"interp_param {{ {params} }}", bottoms=[(1, 2) + hw])
        x = rnd(1, 2, *hw)
        (y,) = l(x)
        assert tuple(y.shape[2:]) == want
        assert run_meta(l, [(1, 2) + hw]) == [(1, 2) + want]

    def test_crop_and_copy(self):
        x = rnd(2, 3, 7, 9).requires_grad_()
        l = make("Interp", "interp_param { zoom_factor: 1 pad_beg: -1 pad_end: -2 }", bottoms=[x.shape])
        (y,) = l(x)
        np.testing.assert_array_equal(y.detach(), x.detach()[:, :, 1:5, 1:7])
        y.sum().backward()
        assert float(x.grad.sum()) == 2 * 3 * 4 * 6

    def test_errors(self):
        with pytest.raises(LayerConfigError, match="pad_beg"):
            make("Interp", "interp_param { zoom_factor: 2 pad_beg: 1 }")
        with pytest.raises(LayerConfigError, match="pad_end"):
            make("Interp", "interp_param { zoom_factor: 2 pad_end: 1 }")
        with pytest.raises(LayerConfigError, match="given: height"):
            make("Interp", "interp_param { height: 5 }")
        with pytest.raises(LayerConfigError, match="none of these"):
            make("Interp", "")
        with pytest.raises(LayerConfigError, match="shrink_factor must be >= 1"):
            make("Interp", "interp_param { shrink_factor: 0 }")
        with pytest.raises(LayerConfigError, match="zoom_factor must be >= 1"):
            make("Interp", "interp_param { zoom_factor: 0 shrink_factor: 2 }")
        with pytest.raises(ShapeError, match="must be positive"):
            make("Interp", "interp_param { height: 0 width: 4 }")
        with pytest.raises(ShapeError, match="must be positive"):
            make("Interp", "interp_param { zoom_factor: 2 pad_beg: -3 pad_end: -2 }", bottoms=[(1, 1, 5, 9)])
        with pytest.raises(ShapeError, match="4-D"):
            make("Interp", "interp_param { zoom_factor: 2 }", bottoms=[(3, 4, 5)])
        l = make("Interp", "interp_param { zoom_factor: 2 }")
        with pytest.raises(ShapeError, match="4-D"):
            l(torch.zeros(4, 5))


# =========================================================================== meta / dtype / device-agnostic
META_CASES = [
    ("Eltwise", "eltwise_param { operation: MAX }", [(2, 3, 4, 5)] * 3, ("y",), [(2, 3, 4, 5)]),
    ("Eltwise", "eltwise_param { operation: PROD }", [(2, 3, 4, 5)] * 2, ("y",), [(2, 3, 4, 5)]),
    ("Eltwise", "eltwise_param { coeff: 1 coeff: -1 }", [(2, 3, 4, 5)] * 2, ("y",), [(2, 3, 4, 5)]),
    ("Scale", "scale_param { num_axes: 0 }", [(2, 3, 4, 5)], ("y",), [(2, 3, 4, 5)]),
    ("Scale", "scale_param { bias_term: true }", [(2, 3, 4, 5), (3,)], ("y",), [(2, 3, 4, 5)]),
    ("Bias", "", [(2, 3, 4, 5)], ("y",), [(2, 3, 4, 5)]),
    ("Concat", "", [(2, 3, 4, 5), (2, 1, 4, 5)], ("y",), [(2, 4, 4, 5)]),
    ("Slice", "slice_param { slice_point: 1 }", [(2, 3, 4, 5)], ("a", "b"), [(2, 1, 4, 5), (2, 2, 4, 5)]),
    ("Split", "", [(2, 3)], ("a", "b"), [(2, 3), (2, 3)]),
    ("Silence", "", [(2, 3)], (), []),
    ("Flatten", "", [(2, 3, 4, 5)], ("y",), [(2, 60)]),
    ("Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 5 } }", [(2, 3, 4, 5)], ("y",), [(2, 12, 5)]),
    ("Crop", "crop_param { offset: 1 }", [(2, 3, 4, 5), (2, 3, 2, 2)], ("y",), [(2, 3, 2, 2)]),
    ("Tile", "tile_param { tiles: 2 }", [(2, 3, 4, 5)], ("y",), [(2, 6, 4, 5)]),
    ("Softmax", "", [(2, 3, 4, 5)], ("y",), [(2, 3, 4, 5)]),
    ("SoftmaxWithLoss", "", [(2, 3, 4, 5), (2, 1, 4, 5)], ("l", "p"), [(), (2, 3, 4, 5)]),
    ("SoftmaxWithLoss", "", [(2, 3, 4, 5), (2, 1, 4, 5)], (), [()]),
    ("EuclideanLoss", "", [(2, 3), (2, 3)], (), [()]),
    ("SigmoidCrossEntropyLoss", "", [(2, 3), (2, 3)], ("l",), [()]),
    ("Accuracy", "", [(2, 3, 4), (2, 4)], ("a", "b"), [(), (3,)]),
    ("ArgMax", "argmax_param { axis: 1 top_k: 2 }", [(2, 3, 4, 5)], ("y",), [(2, 2, 4, 5)]),
    ("SegAccuracy", "", [(2, 3, 4, 5), (2, 1, 4, 5)], ("y",), [(1, 1, 1, 3)]),
    ("Interp", "interp_param { shrink_factor: 3 zoom_factor: 4 }", [(2, 3, 49, 33)], ("y",), [(2, 3, 65, 41)]),
]


@pytest.mark.parametrize("type_name,params,bottoms,tops,want", META_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(META_CASES)])
def test_meta_shapes_and_float64(type_name, params, bottoms, tops, want):
    l = make(type_name, params, bottoms=bottoms, tops=tops)
    assert run_meta(l, bottoms) == want
    # and a real float64 run gives the same shapes
    l64 = make(type_name, params, bottoms=bottoms, tops=tops, dtype=torch.float64)
    xs = []
    for i, s in enumerate(bottoms):
        x = rnd(*s, seed=i, dtype=torch.float64)
        if i == 1 and type_name in ("SoftmaxWithLoss", "Accuracy", "SegAccuracy"):
            x = torch.zeros(s, dtype=torch.float64)
        xs.append(x)
    outs = l64(*xs)
    assert [tuple(o.shape) for o in outs] == want
    assert all(o.dtype == torch.float64 for o in outs)


def test_all_errors_are_caffe_compat_errors():
    # a sample of misuse: every error is one of ours and names the layer
    bad = [
        lambda: make("Tile", "tile_param { tiles: 2 axis: 9 }"),
        lambda: make("Slice", "slice_param { axis: 1 slice_dim: 1 }", tops=("a", "b")),
        lambda: make("Softmax", "softmax_param { axis: 7 }"),
        lambda: make("SoftmaxWithLoss", "softmax_param { axis: 5 }", bottoms=[(2, 3), (2,)]),
    ]
    for f in bad:
        with pytest.raises(CaffeCompatError, match="layer 'l'"):
            f()
