"""The layer registry: users' registrations win over the lazily imported built-ins."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

import caffe_compat
from caffe_compat import Layer, Net, register_layer
from caffe_compat.layers import REGISTRY, get_layer_class

NET = """
input: "data" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }
layer { name: "r" type: "ReLU" bottom: "data" top: "out" }
"""


def test_registration_before_first_lookup_wins():
    """A fresh interpreter: register ReLU before any net is built (built-ins not imported yet)."""
    code = textwrap.dedent("""
        import torch
        from caffe_compat import Layer, Net, register_layer
        from caffe_compat.layers import REGISTRY
        assert "Convolution" not in REGISTRY, "built-ins must still be unloaded here"

        @register_layer("ReLU")
        class Mine(Layer):
            def forward(self, x):
                return (x + 100,)

        net = Net.from_string(NET_TEXT)
        out = net(data=-torch.ones(1, 1, 2, 2))["out"]
        assert type(net.layer("r")) is Mine, type(net.layer("r"))
        assert torch.equal(out, torch.full((1, 1, 2, 2), 99.0))
        # importing the built-in family module directly does not replace it either
        import caffe_compat.layers.activations
        assert REGISTRY["ReLU"] is Mine and "Convolution" in REGISTRY
        print("ok")
    """).replace("NET_TEXT", repr(NET))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_registration_after_loading_replaces_builtin():
    builtin = get_layer_class("ReLU")
    try:
        @register_layer("ReLU")
        class Doubling(Layer):
            def forward(self, x):
                return (2 * x,)

        net = Net.from_string(NET)
        assert type(net.layer("r")) is Doubling
        assert torch.equal(net(data=-torch.ones(1, 1, 2, 2))["out"], torch.full((1, 1, 2, 2), -2.0))
    finally:
        REGISTRY["ReLU"] = builtin
    assert type(Net.from_string(NET).layer("r")) is builtin
    assert caffe_compat.REGISTRY is REGISTRY
