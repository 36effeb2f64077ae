"""``MatWrite``: a layer that writes its bottoms to MATLAB ``.mat`` files (DeepLab test configs).

File names: ``prefix + id + "_blob_" + i + ".mat"`` (``id`` = line ``iter`` of
``source``, else ``"iter_" + iter``), every ``period``-th forward, existing
files skipped, variable ``data`` single ``[W H C N]``.  ``prefix`` is used as
given, relative to the current working directory; ``set_prefix()`` overrides
it at run time.  A shape pass writes nothing and does not count as an
iteration.
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional

from ..errors import DataError, ShapeError
from ..pipeline import lists as _lists
from ..pipeline import matio as _matio
from .base import Layer, in_shape_pass, register_layer

log = logging.getLogger(__name__)


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


__all__ = ["MatWriteLayer"]
