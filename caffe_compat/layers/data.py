"""Data-producing layers (Input, DummyData, ImageSegData, ImageData, TwoImageData) and MatWrite.

None of these layers has bottoms that carry gradient, and none has a backward.

Shape inference never reads data: inside :func:`~caffe_compat.layers.base.in_shape_pass`
the image layers return empty ``meta`` tensors whose shapes come from their
parameters (``batch_size``, ``crop_size`` or ``crop_height``/``crop_width``,
channels from ``is_color``).  Only when no crop (and no ``new_height``/
``new_width``) is given does the output size depend on the data; then the
first listed image's *header* is read, and a clear error says that
``crop_size`` is needed if it cannot be.  MatWrite writes nothing in a shape
pass and does not count it as an iteration.

Paths: ``source``, ``root_folder`` and MatWrite's ``prefix`` are used as given,
relative to the current working directory (the fork's scripts run from
``scripts/``); ``root_folder`` is **prepended verbatim** to each list entry
(``"/data/VOC2012" + "/JPEGImages/x.jpg"``).  The list is read on first use,
not at construction, so a net can be built (and its shapes inspected) where the
data is absent.  ``set_source()`` / ``set_prefix()`` override the prototxt's
paths at run time (``--list`` / ``--root`` of the CLI).

Randomness (TRAIN crops, mirror, ``scale_factors``, ``shuffle``, ``rand_skip``)
is drawn from the net's seeded ``torch.Generator`` (``BuildContext.generator``):
reproducible for a given seed, but **not** Caffe's Boost mt19937 stream, so a
TRAIN batch cannot equal the fork's bit for bit; the distributions are the
same (``rand() % n`` choices, one mirror decision per sample shared by image and
label).  The port draws a random number wherever one is needed; the fork's
transformer has no RNG (and aborts) when it needs one without ``mirror`` or a
TRAIN ``crop_size`` (e.g. ``scale_factors`` with ``crop_height``/``crop_width``
only).

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
  (the fork CHECK-fails; ``vgg/test_voc_test`` with crop 513 aborts on VOC);
* the fork zeroes element 0 of every net output at the start of each
  forward; for a constant-filled DummyData top that is a net output this
  sticks (it is never refilled): see :meth:`DummyDataLayer.set_net_outputs`;
* the ``xy`` filler's batch bug (images n >= 1 are wrong), see
  :func:`caffe_compat.fillers.fill_xy`;
* MatWrite: ``prefix + id + "_blob_" + i + ".mat"`` (``id`` = line ``iter``
  of ``source``, else ``"iter_" + iter``), every ``period``-th forward, existing
  files skipped, variable ``data`` single ``[W H C N]``.
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import schema
from ..errors import DataError, NetError, NotSupportedError, ShapeError
from ..pipeline import images as _img
from ..pipeline import lists as _lists
from ..pipeline import matio as _matio
from .base import Layer, check_shape, in_shape_pass, register_layer

log = logging.getLogger(__name__)

_KNOWN_FILLERS = ("constant", "gaussian", "uniform", "xavier", "msra", "positive_unitball",
                  "bilinear", "xy")
#: fillers whose values do not change between forwards: a DummyData made only of them (the res
#: deploy net's ``xy`` grid) becomes a constant of an exported program; random ones would be frozen.
_DETERMINISTIC_FILLERS = ("constant", "xy")


def _np_dtype(dtype: torch.dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def _meta(shape, dtype) -> torch.Tensor:
    return torch.empty(shape, device="meta", dtype=dtype)


# =========================================================================================== Input
@register_layer("Input")
class InputLayer(Layer):
    """``Input`` (earlier commit only; ``*/deploy.prototxt``): declares net inputs.

    Tops: N >= 1.  ``input_param.shape`` is given 0 times, once (used for every
    top) or once per top.  The net treats the tops as **net inputs** fed by the
    caller and never calls :meth:`forward`.

    Attributes:
        shapes: list of ``tuple`` shapes, one per top (empty when
            ``input_param`` has no shape: Caffe leaves such tops unshaped, and
            :meth:`input_shapes_for` then raises, since the port needs a shape
            to build the net).
        feeds_net_inputs: ``True`` (how the net builder recognises input layers).
    """

    num_bottoms = (0, 0)
    num_tops = (1, None)
    feeds_net_inputs = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.input_param
        n_top, n_shape = len(param.top), len(p.shape)
        if n_shape not in (0, 1, n_top):
            raise self.error(f"input_param.shape must be given once, once per top or not at all: "
                             f"{n_top} tops vs. {n_shape} shapes")
        self.shapes: List[Tuple[int, ...]] = []
        if n_shape:
            for i in range(n_top):
                dims = p.shape[0 if n_shape == 1 else i].dim
                try:
                    self.shapes.append(check_shape(dims, f"top '{param.top[i]}'"))
                except ShapeError as e:
                    raise self.error(str(e), ShapeError) from None

    def input_shapes_for(self, n_tops: int) -> List[Tuple[int, ...]]:
        """The shapes of the ``n_tops`` net inputs this layer declares."""
        if not self.shapes:
            raise self.error("input_param gives no shape, so the shape of its tops is unknown; "
                             "add input_param { shape { dim: ... } }")
        if len(self.shapes) != n_tops:
            raise self.error(f"{len(self.shapes)} shapes for {n_tops} tops")
        return list(self.shapes)

    def forward(self, *bottoms):
        raise self.error("Input tops are net inputs: pass them to Net.forward(); "
                         "the layer itself computes nothing", NetError)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, shapes={self.shapes}"


# ======================================================================================= DummyData
@register_layer("DummyData")
class DummyDataLayer(Layer):
    """``DummyData``: tops filled by fillers (res configs: the ``xy`` coordinate grid).

    ``dummy_data_param``: ``shape`` (once or once per top) **or** the legacy
    ``num``/``channels``/``height``/``width`` (each once or once per top; not
    both styles); ``data_filler`` 0 times (constant 0), once (all tops) or once
    per top.  Tops whose filler type is ``"constant"`` are filled once at setup;
    all others are refilled at every forward (``xy`` rewrites identical values;
    random fillers draw new values from the net's generator).  The filled
    tensors are kept as (non-persistent) buffers; forward returns copies.

    Fork quirk: the fork's ``Net::Forward`` sets element 0 of every net-output
    blob to 0 before running the layers.  A constant DummyData top is never
    refilled, so if it is a net output its element 0 reads 0 after the first
    forward (golden ``dummydata_constant``).  The net reproduces this by calling
    :meth:`set_net_outputs` with the indices of this layer's tops that are net
    outputs.
    """

    num_bottoms = (0, 0)
    num_tops = (1, None)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.dummy_data_param
        n_top = len(param.top)
        n_fill = len(p.data_filler)
        if n_fill not in (0, 1, n_top):
            raise self.error(f"dummy_data_param: the number of data_filler must be 0, 1 or the number "
                             f"of tops ({n_top}); got {n_fill}")
        legacy = bool(len(p.num) or len(p.channels) or len(p.height) or len(p.width))
        shapes: List[Tuple[int, ...]] = []
        if legacy:
            if len(p.shape):
                raise self.error("dummy_data_param: give either shape or the legacy "
                                 "num/channels/height/width, not both")
            for fname in ("num", "channels", "height", "width"):
                k = len(getattr(p, fname))
                if k not in (1, n_top):
                    raise self.error(f"dummy_data_param: '{fname}' must be given once or once per top "
                                     f"({n_top}); given {k} times")
            for i in range(n_top):
                dims = [getattr(p, f)[0 if len(getattr(p, f)) == 1 else i]
                        for f in ("num", "channels", "height", "width")]
                shapes.append(tuple(int(d) for d in dims))
        else:
            if len(p.shape) not in (1, n_top):
                raise self.error(f"dummy_data_param: 'shape' must be given once or once per top "
                                 f"({n_top}); given {len(p.shape)} times")
            for i in range(n_top):
                shapes.append(tuple(int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim))
        self.shapes: List[Tuple[int, ...]] = []
        for i, s in enumerate(shapes):
            try:
                self.shapes.append(check_shape(s, f"top '{param.top[i]}'"))
            except ShapeError as e:
                raise self.error(str(e), ShapeError) from None

        # One filler for all tops (0/1 given) or one per top, as Caffe.
        if n_fill <= 1:
            fp = schema.FillerParameter()
            if n_fill == 1:
                fp.CopyFrom(p.data_filler[0])
            else:
                fp.type = "constant"
                fp.value = 0.0
            self._fillers = [fp]
        else:
            self._fillers = [p.data_filler[i] for i in range(n_top)]
        for j, fp in enumerate(self._fillers):
            if fp.type not in _KNOWN_FILLERS:
                raise self.error(f"data_filler {j}: unknown filler type {fp.type!r} "
                                 f"(known: {', '.join(_KNOWN_FILLERS)})")
        self._refill = [fp.type != "constant" for fp in self._fillers]
        for i, s in enumerate(self.shapes):
            fp = self._filler_of(i)
            if fp.type == "xy" and (len(s) != 4 or s[1] != 2):
                raise self.error(f"the xy filler needs a (N, 2, H, W) top, top '{param.top[i]}' has "
                                 f"shape {list(s)}", ShapeError)
        self._zero_first: set = set()
        for i, s in enumerate(self.shapes):
            self.register_buffer(f"top{i}", torch.empty(s, dtype=ctx.dtype, device=ctx.device),
                                 persistent=False)
            if not self._refill[self._filler_index(i)] and ctx.device.type != "meta":
                self._fill(i)  # constant tops: filled once, at setup

    def _filler_index(self, i: int) -> int:
        return i if len(self._fillers) > 1 else 0

    def _filler_of(self, i: int):
        return self._fillers[self._filler_index(i)]

    def _buf(self, i: int) -> torch.Tensor:
        return getattr(self, f"top{i}")

    def _fill(self, i: int) -> None:
        buf = self._buf(i)
        tmp = torch.empty(buf.shape, dtype=buf.dtype, device="cpu")
        from ..fillers import fill
        fill(tmp, self._filler_of(i), self.ctx.generator,
             where=f"layer '{self.name}' (DummyData) data_filler for top '{self.param.top[i]}'")
        with torch.no_grad():
            buf.copy_(tmp)

    def set_net_outputs(self, top_indices: Sequence[int]) -> None:
        """Tell the layer which of its tops are net outputs (see the class docstring).

        Constant-filled tops among them get element 0 set to 0 at every forward,
        as the fork's net does; refilled tops are unaffected (the refill
        overwrites the zero).
        """
        self._zero_first = {int(i) for i in top_indices}

    def export_refusal(self) -> Optional[str]:
        """Refused when a filler is random (its values would be frozen into the program)."""
        bad = sorted({fp.type for fp in self._fillers if fp.type not in _DETERMINISTIC_FILLERS})
        return f"DummyData with random filler {', '.join(bad)}" if bad else None

    def forward(self, *bottoms):
        if bottoms:
            raise self.error(f"takes no bottoms, got {len(bottoms)}")
        bufs = [self._buf(i) for i in range(len(self.shapes))]
        if in_shape_pass() or any(b.is_meta for b in bufs):
            return tuple(_meta(b.shape, b.dtype) for b in bufs)
        for i, buf in enumerate(bufs):
            if self._refill[self._filler_index(i)]:
                self._fill(i)
            elif i in self._zero_first and buf.numel():
                with torch.no_grad():
                    buf.view(-1)[0] = 0
        return tuple(b.clone() for b in bufs)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, shapes={self.shapes}, fillers={[f.type for f in self._fillers]}"


# ================================================================================ image data base
class _ImageListLayer(Layer):
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
            return tuple(_meta(s, self.ctx.dtype) for s in self.top_shapes())
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


# =================================================================================== ImageSegData
@register_layer("ImageSegData")
class ImageSegDataLayer(_ImageListLayer):
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
            if h < blob_h or w < blob_w:
                raise self.error(
                    f"image '{self._path(name)}' is {w}x{h} but the batch was sized {blob_w}x{blob_h} "
                    "from the first image (no crop_size given): images smaller than the first one are "
                    "not allowed", ShapeError)
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
class ImageDataLayer(_ImageListLayer):
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
        if self.crop_size <= 0 and (h, w) != (bh, bw):
            raise self.error(f"image '{self._path(name)}' is {w}x{h} but the batch is {bw}x{bh} "
                             "(taken from the batch's first image; without crop_size all images of a "
                             "batch must have the same size)", ShapeError)
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
class TwoImageDataLayer(_ImageListLayer):
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
            if (ph, pw) != (bh, bw):
                raise self.error(f"image '{self._path(name)}' is {pw}x{ph} but the batch is {bw}x{bh} "
                                 "(taken from the batch's first image; without crop_size all images of "
                                 "a batch must have the same size)", ShapeError)
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


# ======================================================================================= MatWrite
@register_layer("MatWrite")
class MatWriteLayer(Layer):
    """``MatWrite`` (DeepLab; test configs): writes each bottom to a MATLAB ``.mat`` file.

    Bottoms: >= 1 blobs of at most 4 axes.  Tops: none (forward returns ``()``).

    ``mat_write_param``: ``prefix`` (required), ``source`` (optional id list:
    first token per line, minus ``strip`` trailing characters), ``period``
    (default 1).  A counter ``iter`` starts at 0 and counts every real forward;
    when ``iter % period == 0`` bottom ``i`` goes to
    ``prefix + id[iter] + "_blob_" + i + ".mat"`` (with ``source``; running past
    the list is an error, as the fork's CHECK) or
    ``prefix + "iter_" + iter + "_blob_" + i + ".mat"``.  The prefix folder must
    exist (nothing is created).  A file that already exists is skipped, never
    overwritten.  Files appear atomically (temporary file + rename).  Content:
    variable ``data``, single, dims ``[W H C N]`` (see :mod:`caffe_compat.pipeline.matio`).
    A shape pass (or meta tensors) writes nothing and does not advance ``iter``.

    Attributes:
        iter: the number of forwards done.
        written, skipped: paths written / skipped (existing) by the last forward.
    """

    num_bottoms = (1, None)
    num_tops = (0, 0)
    exportable = False  # writes files

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.mat_write_param
        if not param.HasField("mat_write_param") or not p.HasField("prefix"):
            raise self.error("mat_write_param.prefix is required")
        self.prefix: str = p.prefix
        self.period = int(p.period)
        if self.period <= 0:
            raise self.error(f"mat_write_param.period must be positive, got {self.period}")
        self.source: Optional[str] = p.source if p.HasField("source") else None
        self.strip = int(p.strip)
        if self.source is not None and self.strip < 0:
            raise self.error(f"mat_write_param.strip cannot be negative, got {self.strip}")
        for i, s in enumerate(self.bottom_shapes):
            if len(s) > 4:
                raise self.error(f"bottom {i} has {len(s)} axes {list(s)}; MatWrite writes blobs of at "
                                 "most 4 axes", ShapeError)
        self.iter = 0
        self._ids: Optional[List[str]] = None
        self.written: List[str] = []
        self.skipped: List[str] = []

    # ---------------------------------------------------------------- run-time overrides
    def set_prefix(self, prefix: str) -> None:
        """Override ``mat_write_param.prefix`` (a folder needs its trailing ``/``, as in Caffe)."""
        self.prefix = os.fspath(prefix)

    def set_source(self, source: Optional[str], strip: Optional[int] = None) -> None:
        """Override the id list (``None``: name files ``iter_<n>``) and optionally ``strip``."""
        if strip is not None:
            if int(strip) < 0:
                raise self.error(f"strip cannot be negative, got {strip}")
            self.strip = int(strip)
        self.source = None if source is None else os.fspath(source)
        self._ids = None

    def reset(self) -> None:
        """Restart the counter at 0 (the next forward writes id 0 again)."""
        self.iter = 0

    @property
    def ids(self) -> Optional[List[str]]:
        """The ids of ``source`` (read on first use), or ``None`` without a source."""
        if self.source is None:
            return None
        if self._ids is None:
            try:
                self._ids = _lists.read_id_list(self.source, self.strip)
            except DataError as e:
                raise self.error(str(e), DataError) from None
        return self._ids

    def filename(self, iteration: int, bottom_index: int) -> str:
        """The file name the fork would use for ``iteration`` and bottom ``bottom_index``."""
        ids = self.ids
        if ids is not None:
            if iteration >= len(ids):
                raise self.error(f"forward {iteration + 1} but the id list '{self.source}' has only "
                                 f"{len(ids)} ids (the test ran for more iterations than ids listed)",
                                 DataError)
            stem = ids[iteration]
        else:
            stem = f"iter_{iteration}"
        return f"{self.prefix}{stem}_blob_{bottom_index}.mat"

    def forward(self, *bottoms):
        if in_shape_pass() or any(b.is_meta for b in bottoms):
            return ()
        for i, b in enumerate(bottoms):
            if b.dim() > 4:
                raise self.error(f"bottom {i} has shape {list(b.shape)}; MatWrite writes blobs of at "
                                 "most 4 axes", ShapeError)
        self.written, self.skipped = [], []
        if self.iter % self.period == 0:
            for i, b in enumerate(bottoms):
                fname = self.filename(self.iter, i)
                try:
                    done = _matio.write_blob_mat(fname, b, overwrite=False)
                except DataError as e:
                    raise self.error(str(e), DataError) from None
                if done:
                    self.written.append(fname)
                    log.info("layer '%s': wrote %s", self.name, fname)
                else:
                    self.skipped.append(fname)
                    log.info("layer '%s': %s exists, skipped", self.name, fname)
        self.iter += 1
        return ()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, prefix={self.prefix!r}, source={self.source!r}, period={self.period}"


__all__ = ["InputLayer", "DummyDataLayer", "ImageSegDataLayer", "ImageDataLayer", "TwoImageDataLayer",
           "MatWriteLayer"]
