#!/usr/bin/env python3
"""Soak benchmark: ``cer-stream --rtsp`` on a server that dies and comes back, for an hour.

    python bench/soak.py [--minutes M] [--restart-every MIN] [--down-s S] [--sample-s S]
                         [--warmup-s S] [--clip-minutes MIN] [--source MP4] [--smoke]
                         [--allow-dirty] [--json OUT.json] [--md OUT.md] [-- ANALYZER ARGS...]
    python bench/soak.py --smoke [--smoke-dir DIR] [-- ANALYZER ARGS...]

What runs
  * a looped clip: ``samples/astronaut.mp4`` (10 s, H.264 + AAC) copied end to end into one
    MP4 long enough for the longest stretch the server stays up, plus a minute
    (``tests/faults.py: make_looped_clip``, stream copy, in a temporary folder);
  * GStreamer's RTSP server on 127.0.0.1 serving it (``tests/rtsp_util.py: RtspServer``;
    every connection gets the clip from its start);
  * the analyzer, ``python -m stream.cli --rtsp URL [ANALYZER ARGS]`` (the args after ``--``),
    whose JSON lines are read from its stdout by a thread and whose stderr goes to a file.

Every ``--restart-every`` minutes the server is killed (SIGKILL: a crash, not a goodbye) and
started again on the same port ``--down-s`` seconds later; a restart is only scheduled when at
least 30 s of the run remain after it.  Every ``--sample-s`` seconds the resident memory
(VmRSS) of the analyzer and of each of its descendants is read from /proc (one progress line
on stderr per sample).  After ``--minutes`` the analyzer gets SIGINT and its end record is
collected.  ``--smoke`` checks that the benchmark still runs (``tests/test_bench_smoke.py``):
20 s counted from the analyzer's first window, the server killed once 4 s in and back 2 s later,
a sample every 2 s, reports into ``--smoke-dir`` (default a new temporary folder, never
``bench/results/``), a dirty tree allowed; exit 0 when every check passes and the figures came
out, 77 (after one line) where GStreamer's RTSP server is missing.

Reported (stdout as markdown, ``--json``/``--md`` files; default ``bench/results/soak.*``):
  * memory per process (named by command line: analyzer, capture, ...; a process that is
    replaced gets ``#2``...) and in total: first / last / min / max MB, and the slope in MB per
    hour of a least-squares line through the samples after ``--warmup-s`` (default 120 s);
  * latency p50 / p95 / max of the window records' ``latency_ms``; the end record's drops;
  * reconnects and gaps: gap records (count, seconds, reasons), the end record's totals, and
    per server restart how long the analyzer took to say it lost the source (first warning
    after the kill) and to come back (its gap record after the restart);
  * windows accounting: every index from 0 to the last must be a window record, a skipped
    window (located through the "skipped N window(s)" warnings, or counted in the end
    record's ``windows_skipped``) or inside a gap's ``windows_missing`` ``[first, last]``
    (inclusive).  The number left over is printed (it must be 0) with the indices.

The results name the git revision; a tree with uncommitted changes to tracked files is refused
before anything runs unless ``--allow-dirty`` (the revision is then recorded with ``+dirty``).
Exit status: 0 when every check passes, 1 when one fails, 2 for a usage or set-up error,
130 when interrupted (nothing is written then).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# As in latency.py: bench/engines.py must not shadow the project's `engines` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # the fault-injection tools: rtsp_util, faults

from faults import make_looped_clip  # noqa: E402
from rtsp_util import RtspServer, rtsp_available  # noqa: E402

_smoke: Any = importlib.import_module("bench._smoke")  # --smoke (bench/ is a namespace package under ROOT)

SAMPLE = ROOT / "samples" / "astronaut.mp4"
RESULTS = BENCH / "results"
#: A restart is scheduled only when this much of the run remains once the server is back.
RECOVER_S = 30.0
#: Extra clip length beyond the longest stretch the server stays up.
CLIP_MARGIN_S = 60.0
#: Seconds the analyzer gets to write its end record after SIGINT (then SIGTERM, SIGKILL).
END_GRACE_S = 60.0
#: Seconds the analyzer gets to emit its first window when the clock waits for it (--smoke).
FIRST_WINDOW_S = 120.0
#: --smoke: seconds from the analyzer's first window to its SIGINT, when the server is killed
#: (once) and for how long, how often memory is sampled; and the figures it must produce.
SMOKE_S, SMOKE_KILL_S, SMOKE_DOWN_S, SMOKE_SAMPLE_S = 20.0, 4.0, 2.0, 2.0
SMOKE_NUMBERS = (
    "latency_ms/p95",
    "rss/analyzer/last_mb",
    "rss/total/max_mb",
    "gaps/gap_records",
    "gaps/per_restart/0/recovered_after_server_s",
    "windows_accounting/windows",
)
#: Window hop of the analyzer (index k covers [HOP_S * k, HOP_S * k + 4) s of media time).
HOP_S = 2.0
SKIP_WARNING = re.compile(r"skipped (\d+) window")


def log(msg: str) -> None:
    sys.stderr.write(f"[soak] {msg}\n")
    sys.stderr.flush()


def _latency_module() -> Any:
    """bench/latency.py, for its machine description, quantiles and table cells (``bench`` is a
    namespace package under ROOT; imported once)."""
    return importlib.import_module("bench.latency")


# --------------------------------------------------------------------------- processes and memory
def rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` in MB, or None when it is gone (or a zombie, which has none)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _ppid(stat: bytes) -> int:
    return int(stat.rsplit(b")", 1)[1].split()[1])


def children(pid: int) -> list[int]:
    """Direct children of ``pid``: ``/proc/PID/task/*/children`` where the kernel has it,
    else a scan of every ``/proc/*/stat`` for its parent pid."""
    kids: set[int] = set()
    tasks = Path(f"/proc/{pid}/task")
    try:
        files = [t / "children" for t in tasks.iterdir()]
    except OSError:
        return []
    if files and files[0].exists():
        for f in files:
            try:
                kids.update(int(x) for x in f.read_text().split())
            except (OSError, ValueError):
                continue
        return sorted(kids)
    for st in Path("/proc").glob("[0-9]*/stat"):
        try:
            if _ppid(st.read_bytes()) == pid:
                kids.add(int(st.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(kids)


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (children, their children...)."""
    out: list[int] = []
    todo = [root]
    while todo:
        for kid in children(todo.pop()):
            if kid not in out:
                out.append(kid)
                todo.append(kid)
    return out


