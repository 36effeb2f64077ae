#!/usr/bin/env python
"""Write the prototxts of ``configs/scenes/`` (nets and solvers for the generated scenes).

The nets are written in the original fork's layer vocabulary and in the style of its
``embs``, ``vgg`` and ``res`` configs, so that they read like the paper's nets in small:

* ``embs_*``: the embedding net (``embs/train.prototxt``'s recipe: a small conv net, Concat of
  the RGB and two scales, a 1x1 conv to the embedding ``emb``; three Im2parity + Im2dist L1 +
  DistLoss triples over 3x3 windows of dilation 1, 2, 5);
* ``plain_*``: a small segmentation net (conv1_1, conv1_2, pool1, conv2_1, conv2_2 dilation 2,
  fc6 dilation 4, fc7, fc8_scenes; loss at half resolution against ``label_shrink`` as
  ``vgg/train.prototxt``);
* ``segaware_*``: the same trunk with every 3x3 convolution made segmentation-aware as in
  ``vgg/train.prototxt`` (embedding branch named as there; per layer Im2dist -> Scale -> AbsVal
  -> Exp -> Tile, Im2col, Eltwise PROD, Convolution ``bottom_is_im2col``);
* ``segaware_crf_*``: ``segaware`` plus the NormConvMeanfield CRF of ``res/train.prototxt`` on the
  half-resolution scores (bilateral features: scaled embedding + scaled xy; spatial: scaled xy).

Each net comes as ``_train`` (TRAIN data layer, losses), ``_test`` (TEST data layer over a list,
MatWrite of the full-resolution logits / embeddings, as ``caffe-compat test`` runs them) and
``_deploy`` (an ``Input`` blob ``data``, as the original ``deploy.prototxt`` files); solvers
``*_solver.prototxt``.  The layer names are the same in all variants wherever the layer is the
same, so weights move between them by name (``Net.load_weights(..., strict=False)``).

Run from the repository root after changing this file (``tests/test_scene_configs.py`` checks
that the committed files are what this script writes)::

    python tools/make_scene_configs.py
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "configs" / "scenes"

NUM_LABELS = 6        #: classes of caffe_compat.datasets.scenes
EMB_DIM = 16          #: embedding channels
MEAN = ("104.008", "116.669", "122.675")

#: the trunk: (name, bottom, channels in, channels out, kernel, pad, dilation, resolution level)
#: level 1 = full resolution, 2 = after pool1; the embedding used for a layer's masks is at its level
TRUNK: List[Tuple[str, str, int, int, int, int, int, int]] = [
    ("conv1_1", "data", 3, 16, 3, 1, 1, 1),
    ("conv1_2", "conv1_1", 16, 16, 3, 1, 1, 1),
    ("conv2_1", "pool1", 16, 32, 3, 1, 1, 2),
    ("conv2_2", "conv2_1", 32, 32, 3, 2, 2, 2),
    ("fc6", "conv2_2", 32, 64, 3, 4, 4, 2),
]

#: initial mask scale lambda of the segmentation-aware convolutions (mask = exp(-lambda * L1 distance));
#: the DistLoss margins (0.5 / 2) make same-segment distances < 0.5 and others > 2
MASK_SCALE = 1.0

HEADER_VARS = {
    "DATA_ROOT": "the data set folder (tools/make_scenes.py --out)",
    "TRAIN_SET": "list name: ${DATA_ROOT}/list/${TRAIN_SET}.txt (e.g. train)",
    "TEST_SET": "list name: ${DATA_ROOT}/list/${TEST_SET}.txt and ${TEST_SET}_id.txt (e.g. val)",
    "BATCH_SIZE": "images per batch (e.g. 8)",
    "CROP_SIZE": "crop side, odd (train: e.g. 65 random crops of the 81 x 81 scenes; test/deploy: 81)",
    "HALF_SIZE": "(CROP_SIZE + 1) / 2, the side of the half-resolution maps",
    "FEATURE_DIR": "folder of the .mat files (<FEATURE_DIR>/<id>_blob_0.mat; caffe-compat test --out creates it)",
    "EMBS_LR1": "lr_mult of the embedding weights (0: keep the trained embs weights; 1: fine-tune)",
    "EMBS_LR2": "lr_mult of the embedding biases (0 or 2)",
    "CRF_LR1": "lr_mult of the CRF feature scales (scaled_emb, scaled_xy, scaled_xy2)",
    "CRF_LR2": "lr_mult of the CRF matrices W_G, W_B, compatibility",
    "OUT_DIR": "folder of the snapshots (must exist)",
}


def _header(title: str, used: List[str]) -> str:
    lines = [f"# {line}" if line else "#" for line in title.strip().splitlines()]
    lines += ["#", "# Written by tools/make_scene_configs.py (edit that, not this file).",
              "# Template variables (caffe-compat --define NAME=VALUE, Solver defines):"]
    lines += [f"#   ${{{v}}}  {HEADER_VARS[v]}" for v in used]
    return "\n".join(lines) + "\n"


def _used_vars(body: str) -> List[str]:
    return [v for v in HEADER_VARS if "${" + v + "}" in body]


# --------------------------------------------------------------------------------- layer blocks

def _transform(crop: str, mirror: bool) -> str:
    means = " ".join(f"mean_value: {m}" for m in MEAN)
    return f"  transform_param {{ {means} crop_size: {crop} mirror: {'true' if mirror else 'false'} }}\n"


def two_image_data(train: bool) -> str:
    split = "${TRAIN_SET}" if train else "${TEST_SET}"
    batch = "${BATCH_SIZE}" if train else "1"
    return ("layer {\n  name: \"data\" type: \"TwoImageData\" top: \"data\" top: \"label\"\n"
            f"  image_data_param {{ root_folder: \"${{DATA_ROOT}}\" source: \"${{DATA_ROOT}}/list/{split}.txt\" "
            f"batch_size: {batch} shuffle: {'true' if train else 'false'} }}\n"
            "  two_image_data_param { first_is_color: true second_is_color: false }\n"
            + _transform("${CROP_SIZE}", train)
            + f"  include: {{ phase: {'TRAIN' if train else 'TEST'} }}\n}}\n")


def image_seg_data(train: bool) -> str:
    split = "${TRAIN_SET}" if train else "${TEST_SET}"
    batch = "${BATCH_SIZE}" if train else "1"
    return ("layer {\n  name: \"data\" type: \"ImageSegData\" top: \"data\" top: \"label\" top: \"data_dim\"\n"
            f"  image_data_param {{ root_folder: \"${{DATA_ROOT}}\" source: \"${{DATA_ROOT}}/list/{split}.txt\" "
            f"batch_size: {batch} shuffle: {'true' if train else 'false'} label_type: PIXEL ignore_label: 255 }}\n"
            + _transform("${CROP_SIZE}", train)
            + f"  include: {{ phase: {'TRAIN' if train else 'TEST'} }}\n}}\n")


def input_data() -> str:
    return ("layer {\n  name: \"data\" type: \"Input\" top: \"data\"\n"
            "  input_param { shape { dim: 1 dim: 3 dim: ${CROP_SIZE} dim: ${CROP_SIZE} } }\n}\n")


def conv(name: str, bottom: str, nout: int, k: int, pad: int, dil: int, lr: Tuple[str, str] = ("1", "2"),
         filler: str = 'weight_filler { type: "xavier" } bias_filler { type: "constant" }', top: str = "") -> str:
    geo = f"kernel_size: {k} pad: {pad}" + (f" dilation: {dil}" if dil != 1 else "")
    return (f"layer {{\n  bottom: \"{bottom}\" top: \"{top or name}\" name: \"{name}\" type: \"Convolution\"\n"
            f"  param {{ lr_mult: {lr[0]} decay_mult: 1 }} param {{ lr_mult: {lr[1]} decay_mult: 0 }}\n"
            f"  convolution_param {{ num_output: {nout} {geo} {filler} }}\n}}\n")


def relu(name: str, blob: str) -> str:
    return f"layer {{ bottom: \"{blob}\" top: \"{blob}\" name: \"{name}\" type: \"ReLU\" }}\n"


def pool(name: str, bottom: str) -> str:
    return (f"layer {{ bottom: \"{bottom}\" top: \"{name}\" name: \"{name}\" type: \"Pooling\" "
            "pooling_param { pool: MAX kernel_size: 3 pad: 1 stride: 2 } }\n")


def interp(name: str, bottom: str, param: str) -> str:
    return f"layer {{ bottom: \"{bottom}\" top: \"{name}\" name: \"{name}\" type: \"Interp\" interp_param {{ {param} }} }}\n"


def embedding_branch(lr: Tuple[str, str]) -> str:
    """``data`` -> ``emb`` (N, EMB_DIM, CROP, CROP); names as vgg/train.prototxt's embedding branch."""
    s = "# ---- embeddings (rgb, two scales, 1x1 fusion)\n"
    s += 'layer { bottom: "data" name: "rgb_emb" top: "rgb_emb" type: "Power" power_param { scale: 0.0039215 } }\n'
    s += conv("emb1_1", "data", 16, 3, 1, 1, lr) + relu("emb_relu1_1", "emb1_1")
    s += conv("emb1_2", "emb1_1", 16, 3, 1, 1, lr) + relu("emb_relu1_2", "emb1_2")
    s += pool("emb_pool1", "emb1_2")
    s += conv("emb2_1", "emb_pool1", 32, 3, 1, 1, lr) + relu("emb_relu2_1", "emb2_1")
    s += conv("emb2_2", "emb2_1", 32, 3, 2, 2, lr) + relu("emb_relu2_2", "emb2_2")
    s += interp("emb22_resized", "emb2_2", "height: ${CROP_SIZE} width: ${CROP_SIZE}")
    s += 'layer { bottom: "rgb_emb" bottom: "emb1_2" bottom: "emb22_resized" top: "fused" name: "fused" type: "Concat" }\n'
    s += conv("emb", "fused", EMB_DIM, 1, 0, 1, lr)
    return s


