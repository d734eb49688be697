"""Fusion and basic-to-compound conversion inside the live pipeline.

:class:`Fuser` turns the per-modality outputs of one window into fused 8-class
probabilities, the 7 compound scores and each modality's effective weight.
Without a calibration file every present modality weighs the same; with one
(``FusionOptions.calibration``, a file from ``cer-stream calibrate``) the fitted scheme (MHPF,
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

One compound method per run: every window's compound scores come from ``method``
and nothing else. With ``pfsa``, a window where the calibrated PFSA modality is
absent, has no feature, or has a feature of another size than the prototypes gets
``compound=None`` and a ``reason`` (e.g. ``"pfsa: face feature absent"``); it is
never scored by PPA instead, so PFSA probabilities and PPA sums are never averaged
on the same frames (the runtime adds no such window to the frame timeline).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from stream.core.labels import BASIC, COMPOUND
from stream.fusion.calibration import Calibration
from stream.fusion.compound import METHODS, convert, normalise
from stream.fusion.schemes import MHPF, Fusion
from stream.modalities.base import ModalityOutput

#: How the errors about PFSA name the option that chose it: a library error names the option
#: field a caller set (the command line says its flag instead: stream.cli.flags.flag_names).
PFSA = 'FusionOptions.compound = "pfsa"'


@dataclass
class Fused:
    basic: np.ndarray | None
    #: raw scores (PPA sums, PFSA probabilities...), not normalised; None when the run's
    #: compound method cannot score this window (``reason`` says why)
    compound: np.ndarray | None
    weights: dict[str, float] = field(default_factory=dict)
    method: str = "ppa"  # always the run's method (never another one swapped in)
    reason: str | None = None  # why ``compound`` is None (None when it is not)

    @property
    def scored(self) -> bool:
        """True when the window has compound scores: only such windows go into the frame timeline."""
        return self.basic is not None and self.compound is not None

    def record(self) -> dict:
        """The window record's fusion fields: ``basic``, ``compound`` (normalised), ``label``,
        ``basic_label``, ``compound_method`` and, where the method could not score the window,
        ``compound_reason``."""
        basic = None if self.basic is None else dict(zip(BASIC, self.basic))
        basic_label = None if self.basic is None else BASIC[int(np.argmax(self.basic))]
        if self.scored:
            assert self.compound is not None  # what `scored` means
            compound: dict[str, float] | None = dict(zip(COMPOUND, normalise(self.compound)))
            label: str | None = COMPOUND[int(np.argmax(self.compound))]
        else:
            compound = label = None
        rec = {
            "basic": basic,
            "compound": compound,
            "label": label,
            "basic_label": basic_label,
            "compound_method": self.method,
        }
        if self.reason is not None:
            rec["compound_reason"] = self.reason
        return rec


class Fuser:
    """Fusion and compound conversion of one run.

    ``feature_spaces`` (modality -> ``{"name", "dim", "model"}``, or None where the running
    model exports no features) lets :class:`Fuser` refuse, at start-up and in one line, a PFSA
    calibration whose prototypes live in another feature space than the running model's.
    """

    def __init__(
        self,
        modalities: list[str],
        *,
        method: str = "ppa",
        calibration: Calibration | None = None,
        feature_spaces: dict[str, dict | None] | None = None,
    ) -> None:
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
            raise ValueError(
                f"{PFSA} needs a calibration with PFSA prototypes "
                "(FusionOptions.calibration: a file from `cer-stream calibrate`)"
            )
        self.pfsa_modality = calibration.pfsa_modality if calibration is not None else None
        self.pfsa = calibration.pfsa if calibration is not None and method == "pfsa" else None
        self.pfsa_space: dict = dict(calibration.pfsa_feature_space or {}) if calibration and self.pfsa else {}
        if self.pfsa is not None:
            self.pfsa_space.setdefault("dim", self.pfsa.feature_dim)
            if self.pfsa_modality not in modalities:
                raise ValueError(
                    f"{PFSA}: the calibration's PFSA modality {self.pfsa_modality!r} "
                    f"is not running (running: {', '.join(modalities) or 'none'})"
                )
            if feature_spaces is not None and self.pfsa_modality in feature_spaces:
                check_feature_space(self.pfsa_modality, self.pfsa_space, feature_spaces[self.pfsa_modality])

    def describe(self) -> dict:
        out = {
            "kind": self.kind,
            "modalities": self.names,
            "calibration": bool(self.calibration is not None),
            "notes": self.notes,
        }
        if self.pfsa is not None:
            out["pfsa"] = {
                "modality": self.pfsa_modality,
                "feature_space": self.pfsa_space,
                "temperature": self.pfsa.temperature,
            }
        return out

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
            return Fused(None, None, {}, self.method)  # nothing present: the record says so per modality
        basic = self._fuse(probs, mask, conf)
        weights = self._weights(mask, conf)
        if self.method != "pfsa":
            comp = convert(self.method, basic)
            return Fused(basic.astype(np.float32), np.asarray(comp, np.float32), weights, self.method)
        feature, reason = self._pfsa_feature(outputs)
        if feature is None:  # PFSA cannot score this window: no compound, never another method's
            return Fused(basic.astype(np.float32), None, weights, self.method, reason)
        comp = convert("pfsa", basic, features=feature, pfsa=self.pfsa)
        return Fused(basic.astype(np.float32), np.asarray(comp, np.float32), weights, self.method)

    def _pfsa_feature(self, outputs: dict[str, ModalityOutput]) -> tuple[np.ndarray | None, str | None]:
        """The PFSA modality's feature in this window, or None and why it cannot be scored."""
        name = self.pfsa_modality or ""
        out = outputs.get(name)
        if out is None or out.basic is None:
            why = (out.info or {}).get("reason") if out is not None else None
            return None, f"pfsa: {name} absent" + (f" ({why})" if why else "")
        if out.feature is None:
            return None, f"pfsa: {name} feature absent"
        feature = np.asarray(out.feature, np.float64).reshape(-1)
        assert self.pfsa is not None  # only called for PFSA, which has prototypes
        want = self.pfsa.feature_dim
        if feature.size != want:
            return None, f"pfsa: {name} feature is {feature.size}-d, the prototypes are {want}-d"
        if not np.isfinite(feature).all() or not np.any(feature):
            return None, f"pfsa: {name} feature is not usable (zero or not finite)"
        return feature, None

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


