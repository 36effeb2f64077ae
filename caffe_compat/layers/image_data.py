"""The list-driven image data layers: ImageSegData, ImageData, TwoImageData.

Each layer reads its list format and applies its own ``DataTransformer``
routine; the list, cursor, randomness and path handling are shared
(:mod:`.image_list`, whose docstring says how shapes, paths and randomness work).
None has bottoms or a backward.

Surprising fork behaviours reproduced here (see ``docs/data_layers.md``):

* images are **BGR**, mean subtracted **before** ``scale``;
* ImageSegData / TwoImageData pad **bottom/right only**, the image with the
  mean (0 after subtraction) and the label with ``ignore_label`` (TwoImageData:
  literal 255 in the first label channel, 0 in the others); TEST crops are
  centred *after* padding, so small images sit top-left;
* ``data_dim`` holds ``(min(top_H, rows), min(top_W, cols))`` of the image as
  read (before ``scale_factors``);
* ImageSegData ``label_type: NONE`` labels are all ``ignore_label``;
  ``IMAGE`` labels are ``atoi`` of the second token, saturated to 0..255;
* palette PNG labels are read as grey luminance, not class indices;
* ImageData (HEAD) does not pad: a crop larger than the image is an error
  (the fork CHECK-fails; ``vgg/test_voc_test`` with crop 513 aborts on VOC).
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from ..errors import DataError, NotSupportedError, ShapeError
from ..pipeline import images as _img
from ..pipeline import lists as _lists
from .base import register_layer
from .image_list import ImageListLayer


# =================================================================================== ImageSegData
@register_layer("ImageSegData")
class ImageSegDataLayer(ImageListLayer):
    """``ImageSegData`` (DeepLab; res configs): images + label maps from a list file.

    Tops (always 3; unlisted ones become Caffe's automatic tops):
        ``data``: ``(batch, C, crop_h, crop_w)`` (C = 3 if ``is_color`` else 1),
            ``(pixel_BGR - mean_value[c]) * scale``;
        ``label``: ``(batch, 1, crop_h, crop_w)`` label values as floats;
        ``data_dim``: ``(batch, 1, 1, 2)`` = ``(min(top_H, rows), min(top_W, cols))``
            of each image as read.

    Without a crop the size is fixed by the first listed image (as the fork
    fixes it at setup); a larger image later yields its top-left part (fork
    behaviour), a smaller one is an error (the fork reads out of bounds).

    List lines: ``image [label]`` per ``label_type`` (NONE: label all
    ``ignore_label``; IMAGE: constant ``atoi(second)``; PIXEL: label image,
    read as 8-bit grey).  See the module docstring for padding/crop rules.
    """

    num_tops = (3, 3)
    auto_tops = 3
    _LABEL_NONE, _LABEL_IMAGE, _LABEL_PIXEL = 0, 1, 2

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        idp, tp = param.image_data_param, param.transform_param
        if self.mean_file is not None:
            raise self.error("ImageSegData does not support transform_param.mean_file (use mean_value)")
        self.is_color = bool(idp.is_color)
        self.channels = 3 if self.is_color else 1
        self.label_type = int(idp.label_type)
        if self.label_type not in (0, 1, 2):
            raise self.error(f"image_data_param.label_type {self.label_type} is not NONE/IMAGE/PIXEL")
        self.ignore_label = int(idp.ignore_label)
        self.crop_h, self.crop_w = self._crop_hw(tp)
        self.scale_factors = [float(np.float32(s)) for s in tp.scale_factors]
        if any(not np.isfinite(s) or s <= 0 for s in self.scale_factors):
            raise self.error(f"transform_param.scale_factors must be positive, got {self.scale_factors}")
        self._setup_mean(self.channels)
        self.top_shapes()  # fail early if the shape cannot be known

    def _read_list(self):
        return _lists.read_seg_list(self.source, needs_second=self.label_type != self._LABEL_NONE,
                                    pixel_labels=self.label_type == self._LABEL_PIXEL)

    def _blob_hw(self) -> Tuple[int, int]:
        if self.crop_h > 0 and self.crop_w > 0:
            return self.crop_h, self.crop_w
        if self._first_hw is None:
            self._first_hw = self._first_image_hw()
        return self._first_hw

    def top_shapes(self) -> List[Tuple[int, ...]]:
        """Shapes of ``data``, ``label``, ``data_dim``."""
        h, w = self._blob_hw()
        b = self.batch_size
        return [(b, self.channels, h, w), (b, 1, h, w), (b, 1, 1, 2)]

    def _load_batch(self):
        shapes = self.top_shapes()
        lines = self._ensure_list()
        dt = self._np_dtype
        data = np.empty(shapes[0], dtype=dt)
        label = np.empty(shapes[1], dtype=dt)
        dim = np.empty(shapes[2], dtype=dt)
        blob_h, blob_w = shapes[0][2], shapes[0][3]
        for item in range(self.batch_size):
            name, second = lines[self._cursor]
            img = self._read(name, self.is_color, "image")
            rows, cols = img.shape[:2]
            dim[item, 0, 0, 0] = min(blob_h, rows)
            dim[item, 0, 0, 1] = min(blob_w, cols)
            if self.label_type == self._LABEL_PIXEL:
                seg = self._read(second, False, "label image")
            else:
                value = _lists.atoi(second) if self.label_type == self._LABEL_IMAGE else self.ignore_label
                seg = np.full((rows, cols), _img.saturate_u8(value), dtype=np.uint8)
            data[item], label[item, 0] = self._transform(img, seg, blob_h, blob_w, name, second)
            self._advance()
        return self._to_tensor(data), self._to_tensor(label), self._to_tensor(dim)

    def _transform(self, img, seg, blob_h, blob_w, name, second):
        """``DataTransformer::TransformImgAndSeg`` for one sample."""
        if seg.shape[:2] != img.shape[:2]:
            raise self.error(
                f"label image '{self._path(second)}' is {seg.shape[1]}x{seg.shape[0]} (WxH) but image "
                f"'{self._path(name)}' is {img.shape[1]}x{img.shape[0]}: they must have the same size",
                ShapeError)
        do_mirror = self.mirror and self._rand(2) == 1
        h, w = img.shape[:2]
        if self.scale_factors:
            s = self.scale_factors[self._rand(len(self.scale_factors))]
            if s != 1:
                # int *= float: float32 product, truncated toward zero
                h = int(np.float32(h) * np.float32(s))
                w = int(np.float32(w) * np.float32(s))
                if h <= 0 or w <= 0:
                    raise self.error(f"scale factor {s} shrinks image '{self._path(name)}' "
                                     f"({img.shape[1]}x{img.shape[0]}) to nothing", DataError)
                img = _img.resize_linear(img, w, h)
                seg = _img.resize_nearest(seg, w, h)
        pixels = img.astype(np.float64)
        pad_h, pad_w = max(self.crop_h - h, 0), max(self.crop_w - w, 0)
        if pad_h > 0 or pad_w > 0:
            pixels = _img.pad_bottom_right(pixels, pad_h, pad_w, _img.pad_value_for_image(self._mean))
            seg = _img.pad_bottom_right(seg, pad_h, pad_w, _img.saturate_u8(self.ignore_label))
            h, w = pixels.shape[:2]
        if self.crop_h > 0 and self.crop_w > 0:
            h_off, w_off = _img.crop_offsets(h, w, self.crop_h, self.crop_w, self.train_phase, self._rand)
        else:
            self._check_fits_batch(h, w, blob_h, blob_w, name, larger_ok=True)
            h_off = w_off = 0  # the fork copies the top-left blob_h x blob_w part
        pixels = pixels[h_off:h_off + blob_h, w_off:w_off + blob_w]
        seg = seg[h_off:h_off + blob_h, w_off:w_off + blob_w]
        data = _img.to_caffe_data(pixels, self._mean, self.scale, do_mirror, self._np_dtype)
        lab = seg.astype(self._np_dtype)
        if do_mirror:
            lab = lab[:, ::-1]
        return data, lab

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, source={self.source!r}, root_folder={self.root_folder!r}, "
                f"batch_size={self.batch_size}, crop={self.crop_h}x{self.crop_w}")


# ====================================================================================== ImageData
@register_layer("ImageData")
class ImageDataLayer(ImageListLayer):
    """``ImageData`` (standard Caffe at the fork's HEAD; ``vgg/test_voc_test``).

    Tops: ``data`` ``(batch, C, crop, crop)`` (or the first image's size per
    batch without a crop) and ``label`` ``(batch,)`` = the integer after each
    path.  List: ``path int`` pairs read as a token stream (reading stops at the
    first missing/non-integer label).  No padding: an image smaller than
    ``crop_size`` is an error, exactly where the fork CHECK-fails
    (``img_height >= crop_size``).  Without a crop every image of a batch must
    have the size of the batch's first image.  ``mean_file`` (binary
    BlobProto of the image size) or ``mean_value`` may be given.
    """

    num_tops = (2, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        idp, tp = param.image_data_param, param.transform_param
        self.is_color = bool(idp.is_color)
        self.channels = 3 if self.is_color else 1
        self.crop_size = int(tp.crop_size)
        self._setup_mean(self.channels)
        self.top_shapes()

    def _read_list(self):
        return _lists.read_image_label_list(self.source)

    def top_shapes(self) -> List[Tuple[int, ...]]:
        """Shapes of ``data`` and ``label`` (without a crop: from the next image's header)."""
        if self.crop_size > 0:
            h = w = self.crop_size
        else:
            if self._first_hw is None:
                self._first_hw = self._first_image_hw()
            h, w = self._first_hw
        return [(self.batch_size, self.channels, h, w), (self.batch_size,)]

    def _check_crop_fits(self, img: np.ndarray, name: str) -> None:
        h, w = img.shape[:2]
        if self.crop_size > h or self.crop_size > w:
            raise self.error(
                f"crop_size {self.crop_size} is larger than image '{self._path(name)}' ({w}x{h}): "
                "ImageData does not pad (the fork aborts with 'Check failed: img_height >= crop_size'); "
                "use ImageSegData, which pads with the mean, or a smaller crop_size", ShapeError)

    def _load_batch(self):
        lines = self._ensure_list()
        dt = self._np_dtype
        first = self._read(lines[self._cursor][0], self.is_color, "image")
        self._check_crop_fits(first, lines[self._cursor][0])
        bh, bw = (self.crop_size, self.crop_size) if self.crop_size > 0 else first.shape[:2]
        self._first_hw = None
        data = np.empty((self.batch_size, self.channels, bh, bw), dtype=dt)
        label = np.empty((self.batch_size,), dtype=dt)
        for item in range(self.batch_size):
            name, lab = lines[self._cursor]
            img = first if item == 0 else self._read(name, self.is_color, "image")
            data[item] = self._transform(img, bh, bw, name)
            label[item] = lab
            self._advance()
        return self._to_tensor(data), self._to_tensor(label)

    def _transform(self, img, bh, bw, name):
        """``DataTransformer::Transform(cv::Mat)`` (HEAD) for one image."""
        self._check_crop_fits(img, name)
        h, w = img.shape[:2]
        if self.crop_size <= 0:
            self._check_fits_batch(h, w, bh, bw, name)
        do_mirror = self.mirror and self._rand(2) == 1
        if self.crop_size > 0:
            h_off, w_off = _img.crop_offsets(h, w, bh, bw, self.train_phase, self._rand)
        else:
            h_off = w_off = 0
        mean_img = self._mean_window(self.channels, h, w, h_off, w_off, bh, bw)
        window = img[h_off:h_off + bh, w_off:w_off + bw]
        return _img.to_caffe_data(window, self._mean, self.scale, do_mirror, self._np_dtype, mean_img)


# =================================================================================== TwoImageData
@register_layer("TwoImageData")
class TwoImageDataLayer(ImageListLayer):
    """``TwoImageData`` (earlier commit ``8034f38``; vgg/embs train and test configs).

    Not present at the fork's HEAD; defined here from the earlier commit's
    ``two_image_data_layer.cpp`` and ``DataTransformer::TransformBoth``.

    List: ``image_path label_path`` pairs (token stream).  Tops:
        ``data``: ``(batch, C1, crop, crop)``, C1 = 3 if ``first_is_color``
            (default true) else 1, ``(pixel_BGR - mean) * scale``;
        ``label`` (optional second top): ``(batch, C2, crop, crop)``, C2 = 3 if
            ``second_is_color`` (default false) else 1, the raw pixel values
            (all channels, BGR order for colour).
    Without a crop, the sizes are those of the batch's first image/label.

    Per sample (one decision shared by image and label): mirror (if
    ``mirror``); if ``crop_size`` exceeds the image, pad bottom/right (image
    with ``mean_value[0..2]``, label with 255 in channel 0 and 0 in the others,
    the fork's ``Scalar(255)``); crop (random at TRAIN, centred at TEST);
    data = ``(pixel - mean) * scale``.  Image and label must have the same size.
    No ``scale_factors``, no ``ignore_label``.  With a single top only ``data``
    is produced (the fork's setup indexes the missing second top).
    """

    num_tops = (1, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        tp = param.transform_param
        tip = param.two_image_data_param
        self.first_is_color = bool(tip.first_is_color)
        self.second_is_color = bool(tip.second_is_color)
        self.channels = 3 if self.first_is_color else 1
        self.label_channels = 3 if self.second_is_color else 1
        self.crop_size = int(tp.crop_size)
        if tp.HasField("crop_height") or tp.HasField("crop_width"):
            raise self.error("TwoImageData supports crop_size only (not crop_height/crop_width)")
        self._setup_mean(self.channels)
        self.with_label = len(param.top) >= 2
        self.top_shapes()

    def _read_list(self):
        return _lists.read_pair_list(self.source)

    def top_shapes(self) -> List[Tuple[int, ...]]:
        b = self.batch_size
        if self.crop_size > 0:
            dh = dw = lh = lw = self.crop_size
        else:
            if self._first_hw is None:
                self._first_hw = (self._first_image_hw(0), self._first_image_hw(1))
            (dh, dw), (lh, lw) = self._first_hw
        shapes = [(b, self.channels, dh, dw), (b, self.label_channels, lh, lw)]
        return shapes if self.with_label else shapes[:1]

    def _load_batch(self):
        lines = self._ensure_list()
        dt = self._np_dtype
        b = self.batch_size
        name0, lname0 = lines[self._cursor]
        img0 = self._read(name0, self.first_is_color, "image")
        lab0 = self._read(lname0, self.second_is_color, "label image")
        if self.crop_size > 0:
            dh = dw = lh = lw = self.crop_size
        else:
            (dh, dw), (lh, lw) = img0.shape[:2], lab0.shape[:2]
        self._first_hw = None
        data = np.empty((b, self.channels, dh, dw), dtype=dt)
        label = np.empty((b, self.label_channels, lh, lw), dtype=dt)
        for item in range(b):
            name, lname = lines[self._cursor]
            if item == 0:
                img, lab = img0, lab0
            else:
                img = self._read(name, self.first_is_color, "image")
                lab = self._read(lname, self.second_is_color, "label image")
            data[item], label[item] = self._transform(img, lab, dh, dw, name, lname)
            self._advance()
        out = (self._to_tensor(data), self._to_tensor(label))
        return out if self.with_label else out[:1]

    def _transform(self, img, lab, bh, bw, name, lname):
        """``DataTransformer::TransformBoth`` (earlier commit) for one pair."""
        h, w = img.shape[:2]
        if lab.shape[:2] != (h, w):
            raise self.error(
                f"label image '{self._path(lname)}' is {lab.shape[1]}x{lab.shape[0]} (WxH) but image "
                f"'{self._path(name)}' is {w}x{h}: they must have the same size", ShapeError)
        do_mirror = self.mirror and self._rand(2) == 1
        pixels = img.astype(np.float64)
        pad_h, pad_w = max(self.crop_size - h, 0), max(self.crop_size - w, 0)
        padded = pad_h > 0 or pad_w > 0
        if padded:
            if self.mean_file is not None:
                # The fork then indexes the mean with the padded size (reading past it).
                raise self.error(f"image '{self._path(name)}' ({w}x{h}) is smaller than crop_size "
                                 f"{self.crop_size}: padding together with mean_file is not supported "
                                 "(the fork mis-indexes the mean there); use mean_value", NotSupportedError)
            pixels = _img.pad_bottom_right(pixels, pad_h, pad_w, _img.pad_value_for_image(self._mean))
            lab = _img.pad_bottom_right(lab, pad_h, pad_w, 255)  # Scalar(255): channel 0 only
        ph, pw = pixels.shape[:2]
        if self.crop_size > 0:
            h_off, w_off = _img.crop_offsets(ph, pw, bh, bw, self.train_phase, self._rand)
        else:
            self._check_fits_batch(ph, pw, bh, bw, name)
            h_off = w_off = 0
        mean_img = self._mean_window(self.channels, h, w, h_off, w_off, bh, bw)
        window = pixels[h_off:h_off + bh, w_off:w_off + bw]
        data = _img.to_caffe_data(window, self._mean, self.scale, do_mirror, self._np_dtype, mean_img)
        lwin = lab[h_off:h_off + bh, w_off:w_off + bw]
        if lwin.ndim == 2:
            lwin = lwin[..., None]
        label = np.ascontiguousarray(lwin.transpose(2, 0, 1)).astype(self._np_dtype)
        if do_mirror:
            label = label[:, :, ::-1]
        return data, label


__all__ = ["ImageSegDataLayer", "ImageDataLayer", "TwoImageDataLayer"]
