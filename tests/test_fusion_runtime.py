"""The live pipeline's fusion step with every fusion scheme and every compound conversion."""

import numpy as np
import pytest

from stream.core.labels import BASIC
from stream.fusion.calibration import Calibration
from stream.fusion.compound import PFSA, ppa, rule1, rule2
from stream.fusion.fuser import Fuser
from stream.fusion.schemes import MHPF, DirichletWeights, HierarchicalWeights
from stream.modalities.base import ModalityOutput

FACE = np.array([0.05, 0.05, 0.05, 0.05, 0.60, 0.05, 0.10, 0.05])
TEXT = np.array([0.10, 0.05, 0.05, 0.05, 0.20, 0.05, 0.45, 0.05])


def _pfsa():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:, :8] + 0.01
    feats = np.concatenate([centres[c] + 0.01 * rng.standard_normal((5, 8)) for c in range(8)])
    labels = np.repeat(np.arange(8), 5)
    return PFSA().fit(feats, labels, labels)


def _schemes():
    w = np.full((2, 8), 0.5)
    w[0, 4], w[1, 4] = 0.8, 0.2  # Happiness trusted to the face
    return {
        "mhpf": MHPF(np.stack([np.log(w), np.zeros((2, 8))]), np.array([0.0, -1.0])),
        "dirichlet": DirichletWeights(w),
        "hierarchical": HierarchicalWeights(w, np.array([0.3, 0.1])),
    }


@pytest.mark.parametrize("scheme", ["mhpf", "dirichlet", "hierarchical"])
@pytest.mark.parametrize("method", ["ppa", "rule1", "rule2", "pfsa"])
def test_every_scheme_with_every_conversion(scheme, method):
    cal = Calibration(modalities=("face", "text"), fusion=_schemes()[scheme], pfsa=_pfsa(), pfsa_modality="face")
    fuser = Fuser(["face", "text", "scene"], method=method, calibration=cal)
    assert any("scene" in n for n in fuser.notes)  # not in the calibration: reported, not fused
    outs = {
        "face": ModalityOutput(FACE, np.eye(8)[4]),
        "text": ModalityOutput(TEXT),
        "scene": ModalityOutput(np.full(8, 1 / 8)),
    }
    fused = fuser(outs)
    expected_basic = cal.fusion.fuse(np.stack([FACE, TEXT])[None], np.array([[True, True]]))[0]
    assert np.allclose(fused.basic, expected_basic, atol=1e-6)
    assert set(fused.weights) == {"face", "text"} and abs(sum(fused.weights.values()) - 1) < 1e-3
    conv = {"ppa": ppa, "rule1": rule1, "rule2": rule2}
    if method in conv:
        assert np.allclose(fused.compound, conv[method](expected_basic), atol=1e-6)
    else:
        assert np.allclose(fused.compound, cal.pfsa(np.eye(8)[4]), atol=1e-6)
        assert abs(fused.compound.sum() - 1) < 1e-5
    # text absent: the fusion renormalises over the face alone
    alone = fuser({"face": ModalityOutput(FACE, np.eye(8)[4]), "text": ModalityOutput(None)})
    assert list(alone.weights) == ["face"] and np.argmax(alone.basic) == 4


def test_equal_weights_without_calibration_and_nothing_present():
    fuser = Fuser(["face", "text"])
    fused = fuser({"face": ModalityOutput(FACE), "text": ModalityOutput(TEXT)})
    assert np.allclose(fused.basic, (FACE + TEXT) / 2) and fused.weights == {"face": 0.5, "text": 0.5}
    none = fuser({"face": ModalityOutput(None), "text": ModalityOutput(None)})
    assert none.basic is None and none.compound is None and none.weights == {}


def _pfsa_cal(**space):
    return Calibration(
        modalities=("face", "text"),
        fusion=MHPF.equal(2, 8),
        pfsa=_pfsa(),
        pfsa_modality="face",
        pfsa_feature_space=space or None,
    )


@pytest.mark.parametrize(
    "face,reason",
    [
        (ModalityOutput.absent("no face in the window"), "pfsa: face absent (no face in the window)"),
        (ModalityOutput(FACE, None), "pfsa: face feature absent"),
        (ModalityOutput(FACE, np.ones(5)), "pfsa: face feature is 5-d, the prototypes are 8-d"),
        (ModalityOutput(FACE, np.zeros(8)), "pfsa: face feature is not usable (zero or not finite)"),
    ],
)
def test_pfsa_never_falls_back_to_another_method(face, reason):
    fuser = Fuser(["face", "text"], method="pfsa", calibration=_pfsa_cal())
    fused = fuser({"face": face, "text": ModalityOutput(TEXT)})
    assert fused.basic is not None  # the basic fusion still happens and is reported
    assert fused.compound is None and fused.method == "pfsa" and fused.reason == reason
    assert not fused.scored
    rec = fused.record()
    assert rec["compound"] is None and rec["label"] is None and rec["compound_reason"] == reason
    assert rec["compound_method"] == "pfsa" and rec["basic_label"] in BASIC


