"""Basic-to-compound conversion: PPA, the two AVCER rules, and PFSA.

Every function here takes probabilities (or scores) of the 8 basic states in
:data:`stream.core.labels.BASIC` order on the last axis and returns the 7 compound
expressions in :data:`stream.core.labels.COMPOUND` order.

* **PPA** (pair-wise probability aggregation): a compound's value is the sum of
  its two basic probabilities.  Nothing is renormalised, as in the seed code;
  use :func:`normalise` where a distribution is needed (display, JSON).
* **Rule 1** (AVCER): basic probabilities below 1/7 are set to 0, then PPA.
* **Rule 2** (AVCER): a weighted pair sum, the weight of each basic emotion
  being its a-priori rarity among the compounds (An 5, Di 6, Fe 5, Ha 6, Sa 4,
  Su 2), normalised within the pair, e.g. Fearfully Surprised = 5/7·Fe + 2/7·Su.
* **PFSA** (pair-wise feature similarity aggregation, Team RAS 2025): basic
  prototypes in a model's feature space, compound prototypes from pairs of
  them, cosine similarity, softmax with temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.core.labels import BASIC, COMPOUND, COMPOUND_PAIRS

#: Conversion methods understood by :func:`convert`.
METHODS: tuple[str, ...] = ("ppa", "rule1", "rule2", "pfsa")

#: Rule 1 threshold: the paper's "minimum threshold (1/7, since C = 7)".
RULE1_THRESHOLD: float = 1.0 / 7.0

#: Rule 2 per-emotion weights (AVCER Table 1 before normalisation within a pair).
RULE2_WEIGHTS: dict[str, float] = {
    "Anger": 5.0,
    "Disgust": 6.0,
    "Fear": 5.0,
    "Happiness": 6.0,
    "Sadness": 4.0,
    "Surprise": 2.0,
}

#: Indices into BASIC of the two members of each compound, COMPOUND order.
PAIR_INDEX: np.ndarray = np.array([[BASIC.index(a), BASIC.index(b)] for a, b in COMPOUND_PAIRS], dtype=np.intp)

#: [8, 7] 0/1 matrix: ``basic @ PPA_MATRIX`` is PPA (a linear map, handy for training).
PPA_MATRIX: np.ndarray = np.zeros((len(BASIC), len(COMPOUND)), dtype=np.float64)
PPA_MATRIX[PAIR_INDEX[:, 0], np.arange(len(COMPOUND))] = 1.0
PPA_MATRIX[PAIR_INDEX[:, 1], np.arange(len(COMPOUND))] = 1.0

#: [7, 2] Rule 2 weights of the first and second member of each pair (rows sum to 1).
RULE2_PAIR_WEIGHTS: np.ndarray = np.array(
    [[RULE2_WEIGHTS[a], RULE2_WEIGHTS[b]] for a, b in COMPOUND_PAIRS], dtype=np.float64
)
RULE2_PAIR_WEIGHTS /= RULE2_PAIR_WEIGHTS.sum(axis=1, keepdims=True)

#: PFSA temperature used before one is fitted.  The papers do not publish theirs; 0.1 turns
#: cosine gaps of ~0.1 between compound prototypes into a clear but not one-hot preference.
DEFAULT_TEMPERATURE: float = 0.1

#: Range searched by :meth:`PFSA.fit_temperature`.
TEMPERATURE_BOUNDS: tuple[float, float] = (1e-3, 10.0)

_EPS = 1e-12


def _as_basic(basic: np.ndarray) -> np.ndarray:
    """``basic`` as a float array with 8 classes on the last axis (float32 stays float32)."""
    arr = np.asarray(basic)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if arr.ndim == 0 or arr.shape[-1] != len(BASIC):
        raise ValueError(f"expected {len(BASIC)} basic classes on the last axis, got shape {arr.shape}")
    return arr


def ppa(basic: np.ndarray) -> np.ndarray:
    """Pair-wise probability aggregation: ``[..., 8] -> [..., 7]``, p(first) + p(second)."""
    arr = _as_basic(basic)
    return arr[..., PAIR_INDEX[:, 0]] + arr[..., PAIR_INDEX[:, 1]]


def rule1(basic: np.ndarray, *, threshold: float = RULE1_THRESHOLD) -> np.ndarray:
    """AVCER Rule 1: zero every basic probability below ``threshold`` (1/7), then PPA.

    A window where every basic probability is under the threshold gives all zeros
    (:func:`normalise` shows such a row as uniform).
    """
    arr = _as_basic(basic)
    return ppa(np.where(arr < threshold, np.zeros((), dtype=arr.dtype), arr))


def rule2(basic: np.ndarray) -> np.ndarray:
    """AVCER Rule 2: per-pair weighted sum with the rarity weights of :data:`RULE2_WEIGHTS`."""
    arr = _as_basic(basic)
    w = RULE2_PAIR_WEIGHTS.astype(arr.dtype, copy=False)
    return arr[..., PAIR_INDEX[:, 0]] * w[:, 0] + arr[..., PAIR_INDEX[:, 1]] * w[:, 1]


def normalise(values: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Scale non-negative scores to sum to 1 along ``axis`` (for display).

    Negative entries are clipped to 0.  A slice that sums to 0 (e.g. Rule 1 when
    no basic probability reached 1/7) becomes uniform: "no preference", rather
    than a division by zero.  NaN stays NaN.
    """
    arr = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    total = arr.sum(axis=axis, keepdims=True)
    n = arr.shape[axis]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total > 0, arr / np.where(total > 0, total, 1.0), 1.0 / n)
    return out


