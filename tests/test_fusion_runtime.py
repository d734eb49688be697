"""The live pipeline's fusion step with every fusion scheme and every compound conversion."""
import numpy as np
import pytest

from stream.offline.calibrate import Calibration
from stream.fusion.compound import PFSA, ppa, rule1, rule2
from stream.fusion.schemes import MHPF, DirichletWeights, HierarchicalWeights
from stream.fusion.fuser import Fuser
from stream.core.labels import BASIC
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
    cal = Calibration(modalities=("face", "text"), fusion=_schemes()[scheme], pfsa=_pfsa(),
                      pfsa_modality="face")
    fuser = Fuser(["face", "text", "scene"], method=method, calibration=cal)
    assert any("scene" in n for n in fuser.notes)  # not in the calibration: reported, not fused
    outs = {"face": ModalityOutput(FACE, np.eye(8)[4]), "text": ModalityOutput(TEXT),
            "scene": ModalityOutput(np.full(8, 1 / 8))}
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


def test_pfsa_falls_back_to_ppa_when_its_modality_is_absent():
    cal = Calibration(modalities=("face", "text"), fusion=MHPF.equal(2, 8), pfsa=_pfsa(), pfsa_modality="face")
    fused = Fuser(["face", "text"], method="pfsa", calibration=cal)(
        {"face": ModalityOutput(None), "text": ModalityOutput(TEXT)})
    assert fused.method.startswith("ppa") and np.allclose(fused.compound, ppa(TEXT))


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