def role(pid: int) -> str:
    """What a descendant of the analyzer is, from its command line."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return "gone"
    if b"resource_tracker" in cmd:
        return "resource-tracker"
    if b"forkserver" in cmd:
        return "forkserver"
    if b"stream.io.worker" in cmd:
        return "capture"  # the analyzer starts its capture processes (stream.runtime.lifecycle)
    if b"spawn_main" in cmd or b"multiprocessing" in cmd:
        return "capture"  # (before stream.io.worker: multiprocessing spawn children)
    if b"stream.cli" in cmd:
        return "analyzer-fork"
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or "process"
    except OSError:
        return "process"


class RssSeries:
    """RSS samples of the analyzer and its descendants, one series per process.

    A process is named by :func:`role` the first time it is seen: ``analyzer`` for the root,
    ``capture`` for a spawned capture process, and ``capture#2`` and so on for later ones of
    the same role (a replaced process).  ``total`` sums every process of each sample.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.names: dict[int, str] = {}
        self.pids: dict[str, int] = {}
        self.series: dict[str, list[tuple[float, float]]] = {}
        self._seen: Counter[str] = Counter()

    def _name(self, pid: int) -> str:
        if pid not in self.names:
            base = "analyzer" if pid == self.root else role(pid)
            self._seen[base] += 1
            name = base if self._seen[base] == 1 else f"{base}#{self._seen[base]}"
            self.names[pid] = name
            self.pids[name] = pid
        return self.names[pid]

    def sample(self, t: float) -> dict[str, float]:
        """Read every process's RSS now; returns ``{name: MB}`` (``total`` included)."""
        now: dict[str, float] = {}
        for pid in [self.root, *descendants(self.root)]:
            mb = rss_mb(pid)
            if mb is None:
                continue
            name = self._name(pid)
            now[name] = mb
            self.series.setdefault(name, []).append((t, mb))
        if now:
            now["total"] = sum(now.values())
            self.series.setdefault("total", []).append((t, now["total"]))
        return now


def slope_mb_per_h(points: list[tuple[float, float]], warmup_s: float) -> float | None:
    """Least-squares slope (MB per hour) of the samples taken at ``t >= warmup_s``; None with
    fewer than 3 such samples or no time spread."""
    pts = [(t, mb) for t, mb in points if t >= warmup_s]
    if len(pts) < 3:
        return None
    t = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    if np.ptp(t) <= 0:
        return None
    return float(np.polyfit(t, y, 1)[0] * 3600.0)


