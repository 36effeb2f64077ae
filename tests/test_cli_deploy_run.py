"""``run`` on every original deploy net (reduced golden versions), as a real process, and its derived inputs.

The derived inputs are checked against what the golden runs fed the fork
(``golden/nets/<n>_reduced.npz`` ``in/*``): the res multi-scale inputs were
made by the fork's own Interp layer, the embs ``pos_data`` grid by the
golden's generator.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT, reference_path
from golden import rel_err


def cli(*argv):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "caffe_compat", *map(str, argv)], capture_output=True, text=True,
                       env=env, timeout=600)
    return p.returncode, p.stdout, p.stderr


def golden_net(name):
    d = reference_path("golden", "nets")
    return d / f"{name}_reduced.prototxt", d / f"{name}_reduced.caffemodel", np.load(d / f"{name}_reduced.npz")


def _images(tmp_path):
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(a)
    Image.fromarray(rng.integers(0, 255, (70, 60, 3), dtype=np.uint8)).save(b)
    lab = np.zeros((40, 50), np.uint8)
    lab[10:30, 5:20] = 3
    la = tmp_path / "a_label.png"
    Image.fromarray(lab, mode="L").save(la)
    return a, b, la, lab


def test_res_inputs_derived_as_the_original_test_config(tmp_path):
    from caffe_compat import Net
    from caffe_compat.cli import deploy_inputs as D

    proto, weights, g = golden_net("res")
    net = Net(proto, weights=weights)
    data = torch.from_numpy(g["in/data"])
    derived, later = D.derive_inputs(net, "data", data, None, {})
    for k in ("data_res05", "data_res075"):
        assert derived[k].shape == g[f"in/{k}"].shape
        assert rel_err(derived[k], g[f"in/{k}"]) < 1e-6, k
    assert set(later) == {"fc1_voc12_res075_interp"}
    second = D.second_pass_inputs(net, {"data": data, **derived}, later)
    want = g["in/fc1_voc12_res075_interp"]
    assert second["fc1_voc12_res075_interp"].shape == want.shape
    # the first pass runs the 100-layer res075 trunk: float32 drift as in test_golden_nets (2e-3) ...
    assert rel_err(second["fc1_voc12_res075_interp"], want) < 2e-3
    # ... and the Interp step itself, from the fork's own fc1_voc12_res075, is exact
    src = torch.from_numpy(g["out/fc1_voc12_res075"])
    assert rel_err(D.interp(src, D.TWO_PASS["fc1_voc12_res075_interp"][1]), want) < 1e-6


def test_embs_pos_data_is_the_golden_grid():
    from caffe_compat.cli import deploy_inputs as D

    _, _, g = golden_net("embs")
    np.testing.assert_array_equal(D.pos_grid(g["in/pos_data"].shape), g["in/pos_data"])


def test_run_embs_and_vgg_with_label_several_images(tmp_path):
    a, b, la, lab = _images(tmp_path)
    proto, weights, _ = golden_net("embs")
    out = tmp_path / "embs"
    rc, so, err = cli("run", proto, weights, "--image", a, b, "--label", la, b.with_suffix(".missing"),
                      "--out", out)
    assert rc == 2 and "no such file" in err
    blobs = "image_data,label,loss_avg"
    rc, so, err = cli("run", proto, weights, "--image", a, b, "--out", out, "--blobs", blobs)
    assert rc == 0, err
    assert "run: 100%" in err                       # the progress bar over the images
    for stem in ("a", "b"):
        x = np.load(out / stem / "image_data.npy")
        assert x.shape == (1, 4, 49, 49)
        assert np.all(x[0, 3] == 255)               # no label map: ignore everywhere
    rc, so, err = cli("run", proto, weights, "--image", a, "--label", la, "--out", out / "l", "--blobs", blobs)
    assert rc == 0, err
    x = np.load(out / "l" / "image_data.npy")[0, 3]
    np.testing.assert_array_equal(x[:40, :49], lab[:, :49])   # label padded with 255 like the image
    assert np.all(x[40:] == 255)
    np.testing.assert_array_equal(np.load(out / "l" / "label.npy")[0, 0], x)

    proto, weights, _ = golden_net("vgg")
    out = tmp_path / "vgg"
    rc, so, err = cli("run", proto, weights, "--image", a, "--label", la, "--out", out, "--resize")
    assert rc == 0, err
    label = np.load(out / "label.npy")
    assert label.shape == (1, 1, 65, 65) and set(np.unique(label)) == {0, 3}   # nearest resize of the map
    assert (out / "fc8_interp.png").is_file()
    # a label of the original 321x321 size into the reduced 65x65 input: refused with both shapes
    np.save(tmp_path / "big.npy", np.zeros((1, 1, 321, 321), np.float32))
    rc, so, err = cli("run", proto, weights, "--image", a, "--feed", f"label={tmp_path / 'big.npy'}", "--out", out)
    assert rc == 2
    assert "[1, 1, 321, 321]" in err and "needs [1, 1, 65, 65]" in err


def test_run_res_derives_its_extra_inputs(tmp_path):
    a, _, _, _ = _images(tmp_path)
    proto, weights, _ = golden_net("res")
    out = tmp_path / "res"
    rc, so, err = cli("run", proto, weights, "--image", a, "--out", out,
                      "--blobs", "data_res05,data_res075,fc1_voc12_res075_interp,crf_interp")
    assert rc == 0, err
    assert np.load(out / "data_res05.npy").shape == (1, 3, 33, 33)
    assert np.load(out / "data_res075.npy").shape == (1, 3, 49, 49)
    assert np.load(out / "fc1_voc12_res075_interp.npy").shape == (1, 21, 9, 9)
    assert (out / "crf_interp.png").is_file()
