"""Draw a run's records (``cer-stream ... --out RUN.jsonl``) as one timeline picture.

:func:`load_records` reads JSON lines (a path or an open binary file): blank lines are skipped, a
last line cut short (a run that was killed) is dropped with a warning, anything else that is not
a JSON object with a ``type`` is a :class:`PlotError` naming its line.  :func:`plot_run` draws the
records as a PNG, sharing the media-time axis between three panels:

* the 7 compound probabilities of the *final* ``frames`` records (the start record's
  ``compound_labels`` order), thin grey lines at window starts; a run without frame records
  falls back to the windows' ``compound`` at their mid-times;
* the 8 fused basic probabilities of each ``window`` record at its mid-time;
* one lane per modality: a bar per window (staggered so that overlapping windows stay apart),
  in the modality's colour where it was present (more opaque for a larger fusion ``weight``),
  pale grey where absent, red where it failed.

``gap`` records (``{"type": "gap", "start": s, "end": s | null, "reason": ...}``) are shaded
across all panels (an open gap runs to the end of the picture), and so are windows that are
missing from the sequence of indices (skipped by a live run that fell behind).  The title names
the input and the compound method.  Matplotlib is an optional extra (``cer-stream[plot]``); the
drawing uses a bare :class:`matplotlib.figure.Figure` (Agg), never pyplot's global state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from stream.core.labels import BASIC, COMPOUND
from stream.core.windows import HOP_S, WINDOW_S

#: What to install when matplotlib is missing.
PLOT_EXTRA = "pip install 'cer-stream[plot]'"
#: Picture size (inches) and resolution by default; the height grows with the modality lanes.
DEFAULT_WIDTH_IN = 12.0
DEFAULT_DPI = 100
#: Heights (inches) of the compound and basic panels, one modality lane and the title.
COMPOUND_IN = 2.8
BASIC_IN = 2.0
LANE_IN = 0.32
TITLE_IN = 0.9
#: No side of the picture may exceed this many pixels (Agg's limit is 2**16).
MAX_PIXELS = 20000

#: Colours: compound lines (matplotlib's tab10, first 7), basic lines (Dark2), modality lanes (Set2).
COMPOUND_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
BASIC_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
MODALITY_COLOURS = ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494", "#b3b3b3")
ABSENT_COLOUR = "#e6e6e6"
FAILED_COLOUR = "#f4a3a3"
GAP_COLOUR = "#f2d16b"
MISSING_EDGE = "#8a8a8a"
WINDOW_LINE = "#c8c8c8"


class PlotError(Exception):
    """Records that cannot be drawn, or a picture that cannot be written (one line).

    ``record`` is the position of the offending record in the sequence given to
    :func:`plot_run` (the caller maps it to a line number), ``None`` when no single record is at
    fault."""

    def __init__(self, message: str, *, record: int | None = None) -> None:
        super().__init__(message)
        self.record = record


class PlotWriteError(PlotError):
    """The picture cannot be written (a missing folder, a full disk)."""


@dataclass(frozen=True)
class PlotOptions:
    """How to draw.

    Attributes:
        width: picture width in inches (default 12).
        height: picture height in inches (default ``None``: 5.7 plus 0.32 per modality lane).
        dpi: pixels per inch (default 100).
        start: first media second shown (default ``None``: the run's start).
        end: last media second shown (default ``None``: the run's end).
    """

    width: float = DEFAULT_WIDTH_IN
    height: float | None = None
    dpi: int = DEFAULT_DPI
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"the width must be a positive number of inches, not {self.width:g}")
        if self.height is not None and not (math.isfinite(self.height) and self.height > 0):
            raise ValueError(f"the height must be a positive number of inches, not {self.height:g}")
        if self.dpi <= 0:
            raise ValueError(f"the dpi must be positive, not {self.dpi}")
        for what, inches in (("width", self.width), ("height", self.height or 0.0)):
            if inches * self.dpi > MAX_PIXELS:
                raise ValueError(f"a {what} of {inches:g} in at {self.dpi} dpi is over {MAX_PIXELS} pixels")
        for what, t in (("from", self.start), ("to", self.end)):
            if t is not None and not (math.isfinite(t) and t >= 0):
                raise ValueError(f"--{what} must be a media time in seconds (>= 0), not {t:g}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"--to ({self.end:g} s) must be after --from ({self.start:g} s)")


@dataclass(frozen=True)
class RecordsFile:
    """Records read by :func:`load_records`: ``lines[i]`` is the line number of ``records[i]``;
    ``warnings`` are one-line notes (a last line cut short)."""

    records: list[dict[str, Any]]
    lines: list[int]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PlotSummary:
    """What :func:`plot_run` drew.

    ``axes`` holds each panel's plot area in picture pixels, ``(left, top, right, bottom)`` with
    the origin at the top left: ``"compound"``, ``"basic"`` and ``"modalities"``."""

    out: Path
    width_px: int
    height_px: int
    span: tuple[float, float]  # media seconds shown
    windows: int  # window records in the run
    windows_shown: int  # ... of which overlap the span
    frames: int  # final frames drawn
    compound_source: str  # "frames" or "windows" (no final frame records)
    missing_windows: int  # window indices absent from the sequence
    gaps: int  # gap records
    modalities: tuple[str, ...]
    axes: dict[str, tuple[int, int, int, int]]


# --------------------------------------------------------------------------- reading
def load_records(source: str | Path | BinaryIO) -> RecordsFile:
    """Read JSON-lines records from a path or an open binary file (``sys.stdin.buffer``).

    ``PlotError`` (one line, without the file's name) when the file cannot be read or a line is
    not a record."""
    if isinstance(source, str | Path):
        try:
            with open(source, "rb") as f:
                return _parse(f)
        except OSError as exc:  # the caller knows the path: "RUN.jsonl: No such file or directory"
            raise PlotError(str(exc.strerror or exc)) from None
    return _parse(source)


def _parse(f: BinaryIO) -> RecordsFile:
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    warnings: list[str] = []
    for no, raw in enumerate(f, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise PlotError(f"line {no}: not JSON (not UTF-8 text)") from None
        except json.JSONDecodeError as exc:
            # a writer killed mid-line leaves an unterminated last line: drop it and go on
            if not raw.endswith(b"\n") and raw.lstrip().startswith(b"{"):
                warnings.append(f"line {no} is cut short (the run was stopped while writing it?); ignored")
                continue
            raise PlotError(f"line {no}: not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("type"), str):
            raise PlotError(f"line {no}: not a cer-stream record (a JSON object with a type)")
        records.append(rec)
        lines.append(no)
    return RecordsFile(records, lines, warnings)


# --------------------------------------------------------------------------- collecting
@dataclass
class _Run:
    start: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    windows: list[dict[str, Any]] = field(default_factory=list)
    frame_t: list[float] = field(default_factory=list)
    frame_p: list[list[float]] = field(default_factory=list)  # NaN rows where compound is null
    gaps: list[tuple[float, float | None, str]] = field(default_factory=list)


def _number(rec: dict[str, Any], key: str, i: int, *, optional: bool = False) -> float | None:
    v = rec.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise PlotError(f"a {rec['type']} record without a numeric {key!r}", record=i)
    return float(v)


def _probs(v: Any, n: int, what: str, i: int) -> list[float]:
    if v is None:
        return [math.nan] * n
    if not isinstance(v, list) or len(v) != n or not all(isinstance(x, int | float) for x in v):
        raise PlotError(f"a frames record whose {what} is not a list of {n} numbers or null", record=i)
    return [float(x) for x in v]


def _collect(records: Iterable[dict[str, Any]]) -> _Run:
    run = _Run()
    for i, rec in enumerate(records):
        kind = rec.get("type")
        if kind == "start" and run.start is None:
            run.start = rec
        elif kind == "end":
            run.end = rec
        elif kind == "window":
            _number(rec, "start", i)
            _number(rec, "end", i)
            if not isinstance(rec.get("index"), int):
                raise PlotError("a window record without an integer 'index'", record=i)
            for key in ("basic", "modalities"):
                if rec.get(key) is not None and not isinstance(rec[key], dict):
                    raise PlotError(f"a window record whose {key!r} is not an object", record=i)
            run.windows.append(rec)
        elif kind == "frames" and rec.get("final") is True:
            times, probs = rec.get("time"), rec.get("compound")
            if not isinstance(times, list) or not isinstance(probs, list) or len(times) != len(probs):
                raise PlotError("a frames record without parallel 'time' and 'compound' lists", record=i)
            for t, p in zip(times, probs):
                if isinstance(t, bool) or not isinstance(t, int | float):
                    raise PlotError("a frames record with a time that is not a number", record=i)
                run.frame_t.append(float(t))
                run.frame_p.append(_probs(p, len(COMPOUND), "compound", i))
        elif kind == "gap":
            s = _number(rec, "start", i)
            e = _number(rec, "end", i, optional=True)
            assert s is not None
            run.gaps.append((s, e, str(rec.get("reason") or "")))
    if not run.windows:
        raise PlotError("no window record: nothing to draw (is this a cer-stream run's output?)")
    run.windows.sort(key=lambda w: w["index"])
    return run


def _labels(start: dict[str, Any] | None, key: str, default: Sequence[str]) -> list[str]:
    names = (start or {}).get(key)
    if isinstance(names, list) and len(names) == len(default) and all(isinstance(n, str) for n in names):
        return names
    return list(default)


def _modalities(run: _Run) -> list[str]:
    names = [m for m in (run.start or {}).get("modalities") or [] if isinstance(m, str)]
    for w in run.windows:
        names += [m for m in (w.get("modalities") or {}) if m not in names]
    return names


def _missing_spans(windows: list[dict[str, Any]], hop: float, length: float) -> tuple[int, list[tuple[float, float]]]:
    """Windows absent from the index sequence (skipped), as merged media spans."""
    spans: list[tuple[float, float]] = []
    count = 0
    for a, b in zip(windows, windows[1:]):
        for k in range(a["index"] + 1, b["index"]):
            count += 1
            s = float(a["start"]) + (k - a["index"]) * hop
            spans.append((s, s + length))
    merged: list[tuple[float, float]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
        else:
            merged.append((s, e))
    return count, merged


# --------------------------------------------------------------------------- drawing
def require_matplotlib() -> None:
    """``PlotError`` (one line, naming the extra to install) when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError(f"plot needs matplotlib (the `plot` extra), which is not installed: {PLOT_EXTRA}") from None


def plot_run(records: Iterable[dict[str, Any]], out: str | Path, *, options: PlotOptions | None = None) -> PlotSummary:
    """Draw ``records`` (one run, in order) as a PNG at ``out``; see the module's docstring."""
    require_matplotlib()
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    opts = options or PlotOptions()
    run = _collect(records)
    start = run.start or {}
    compound_names = _labels(run.start, "compound_labels", COMPOUND)
    basic_names = _labels(run.start, "basic_labels", BASIC)
    modalities = _modalities(run)
    hop = float(start.get("hop_s") or HOP_S)
    length = float(start.get("window_s") or WINDOW_S)

    w_start = np.array([float(w["start"]) for w in run.windows])
    w_end = np.array([float(w["end"]) for w in run.windows])
    firsts = [float(w_start.min()), *run.frame_t, *(g0 for g0, _, _ in run.gaps)]
    lasts = [float(w_end.max()), *run.frame_t, *(g1 if g1 is not None else g0 for g0, g1, _ in run.gaps)]
    if run.end and isinstance(run.end.get("media_s"), int | float):
        lasts.append(float(run.end["media_s"]))
    t_lo, t_hi = min(firsts), max(lasts)
    lo = t_lo if opts.start is None else opts.start
    hi = t_hi if opts.end is None else opts.end
    if hi <= lo:
        raise PlotError(f"nothing to draw after {lo:g} s: the run covers {t_lo:g}-{t_hi:g} s")
    shown = int(np.count_nonzero((w_end > lo) & (w_start < hi)))
    if not shown:
        raise PlotError(f"no window between {lo:g} s and {hi:g} s: the run covers {t_lo:g}-{t_hi:g} s")
    n_missing, missing = _missing_spans(run.windows, hop, length)

    lanes = max(1, len(modalities))
    height = opts.height or (TITLE_IN + COMPOUND_IN + BASIC_IN + LANE_IN * lanes + 0.6)
    fig = Figure(figsize=(opts.width, height), dpi=opts.dpi, layout="constrained")
    ax_c, ax_b, ax_m = fig.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [COMPOUND_IN, BASIC_IN, LANE_IN * lanes + 0.3]}
    )

    # compound probabilities: final frames (or, without them, the windows at their mid-times)
    mids = (w_start + w_end) / 2
    style: dict[str, Any]
    if run.frame_t:
        order = np.argsort(run.frame_t, kind="stable")
        t = np.asarray(run.frame_t)[order]
        p = np.asarray(run.frame_p, dtype=float)[order]
        source, style = "frames", {"linewidth": 1.6}
    else:
        t = mids
        p = _window_probs(run.windows, "compound", compound_names)
        source, style = "windows", {"linewidth": 1.6, "marker": "o", "markersize": 3}
    for j, name in enumerate(compound_names):
        ax_c.plot(t, p[:, j], color=COMPOUND_COLOURS[j % len(COMPOUND_COLOURS)], label=name, **style)
    ax_c.set_ylim(-0.02, 1.02)
    ax_c.set_ylabel("compound p")
    ax_c.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False, title="compound")
    for s in w_start:
        ax_c.axvline(s, color=WINDOW_LINE, linewidth=0.6, zorder=0)

    # basic probabilities per window, at the window's mid-time
    basic = _window_probs(run.windows, "basic", basic_names)
    for j, name in enumerate(basic_names):
        ax_b.plot(
            mids,
            basic[:, j],
            color=BASIC_COLOURS[j % len(BASIC_COLOURS)],
            label=name,
            linewidth=1.2,
            marker="o",
            markersize=3,
        )
    ax_b.set_ylim(-0.02, 1.02)
    ax_b.set_ylabel("basic p (window)")
    ax_b.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False, title="basic")
    for s in w_start:
        ax_b.axvline(s, color=WINDOW_LINE, linewidth=0.4, zorder=0)

    # one lane per modality; overlapping windows take turns in staggered rows
    rows = max(1, round(length / hop)) if hop > 0 else 1
    px_per_s = 0.8 * opts.width * opts.dpi / (hi - lo)  # about: the plot area is ~80% of the width
    row_h = 0.8 / rows
    for m, name in enumerate(modalities):
        colour = MODALITY_COLOURS[m % len(MODALITY_COLOURS)]
        bars: dict[int, tuple[list[tuple[float, float]], list[Any]]] = {}
        for w in run.windows:
            state = (w.get("modalities") or {}).get(name)
            if not isinstance(state, dict):
                continue
            if state.get("present"):
                weight = state.get("weight")
                alpha = 0.9 if not isinstance(weight, int | float) else 0.25 + 0.75 * min(max(float(weight), 0.0), 1.0)
                face: Any = (*_rgb(colour), alpha)
            else:
                face = FAILED_COLOUR if state.get("error") else ABSENT_COLOUR
            row = w["index"] % rows
            xs, fcs = bars.setdefault(row, ([], []))
            x0, x1 = float(w["start"]), float(w["end"])
            xs.append((x0, max(x1 - x0, 0.0)))
            fcs.append(face)
            weight = state.get("weight") if state.get("present") else None
            if isinstance(weight, int | float) and (min(x1, hi) - max(x0, lo)) * px_per_s > 40 * opts.dpi / 100:
                y = m - 0.4 + (row + 0.45) * row_h
                ax_m.text(max(x0, lo), y, f" {weight:.2f}", fontsize=6, va="center", ha="left", clip_on=True)
        for row, (xs, fcs) in bars.items():
            ax_m.broken_barh(xs, (m - 0.4 + row * row_h, row_h * 0.9), facecolors=fcs, edgecolor="white", linewidth=0.5)
    ax_m.set_ylim(lanes - 0.5, -0.5)
    ax_m.set_yticks(range(len(modalities)), modalities, fontsize=8)
    ax_m.set_xlabel("media time (s)")
    ax_m.legend(
        handles=[
            Patch(facecolor=MODALITY_COLOURS[0], label="present (opacity: weight)"),
            Patch(facecolor=ABSENT_COLOUR, label="absent"),
            Patch(facecolor=FAILED_COLOUR, label="failed"),
            Patch(facecolor=GAP_COLOUR, alpha=0.45, label="gap"),
            Patch(facecolor="none", edgecolor=MISSING_EDGE, hatch="////", label="missing window"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.005, 1.0),
        fontsize=7,
        frameon=False,
    )

    # gaps and missing windows, shaded across every panel
    gaps = [(g0, hi if g1 is None else g1, reason) for g0, g1, reason in run.gaps]  # an open gap runs to the end
    for ax in (ax_c, ax_b, ax_m):
        for m0, m1 in missing:
            ax.axvspan(m0, m1, facecolor="none", edgecolor=MISSING_EDGE, hatch="////", linewidth=0, zorder=0.5)
        for g0, g1, _ in gaps:
            ax.axvspan(g0, g1, facecolor=GAP_COLOUR, alpha=0.45, linewidth=0, zorder=0.4)
    for g0, g1, reason in gaps:
        if reason and lo <= g0 < hi and (min(g1, hi) - g0) > 0.04 * (hi - lo):
            ax_c.text(g0, 1.0, f" {reason}", fontsize=7, va="top", ha="left", clip_on=True, color="#6b5500")

    ax_c.set_xlim(lo, hi)
    for ax in (ax_c, ax_b):
        ax.tick_params(labelbottom=False)
        ax.grid(axis="y", color="#eeeeee", linewidth=0.6)
    fig.suptitle(_title(run, len(run.windows), n_missing), fontsize=10)

    out = Path(out)
    try:
        fig.savefig(out, format="png", dpi=opts.dpi, metadata={"Software": "cer-stream plot"})
    except OSError as exc:
        raise PlotWriteError(f"cannot write {out}: {exc.strerror or exc}") from None
    width_px, height_px = (int(round(v)) for v in fig.get_size_inches() * opts.dpi)
    boxes = {}
    for key, ax in (("compound", ax_c), ("basic", ax_b), ("modalities", ax_m)):
        b = ax.get_window_extent()
        boxes[key] = (int(math.ceil(b.x0)), int(math.ceil(height_px - b.y1)), int(b.x1), int(height_px - b.y0))
    return PlotSummary(
        out=out,
        width_px=width_px,
        height_px=height_px,
        span=(float(lo), float(hi)),
        windows=len(run.windows),
        windows_shown=shown,
        frames=len(run.frame_t),
        compound_source=source,
        missing_windows=n_missing,
        gaps=len(run.gaps),
        modalities=tuple(modalities),
        axes=boxes,
    )


def _window_probs(windows: list[dict[str, Any]], key: str, names: Sequence[str]) -> Any:
    """``[windows, names]`` probabilities of each window's ``key`` dict (NaN rows where null)."""
    import numpy as np

    rows = []
    for w in windows:
        probs = w.get(key) or {}
        rows.append([float(probs[n]) if isinstance(probs.get(n), int | float) else math.nan for n in names])
    return np.asarray(rows, dtype=float).reshape(len(windows), len(names))


def _rgb(colour: str) -> tuple[float, float, float]:
    return (int(colour[1:3], 16) / 255, int(colour[3:5], 16) / 255, int(colour[5:7], 16) / 255)


def _title(run: _Run, windows: int, missing: int) -> str:
    start = run.start or {}
    name = str(start.get("input") or "(no start record)")
    method = start.get("compound_method") or (run.windows[0].get("compound_method") if run.windows else None)
    head = f"{name}  ·  compound: {method or '?'}"
    if isinstance(start.get("fusion"), dict) and start["fusion"].get("kind"):
        head += f"  ·  fusion: {start['fusion']['kind']}"
    parts = [f"{windows} windows"]
    if missing:
        parts.append(f"{missing} missing")
    if run.gaps:
        parts.append(f"{len(run.gaps)} gap{'s' if len(run.gaps) > 1 else ''}")
    if run.end is None:
        parts.append("no end record (the run was cut short)")
    else:
        parts.append(f"end: {run.end.get('reason', '?')}")
    return head + "\n" + ", ".join(parts)


__all__ = [
    "DEFAULT_DPI",
    "DEFAULT_WIDTH_IN",
    "PLOT_EXTRA",
    "PlotError",
    "PlotOptions",
    "PlotSummary",
    "PlotWriteError",
    "RecordsFile",
    "load_records",
    "plot_run",
    "require_matplotlib",
]
