"""The net builder, the prototxt front end and the public API (no goldens needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import caffe_compat
from caffe_compat import (Net, NetError, PrototxtError, ShapeError, TemplateError, UnknownLayerError,
                          LayerConfigError, DataError, register_layer, Layer)

SMALL = """
name: "small"
input: "data"
input_shape { dim: 2 dim: 3 dim: 8 dim: 10 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 }
                      bias_filler { type: "constant" value: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
"""


def test_build_forward_and_pycaffe_api():
    net = Net.from_string(SMALL, seed=0)
    assert net.inputs == ["data"]
    assert net.outputs == ["ip"]
    assert list(net.params) == ["conv1", "ip"]
    assert [tuple(p.shape) for p in net.params["conv1"]] == [(4, 3, 3, 3), (4,)]
    assert torch.all(net.params["conv1"][1] == 0.5)
    x = torch.randn(2, 3, 8, 10)
    out = net(data=x)
    assert list(out) == ["ip"] and out["ip"].shape == (2, 5)
    # blobs: every top, in-place conv1 holds the post-ReLU value
    assert list(net.blobs) == ["data", "conv1", "pool1", "ip"]
    ref = torch.relu(torch.nn.functional.conv2d(x, net.params["conv1"][0], net.params["conv1"][1], padding=1))
    torch.testing.assert_close(net.blobs["conv1"], ref)
    # other spatial sizes work where the layers allow (InnerProduct's input size is fixed)
    shapes = net.infer_shapes(data=(1, 3, 8, 10))
    assert shapes["ip"] == (1, 5)
    with pytest.raises(caffe_compat.CaffeCompatError):
        net.forward(data=torch.randn(1, 3, 16, 20))


def test_seeded_fillers_are_reproducible():
    a = Net.from_string(SMALL, seed=3)
    b = Net.from_string(SMALL, seed=3)
    c = Net.from_string(SMALL, seed=4)
    assert torch.equal(a.params["conv1"][0], b.params["conv1"][0])
    assert not torch.equal(a.params["conv1"][0], c.params["conv1"][0])


def test_summary_lists_layers_shapes_and_counts():
    net = Net.from_string(SMALL, seed=0)
    s = net.summary()
    assert "conv1" in s and "Convolution" in s and "2x4x8x10" in s
    assert "112" in s  # 4*3*3*3 + 4 parameters of conv1
    assert f"learnable parameters: {4*3*3*3 + 4 + 5*4*4*5 + 5:,}" in s


def test_templates_filled_and_missing_reported():
    text = SMALL.replace("num_output: 4", "num_output: ${NOUT}")
    net = Net.from_string(text, defines={"NOUT": 6})
    assert net.params["conv1"][0].shape[0] == 6
    with pytest.raises(TemplateError, match=r"\$\{NOUT\} \(line 6\)"):
        Net.from_string(text)


def test_syntax_error_names_file_line_column(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text('name: "x"\nlayer { name: "a" type: "ReLU" bottom: "d" top "d" }\n')
    with pytest.raises(PrototxtError, match=r"bad\.prototxt:2:\d+"):
        Net(p)
    with pytest.raises(PrototxtError, match="no such file"):
        Net(tmp_path / "missing.prototxt")


def test_unknown_layer_type_lists_known_types():
    text = 'input: "d" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\nlayer { name: "z" type: "Zorp" bottom: "d" top: "z" }'
    with pytest.raises(UnknownLayerError, match=r"layer 'z'.*'Zorp'.*Known types: .*Convolution"):
        Net.from_string(text)


def test_bottom_not_produced():
    text = 'input: "d" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\nlayer { name: "r" type: "ReLU" bottom: "nope" top: "r" }'
    with pytest.raises(NetError, match=r"layer 'r'.*bottom 'nope' is not produced"):
        Net.from_string(text)


def test_invalid_field_value_names_layer():
    text = SMALL.replace("pool: MAX kernel_size: 2", "pool: MAX kernel_size: 0")
    with pytest.raises(caffe_compat.CaffeCompatError, match="pool1"):
        Net.from_string(text)


def test_absurd_shapes_refused_before_allocating():
    text = SMALL.replace("dim: 8 dim: 10", "dim: 800000 dim: 1000000")
    with pytest.raises(ShapeError, match="limit"):
        Net.from_string(text)
    text = SMALL.replace("num_output: 5", "num_output: 4000000000")
    with pytest.raises(caffe_compat.CaffeCompatError):
        Net.from_string(text)


def test_input_checks():
    net = Net.from_string(SMALL)
    with pytest.raises(NetError, match="missing input"):
        net.forward()
    with pytest.raises(NetError, match="unknown input"):
        net.forward(data=torch.zeros(2, 3, 8, 10), extra=torch.zeros(1))
    with pytest.raises(ShapeError, match="channels"):
        net.forward(data=torch.zeros(2, 4, 8, 10))
    bad = torch.zeros(2, 3, 8, 10)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        net.forward(data=bad)
    out = net.forward(data=np.zeros((2, 3, 8, 10), np.float64))  # numpy accepted, cast to float32
    assert out["ip"].dtype == torch.float32


def test_v1_layers_format_upgraded():
    text = """
    input: "data" input_dim: 1 input_dim: 2 input_dim: 5 input_dim: 5
    layers { name: "c" type: CONVOLUTION bottom: "data" top: "c" blobs_lr: 1 blobs_lr: 0 weight_decay: 1 weight_decay: 0
             convolution_param { num_output: 3 kernel_size: 3 } }
    layers { name: "r" type: RELU bottom: "c" top: "c" }
    """
    net = Net.from_string(text)
    assert net.layer_types == ["Convolution", "ReLU"]
    assert net.params["c"][0].requires_grad and not net.params["c"][1].requires_grad
    assert net.infer_shapes()["c"] == (1, 3, 3, 3)


PHASED = """
input: "d" input_shape { dim: 1 dim: 1 dim: 3 dim: 3 }
layer { name: "train_only" type: "ReLU" bottom: "d" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "d" top: "a" include { phase: TEST } }
layer { name: "staged" type: "ReLU" bottom: "a" top: "b" include { stage: "deep" } }
layer { name: "not_lvl" type: "ReLU" bottom: "a" top: "c" exclude { min_level: 2 } }
"""


def test_include_exclude_rules():
    assert Net.from_string(PHASED, phase="TRAIN").layer_names == ["train_only", "not_lvl"]
    assert Net.from_string(PHASED, phase="TEST").layer_names == ["test_only", "not_lvl"]
    assert Net.from_string(PHASED, stages=["deep"]).layer_names == ["test_only", "staged", "not_lvl"]
    assert Net.from_string(PHASED, level=2).layer_names == ["test_only"]
    with pytest.raises(PrototxtError, match="either include rules or exclude rules"):
        Net.from_string(PHASED.replace('include { stage: "deep" }', 'include { stage: "deep" } exclude { phase: TRAIN }'))


SHARED = """
input: "a" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
input: "b" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
force_backward: true
layer { name: "ca" type: "Convolution" bottom: "a" top: "ca"
  param { name: "w" lr_mult: 1 } param { name: "bias" lr_mult: 0 }
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" } } }
layer { name: "cb" type: "Convolution" bottom: "b" top: "cb"
  param { name: "w" } param { name: "bias" }
  convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "ca" bottom: "cb" top: "s" }
"""


def test_param_sharing_and_lr_mult():
    net = Net.from_string(SHARED, seed=1)
    assert net.params["ca"][0] is net.params["cb"][0]
    assert net.params["ca"][1] is net.params["cb"][1]
    assert net.params["ca"][1].requires_grad  # force_backward
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    net(a=a, b=b)
    g = torch.randn(2, 2, 4, 4)
    grads = net.backward(s=g)
    w = net.params["ca"][0]
    # the shared weight's gradient is the sum of both uses
    expect = torch.einsum("nohw,nchw->oc", g, a + b).reshape(2, 3, 1, 1)
    torch.testing.assert_close(w.grad, expect, rtol=1e-5, atol=1e-5)
    # force_backward: Caffe computes every param diff, lr_mult 0 included (the solver never applies it)
    torch.testing.assert_close(net.params["ca"][1].grad, 2 * g.sum((0, 2, 3)))
    assert grads["a"] is not None and grads["a"].shape == a.shape  # force_backward: input diffs
    # shared params are one tensor: a shape conflict is an error
    bad = SHARED.replace('bottom: "b" top: "cb"', 'bottom: "b" top: "cb"').replace(
        "convolution_param { num_output: 2 kernel_size: 1 } }", "convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }")
    with pytest.raises(ShapeError, match="shared param 'w'"):
        Net.from_string(bad)
    bad = SHARED.replace('param { name: "w" } param { name: "bias" }', 'param { name: "w" lr_mult: 3 } param { name: "bias" }')
    with pytest.raises(LayerConfigError, match="lr_mult"):
        Net.from_string(bad)


def test_no_input_gradients_without_force_backward():
    net = Net.from_string(SHARED.replace("force_backward: true", ""))
    net(a=torch.randn(2, 3, 4, 4), b=torch.randn(2, 3, 4, 4))
    grads = net.backward(s=torch.ones(2, 2, 4, 4))
    assert grads["a"] is None
    assert net.params["ca"][0].grad is not None
    assert net.params["ca"][1].grad is None  # lr_mult 0 and no force_backward: no gradient, as Caffe


def test_blob_consumed_twice_gradient_summed_and_outputs():
    text = """
    input: "x" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }
    force_backward: true
    layer { name: "p1" type: "Power" bottom: "x" top: "y1" power_param { scale: 2 } }
    layer { name: "p2" type: "Power" bottom: "x" top: "y2" power_param { scale: 3 } }
    """
    net = Net.from_string(text)
    assert net.outputs == ["y1", "y2"]
    net(x=torch.ones(1, 2, 3, 3))
    g = net.backward(y1=torch.ones(1, 2, 3, 3), y2=torch.ones(1, 2, 3, 3))
    torch.testing.assert_close(g["x"], torch.full((1, 2, 3, 3), 5.0))


def test_loss_weight_and_automatic_tops():
    text = """
    input: "s" input_shape { dim: 2 dim: 3 dim: 2 dim: 2 }
    input: "l" input_shape { dim: 2 dim: 1 dim: 2 dim: 2 }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" loss_weight: 0.5 }
    """
    net = Net.from_string(text)
    assert net.top_names[0] == ["(automatic)"]
    assert net.loss_weights == {"(automatic)": 0.5}
    s = torch.randn(2, 3, 2, 2)
    l = torch.randint(0, 3, (2, 1, 2, 2)).float()
    out = net(s=s, l=l)
    assert list(out) == []  # Caffe keeps automatic tops out of the net outputs
    ref = torch.nn.functional.cross_entropy(s, l[:, 0].long())
    torch.testing.assert_close(net.blobs["(automatic)"], ref)
    torch.testing.assert_close(net.loss, 0.5 * ref)


def test_user_registered_layer():
    @register_layer("TimesTwoForTest")
    class TimesTwo(Layer):
        def forward(self, x):
            return (2 * x,)

    net = Net.from_string('input: "x" input_shape { dim: 1 dim: 1 dim: 1 dim: 2 }\n'
                          'layer { name: "t" type: "TimesTwoForTest" bottom: "x" top: "y" }')
    torch.testing.assert_close(net(x=torch.ones(1, 1, 1, 2))["y"], torch.full((1, 1, 1, 2), 2.0))
    del caffe_compat.REGISTRY["TimesTwoForTest"]


def test_meta_device_net_for_inspection():
    net = Net.from_string(SMALL, device="meta")
    assert net.params["conv1"][0].is_meta
    assert net.infer_shapes()["ip"] == (2, 5)


def test_top_produced_by_multiple_sources_is_an_error():
    base = 'input: "d" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n'
    with pytest.raises(NetError, match="produced by multiple sources"):
        Net.from_string(base + 'layer { name: "a" type: "ReLU" bottom: "d" top: "x" }\n'
                               'layer { name: "b" type: "ReLU" bottom: "d" top: "x" }')
    with pytest.raises(NetError, match="produced by multiple sources"):
        Net.from_string(base + 'layer { name: "a" type: "ReLU" bottom: "d" top: "y" }\n'
                               'layer { name: "s" type: "Eltwise" bottom: "d" bottom: "y" top: "y" }')
    # in place at the same index is fine, also on a net input
    net = Net.from_string(base + 'force_backward: true\nlayer { name: "a" type: "ReLU" bottom: "d" top: "d" }')
    x = torch.tensor([[[[1.0, -1.0], [2.0, -2.0]]]])
    net(d=x)
    g = net.backward(d=torch.ones(1, 1, 2, 2))
    torch.testing.assert_close(g["d"], (x > 0).float())  # the input's own gradient, not the in-place blob's


def test_backward_loss_consumed_later_and_diff_checks():
    text = """
    input: "s" input_shape { dim: 2 dim: 3 dim: 1 dim: 1 }
    input: "l" input_shape { dim: 2 dim: 1 dim: 1 dim: 1 }
    layer { name: "ip" type: "InnerProduct" bottom: "s" top: "ip" inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "l" top: "loss" }
    layer { name: "pw" type: "Power" bottom: "loss" top: "pw" }
    """
    net = Net.from_string(text, seed=0)
    net(s=torch.randn(2, 3, 1, 1), l=torch.tensor([0.0, 2.0]).reshape(2, 1, 1, 1))
    assert net.outputs == ["pw"]
    net.backward()
    assert net.params["ip"][0].grad is not None and net.params["ip"][0].grad.abs().sum() > 0
    with pytest.raises(NetError, match="already called"):
        net.backward()
    net(s=torch.randn(2, 3, 1, 1), l=torch.tensor([0.0, 2.0]).reshape(2, 1, 1, 1))
    with pytest.raises(NetError, match="not net outputs"):
        net.backward(ip=torch.ones(2, 3))
    with pytest.raises(ShapeError, match="diff for 'pw'"):
        net.backward(pw=torch.ones(3))
    with pytest.raises(DataError, match="not numeric"):
        net.backward(pw="abc")


def test_layer_phase_field_overrides_net_phase_and_stages_string():
    text = """input: "d" input_shape { dim: 1 dim: 1 dim: 50 dim: 50 }
    layer { name: "drop" type: "Dropout" bottom: "d" top: "y" phase: TRAIN dropout_param { dropout_ratio: 0.5 } }
    layer { name: "st" type: "ReLU" bottom: "y" top: "z" include { stage: "deploy" } }"""
    net = Net.from_string(text, phase="TEST", stages="deploy", seed=0)
    assert net.layer_names == ["drop", "st"]
    y = net(d=torch.ones(1, 1, 50, 50))["z"]
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}  # TRAIN dropout although the net is TEST


def test_meta_net_cannot_run_forward():
    net = Net.from_string(SMALL, device="meta")
    with pytest.raises(NetError, match="meta device"):
        net(data=torch.randn(2, 3, 8, 10))


def test_bad_shape_values_are_clear_errors():
    net = Net.from_string(SMALL)
    with pytest.raises(ShapeError, match="sequence of integers"):
        net.infer_shapes(data="abc")


def test_shared_scale_gradient_is_the_first_sharers_at_batch_1_and_autograd_visible():
    """The fork overwrites a vector Scale diff when outer_dim == 1 (recorded by the res goldens)."""
    text = """input: "a" input_shape { dim: 1 dim: 3 dim: 2 dim: 2 }
    input: "b" input_shape { dim: 1 dim: 3 dim: 2 dim: 2 }
    layer { name: "s1" type: "Scale" bottom: "a" top: "a1" param { name: "sh" } }
    layer { name: "s2" type: "Scale" bottom: "b" top: "b1" param { name: "sh" } }
    layer { name: "sum" type: "Eltwise" bottom: "a1" bottom: "b1" top: "y" }"""
    net = Net.from_string(text)
    a, b = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    y = net(a=a, b=b)["y"]
    p = net.params["s1"][0]
    (g,) = torch.autograd.grad(y.sum(), [p])  # an ordinary autograd gradient
    torch.testing.assert_close(g, a.sum((0, 2, 3)))  # only the first sharer's contribution
    # batch 2 (outer_dim 2): Caffe accumulates over both sharers
    y = net(a=torch.cat([a, a]), b=torch.cat([b, b]))["y"]
    (g,) = torch.autograd.grad(y.sum(), [p])
    torch.testing.assert_close(g, 2 * (a + b).sum((0, 2, 3)))
    # a one-element vector scale takes Caffe's accumulating branch even at batch 1
    one = text.replace("dim: 3", "dim: 1")
    net = Net.from_string(one)
    a1, b1 = a[:, :1], b[:, :1]
    y = net(a=a1, b=b1)["y"]
    (g,) = torch.autograd.grad(y.sum(), [net.params["s1"][0]])
    torch.testing.assert_close(g, (a1 + b1).sum((0, 2, 3)))


def test_template_variables_in_comments_need_no_value():
    text = SMALL.replace('name: "small"', 'name: "small"  # data from ${DATA_ROOT}, "#" quoted: ${X}')
    net = Net.from_string(text)
    assert net.name == "small"
    with pytest.raises(TemplateError, match="NOUT"):
        Net.from_string(text.replace("num_output: 4", 'num_output: ${NOUT} # ${Y}'))


def test_layer_list_is_an_ordinary_module_list():
    """Layers are registered directly into net.layers (build speed): it must behave as appended."""
    import caffe_compat
    net = caffe_compat.Net.from_string(
        'input: "data" input_shape { dim: 1 dim: 2 dim: 5 dim: 5 }\n'
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 3 '
        'kernel_size: 3 } }\n'
        'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n'
        'layer { name: "p" type: "Power" bottom: "c" top: "p" }\n', seed=0)
    assert len(net.layers) == 3 and [m.name for m in net.layers] == net.layer_names == ["c", "r", "p"]
    assert [net.layers[i].type_name for i in range(3)] == net.layer_types
    assert net.layers[-1] is list(net.layers)[2] and net.layers[0].name == "c"
    assert [n for n, _ in net.layers.named_children()] == ["0", "1", "2"]
    assert sorted(k for k in net.state_dict()) == ["layers.0.blobs.0", "layers.0.blobs.1"]
    net.layers.append(torch.nn.Identity())   # the list keeps working after direct inserts
    assert len(net.layers) == 4 and [n for n, _ in net.layers.named_children()][-1] == "3"


def test_layer_blob_lists_are_ordinary_parameter_lists():
    """Blobs are registered directly into the ParameterList (build speed): it must behave as appended."""
    import caffe_compat
    net = caffe_compat.Net.from_string(
        'input: "data" input_shape { dim: 1 dim: 2 dim: 5 dim: 5 }\n'
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 3 '
        'kernel_size: 3 weight_filler { type: "gaussian" std: 1 } } }\n'
        'layer { name: "s" type: "Scale" bottom: "c" top: "s" scale_param { bias_term: true } }\n', seed=0)
    conv = net.layers[net.layer_names.index("c")]
    assert len(conv.blobs) == 2 and [tuple(p.shape) for p in conv.blobs] == [(3, 2, 3, 3), (3,)]
    assert conv.blobs[-1] is list(conv.blobs)[1]
    keys = [k for k in net.state_dict() if ".blobs." in k]
    assert len(keys) == 4 and all(k.endswith((".blobs.0", ".blobs.1")) for k in keys)
    assert len(list(net.parameters())) == 4 and all(p.requires_grad for p in net.parameters())
    net.double()
    assert all(p.dtype == torch.float64 for p in net.parameters()) and conv.blobs[0].dtype == torch.float64
    conv.blobs.append(torch.nn.Parameter(torch.zeros(1)))   # the list keeps working after direct inserts
    assert len(conv.blobs) == 3 and [k for k, _ in conv.blobs.named_parameters()] == ["0", "1", "2"]
