"""Run statistics: counts, latencies and stage times, and the end record built from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stream.runtime.records import EndRecord


@dataclass
class RunStats:
    windows: int = 0
    windows_skipped: int = 0
    frames_analysed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    gaps: int = 0
    gap_s: float = 0.0
    windows_missing: int = 0
    reconnects: int = 0

    def stage(self, name: str, ms: float) -> None:
        self.stage_ms.setdefault(name, []).append(ms)

    def latency_summary(self) -> dict[str, float] | None:
        if not self.latencies_ms:
            return None
        lat = np.asarray(self.latencies_ms)
        return {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "max": float(lat.max())}

    def end_record(
        self, *, reason: str, total_frames: int | None, media_s: float, elapsed_s: float, drops: dict, warnings: int
    ) -> EndRecord:
        return EndRecord(
            reason=reason,
            windows=self.windows,
            windows_skipped=self.windows_skipped,
            frames=total_frames,
            frames_analysed=self.frames_analysed,
            media_s=media_s,
            elapsed_s=elapsed_s,
            real_time_factor=elapsed_s / media_s if media_s > 0 else None,
            latency_ms=self.latency_summary(),
            drops=drops,
            warnings=warnings,
            gaps=self.gaps,
            gap_s=round(self.gap_s, 3),
            windows_missing=self.windows_missing,
            reconnects=self.reconnects,
        )


__all__ = ["RunStats"]
