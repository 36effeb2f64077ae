"""Layers that only move data: Concat, Slice, Split, Silence, Flatten, Reshape, Crop, Tile.

Semantics are BVLC Caffe's, as in the fork (LAYERS.md §3.6-3.9, §3.13).  All
of them are plain tensor views/copies, so torch autograd gives exactly
Caffe's backward (slicing the top diff, summing Split/Tile copies, zero
gradient for what Crop drops).

Notes:

* Axes may be negative (``axis + num_axes``) wherever Caffe's
  ``CanonicalAxisIndex`` is used.  The legacy ``concat_dim`` / ``slice_dim``
  are only non-negative and may not be combined with ``axis``.
* Split, a one-bottom Concat and a one-top Slice alias the bottom in Caffe
  (shared data); the port returns views of the bottom.
* Silence has no tops; in Caffe its backward writes zero diffs, i.e. its
  bottoms simply receive no gradient from it.
* Tile repeats the whole block from ``axis`` on: for ``(N, K, H, W)`` and
  axis 1, top channel ``t*K + k`` is bottom channel ``k`` -- which is what
  makes Tile's channel order match Im2col's ``c*K + k`` in the segaware mask
  chain.
* Crop (not in the fork itself; BVLC semantics): bottom 0 is cropped to bottom
  1's shape on the axes from ``crop_param.axis`` (default 2) on, at
  ``offset`` (none: 0; one value: for every cropped axis; else one per cropped
  axis).  Bottom 1 is only a shape reference and gets no gradient.
"""
from __future__ import annotations

import math
from typing import List

import torch

from ..errors import ShapeError
from ._common import count as _count, positive_int
from .base import Layer, register_layer


def canonical_axis(layer: Layer, axis: int, ndim: int, what: str = "axis") -> int:
    """Caffe's ``CanonicalAxisIndex``: ``axis`` in ``[-ndim, ndim)``, negative counted from the end."""
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise layer.error(f"{what} {axis} is out of range for a {ndim}-D bottom (must be in [{-ndim}, {ndim - 1}])")
    return axis + ndim if axis < 0 else axis


def _legacy_or_axis(layer: Layer, p, legacy: str, ndim: int, what: str) -> int:
    """Axis from ``axis`` or the legacy ``concat_dim``/``slice_dim`` (not both)."""
    if p.HasField(legacy):
        if p.HasField("axis"):
            raise layer.error(f"{what}: give either axis or the legacy {legacy}, not both")
        a = int(getattr(p, legacy))
        if not 0 <= a < ndim:
            raise layer.error(f"{what}.{legacy} {a} must be in [0, {ndim - 1}] for a {ndim}-D bottom")
        return a
    return canonical_axis(layer, int(p.axis), ndim, f"{what}.axis")


@register_layer("Concat")
class ConcatLayer(Layer):
    """``Concat``: concatenate the bottoms along ``axis`` (default 1) in bottom order."""

    num_bottoms = (1, None)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.concat_param
        self._p = p
        self.axis = _legacy_or_axis(self, p, "concat_dim", len(self.bottom_shapes[0]), "concat_param")
        self._check([tuple(s) for s in self.bottom_shapes])

    def _check(self, shapes) -> None:
        s0 = shapes[0]
        for i, s in enumerate(shapes[1:], start=1):
            if len(s) != len(s0):
                raise self.error(f"all bottoms must have the same number of axes: bottom 0 is {list(s0)}, "
                                 f"bottom {i} is {list(s)}", ShapeError)
            for j, (a, b) in enumerate(zip(s0, s)):
                if j != self.axis and a != b:
                    raise self.error(f"bottoms must match on every axis but the concat axis {self.axis}: "
                                     f"bottom 0 is {list(s0)}, bottom {i} is {list(s)}", ShapeError)

    def forward(self, *xs):
        self._check([tuple(x.shape) for x in xs])
        if len(xs) == 1:
            return (xs[0].view_as(xs[0]),)
        return (torch.cat(xs, dim=self.axis),)


