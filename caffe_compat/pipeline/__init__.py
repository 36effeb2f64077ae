"""Data plumbing around the nets: list files, image reading/transforms, ``.mat`` files.

* :mod:`.lists` - the list-file formats of the data layers and MatWrite;
* :mod:`.images` - ``cv::imread``-exact decoding with Pillow, OpenCV-exact
  resizing, and the ``DataTransformer`` steps (pad, crop, mirror, mean, scale);
* :mod:`.matio` - MatWrite's MAT files (writer, reader, blob layout).
"""
from __future__ import annotations

from . import images, lists, matio
from .matio import read_blob_mat, read_mat, write_blob_mat, write_mat

__all__ = ["images", "lists", "matio", "read_mat", "read_blob_mat", "write_mat", "write_blob_mat"]
