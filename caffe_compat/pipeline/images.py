"""Reading images exactly as the fork's ``cv::imread`` did, and its per-sample transforms.

The fork's data layers read images with OpenCV (``ReadImageToCVMat`` ->
``cv::imread``) and transform them with ``DataTransformer``.  This module
reproduces both with Pillow and NumPy only (no OpenCV dependency):

Decoding (:func:`read_image`), 8-bit results:

* colour (``is_color``): ``H x W x 3`` **BGR** ``uint8`` (OpenCV order).  Grey
  images are replicated to three channels, palette images are looked up, an
  alpha channel is dropped without compositing (OpenCV ``IMREAD_COLOR``).
* grey (``is_color: false``): ``H x W`` ``uint8``, converted like OpenCV does
  for each format:

  - PNG with colour or a palette: libpng's ``png_set_rgb_to_gray(1, 0.299,
    0.587)``, i.e. ``(9797 R + 19234 G + 3737 B) >> 15`` (truncating), and the
    plain value where ``R == G == B``.  A **palette PNG label image therefore
    becomes the luminance of the palette colours, not the class index**
    (golden ``imagesegdata_crop65_palette_labels``): use index/grey PNGs such
    as ``SegmentationClassAug`` for labels.
  - JPEG with colour: libjpeg's own grey output (the Y channel), obtained with
    Pillow's JPEG draft mode.
  - other formats: OpenCV's ``cvtColor(BGR2GRAY)``
    ``(4899 R + 9617 G + 1868 B + 8192) >> 14``.
* 16-bit images are reduced to their high byte (libpng ``strip_16``).
* An EXIF orientation tag is applied, as OpenCV >= 3.1 ``imread`` does (the
  goldens' OpenCV 4.6); VOC images carry none.

Checked: Pillow (libjpeg-turbo) decodes the golden dataset's JPEGs to exactly
the pixels the fork's OpenCV 4.6 produced (``imagesegdata_crop513_pixel_jpg``:
max difference 0), and the palette-to-grey rule gives the fork's label values
exactly.  Other JPEG decoders (or libjpeg builds with a different IDCT) may
differ by a grey level or so; the tests compare JPEG pixels against the goldens
exactly and would show it.

Resizing (:func:`resize_linear`, :func:`resize_nearest`) reproduces OpenCV's
``cv::resize`` for 8-bit images: ``INTER_LINEAR`` with half-pixel centres and
OpenCV's 11-bit fixed-point weights and rounding, ``INTER_NEAREST`` with
``floor(x * src/dst)``.

Transforms (:func:`pad_bottom_right`, :func:`crop_offsets`,
:func:`to_caffe_data`) follow ``DataTransformer``: pad bottom/right only,
centre crop at TEST (``(H - crop) / 2``), random crop at TRAIN, optional
mirror, ``(pixel - mean[c]) * scale`` in the blob's float type (mean
subtracted *before* scaling), channel order BGR.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError

try:  # Pillow is a hard requirement of the data layers only.
    from PIL import Image, UnidentifiedImageError
except ImportError:  # pragma: no cover - exercised only without Pillow
    Image = None  # type: ignore[assignment]

#: ``INTER_RESIZE_COEF_BITS`` of OpenCV: bilinear weights are multiples of 1/2048.
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS

# EXIF orientation -> Pillow transpose operations (as ImageOps.exif_transpose).
_EXIF_ORIENTATION_TAG = 0x0112


def _require_pillow() -> None:
    if Image is None:  # pragma: no cover
        raise DataError("reading images needs Pillow: pip install pillow")


def _open(path: str, what: str):
    """Open an image file with clear errors (missing, not an image)."""
    _require_pillow()
    if not os.path.exists(path):
        raise DataError(f"cannot read {what} '{path}': the file does not exist")
    if os.path.isdir(path):
        raise DataError(f"cannot read {what} '{path}': it is a directory")
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise DataError(f"cannot read {what} '{path}': not a readable image file "
                        f"(unknown format or corrupt header)") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"cannot read {what} '{path}': {e}") from None
    except (OSError, ValueError, SyntaxError) as e:  # Pillow: ValueError("Truncated IHDR chunk") etc.
        raise DataError(f"cannot read {what} '{path}': {e}") from None


def _exif_orientation(im) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # malformed EXIF: OpenCV ignores it as well
        return 1


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an ``H x W [x C]`` array."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return np.swapaxes(arr, 0, 1)
    if orientation == 6:
        return np.swapaxes(arr, 0, 1)[:, ::-1]
    if orientation == 7:
        return np.swapaxes(arr, 0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.swapaxes(arr, 0, 1)[::-1]
    return arr


def image_size(path: str, what: str = "image") -> Tuple[int, int]:
    """``(height, width)`` of an image as ``imread`` would return it, from its header only."""
    with _open(path, what) as im:
        w, h = im.size
        if _exif_orientation(im) in (5, 6, 7, 8):
            h, w = w, h
    return int(h), int(w)


def _high_byte(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind in "ui" and a.dtype.itemsize >= 2:
        return (a.astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    raise DataError(f"unsupported pixel type {a.dtype}")


def _png_rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    # libpng png_do_rgb_to_gray, 8-bit, no gamma: coefficients from (0.299, 0.587)
    # as 29900*32768/100000 = 9797, 58700*32768/100000 = 19234, blue = 32768 - both;
    # the sum is truncated; grey pixels (R == G == B) are copied.
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    gray = (9797 * r + 19234 * g + 3737 * b) >> 15
    return np.where((r == g) & (g == b), r, gray).astype(np.uint8)


def _cv_rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    # OpenCV cvtColor(BGR2GRAY) for 8-bit: fixed point with 14 bits, rounded.
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((4899 * r + 9617 * g + 1868 * b + (1 << 13)) >> 14).astype(np.uint8)


def _decode(im, is_color: bool, path: str, what: str) -> np.ndarray:
    fmt = (im.format or "").upper()
    mode = im.mode
    if not is_color and fmt == "JPEG" and mode in ("RGB", "YCbCr"):
        # libjpeg's grey output = the luma channel, exactly what Pillow's draft gives.
        im.draft("L", im.size)
        mode = im.mode
    im.load()
    if mode in ("1", "L"):
        gray = np.asarray(im.convert("L"))
        return np.repeat(gray[..., None], 3, axis=2) if is_color else gray
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = _high_byte(np.asarray(im))
        if gray.ndim != 2:  # pragma: no cover - defensive
            raise DataError(f"cannot read {what} '{path}': unexpected {mode} layout")
        return np.repeat(gray[..., None], 3, axis=2) if is_color else gray
    if mode == "F":
        raise DataError(f"cannot read {what} '{path}': floating-point images are not 8-bit images")
    if mode == "LA":
        gray = np.asarray(im.convert("L"))
        return np.repeat(gray[..., None], 3, axis=2) if is_color else gray
    # Colour sources: palette, RGB(A), CMYK, YCbCr, ...
    rgb = np.asarray(im.convert("RGB"))
    if is_color:
        return rgb[..., ::-1]
    if fmt == "PNG":
        return _png_rgb_to_gray(rgb)
    return _cv_rgb_to_gray(rgb)


def read_image(path: str, is_color: bool = True, new_height: int = 0, new_width: int = 0,
               what: str = "image") -> np.ndarray:
    """``ReadImageToCVMat(path, new_height, new_width, is_color)``.

    Returns a C-contiguous ``uint8`` array: ``H x W x 3`` BGR when ``is_color``,
    else ``H x W``.  When both ``new_height`` and ``new_width`` are > 0 the image
    is resized to that size with OpenCV's bilinear ``cv::resize`` (for label
    images too: their values get blended, as in the fork).

    Raises :class:`DataError` naming the file if it is missing, not an image,
    truncated or corrupt (OpenCV would return an empty image and the fork would
    abort or, for truncated JPEGs, read grey filler).
    """
    with _open(path, what) as im:
        orientation = _exif_orientation(im)
        try:
            arr = _decode(im, is_color, path, what)
        except DataError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read {what} '{path}': corrupt or truncated image data ({e})") from None
    arr = _apply_orientation(arr, orientation)
    if arr.size == 0:
        raise DataError(f"cannot read {what} '{path}': the image is empty ({arr.shape[1]}x{arr.shape[0]})")
    if new_height > 0 and new_width > 0:
        from .. import memory
        channels = arr.shape[2] if arr.ndim == 3 else 1
        # the resize works in int64 (two passes): refuse a target that cannot fit, before allocating
        memory.check_fits(2 * memory.nbytes((new_height, new_width, channels), 8),
                          f"{what} '{path}': resizing to {new_width}x{new_height}", memory.resolve_budget())
        arr = resize_linear(arr, new_width, new_height)
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------------------- resize
def _linear_taps(src: int, dst: int, clamp_weights: bool):
    """Source indices and fixed-point weights of OpenCV's INTER_LINEAR along one axis.

    OpenCV treats the two axes differently at the borders: horizontally a tap
    left of pixel 0 / right of the last pixel gets weight (1, 0) on the edge
    pixel; vertically the row indices are clamped but the weights are kept,
    so the edge row is used twice with weights (1 - f, f), each truncated
    separately in fixed point (this changes some border values by 1).
    """
    scale = 1.0 / (float(dst) / float(src))          # OpenCV: scale_x = 1 / inv_scale_x
    d = np.arange(dst, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)  # float fx = (float)((dx+0.5)*scale - 0.5)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        low = s < 0
        f[low] = 0
        s[low] = 0
        high = s >= src - 1
        f[high] = 0
        s[high] = src - 1
    s1 = np.clip(s + 1, 0, src - 1)
    s = np.clip(s, 0, src - 1)
    # saturate_cast<short>(float) rounds to nearest, ties to even (lrintf).
    w0 = np.rint((np.float32(1.0) - f) * np.float32(_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int64)
    return s, s1, w0, w1


def resize_linear(img: np.ndarray, new_width: int, new_height: int) -> np.ndarray:
    """``cv::resize(img, Size(new_width, new_height), INTER_LINEAR)`` for ``uint8`` images.

    Bit-exact emulation of OpenCV's generic 8-bit path: horizontal pass
    ``S0*a0 + S1*a1`` with 11-bit weights into int, vertical pass
    ``(((b0*(r0>>4))>>16) + ((b1*(r1>>4))>>16) + 2) >> 2``.  (OpenCV's exact
    2x down-scaling shortcut, INTER_AREA, gives the same values.)
    """
    if img.dtype != np.uint8:
        raise DataError(f"resize_linear expects uint8 pixels, got {img.dtype}")
    h, w = img.shape[:2]
    if new_width <= 0 or new_height <= 0:
        raise DataError(f"cannot resize a {w}x{h} image to {new_width}x{new_height}: sizes must be > 0")
    if (new_height, new_width) == (h, w):
        return img.copy()
    xs0, xs1, a0, a1 = _linear_taps(w, new_width, clamp_weights=True)
    ys0, ys1, b0, b1 = _linear_taps(h, new_height, clamp_weights=False)
    src = img.astype(np.int64)
    if src.ndim == 2:
        src = src[..., None]
    rows = src[:, xs0, :] * a0[None, :, None] + src[:, xs1, :] * a1[None, :, None]  # (h, W', C)
    r0 = rows[ys0] >> 4
    r1 = rows[ys1] >> 4
    out = (((b0[:, None, None] * r0) >> 16) + ((b1[:, None, None] * r1) >> 16) + 2) >> 2
    out = np.clip(out, 0, 255).astype(np.uint8)
    return out[..., 0] if img.ndim == 2 else out


def resize_nearest(img: np.ndarray, new_width: int, new_height: int) -> np.ndarray:
    """``cv::resize(..., INTER_NEAREST)``: source index ``min(floor(x * src/dst), src - 1)``."""
    h, w = img.shape[:2]
    if new_width <= 0 or new_height <= 0:
        raise DataError(f"cannot resize a {w}x{h} image to {new_width}x{new_height}: sizes must be > 0")
    fx = 1.0 / (float(new_width) / float(w))
    fy = 1.0 / (float(new_height) / float(h))
    xs = np.minimum(np.floor(np.arange(new_width) * fx).astype(np.int64), w - 1)
    ys = np.minimum(np.floor(np.arange(new_height) * fy).astype(np.int64), h - 1)
    return np.ascontiguousarray(img[ys][:, xs])


# ------------------------------------------------------------------------------------ transforms
def pad_bottom_right(img: np.ndarray, pad_h: int, pad_w: int, value) -> np.ndarray:
    """``cv::copyMakeBorder(img, 0, pad_h, 0, pad_w, BORDER_CONSTANT, value)``.

    ``value`` is a scalar or one value per channel (OpenCV's ``Scalar``: for a
    multi-channel image, channels beyond the given values get 0).
    """
    if pad_h <= 0 and pad_w <= 0:
        return img
    h, w = img.shape[:2]
    out_shape = (h + max(pad_h, 0), w + max(pad_w, 0)) + img.shape[2:]
    out = np.empty(out_shape, dtype=img.dtype)
    if img.ndim == 3:
        vals = np.zeros(img.shape[2], dtype=np.float64)
        given = np.atleast_1d(np.asarray(value, dtype=np.float64))
        n = min(len(given), img.shape[2])
        vals[:n] = given[:n]
        out[...] = vals.astype(img.dtype) if img.dtype.kind == "f" else _saturate(vals, img.dtype)
    else:
        v = float(np.atleast_1d(np.asarray(value, dtype=np.float64))[0])
        out[...] = v if img.dtype.kind == "f" else _saturate(np.array([v]), img.dtype)[0]
    out[:h, :w] = img
    return out


def _saturate(vals: np.ndarray, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.rint(vals), info.min, info.max).astype(dtype)


def saturate_u8(value: int) -> int:
    """OpenCV's ``saturate_cast<uchar>(int)``: clamp to [0, 255]."""
    return int(min(max(int(value), 0), 255))


