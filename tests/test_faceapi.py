"""face-api.js's expression network ported to ONNX (engines/models/faceapi.py), checked against the
original: @vladmandic/face-api's own FaceExpressionNet run by TensorFlow.js (pure-JS cpu
backend) in Node (tests/node/faceapi_reference.mjs), on real face crops.

The weights are the real shipped ones, got through ``engines.models.faceapi.fetch`` (npm pack, pinned
checksums) into a temporary cache unless ``CER_STREAM_FACEAPI`` or the default cache already
holds them. Tests skip only where node/npm (or tests/node/node_modules, which a session fixture
installs with ``npm ci``) are unavailable.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from conftest import DATA

from engines.models import faceapi as fa
from engines.models import registry as reg

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "tests" / "node"
REFERENCE = NODE_DIR / "faceapi_reference.mjs"
FACES_DEV = DATA / "faces_dev" if DATA is not None else None

# Face box of the astronaut in skimage.data.astronaut(), (x, y, w, h), as MediaPipe's
# short-range detector finds it (the same box as tests/test_mini_xception.py).
ASTRONAUT_BOX = (178, 83, 95, 95)

# Port vs original (TF.js 4.22.0 cpu backend), measured on the 17 crops below (9 astronaut crops
# of 60x90 .. 220x180, 8 faces_dev images): max |p_onnx - p_tfjs| = 1.1e-6 on probs (6.6e-7
# before the graph's block sums were re-associated, EXPORT_VERSION 3); the preprocessed inputs
# differ by at most 3.1e-5 (float32 resize; bit-identical while it ran in float64).
PROBS_TOL = 1e-5
INPUT_TOL = 1e-4  # on the 0..255 scale


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------
def _npm_reason() -> str | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not installed (install Node.js >= 18 and npm to check the face-api port)"
    return None


@pytest.fixture(scope="session")
def weights_folder(tmp_path_factory) -> Path:
    """A folder with the real face-api weights: CER_STREAM_FACEAPI, the default cache, or fetched."""
    if os.environ.get(fa.WEIGHTS_ENV):
        return fa.weights_dir()
    cached = fa.cache_folder()
    if all((cached / name).is_file() for name in fa.FILE_SHA256):
        return cached
    reason = _npm_reason()
    if reason:
        pytest.skip(reason)
    return fa.fetch(tmp_path_factory.mktemp("faceapi-cache"))


@pytest.fixture(scope="session")
def onnx_path(weights_folder, tmp_path_factory) -> Path:
    return reg.export(fa.NAME, weights=weights_folder, cache_dir=tmp_path_factory.mktemp("faceapi-onnx"))


@pytest.fixture(scope="session")
def session(onnx_path):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """tests/node/node_modules, installed with ``npm ci`` (from package-lock.json) when missing."""
    reason = _npm_reason()
    if reason:
        pytest.skip(reason)
    installed = NODE_DIR / "node_modules" / "@vladmandic" / "face-api" / "package.json"
    if not installed.is_file():
        try:
            done = subprocess.run(
                ["npm", "ci", "--prefix", str(NODE_DIR), "--ignore-scripts", "--no-audit", "--no-fund"],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.skip("`npm ci --prefix tests/node` timed out (is the npm registry reachable?)")
        if done.returncode != 0 or not installed.is_file():
            tail = (done.stderr.strip().splitlines() or ["no message"])[-1]
            pytest.skip(f"`npm ci --prefix tests/node` failed ({tail})")
    return NODE_DIR / "node_modules"


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut())  # RGB uint8, 512x512


def _box_crop(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    return np.ascontiguousarray(image[max(0, y0) : y1, max(0, x0) : x1])


@pytest.fixture(scope="session")
def astronaut_crops(astronaut) -> list[np.ndarray]:
    """Real face crops of several sizes and aspect ratios (so padToSquare and resizing matter)."""
    x, y, w, h = ASTRONAUT_BOX
    cx, cy = x + w // 2, y + h // 2
    boxes = [
        (x, y, x + w, y + h),  # the detector's box, 95x95 (upscaled)
        (cx - 56, cy - 56, cx + 56, cy + 56),  # exactly 112x112: no resize
        (cx - 80, cy - 100, cx + 80, cy + 100),  # tall 160x200 (downscaled, padded left/right)
        (cx - 110, cy - 90, cx + 110, cy + 90),  # wide 220x180
        (cx - 30, cy - 45, cx + 30, cy + 45),  # small tall 60x90
        (cx - 47, cy - 40, cx + 48, cy + 40),  # wide 95x80: odd difference (pads 7 before, 8 after)
        (cx - 61, cy - 70, cx + 60, cy + 70),  # tall 121x140: odd difference
        (cx - 100, cy - 100, cx + 100, cy + 100),  # large square 200x200
        (x - 20, y - 40, x + w + 20, y + h + 10),  # loose 135x145
    ]
    return [_box_crop(astronaut, *box) for box in boxes]


@pytest.fixture(scope="session")
def faces_dev_crops() -> list[np.ndarray]:
    """8 faces_dev photographs (one per posed class, then one more), read only at test time;
    every other one cut to a non-square box. Empty when the data folder ($CER_STREAM_DATA) does not
    hold faces_dev."""
    import csv

    import cv2

    if FACES_DEV is None or not (FACES_DEV / "labels.csv").is_file():
        return []
    labels = FACES_DEV / "labels.csv"
    with open(labels, newline="") as stream:
        rows = list(csv.DictReader(stream))
    chosen, seen = [], set()
    for row in rows:
        if row["label"] not in seen:
            seen.add(row["label"])
            chosen.append(row["path"])
    chosen += [r["path"] for r in rows if r["path"] not in chosen][: 8 - len(chosen)]
    crops = []
    for index, rel in enumerate(chosen[:8]):
        bgr = cv2.imread(str(FACES_DEV / rel), cv2.IMREAD_COLOR)
        assert bgr is not None, f"cannot read {rel}"
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        if index % 2:
            h, w = rgb.shape[:2]
            rgb = np.ascontiguousarray(rgb[h // 10 : h - h // 20, w // 6 : w - w // 5])
        crops.append(rgb)
    return crops


def _run_reference(crops: list[np.ndarray], tmp_path: Path, weights_folder: Path) -> dict:
    payload = {
        "crops": [
            {
                "height": int(c.shape[0]),
                "width": int(c.shape[1]),
                "rgb_base64": base64.b64encode(np.ascontiguousarray(c, np.uint8).tobytes()).decode(),
            }
            for c in crops
        ]
    }
    path = tmp_path / "crops.json"
    path.write_text(json.dumps(payload))
    done = subprocess.run(
        ["node", str(REFERENCE), str(path), "--model-dir", str(weights_folder), "--dump-input"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=NODE_DIR,
        check=False,
    )
    assert done.returncode == 0, f"face-api reference failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout)


# ---------------------------------------------------------------------------------------------
# Pure Python: registry, metadata, graph, preprocessing
# ---------------------------------------------------------------------------------------------
def test_registry_entry():
    spec = reg.get(fa.NAME)
    assert spec.role == "face_emotion" and spec.profiles == ("lite",) and spec.format == "onnx"
    assert spec.labels == fa.LABELS and spec.outputs == ("probs", "logits", "features")
    assert spec.input_shape == ("N", 112, 112, 3) and spec.preprocess["layout"] == "NHWC"
    assert "MIT" in spec.license and "Mühler" in spec.license
    assert spec.local_env == "CER_STREAM_FACEAPI"


def test_labels_map_to_basic_states():
    from stream.core.labels import basic_name

    assert [basic_name(label) for label in fa.LABELS] == [
        "Neutral",
        "Happiness",
        "Sadness",
        "Anger",
        "Fear",
        "Disgust",
        "Surprise",
    ]


def test_missing_weights_is_one_line_naming_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("CER_STREAM_CACHE", str(tmp_path))
    monkeypatch.delenv(fa.WEIGHTS_ENV, raising=False)
    with pytest.raises(reg.WeightsNotFound) as info:
        reg.export(fa.NAME)  # the registry makes the ONNX file: no weights, one line
    message = str(info.value)
    assert "\n" not in message and "cer-stream models fetch faceapi-expression" in message
    ok, why = reg.available(reg.get(fa.NAME))
    assert not ok and "cer-stream models fetch faceapi-expression" in why
    monkeypatch.setenv(fa.WEIGHTS_ENV, str(tmp_path / "nowhere"))
    assert not reg.available(reg.get(fa.NAME))[0]


def test_fetch_without_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-npm-here"))  # no npm on the PATH
    with pytest.raises(fa.FetchError) as info:
        fa.fetch(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "npm" in message and "CER_STREAM_FACEAPI=DIR" in message
    assert not any(tmp_path.iterdir())


def test_fetch_rejects_a_tarball_that_is_not_the_pinned_one(tmp_path):
    bad = tmp_path / "vladmandic-face-api-1.7.15.tgz"
    bad.write_bytes(b"not the package")
    with pytest.raises(fa.FetchError, match="integrity"):
        fa.fetch(tmp_path / "cache", tarball=bad)
    assert not (tmp_path / "cache").exists()


def test_cli_fetch_other_models_have_nothing_to_fetch(capsys):
    from engines.cli import models_main

    assert models_main(["fetch", "silero-vad"]) == 0
    assert "nothing to fetch" in capsys.readouterr().out
    assert models_main(["fetch", "no-such-model"]) == 2


def test_pad_to_square_is_centred_like_face_api():
    # face-api: round(diff/2) (JS rounding, half up) appended after, the rest before.
    assert fa.pad_amounts(80, 95) == ((7, 8), (0, 0))
    assert fa.pad_amounts(140, 121) == ((0, 0), (9, 10))
    assert fa.pad_amounts(50, 50) == ((0, 0), (0, 0))
    image = np.full((2, 5, 3), 9, np.uint8)
    padded = fa.pad_to_square(image)
    assert padded.shape == (5, 5, 3)
    assert (padded[0] == 0).all() and (padded[1:3] == 9).all() and (padded[3:] == 0).all()


def test_resize_is_tf_bilinear_without_half_pixel_centres():
    import cv2

    row = np.array([[0.0, 10.0]], np.float32)[:, :, None].repeat(2, axis=0)  # 2x2, one channel
    out = fa.resize_bilinear(row, (2, 4))[0, :, 0]
    # TF (alignCorners=false, halfPixelCenters=false): source x = (2/4)*i = 0, .5, 1, 1.5 -> clamped.
    assert out.tolist() == [0.0, 5.0, 10.0, 10.0]
    assert cv2.resize(row, (4, 2), interpolation=cv2.INTER_LINEAR)[0].tolist() != out.tolist()
    # Downscaling 4 -> 2 samples pixels 0 and 2 (no averaging).
    ramp = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    assert fa.resize_bilinear(ramp, 2)[:, :, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]


def _tf_resize_reference(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """TF.js's cpu ResizeBilinear (alignCorners=false, halfPixelCenters=false) pixel by pixel,
    in float64 as JavaScript computes it, rounded to float32 at the end."""
    height, width = image.shape[:2]
    src = image.astype(np.float64).reshape(height, width, -1)
    out = np.empty((new_h, new_w, src.shape[2]), np.float64)
    for i in range(new_h):
        y = (height / new_h) * i
        y0, y1 = max(0, int(np.floor(y))), min(height - 1, int(np.ceil(y)))
        dy = y - y0
        for j in range(new_w):
            x = (width / new_w) * j
            x0, x1 = max(0, int(np.floor(x))), min(width - 1, int(np.ceil(x)))
            dx = x - x0
            top = src[y0, x0] + (src[y0, x1] - src[y0, x0]) * dx
            bottom = src[y1, x0] + (src[y1, x1] - src[y1, x0]) * dx
            out[i, j] = top + (bottom - top) * dy
    return out.reshape((new_h, new_w) + image.shape[2:]).astype(np.float32)


@pytest.mark.parametrize("shape", [(144, 144, 3), (95, 230, 3), (61, 40, 3), (300, 300), (112, 57, 3)])
def test_fast_resize_matches_tf_pixel_by_pixel(shape):
    # The gathered, in-place float32 resize against the kernel's own per-pixel float64 rule,
    # downscaling and upscaling, square and not, colour and grey.
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    expected = _tf_resize_reference(image, 112, 112)
    got = fa.resize_bilinear(image, 112)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() <= INPUT_TOL
    # written into a given array (the batch row preprocess fills), the same numbers
    out = np.full(expected.shape, -1.0, np.float32)
    assert fa.resize_bilinear(image, 112, out=out) is out
    np.testing.assert_array_equal(out, got)


def test_resize_out_must_be_a_contiguous_array_of_the_output_shape():
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="C-contiguous"):
        fa.resize_bilinear(image, 112, out=np.empty((112, 112, 3), np.float32)[:, ::-1])
    with pytest.raises(ValueError, match="C-contiguous"):
        fa.resize_bilinear(image, 112, out=np.empty((112, 112, 4), np.float32))


def test_preprocess_pads_then_resizes_each_crop(astronaut_crops):
    # preprocess = padToSquare + resize, crop by crop, into one batch
    batch = fa.preprocess(astronaut_crops)
    for crop, row in zip(astronaut_crops, batch):
        square = fa.pad_to_square(crop)
        expected = square.astype(np.float32) if square.shape[0] == 112 else _tf_resize_reference(square, 112, 112)
        assert np.abs(row - expected).max() <= INPUT_TOL


def test_preprocess_shapes_and_range(astronaut_crops):
    batch = fa.preprocess(astronaut_crops)
    assert batch.shape == (len(astronaut_crops), 112, 112, 3) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 255.0
    exact = astronaut_crops[1]
    assert exact.shape == (112, 112, 3)
    assert np.array_equal(batch[1], exact.astype(np.float32))  # 112x112 is not resized
    assert fa.preprocess([]).shape == (0, 112, 112, 3)
    assert fa.preprocess(astronaut_crops[0]).shape == (1, 112, 112, 3)
    with pytest.raises(ValueError):
        fa.preprocess([np.zeros((10, 10), np.uint8)])


def test_weights_are_dequantised(weights_folder):
    weights = fa.load_weights(weights_folder)
    assert len(weights) == 2 + 15 * 3 + 2  # dense0/conv0 plain (2 tensors), 15 separable (3 each), fc (2)
    assert weights["dense0/conv0/filters"].shape == (3, 3, 3, 32)
    assert weights["dense3/conv3/pointwise_filter"].shape == (1, 1, 256, 256)
    assert weights["fc/weights"].shape == (256, 7) and weights["fc/weights"].dtype == np.float32
    manifest = json.loads((weights_folder / fa.MANIFEST_FILE).read_text())
    quant = next(w for w in manifest[0]["weights"] if w["name"] == "fc/weights")["quantization"]
    values = np.unique(weights["fc/weights"])
    assert len(values) <= 256 and values.min() >= np.float32(quant["min"]) - 1e-6


def test_graph_structure_and_metadata(onnx_path, session):
    import onnx

    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    grouped = [n for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(convs) == 7 + 3 * 8  # dense0: plain conv0 + 3 separable; dense1-3: 4 separable
    assert len(grouped) == 15
    assert ops.count("Relu") == 16 and ops.count("AveragePool") == 1 and ops.count("Softmax") == 1
    # the blocks' running sums: 3 Adds a block (+ fc's bias), each reading a convolution output
    # that nothing else reads, so ONNX Runtime can fold it into that convolution
    readers = Counter(name for node in model.graph.node for name in node.input)
    conv_outputs = {node.output[0] for node in convs}
    block_adds = [node for node in model.graph.node if node.op_type == "Add" and node.name.startswith("dense")]
    assert ops.count("Add") == 13 and len(block_adds) == 12
    assert all(node.input[0] in conv_outputs and readers[node.input[0]] == 1 for node in block_adds)
    # normalisation after the transpose, on NCHW planes
    assert ops[:3] == ["Transpose", "Sub", "Div"]
    strides2 = [n.name for n in convs if [a.ints for a in n.attribute if a.name == "strides"][0] == [2, 2]]
    assert strides2 == ["dense0/conv0", "dense1/conv0/depthwise", "dense2/conv0/depthwise", "dense3/conv0/depthwise"]
    meta = {p.key: p.value for p in model.metadata_props}
    reg.check_metadata(meta, reg.get(fa.NAME))
    assert json.loads(meta["cer.input_shape"]) == ["N", 112, 112, 3] and meta["cer.layout"] == "NHWC"
    assert json.loads(meta["cer.source"])["npm"] == "@vladmandic/face-api@1.7.15"
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["probs", "logits", "features"]
    assert json.loads(meta["cer.outputs"]) == ["probs", "logits", "features"]
    probs, logits, features = session.run(None, {"input": np.zeros((3, 112, 112, 3), np.float32)})
    assert probs.shape == logits.shape == (3, 7)
    assert features.shape == (3, fa.FEATURE_DIM)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_features_are_what_the_fc_layer_reads(weights_folder, session, astronaut_crops):
    """``features`` is the pooled 256-d vector before ``fc``: ``features @ W + b`` gives the logits."""
    weights = fa.load_weights(weights_folder)
    probs, logits, features = session.run(None, {"input": fa.preprocess(astronaut_crops)})
    assert features.shape == (len(astronaut_crops), fa.FEATURE_DIM)
    assert (features >= 0).all()  # the average of a ReLU output
    np.testing.assert_allclose(features @ weights["fc/weights"] + weights["fc/bias"], logits, atol=1e-4)
    # distinct crops, distinct embeddings
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert (unit @ unit.T)[np.triu_indices(len(unit), 1)].min() < 0.999


def test_engine_runs_the_export(onnx_path, astronaut_crops):
    from engines.runtimes.onnxruntime import OrtEngine

    with OrtEngine(onnx_path) as engine:
        reg.check_metadata(engine, reg.get(fa.NAME))
        probs = engine.infer(fa.preprocess(astronaut_crops))[0]
    # The astronaut smiles: face-api calls the detector's box and the 112x112 crop happy, and
    # most other framings too (measured 6 of 9; the loosest ones read sad or neutral).
    assert probs.shape == (len(astronaut_crops), 7)
    happy = probs.argmax(axis=1) == fa.LABELS.index("happy")
    assert happy[0] and happy[1] and happy.sum() >= 5


# ---------------------------------------------------------------------------------------------
# The port against the original (face-api in Node, TF.js cpu backend)
# ---------------------------------------------------------------------------------------------
def test_matches_face_api_in_node(node_modules, weights_folder, session, astronaut_crops, faces_dev_crops, tmp_path):
    crops = astronaut_crops + faces_dev_crops
    reference = _run_reference(crops, tmp_path, weights_folder)
    assert reference["backend"] == "cpu" and reference["faceapi"] == "1.7.15"
    assert tuple(reference["labels"]) == fa.LABELS
    ours_input = fa.preprocess(crops)
    theirs_input = np.asarray(reference["inputs"], np.float32).reshape(ours_input.shape)
    assert np.abs(ours_input - theirs_input).max() <= INPUT_TOL
    probs, _logits, _features = session.run(None, {"input": ours_input})
    theirs = np.asarray(reference["probs"], np.float32)
    assert theirs.shape == probs.shape == (len(crops), 7)
    diff = float(np.abs(probs - theirs).max())
    assert diff <= PROBS_TOL, f"max |p_onnx - p_faceapi| = {diff:.2e}"
    assert (probs.argmax(axis=1) == theirs.argmax(axis=1)).all()
