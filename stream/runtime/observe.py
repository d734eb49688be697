"""Observer hooks, and the face-analysis step of the window loop.

An observer subclasses :class:`Observer` and overrides some of these hooks (each a no-op
there), or is any object with some of these methods, wrapped once by :func:`as_observer`::

    on_stage(name, ms, window_index, frames)  # a timed stage
    on_window(record)                          # a WindowRecord, as it is emitted
    on_record(record)                          # every record (typed), as it is emitted
    on_face_call(call)                         # one face-analysis call: a FaceCall
    on_capture(pids)                           # the capture processes' pids, once they run
    on_frame(frame, face)                      # each analysed frame (a VideoFrame: index, pts,
                                               # image) and its FaceResult (box, found), once

Stages: ``face_analysis`` (one call of the face analyzer; ``frames`` are the frame numbers it
analysed), per analysed frame ``detect``, ``validate`` and ``emotion`` (the frame's share of its
batch), per window each modality by name and ``fusion``.  ``window_index`` is the window being
filled or analysed.  Observers run on the window loop's thread: keep them quick.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.core.messages import VideoFrame
from stream.modalities.face import FaceResult
from stream.runtime.records import Record, WindowRecord


class Observer:
    """Told about stage timings, records and analysed frames: subclass it and override the hooks
    you need (each is a no-op here).  Any other object with some of the ``on_*`` methods works
    too: :func:`as_observer` wraps it once, when the pipeline or analyzer is made."""

    def on_stage(self, name: str, ms: float, window_index: int | None, frames: Sequence[int]) -> None:
        """A timed stage (see the module docstring for the names)."""

    def on_window(self, record: WindowRecord) -> None:
        """A window record, as it is emitted."""

    def on_record(self, record: Record) -> None:
        """Every record (typed), as it is emitted."""

    def on_face_call(self, call: FaceCall) -> None:
        """One call of the face analyzer."""

    def on_capture(self, pids: list[int]) -> None:
        """The capture processes' pids, once they run."""

    def on_frame(self, frame: VideoFrame, face: FaceResult | None) -> None:
        """Each analysed frame and its face result, once."""


#: The hooks of :class:`Observer`.
HOOKS = ("on_stage", "on_window", "on_record", "on_face_call", "on_capture", "on_frame")


class _HookObserver(Observer):
    """An object with some of the hooks, as an :class:`Observer`: its methods are looked up
    once, here, and the hooks it lacks stay no-ops."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        for hook in HOOKS:
            method = getattr(inner, hook, None)
            if callable(method):
                setattr(self, hook, method)


def as_observer(observer: object) -> Observer:
    """``observer`` itself when it is an :class:`Observer`, else wrapped once."""
    return observer if isinstance(observer, Observer) else _HookObserver(observer)


class Observers:
    """Fans each event out to the observers."""

    def __init__(self, observers: Iterable[object] = ()) -> None:
        self.items = [as_observer(ob) for ob in observers]

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def want_frames(self) -> bool:
        """Whether some observer is told about each analysed frame (and may read its picture)."""
        return any(type(ob).on_frame is not Observer.on_frame or "on_frame" in vars(ob) for ob in self.items)

    def stage(self, name: str, ms: float, window_index: int | None = None, frames: Sequence[int] = ()) -> None:
        for ob in self.items:
            ob.on_stage(name, ms, window_index, list(frames))

    def record(self, record: Record) -> None:
        for ob in self.items:
            ob.on_record(record)
        if isinstance(record, WindowRecord):
            for ob in self.items:
                ob.on_window(record)

    def face_call(self, call: FaceCall) -> None:
        for ob in self.items:
            ob.on_face_call(call)

    def capture(self, pids: list[int]) -> None:
        for ob in self.items:
            ob.on_capture(pids)

    def frame(self, frame: VideoFrame, face: FaceResult | None) -> None:
        for ob in self.items:
            ob.on_frame(frame, face)


# --------------------------------------------------------------------------- face timing
@dataclass
class FrameTimes:
    index: int
    pts: float
    detect_ms: float = 0.0
    validate_ms: float = 0.0
    validations: int = 0
    emotion_ms: float = 0.0  # this frame's share of its batch
    found: bool = False


@dataclass
class FaceCall:
    """One call of the face analyzer: its frames (``(index, pts, rgb)``), results, and times."""

    window_index: int | None
    frames: list[tuple[int, float, Any]]
    results: list[Any]
    times: list[FrameTimes]
    wall_ms: float
    emotion_ms: float
    crops: int
    end_ns: int = field(default_factory=time.monotonic_ns)


class _FaceTimer:
    """Collects per-frame detection/validation and per-batch emotion times while armed.

    Detection is called once per analysed frame, in order, so the n-th ``detect`` call of an
    armed call belongs to its n-th frame; validations belong to the frame being located."""

    def __init__(self) -> None:
        self.armed = False
        self.frames: list[FrameTimes] = []
        self.emotion: list[tuple[float, int]] = []
        self._cur = -1

    def arm(self, frames: list[tuple[int, float, Any]]) -> None:
        self.frames = [FrameTimes(i, pts) for i, pts, _ in frames]
        self.emotion = []
        self._cur = -1
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def detected(self, ms: float) -> None:
        if self.armed:
            self._cur += 1
            if self._cur < len(self.frames):
                self.frames[self._cur].detect_ms += ms

    def validated(self, ms: float) -> None:
        if self.armed and 0 <= self._cur < len(self.frames):
            self.frames[self._cur].validate_ms += ms
            self.frames[self._cur].validations += 1

    def predicted(self, ms: float, n: int) -> None:
        if self.armed:
            self.emotion.append((ms, n))


class TimedDetector:
    """Wraps a face detector (``detect``, ``validate``) to report each call's time."""

    def __init__(self, inner: Any, timer: _FaceTimer) -> None:
        self._inner, self._timer = inner, timer

    def detect(self, rgb):
        t = time.perf_counter()
        try:
            return self._inner.detect(rgb)
        finally:
            self._timer.detected((time.perf_counter() - t) * 1e3)

    def validate(self, rgb, box):
        t = time.perf_counter()
        try:
            return self._inner.validate(rgb, box)
        finally:
            self._timer.validated((time.perf_counter() - t) * 1e3)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class TimedEmotionModel:
    """Wraps the face emotion model (``predict``) to report each batch's time."""

    def __init__(self, inner: Any, timer: _FaceTimer) -> None:
        self._inner, self._timer = inner, timer
        self.labels = inner.labels

    def predict(self, images, boxes):
        t = time.perf_counter()
        try:
            return self._inner.predict(images, boxes)
        finally:
            self._timer.predicted((time.perf_counter() - t) * 1e3, len(boxes))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