def dist_loss(suffix: str, dil: int) -> str:
    geo = f"convolution_param {{ kernel_size: 3 pad: {dil} dilation: {dil} stride: 1 }}"
    return (f"layer {{ bottom: \"label\" top: \"parity{suffix}\" name: \"parity{suffix}\" type: \"Im2parity\" {geo} }}\n"
            f"layer {{ bottom: \"emb\" top: \"emb_dist{suffix}\" name: \"emb_dist{suffix}\" type: \"Im2dist\" {geo} "
            "im2dist_param { norm: L1 } }\n"
            f"layer {{\n  bottom: \"emb_dist{suffix}\" bottom: \"parity{suffix}\" top: \"loss_emb{suffix}\" "
            f"name: \"loss_emb{suffix}\" type: \"DistLoss\"\n  {geo}\n"
            "  dist_loss_param { alpha: 0.5 beta: 2 ignore_label: 255 }\n}\n")


def mat_write(bottom: str) -> str:
    return (f"layer {{\n  name: \"{bottom}_mat\" type: \"MatWrite\" bottom: \"{bottom}\"\n"
            "  mat_write_param { prefix: \"${FEATURE_DIR}/\" source: \"${DATA_ROOT}/list/${TEST_SET}_id.txt\" "
            "strip: 0 period: 1 }\n}\n")


