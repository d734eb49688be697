"""The steady-target rule both face detectors use to skip landmark revalidation."""

import numpy as np
import pytest

from stream.modalities.face import FaceDetector, SteadyTarget


def test_skips_until_every_frames_then_checks_again():
    t = SteadyTarget(iou_min=0.5, every=5)
    box = (10.0, 10.0, 110.0, 110.0)
    assert not t.skip(box)  # nothing validated yet
    t.checked(box, True)
    assert [t.skip(box) for _ in range(5)] == [True, True, True, True, False]
    t.checked(box, True)
    assert t.skip((12.0, 11.0, 112.0, 111.0))  # a box that overlaps enough follows the face
    assert not t.skip((300.0, 300.0, 400.0, 400.0))  # elsewhere: check it
    t.checked(box, False)  # the remembered face failed its re-check: forgotten
    assert t.box is None and not t.skip(box)
    t.checked(box, True)
    t.reset()
    assert not t.skip(box)


def test_legacy_detector_revalidates_a_steady_face_every_fifth_frame():
    skimage = pytest.importorskip("skimage.data")
    rgb = np.ascontiguousarray(skimage.astronaut())
    det = FaceDetector()
    try:
        for _ in range(10):
            (box, _score), *_ = det.detect(rgb)
            assert det.validate(rgb, box)
        assert det.counts["validate"] == 2 and det.counts["validate_skipped"] == 8
        det.reset_states()
        det.validate(rgb, box)
        assert det.counts["validate"] == 3
    finally:
        det.close()
