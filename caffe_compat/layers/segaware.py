"""Layer family: the segmentation-aware geometry layers of the fork.

``Im2col``, ``Im2dist``, ``Im2parity``, ``DistLoss`` and ``ChannelReduce``
(LAYERS.md §0.4, §2.1–2.4, §2.9).  The numerical work lives in
:mod:`caffe_compat.ops` (``im2col``, ``im2dist``, ``im2parity``,
``dist_loss``) so the CRF and other code can reuse it; these classes parse and
validate the parameters and shapes and name the layer in every error.

Surprising fork behaviours reproduced here (see also docs/segaware_semantics.md):

* All five read ``convolution_param`` like Convolution (kernel required, no
  default), but ignore ``num_output``, ``bias_term``, ``bottom_is_im2col``,
  fillers, ``group`` and ``engine``.  DistLoss parses and validates it and then
  does not use it at all.
* Im2dist "L2" is **half** the squared Euclidean distance; out-of-image
  neighbours have distance **0** unless ``remove_bounds``; removed entries hold
  ``FLT_MAX/100`` (3.4028235e36); columns whose centre is outside the image are
  all 0; even kernels take ``(kh//2, kw//2)`` as the centre.  Its L1 backward
  uses ``sign(0) = 0`` (the fork's GPU rule and the project policy; the fork's
  CPU code used -1).
* Im2parity truncates labels to int, compares out-of-image neighbours as label
  0, lets the last input channel win, and has no gradient.
* DistLoss divides by **all** entries (ignored ones too) and back-propagates
  ``margin / count`` (the gradient of ``0.5*margin**2``, not of the hinge it
  reports) **ignoring the loss weight**.  All images of the batch are used (the
  fork's CPU behaviour); the fork's GPU used only image 0, available through
  :attr:`DistLoss.gpu_first_image_only`.
* ChannelReduce reduces **consecutive** blocks of ``C/num_channels`` channels;
  its proto default operation is MAX.  The fork's inverted setup CHECK rejected
  ``num_channels == C`` and accepted non-divisors; this port requires
  ``C % num_channels == 0`` and accepts ``num_channels == C`` (identity).
"""
from __future__ import annotations

import torch

from ..errors import CaffeCompatError, ShapeError
from ..ops.dist_loss import dist_loss
from ..ops.im2col import im2col
from ..nn import functional as segaware_functional
from ..ops.im2parity import im2parity
from ..ops.scalars import FLT_MAX  # the fork's initial value of a MAX reduction is -FLT_MAX
from ._common import check_4d, optional_int, positive_int
from .base import Layer, register_layer
from .geometry import parse_conv_geometry

__all__ = ["Im2col", "Im2dist", "Im2parity", "DistLoss", "ChannelReduce"]



class _WindowLayer(Layer):
    """Common parsing of ``convolution_param`` (§0.4) for the window layers."""

    def _parse_window(self):
        cp = self.param.convolution_param
        shape = self.bottom_shapes[0]
        ndim = len(shape)
        axis = int(cp.axis)
        if not -ndim <= axis < ndim:
            raise self.error(f"convolution_param.axis {axis} is out of range for a {ndim}-D bottom {list(shape)}")
        canonical = axis % ndim
        num_spatial = ndim - canonical - 1
        if num_spatial < 1:
            raise self.error(
                f"convolution_param.axis {axis} leaves no spatial axis in the {ndim}-D bottom {list(shape)}")
        geometry = parse_conv_geometry(cp, self.error, num_spatial=num_spatial)
        if ndim != 4 or canonical != 1:
            raise self.error(f"only 4-D (N, C, H, W) bottoms with channel axis 1 are supported, got "
                             f"bottom {list(shape)} with axis {axis}", ShapeError)
        return geometry

    def _named(self, fn, *args, **kwargs):
        """Call an op, re-raising its errors with this layer's name."""
        try:
            return fn(*args, **kwargs)
        except CaffeCompatError as exc:
            raise self.error(str(exc), type(exc)) from None

    def extra_repr(self) -> str:
        g = getattr(self, "geometry", None)
        if g is None:
            return super().extra_repr()
        return (f"name={self.name!r}, kernel={g.kernel}, stride={g.stride}, pad={g.pad}, "
                f"dilation={g.dilation}")


