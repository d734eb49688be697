"""Fusion schemes: MHPF inference and training, AVCER Dirichlet and hierarchical weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream.core import metrics
from stream.fusion.schemes import (
    MHPF,
    DirichletWeights,
    Fusion,
    HierarchicalWeights,
    from_dict,
    hierarchical_grid,
    train_mhpf,
)

P0 = np.array([0.6, 0.3, 0.1])
P1 = np.array([0.2, 0.2, 0.6])
W = np.array(
    [
        [0.7, 0.2, 0.5],  # weight of modality 0 per class
        [0.3, 0.8, 0.5],
    ]
)  # modality 1


def test_mhpf_one_head_is_the_weighted_average():
    mhpf = MHPF(np.log(W)[None], np.zeros(1))
    np.testing.assert_allclose(mhpf.modality_weights()[0], W)
    out = mhpf.fuse(np.stack([P0, P1])[None])
    np.testing.assert_allclose(out, [[0.7 * 0.6 + 0.3 * 0.2, 0.2 * 0.3 + 0.8 * 0.2, 0.35]])
    np.testing.assert_allclose(out[0], [0.48, 0.22, 0.35])
    np.testing.assert_allclose(mhpf(np.stack([P0, P1])), out[0])  # [M, C] -> [C]


def test_mhpf_heads_are_mixed_by_softmax_alpha():
    w2 = np.array([[0.1, 0.1, 0.1], [0.9, 0.9, 0.9]])
    mhpf = MHPF(np.log(np.stack([W, w2])), np.array([0.0, np.log(3.0)]))  # head mix 1/4, 3/4
    out = mhpf.fuse(np.stack([P0, P1])[None])[0]
    o1 = W[0] * P0 + W[1] * P1
    o2 = 0.1 * P0 + 0.9 * P1
    np.testing.assert_allclose(out, 0.25 * o1 + 0.75 * o2)


def test_mhpf_masking_renormalises_over_present():
    p2 = np.array([0.1, 0.1, 0.8])
    w3 = np.array([[0.5, 0.2, 0.6], [0.3, 0.3, 0.2], [0.2, 0.5, 0.2]])
    mhpf = MHPF(np.log(w3)[None], np.zeros(1))
    probs = np.stack([np.stack([P0, P1, p2])] * 4)
    mask = np.array([[True, True, True], [True, False, True], [False, True, False], [False, False, False]])
    out = mhpf.fuse(probs, mask)
    np.testing.assert_allclose(out[0], (w3 * np.stack([P0, P1, p2])).sum(0))
    keep = w3[[0, 2]] / w3[[0, 2]].sum(0)  # modality 1 absent: the others renormalised per class
    np.testing.assert_allclose(out[1], keep[0] * P0 + keep[1] * p2)
    np.testing.assert_allclose(out[2], P1)  # only modality 1 present
    assert np.isnan(out[3]).all()  # nothing present: a NaN row, no exception
    # A NaN probability row counts as absent, whatever the mask says.
    nan_probs = probs.copy()
    nan_probs[1, 1] = np.nan
    np.testing.assert_allclose(mhpf.fuse(nan_probs)[1], out[1])


def test_equal_is_the_plain_average_of_present_modalities():
    eq = MHPF.equal(3, 3)
    p2 = np.array([0.1, 0.1, 0.8])
    probs = np.stack([P0, P1, p2])[None].repeat(2, axis=0)
    out = eq.fuse(probs, np.array([[True, True, True], [True, False, True]]))
    np.testing.assert_allclose(out[0], (P0 + P1 + p2) / 3)
    np.testing.assert_allclose(out[1], (P0 + p2) / 2)


def _adversarial_set(n: int, seed: int, c: int = 8):
    """Modality 0 leans to the true class; modality 1 points firmly at the next class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    good = rng.dirichlet(np.ones(c), n) * 0.45
    good[np.arange(n), y] += 0.55
    bad = rng.dirichlet(np.ones(c), n) * 0.1
    bad[np.arange(n), (y + 1) % c] += 0.9
    return np.stack([good, bad], axis=1), np.ones((n, 2), dtype=bool), y


def test_train_mhpf_learns_the_informative_modality_and_is_reproducible():
    probs, mask, y = _adversarial_set(600, seed=0)
    test_p, test_m, test_y = _adversarial_set(400, seed=1)
    eq_acc = np.mean(MHPF.equal(2, 8).fuse(test_p, test_m).argmax(1) == test_y)
    assert eq_acc < 0.2  # averaging follows the loud wrong modality
    kw = dict(heads=2, epochs=40, patience=40, lr=0.05, batch_size=64, seed=7)
    a = train_mhpf(probs, mask, y, **kw)
    b = train_mhpf(probs, mask, y, **kw)
    acc = np.mean(a.fuse(test_p, test_m).argmax(1) == test_y)
    assert acc > 0.97
    assert a.weights.shape == (2, 2, 8) and a.alpha.shape == (2,)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.alpha, b.alpha)
    c = train_mhpf(probs, mask, y, **{**kw, "seed": 8})
    assert not np.array_equal(a.weights, c.weights)
    info = a.meta["trained"]
    assert info["n_train"] == 480 and info["n_val"] == 120 and info["val_f1"] > 0.95


def test_train_mhpf_initialises_in_unit_interval_and_handles_masks():
    probs, mask, y = _adversarial_set(200, seed=2)
    mask[::3, 1] = False
    mask[::7] = False  # windows with nothing present are skipped
    y[::5] = -1  # unlabelled windows are skipped
    m = train_mhpf(probs, mask, y, epochs=1, lr=1e-12, seed=0, val_fraction=0)
    assert np.all((m.weights >= 0) & (m.weights < 1)) and np.all((m.alpha >= 0) & (m.alpha < 1))
    assert m.meta["trained"]["n_train"] == int(np.sum((y >= 0) & mask.any(1)))


