#!/usr/bin/env python3
"""Mutation fuzzer of caffe_compat's public API: every case must succeed or raise a CaffeCompatError.

    python tools/fuzz.py --cases 10000 [--families prototxt,hdf5] [--seed 0] [--jobs 1]
                         [--batch 200] [--case-timeout 10] [--mem-gib 4] [--markdown]

Families (seeded mutations of valid files / calls):

* ``prototxt``   net text: numbers replaced by boundary values, lines dropped, duplicated or swapped,
                 layer types and blob names exchanged, bytes inserted, truncation; then build,
                 ``infer_shapes`` and a forward at the declared input size.
* ``caffemodel`` a net's binary weights, mutated structurally (shapes, packed data, names) or bytewise.
* ``hdf5``       Caffe HDF5 weights: links, odd blob names, huge declared (chunked, compressed)
                 datasets, wrong dtypes, groups for datasets, byte flips.
* ``checkpoint`` native ``.pt`` checkpoints: fields of the wrong type, sparse / odd tensors, zip damage.
* ``pt2``        ``torch.export`` programs: damaged JSON and members, planted pickles.
* ``forward``    ``Net.forward`` inputs: dtypes, layouts, devices, shapes (incl. zero-size), values.
* ``mat``        ``.mat`` reading: Level-5 byte damage, v7.3 (HDF5) links and huge declared datasets.
* ``writers``    every writer with odd paths (NUL, over-long, missing folder, a directory) and odd
                 layer names; a failed write must leave no file behind.
* ``images``     image / label PNG reading (data layers, pipeline): damaged PNG / JPEG bytes, headers
                 declaring absurd sizes, odd modes, resizing to odd sizes.
* ``lists``      the data layers' and pipeline's list files: damaged lines, odd bytes and encodings.
* ``pipeline``   ``gen_preds`` / ``evaluate`` / ``read_features`` on a tiny VOC tree with damaged
                 features, JPEGs, PNGs, names and id lists, odd class counts, radii and budgets.
* ``cli``        every ``caffe-compat`` command with valid, damaged and odd files and option values;
                 wanted: exit status 0, or 2 with a message and no traceback.

Cases run in child processes (many cases per child: importing torch dominates), under an
address-space limit (``resource.setrlimit(RLIMIT_AS)``) and a per-case wall-clock watchdog.
The child reports each case before and after running it, so a crash (signal, abort, hang) is
attributed to the case that was running; the child is then restarted with the remaining cases.

Outcomes: ``ok`` (the call succeeded), ``error`` (a CaffeCompatError: the wanted result for bad
input), and the failures ``raw`` (any other exception escaped), ``torn`` (a writer left a
partial/temporary file), ``crash`` (the child died) and ``timeout``; ``skip`` counts cases whose
preparation (fuzzer code) failed.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

FAILURES = ("raw", "torn", "crash", "timeout")
OUTCOMES = ("ok", "error") + FAILURES + ("skip",)

# ---------------------------------------------------------------------------------------- corpus
#: Small valid nets covering the layer families; every one builds and runs in milliseconds.
NETS = [
    """name: "plain"
input: "data" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
""",
    """name: "shapes"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 6 dim: 6 } } }
layer { name: "up" type: "Interp" bottom: "data" top: "up" interp_param { zoom_factor: 2 } }
layer { name: "tile" type: "Tile" bottom: "data" top: "tile" tile_param { axis: 1 tiles: 2 } }
layer { name: "sl" type: "Slice" bottom: "tile" top: "a" top: "b" slice_param { axis: 1 slice_point: 3 } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" concat_param { axis: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "cat" bottom: "tile" top: "sum" eltwise_param { operation: SUM } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "flat" type: "Flatten" bottom: "crop" top: "flat" }
""",
    """name: "segaware"
input: "img" input_shape { dim: 1 dim: 2 dim: 5 dim: 5 }
input: "emb" input_shape { dim: 1 dim: 3 dim: 5 dim: 5 }
layer { name: "col" type: "Im2col" bottom: "img" top: "col" convolution_param { kernel_size: 3 pad: 1 } }
layer { name: "dist" type: "Im2dist" bottom: "emb" top: "dist" convolution_param { kernel_size: 3 pad: 1 } }
layer { name: "scale" type: "Power" bottom: "dist" top: "neg" power_param { scale: -1 } }
layer { name: "mask" type: "Exp" bottom: "neg" top: "mask" }
layer { name: "tilem" type: "Tile" bottom: "mask" top: "tilem" tile_param { axis: 1 tiles: 2 } }
layer { name: "prod" type: "Eltwise" bottom: "col" bottom: "tilem" top: "prod" eltwise_param { operation: PROD } }
layer { name: "conv" type: "Convolution" bottom: "prod" top: "conv"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 bottom_is_im2col: true } }
layer { name: "red" type: "ChannelReduce" bottom: "mask" top: "red" channel_reduce_param { num_channels: 1 } }
""",
    """name: "norm"
input: "data" input_shape { dim: 2 dim: 3 dim: 5 dim: 5 }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }
layer { name: "sc" type: "Scale" bottom: "bn" top: "sc" scale_param { bias_term: true } }
layer { name: "lrn" type: "LRN" bottom: "sc" top: "lrn" lrn_param { local_size: 3 } }
layer { name: "drop" type: "Dropout" bottom: "lrn" top: "drop" dropout_param { dropout_ratio: 0.5 } }
layer { name: "deconv" type: "Deconvolution" bottom: "drop" top: "deconv"
  convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 } }
layer { name: "mvn" type: "MVN" bottom: "deconv" top: "mvn" }
layer { name: "am" type: "ArgMax" bottom: "mvn" top: "am" argmax_param { axis: 1 } }
""",
    """name: "losses"
