"""OpenCV dnn 4.x (an independent Caffe reader) loads caffemodels this project writes and agrees.

OpenCV is a test-only dependency (``opencv-python-headless<5``: 5.x has no Caffe
importer) and runs in a subprocess, since it can crash on some inputs.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from caffe_compat import Net

NETS = {
    "conv_pool_bn_scale_ip": """
name: "cv1"
input: "data" input_shape { dim: 2 dim: 3 dim: 13 dim: 11 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true } }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "pool2" type: "Pooling" bottom: "conv1" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "pool1" bottom: "pool2" top: "sum" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "ip" type: "InnerProduct" bottom: "sum" top: "ip" inner_product_param { num_output: 7 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
""",
    "deconv_concat_group_dilation": """
name: "cv2"
input: "data" input_shape { dim: 1 dim: 4 dim: 9 dim: 10 }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 2 dilation: 2 group: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "c1" top: "up"
  convolution_param { num_output: 3 kernel_size: 4 stride: 2 pad: 1 } }
layer { name: "c2" type: "Convolution" bottom: "data" top: "c2"
  convolution_param { num_output: 2 kernel_size: 1 stride: 1 } }
layer { name: "pool" type: "Pooling" bottom: "up" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "cat" type: "Concat" bottom: "pool" bottom: "c2" top: "cat" }
layer { name: "prob" type: "Softmax" bottom: "cat" top: "prob" }
""",
}

RUNNER = textwrap.dedent("""
    import json, sys, numpy as np, cv2
    proto, model, inp, out = sys.argv[1:5]
    net = cv2.dnn.readNetFromCaffe(proto, model)
    x = np.load(inp)
    net.setInput(x, "data")
    names = json.loads(sys.argv[5])
    res = net.forward(names)
    np.savez(out, **{n: r for n, r in zip(names, res)})
""")


@pytest.mark.parametrize("case", sorted(NETS))
def test_opencv_reads_our_caffemodel(case, tmp_path):
    pytest.importorskip("cv2", reason="opencv-python-headless<5 is a test dependency (pip install -e '.[test]')")
    text = NETS[case]
    net = Net.from_string(text, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lname, blobs in net.params.items():
            for i, p in enumerate(blobs):
                if net.layer_types[net.layer_names.index(lname)] == "BatchNorm":
                    p.copy_(torch.rand(p.shape, generator=g) + (2.0 if i == 1 else 0.0))
                    if i == 2:
                        p.fill_(2.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    shape = net.input_shapes["data"]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ours = net(data=torch.from_numpy(x))
    proto, model = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    proto.write_text(text)
    net.save(model)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "run.py").write_text(RUNNER)
    blobs = [b for b in net.blobs if b != "data"]
    # OpenCV names in-place results after the layer that last wrote them; compare the net-output and non-in-place blobs
    check = [b for b in blobs if net.top_names.count([b]) <= 1 and b not in ("conv1",)]
    r = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(proto), str(model), str(tmp_path / "x.npy"),
                        str(tmp_path / "cv.npz"), json.dumps(check)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    cv = np.load(tmp_path / "cv.npz")
    for b in check:
        a = net.blobs[b].detach().numpy()
        c = cv[b].reshape(a.shape)
        err = np.abs(a - c).max() / max(np.abs(a).max(), 1e-30)
        assert err < 1e-4, f"{case}: blob {b}: rel err {err}"
    assert "prob" in check
