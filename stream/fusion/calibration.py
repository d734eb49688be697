"""The calibration file: what ``cer-stream calibrate`` writes and a run's fuser reads.

A versioned JSON object (``format``: ``cer-stream-calibration``, ``version``: 1) holding the
label orders it was fitted with, the fused modalities, the fusion scheme's parameters
(:class:`stream.fusion.schemes.Fusion`) and optional PFSA prototypes with the feature space they
live in.  The format belongs to the fusion layer: the live path (``stream.runtime.build``) loads
it without importing the offline package that fits it (:mod:`stream.offline.calibrate`, which
re-exports these names).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.core.labels import BASIC, COMPOUND
from stream.fusion.compound import PFSA
from stream.fusion.schemes import Fusion

FORMAT = "cer-stream-calibration"
VERSION = 1


class CalibrationError(Exception):
    """Bad input to calibrate/eval, or an unusable calibration file (one-line message)."""


@dataclass
class Calibration:
    """Contents of a calibration file: fusion over ``modalities`` and optional PFSA."""

    modalities: tuple[str, ...]
    fusion: Fusion
    pfsa: PFSA | None = None
    pfsa_modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: the space the PFSA prototypes live in: {"name", "dim", "model"} (model None: unknown)
    pfsa_feature_space: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        pfsa = None
        if self.pfsa is not None:
            space = dict(self.pfsa_feature_space or {})
            space.setdefault("name", f"{self.pfsa_modality}.feature")
            space.setdefault("model", None)
            prototypes = self.pfsa.compound_prototypes
            if prototypes is None:
                raise RuntimeError("PFSA is not fitted: call fit() or from_dict() first")
            space["dim"] = int(prototypes.shape[1])
            pfsa = {**self.pfsa.to_dict(), "modality": self.pfsa_modality, "feature_space": space}
        return {
            "format": FORMAT,
            "version": VERSION,
            "basic_labels": list(BASIC),
            "compound_labels": list(COMPOUND),
            "modalities": list(self.modalities),
            "fusion": self.fusion.to_dict(),
            "pfsa": pfsa,
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> None:
        try:
            Path(path).write_text(json.dumps(self.to_dict()) + "\n", encoding="utf-8")
        except OSError as exc:
            raise CalibrationError(f"cannot write {path}: {exc.strerror or exc}") from None


def load_calibration(path: str | Path) -> Calibration:
    """Read and validate a calibration file; :class:`CalibrationError` says what is wrong."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CalibrationError(f"cannot read calibration {p}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{p}: not a calibration file (invalid JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationError(f"{p}: not a calibration file (format is not {FORMAT!r})")
    if data.get("version") != VERSION:
        raise CalibrationError(
            f"{p}: calibration version {data.get('version')!r} is not supported (expected {VERSION})"
        )
    for key, want in (("basic_labels", BASIC), ("compound_labels", COMPOUND)):
        if data.get(key) != list(want):
            raise CalibrationError(f"{p}: {key} differ from this cer-stream's order {list(want)}")
    mods = data.get("modalities")
    if (
        not isinstance(mods, list)
        or not mods
        or not all(isinstance(m, str) and m for m in mods)
        or len(set(mods)) != len(mods)
    ):
        raise CalibrationError(f"{p}: 'modalities' must be a list of distinct names")
    raw_fusion = data.get("fusion")
    if not isinstance(raw_fusion, dict):
        raise CalibrationError(f"{p}: fusion parameters must be a JSON object")
    try:
        fusion = Fusion.from_dict(raw_fusion)
    except ValueError as exc:
        raise CalibrationError(f"{p}: {exc}") from None
    if fusion.n_modalities != len(mods) or fusion.n_classes != len(BASIC):
        raise CalibrationError(
            f"{p}: fusion is for {fusion.n_modalities} modalities x {fusion.n_classes} classes, "
            f"file lists {len(mods)} modalities x {len(BASIC)} classes"
        )
    pfsa, pfsa_mod = None, None
    if data.get("pfsa") is not None:
        raw = data["pfsa"]
        if not isinstance(raw, dict):
            raise CalibrationError(f"{p}: 'pfsa' must be an object or null")
        pfsa_mod = raw.get("modality")
        if pfsa_mod not in mods:
            raise CalibrationError(f"{p}: PFSA modality {pfsa_mod!r} is not among {mods}")
        try:
            pfsa = PFSA.from_dict(raw)
        except ValueError as exc:
            raise CalibrationError(f"{p}: {exc}") from None
        space = raw.get("feature_space")
        if space is not None:
            if not isinstance(space, dict):
                raise CalibrationError(f"{p}: pfsa.feature_space must be an object")
            assert pfsa.compound_prototypes is not None  # set by PFSA.from_dict
            dim = pfsa.compound_prototypes.shape[1]
            if space.get("dim") is not None and space.get("dim") != dim:
                raise CalibrationError(f"{p}: pfsa.feature_space says {space.get('dim')}-d, the prototypes are {dim}-d")
    raw_meta = data.get("meta")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    pfsa_space = dict(raw["feature_space"]) if pfsa is not None and raw.get("feature_space") else None
    return Calibration(tuple(mods), fusion, pfsa, pfsa_mod, meta, pfsa_space)


__all__ = ["FORMAT", "VERSION", "Calibration", "CalibrationError", "load_calibration"]
