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

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from stream.core.messages import VideoFrame
from stream.core.windows import Window
from stream.modalities.face import FaceResult, face_absence_reason, l2_normalise, window_face_probs


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
    def absent(cls, reason: str, **info: Any) -> ModalityOutput:
        return cls(None, None, {"reason": reason, **info})


class Modality(ABC):
    """One modality of the window loop: subclass it and implement :meth:`__call__`.

    The analyzer calls :meth:`load` once before capture starts (a modality that cannot load is
    reported and stays absent), the modality once per window, :meth:`reset` between two runs of
    a :class:`stream.Pipeline` (so no state of one stream leaks into the next) and :meth:`close`
    when the pipeline is closed.  Every method but :meth:`__call__` is a no-op here.
    """

    #: the key of its results in window records (``modalities.NAME``) and in fusion
    name: str
    #: False for a modality that reads only the window's audio (the voice, the words): the
    #: analyzer then runs it on a thread of its own beside the window's face work
    needs_frames: bool = True
    #: Whether it reads the window's frame images (``inp.frames[i].image``) when the window
    #: closes; when no modality does, the analyzer lets each image go once its face is analysed
    #: (a live stream then holds no picture longer than the face step needs it).
    reads_images: bool = True

    @abstractmethod
    def __call__(self, inp: WindowInput) -> ModalityOutput:
        """This window's 8 basic probabilities, or :meth:`ModalityOutput.absent` with the reason."""

    def load(self) -> None:  # noqa: B027 (optional hook: a no-op unless overridden)
        """Load models now (before the first window), not on the first call."""

    def reset(self) -> None:  # noqa: B027 (optional hook: a no-op unless overridden)
        """Forget the previous stream (trackers, transcripts, pending captions)."""

    def close(self) -> None:  # noqa: B027 (optional hook: a no-op unless overridden)
        """Free models and threads."""


class FaceModality(Modality):
    """Static face model: the window's per-frame face probabilities, averaged
    (frames without a face borrow the nearest face).

    Its ``feature`` (what ``--dump-features`` records and PFSA scores) is the face model's
    penultimate-layer embedding (``FaceResult.feature``: face-api 256-d, mini-Xception 128-d,
    the ensemble their L2-normalised concatenation, 384-d): each frame's vector L2-normalised,
    averaged over the frames with a face, and L2-normalised again. ``None`` when the model has
    no ``features`` output (EmoAffectNet); ``info["feature_space"]`` names the space
    (``{"name", "dim", "model"}``) so a calibration can record what its prototypes belong to.
    """

    name = "face"
    reads_images = False  # the face step's results (inp.faces), not the pictures

    def __call__(self, inp: WindowInput) -> ModalityOutput:
        probs, n_face = window_face_probs(inp.faces)
        info: dict[str, Any] = {"frames": len(inp.faces), "frames_with_face": n_face}
        if probs is None:
            errors = [e for e in (getattr(f, "error", None) for f in inp.faces) if e]
            if errors:  # the model host (cer-stream serve) could not analyse the frames
                return ModalityOutput.absent("model host unavailable", error=errors[-1], **info)
            return ModalityOutput.absent(face_absence_reason(inp.faces, n_face), **info)
        feature, space = window_face_feature(inp.faces)
        if space is not None:
            info["feature_space"] = space
        return ModalityOutput(probs, feature, info)


def window_face_feature(faces: list[FaceResult]) -> tuple[np.ndarray | None, dict | None]:
    """The window's face embedding and its space: the mean of the L2-normalised per-frame
    features of the frames with a face, L2-normalised (None where no such frame has one).
    Frames whose feature has another size than the first (a model swapped mid-stream) are
    left out rather than mixed."""
    rows = [f for f in faces if f.found and f.basic is not None and f.feature is not None]
    if not rows:
        return None, None
    dim = np.asarray(rows[0].feature).shape[-1]
    feats = np.stack(
        [np.asarray(f.feature, np.float64).reshape(-1) for f in rows if np.asarray(f.feature).shape[-1] == dim]
    )
    feats = feats[np.isfinite(feats).all(axis=1)]
    if not len(feats):
        return None, None
    mean = l2_normalise(l2_normalise(feats).mean(axis=0))
    if not np.any(mean):
        return None, None
    space = rows[0].feature_space
    space = {**space, "dim": int(dim)} if space else {"name": "face model features", "dim": int(dim), "model": None}
    return mean.astype(np.float32), space


class AbsentModality(Modality):
    """A modality that is not running in this configuration: every window records why."""

    reads_images = False

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def __call__(self, inp: WindowInput) -> ModalityOutput:
        return ModalityOutput.absent(self.reason)


class LaggedModality(Modality):
    """Runs a slow modality (speech-to-text) off the window thread for live sources.

    Each call hands the window to a worker thread (when it is busy, the newest waiting window
    replaces an older one) and waits at most ``budget_s`` for that window's result.  If it is
    not ready, the newest finished result of the last ``max_lag`` windows is used instead and
    the record says which window it came from (``from_window``, ``lag_windows``).  The window
    loop is never held up for longer than the budget, so a live window's latency stays that of
    the fast modalities.  The wrapped modality must not share stateful objects with other
    modalities (the worker thread uses them concurrently).
    """

    def __init__(self, inner: Modality, *, budget_s: float = 0.03, max_lag: int = 1) -> None:
        if max_lag < 0:
            raise ValueError(f"max_lag must be >= 0 windows, got {max_lag}")
        self.inner = inner
        self.name = inner.name
        self.needs_frames = getattr(inner, "needs_frames", True)  # duck-typed modalities too
        self.reads_images = getattr(inner, "reads_images", True)
        self.budget_s = budget_s
        self.max_lag = max_lag
        self._cond = threading.Condition()
        self._pending: WindowInput | None = None
        self._results: dict[int, ModalityOutput] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._work, name=f"cer-{self.name}", daemon=True)
        self._thread.start()

    def load(self) -> None:
        self.inner.load()

    def reset(self) -> None:
        self.inner.reset()

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job, self._pending = self._pending, None
            assert job is not None  # the wait above ends on a job or on stop
            try:
                out = self.inner(job)
            except Exception as exc:  # reported in the window record, like any failing modality
                out = ModalityOutput.absent("error", error=f"{type(exc).__name__}: {exc}")
            with self._cond:
                self._results[job.window.index] = out
                for k in [k for k in self._results if k < job.window.index - self.max_lag]:
                    del self._results[k]
                self._cond.notify_all()

    def __call__(self, inp: WindowInput) -> ModalityOutput:
        k = inp.window.index
        with self._cond:
            self._pending = replace(inp, shared=dict(inp.shared))  # its own copy of the shared dict
            self._cond.notify_all()
            self._cond.wait_for(lambda: k in self._results, timeout=self.budget_s)
            done = {j: out for j, out in self._results.items() if k - self.max_lag <= j <= k}
        if not done:
            return ModalityOutput.absent("still processing (runs beside the live stream)")
        j = max(done)
        out = done[j]
        info = {**out.info, "from_window": j, "lag_windows": k - j}
        return ModalityOutput(out.basic, out.feature, info)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(5.0)
        self.inner.close()
