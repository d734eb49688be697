"""Window arithmetic: 4 s windows every 2 s in media time.

Rules (REFERENCE.md, "Windows and frames"):

* windows are ``[k*2, k*2 + 4)`` seconds of media time;
* a stream of at most 4 s is one window covering all of it;
* after the last full window, a remaining tail shorter than 1 s is dropped
  (its frames take the previous frame's value); a longer tail gets one last,
  shortened window that starts 2 s after the last full one and ends with the
  stream;
* the frames of a window are ``int(start*fps) .. int(end*fps)`` (end exclusive).

Frames are analysed on a fixed 5 fps media-time grid, so a full window holds
20 analysed frames and two overlapping windows share the 10 frames of their
overlap (each analysed once).  A shortened window holds proportionally fewer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WINDOW_S = 4.0
HOP_S = 2.0
MIN_TAIL_S = 1.0
FRAMES_PER_WINDOW = 20
SAMPLE_FPS = FRAMES_PER_WINDOW / WINDOW_S  # 5 analysed frames per second
EPS = 1e-3  # seconds; absorbs float error in frame times


@dataclass(frozen=True, slots=True)
class Window:
    index: int
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def full(self) -> bool:
        return self.duration >= WINDOW_S - EPS

    def frame_range(self, fps: float, total: int | None = None) -> tuple[int, int]:
        """Half-open range of frame numbers the window covers."""
        a = int(self.start * fps + 1e-6)
        b = int(self.end * fps + 1e-6)
        if total is not None:
            a, b = min(a, total), min(b, total)
        return a, b

    def contains(self, t: float) -> bool:
        return self.start - EPS <= t < self.end - EPS


def full_window(k: int) -> Window:
    """The k-th full-length window."""
    return Window(k, k * HOP_S, k * HOP_S + WINDOW_S)


def plan_windows(duration: float) -> list[Window]:
    """All windows of a stream of ``duration`` seconds."""
    if duration <= 0:
        return []
    if duration <= WINDOW_S + EPS:
        return [Window(0, 0.0, duration)]
    out: list[Window] = []
    k = 0
    while k * HOP_S + WINDOW_S <= duration + EPS:
        out.append(full_window(k))
        k += 1
    tail = duration - out[-1].end
    if tail >= MIN_TAIL_S - EPS:
        out.append(Window(k, k * HOP_S, duration))
    return out


def final_before(window: Window) -> float:
    """Media time before which no later window covers any frame."""
    return window.start + HOP_S


class SampleClock:
    """Decides which decoded frames are analysed: the first frame at or after
    each tick of a fixed ``rate`` grid in media time (t = 0, 0.2, 0.4, ... s)."""

    def __init__(self, rate: float = SAMPLE_FPS) -> None:
        self.rate = rate
        self._next = 0.0

    def __call__(self, t: float) -> bool:
        if t + EPS < self._next:
            return False
        self._next = (math.floor(t * self.rate + 1e-6) + 1) / self.rate
        return True

    def reset_states(self) -> None:
        self._next = 0.0
