"""Classification metrics in plain numpy (same numbers as scikit-learn's).

Class sets follow scikit-learn: with ``labels=None`` a metric averages over the
sorted union of the classes in ``y_true`` and ``y_pred``; with ``labels`` given,
over exactly those classes (a class with no true and no predicted sample then
scores 0, scikit-learn's ``zero_division`` default).  0/0 is 0 everywhere.

In the core layer because the run-time fusion (:mod:`stream.fusion.schemes`, weight searches)
and the speech text head score with them as much as the offline evaluation does;
``stream.offline.metrics`` re-exports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _arrays(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).astype(np.int64).reshape(-1)
    p = np.asarray(y_pred).astype(np.int64).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items, y_pred {p.size}")
    return t, p


def _classes(t: np.ndarray, p: np.ndarray, labels: Sequence[int] | None) -> np.ndarray:
    if labels is None:
        return np.union1d(t, p)
    return np.asarray(list(labels), dtype=np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, *, labels: Sequence[int] | None = None) -> np.ndarray:
    """Counts ``[K, K]``: row = true class, column = predicted class, in ``labels`` order.

    Samples whose true or predicted class is not in ``labels`` are not counted.
    """
    t, p = _arrays(y_true, y_pred)
    classes = _classes(t, p, labels)
    k = classes.size
    if k == 0:
        return np.zeros((0, 0), dtype=np.int64)
    order = np.argsort(classes, kind="stable")
    ranked = classes[order]

    def position(v: np.ndarray) -> np.ndarray:
        i = np.clip(np.searchsorted(ranked, v), 0, k - 1)
        return np.where(ranked[i] == v, order[i], -1)

    ti, pi = position(t), position(p)
    keep = (ti >= 0) & (pi >= 0)
    return np.bincount(ti[keep] * k + pi[keep], minlength=k * k).reshape(k, k)


def per_class_from_confusion(conf: np.ndarray, metric: str = "f1") -> np.ndarray:
    """Per-class F1 (``"f1"``) or recall (``"recall"``) from counts ``[..., K, K]`` (0 for 0/0)."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    n_true = conf.sum(axis=-1)
    if metric == "f1":
        num, den = 2.0 * tp, n_true + conf.sum(axis=-2)
    elif metric == "recall":
        num, den = tp, n_true
    else:
        raise ValueError(f"metric must be 'f1' or 'recall', not {metric!r}")
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def macro_from_confusion(conf: np.ndarray, metric: str = "f1", *, classes: Sequence[int] | None = None) -> np.ndarray:
    """Macro average of :func:`per_class_from_confusion` over counts ``[..., K, K]``.

    ``classes`` (indices into K) fixes the classes averaged over; ``None`` takes,
    per matrix, the classes with a true or predicted sample (scikit-learn's set).
    """
    conf = np.asarray(conf)
    per = per_class_from_confusion(conf, metric)
    if classes is not None:
        return per[..., list(classes)].mean(axis=-1)
    used = (conf.sum(axis=-1) + conf.sum(axis=-2)) > 0
    return (per * used).sum(axis=-1) / np.maximum(used.sum(axis=-1), 1)


def per_class_f1(y_true: Any, y_pred: Any, *, labels: Sequence[int] | None = None) -> np.ndarray:
    """F1 of each class, ``2·TP / (2·TP + FP + FN)`` (0 when the class never occurs)."""
    return per_class_from_confusion(confusion_matrix(y_true, y_pred, labels=labels), "f1")


def per_class_recall(y_true: Any, y_pred: Any, *, labels: Sequence[int] | None = None) -> np.ndarray:
    """Recall of each class, ``TP / support`` (0 for a class without support)."""
    return per_class_from_confusion(confusion_matrix(y_true, y_pred, labels=labels), "recall")


def support(y_true: Any, *, labels: Sequence[int]) -> np.ndarray:
    """Number of true samples of each class in ``labels``."""
    t = np.asarray(y_true).astype(np.int64).reshape(-1)
    return np.array([int(np.sum(t == c)) for c in labels], dtype=np.int64)


def macro_f1(y_true: Any, y_pred: Any, *, labels: Sequence[int] | None = None) -> float:
    """Unweighted mean of per-class F1 (= ``sklearn.metrics.f1_score(average="macro")``)."""
    f1 = per_class_f1(y_true, y_pred, labels=labels)
    return float(f1.mean()) if f1.size else 0.0


def uar(y_true: Any, y_pred: Any, *, labels: Sequence[int] | None = None) -> float:
    """Unweighted average recall (= ``sklearn.metrics.recall_score(average="macro")``)."""
    rec = per_class_recall(y_true, y_pred, labels=labels)
    return float(rec.mean()) if rec.size else 0.0


def confusion_matrix_percent(y_true: Any, y_pred: Any, *, labels: Sequence[int]) -> np.ndarray:
    """Confusion matrix with each row (true class) scaled to sum to 100.

    Entry ``[i, j]`` is the percentage of class-``labels[i]`` samples predicted
    as ``labels[j]``; the diagonal is per-class recall in %.  A class without
    samples has a row of zeros.
    """
    counts = confusion_matrix(y_true, y_pred, labels=labels).astype(np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    return 100.0 * np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)


def report(
    y_true: Any,
    y_pred: Any,
    labels: Sequence[str],
    *,
    over: str = "all",
) -> dict[str, Any]:
    """Summary dict for class indices ``0..len(labels)-1`` named by ``labels``.

    ``over="all"`` averages macro-F1 and UAR over every class in ``labels``
    (the ABAW convention: "average F1 across all 7 categories"); ``over="observed"``
    averages over the classes occurring in ``y_true`` or ``y_pred`` (scikit-learn's
    default), kinder to a short clip that shows only a few classes.  Per-class
    numbers and the confusion matrix (rows = true class, % per row) always
    cover every class.
    """
    names = list(labels)
    idx = list(range(len(names)))
    t, p = _arrays(y_true, y_pred)
    if over == "all":
        avg_labels: Sequence[int] | None = idx
    elif over == "observed":
        avg_labels = None
    else:
        raise ValueError(f"over must be 'all' or 'observed', not {over!r}")
    f1 = per_class_f1(t, p, labels=idx)
    sup = support(t, labels=idx)
    return {
        "macro_f1": macro_f1(t, p, labels=avg_labels),
        "uar": uar(t, p, labels=avg_labels),
        "per_class": {n: {"f1": float(f), "support": int(s)} for n, f, s in zip(names, f1, sup)},
        "confusion": [[float(v) for v in row] for row in confusion_matrix_percent(t, p, labels=idx)],
        "labels": names,
    }


__all__ = [
    "confusion_matrix",
    "confusion_matrix_percent",
    "macro_f1",
    "macro_from_confusion",
    "per_class_f1",
    "per_class_from_confusion",
    "per_class_recall",
    "report",
    "support",
    "uar",
]
