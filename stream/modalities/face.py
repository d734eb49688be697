"""Face modality (embedded default): MediaPipe detection + FaceMesh validation,
a stable target person, and the static face-emotion model(s) on the crop each was
trained on: by default (``--face-model ensemble``) the mean of face-api.js's
expression network and fer's mini-Xception, both ported to ONNX.

Each analysed frame is processed once; :class:`FaceCache` keeps the result so
the overlapping half of the next window reuses it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from engines.export.emoaffectnet import preprocess as emoaffectnet_preprocess
from engines.models.faceapi import preprocess as faceapi_preprocess
from engines.models.mini_xception import preprocess as mini_xception_preprocess
from stream.core.labels import BASIC, to_basic
from stream.modalities.face_crops import EMOAFFECTNET_CROP, FACEAPI_CROP, MINI_XCEPTION_CROP, CropSpec, crop_face

#: ``--face-model`` of the lite profile: the model that scored best on faces_dev
#: (``bench/accuracy.py``; figures in docs/method.md, "Face models").
LITE_DEFAULT_FACE_MODEL = "ensemble"
#: Detections below this confidence are ignored.
MIN_DETECTION = 0.5
#: Keep following the previous target while it overlaps this much...
TRACK_IOU = 0.3
#: ...and is at least this fraction of the largest face's area.
TRACK_MIN_AREA = 0.5
#: A window needs a face in at least this fraction of its analysed frames (2 of 20).
MIN_FACE_FRACTION = 0.10


@dataclass(slots=True)
class FaceResult:
    index: int  # frame number
    pts: float
    found: bool
    box: tuple[int, int, int, int] | None = None  # the detector's face box: x0, y0, x1, y1 in frame pixels
    score: float = 0.0
    faces: int = 0  # faces detected in the frame
    basic: np.ndarray | None = None  # 8 probabilities, BASIC order
    raw: np.ndarray | None = None  # the model's own output, its own order
    feature: np.ndarray | None = None  # the model's penultimate-layer embedding (None: it has none)
    feature_space: dict | None = None  # which embedding: {"name", "dim", "model"} (shared, not copied)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _area(b: tuple[float, ...]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def expand_box(
    box: tuple[float, float, float, float], margin: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Grow ``box`` by ``margin`` of its size on every side, clipped to the image."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    return (
        max(0, int(round(x0 - dx))),
        max(0, int(round(y0 - dy))),
        min(width, int(round(x1 + dx))),
        min(height, int(round(y1 + dy))),
    )


class FaceDetectorLike(Protocol):
    """What :class:`FaceAnalyzer` needs of a face detector: :class:`FaceDetector` or
    :class:`stream.modalities.landmarker.TaskFaceDetector`."""

    def detect(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]: ...

    def validate(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> bool: ...

    def close(self) -> None: ...


class SteadyTarget:
    """The remembered validated face of a detector: a box that overlaps it (IoU >= ``iou_min``)
    may skip landmark validation until ``every`` frames have passed since the last real check.
    Shared by :class:`FaceDetector` and ``stream.modalities.landmarker.TaskFaceDetector``."""

    def __init__(self, *, iou_min: float, every: int) -> None:
        self.iou_min = iou_min
        self.every = every
        self.box: tuple[float, ...] | None = None
        self.since_check = 0

    def skip(self, box: tuple[float, ...]) -> bool:
        """True (and ``box`` becomes the remembered one) when ``box`` needs no check now."""
        if self.box is None or self.since_check >= self.every - 1 or iou(box, self.box) < self.iou_min:
            return False
        self.since_check += 1
        self.box = box
        return True

    def checked(self, box: tuple[float, ...], ok: bool) -> None:
        """Record a real check of ``box``: remembered when it passed; the remembered face is
        forgotten when a box over it failed."""
        if ok:
            self.box, self.since_check = box, 0
        elif self.box is not None and iou(box, self.box) >= self.iou_min:
            self.box = None

    def reset(self) -> None:
        self.box, self.since_check = None, 0


class FaceDetector:
    """MediaPipe BlazeFace detection, validated by FaceMesh landmarks.

    Two BlazeFace models: short-range (faces within ~2 m; about 2.7 ms a frame here) and
    full-range (~5 m; about 7 ms).  ``model="auto"`` tries the one that last found a face
    first and the other only when it finds nothing, so a close face costs the fast model
    and a distant camera settles on the full-range one.

    FaceMesh validation (about 7.5 ms) runs for a new or moved target; a face whose box
    overlaps the last validated one (IoU >= ``REVALIDATE_IOU``) is re-validated only every
    ``REVALIDATE_EVERY`` frames.  ``validate_every_frame=True`` restores the seeds' rule of
    validating every detection.
    """

    REVALIDATE_IOU = 0.5
    REVALIDATE_EVERY = 5

    def __init__(
        self,
        *,
        validate: bool = True,
        model: str = "auto",
        min_confidence: float = MIN_DETECTION,
        validate_every_frame: bool = False,
    ) -> None:
        try:
            import mediapipe as mp
        except ImportError as exc:  # pragma: no cover - a broken install
            raise RuntimeError(f"mediapipe is not importable ({exc}); reinstall with `make install`") from exc
        choices = {"short": [0], "full": [1], "auto": [0, 1]}
        if model not in choices:
            raise ValueError(f"face detector model must be one of {sorted(choices)}, got {model!r}")
        fd = mp.solutions.face_detection
        self._dets = {
            sel: fd.FaceDetection(model_selection=sel, min_detection_confidence=min_confidence)
            for sel in choices[model]
        }
        self._order = list(choices[model])
        self._mesh = (
            mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.5
            )
            if validate
            else None
        )
        self.validate_every_frame = validate_every_frame
        self._steady = SteadyTarget(iou_min=self.REVALIDATE_IOU, every=self.REVALIDATE_EVERY)
        self.counts = {"detect_short": 0, "detect_full": 0, "validate": 0, "validate_skipped": 0}

    def _detect_with(self, sel: int, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        h, w = rgb.shape[:2]
        self.counts["detect_short" if sel == 0 else "detect_full"] += 1
        res = self._dets[sel].process(rgb)
        out = []
        for d in res.detections or []:
            bb = d.location_data.relative_bounding_box
            x0, y0 = bb.xmin * w, bb.ymin * h
            box = (max(0.0, x0), max(0.0, y0), min(float(w), x0 + bb.width * w), min(float(h), y0 + bb.height * h))
            if box[2] - box[0] >= 8 and box[3] - box[1] >= 8:
                out.append((box, float(d.score[0])))
        return out

    def detect(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """Boxes (pixels) and scores of the faces in an RGB image."""
        for sel in list(self._order):
            found = self._detect_with(sel, rgb)
            if found:
                if self._order[0] != sel:  # this range works for this source now: try it first
                    self._order.remove(sel)
                    self._order.insert(0, sel)
                return found
        return []

    def validate(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> bool:
        """True when FaceMesh finds a face's landmarks around ``box`` (or ``box`` is the
        target validated moments ago, see the class notes)."""
        if self._mesh is None:
            return True
        if not self.validate_every_frame and self._steady.skip(box):
            self.counts["validate_skipped"] += 1
            return True
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = expand_box(box, 0.5, w, h)
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        self.counts["validate"] += 1
        ok = crop.size > 0 and bool(self._mesh.process(crop).multi_face_landmarks)
        self._steady.checked(box, ok)
        return ok

    def reset_states(self) -> None:
        self._steady.reset()

    def close(self) -> None:
        for det in self._dets.values():
            det.close()
        if self._mesh is not None:
            self._mesh.close()


class TargetTracker:
    """Chooses the target person: the largest face, kept while it stays in view."""

    def __init__(self) -> None:
        self._box: tuple[float, ...] | None = None

    def order(self, boxes: list[tuple[float, float, float, float]]) -> list[int]:
        """Indices of ``boxes`` in the order they should be tried as the target."""
        if not boxes:
            return []
        by_size = sorted(range(len(boxes)), key=lambda i: -_area(boxes[i]))
        prev = self._box
        if prev is None:
            return by_size
        largest = _area(boxes[by_size[0]])
        best = max(range(len(boxes)), key=lambda i: iou(boxes[i], prev))
        if iou(boxes[best], prev) >= TRACK_IOU and _area(boxes[best]) >= TRACK_MIN_AREA * largest:
            return [best] + [i for i in by_size if i != best]
        return by_size

    def update(self, box: tuple[float, ...] | None) -> None:
        if box is not None:
            self._box = box

    def reset_states(self) -> None:
        self._box = None


@dataclass(frozen=True)
class FaceModelInfo:
    """How one static face-emotion model is run: its registry entry, the model
    module's ``preprocess`` function (turns crops into its input), the colour it takes, and the crop it was
    trained on (see :mod:`stream.modalities.face_crops` for each model's convention and
    ``bench/accuracy.py`` for the measurements that chose it)."""

    registry_name: str
    preprocess: Callable[[Sequence[np.ndarray]], np.ndarray]  # the model's own, taking a list of crops
    colour: str  # "grey" (converted here, RGB -> grey) or "rgb"
    crop: CropSpec


#: The static face models by ``--face-model`` name.
FACE_MODELS: dict[str, FaceModelInfo] = {
    "minixception": FaceModelInfo("fer-mini-xception", mini_xception_preprocess, "grey", MINI_XCEPTION_CROP),
    "faceapi": FaceModelInfo("faceapi-expression", faceapi_preprocess, "rgb", FACEAPI_CROP),
    "emoaffectnet": FaceModelInfo("emoaffectnet-resnet50", emoaffectnet_preprocess, "rgb", EMOAFFECTNET_CROP),
}
#: ``--face-model ensemble``: the mean of these models' 8-class probabilities.
ENSEMBLE = ("faceapi", "minixception")
#: Each profile's default ``--face-model`` (lite: the best measured on faces_dev, see docs/method.md).
PROFILE_FACE_MODEL = {"lite": LITE_DEFAULT_FACE_MODEL, "paper": "emoaffectnet"}
FACE_MODEL_CHOICES = (*FACE_MODELS, "ensemble")


class EmotionModel:
    """One static face-emotion model through the engines layer.

    ``name`` is a ``--face-model`` name (``minixception``, ``faceapi``, ``emoaffectnet``);
    without one, the profile's default (:data:`PROFILE_FACE_MODEL`). ``weights`` overrides
    where the model's weights are looked for (EmoAffectNet: the TorchScript file; face-api:
    the folder with its manifest and .bin). The label order is read from the model's
    metadata and mapped to the 8 basic states by name.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        profile: str = "lite",
        backend: str = "auto",
        device: str = "auto",
        weights: str | None = None,
    ) -> None:
        import json

        from engines.models import registry
        from engines.select import create_engine

        if profile not in PROFILE_FACE_MODEL:
            raise ValueError(f"unknown profile {profile!r}; choose lite or paper")
        name = name or PROFILE_FACE_MODEL[profile]
        if name not in FACE_MODELS:
            raise ValueError(f"unknown face model {name!r}; choose one of {', '.join(FACE_MODELS)}")
        info = FACE_MODELS[name]
        self.name = name
        self.registry_name = info.registry_name
        self.colour = info.colour
        self.crop = info.crop
        spec = registry.get(info.registry_name)
        self.path = registry.export(spec, weights=weights)
        self._pre = info.preprocess
        self.engine = create_engine(self.path, backend=backend, device=device)
        self.engine.load()
        registry.check_metadata(self.engine, spec)
        self.labels = tuple(json.loads(self.engine.metadata["cer.labels"]))
        self.backend = type(self.engine).__name__
        outs = list(self.engine.output_names)
        self._probs_at = outs.index("probs") if "probs" in outs else 0
        # the penultimate-layer embedding (face-api: 256-d, mini-Xception: 128-d); None: the
        # model exports none (EmoAffectNet), so PFSA cannot run on it
        self._features_at = outs.index("features") if "features" in outs else None
        self.feature_space: dict | None = None
        if self._features_at is not None:
            dim = _output_width(self.engine, self._features_at)
            self.feature_space = {"name": f"{self.registry_name}/features", "dim": dim, "model": name}

    @property
    def feature_dim(self) -> int | None:
        """Size of the model's ``features`` output (None: it has none)."""
        return None if self.feature_space is None else self.feature_space["dim"]

    def infer(self, crops_rgb: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """(class probabilities in model order, ``features`` [N, D] or None) for RGB uint8 face
        crops (already cut with :attr:`crop`)."""
        if not crops_rgb:
            empty = None if self._features_at is None else np.zeros((0, self.feature_dim or 0), np.float32)
            return np.zeros((0, len(self.labels)), np.float32), empty
        if self.colour == "grey":  # a grey-scale model: convert once, directly
            import cv2

            crops = [cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in crops_rgb]
        else:
            crops = crops_rgb
        outs = self.engine.infer(self._pre(crops))
        probs = np.asarray(outs[self._probs_at], dtype=np.float32)
        feats = None if self._features_at is None else np.asarray(outs[self._features_at], np.float32)
        if feats is not None and self.feature_space is not None and self.feature_space["dim"] is None:
            self.feature_space["dim"] = int(feats.shape[1])
        return probs, feats

    def __call__(self, crops_rgb: list[np.ndarray]) -> np.ndarray:
        """Class probabilities (model order) for RGB uint8 face crops (already cut with
        :attr:`crop`)."""
        return self.infer(crops_rgb)[0]

    def predict(
        self, images: list[np.ndarray], boxes: list[tuple[float, float, float, float]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(model-order probabilities, 8 basic probabilities, penultimate features [N, D] or
        None) for one face box per image, each cut with this model's own crop convention."""
        probs, feats = self.infer([crop_face(img, box, self.crop) for img, box in zip(images, boxes)])
        basic = to_basic(probs, self.labels) if len(probs) else np.zeros((0, len(BASIC)), np.float32)
        return probs, basic, feats

    def close(self) -> None:
        self.engine.close()


class EnsembleModel:
    """Several static face models, each on its own crop; the output is the mean of their
    8-class basic probabilities (``labels`` is :data:`BASIC`, so ``raw`` is that mean too).
    Its feature is the concatenation of the members' L2-normalised features (each member
    weighs the same in a cosine), or None when a member has none."""

    def __init__(self, members: list[EmotionModel]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = members
        self.name = "ensemble(" + "+".join(m.name for m in members) + ")"
        self.labels = BASIC
        self.backend = ",".join(sorted({m.backend for m in members}))
        spaces = [getattr(m, "feature_space", None) for m in members]
        known = [sp for sp in spaces if sp is not None and sp.get("dim")]
        self.feature_space: dict | None = None
        if len(known) == len(spaces):  # every member has a feature of known size
            self.feature_space = {
                "name": "+".join(sp["name"] for sp in known) + " (each L2-normalised)",
                "dim": int(sum(sp["dim"] for sp in known)),
                "model": self.name,
            }

    @property
    def feature_dim(self) -> int | None:
        return None if self.feature_space is None else self.feature_space["dim"]

    def predict(
        self, images: list[np.ndarray], boxes: list[tuple[float, float, float, float]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        outs = [m.predict(images, boxes) for m in self.members]
        basic = np.mean(np.stack([o[1] for o in outs]), axis=0).astype(np.float32)
        feats = [o[2] if len(o) > 2 else None for o in outs]
        if self.feature_space is None or any(f is None for f in feats):
            return basic, basic, None
        joined = np.concatenate([l2_normalise(np.asarray(f, np.float32)) for f in feats], axis=1)
        return basic, basic, joined.astype(np.float32)

    def close(self) -> None:
        for m in self.members:
            m.close()


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x`` scaled to unit L2 norm along ``axis`` (a zero vector stays zero)."""
    x = np.asarray(x)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _output_width(engine, index: int) -> int | None:
    """The last dimension of output ``index`` when the engine knows it (None: dynamic)."""
    try:
        width = engine.outputs[index].shape[-1]
    except (AttributeError, IndexError, TypeError):
        return None
    return int(width) if isinstance(width, (int, np.integer)) and width > 0 else None


def load_face_model(
    name: str | None = None,
    *,
    profile: str = "lite",
    backend: str = "auto",
    device: str = "auto",
    weights: str | None = None,
) -> EmotionModel | EnsembleModel:
    """The static face model named ``name`` (a :data:`FACE_MODEL_CHOICES` entry; None: the
    profile's default)."""
    if profile not in PROFILE_FACE_MODEL:
        raise ValueError(f"unknown profile {profile!r}; choose lite or paper")
    name = name or PROFILE_FACE_MODEL[profile]
    if name == "ensemble":
        if weights is not None:
            raise ValueError(
                "FaceOptions.weights names one model's weights; it cannot be used with the ensemble (FaceOptions.model)"
            )
        return EnsembleModel([EmotionModel(n, profile=profile, backend=backend, device=device) for n in ENSEMBLE])
    return EmotionModel(name, profile=profile, backend=backend, device=device, weights=weights)


class FaceAnalyzer:
    """Detect → validate → choose target → crop → classify, one frame at a time,
    with the classifier batched over all the frames of a call."""

    def __init__(
        self,
        *,
        detector: FaceDetectorLike | None = None,
        model: EmotionModel | EnsembleModel | None = None,
        track: bool = True,
    ) -> None:
        self.detector: FaceDetectorLike = detector or FaceDetector()
        self.model = model or load_face_model()
        self.tracker = TargetTracker() if track else None
        self.timings: dict[str, float] = {"detect": 0.0, "validate": 0.0, "emotion": 0.0}
        self._lock = threading.Lock()

    def locate(self, rgb: np.ndarray) -> tuple[tuple[float, float, float, float] | None, float, int]:
        """The target face's box and score in ``rgb`` (None when no face validates),
        and how many faces were detected."""
        import time

        t0 = time.perf_counter()
        dets = self.detector.detect(rgb)
        t1 = time.perf_counter()
        boxes = [d[0] for d in dets]
        order = self.tracker.order(boxes) if self.tracker else sorted(range(len(boxes)), key=lambda i: -_area(boxes[i]))
        chosen = next((i for i in order if self.detector.validate(rgb, boxes[i])), None)
        self.timings["detect"] += t1 - t0
        self.timings["validate"] += time.perf_counter() - t1
        if chosen is None:
            return None, 0.0, len(boxes)
        if self.tracker:
            self.tracker.update(boxes[chosen])
        return boxes[chosen], dets[chosen][1], len(boxes)

    def analyse(self, frames: list[tuple[int, float, np.ndarray]]) -> list[FaceResult]:
        """Analyse ``(index, pts, rgb)`` frames in time order."""
        import time

        with self._lock:
            results: list[FaceResult] = []
            images: list[np.ndarray] = []
            boxes: list[tuple[float, float, float, float]] = []
            owners: list[FaceResult] = []
            for index, pts, rgb in frames:
                box, score, n = self.locate(rgb)
                if box is None:
                    results.append(FaceResult(index, pts, False, faces=n))
                    continue
                x0, y0, x1, y1 = (int(round(v)) for v in box)
                res = FaceResult(index, pts, True, (x0, y0, x1, y1), score, n)
                images.append(rgb)
                boxes.append(box)
                owners.append(res)
                results.append(res)
            if owners:
                t0 = time.perf_counter()
                out = self.model.predict(images, boxes)
                raw, basic = out[0], out[1]
                feats = out[2] if len(out) > 2 and out[2] is not None else [None] * len(owners)
                space = getattr(self.model, "feature_space", None) if len(out) > 2 else None
                self.timings["emotion"] += time.perf_counter() - t0
                for res, p, b, f in zip(owners, raw, basic, feats):
                    res.raw, res.basic = p, b
                    if f is not None:
                        res.feature, res.feature_space = f, space
            return results

    def close(self) -> None:
        self.detector.close()
        self.model.close()


@dataclass
class FaceCache:
    """Per-frame face results keyed by frame number."""

    items: dict[int, FaceResult] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def split(self, indices: list[int]) -> tuple[list[int], list[int]]:
        have = [i for i in indices if i in self.items]
        self.hits += len(have)
        need = [i for i in indices if i not in self.items]
        self.misses += len(need)
        return have, need

    def forget_before(self, index: int) -> None:
        for k in [k for k in self.items if k < index]:
            del self.items[k]


def face_absence_reason(faces: list[FaceResult], n_face: int) -> str:
    """Why a window has no face prediction: no frames, no face, or a face in too few frames."""
    if not faces:
        return "no frames received"
    return "no face in the window" if not n_face else "face in too few frames"


def window_face_probs(
    results: list[FaceResult], *, min_fraction: float = MIN_FACE_FRACTION
) -> tuple[np.ndarray | None, int]:
    """The window's face probabilities (8, BASIC order) and how many frames had a face.

    A frame without a face borrows the nearest frame's face (seed rule).  A
    window where fewer than ``min_fraction`` of the analysed frames (and at
    least one) show the face has no face prediction (``None``): a lone
    detection in an otherwise face-less window is more likely a false
    positive than a person, and borrowing would spread it over the window.
    """
    have = [i for i, r in enumerate(results) if r.found and r.basic is not None]
    if not have or len(have) < min_fraction * len(results):
        return None, len(have)
    rows: list[np.ndarray] = []
    for i in range(len(results)):
        j = min(have, key=lambda h: (abs(h - i), h))
        basic = results[j].basic
        assert basic is not None  # `have` holds only frames with probabilities
        rows.append(basic)
    return np.mean(np.stack(rows), axis=0).astype(np.float32), len(have)


__all__ = [
    "BASIC",
    "FACE_MODELS",
    "FACE_MODEL_CHOICES",
    "FaceAnalyzer",
    "FaceCache",
    "FaceDetector",
    "FaceDetectorLike",
    "FaceResult",
    "EmotionModel",
    "SteadyTarget",
    "face_absence_reason",
    "EnsembleModel",
    "l2_normalise",
    "load_face_model",
    "TargetTracker",
    "expand_box",
    "iou",
    "window_face_probs",
]
