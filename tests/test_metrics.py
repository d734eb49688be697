"""The numpy metrics must give scikit-learn's numbers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import f1_score, recall_score

from stream.core import metrics


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_and_uar_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, 300)
    p = np.where(rng.random(300) < 0.4, y, rng.integers(0, 7, 300))
    p[p == 6] = 5  # one class never predicted
    assert metrics.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    assert metrics.uar(y, p) == pytest.approx(recall_score(y, p, average="macro"))
    labels = list(range(8))  # class 7 never occurs: F1 and recall 0 (zero_division=0)
    assert metrics.macro_f1(y, p, labels=labels) == pytest.approx(
        f1_score(y, p, average="macro", labels=labels, zero_division=0)
    )
    assert metrics.uar(y, p, labels=labels) == pytest.approx(
        recall_score(y, p, average="macro", labels=labels, zero_division=0)
    )
    np.testing.assert_allclose(
        metrics.per_class_f1(y, p, labels=labels), f1_score(y, p, average=None, labels=labels, zero_division=0)
    )


def test_union_of_classes_like_sklearn():
    y = [0, 0, 1, 1]
    p = [0, 2, 1, 1]  # class 2 only predicted: counts in the macro average with F1 = 0
    assert metrics.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    assert metrics.macro_f1(y, p) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_confusion_matrices_match_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 200)
    p = rng.integers(0, 5, 200)
    labels = [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(metrics.confusion_matrix(y, p, labels=labels), sk_confusion(y, p, labels=labels))
    pct = metrics.confusion_matrix_percent(y, p, labels=labels)
    np.testing.assert_allclose(pct, 100 * sk_confusion(y, p, labels=labels, normalize="true"))
    np.testing.assert_allclose(pct[:5].sum(axis=1), 100.0)
    assert np.all(pct[5] == 0)  # no true sample of class 5: a row of zeros


def test_report_hand_numbers():
    y = [0, 0, 1, 1, 2]
    p = [0, 1, 1, 1, 0]
    r = metrics.report(y, p, ["a", "b", "c", "d"])
    # F1: a 2/(2+2)=0.5, b 2*2/(2+3)=0.8, c 0, d 0 (no support, never predicted)
    assert r["macro_f1"] == pytest.approx((0.5 + 0.8) / 4)
    assert r["uar"] == pytest.approx((0.5 + 1.0) / 4)
    assert r["per_class"]["b"] == {"f1": pytest.approx(0.8), "support": 2}
    assert r["per_class"]["d"]["support"] == 0
    assert r["confusion"][0] == [50.0, 50.0, 0.0, 0.0]
    assert r["confusion"][2] == [100.0, 0.0, 0.0, 0.0]
    assert r["labels"] == ["a", "b", "c", "d"]
    obs = metrics.report(y, p, ["a", "b", "c", "d"], over="observed")
    assert obs["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert metrics.support(y, labels=[0, 1, 2, 3]).tolist() == [2, 2, 1, 0]


def test_macro_from_stacked_confusions_matches_per_pair_metrics():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 6, 120)
    preds = rng.integers(0, 6, (4, 120))
    preds[0] = np.minimum(preds[0], 3)  # classes 4 and 5 never predicted by the first
    conf = np.stack([metrics.confusion_matrix(y, p, labels=range(8)) for p in preds])
    got = metrics.macro_from_confusion(conf, "f1")  # union of observed classes per matrix
    want = [f1_score(y, p, average="macro") for p in preds]
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(
        metrics.macro_from_confusion(conf, "recall", classes=range(8)),
        [recall_score(y, p, average="macro", labels=range(8), zero_division=0) for p in preds],
    )
