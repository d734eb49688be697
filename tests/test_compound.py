"""Basic-to-compound conversion: PPA, Rule 1, Rule 2, PFSA."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from stream.core.labels import BASIC, COMPOUND
from stream.fusion.compound import METHODS, PFSA, PPA_MATRIX, convert, normalise, ppa, rule1, rule2

# Ne, An, Di, Fe, Ha, Sa, Su, Ot
P = np.array([0.05, 0.10, 0.05, 0.20, 0.05, 0.15, 0.30, 0.10])


def test_ppa_hand_numbers():
    # FS = Fe+Su, HS = Ha+Su, SS = Sa+Su, DS = Di+Su, AS = An+Su, SF = Sa+Fe, SA = Sa+An
    np.testing.assert_allclose(ppa(P), [0.50, 0.35, 0.45, 0.35, 0.40, 0.35, 0.25])
    np.testing.assert_allclose(P @ PPA_MATRIX, ppa(P))


def test_ppa_batches_keep_dtype_and_check_shape():
    batch = np.tile(P.astype(np.float32), (2, 3, 1))
    out = ppa(batch)
    assert out.shape == (2, 3, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out[1, 2], ppa(P), rtol=1e-6)
    with pytest.raises(ValueError, match="8 basic classes"):
        ppa(np.ones(7))


def test_rule1_zeroes_below_one_seventh_then_sums():
    # Kept: Fe .20, Sa .15, Su .30 (all >= 1/7); everything else becomes 0.
    np.testing.assert_allclose(rule1(P), [0.50, 0.30, 0.45, 0.30, 0.30, 0.35, 0.15])
    # Exactly 1/7 is not "below" the threshold.
    edge = np.zeros(8)
    edge[3] = edge[6] = 1 / 7
    assert rule1(edge)[0] == pytest.approx(2 / 7)
    # Everything under the threshold: all zero, shown as uniform.
    flat = np.full(8, 1 / 8)
    assert np.all(rule1(flat) == 0)
    np.testing.assert_allclose(normalise(rule1(flat)), np.full(7, 1 / 7))


def test_rule2_pair_weights():
    want = [
        5 / 7 * 0.20 + 2 / 7 * 0.30,  # Fearfully Surprised = 5/7 Fe + 2/7 Su
        6 / 8 * 0.05 + 2 / 8 * 0.30,  # Happily Surprised
        4 / 6 * 0.15 + 2 / 6 * 0.30,  # Sadly Surprised
        6 / 8 * 0.05 + 2 / 8 * 0.30,  # Disgustedly Surprised
        5 / 7 * 0.10 + 2 / 7 * 0.30,  # Angrily Surprised
        4 / 9 * 0.15 + 5 / 9 * 0.20,  # Sadly Fearful = 4/9 Sa + 5/9 Fe
        4 / 9 * 0.15 + 5 / 9 * 0.10,  # Sadly Angry
    ]
    np.testing.assert_allclose(rule2(P), want)
    assert rule2(P)[0] == pytest.approx(1.6 / 7)


def test_normalise_and_convert_dispatch():
    out = normalise(np.array([[1.0, 3.0, 0, 0, 0, 0, 0], [0.0] * 7]))
    np.testing.assert_allclose(out[0, :2], [0.25, 0.75])
    np.testing.assert_allclose(out[1], np.full(7, 1 / 7))
    assert METHODS == ("ppa", "rule1", "rule2", "pfsa")
    np.testing.assert_allclose(convert("rule2", P), rule2(P))
    np.testing.assert_allclose(convert("ppa", P), ppa(P))
    with pytest.raises(ValueError, match="unknown compound method 'max'"):
        convert("max", P)
    with pytest.raises(ValueError, match="needs features"):
        convert("pfsa", P)


def _basis_pfsa(skip: tuple[int, ...] = (), on_missing: str = "partial") -> PFSA:
    """PFSA whose basic prototypes are the unit vectors e_0..e_7 (of a 10-d space)."""
    rng = np.random.default_rng(0)
    feats, labels, preds = [], [], []
    for k in range(8):
        if k in skip:
            continue
        for _ in range(5):  # scaled copies: normalisation makes their mean exactly e_k
            f = np.zeros(10)
            f[k] = rng.uniform(0.5, 3.0)
            feats.append(f)
            labels.append(k)
            preds.append(k)
    # A misclassified Fear sample pointing at Anger must be ignored.
    wrong = np.zeros(10)
    wrong[1] = 1.0
    feats.append(wrong)
    labels.append(3)
    preds.append(1)
    return PFSA(on_missing=on_missing).fit(np.array(feats), np.array(labels), np.array(preds))


def test_pfsa_prototypes_and_probabilities():
    pfsa = _basis_pfsa()
    np.testing.assert_allclose(pfsa.basic_prototypes[:, :8], np.eye(8), atol=1e-12)
    assert pfsa.counts == (5,) * 8 and pfsa.missing_basic == ()
    fe, su = BASIC.index("Fear"), BASIC.index("Surprise")
    fs = pfsa.compound_prototypes[COMPOUND.index("Fearfully Surprised")]
    expect = np.zeros(10)
    expect[[fe, su]] = 1 / math.sqrt(2)
    np.testing.assert_allclose(fs, expect, atol=1e-12)

    f = np.zeros(10)
    f[fe] = 2.0  # pure fear: cosine 1/sqrt(2) with Fearfully Surprised and Sadly Fearful, 0 else
    s = pfsa.scores(f)
    np.testing.assert_allclose(s, [1 / math.sqrt(2), 0, 0, 0, 0, 1 / math.sqrt(2), 0], atol=1e-12)
    pfsa.temperature = 0.1
    top = math.exp(1 / math.sqrt(2) / 0.1)
    probs = pfsa(f)
    assert probs[0] == pytest.approx(top / (2 * top + 5))
    assert probs.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(convert("pfsa", P, features=f, pfsa=pfsa), probs)


def test_pfsa_missing_basic_partial_drop_error():
    di = BASIC.index("Disgust")
    ds = COMPOUND.index("Disgustedly Surprised")
    part = _basis_pfsa(skip=(di,))
    assert part.missing_basic == ("Disgust",)
    assert np.isnan(part.basic_prototypes[di]).all()
    # partial: Disgustedly Surprised falls back on the Surprise prototype alone
    np.testing.assert_allclose(part.compound_prototypes[ds], np.eye(10)[BASIC.index("Surprise")])
    dropped = _basis_pfsa(skip=(di,), on_missing="drop")
    assert not dropped.available[ds] and dropped.available.sum() == 6
    probs = dropped(np.ones(10))
    assert probs[ds] == 0.0 and probs.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="Disgust"):
        _basis_pfsa(skip=(di,), on_missing="error")


def test_pfsa_round_trip_through_json():
    pfsa = _basis_pfsa(skip=(BASIC.index("Disgust"),), on_missing="drop")
    pfsa.temperature = 0.07
    back = PFSA.from_dict(json.loads(json.dumps(pfsa.to_dict())))
    x = np.random.default_rng(1).normal(size=(4, 10))
    np.testing.assert_allclose(back(x), pfsa(x))
    assert back.temperature == 0.07 and back.missing_basic == ("Disgust",)
    with pytest.raises(ValueError, match="temperature"):
        PFSA.from_dict({**pfsa.to_dict(), "temperature": 0})


@pytest.mark.parametrize("t_true", [0.05, 0.2])
def test_pfsa_fit_temperature_recovers_known_t(t_true):
    pfsa = _basis_pfsa()
    rng = np.random.default_rng(42)
    feats = np.zeros((6000, 10))
    feats[:, :8] = rng.normal(size=(6000, 8))
    s = pfsa.scores(feats)
    p = np.exp((s - s.max(axis=1, keepdims=True)) / t_true)
    p /= p.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(7, p=row) for row in p])
    t_hat = pfsa.fit_temperature(feats, labels)
    assert t_hat == pytest.approx(t_true, rel=0.1)
    assert pfsa.temperature == t_hat
    # The fitted T beats its neighbours on the NLL it minimised.
    best = pfsa.nll(feats, labels, t_hat)
    assert best <= pfsa.nll(feats, labels, t_hat * 1.2)
    assert best <= pfsa.nll(feats, labels, t_hat / 1.2)
