"""The exception hierarchy of caffe_compat.

Every error the library raises on bad input is a :class:`CaffeCompatError`, so a
caller can catch one type.  Messages name the file (and line/column), or the
layer and field, that caused the problem.
"""
from __future__ import annotations


class CaffeCompatError(Exception):
    """Base class of every error raised by caffe_compat on bad input."""


class PrototxtError(CaffeCompatError):
    """A prototxt (net or solver text file) could not be parsed or is invalid."""


class TemplateError(PrototxtError):
    """A ``${NAME}`` template variable has no value."""


class UnknownLayerError(CaffeCompatError):
    """A layer type is not in the registry."""


class LayerConfigError(CaffeCompatError):
    """A layer's parameters are invalid (names the layer and the field)."""


class ShapeError(CaffeCompatError):
    """Blob shapes are inconsistent, absurd, or do not match what a layer needs."""


class NetError(CaffeCompatError):
    """The net's wiring is invalid (e.g. a bottom no layer produces)."""


class WeightsError(CaffeCompatError):
    """A weights file (caffemodel / HDF5 / checkpoint) is unreadable or does not fit the net."""


class DataError(CaffeCompatError):
    """Input data (images, lists, label maps, .mat files) is missing or invalid."""


class NotSupportedError(CaffeCompatError):
    """A feature the original supports in principle but this port deliberately does not."""


def layer_error(layer_name: str, layer_type: str, message: str, cls=LayerConfigError) -> CaffeCompatError:
    """Build an error that names the layer: ``layer 'conv1' (Convolution): message``."""
    return cls(f"layer '{layer_name}' ({layer_type}): {message}")


class SolverError(CaffeCompatError):
    """A solver file or a solver state is invalid or does not fit the net (names the file and field)."""