def summarise_rss(series: dict[str, list[tuple[float, float]]], warmup_s: float, pids: dict[str, int]) -> dict:
    """Per process (analyzer first, total last): samples, first / last / min / max MB, the
    first sample after the warm-up and the growth since, and the slope after the warm-up."""
    out = {}
    order = sorted(series, key=lambda n: (n != "analyzer", n == "total", n))
    for name in order:
        pts = series[name]
        mbs = [mb for _t, mb in pts]
        warm = next((mb for t, mb in pts if t >= warmup_s), None)
        out[name] = {
            "pid": pids.get(name),
            "samples": len(pts),
            "seen_s": [round(pts[0][0], 1), round(pts[-1][0], 1)],
            "first_mb": round(mbs[0], 1),
            "last_mb": round(mbs[-1], 1),
            "min_mb": round(min(mbs), 1),
            "max_mb": round(max(mbs), 1),
            "after_warmup_mb": None if warm is None else round(warm, 1),
            "growth_after_warmup_mb": None if warm is None else round(mbs[-1] - warm, 1),
            "slope_mb_per_h": None if (s := slope_mb_per_h(pts, warmup_s)) is None else round(s, 2),
        }
    return out


# --------------------------------------------------------------------------- the analyzer's records
class RecordReader(threading.Thread):
    """Reads the analyzer's JSON lines and keeps what the report needs, with each record's
    arrival time (``time.time()``): window records compacted, gap / warning / start / end
    records whole, ``frames`` records only counted."""

    WINDOW_KEYS = ("index", "start", "end", "latency_ms", "wall_time", "drops")

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(name="soak-records", daemon=True)
        self.stream = stream
        self.lock = threading.Lock()
        self.records: list[dict] = []  # in arrival order, window records compacted
        self.counts: Counter[str] = Counter()
        self.bad_lines = 0

    def run(self) -> None:
        try:
            for line in self.stream:
                self.feed(line, time.time())
        except (OSError, ValueError):
            pass

    def feed(self, line: str, arrival: float) -> None:
        line = line.strip()
        if not line:
            return
        try:
            rec = json.loads(line)
        except ValueError:
            self.bad_lines += 1
            return
        kind = rec.get("type") if isinstance(rec, dict) else None
        with self.lock:
            self.counts[str(kind)] += 1
            if kind == "frames":
                return
            if kind == "window":
                rec = {"type": "window", **{k: rec.get(k) for k in self.WINDOW_KEYS}}
            rec["_arrival"] = arrival
            self.records.append(rec)

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.records)


def account_windows(records: list[dict]) -> dict:
    """Check that every window index from 0 to the last one is accounted for.

    An index is accounted for when it has a window record, when it lies in a gap record's
    ``windows_missing`` ``[first, last]`` (inclusive), or when it was skipped.  Skipped
    windows are located through the warnings "... skipped N window(s)", which come just
    before the window the analyzer skipped ahead to: they are the N highest indices below
    that window's (and above the last window before the warning) that have no record and are
    in no gap (a gap's windows can lie between the window before a skip and the next).  Skips that the end record counts
    (``windows_skipped``) but no warning located may account for as many of the indices left.

    Returns a dict: ``last_index``, ``windows`` (records), ``skipped_located``,
    ``skipped_end``, ``in_gaps``, ``unaccounted`` (count, must be 0),
    ``unaccounted_indices`` (indices with neither a record, nor a gap, nor a located skip),
    ``duplicates`` (indices with more than one window record), ``in_gap_and_emitted`` (both a
    record and inside a gap), ``skip_warnings_total``, ``gap_windows_total`` (sum of the gap
    ranges, to compare with the end record's ``windows_missing``) and ``sequence`` (the
    records in arrival order, compact: a window's index, ``"gap A-B"``, ``"skip N"``,
    ``"warning"``, ``"start"``, ``"end"``).
    """
    seen: Counter[int] = Counter()
    in_gap: set[int] = set()
    # (N, the last window index before the warning, the index of the next window record)
    skips: list[tuple[int, int, int | None]] = []
    prev = -1
    gap_windows = 0
    end: dict = {}
    sequence: list[int | str] = []
    for rec in records:
        kind = rec.get("type")
        if kind == "window" and isinstance(rec.get("index"), int):
            k = rec["index"]
            seen[k] += 1
            sequence.append(k)
            skips = [(n, p, k if nxt is None else nxt) for n, p, nxt in skips]
            prev = max(prev, k)
        elif kind == "warning":
            m = SKIP_WARNING.search(str(rec.get("message", "")))
            if m:
                skips.append((int(m.group(1)), prev, None))
            sequence.append(f"skip {m.group(1)}" if m else "warning")
        elif kind == "gap":
            rng = rec.get("windows_missing")
            if isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, int) for x in rng):
                first, last = rng
                in_gap.update(range(first, last + 1))
                gap_windows += max(0, last - first + 1)
                sequence.append(f"gap {first}-{last}")
            else:
                sequence.append("gap -")
        elif kind in ("start", "end"):
            sequence.append(str(kind))
            if kind == "end":
                end = rec
    skipped: set[int] = set()
    for n, before, nxt in skips:
        if nxt is None:
            continue  # no window after it: the end record's count covers it
        # the analyzer only skips forward: between the window before the warning and the next
        free = [i for i in range(nxt - 1, before, -1) if i not in seen and i not in in_gap and i not in skipped]
        skipped.update(free[:n])
    last = max([*seen, *in_gap, *skipped], default=-1)
    missing = [i for i in range(last + 1) if i not in seen and i not in in_gap and i not in skipped]
    skipped_end = end.get("windows_skipped")
    unlocated = max(0, int(skipped_end or 0) - len(skipped))
    return {
        "last_index": last,
        "windows": sum(seen.values()),
        "skipped_located": len(skipped),
        "skipped_end": skipped_end,
        "skip_warnings_total": sum(n for n, _, _ in skips),
        "in_gaps": len(in_gap),
        "gap_windows_total": gap_windows,
        "unaccounted": max(0, len(missing) - unlocated),
        "unaccounted_indices": missing,
        "duplicates": sorted(i for i, c in seen.items() if c > 1),
        "in_gap_and_emitted": sorted(set(seen) & in_gap),
        "sequence": sequence,
    }


