"""``HDF5Data``: batches of rows read from HDF5 files (Caffe's standard layer).

``hdf5_data_param``: ``source`` is a text file listing HDF5 files, one per line
(paths relative to the working directory, as in Caffe); every file holds one
dataset per top, named like the top, all with the same number of rows (axis 0).
A forward returns ``batch_size`` consecutive rows per top as float tensors of
shape ``(batch_size, *dataset.shape[1:])``.  Rows are consumed cyclically in
file order, moving to the next file at the end of one and back to the first
after the last.  With ``shuffle: true`` the file order is permuted at every
pass over the list and the rows of a file every time it is loaded (drawn from
the net's seeded generator, so not Caffe's random stream).

Only one file is held in memory at a time, as in Caffe.  The net's shape pass
reads the first file's dataset headers only.  :meth:`data_state` /
:meth:`set_data_state` save and restore the read position (solver snapshots
use them so that a resumed run reads the same batches).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..errors import DataError
from .base import Layer, check_shape, in_shape_pass, register_layer

log = logging.getLogger(__name__)


def _read_list(source: str) -> List[str]:
    try:
        lines = Path(source).read_text().splitlines()
    except OSError as e:
        raise DataError(f"HDF5 list '{source}': cannot read: {e.strerror or e}") from None
    files = [ln.strip() for ln in lines if ln.strip()]
    if not files:
        raise DataError(f"HDF5 list '{source}' lists no files")
    return files


@register_layer("HDF5Data")
class HDF5DataLayer(Layer):
    """``HDF5Data`` (no bottoms; one top per dataset name).

    Attributes:
        files: the HDF5 file names of the list.
        batch_size: rows per top and forward.
        shuffle: permute files and rows.
    """

    num_bottoms = (0, 0)
    num_tops = (1, None)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.hdf5_data_param
        if not p.source:
            raise self.error("hdf5_data_param.source is not set")
        if p.batch_size < 1:
            raise self.error(f"hdf5_data_param.batch_size must be >= 1, got {p.batch_size}")
        self.source = p.source
        self.batch_size = int(p.batch_size)
        self.shuffle = bool(p.shuffle)
        self.tops = list(param.top)
        self.files = _read_list(self.source)
        self._row_shapes = [tuple(s[1:]) for s in self._dataset_shapes(self.files[0])]
        self._file_order = list(range(len(self.files)))
        self._file_pos = 0              # index into _file_order
        self._row = 0                   # index into _row_order
        self._row_order: List[int] = []
        self._data: Optional[List[np.ndarray]] = None
        self._rank, self._world, self._offset = 0, 1, 0
        if self.shuffle:
            self._file_order = self._perm(len(self.files))

    # -- reading ---------------------------------------------------------------
    def _open(self, name: str):
        import h5py
        try:
            return h5py.File(name, "r")
        except (OSError, ValueError) as e:
            raise self.error(f"cannot open HDF5 file '{name}' (listed in '{self.source}'): {e}", DataError) from None

    def _dataset_shapes(self, name: str) -> List[Tuple[int, ...]]:
        with self._open(name) as f:
            shapes = []
            for t in self.tops:
                if t not in f:
                    raise self.error(f"HDF5 file '{name}' has no dataset '{t}' (datasets: {', '.join(f.keys())})",
                                     DataError)
                shape = tuple(int(d) for d in f[t].shape)
                if len(shape) < 1 or shape[0] < 1:
                    raise self.error(f"dataset '{t}' of '{name}' has shape {list(shape)}: no rows", DataError)
                shapes.append(check_shape(shape, f"dataset '{t}' of '{name}'"))
        rows = {s[0] for s in shapes}
        if len(rows) != 1:
            raise self.error(f"datasets of '{name}' have different row counts: "
                             f"{dict(zip(self.tops, (s[0] for s in shapes)))}", DataError)
        return shapes

    def _load_file(self) -> None:
        name = self.files[self._file_order[self._file_pos]]
        shapes = self._dataset_shapes(name)
        for t, s, want in zip(self.tops, shapes, self._row_shapes):
            if tuple(s[1:]) != want:
                raise self.error(f"dataset '{t}' of '{name}' has rows of shape {list(s[1:])}, "
                                 f"the first file's have {list(want)}", DataError)
        with self._open(name) as f:
            self._data = [np.asarray(f[t][...]) for t in self.tops]
        for t, arr in zip(self.tops, self._data):
            if not np.issubdtype(arr.dtype, np.number):
                raise self.error(f"dataset '{t}' of '{name}' is not numeric ({arr.dtype})", DataError)
        n = shapes[0][0]
        if not self._row_order or len(self._row_order) != n:
            self._row_order = list(range(n))
        if self.shuffle:
            self._row_order = self._perm(n)
        log.debug("HDF5Data '%s': loaded %s (%d rows)", self.name, name, n)

    def _perm(self, n: int) -> List[int]:
        return torch.randperm(n, generator=self.ctx.generator).tolist()

    def _next_row(self) -> None:
        """Caffe's cursor: next row; at a file's end the next file (a new pass after the last)."""
        self._row += 1
        if self._row < len(self._row_order):
            return
        if len(self.files) > 1:
            self._file_pos += 1
            if self._file_pos == len(self.files):
                self._file_pos = 0
                if self.shuffle:
                    self._file_order = self._perm(len(self.files))
            self._data = None
        elif self.shuffle:
            self._row_order = self._perm(len(self._row_order))
        self._row = 0

    def forward(self, *bottoms):
        if in_shape_pass():
            return tuple(torch.empty((self.batch_size,) + s, device="meta", dtype=self.ctx.dtype)
                         for s in self._row_shapes)
        out = [np.empty((self.batch_size,) + s, dtype=np.float64) for s in self._row_shapes]
        for i in range(self.batch_size):
            if self._data is None:
                self._load_file()
            while self._skip():
                self._next_row()
                if self._data is None:
                    self._load_file()
            r = self._row_order[self._row]
            for o, arr in zip(out, self._data):
                o[i] = arr[r]
            self._next_row()
        tops = tuple(torch.from_numpy(o).to(self.ctx.dtype) for o in out)
        for t, v in zip(self.tops, tops):
            if not bool(torch.isfinite(v).all()):
                raise self.error(f"top '{t}' read NaN or Inf from '{self.source}'", DataError)
        return tops

    def _skip(self) -> bool:
        """Data parallel: process ``rank`` keeps rows ``rank, rank + world, ...`` of the stream (Caffe's rule)."""
        keep = self._offset % self._world == self._rank
        self._offset += 1
        return not keep

    def set_shard(self, rank: int, world_size: int) -> None:
        """Read only this process's share of the rows (set by the solver under ``torchrun``)."""
        if not 0 <= rank < world_size:
            raise self.error(f"invalid shard {rank} of {world_size}")
        self._rank, self._world = int(rank), int(world_size)

    # -- position ----------------------------------------------------------------
    def data_state(self) -> dict:
        """The read position (plain ints and lists: ``torch.load(weights_only=True)`` reads it)."""
        return {"file_order": list(self._file_order), "file_pos": self._file_pos, "row": self._row,
                "row_order": list(self._row_order), "offset": self._offset}

    def set_data_state(self, state: dict) -> None:
        """Continue reading where :meth:`data_state` was taken."""
        try:
            order = [int(i) for i in state["file_order"]]
            pos, row = int(state["file_pos"]), int(state["row"])
            rows = [int(i) for i in state["row_order"]]
        except (KeyError, TypeError, ValueError) as e:
            raise self.error(f"invalid saved read position: {e}", DataError) from None
        if sorted(order) != list(range(len(self.files))) or not 0 <= pos < len(self.files):
            raise self.error("saved read position is for a different file list", DataError)
        self._file_order, self._file_pos, self._row, self._row_order = order, pos, row, rows
        self._offset = int(state.get("offset", 0))
        self._data = None
        self._load_file()
        self._row_order = rows  # _load_file reshuffles; keep the saved order
        if not 0 <= row < len(rows):
            raise self.error("saved read position is past the end of its file", DataError)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, source={self.source!r}, batch_size={self.batch_size}, shuffle={self.shuffle}"
