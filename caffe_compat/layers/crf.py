"""The segmentation-aware CRF: ``NormConv`` and ``NormConvMeanfield`` (LAYERS.md §2.6, §2.7).

The numerics live in :mod:`caffe_compat.ops.norm_conv` (normalised masked
convolution, two autograd Functions looping over window taps) and
:mod:`caffe_compat.ops.meanfield` (the mean-field iterations).  These layers
parse and validate the parameters and own the learnable blobs.  The user-facing
description of both layers, with every reproduced quirk, is
``docs/crf_semantics.md``.

Fork behaviours reproduced here (beyond those listed in the ops modules):

* **NormConv** ``scale_term: false`` uses ``Z = +D`` (far neighbours favoured).
  Blobs ``[W (O, C/g, kh, kw), bias (O)?, scale (1)?]``; ``scale_filler`` absent
  means constant 0 (a uniform mask until trained).
* **NormConvMeanfield**: bottoms ``(unary, Q0, bilateral features, spatial
  features)``; parameter entry 0 belongs to the *bilateral* kernel (bottom 2),
  entry 1 to the *spatial* kernel (bottom 3); blob 0 (``W_G``) multiplies the
  *spatial* result, blob 1 (``W_B``) the *bilateral* one, blob 2 is the
  compatibility ``K`` (init ``-I``); ``top = unary - K (W_G S + W_B B)`` (logits).
* Defaults when a list is absent: pad 0, stride 1, **dilation 0** (every tap
  reads the centre pixel), **scale 0** (``int(0.1)``: uniform masks over all
  taps), remove_center true, remove_bounds true.  ``num_iterations`` must be > 1.
  ``norm``, ``scale_term``, ``bias_term``, ``group``, fillers, thresholds, filter
  weights, ``iter_multiplier``, ``engine`` are ignored, as in the fork.
* The sub-convolutions have unit weights, ``group = C``, no bias, L2 (half
  squared) distance and a fixed scale.

Deliberate differences (documented):

* The fork sets its top shape once at setup and never reshapes; here every call
  recomputes from the actual inputs (any N, H, W for which both windows keep the
  spatial size).  Shapes the fork would silently mis-handle raise ShapeError.
* The fork *overwrites* the three matrices' diffs on each backward; here the
  gradients accumulate into ``.grad`` as for every PyTorch parameter (equal after
  one backward from zero; with ``iter_size > 1`` the fork keeps only the last pass).
* NormConv ``bottom_is_im2col`` is rejected (the fork would im2col the image
  anyway and only change the output shape); a 1x1/stride-1/pad-0 NormConv gets
  correct input gradients (the fork silently leaves them unwritten).
"""
from __future__ import annotations

import torch

from ..errors import NotSupportedError, ShapeError
from ..nn import functional as segaware_functional
from ..ops.meanfield import MeanfieldKernel
from ..ops.window import L1, L2, Window, norm_name
from ._common import check_4d, positive_int
from .base import Layer, check_shape, register_layer
from .geometry import parse_conv_geometry