def test_every_window_of_a_run_uses_the_one_method():
    """Whatever is present, a window's compound is PFSA's or nothing: never PPA sums."""
    fuser = Fuser(["face", "text"], method="pfsa", calibration=_pfsa_cal())
    rng = np.random.default_rng(1)
    for k in range(30):
        outs = {
            "face": ModalityOutput(FACE, rng.normal(size=8)) if k % 3 else ModalityOutput(None),
            "text": ModalityOutput(TEXT) if k % 2 else ModalityOutput(None),
        }
        fused = fuser(outs)
        assert fused.method == "pfsa"
        if k % 3:
            np.testing.assert_allclose(fused.compound, fused_pfsa := fuser.pfsa(outs["face"].feature), atol=1e-6)
            assert abs(float(fused_pfsa.sum()) - 1) < 1e-6
        else:
            assert fused.compound is None
            assert fused.reason == ("pfsa: face absent" if k % 2 else None)  # None: nothing present at all
            assert fused.record()["compound"] is None


def test_pfsa_windows_without_the_face_leave_the_timeline_alone():
    """The runtime adds a window to the frame timeline only when ``Fused.scored``
    (stream/runtime/analyzer.py); frames covered only by a face-less window carry the last
    PFSA value, frames before the first PFSA window stay null, and no frame averages PFSA
    probabilities with anything else."""
    from stream.runtime.timeline import Timeline

    fuser = Fuser(["face", "text"], method="pfsa", calibration=_pfsa_cal())
    feats = {1: np.eye(8)[4] + 0.05, 2: np.eye(8)[6] + 0.05}
    # windows of 4 frames, hop 2: window k covers frames [2k, 2k + 4)
    windows = {
        k: {
            "face": ModalityOutput(FACE, feats[k]) if k in feats else ModalityOutput(None),
            "text": ModalityOutput(TEXT),
        }
        for k in range(5)
    }
    timeline = Timeline(fps=1.0)
    rows = []
    for k, outs in windows.items():
        fused = fuser(outs)
        if fused.scored:
            timeline.add((2 * k, 2 * k + 4), fused.basic, fused.compound)
        rows += timeline.finalize(2 * k + 2)
    rows += timeline.finalize(12)
    got = {r.index: r for r in rows}
    expect_1, expect_2 = fuser.pfsa(feats[1]), fuser.pfsa(feats[2])
    assert got[0].compound is None and got[1].compound is None  # before the first PFSA window
    np.testing.assert_allclose(got[2].compound, expect_1, atol=1e-6)  # window 1 alone (0 is face-less)
    np.testing.assert_allclose(got[4].compound, (expect_1 + expect_2) / 2, atol=1e-6)  # two PFSA windows
    np.testing.assert_allclose(got[6].compound, expect_2, atol=1e-6)  # window 2 alone (3 is face-less)
    for i in (8, 9, 10, 11):  # covered only by face-less windows 3 and 4: carried, windows == 0
        assert got[i].windows == 0
        np.testing.assert_allclose(got[i].compound, expect_2, atol=1e-6)
    for r in rows:  # every value is a PFSA distribution (or a mean of them): sums to 1
        assert r.compound is None or abs(float(r.compound.sum()) - 1) < 1e-5


def test_pfsa_feature_space_mismatch_is_a_one_line_error():
    cal = _pfsa_cal(name="faceapi-expression/features", model="faceapi")
    with pytest.raises(ValueError) as err:
        Fuser(
            ["face", "text"],
            method="pfsa",
            calibration=cal,
            feature_spaces={"face": {"name": "x", "dim": 384, "model": "ensemble(faceapi+minixception)"}},
        )
    assert "\n" not in str(err.value) and "8-d" in str(err.value) and "384-d" in str(err.value)
    with pytest.raises(ValueError, match="exports no features"):
        Fuser(["face", "text"], method="pfsa", calibration=cal, feature_spaces={"face": None})
    with pytest.raises(ValueError, match="calibrate again"):
        Fuser(
            ["face", "text"],
            method="pfsa",
            calibration=cal,
            feature_spaces={"face": {"name": "other/features", "dim": 8, "model": "other"}},
        )
    with pytest.raises(ValueError, match="not running"):
        Fuser(["text"], method="pfsa", calibration=cal)
    ok = Fuser(
        ["face", "text"],
        method="pfsa",
        calibration=cal,
        feature_spaces={"face": {"name": "faceapi-expression/features", "dim": 8, "model": "faceapi"}},
    )
    assert ok.describe()["pfsa"]["feature_space"]["dim"] == 8
    # other methods do not care about feature spaces
    Fuser(["face", "text"], method="ppa", calibration=cal, feature_spaces={"face": None})


