"""Probability-level fusion of M modalities over C classes (numpy inference).

Three schemes share one shape convention: ``probs [B, M, C]`` (one probability
vector per window and modality, modalities in a fixed order) and ``mask [B, M]``
(True where the modality gave a prediction for that window; ``None`` means all
present).  A probability row with a non-finite value counts as absent too, so a
caller may also mark a missing modality with NaN.

* :class:`MHPF` -- multi-head probability fusion (Team RAS 2025).  Per head,
  a softmax over modalities of ``W[h]`` gives class-wise weights; the heads
  are mixed by ``softmax(alpha)``.  :meth:`MHPF.equal` is the plain average.
* :class:`DirichletWeights` -- AVCER's first weighting: one weight per model
  and class, columns summing to 1, chosen by random search over Dirichlet
  samples.
* :class:`HierarchicalWeights` -- AVCER's second weighting on top of the
  first: one extra weight per model from the grid 0.01, 0.015, ..., 0.5.

Missing modalities: the weights of the present modalities are renormalised
per class so that each class keeps the total weight it has when every
modality is present (for MHPF and Dirichlet that total is 1, i.e. a convex
combination of the present modalities).  **A window with no modality present
gives a row of NaN** -- not an exception, so one empty window never stops a
stream; callers skip or display such rows as "no data".

Fused outputs are class scores on the probability scale but need not sum to 1
(weights differ per class); use :func:`stream.fusion.compound.normalise` for display.

:func:`train_mhpf` fits MHPF with torch, imported only inside that function.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from stream.core import metrics
from stream.fusion.compound import PPA_MATRIX

Metric = str | Callable[[np.ndarray, np.ndarray], float]

#: AVCER's number of Dirichlet samples in the random search.
DIRICHLET_SAMPLES: int = 10_000
#: AVCER's per-model weight grid for the second (hierarchical) weighting, inclusive.
HIERARCHICAL_GRID: tuple[float, float, float] = (0.01, 0.5, 0.005)
#: Largest number of grid points searched exhaustively; above it, coordinate ascent.
EXHAUSTIVE_LIMIT: int = 20_000
#: Targets a fusion can be fitted for: fused basic classes, or their PPA compounds.
TARGETS: tuple[str, ...] = ("basic", "compound")

# Metric names accepted by the weight searches -> per-class metric of stream.core.metrics.
_NAMED_METRICS = {"macro_f1": "f1", "uar": "recall"}
# Candidate chunks are sized so that one chunk of fused scores holds about this many floats.
_CHUNK_FLOATS = 2_000_000


# --------------------------------------------------------------------------- helpers
def _prepare(
    probs: Any, mask: Any, n_modalities: int | None = None, n_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validated ``(probs with absent rows zeroed [B,M,C], mask [B,M] bool, was_single)``."""
    p = np.asarray(probs, dtype=np.float64)
    single = p.ndim == 2
    if single:
        p = p[None]
    if p.ndim != 3:
        raise ValueError(f"probs must be [B, M, C] (or [M, C]); got shape {p.shape}")
    if n_modalities is not None and p.shape[1] != n_modalities:
        raise ValueError(f"fusion expects {n_modalities} modalities, got {p.shape[1]}")
    if n_classes is not None and p.shape[2] != n_classes:
        raise ValueError(f"fusion expects {n_classes} classes, got {p.shape[2]}")
    if mask is None:
        m = np.ones(p.shape[:2], dtype=bool)
    else:
        m = np.asarray(mask, dtype=bool)
        if single and m.ndim == 1:
            m = m[None]
        if m.shape != p.shape[:2]:
            raise ValueError(f"mask must be [B, M] = {list(p.shape[:2])}; got {list(m.shape)}")
    m = m & np.isfinite(p).all(axis=2)
    p = np.where(m[..., None], p, 0.0)
    return p, m, single


