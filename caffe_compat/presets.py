"""The ``${NAME}`` template variables of the original train/test/solver files, and their original values.

The original ``embs``/``vgg``/``res`` ``train.prototxt``, ``test.prototxt`` and
``solver.prototxt`` are templates that the authors' shell scripts filled with
``sed``.  The values below were read off the instantiated files shipped next
to them (``test_voc_val.prototxt``, ``train_voc_trainval_aug.prototxt``, ...):
each preset is what turns the template into that file.  Path variables
(``DATA_ROOT``, ``EXP``, ``FEATURE_DIR``) hold the authors' paths and are
meant to be overridden (``--preset voc_val -D DATA_ROOT=$VOC``).

A template is recognised by the set of variables it uses (each of the nine
templates uses a different set), so a renamed copy is recognised too.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Mapping, Optional

from . import prototxt as _pt
from .errors import TemplateError

#: what each variable does in the original files
VARIABLES: Dict[str, str] = {
    "NET_ID": "the net's name (name: field) and its folder under EXP/config, EXP/model and the features",
    "EXP": "experiment folder of the original scripts (holds list/<SET>.txt, config/, model/); relative to "
           "the folder caffe ran in",
    "DATA_ROOT": "dataset root prepended to every image/label path of the list (data layer root_folder)",
    "TEST_SET": "list name: the data layer reads EXP/list/<TEST_SET>.txt, MatWrite names files from "
                "EXP/list/<TEST_SET>_id.txt and writes under FEATURE_DIR/<TEST_SET>/fc8/",
    "TRAIN_SET": "list name of the training data (EXP/list/<TRAIN_SET>.txt); in a solver, part of the train "
                 "net's file name and of the snapshot prefix",
    "FEATURE_DIR": "folder the MatWrite layer writes the .mat features into (FEATURE_DIR/<TEST_SET>/fc8/)",
    "BATCH_SIZE": "images per batch of the data layer",
    "CROP_SIZE": "side of the square the data layer pads/crops every image to; also the size of the Interp "
                 "and Tile layers that must match it",
    "HALF_SIZE": "side of the half-resolution maps of the res CRF (DummyData xy): (crop size + 1) / 2",
    "MASK_SIZE": "kernel size of the segmentation-aware masks (Im2dist / Im2parity / DistLoss windows)",
    "MASK_PAD": "padding of those windows",
    "MASK_DILATION": "dilation of those windows",
    "MASK2_SIZE": "kernel size of the second-scale windows", "MASK2_PAD": "padding of the second-scale windows",
    "MASK2_DILATION": "dilation of the second-scale windows",
    "MASK3_SIZE": "kernel size of the third-scale windows", "MASK3_PAD": "padding of the third-scale windows",
    "MASK3_DILATION": "dilation of the third-scale windows",
    "DATASET": "suffix of the classifier layer's name (fc8_<DATASET>): must match the layer name in the "
               "caffemodel",
    "NUM_LABELS": "number of classes of the classifier (num_output of fc8_<DATASET>)",
    "EMBS_LR1": "lr_mult of the embedding convolutions' weights", "EMBS_LR2": "lr_mult of their biases",
    "EMBS_LR3": "lr_mult of the res CRF's half-size embedding convolution",
    "MAINSCALE_LR1": "lr_mult of the segmentation-aware VGG convolutions' weights",
    "MAINSCALE_LR2": "lr_mult of their biases",
    "MAIN_LR1": "lr_mult of the ResNet trunk (all three scales)",
    "FINAL_LR1": "lr_mult of the ASPP classifier weights (fc1_voc12_c*)", "FINAL_LR2": "lr_mult of their biases",
    "CRF_LR1": "lr_mult of the CRF's feature scales (scaled_xy, scaled_rgb, scaled_emb)",
    "CRF_LR2": "lr_mult of the NormConvMeanfield layer's weights",
    "LEARNING_RATE": "solver base_lr",
    "ITERS": "solver max_iter", "SNAP": "solver snapshot interval (iterations)",
    "STEP": "solver stepsize (iterations between learning-rate drops)",
    "ITER_SIZE": "solver iter_size (batches accumulated per update)",
    "SOLVER_MODE": "solver_mode: CPU or GPU (ignored here: --device chooses)",
}


@dataclass(frozen=True)
class Template:
    """One original template file: its name and the presets that instantiate it."""

    name: str                                  #: e.g. "res/test"
    presets: Dict[str, Dict[str, str]]         #: preset name -> every variable's value
    notes: Dict[str, str] = field(default_factory=dict)  #: preset name -> caveat

    @property
    def variables(self) -> FrozenSet[str]:
        return frozenset(next(iter(self.presets.values())))


def _voc_test(preset: Dict[str, str], net_id: str) -> Dict[str, str]:
    out = dict(preset, TEST_SET="voc_test", NET_ID=net_id)
    out["FEATURE_DIR"] = f"segaware/features/{net_id}"
    return out


_VOC = "/opt/home/aharley/datasets/VOC2012"
_EMBS_TEST = {"NET_ID": "embs_31_L1_coco", "EXP": "segaware", "DATA_ROOT": _VOC, "TEST_SET": "voc_val",
              "FEATURE_DIR": "segaware/features/embs_31_L1_coco", "BATCH_SIZE": "1", "CROP_SIZE": "513",
              "MASK_SIZE": "5", "MASK_PAD": "6", "MASK_DILATION": "3"}
_EMBS_TRAIN = {"NET_ID": "logpolar_embs_coco", "EXP": "segaware", "DATA_ROOT": "/opt/home/aharley/datasets/MSCOCO",
               "TRAIN_SET": "coco_trainval", "BATCH_SIZE": "20", "CROP_SIZE": "161",
               "MASK_SIZE": "3", "MASK_PAD": "1", "MASK_DILATION": "1",
               "MASK2_SIZE": "3", "MASK2_PAD": "1", "MASK2_DILATION": "2",
               "MASK3_SIZE": "3", "MASK3_PAD": "1", "MASK3_DILATION": "5"}
_EMBS_SOLVER = {"NET_ID": "logpolar_embs_coco", "EXP": "segaware", "TRAIN_SET": "coco_trainval",
                "LEARNING_RATE": "0.001"}
_VGG_TEST = {"NET_ID": "segaware-all-largeFOV", "EXP": "segaware", "DATA_ROOT": _VOC, "TEST_SET": "voc_val",
             "FEATURE_DIR": "segaware/features/segaware-all-largeFOV", "BATCH_SIZE": "1", "CROP_SIZE": "513",
             "DATASET": "voc12", "NUM_LABELS": "21", "EMBS_LR1": "1", "EMBS_LR2": "2",
             "MAINSCALE_LR1": "1", "MAINSCALE_LR2": "2"}
_VGG_TRAIN = dict({k: v for k, v in _VGG_TEST.items() if k not in ("TEST_SET", "FEATURE_DIR")},
                  TRAIN_SET="voc_train_aug", CROP_SIZE="321")
_VGG_SOLVER = {"NET_ID": "segaware-all-largeFOV", "EXP": "segaware", "TRAIN_SET": "voc_train_aug",
               "LEARNING_RATE": "0.0001", "ITERS": "360000", "SNAP": "60000", "STEP": "120000",
               "SOLVER_MODE": "GPU"}
_RES_TEST = {"NET_ID": "supergiven_17", "EXP": "segaware", "DATA_ROOT": "/home/aharley/datasets/VOC2012",
             "TEST_SET": "voc_val", "FEATURE_DIR": "segaware/features/supergiven_17", "BATCH_SIZE": "1",
             "HALF_SIZE": "257", "MAIN_LR1": "1", "EMBS_LR3": "2", "CRF_LR1": "0", "CRF_LR2": "0"}
_RES_TRAIN = {"NET_ID": "supergiven_9", "EXP": "segaware", "DATA_ROOT": "/zfsauton/home/aharley/datasets/VOC2012",
              "TRAIN_SET": "voc_trainval_aug", "BATCH_SIZE": "1", "CROP_SIZE": "321", "HALF_SIZE": "161",
              "EMBS_LR1": "1", "EMBS_LR2": "2", "MAIN_LR1": "0", "FINAL_LR1": "0", "FINAL_LR2": "0",
              "CRF_LR1": "1", "CRF_LR2": "1"}
_RES_SOLVER = {"NET_ID": "supergiven_9", "EXP": "segaware", "TRAIN_SET": "voc_trainval_aug",
               "LEARNING_RATE": "2.5e-4", "ITER_SIZE": "10", "ITERS": "5000", "SNAP": "5000"}

#: the nine original templates (file ``<net>/<kind>.prototxt``)
TEMPLATES: List[Template] = [
    Template("embs/test", {"voc_val": _EMBS_TEST}),
    Template("embs/train", {"coco_trainval": _EMBS_TRAIN}),
    Template("embs/solver", {"coco_trainval": _EMBS_SOLVER}),
    Template("vgg/test", {"voc_val": _VGG_TEST, "voc_test": _voc_test(_VGG_TEST, "segaware-all-largeFOV")},
             {"voc_test": "the shipped test_voc_test.prototxt also swaps the TwoImageData layer for an "
                          "ImageData layer (test images have no label): the template keeps TwoImageData"}),
    Template("vgg/train", {"voc_train_aug": _VGG_TRAIN}),
    Template("vgg/solver", {"voc_train_aug": _VGG_SOLVER}),
    Template("res/test", {"voc_val": _RES_TEST, "voc_test": _voc_test(_RES_TEST, "res")}),
    Template("res/train", {"voc_trainval_aug": _RES_TRAIN}),
    Template("res/solver", {"voc_trainval_aug": _RES_SOLVER}),
]


def template_variables(text: str) -> List[str]:
    """The ``${NAME}`` variables a text uses outside ``#`` comments, in order of first use."""
    out: List[str] = []
    for m in _pt._TEMPLATE.finditer(text):
        if m.group(1) not in out and not _pt._in_comment(text, m.start()):
            out.append(m.group(1))
    return out


