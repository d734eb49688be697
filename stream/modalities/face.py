"""Face modality (embedded default): MediaPipe detection + FaceMesh validation,
a stable target person, and the static face-emotion model(s) on the crop each was
trained on: by default (``--face-model ensemble``) the mean of face-api.js's
expression network and fer's mini-Xception, both ported to ONNX.

Each analysed frame is processed once; :class:`FaceCache` keeps the result so
the overlapping half of the next window reuses it. On a steady face the target is followed
from its previous box (:class:`FaceFollower`) instead of being detected and validated again.
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
from engines.shapes import DEFAULT_BATCH
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
#: Most faces in one emotion-model call: the batch a TensorRT plan's profile takes at most
#: (``engines.shapes.DEFAULT_BATCH``: one window's 20 frames); the model host's batches of many
#: streams are cut into calls of this size.
FACE_BATCH_MAX = DEFAULT_BATCH[2]
#: A window needs a face in at least this fraction of its analysed frames (2 of 20).
MIN_FACE_FRACTION = 0.10
#: Follow a steady target from its previous box instead of detecting it again (video and live;
#: ``FaceAnalyzer(follow=False)`` turns it off for comparison, ``track=False`` never follows).
FOLLOW = True
#: The face patch is matched at this width in pixels: small enough that a match costs well
#: under a millisecond, large enough (with the peak's sub-pixel fit) to keep the box within a
#: few per cent of the detector's (measured: bench/results/tracking.md).
FOLLOW_PATCH = 24
#: Where the face is looked for: the previous box grown by this fraction of its size on each
#: side. A face moves less than half its width in 0.2 s (5 analysed frames a second) unless
#: the camera cuts or jumps, and then the detector takes over.
FOLLOW_SEARCH = 0.5
#: Box sizes tried relative to the previous box. The box keeps its size: with (0.93, 1, 1.07) the
#: peak favoured the larger box and grew it 7 % a frame on a face zooming 2 %; the detection
#: every ``REVALIDATE_EVERY`` analysed frames brings the size back.
FOLLOW_SCALES = (1.0,)
#: A normalised cross-correlation peak below this is a lost face (occlusion, cut, turn): detect.
FOLLOW_MIN_PEAK = 0.6


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

    def due(self) -> bool:
        """True when no box may skip its check now (nothing remembered, or ``every`` is up)."""
        return self.box is None or self.since_check >= self.every - 1

    def skip(self, box: tuple[float, ...]) -> bool:
        """True (and ``box`` becomes the remembered one) when ``box`` needs no check now."""
        if self.due() or self.box is None or iou(box, self.box) < self.iou_min:
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


class _Shared:
    """Native resources several per-stream objects use (MediaPipe graphs, an emotion model):
    one lock for their calls (a graph is not re-entrant) and closed when the last user lets go."""

    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close
        self.users = 1
        self.lock = threading.Lock()

    def join(self) -> _Shared:
        with self.lock:
            self.users += 1
        return self

    def leave(self) -> None:
        with self.lock:
            self.users -= 1
            last = self.users == 0
        if last:
            self._close()


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

    :meth:`fork` gives another stream a detector on the same graphs with its own state.
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
        self._mesh = (
            mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.5
            )
            if validate
            else None
        )
        self._graphs = _Shared(self._close_graphs)
        self._model_order = list(choices[model])
        self.validate_every_frame = validate_every_frame
        self._fresh_state()

    def _fresh_state(self) -> None:
        """The per-stream state: the range order, the steady target and the counts."""
        self._order = list(self._model_order)
        #: The remembered validated face (public: :class:`FaceAnalyzer` follows a face while it trusts it).
        self.steady = SteadyTarget(iou_min=self.REVALIDATE_IOU, every=self.REVALIDATE_EVERY)
        self.counts = {"detect_short": 0, "detect_full": 0, "validate": 0, "validate_skipped": 0}
        self._closed = False

    def fork(self) -> FaceDetector:
        """A detector for another stream: the same MediaPipe graphs (loaded once, their calls
        serialised by a shared lock), its own range order, steady target and counts. The
        graphs close when the last of the detectors sharing them closes."""
        twin = object.__new__(FaceDetector)
        twin._dets, twin._mesh, twin._graphs = self._dets, self._mesh, self._graphs.join()
        twin._model_order, twin.validate_every_frame = self._model_order, self.validate_every_frame
        twin._fresh_state()
        return twin

    def _detect_with(self, sel: int, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        h, w = rgb.shape[:2]
        self.counts["detect_short" if sel == 0 else "detect_full"] += 1
        with self._graphs.lock:
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
        if not self.validate_every_frame and self.steady.skip(box):
            self.counts["validate_skipped"] += 1
            return True
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = expand_box(box, 0.5, w, h)
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        self.counts["validate"] += 1
        if crop.size == 0:
            ok = False
        else:
            with self._graphs.lock:
                ok = bool(self._mesh.process(crop).multi_face_landmarks)
        self.steady.checked(box, ok)
        return ok

    def reset_states(self) -> None:
        self.steady.reset()

    def _close_graphs(self) -> None:
        for det in self._dets.values():
            det.close()
        if self._mesh is not None:
            self._mesh.close()

    def close(self) -> None:
        """Let go of the graphs (closed with the last detector that shares them); idempotent."""
        if not self._closed:
            self._closed = True
            self._graphs.leave()


class FaceFollower:
    """Follows the target face from one analysed frame to the next without the detector.

    The previous frame's face patch (grey, :data:`FOLLOW_PATCH` pixels wide) is matched by
    normalised cross-correlation (OpenCV ``matchTemplate``, ``TM_CCOEFF_NORMED``) in a region
    around the previous box (:data:`FOLLOW_SEARCH`) at :data:`FOLLOW_SCALES`; the box moves
    with the peak and keeps its shape, so its crops are cut as from the detector's box.  It
    gives up (the analyzer detects again) when the peak is below :data:`FOLLOW_MIN_PEAK` or the
    box would leave the frame; the detector's :class:`SteadyTarget` decides whether the box may
    skip detection at all (a jump too large or the re-check due: detect)."""

    def __init__(self) -> None:
        self.counts = {"tracked": 0, "track_lost": 0, "redetect_due": 0}
        self.reset_states()

    def reset_states(self) -> None:
        self.box: tuple[float, float, float, float] | None = None
        self.score, self.faces = 0.0, 0
        self._patch: np.ndarray | None = None

    def start(self, rgb: np.ndarray, box: tuple[float, float, float, float], score: float, faces: int) -> None:
        """Follow ``box`` (a detected and validated face with its score and face count) from ``rgb``."""
        self.box, self.score, self.faces = box, score, faces
        self._patch = self._cut(rgb, box)

    @staticmethod
    def _cut(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray | None:
        """The face patch of ``box``: grey, :data:`FOLLOW_PATCH` pixels wide."""
        import cv2

        x0, y0, x1, y1 = (int(round(v)) for v in box)
        face = rgb[max(0, y0) : y1, max(0, x0) : x1]
        if face.shape[0] < 8 or face.shape[1] < 8:
            return None
        high = max(1, int(round(FOLLOW_PATCH * face.shape[0] / face.shape[1])))
        grey = _shrink(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY), face.shape[1] // FOLLOW_PATCH)
        return cv2.resize(grey, (FOLLOW_PATCH, high), interpolation=cv2.INTER_LINEAR)

    def follow(self, rgb: np.ndarray, steady: SteadyTarget) -> tuple[float, float, float, float] | None:
        """The target's box in ``rgb`` when it may be followed (None: detect it)."""
        if self.box is None or self._patch is None:
            return None
        if steady.due():
            self.counts["redetect_due"] += 1
            return None
        found = self._match(rgb, self.box, self._patch)
        if found is None:
            self.counts["track_lost"] += 1
            self.reset_states()
            return None
        box, patch = found
        if not steady.skip(box):
            self.counts["redetect_due"] += 1
            return None
        self.counts["tracked"] += 1
        self.box, self._patch = box, patch
        return box

    @staticmethod
    def _match(
        rgb: np.ndarray, box: tuple[float, float, float, float], patch: np.ndarray
    ) -> tuple[tuple[float, float, float, float], np.ndarray] | None:
        """The followed box in ``rgb`` and the face patch cut there (None: lost)."""
        import cv2

        h, w = rgb.shape[:2]
        bw, bh = box[2] - box[0], box[3] - box[1]
        rx0, ry0, rx1, ry1 = expand_box(box, FOLLOW_SEARCH, w, h)
        if rx1 - rx0 < 8 or ry1 - ry0 < 8:
            return None
        ph, pw = patch.shape
        # the region in grey, area-averaged once by a whole step (OpenCV's fast path), then
        # brought to each scale's exact size bilinearly
        step = max(1, int(bw * min(FOLLOW_SCALES) / pw))
        rx1, ry1 = rx0 + (rx1 - rx0) // step * step, ry0 + (ry1 - ry0) // step * step
        grey = _shrink(cv2.cvtColor(rgb[ry0:ry1, rx0:rx1], cv2.COLOR_RGB2GRAY), step)
        best: tuple[float, float, float, float, np.ndarray] | None = None  # peak, x, y, scale, patch
        for k in FOLLOW_SCALES:
            f = pw / (bw * k)  # frame pixels -> patch pixels for a face k times the previous size
            size = (int(round((rx1 - rx0) * f)), int(round((ry1 - ry0) * f)))
            if size[0] < pw or size[1] < ph:
                continue
            img = cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)
            scores = cv2.matchTemplate(img, patch, cv2.TM_CCOEFF_NORMED)
            _, peak, _, (px, py) = cv2.minMaxLoc(scores)
            if np.isfinite(peak) and (best is None or peak > best[0]):
                dx, dy = _subpixel(scores, px, py)
                fx, fy = size[0] / (rx1 - rx0), size[1] / (ry1 - ry0)
                best = (
                    float(peak),
                    rx0 + (px + dx) / fx,
                    ry0 + (py + dy) / fy,
                    k,
                    img[py : py + ph, px : px + pw].copy(),
                )
        if best is None or best[0] < FOLLOW_MIN_PEAK:
            return None
        _, x0, y0, k, new_patch = best
        out = (x0, y0, x0 + bw * k, y0 + bh * k)
        if out[0] < 0 or out[1] < 0 or out[2] > w + 1 or out[3] > h + 1:  # leaving the frame: detect
            return None
        return (out[0], out[1], min(float(w), out[2]), min(float(h), out[3])), new_patch


