"""The HDF5Data layer: rows in file order, cycling over files, shapes, shuffle, sharding, clear errors."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from solver_helpers import in_tmp  # noqa: F401

import caffe_compat
from caffe_compat.errors import DataError

NET = """layer { name: "d" type: "HDF5Data" top: "x" top: "y"
  hdf5_data_param { source: "list.txt" batch_size: %d %s } }
"""


def _files(folder, sizes, extra=""):
    names = []
    start = 0
    for k, n in enumerate(sizes):
        with h5py.File(folder / f"f{k}.h5", "w") as f:
            f["x"] = np.arange(start, start + n, dtype=np.float64)[:, None, None] * np.ones((1, 2, 3))
            f["y"] = np.arange(start, start + n, dtype=np.int32)
        names.append(f"f{k}.h5")
        start += n
    (folder / "list.txt").write_text("\n".join(names) + "\n" + extra)


def _net(batch, shuffle=False):
    return caffe_compat.Net.from_string(NET % (batch, "shuffle: true" if shuffle else ""), phase="TRAIN", seed=3)


def test_rows_in_order_across_files(in_tmp):
    _files(in_tmp, [3, 2])
    net = _net(4)
    assert net.infer_shapes()["x"] == (4, 2, 3) and net.blob_shapes["y"] == (4,)
    seen = []
    for _ in range(3):
        out = net.forward()
        assert out["x"].dtype == torch.float32
        assert torch.equal(out["x"][:, 1, 2], out["y"])
        seen += out["y"].tolist()
    assert seen == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


def test_shuffle_is_a_seeded_permutation(in_tmp):
    _files(in_tmp, [4, 4])
    a = [_net(8, True).forward()["y"].tolist() for _ in range(2)]
    assert a[0] == a[1] and sorted(a[0]) == list(range(8)) and a[0] != list(range(8))


def test_shard_keeps_every_nth_row(in_tmp):
    _files(in_tmp, [6])
    net = _net(2)
    layer = net.layer("d")
    layer.set_shard(1, 2)
    assert net.forward()["y"].tolist() == [1, 3]
    assert net.forward()["y"].tolist() == [5, 1]


def test_position_restores(in_tmp):
    _files(in_tmp, [3, 2])
    net = _net(2)
    net.forward()
    state = net.layer("d").data_state()
    want = [net.forward()["y"].tolist() for _ in range(3)]
    other = _net(2)
    other.layer("d").set_data_state(state)
    assert [other.forward()["y"].tolist() for _ in range(3)] == want


@pytest.mark.parametrize("make,match", [
    (lambda d: None, "cannot read"),
    (lambda d: (d / "list.txt").write_text("\n"), "lists no files"),
    (lambda d: (d / "list.txt").write_text("missing.h5\n"), "cannot open HDF5 file 'missing.h5'"),
    (lambda d: _make_file(d, {"x": np.zeros((2, 1))}), "no dataset 'y'"),
    (lambda d: _make_file(d, {"x": np.zeros((2, 1)), "y": np.zeros(3)}), "different row counts"),
])
def test_bad_hdf5_inputs(in_tmp, make, match):
    make(in_tmp)
    with pytest.raises(DataError, match=match):
        _net(2)


def test_nan_rows_are_refused(in_tmp):
    _make_file(in_tmp, {"x": np.full((2, 1), np.nan), "y": np.zeros(2)})
    with pytest.raises(DataError, match="NaN"):
        _net(2).forward()


def _make_file(folder, datasets):
    with h5py.File(folder / "a.h5", "w") as f:
        for k, v in datasets.items():
            f[k] = v
    (folder / "list.txt").write_text("a.h5\n")
