"""Reading Caffe net/solver text files: templates, parsing, V1 upgrade, rule filtering.

* ``${NAME}`` template variables (the original train/test files are templates
  instantiated by ``sed``) are substituted from a dict before parsing.
* Text is parsed with protobuf's ``text_format`` into our private-pool messages;
  syntax errors become :class:`PrototxtError` naming ``file:line:column``.
* Nets in the V1 ``layers { type: CONVOLUTION ... }`` format are upgraded to
  the ``layer`` format (type enum -> string, ``blobs_lr``/``weight_decay``/
  ``param`` -> ``ParamSpec``), as Caffe's ``UpgradeV1Net`` does.
* :func:`filter_net` keeps the layers whose include/exclude rules the net
  state (phase, level, stages) meets, as Caffe's ``Net::FilterNet``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

from google.protobuf import text_format

from . import schema
from .errors import PrototxtError, TemplateError

_TEMPLATE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: V1 ``LayerType`` enum name -> ``LayerParameter.type`` string (Caffe's upgrade table).
V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN", "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

PathLike = Union[str, os.PathLike]


def substitute_templates(text: str, defines: Optional[Mapping[str, object]], source: str = "<string>") -> str:
    """Replace every ``${NAME}`` by ``str(defines[NAME])``.

    Raises :class:`TemplateError` listing every variable without a value, with
    the line of its first use.
    """
    defines = {} if defines is None else {str(k): v for k, v in defines.items()}
    missing = {}
    for m in _TEMPLATE.finditer(text):
        name = m.group(1)
        if name not in defines and name not in missing and not _in_comment(text, m.start()):
            missing[name] = text.count("\n", 0, m.start()) + 1
    if missing:
        where = ", ".join(f"${{{n}}} (line {ln})" for n, ln in missing.items())
        raise TemplateError(
            f"{source}: template variable(s) without a value: {where}. "
            f"Give them with defines={{...}} (CLI: --define NAME=VALUE).")
    # An undefined variable inside a # comment is left as it is (comments are ignored anyway).
    return _TEMPLATE.sub(lambda m: str(defines[m.group(1)]) if m.group(1) in defines else m.group(0), text)


def _in_comment(text: str, pos: int) -> bool:
    """Whether ``pos`` is inside a ``#`` comment (a ``#`` outside quotes earlier on its line)."""
    line_start = text.rfind("\n", 0, pos) + 1
    quote = None
    for ch in text[line_start:pos]:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return True
    return False


def _parse_text(text: str, message, source: str):
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        line, col = getattr(e, "_line", None), getattr(e, "_column", None)
        detail = str(e)
        if line is not None:
            # ParseError's own text starts with "line:col : "; keep just the message.
            detail = re.sub(r"^\d+:\d+ : ", "", detail)
            raise PrototxtError(f"{source}:{line}:{col}: {detail}") from None
        raise PrototxtError(f"{source}: {detail}") from None
    if not message.IsInitialized():
        missing = ", ".join(message.FindInitializationErrors())
        raise PrototxtError(f"{source}: required field(s) missing: {missing}")
    return message