def test_pfsa_needs_prototypes():
    with pytest.raises(ValueError, match="pfsa"):
        Fuser(["face"], method="pfsa")


def test_confidence_discounts_a_modality_and_it_cannot_outvote_the_face():
    face = np.eye(8)[4] * 0.6 + 0.4 / 8  # Happiness, fairly sure
    text = np.eye(8)[1] * 0.9 + 0.1 / 8  # Anger, very sure of a shaky transcript
    fuser = Fuser(["face", "text"])
    full = fuser({"face": ModalityOutput(face), "text": ModalityOutput(text, None, {"confidence": 1.0})})
    assert full.weights == {"face": 0.5, "text": 0.5}
    assert BASIC[int(np.argmax(full.basic))] == "Anger"  # at equal weight the confident text wins
    shaky = fuser({"face": ModalityOutput(face), "text": ModalityOutput(text, None, {"confidence": 0.4})})
    # the text keeps its share times its confidence: 0.5 * 0.4 = 0.2 of the output
    assert shaky.weights == {"face": 0.8, "text": 0.2}
    np.testing.assert_allclose(shaky.basic, 0.8 * face + 0.2 * text, atol=1e-6)
    assert BASIC[int(np.argmax(shaky.basic))] == "Happiness"
    # alone, a modality is what there is, whatever its confidence
    alone = fuser({"face": ModalityOutput(None), "text": ModalityOutput(text, None, {"confidence": 0.1})})
    np.testing.assert_allclose(alone.basic, text, atol=1e-6)
    assert alone.weights == {"text": 1.0}


@pytest.mark.parametrize("scheme", ["mhpf", "dirichlet", "hierarchical"])
def test_confidence_discount_with_calibrated_schemes(scheme):
    cal = Calibration(modalities=("face", "text"), fusion=_schemes()[scheme])
    fuser = Fuser(["face", "text"], calibration=cal)
    rng = np.random.default_rng(3)
    outs = {n: ModalityOutput(rng.dirichlet(np.ones(8))) for n in ("face", "text")}
    full = fuser(outs)
    half = fuser({**outs, "text": ModalityOutput(outs["text"].basic, None, {"confidence": 0.5})})
    without = fuser({**outs, "text": ModalityOutput(None)})
    np.testing.assert_allclose(half.basic, 0.5 * full.basic + 0.5 * without.basic, atol=1e-6)
    assert half.weights["text"] < full.weights["text"]
    assert abs(sum(half.weights.values()) - 1.0) < 1e-3


def test_face_modality_feature_is_the_window_mean_of_unit_face_features():
    from stream.core.windows import full_window
    from stream.modalities.base import FaceModality, WindowInput
    from stream.modalities.face import FaceResult

    rng = np.random.default_rng(5)
    space = {"name": "faceapi-expression/features", "dim": 6, "model": "faceapi"}
    feats = [rng.uniform(0, 3, 6) for _ in range(4)]
    faces = [
        FaceResult(
            i,
            i / 5,
            i != 2,
            basic=FACE if i != 2 else None,
            feature=feats[i] if i != 2 else None,
            feature_space=space if i != 2 else None,
        )
        for i in range(4)
    ]
    out = FaceModality()(WindowInput(full_window(0), 25.0, [], faces, None))
    unit = [f / np.linalg.norm(f) for i, f in enumerate(feats) if i != 2]
    want = np.mean(unit, axis=0)
    np.testing.assert_allclose(out.feature, want / np.linalg.norm(want), atol=1e-6)
    assert out.info["feature_space"] == space
    # the probabilities are not the feature any more: a model without features gives None
    bare = [FaceResult(i, i / 5, True, basic=FACE, raw=FACE) for i in range(4)]
    out = FaceModality()(WindowInput(full_window(0), 25.0, [], bare, None))
    assert out.basic is not None and out.feature is None and "feature_space" not in out.info


def test_ensemble_feature_concatenates_unit_member_features():
    from stream.modalities.face import EnsembleModel

    class Member:
        def __init__(self, name, dim, scale):
            self.name, self.backend, self.dim, self.scale = name, "fake", dim, scale
            self.feature_space = {"name": f"{name}/features", "dim": dim, "model": name}

        def predict(self, images, boxes):
            n = len(images)
            basic = np.tile(FACE, (n, 1)).astype(np.float32)
            return basic, basic, np.full((n, self.dim), self.scale, np.float32)

    model = EnsembleModel([Member("a", 4, 10.0), Member("b", 2, 0.1)])
    assert model.feature_space["dim"] == 6 == model.feature_dim
    raw, basic, feats = model.predict([None, None], [None, None])
    assert feats.shape == (2, 6)
    np.testing.assert_allclose(np.linalg.norm(feats[:, :4], axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(feats[:, 4:], axis=1), 1.0, atol=1e-6)
