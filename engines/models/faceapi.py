"""face-api.js's face-expression network (7 classes) as an ONNX model, built without TensorFlow.

Source: the npm package ``@vladmandic/face-api@1.7.15`` (MIT, Vladimir Mandic; a maintained
fork of face-api.js by Vincent Mühler, MIT). Only two data files of it are used,
``model/face_expression_model-weights_manifest.json`` and ``model/face_expression_model.bin``
(TF.js weights, uint8-quantised: ``value = q * scale + min``). :func:`fetch` gets them with
``npm pack`` (the tarball's sha512 checked against the registry's integrity string, the two
files' sha256 against :data:`FILE_SHA256`) into ``$CER_STREAM_CACHE/faceapi-1.7.15/``; nothing
here fetches implicitly: a missing file is a one-line :class:`~engines.models.errors.WeightsNotFound`
naming ``cer-stream models fetch faceapi-expression``.

The network (face-api's ``FaceExpressionNet`` over ``FaceFeatureExtractor``), as ported:

* input 112x112 RGB; ``x = (x - MEAN_RGB) / 255`` (in the graph, in that order, as
  ``FaceFeatureExtractor.forwardInput`` does; after the transpose to NCHW, where ONNX Runtime
  subtracts a per-channel constant over whole planes: on the NHWC input that broadcast over
  the 3-wide last axis cost about as much as a convolution; same numbers either way);
* four dense blocks (32, 64, 128, 256 channels). Block ``dense0`` starts with a plain 3x3
  convolution (stride 2, 'same', bias), the others with a depthwise-separable one (3x3
  depthwise, stride 2, then 1x1 pointwise, bias after); ``conv1..conv3`` are separable,
  stride 1, no activation of their own. With ``o1 = relu(conv0(x))``, ``o2 = conv1(o1)``,
  ``o3 = conv2(relu(o1 + o2))``, ``o4 = conv3(relu(o1 + (o2 + o3)))``, the block returns
  ``relu(o1 + (o2 + (o3 + o4)))``. The graph keeps running sums instead, ``s2 = o2 + o1``,
  ``s3 = o3 + s2``, ``s4 = o4 + s3`` (``in3 = relu(s2)``, ``in4 = relu(s3)``, out ``relu(s4)``):
  each addition then takes one convolution's output and nothing else reads it, so ONNX
  Runtime folds the addition and the ReLU into that convolution (its NCHWc Conv+Sum+ReLU
  fusion), about a third less time per face on one CPU thread. The sums are the same up to
  float32 rounding (re-associated: probabilities within 5e-7 of the TF.js association);
* 7x7 average pool (stride 2, 'valid': 7x7 -> 1x1), flatten to 256 = ``features`` (the
  penultimate layer, the embedding PFSA builds its prototypes in), ``fc`` (256 -> 7) =
  ``logits``, softmax = ``probs``.

Conventions of the port: the ONNX input is **NHWC** float32 ``input`` [N, 112, 112, 3] holding
RGB values 0..255 *after* face-api's padToSquare + resizeBilinear (:func:`preprocess`), the
layout TF.js works in; the graph transposes to NCHW first. TF 'same' padding is written
explicitly (stride 2 on an even size pads 0 before and 1 after). Weights are dequantised in
float64 and rounded to float32 once, as ``tf.io.decodeWeights`` does. Outputs ``probs`` and
``logits`` [N, 7] in :data:`LABELS` order (face-api's ``FACE_EXPRESSION_LABELS``), and
``features`` [N, 256] (:data:`FEATURE_DIM`), the pooled vector the ``fc`` layer reads.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engines.models.errors import WeightsNotFound
from engines.models.metadata import DescribedModel, write_metadata
from engines.models.npm import NpmFetchError, NpmFiles, fetch_files
from engines.models.storage import atomic_write, default_cache_dir, sha256_file

log = logging.getLogger("cer_stream.engines")

NAME = "faceapi-expression"
ROLE = "face_emotion"
#: face-api's ``FACE_EXPRESSION_LABELS``, the network's output order.
LABELS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")

NPM_PACKAGE = "@vladmandic/face-api"
FACEAPI_VERSION = "1.7.15"
NPM_SPEC = f"{NPM_PACKAGE}@{FACEAPI_VERSION}"
#: The npm registry's ``dist.integrity`` of the 1.7.15 tarball.
NPM_INTEGRITY = "sha512-WDMmK3CfNLo8jylWqMoQgf4nIst3M0fzx1dnac96wv/dvMTN4DxC/Pq1DGtduDk1lktCamQ3MIDXFnvrdHTXDw=="
MANIFEST_FILE = "face_expression_model-weights_manifest.json"
WEIGHTS_FILE = "face_expression_model.bin"
#: sha256 of the two files as shipped in the 1.7.15 tarball (``package/model/``).
FILE_SHA256 = {
    MANIFEST_FILE: "5b349c17c7836da506e03422cd6461c74085d8bb2713ad4114647dc5d28174c8",
    WEIGHTS_FILE: "9a9840f2cf1f4c7eab95f197512569345c00d2426754d4608b92af30e0300f3d",
}
#: Folder of the two files inside the model cache.
CACHE_SUBDIR = f"faceapi-{FACEAPI_VERSION}"
#: ``CER_STREAM_FACEAPI=DIR``: a folder holding the two files (looked at before the cache).
WEIGHTS_ENV = "CER_STREAM_FACEAPI"
FETCH_COMMAND = f"cer-stream models fetch {NAME}"

INPUT_NAME = "input"
OUTPUT_NAMES = ("probs", "logits", "features")
#: Size of the ``features`` output (the globally pooled 256-channel map before ``fc``).
FEATURE_DIM = 256
INPUT_SIZE = 112
LAYOUT = "NHWC"
INPUT_SHAPE = ("N", INPUT_SIZE, INPUT_SIZE, 3)
MEAN_RGB = (122.782, 117.001, 104.298)
OPSET = 17
IR_VERSION = 8  # the IR version of opset 17, so older runtimes (TensorRT's parser) read the file
#: Bumped whenever the exporter's output changes (the registry keys the cached file on it;
#: 2: the ``features`` output; 3: normalisation after the transpose, running sums in the blocks).
EXPORT_VERSION = 3
NPM_TIMEOUT_S = 300

#: What the model expects, written into the ONNX metadata as ``cer.preprocess``.
PREPROCESS = {
    "colour": "RGB uint8 face crop",
    "pad": "padToSquare(centred): zeros, the shorter side padded by diff//2 before and (diff+1)//2 after",
    "resize": [INPUT_SIZE, INPUT_SIZE],
    "interpolation": "bilinear, tf.image.resizeBilinear(alignCorners=false, halfPixelCenters=false): "
    "source = (old/new) * i, not cv2's half-pixel centres; skipped when already 112",
    "dtype": "float32, 0..255 (not scaled)",
    "layout": LAYOUT,
    "in_graph": {"subtract_mean_rgb": list(MEAN_RGB), "then_divide": 255.0},
    "function": "engines.models.faceapi.preprocess",
}
LICENSE = (
    "MIT: weights and network from @vladmandic/face-api 1.7.15 (MIT, Vladimir Mandic), "
    "a fork of face-api.js (MIT, Vincent Mühler)"
)


class FetchError(NpmFetchError):
    """The weights could not be fetched; the message says what to do instead."""


class WeightsFormatError(ValueError):
    """The manifest or weights file is not what the port expects."""


# ---------------------------------------------------------------------------------------------
# Fetching (explicit only) and locating
# ---------------------------------------------------------------------------------------------
def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """``CACHE_DIR/faceapi-1.7.15`` (default ``$CER_STREAM_CACHE`` or ``~/.cache/cer-stream/models``)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / CACHE_SUBDIR