def summarise_gaps(records: list[dict], events: list[dict]) -> dict:
    """Gap records, the end record's totals and, per server restart, detection and recovery."""
    gaps = [r for r in records if r.get("type") == "gap"]
    end: dict = next((r for r in reversed(records) if r.get("type") == "end"), {})
    closed = [g for g in gaps if g.get("end") is not None and g.get("start") is not None]
    per_restart = []
    for ev in events:
        if ev["what"] != "kill":
            continue
        back = next((e for e in events if e["what"] == "start" and e["wall"] >= ev["wall"]), None)
        after = [r for r in records if r.get("type") == "warning" and r["_arrival"] >= ev["wall"]]
        # the analyzer's loss warning says "...; reconnecting"; else the first warning at all
        warned = next((r for r in after if "reconnect" in str(r.get("message"))), after[0] if after else None)
        gap = None
        if back is not None:
            gap = next((g for g in gaps if (g.get("wall_time") or g["_arrival"]) >= back["wall"]), None)
        per_restart.append(
            {
                "killed_at_s": ev["t"],
                "server_back_at_s": None if back is None else back["t"],
                "first_warning_after_s": None if warned is None else round(warned["_arrival"] - ev["wall"], 2),
                "warning": None if warned is None else warned.get("message"),
                "recovered_after_server_s": (
                    None
                    if gap is None or back is None
                    else round((gap.get("wall_time") or gap["_arrival"]) - back["wall"], 2)
                ),
                "gap_media_s": (None if gap is None or gap.get("end") is None else round(gap["end"] - gap["start"], 2)),
                "gap_attempts": None if gap is None else gap.get("attempts"),
            }
        )
    return {
        "gap_records": len(gaps),
        "gap_records_open": len(gaps) - len(closed),
        "gap_s": round(sum(g["end"] - g["start"] for g in closed), 2),
        "reasons": dict(Counter(str(g.get("reason")) for g in gaps)),
        "attempts": [g.get("attempts") for g in gaps],
        "end_gaps": end.get("gaps"),
        "end_gap_s": end.get("gap_s"),
        "end_windows_missing": end.get("windows_missing"),
        "end_reconnects": end.get("reconnects"),
        "per_restart": per_restart,
        "gaps": [{k: v for k, v in g.items() if k != "_arrival"} for g in gaps],
    }


def latency_summary(records: list[dict]) -> dict | None:
    lat = [r["latency_ms"] for r in records if r.get("type") == "window" and r.get("latency_ms") is not None]
    if not lat:
        return None
    a = np.asarray(lat, dtype=np.float64)
    return {
        "n": int(a.size),
        "p50": round(float(np.percentile(a, 50)), 1),
        "p95": round(float(np.percentile(a, 95)), 1),
        "max": round(float(a.max()), 1),
    }


def checks(res: dict) -> dict[str, bool]:
    """The pass/fail checks of a soak run."""
    w, g = res["windows_accounting"], res["gaps"]
    end = res.get("end") or {}
    restarts = sum(1 for e in res["server_events"] if e["what"] == "kill")
    return {
        "analyzer ran to the end (no early exit)": not res["analyzer_exited_early"],
        "end record received": bool(end),
        "every window accounted for (unaccounted = 0)": w["unaccounted"] == 0,
        "no duplicate window index": not w["duplicates"],
        "no window both emitted and inside a gap": not w["in_gap_and_emitted"],
        "a gap record per server restart": g["gap_records"] >= restarts,
        "end.gaps = gap records": end.get("gaps") == g["gap_records"],
        "end.windows_missing = sum of the gap ranges": end.get("windows_missing") == w["gap_windows_total"],
    }


