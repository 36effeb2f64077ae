"""Tests of the protobuf schema (proto/*.proto) and its runtime loader (caffe_compat.schema)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require_reference
from google.protobuf import descriptor_pool, text_format
from google.protobuf.descriptor import FieldDescriptor

from caffe_compat import schema

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = (Path(__file__).resolve().parents[1] / ".." / "shared" / "reference").resolve()
CONFIGS = REFERENCE / "configs"
PROTO_MD = REFERENCE / "PROTO.md"


def _need(path: Path) -> Path:
    if not path.exists():
        require_reference(path)
    return path


# ------------------------------------------------------------------------------------------------
# (a) every original config parses as text
# ------------------------------------------------------------------------------------------------

# Values for ${NAME} placeholders when golden/shapes/<folder>__<file>.json has no record
# (taken from golden/shapes/README.md; paths are dummies).
FALLBACK_TEMPLATE_VALUES = {
    "BATCH_SIZE": "1",
    "CROP_SIZE": "321",
    "HALF_SIZE": "161",
    "MASK_SIZE": "3",
    "MASK_PAD": "1",
    "MASK_DILATION": "1",
    "MASK2_SIZE": "3",
    "MASK2_PAD": "1",
    "MASK2_DILATION": "2",
    "MASK3_SIZE": "3",
    "MASK3_PAD": "1",
    "MASK3_DILATION": "5",
    "EMBS_LR1": "1",
    "EMBS_LR2": "2",
    "EMBS_LR3": "2",
    "MAIN_LR1": "1",
    "MAIN_LR2": "2",
    "FINAL_LR1": "1",
    "FINAL_LR2": "2",
    "CRF_LR1": "0",
    "CRF_LR2": "0",
    "MAINSCALE_LR1": "1",
    "MAINSCALE_LR2": "2",
    "NUM_LABELS": "21",
    "LEARNING_RATE": "0.001",
    "ITERS": "1449",
    "ITER_SIZE": "1",
    "SNAP": "1000",
    "STEP": "2000",
    "SOLVER_MODE": "CPU",
    "DATASET": "voc12",
    "DATA_ROOT": "/nonexistent/VOC2012",
    "FEATURE_DIR": "/nonexistent/features",
    "EXP": "segaware",
    "NET_ID": "NETID",
    "TRAIN_SET": "voc_train_aug",
    "TEST_SET": "voc_val",
}

PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def _config_files():
    if not REFERENCE.is_dir():
        return [pytest.param(None, id="no-reference", marks=pytest.mark.skip(
            reason=f"reference configs not available: {CONFIGS} does not exist"))]
    return [pytest.param(p, id=f"{p.parent.name}/{p.name}")
            for p in sorted(CONFIGS.glob("*/*.prototxt"))]


def _template_values(path: Path) -> dict:
    values = dict(FALLBACK_TEMPLATE_VALUES)
    record = REFERENCE / "golden" / "shapes" / f"{path.parent.name}__{path.stem}.json"
    if record.is_file():
        values.update(json.loads(record.read_text()).get("template_values") or {})
    return values


def _instantiate(path: Path) -> str:
    text = path.read_text()
    values = _template_values(path)
    missing = sorted(set(PLACEHOLDER.findall(text)) - set(values))
    assert not missing, f"no template value for placeholders {missing} in {path}"
    text = PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
    assert "${" not in text
    return text


@pytest.mark.parametrize("path", _config_files())
def test_config_parses(path):
    is_solver = path.name.startswith("solver")
    msg = schema.SolverParameter() if is_solver else schema.NetParameter()
    text = _instantiate(path)
    text_format.Merge(text, msg)
    # The strict parser (rejects a repeated singular field, like Caffe's) gives the same message.
    assert text_format.Parse(text, type(msg)()) == msg
    # Caffe's text parser also rejects missing proto2 `required` fields.
    assert msg.IsInitialized(), msg.FindInitializationErrors()
    if is_solver:
        assert msg.train_net and msg.base_lr > 0 and msg.max_iter > 0
        return
    assert len(msg.layer) > 0 and not msg.layers
    for layer in msg.layer:
        assert layer.name and layer.type
    types = {layer.type for layer in msg.layer}
    # Earlier-schema-only fields are reachable by name.
    if "TwoImageData" in types:
        layer = next(lay for lay in msg.layer if lay.type == "TwoImageData")
        assert layer.HasField("two_image_data_param")
        assert layer.two_image_data_param.first_is_color is True
        assert layer.two_image_data_param.second_is_color is False
    if "Input" in types:
        layer = next(lay for lay in msg.layer if lay.type == "Input")
        assert len(layer.input_param.shape) == 1 and len(layer.input_param.shape[0].dim) == 4


def test_config_values_spot_checks():
    """A few values from the res configs, through the enum / fork-only fields."""
    net = schema.NetParameter()
    text_format.Merge(_instantiate(_need(CONFIGS / "res" / "test.prototxt")), net)
    by_type = {}
    for layer in net.layer:
        by_type.setdefault(layer.type, []).append(layer)
    crf = by_type["NormConvMeanfield"][0]
    assert crf.norm_conv_meanfield_param.num_iterations >= 1
    assert len(crf.norm_conv_meanfield_param.kernel_size) == 2
    assert any(lay.deletetop for lay in net.layer)
    reduce_ops = {schema.enum_name(lay.channel_reduce_param, "operation",
                                   lay.channel_reduce_param.operation)
                  for lay in by_type.get("ChannelReduce", [])}
    assert reduce_ops <= {"SUM", "MAX"} and reduce_ops


def test_solver_enum_by_name():
    solver = schema.SolverParameter()
    text_format.Merge(_instantiate(_need(CONFIGS / "vgg" / "solver.prototxt")), solver)
    assert solver.solver_mode == schema.enum_value(solver, "solver_mode", "CPU")


# ------------------------------------------------------------------------------------------------
# (b) field numbers, packing and defaults
# ------------------------------------------------------------------------------------------------

FIELD_NUMBERS = [
    ("NetParameter", "name", 1),
    ("NetParameter", "layers", 2),
    ("NetParameter", "input", 3),
    ("NetParameter", "input_shape", 8),
    ("NetParameter", "layer", 100),
    ("LayerParameter", "name", 1),
    ("LayerParameter", "type", 2),
    ("LayerParameter", "param", 6),
    ("LayerParameter", "blobs", 7),
    ("LayerParameter", "phase", 10),
    ("LayerParameter", "transform_param", 100),
    ("LayerParameter", "convolution_param", 106),
    ("LayerParameter", "pooling_param", 121),
    ("LayerParameter", "batch_norm_param", 139),
    ("LayerParameter", "scale_param", 142),
    ("LayerParameter", "interp_param", 143),
    ("LayerParameter", "seg_accuracy_param", 144),
    ("LayerParameter", "mat_write_param", 145),
    ("LayerParameter", "channel_reduce_param", 152),
    ("LayerParameter", "dist_loss_param", 153),
    ("LayerParameter", "im2dist_param", 154),
    ("LayerParameter", "im2parity_param", 155),
    ("LayerParameter", "norm_conv_param", 156),
    ("LayerParameter", "norm_conv_meanfield_param", 157),
    ("LayerParameter", "l1_loss_param", 3001),
    ("LayerParameter", "aug_param", 3002),
    ("LayerParameter", "pullsfrom", 6969),
    ("LayerParameter", "deletebottom", 69696),
    ("LayerParameter", "deletetop", 696969),
    ("V1LayerParameter", "layer", 1),
    ("V1LayerParameter", "name", 4),
    ("V1LayerParameter", "type", 5),
    ("V1LayerParameter", "blobs", 6),
    ("V1LayerParameter", "param", 1001),
    ("V0LayerParameter", "blobs", 50),
    ("BlobProto", "num", 1),
    ("BlobProto", "data", 5),
    ("BlobProto", "diff", 6),
    ("BlobProto", "shape", 7),
    ("BlobProto", "double_data", 8),
    ("BlobShape", "dim", 1),
    ("ConvolutionParameter", "bottom_is_im2col", 19),
    ("ConvolutionParameter", "normalized_convolution", 20),
    ("LossParameter", "weight_source", 4),
    ("TransformationParameter", "scale_factors", 8),
    ("ImageDataParameter", "label_type", 16),
    ("SolverParameter", "iter_size", 36),
    ("SolverParameter", "type", 40),
    ("SolverState", "history", 3),
]


@pytest.mark.parametrize("message,field,number", FIELD_NUMBERS)
def test_field_numbers(message, field, number):
    assert schema.field_number(message, field) == number


def test_packed_fields():
    packed = {
        ("BlobProto", "data"), ("BlobProto", "diff"), ("BlobProto", "double_data"),
        ("BlobProto", "double_diff"), ("BlobShape", "dim"),
    }
    for name in schema.all_message_names():
        if not name.startswith("caffe."):
            continue
        desc = schema.message_descriptor(name)
        for f in desc.fields:
            is_packed = f.GetOptions().packed if f.GetOptions().HasField("packed") else False
            assert is_packed == ((desc.name, f.name) in packed), f.full_name
    for name in ("caffe_weights.BlobProto", "caffe_weights.BlobShape"):
        for f in schema.message_descriptor(name).fields:
            if f.label == FieldDescriptor.LABEL_REPEATED:
                assert f.GetOptions().packed, f.full_name


def test_defaults():
    f32 = lambda x: float(np.float32(x))  # noqa: E731 - upb stores float fields as float32
    bn = schema.message_class("BatchNormParameter")()
    assert bn.eps == pytest.approx(1e-5, rel=1e-6)
    assert bn.moving_average_fraction == pytest.approx(f32(0.999))
    assert not bn.HasField("use_global_stats")
    cr = schema.message_class("ChannelReduceParameter")()
    assert schema.enum_name(cr, "operation", cr.operation) == "MAX" and cr.num_channels == 1
    im2dist = schema.message_class("Im2distParameter")()
    assert schema.enum_name(im2dist, "norm", im2dist.norm) == "L2"
    conv = schema.message_class("ConvolutionParameter")()
    assert conv.bias_term is True and conv.group == 1 and conv.axis == 1
    assert schema.enum_name(conv, "engine", conv.engine) == "DEFAULT"
    pool = schema.message_class("PoolingParameter")()
    assert schema.enum_name(pool, "pool", pool.pool) == "MAX" and pool.stride == 1
    interp = schema.message_class("InterpParameter")()
    assert (interp.zoom_factor, interp.shrink_factor, interp.pad_beg) == (1, 1, 0)
    assert schema.LayerParameter().pullsfrom == "none"
    assert schema.FillerParameter().type == "constant"
    assert schema.FillerParameter().std == 1.0
    assert schema.ParamSpec().lr_mult == 1.0 and schema.ParamSpec().decay_mult == 1.0
    assert schema.NetState().phase == schema.enum_value("NetState", "phase", "TEST")
    solver = schema.SolverParameter()
    assert solver.type == "SGD" and solver.iter_size == 1 and solver.random_seed == -1
    assert solver.momentum == 0.0 and solver.weight_decay == 0.0
    assert solver.regularization_type == "L2"
    assert schema.enum_name(solver, "solver_mode", solver.solver_mode) == "GPU"
    img = schema.message_class("ImageDataParameter")()
    assert img.ignore_label == 255 and img.batch_size == 1 and img.is_color is True
    assert schema.enum_name(img, "label_type", img.label_type) == "IMAGE"
    sa = schema.message_class("SegAccuracyParameter")()
    assert schema.enum_name(sa, "metric", sa.metric) == "PixelAccuracy" and sa.reset is True
    ncm = schema.message_class("NormConvMeanfieldParameter")()
    assert ncm.num_iterations == 1 and not ncm.HasField("num_iterations")
    two = schema.message_class("TwoImageDataParameter")()
    assert two.first_is_color is True and two.second_is_color is False
    assert schema.message_class("CropParameter")().axis == 2


def test_required_fields():
    def required(message):
        desc = schema.message_descriptor(message)
        return {f.name for f in desc.fields if f.label == FieldDescriptor.LABEL_REQUIRED}

    assert required("DistLossParameter") == {"alpha", "beta"}
    assert required("NormConvMeanfieldParameter") == {"num_iterations"}
    assert required("MatWriteParameter") == {"prefix"}
    assert required("MatReadParameter") == {"prefix"}
    assert required("UniqueLabelParameter") == {"max_labels"}
    assert required("ReplicateParameter") == {"num_copies"}
    assert required("MultiStageMeanfieldParameter") == {
        "theta_alpha", "theta_beta", "theta_gamma", "num_iterations"}
    msg = schema.message_class("DistLossParameter")()
    text_format.Merge("ignore_label: 255 alpha: 0.5", msg)
    assert not msg.IsInitialized()
    text_format.Merge("beta: 2", msg)
    assert msg.IsInitialized()


def test_earlier_schema_fields_renumbered():
    """Earlier-schema-only LayerParameter fields live in a range used by no other schema."""
    earlier_only = {"input_param": 143, "four_image_data_param": 144, "two_image_data_param": 148,
                    "replicate_param": 152, "crop_param": 154, "multi_stage_meanfield_param": 155}
    desc = schema.LayerParameter.DESCRIPTOR
    head_numbers = {f.number for f in desc.fields if f.name not in earlier_only}
    bvlc_numbers = set(range(1, 200))  # BVLC Caffe's LayerParameter stays below 200
    for name, earlier in earlier_only.items():
        number = desc.fields_by_name[name].number
        assert number == 4000 + earlier
        assert number not in head_numbers and number not in bvlc_numbers
    numbers = [f.number for f in desc.fields]
    assert len(numbers) == len(set(numbers))


def test_private_pool_and_lookup_helpers():
    assert schema.NetParameter.DESCRIPTOR.file.pool is schema.POOL
    assert schema.POOL is not descriptor_pool.Default()
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindMessageTypeByName("caffe_weights.WeightsNet")
    assert schema.message_class("Datum") is schema.message_class("caffe.Datum")
    assert schema.message_class("WeightsNet") is schema.WeightsNet
    assert schema.message_class("caffe_weights.BlobProto") is schema.WeightsBlobProto
    assert schema.message_class("BlobProto") is schema.BlobProto  # caffe package first
    with pytest.raises(KeyError):
        schema.message_class("NoSuchMessage")
    assert schema.enum_name("V1LayerParameter", "type", 35) == "ABSVAL"
    assert schema.enum_value(schema.V1LayerParameter, "type", "SOFTMAX_LOSS") == 21
    assert schema.enum_values("EltwiseParameter", "operation") == {"PROD": 0, "SUM": 1, "MAX": 2}
    assert schema.enum_descriptor("Phase").values_by_name["TRAIN"].number == 0
    with pytest.raises(ValueError):
        schema.enum_name("PoolingParameter", "pool", 7)
    with pytest.raises(TypeError):
        schema.enum_name("PoolingParameter", "kernel_size", 1)
    for cls in (schema.NetParameter, schema.LayerParameter, schema.V1LayerParameter,
                schema.BlobProto, schema.BlobShape, schema.SolverParameter, schema.SolverState,
                schema.FillerParameter, schema.ParamSpec, schema.NetState, schema.NetStateRule,
                schema.WeightsNet):
        assert cls().SerializeToString() == b""


# --- full cross-check against the PROTO.md tables -------------------------------------------------

_SCALAR_TYPES = {
    "string": FieldDescriptor.TYPE_STRING, "bytes": FieldDescriptor.TYPE_BYTES,
    "bool": FieldDescriptor.TYPE_BOOL, "float": FieldDescriptor.TYPE_FLOAT,
    "double": FieldDescriptor.TYPE_DOUBLE, "int32": FieldDescriptor.TYPE_INT32,
    "uint32": FieldDescriptor.TYPE_UINT32, "int64": FieldDescriptor.TYPE_INT64,
    "uint64": FieldDescriptor.TYPE_UINT64,
}
_LABELS = {"optional": FieldDescriptor.LABEL_OPTIONAL, "repeated": FieldDescriptor.LABEL_REPEATED,
           "required": FieldDescriptor.LABEL_REQUIRED}


def _proto_md_tables():
    """{message: ([field rows], {enum: [(name, value)]})} from the PROTO.md tables."""
    tables, current = {}, None
    for line in _need(PROTO_MD).read_text().splitlines():
        heading = re.match(r"^### (\w+)( \(earlier commit only\))?\s*$", line)
        if heading:
            current = tables.setdefault(heading.group(1), ([], {}))
            continue
        if line.startswith("## "):
            current = None
        if current is None:
            continue
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            current[0].append(dict(name=cells[0].strip("`"), number=int(cells[1]), label=cells[2],
                                   type=cells[3], default=cells[4], wire=cells[5]))
        enum = re.match(r"^Enum `(\w+)\.(\w+)`: (.*)$", line)
        if enum:
            current[1][enum.group(2)] = [(n, int(v)) for n, v in
                                         re.findall(r"`(\w+)`=(\d+)", enum.group(3))]
    return tables


def _check_default(field, text):
    if text == "—":
        assert not field.has_default_value, f"{field.full_name} has an unexpected default"
        return
    assert field.has_default_value, f"{field.full_name} lacks default {text}"
    value = text.strip("`")
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        assert field.default_value == value.strip("'\""), field.full_name
    elif field.type == FieldDescriptor.TYPE_BOOL:
        assert field.default_value is (value == "true"), field.full_name
    elif field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type.values_by_number[field.default_value].name == value, field.full_name
    elif field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        assert math.isclose(field.default_value, float(value), rel_tol=1e-6), field.full_name
    else:
        assert field.default_value == int(value), field.full_name


def test_schema_matches_proto_md():
    tables = _proto_md_tables()
    assert len(tables) > 70
    for message, (rows, enums) in tables.items():
        desc = schema.message_descriptor(f"caffe.{message}")
        for row in rows:
            field = desc.fields_by_name.get(row["name"])
            assert field is not None, f"{message}.{row['name']} missing"
            where = field.full_name
            assert field.number == row["number"], where
            assert field.label == _LABELS[row["label"]], where
            kind, _, type_name = row["type"].partition(" ")
            if kind == "message":
                assert field.type == FieldDescriptor.TYPE_MESSAGE, where
                assert field.message_type.full_name == f"caffe.{type_name}", where
            elif kind == "enum":
                assert field.type == FieldDescriptor.TYPE_ENUM, where
                assert field.enum_type.full_name == f"caffe.{type_name}", where
            else:
                assert field.type == _SCALAR_TYPES[row["type"]], where
            packed = field.GetOptions().HasField("packed") and field.GetOptions().packed
            assert packed == ("packed" in row["wire"]), where
            _check_default(field, row["default"])
        for enum_name, values in enums.items():
            enum = desc.enum_types_by_name[enum_name]
            assert [(v.name, v.number) for v in enum.values] == values, enum.full_name
        # Fields not in the PROTO.md table are exactly the earlier-schema extras (PROTO.md §5).
        extra = {f.name for f in desc.fields} - {row["name"] for row in rows}
        allowed = {
            "LayerParameter": {"input_param", "four_image_data_param", "two_image_data_param",
                               "replicate_param", "crop_param", "multi_stage_meanfield_param"},
            "ConvolutionParameter": {"normalized_convolution"},
            "LossParameter": {"weight_source"},
        }.get(message, set())
        assert extra == allowed, f"{message}: unexpected fields {sorted(extra - allowed)}"
    phase = schema.enum_descriptor("caffe.Phase")
    assert [(v.name, v.number) for v in phase.values] == [("TRAIN", 0), ("TEST", 1)]
    # Every message of the schema is documented in PROTO.md.
    ours = {n.split(".", 1)[1] for n in schema.all_message_names() if n.startswith("caffe.")}
    assert ours == set(tables)


# ------------------------------------------------------------------------------------------------
# (c) binary weights
# ------------------------------------------------------------------------------------------------


def _golden_caffemodel(case: str) -> bytes:
    npz = np.load(_need(REFERENCE / "golden" / "layers" / f"{case}.npz"))
    return npz["caffemodel"].tobytes()


def test_caffemodel_parses_with_both_schemas():
    data = _golden_caffemodel("conv_k1")
    npz = np.load(REFERENCE / "golden" / "layers" / "conv_k1.npz")
    net = schema.NetParameter.FromString(data)
    light = schema.WeightsNet.FromString(data)
    assert [lay.name for lay in net.layer] == [lay.name for lay in light.layer]
    conv = next(lay for lay in net.layer if lay.name == "conv")
    conv_light = next(lay for lay in light.layer if lay.name == "conv")
    assert conv.type == conv_light.type == "Convolution"
    assert len(conv.blobs) == len(conv_light.blobs) == 2
    for i, (blob, blob_light) in enumerate(zip(conv.blobs, conv_light.blobs)):
        expected = npz[f"param/conv/{i}"]
        assert tuple(blob.shape.dim) == tuple(blob_light.shape.dim) == expected.shape
        np.testing.assert_array_equal(np.asarray(blob.data, np.float32).reshape(expected.shape),
                                      expected)
        np.testing.assert_array_equal(np.asarray(blob_light.data, np.float32),
                                      np.asarray(blob.data, np.float32))
    assert conv.convolution_param.num_output == 6
    assert list(conv.convolution_param.kernel_size) == [1]


def test_golden_caffemodels_roundtrip_bytes():
    """Everything the fork wrote is known to the schema: re-serialising gives the same bytes."""
    index = json.loads(_need(REFERENCE / "golden" / "layers" / "INDEX.json").read_text())
    checked = 0
    for case in sorted(index):
        path = REFERENCE / "golden" / "layers" / f"{case}.npz"
        if not path.is_file():
            continue
        npz = np.load(path)
        if "caffemodel" not in npz.files:
            continue
        data = npz["caffemodel"].tobytes()
        net = schema.NetParameter.FromString(data)
        assert net.SerializeToString() == data, case
        light = schema.WeightsNet.FromString(data)
        assert [len(lay.blobs) for lay in light.layer] == [len(lay.blobs) for lay in net.layer]
        checked += 1
    assert checked > 10


def test_golden_net_files_roundtrip():
    """Whole-net caffemodels, solver states and their prototxts written by the fork."""
    golden = _need(REFERENCE / "golden")
    models = sorted(golden.glob("nets/*.caffemodel")) + sorted(golden.glob("e2e/**/*.caffemodel"))
    assert models
    for path in models:
        data = path.read_bytes()
        net = schema.NetParameter.FromString(data)
        assert net.SerializeToString() == data, path
        light = schema.WeightsNet.FromString(data)
        assert [(lay.name, lay.type, len(lay.blobs)) for lay in light.layer] == \
            [(lay.name, lay.type, len(lay.blobs)) for lay in net.layer]
    for path in sorted(golden.glob("nets/*.prototxt")):
        net = text_format.Parse(path.read_text(), schema.NetParameter())
        assert net.IsInitialized() and len(net.layer) > 0, path
    for path in sorted(golden.glob("solver/*.npz")):
        npz = np.load(path)
        state_bytes = npz["solverstate_final"].tobytes()
        state = schema.SolverState.FromString(state_bytes)
        assert state.SerializeToString() == state_bytes and state.iter > 0 and state.history
        for key in ("caffemodel_init", "caffemodel_final"):
            data = npz[key].tobytes()
            assert schema.NetParameter.FromString(data).SerializeToString() == data
        solver = text_format.Parse(str(npz["solver_prototxt"]), schema.SolverParameter())
        assert solver.IsInitialized()
        text_format.Parse(str(npz["net_prototxt"]), schema.NetParameter())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    """A LEN (wire type 2) field, encoded by hand."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_weights_reader_survives_foreign_fields():
    """A BVLC-style layer with InputParameter at 143 (InterpParameter here) and a V1 layer."""
    shape = schema.BlobShape(dim=[1, 3, 5, 5])
    input_param = schema.message_class("InputParameter")(shape=[shape]).SerializeToString()
    blob = schema.BlobProto(data=[1.5, -2.0], shape=schema.BlobShape(dim=[2]))
    layer = schema.LayerParameter(name="data", type="Input", blobs=[blob])
    raw_layer = layer.SerializeToString() + _len_field(143, input_param)
    v1 = schema.V1LayerParameter(
        name="old", type=schema.enum_value("V1LayerParameter", "type", "INNER_PRODUCT"),
        blobs=[schema.BlobProto(num=1, channels=1, height=2, width=3, data=range(6))])
    net_bytes = (schema.NetParameter(name="n", layers=[v1]).SerializeToString()
                 + _len_field(100, raw_layer))
    light = schema.WeightsNet.FromString(net_bytes)
    assert light.name == "n"
    assert light.layer[0].name == "data" and light.layer[0].type == "Input"
    assert list(light.layer[0].blobs[0].data) == [1.5, -2.0]
    assert light.layers[0].name == "old"
    assert schema.enum_name("V1LayerParameter", "type", light.layers[0].type) == "INNER_PRODUCT"
    assert light.layers[0].blobs[0].width == 3


def test_zero_axis_blob_and_unpacked_data():
    """A scalar blob has no shape at all; unpacked float encodings are accepted."""
    blob = schema.BlobProto(data=[0.25])
    assert not blob.HasField("shape")
    assert schema.BlobProto.FromString(blob.SerializeToString()).data[0] == 0.25
    unpacked = b"".join(b"\x2d" + np.float32(v).tobytes() for v in (1.0, 2.0))  # field 5, I32
    assert list(schema.WeightsBlobProto.FromString(unpacked).data) == [1.0, 2.0]
    assert list(schema.BlobProto.FromString(unpacked).data) == [1.0, 2.0]
    assert schema.BlobShape(dim=[2, 3]).SerializeToString() == b"\x0a\x02\x02\x03"  # packed


# ------------------------------------------------------------------------------------------------
# (d) the shipped descriptor set is up to date
# ------------------------------------------------------------------------------------------------


def test_descriptor_set_is_current():
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools (dev dependency grpcio-tools) is not installed; "
                    "cannot recompile proto/*.proto to check caffe_compat/_schema_desc.bin")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "build_schema.py"),
                             "--check"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
