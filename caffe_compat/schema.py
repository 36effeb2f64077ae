"""Caffe protobuf message classes, built at runtime from a shipped descriptor set.

Design
------
The schema of the segaware Caffe fork lives in ``proto/caffe.proto`` (full schema,
package ``caffe``) and ``proto/caffe_weights.proto`` (minimal weights reader,
package ``caffe_weights``). At development time ``tools/build_schema.py`` compiles
both into one serialized ``google.protobuf.FileDescriptorSet``,
``caffe_compat/_schema_desc.bin``, which ships inside the package. This module
reads only that file: **no protoc and no generated ``*_pb2.py`` are needed** at
install or run time, and the same bytes work with every protobuf runtime from 3.20
on (pure-Python, C++ and upb backends).

The descriptors are loaded into a **private** ``DescriptorPool``, never the
process-wide default pool. Many packages (pycaffe, caffe2/onnx converters,
OpenVINO, other Caffe ports, ...) register their own ``caffe.proto`` with the
same file name and the same ``caffe.*`` symbols in the default pool; sharing it
would raise "duplicate file name / symbol" errors, or silently hand us their
(different) message definitions, depending on import order. With a private pool
both can coexist in one process. Consequence: our classes are distinct from any
other ``caffe.NetParameter`` class; convert between them by bytes
(``ours.FromString(theirs.SerializeToString())``) if ever needed.

What is exported
----------------
* The frequently used classes as module attributes: ``NetParameter``,
  ``LayerParameter``, ``V1LayerParameter``, ``V0LayerParameter``, ``BlobProto``,
  ``BlobShape``, ``BlobProtoVector``, ``SolverParameter``, ``SolverState``,
  ``FillerParameter``, ``ParamSpec``, ``NetState``, ``NetStateRule``.
* ``WeightsNet`` (and ``WeightsLayer``, ``WeightsV1Layer``, ``WeightsV0Layer``,
  ``WeightsBlobProto``, ``WeightsBlobShape``): the minimal reader schema. It
  declares only what loading weights needs (net ``name``/``layer``/``layers``,
  layer ``name``/``type``/``blobs``) and skips everything else as unknown
  fields, so it also reads ``.caffemodel`` files whose other LayerParameter
  fields do not fit the fork's numbering (e.g. BVLC Caffe's InputParameter at
  field 143, where the fork has InterpParameter).
* ``message_class(name)`` for any other message, by full (``"caffe.Datum"``) or
  short (``"Datum"``) name; ``enum_name`` / ``enum_value`` / ``enum_values``
  for enum lookups; ``field_number``; ``all_message_names``; ``POOL`` (the
  private pool).

Notes
-----
* Text format: ``google.protobuf.text_format.Merge(text, NetParameter())``.
  Caffe's text parser rejects a message with a missing proto2 ``required``
  field; ``text_format`` does not check, call ``msg.IsInitialized()`` to mimic
  Caffe.
* Float fields hold float32 values: on some runtimes
  ``BatchNormParameter().eps`` reads ``9.9999997e-06`` rather than ``1e-05``.
* Binary parsing: Caffe allows messages up to 2 GB (``INT_MAX`` bytes); the
  Python runtimes read such files with ``FromString`` directly.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, Tuple, Type, Union

from google.protobuf import descriptor as _descriptor
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

__all__ = [
    "POOL",
    "DESCRIPTOR_SET_FILE",
    "PACKAGE",
    "WEIGHTS_PACKAGE",
    "message_class",
    "message_descriptor",
    "enum_descriptor",
    "enum_name",
    "enum_value",
    "enum_values",
    "field_number",
    "all_message_names",
    # full schema (package caffe)
    "NetParameter",
    "LayerParameter",
    "V1LayerParameter",
    "V0LayerParameter",
    "BlobProto",
    "BlobShape",
    "BlobProtoVector",
    "SolverParameter",
    "SolverState",
    "FillerParameter",
    "ParamSpec",
    "NetState",
    "NetStateRule",
    # minimal weights reader (package caffe_weights)
    "WeightsNet",
    "WeightsLayer",
    "WeightsV1Layer",
    "WeightsV0Layer",
    "WeightsBlobProto",
    "WeightsBlobShape",
]

#: Package of the full schema (proto/caffe.proto).
PACKAGE = "caffe"
#: Package of the minimal weights reader (proto/caffe_weights.proto).
WEIGHTS_PACKAGE = "caffe_weights"
#: File name of the shipped serialized FileDescriptorSet, next to this module.
DESCRIPTOR_SET_FILE = "_schema_desc.bin"

_PACKAGES = (PACKAGE, WEIGHTS_PACKAGE)


def _read_descriptor_set() -> bytes:
    path = Path(__file__).with_name(DESCRIPTOR_SET_FILE)
    if path.is_file():
        return path.read_bytes()
    # Fallback for installs where the package is not a plain directory (zip, ...).
    try:
        import importlib.resources as resources

        return (resources.files(__package__ or "caffe_compat") / DESCRIPTOR_SET_FILE).read_bytes()
    except Exception as exc:  # pragma: no cover - broken installation
        raise ImportError(
            f"caffe_compat: cannot read the schema descriptor set {DESCRIPTOR_SET_FILE!r} "
            "(it must be installed as package data; regenerate it with "
            "`python tools/build_schema.py`)"
        ) from exc


def _build_pool(data: bytes) -> descriptor_pool.DescriptorPool:
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(data)
    pool = descriptor_pool.DescriptorPool()  # private: never the default pool
    # protoc --include_imports writes dependencies before their dependents.
    for file_proto in fds.file:
        add_serialized = getattr(pool, "AddSerializedFile", None)
        if add_serialized is not None:
            add_serialized(file_proto.SerializeToString())
        else:  # pragma: no cover - very old runtimes
            pool.Add(file_proto)
    return pool


#: The private descriptor pool holding caffe.proto and caffe_weights.proto.
POOL: descriptor_pool.DescriptorPool = _build_pool(_read_descriptor_set())


def _class_for(desc: _descriptor.Descriptor) -> Type[Message]:
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is not None:
        return get_class(desc)
    # protobuf < 4.22 has no GetMessageClass.
    return message_factory.MessageFactory(POOL).GetPrototype(desc)  # pragma: no cover


def _candidates(name: str) -> Tuple[str, ...]:
    name = name.lstrip(".")
    if name.split(".", 1)[0] in _PACKAGES:
        return (name,)
    return tuple(f"{pkg}.{name}" for pkg in _PACKAGES)


@functools.lru_cache(maxsize=None)
def message_descriptor(name: str) -> _descriptor.Descriptor:
    """Descriptor of a message by full (``caffe.Datum``) or short (``Datum``) name.

    Short names are looked up in package ``caffe`` first, then ``caffe_weights``.
    """
    for full in _candidates(name):
        try:
            return POOL.FindMessageTypeByName(full)
        except KeyError:
            continue
    raise KeyError(f"no message named {name!r} in the caffe_compat schema")


def message_class(name: str) -> Type[Message]:
    """Message class by full (``caffe.Datum``) or short (``Datum``) name."""
    return _class_for(message_descriptor(name))


@functools.lru_cache(maxsize=None)
def enum_descriptor(name: str) -> _descriptor.EnumDescriptor:
    """Enum descriptor by name: ``"Phase"``, ``"V1LayerParameter.LayerType"``, ``"caffe.Phase"``."""
    for full in _candidates(name):
        try:
            return POOL.FindEnumTypeByName(full)
        except KeyError:
            continue
    raise KeyError(f"no enum named {name!r} in the caffe_compat schema")


_Owner = Union[Message, Type[Message], _descriptor.Descriptor, str]


def _owner_descriptor(owner: _Owner) -> _descriptor.Descriptor:
    if isinstance(owner, str):
        return message_descriptor(owner)
    if isinstance(owner, _descriptor.Descriptor):
        return owner
    desc = getattr(owner, "DESCRIPTOR", None)
    if isinstance(desc, _descriptor.Descriptor):
        return desc
    raise TypeError(f"expected a message, message class, descriptor or name, got {owner!r}")


def _field(owner: _Owner, field_name: str) -> _descriptor.FieldDescriptor:
    desc = _owner_descriptor(owner)
    try:
        return desc.fields_by_name[field_name]
    except KeyError:
        raise KeyError(f"{desc.full_name} has no field {field_name!r}") from None


def _field_enum(owner: _Owner, field_name: str) -> _descriptor.EnumDescriptor:
    field = _field(owner, field_name)
    if field.enum_type is None:
        raise TypeError(f"{field.full_name} is not an enum field")
    return field.enum_type


def all_message_names() -> Tuple[str, ...]:
    """Full names of every top-level message of the schema (both packages)."""
    names = []
    for file_name in ("caffe.proto", "caffe_weights.proto"):
        fd = POOL.FindFileByName(file_name)
        names.extend(f"{fd.package}.{name}" for name in fd.message_types_by_name)
    return tuple(names)


def field_number(owner: _Owner, field_name: str) -> int:
    """Field number of ``owner.field_name`` (owner: message, class, descriptor or name)."""
    return _field(owner, field_name).number


def enum_name(owner: _Owner, field_name: str, value: int) -> str:
    """Symbolic name of ``value`` for the enum field ``owner.field_name``.

    Example: ``enum_name(PoolingParameter, "pool", 1) == "AVE"``; ``owner`` may be a
    message, a message class, a descriptor or a message name (``"PoolingParameter"``).
    """
    enum = _field_enum(owner, field_name)
    try:
        return enum.values_by_number[int(value)].name
    except KeyError:
        raise ValueError(f"{value!r} is not a value of enum {enum.full_name}") from None


def enum_value(owner: _Owner, field_name: str, name: str) -> int:
    """Numeric value of the symbol ``name`` for the enum field ``owner.field_name``."""
    enum = _field_enum(owner, field_name)
    try:
        return enum.values_by_name[name].number
    except KeyError:
        raise ValueError(f"{name!r} is not a value of enum {enum.full_name}") from None


def enum_values(owner: _Owner, field_name: str) -> Dict[str, int]:
    """``{name: number}`` of the enum type of ``owner.field_name``, in declaration order."""
    return {v.name: v.number for v in _field_enum(owner, field_name).values}


# --- full schema (package caffe) ----------------------------------------------------------------
NetParameter = message_class("caffe.NetParameter")
LayerParameter = message_class("caffe.LayerParameter")
V1LayerParameter = message_class("caffe.V1LayerParameter")
V0LayerParameter = message_class("caffe.V0LayerParameter")
BlobProto = message_class("caffe.BlobProto")
BlobShape = message_class("caffe.BlobShape")
BlobProtoVector = message_class("caffe.BlobProtoVector")
SolverParameter = message_class("caffe.SolverParameter")
SolverState = message_class("caffe.SolverState")
FillerParameter = message_class("caffe.FillerParameter")
ParamSpec = message_class("caffe.ParamSpec")
NetState = message_class("caffe.NetState")
NetStateRule = message_class("caffe.NetStateRule")

# --- minimal weights reader (package caffe_weights) ---------------------------------------------
WeightsNet = message_class("caffe_weights.WeightsNet")
WeightsLayer = message_class("caffe_weights.WeightsLayer")
WeightsV1Layer = message_class("caffe_weights.WeightsV1Layer")
WeightsV0Layer = message_class("caffe_weights.WeightsV0Layer")
WeightsBlobProto = message_class("caffe_weights.BlobProto")
WeightsBlobShape = message_class("caffe_weights.BlobShape")