# --------------------------------------------------------------------------------- trunks

def _mask_blob(level: int, k: int, pad: int, dil: int) -> str:
    return f"emb_dist_l{level}_d{dil}"


def masks_for_trunk() -> str:
    """The Im2dist of the embedding at each (resolution, dilation) the trunk's 3x3 convs use."""
    s = "# ---- embedding distances at each layer's resolution and dilation\n"
    s += interp("emb_shrink2", "emb", "shrink_factor: 2 pad_beg: 0 pad_end: 0")
    done = set()
    for _name, _bottom, _cin, _cout, k, pad, dil, level in TRUNK:
        blob = _mask_blob(level, k, pad, dil)
        if blob in done:
            continue
        done.add(blob)
        src = "emb" if level == 1 else "emb_shrink2"
        geo = f"kernel_size: {k} pad: {pad}" + (f" dilation: {dil}" if dil != 1 else "")
        s += (f"layer {{ bottom: \"{src}\" top: \"{blob}\" name: \"{blob}\" type: \"Im2dist\" "
              f"convolution_param {{ {geo} stride: 1 }} im2dist_param {{ norm: L1 }} }}\n")
    return s


def segaware_conv(name: str, bottom: str, cin: int, cout: int, k: int, pad: int, dil: int, level: int) -> str:
    """vgg/train.prototxt's segmentation-aware convolution: mask exp(-|lambda| d) on the im2col patches."""
    dist = _mask_blob(level, k, pad, dil)
    geo = f"kernel_size: {k} pad: {pad}" + (f" dilation: {dil}" if dil != 1 else "")
    return (f"###### segmentation-aware {name}\n"
            f"layer {{\n  bottom: \"{dist}\" top: \"weighted_{name}_dist\" name: \"weighted_{name}_dist\" type: \"Scale\"\n"
            "  param { lr_mult: 1 decay_mult: 1 }\n"
            f"  scale_param {{ num_axes: 0 filler {{ type: \"constant\" value: {MASK_SCALE:g} }} bias_term: false }}\n}}\n"
            f"layer {{ bottom: \"weighted_{name}_dist\" top: \"abs_{name}_dist\" name: \"abs_{name}_dist\" type: \"AbsVal\" }}\n"
            f"layer {{ bottom: \"abs_{name}_dist\" top: \"exp_{name}_dist\" name: \"exp_{name}_dist\" type: \"Exp\" exp_param {{ scale: -1 }} }}\n"
            f"layer {{ bottom: \"exp_{name}_dist\" top: \"{name}_mask\" name: \"{name}_mask\" type: \"Tile\" tile_param {{ axis: 1 tiles: {cin} }} }}\n"
            f"layer {{ bottom: \"{bottom}\" top: \"im2col_{name}\" name: \"im2col_{name}\" type: \"Im2col\" convolution_param {{ {geo} }} }}\n"
            f"layer {{ bottom: \"im2col_{name}\" bottom: \"{name}_mask\" top: \"im2col_{name}_hit\" name: \"im2col_{name}_hit\" "
            "type: \"Eltwise\" eltwise_param { operation: PROD } }\n"
            f"layer {{\n  bottom: \"im2col_{name}_hit\" top: \"{name}\" name: \"{name}\" type: \"Convolution\"\n"
            "  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }\n"
            f"  convolution_param {{ num_output: {cout} {geo} bottom_is_im2col: true "
            "weight_filler { type: \"xavier\" } bias_filler { type: \"constant\" } }\n}\n")


