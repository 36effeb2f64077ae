"""The command line as a user with the original files meets it (issue 11), run as a real process.

Each test runs ``python -m caffe_compat ...`` in a subprocess and checks its
exit status and what it prints.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, reference_path


def cli(*argv, cwd=None):
    """Run the command line; returns (exit status, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "caffe_compat", *map(str, argv)], capture_output=True, text=True,
                       env=env, cwd=cwd, timeout=600)
    return p.returncode, p.stdout, p.stderr


def config(*parts) -> Path:
    return reference_path("configs", *parts)


def test_info_recognises_solver_files_and_names_their_nets():
    rc, out, err = cli("info", config("res", "solver_voc_trainval_aug.prototxt"))
    assert rc == 0, err
    assert "is a solver file" in out and "not a net" in out
    assert "train_net: segaware/config/supergiven_9/train_voc_trainval_aug.prototxt" in out
    # the named train net is found beside the solver, and the hint says how to look at it
    assert f"found: {config('res', 'train_voc_trainval_aug.prototxt')}" in out
    assert "--phase TRAIN" in out
    assert "NetParameter" not in out + err
    # the template solver: the preset fills its path
    rc, out, err = cli("info", config("vgg", "solver.prototxt"), "--preset", "voc_train_aug")
    assert rc == 0, err
    assert "segaware/config/segaware-all-largeFOV/train_voc_train_aug.prototxt" in out
    # a solver where a net is needed (run/test/export): the same clear error
    rc, out, err = cli("export", config("embs", "solver_coco_trainval.prototxt"), "-o", "x.pt2")
    assert rc == 2 and "is a solver file" in err


def test_train_net_in_test_phase_hints_phase_train_and_losses_are_listed():
    train = config("vgg", "train_voc_train_aug.prototxt")
    rc, out, err = cli("info", config("embs", "train_coco_trainval.prototxt"))
    assert rc == 2
    assert "is not produced by any earlier layer" in err and "add --phase TRAIN" in err
    rc, out, err = cli("info", train, "--phase", "TRAIN")
    assert rc == 0, err
    # the SoftmaxWithLoss has no named top: not a net output (Caffe's rule), but a loss
    assert "losses: (automatic) (from SoftmaxWithLoss 'loss', loss_weight 1)" in out
    rc, out, err = cli("info", train, "--phase", "TRAIN", "--json")
    assert json.loads(out)["losses"] == {"(automatic)": 1.0}


def test_list_defines_and_presets_reproduce_the_instantiated_files(tmp_path):
    from caffe_compat import presets, prototxt

    rc, out, err = cli("info", config("res", "test.prototxt"), "--list-defines")
    assert rc == 0, err
    lines = {l.split()[0]: l for l in out.splitlines()[2:]}
    assert set(lines) == set(presets.template_variables(config("res", "test.prototxt").read_text()))
    assert "257" in lines["HALF_SIZE"] and "half-resolution" in lines["HALF_SIZE"]
    assert "supergiven_17" in lines["NET_ID"] and "voc_val" in out.splitlines()[0]
    # every preset turns its template into the instantiated file shipped with it
    shipped = {("vgg/test", "voc_val"): "vgg/test_voc_val", ("res/test", "voc_val"): "res/test_voc_val",
               ("res/test", "voc_test"): "res/test_voc_test", ("embs/test", "voc_val"): "embs/test_voc_val",
               ("embs/train", "coco_trainval"): "embs/train_coco_trainval",
               ("vgg/train", "voc_train_aug"): "vgg/train_voc_train_aug",
               ("res/train", "voc_trainval_aug"): "res/train_voc_trainval_aug",
               ("embs/solver", "coco_trainval"): "embs/solver_coco_trainval",
               ("vgg/solver", "voc_train_aug"): "vgg/solver_voc_train_aug",
               ("res/solver", "voc_trainval_aug"): "res/solver_voc_trainval_aug"}
    for (tpl, preset), inst in shipped.items():
        text = config(*(tpl + ".prototxt").split("/")).read_text()
        assert presets.identify(text).name == tpl
        filled = prototxt.substitute_templates(text, presets.preset_values(text, preset))
        assert filled == config(*(inst + ".prototxt").split("/")).read_text(), (tpl, preset)
    # on the command line: the preset builds the net, -D overrides one value
    rc, out, err = cli("info", config("embs", "test.prototxt"), "--preset", "voc_val", "-D", "CROP_SIZE=65",
                       "--json")
    assert rc == 0, err
    assert json.loads(out)["blobs"]["data"] == [1, 3, 65, 65]
    rc, out, err = cli("info", config("embs", "test.prototxt"), "--preset", "voc_test")
    assert rc == 2 and "its presets are voc_val" in err


