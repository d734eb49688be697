"""Bounded buffers between the receiver thread and the window loop.

Live sources use ``drop_oldest``: when full, the oldest item goes and a
counter says so; capture is never held up.  A file analysed as fast as
possible uses ``block``: the receiver waits for room, ZeroMQ's high-water
mark fills, and the file reader is paced by the analyzer with nothing lost.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from stream.core.messages import AUDIO_RATE, AudioChunk, VideoFrame
from stream.core.windows import EPS

DROP_OLDEST = "drop_oldest"
BLOCK = "block"


class FrameRing:
    """Analysed-rate video frames ordered by media time."""

    def __init__(self, capacity: int, *, policy: str = DROP_OLDEST) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if policy not in (DROP_OLDEST, BLOCK):
            raise ValueError(f"unknown policy {policy!r}")
        self.capacity = capacity
        self.policy = policy
        self.drops = 0
        self._items: deque[VideoFrame] = deque()
        self._cond = threading.Condition()
        self._horizon = -1.0  # pts of the newest frame ever put
        self.last_index = -1  # frame number of the newest frame ever put

    def put(self, frame: VideoFrame, *, timeout: float | None = None) -> bool:
        """Add a frame.  In ``block`` mode waits up to ``timeout`` for room and
        returns False if there was none; ``drop_oldest`` always succeeds."""
        with self._cond:
            if len(self._items) >= self.capacity:
                if self.policy == BLOCK:
                    if not self._cond.wait_for(lambda: len(self._items) < self.capacity, timeout):
                        return False
                else:
                    while len(self._items) >= self.capacity:
                        self._items.popleft()
                        self.drops += 1
            self._items.append(frame)
            self._horizon = max(self._horizon, frame.pts)
            self.last_index = max(self.last_index, frame.index)
            self._cond.notify_all()
            return True

    def between(self, start: float, end: float) -> list[VideoFrame]:
        """Frames with ``start <= pts < end`` (media seconds)."""
        with self._cond:
            return [f for f in self._items if start - EPS <= f.pts < end - EPS]

    def release_before(self, t: float) -> int:
        """Forget frames older than ``t``; wakes a blocked producer.  Returns how many went."""
        with self._cond:
            n = 0
            while self._items and self._items[0].pts < t - EPS:
                self._items.popleft()
                n += 1
            self._cond.notify_all()
            return n

    @property
    def horizon(self) -> float:
        return self._horizon

    @property
    def full(self) -> bool:
        with self._cond:
            return len(self._items) >= self.capacity

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class AudioRing:
    """Mono 16 kHz audio by media time; keeps at most ``capacity_s`` seconds,
    dropping the oldest chunks (counted in samples)."""

    def __init__(self, capacity_s: float = 60.0, *, rate: int = AUDIO_RATE) -> None:
        self.rate = rate
        self.capacity = int(capacity_s * rate)
        self.dropped_samples = 0
        self._chunks: deque[AudioChunk] = deque()
        self._size = 0
        self._lock = threading.Lock()
        self._horizon = 0.0

    def full(self, chunk: AudioChunk) -> bool:
        """Whether ``chunk`` would push the oldest audio out (a lossless reader waits instead)."""
        with self._lock:
            return bool(self._chunks) and self._size + chunk.samples.shape[0] > self.capacity

    def put(self, chunk: AudioChunk) -> None:
        with self._lock:
            self._chunks.append(chunk)
            self._size += chunk.samples.shape[0]
            self._horizon = max(self._horizon, chunk.pts + chunk.samples.shape[0] / self.rate)
            while self._size > self.capacity and len(self._chunks) > 1:
                old = self._chunks.popleft()
                self._size -= old.samples.shape[0]
                self.dropped_samples += old.samples.shape[0]

    def slice(self, start: float, end: float) -> tuple[np.ndarray, float]:
        """Samples of ``[start, end)``; gaps are zero.  Returns the samples and
        the fraction of the span that real audio covered."""
        n = max(0, int(round((end - start) * self.rate)))
        out = np.zeros(n, dtype=np.float32)
        covered = 0
        with self._lock:
            chunks = list(self._chunks)
        for c in chunks:
            c0 = int(round((c.pts - start) * self.rate))
            c1 = c0 + c.samples.shape[0]
            a, b = max(c0, 0), min(c1, n)
            if a < b:
                out[a:b] = c.samples[a - c0 : b - c0]
                covered += b - a
        return out, (covered / n if n else 0.0)

    def capture_ns_before(self, t: float) -> int | None:
        """Capture time of the newest chunk that starts before media time ``t``."""
        with self._lock:
            stamps = [c.t_capture_ns for c in self._chunks if c.pts < t - EPS]
        return max(stamps) if stamps else None

    def release_before(self, t: float) -> None:
        with self._lock:
            while self._chunks:
                c = self._chunks[0]
                if c.pts + c.samples.shape[0] / self.rate >= t:
                    break
                self._chunks.popleft()
                self._size -= c.samples.shape[0]

    @property
    def horizon(self) -> float:
        return self._horizon

    @property
    def dropped_seconds(self) -> float:
        return self.dropped_samples / self.rate