def _shrink(grey: np.ndarray, step: int) -> np.ndarray:
    """``grey`` area-averaged by a whole ``step`` (OpenCV's fast path; a fractional INTER_AREA
    costs several times more); rows and columns past the last whole step are dropped."""
    import cv2

    if step <= 1:  # a face narrower than two patches' width: nothing to average (and no step 0)
        return grey
    h, w = grey.shape[0] // step, grey.shape[1] // step
    if not h or not w:
        return grey
    return cv2.resize(grey[: h * step, : w * step], (w, h), interpolation=cv2.INTER_AREA)


def _subpixel(scores: np.ndarray, px: int, py: int) -> tuple[float, float]:
    """The peak's offset within its pixel (a parabola through it and its neighbours, each axis)."""

    def offset(a: float, b: float, c: float) -> float:
        den = a - 2 * b + c
        return 0.0 if den >= 0 else min(0.5, max(-0.5, 0.5 * (a - c) / den))

    row, col = scores[py].tolist(), scores[:, px].tolist()
    dx = offset(row[px - 1], row[px], row[px + 1]) if 0 < px < len(row) - 1 else 0.0
    dy = offset(col[py - 1], col[py], col[py + 1]) if 0 < py < len(col) - 1 else 0.0
    return dx, dy


class TargetTracker:
    """Chooses the target person: the largest face, kept while it stays in view; with
    ``follow`` it also follows that face between detections (:class:`FaceFollower`)."""

    def __init__(self, *, follow: bool = FOLLOW) -> None:
        self._box: tuple[float, ...] | None = None
        self.follower = FaceFollower() if follow else None

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
        if self.follower is not None:
            self.follower.reset_states()


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
    with the classifier batched over all the frames of a call.

    With ``track`` and ``follow`` (the default for video and live) a steady target is followed
    from the previous analysed frame's box (:class:`FaceFollower`) while the detector's
    :class:`SteadyTarget` trusts it, so detection and validation run only when it is due (every
    ``REVALIDATE_EVERY`` analysed frames), a new face appears or the followed one is lost.
    ``track=False`` (still images) never follows.  All per-stream state lives here and in the
    detector; :meth:`fork` gives another stream its own on the same graphs and emotion model.
    """

    def __init__(
        self,
        *,
        detector: FaceDetectorLike | None = None,
        model: EmotionModel | EnsembleModel | None = None,
        track: bool = True,
        follow: bool = FOLLOW,
    ) -> None:
        self.detector: FaceDetectorLike = detector or FaceDetector()
        self.model = model or load_face_model()
        self.tracker = TargetTracker(follow=follow) if track else None
        self.timings: dict[str, float] = {"detect": 0.0, "validate": 0.0, "track": 0.0, "emotion": 0.0}
        self._lock = threading.Lock()
        self._model_users = _Shared(self.model.close)
        self._closed = False

    def fork(self, *, track: bool | None = None, follow: bool | None = None) -> FaceAnalyzer:
        """An analyzer for another stream: the detector's :meth:`FaceDetector.fork` (same graphs,
        own state) and the same emotion model (closed with the last analyzer that uses it);
        ``track`` and ``follow`` as this one's unless given."""
        fork = getattr(self.detector, "fork", None)
        if fork is None:
            raise TypeError(f"{type(self.detector).__name__} cannot be shared between streams (it has no fork())")
        twin = object.__new__(FaceAnalyzer)
        twin.detector, twin.model = fork(), self.model
        if track is None:
            track = self.tracker is not None
        if follow is None:
            follow = self.tracker is not None and self.tracker.follower is not None
        twin.tracker = TargetTracker(follow=follow) if track else None
        twin.timings = dict.fromkeys(self.timings, 0.0)
        twin._lock, twin._model_users, twin._closed = threading.Lock(), self._model_users.join(), False
        return twin

    @property
    def counts(self) -> dict[str, int]:
        """The detector's counts and the follower's (``tracked``: frames followed, their
        detection and validation skipped; ``track_lost``: following failed, detected instead;
        ``redetect_due``: the steady rule asked for a detection)."""
        out = dict(getattr(self.detector, "counts", {}))
        if self.tracker is not None and self.tracker.follower is not None:
            out.update(self.tracker.follower.counts)
        return out

    def locate(self, rgb: np.ndarray) -> tuple[tuple[float, float, float, float] | None, float, int]:
        """The target face's box and score in ``rgb`` (None when no face validates),
        and how many faces were detected (a followed face: the last detection's)."""
        if rgb.size == 0:  # no picture (one already let go): nothing to find, and MediaPipe must not see it
            return None, 0.0, 0
        import time

        follower = self.tracker.follower if self.tracker is not None else None
        steady = getattr(self.detector, "steady", None)
        if follower is not None and isinstance(steady, SteadyTarget):
            t = time.perf_counter()
            followed = follower.follow(rgb, steady)
            self.timings["track"] += time.perf_counter() - t
            if followed is not None:
                assert self.tracker is not None
                self.tracker.update(followed)
                return followed, follower.score, follower.faces
        t0 = time.perf_counter()
        dets = self.detector.detect(rgb)
        t1 = time.perf_counter()
        boxes = [d[0] for d in dets]
        order = self.tracker.order(boxes) if self.tracker else sorted(range(len(boxes)), key=lambda i: -_area(boxes[i]))
        chosen = next((i for i in order if self.detector.validate(rgb, boxes[i])), None)
        self.timings["detect"] += t1 - t0
        t2 = time.perf_counter()
        self.timings["validate"] += t2 - t1
        if chosen is None:
            if follower is not None:
                follower.reset_states()  # no face now: nothing to follow into the next frame
            return None, 0.0, len(boxes)
        if self.tracker:
            self.tracker.update(boxes[chosen])
        if follower is not None:
            follower.start(rgb, boxes[chosen], dets[chosen][1], len(boxes))
            self.timings["track"] += time.perf_counter() - t2
        return boxes[chosen], dets[chosen][1], len(boxes)

    def analyse(self, frames: list[tuple[int, float, np.ndarray]]) -> list[FaceResult]:
        """Analyse ``(index, pts, rgb)`` frames in time order."""
        (results,) = analyse_streams([(self, frames)])
        if isinstance(results, Exception):
            raise results
        return results

    def reset_states(self) -> None:
        """A new source: forget the target, the followed face and the detector's steady target
        (whose schedule decides which frames are detected and which followed)."""
        if self.tracker is not None:
            self.tracker.reset_states()
        reset = getattr(self.detector, "reset_states", None)
        if reset is not None:
            reset()

    def _locate_all(self, frames: list[tuple[int, float, np.ndarray]], crops: _Crops) -> list[FaceResult]:
        """Every frame's target face (in time order), its crop queued in ``crops``."""
        results: list[FaceResult] = []
        for index, pts, rgb in frames:
            box, score, n = self.locate(rgb)
            if box is None:
                results.append(FaceResult(index, pts, False, faces=n))
                continue
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            res = FaceResult(index, pts, True, (x0, y0, x1, y1), score, n)
            crops.add(rgb, box, res)
            results.append(res)
        return results

    def close(self) -> None:
        """Close the detector (its graphs go with the last fork) and let go of the emotion model."""
        if not self._closed:
            self._closed = True
            self.detector.close()
            self._model_users.leave()


