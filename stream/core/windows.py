"""Window arithmetic: 4 s windows every 2 s in media time.

Rules (4 s windows every 2 s, 20 frames each: the 9th ABAW CER paper of team RAS, 2025; the
tail and frame rules: its published code, SMIL-SPCRAS/ICCVW_25):

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
Each grid point takes the decoded frame nearest to it, within half a grid step
(:class:`GridSampler`), so timestamp jitter never adds or loses analysed frames.
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
    """Media time before which no later window covers any frame.

    A window shorter than the hop (a stream of under 2 s) ends the stream, so
    its end is the limit: frames after it do not exist."""
    return min(window.start + HOP_S, max(window.end, window.start))


class SampleClock:
    """Decides at once which frames are analysed (for producers that cannot wait
    one frame, e.g. :class:`stream.io.sources.PushSource`): the first frame at or
    after each tick of a fixed ``rate`` grid in media time (t = 0, 0.2, 0.4, ... s),
    where "at" tolerates timestamp jitter of up to half a source frame interval
    (``fps`` when given, else learned from the frame times; at most half a grid
    step).  Each frame serves the grid point nearest to it, so no grid point gets
    two frames.  :class:`GridSampler` picks the exact nearest frame."""

    def __init__(self, rate: float = SAMPLE_FPS, fps: float | None = None) -> None:
        self.rate = rate
        self.fps = fps
        self._next = 0  # index of the next grid point to serve
        self._last: float | None = None
        self._period: float | None = None

    def _tolerance(self) -> float:
        period = 1.0 / self.fps if self.fps else self._period
        tol = 0.5 * period if period else EPS
        return min(max(tol, EPS), 0.5 / self.rate)

    def __call__(self, t: float) -> bool:
        if not math.isfinite(t):
            return False
        if self._last is not None and t > self._last:
            dt = t - self._last
            self._period = dt if self._period is None else min(self._period, dt) * 0.9 + dt * 0.1
        self._last = t
        tol = self._tolerance()
        if t < self._next / self.rate - tol:
            return False
        # the grid point this frame serves: the last one it reaches (jitter included)
        self._next = max(self._next, math.floor((t + tol) * self.rate + 1e-9)) + 1
        return True

    def reset_states(self) -> None:
        self._next = 0
        self._last = None
        self._period = None


class GridSampler:
    """Picks, for each point of a fixed ``rate`` grid in media time (0, 0.2, 0.4, ... s),
    the decoded frame nearest to it within half a grid step: exactly one frame per
    grid point that has one, whatever the timestamp jitter.

    Deciding needs the next frame (it may be nearer), so :meth:`push` returns the
    picks it has settled, each as ``(grid time, item)``, one frame late at most;
    :meth:`flush` returns the last one at the end of the stream.  Times that go
    backwards never stall it and never serve a grid point twice: a frame before the
    current grid point's reach is passed over."""

    def __init__(self, rate: float = SAMPLE_FPS) -> None:
        self.rate = rate
        self.half = 0.5 / rate
        self._g = 0  # the grid point being decided
        self._cand: tuple[float, object] | None = None  # (distance, item) nearest so far

    def _settle(self, out: list) -> None:
        if self._cand is not None:
            out.append((self._g / self.rate, self._cand[1]))
            self._cand = None
        self._g += 1

    def push(self, t: float, item: object) -> list[tuple[float, object]]:
        out: list[tuple[float, object]] = []
        if not math.isfinite(t):
            return out
        while True:
            tick = self._g / self.rate
            if t < tick - self.half:  # before this grid point's reach (times went backwards)
                return out
            if t <= tick + self.half:
                d = abs(t - tick)
                if self._cand is None or d < self._cand[0]:
                    self._cand = (d, item)
                if t >= tick:  # later frames are farther from this grid point
                    self._settle(out)
                return out
            # past this grid point's reach: settle it and move to the one nearest t
            had = self._cand is not None
            self._settle(out)
            if not had:
                self._g = max(self._g, int(round(t * self.rate)))

    def flush(self, end: float | None = None) -> list[tuple[float, object]]:
        """The pick still waiting for a next frame (end of stream), unless its grid point is
        at or after ``end``, the stream's end (last frame time plus one frame interval)."""
        out: list[tuple[float, object]] = []
        if self._cand is not None:
            if end is not None and self._g / self.rate >= end - EPS:
                self._cand = None
            else:
                self._settle(out)
        return out


