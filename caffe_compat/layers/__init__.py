"""Caffe layer types: the registry and one module per layer family.

Importing a family module registers its classes in :data:`REGISTRY`.
"""
from __future__ import annotations

import importlib

from .base import REGISTRY, BuildContext, Layer, get_layer_class, register_layer, shape_only, in_shape_pass

#: Modules holding the built-in layer families (imported on first lookup).
BUILTIN_FAMILIES = (
    "conv", "pooling", "activations", "normalization", "elementwise", "shape_ops",
    "losses", "interp", "data", "segaware", "crf", "hdf5_data",
)

_loaded = False


def _load_builtin_layers() -> None:
    """Import every built-in family once (registering their layer classes)."""
    global _loaded
    if _loaded:
        return
    for mod in BUILTIN_FAMILIES:
        importlib.import_module(f"{__name__}.{mod}")
    _loaded = True


__all__ = ["REGISTRY", "BuildContext", "Layer", "get_layer_class", "register_layer", "shape_only", "in_shape_pass"]