@register_layer("Slice")
class SliceLayer(Layer):
    """``Slice``: split the bottom along ``axis`` at ``slice_point`` (or into equal parts)."""

    num_bottoms = (1, 1)
    num_tops = (1, None)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.slice_param
        shape = self.bottom_shapes[0]
        self.axis = _legacy_or_axis(self, p, "slice_dim", len(shape), "slice_param")
        self.points = [int(v) for v in p.slice_point]
        self.n_tops = len(param.top)
        if self.points and len(self.points) != self.n_tops - 1:
            raise self.error(f"slice_param.slice_point must give exactly (number of tops - 1) = "
                             f"{self.n_tops - 1} points, got {len(self.points)}")
        prev = 0
        for v in self.points:
            if v <= prev:
                raise self.error(f"slice_param.slice_point must be strictly increasing and > 0, got {self.points}")
            prev = v
        self.sizes(int(shape[self.axis]))

    def sizes(self, dim: int) -> List[int]:
        """Sizes of the tops along the slice axis for a bottom of ``dim`` there."""
        n = self.n_tops
        if self.points:
            bounds = [0] + self.points + [dim]
            sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
            if sizes[-1] <= 0:
                raise self.error(f"slice_point {self.points} must be smaller than the size {dim} of axis "
                                 f"{self.axis}", ShapeError)
            return sizes
        if dim % n:
            raise self.error(f"cannot split axis {self.axis} of size {dim} into {n} equal parts "
                             "(give slice_point)", ShapeError)
        return [dim // n] * n

    def forward(self, x):
        if x.dim() <= self.axis:
            raise self.error(f"bottom of shape {list(x.shape)} has no axis {self.axis}", ShapeError)
        if self.n_tops == 1:
            return (x.view_as(x),)
        return tuple(torch.split(x, self.sizes(int(x.shape[self.axis])), dim=self.axis))


@register_layer("Split")
class SplitLayer(Layer):
    """``Split``: every top is the bottom (backward sums the tops' gradients)."""

    num_bottoms = (1, 1)
    num_tops = (1, None)

    def forward(self, x):
        return tuple(x.view_as(x) for _ in range(self.n_listed_tops))


@register_layer("Silence")
class SilenceLayer(Layer):
    """``Silence``: consumes its bottoms, produces no top."""

    num_bottoms = (1, None)
    num_tops = (0, 0)

    def forward(self, *xs):
        return ()


@register_layer("Flatten")
class FlattenLayer(Layer):
    """``Flatten``: merge axes ``axis..end_axis`` (defaults 1 and -1) into one."""

    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.flatten_param
        self._axis, self._end = int(p.axis), int(p.end_axis)
        self.top_shape(self.bottom_shapes[0])

    def top_shape(self, shape) -> tuple:
        nd = len(shape)
        a = canonical_axis(self, self._axis, nd, "flatten_param.axis")
        e = canonical_axis(self, self._end, nd, "flatten_param.end_axis")
        if e < a:
            raise self.error(f"flatten_param.end_axis ({e}) must not come before axis ({a})")
        return tuple(shape[:a]) + (_count(shape, a, e + 1),) + tuple(shape[e + 1:])

    def forward(self, x):
        return (x.reshape(self.top_shape(tuple(x.shape))),)


@register_layer("Reshape")
class ReshapeLayer(Layer):
    """``Reshape``: replace bottom axes ``[axis, axis + num_axes)`` by ``reshape_param.shape``.

    In ``shape``, ``0`` copies the bottom dimension at the same position
    (``axis + i``) and one ``-1`` is inferred from the element count.
    """

    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        self._axis = int(p.axis)
        self._num_axes = int(p.num_axes)
        if sum(1 for d in self.dims if d == -1) > 1:
            raise self.error(f"reshape_param.shape {self.dims} contains more than one -1 (at most one may be inferred)")
        bad = [d for d in self.dims if d < -1]
        if bad:
            raise self.error(f"reshape_param.shape {self.dims}: dimensions must be >= -1")
        if self._num_axes < -1:
            raise self.error(f"reshape_param.num_axes must be >= -1, got {self._num_axes}")
        self.top_shape(self.bottom_shapes[0])

    def top_shape(self, shape) -> tuple:
        nd = len(shape)
        start = self._axis if self._axis >= 0 else nd + self._axis + 1
        if not 0 <= start <= nd:
            raise self.error(f"reshape_param.axis {self._axis} is out of range for a {nd}-D bottom")
        end = nd if self._num_axes == -1 else start + self._num_axes
        if end > nd:
            raise self.error(f"reshape_param: axis {start} + num_axes {self._num_axes} exceeds the bottom's "
                             f"{nd} axes ({list(shape)})", ShapeError)
        new: List[int] = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= nd:
                    raise self.error(f"reshape_param.shape dim {i} is 0 (copy) but the bottom {list(shape)} has no "
                                     f"axis {start + i}", ShapeError)
                new.append(int(shape[start + i]))
            else:
                new.append(d)
        count = _count(shape)
        full = list(shape[:start]) + new + list(shape[end:])
        if -1 in new:
            known = math.prod(d for d in full if d != -1)
            if known == 0 or count % known:
                raise self.error(f"cannot reshape bottom {list(shape)} ({count} elements) to {self._show(full)}: "
                                 f"the element count is not a multiple of {known}", ShapeError)
            full[full.index(-1)] = count // known
        if _count(full) != count:
            raise self.error(f"cannot reshape bottom {list(shape)} ({count} elements) to {full} "
                             f"({_count(full)} elements)", ShapeError)
        return tuple(full)

    @staticmethod
    def _show(full) -> str:
        return "[" + ", ".join("?" if d == -1 else str(d) for d in full) + "]"

    def forward(self, x):
        return (x.reshape(self.top_shape(tuple(x.shape))),)


@register_layer("Crop")
class CropLayer(Layer):
    """``Crop`` (BVLC): crop bottom 0 to bottom 1's shape from ``axis`` on, at ``offset``."""

    num_bottoms = (2, 2)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.crop_param
        self._axis = int(p.axis)
        self._offsets = [int(o) for o in p.offset]
        self.crop_spec(self.bottom_shapes[0], self.bottom_shapes[1])

    def crop_spec(self, s0, s1):
        """``[(start, size)]`` for every axis of bottom 0."""
        nd = len(s0)
        if len(s1) != nd:
            raise self.error(f"bottom 0 {list(s0)} and bottom 1 {list(s1)} must have the same number of axes",
                             ShapeError)
        axis = canonical_axis(self, self._axis, nd, "crop_param.axis")
        n_crop = nd - axis
        if len(self._offsets) not in (0, 1, n_crop):
            raise self.error(f"crop_param.offset must be given 0 times, once, or once per cropped axis "
                             f"({n_crop}), got {len(self._offsets)} values")
        spec = []
        for i in range(nd):
            if i < axis:
                spec.append((0, int(s0[i])))
                continue
            off = 0 if not self._offsets else self._offsets[0 if len(self._offsets) == 1 else i - axis]
            if int(s0[i]) - off < int(s1[i]):
                raise self.error(f"axis {i}: crop of size {s1[i]} at offset {off} does not fit in bottom 0's "
                                 f"size {s0[i]} (bottom 0 {list(s0)}, bottom 1 {list(s1)})", ShapeError)
            spec.append((off, int(s1[i])))
        return spec

    def forward(self, x, ref):
        spec = self.crop_spec(tuple(x.shape), tuple(ref.shape))
        idx = tuple(slice(a, a + n) for a, n in spec)
        return (x[idx],)


@register_layer("Tile")
class TileLayer(Layer):
    """``Tile``: repeat the block from ``axis`` on ``tiles`` times: ``top[o, t*D + r] = bottom[o, r]``."""

    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.tile_param
        if not p.HasField("tiles"):
            raise self.error("tile_param.tiles must be specified")
        self.tiles = positive_int(self, p.tiles, "tile_param.tiles")
        self._axis = int(p.axis)
        canonical_axis(self, self._axis, len(self.bottom_shapes[0]), "tile_param.axis")

    def forward(self, x):
        shape = tuple(x.shape)
        axis = canonical_axis(self, self._axis, len(shape), "tile_param.axis")
        outer, inner = _count(shape, 0, axis), _count(shape, axis)
        top_shape = shape[:axis] + (shape[axis] * self.tiles,) + shape[axis + 1:]
        y = x.reshape(outer, 1, inner).expand(outer, self.tiles, inner).reshape(top_shape)
        return (y,)
