"""Frame-wise predictions from overlapping windows.

Each window's probabilities are copied to the frames it covers and the
windows overlapping a frame are averaged (seed rule).  A frame is
*provisional* after the first window that covers it and *final* once no
later window can cover it (after the next window, or at the end of the
stream).  Frames that no window covers take the previous frame's value; frames before the stream's first
prediction have none (``None``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class FrameRow:
    index: int
    time: float
    basic: np.ndarray | None  # 8, averaged; None before the stream's first prediction
    compound: np.ndarray | None  # 7, averaged (not normalised)
    windows: int  # how many windows were averaged (0 = carried from the previous frame)
    final: bool

    @property
    def label(self) -> int | None:
        return None if self.compound is None else int(np.argmax(self.compound))


class Timeline:
    def __init__(self, fps: float, first: int = 0) -> None:
        self.fps = fps
        self._basic: dict[int, np.ndarray] = {}
        self._compound: dict[int, np.ndarray] = {}
        self._count: dict[int, int] = {}
        self.next_final = first  # first frame not yet emitted as final (a resumed stream: past the last one)
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self._skipped: list[tuple[int, int]] = []  # frame numbers [a, b) that do not exist

    def skip(self, a: int, b: int) -> None:
        """Frame numbers ``[a, b)`` do not exist (a gap in the source): never emitted."""
        if b > a:
            self._skipped.append((a, b))

    def _exists(self, i: int) -> bool:
        return not any(a <= i < b for a, b in self._skipped)

    def add(self, frames: tuple[int, int], basic: np.ndarray, compound: np.ndarray) -> None:
        """Add one window's prediction to frames ``[a, b)``."""
        a, b = frames
        for i in range(max(a, self.next_final), b):
            if i in self._count:
                self._basic[i] += basic
                self._compound[i] += compound
                self._count[i] += 1
            else:
                self._basic[i] = basic.astype(np.float64)
                self._compound[i] = compound.astype(np.float64)
                self._count[i] = 1

    def _row(self, i: int, final: bool) -> FrameRow:
        n = self._count.get(i, 0)
        if n:
            return FrameRow(
                i,
                i / self.fps,
                (self._basic[i] / n).astype(np.float32),
                (self._compound[i] / n).astype(np.float32),
                n,
                final,
            )
        if self._last is None:  # nothing predicted yet in this stream
            return FrameRow(i, i / self.fps, None, None, 0, final)
        return FrameRow(i, i / self.fps, self._last[0], self._last[1], 0, final)

    def finalize(self, before: int) -> list[FrameRow]:
        """Mark frames ``< before`` final and return them (each once)."""
        rows = []
        for i in range(self.next_final, before):
            if not self._exists(i):  # a window straddling a gap covered it: forget its values
                self._basic.pop(i, None)
                self._compound.pop(i, None)
                self._count.pop(i, None)
                continue
            row = self._row(i, True)
            rows.append(row)
            if row.windows:
                assert row.basic is not None and row.compound is not None  # averaged rows always hold values
                self._last = (row.basic, row.compound)
            self._basic.pop(i, None)
            self._compound.pop(i, None)
            self._count.pop(i, None)
        self.next_final = max(self.next_final, before)
        self._skipped = [(a, b) for a, b in self._skipped if b > self.next_final]
        return rows

    def provisional(self, frames: tuple[int, int]) -> list[FrameRow]:
        """Current (not yet final) values of frames in ``[a, b)``."""
        a, b = frames
        return [self._row(i, False) for i in range(max(a, self.next_final), b) if self._exists(i)]

    def pending(self) -> int:
        """The highest frame number holding a prediction, plus one."""
        return max(self._count, default=self.next_final - 1) + 1