input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
input: "label" input_shape { dim: 2 dim: 1 dim: 4 dim: 4 }
layer { name: "score" type: "Convolution" bottom: "data" top: "score" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" loss_param { ignore_label: 255 } }
layer { name: "acc" type: "Accuracy" bottom: "score" bottom: "label" top: "acc" }
""",
    """name: "v1"
input: "data"
input_dim: 1 input_dim: 2 input_dim: 6 input_dim: 6
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 3 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 2 } }
""",
]

INTERESTING = ["0", "-1", "1", "2", "3", "7", "255", "256", "65535", "65536", "2147483647", "2147483648",
               "4294967295", "4294967296", "9223372036854775807", "18446744073709551616", "-2147483648",
               "1000", "100000", "1e308", "-1e308", "1e-45", "nan", "inf", "-inf", "0.5", "1e10"]
WEIRD_TEXT = ["\x00", "\xff", "\u00b2", "{", "}", "\"", "#", "${X}", "layer {", "\n", "\ud7ff", "é", ":"]
_SIZE_CAP = 4_000_000   # the fuzzer itself never allocates inputs larger than this (elements)


def _numbers(text):
    import re
    return [m.span() for m in re.finditer(r"(?<![A-Za-z_])-?\d+(?:\.\d+)?(?:e-?\d+)?", text)]


def mutate_text(rng: random.Random, text: str) -> str:
    """1-4 mutations of prototxt text."""
    from caffe_compat.layers import REGISTRY, _load_builtin_layers
    _load_builtin_layers()
    types = sorted(REGISTRY)
    for _ in range(rng.randint(1, 4)):
        lines = text.split("\n")
        op = rng.randrange(9)
        if op <= 2:
            spans = _numbers(text)
            if spans:
                a, b = rng.choice(spans)
                text = text[:a] + rng.choice(INTERESTING) + text[b:]
        elif op == 3 and len(lines) > 1:
            del lines[rng.randrange(len(lines))]
            text = "\n".join(lines)
        elif op == 4:
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            text = "\n".join(lines)
        elif op == 5:
            import re
            quoted = [m.span(1) for m in re.finditer(r'"([^"\n]*)"', text)]
            if quoted:
                a, b = rng.choice(quoted)
                c, d = rng.choice(quoted)
                repl = rng.choice([text[c:d], rng.choice(types), ""])
                text = text[:a] + repl + text[b:]
        elif op == 6:
            pos = rng.randrange(len(text) + 1)
            text = text[:pos] + rng.choice(WEIRD_TEXT) + text[pos:]
        elif op == 7:
            text = text[:rng.randrange(len(text) + 1)]
        else:
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """1-8 byte-level mutations: flips, overwrites with boundary bytes, insertions, deletions, truncation."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not data:
            data = bytearray(rng.randbytes(rng.randint(1, 16)))
        op = rng.randrange(6)
        pos = rng.randrange(len(data))
        if op == 0:
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos] = rng.choice([0x00, 0xFF, 0x7F, 0x80, 0x01])
        elif op == 2:
            data[pos:pos] = rng.choice([b"\xff" * 10, b"\x00" * 4, rng.randbytes(rng.randint(1, 8))])
        elif op == 3:
            del data[pos:pos + rng.randint(1, 8)]
        elif op == 4:
            data = data[:pos]
        else:
            n = rng.randint(1, 4)
            data[pos:pos + n] = b"\xff" * n
    return bytes(data)


def _build(text, **kw):
    import caffe_compat as cc
    return cc.Net.from_string(text, seed=0, **kw)


def _inputs(net, rng=None):
    import torch
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, s in net.input_shapes.items():
        if len(s) and __import__("math").prod(s) > _SIZE_CAP:
            return None
        x = torch.rand(s, generator=g)
        if k == "label":
            x = (x * 3).floor()
        out[k] = x
    return out


def _exercise(net, rng):
    """What a user does with a built net: shapes, summary, a forward (and sometimes backward)."""
    net.infer_shapes()
    net.summary()
    inputs = _inputs(net)
    if inputs is None:
        return
    net(**inputs)
    if rng.random() < 0.3 and net.loss is not None and net.loss.requires_grad:
        net.backward()


# ---------------------------------------------------------------------------------------- families
def case_prototxt(rng, work):
    text = mutate_text(rng, rng.choice(NETS))
    path = Path(work) / "net.prototxt"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    phase = rng.choice(["TEST", "TRAIN"])

    def act():
        import caffe_compat as cc
        _exercise(cc.Net(path, phase=phase, seed=0), rng)
    return act


def _base_net(rng):
    return _build(rng.choice([NETS[0], NETS[2], NETS[3], NETS[5]]))


def case_caffemodel(rng, work):
    from caffe_compat import schema
    from caffe_compat.weights import caffemodel_bytes
    net = _base_net(rng)
    data = caffemodel_bytes(net)
    if rng.random() < 0.5:
        msg = schema.NetParameter.FromString(data)
        layers = [lp for lp in msg.layer if len(lp.blobs)]
        for _ in range(rng.randint(1, 3)):
            lp = rng.choice(layers)
            b = rng.choice(lp.blobs)
            op = rng.randrange(6)
            if op == 0:
                dims = list(b.shape.dim)
                if dims:
                    dims[rng.randrange(len(dims))] = int(rng.choice(INTERESTING[:17]).lstrip("-")) % (2 ** 63)
                b.shape.ClearField("dim")
                b.shape.dim.extend(dims)
            elif op == 1:
                b.shape.dim.extend([1] * rng.choice([1, 30, 33, 65]))
            elif op == 2:
                b.num, b.channels, b.height, b.width = (rng.choice([0, 1, 3, 2 ** 31 - 1]) for _ in range(4))
            elif op == 3:
                del b.data[rng.randrange(len(b.data) + 1):]
            elif op == 4:
                b.double_data.extend([1.0] * rng.randint(0, 3))
            else:
                lp.name = rng.choice(["", lp.name + "x", "conv", "\u00b2"])
        data = msg.SerializeToString()
        if rng.random() < 0.3:
            data = data.replace(b"\x0a\x05conv1", b"\x0a\x05con\xff1").replace(b"\x0a\x04conv", b"\x0a\x04c\xffnv")
    else:
        data = mutate_bytes(rng, data)
    path = Path(work) / "w.caffemodel"
    path.write_bytes(data)
    return _load_and_run(net, path, rng)


