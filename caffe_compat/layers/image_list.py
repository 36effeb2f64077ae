"""The machinery shared by the list-driven image data layers (:mod:`.image_data`).

List file, cursor, shuffling, ``rand_skip``, paths, means, crops and the
net-generator randomness; the layers themselves add their list format, top
shapes and ``DataTransformer`` routine.

Shape inference never reads data: inside :func:`~caffe_compat.layers.base.in_shape_pass`
the image layers return empty ``meta`` tensors whose shapes come from their
parameters (``batch_size``, ``crop_size`` or ``crop_height``/``crop_width``,
channels from ``is_color``).  Only when no crop (and no ``new_height``/
``new_width``) is given does the output size depend on the data; then the
first listed image's *header* is read, and a clear error says that
``crop_size`` is needed if it cannot be.

Paths: ``source`` and ``root_folder`` are used as given, relative to the
current working directory (the fork's scripts run from ``scripts/``);
``root_folder`` is **prepended verbatim** to each list entry
(``"/data/VOC2012" + "/JPEGImages/x.jpg"``).  The list is read on first use,
not at construction, so a net can be built (and its shapes inspected) where the
data is absent.  ``set_source()`` overrides the prototxt's paths at run time
(``--list`` / ``--root`` of the CLI).

Randomness (TRAIN crops, mirror, ``scale_factors``, ``shuffle``, ``rand_skip``)
is drawn from the net's seeded ``torch.Generator`` (``BuildContext.generator``):
reproducible for a given seed, but **not** Caffe's Boost mt19937 stream, so a
TRAIN batch cannot equal the fork's bit for bit; the distributions are the
same (``rand() % n`` choices, one mirror decision per sample shared by image and
label).  The port draws a random number wherever one is needed; the fork's
transformer has no RNG (and aborts) when it needs one without ``mirror`` or a
TRAIN ``crop_size`` (e.g. ``scale_factors`` with ``crop_height``/``crop_width``
only).
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

import numpy as np
import torch

from .. import schema
from ..errors import DataError, ShapeError
from ..pipeline import images as _img
from ..pipeline import lists as _lists
from ._common import meta_empty
from .base import Layer, in_shape_pass

log = logging.getLogger(__name__)


def _np_dtype(dtype: torch.dtype):
    return np.float64 if dtype == torch.float64 else np.float32


class ImageListLayer(Layer):
    """Shared machinery of the list-driven image layers (list, cursor, RNG, paths)."""

    num_bottoms = (0, 0)
    exportable = False  # reads files
    _list_kind = ""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        idp = param.image_data_param
        tp = param.transform_param
        self.source: str = idp.source
        self.root_folder: str = idp.root_folder
        self.batch_size = int(idp.batch_size)
        if self.batch_size <= 0:
            raise self.error(f"image_data_param.batch_size must be positive, got {self.batch_size}")
        self.shuffle = bool(idp.shuffle)
        self.rand_skip = int(idp.rand_skip)
        self.new_height, self.new_width = int(idp.new_height), int(idp.new_width)
        if not ((self.new_height == 0 and self.new_width == 0) or (self.new_height > 0 and self.new_width > 0)):
            raise self.error("image_data_param: new_height and new_width must be set together "
                             f"(got {self.new_height} and {self.new_width})")
        self.scale = float(tp.scale)
        self.mirror = bool(tp.mirror)
        self.mean_values = [float(v) for v in tp.mean_value]
        self.mean_file = tp.mean_file if tp.HasField("mean_file") else None
        if self.mean_file is not None and self.mean_values:
            raise self.error("transform_param: cannot specify mean_file and mean_value at the same time")
        self.train_phase = str(ctx.phase).upper() == "TRAIN"
        self._np_dtype = _np_dtype(ctx.dtype)
        self._lines: Optional[list] = None
        self._cursor = 0
        self._mean_image: Optional[np.ndarray] = None
        #: the size(s) taken from the first listed image(s) when there is no crop (cleared by reset)
        self._first_hw: Optional[tuple] = None

    # ---------------------------------------------------------------- configuration helpers
    def _setup_mean(self, channels: int) -> None:
        """Check the ``mean_value`` count against ``channels`` and keep the per-channel means."""
        if self.mean_values and len(self.mean_values) not in (1, channels):
            raise self.error(f"transform_param: give 1 mean_value or one per channel ({channels}), "
                             f"got {len(self.mean_values)}")
        self._mean = _img.mean_values_for(self.mean_values, channels)

    # ---------------------------------------------------------------- list and cursor
    def _read_list(self) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def _rand(self, n: int) -> int:
        """Caffe's ``Rand(n)``: uniform in ``[0, n)``."""
        if n <= 0:
            raise self.error(f"internal: random choice among {n} values", DataError)
        return int(torch.randint(n, (1,), generator=self.ctx.generator).item())

    def _shuffle_lines(self) -> None:
        perm = torch.randperm(len(self._lines), generator=self.ctx.generator).tolist()
        self._lines = [self._lines[i] for i in perm]

    def _load_list(self) -> list:
        """Read (shuffle, skip) the list if needed; raises bare :class:`DataError`."""
        if self._lines is None:
            lines = list(self._read_list())
            cursor = 0
            self._lines = lines
            if self.shuffle:
                self._shuffle_lines()
            if self.rand_skip:
                skip = self._rand(self.rand_skip)
                if skip >= len(lines):
                    self._lines = None
                    raise DataError(f"rand_skip drew {skip} but the list '{self.source}' has only "
                                    f"{len(lines)} entries (not enough points to skip)")
                cursor = skip
            self._cursor = cursor
            log.info("layer '%s': %d entries from '%s'", self.name, len(self._lines), self.source)
        return self._lines

    def _ensure_list(self) -> list:
        try:
            return self._load_list()
        except DataError as e:
            raise self.error(str(e), DataError) from None

    def _advance(self) -> None:
        self._cursor += 1
        if self._cursor >= len(self._lines):
            self._cursor = 0
            if self.shuffle:
                self._shuffle_lines()

    @property
    def num_items(self) -> int:
        """Number of entries in the list file (reads it on first use)."""
        return len(self._ensure_list())

    @property
    def cursor(self) -> int:
        """Index (into the possibly shuffled list) of the next entry to read."""
        return self._cursor

    def set_source(self, source: Optional[str] = None, root_folder: Optional[str] = None) -> None:
        """Override the list file and/or ``root_folder`` (e.g. the CLI's ``--list``/``--root``).

        The list is re-read (and re-shuffled / re-skipped) on next use and the
        cursor restarts at its beginning.
        """
        if source is not None:
            self.source = os.fspath(source)
        if root_folder is not None:
            self.root_folder = os.fspath(root_folder)
        self.reset()

    def reset(self) -> None:
        """Forget the list and the cursor; the next forward starts from the top of the list."""
        self._lines = None
        self._cursor = 0
        self._first_hw = None

    # ---------------------------------------------------------------- batches
    def top_shapes(self) -> List[Tuple[int, ...]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load_batch(self):  # pragma: no cover - abstract
        """Read the batch at the cursor (advancing it) as top tensors."""
        raise NotImplementedError

    def _read_batch(self, *bottoms):
        """The batch at the cursor; empty meta tops of :meth:`top_shapes` during the net's shape pass."""
        if bottoms:
            raise self.error(f"takes no bottoms, got {len(bottoms)}")
        if in_shape_pass():
            return tuple(meta_empty(s, self.ctx.dtype) for s in self.top_shapes())
        return self._load_batch()

    def forward(self, *bottoms):
        """The next batch: a batch given to :meth:`feed` if any, else read at the cursor."""
        fed = getattr(self, "_fed", None)
        if fed is not None and not in_shape_pass():
            self._fed = None
            n = len(self._ensure_list())
            self._cursor = (self._cursor + self.batch_size) % n
            return fed
        return self._read_batch(*bottoms)

    def read_batch_at(self, start: int):
        """The batch whose first entry is list index ``start`` (wrapping), without moving the cursor.

        Deterministic in TEST phase without ``shuffle``, so a ``DataLoader`` can
        prepare batches in worker processes (``caffe-compat test``).
        """
        lines = self._ensure_list()
        saved = self._cursor
        self._cursor = start % len(lines)
        try:
            return tuple(t.detach() for t in self._read_batch())
        finally:
            self._cursor = saved

    def feed(self, tops) -> None:
        """Make the next forward return ``tops`` (a batch from :meth:`read_batch_at`) and advance the cursor."""
        self._fed = tuple(tops)

    def _path(self, name: str) -> str:
        return _lists.join_root(self.root_folder, name)

    def _read(self, name: str, is_color: bool, what: str) -> np.ndarray:
        try:
            return _img.read_image(self._path(name), is_color, self.new_height, self.new_width, what=what)
        except DataError as e:
            raise self.error(str(e), DataError) from None

    def _first_image_hw(self, index_in_entry: int = 0) -> Tuple[int, int]:
        """``(H, W)`` the first entry's image would have after reading (header only)."""
        if self.new_height > 0:
            return self.new_height, self.new_width
        try:
            lines = self._load_list()
            name = lines[self._cursor][index_in_entry]
            return _img.image_size(self._path(name), "image" if index_in_entry == 0 else "label image")
        except DataError as e:
            raise self.error(
                "without transform_param.crop_size (or new_height/new_width) the output size is that "
                f"of the first listed image, which cannot be read here ({e}); give crop_size to build "
                "the net without the data") from None

    def _check_fits_batch(self, h: int, w: int, batch_h: int, batch_w: int, name: str,
                          larger_ok: bool = False) -> None:
        """Without a crop the batch is sized from its first image: refuse an image of another size
        (``larger_ok``: only a smaller one; the caller then takes the top-left part)."""
        if (h, w) == (batch_h, batch_w) or (larger_ok and h >= batch_h and w >= batch_w):
            return
        rule = ("images smaller than the first one are not allowed" if larger_ok
                else "all images of a batch must have the same size")
        raise self.error(f"image '{self._path(name)}' is {w}x{h} but the batch is {batch_w}x{batch_h}, "
                         f"sized from the batch's first image (no crop_size given): {rule}", ShapeError)

    def _load_mean_file(self) -> np.ndarray:
        """``mean_file``: a binary BlobProto -> ``C x H x W`` float32 (image 0 of the blob)."""
        if self._mean_image is None:
            path = self.mean_file
            if not os.path.exists(path):
                raise self.error(f"mean_file '{path}' does not exist", DataError)
            bp = schema.BlobProto()
            try:
                with open(path, "rb") as f:
                    bp.ParseFromString(f.read())
            except Exception as e:  # protobuf DecodeError and friends
                raise self.error(f"mean_file '{path}' is not a binary BlobProto ({e})", DataError) from None
            if any(bp.HasField(k) for k in ("num", "channels", "height", "width")):
                shape = (bp.num, bp.channels, bp.height, bp.width)
            else:
                shape = tuple(int(d) for d in bp.shape.dim)
            if len(shape) != 4:
                shape = (1,) * (4 - len(shape)) + tuple(shape) if len(shape) < 4 else shape
            if len(shape) != 4:
                raise self.error(f"mean_file '{path}' has a {len(shape)}-axis blob; 4 axes needed", DataError)
            vals = np.asarray(bp.double_data if len(bp.double_data) else bp.data, dtype=np.float64)
            if vals.size != int(np.prod(shape)):
                raise self.error(f"mean_file '{path}': {vals.size} values for shape {list(shape)}", DataError)
            self._mean_image = vals.astype(np.float32).reshape(shape)[0]
        return self._mean_image

    def _mean_window(self, channels: int, img_h: int, img_w: int, h_off: int, w_off: int,
                     h: int, w: int) -> Optional[np.ndarray]:
        if self.mean_file is None:
            return None
        m = self._load_mean_file()
        if m.shape != (channels, img_h, img_w):
            raise self.error(f"mean_file is {list(m.shape)} (C, H, W) but the image is "
                             f"{[channels, img_h, img_w]}: they must be equal", ShapeError)
        return m[:, h_off:h_off + h, w_off:w_off + w]

    def _to_tensor(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return t if t.dtype == self.ctx.dtype else t.to(self.ctx.dtype)

    def _crop_hw(self, tp) -> Tuple[int, int]:
        """Caffe's crop parsing: ``crop_size`` or both ``crop_height``/``crop_width`` (fork-only)."""
        has_h, has_w, has_s = tp.HasField("crop_height"), tp.HasField("crop_width"), tp.HasField("crop_size")
        if not ((not has_s and has_h and has_w) or (not has_h and not has_w)):
            raise self.error("transform_param: specify either crop_size or both crop_height and crop_width")
        if has_h and has_w:
            return int(tp.crop_height), int(tp.crop_width)
        return int(tp.crop_size), int(tp.crop_size)