def trunk(segaware: bool) -> str:
    s = "# ---- the segmentation trunk" + (" (segmentation-aware 3x3 convolutions)\n" if segaware else "\n")
    for name, bottom, cin, cout, k, pad, dil, level in TRUNK:
        if segaware:
            s += segaware_conv(name, bottom, cin, cout, k, pad, dil, level)
        else:
            s += conv(name, bottom, cout, k, pad, dil)
        s += relu("relu" + name[len("conv"):] if name.startswith("conv") else "relu" + name[2:], name)
        if name == "conv1_2":
            s += pool("pool1", "conv1_2")
    s += conv("fc7", "fc6", 64, 1, 0, 1) + relu("relu7", "fc7")
    s += conv("fc8_scenes", "fc7", NUM_LABELS, 1, 0, 1, ("10", "20"),
              'weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 }')
    return s


def crf(train: bool) -> str:
    """res/train.prototxt's NormConvMeanfield on the half-resolution scores ``fc8_scenes``."""
    batch = "${BATCH_SIZE}" if train else "1"
    return ("########### normconv crf (half resolution) ###########\n"
            "layer {\n  type: \"DummyData\" name: \"xy_one\" top: \"xy_one\"\n"
            "  dummy_data_param { shape { dim: 1 dim: 2 dim: ${HALF_SIZE} dim: ${HALF_SIZE} } data_filler { type: \"xy\" } }\n}\n"
            "# one xy map per image (the fork's xy filler is right only for image 0 of a batch, LAYERS.md 4)\n"
            f"layer {{ bottom: \"xy_one\" top: \"xy\" name: \"xy\" type: \"Tile\" tile_param {{ axis: 0 tiles: {batch} }} }}\n"
            "layer { type: \"Split\" name: \"splitting\" bottom: \"fc8_scenes\" top: \"unary\" top: \"Q0\" }\n"
            "layer {\n  bottom: \"xy\" top: \"scaled_xy\" name: \"scaled_xy\" type: \"Scale\"\n"
            "  param { lr_mult: ${CRF_LR1} decay_mult: 1 }\n"
            "  scale_param { num_axes: 0 filler { type: \"constant\" value: 0.1 } bias_term: false }\n}\n"
            "layer {\n  bottom: \"emb_shrink2\" top: \"scaled_emb\" name: \"scaled_emb\" type: \"Scale\"\n"
            "  param { lr_mult: ${CRF_LR1} decay_mult: 1 }\n"
            "  scale_param { num_axes: 0 filler { type: \"constant\" value: 3 } bias_term: false }\n}\n"
            "layer {\n  bottom: \"xy\" top: \"scaled_xy2\" name: \"scaled_xy2\" type: \"Scale\"\n"
            "  param { lr_mult: ${CRF_LR1} decay_mult: 1 }\n"
            "  scale_param { num_axes: 0 filler { type: \"constant\" value: 0.3 } bias_term: false }\n}\n"
            "layer { type: \"Concat\" name: \"embxy\" top: \"embxy\" bottom: \"scaled_emb\" bottom: \"scaled_xy\" }\n"
            "layer {\n  name: \"crf\" type: \"NormConvMeanfield\"\n"
            "  bottom: \"unary\" bottom: \"Q0\" bottom: \"embxy\" bottom: \"scaled_xy2\" top: \"crf\"\n"
            "  param { lr_mult: ${CRF_LR2} } param { lr_mult: ${CRF_LR2} } param { lr_mult: ${CRF_LR2} }\n"
            "  norm_conv_meanfield_param {\n    num_iterations: 2\n"
            "    remove_center: true remove_bounds: true\n    remove_center: true remove_bounds: true\n"
            "    # entry 0: bilateral (embxy), 5x5 dilation 2; entry 1: spatial (scaled_xy2), 3x3; both keep the size\n"
            "    kernel_size: 5 pad: 4 dilation: 2 scale: 1.0000\n    kernel_size: 3 pad: 1 dilation: 1 scale: 1.0000\n  }\n}\n")