def _load_and_run(net, path, rng):
    strict = rng.random() < 0.5

    def act():
        net.load_weights(path, strict=strict)
        _exercise(net, rng)
    return act


def case_hdf5(rng, work):
    import h5py
    import numpy as np
    net = _base_net(rng)
    path = Path(work) / "w.caffemodel.h5"
    net.save(path)
    if rng.random() < 0.7:
        with h5py.File(path, "a") as f:
            data = f["data"]
            groups = list(data.keys())
            for _ in range(rng.randint(1, 3)):
                g = data[rng.choice(groups)] if groups else data.create_group("x")
                op = rng.randrange(9)
                key = rng.choice(list(g.keys()) or ["0"])
                if key in g:
                    del g[key]
                if op == 0:
                    g[key] = h5py.ExternalLink(rng.choice(["missing.h5", str(path)]), "/data")
                elif op == 1:
                    g[key] = h5py.SoftLink(rng.choice(["/nowhere", "/data", "/data/" + (groups or ["x"])[0]]))
                elif op == 2:
                    name = rng.choice(["\u00b2", "9999999999999", "-1", "x", " 1", "1.0", "\u0661"])
                    g.create_dataset(name, data=np.ones(3, np.float32))
                elif op == 3:
                    shape = rng.choice([(100000, 100000), (2 ** 31, 4), (10 ** 6,) * 3, (0,), (1,) * 40])
                    chunks = tuple(min(64, max(1, d)) for d in shape) if all(shape) else None
                    g.create_dataset(key, shape=shape, dtype="f4", chunks=chunks,
                                     compression="gzip" if chunks else None)
                elif op == 4:
                    g.create_dataset(key, data=np.ones(3, rng.choice(["i4", "u1", "f2", "c8", "S3"])))
                elif op == 5:
                    g.create_group(key)
                elif op == 6:
                    g.create_dataset(key, data=h5py.Empty("f4"))
                elif op == 7:
                    g.create_dataset(key, data=np.float32(rng.choice([1.0, float("nan")])))
                else:
                    data[rng.choice(["", "a/b", "conv1", "new"]) or "blank"] = h5py.SoftLink("/data")
    else:
        path.write_bytes(mutate_bytes(rng, path.read_bytes()))
    return _load_and_run(net, path, rng)


_ODD_VALUES = None


def _odd_value(rng):
    import torch
    return rng.choice([None, 0, -1, True, "x", "", [], ["a"], [1, 2], {}, {"a": 1}, {1: "a"}, 1.5,
                       torch.zeros(3), torch.zeros(2, 2).to_sparse(), torch.zeros(0), torch.tensor(7),
                       torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.complex64)])


def case_checkpoint(rng, work):
    import torch
    import caffe_compat as cc
    net = _base_net(rng)
    path = Path(work) / "c.pt"
    net.save_checkpoint(path)
    if rng.random() < 0.7:
        obj = torch.load(path, weights_only=True)
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.5 and isinstance(obj["state_dict"], dict) and obj["state_dict"]:
                key = rng.choice(sorted(obj["state_dict"]))
                t = obj["state_dict"][key]
                obj["state_dict"][key] = rng.choice([
                    t.to_sparse(), t.double(), t.flatten(), t[:0], t.to(torch.int32), t.t() if t.dim() == 2 else t,
                    torch.full_like(t, float("nan")), _odd_value(rng)])
            else:
                key = rng.choice(sorted(obj) + ["extra"])
                obj[key] = _odd_value(rng)
        torch.save(obj, path)
    else:
        path.write_bytes(mutate_bytes(rng, path.read_bytes()))
    rebuild = rng.random() < 0.5

    def act():
        if rebuild:
            _exercise(cc.Net.from_checkpoint(path), rng)
        else:
            net.load_weights(path)
            _exercise(net, rng)
    return act


_PROGRAM = {}


def case_pt2(rng, work):
    from caffe_compat.export import export_program, load_program
    if "bytes" not in _PROGRAM:
        src = Path(work) / "base.pt2"
        export_program(_build(NETS[0]), src)
        _PROGRAM["bytes"] = src.read_bytes()
    base = _PROGRAM["bytes"]
    path = Path(work) / "p.pt2"
    if rng.random() < 0.3:
        path.write_bytes(mutate_bytes(rng, base))
    else:
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(base)) as zin, zipfile.ZipFile(out, "w") as zout:
            infos = zin.infolist()
            victim = rng.choice(infos).filename
            for info in infos:
                data = zin.read(info.filename)
                if info.filename == victim:
                    if victim.endswith(".json") and rng.random() < 0.6:
                        data = mutate_text(rng, data.decode()).encode("utf-8", "surrogatepass")
                    elif rng.random() < 0.3:
                        import pickle
                        data = pickle.dumps({"x": (1, 2)})
                    elif rng.random() < 0.2:
                        continue
                    else:
                        data = mutate_bytes(rng, data)
                zout.writestr(info, data)
        path.write_bytes(out.getvalue())
    return lambda: load_program(path)