# --------------------------------------------------------------------------- the run
@dataclass
class Plan:
    total_s: float
    restart_every_s: float
    down_s: float
    sample_s: float
    warmup_s: float
    restarts: list[float] = field(default_factory=list)
    clip_s: float = 0.0
    #: The clock starts at the analyzer's first window record, not at its start (--smoke: a run
    #: of seconds must not kill the server before the analyzer has even connected).
    from_first_window: bool = False


def make_plan(
    minutes: float,
    restart_every: float,
    down_s: float,
    sample_s: float,
    warmup_s: float,
    clip_minutes: float | None,
    recover_s: float = RECOVER_S,
) -> Plan:
    """When the server is killed (a restart every ``restart_every`` minutes, while at least
    ``recover_s`` remain after it is back) and how long the looped clip must be: the
    longest stretch the server stays up (each start serves the clip from its beginning)
    plus :data:`CLIP_MARGIN_S`, unless ``clip_minutes`` says."""
    total = minutes * 60.0
    every = restart_every * 60.0
    restarts = []
    k = 1
    while every > 0 and k * every + down_s + recover_s <= total:
        restarts.append(k * every)
        k += 1
    ups = [0.0] + [r + down_s for r in restarts]
    downs = restarts + [total]
    longest = max(d - u for u, d in zip(ups, downs))
    clip_s = clip_minutes * 60.0 if clip_minutes else longest + CLIP_MARGIN_S
    return Plan(total, every, down_s, sample_s, warmup_s, restarts, clip_s)


def _fmt_t(t: float) -> str:
    return f"{int(t // 60):02d}:{int(t % 60):02d}"


def stop_analyzer(proc: subprocess.Popen, grace_s: float = END_GRACE_S) -> str:
    """SIGINT (the analyzer ends its run and writes its end record), then SIGTERM, SIGKILL."""
    if proc.poll() is not None:
        return "already exited"
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace_s)
        return "SIGINT"
    except subprocess.TimeoutExpired:
        pass
    proc.terminate()
    try:
        proc.wait(timeout=10)
        return "SIGTERM (no exit within the grace after SIGINT)"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return "SIGKILL"


