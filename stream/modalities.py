"""The modality interface: one window in, 8 basic probabilities (or absence) out.

The analyzer builds a :class:`WindowInput` per window (analysed frames with
their cached face results, the window's 16 kHz audio) and calls each
configured modality in order.  A modality returns a :class:`ModalityOutput`;
``basic=None`` means *absent* (no face, no speech, no model...), which fusion
masks out - never a zero vector.  Modalities may leave results for later ones
in ``WindowInput.shared`` (the voice-activity decision is computed once and
reused by the speech-emotion and speech-text modalities).

A modality that raises is reported in the window record and treated as
absent for that window; the stream goes on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .face import FaceResult, window_face_probs
from .messages import VideoFrame
from .windows import Window


@dataclass
class WindowInput:
    window: Window
    fps: float
    frames: list[VideoFrame]  # the window's analysed frames (5 fps grid), in time order
    faces: list[FaceResult]  # one per frame, same order
    audio: np.ndarray | None  # float32 mono 16 kHz samples of [start, end); None: no audio source
    audio_coverage: float = 0.0  # fraction of the window real audio covered
    shared: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModalityOutput:
    basic: np.ndarray | None  # 8 probabilities in BASIC order; None = absent
    feature: np.ndarray | None = None  # embedding for PFSA and feature dumps
    info: dict[str, Any] = field(default_factory=dict)  # extra fields for the window record

    @classmethod
    def absent(cls, reason: str, **info: Any) -> "ModalityOutput":
        return cls(None, None, {"reason": reason, **info})


@runtime_checkable
class Modality(Protocol):
    name: str

    def __call__(self, inp: WindowInput) -> ModalityOutput: ...

    def close(self) -> None: ...


class FaceModality:
    """Static face model: the window's per-frame face probabilities, averaged
    (frames without a face borrow the nearest face)."""

    name = "face"

    def __call__(self, inp: WindowInput) -> ModalityOutput:
        probs, n_face = window_face_probs(inp.faces)
        info = {"frames": len(inp.faces), "frames_with_face": n_face}
        if probs is None:
            reason = ("no frames received" if not inp.faces else
                      "no face in the window" if not n_face else "face in too few frames")
            return ModalityOutput.absent(reason, **info)
        raw = [f.raw for f in inp.faces if f.found and f.raw is not None]
        feature = np.mean(np.stack(raw), axis=0) if raw else None
        return ModalityOutput(probs, feature, info)

    def close(self) -> None:
        pass


class AbsentModality:
    """A modality that is not running in this configuration: every window records why."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def __call__(self, inp: WindowInput) -> ModalityOutput:
        return ModalityOutput.absent(self.reason)

    def close(self) -> None:
        pass