def test_unused_define_warns_naming_it(tmp_path):
    p = tmp_path / "n.prototxt"
    p.write_text('layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 1 dim: ${SIZE} '
                 'dim: 2 } } }\n')
    rc, out, err = cli("info", p, "-D", "SIZE=3", "-D", "SIZ=4", "-D", "FOO=1")
    assert rc == 0, err
    assert "--define SIZ:" in err and "did you mean SIZE?" in err
    assert "--define FOO:" in err and "not used" in err
    assert "--define SIZE" not in err


def test_version():
    import caffe_compat

    for argv in (["--version"], ["run", "--version"]):
        rc, out, err = cli(*argv)
        assert rc == 0 and out.strip() == f"caffe-compat {caffe_compat.__version__}"


def test_ops_reachable_after_import_caffe_compat():
    code = ("import caffe_compat, torch; x = torch.randn(1, 2, 5, 5); "
            "print(tuple(caffe_compat.ops.im2dist.im2dist(x, 3, 3, 1, 1, 1, 1, 1, 1).shape) if False else "
            "callable(caffe_compat.ops.im2dist.im2dist), callable(caffe_compat.ops.norm_conv.norm_conv), "
            "callable(caffe_compat.ops.meanfield.normconv_meanfield), callable(caffe_compat.ops.im2col.im2col))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True"] * 4


NET_A = """name: "a"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 2 kernel_size: 1 } }
"""
NET_B = """name: "b"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 5 kernel_size: 3 weight_filler { type: "gaussian" } } }
layer { name: "c1" type: "Convolution" bottom: "conv1" top: "c1" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "fc" type: "Convolution" bottom: "c1" top: "fc" convolution_param { num_output: 2 kernel_size: 1 } }
"""


@pytest.fixture
def two_nets(tmp_path):
    from caffe_compat import Net

    a, b = tmp_path / "a.prototxt", tmp_path / "b.prototxt"
    a.write_text(NET_A)
    b.write_text(NET_B)
    wb = tmp_path / "b.caffemodel"
    Net(b, seed=0).save(wb)
    img = tmp_path / "img.png"
    from PIL import Image
    Image.fromarray(np.full((6, 6, 3), 120, np.uint8)).save(img)
    return a, b, wb, img


def test_weights_of_another_net_reported_once_readably_with_lenient_hint(tmp_path, two_nets):
    a, b, wb, img = two_nets
    rc, out, err = cli("run", a, wb, "--image", img, "--out", tmp_path / "o")
    assert rc == 2
    assert err.count("does not fit net 'a'") == 1          # once
    assert "0 of 2 layers with parameters loaded" in err
    assert "layer 'c1' blob 0: file shape [4, 5, 1, 1] vs net shape [4, 3, 3, 3]" in err
    assert "in the file but not in the net: conv1, fc" in err
    assert "seems to belong to another net" in err
    assert "--lenient" in err and "strict=False" not in err
    assert max(len(l) for l in err.splitlines()[1:]) < 120  # no one-line dump of everything
    # --lenient runs, warning that those layers keep their fillers
    rc, out, err = cli("run", a, wb, "--image", img, "--out", tmp_path / "o", "--lenient")
    assert rc == 0, err
    assert "keep their filler values" in err and (tmp_path / "o" / "c2.npy").is_file()
    rc, out, err = cli("info", a, "--weights", wb)
    assert rc == 2 and err.count("does not fit net 'a'") == 1 and "learnable parameters" in out


def test_no_weights_warns_that_zero_filled_convolutions_make_the_output_meaningless(tmp_path, two_nets):
    a, b, wb, img = two_nets
    rc, out, err = cli("run", a, "--image", img, "--out", tmp_path / "o")
    assert rc == 0, err
    assert "2 of 2 convolution/inner-product layers have no weight_filler" in err
    assert "all zero" in err and "meaningless" in err
    assert np.all(np.load(tmp_path / "o" / "c2.npy") == 0)   # what the warning says
    rc, out, err = cli("run", b, "--image", img, "--out", tmp_path / "o2")
    assert rc == 0 and "2 of 3 convolution" in err


def test_export_convert_info_take_device(tmp_path, two_nets):
    a, b, wb, img = two_nets
    for argv in (["export", b, wb, "-o", tmp_path / "b.pt2"], ["convert", b, wb, "-o", tmp_path / "b.pt"],
                 ["info", b, "--weights", wb]):
        rc, out, err = cli(*argv, "--device", "tpu")
        assert rc == 2 and "--device must be cpu or cuda" in err, (argv, err)
    rc, out, err = cli("convert", b, wb, "-o", tmp_path / "b.pt", "--device", "cpu")
    assert rc == 0, err
    from caffe_compat import Net
    ref, back = Net(b, weights=wb), Net.from_checkpoint(tmp_path / "b.pt")
    for name, ps in ref.params.items():
        for p, q in zip(ps, back.params[name]):
            assert torch.equal(p, q)
    if torch.cuda.is_available():
        rc, out, err = cli("export", b, wb, "-o", tmp_path / "g.pt2", "--device", "cuda")
        assert rc == 0, err