def _l2(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """L2-normalise along ``axis``; a zero vector stays zero."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, _EPS)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax that treats ``-inf`` as "no mass" (a row of only ``-inf`` gives NaN)."""
    m = np.max(x, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore"):
        e = np.exp(x - m)
        return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _golden_section(f, lo: float, hi: float, *, tol: float = 1e-4, max_iter: int = 200) -> float:
    """Minimiser of a unimodal ``f`` on ``[lo, hi]`` by golden-section search."""
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(max_iter):
        if b - a < tol:
            break
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = f(d)
    return (a + b) / 2.0


@dataclass
class PFSA:
    """Pair-wise feature similarity aggregation.

    Fit with :meth:`fit` (prototypes) and optionally :meth:`fit_temperature`;
    then ``pfsa(features)`` gives ``[..., 7]`` compound probabilities.

    ``basic_prototypes`` is ``[8, D]`` (unit rows, mean of normalised features
    of correctly classified samples, then normalised); a basic class with no
    correctly classified sample has a row of NaN and is listed in
    :attr:`missing_basic`.  How a compound with a missing member is handled is
    ``on_missing``:

    * ``"partial"`` (default): the prototype is built from the member that
      exists (so "Fearfully Surprised" without Fear prototypes uses Surprise);
      a compound with both members missing gets no prototype.
    * ``"drop"``: the compound gets no prototype.
    * ``"error"``: :meth:`fit` raises ``ValueError``.

    A compound without a prototype scores ``-inf`` (probability 0); with no
    compound prototype at all :meth:`fit` raises ``ValueError``.
    """

    basic_prototypes: np.ndarray | None = None
    compound_prototypes: np.ndarray | None = None
    temperature: float = DEFAULT_TEMPERATURE
    counts: tuple[int, ...] = ()
    on_missing: str = "partial"
    meta: dict[str, Any] = field(default_factory=dict)

    # -- fitting -----------------------------------------------------------
    def fit(
        self,
        features: np.ndarray,
        labels_basic_idx: np.ndarray,
        predicted_idx: np.ndarray,
    ) -> PFSA:
        """Build prototypes from ``features [N, D]`` with true and predicted basic indices.

        Only samples whose prediction equals their label (and whose label is
        >= 0 and whose feature is finite and non-zero) contribute.
        """
        if self.on_missing not in ("partial", "drop", "error"):
            raise ValueError(f"on_missing must be partial, drop or error, not {self.on_missing!r}")
        feats = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels_basic_idx).astype(np.int64).reshape(-1)
        pred = np.asarray(predicted_idx).astype(np.int64).reshape(-1)
        if feats.ndim != 2 or feats.shape[0] != y.shape[0] or pred.shape != y.shape:
            raise ValueError(
                f"features must be [N, D] with N labels and N predictions; got {feats.shape}, {y.shape}, {pred.shape}"
            )
        if np.any(y >= len(BASIC)) or np.any(pred >= len(BASIC)):
            raise ValueError(f"basic class indices must be below {len(BASIC)}")
        norms = np.linalg.norm(feats, axis=1)
        usable = (y >= 0) & (y == pred) & np.isfinite(norms) & (norms > 0)
        unit = _l2(np.where(usable[:, None], feats, 0.0))
        dim = feats.shape[1]
        basic = np.full((len(BASIC), dim), np.nan)
        counts = []
        for k in range(len(BASIC)):
            sel = usable & (y == k)
            counts.append(int(sel.sum()))
            if counts[-1]:
                mean = unit[sel].mean(axis=0)
                if np.linalg.norm(mean) > _EPS:
                    basic[k] = _l2(mean)
        self.basic_prototypes = basic
        self.counts = tuple(counts)
        self.compound_prototypes = self._compound_from_basic(basic)
        return self

    def _compound_from_basic(self, basic: np.ndarray) -> np.ndarray:
        have = np.isfinite(basic).all(axis=1)
        comp = np.full((len(COMPOUND), basic.shape[1]), np.nan)
        for c, (i, j) in enumerate(PAIR_INDEX):
            members = [k for k in (i, j) if have[k]]
            if len(members) < 2:
                if self.on_missing == "error":
                    lost = [BASIC[k] for k in (i, j) if not have[k]]
                    raise ValueError(
                        f"PFSA: no correctly classified sample of {', '.join(lost)} (needed by {COMPOUND[c]})"
                    )
                if self.on_missing == "drop" or not members:
                    continue
            comp[c] = _l2(basic[members].mean(axis=0))
        if not np.isfinite(comp).all(axis=1).any():
            raise ValueError("PFSA: no compound prototype could be built (no usable samples)")
        return comp

    @property
    def missing_basic(self) -> tuple[str, ...]:
        """Basic states without a prototype."""
        if self.basic_prototypes is None:
            return tuple(BASIC)
        have = np.isfinite(self.basic_prototypes).all(axis=1)
        return tuple(name for name, ok in zip(BASIC, have) if not ok)

    @property
    def available(self) -> np.ndarray:
        """``[7]`` bool: which compounds have a prototype."""
        return np.isfinite(self._check_fitted()).all(axis=1)

    @property
    def feature_dim(self) -> int:
        """The length of the features the prototypes live in (``RuntimeError`` when not fitted)."""
        return int(self._check_fitted().shape[1])

    def _check_fitted(self) -> np.ndarray:
        """The compound prototypes; raises ``RuntimeError`` when the PFSA is not fitted."""
        if self.compound_prototypes is None:
            raise RuntimeError("PFSA is not fitted: call fit() or from_dict() first")
        return self.compound_prototypes

    # -- inference ---------------------------------------------------------
    def scores(self, features: np.ndarray) -> np.ndarray:
        """Cosine similarity ``[..., 7]`` of ``features [..., D]`` to the compound prototypes.

        Compounds without a prototype score ``-inf``.
        """
        return self._cosine(features, self._check_fitted())

    def basic_scores(self, features: np.ndarray) -> np.ndarray:
        """Cosine similarity ``[..., 8]`` to the basic prototypes (``-inf`` where missing)."""
        if self.basic_prototypes is None:
            raise RuntimeError("PFSA is not fitted: call fit() or from_dict() first")
        return self._cosine(features, self.basic_prototypes)

    @staticmethod
    def _cosine(features: np.ndarray, protos: np.ndarray) -> np.ndarray:
        feats = np.asarray(features, dtype=np.float64)
        if feats.shape[-1] != protos.shape[1]:
            raise ValueError(f"PFSA prototypes are {protos.shape[1]}-d, features are {feats.shape[-1]}-d")
        have = np.isfinite(protos).all(axis=1)
        sims = _l2(feats) @ np.where(have[:, None], protos, 0.0).T
        return np.where(have, sims, -np.inf)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Compound probabilities ``softmax(scores / T)``, ``[..., 7]``."""
        return _softmax(self.scores(features) / self.temperature)

    # -- temperature -------------------------------------------------------
    def nll(self, features: np.ndarray, labels: np.ndarray, temperature: float, *, level: str = "compound") -> float:
        """Mean negative log-likelihood of ``labels`` under ``softmax(scores / temperature)``.

        ``level="basic"`` scores against the basic prototypes instead.  Samples
        with a negative label, or whose labelled class has no prototype, are
        left out.
        """
        s, y = self._scored(features, labels, level)
        if y.size == 0:
            raise ValueError("no labelled sample to compute the NLL on")
        logp = _log_softmax(s / temperature)
        return float(-logp[np.arange(y.size), y].mean())

    def _scored(self, features: np.ndarray, labels: np.ndarray, level: str):
        if level == "compound":
            s = self.scores(features)
        elif level == "basic":
            s = self.basic_scores(features)
        else:
            raise ValueError(f"level must be 'compound' or 'basic', not {level!r}")
        s = s.reshape(-1, s.shape[-1])
        y = np.asarray(labels).astype(np.int64).reshape(-1)
        if y.shape[0] != s.shape[0]:
            raise ValueError(f"{s.shape[0]} feature rows but {y.shape[0]} labels")
        if np.any(y >= s.shape[1]):
            raise ValueError(f"labels must be below {s.shape[1]}")
        keep = (y >= 0) & np.isfinite(s[np.arange(y.size), np.clip(y, 0, None)])
        return s[keep], y[keep]

    def fit_temperature(
        self,
        features: np.ndarray,
        compound_labels: np.ndarray,
        *,
        bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
        grid: int = 41,
        level: str = "compound",
    ) -> float:
        """Pick T minimising the NLL of the labels; sets and returns :attr:`temperature`.

        Search: the NLL is convex in beta = 1/T (log-sum-exp of scores linear
        in beta, minus a linear term), so it is unimodal in log T.  A log-spaced
        grid of ``grid`` points over ``bounds`` brackets the minimum, then a
        golden-section search on log T refines it between the grid neighbours.
        ``level="basic"`` fits T with basic labels against the basic prototypes
        (same feature space and cosine scale): a proxy when no compound labels exist.
        """
        lo, hi = float(bounds[0]), float(bounds[1])
        if not (0 < lo < hi and math.isfinite(hi)):
            raise ValueError(f"temperature bounds must satisfy 0 < lo < hi, got {bounds}")
        s, y = self._scored(features, compound_labels, level)
        if y.size == 0:
            raise ValueError("no labelled sample to fit the temperature on")
        rows = np.arange(y.size)

        def nll_log(log_t: float) -> float:
            logp = _log_softmax(s / math.exp(log_t))
            return float(-logp[rows, y].mean())

        logs = np.linspace(math.log(lo), math.log(hi), max(int(grid), 3))
        values = [nll_log(v) for v in logs]
        best = int(np.argmin(values))
        a = logs[max(best - 1, 0)]
        b = logs[min(best + 1, len(logs) - 1)]
        log_t = _golden_section(nll_log, float(a), float(b), tol=1e-5)
        if nll_log(log_t) > values[best]:
            log_t = float(logs[best])
        self.temperature = float(math.exp(log_t))
        return self.temperature

    # -- serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe parameters; missing prototype rows are ``null``."""
        compound = self._check_fitted()
        if self.basic_prototypes is None:
            raise RuntimeError("PFSA is not fitted: call fit() or from_dict() first")

        def rows(a: np.ndarray) -> list[list[float] | None]:
            return [[float(v) for v in r] if np.isfinite(r).all() else None for r in a]

        return {
            "kind": "pfsa",
            "temperature": float(self.temperature),
            "on_missing": self.on_missing,
            "counts": list(self.counts),
            "basic_prototypes": rows(self.basic_prototypes),
            "compound_prototypes": rows(compound),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PFSA:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on a malformed dict."""
        try:
            basic = _rows_from_json(data["basic_prototypes"], len(BASIC), "basic_prototypes")
            comp = _rows_from_json(data["compound_prototypes"], len(COMPOUND), "compound_prototypes")
            temperature = float(data["temperature"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed PFSA parameters: {exc}") from None
        if basic.shape[1] != comp.shape[1]:
            raise ValueError(f"PFSA basic prototypes are {basic.shape[1]}-d, compound ones {comp.shape[1]}-d")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"PFSA temperature must be positive, got {temperature}")
        if not np.isfinite(comp).all(axis=1).any():
            raise ValueError("PFSA has no compound prototype")
        return cls(
            basic_prototypes=basic,
            compound_prototypes=comp,
            temperature=temperature,
            counts=tuple(int(c) for c in data.get("counts", ())),
            on_missing=str(data.get("on_missing", "partial")),
            meta=dict(data.get("meta", {})),
        )


def _rows_from_json(rows: Any, n: int, what: str) -> np.ndarray:
    if not isinstance(rows, list) or len(rows) != n:
        raise ValueError(f"PFSA {what} must be a list of {n} rows")
    dims = {len(r) for r in rows if r is not None}
    if len(dims) != 1:
        raise ValueError(f"PFSA {what} rows must all have one length (got {sorted(dims)})")
    dim = dims.pop()
    out = np.full((n, dim), np.nan)
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = np.asarray(r, dtype=np.float64)
    return out


def convert(
    method: str,
    basic: np.ndarray,
    features: np.ndarray | None = None,
    pfsa: PFSA | None = None,
) -> np.ndarray:
    """Basic ``[..., 8]`` to compound ``[..., 7]`` by ``method`` (one of :data:`METHODS`).

    ``"pfsa"`` ignores ``basic`` and needs ``features`` and a fitted ``pfsa``.
    """
    if method == "ppa":
        return ppa(basic)
    if method == "rule1":
        return rule1(basic)
    if method == "rule2":
        return rule2(basic)
    if method == "pfsa":
        if pfsa is None or features is None:
            raise ValueError("compound method 'pfsa' needs features and fitted PFSA prototypes")
        return pfsa(features)
    raise ValueError(f"unknown compound method {method!r}; choose one of {', '.join(METHODS)}")