def _keep_total_ckb(e: np.ndarray, p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Weighted sums for K weight sets at once, laid out ``[C, K, B]``.

    ``e`` is ``[K, M, C]`` (non-negative), ``p`` ``[B, M, C]`` with absent rows
    zeroed, ``m`` ``[B, M]``.  Per class, the weights of the present modalities
    are rescaled to the class's total weight ``sum_m e[k, m, c]``, so the result
    is the plain weighted sum when every modality is present.  NaN (0/0) where
    no modality with positive weight is present.
    """
    et = np.moveaxis(e, -1, 0)  # [C, K, M]: one BLAS product per class beats an einsum
    num = et @ p.transpose(2, 1, 0)  # [C, K, B]
    den = et @ m.T.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den * et.sum(axis=2)[:, :, None]


def _keep_total(e: np.ndarray, p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """:func:`_keep_total_ckb` for one weight matrix ``e [M, C]``: ``[B, C]``."""
    return _keep_total_ckb(e[None], p, m)[:, 0, :].T


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def _check_target(target: str, n_classes: int) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    if target == "compound" and n_classes != PPA_MATRIX.shape[0]:
        raise ValueError("target 'compound' needs the 8 basic classes")


def _n_target(n_classes: int, target: str) -> int:
    return PPA_MATRIX.shape[1] if target == "compound" else n_classes


def _fit_rows(probs: Any, mask: Any, labels: Any, target: str):
    """Fitting data: windows with a label >= 0 and at least one modality."""
    p, m, _ = _prepare(probs, mask)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"{p.shape[0]} windows but {y.shape[0]} labels")
    _check_target(target, p.shape[2])
    n_t = _n_target(p.shape[2], target)
    if np.any(y >= n_t):
        raise ValueError(f"labels must be below {n_t} for target {target!r}")
    keep = (y >= 0) & m.any(axis=1)
    if not keep.any():
        raise ValueError("no labelled window with a modality present to fit on")
    return p[keep], m[keep], y[keep]


def _score_predictions(
    pred: np.ndarray, y: np.ndarray, n_classes: int, metric: Metric, classes: Sequence[int] | None
) -> np.ndarray:
    """Metric of each row of ``pred [K, B]`` against ``y [B]``, vectorised for named metrics.

    Named metrics use scikit-learn's class set (union of true and predicted
    classes) unless ``classes`` fixes it.
    """
    if callable(metric):
        return np.array([float(metric(y, row)) for row in pred])
    if metric not in _NAMED_METRICS:
        raise ValueError(f"metric must be 'macro_f1', 'uar' or a callable, not {metric!r}")
    k, n2 = pred.shape[0], n_classes * n_classes
    flat = (np.arange(k)[:, None] * n2 + y[None, :] * n_classes + pred).ravel()
    conf = np.bincount(flat, minlength=k * n2).reshape(k, n_classes, n_classes)
    return metrics.macro_from_confusion(conf, _NAMED_METRICS[metric], classes=classes)


def _search(
    candidates: np.ndarray,
    fuse_batch: Callable[[np.ndarray], np.ndarray],
    y: np.ndarray,
    n_target: int,
    target: str,
    metric: Metric,
    classes: Sequence[int] | None,
) -> tuple[int, np.ndarray]:
    """Score every candidate; index of the first best one and all scores.

    ``fuse_batch`` maps a chunk of candidates to fused basic scores ``[C, K, B]``.
    """
    per = max(1, _CHUNK_FLOATS // max(1, y.size * n_target))
    scores = []
    for start in range(0, candidates.shape[0], per):
        fused = fuse_batch(candidates[start : start + per])
        if target == "compound":
            fused = np.tensordot(PPA_MATRIX.T, fused, axes=1)  # PPA on the class axis
        pred = np.argmax(fused, axis=0)  # no NaN: _fit_rows dropped windows without modalities
        scores.append(_score_predictions(pred, y, n_target, metric, classes))
    all_scores = np.concatenate(scores)
    return int(np.argmax(all_scores)), all_scores


def _float_matrix(data: Any, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim != ndim or not np.isfinite(arr).all():
        raise ValueError(f"{what} must be a finite {ndim}-d array, got shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------- base
class Fusion(ABC):
    """Common interface: :meth:`fuse`, :meth:`to_dict` and :meth:`from_dict`."""

    kind: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Fusion]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            Fusion._registry[cls.kind] = cls

    @property
    @abstractmethod
    def n_modalities(self) -> int:
        """M."""

    @property
    @abstractmethod
    def n_classes(self) -> int:
        """C."""

    @abstractmethod
    def fuse(self, probs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """``[B, M, C]`` (+ ``[B, M]`` mask) -> ``[B, C]``; ``[M, C]`` -> ``[C]``."""

    @abstractmethod
    def _params(self) -> dict[str, Any]:
        """JSON-safe parameters (without ``kind``)."""

    @classmethod
    @abstractmethod
    def _from_params(cls, data: dict[str, Any]) -> Fusion:
        """Build from :meth:`_params` output; raise ``ValueError`` if malformed."""

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., "n_modalities": M, "n_classes": C, **parameters}``."""
        return {"kind": self.kind, "n_modalities": self.n_modalities, "n_classes": self.n_classes, **self._params()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fusion:
        """Rebuild any scheme from :meth:`to_dict` output (dispatches on ``kind``).

        Called on a subclass, the ``kind`` must be that subclass's.  Raises
        ``ValueError`` on an unknown kind or malformed parameters.
        """
        if not isinstance(data, dict):
            raise ValueError("fusion parameters must be a JSON object")
        kind = data.get("kind")
        target = Fusion._registry.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise ValueError(f"unknown fusion kind {kind!r}; known: {', '.join(Fusion._registry)}")
        if cls is not Fusion and target is not cls:
            raise ValueError(f"expected fusion kind {cls.kind!r}, got {kind!r}")
        try:
            obj = target._from_params(data)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed {kind} fusion parameters: {exc}") from None
        for key, have in (("n_modalities", obj.n_modalities), ("n_classes", obj.n_classes)):
            if key in data and int(data[key]) != have:
                raise ValueError(f"{kind} fusion: {key} is {data[key]} but parameters give {have}")
        return obj

    def __call__(self, probs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return self.fuse(probs, mask)


def from_dict(data: dict[str, Any]) -> Fusion:
    """Any fusion scheme from its :meth:`Fusion.to_dict` output."""
    return Fusion.from_dict(data)


# --------------------------------------------------------------------------- MHPF
@dataclass
class MHPF(Fusion):
    """Multi-head probability fusion.

    ``weights`` is ``W [H, M, C]``, ``alpha`` is ``[H]``.  For each head the
    class-wise modality weights are ``softmax(W[h], over modalities)`` restricted
    to the present modalities (absent ones weigh 0, the rest renormalised);
    ``o_h = sum_m w[h, m, :] * p_m``; the output is ``sum_h softmax(alpha)_h o_h``.
    """

    weights: np.ndarray
    alpha: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "mhpf"

    def __post_init__(self) -> None:
        self.weights = _float_matrix(self.weights, 3, "MHPF weights W [H, M, C]")
        self.alpha = _float_matrix(self.alpha, 1, "MHPF alpha [H]")
        if self.alpha.shape[0] != self.weights.shape[0]:
            raise ValueError(f"MHPF has {self.weights.shape[0]} heads in W but {self.alpha.shape[0]} in alpha")

    @classmethod
    def equal(cls, n_modalities: int, n_classes: int) -> MHPF:
        """Plain average over the present modalities (the default without calibration)."""
        return cls(np.zeros((1, n_modalities, n_classes)), np.zeros(1), meta={"init": "equal"})

    @property
    def n_heads(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_modalities(self) -> int:
        return int(self.weights.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.weights.shape[2])

    def modality_weights(self) -> np.ndarray:
        """``[H, M, C]`` softmax weights with every modality present."""
        return _softmax(self.weights, axis=1)

    def fuse(self, probs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        p, m, single = _prepare(probs, mask, self.n_modalities, self.n_classes)
        # Softmax over modalities with absent ones at -inf (weight 0); all absent -> NaN.
        logits = np.where(m[:, None, :, None], self.weights[None], -np.inf)  # [B, H, M, C]
        with np.errstate(invalid="ignore"):
            z = np.exp(logits - logits.max(axis=2, keepdims=True))
            w = z / z.sum(axis=2, keepdims=True)
        heads = np.einsum("bhmc,bmc->bhc", w, p)
        out = np.einsum("h,bhc->bc", _softmax(self.alpha, axis=0), heads)
        return out[0] if single else out

    def _params(self) -> dict[str, Any]:
        return {
            "heads": self.n_heads,
            "W": self.weights.tolist(),
            "alpha": self.alpha.tolist(),
            "meta": dict(self.meta),
        }

    @classmethod
    def _from_params(cls, data: dict[str, Any]) -> MHPF:
        return cls(
            np.asarray(data["W"], dtype=np.float64),
            np.asarray(data["alpha"], dtype=np.float64),
            meta=dict(data.get("meta", {})),
        )


# --------------------------------------------------------------------------- AVCER
@dataclass
class DirichletWeights(Fusion):
    """AVCER's Dirichlet-based weighting: ``fused[c] = sum_m W[m, c] * p_m[c]``.

    ``W [M, C]`` has columns summing to 1 (each class shares out one unit of
    weight among the models).  :meth:`fit` draws ``n_samples`` matrices whose
    columns are i.i.d. ``Dirichlet(1, ..., 1)`` (uniform on the simplex, as in
    the AVCER code) and keeps the one with the best metric of the argmax
    decision on the fitting data.  The uniform matrix (plain average) is scored
    first, and a later sample replaces the incumbent only if strictly better,
    so the result is never worse than averaging on the fitting data.
    """

    weights: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "dirichlet"

    def __post_init__(self) -> None:
        if self.weights is not None:
            self.weights = _float_matrix(self.weights, 2, "Dirichlet weights W [M, C]")
            if np.any(self.weights < 0):
                raise ValueError("Dirichlet weights must be non-negative")

    def _w(self) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() first")
        return self.weights

    @property
    def n_modalities(self) -> int:
        return int(self._w().shape[0])

    @property
    def n_classes(self) -> int:
        return int(self._w().shape[1])

    def fit(
        self,
        probs: np.ndarray,
        mask: np.ndarray | None,
        labels: np.ndarray,
        *,
        metric: Metric = "macro_f1",
        target: str = "basic",
        classes: Sequence[int] | None = None,
        n_samples: int = DIRICHLET_SAMPLES,
        seed: int = 0,
    ) -> DirichletWeights:
        """Random search (seeded) for ``W``; labels < 0 and empty windows are skipped.

        ``target="compound"`` scores PPA of the fused scores against compound
        labels.  ``classes`` fixes the classes the metric averages over (AVCER
        averaged F1 over the six emotions, i.e. ``classes=range(1, 7)``).
        """
        p, m, y = _fit_rows(probs, mask, labels, target)
        n_mod, n_cls = p.shape[1], p.shape[2]
        rng = np.random.default_rng(seed)
        draws = rng.dirichlet(np.ones(n_mod), size=(max(int(n_samples), 0), n_cls))  # [K, C, M]
        candidates = np.concatenate([np.full((1, n_mod, n_cls), 1.0 / n_mod), draws.transpose(0, 2, 1)], axis=0)
        best, scores = _search(
            candidates, lambda e: _keep_total_ckb(e, p, m), y, _n_target(n_cls, target), target, metric, classes
        )
        self.weights = candidates[best]
        self.meta = {
            "search": "dirichlet",
            "n_samples": int(n_samples),
            "seed": int(seed),
            "metric": metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
            "target": target,
            "score": float(scores[best]),
            "equal_score": float(scores[0]),
        }
        return self

    def fuse(self, probs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        p, m, single = _prepare(probs, mask, self.n_modalities, self.n_classes)
        out = _keep_total(self._w(), p, m)
        return out[0] if single else out

    def _params(self) -> dict[str, Any]:
        return {"W": self._w().tolist(), "meta": dict(self.meta)}

    @classmethod
    def _from_params(cls, data: dict[str, Any]) -> DirichletWeights:
        return cls(np.asarray(data["W"], dtype=np.float64), meta=dict(data.get("meta", {})))


def hierarchical_grid(
    lo: float = HIERARCHICAL_GRID[0], hi: float = HIERARCHICAL_GRID[1], step: float = HIERARCHICAL_GRID[2]
) -> np.ndarray:
    """Grid ``lo, lo+step, ..., hi`` (inclusive; 99 values for the AVCER defaults)."""
    n = int(math.floor((hi - lo) / step + 1e-9)) + 1
    return np.round(lo + step * np.arange(n), 10)


@dataclass
class HierarchicalWeights(Fusion):
    """AVCER's hierarchical weighting: class-wise Dirichlet weights, then one weight per model.

    ``fused[c] = sum_m W[m, c] * v[m] * p_m[c] / sum_m v[m]``.  The paper's
    formula has no ``1 / sum v``; that constant factor changes no decision
    (argmax, PPA or Rule 2) but keeps the output on the probability scale, so
    Rule 1's 1/7 threshold still means something.

    :meth:`fit` first fits (or takes) the Dirichlet stage ``W``, then searches
    ``v`` on the grid 0.01, 0.015, ..., 0.5: exhaustively when the grid has at
    most :data:`EXHAUSTIVE_LIMIT` points (two modalities), otherwise by
    coordinate ascent (each model's weight in turn over the whole grid, others
    fixed, until a full round brings no strict improvement).  The search
    starts from equal weights, which reproduce the Dirichlet stage, so the
    result is never worse than it on the fitting data.
    """

    weights: np.ndarray | None = None
    model_weights: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "hierarchical"

    def __post_init__(self) -> None:
        if self.weights is not None:
            self.weights = _float_matrix(self.weights, 2, "hierarchical weights W [M, C]")
        if self.model_weights is not None:
            self.model_weights = _float_matrix(self.model_weights, 1, "model weights v [M]")
        if self.weights is not None and self.model_weights is not None:
            if self.model_weights.shape[0] != self.weights.shape[0]:
                raise ValueError("hierarchical fusion: W and v disagree on the number of modalities")
            if np.any(self.weights < 0) or np.any(self.model_weights <= 0):
                raise ValueError("hierarchical fusion weights must be positive")

    def _wv(self) -> tuple[np.ndarray, np.ndarray]:
        if self.weights is None or self.model_weights is None:
            raise RuntimeError("HierarchicalWeights is not fitted: call fit() first")
        return self.weights, self.model_weights

    @property
    def n_modalities(self) -> int:
        return int(self._wv()[0].shape[0])

    @property
    def n_classes(self) -> int:
        return int(self._wv()[0].shape[1])

    @staticmethod
    def _effective(w: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``[..., M, C]`` weights ``W * v / sum(v)`` for ``v [..., M]``."""
        return w * (v / v.sum(axis=-1, keepdims=True))[..., None]

    def fit(
        self,
        probs: np.ndarray,
        mask: np.ndarray | None,
        labels: np.ndarray,
        *,
        metric: Metric = "macro_f1",
        target: str = "basic",
        classes: Sequence[int] | None = None,
        n_samples: int = DIRICHLET_SAMPLES,
        seed: int = 0,
        first_stage: DirichletWeights | None = None,
        grid: np.ndarray | None = None,
        exhaustive_limit: int = EXHAUSTIVE_LIMIT,
        max_rounds: int = 10,
    ) -> HierarchicalWeights:
        """Fit both stages (see the class docstring); returns ``self``."""
        p, m, y = _fit_rows(probs, mask, labels, target)
        n_mod, n_cls = p.shape[1], p.shape[2]
        if first_stage is None:
            first_stage = DirichletWeights().fit(
                p, m, y, metric=metric, target=target, classes=classes, n_samples=n_samples, seed=seed
            )
        w = first_stage._w()
        if w.shape != (n_mod, n_cls):
            raise ValueError(f"first stage is {list(w.shape)}, data is [{n_mod}, {n_cls}]")
        values = hierarchical_grid() if grid is None else np.asarray(grid, dtype=np.float64)
        if values.ndim != 1 or values.size == 0 or np.any(values <= 0):
            raise ValueError("hierarchical grid must be a non-empty list of positive weights")
        n_t = _n_target(n_cls, target)

        def run(cands: np.ndarray) -> tuple[int, np.ndarray]:
            return _search(
                cands, lambda vs: _keep_total_ckb(self._effective(w, vs), p, m), y, n_t, target, metric, classes
            )

        if values.size**n_mod <= exhaustive_limit:
            cands = np.array(list(itertools.product(values, repeat=n_mod)), dtype=np.float64)
            top = float(values.max())
            cands = np.concatenate([np.full((1, n_mod), top), cands])  # equal v first
            best, scores = run(cands)
            v, score, search = cands[best], float(scores[best]), "exhaustive"
        else:
            v = np.full(n_mod, float(values.max()))
            score = float(run(v[None])[1][0])
            search = "coordinate"
            for _ in range(max_rounds):
                improved = False
                for j in range(n_mod):
                    cands = np.repeat(v[None], values.size, axis=0)
                    cands[:, j] = values
                    best, scores = run(cands)
                    if scores[best] > score + 1e-12:
                        v, score, improved = cands[best].copy(), float(scores[best]), True
                if not improved:
                    break
        self.weights = w.copy()
        self.model_weights = np.asarray(v, dtype=np.float64)
        self.meta = {
            "search": search,
            "grid": [float(values.min()), float(values.max()), values.size],
            "target": target,
            "score": float(score),
            "first_stage": dict(first_stage.meta),
        }
        return self

    def fuse(self, probs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        w, v = self._wv()
        p, m, single = _prepare(probs, mask, self.n_modalities, self.n_classes)
        out = _keep_total(self._effective(w, v), p, m)
        return out[0] if single else out

    def _params(self) -> dict[str, Any]:
        w, v = self._wv()
        return {"W": w.tolist(), "v": v.tolist(), "meta": dict(self.meta)}

    @classmethod
    def _from_params(cls, data: dict[str, Any]) -> HierarchicalWeights:
        return cls(
            np.asarray(data["W"], dtype=np.float64),
            np.asarray(data["v"], dtype=np.float64),
            meta=dict(data.get("meta", {})),
        )


# --------------------------------------------------------------------------- training
def class_balanced_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``N / (K * n_c)`` for each of the K classes present, 0 for absent ones."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    out = np.zeros(n_classes)
    out[present] = counts.sum() / (present.sum() * counts[present])
    return out


def train_mhpf(
    probs: np.ndarray,
    mask: np.ndarray | None,
    labels: np.ndarray,
    *,
    heads: int = 1,
    epochs: int = 100,
    patience: int = 25,
    lr: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    val: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None,
    val_fraction: float = 0.2,
    target: str = "basic",
    monitor: str = "f1",
) -> MHPF:
    """Train :class:`MHPF` with torch (Adam, class-balanced cross-entropy, early stopping).

    Follows the seed code: ``W`` and ``alpha`` start uniform in [0, 1); the
    loss is class-balanced cross-entropy applied to the fused *probabilities*
    as if they were logits; Adam with ``lr`` (1e-4), batches of 64, up to 100
    epochs, patience 25.  ``target="compound"`` trains on compound labels
    through PPA (a fixed linear map of the fused basic scores).

    Validation: ``val=(probs, mask, labels)``, or else ``val_fraction`` of the
    windows drawn with the seed (0 validates on the training data).  Early
    stopping watches validation macro-F1 (``monitor="f1"``, the metric the
    task is judged by; ties keep the earlier epoch) or validation loss
    (``monitor="loss"``); the best epoch's parameters are returned.

    Reproducible: parameters and batch order come from a ``torch.Generator``
    seeded with ``seed`` (the global RNG is left alone), and deterministic
    algorithms are enforced while training (restored afterwards).
    """
    import torch  # optional dependency: only calibration needs it
    import torch.nn.functional as F

    if monitor not in ("f1", "loss"):
        raise ValueError(f"monitor must be 'f1' or 'loss', not {monitor!r}")
    if heads < 1 or epochs < 1 or batch_size < 1:
        raise ValueError("heads, epochs and batch_size must be positive")
    p, m, y = _fit_rows(probs, mask, labels, target)
    n_mod, n_cls = p.shape[1], p.shape[2]
    n_t = _n_target(n_cls, target)
    if val is not None:
        pv, mv, yv = _fit_rows(val[0], val[1], val[2], target)
        if pv.shape[1:] != p.shape[1:]:
            raise ValueError(f"validation data is {list(pv.shape[1:])}, training {list(p.shape[1:])}")
    elif val_fraction > 0 and y.size >= 2:
        order = np.random.default_rng(seed).permutation(y.size)
        n_val = min(max(1, int(round(val_fraction * y.size))), y.size - 1)
        vi, ti = order[:n_val], order[n_val:]
        pv, mv, yv = p[vi], m[vi], y[vi]
        p, m, y = p[ti], m[ti], y[ti]
    else:
        pv, mv, yv = p, m, y

    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        gen = torch.Generator().manual_seed(int(seed))
        dt = torch.float64
        w_param = torch.nn.Parameter(torch.rand(heads, n_mod, n_cls, generator=gen, dtype=dt))
        a_param = torch.nn.Parameter(torch.rand(heads, generator=gen, dtype=dt))
        ppa = torch.as_tensor(PPA_MATRIX, dtype=dt)
        tp, tm, ty = (torch.as_tensor(p, dtype=dt), torch.as_tensor(m), torch.as_tensor(y))
        vp, vm, vy = (torch.as_tensor(pv, dtype=dt), torch.as_tensor(mv), torch.as_tensor(yv))
        cw = torch.as_tensor(class_balanced_weights(y, n_t), dtype=dt)

        def forward(pb: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
            logits = w_param.unsqueeze(0).expand(pb.shape[0], -1, -1, -1)
            logits = logits.masked_fill(~mb[:, None, :, None], float("-inf"))
            wts = torch.softmax(logits, dim=2)  # over modalities, absent ones get 0
            o = (wts * pb[:, None]).sum(dim=2)  # [b, H, C]
            out = (torch.softmax(a_param, dim=0)[None, :, None] * o).sum(dim=1)
            return out @ ppa if target == "compound" else out

        opt = torch.optim.Adam([w_param, a_param], lr=lr)
        best_key: float | None = None
        best = (w_param.detach().clone(), a_param.detach().clone())
        best_epoch, stale, history = 0, 0, []
        for epoch in range(1, epochs + 1):
            perm = torch.randperm(ty.shape[0], generator=gen)
            total = 0.0
            for start in range(0, perm.shape[0], batch_size):
                idx = perm[start : start + batch_size]
                # The seed code feeds the fused probabilities to cross-entropy as logits.
                loss = F.cross_entropy(forward(tp[idx], tm[idx]), ty[idx], weight=cw)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * idx.shape[0]
            with torch.no_grad():
                out_v = forward(vp, vm)
                val_loss = float(F.cross_entropy(out_v, vy, weight=cw))
                val_f1 = metrics.macro_f1(yv, out_v.argmax(dim=1).numpy())
            history.append({"epoch": epoch, "loss": total / ty.shape[0], "val_loss": val_loss, "val_f1": val_f1})
            key = val_f1 if monitor == "f1" else -val_loss
            if best_key is None or key > best_key:
                best_key, best_epoch, stale = key, epoch, 0
                best = (w_param.detach().clone(), a_param.detach().clone())
            else:
                stale += 1
                if stale >= patience:
                    break
    finally:
        torch.use_deterministic_algorithms(prev_det)

    last = history[best_epoch - 1]
    return MHPF(
        best[0].numpy().copy(),
        best[1].numpy().copy(),
        meta={
            "trained": {
                "epochs_run": len(history),
                "best_epoch": best_epoch,
                "monitor": monitor,
                "val_f1": last["val_f1"],
                "val_loss": last["val_loss"],
                "lr": lr,
                "batch_size": batch_size,
                "seed": seed,
                "target": target,
                "n_train": int(y.size),
                "n_val": int(yv.size),
            }
        },
    )
