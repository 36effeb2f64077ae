"""caffe_compat: load, run, fine-tune and convert models of the segaware Caffe fork in PyTorch.

Quick start::

    import caffe_compat
    net = caffe_compat.Net("deploy.prototxt", weights="model.caffemodel", phase="TEST")
    out = net(data=image_tensor)          # {output blob: tensor}
    net.blobs["fc8"], net.params["conv1_1"][0]
"""
from __future__ import annotations

import importlib
import logging

from .errors import (CaffeCompatError, DataError, LayerConfigError, NetError, NotSupportedError,
                     PrototxtError, ShapeError, SolverError, TemplateError, UnknownLayerError, WeightsError)
from .layers import REGISTRY, BuildContext, Layer, register_layer
from .net import Net
from .solver import Solver, param_groups
# The custom operations (README: caffe_compat.ops.im2dist.im2dist, ...) reachable after `import caffe_compat`.
from . import ops  # noqa: E402

for _op in ("im2col", "im2dist", "meanfield", "norm_conv"):
    importlib.import_module(f"{__name__}.ops.{_op}")
del _op

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Net", "Solver", "param_groups", "Layer", "BuildContext", "register_layer", "REGISTRY",
    "CaffeCompatError", "DataError", "LayerConfigError", "NetError", "NotSupportedError",
    "PrototxtError", "ShapeError", "SolverError", "TemplateError", "UnknownLayerError", "WeightsError",
]
