"""The layer contract on the Layer base, one weight-report type, one layer loop, one-way imports."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import caffe_compat
from caffe_compat import LayerConfigError, Net
from caffe_compat.layers import get_layer_class
from caffe_compat.layers.base import Layer
from caffe_compat.weights import LoadReport

NET = """
name: "c"
input: "data" input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" } } }
layer { name: "xy" type: "DummyData" top: "xy" dummy_data_param { shape { dim: 1 dim: 2 dim: 2 dim: 2 }
        data_filler { type: "xy" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""


def test_contract_declared_on_the_base():
    assert Layer.feeds_net_inputs is False and Layer.exportable is True
    for name in ("feeds_net_inputs", "exportable"):
        assert name in Layer.__doc__
    for meth in ("input_shapes_for", "set_net_outputs", "export_refusal"):
        assert getattr(Layer, meth).__doc__, meth
    assert get_layer_class("Input").feeds_net_inputs is True
    assert not get_layer_class("ImageSegData").exportable and not get_layer_class("MatWrite").exportable
    net = Net.from_string(NET)
    relu = net.layer("relu")
    relu.set_net_outputs([0])  # the default ignores it
    with pytest.raises(LayerConfigError, match="layer 'relu'.*declares no net inputs"):
        relu.input_shapes_for(1)
    assert net.layer("conv").export_refusal() is None
    assert net.layer("xy").export_refusal() is None  # xy filler: a constant of the program


def test_load_weights_returns_one_report_type(tmp_path):
    net = Net.from_string(NET)
    net.save(tmp_path / "w.caffemodel")
    net.save_checkpoint(tmp_path / "w.pt")
    other = Net.from_string(NET)
    a = other.load_weights(tmp_path / "w.caffemodel")
    b = other.load_weights(tmp_path / "w.pt")
    assert type(a) is LoadReport and type(b) is LoadReport
    assert a.loaded == ["conv"] and b.loaded == ["conv/0", "conv/1"] and a.ok and b.ok


def test_forward_and_shapes_share_one_layer_loop(monkeypatch):
    calls = []
    real = Net.run_layers

    def counting(self, blobs, **kw):
        calls.append(sorted(kw))
        return real(self, blobs, **kw)

    monkeypatch.setattr(Net, "run_layers", counting)
    net = Net.from_string(NET)
    net(data=torch.zeros(1, 2, 4, 4))
    # the forward's own pass (the memory budget may add a shape pass before it)
    assert any("device" in kw and "call" not in kw for kw in calls)
    del calls[:]
    assert net.infer_shapes(data=(1, 2, 6, 6))["conv"] == (1, 3, 4, 4)
    assert len(calls) == 1 and "call" in calls[0]


def _imports(path: Path):
    """Modules imported by a source file, except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            skip.update(id(n) for n in ast.walk(node))
    return {("." * n.level) + (n.module or "") for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and id(n) not in skip}


def test_checkpoint_and_weights_do_not_import_net():
    pkg = Path(caffe_compat.__file__).parent
    for mod in ("checkpoint.py", "weights.py", "export.py"):
        assert ".net" not in _imports(pkg / mod), mod