@dataclass
class _Crops:
    """The faces of one emotion-model call: their frames, boxes and the results they fill."""

    images: list[np.ndarray] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    owners: list[FaceResult] = field(default_factory=list)

    def add(self, rgb: np.ndarray, box: tuple[float, float, float, float], owner: FaceResult) -> None:
        self.images.append(rgb)
        self.boxes.append(box)
        self.owners.append(owner)

    def classify(self, model: EmotionModel | EnsembleModel, max_batch: int = FACE_BATCH_MAX) -> float:
        """Calls of ``model`` for every queued face, ``max_batch`` at a time (the largest batch an
        engine's optimisation profile takes); fills the owners; seconds it took."""
        import time

        t0 = time.perf_counter()
        for lo in range(0, len(self.owners), max_batch):
            hi = lo + max_batch
            out = model.predict(self.images[lo:hi], self.boxes[lo:hi])
            owners = self.owners[lo:hi]
            raw, basic = out[0], out[1]
            feats = out[2] if len(out) > 2 and out[2] is not None else [None] * len(owners)
            space = getattr(model, "feature_space", None) if len(out) > 2 else None
            for res, p, b, f in zip(owners, raw, basic, feats):
                res.raw, res.basic = p, b
                if f is not None:
                    res.feature, res.feature_space = f, space
        return time.perf_counter() - t0