def wait_first_window(proc: subprocess.Popen, reader: RecordReader, limit_s: float = FIRST_WINDOW_S) -> float:
    """Wait until the analyzer's first window record arrives (or it exits, or ``limit_s``
    passes: the run then goes on and its checks say what went wrong); the time it came."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r["type"] == "window" for r in reader.snapshot()):
            break
        time.sleep(0.1)
    return time.monotonic()


def run_soak(args: argparse.Namespace, plan: Plan, tmp: Path) -> dict:
    log(f"building a {plan.clip_s / 60:.1f} min looped clip from {args.source.name}")
    t = time.monotonic()
    clip = make_looped_clip(args.source, tmp / "soak.mp4", plan.clip_s / 60.0)
    log(f"  {clip.stat().st_size / 1e6:.1f} MB in {time.monotonic() - t:.1f} s")

    server = RtspServer(clip)
    url = server.start()
    cmd = [sys.executable, "-m", "stream.cli", "--rtsp", url, *args.analyzer_args]
    log(f"server at {url}; analyzer: {shlex.join(cmd)}")
    log(
        f"{plan.total_s / 60:g} min; server killed at "
        + (", ".join(_fmt_t(r) for r in plan.restarts) or "(never)")
        + f", back {plan.down_s:g} s later; a sample every {plan.sample_s:g} s"
    )
    errlog = (tmp / "analyzer.stderr").open("w+", encoding="utf-8", errors="replace")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Its own session: a Ctrl-C on this script does not reach it; it gets SIGINT when we say.
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=errlog,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
    )
    assert proc.stdout is not None
    reader = RecordReader(proc.stdout)
    reader.start()
    rss = RssSeries(proc.pid)
    events: list[dict] = []
    t0 = time.monotonic()
    wall0 = time.time()
    samples: list[dict] = []
    kills = list(plan.restarts)
    pending_start: float | None = None
    next_sample = plan.sample_s  # (at 0 s the analyzer is a bare interpreter)
    exited_early = False
    interrupted = False
    how_stopped = None

    def event(what: str, **kw: Any) -> None:
        events.append({"what": what, "t": round(time.monotonic() - t0, 2), "wall": time.time(), **kw})

    try:
        if plan.from_first_window:
            first = wait_first_window(proc, reader)
            log(f"first window {first - t0:.1f} s after the analyzer started: the clock starts now")
            t0, wall0 = first, time.time()
        while True:
            now = time.monotonic() - t0
            if now >= plan.total_s:
                break
            if proc.poll() is not None:
                exited_early = True
                log(f"the analyzer exited on its own after {now:.0f} s (status {proc.returncode})")
                break
            if kills and now >= kills[0]:
                kills.pop(0)
                event("kill")  # stamped first: the analyzer can see the loss before kill() returns
                server.kill()
                log(f"{_fmt_t(now)} server killed")
                pending_start = now + plan.down_s
            if pending_start is not None and now >= pending_start:
                try:
                    server.start()
                    event("start")
                    log(f"{_fmt_t(now)} server started again ({server.url})")
                    pending_start = None
                except RuntimeError as exc:
                    event("start_failed", error=str(exc).splitlines()[0])
                    log(f"{_fmt_t(now)} server failed to start, retrying in 1 s: {str(exc).splitlines()[0]}")
                    pending_start = now + 1.0
            if now >= next_sample:
                mem = rss.sample(now)
                recs = reader.snapshot()
                wins = [r for r in recs if r["type"] == "window"]
                lat = latency_summary(recs)
                samples.append({"t": round(now, 1), "rss_mb": {k: round(v, 1) for k, v in mem.items()}})
                mem_txt = "  ".join(f"{k} {v:.0f} MB" for k, v in mem.items())
                log(
                    f"{_fmt_t(now)}/{_fmt_t(plan.total_s)}  {mem_txt} | windows {len(wins)} "
                    f"gaps {sum(r['type'] == 'gap' for r in recs)} | latency p95 "
                    f"{'-' if lat is None else lat['p95']} ms | server {'up' if server.running else 'down'}"
                )
                next_sample += plan.sample_s
            due = [plan.total_s, next_sample]
            if kills:
                due.append(kills[0])
            if pending_start is not None:
                due.append(pending_start)
            time.sleep(min(1.0, max(0.05, min(due) - (time.monotonic() - t0))))
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping the analyzer")
    finally:
        how_stopped = stop_analyzer(proc)
        event("analyzer_stopped", how=how_stopped, status=proc.returncode)
        server.stop()
        reader.join(timeout=10)
        errlog.seek(0)
        stderr_tail = errlog.read()[-4000:]
        errlog.close()

    records = reader.snapshot()
    end = next((r for r in reversed(records) if r.get("type") == "end"), None)
    start = next((r for r in records if r.get("type") == "start"), None)
    for e in events:
        e["wall"] = round(e["wall"], 3)
    res: dict[str, Any] = {
        "interrupted": interrupted,
        "analyzer_command": shlex.join(cmd),
        "analyzer_exit_status": proc.returncode,
        "analyzer_stopped_by": how_stopped,
        "analyzer_exited_early": exited_early,
        "analyzer_stderr_tail": stderr_tail,
        "run_s": round(time.monotonic() - t0, 1),
        "started_unix": round(wall0, 3),
        "server_events": events,
        "record_counts": dict(reader.counts),
        "bad_lines": reader.bad_lines,
        "start": {k: v for k, v in (start or {}).items() if k != "_arrival"} or None,
        "end": {k: v for k, v in (end or {}).items() if k != "_arrival"} or None,
        "rss": summarise_rss(rss.series, plan.warmup_s, rss.pids),
        "rss_samples": samples,
        "latency_ms": latency_summary(records),
        "drops": (end or {}).get("drops"),
        "gaps": summarise_gaps(records, events),
        "windows_accounting": account_windows(records),
        "warnings": Counter(str(r.get("message")) for r in records if r.get("type") == "warning").most_common(20),
    }
    for e in events:
        e["wall"] = round(e["wall"] - wall0, 3)  # seconds since the run started, in the report
    res["checks"] = checks(res)
    return res


# --------------------------------------------------------------------------- report
def markdown(res: dict) -> str:
    _f = _latency_module()._f
    cfg, m = res["config"], res["machine"]
    L = [f"## cer-stream soak: RTSP, server killed every {cfg['restart_every_min']:g} min", ""]
    L += [f"`{res['command']}`", ""]
    L.append(
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cpus']} usable), {m['memory_gb']} GB; "
        f"{m['os']}; Python {m['python']}; cer-stream {res['revision']}"
    )
    L.append(
        f"- {cfg['minutes']:g} min run ({res['run_s']:g} s measured); server killed at "
        f"{', '.join(_fmt_t(r) for r in cfg['restarts_s']) or 'never'}, back {cfg['down_s']:g} s later; "
        f"clip {res['clip']['minutes']:.1f} min ({res['clip']['source']} looped); memory every "
        f"{cfg['sample_s']:g} s, slope after {cfg['warmup_s']:g} s"
    )
    L.append(
        f"- analyzer: `{res['analyzer_command']}`, stopped by {res['analyzer_stopped_by']}, "
        f"exit status {res['analyzer_exit_status']}"
    )
    L += ["", "| check | |", "|---|---|"]
    L += [f"| {name} | {'pass' if ok else '**FAIL**'} |" for name, ok in res["checks"].items()]
    L += [
        "",
        f"Memory (VmRSS, MB; growth and slope after {cfg['warmup_s']:g} s):",
        "",
        "| process | pid | first | last | min | max | after warm-up | growth since | slope MB/h |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["rss"].items():
        L.append(
            f"| {name} | {_f(r['pid'])} | {_f(r['first_mb'])} | {_f(r['last_mb'])} | {_f(r['min_mb'])} | "
            f"{_f(r['max_mb'])} | {_f(r['after_warmup_mb'])} | {_f(r['growth_after_warmup_mb'])} | "
            f"{_f(r['slope_mb_per_h'], 2)} |"
        )
    lat, end, g, w = res["latency_ms"] or {}, res["end"] or {}, res["gaps"], res["windows_accounting"]
    L += ["", "| figure | value |", "|---|---|"]
    L.append(
        f"| latency_ms p50 / p95 / max ({_f(lat.get('n'))} windows) | {_f(lat.get('p50'))} / "
        f"{_f(lat.get('p95'))} / {_f(lat.get('max'))} |"
    )
    L.append(f"| drops (end record) | {json.dumps(res['drops']) if res['drops'] is not None else '–'} |")
    L.append(
        f"| end: reason, windows, windows_skipped | {_f(end.get('reason'))}, {_f(end.get('windows'))}, "
        f"{_f(end.get('windows_skipped'))} |"
    )
    L.append(f"| reconnects (end) | {_f(g['end_reconnects'])} |")
    L.append(
        f"| gaps: records (open) / end.gaps | {g['gap_records']} ({g['gap_records_open']}) / {_f(g['end_gaps'])} |"
    )
    L.append(f"| gap seconds: records / end.gap_s | {_f(g['gap_s'], 2)} / {_f(g['end_gap_s'], 2)} |")
    L.append(f"| gap reasons | {', '.join(f'{k} ×{v}' for k, v in g['reasons'].items()) or '–'} |")
    L.append(
        f"| windows missing: gap ranges / end.windows_missing | {w['gap_windows_total']} / "
        f"{_f(g['end_windows_missing'])} |"
    )
    L.append(
        f"| windows: last index, records, skipped (located / end), in gaps | {w['last_index']}, "
        f"{w['windows']}, {w['skipped_located']} / {_f(w['skipped_end'])}, {w['in_gaps']} |"
    )
    L.append(f"| **unaccounted windows** (must be 0) | **{w['unaccounted']}** |")
    if w["unaccounted_indices"]:
        L.append(f"| indices with no record, gap or located skip | {_short(w['unaccounted_indices'])} |")
    if w["duplicates"]:
        L.append(f"| duplicate indices | {_short(w['duplicates'])} |")
    if w["in_gap_and_emitted"]:
        L.append(f"| emitted and inside a gap | {_short(w['in_gap_and_emitted'])} |")
    if g["per_restart"]:
        L += [
            "",
            "Per server restart (seconds):",
            "",
            "| killed at | server back at | first warning after kill | analyzer back after server | gap (media s) | attempts |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for p in g["per_restart"]:
            L.append(
                f"| {_fmt_t(p['killed_at_s'])} | {_fmt_t(p['server_back_at_s']) if p['server_back_at_s'] is not None else '–'} | "
                f"{_f(p['first_warning_after_s'], 2)} | {_f(p['recovered_after_server_s'], 2)} | "
                f"{_f(p['gap_media_s'], 2)} | {_f(p['gap_attempts'])} |"
            )
    if res["warnings"]:
        L += ["", "Warnings (most frequent first):", ""]
        L += [f"- {n} × {msg}" for msg, n in res["warnings"]]
    return "\n".join(L) + "\n"


def _short(xs: list[int], n: int = 40) -> str:
    return ", ".join(map(str, xs[:n])) + (f" … ({len(xs)} in all)" if len(xs) > n else "")


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(
        prog="bench/soak.py",
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after -- go to the analyzer, e.g. `-- --reconnect-max-delay 5 --no-audio`.",
    )
    p.add_argument("--minutes", type=float, default=60.0, help="length of the run (default 60)")
    p.add_argument(
        "--restart-every",
        type=float,
        default=10.0,
        metavar="MIN",
        help="kill the server every MIN minutes (default 10; 0: never)",
    )
    p.add_argument("--down-s", type=float, default=5.0, help="seconds the server stays down (default 5)")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between memory samples (default 10)")
    p.add_argument(
        "--warmup-s",
        type=float,
        default=120.0,
        help="memory samples before this are left out of the slope (default 120)",
    )
    p.add_argument("--clip-minutes", type=float, help="length of the looped clip (default: longest up-time + 1 min)")
    p.add_argument(
        "--source", type=Path, default=SAMPLE, help="MP4 (H.264 + AAC) to loop (default samples/astronaut.mp4)"
    )
    p.add_argument(
        "--allow-dirty", action="store_true", help="run and write results from a tree with uncommitted changes"
    )
    p.add_argument("--json", metavar="OUT.json", help="default bench/results/soak.json")
    p.add_argument("--md", metavar="OUT.md", help="default bench/results/soak.md")
    _smoke.add_args(
        p,
        f"{SMOKE_S:g} s from the analyzer's first window, the server killed {SMOKE_KILL_S:g} s in "
        f"and back {SMOKE_DOWN_S:g} s later, a sample every {SMOKE_SAMPLE_S:g} s",
    )
    args = p.parse_args(argv)
    args.analyzer_args = extra
    if args.smoke:
        _smoke.refuse_outputs(p, args, ("json", "md"))
        args.minutes, args.restart_every = SMOKE_S / 60.0, SMOKE_KILL_S / 60.0
        args.down_s, args.sample_s, args.warmup_s = SMOKE_DOWN_S, SMOKE_SAMPLE_S, SMOKE_KILL_S
        args.allow_dirty = True  # its figures go to a folder of its own, never reported
    if args.minutes <= 0 or args.sample_s <= 0 or args.down_s < 0 or args.restart_every < 0:
        p.error("--minutes and --sample-s must be positive, --down-s and --restart-every not negative")
    if not args.source.is_file():
        p.error(f"no such file: {args.source}")
    args.json = Path(args.json) if args.json else RESULTS / "soak.json"
    args.md = Path(args.md) if args.md else RESULTS / "soak.md"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    folder = None
    if args.smoke:
        folder = _smoke.out_dir_or_error("[soak]", "soak", args.smoke_dir)
        if folder is None:
            return 2
        args.json, args.md = folder / "soak.json", folder / "soak.md"
    rev = _smoke.revision()
    if _smoke.refuse_dirty("[soak]", rev, args):
        return 2
    ok, why = rtsp_available()
    if not ok and args.smoke:
        return _smoke.skip("soak", f"GStreamer's RTSP server is unavailable: {why}")
    if not ok:
        log(f"error: GStreamer's RTSP server is unavailable: {why}")
        return 2
    # --smoke: the one restart leaves the rest of the run to recover in
    recover = SMOKE_S - SMOKE_KILL_S - SMOKE_DOWN_S if args.smoke else RECOVER_S
    plan = make_plan(
        args.minutes, args.restart_every, args.down_s, args.sample_s, args.warmup_s, args.clip_minutes, recover
    )
    plan.from_first_window = args.smoke
    with tempfile.TemporaryDirectory(prefix="cer-soak-") as tmp:
        res = run_soak(args, plan, Path(tmp))
    latency = _latency_module()
    res = {
        "revision": rev.label("short", "+dirty"),
        "command": shlex.join([Path(sys.executable).name, "bench/soak.py", *(sys.argv[1:] if argv is None else argv)]),
        "config": {
            "minutes": args.minutes,
            "restart_every_min": args.restart_every,
            "down_s": args.down_s,
            "sample_s": args.sample_s,
            "warmup_s": args.warmup_s,
            "restarts_s": plan.restarts,
            "smoke": args.smoke,
        },
        "clip": {"source": args.source.name, "minutes": round(plan.clip_s / 60.0, 2)},
        "machine": latency.machine_info(),
        **res,
    }
    md = markdown(res)
    sys.stdout.write(md)
    sys.stdout.flush()
    if res["interrupted"]:
        log("interrupted: nothing written")
        return 130
    _smoke.write_results(args.json, res, args.md, md, indent=1)
    failed = [name for name, ok_ in res["checks"].items() if not ok_]
    log(f"wrote {args.json} and {args.md}" + (f"; FAILED: {'; '.join(failed)}" if failed else "; all checks pass"))
    if folder is not None and not failed:
        return _smoke.finish("soak", res, SMOKE_NUMBERS, folder)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