def seg_loss(score: str, name: str) -> str:
    return (f"layer {{\n  name: \"{name}\" type: \"SoftmaxWithLoss\" bottom: \"{score}\" bottom: \"label_shrink\" top: \"{name}\"\n"
            "  loss_param { ignore_label: 255 }\n}\n")


def seg_accuracy(score: str, name: str) -> str:
    return (f"layer {{ name: \"{name}\" type: \"SegAccuracy\" bottom: \"{score}\" bottom: \"label_shrink\" top: \"{name}\" "
            "seg_accuracy_param { ignore_label: 255 } }\n")


LABEL_SHRINK = interp("label_shrink", "label", "shrink_factor: 2 pad_beg: 0 pad_end: 0")


# --------------------------------------------------------------------------------- whole files

VARIANTS = {
    "plain": ("plain convolutions", False, False),
    "segaware": ("segmentation-aware convolutions (masks from the learned embeddings)", True, False),
    "segaware_crf": ("segmentation-aware convolutions + the NormConvMeanfield CRF", True, True),
}


def seg_net(variant: str, kind: str) -> str:
    """``kind``: train, test or deploy."""
    title, segaware, with_crf = VARIANTS[variant]
    body = {"train": image_seg_data(True), "test": image_seg_data(False), "deploy": input_data()}[kind]
    if segaware:
        body += embedding_branch(("${EMBS_LR1}", "${EMBS_LR2}")) + masks_for_trunk()
    body += trunk(segaware)
    if with_crf:
        body += crf(kind == "train")
    score = "crf" if with_crf else "fc8_scenes"
    if kind in ("train", "test"):
        body += LABEL_SHRINK
    if kind == "train":
        body += seg_loss(score, "loss")
        if with_crf:
            body += seg_loss("fc8_scenes", "loss_fc8")
    if kind in ("train", "test"):
        body += seg_accuracy(score, "accuracy")
    if kind in ("test", "deploy"):
        body += interp(f"{score}_interp", score, "zoom_factor: 2")
    if kind == "test":
        body += mat_write(f"{score}_interp")
        body += 'layer { name: "silence" type: "Silence" bottom: "data_dim" }\n'
    if kind == "train":
        body += 'layer { name: "silence" type: "Silence" bottom: "data_dim" }\n'
    what = {"train": "TRAIN net (random crops, mirror, losses at half resolution)",
            "test": "TEST net: logits at full resolution written as .mat per listed image (caffe-compat test)",
            "deploy": "deploy net: Input blob `data` (1 x 3 x CROP x CROP, BGR minus the mean)"}[kind]
    head = (f"Segmentation net for the generated scenes, {title}.\n{what}.\n"
            "Trunk: conv1_1, conv1_2 (16), pool1, conv2_1, conv2_2 (32, dilation 2), fc6 (64, dilation 4), fc7, "
            f"fc8_scenes ({NUM_LABELS} classes).")
    return _header(head, _used_vars(body)) + f"name: \"scenes_{variant}\"\n" + body