def crop_offsets(height: int, width: int, crop_h: int, crop_w: int, train: bool, rand) -> Tuple[int, int]:
    """Crop offsets ``(h_off, w_off)``: random ``rand(H - crop + 1)`` at TRAIN, centre at TEST.

    ``rand(n)`` returns an int in ``[0, n)``; it is called for the height first,
    as in Caffe.  The centre offset is ``(H - crop) // 2`` (C division of
    non-negative numbers).
    """
    if train:
        return rand(height - crop_h + 1), rand(width - crop_w + 1)
    return (height - crop_h) // 2, (width - crop_w) // 2


def to_caffe_data(pixels: np.ndarray, mean: Optional[np.ndarray], scale: float, mirror: bool,
                  dtype=np.float32, mean_image: Optional[np.ndarray] = None) -> np.ndarray:
    """The final loop of ``DataTransformer``: ``(pixel - mean[c]) * scale`` as ``C x H x W``.

    Args:
        pixels: ``H x W x C`` (or ``H x W``) array of pixel values (uint8 or float64
            after padding); converted to ``dtype`` first, as Caffe casts to ``Dtype``.
        mean: per-channel means (already replicated to C values) or ``None``.
        scale: ``transform_param.scale`` (a float32 value).
        mirror: flip horizontally.
        dtype: float32 (Caffe's ``Dtype=float``) or float64.
        mean_image: ``C x H x W`` mean (``mean_file``) already cropped to the
            output window, used instead of ``mean``.

    All arithmetic happens in ``dtype`` (NumPy float32 is IEEE single, like the
    fork's SSE float code), so the results equal the fork's bit for bit.
    """
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    x = np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(dtype)
    if mean_image is not None:
        x = x - mean_image.astype(dtype)
    elif mean is not None:
        x = x - np.asarray(mean, dtype=np.float32).astype(dtype)[:, None, None]
    x = x * dtype(np.float32(scale))
    if mirror:
        x = x[:, :, ::-1]
    return np.ascontiguousarray(x)


def mean_values_for(mean_values: Sequence[float], channels: int) -> Optional[np.ndarray]:
    """Caffe's ``mean_values_`` for a C-channel image: 1 value replicated, or C values.

    Returns float32 values or ``None`` when no mean is given.  The caller has
    checked the count (1 or C).
    """
    if not len(mean_values):
        return None
    vals = np.asarray(list(mean_values), dtype=np.float32)
    if len(vals) == 1 and channels > 1:
        vals = np.repeat(vals, channels)
    return vals


def pad_value_for_image(mean: Optional[np.ndarray]) -> Tuple[float, ...]:
    """The image padding value ``Scalar(mean[0], mean[1], mean[2])`` (0 without a mean).

    With no ``mean_value`` the fork reads past an empty vector (undefined); the
    port pads with 0.
    """
    if mean is None:
        return (0.0,)
    return tuple(float(v) for v in mean[:3])


__all__ = [
    "read_image", "image_size", "resize_linear", "resize_nearest", "pad_bottom_right",
    "crop_offsets", "to_caffe_data", "mean_values_for", "pad_value_for_image", "saturate_u8",
]
