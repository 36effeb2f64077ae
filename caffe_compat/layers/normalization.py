"""Layer family: normalisation layers -- BatchNorm (the fork's "frozen BN"), LRN, MVN.

BatchNorm (LAYERS.md §3.3)
--------------------------
Blobs (Caffe order, all initialised to 0, never trained by gradient): ``[0]``
mean accumulator ``(C,)``, ``[1]`` variance accumulator ``(C,)``, ``[2]``
moving-average scale factor ``(1,)``.  ``C`` = axis 1 (1 for a 1-D bottom).

``batch_norm_param``: ``use_global_stats`` (absent: true in TEST, false in
TRAIN), ``moving_average_fraction`` (``maf``, default 0.999, in [0, 1]),
``eps`` (default 1e-5; the proto field is a float, so the value Caffe used --
and the port uses -- is the float32 ``9.9999997e-06``), ``update_global_stats``
(fork-only).

* ``use_global_stats: true`` (every config): ``f = 0 if blob2 == 0 else
  1/blob2``, ``mean = f*blob0``, ``var = f*blob1``,
  ``y = (x - mean) / sqrt(var + eps)``.
* ... plus ``update_global_stats: true`` in the TRAIN phase (fork, §3.3,
  reproduced): the batch variance around the *global* mean
  ``v_b = E[(x - mean)^2]`` normalises the output, and the blobs are updated
  ``blob2 = blob2*maf + 1``, ``blob0 = mean + maf*blob0`` (``mean`` = the
  scaled global mean -- a fork oddity, reproduced), ``blob1 =
  m/(m-1)*v_b + maf*blob1`` with ``m = count/C``.
* ``use_global_stats: false``: **the fork's own code is broken here** (it
  computes the batch mean but never the batch variance, normalising with a
  stale buffer), so the port follows BVLC Caffe instead: batch mean and
  (biased) batch variance normalise the output, and the blobs are updated as
  ``blob2 = blob2*maf + 1``, ``blob0 = batch_mean + maf*blob0``,
  ``blob1 = m/(m-1)*batch_var + maf*blob1`` on every forward pass (BVLC does
  this whenever ``use_global_stats`` is false, whatever the phase).

Backward, in every mode: ``dx = dy / sqrt(var + eps)`` with the statistics
treated as constants -- the fork's GPU code (what the authors ran: "frozen
BN"; the full batch-statistics gradient is commented out there).  The port
gets it by detaching the statistics.  The blobs never receive a gradient
(Caffe computes no BatchNorm param diffs).  The moving-average updates are
done in place on the blobs, outside autograd, and not during the net's shape
pass.

LRN
---
``lrn_param``: ``local_size`` (odd, default 5), ``alpha`` (1), ``beta``
(0.75), ``k`` (1), ``norm_region``.  4-D bottoms.

* ACROSS_CHANNELS: ``scale = k + alpha/local_size * sum of x^2`` over the
  ``local_size`` channels centred on ``c`` (zero outside ``[0, C)``);
  ``y = x * scale^-beta``.
* WITHIN_CHANNEL: Caffe's composition square -> AVE pooling (kernel
  ``local_size``, pad ``(local_size-1)/2``, stride 1, with **Caffe's AVE
  divisor**: the zero padding inside ``[-pad, H + pad)`` counts, so the
  divisor is ``local_size^2`` everywhere for stride 1) ->
  ``(1 + alpha*avg)^-beta`` (a Power layer: ``k`` is not used here) ->
  product with ``x``.

The backward of both is the true derivative, which is what Caffe's code
computes (autograd; the Power step uses Caffe's Power backward).

MVN
---
``mvn_param``: ``normalize_variance`` (true), ``across_channels`` (false),
``eps`` (1e-9, float32).  Per ``(n, c)`` (or per ``n`` when across channels):
``y = (x - mean) / (std + eps)`` -- eps is added to the standard deviation --
or ``x - mean``; Caffe's backward (not quite the derivative when eps > 0): see
:mod:`caffe_compat.ops.mvn`.  Bottoms of 1 to 4 axes (Caffe's legacy
``num/channels/height/width`` view).
"""
from __future__ import annotations

import torch

from ..errors import ShapeError
from ..ops import scalars as S
from ..ops.mvn import mvn_caffe
from ..ops.pooling import ave_pool2d_caffe, pooled_size
from ..ops.power import power_caffe
from ._common import check_4d
from .base import Layer, in_shape_pass, register_layer


