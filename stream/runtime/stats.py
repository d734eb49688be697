"""Run statistics: counts and latencies, and the end record built from them (constant memory:
a live run may go on for days)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stream.runtime.records import EndRecord


class RunningQuantiles:
    """p50 / p95 / max of a series that may run for days, in constant memory.

    The first :data:`EXACT` values are kept, and their quantiles are exact (``np.percentile``);
    past that, they come from a histogram with geometric bins 1 % wide (0.01 ms to 10^7 ms), so
    within about 1 % of the exact value.  The maximum is always exact.
    """

    EXACT = 8192
    _LO, _RATIO, _BINS = 0.01, 1.01, 2084
    _LOG_RATIO = math.log(_RATIO)

    def __init__(self) -> None:
        self.n = 0
        self.max = -np.inf
        self._values = np.empty(self.EXACT)
        self._hist = np.zeros(self._BINS, dtype=np.int64)

    def add(self, value: float) -> None:
        if self.n < self.EXACT:
            self._values[self.n] = value
        self.n += 1
        self.max = max(self.max, value)
        i = math.floor(math.log(max(value, self._LO) / self._LO) / self._LOG_RATIO)
        self._hist[min(i, self._BINS - 1)] += 1

    def quantile(self, q: float) -> float:
        if self.n == 0:
            raise ValueError("no values")
        if self.n <= self.EXACT:
            return float(np.percentile(self._values[: self.n], 100 * q))
        rank = q * (self.n - 1)  # the value np.percentile would interpolate at, to within a bin
        i = int(np.searchsorted(np.cumsum(self._hist), rank, side="right"))
        mid = self._LO * self._RATIO ** (i + 0.5)
        return float(min(mid, self.max))

    def summary(self) -> dict[str, float] | None:
        if self.n == 0:
            return None
        return {"p50": self.quantile(0.5), "p95": self.quantile(0.95), "max": float(self.max)}


@dataclass
class RunStats:
    windows: int = 0
    windows_skipped: int = 0
    frames_analysed: int = 0
    latency_ms: RunningQuantiles = field(default_factory=RunningQuantiles)
    gaps: int = 0
    gap_s: float = 0.0
    windows_missing: int = 0
    reconnects: int = 0
    resumed_gap_s: float = 0.0  # the time between the previous analyzer process and this one

    def end_record(
        self,
        *,
        reason: str,
        total_frames: int | None,
        media_s: float,
        elapsed_s: float,
        drops: dict,
        warnings: int,
        run_media_s: float | None = None,
    ) -> EndRecord:
        """``media_s``: where the stream's media time ended; ``run_media_s``: how much of it this
        run analysed (default all of it), what the real-time factor is taken over."""
        run_media_s = media_s if run_media_s is None else run_media_s
        return EndRecord(
            reason=reason,
            windows=self.windows,
            windows_skipped=self.windows_skipped,
            frames=total_frames,
            frames_analysed=self.frames_analysed,
            media_s=media_s,
            elapsed_s=elapsed_s,
            real_time_factor=elapsed_s / run_media_s if run_media_s > 0 else None,
            latency_ms=self.latency_ms.summary(),
            drops=drops,
            warnings=warnings,
            gaps=self.gaps,
            gap_s=round(self.gap_s, 3),
            windows_missing=self.windows_missing,
            reconnects=self.reconnects,
        )


__all__ = ["RunStats", "RunningQuantiles"]
