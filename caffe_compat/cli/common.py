"""What every command does with the files it is given: templates, file kinds, weights, warnings.

* :func:`resolve_defines`: ``--preset`` values (the original scripts' ``${NAME}``
  values, :mod:`caffe_compat.presets`) overridden by ``--define``; a define the
  file does not use is a warning naming it (and the close variable it may mean).
* :func:`check_net_file`: a solver file given where a net is expected is an
  error saying so and naming the nets it refers to.
* :func:`build_net`: ``Net(...)`` whose "bottom not produced" error in TEST
  phase hints ``--phase TRAIN`` when the missing blob comes from a TRAIN-only layer.
* :func:`load_weights`: a caffemodel / HDF5 / checkpoint into a net; a misfit is
  one readable report (counts, first mismatches, whether the file seems to
  belong to another net, the ``--lenient`` hint), printed once.
* :func:`warn_no_weights`: running on filler values, saying when the output is
  meaningless (convolutions without a ``weight_filler`` are all zero).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import presets as _presets
from .. import prototxt as _pt
from ..errors import CaffeCompatError, NetError, PrototxtError, WeightsError
from . import parse_defines

log = logging.getLogger("caffe_compat.cli")

#: top-level fields of a SolverParameter that a NetParameter does not have
_SOLVER_FIELDS = ("train_net", "test_net", "net", "train_net_param", "net_param", "test_net_param", "base_lr",
                  "lr_policy", "max_iter", "solver_mode", "snapshot_prefix", "test_iter", "iter_size",
                  "solver_type", "momentum")
_SOLVER_RE = re.compile(r"^[ \t]*(%s)[ \t]*[:{]" % "|".join(_SOLVER_FIELDS), re.M)
_LAYER_RE = re.compile(r"^[ \t]*layers?[ \t]*\{", re.M)
_NET_REF_RE = re.compile(r"^[ \t]*(train_net|test_net|net)[ \t]*:[ \t]*\"([^\"]*)\"", re.M)


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def read_net_text(path) -> Optional[str]:
    """The text of a prototxt, or ``None`` for a checkpoint / unreadable file (the loader reports those)."""
    from ..checkpoint import is_checkpoint_file

    if path is None or str(path) == "-" or not Path(path).is_file() or is_checkpoint_file(path):
        return None
    try:
        return _pt.read_text(path)[0]
    except PrototxtError:
        return None


def is_solver_text(text: str) -> bool:
    body = _strip_comments(text)
    return bool(_SOLVER_RE.search(body)) and not _LAYER_RE.search(body)


def solver_net_refs(text: str, source: str, defines: Dict[str, str]) -> List[Tuple[str, str, Optional[str]]]:
    """``(field, named path, existing file beside the solver or None)`` for each net a solver names.

    Templates in the paths are filled from ``defines`` where given (left as
    ``${NAME}`` otherwise).
    """
    out = []
    here = Path(source).parent
    for m in _NET_REF_RE.finditer(_strip_comments(text)):
        named = _pt._TEMPLATE.sub(lambda t: str(defines.get(t.group(1), t.group(0))), m.group(2))
        found = None
        for cand in (Path(named), here / named, here / Path(named).name):
            if "${" not in str(cand) and cand.is_file():
                found = str(cand)
                break
        out.append((m.group(1), named, found))
    return out


def solver_message(text: str, source: str, defines: Dict[str, str]) -> str:
    """What to tell a user who gave a solver file where a net was expected."""
    refs = solver_net_refs(text, source, defines)
    lines = [f"{source} is a solver file (SolverParameter: learning rate, iterations, snapshots), not a net."]
    if refs:
        lines.append("It names these nets:")
        for fld, named, found in refs:
            lines.append(f"  {fld}: {named}" + (f"  (found: {found})" if found else "  (not found from here)"))
        train = next((r for r in refs if r[0] in ("train_net", "net")), None)
        if train is not None:
            target = train[2] or train[1]
            lines.append(f"Give the net file instead, e.g. `caffe-compat info {target} --phase TRAIN`.")
    else:
        lines.append("It names no net file (train_net / net); give a net prototxt instead.")
    return "\n".join(lines)


def check_net_file(path, text: Optional[str], defines: Dict[str, str]) -> None:
    """Raise a clear error when ``path`` is a solver file rather than a net."""
    if text is not None and is_solver_text(text):
        raise PrototxtError(solver_message(text, str(path), defines))


def resolve_defines(args, path) -> Dict[str, str]:
    """``--preset`` values overridden by ``--define``; warns about defines ``path`` does not use."""
    defines = parse_defines(getattr(args, "define", None))
    preset = getattr(args, "preset", None)
    text = read_net_text(path)
    if preset:
        if text is None:
            raise CaffeCompatError(f"--preset {preset}: {path} is not a prototxt template (presets fill the "
                                   f"${{NAME}} variables of the original train/test/solver files)")
        values = _presets.preset_values(text, preset, str(path))
        values.update(defines)
        defines = values
    if defines:
        explicit = parse_defines(getattr(args, "define", None))
        if text is None:
            log.warning("--define %s: %s is not a prototxt, so the value(s) are not used",
                        ", ".join(explicit), path)
        else:
            for name, close in _presets.unused_defines(text, explicit).items():
                hint = f" (did you mean {close}?)" if close else ""
                used = _presets.template_variables(text)
                log.warning("--define %s: %s has no ${%s} variable, the value is not used%s; its variables: %s",
                            name, path, name, hint, ", ".join(used) or "none")
    return defines


def _train_only_producer(net_param, blob: str) -> Optional[str]:
    """Name of a layer producing ``blob`` that only the TRAIN phase includes."""
    for lp in net_param.layer:
        if blob in lp.top and _pt.layer_included(lp, "TRAIN") and not _pt.layer_included(lp, "TEST"):
            return lp.name
    return None


def build_net(path, *, phase: Optional[str], defines: Dict[str, str], **kwargs):
    """``Net(path, ...)`` with the solver check and a ``--phase TRAIN`` hint."""
    from ..net import Net

    text = read_net_text(path)
    check_net_file(path, text, defines)
    phase = (phase or "TEST").upper()
    try:
        return Net(path, phase=phase, defines=defines, **kwargs)
    except NetError as e:
        m = re.search(r"bottom '([^']+)' is not produced", str(e))
        if phase != "TEST" or m is None or text is None:
            raise
        try:
            producer = _train_only_producer(_pt.parse_net(text, str(path), defines), m.group(1))
        except CaffeCompatError:
            producer = None
        if producer is None:
            raise
        raise NetError(f"{e}\nhint: '{m.group(1)}' comes from layer '{producer}', which only the TRAIN phase "
                       f"includes: this looks like a train net; add --phase TRAIN") from None


def open_cli_net(net_path, weights=None, *, phase: Optional[str] = None, defines: Dict[str, str],
                 device="cpu", dtype=None, lenient: bool = False):
    """The net a command line names (prototxt [+ weights], or a checkpoint alone)."""
    import torch

    from ..checkpoint import is_checkpoint_file
    from ..net import Net

    if weights is None and is_checkpoint_file(net_path):
        return Net.from_checkpoint(net_path, device=device, dtype=dtype, phase=phase)
    if weights is not None and is_checkpoint_file(net_path):
        raise CaffeCompatError(f"{net_path} is a checkpoint, which holds its own weights; "
                               f"give either a checkpoint alone or a prototxt and its weights")
    net = build_net(net_path, phase=phase, defines=defines, device=device, dtype=dtype or torch.float32)
    if weights is None:
        warn_no_weights(net, net_path)
    else:
        load_weights(net, weights, net_path, lenient=lenient)
    return net


# ----------------------------------------------------------------------------- weights
def _cut(items: List[str], limit: int, sep: str = ", ") -> str:
    shown = items[:limit]
    more = len(items) - len(shown)
    return sep.join(shown) + (f"{sep}... and {more} more" if more else "")


def weights_report_text(report, weights, net, limit: int = 8) -> Tuple[str, bool]:
    """``(readable report, seems to belong to another net)`` of a :class:`~caffe_compat.weights.LoadReport`."""
    n_param_layers = sum(1 for l in net.layers if len(l.blobs))
    n_loaded = len(report.loaded)
    mism_layers = sorted({re.sub(r"^layer '([^']+)'.*$", r"\1", m) for m in report.mismatched})
    lines = [f"{weights} does not fit net '{net.name}' ({net.source}):",
             f"  {n_loaded} of {n_param_layers} layers with parameters loaded, {len(mism_layers)} mismatched, "
             f"{len(report.missing)} missing from the file, {len(report.unexpected)} in the file only"]
    if report.mismatched:
        lines.append("  mismatched:")
        lines += [f"    {m}" for m in report.mismatched[:limit]]
        if len(report.mismatched) > limit:
            lines.append(f"    ... and {len(report.mismatched) - limit} more (-v lists all)")
    if report.missing:
        lines.append(f"  missing from the file (would keep their filler values): {_cut(report.missing, limit)}")
    if report.unexpected:
        lines.append(f"  in the file but not in the net: {_cut(report.unexpected, limit)}")
    other = n_param_layers > 0 and n_loaded * 2 < n_param_layers and (report.unexpected or report.mismatched)
    if other:
        lines.append(f"The file seems to belong to another net: only {n_loaded} of this net's {n_param_layers} "
                     f"layers with parameters fit it.")
    return "\n".join(lines), bool(other)


def load_weights(net, weights, net_path, *, lenient: bool = False, strict_mismatch: bool = False):
    """Load ``weights`` into ``net``; any misfit is an error (or, with ``lenient``, a warning).

    ``strict_mismatch``: shape mismatches stay errors even with ``lenient``.
    Returns the load report (``None`` for a checkpoint).
    """
    from ..checkpoint import is_checkpoint_file, load_checkpoint_into
    from ..weights import load_into_net

    if not Path(weights).is_file():
        raise WeightsError(f"{weights}: no such weights file")
    if is_checkpoint_file(weights):
        try:
            load_checkpoint_into(net, weights, strict=not lenient)
        except WeightsError as e:
            raise WeightsError(f"{e}\nhint: --lenient keeps filler values for tensors the checkpoint "
                               f"lacks") from None
        return None
    report = load_into_net(net, weights, strict=False)
    if report.ok:
        return report
    text, _ = weights_report_text(report, weights, net)
    log.debug("full weights report for %s:\n%s", weights, report.describe(limit=None))
    if lenient and not (strict_mismatch and report.mismatched):
        log.warning("%s\nthose layers keep their filler values", text)
        return report
    if strict_mismatch:
        raise WeightsError(f"{text}\nlayers whose blob shapes differ cannot be loaded (caffe test stops too): "
                           f"check that the weights belong to this prototxt and its --define values")
    raise WeightsError(f"{text}\nhint: --lenient loads the layers that fit and keeps filler values for the others\n"
                       f"(the results are then not the trained model's)")


def warn_no_weights(net, net_path) -> None:
    """Warn that the net runs on filler values; say so loudly where convolutions are left all zero."""
    zero = [name for name, typ, lp in zip(net.layer_names, net.layer_types, _layer_params(net))
            if typ in ("Convolution", "Deconvolution", "InnerProduct") and lp is not None
            and _filler_is_zero(lp)]
    n_conv = sum(t in ("Convolution", "Deconvolution", "InnerProduct") for t in net.layer_types)
    if zero:
        log.warning("%s: no weights given, and %d of %d convolution/inner-product layers have no weight_filler "
                    "(Caffe's default: constant 0), e.g. %s: their weights are all zero, so the outputs are "
                    "meaningless (all zero / all background). Give a caffemodel or checkpoint as WEIGHTS.",
                    net_path, len(zero), n_conv, _cut(zero, 3))
    else:
        log.warning("%s: no weights given: the net runs with its random/constant filler values "
                    "(outputs are not a trained model's)", net_path)


def _layer_params(net):
    by_name = {}
    for lp in net.net_param.layer:
        by_name.setdefault(lp.name, lp)
    return [by_name.get(n) for n in net.layer_names]


def _filler_is_zero(lp) -> bool:
    """Whether a conv/IP layer's weights are filled with zeros (no filler, or constant 0)."""
    p = lp.inner_product_param if lp.type == "InnerProduct" else lp.convolution_param
    if not p.HasField("weight_filler"):
        return True
    f = p.weight_filler
    return (f.type or "constant") == "constant" and f.value == 0
