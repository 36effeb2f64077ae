"""DeepLab's ``Interp`` layer (bilinear resizing), as in the segaware fork (LAYERS.md §2.8).

Bottom ``(N, C, Hi, Wi)``, top ``(N, C, Ho, Wo)``; no learnable blobs.

``interp_param``: ``height``, ``width``, ``zoom_factor``, ``shrink_factor``,
``pad_beg``, ``pad_end``.  "Given" means written in the prototxt (proto2
``has``), even when equal to the default.

* Cropping: ``pad_beg`` and ``pad_end`` must be ``<= 0``; the effective input
  is ``Hi_eff = Hi + pad_beg + pad_end`` rows starting at row ``-pad_beg``, and
  the same for columns (``pad_beg`` is used for both axes).
* Output size, first matching rule (the fork's HEAD order, reproduced even
  where it looks odd):

  1. shrink given, zoom not: ``Ho = (Hi_eff - 1) // shrink + 1``;
  2. zoom given, shrink not: ``Ho = Hi_eff + (Hi_eff - 1) * (zoom - 1)``;
  3. height and width given: ``Ho = height``, ``Wo = width`` -- so a lone
     zoom/shrink **overrides** an explicit height/width, and height/width
     override a shrink+zoom pair;
  4. shrink and zoom given: shrink first, then zoom;
  5. otherwise: error (e.g. only ``height``).

* Resampling: align-corners bilinear with the fork's float32 source
  coordinates (see :mod:`caffe_compat.ops.interp`); a plain copy when the
  output size equals the (cropped) input size.
"""
from __future__ import annotations

from typing import Tuple

from ..errors import ShapeError
from ..ops.interp import interp2
from ._common import check_4d
from .base import Layer, register_layer


@register_layer("Interp")
class InterpLayer(Layer):
    """DeepLab bilinear interpolation with shrink/zoom/height-width sizing and negative-pad cropping."""

    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.interp_param
        self.pad_beg = int(p.pad_beg)
        self.pad_end = int(p.pad_end)
        if self.pad_beg > 0:
            raise self.error(f"interp_param.pad_beg must be <= 0 (only cropping is supported), got {self.pad_beg}")
        if self.pad_end > 0:
            raise self.error(f"interp_param.pad_end must be <= 0 (only cropping is supported), got {self.pad_end}")
        has_shrink, has_zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
        has_h, has_w = p.HasField("height"), p.HasField("width")
        self.shrink = int(p.shrink_factor)
        self.zoom = int(p.zoom_factor)
        self.height = int(p.height)
        self.width = int(p.width)
        if has_shrink and not has_zoom:
            self.rule = "shrink"
        elif has_zoom and not has_shrink:
            self.rule = "zoom"
        elif has_h and has_w:
            self.rule = "size"
        elif has_shrink and has_zoom:
            self.rule = "shrink_zoom"
        else:
            given = [n for n, f in (("height", has_h), ("width", has_w)) if f]
            raise self.error(
                "interp_param must give shrink_factor, zoom_factor, both of them, or both height and width "
                f"(given: {', '.join(given) or 'none of these'})")
        if self.rule in ("shrink", "shrink_zoom") and self.shrink < 1:
            raise self.error(f"interp_param.shrink_factor must be >= 1, got {self.shrink}")
        if self.rule in ("zoom", "shrink_zoom") and self.zoom < 1:
            raise self.error(f"interp_param.zoom_factor must be >= 1, got {self.zoom}")
        if self.bottom_shapes:
            check_4d(self, self.bottom_shapes[0])
            self.output_size(self.bottom_shapes[0][2], self.bottom_shapes[0][3])

    def output_size(self, h: int, w: int) -> Tuple[int, int, int, int]:
        """``(Hi_eff, Wi_eff, Ho, Wo)`` for an input of ``h x w`` pixels (ShapeError if not positive)."""
        he = h + self.pad_beg + self.pad_end
        we = w + self.pad_beg + self.pad_end
        if he <= 0 or we <= 0:
            raise self.error(
                f"cropped input size {he}x{we} (input {h}x{w}, pad_beg {self.pad_beg}, pad_end {self.pad_end}) "
                "must be positive", ShapeError)
        if self.rule == "shrink":
            ho, wo = (he - 1) // self.shrink + 1, (we - 1) // self.shrink + 1
        elif self.rule == "zoom":
            ho, wo = he + (he - 1) * (self.zoom - 1), we + (we - 1) * (self.zoom - 1)
        elif self.rule == "size":
            ho, wo = self.height, self.width
        else:
            ho, wo = (he - 1) // self.shrink + 1, (we - 1) // self.shrink + 1
            ho, wo = ho + (ho - 1) * (self.zoom - 1), wo + (wo - 1) * (self.zoom - 1)
        if ho <= 0 or wo <= 0:
            raise self.error(f"output size {ho}x{wo} must be positive", ShapeError)
        return he, we, ho, wo

    def forward(self, x):
        check_4d(self, x.shape)
        h, w = int(x.shape[2]), int(x.shape[3])
        he, we, ho, wo = self.output_size(h, w)
        b = -self.pad_beg
        if b or he != h or we != w:
            x = x[:, :, b:b + he, b:b + we]
        return (interp2(x, ho, wo),)