@register_layer("NormConv")
class NormConvLayer(Layer):
    """``NormConv``: convolution of an image with per-position normalised masks from an embedding.

    Bottoms: ``img (N, C, H, W)`` and ``emb (N, E, H, W)`` (same N, H, W).
    Top: ``(N, num_output, Ho, Wo)`` with Caffe's convolution output size.
    ``y[o,p] = sum_{c in group(o), k} W[o,c,k] * A[k,p] * X[c,k,p] + b[o]`` with
    ``A = softmax_k(-s * D)`` (``D`` = Im2dist of ``emb``; ``Z = +D`` without scale term).
    """

    num_bottoms = (2, 2)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        cp, ncp = param.convolution_param, param.norm_conv_param
        for i, s in enumerate(self.bottom_shapes):
            check_4d(self, s, f"bottom {i}")
        if int(cp.axis) not in (1, -3):
            raise self.error(f"convolution_param.axis must be 1 (the channel axis of N, C, H, W), got {cp.axis}",
                             NotSupportedError)
        if cp.bottom_is_im2col:
            raise self.error("convolution_param.bottom_is_im2col is not supported by NormConv (the fork still "
                             "im2cols the image and only changes the output shape, which is inconsistent)",
                             NotSupportedError)
        self.geom = parse_conv_geometry(cp, self.error)
        self.num_output = positive_int(self, cp.num_output, "convolution_param.num_output")
        self.group = positive_int(self, cp.group, "convolution_param.group")
        self.channels = self.bottom_shapes[0][1]
        if self.channels % self.group:
            raise self.error(f"input channels ({self.channels}) must be divisible by convolution_param.group "
                             f"({self.group})")
        if self.num_output % self.group:
            raise self.error(f"convolution_param.num_output ({self.num_output}) must be divisible by "
                             f"convolution_param.group ({self.group})")
        self.norm = int(ncp.norm)
        if self.norm not in (L1, L2):
            raise self.error(f"norm_conv_param.norm must be L1 (1) or L2 (2), got {self.norm}")
        self.remove_center = bool(ncp.remove_center)
        self.remove_bounds = bool(ncp.remove_bounds)
        self.bias_term = bool(cp.bias_term)
        self.scale_term = bool(ncp.scale_term)
        self._check_bottoms(self.bottom_shapes)
        kh, kw = self.geom.kernel
        self.add_blob((self.num_output, self.channels // self.group, kh, kw), cp.weight_filler)
        if self.bias_term:
            self.add_blob((self.num_output,), cp.bias_filler)
        self.scale_index = (2 if self.bias_term else 1) if self.scale_term else None
        if self.scale_term:
            self.add_blob((1,), ncp.scale_filler)

    def _check_bottoms(self, shapes) -> None:
        img, emb = shapes
        check_4d(self, img, "bottom 0 (image)")
        check_4d(self, emb, "bottom 1 (embedding)")
        if img[1] != self.channels:
            raise self.error(f"bottom 0 has {img[1]} channels, the layer was built for {self.channels}", ShapeError)
        if img[0] != emb[0] or tuple(img[2:]) != tuple(emb[2:]):
            raise self.error(f"image {list(img)} and embedding {list(emb)} must have the same N, H and W",
                             ShapeError)
        ho, wo = self.geom.output_size(img[2], img[3])
        if ho <= 0 or wo <= 0:
            raise self.error(f"kernel {list(self.geom.kernel)} (dilation {list(self.geom.dilation)}, pad "
                             f"{list(self.geom.pad)}) does not fit the {img[2]}x{img[3]} input", ShapeError)
        check_shape((img[0], self.geom.taps, ho, wo), f"layer '{self.name}' mask")

    def forward(self, img, emb):
        self._check_bottoms([tuple(img.shape), tuple(emb.shape)])
        if img.is_meta or emb.is_meta:      # shape pass: nothing to compute
            ho, wo = self.geom.output_size(img.shape[2], img.shape[3])
            return (img.new_empty((img.shape[0], self.num_output, ho, wo)),)
        # the same function as caffe_compat.nn.NormConv2d (one implementation, two faces)
        scale = self.blobs[self.scale_index] if self.scale_term else None
        bias = self.blobs[1] if self.bias_term else None
        return (segaware_functional.norm_conv2d(img, emb, self.blobs[0].to(img.dtype), bias, scale, self.geom,
                                                self.group, self.norm, self.remove_center, self.remove_bounds),)

    def extra_repr(self) -> str:
        g = self.geom
        return (f"name={self.name!r}, num_output={self.num_output}, kernel={g.kernel}, stride={g.stride}, "
                f"pad={g.pad}, dilation={g.dilation}, group={self.group}, norm={norm_name(self.norm)}, "
                f"scale_term={self.scale_term}, remove_center={self.remove_center}, "
                f"remove_bounds={self.remove_bounds}")


@register_layer("NormConvMeanfield")
class NormConvMeanfieldLayer(Layer):
    """``NormConvMeanfield``: the segmentation-aware CRF (mean-field with two NormConvs).

    Bottoms: ``unary (N, C, H, W)``, ``Q0 (N, C, H, W)``, bilateral features
    ``(N, E1, H, W)``, spatial features ``(N, E2, H, W)``.  Top: ``(N, C, H, W)``
    logits after ``num_iterations`` steps.  Blobs: ``W_G``, ``W_B``, ``K``, each
    ``(1, 1, C, C)``.
    """

    num_bottoms = (4, 4)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        mp = param.norm_conv_meanfield_param
        self.num_iterations = int(mp.num_iterations)
        if self.num_iterations <= 1:
            raise self.error(f"norm_conv_meanfield_param.num_iterations must be > 1 (the fork CHECKs it), "
                             f"got {self.num_iterations}")
        if len(mp.kernel_size) != 2:
            raise self.error(f"norm_conv_meanfield_param.kernel_size must be given exactly twice "
                             f"([bilateral, spatial]), got {len(mp.kernel_size)} values")

        def pair(field, default):
            vals = list(getattr(mp, field))
            if len(vals) not in (0, 2):
                raise self.error(f"norm_conv_meanfield_param.{field} must be given 0 or 2 times "
                                 f"([bilateral, spatial]), got {len(vals)} values")
            return vals if vals else [default, default]

        kernel = [int(v) for v in mp.kernel_size]
        stride = [int(v) for v in pair("stride", 1)]
        pad = [int(v) for v in pair("pad", 0)]
        dilation = [int(v) for v in pair("dilation", 0)]      # the fork's default: 0 (not 1)
        scale = [float(v) for v in pair("scale", 0.0)]        # the fork's default: int(0.1) == 0
        rc = [bool(v) for v in pair("remove_center", True)]
        rb = [bool(v) for v in pair("remove_bounds", True)]
        for what, vals in (("kernel_size", kernel), ("stride", stride)):
            if any(v <= 0 for v in vals):
                raise self.error(f"norm_conv_meanfield_param.{what} entries must be > 0, got {vals}")
        kernels = []
        for i in range(2):
            w = Window((kernel[i],) * 2, (stride[i],) * 2, (pad[i],) * 2, (dilation[i],) * 2)
            kernels.append(MeanfieldKernel(w, scale[i], rc[i], rb[i]))
        self.bilateral, self.spatial = kernels
        self.channels = self.bottom_shapes[0][1] if len(self.bottom_shapes[0]) == 4 else 0
        self._check_bottoms(self.bottom_shapes)
        C = self.channels
        self.add_blob((1, 1, C, C), lambda t, g: t.copy_(torch.eye(C, dtype=t.dtype).reshape(t.shape)))
        self.add_blob((1, 1, C, C), lambda t, g: t.copy_(torch.eye(C, dtype=t.dtype).reshape(t.shape)))
        self.add_blob((1, 1, C, C), lambda t, g: t.copy_(-torch.eye(C, dtype=t.dtype).reshape(t.shape)))

    def _check_bottoms(self, shapes) -> None:
        names = ("unary", "Q0", "bilateral features", "spatial features")
        for i, s in enumerate(shapes):
            check_4d(self, s, f"bottom {i} ({names[i]})")
        u = shapes[0]
        if u[1] != self.channels:
            raise self.error(f"bottom 0 (unary) has {u[1]} channels, the layer was built for {self.channels}",
                             ShapeError)
        if tuple(shapes[1]) != tuple(u):
            raise self.error(f"bottom 1 (Q0) shape {list(shapes[1])} must equal bottom 0 (unary) shape {list(u)}",
                             ShapeError)
        for i in (2, 3):
            s = shapes[i]
            if s[0] != u[0] or tuple(s[2:]) != tuple(u[2:]):
                raise self.error(f"bottom {i} ({names[i]}) shape {list(s)} must have the N, H, W of the unary "
                                 f"{list(u)}", ShapeError)
        H, W = u[2], u[3]
        for name, kern in (("bilateral (entry 0)", self.bilateral), ("spatial (entry 1)", self.spatial)):
            out = kern.window.output_size(H, W)
            if out != (H, W):
                w = kern.window
                raise self.error(
                    f"the {name} NormConv (kernel {w.kernel[0]}, pad {w.pad[0]}, stride {w.stride[0]}, dilation "
                    f"{w.dilation[0]}) maps {H}x{W} to {out[0]}x{out[1]}; the layer needs it to keep the size "
                    f"{H}x{W} (the fork silently reads out of bounds)", ShapeError)
            check_shape((u[0], kern.window.taps, H, W), f"layer '{self.name}' {name} mask")

    def forward(self, unary, q0, bilateral_features, spatial_features):
        bottoms = (unary, q0, bilateral_features, spatial_features)
        self._check_bottoms([tuple(t.shape) for t in bottoms])
        if any(t.is_meta for t in bottoms):  # shape pass: nothing to compute
            return (unary.new_empty(unary.shape),)
        # the same function as caffe_compat.nn.MeanfieldCRF (one implementation, two faces)
        return (segaware_functional.meanfield_crf(unary, q0, bilateral_features, spatial_features, self.blobs[0],
                                                  self.blobs[1], self.blobs[2], self.num_iterations,
                                                  self.bilateral, self.spatial),)

    def extra_repr(self) -> str:
        def fmt(k):
            w = k.window
            return (f"kernel={w.kernel[0]}, pad={w.pad[0]}, stride={w.stride[0]}, dilation={w.dilation[0]}, "
                    f"scale={k.scale}, remove_center={k.remove_center}, remove_bounds={k.remove_bounds}")
        return (f"name={self.name!r}, num_iterations={self.num_iterations}, bilateral=({fmt(self.bilateral)}), "
                f"spatial=({fmt(self.spatial)})")