#: The timer of each instrumented face analyzer (kept beside it: nothing is added to the object).
_TIMERS: weakref.WeakKeyDictionary[Any, _FaceTimer] = weakref.WeakKeyDictionary()


def instrument_face(face: Any) -> Any:
    """Let ``face`` (a FaceAnalyzer) report per-frame stage times to a :class:`FaceStep`; no-op
    when already done.  Wraps its detector and model in timing proxies (composition, no
    patching of methods)."""
    if face not in _TIMERS:
        timer = _FaceTimer()
        face.detector = TimedDetector(face.detector, timer)
        face.model = TimedEmotionModel(face.model, timer)
        _TIMERS[face] = timer
    return face


#: What a frame's picture becomes once nothing will read it (:attr:`FaceStep.release`).
RELEASED = np.zeros((0, 0, 3), np.uint8)


class FaceStep:
    """The window loop's face step: analyse the frames not analysed yet, once each, into the cache.

    Used both while a window fills (frames as they arrive) and when it closes."""

    def __init__(self, face: Any, cache: Any, stats: Any, observers: Observers, *, release: bool = False) -> None:
        self.face, self.cache, self.stats, self.observers = face, cache, stats, observers
        #: let each frame's picture go once its face is analysed (nothing else reads it)
        self.release = release

    def __call__(self, frames: Sequence[Any], window_index: int | None = None) -> int:
        """Analyse those of ``frames`` (VideoFrames) that are not cached; returns how many."""
        new = [f for f in frames if f.index not in self.cache.items]
        todo = [(f.index, f.pts, f.image) for f in new]
        if not todo:
            return 0
        timer = _TIMERS.get(self.face) if self.observers else None
        if timer is not None:
            timer.arm(todo)
        t0 = time.perf_counter()
        try:
            results = self.face.analyse(todo)
        finally:
            if timer is not None:
                timer.disarm()
        wall = (time.perf_counter() - t0) * 1e3
        for r in results:
            self.cache.items[r.index] = r
        if self.observers:
            for f in new:
                self.observers.frame(f, self.cache.items.get(f.index))
        self.stats.frames_analysed += len(todo)
        if self.release:
            for f in new:
                f.image = RELEASED
        if self.observers:
            indices = [i for i, _, _ in todo]
            self.observers.stage("face_analysis", wall, window_index, indices)
            if timer is not None:
                em = sum(e[0] for e in timer.emotion)
                crops = sum(e[1] for e in timer.emotion)
                found = {r.index: bool(r.found) for r in results}
                for ft in timer.frames:
                    ft.emotion_ms = em / len(todo)
                    ft.found = found.get(ft.index, False)
                    self.observers.stage("detect", ft.detect_ms, window_index, [ft.index])
                    self.observers.stage("validate", ft.validate_ms, window_index, [ft.index])
                    self.observers.stage("emotion", ft.emotion_ms, window_index, [ft.index])
                self.observers.face_call(FaceCall(window_index, todo, list(results), timer.frames, wall, em, crops))
        return len(todo)


__all__ = [
    "FaceCall",
    "FaceStep",
    "FrameTimes",
    "HOOKS",
    "Observer",
    "Observers",
    "as_observer",
    "TimedDetector",
    "TimedEmotionModel",
    "instrument_face",
]