@register_layer("Im2col")
class Im2col(_WindowLayer):
    """Caffe im2col: ``(N, C, H, W) -> (N, C*kh*kw, Ho, Wo)``.

    Channel ``(c*kh + i)*kw + j`` holds input channel ``c`` at kernel offset
    ``(i, j)``; zero outside the image.  Backward is col2im (torch autograd of
    ``unfold``).  ``num_output``, ``bottom_is_im2col``, ``force_nd_im2col`` etc.
    have no effect (the fork ignores them here too).
    """

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.geometry = self._parse_window()

    def forward(self, x):
        check_4d(self, x.shape)
        return (self._named(im2col, x, self.geometry),)


@register_layer("Im2dist")
class Im2dist(_WindowLayer):
    """Windowed embedding distances: ``(N, E, H, W) -> (N, kh*kw, Ho, Wo)``.

    See :mod:`caffe_compat.ops.im2dist` for the exact semantics and the custom
    backward (memory-light: the ``(N, E*K, Ho, Wo)`` difference tensor is never
    stored).  Parameters: ``im2dist_param.norm`` (L1 or L2 = half squared,
    default L2), ``remove_center``, ``remove_bounds``.
    """

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.geometry = self._parse_window()
        ip = param.im2dist_param
        norm = int(ip.norm)
        if norm not in (1, 2):
            raise self.error(f"im2dist_param.norm must be L1 (1) or L2 (2), got {norm}")
        self.norm = "L1" if norm == 1 else "L2"
        self.remove_center = bool(ip.remove_center)
        self.remove_bounds = bool(ip.remove_bounds)

    def forward(self, x):
        check_4d(self, x.shape)
        g = self.geometry  # the same function as caffe_compat.nn.Im2dist (one implementation, two faces)
        return (self._named(segaware_functional.im2dist, x, g.kernel, g.stride, g.pad, g.dilation, self.norm,
                            self.remove_center, self.remove_bounds),)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", norm={self.norm}, remove_center={self.remove_center}, "
                f"remove_bounds={self.remove_bounds}")


@register_layer("Im2parity")
class Im2parity(_WindowLayer):
    """Label parity of window pairs: ``(N, C, H, W) -> (N, kh*kw, Ho, Wo)`` in {0, 1, ignore_label}.

    See :mod:`caffe_compat.ops.im2parity`.  The output never requires grad (the
    fork has no Backward; labels get no gradient).  If some window centre is
    outside the image and ``ignore_label`` is not set, forward raises
    :class:`ShapeError` (the fork wrote an uninitialised value).
    """

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.geometry = self._parse_window()
        pp = param.im2parity_param
        self.ignore_label = optional_int(pp)

    def forward(self, labels):
        check_4d(self, labels.shape)
        return (self._named(im2parity, labels, self.geometry, self.ignore_label),)