def _manual_hint() -> str:
    return (
        f"install Node.js/npm and run `{FETCH_COMMAND}`, or put {MANIFEST_FILE} and {WEIGHTS_FILE} "
        f"(from npm {NPM_SPEC}, folder model/) in a folder and set {WEIGHTS_ENV}=DIR"
    )


def _npm_files() -> NpmFiles:
    return NpmFiles(
        name=NAME,
        spec=NPM_SPEC,
        integrity=NPM_INTEGRITY,
        members={name: f"package/model/{name}" for name in (MANIFEST_FILE, WEIGHTS_FILE)},
        sha256=FILE_SHA256,
        hint=_manual_hint(),
    )


def fetch(
    cache_dir: str | Path | None = None, *, tarball: str | Path | None = None, timeout: float = NPM_TIMEOUT_S
) -> Path:
    """Get the two weight files of ``@vladmandic/face-api@1.7.15`` into the model cache.

    Runs ``npm pack`` into a temporary folder (or reads ``tarball``, a downloaded copy of the
    same package), checks the tarball's sha512 against :data:`NPM_INTEGRITY`, extracts only
    the manifest and the ``.bin`` file, checks their sha256 (:data:`FILE_SHA256`) and writes
    them atomically to ``cache_folder(cache_dir)``, which it returns (``engines.models.npm``).
    Files already there and intact are kept. Raises :class:`FetchError` (one line, naming what
    to do) on any failure.
    """
    return fetch_files(_npm_files(), cache_folder(cache_dir), tarball=tarball, timeout=timeout, error=FetchError)


