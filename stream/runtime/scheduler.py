"""Which window is due: the window loop's decisions, free of threads, processes and models.

The scheduler looks at a snapshot of the ring buffers (:class:`Arrivals`) and a clock and says
what to do next (:meth:`Scheduler.poll`):

* :class:`Wait`: the next window's media has not all arrived (analyse what has, then wait);
* :class:`Run`: analyse window ``w`` now (also a window a lost live source cut short: it is
  analysed with the frames it has when the loss is declared, not held until the source returns);
* :class:`Skip`: a live source is more than a hop ahead of the window: jump to the newest complete
  window (the skipped ones are never analysed);
* :class:`Missing`: a gap in a live source (a reconnect) left the next windows without a single
  frame: they are passed over and accounted for as missing (the gap record names them);
* :class:`Finish`: the stream ended (or a stop was asked for): analyse :meth:`Scheduler.tail`'s
  windows and end.

A window is due when its last analysed frame has arrived (or the video ended) and its audio has
reached the window's end, or there is no reason to wait for it: no audio, the audio ended, a
full lossless frame ring (waiting could deadlock), or a live source whose audio is more than
``audio_grace_s`` late.  A file analysed as fast as possible never skips.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from stream.core.windows import (
    EPS,
    HOP_S,
    SAMPLE_FPS,
    WINDOW_S,
    Window,
    full_window,
    plan_windows,
    swallowed_windows,
)

#: How long a live window waits for late audio once its video is complete.
AUDIO_GRACE_S = 0.5


@dataclass(frozen=True)
class Arrivals:
    """What has arrived, at one moment (read under the source state's lock)."""

    video_horizon: float  # media time of the newest frame (-1: none yet)
    audio_horizon: float = 0.0  # media time the audio reaches
    video_done: bool = False  # the video ended (end of stream or a fatal error)
    audio_expected: bool = False
    audio_done: bool = False
    frames_full: bool = False  # a lossless (blocking) frame ring is full
    stopping: bool = False  # a stop was asked for
    gaps: tuple[tuple[float, float], ...] = ()  # closed gaps: (last media time before, first after)
    #: media time of the last frame before a loss of the source (an open gap), or None
    lost: float | None = None


@dataclass(frozen=True)
class Wait:
    window: Window


@dataclass(frozen=True)
class Run:
    window: Window


@dataclass(frozen=True)
class Skip:
    skipped: int  # windows jumped over (analysis fell behind)
    to: int  # index of the next window
    missing: int = 0  # of the windows jumped over, those a gap had left without a frame


@dataclass(frozen=True)
class Missing:
    missing: int  # windows passed over (a gap left them without a frame)
    to: int  # index of the next window


@dataclass(frozen=True)
class Finish:
    next_index: int  # the first window not yet analysed; tail windows start here


Step = Wait | Run | Skip | Missing | Finish


def _gap_time(gaps: tuple[tuple[float, float], ...], a: float, b: float) -> float:
    """Seconds of ``[a, b]`` that gaps cover."""
    return sum(max(0.0, min(g1, b) - max(g0, a)) for g0, g1 in gaps)


class Scheduler:
    """Decides, window by window, what the loop does next.  ``clock`` returns seconds (monotonic)."""

    def __init__(
        self,
        *,
        live: bool,
        clock: Callable[[], float] = time.monotonic,
        audio_grace_s: float = AUDIO_GRACE_S,
        first: int = 0,
    ) -> None:
        self.live = live
        self.clock = clock
        self.audio_grace_s = audio_grace_s
        self.k = first  # index of the next full window (``first``: a resumed stream's next)
        self.skipped = 0
        self._video_ready_at: float | None = None

    @property
    def window(self) -> Window:
        return full_window(self.k)

    def cut_short(self, a: Arrivals) -> bool:
        """The source was lost (:attr:`Arrivals.lost`) after frames of this window: it is
        analysed now with the frames it has (what comes after the gap feeds later windows)."""
        return a.lost is not None and self.window.start <= a.lost + 0.5 / SAMPLE_FPS + EPS

    def video_ready(self, a: Arrivals) -> bool:
        """The window's last analysed frame has arrived (or the stream ended / is stopping, or
        the source was lost after the window's last frame)."""
        if a.stopping or a.video_done or self.cut_short(a):
            return True
        return a.video_horizon >= self.window.end - 1.0 / SAMPLE_FPS - EPS

    def audio_ready(self, a: Arrivals) -> bool:
        if a.stopping or a.video_done or self.cut_short(a):
            return True
        if not a.audio_expected or a.audio_done or a.audio_horizon >= self.window.end - EPS:
            return True
        if a.frames_full:
            return True
        return (
            self.live and self._video_ready_at is not None and self.clock() - self._video_ready_at > self.audio_grace_s
        )

    def poll(self, a: Arrivals) -> Step:
        for start, end in a.gaps:
            gone = swallowed_windows(start, end)
            if self.k in gone:
                n = gone.stop - self.k
                self.k = gone.stop
                self._video_ready_at = None
                return Missing(n, self.k)
        w = self.window
        if self._video_ready_at is None:
            if not self.video_ready(a):
                return Wait(w)
            self._video_ready_at = self.clock()
        if not self.audio_ready(a):
            return Wait(w)
        self._video_ready_at = None
        if a.video_done or a.stopping:
            return Finish(self.k)
        # behind: more than a hop of media received past this window (time in gaps is not media)
        if self.live and a.video_horizon - w.end - _gap_time(a.gaps, w.end, a.video_horizon) > HOP_S + EPS:
            newest = int((a.video_horizon - WINDOW_S) // HOP_S)
            if newest > self.k:
                empty = [swallowed_windows(g0, g1) for g0, g1 in a.gaps]
                missing = sum(1 for k in range(self.k, newest) if any(k in g for g in empty))
                n = newest - self.k - missing
                self.skipped += n
                self.k = newest
                return Skip(n, newest, missing)
        self.k += 1
        return Run(w)

    def tail(self, duration: float, gaps: tuple[tuple[float, float], ...] = ()) -> list[Window]:
        """The windows left once the stream's length is known (tail rule: a last stretch under
        1 s is dropped, a longer one gets a shortened window; a stream of at most 4 s is one
        window), less those a gap left without a frame."""
        gone = [swallowed_windows(a, b) for a, b in gaps]
        return [w for w in plan_windows(duration) if w.index >= self.k and not any(w.index in g for g in gone)]


__all__ = ["AUDIO_GRACE_S", "Arrivals", "Finish", "Missing", "Run", "Scheduler", "Skip", "Step", "Wait"]