def _odd_input(rng, shape):
    import numpy as np
    import torch
    shape = list(shape)
    op = rng.randrange(14)
    if op == 0:
        return torch.empty(shape, device="meta")
    if op == 1:
        return np.zeros(shape, dtype=[("a", "f4")])
    if op == 2:
        return np.full(shape, None, dtype=object)
    if op == 3:
        return np.full(shape, "x")
    if op == 4:
        return np.random.default_rng(0).random(shape).astype(rng.choice([">f4", ">f8", "<f2", ">i4", "u1", "?"]))
    if op == 5:
        return torch.rand(shape).to(rng.choice([torch.float16, torch.bfloat16, torch.float64, torch.int32,
                                                 torch.uint8, torch.bool, torch.complex64]))
    if op == 6:
        return torch.rand(shape).to_sparse()
    if op == 7:
        return torch.nested.nested_tensor([torch.rand(shape[1:]), torch.rand(shape[1:])])
    if op == 8:   # zero-size with a huge axis
        s = list(shape)
        if s:
            s[0] = 0
            s[rng.randrange(len(s))] = rng.choice([0, 4294967295, 2 ** 40])
            s[0] = 0
        return torch.empty(s)
    if op == 9:
        s = [max(0, d + rng.choice([-3, -1, 1, 5, 100])) for d in shape]
        if __import__("math").prod(s) > _SIZE_CAP:
            return torch.rand(shape)
        return torch.rand(s)
    if op == 10:
        return torch.rand(shape[:-1] if shape else [1])
    if op == 11:
        return torch.full(shape, rng.choice([float("nan"), float("inf"), 1e38, -1e38]))
    if op == 12:
        return torch.rand([1] * len(shape)).expand(shape)   # zero strides
    return [[1.0, 2.0]]


def case_forward(rng, work):
    import torch
    net = _build(rng.choice(NETS[:6]))
    inputs = _inputs(net)
    name = rng.choice(sorted(inputs))
    inputs[name] = _odd_input(rng, net.input_shapes[name])
    op = rng.random()

    def act():
        if op < 0.1:
            net(*inputs.values())
        elif op < 0.15:
            net(**inputs, bogus=torch.zeros(1))
        else:
            net(**inputs)
            if net.loss is not None and rng.random() < 0.3:
                net.backward()
    return act


def case_mat(rng, work):
    import numpy as np
    from caffe_compat.pipeline import matio
    path = Path(work) / "f.mat"
    if rng.random() < 0.6:
        matio.write_blob_mat(str(path), np.random.default_rng(rng.randrange(100)).random((1, 2, 3, 4), np.float32))
        path.write_bytes(mutate_bytes(rng, path.read_bytes()))
    else:
        import h5py
        with h5py.File(path, "w", userblock_size=512) as f:
            op = rng.randrange(4)
            if op == 0:
                f["data"] = h5py.SoftLink("/nowhere")
            elif op == 1:
                f.create_dataset("data", shape=(100000, 100000), dtype="f4", chunks=(100, 100), compression="gzip")
            elif op == 2:
                f.create_dataset("data", data=np.ones((2, 3), rng.choice(["f4", "f8", "i2", "S2"])))
            else:
                f["data"] = h5py.ExternalLink("missing.h5", "/x")
        with open(path, "r+b") as fh:
            fh.write(b"MATLAB 7.3 MAT-file".ljust(116) + b"\x00" * 8 + b"\x00\x02IM")
    blob = rng.random() < 0.5
    return lambda: matio.read_blob_mat(str(path)) if blob else matio.read_mat(str(path))


def case_images(rng, work):
    import numpy as np
    from PIL import Image
    from caffe_compat.pipeline import images, palette
    arr = np.random.default_rng(rng.randrange(1000)).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    mode, fmt = rng.choice([("RGB", "PNG"), ("L", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("RGB", "JPEG"),
                            ("RGBA", "PNG"), ("1", "PNG")])
    im = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(arr[..., 0].astype("<u2") * 257)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    path = Path(work) / f"im.{fmt.lower()}"
    data = buf.getvalue()
    if rng.random() < 0.3:   # a header declaring an absurd size
        import struct
        if fmt == "PNG":
            data = data[:16] + struct.pack(">II", rng.choice([0, 1, 65535, 2 ** 31 - 1]), rng.choice([0, 70000])) + data[24:]
        else:
            i = data.find(b"\xff\xc0")
            if i > 0:
                data = data[:i + 5] + struct.pack(">HH", 65500, 65500) + data[i + 9:]
    else:
        data = mutate_bytes(rng, data)
    path.write_bytes(data)
    op = rng.randrange(4)
    size = rng.choice([(0, 0), (3, 4), (1, 100000), (70000, 70000)])

    def act():
        if op == 0:
            images.read_image(str(path), rng.random() < 0.5, *size)
        elif op == 1:
            palette.read_label_png(str(path))
        elif op == 2:
            images.image_size(str(path))
        else:
            images.read_image(str(path), True)
    return act


def case_lists(rng, work):
    from caffe_compat.pipeline import lists
    base = rng.choice(["a.jpg a.png\nb.jpg b.png\n", "a.jpg 3\nb.jpg 12\n", "2008_000001\n2008_000002\n",
                       "x/y.jpg x/y_l.png\n\n  z.jpg z.png  \n"])
    text = mutate_text(rng, base) if rng.random() < 0.7 else mutate_bytes(rng, base.encode()).decode("latin-1")
    path = Path(work) / "list.txt"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if rng.random() < 0.8 else text.encode("latin-1", "replace"))
    op = rng.randrange(4)

    def act():
        if op == 0:
            lists.read_seg_list(str(path), rng.random() < 0.5, rng.random() < 0.5)
        elif op == 1:
            lists.read_image_label_list(str(path))
        elif op == 2:
            lists.read_pair_list(str(path))
        else:
            lists.read_id_list(str(path), rng.choice([0, 1, 4, 100]))
    return act


def _odd_path(rng, folder: Path) -> str:
    return rng.choice([
        str(folder / "a\x00b"), str(folder / ("x" * rng.choice([255, 256, 300, 5000]))), str(folder / "missing" / "f"),
        str(folder), str(folder / "file" / "under"), "", str(folder / "\u00e9\u00b2 ok"), str(folder / "sub/"),
        str(folder / ("y" * 250)), "\x00", str(folder / "ok"),
    ])


