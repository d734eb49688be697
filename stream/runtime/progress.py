"""The run's progress bar on stderr (tqdm): media seconds analysed, of the duration when known.

``mode="auto"`` shows it only when the stream is a terminal; ``"on"`` always (e.g. into a
file or a test's ``StringIO``); ``"off"`` never.  A source of unknown length (live, or a file
without a duration) gets an open-ended counter instead of a bar.  tqdm imports only when a bar
is shown.
"""

from __future__ import annotations

import sys
from typing import TextIO

MODES = ("auto", "on", "off")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class Progress:
    """Progress of one run.

    Args:
        total_s: media duration in seconds, or ``None`` (open-ended counter).
        mode: ``"auto"`` (when ``file`` is a terminal), ``"on"`` or ``"off"``.
        file: where to draw (default: ``sys.stderr`` at construction).
        desc: a short label in front of the bar.
    """

    def __init__(
        self, total_s: float | None = None, *, mode: str = "auto", file: TextIO | None = None, desc: str | None = None
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"bad progress mode {mode!r}: expected one of {', '.join(MODES)}")
        file = sys.stderr if file is None else file
        self.enabled = mode == "on" or (mode == "auto" and _isatty(file))
        self.total_s = float(total_s) if total_s and total_s > 0 else None
        self.position = 0.0
        self._bar = None
        if not self.enabled:
            return
        from tqdm import tqdm

        common = dict(
            file=file,
            desc=desc,
            unit="s",
            leave=True,
            mininterval=0.2,
            dynamic_ncols=_isatty(file),
            ascii=not _isatty(file),
        )
        if self.total_s is not None:
            fmt = "{desc}{percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}, {rate_fmt}]"
            self._bar = tqdm(total=round(self.total_s, 3), bar_format=fmt, **common)
        else:
            fmt = "{desc}{n:.1f} s analysed [{elapsed}, {rate_fmt}]"
            self._bar = tqdm(total=None, bar_format=fmt, **common)
        if desc is None:
            self._bar.desc = ""

    def update(self, media_t: float) -> None:
        """The analysis has reached media time ``media_t`` (seconds; never goes back)."""
        if self._bar is None:
            return
        t = float(media_t)
        if self.total_s is not None:
            t = min(t, self.total_s)
        if t > self.position:
            self._bar.update(t - self.position)
            self.position = t

    def close(self) -> None:
        """Draw the final state and end the line (idempotent)."""
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["MODES", "Progress"]
