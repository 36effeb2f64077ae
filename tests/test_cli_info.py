"""``caffe-compat`` entry points, ``--help`` of every command, and ``info``."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REFERENCE_DIR, require_reference

from caffe_compat.cli import COMMANDS, build_parser, main

SMALL = """
name: "small"
input: "data" input_shape { dim: 1 dim: 3 dim: ${SIZE} dim: ${SIZE} }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""


@pytest.mark.parametrize("cmd", [c.replace("_", "-").replace("evaluate", "eval") for c in COMMANDS])
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: caffe-compat " + cmd in capsys.readouterr().out


def test_python_dash_m_and_top_level_help():
    r = subprocess.run([sys.executable, "-m", "caffe_compat", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for cmd in ("info", "test", "gen-preds", "eval", "convert", "export", "run"):
        assert cmd in r.stdout
    assert set(build_parser()._subparsers._group_actions[0].choices) >= {"info", "test", "gen-preds", "eval"}


def test_info_table_and_json(tmp_path, capsys):
    p = tmp_path / "net.prototxt"
    p.write_text(SMALL)
    assert main(["info", str(p), "--define", "SIZE=7"]) == 0
    out = capsys.readouterr().out
    assert "conv" in out and "1x2x5x5" in out and "learnable parameters: 56" in out
    assert main(["info", str(p), "-D", "SIZE=9", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d == {"blobs": {"data": [1, 3, 9, 9], "conv": [1, 2, 7, 7]}, "params": {"conv": [[2, 3, 3, 3], [2]]},
                 "outputs": ["conv"], "losses": {}}


def test_info_errors_exit_2_with_message(tmp_path, caplog):
    p = tmp_path / "net.prototxt"
    p.write_text(SMALL)
    assert main(["info", str(p)]) == 2  # ${SIZE} not defined
    assert "SIZE" in caplog.text
    assert main(["info", str(p), "--define", "SIZE"]) == 2
    assert main(["info", str(tmp_path / "missing.prototxt")]) == 2


def test_info_full_size_original_config_json():
    """The full-size res TEST config (1400+ layers, with its data layers) without computing activations."""
    shapes = REFERENCE_DIR / "golden" / "shapes" / "res__test.json"
    if not shapes.exists():
        require_reference(shapes)
    rec = json.loads(shapes.read_text())
    args = ["info", str(REFERENCE_DIR / "configs" / "res" / "test.prototxt"), "--json"]
    for k, v in rec["template_values"].items():
        args += ["--define", f"{k}={v}"]
    r = subprocess.run([sys.executable, "-m", "caffe_compat"] + args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d["blobs"]["crf"] == [1, 21, 257, 257] and d["blobs"]["crf_interp"] == [1, 21, 513, 513]
    assert d["params"]["crf"] == [[1, 1, 21, 21]] * 3
    for k, v in rec["blobs"].items():
        if "_split_" not in k:
            assert d["blobs"][k] == v, k


def test_info_weights_that_do_not_fit_exit_2(tmp_path, caplog):
    p = tmp_path / "net.prototxt"
    p.write_text(SMALL)
    from caffe_compat import Net
    Net.from_string(SMALL, defines={"SIZE": 7}).save(tmp_path / "w.caffemodel")
    assert main(["info", str(p), "-D", "SIZE=7", "--weights", str(tmp_path / "w.caffemodel")]) == 0
    p.write_text(SMALL.replace("num_output: 2", "num_output: 3"))
    assert main(["info", str(p), "-D", "SIZE=7", "--weights", str(tmp_path / "w.caffemodel")]) == 2
    assert "does not fit" in caplog.text


def test_bad_device_and_shard_are_clear_errors(tmp_path, caplog, monkeypatch):
    assert main(["test", "x.prototxt", "w.caffemodel", "--device", "tpu"]) == 2
    assert "--device must be cpu or cuda" in caplog.text
    monkeypatch.setenv("WORLD_SIZE", "0")
    assert main(["test", "x.prototxt", "w.caffemodel"]) == 2
    assert "WORLD_SIZE" in caplog.text


def test_verbose_after_the_command_and_non_integer_rank(tmp_path, caplog, monkeypatch):
    p = tmp_path / "net.prototxt"
    p.write_text(SMALL)
    assert main(["info", str(p), "-D", "SIZE=5", "-v"]) == 0
    monkeypatch.setenv("RANK", "x")
    assert main(["test", "x.prototxt", "w.caffemodel"]) == 2
    assert "RANK / WORLD_SIZE must be integers" in caplog.text
    with pytest.raises(SystemExit):
        main(["test", "x.prototxt", "w.caffemodel", "--workers", "-1"])