def _noise_modality_set(n: int, seed: int, c: int = 8):
    """Modality 0 is informative, modality 1 is pure noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    good = rng.dirichlet(np.ones(c), n) * 0.7
    good[np.arange(n), y] += 0.3
    noise = rng.dirichlet(np.ones(c) * 0.3, n)
    return np.stack([good, noise], axis=1), np.ones((n, 2), dtype=bool), y


def test_dirichlet_and_hierarchical_beat_equal_when_a_modality_is_noise():
    probs, mask, y = _noise_modality_set(800, seed=0)
    test_p, test_m, test_y = _noise_modality_set(800, seed=1)

    def f1(fusion: Fusion, p, m, t) -> float:
        return metrics.macro_f1(t, fusion.fuse(p, m).argmax(1))

    eq = MHPF.equal(2, 8)
    dw = DirichletWeights().fit(probs, mask, y, n_samples=500, seed=0)
    hw = HierarchicalWeights().fit(probs, mask, y, first_stage=dw)
    np.testing.assert_allclose(dw.weights.sum(axis=0), 1.0)
    assert dw.meta["equal_score"] == pytest.approx(f1(eq, probs, mask, y))
    assert f1(dw, probs, mask, y) >= f1(eq, probs, mask, y)
    assert f1(hw, probs, mask, y) >= f1(dw, probs, mask, y)
    assert dw.weights[0].mean() > 0.6  # the informative modality carries most weight
    assert f1(dw, test_p, test_m, test_y) > f1(eq, test_p, test_m, test_y) + 0.05
    assert f1(hw, test_p, test_m, test_y) > f1(eq, test_p, test_m, test_y) + 0.05
    assert set(hw.model_weights) <= set(hierarchical_grid())
    assert hw.meta["search"] == "exhaustive"
    again = DirichletWeights().fit(probs, mask, y, n_samples=500, seed=0)
    np.testing.assert_array_equal(again.weights, dw.weights)  # seeded search


def test_hierarchical_formula_grid_and_coordinate_search():
    grid = hierarchical_grid()
    assert grid.size == 99 and grid[0] == 0.01 and grid[-1] == 0.5
    assert np.allclose(np.diff(grid), 0.005)
    hw = HierarchicalWeights(W, np.array([0.1, 0.4]))
    out = hw.fuse(np.stack([P0, P1]))
    np.testing.assert_allclose(out, (0.1 * W[0] * P0 + 0.4 * W[1] * P1) / 0.5)
    # Modality 1 absent: its share goes to modality 0, the class total stays the same.
    only0 = hw.fuse(np.stack([P0, P1])[None], np.array([[True, False]]))[0]
    total = (0.1 * W[0] + 0.4 * W[1]) / 0.5
    np.testing.assert_allclose(only0, total * P0)
    # Three modalities (99**3 grid points): coordinate ascent, never worse than the first stage.
    rng = np.random.default_rng(5)
    probs, mask, y = _noise_modality_set(300, seed=3)
    probs = np.concatenate([probs, rng.dirichlet(np.ones(8), (300, 1))], axis=1)
    mask = np.ones((300, 3), dtype=bool)
    dw = DirichletWeights().fit(probs, mask, y, n_samples=200, seed=1)
    h3 = HierarchicalWeights().fit(probs, mask, y, first_stage=dw)
    assert h3.meta["search"] == "coordinate"
    assert h3.meta["score"] >= dw.meta["score"]


def test_compound_target_fit_scores_ppa():
    probs, mask, y = _noise_modality_set(300, seed=4)
    # compound label: Fearfully Surprised (0) when Fear or Surprise is the basic label, else Sadly Angry
    yc = np.where(np.isin(y, [3, 6]), 0, 6)
    dw = DirichletWeights().fit(probs, mask, yc, target="compound", n_samples=100, seed=0)
    assert dw.meta["target"] == "compound" and 0 < dw.meta["score"] <= 1
    with pytest.raises(ValueError, match="below 7"):
        DirichletWeights().fit(probs, mask, y, target="compound", n_samples=10)


def test_to_dict_from_dict_round_trip_all_kinds():
    probs, mask, y = _noise_modality_set(100, seed=6)
    schemes = [
        MHPF(np.log(W)[None], np.array([0.3])),
        MHPF.equal(2, 8),
        DirichletWeights().fit(probs, mask, y, n_samples=50),
        HierarchicalWeights(np.full((2, 8), 0.5), np.array([0.2, 0.45])),
    ]
    for s in schemes:
        data = json.loads(json.dumps(s.to_dict()))
        assert data["kind"] == s.kind and data["n_modalities"] == s.n_modalities
        back = from_dict(data)
        assert type(back) is type(s)
        x = probs[:5, :, : s.n_classes]
        np.testing.assert_allclose(back.fuse(x, mask[:5]), s.fuse(x, mask[:5]))
    with pytest.raises(ValueError, match="unknown fusion kind"):
        from_dict({"kind": "vote"})
    with pytest.raises(ValueError, match="expected fusion kind 'mhpf'"):
        MHPF.from_dict(schemes[2].to_dict())
    with pytest.raises(ValueError, match="heads"):
        from_dict({"kind": "mhpf", "W": np.zeros((2, 2, 8)).tolist(), "alpha": [0.0]})


def test_importing_fusion_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, stream.fusion.schemes, stream.offline.calibrate; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"