def read_text(path: PathLike) -> tuple:
    """Return ``(text, source_name)`` of a text file, with clear errors."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise PrototxtError(f"{p}: no such file") from None
    except OSError as e:
        raise PrototxtError(f"{p}: cannot read: {e.strerror or e}") from None
    except ValueError as e:  # a NUL byte in the name
        raise PrototxtError(f"{str(path)!r}: cannot read: {e}") from None
    try:
        return data.decode("utf-8"), str(p)
    except UnicodeDecodeError:
        raise PrototxtError(f"{p}: not a text file (is it a binary .caffemodel? pass it as weights)") from None


def parse_net(text: str, source: str = "<string>", defines: Optional[Mapping[str, object]] = None):
    """Parse net text (templates substituted, V1 upgraded) into a ``NetParameter``."""
    text = substitute_templates(text, defines, source)
    net = _parse_text(text, schema.NetParameter(), source)
    return upgrade_net(net, source)


def parse_solver(text: str, source: str = "<string>", defines: Optional[Mapping[str, object]] = None):
    """Parse solver text (templates substituted) into a ``SolverParameter``."""
    text = substitute_templates(text, defines, source)
    return _parse_text(text, schema.SolverParameter(), source)


# --- V1 upgrade ---------------------------------------------------------------------------
def _v1_type_string(v1) -> str:
    enum = v1.DESCRIPTOR.fields_by_name["type"].enum_type
    return V1_TYPE_NAMES.get(enum.values_by_number[v1.type].name, "")


def upgrade_v1_layer(v1, source: str = "<string>"):
    """Convert one ``V1LayerParameter`` into a ``LayerParameter`` (Caffe's UpgradeV1LayerParameter)."""
    if v1.HasField("layer"):
        raise PrototxtError(
            f"{source}: layer '{v1.name}' uses the V0 format (a 'layer' inside 'layers'), "
            f"which this port does not upgrade; convert it with a newer Caffe's upgrade_net_proto_text")
    lp = schema.LayerParameter()
    lp.name = v1.name
    lp.type = _v1_type_string(v1)
    lp.bottom.extend(v1.bottom)
    lp.top.extend(v1.top)
    for rule in v1.include:
        lp.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        lp.exclude.add().CopyFrom(rule)
    lp.loss_weight.extend(v1.loss_weight)
    for b in v1.blobs:
        lp.blobs.add().CopyFrom(b)
    n_param = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(n_param):
        spec = lp.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    # Every *_param sub-message with the same name in both messages copies over unchanged.
    lp_fields = lp.DESCRIPTOR.fields_by_name
    for fd, value in v1.ListFields():
        if fd.name.endswith("_param") and fd.name in lp_fields and fd.message_type is not None:
            getattr(lp, fd.name).CopyFrom(value)
    _move_deprecated_transform(lp)
    return lp


def _move_deprecated_transform(lp) -> None:
    """Move deprecated scale/mean_file/crop_size/mirror of data params into transform_param.

    Caffe does this only when upgrading V1 layers (NetNeedsDataUpgrade); in the
    ``layer`` format those fields are ignored.
    """
    for pname in ("data_param", "image_data_param", "window_data_param"):
        if not lp.HasField(pname):
            continue
        p = getattr(lp, pname)
        fields = p.DESCRIPTOR.fields_by_name
        for f in ("scale", "mean_file", "crop_size", "mirror"):
            if f in fields and p.HasField(f):
                setattr(lp.transform_param, f, getattr(p, f))
                p.ClearField(f)


def upgrade_net(net, source: str = "<string>"):
    """Upgrade a net in the V1 ``layers`` format in place (no-op for the ``layer`` format)."""
    if len(net.layers):
        if len(net.layer):
            raise PrototxtError(f"{source}: net mixes the V1 'layers' and the 'layer' formats")
        upgraded = [upgrade_v1_layer(v1, source) for v1 in net.layers]
        net.ClearField("layers")
        for lp in upgraded:
            net.layer.add().CopyFrom(lp)
    return net


# --- include/exclude rules -----------------------------------------------------------------
def _phase_name(value: int) -> str:
    return schema.enum_name("NetStateRule", "phase", value)


def state_meets_rule(phase: str, level: int, stages: Iterable[str], rule) -> bool:
    """Caffe's ``Net::StateMeetsRule``."""
    stages = set(stages)
    if rule.HasField("phase") and _phase_name(rule.phase) != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def layer_included(lp, phase: str, level: int = 0, stages: Iterable[str] = (), source: str = "<string>") -> bool:
    """Whether a layer belongs to the net in this state (Caffe's ``FilterNet``)."""
    stages = list(stages)
    if len(lp.include) and len(lp.exclude):
        raise PrototxtError(
            f"{source}: layer '{lp.name}': specify either include rules or exclude rules, not both")
    if len(lp.include):
        return any(state_meets_rule(phase, level, stages, r) for r in lp.include)
    return not any(state_meets_rule(phase, level, stages, r) for r in lp.exclude)


def filter_net(net, phase: str, level: int = 0, stages: Iterable[str] = (), source: str = "<string>"):
    """A copy of ``net`` with only the layers included in the state (phase, level, stages)."""
    stages = list(stages)
    out = schema.NetParameter()
    out.CopyFrom(net)
    out.ClearField("layer")
    for lp in net.layer:
        if layer_included(lp, phase, level, stages, source):
            out.layer.add().CopyFrom(lp)
    return out
