"""Fusion and basic-to-compound conversion inside the live pipeline.

:class:`Fuser` turns the per-modality outputs of one window into fused 8-class
probabilities, the 7 compound scores and each modality's effective weight.
Without a calibration file every present modality weighs the same; with one
(``--fusion FILE`` from ``cer-stream calibrate``) the fitted scheme (MHPF,
Dirichlet or hierarchical) is used, masked to the modalities present.

A modality may also report how much its own evidence is worth in this window
(``info["confidence"]`` in [0, 1]; the speech-text modality reports the mean
word probability of its transcript). Its weight is then discounted: the fused
output is the expectation over the modality being present with probability
``confidence`` and absent otherwise, i.e. ``c * fuse(all) + (1 - c) *
fuse(without it)``. For the linear schemes this scales the modality's weight by
``c`` and hands the rest to the other present modalities, so a modality with
confidence below 1 never weighs more than its calibrated (or equal) share, and a
shaky transcript cannot outvote the face.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from stream.fusion.compound import METHODS, convert
from stream.fusion.schemes import MHPF, Fusion
from stream.core.labels import BASIC
from stream.modalities.base import ModalityOutput


@dataclass
class Fused:
    basic: np.ndarray | None
    compound: np.ndarray | None  # raw scores (PPA sums, PFSA probabilities...), not normalised
    weights: dict[str, float] = field(default_factory=dict)
    method: str = "ppa"


class Fuser:
    def __init__(self, modalities: list[str], *, method: str = "ppa", calibration=None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown compound method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.calibration = calibration
        self.notes: list[str] = []
        if calibration is not None:
            self.names = list(calibration.modalities)
            self.fusion: Fusion = calibration.fusion
            unused = [n for n in modalities if n not in self.names]
            missing = [n for n in self.names if n not in modalities]
            if unused:
                self.notes.append(f"modalities {', '.join(unused)} are not in the calibration and are not fused")
            if missing:
                self.notes.append(f"calibrated modalities {', '.join(missing)} are not running (always absent)")
            self.kind = calibration.fusion.to_dict().get("kind", type(calibration.fusion).__name__)
        else:
            self.names = list(modalities)
            self.fusion = MHPF.equal(max(1, len(self.names)), len(BASIC))
            self.kind = "equal"
        if method == "pfsa" and (calibration is None or calibration.pfsa is None):
            raise ValueError("--compound pfsa needs a calibration file with PFSA prototypes (--fusion FILE)")
        self.pfsa_modality = getattr(calibration, "pfsa_modality", None) if calibration is not None else None

    def describe(self) -> dict:
        return {"kind": self.kind, "modalities": self.names,
                "calibration": bool(self.calibration is not None), "notes": self.notes}

    def __call__(self, outputs: dict[str, ModalityOutput]) -> Fused:
        probs = np.zeros((len(self.names), len(BASIC)), np.float64)
        mask = np.zeros(len(self.names), bool)
        conf = np.ones(len(self.names), np.float64)
        for i, name in enumerate(self.names):
            out = outputs.get(name)
            if out is not None and out.basic is not None:
                probs[i] = out.basic
                mask[i] = True
                conf[i] = confidence_of(out)
        if not mask.any():
            return Fused(None, None, {}, self.method)
        basic = self._fuse(probs, mask, conf)
        weights = self._weights(mask, conf)
        method = self.method
        if method == "pfsa":
            out = outputs.get(self.pfsa_modality or "")
            if out is not None and out.feature is not None:
                comp = convert("pfsa", basic, features=np.asarray(out.feature, np.float64),
                               pfsa=self.calibration.pfsa)
            else:  # the modality PFSA was fitted on is absent in this window
                comp, method = convert("ppa", basic), "ppa (pfsa modality absent)"
        else:
            comp = convert(method, basic)
        return Fused(basic.astype(np.float32), np.asarray(comp, np.float32), weights, method)

    def _fuse(self, probs: np.ndarray, mask: np.ndarray, conf: np.ndarray) -> np.ndarray:
        """Fused 8-class probabilities, each present modality with confidence ``c < 1`` kept
        with probability ``c`` (the expectation over those modalities' presence)."""
        shaky = [i for i in np.flatnonzero(mask) if conf[i] < 1.0]
        if not shaky:
            return np.asarray(self.fusion.fuse(probs[None], mask[None])[0], np.float64)
        total = np.zeros(len(BASIC), np.float64)
        mass = 0.0
        for kept in itertools.product((True, False), repeat=len(shaky)):
            p = float(np.prod([conf[i] if k else 1.0 - conf[i] for i, k in zip(shaky, kept)]))
            sub = mask.copy()
            for i, k in zip(shaky, kept):
                sub[i] = k
            if p <= 0.0 or not sub.any():
                continue  # nothing left to fuse in this case: renormalised away below
            total += p * np.asarray(self.fusion.fuse(probs[None], sub[None])[0], np.float64)
            mass += p
        if mass <= 0.0:  # every present modality has confidence 0: plain fusion of what is there
            return np.asarray(self.fusion.fuse(probs[None], mask[None])[0], np.float64)
        return total / mass

    def _weights(self, mask: np.ndarray, conf: np.ndarray | None = None) -> dict[str, float]:
        """Each present modality's share of the fused output: its effective weight (after any
        confidence discount) averaged over the 8 classes, normalised so the present modalities'
        shares sum to 1."""
        conf = np.ones(len(self.names)) if conf is None else conf
        raw = {}
        for i, name in enumerate(self.names):
            if not mask[i]:
                continue
            probe = np.zeros((len(self.names), len(BASIC)))
            probe[i] = 1.0
            raw[name] = float(np.mean(self._fuse(probe, mask, conf)))
        total = sum(raw.values())
        return {k: round(v / total, 4) if total > 0 else 0.0 for k, v in raw.items()}


def confidence_of(out: ModalityOutput) -> float:
    """The modality's own confidence in this window (``info["confidence"]``), clipped to [0, 1];
    1 when it reports none."""
    value = out.info.get("confidence") if out.info else None
    if value is None:
        return 1.0
    try:
        c = float(value)
    except (TypeError, ValueError):
        return 1.0
    return min(1.0, max(0.0, c)) if np.isfinite(c) else 1.0