def identify(text: str) -> Optional[Template]:
    """The original template this text is (same set of variables), or ``None``."""
    names = frozenset(template_variables(text))
    if not names:
        return None
    return next((t for t in TEMPLATES if t.variables == names), None)


def preset_names() -> List[str]:
    return sorted({p for t in TEMPLATES for p in t.presets})


def preset_values(text: str, preset: str, source: str = "<string>") -> Dict[str, str]:
    """The values of preset ``preset`` for this template text, with clear errors."""
    tpl = identify(text)
    if tpl is None:
        used = template_variables(text)
        raise TemplateError(
            f"{source}: --preset {preset}: this file is not one of the original templates "
            f"({', '.join(t.name for t in TEMPLATES)}); "
            + (f"it uses {', '.join(used)}" if used else "it has no ${NAME} variables"))
    if preset not in tpl.presets:
        raise TemplateError(f"{source} is the original {tpl.name} template; its presets are "
                            f"{', '.join(sorted(tpl.presets))}, not {preset!r}")
    return dict(tpl.presets[preset])


def unused_defines(text: str, defines: Mapping[str, object]) -> Dict[str, Optional[str]]:
    """Defines the text does not use -> a close variable name it does use (or ``None``)."""
    used = template_variables(text)
    return {k: next(iter(difflib.get_close_matches(k, used, n=1, cutoff=0.8)), None)
            for k in defines if k not in used}


def describe_defines(text: str, source: str = "<string>") -> str:
    """A table: every variable of the text, what it does, and its value in each original preset."""
    used = template_variables(text)
    if not used:
        return f"{source} has no ${{NAME}} template variables"
    tpl = identify(text)
    presets = sorted(tpl.presets) if tpl else []
    head = (f"{source}: the original {tpl.name} template; presets: {', '.join(presets)} (--preset NAME)"
            if tpl else f"{source}: not one of the original templates (no presets)")
    rows = [("variable", *presets, "what it does")]
    for name in used:
        rows.append((name, *(tpl.presets[p].get(name, "") for p in presets),
                     VARIABLES.get(name, "(not a variable of the original files)")))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    lines = [head]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r[:-1], widths)) + "  " + r[-1])
    for p, note in (tpl.notes.items() if tpl else ()):
        lines.append(f"note ({p}): {note}")
    return "\n".join(lines)