@register_layer("BatchNorm")
class BatchNormLayer(Layer):
    """The fork's BatchNorm ("frozen BN"): normalises each channel (axis 1); see module docstring."""

    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        bp = param.batch_norm_param
        self.maf = float(bp.moving_average_fraction)
        if not 0.0 <= self.maf <= 1.0:
            raise self.error(f"batch_norm_param.moving_average_fraction must be in [0, 1], got {self.maf}")
        self.phase = str(ctx.phase).upper()
        self.use_global_stats = bool(bp.use_global_stats) if bp.HasField("use_global_stats") \
            else self.phase == "TEST"
        self.eps = float(bp.eps)  # the float32 value of the field, as Caffe used it
        if not self.eps >= 0:
            raise self.error(f"batch_norm_param.eps must be >= 0, got {self.eps}")
        self.update_global_stats = bool(bp.update_global_stats)
        shape0 = self.bottom_shapes[0]
        if len(shape0) == 0:
            raise self.error("bottom must have at least 1 axis", ShapeError)
        self.channels = 1 if len(shape0) == 1 else shape0[1]
        self.add_blob((self.channels,), None)
        self.add_blob((self.channels,), None)
        self.add_blob((1,), None)

    def _stats_mode(self) -> str:
        if not self.use_global_stats:
            return "batch"
        if self.phase == "TRAIN" and self.update_global_stats:
            return "update"
        return "global"

    def forward(self, x):
        if x.dim() == 0:
            raise self.error("bottom must have at least 1 axis", ShapeError)
        c = 1 if x.dim() == 1 else int(x.shape[1])
        if c != self.channels:
            raise self.error(f"bottom has {c} channels, the layer was built for {self.channels}", ShapeError)
        if x.is_meta or in_shape_pass():
            return (x.new_empty(x.shape),)
        n = int(x.shape[0])
        if n * c == 0 or x.numel() == 0:
            return (x.clone(),)
        x3 = x.reshape(n, c, -1)  # (N, C, spatial)
        mode = self._stats_mode()
        b0, b1, b2 = (self.blobs[i].detach().to(x.dtype) for i in range(3))
        with torch.no_grad():
            if mode == "batch":
                mean = x3.mean(dim=(0, 2))
            else:
                s = b2.reshape(-1)[0]
                f = torch.where(s == 0, torch.zeros_like(s), 1 / s)
                mean = f * b0
            if mode == "global":
                var = f * b1
            else:
                xc = x3.detach() - mean[None, :, None]
                var = (xc * xc).mean(dim=(0, 2))
            std = torch.sqrt(var + S.rnd(self.eps, x.dtype))
            if mode != "global":
                self._update_moving_averages(mean, var, x.numel() // c)
        # Statistics are constants for autograd: dx = dy / std, the fork's frozen-BN backward.
        y = (x3 - mean[None, :, None]) / std[None, :, None]
        return (y.reshape(x.shape),)

    def _update_moving_averages(self, mean: torch.Tensor, var: torch.Tensor, m: int) -> None:
        """Caffe's moving-average update, in place on the three blobs (outside autograd)."""
        maf = self.maf
        bcf = (m / (m - 1)) if m > 1 else 1.0
        with torch.no_grad():
            p0, p1, p2 = self.blobs[0], self.blobs[1], self.blobs[2]
            dt = p0.dtype
            p2.mul_(S.rnd(maf, dt)).add_(1.0)
            p0.mul_(S.rnd(maf, dt)).add_(mean.to(dt))
            p1.mul_(S.rnd(maf, dt)).add_(var.to(dt) * S.rnd(bcf, dt))


_ACROSS, _WITHIN = 0, 1


@register_layer("LRN")
class LRNLayer(Layer):
    """Local response normalisation (Caffe engine), ACROSS_CHANNELS or WITHIN_CHANNEL."""

    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        lp = param.lrn_param
        self.size = int(lp.local_size)
        if self.size <= 0 or self.size % 2 != 1:
            raise self.error(f"lrn_param.local_size must be a positive odd number, got {self.size}")
        self.pre_pad = (self.size - 1) // 2
        self.alpha = float(lp.alpha)
        self.beta = float(lp.beta)
        self.k = float(lp.k)
        self.region = int(lp.norm_region)
        if self.region not in (_ACROSS, _WITHIN):
            raise self.error(f"lrn_param.norm_region has unknown value {self.region}")
        check_4d(self, self.bottom_shapes[0])

    def forward(self, x):
        check_4d(self, x.shape)
        if x.is_meta:
            return (x.new_empty(x.shape),)
        if self.region == _ACROSS:
            return (self._across(x),)
        return (self._within(x),)

    def _across(self, x):
        n, c, h, w = (int(s) for s in x.shape)
        sq = x * x
        padded = torch.nn.functional.pad(sq, (0, 0, 0, 0, self.pre_pad, self.pre_pad))
        acc = padded[:, 0:c]
        for i in range(1, self.size):
            acc = acc + padded[:, i:i + c]
        alpha_over_size = S.div(self.alpha, self.size, x.dtype)
        scale = acc * alpha_over_size + S.rnd(self.k, x.dtype)
        return torch.pow(scale, -S.rnd(self.beta, x.dtype)) * x

    def _within(self, x):
        h, w = int(x.shape[2]), int(x.shape[3])
        k, p = self.size, self.pre_pad
        out = (pooled_size(h, k, 1, p), pooled_size(w, k, 1, p))
        sq = power_caffe(x, 2.0, 1.0, 0.0)
        avg = ave_pool2d_caffe(sq, (k, k), (1, 1), (p, p), out)
        den = power_caffe(avg, -self.beta, self.alpha, 1.0)
        if tuple(den.shape) != tuple(x.shape):  # cannot happen for odd local_size; guard anyway
            raise self.error(f"internal pooled size {list(den.shape)} differs from the input", ShapeError)
        return x * den


@register_layer("MVN")
class MVNLayer(Layer):
    """Mean-variance normalisation per ``(n, c)`` or per ``n`` (``across_channels``)."""

    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        mp = param.mvn_param
        self.normalize_variance = bool(mp.normalize_variance)
        self.across_channels = bool(mp.across_channels)
        self.eps = float(mp.eps)
        self._check_ndim(len(self.bottom_shapes[0]))

    def _check_ndim(self, ndim: int):
        if not 1 <= ndim <= 4:
            raise self.error(f"bottom must have 1 to 4 axes (Caffe's num/channels/height/width view), "
                             f"got {ndim}", ShapeError)

    def forward(self, x):
        self._check_ndim(x.dim())
        if x.is_meta or x.numel() == 0:
            return (x.new_empty(x.shape) if x.is_meta else x.clone(),)
        n = int(x.shape[0])
        c = int(x.shape[1]) if x.dim() > 1 else 1
        rows = n if self.across_channels else n * c
        return (mvn_caffe(x, rows, self.normalize_variance, S.rnd(self.eps, x.dtype)),)