def embs_net(kind: str) -> str:
    body = {"train": two_image_data(True), "test": two_image_data(False), "deploy": input_data()}[kind]
    body += embedding_branch(("1", "2"))
    if kind == "train":
        body += "# ---- distance losses: narrow (dilation 1), wide (2), wider (5)\n"
        body += dist_loss("", 1) + dist_loss("2", 2) + dist_loss("3", 5)
    elif kind == "test":
        body += dist_loss("", 1) + mat_write("emb")
    what = {"train": "TRAIN net: three distance losses (alpha 0.5, beta 2) over 3x3 windows of dilation 1, 2, 5\n"
                     "(every window keeps the map's size, unlike the original scripts' MASK2/MASK3 pads, LAYERS.md 8.1)",
            "test": "TEST net: the narrow distance loss, and the embeddings written as .mat per listed image",
            "deploy": "deploy net: Input blob `data` -> embeddings `emb`"}[kind]
    head = (f"Embedding net for the generated scenes: the embs recipe in small.\n{what}.\n"
            "Layer names are those of vgg/train.prototxt's embedding branch, so the trained weights load\n"
            "into the segmentation-aware nets by name.")
    return _header(head, _used_vars(body)) + "name: \"scenes_embs\"\n" + body


#: max_iter of each solver: what tools/train_scenes.py runs in about an hour on 2 CPU cores
#: (docs/scenes.md); the CRF net is fine-tuned from the segaware snapshot.
MAX_ITER = {"embs": 2000, "plain": 3000, "segaware": 3000, "segaware_crf": 1000}


def solver(net: str) -> str:
    if net == "embs":
        rule = ('type: "Adam"\nbase_lr: 0.001\nlr_policy: "fixed"\n'
                "# set explicitly: the original embs solver leaves momentum unset, i.e. beta1 = 0\n"
                "momentum: 0.9\nmomentum2: 0.999\n")
        what = "Adam, as embs/solver.prototxt"
    else:
        # measured on the scenes (plain net, 600 iterations, val mIoU): Adam 1e-3 poly 26.3 %,
        # SGD poly 0.01 17.3 %, SGD 0.02 / 0.04 / 0.1 collapse to all-background (11.0 %)
        rule = ('type: "Adam"\nbase_lr: 0.001\nlr_policy: "poly"\npower: 0.9\nmomentum: 0.9\nmomentum2: 0.999\n'
                "weight_decay: 0.0005\n")
        what = "Adam with res/solver.prototxt's poly schedule"
    text = (f"# Solver of {net}_train.prototxt ({what}).\n"
            "# Written by tools/make_scene_configs.py.  train_net is found next to this file; the other\n"
            "# ${NAME}s are those of the net (see its header) plus ${OUT_DIR}.\n"
            f"train_net: \"{net}_train.prototxt\"\n{rule}"
            f"max_iter: {MAX_ITER[net]}\ndisplay: 20\naverage_loss: 20\nsnapshot: 1000\n"
            f"snapshot_prefix: \"${{OUT_DIR}}/{net}\"\nrandom_seed: 2017\nsolver_mode: CPU\n")
    return text


def all_files() -> Dict[str, str]:
    files = {f"embs_{k}.prototxt": embs_net(k) for k in ("train", "test", "deploy")}
    files["embs_solver.prototxt"] = solver("embs")
    for v in VARIANTS:
        for k in ("train", "test", "deploy"):
            files[f"{v}_{k}.prototxt"] = seg_net(v, k)
        files[f"{v}_solver.prototxt"] = solver(v)
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(OUT), help="folder (default: configs/scenes of the repository)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if str(REPO) not in sys.path:  # allow running from a checkout without installing
        sys.path.insert(0, str(REPO))
    from caffe_compat.atomic import atomic_write

    for name, text in all_files().items():
        atomic_write(out / name, lambda tmp, text=text: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