def weights_dir(weights: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The folder holding the two files: ``weights`` (a folder, or the manifest inside one),
    else ``$CER_STREAM_FACEAPI``, else the cache folder. Never fetches; a missing file is a
    one-line :class:`WeightsNotFound` naming ``cer-stream models fetch faceapi-expression``."""
    import os

    if weights is not None:
        folder, where = Path(weights).expanduser(), "--weights"
    elif os.environ.get(WEIGHTS_ENV):
        folder, where = Path(os.environ[WEIGHTS_ENV]).expanduser(), WEIGHTS_ENV
    else:
        folder, where = cache_folder(cache_dir), "the model cache"
    _check_folder(folder, where)
    return folder.parent if folder.is_file() else folder


def _check_folder(folder: Path, where: str) -> None:
    folder = folder.parent if folder.is_file() else folder
    missing = [name for name in (MANIFEST_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise WeightsNotFound(
            f"{NAME}: {', '.join(missing)} not found in {folder} ({where}); `{FETCH_COMMAND}` "
            f"(or `make install`) fetches it, or set {WEIGHTS_ENV}=DIR to a folder holding "
            f"{MANIFEST_FILE} and {WEIGHTS_FILE}"
        )


# ---------------------------------------------------------------------------------------------
# TF.js weights
# ---------------------------------------------------------------------------------------------
_PLAIN_DTYPES = {"float32": np.float32, "int32": np.int32}
_QUANT_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}


def load_weights(folder: str | Path) -> dict[str, np.ndarray]:
    """Name -> float32 array (TF shapes) from a TF.js ``weights_manifest.json`` + its ``.bin`` files.

    Quantised entries are decoded as ``tf.io.decodeWeights`` does: ``q * scale + min`` in
    float64, rounded to float32 once (uint8 / uint16); float16 is widened.
    """
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    if not isinstance(manifest, list):
        raise WeightsFormatError(f"{MANIFEST_FILE}: expected a list of weight groups")
    arrays: dict[str, np.ndarray] = {}
    for group in manifest:
        buffer = b"".join((folder / p).read_bytes() for p in group["paths"])
        offset = 0
        for entry in group["weights"]:
            shape = tuple(int(d) for d in entry["shape"])
            count = math.prod(shape)
            quant = entry.get("quantization")
            if quant:
                qtype = _QUANT_DTYPES.get(quant["dtype"])
                if qtype is None:
                    raise WeightsFormatError(f"{entry['name']}: quantisation {quant['dtype']!r} is not supported")
                raw = np.frombuffer(buffer, np.dtype(qtype).newbyteorder("<"), count, offset)
                offset += count * np.dtype(qtype).itemsize
                if quant["dtype"] == "float16":
                    values = raw.astype(np.float32)
                else:
                    values = (raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])).astype(np.float32)
            else:
                dtype = _PLAIN_DTYPES.get(entry["dtype"])
                if dtype is None:
                    raise WeightsFormatError(f"{entry['name']}: dtype {entry['dtype']!r} is not supported")
                values = np.frombuffer(buffer, np.dtype(dtype).newbyteorder("<"), count, offset)
                offset += count * np.dtype(dtype).itemsize
            if entry["dtype"] != "float32":
                raise WeightsFormatError(f"{entry['name']}: a {entry['dtype']} tensor where float32 is expected")
            arrays[entry["name"]] = np.array(values, dtype=np.float32).reshape(shape)
        if offset != len(buffer):
            raise WeightsFormatError(f"{group['paths']}: {len(buffer)} bytes, the manifest describes {offset}")
    return arrays


# ---------------------------------------------------------------------------------------------
# ONNX graph
# ---------------------------------------------------------------------------------------------
def _same(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TF 'same': output size, padding before, padding after (the odd pixel after)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


class _Graph:
    def __init__(self, weights: dict[str, np.ndarray]):
        self.w = weights
        self.nodes: list = []
        self.inits: list = []
        self.used: set[str] = set()

    def init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def take(self, name: str, rank: int) -> np.ndarray:
        if name not in self.w:
            raise WeightsFormatError(f"weight {name!r} is missing from {MANIFEST_FILE}")
        array = self.w[name]
        if array.ndim != rank:
            raise WeightsFormatError(f"weight {name!r} has shape {array.shape}, expected rank {rank}")
        self.used.add(name)
        return array

    def _conv(
        self, x: str, out: str, kernel: np.ndarray, bias: np.ndarray | None, size: int, stride: int, group: int = 1
    ) -> tuple[str, int]:
        kh = kernel.shape[2]
        out_size, before, after = _same(size, kh, stride)
        inputs = [x, self.init(f"{out}/W", kernel)]
        if bias is not None:
            inputs.append(self.init(f"{out}/B", bias))
        self.node(
            "Conv",
            inputs,
            out,
            kernel_shape=[kh, kh],
            strides=[stride, stride],
            pads=[before, before, after, after],
            group=group,
        )
        return out, out_size

    def plain_conv(self, x: str, prefix: str, size: int, stride: int) -> tuple[str, int]:
        filters = self.take(f"{prefix}/filters", 4)  # (kh, kw, in, out)
        bias = self.take(f"{prefix}/bias", 1)
        return self._conv(x, prefix, filters.transpose(3, 2, 0, 1), bias, size, stride)

    def separable_conv(self, x: str, prefix: str, size: int, stride: int) -> tuple[str, int]:
        depthwise = self.take(f"{prefix}/depthwise_filter", 4)  # (kh, kw, in, 1)
        pointwise = self.take(f"{prefix}/pointwise_filter", 4)  # (1, 1, in, out)
        bias = self.take(f"{prefix}/bias", 1)
        kh, kw, cin, mult = depthwise.shape
        if mult != 1 or pointwise.shape[:3] != (1, 1, cin):
            raise WeightsFormatError(f"{prefix}: unexpected separable kernels {depthwise.shape} {pointwise.shape}")
        dw = depthwise.transpose(2, 3, 0, 1)  # (in, 1, kh, kw)
        mid, size = self._conv(x, f"{prefix}/depthwise", dw, None, size, stride, group=cin)
        return self._conv(mid, prefix, pointwise.transpose(3, 2, 0, 1), bias, size, 1)

    def dense_block(self, x: str, prefix: str, size: int, first: bool) -> tuple[str, int]:
        conv0 = self.plain_conv if first else self.separable_conv
        pre1, size = conv0(x, f"{prefix}/conv0", size, 2)
        # running sums, each Add reading one convolution's output only (see the module docstring)
        total = self.node("Relu", [pre1], f"{prefix}/out1")
        for index in (1, 2, 3):
            inner = total if index == 1 else self.node("Relu", [total], f"{prefix}/in{index + 1}")
            out, _ = self.separable_conv(inner, f"{prefix}/conv{index}", size, 1)
            total = self.node("Add", [out, total], f"{prefix}/sum{index + 1}")
        return self.node("Relu", [total], f"{prefix}/out"), size


def build_graph(weights: dict[str, np.ndarray]):
    """The ``onnx.GraphProto`` of the network from its TF.js weights (see the module docstring)."""
    from onnx import TensorProto, helper

    g = _Graph(weights)
    mean = g.init("mean_rgb", np.array(MEAN_RGB, np.float32).reshape(1, 3, 1, 1))
    scale = g.init("scale_255", np.array(255.0, np.float32))
    x = g.node("Transpose", [INPUT_NAME], "nchw", perm=[0, 3, 1, 2])
    x = g.node("Sub", [x, mean], "normalise/sub")
    x = g.node("Div", [x, scale], "normalise/div")
    size = INPUT_SIZE
    for index in range(4):
        x, size = g.dense_block(x, f"dense{index}", size, first=index == 0)
    if size != 7:
        raise WeightsFormatError(f"feature map is {size}x{size}, expected 7x7")
    x = g.node("AveragePool", [x], "avg_pool", kernel_shape=[7, 7], strides=[2, 2])  # tf avgPool 7x7/2 'valid'
    x = g.node("Flatten", [x], "features", axis=1)
    fc_w = g.take("fc/weights", 2)
    fc_b = g.take("fc/bias", 1)
    if fc_w.shape != (FEATURE_DIM, len(LABELS)):
        raise WeightsFormatError(f"fc/weights has shape {fc_w.shape}, expected ({FEATURE_DIM}, {len(LABELS)})")
    x = g.node("MatMul", [x, g.init("fc/W", fc_w)], "fc/matmul")
    logits = g.node("Add", [x, g.init("fc/B", fc_b)], "logits")
    g.node("Softmax", [logits], "probs", axis=-1)
    unused = sorted(set(weights) - g.used)
    if unused:
        raise WeightsFormatError(f"weights not used by the network: {unused}")
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(INPUT_SHAPE))]
    widths = {"probs": len(LABELS), "logits": len(LABELS), "features": FEATURE_DIM}
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", widths[name]]) for name in OUTPUT_NAMES]
    return helper.make_graph(g.nodes, NAME, inputs, outputs, g.inits)


def _source_description(folder: Path) -> dict:
    digests = {name: sha256_file(folder / name) for name in (MANIFEST_FILE, WEIGHTS_FILE)}
    description: dict = {"files": digests}
    if digests == FILE_SHA256:
        description["npm"] = NPM_SPEC
        description["integrity"] = NPM_INTEGRITY
    return description


def build_onnx(folder: str | Path, spec: DescribedModel):
    """The ONNX model (``onnx.ModelProto``, checked) from a folder holding the two files;
    ``spec`` (the registry's entry, which the registry hands to :func:`convert`) is written into
    it as ``cer.*`` metadata.  The cached file comes from
    ``engines.models.registry.export("faceapi-expression")``."""
    import onnx
    from onnx import helper

    folder = weights_dir(folder)
    graph = build_graph(load_weights(folder))
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cer-stream",
        producer_version=f"faceapi-e{EXPORT_VERSION}",
        doc_string=f"face-api.js FaceExpressionNet ({NPM_SPEC} weights), ported by cer-stream without TensorFlow",
    )
    model.ir_version = IR_VERSION
    source = _source_description(folder)
    if "npm" not in source:
        log.warning("%s: the weights in %s are not the pinned %s files; exporting them anyway", NAME, folder, NPM_SPEC)
    write_metadata(
        model,
        spec,
        source=source,
        extra={"layout": LAYOUT, "outputs": list(OUTPUT_NAMES), "feature_dim": FEATURE_DIM},
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def convert(source: Path, target: Path, spec: DescribedModel) -> None:
    """The registry's exporter (``exporter_kind="convert"``): weights folder -> ONNX file at ``target``."""
    model = build_onnx(source, spec)
    atomic_write(target, model.SerializeToString())
    log.info("exported %s from %s to %s", NAME, source, target)


# ---------------------------------------------------------------------------------------------
# Preprocessing (face-api's NetInput.toBatchTensor(112, isCenterInputs=true), reproduced)
# ---------------------------------------------------------------------------------------------
def pad_amounts(height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) zero padding of face-api's ``padToSquare(img, true)``:
    the shorter side gets ``round(diff / 2)`` (JS rounding, half up) after and the rest before."""
    diff = abs(height - width)
    after = (diff + 1) // 2
    before = diff - after
    if height > width:
        return (0, 0), (before, after)
    if width > height:
        return (before, after), (0, 0)
    return (0, 0), (0, 0)


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """``image`` (H, W, C) padded with zeros to a centred square, as face-api's padToSquare."""
    (top, bottom), (left, right) = pad_amounts(image.shape[0], image.shape[1])
    if not (top or bottom or left or right):
        return image
    height, width = image.shape[:2]
    square = np.zeros((top + height + bottom, left + width + right) + image.shape[2:], image.dtype)
    square[top : top + height, left : left + width] = image
    return square


@functools.lru_cache(maxsize=64)
def _source_axis(old: int, new: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Floor index, ceil index and fraction (float32) along one axis, as tfjs's cpu
    ResizeBilinear computes them (in float64) with alignCorners=false, halfPixelCenters=false.
    Cached: a followed face keeps its box size, so the same few sizes come back frame after
    frame (the arrays are read-only)."""
    position = (old / new) * np.arange(new, dtype=np.float64)
    low = np.maximum(0.0, np.floor(position))
    high = np.minimum(old - 1, np.ceil(position)).astype(np.intp)
    axis = (low.astype(np.intp), high, (position - low).astype(np.float32))
    for array in axis:
        array.setflags(write=False)
    return axis


def resize_bilinear(image: np.ndarray, size: int | tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """``tf.image.resizeBilinear(image, size, alignCorners=false, halfPixelCenters=false)`` of an
    (H, W, C) image, float32 out (written into ``out``, shape (new_h, new_w, C), when given).

    Source pixel ``(old/new) * i`` (no half-pixel shift, unlike ``cv2.resize``, whose results
    differ by up to a grey level or more; ``cv2.warpAffine`` and ``cv2.remap`` quantise the
    source position to 1/32 pixel). The kernel's formula and order (``top = tl + (tr - tl) *
    dx``, ``bottom`` likewise, ``top + (bottom - top) * dy``), computed in float32 rather than
    TF.js's float64: on 0..255 values the result differs from TF.js's cpu backend by at most a
    few float32 steps (3.1e-5 measured), far below what reaches the probabilities.  For speed
    (the face path runs it on every analysed frame) the two source rows of each output row are
    gathered first (contiguous copies), then the columns of those rows with one ``take`` per
    corner over the flattened (row, column x channel) axis, and the arithmetic runs in place:
    about 0.2 ms for a 112x112x3 output, against 1.3 ms for per-pixel fancy indexing in float64.
    """
    new_h, new_w = (size, size) if isinstance(size, int) else size
    height, width = image.shape[:2]
    channels = image.shape[2] if image.ndim == 3 else 1
    r0, r1, ry = _source_axis(height, new_h)
    c0, c1, cx = _source_axis(width, new_w)
    cols0, cols1 = _channel_columns(c0, channels), _channel_columns(c1, channels)
    rows_top = image[r0].reshape(new_h, width * channels)
    rows_bottom = image[r1].reshape(new_h, width * channels)
    dx = np.repeat(cx, channels)[None, :]
    top, right = rows_top.take(cols0, axis=1).astype(np.float32), rows_top.take(cols1, axis=1).astype(np.float32)
    right -= top
    right *= dx
    top += right
    bottom, right = (
        rows_bottom.take(cols0, axis=1).astype(np.float32),
        rows_bottom.take(cols1, axis=1).astype(np.float32),
    )
    right -= bottom
    right *= dx
    bottom += right
    bottom -= top
    bottom *= ry[:, None]
    shape = (new_h, new_w, channels) if image.ndim == 3 else (new_h, new_w)
    if out is None:
        top += bottom
        return top.reshape(shape)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 {shape} array, got {out.dtype} {out.shape}")
    target = out.reshape(new_h, new_w * channels)
    np.add(top, bottom, out=target)
    return out


def _channel_columns(columns: np.ndarray, channels: int) -> np.ndarray:
    """Indices into a (row, column x channel) flattened axis of every channel of ``columns``."""
    return (columns[:, None] * channels + np.arange(channels)).reshape(-1)


def _as_list(crops) -> list[np.ndarray]:
    if isinstance(crops, np.ndarray):
        if crops.ndim == 4:
            return list(crops)
        if crops.ndim == 3:
            return [crops]
        raise ValueError(f"expected (H, W, 3) crops or an (N, H, W, 3) batch, got shape {crops.shape}")
    return list(crops)


def preprocess(crops_rgb: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Face crops -> the model's input, exactly as face-api prepares them.

    ``crops_rgb``: RGB uint8 (H, W, 3) crops (a list, one bare crop, or an (N, H, W, 3) array).
    Each crop is zero-padded to a centred square (:func:`pad_to_square`) and, unless already
    112x112, resized with TF's bilinear rule (:func:`resize_bilinear`). Returns float32
    [N, 112, 112, 3] (NHWC) in 0..255: the mean subtraction and division by 255 happen inside
    the ONNX graph.
    """
    batch = np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    crops = _as_list(crops_rgb)
    if not crops:
        return batch
    batch = np.empty((len(crops), INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    for index, crop in enumerate(crops):
        crop = np.asarray(crop)
        if crop.ndim != 3 or crop.shape[2] != 3:
            raise ValueError(f"crop {index}: expected an RGB (H, W, 3) image, got shape {crop.shape}")
        if crop.shape[0] == 0 or crop.shape[1] == 0:
            raise ValueError(f"crop {index} is empty ({crop.shape})")
        square = pad_to_square(crop)
        if square.shape[0] == INPUT_SIZE:
            batch[index] = square
        else:
            resize_bilinear(square, INPUT_SIZE, out=batch[index])
    return batch


__all__ = [
    "FEATURE_DIM",
    "FILE_SHA256",
    "FetchError",
    "INPUT_NAME",
    "INPUT_SHAPE",
    "INPUT_SIZE",
    "LABELS",
    "LAYOUT",
    "LICENSE",
    "MEAN_RGB",
    "NAME",
    "NPM_INTEGRITY",
    "NPM_SPEC",
    "OUTPUT_NAMES",
    "PREPROCESS",
    "WEIGHTS_ENV",
    "build_graph",
    "build_onnx",
    "cache_folder",
    "convert",
    "fetch",
    "load_weights",
    "pad_to_square",
    "preprocess",
    "resize_bilinear",
    "weights_dir",
]