def case_writers(rng, work):
    import numpy as np
    from caffe_compat.pipeline import matio
    folder = Path(work) / "out"
    folder.mkdir()
    (folder / "file").write_text("x")
    name = _odd_path(rng, folder)
    op = rng.randrange(6)
    base = _base_net(rng)
    return lambda: _write(rng, op, name, folder, base)


def _write(rng, op, name, folder, base):
    import numpy as np
    from caffe_compat.pipeline import matio
    try:
        if op == 0:
            base.save(name + rng.choice([".caffemodel", ""]))
        elif op == 1:
            base.save(name + ".h5")
        elif op == 2:
            base.save_checkpoint(name + ".pt")
        elif op == 3:
            matio.write_blob_mat(name + ".mat", np.zeros((1, 1, 2, 2), np.float32))
        elif op == 4:
            prefix = name if rng.random() < 0.7 else str(folder) + "/" + rng.choice(["\x00", "z" * 300, "a/"])
            text = NETS[0] + ('layer { name: "mw" type: "MatWrite" bottom: "prob" '
                              'mat_write_param { prefix: "%s" } }' % prefix.replace("\\", "\\\\").replace('"', '\\"')
                              .replace("\x00", "\\000"))
            net = _build(text)
            net(**_inputs(net))
        else:
            lname = rng.choice(["\\000", "a/b", ".", "..", "", "z" * 70000, "\\377"])
            net = _build(NETS[0].replace('name: "conv1"', f'name: "{lname}"'))
            net.save(str(folder / "n.h5"))
    finally:
        _no_tmp_left(folder)


class _Torn(Exception):
    pass


# ------------------------------------------------------------------ pipeline and command line
_IDS = ["2008_000001", "2008_000002", "2009_000003"]