@register_layer("DistLoss")
class DistLoss(_WindowLayer):
    """Contrastive hinge loss on window distances; top: a 0-dim loss.

    Bottoms: ``dist (N, K, H, W)`` and ``parity`` (identical shape).  See
    :mod:`caffe_compat.ops.dist_loss`: ``loss = sum(margins) / N*K*H*W`` and the
    gradient ``+-margin / count`` **ignores the loss weight** (the incoming
    gradient), as the fork does.

    Attributes:
        gpu_first_image_only: opt-in reproduction of the fork's GPU bug (only
            image 0 contributes, ``count`` still covers the whole batch).
            Default False (the fork's CPU behaviour, which the goldens record).
    """

    num_bottoms = (2, 2)
    num_tops = (1, 1)
    auto_tops = 1
    is_loss = True
    gpu_first_image_only: bool = False

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        # parsed and validated exactly like Im2dist, then unused (as in the fork)
        self.geometry = self._parse_window()
        dp = param.dist_loss_param
        for name in ("alpha", "beta"):
            if not dp.HasField(name):
                raise self.error(f"dist_loss_param.{name} is required")
        self.alpha, self.beta = float(dp.alpha), float(dp.beta)
        if not self.alpha > 0:
            raise self.error(f"dist_loss_param.alpha must be > 0, got {self.alpha}")
        if not self.beta > 0:
            raise self.error(f"dist_loss_param.beta must be > 0, got {self.beta}")
        if not self.beta > self.alpha:
            raise self.error(f"dist_loss_param.beta must be greater than alpha, got alpha {self.alpha}, "
                             f"beta {self.beta}")
        self.ignore_label = optional_int(dp)

    def forward(self, dist, parity):
        if dist.dim() < 1 or parity.dim() < 1 or dist.shape[0] != parity.shape[0]:
            raise self.error(f"dist and parity must have the same batch size N, got shapes "
                             f"{list(dist.shape)} and {list(parity.shape)}", ShapeError)
        if tuple(dist.shape) != tuple(parity.shape):
            raise self.error(f"dist {list(dist.shape)} and parity {list(parity.shape)} must have "
                             f"identical shapes", ShapeError)
        loss = self._named(dist_loss, dist, parity, self.alpha, self.beta, self.ignore_label,
                           self.gpu_first_image_only)
        return (loss,)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, alpha={self.alpha}, beta={self.beta}, ignore_label={self.ignore_label}, "
                f"gpu_first_image_only={self.gpu_first_image_only}")


@register_layer("ChannelReduce")
class ChannelReduce(Layer):
    """Reduce consecutive channel blocks: ``(N, C, H, W) -> (N, num_channels, H, W)``.

    Output channel ``t`` = SUM or MAX over input channels ``[t*G, (t+1)*G)``,
    ``G = C / num_channels``.  SUM adds the channels in increasing order (the
    fork's order), backward copies.  MAX starts from ``-FLT_MAX`` and takes the
    first strictly greater value (first maximum wins, NaN never wins, a block
    with nothing above ``-FLT_MAX`` yields ``-FLT_MAX`` and no gradient);
    backward routes the gradient to the winner.  ``operation`` defaults to
    MAX (proto default).  Like the fork's legacy accessors, bottoms of fewer
    than 4 axes are read as ``(N, C, H=1, W=1)`` and the top is 4-D.
    """

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        cp = param.channel_reduce_param
        self.num_channels = positive_int(self, cp.num_channels, "channel_reduce_param.num_channels")
        op = int(cp.operation)
        if op not in (0, 1):
            raise self.error(f"channel_reduce_param.operation must be SUM (0) or MAX (1), got {op}")
        self.operation = "SUM" if op == 0 else "MAX"
        self._legacy_shape(self.bottom_shapes[0])

    def _legacy_shape(self, shape):
        shape = tuple(int(d) for d in shape)
        if len(shape) > 4:
            raise self.error(f"bottom must have at most 4 axes, got shape {list(shape)}", ShapeError)
        n, c, h, w = shape + (1,) * (4 - len(shape))
        if c == 0 or c % self.num_channels:
            raise self.error(f"the bottom's {c} channels must be a positive multiple of "
                             f"channel_reduce_param.num_channels ({self.num_channels})", ShapeError)
        return n, c, h, w

    def forward(self, x):
        n, c, h, w = self._legacy_shape(x.shape)
        t = self.num_channels
        g = c // t
        if x.is_meta:
            return (x.new_empty((n, t, h, w)),)
        xv = x.reshape(n, t, g, h, w)
        if self.operation == "SUM":
            parts = xv.unbind(2)  # one backward node (stack), not G slice copies
            out = parts[0]
            for p in parts[1:]:
                out = out + p  # sequential, increasing c: the fork's summation order
            if g == 1:
                out = out.clone()  # never hand out a view of the bottom
            return (out,)
        # MAX: NaN never compares greater in the fork -> treat as -inf
        clean = torch.where(torch.isnan(xv), float("-inf"), xv)
        val, _ = clean.max(dim=2)  # first maximum wins (torch returns the first index)
        floor = -FLT_MAX
        out = torch.where(val > floor, val, torch.full_like(val, floor))
        return (out,)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_channels={self.num_channels}, operation={self.operation}"
