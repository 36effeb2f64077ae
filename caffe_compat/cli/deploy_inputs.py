"""The extra inputs of the original deploy nets, derived as the original TEST configs derive them.

The shipped ``deploy.prototxt`` files take, besides the image, inputs that the
train/test configs compute inside the net (or that hold the label map):

=========================  =====================================================================
input                      value given by ``run``
=========================  =====================================================================
``label`` (vgg)            the ``--label`` map (padded with 255 / centre-cropped like the image),
                           else 255 everywhere (ignore): the deploy net only passes it through
4th channel of a 4-channel the same label map (embs ``image_data`` = B, G, R minus the mean, then
image input (embs)         the raw label, as its golden run feeds it)
``pos_data`` (embs)        ``[zeros, column index, row index]`` over its own ``H x W`` (13 x 13)
``data_res05`` (res)       ``Interp`` of the image with ``shrink_factor: 2`` (res/test.prototxt)
``data_res075`` (res)      ``Interp`` of the image with ``shrink_factor: 4 zoom_factor: 3``
``fc1_voc12_res075_interp`` a first forward's ``fc1_voc12_res075`` through ``Interp``
                           ``zoom_factor: 4 shrink_factor: 3`` (as res/test.prototxt), then a
                           second forward with it (two passes, like the res golden run)
=========================  =====================================================================

Any of them may instead be given with ``--feed NAME=FILE.npy``; a fed array's
shape is checked against what the net needs at this image size.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from ..errors import ShapeError

#: input -> (source blob, Interp parameters as in the original res/test.prototxt)
INTERP_FROM_IMAGE = {"data_res05": "shrink_factor: 2", "data_res075": "shrink_factor: 4 zoom_factor: 3"}
#: input -> (blob of a first forward, Interp parameters) -- a second forward uses the result
TWO_PASS = {"fc1_voc12_res075_interp": ("fc1_voc12_res075", "zoom_factor: 4 shrink_factor: 3")}
LABEL_INPUTS = ("label",)
IGNORE_LABEL = 255


def interp(x: torch.Tensor, params: str) -> torch.Tensor:
    """The fork's ``Interp`` layer with ``interp_param { params }`` applied to ``x`` (N x C x H x W)."""
    from ..net import Net

    n, c, h, w = x.shape
    text = (f'input: "x" input_shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }}\n'
            f'layer {{ name: "i" type: "Interp" bottom: "x" top: "y" interp_param {{ {params} }} }}\n')
    net = Net.from_string(text, source=f"<Interp {params}>", device=x.device, dtype=x.dtype)
    return net(x=x)["y"]


def pos_grid(shape) -> np.ndarray:
    """``[zeros, column index, row index]`` of an ``N x 3 x H x W`` input (the embs ``pos_data``)."""
    n, c, h, w = shape
    if c != 3:
        raise ShapeError(f"input 'pos_data' has {c} channels; expected 3 (zeros, column, row)")
    out = np.zeros((n, 3, h, w), np.float32)
    out[:, 1] = np.arange(w, dtype=np.float32)[None, None, :]
    out[:, 2] = np.arange(h, dtype=np.float32)[None, :, None]
    return out


def expected_shape(net, name: str, image_input: str, image_hw: Tuple[int, int]) -> Tuple[int, ...]:
    """The shape input ``name`` needs when the image input is ``image_hw``.

    An input declared at the image input's spatial size follows the image;
    the others keep their declared shape (derived inputs are computed).
    """
    want = list(net.input_shapes[name])
    decl = net.input_shapes[image_input]
    if len(want) == 4 and tuple(want[2:]) == tuple(decl[2:]):
        want[2:] = image_hw
    return tuple(want)


def check_fed(net, name: str, value: np.ndarray, image_input: str, image_hw: Tuple[int, int]) -> np.ndarray:
    """A ``--feed`` array, refused unless its shape is what input ``name`` needs here."""
    want = expected_shape(net, name, image_input, image_hw)
    if name in INTERP_FROM_IMAGE or name in TWO_PASS:
        return value  # derived sizes depend on the layers; the net's own shape checks apply
    if tuple(value.shape) != want:
        raise ShapeError(f"--feed {name}: array of shape {list(value.shape)}, but input '{name}' needs "
                         f"{list(want)} here (image input '{image_input}' is {image_hw[0]}x{image_hw[1]})")
    return value


def derivable(name: str) -> bool:
    return name in INTERP_FROM_IMAGE or name in TWO_PASS or name in LABEL_INPUTS or name == "pos_data"


def derive_inputs(net, image_input: str, image: torch.Tensor, label: Optional[np.ndarray],
                  given: Dict[str, object]) -> Tuple[Dict[str, object], Dict[str, Tuple[str, str]]]:
    """Values for the inputs not in ``given``; returns ``(inputs, second-pass inputs)``.

    ``label``: ``H x W`` label map at the image's size (or ``None``: 255).
    Second-pass inputs are filled with zeros for the first forward.
    """
    out: Dict[str, object] = {}
    later: Dict[str, Tuple[str, str]] = {}
    hw = tuple(image.shape[2:])
    for name in net.inputs:
        if name == image_input or name in given:
            continue
        if name in LABEL_INPUTS:
            shape = expected_shape(net, name, image_input, hw)
            lab = np.full(hw, IGNORE_LABEL, np.float32) if label is None else label.astype(np.float32)
            out[name] = np.broadcast_to(lab, shape).copy()
        elif name == "pos_data":
            out[name] = pos_grid(net.input_shapes[name])
        elif name in INTERP_FROM_IMAGE:
            out[name] = interp(image, INTERP_FROM_IMAGE[name])
        elif name in TWO_PASS:
            later[name] = TWO_PASS[name]
    return out, later


def second_pass_inputs(net, inputs: Dict[str, torch.Tensor],
                       later: Dict[str, Tuple[str, str]]) -> Dict[str, torch.Tensor]:
    """The two-pass inputs: each source blob computed from ``inputs`` (the layers up to it), then Interp.

    Only the layers before the source blob run, so the not-yet-known input is
    never needed (the res deploy net computes ``fc1_voc12_res075`` from
    ``data_res075`` before it consumes ``fc1_voc12_res075_interp``).
    """
    out = {}
    for name, (src, params) in later.items():
        blobs = dict(inputs)
        with torch.inference_mode():
            for layer, bn, tn in zip(net.layers, net.bottom_names, net.top_names):
                if src in blobs:
                    break
                if getattr(layer, "feeds_net_inputs", False):
                    continue
                if any(b not in blobs for b in bn):
                    raise ShapeError(f"cannot derive input '{name}': blob '{src}' needs '{name}' itself; "
                                     f"give it with --feed {name}=FILE.npy")
                tops = layer(*[blobs[b] for b in bn])
                for t, v in zip(tn, (tops,) if isinstance(tops, torch.Tensor) else tops):
                    blobs[t] = v
            out[name] = interp(blobs[src], params)
    return out
