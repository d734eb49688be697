"""The human view: one readable line per window on a terminal, and a closing summary.

``cer-stream`` prints JSON lines whenever its standard output is not a terminal (a pipe, a
file) or ``--json`` is given, so scripts see no change; a person watching a camera in a
terminal gets :class:`TerminalSink`'s lines instead::

       0.0-   4.0 s  Happily Surprised   0.61  Happiness  face audio text     37 ms
     ! no audio: the source has no audio track; running video-only
     ~ gap 12.4-19.9 s: no data for 10 s from rtsp://cam/live (2 attempts, windows 5-6 missing)
     = 31 windows, 62.1 s of media in 8.3 s (RTF 0.13), latency p50 41 ms p95 77 ms; eof

Colours (bold label, grey absent modalities, yellow warnings) only when the terminal asks for
none of ``NO_COLOR``'s kind.  Frame records are not shown (the per-frame values are in the JSON).
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from stream.sinks.outputs import Sink

#: The modalities a window may name, in the order the view lists them.
MODALITY_ORDER = ("face", "temporal", "clip", "scene", "audio", "text")


def _colour_wanted(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


class TerminalSink(Sink):
    """Readable lines for a person (see the module's docstring); writes to ``stream`` (stdout).
    Like the JSON lines on stdout, it holds a file run back rather than drop, and when its
    reader goes away the run stops."""

    name = "stdout"
    lossless = True
    required = True

    def __init__(self, stream: TextIO | None = None, *, colour: bool | None = None) -> None:
        self.stream: TextIO = stream if stream is not None else sys.stdout
        self.colour = _colour_wanted(self.stream) if colour is None else colour

    # ------------------------------------------------------------------ formatting
    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def line(self, record: dict[str, Any]) -> str | None:
        """The line a record gets, or None (records a person does not need: frames)."""
        kind = record.get("type")
        if kind == "window":
            return self._window(record)
        if kind == "start":
            live = "live " if record.get("live") else ""
            mods = " ".join(record.get("modalities") or [])
            return self._c("2", f"  {live}{record.get('source')} {record.get('input')}: {mods}")
        if kind == "warning":
            return self._c("33", f"! {record.get('message')}")
        if kind == "gap":
            return self._gap(record)
        if kind == "end":
            return self._end(record)
        if kind == "supervisor":
            return self._c("2", f"  {record.get('event')} {record.get('message') or ''}".rstrip())
        return None

    def _window(self, r: dict[str, Any]) -> str:
        span = f"{r['start']:6.1f}-{r['end']:6.1f} s"
        label = r.get("label")
        if label is None:
            what = self._c("2", f"{'(nothing present)':<20}")
            prob = "    "
        else:
            p = (r.get("compound") or {}).get(label)
            what = self._c("1", f"{label:<20}")
            prob = f"{p:.2f}" if isinstance(p, (int, float)) else "  - "
        basic = r.get("basic_label") or "-"
        present = set(r.get("present") or [])
        names = [n for n in MODALITY_ORDER if n in (r.get("modalities") or {})]
        names += [n for n in (r.get("modalities") or {}) if n not in names]
        mods = " ".join(n if n in present else self._c("2", n) for n in names)
        latency = r.get("latency_ms")
        lat = f"{latency:6.0f} ms" if isinstance(latency, (int, float)) else ""
        return f"{span}  {what} {prob}  {basic:<10} {mods}  {lat}".rstrip()

    def _gap(self, r: dict[str, Any]) -> str:
        end = f"{r['end']:.1f}" if r.get("end") is not None else "..."
        missing = r.get("windows_missing")
        extra = [f"{r.get('attempts', 0)} attempt(s)"]
        if missing:
            extra.append(f"windows {missing[0]}-{missing[1]} missing")
        return self._c("33", f"~ gap {r['start']:.1f}-{end} s: {r.get('reason')} ({', '.join(extra)})")

    def _end(self, r: dict[str, Any]) -> str:
        parts = [f"{r.get('windows', 0)} windows"]
        media, elapsed, rtf = r.get("media_s"), r.get("elapsed_s"), r.get("real_time_factor")
        if isinstance(media, (int, float)) and isinstance(elapsed, (int, float)):
            timing = f"{media:.1f} s of media in {elapsed:.1f} s"
            if isinstance(rtf, (int, float)):
                timing += f" (RTF {rtf:.2f})"
            parts.append(timing)
        lat = r.get("latency_ms") or {}
        if lat.get("p50") is not None:
            parts.append(f"latency p50 {lat['p50']:.0f} ms p95 {lat['p95']:.0f} ms")
        for key, what in (("windows_skipped", "skipped"), ("windows_missing", "missing"), ("warnings", "warning")):
            n = r.get(key)
            if n:
                parts.append(f"{n} {what}{'s' if what == 'warning' and n != 1 else ''}")
        return self._c("1", f"= {', '.join(parts)}; {r.get('reason')}")

    # ------------------------------------------------------------------ sink
    def write(self, record: dict) -> None:
        text = self.line(record)
        if text is None:
            return
        self.stream.write(text + "\n")
        self.stream.flush()


__all__ = ["TerminalSink"]