#: A frame time this far from where the previous frame leads (either way, seconds) is a
#: discontinuity in the source's clock, not missing media: media time continues one frame on.
JUMP_S = 1.0
#: Frame rates outside this range are not believed (a container's guess gone wrong).
FPS_RANGE = (1.0, 240.0)
DEFAULT_FPS = 25.0


def sane_fps(*candidates: float | None) -> tuple[float, str | None]:
    """The first candidate frame rate inside :data:`FPS_RANGE`, else :data:`DEFAULT_FPS`; with a
    note (one line) when a declared rate was not believed."""
    declared = [float(c) for c in candidates if c]
    for fps in declared:
        if FPS_RANGE[0] <= fps <= FPS_RANGE[1]:
            return fps, None
    if declared:
        return DEFAULT_FPS, (
            f"the source declares {declared[0]:g} fps, outside {FPS_RANGE[0]:g}-{FPS_RANGE[1]:g}; "
            f"frame numbers assume {DEFAULT_FPS:g} fps"
        )
    return DEFAULT_FPS, None


class MediaTime:
    """Turns a source's frame times into media time: 0 at the first frame (or ``start`` after
    :meth:`restart`), never going backwards.  A timestamp at or before the previous one, or more
    than :data:`JUMP_S` ahead of it (a clock that restarts or leaps: the media itself is
    continuous), continues one frame interval after the previous frame; :attr:`jumps` counts
    them and :attr:`last_jump` says the latest (``(media time, seconds jumped)``)."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.04
        self.offset: float | None = None
        self.last: float | None = None
        self.jumps = 0
        self.last_jump: tuple[float, float] | None = None
        self._start = 0.0

    def restart(self, start: float) -> None:
        """A new session of the same source (a reconnect): its first frame is at media time
        ``start`` (at least one frame after the last)."""
        self.offset = None
        self._start = max(start, (self.last + self.period) if self.last is not None else start)

    def __call__(self, ft: float) -> float:
        if self.offset is None:  # the first frame (of a session) anchors the source's clock
            self.offset = self._start - ft
            self.last = self._start
            return self._start
        t = ft + self.offset
        if self.last is not None and (t <= self.last or t > self.last + max(JUMP_S, 2 * self.period)):
            self.last_jump = (self.last, t - self.last - self.period)
            self.offset += self.last + self.period - t
            t = self.last + self.period
            self.jumps += 1
        self.last = t
        return t

    def audio_time(self, ft: float) -> float | None:
        """Media time of an audio frame stamped ``ft`` on the source's clock (the video's
        mapping; ``None`` before the first video frame)."""
        return None if self.offset is None else ft + self.offset


class FrameNumbers:
    """Frame numbers from media time: ``round(t * fps)``, never decreasing.  A constant-rate
    source numbers its frames 0, 1, 2...; on a variable-rate one a frame number is a time slot
    of the declared rate (``number / fps`` is the frame's time, within half a slot), so two
    frames faster than the declared rate may share a slot and a slower stretch skips some."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.last = -1

    def __call__(self, t: float) -> int:
        n = max(int(round(t * self.fps)), self.last, 0)
        self.last = n
        return n

    @property
    def total(self) -> int:
        """Frame numbers up to the last one used (the last number + 1)."""
        return self.last + 1


def swallowed_windows(last_before: float, first_after: float) -> range:
    """Indices of the full windows that a gap in the video leaves without a single analysed
    frame: no frame exists strictly between media times ``last_before`` and ``first_after``,
    and a grid point is served by a frame within half a grid step of it."""
    half = 0.5 / SAMPLE_FPS
    step = 1.0 / SAMPLE_FPS
    # window k covers grid points 2k .. 2k + 4 - step; none may be within reach of a frame
    first = math.floor((last_before + half) / HOP_S + 1e-9) + 1  # start > last_before + half
    last = math.ceil((first_after - half - (WINDOW_S - step)) / HOP_S - 1e-9) - 1  # end - step < first_after - half
    return range(max(first, 0), max(last + 1, max(first, 0)))