def _voc_tree(rng, work):
    """A tiny VOC-like tree, some of it damaged: features/*.mat, JPEGImages/*.jpg, gt/*.png, pred/*.png, ids.txt.

    Damage (one or two kinds per case): a feature file's bytes, a feature of another size than its
    JPEG, NaN / Inf logits, 0 or 300 channels, odd file names, a missing or damaged JPEG, GT / prediction
    PNGs of other sizes, modes or values, a damaged id list.
    """
    import numpy as np
    from PIL import Image
    from caffe_compat.pipeline import matio, palette
    root = Path(work)
    dirs = {k: root / k for k in ("features", "JPEGImages", "gt", "pred")}
    for d in dirs.values():
        d.mkdir()
    nrng = np.random.default_rng(rng.randrange(10 ** 6))
    damage = {rng.randrange(12) for _ in range(rng.randint(1, 2))}
    ids = list(_IDS)
    for k, image_id in enumerate(ids):
        h, w = rng.choice([(5, 7), (6, 6), (1, 1), (9, 4)])
        c = 21
        if 0 in damage and k == 0:
            c = rng.choice([0, 1, 2, 300])
        logits = nrng.standard_normal((1, c, h + 2, w + 3)).astype(np.float32)   # padded, as the crops are
        if 1 in damage and k == 1:
            logits.flat[nrng.integers(0, max(logits.size, 1), 3)] = rng.choice([np.nan, np.inf, -np.inf])
        if 2 in damage and k == 0:
            logits = logits[:, :, : rng.choice([1, h]), :1]                        # smaller than the image
        name = f"{image_id}_blob_0.mat"
        if 3 in damage and k == 2:
            name = rng.choice(["_blob_0.mat", "x y_blob_0.mat", "\u00e9_blob_0.mat", f"{image_id}.mat", ".mat"])
        matio.write_blob_mat(str(dirs["features"] / name), logits)
        if 4 in damage and k == 1:
            path = dirs["features"] / name
            path.write_bytes(mutate_bytes(rng, path.read_bytes()))
        img = Image.fromarray(nrng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        jpg = dirs["JPEGImages"] / f"{image_id}.jpg"
        if not (5 in damage and k == 2):
            img.save(jpg, format="JPEG")
            if 6 in damage and k == 0:
                jpg.write_bytes(mutate_bytes(rng, jpg.read_bytes()))
        labels = nrng.integers(0, 21, (h, w)).astype(np.uint8)
        if 7 in damage and k == 1:
            labels[0, 0] = rng.choice([21, 200, 255])
        gh, gw = (h, w) if not (8 in damage and k == 0) else (h + 1, w)
        palette.save_palette_png(str(dirs["gt"] / f"{image_id}.png"), np.resize(labels, (gh, gw)))
        pred = dirs["pred"] / f"{image_id}.png"
        if 9 in damage and k == 2:
            Image.fromarray(nrng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(
                rng.choice(["RGB", "L", "I;16", "1"])).save(pred)
        elif not (10 in damage and k == 1):
            palette.save_palette_png(str(pred), labels)
        if 11 in damage and k == 0:
            pred.write_bytes(mutate_bytes(rng, pred.read_bytes()))
    text = "\n".join(ids) + "\n"
    if rng.random() < 0.3:
        text = mutate_text(rng, text)
    (root / "ids.txt").write_bytes(text.encode("utf-8", "surrogatepass"))
    return dirs, root / "ids.txt"


def _no_tmp_left(folder):
    """Raise _Torn if a writer's temporary file (``.tmp-*``, caffe_compat.atomic) is left under ``folder``."""
    for dirpath, _, files in os.walk(folder):
        left = [f for f in files if f.startswith(".tmp")]
        if left:
            raise _Torn(f"temporary files left behind in {dirpath}: {left}")


def case_pipeline(rng, work):
    """The VOC pipeline's functions (gen_preds, evaluate, their readers) on a damaged tree."""
    from caffe_compat.pipeline import gen_preds as gp, voc_eval as ve
    dirs, ids = _voc_tree(rng, work)
    out = Path(work) / rng.choice(["out", "features/x", "ids.txt"])   # a results folder, or a file in its place
    op = rng.randrange(4)
    kw = {}
    if rng.random() < 0.3:
        kw["num_classes"] = rng.choice([0, 1, 2, 21, 255, 256, 2 ** 31, -1])
    if rng.random() < 0.3:
        kw["boundary_radii"] = rng.choice([(1,), (0,), (-1,), (float("nan"),), (1e9,), (1, 2, 3)])

    def act():
        try:
            if op == 0:
                gp.gen_preds(dirs["features"], dirs["JPEGImages"], out, flat=rng.random() < 0.5,
                             overwrite=rng.random() < 0.5, progress=False,
                             max_bytes=rng.choice([None, None, 0, 100, 10 ** 12]))
            elif op == 1:
                ve.evaluate(dirs["pred"], dirs["gt"], ids, allow_missing=rng.random() < 0.5,
                            strict_gt=rng.random() < 0.5, progress=False, **kw)
            elif op == 2:   # the chain: predictions from the features, then their score
                gp.gen_preds(dirs["features"], dirs["JPEGImages"], out, flat=True, progress=False)
                r = ve.evaluate(out, dirs["gt"], ids, allow_missing=True, progress=False, **kw)
                ve.format_table(r), ve.format_original(r)
            else:
                gp.read_features(next(iter(sorted(dirs["features"].iterdir()))),
                                 max_bytes=rng.choice([None, 0, 64, 10 ** 12]))
        finally:
            _no_tmp_left(out if out.is_dir() else out.parent)
    return act


def _cli_net_files(rng, work):
    """A prototxt (sometimes mutated) and its weights (sometimes mutated bytes) for the CLI cases."""
    text = rng.choice([NETS[0], NETS[2], NETS[5]])
    net = _build(text)
    weights = Path(work) / rng.choice(["w.caffemodel", "w.caffemodel.h5", "w.pt"])
    if weights.suffix == ".pt":
        net.save_checkpoint(weights)
    else:
        net.save(weights)
    if rng.random() < 0.4:
        weights.write_bytes(mutate_bytes(rng, weights.read_bytes()))
    if rng.random() < 0.4:
        text = mutate_text(rng, text)
    proto = Path(work) / "net.prototxt"
    proto.write_text(text, encoding="utf-8", errors="surrogatepass")
    return net, proto, weights


_ODD_OPTIONS = ["", "0", "-1", "nan", "1e999", "x", "\u00b2", "cuda:7", "gpu", "TRAIN", "1,2", "a=b", "=", "data=",
                "data=1,3,8,8", "data=0,0,0,0", "data=1,3,99999,99999"]


def case_cli(rng, work):
    """Every command of ``caffe-compat`` with valid, damaged and odd arguments, run as the console script runs.

    Wanted: exit status 0, or 2 with a message (a CaffeCompatError or argparse's usage error).
    Findings: status 1 (the CLI's "internal error": an exception that is not a CaffeCompatError),
    any exception escaping ``main``, a traceback written without ``-v``.
    """
    import numpy as np
    from PIL import Image
    net, proto, weights = _cli_net_files(rng, work)
    root = Path(work)
    odd = lambda: rng.choice(_ODD_OPTIONS)   # noqa: E731
    maybe = lambda value: value if rng.random() < 0.8 else odd()   # noqa: E731
    img = root / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(img)
    cmd = rng.choice(["info", "gen-preds", "eval", "convert", "export", "run", "test", "train", "none"])
    if cmd in ("gen-preds", "eval", "test"):   # the commands that read a data set
        dirs, ids = _voc_tree(rng, work)
    if cmd == "info":
        argv = ["info", maybe(str(proto))] + rng.choice([[], ["--weights", maybe(str(weights))], ["--json"],
                                                         ["--list-defines"], ["--phase", odd()], ["-D", odd()],
                                                         ["--preset", odd()], ["--device", odd()]])
    elif cmd == "gen-preds":
        argv = ["gen-preds", maybe(str(dirs["features"])), "--images", maybe(str(dirs["JPEGImages"])),
                "--out", maybe(str(root / "res")), "--no-progress"] + rng.choice(
                    [[], ["--flat"], ["--max-bytes", odd()], ["--comp-id", odd()], ["--testset", odd()]])
    elif cmd == "eval":
        argv = ["eval", maybe(str(dirs["pred"])), maybe(str(dirs["gt"])), "--list", maybe(str(ids)),
                "--no-progress"] + rng.choice([[], ["--json"], ["--original-format"], ["--allow-missing"],
                                               ["--num-classes", odd()], ["--boundary-radius", odd()]])
    elif cmd == "convert":
        argv = ["convert", maybe(str(proto)), maybe(str(weights)), "-o",
                maybe(str(root / rng.choice(["o.pt", "o.caffemodel", "o.h5", "o", "sub/o.pt"])))] + rng.choice(
                    [[], ["--lenient"], ["--to", odd()], ["--phase", odd()], ["--device", odd()]])
    elif cmd == "export":
        argv = ["export", maybe(str(proto)), maybe(str(weights)), "-o", maybe(str(root / "p.pt2"))] + rng.choice(
            [[], ["--input", odd()], ["--dynamic"], ["--float64"], ["--lenient"], ["--device", odd()]])
    elif cmd == "run":
        argv = ["run", maybe(str(proto)), maybe(str(weights)), "--image", maybe(str(img)), "--out",
                maybe(str(root / "runout")), "--no-progress"] + rng.choice(
                    [[], ["--mean", odd()], ["--scale", odd()], ["--feed", odd()], ["--blobs", odd()],
                     ["--resize"], ["--no-fit"], ["--mask-point", odd()], ["--mask-window", odd()],
                     ["--input-name", odd()], ["--lenient"]])
    elif cmd == "test":
        argv = ["test", maybe(str(proto)), maybe(str(weights)), "--no-progress", "--workers", "0"] + rng.choice(
            [[], ["--iterations", odd()], ["--list", maybe(str(ids))], ["--out", maybe(str(root / "t"))]])
    elif cmd == "train":
        solver = root / "solver.prototxt"
        solver.write_text(mutate_text(rng, f'net: "{proto}"\nbase_lr: 0.01\nmax_iter: 2\nlr_policy: "fixed"\n'
                                           f'snapshot_prefix: "{root}/snap"\n'), errors="surrogatepass")
        argv = ["train", maybe(str(solver))]
    else:
        argv = rng.choice([[], [odd()], ["--version"], ["info"], ["run", "--image"]])

    def act():
        import contextlib
        import logging
        from caffe_compat import cli
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                handler = logging.StreamHandler(err)
                logging.getLogger().addHandler(handler)
                logging.disable(logging.NOTSET)   # run_case silences logging; the CLI's messages are the point
                try:
                    rc = cli.main(argv)
                finally:
                    logging.disable(logging.CRITICAL)
                    logging.getLogger().removeHandler(handler)
        except SystemExit as e:   # argparse: --version (0) and usage errors (2)
            rc = e.code if isinstance(e.code, int) else 2
        text = err.getvalue()
        _no_tmp_left(root)
        if "Traceback (most recent call last)" in text:
            raise AssertionError(f"traceback without -v for {argv!r}: {text.strip().splitlines()[-1][:200]}")
        if rc == 1:
            line = next((ln for ln in text.splitlines() if "internal error" in ln), text.strip()[-200:])
            raise RuntimeError(f"{cmd}: {line[:300]}")
        if rc not in (0, 2):
            raise RuntimeError(f"{cmd}: exit status {rc}")
        if rc == 2:
            lines = text.strip().splitlines()
            raise _CliRefused(f"{cmd}: {lines[-1][:160] if lines else 'no message'}")
    return act


class _CliRefused(Exception):
    """The CLI refused the arguments with a message and exit status 2: the wanted answer to bad input."""


def _abort():
    os.abort()


def _hang():
    import ctypes
    ctypes.CDLL(None).sleep(3600)   # in C, using no CPU: only the parent's watchdog ends it


#: ``selftest`` (not a fuzz family): by seed % 4 the case succeeds, raises a raw error, aborts the
#: child, or hangs in C code; tests check that each outcome is attributed to its case.
_SELFTEST_ACTS = [lambda: None, lambda: {}["raw"], _abort, _hang]


FAMILIES = {
    "prototxt": case_prototxt, "caffemodel": case_caffemodel, "hdf5": case_hdf5, "checkpoint": case_checkpoint,
    "pt2": case_pt2, "forward": case_forward, "mat": case_mat, "writers": case_writers,
    "images": case_images, "lists": case_lists, "pipeline": case_pipeline, "cli": case_cli,
}


# ---------------------------------------------------------------------------------------- child
def run_case(family: str, seed: int, root: str):
    """Run one case; returns ``(outcome, detail)`` with outcome ok / error / raw / torn / skip.

    A family function prepares the case (mutating a valid file: fuzzer code, whose failure is a
    ``skip``) and returns the action that calls the library, the part whose outcome counts.
    """
    import logging
    from caffe_compat.errors import CaffeCompatError
    logging.disable(logging.CRITICAL)
    rng = random.Random(f"{family}:{seed}")
    work = tempfile.mkdtemp(dir=root)
    os.chdir(work)   # relative paths (an empty file name, say) stay inside the case's folder
    try:
        act = _SELFTEST_ACTS[seed % 4] if family == "selftest" else FAMILIES[family](rng, work)
    except Exception as e:  # noqa: BLE001 - the fuzzer's own setup failed: not a finding
        shutil.rmtree(work, ignore_errors=True)
        return "skip", f"setup: {type(e).__name__}: {str(e)[:200]}"
    try:
        act()
        return "ok", ""
    except _Torn as e:
        return "torn", str(e)
    except _CliRefused as e:
        return "error", f"cli exit 2 {e}"
    except CaffeCompatError as e:
        return "error", type(e).__name__
    except BaseException as e:  # noqa: BLE001 - everything else is a finding
        if isinstance(e, KeyboardInterrupt):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return "raw", f"{type(e).__name__}: {first}"
    finally:
        os.chdir(root)
        shutil.rmtree(work, ignore_errors=True)


def child_main(case_file: str, start: int, mem_gib: float, case_timeout: float) -> None:
    """Run cases ``start..`` of the JSON list, printing ``S i`` before and ``D i outcome detail`` after each."""
    import resource
    import signal
    import torch
    import caffe_compat  # noqa: F401  (import cost before the limits)
    torch.set_num_threads(1)
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    limit = int(vm + mem_gib * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    os.environ.pop("CAFFE_COMPAT_MAX_BYTES", None)   # the default budget must see the rlimit

    def on_alarm(signum, frame):
        raise TimeoutError(f"case ran over {case_timeout} s of CPU time")
    # CPU time, not wall time: a child starved by a loaded machine (or `nice`) is not timed out.
    signal.signal(signal.SIGPROF, on_alarm)
    cases = json.loads(Path(case_file).read_text())
    root = tempfile.mkdtemp(prefix="fuzz-")
    try:
        for i in range(start, len(cases)):
            family, seed = cases[i]
            print(f"S {i}", flush=True)
            signal.setitimer(signal.ITIMER_PROF, case_timeout)
            try:
                outcome, detail = run_case(family, seed, root)
            except TimeoutError as e:
                outcome, detail = "timeout", str(e)
            signal.setitimer(signal.ITIMER_PROF, 0)
            if outcome == "raw" and detail.startswith("TimeoutError: case ran over"):
                outcome = "timeout"
            print(f"D {i} {outcome} {json.dumps(detail)}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------- parent
def run_cases(cases, *, batch: int = 200, case_timeout: float = 10.0, mem_gib: float = 4.0,
              hang_timeout: float = None, startup_timeout: float = 900.0, nice: int = 0, progress=None):
    """Run ``[(family, seed)]`` in child processes; returns ``[(family, seed, outcome, detail)]``.

    ``case_timeout``: CPU seconds a case may use (the child interrupts it); ``hang_timeout``:
    wall-clock seconds without an answer after which the parent kills the child and records a
    ``timeout`` for the running case (default ``max(120, 10 * case_timeout)``: generous, since a
    loaded machine slows children down); ``startup_timeout``: for a child to import everything.
    """
    if hang_timeout is None:
        hang_timeout = max(120.0, 10 * case_timeout)
    results = [None] * len(cases)
    with tempfile.TemporaryDirectory(prefix="fuzz-cases-") as tmp:
        pos = 0
        while pos < len(cases):
            chunk = cases[pos:pos + batch]
            case_file = Path(tmp) / "cases.json"
            case_file.write_text(json.dumps(chunk))
            start = 0
            while start < len(chunk):
                start = _run_child(chunk, case_file, start, results, pos, case_timeout, hang_timeout, mem_gib,
                                   startup_timeout, nice, progress)
            pos += len(chunk)
    return results


def _run_child(chunk, case_file, start, results, offset, case_timeout, hang_timeout, mem_gib, startup_timeout,
               nice, progress):
    """One child from case ``start``; returns the index to restart from (``len(chunk)`` when done)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(case_file), str(start),
           str(mem_gib), str(case_timeout)]
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)
    current, deadline, buf = None, time.monotonic() + startup_timeout, b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                if current is None:
                    raise RuntimeError("fuzz child did not start in time")
                _record(results, offset, chunk, current, "timeout", f"no answer in {hang_timeout:.0f} s (wall)",
                        progress)
                return current + 1
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                rc = proc.wait()
                if current is None:
                    if start >= len(chunk):
                        return len(chunk)
                    raise RuntimeError(f"fuzz child exited with {rc} before running a case")
                _record(results, offset, chunk, current, "crash", f"child exit status {rc}", progress)
                return current + 1
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                parts = line.decode("utf-8", "replace").split(" ", 3)
                if parts[0] == "S":
                    current = int(parts[1])
                    deadline = time.monotonic() + hang_timeout
                elif parts[0] == "D":
                    i = int(parts[1])
                    _record(results, offset, chunk, i, parts[2], json.loads(parts[3]), progress)
                    current = None
                    deadline = time.monotonic() + hang_timeout
                    if i == len(chunk) - 1:
                        proc.wait()
                        return len(chunk)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _record(results, offset, chunk, i, outcome, detail, progress):
    family, seed = chunk[i]
    results[offset + i] = (family, seed, outcome, detail)
    if progress is not None:
        progress(results[offset + i])


def make_cases(n: int, families, seed: int = 0):
    """``n`` cases spread evenly over ``families`` (round robin), seeds ``seed*10**6 + k``."""
    return [(families[k % len(families)], seed * 10 ** 6 + k // len(families)) for k in range(n)]


def table(results) -> str:
    counts = defaultdict(Counter)
    for family, _, outcome, _ in results:
        counts[family][outcome] += 1
    fams = [f for f in FAMILIES if f in counts]
    head = "| family | cases | " + " | ".join(OUTCOMES) + " |"
    lines = [head, "|" + "---|" * (len(OUTCOMES) + 2)]
    total = Counter()
    for f in fams:
        c = counts[f]
        total.update(c)
        lines.append(f"| {f} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES) + " |")
    lines.append(f"| **all** | {sum(total.values())} | " + " | ".join(str(total[o]) for o in OUTCOMES) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=200, help="cases per child process")
    ap.add_argument("--jobs", type=int, default=1, help="child processes at once")
    ap.add_argument("--case-timeout", type=float, default=10.0, help="CPU seconds per case")
    ap.add_argument("--hang-timeout", type=float, default=None, help="wall seconds without an answer")
    ap.add_argument("--mem-gib", type=float, default=4.0, help="address space a child may add after imports")
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--json", help="write every result to this file")
    args = ap.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    cases = make_cases(args.cases, families, args.seed)
    from tqdm import tqdm
    t0 = time.time()
    bar = tqdm(total=len(cases), unit="case")
    failures = []

    def progress(r):
        bar.update(1)
        if r[2] in FAILURES:
            failures.append(r)
            tqdm.write(f"{r[2]}: {r[0]} seed {r[1]}: {r[3]}")
    if args.jobs <= 1:
        results = run_cases(cases, batch=args.batch, case_timeout=args.case_timeout, mem_gib=args.mem_gib,
                            hang_timeout=args.hang_timeout, nice=args.nice, progress=progress)
    else:
        from concurrent.futures import ThreadPoolExecutor
        parts = [cases[j::args.jobs] for j in range(args.jobs)]
        with ThreadPoolExecutor(args.jobs) as pool:
            futs = [pool.submit(run_cases, p, batch=args.batch, case_timeout=args.case_timeout,
                                hang_timeout=args.hang_timeout, mem_gib=args.mem_gib, nice=args.nice,
                                progress=progress) for p in parts]
            results = [r for f in futs for r in f.result()]
    bar.close()
    elapsed = time.time() - t0
    print(f"\n{len(results)} cases, seed {args.seed}, {elapsed:.0f} s, "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}, {platform.machine()} {os.cpu_count()} cores, "
          f"python {platform.python_version()}\n")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=0))
    if failures:
        kinds = Counter((f[0], f[2], f[3].split(":")[0]) for f in failures)
        print("\nfailures by kind:")
        for (fam, outcome, kind), n in kinds.most_common():
            print(f"  {n:5d}  {fam} {outcome} {kind}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        child_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit(main())