def analyse_streams(
    jobs: Sequence[tuple[FaceAnalyzer, list[tuple[int, float, np.ndarray]]]], *, max_batch: int = FACE_BATCH_MAX
) -> list[list[FaceResult] | Exception]:
    """Analyse several analyzers' frames (one stream each; :meth:`FaceAnalyzer.fork`s of one
    analyzer, so one emotion model) with ONE emotion-model call for all their faces: each
    analyzer locates its own frames with its own target and tracking state, then the crops of
    every stream are classified together (the model host's batch, :mod:`stream.serve.model_host`).
    Per job its results, or the exception that stopped that job alone."""
    if not jobs:
        return []
    model = jobs[0][0].model
    crops = _Crops()
    out: list[list[FaceResult] | Exception] = []
    locked: list[FaceAnalyzer] = []
    try:
        for fa, frames in jobs:
            if fa.model is not model:
                raise ValueError("analyse_streams needs analyzers that share one emotion model (forks)")
            fa._lock.acquire()
            locked.append(fa)
            mark = len(crops.owners)
            try:
                out.append(fa._locate_all(frames, crops))
            except Exception as exc:  # this stream's frames only
                del crops.images[mark:], crops.boxes[mark:], crops.owners[mark:]
                out.append(exc)
        seconds = crops.classify(model, max_batch)
        n = len(crops.owners) or 1
        for fa, result in zip(locked, out):
            if not isinstance(result, Exception):
                mine = sum(1 for r in result if r.found)
                fa.timings["emotion"] += seconds * mine / n
    finally:
        for fa in locked:
            fa._lock.release()
    return out


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

    def forget_older(self, pts: float) -> None:
        """Forget the frames of media time before ``pts`` (the frames the ring lets go with them:
        frame numbers and media time need not agree on a live source)."""
        for k in [k for k, r in self.items.items() if r.pts < pts]:
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
    "FaceFollower",
    "FaceResult",
    "EmotionModel",
    "SteadyTarget",
    "analyse_streams",
    "face_absence_reason",
    "EnsembleModel",
    "l2_normalise",
    "load_face_model",
    "TargetTracker",
    "expand_box",
    "iou",
    "window_face_probs",
]