def _describe_space(space: dict) -> str:
    parts = [str(space[k]) for k in ("name", "model") if space.get(k)]
    return f"{space.get('dim', '?')}-d" + (f" ({', '.join(parts)})" if parts else "")


def check_feature_space(modality: str, calibrated: dict, running: dict | None) -> None:
    """Raise a one-line ``ValueError`` when PFSA prototypes (``calibrated``: ``{"dim", "name",
    "model"}``) cannot score the running model's features (``running``; None: it has none)."""
    if running is None:
        raise ValueError(
            f"{PFSA}: the running {modality} model exports no features; the "
            f"calibration's PFSA prototypes are {_describe_space(calibrated)}"
        )
    want, have = calibrated.get("dim"), running.get("dim")
    if want is not None and have is not None and int(want) != int(have):
        raise ValueError(
            f"{PFSA}: the calibration's PFSA prototypes are {_describe_space(calibrated)} "
            f"but the running {modality} model gives {_describe_space(running)} features; "
            f"calibrate again with this model, or run the model the calibration was made with"
        )
    if (
        calibrated.get("model")
        and running.get("model")
        and calibrated.get("name")
        and running.get("name")
        and calibrated["name"] != running["name"]
    ):
        raise ValueError(
            f"{PFSA}: the calibration's PFSA prototypes are in {calibrated['name']} "
            f"(model {calibrated['model']}) but the running {modality} model gives "
            f"{running['name']} (model {running['model']}); calibrate again with this model"
        )
