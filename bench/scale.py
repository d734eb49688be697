#!/usr/bin/env python3
"""Scale benchmark: batch throughput with 1 and 2 workers, and how many live streams one
``cer-stream serve`` holds on this machine, with the shared model host and with a model set per
analyzer process, side by side (issue 22).

    python bench/scale.py [--source MP4] [--clips N] [--workers-list 1,2] [--modes face,speech]
                          [--isolations host,process] [--streams K,K] [--speech-streams K,K]
                          [--live-s S] [--p95-ms MS] [--no-batch] [--no-live] [--quick]
                          [--allow-dirty] [--json OUT.json] [--md OUT.md] [-- ANALYZER ARGS...]
    python bench/scale.py --smoke [--smoke-dir DIR] [--source MP4] [-- ANALYZER ARGS...]

What runs (each ``cer-stream`` process is ``python -m stream.cli`` in its own session, from
the repository root; the args after ``--`` go to every one of them: analysis and model flags
such as ``--face-model NAME``)
  * before anything: the load average, and for 3 s the machine's busy CPU (``/proc/stat``) and
    the processes that used it (``/proc/*/stat``): what else was running.
  * batch: ``--clips`` copies (default 8) of ``--source`` (default ``samples/astronaut.mp4``,
    10 s) under different names in a temporary folder (copies, not links: the batch drops
    repeats of the same real file), then for each N of ``--workers-list`` (default 1,2)
    ``python -m stream.cli batch CLIPS --out OUT --workers N --progress off`` with a fresh OUT.
    Timed from the process start to its exit (interpreter start and model loading included);
    ``OUT/summary.json`` gives the files done, their media seconds and per-file RTF.  Every
    0.5 s the resident memory (VmRSS) of the batch process and all its descendants (workers,
    their capture processes) is read from /proc; the peak of the sum is reported.
  * live: GStreamer's RTSP server on loopback (``tests/rtsp_server.py`` under the system
    Python, ``tests/rtsp_util.py: RtspServer``) serves ``--source`` looped long enough for the
    slowest start and the steady part (stream copy, ``tests/faults.py: make_looped_clip``),
    one mount; every client gets the clip from its start.  For each mode of ``--modes`` (face:
    the args after ``--`` and ``--no-audio``; speech: those args alone, so the clip's audio and
    Whisper run), for each K of ``--streams`` (face, default 1,8,16,24,32) or
    ``--speech-streams`` (default 1,4,8,12) and each isolation of ``--isolations`` (default
    host,process; K by K, so that both see the same machine):
    ``python -m stream.cli serve --rtsp URL (K times) --isolation I --out-dir D --quiet --
    ARGS``.  The round reads ``D/s*.jsonl`` as they grow, waits until every stream has emitted a
    window (the start-up: serve starts all K at once), measures the steady part for
    ``--live-s`` seconds (default 60), then stops serve with SIGINT (every analyzer writes its
    end record).  It stops earlier when a stream's windows near the end of the served clip
    (the server's end of stream would make every analyzer reconnect).
    Per round: per stream, windows, windows skipped and drops (its end record), the p95 of its
    windows' ``latency_ms`` (the definitions of the single-process live rounds before), restarts
    and gaps; a stream *holds* when it ran throughout (an end record, no restart, no gap), no
    window was skipped, no drop counter is above 0 and its p95 is at most ``--p95-ms`` (default
    250); the round holds when all K do.  The pooled latency; over the steady part the
    machine's busy cores (/proc/stat), the serve tree's and the RTSP server's
    (``/proc/PID/stat``); the machine's memory in use (MemTotal - MemAvailable, shared pages
    counted once; the steady part's median minus just before serve started) and the summed PSS
    of the serve tree (``/proc/PID/smaps_rollup``); start-up per stream (the supervisor's
    ``started`` record to the stream's ``start`` record and to its first window); the model
    host's own records (``type: "host"``) where there are any.
    The K values are a list, not "grow until it fails": one round of 24 or 32 streams costs
    minutes, so counts one apart up to the target would take hours; an isolation stops after
    its first K that does not hold (a larger K on the same CPU would not either), and a K whose
    memory, scaled from that isolation's previous round, would not fit in what the machine has
    available is skipped and said so (32 per-process analyzers are about 17 GB).
    Memory per added stream is the least-squares slope of the memory figures over the K values
    of one isolation (every K counts; the intercept is the fixed cost, e.g. the host).

Reported (stdout as markdown, ``--json``/``--md`` files; default ``bench/results/scale.*``,
``scale-quick.*`` with ``--quick``): the machine, package versions, the git revision, the
exact command, a table per mode (isolation x K) and the issue's targets (on the shared host:
face-only streams held >= 24, with speech >= 8, <= 100 MB per added stream, start-up <= 2 s),
each met or not.  ``--quick``: 2 clips, 1 worker, face only, 1 and 2 streams, 10 s steady.
``--smoke`` checks that the benchmark still runs (``tests/test_bench_smoke.py``): the first
2 s of the clip, one copy, 1 worker, one face-only stream per isolation (the 2 s looped),
2 s steady, reports into ``--smoke-dir`` (default a new temporary folder, never
``bench/results/``), a dirty tree allowed; exit 0 when the figures came out and every analyzer
wrote its end record, whatever the latency (no target is checked); 77 without GStreamer's RTSP
server.

The results name the git revision; a tree with uncommitted changes to tracked files is refused
before anything runs unless ``--allow-dirty`` (the revision is then recorded with ``+dirty``).
Exit status: 0 when every batch run analysed every file and at least one live round held a
stream, 1 when not, 2 for a usage or set-up error (no RTSP server for the live rounds: one
line), 130 when interrupted (nothing is written then).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# As in latency.py: bench/engines.py must not shadow the project's `engines` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # the loopback RTSP server: rtsp_util

from rtsp_util import RtspServer, rtsp_available  # noqa: E402

SAMPLE = ROOT / "samples" / "astronaut.mp4"
RESULTS = BENCH / "results"
#: Seconds between memory samples.
SAMPLE_S = 0.5
#: Seconds the machine is watched before anything starts (what else is running).
BACKGROUND_S = 3.0
#: Seconds a serve round may run beyond its start allowance and steady part before it is stopped.
LIVE_SLACK_S = 60.0
#: Seconds a stream gets to write its end record after SIGINT when it had to be stopped (batch).
STOP_GRACE_S = 20.0
#: Seconds serve gets after SIGINT to stop its analyzers (each has 20 s for its end record).
SERVE_STOP_GRACE_S = 60.0
#: Pause between runs, so that one run's processes are gone before the next starts.
COOL_DOWN_S = 2.0
#: A serve round's start allowance: every stream should have a window by then (then it is measured anyway).
START_BASE_S, START_PER_STREAM_S = 60.0, 4.0
#: A round stops once a stream's window ends this close to the end of the served clip.
CLIP_GUARD_S = 6.0
#: Seconds between reads of the out dir's JSON lines (the start record's arrival time).
POLL_S = 0.1
#: Seconds between PSS samples of the serve tree (smaps_rollup of every process costs more).
PSS_EVERY_S = 2.0
#: A round is skipped when its estimated memory is above this share of MemAvailable.
MEMORY_SHARE = 0.85
#: Live modes and isolations, and the default stream counts per mode.
MODES = ("face", "speech")
ISOLATIONS = ("host", "process")
FACE_STREAMS = [1, 8, 16, 24, 32]
SPEECH_STREAMS = [1, 4, 8, 12]
#: --smoke: seconds of the sample used (batch, the served clip's loop, the steady part), and
#: the figures it must produce (live rounds 0 and 1: host and process, one stream each).
SMOKE_S = 2.0
SMOKE_NUMBERS = (
    "batch/0/clips_per_hour",
    "batch/0/media_s_per_wall_s",
    "batch/0/rss/peak_total_mb",
    "live/face/rounds/0/windows",
    "live/face/rounds/0/latency_ms/p95",
    "live/face/rounds/0/cores/serve",
    "live/face/rounds/0/memory/machine_mb",
    "live/face/rounds/0/memory/serve_pss_mb",
    "live/face/rounds/0/startup_s/to_start/median",
    "live/face/rounds/1/windows",
    "live/face/rounds/1/latency_ms/p95",
    "live/face/rounds/1/memory/serve_pss_mb",
)


def log(msg: str) -> None:
    sys.stderr.write(f"[scale] {msg}\n")
    sys.stderr.flush()


# bench/ is a namespace package under ROOT (not on sys.path itself: bench/engines.py would shadow
# the project's engines), so its scripts import each other as bench.NAME, each loaded once
#: machine_info, versions, git_revision, quantiles, system_cpu
latency: Any = importlib.import_module("bench.latency")
#: children, rss_mb, role, RecordReader, stop_analyzer, make_looped_clip
soak: Any = importlib.import_module("bench.soak")
#: --smoke: out_dir, short_clip, finish
_smoke: Any = importlib.import_module("bench._smoke")


# --------------------------------------------------------------------------- processes, CPU and memory
def children_cpu_s() -> float:
    """CPU seconds of this process's children that have been waited for (and of theirs)."""
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return c.ru_utime + c.ru_stime


def machine_busy_s() -> float | None:
    s = latency.system_cpu()
    return None if s is None else s[0]


class TreeSampler(threading.Thread):
    """Every :data:`SAMPLE_S` seconds, the VmRSS of each root process and all its descendants,
    summed.  A process is named by its depth below its root (``labels``: e.g. batch, worker,
    capture), or as bench/soak.py names helper processes (``resource-tracker``, ``forkserver``)."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        super().__init__(name="scale-rss", daemon=True)
        self.labels = labels
        self.roots: list[int] = []
        self.names: dict[int, str] = {}
        self.peak_mb: dict[int, float] = {}
        self.peak_total_mb = 0.0
        self.samples = 0
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def add(self, pid: int) -> None:
        with self._lock:
            self.roots.append(pid)

    def _tree(self, root: int) -> list[tuple[int, int]]:
        out, todo = [(root, 0)], [(root, 0)]
        while todo:
            pid, depth = todo.pop()
            for kid in soak.children(pid):
                out.append((kid, depth + 1))
                todo.append((kid, depth + 1))
        return out

    def sample(self) -> None:
        with self._lock:
            roots = list(self.roots)
        total = 0.0
        for root in roots:
            for pid, depth in self._tree(root):
                mb = soak.rss_mb(pid)
                if mb is None:
                    continue
                if pid not in self.names:
                    r = soak.role(pid)
                    self.names[pid] = (
                        r if r in ("resource-tracker", "forkserver") else self.labels[min(depth, len(self.labels) - 1)]
                    )
                self.peak_mb[pid] = max(self.peak_mb.get(pid, 0.0), mb)
                total += mb
        if roots:
            self.samples += 1
            self.peak_total_mb = max(self.peak_total_mb, total)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(5.0)

    def summary(self) -> dict:
        by: dict[str, list[float]] = {}
        for pid, mb in self.peak_mb.items():
            by.setdefault(self.names[pid], []).append(mb)
        return {
            "samples": self.samples,
            "every_s": SAMPLE_S,
            "peak_total_mb": round(self.peak_total_mb, 1),
            "by_process": {
                name: {"processes": len(v), "max_mb": round(max(v), 1), "sum_of_peaks_mb": round(sum(v), 1)}
                for name, v in sorted(
                    by.items(), key=lambda kv: self.labels.index(kv[0]) if kv[0] in self.labels else 99
                )
            },
        }


def _proc_cpu_ticks() -> dict[int, int]:
    """utime + stime (clock ticks) of every process now."""
    out = {}
    for st in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = st.read_bytes().rsplit(b")", 1)[1].split()
            out[int(st.parent.name)] = int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return out


def _cmdline(pid: int, limit: int = 110) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    if not cmd:
        try:
            cmd = "[" + Path(f"/proc/{pid}/comm").read_text().strip() + "]"
        except OSError:
            cmd = "?"
    return cmd if len(cmd) <= limit else cmd[: limit - 1] + "…"


def background(seconds: float = BACKGROUND_S) -> dict:
    """What the machine was doing before the benchmark: load average, busy cores over
    ``seconds`` and the processes that used at least 0.02 cores meanwhile (this one left out)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    hz = os.sysconf("SC_CLK_TCK")
    b0, p0, t0 = machine_busy_s(), _proc_cpu_ticks(), time.monotonic()
    time.sleep(seconds)
    b1, p1, t1 = machine_busy_s(), _proc_cpu_ticks(), time.monotonic()
    dt = t1 - t0
    me = os.getpid()
    busy = []
    for pid, ticks in p1.items():
        if pid == me or pid not in p0:
            continue
        cores = (ticks - p0[pid]) / hz / dt
        if cores >= 0.02:
            busy.append({"pid": pid, "cores": round(cores, 2), "command": _cmdline(pid)})
    busy.sort(key=lambda r: -r["cores"])
    return {
        "loadavg_1_5_15": load,
        "watched_s": round(dt, 1),
        "busy_cores": None if b0 is None or b1 is None else round((b1 - b0) / dt, 2),
        "processes": busy[:8],
    }


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


# --------------------------------------------------------------------------- batch
def make_clips(source: Path, n: int, folder: Path) -> list[Path]:
    """``n`` copies of ``source`` named clip-01.mp4, ... (copies: the batch analyses a real file
    once, however many links point at it)."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(n):
        dst = folder / f"clip-{i + 1:02d}{source.suffix}"
        shutil.copyfile(source, dst)
        clips.append(dst)
    return clips


def run_batch(clips: Path, out: Path, workers: int, extra: list[str], tmp: Path, timeout_s: float) -> dict:
    """One ``cer-stream batch`` run over ``clips``; its figures."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "stream.cli", "batch", str(clips), "--out", str(out)]
    cmd += ["--workers", str(workers), "--progress", "off", *extra]
    log(f"batch, {workers} worker(s): {shlex.join(cmd)}")
    stdout, stderr = tmp / f"batch-w{workers}.stdout", tmp / f"batch-w{workers}.stderr"
    sampler = TreeSampler(("batch", "worker", "capture"))
    c0, b0, t0 = children_cpu_s(), machine_busy_s(), time.monotonic()
    with stdout.open("w") as fo, stderr.open("w") as fe:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, start_new_session=True
        )
        sampler.add(proc.pid)
        sampler.start()
        stopped = None
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log(f"  still running after {timeout_s:.0f} s: stopping it")
        finally:
            stopped = soak.stop_analyzer(proc, STOP_GRACE_S)  # SIGINT: the batch stops its workers
            sampler.stop()
    wall = time.monotonic() - t0
    c1, b1 = children_cpu_s(), machine_busy_s()
    summary: dict = {}
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log(f"  no summary.json: {exc}")
    rows = summary.get("files") or []
    totals = summary.get("totals") or {}
    ok = [r for r in rows if r.get("status") == "ok"]
    media = sum(r.get("media_s") or 0.0 for r in ok)
    rtf = [r["rtf"] for r in ok if r.get("rtf") is not None]
    elapsed = [r["elapsed_s"] for r in ok if r.get("elapsed_s") is not None]
    res = {
        "workers": workers,
        "command": shlex.join(cmd),
        "exit_status": proc.returncode,
        "stopped_by": stopped,
        "files": len(rows),
        "ok": len(ok),
        "failed": sum(r.get("status") == "failed" for r in rows),
        "errors": sorted({str(r.get("error")) for r in rows if r.get("error")})[:5],
        "wall_s": round(wall, 2),
        "batch_elapsed_s": totals.get("elapsed_s"),
        "media_s": round(media, 2),
        "clips_per_hour": round(len(ok) / wall * 3600.0, 1) if wall > 0 else None,
        "media_s_per_wall_s": round(media / wall, 3) if wall > 0 else None,
        "per_file_rtf": latency.dist(rtf),
        "per_file_elapsed_s": latency.dist(elapsed),
        # the share of the workers' time spent analysing files (the rest: start, model loading, waiting)
        "workers_busy_fraction": round(sum(elapsed) / (workers * wall), 3) if wall > 0 and elapsed else None,
        "cpu_cores_ours": round((c1 - c0) / wall, 2) if wall > 0 else None,
        "cpu_cores_machine": None if b0 is None or b1 is None or wall <= 0 else round((b1 - b0) / wall, 2),
        "rss": sampler.summary(),
        "stderr_tail": _tail(stderr) if proc.returncode else "",
    }
    log(
        f"  {res['ok']}/{res['files']} files in {wall:.1f} s: {res['clips_per_hour']} clips/h, "
        f"{res['media_s_per_wall_s']} media s per wall s, peak RSS {res['rss']['peak_total_mb']:.0f} MB"
    )
    return res


# --------------------------------------------------------------------------- live streams through serve
def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


def _kb_mb(path: str, key: str) -> float | None:
    """The ``KEY: N kB`` line of a /proc file, in MB; None when the file or line is not there."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def mem_available_mb() -> float | None:
    return _kb_mb("/proc/meminfo", "MemAvailable:")


def machine_used_mb() -> float | None:
    """MemTotal - MemAvailable (MB): what the machine's processes hold, shared pages once."""
    total, avail = _kb_mb("/proc/meminfo", "MemTotal:"), mem_available_mb()
    return None if total is None or avail is None else total - avail


def pss_mb(pid: int) -> float | None:
    """Proportional set size of ``pid`` (MB, ``/proc/PID/smaps_rollup``): its private pages plus
    its share of the pages it maps with others, so PSS summed over processes counts a shared
    page once."""
    return _kb_mb(f"/proc/{pid}/smaps_rollup", "Pss:")


def tree(root: int) -> list[int]:
    return [root, *soak.descendants(root)]


def tree_ticks(root: int) -> dict[int, int]:
    """utime + stime (clock ticks) of ``root`` and every descendant now."""
    ticks = _proc_cpu_ticks()
    return {pid: ticks[pid] for pid in tree(root) if pid in ticks}


class RoundSampler(threading.Thread):
    """During one serve round: every :data:`SAMPLE_S` seconds the machine's memory in use, every
    :data:`PSS_EVERY_S` seconds the summed PSS of the serve tree and of the RTSP server's tree."""

    def __init__(self, serve_pid: int, rtsp_pid: int | None) -> None:
        super().__init__(name="scale-round", daemon=True)
        self.serve_pid, self.rtsp_pid = serve_pid, rtsp_pid
        self.machine: list[tuple[float, float]] = []
        self.pss: list[tuple[float, float, float | None, int]] = []  # t, serve tree, rtsp tree, processes
        self._stop_event = threading.Event()

    def sample(self, with_pss: bool) -> None:
        t = time.monotonic()
        used = machine_used_mb()
        if used is not None:
            self.machine.append((t, used))
        if with_pss:
            pids = tree(self.serve_pid)
            serve = [mb for mb in map(pss_mb, pids) if mb is not None]
            rtsp = None
            if self.rtsp_pid is not None:
                rtsp = sum(mb for mb in map(pss_mb, tree(self.rtsp_pid)) if mb is not None)
            if serve:
                self.pss.append((t, sum(serve), rtsp, len(serve)))

    def run(self) -> None:
        last_pss = -PSS_EVERY_S
        while not self._stop_event.is_set():
            now = time.monotonic()
            with_pss = now - last_pss >= PSS_EVERY_S
            if with_pss:
                last_pss = now
            self.sample(with_pss)
            self._stop_event.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(10.0)


class OutDirTail:
    """Reads the JSON lines ``serve --out-dir`` writes (``ID.jsonl`` per stream, any other
    ``*.jsonl`` too) as they grow, each record with its arrival time (``time.time()`` when read:
    the start record carries no clock of its own).  Window records are compacted as
    bench/soak.py's reader compacts them; ``frames`` records are dropped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.offsets: dict[str, int] = {}
        self.partial: dict[str, bytes] = {}
        self.records: dict[str, list[dict]] = {}

    def poll(self) -> None:
        now = time.time()
        for path in sorted(self.folder.glob("*.jsonl")):
            name = path.stem
            try:
                with path.open("rb") as fh:
                    fh.seek(self.offsets.get(name, 0))
                    data = fh.read()
            except OSError:
                continue
            if not data:
                continue
            self.offsets[name] = self.offsets.get(name, 0) + len(data)
            data = self.partial.pop(name, b"") + data
            lines = data.split(b"\n")
            if lines[-1]:
                self.partial[name] = lines[-1]  # a line still being written
            out = self.records.setdefault(name, [])
            for line in lines[:-1]:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(rec, dict) or rec.get("type") == "frames":
                    continue
                if rec.get("type") == "window":
                    # ``present`` too: which modalities the window had (the voice and the words)
                    text = (rec.get("modalities") or {}).get("text") or {}
                    rec = {"type": "window", **{k: rec.get(k) for k in (*soak.RecordReader.WINDOW_KEYS, "present")}}
                    # how many windows late the words were (a live stream's run beside it)
                    rec["_text_lag"] = text.get("lag_windows") if text.get("present") else None
                rec["_arrival"] = now
                out.append(rec)

    def stream(self, i: int) -> list[dict]:
        return self.records.get(f"s{i}", [])

    def windows(self, i: int) -> list[dict]:
        return [r for r in self.stream(i) if r.get("type") == "window"]


def stream_figures(i: int, recs: list[dict], p95_ms: float) -> dict:
    """One stream of a round: its windows, skips and drops (its end record), latency after close
    (its window records' ``latency_ms``), start-up, restarts; whether it held and why not."""
    sup = [r for r in recs if r.get("type") == "supervisor"]
    started = next((r.get("wall_time") for r in sup if r.get("event") == "started"), None)
    start = next((r for r in recs if r.get("type") == "start"), None)
    wins = [r for r in recs if r.get("type") == "window"]
    end = next((r for r in reversed(recs) if r.get("type") == "end"), None) or {}
    lat = [r["latency_ms"] for r in wins if r.get("latency_ms") is not None]
    q = latency.quantiles(lat)
    first_win = next((r.get("wall_time") for r in wins if r.get("wall_time") is not None), None)
    restarts = sum(r.get("event") == "restarted" for r in sup)
    gaps = sum(r.get("type") == "gap" for r in recs)
    why = []
    if not end:
        why.append("no end record")
    if restarts:
        why.append(f"{restarts} restart(s)")
    if gaps:
        why.append(f"{gaps} gap(s)")
    if not wins:
        why.append("no window")
    if _num(end.get("windows_skipped")):
        why.append(f"{int(_num(end.get('windows_skipped')))} window(s) skipped")
    drops = {k: v for k, v in (end.get("drops") or {}).items() if _num(v)}
    if drops:
        why.append("drops " + ", ".join(f"{k} {v:g}" for k, v in drops.items()))
    if q is not None and q["p95"] > p95_ms:
        why.append(f"p95 {q['p95']:.0f} ms")
    return {
        "stream": f"s{i}",
        "holds": not why,
        "why_not": why,
        "windows": len(wins),
        "windows_skipped": end.get("windows_skipped"),
        "drops": end.get("drops"),
        "end_reason": end.get("reason"),
        "restarts": restarts,
        "gaps": gaps,
        "latency_ms": None if q is None else {k: round(q[k], 1) for k in ("n", "p50", "p95", "max")},
        # what speech it heard: the share of its windows with the voice / the words present (a live
        # stream's voice and words run beside it, so a busy recogniser costs these, not windows)
        "audio_present": round(sum("audio" in (r.get("present") or ()) for r in wins) / len(wins), 3) if wins else None,
        "text_present": round(sum("text" in (r.get("present") or ()) for r in wins) / len(wins), 3) if wins else None,
        # the words' lag_windows where they were present (--speech-lag lets them be later)
        "_text_lags": [r["_text_lag"] for r in wins if r.get("_text_lag") is not None],
        "startup_to_start_s": None if started is None or start is None else round(start["_arrival"] - started, 2),
        "startup_to_window_s": None if started is None or first_win is None else round(first_win - started, 2),
        "warnings": sorted({str(r.get("message")) for r in recs if r.get("type") == "warning"})[:5],
        "_lat": lat,
    }


def host_figures(tail: OutDirTail) -> dict | None:
    """The model host's own records (``type: "host"``, in any file of the out dir), if it writes
    any: how many, every numeric field's min / median / max, and the last record as it is."""
    recs = [r for rs in tail.records.values() for r in rs if r.get("type") == "host"]
    if not recs:
        return None
    fields: dict[str, list[float]] = {}
    for r in recs:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("wall_time", "_arrival"):
                fields.setdefault(k, []).append(float(v))
    last = {k: v for k, v in recs[-1].items() if k != "_arrival"}
    return {
        "records": len(recs),
        "fields": {
            k: {"min": round(min(v), 3), "median": round(float(np.median(v)), 3), "max": round(max(v), 3)}
            for k, v in sorted(fields.items())
        },
        "last": last,
    }


def _median_between(samples: list[tuple], t0: float | None, t1: float, col: int = 1) -> float | None:
    """The median of column ``col`` of the samples taken in [t0, t1] (the steady part), else of
    the last sample before t1 (a steady part too short to hold one)."""
    vals = [s[col] for s in samples if t0 is not None and t0 <= s[0] <= t1 and s[col] is not None]
    if not vals:
        vals = [s[col] for s in samples if s[0] <= t1 and s[col] is not None][-1:]
    return float(np.median(vals)) if vals else None


def serve_round(
    k: int, isolation: str, url: str, analyzer_args: list[str], cfg: argparse.Namespace, rtsp_pid: int | None, tmp: Path
) -> dict:
    """K streams of ``url`` through one ``cer-stream serve --isolation ISOLATION``, measured.

    The round waits until every stream has emitted a window (start-up: all K start at once, as
    serve starts them), then ``cfg.live_s`` seconds more (the steady part: the CPU and memory
    figures), then stops serve with SIGINT (its analyzers write their end records).  It stops
    earlier when a stream's windows near the end of the served clip (its end would reconnect
    every analyzer) or when serve exits."""
    out = tmp / f"serve-{cfg.mode}-{isolation}-k{k}"
    cmd = [sys.executable, "-m", "stream.cli", "serve"]
    for _ in range(k):
        cmd += ["--rtsp", url]
    cmd += ["--isolation", isolation, "--out-dir", str(out), "--quiet", "--", *analyzer_args]
    shown = f"{shlex.join(cmd[:4])} --rtsp {url} (x{k}) {shlex.join(cmd[4 + 2 * k :])}"
    log(f"{cfg.mode}, {isolation}, {k} stream(s): {shown}")
    base = []
    for _ in range(3):
        base.append(machine_used_mb())
        time.sleep(0.25)
    base_mb = float(np.median([b for b in base if b is not None])) if any(b is not None for b in base) else None
    rtsp_base = None if rtsp_pid is None else sum(mb for mb in map(pss_mb, tree(rtsp_pid)) if mb is not None)
    hz = os.sysconf("SC_CLK_TCK")
    err_path = tmp / f"serve-{cfg.mode}-{isolation}-k{k}.stderr"
    tail = OutDirTail(out)
    t0 = time.monotonic()
    start_limit = t0 + START_BASE_S + START_PER_STREAM_S * k
    guard_end = cfg.clip_s - CLIP_GUARD_S
    steady0: tuple[float, float | None, dict[int, int], dict[int, int]] | None = None
    stopped_because = ""
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        sampler = RoundSampler(proc.pid, rtsp_pid)
        sampler.start()
        try:
            while True:
                time.sleep(POLL_S)
                tail.poll()
                now = time.monotonic()
                if proc.poll() is not None:
                    stopped_because = f"serve exited by itself (status {proc.returncode})"
                    break
                if steady0 is None and (all(tail.windows(i) for i in range(k)) or now >= start_limit):
                    rtsp_ticks = {} if rtsp_pid is None else tree_ticks(rtsp_pid)
                    steady0 = (now, machine_busy_s(), tree_ticks(proc.pid), rtsp_ticks)
                    if now >= start_limit:
                        log(f"  not every stream had a window after {now - t0:.0f} s: measuring anyway")
                if steady0 is not None and now >= steady0[0] + cfg.live_s:
                    stopped_because = "steady part done"
                    break
                ends = [w[-1].get("end") for i in range(k) if (w := tail.windows(i))]
                if any(_num(e) >= guard_end for e in ends):
                    stopped_because = "a stream neared the end of the served clip"
                    break
                if now - t0 > START_BASE_S + START_PER_STREAM_S * k + cfg.live_s + LIVE_SLACK_S:
                    stopped_because = "time limit"
                    break
            t_stop = time.monotonic()
            b_stop = machine_busy_s()
            ticks_stop = tree_ticks(proc.pid)
            rtsp_stop = {} if rtsp_pid is None else tree_ticks(rtsp_pid)
        finally:
            stopped_by = soak.stop_analyzer(proc, SERVE_STOP_GRACE_S)
            sampler.stop()
    tail.poll()
    wall = time.monotonic() - t0

    def cores(a: dict[int, int], b: dict[int, int], dt: float) -> float | None:
        return round(sum(v - a.get(pid, 0) for pid, v in b.items()) / hz / dt, 2) if dt > 0 else None

    steady_s = None if steady0 is None else t_stop - steady0[0]
    cpu: dict[str, float | None] = {"machine": None, "serve": None, "rtsp_server": None}
    if steady0 is not None and steady_s:
        b0 = steady0[1]
        cpu = {
            "machine": None if b0 is None or b_stop is None else round((b_stop - b0) / steady_s, 2),
            "serve": cores(steady0[2], ticks_stop, steady_s),
            "rtsp_server": cores(steady0[3], rtsp_stop, steady_s) if rtsp_pid is not None else None,
        }
    s_t0 = None if steady0 is None else steady0[0]
    used = _median_between(sampler.machine, s_t0, t_stop)
    serve_pss = _median_between(sampler.pss, s_t0, t_stop)
    rtsp_pss = _median_between(sampler.pss, s_t0, t_stop, col=2)
    per_stream = [stream_figures(i, tail.stream(i), cfg.p95_ms) for i in range(k)]
    lat_all = [v for s in per_stream for v in s.pop("_lat")]
    lags = [v for s in per_stream for v in s.pop("_text_lags")]
    q = latency.quantiles(lat_all)
    held = sum(s["holds"] for s in per_stream)
    drops: dict[str, float] = {}
    for s in per_stream:
        for key, v in (s["drops"] or {}).items():
            drops[key] = round(drops.get(key, 0.0) + _num(v), 3)
    to_start = latency.dist([s["startup_to_start_s"] for s in per_stream])
    to_window = latency.dist([s["startup_to_window_s"] for s in per_stream])
    res = {
        "isolation": isolation,
        "streams": k,
        "held": held,
        "holds": held == k,
        "why_not": [f"{s['stream']}: {'; '.join(s['why_not'])}" for s in per_stream if s["why_not"]][:8],
        "command": shlex.join(cmd).replace(url, "URL"),
        "exit_status": proc.returncode,
        "stopped": stopped_because,
        "stopped_by": stopped_by,
        "wall_s": round(wall, 1),
        "steady_s": None if steady_s is None else round(steady_s, 1),
        "windows": sum(s["windows"] for s in per_stream),
        "windows_skipped": sum(int(_num(s["windows_skipped"])) for s in per_stream),
        "drops": drops,
        "latency_ms": None if q is None else {k_: round(q[k_], 1) for k_ in ("n", "p50", "p95", "max")},
        "present": {
            name: (
                round(sum(v) / len(v), 3)
                if (v := [x[f"{name}_present"] for x in per_stream if x[f"{name}_present"] is not None])
                else None
            )
            for name in ("audio", "text")
        },
        # mean lag_windows of the words, over every stream's windows that had them
        "text_lag_mean": round(sum(lags) / len(lags), 2) if lags else None,
        "cores": cpu,
        "memory": {
            "machine_before_mb": None if base_mb is None else round(base_mb, 1),
            "machine_mb": None if used is None or base_mb is None else round(used - base_mb, 1),
            "machine_peak_mb": None
            if base_mb is None or not sampler.machine
            else round(max(m for _t, m in sampler.machine) - base_mb, 1),
            "serve_pss_mb": None if serve_pss is None else round(serve_pss, 1),
            "serve_processes": max((p[3] for p in sampler.pss), default=None),
            "rtsp_server_pss_added_mb": None
            if rtsp_pss is None or rtsp_base is None
            else round(rtsp_pss - rtsp_base, 1),
            "samples": len(sampler.machine),
        },
        # the machine's figure below 90 % of the serve tree's own PSS: other processes freed memory
        # meanwhile (a shared machine), so the machine figure is not this round's alone
        "memory_disturbed": used is not None
        and base_mb is not None
        and serve_pss is not None
        and used - base_mb < 0.9 * serve_pss,
        "startup_s": {
            "to_start": None if to_start is None else {k_: round(to_start[k_], 2) for k_ in ("median", "max")},
            "to_first_window": None if to_window is None else {k_: round(to_window[k_], 2) for k_ in ("median", "max")},
        },
        "host": host_figures(tail),
        "per_stream": per_stream,
        "stderr_tail": _tail(err_path, 1500)
        if proc.returncode not in (0, None) or not all(s["end_reason"] for s in per_stream)
        else "",
    }
    lat_q = res["latency_ms"] or {}
    log(
        f"  {held}/{k} held, p95 {lat_q.get('p95', '-')} ms, machine {cpu['machine']} cores (serve {cpu['serve']}), "
        f"memory {_f(res['memory']['machine_mb'], 0)} MB more (serve PSS {res['memory']['serve_pss_mb']} MB), start-up median "
        f"{(to_start or {}).get('median')} s; {stopped_because}"
    )
    return res


def memory_slope(rounds: list[dict], key: str) -> float | None:
    """MB per added stream: the least-squares slope of ``memory[key]`` over K, from every round
    with the figure (at least two stream counts); the intercept is the fixed cost (the host)."""
    pts = [(r["streams"], r["memory"][key]) for r in rounds if r["memory"].get(key) is not None]
    if len({k for k, _ in pts}) < 2:
        return None
    x = np.array([p[0] for p in pts], dtype=float)
    y = np.array([p[1] for p in pts], dtype=float)
    return round(float(np.polyfit(x, y, 1)[0]), 1)


def run_mode(mode: str, url: str, cfg: argparse.Namespace, rtsp_pid: int | None, tmp: Path) -> dict:
    """Every isolation at every K of one mode, K by K (host and process side by side, so that a
    change in the machine meanwhile touches both).  An isolation stops after its first K that
    does not hold (a larger K would not hold either), and a K whose memory, estimated from the
    isolation's previous round, would not fit in what the machine has available is skipped."""
    analyzer_args = [*cfg.analyzer_args, *(["--no-audio"] if mode == "face" else [])]
    cfg.mode = mode
    ks = cfg.face_streams if mode == "face" else cfg.speech_streams
    rounds: list[dict] = []
    skipped: list[dict] = []
    done: set[str] = set()
    for k in ks:
        for iso in cfg.isolations:
            if iso in done:
                continue
            prev = [r for r in rounds if r["isolation"] == iso and r["memory"]["machine_mb"]]
            avail = mem_available_mb()
            if prev and avail is not None:
                p = prev[-1]
                need = p["memory"]["machine_mb"] / p["streams"] * k
                if need > MEMORY_SHARE * avail:
                    why = f"would need about {need:.0f} MB, {avail:.0f} MB available"
                    log(f"{mode}, {iso}, {k} streams: skipped: {why}")
                    skipped.append({"isolation": iso, "streams": k, "why": why})
                    done.add(iso)
                    continue
            r = serve_round(k, iso, url, analyzer_args, cfg, rtsp_pid, tmp)
            rounds.append(r)
            if not r["holds"]:
                done.add(iso)
            time.sleep(cfg.pause_s)
    summary = {}
    for iso in cfg.isolations:
        mine = [r for r in rounds if r["isolation"] == iso]
        held = [r["streams"] for r in mine if r["holds"]]
        summary[iso] = {
            "streams_held": max(held, default=0),
            "first_not_held": next((r["streams"] for r in mine if not r["holds"]), None),
            "mb_per_added_stream_machine": memory_slope(mine, "machine_mb"),
            "mb_per_added_stream_pss": memory_slope(mine, "serve_pss_mb"),
        }
    return {
        "analyzer_args": analyzer_args,
        "streams_tried": ks,
        "rounds": rounds,
        "skipped": skipped,
        "summary": summary,
    }


def targets(live: dict) -> list[dict]:
    """The issue's targets (issue 22), each met or not, on the shared host's figures (the
    default design); the per-process figures stand beside them in the tables."""
    out = []

    def row(name: str, value: Any, goal: str, met: bool | None, note: str) -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": met, "note": note})

    for mode, goal in (("face", 24), ("speech", 8)):
        s = (live.get(mode) or {}).get("summary", {}).get("host")
        if s is None:
            continue
        tried = max((r["streams"] for r in live[mode]["rounds"] if r["isolation"] == "host"), default=0)
        met = s["streams_held"] >= goal if tried >= goal or s["first_not_held"] is not None else None
        row(f"{mode}: streams held (host)", s["streams_held"], f">= {goal}", met, f"most tried {tried}")
    for mode in ("face", "speech"):
        s = (live.get(mode) or {}).get("summary", {}).get("host")
        if s is None:
            continue
        mb = s["mb_per_added_stream_machine"]
        disturbed = any(r.get("memory_disturbed") for r in live[mode]["rounds"] if r["isolation"] == "host")
        row(
            f"{mode}: memory per added stream (host, machine)",
            mb,
            "<= 100 MB",
            None if mb is None else mb <= 100.0,
            f"serve tree PSS slope {_f(s['mb_per_added_stream_pss'])} MB"
            + ("; the machine figure was disturbed by other processes in some round" if disturbed else ""),
        )
    face = [r for r in (live.get("face") or {}).get("rounds", []) if r["isolation"] == "host"]
    held = [r for r in face if r["holds"]] or face
    if held:
        r = max(held, key=lambda r: r["streams"])
        st = r["startup_s"]["to_start"] or {}
        row(
            "face: start-up of a stream (host)",
            st.get("median"),
            "<= 2 s",
            None if st.get("median") is None else st["median"] <= 2.0,
            f"median at {r['streams']} streams started together (max {_f(st.get('max'), 2)} s)",
        )
    return out


# --------------------------------------------------------------------------- report
_f = latency._f  # one cell formatter for every benchmark's report

MODE_TITLES = {"face": "Face only (`--no-audio`)", "speech": "With speech (the clip's audio)"}


def _lag(mean: float | None) -> str:
    """`` (words 1.4 late)``: the mean lag_windows of the words where present; nothing without."""
    return "" if mean is None else f" (words {mean:g} late)"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def _pair(d: dict | None, a: str, b: str, nd: int = 1) -> str:
    d = d or {}
    return f"{_f(d.get(a), nd)} / {_f(d.get(b), nd)}"


def markdown_live(res: dict) -> list[str]:
    cfg = res["config"]
    L = [
        "",
        f"### Live: K streams through one `cer-stream serve` (loopback RTSP: {cfg['source']} looped to "
        f"{_f(res['live_media_s'])} s, one mount, K clients), {cfg['live_s']:g} s steady",
        "",
    ]
    for mode, m in res["live"].items():
        L += [f"#### {MODE_TITLES.get(mode, mode)}: analyzer args `{shlex.join(m['analyzer_args']) or '(none)'}`", ""]
        L.append(
            "| isolation | K | held | latency_ms p50 / p95 / max | windows (skipped) | drops | cores: machine / serve "
            "/ RTSP server | memory MB: machine (peak) / serve PSS | start-up s → start: median / max | → first "
            "window: median / max | windows with the voice / words | not held: why |"
        )
        L.append("|---|---:|---:|---|---:|---|---|---|---|---|---|---|")
        for r in m["rounds"]:
            lat, c, mem = r["latency_ms"] or {}, r["cores"], r["memory"]
            drops = ", ".join(f"{k} {v:g}" for k, v in r["drops"].items() if v) or "0"
            why = "; ".join(r["why_not"][:3]) + (" ..." if len(r["why_not"]) > 3 else "")
            dist = " (other processes freed memory meanwhile)" if r.get("memory_disturbed") else ""
            L.append(
                f"| {r['isolation']} | {r['streams']} | {r['held']}/{r['streams']} | {_f(lat.get('p50'))} / "
                f"{_f(lat.get('p95'))} / {_f(lat.get('max'))} | {r['windows']} ({r['windows_skipped']}) | {drops} | "
                f"{_f(c['machine'], 2)} / {_f(c['serve'], 2)} / {_f(c['rtsp_server'], 2)} | "
                f"{_f(mem['machine_mb'], 0)} ({_f(mem['machine_peak_mb'], 0)}){dist} / {_f(mem['serve_pss_mb'], 0)} | "
                f"{_pair(r['startup_s']['to_start'], 'median', 'max')} | "
                f"{_pair(r['startup_s']['to_first_window'], 'median', 'max')} | "
                f"{_pct((r.get('present') or {}).get('audio'))} / {_pct((r.get('present') or {}).get('text'))}"
                f"{_lag(r.get('text_lag_mean'))} | "
                f"{why or '–'} |"
            )
        for s in m["skipped"]:
            L.append(f"| {s['isolation']} | {s['streams']} | skipped | {s['why']} | | | | | | | | |")
        L += [
            "",
            "| isolation | streams held (all K held) | first K not held | MB per added stream: machine / serve PSS |",
        ]
        L.append("|---|---:|---:|---|")
        for iso, s in m["summary"].items():
            L.append(
                f"| {iso} | **{s['streams_held']}** | {_f(s['first_not_held'])} | "
                f"{_f(s['mb_per_added_stream_machine'])} / {_f(s['mb_per_added_stream_pss'])} |"
            )
        hosts = [r for r in m["rounds"] if r.get("host")]
        if hosts:
            L += [
                "",
                'Model host records (`type: "host"`): '
                + "; ".join(
                    f"K={r['streams']}: {r['host']['records']} records, "
                    + ", ".join(
                        f"{k} {v['median']:g} ({v['min']:g}–{v['max']:g})" for k, v in r["host"]["fields"].items()
                    )
                    for r in hosts
                ),
            ]
        L.append("")
    L += [
        "A stream *holds* when its analyzer ran throughout (an end record, no restart, no gap), no window was "
        "skipped and no drop counter is above 0 (its end record), and the p95 of its windows' `latency_ms` "
        f"(capture of a window's newest sample → its record, after the window closes) is ≤ {cfg['p95_ms']:g} ms; "
        "a K holds when all K streams do. serve starts all K analyzers at once; the steady part starts when every "
        "stream has emitted a window. Cores over the steady part: the machine's busy CPU (/proc/stat), the serve "
        "process tree's (supervisor, analyzers, capture, model host), the loopback RTSP server's (not part of a "
        "real site). Memory: the machine's MemTotal − MemAvailable in the steady part (median) minus just before "
        "serve started (shared pages counted once; the RTSP server's per-client pipelines included), and the "
        "summed PSS of the serve tree. MB per added stream: least-squares slope over the K values of that "
        "isolation (the intercept is the fixed cost). Start-up: the supervisor's `started` record to the stream's "
        "`start` record (read as it arrives) and to its first window (whose first 4 s of media it waits for). "
        "Windows with the voice / words: the share of every stream's windows whose `present` lists them (a live "
        "stream's voice and words run beside it and are used up to `--speech-lag` windows late, 1 by default); "
        "in brackets the words' mean `lag_windows` where they were present.",
    ]
    if res.get("targets"):
        L += ["", "### Targets (issue 22, on the shared host)", "", "| target | value | goal | met | note |"]
        L.append("|---|---:|---|---|---|")
        for t in res["targets"]:
            met = "not measured" if t["met"] is None else ("**met**" if t["met"] else "**not met**")
            L.append(f"| {t['target']} | {_f(t['value'])} | {t['goal']} | {met} | {t['note']} |")
    return L


def markdown(res: dict) -> str:
    m, cfg, bg = res["machine"], res["config"], res["background"]
    L = ["## cer-stream scale: batch throughput and live streams through `serve` on one machine", ""]
    L += [f"`{res['command']}`", ""]
    L.append(
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cpus']} usable), {m['memory_gb']} GB"
        f"{'; GPU ' + m['gpu'] if m.get('gpu') else ''}; {m['os']}; Python {m['python']}; cer-stream {res['revision']}"
    )
    v = res["versions"]
    L.append(
        "- versions: "
        + ", ".join(f"{k} {v[k]}" for k in ("numpy", "onnxruntime", "mediapipe", "av", "pyzmq", "opencv") if v.get(k))
    )
    procs = "; ".join(f"{p['cores']:.2f} `{p['command']}`" for p in bg["processes"]) or "none above 0.02 cores"
    L.append(
        f"- before the start: load average {' / '.join(map(str, bg['loadavg_1_5_15'] or []))}, "
        f"{_f(bg['busy_cores'], 2)} cores busy over {bg['watched_s']:g} s; processes: {procs}"
    )
    extra = f" `{shlex.join(cfg['analyzer_args'])}`" if cfg["analyzer_args"] else " none"
    L.append(f"- analyzer args (batch, and every live mode before its own):{extra}")
    if res["batch"]:
        L += ["", f"### Batch: {cfg['clips']} copies of {cfg['source']} ({_f(res['source_media_s'])} s each)", ""]
        L.append(
            "| workers | files ok | wall s | clips / hour | media s per wall s | speed-up | per-file RTF median (max) "
            "| workers busy | CPU cores (ours / machine) | peak RSS, MB (all / largest worker) |"
        )
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        base = next((b["media_s_per_wall_s"] for b in res["batch"] if b["workers"] == 1), None)
        for b in res["batch"]:
            rtf = b["per_file_rtf"] or {}
            worker = (b["rss"]["by_process"].get("worker") or {}).get("max_mb")
            speed = b["media_s_per_wall_s"] / base if base and b["media_s_per_wall_s"] else None
            L.append(
                f"| {b['workers']} | {b['ok']}/{b['files']} | {_f(b['wall_s'])} | {_f(b['clips_per_hour'], 0)} | "
                f"{_f(b['media_s_per_wall_s'], 2)} | {_f(speed, 2)} | {_f(rtf.get('median'), 3)} "
                f"({_f(rtf.get('max'), 3)}) | {_f(b['workers_busy_fraction'], 2)} | {_f(b['cpu_cores_ours'], 2)} / "
                f"{_f(b['cpu_cores_machine'], 2)} | {_f(b['rss']['peak_total_mb'], 0)} / {_f(worker, 0)} |"
            )
        for b in res["batch"]:
            if b["exit_status"] != 0 or b["failed"]:
                L.append("")
                L.append(
                    f"Batch with {b['workers']} worker(s): exit status {b['exit_status']}; {'; '.join(b['errors'])}"
                )
        L += [
            "",
            "Wall time runs from the batch process's start to its exit (interpreter, model loading and the summary "
            "included); per-file RTF is a file's own elapsed time / its media time; *workers busy*: the files' "
            "elapsed times summed / (workers × wall).",
        ]
    if res["live"]:
        L += markdown_live(res)
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- main
def _int_list(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not out or any(n < 1 for n in out):
        raise argparse.ArgumentTypeError("counts must be at least 1")
    return sorted(set(out))


def _choices(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        out = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in out if x not in allowed]
        if not out or bad:
            raise argparse.ArgumentTypeError(f"expected some of {','.join(allowed)}, got {text!r}")
        return list(dict.fromkeys(out))

    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(
        prog="bench/scale.py",
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after -- go to every cer-stream process (batch, and every live mode before its own "
        "flags), e.g. `-- --face-model NAME`.",
    )
    p.add_argument("--source", type=Path, default=SAMPLE, help="the clip (default samples/astronaut.mp4)")
    p.add_argument("--clips", type=int, default=8, help="copies of the clip the batch analyses (default 8)")
    p.add_argument(
        "--workers-list", type=_int_list, default=[1, 2], metavar="N,N", help="batch worker counts (default 1,2)"
    )
    p.add_argument(
        "--modes",
        type=_choices(MODES),
        default=list(MODES),
        metavar="M,M",
        help="live modes: face (adds --no-audio), speech (the clip's audio) (default face,speech)",
    )
    p.add_argument(
        "--isolations",
        type=_choices(ISOLATIONS),
        default=list(ISOLATIONS),
        metavar="I,I",
        help="serve --isolation values compared (default host,process)",
    )
    p.add_argument(
        "--streams",
        type=_int_list,
        default=FACE_STREAMS,
        metavar="K,K",
        help=f"stream counts, face mode (default {','.join(map(str, FACE_STREAMS))})",
    )
    p.add_argument(
        "--speech-streams",
        type=_int_list,
        default=SPEECH_STREAMS,
        metavar="K,K",
        help=f"stream counts, speech mode (default {','.join(map(str, SPEECH_STREAMS))})",
    )
    p.add_argument(
        "--live-s",
        type=float,
        default=60.0,
        help="seconds of the steady part of each live round, once every stream has a window (default 60)",
    )
    p.add_argument("--p95-ms", type=float, default=250.0, help="latency p95 a stream must keep (default 250)")
    p.add_argument("--no-batch", action="store_true", help="skip the batch runs")
    p.add_argument("--no-live", action="store_true", help="skip the live rounds")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short check: 2 clips, 1 worker, face only, 1 and 2 streams, 10 s steady",
    )
    p.add_argument(
        "--allow-dirty", action="store_true", help="run and write results from a tree with uncommitted changes"
    )
    p.add_argument(
        "--json", metavar="OUT.json", help="default bench/results/scale.json (scale-quick.json with --quick)"
    )
    p.add_argument("--md", metavar="OUT.md", help="default bench/results/scale.md (scale-quick.md with --quick)")
    _smoke.add_args(p, f"a {SMOKE_S:g} s copy of the clip, 1 worker, 1 face-only stream per isolation")
    args = p.parse_args(argv)
    args.analyzer_args = extra
    args.watch_s, args.pause_s = BACKGROUND_S, COOL_DOWN_S
    if args.smoke:
        _smoke.refuse_outputs(p, args, ("json", "md"))
        args.clips, args.workers_list, args.modes, args.streams, args.live_s = 1, [1], ["face"], [1], SMOKE_S
    if args.quick:
        args.clips, args.workers_list, args.modes, args.streams, args.live_s = 2, [1], ["face"], [1, 2], 10.0
    if args.clips < 1 or args.live_s <= 0 or args.p95_ms <= 0:
        p.error("--clips must be at least 1, --live-s and --p95-ms positive")
    if not args.source.is_file():
        p.error(f"no such file: {args.source}")
    args.face_streams = args.streams
    stem = "scale-quick" if args.quick else "scale"
    args.json = Path(args.json) if args.json else RESULTS / f"{stem}.json"
    args.md = Path(args.md) if args.md else RESULTS / f"{stem}.md"
    return args


def media_seconds(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        if c.duration is not None:
            return float(c.duration) / 1e6
        s = c.streams.video[0]
        return float((s.duration or 0) * (s.time_base or 0))


def smoke_setup(args: argparse.Namespace) -> Path:
    """--smoke: the source cut to :data:`SMOKE_S` seconds in the smoke folder, the reports beside
    it; a dirty tree is fine (its figures are never reported), the pauses are left out."""
    folder = _smoke.out_dir("scale", args.smoke_dir)
    args.source = _smoke.short_clip(folder / f"clip{args.source.suffix}", SMOKE_S, args.source)
    args.json, args.md = folder / "scale.json", folder / "scale.md"
    args.allow_dirty = True
    args.watch_s, args.pause_s = 0.5, 0.0
    return folder


def clip_seconds(args: argparse.Namespace) -> float:
    """How long the served clip must last: the slowest start allowed, the steady part, a margin."""
    most = max(
        [
            *(args.face_streams if "face" in args.modes else []),
            *(args.speech_streams if "speech" in args.modes else []),
            1,
        ]
    )
    return START_BASE_S + START_PER_STREAM_S * most + args.live_s + CLIP_GUARD_S + 30.0


def run_live(args: argparse.Namespace, tmp: Path) -> tuple[dict, float]:
    """The loopback RTSP server on the looped clip, then every mode; ``(live, clip seconds)``."""
    clip = soak.make_looped_clip(args.source, tmp / f"live{args.source.suffix}", clip_seconds(args) / 60.0)
    args.clip_s = media_seconds(clip)
    log(f"live clip: {args.source.name} looped to {args.clip_s:.1f} s, served over RTSP on loopback")
    live: dict[str, dict] = {}
    with RtspServer(clip) as server:
        for mode in args.modes:
            live[mode] = run_mode(mode, server.url, args, server.pid, tmp)
    return live, args.clip_s


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    folder = None
    if not args.no_live:
        ok, why = rtsp_available()
        if not ok and args.smoke:
            return _smoke.skip("scale", f"GStreamer's RTSP server is not available ({why})")
        if not ok:
            log(f"error: the live rounds need GStreamer's RTSP server: {why} (or pass --no-live)")
            return 2
    if args.smoke:
        try:
            folder = smoke_setup(args)
        except ValueError as exc:
            log(f"error: {exc}")
            return 2
    rev, dirty = latency.git_revision()
    if dirty and not args.allow_dirty:
        log("error: tracked files have uncommitted changes; commit them, or pass --allow-dirty")
        return 2
    source_s = media_seconds(args.source)
    log(f"watching the machine for {args.watch_s:g} s before starting")
    bg = background(args.watch_s)
    log(f"  load {bg['loadavg_1_5_15']}, {bg['busy_cores']} cores busy")
    batch: list[dict] = []
    live: dict[str, dict] = {}
    clip_s = None
    interrupted = False
    try:
        with tempfile.TemporaryDirectory(prefix="cer-scale-") as tmp_:
            tmp = Path(tmp_)
            if not args.no_batch:
                clips = tmp / "clips"
                make_clips(args.source, args.clips, clips)
                for n in args.workers_list:
                    timeout = 300.0 + 10.0 * source_s * args.clips
                    batch.append(run_batch(clips, tmp / f"out-w{n}", n, args.analyzer_args, tmp, timeout))
                    time.sleep(args.pause_s)
            if not args.no_live:
                live, clip_s = run_live(args, tmp)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: the processes were stopped")
    res: dict[str, Any] = {
        "revision": (rev + ("+dirty" if dirty else "")) if rev else None,
        "command": shlex.join([Path(sys.executable).name, "bench/scale.py", *argv]),
        "config": {
            "source": args.source.name,
            "clips": args.clips,
            "workers_list": args.workers_list,
            "modes": args.modes,
            "isolations": args.isolations,
            "face_streams": args.face_streams,
            "speech_streams": args.speech_streams,
            "live_s": args.live_s,
            "p95_ms": args.p95_ms,
            "analyzer_args": args.analyzer_args,
            "quick": args.quick,
            "smoke": args.smoke,
        },
        "machine": latency.machine_info(),
        "versions": latency.versions(),
        "background": bg,
        "source_media_s": round(source_s, 3),
        "live_media_s": None if clip_s is None else round(clip_s, 3),
        "batch": batch,
        "live": live,
        "targets": [] if args.smoke or args.quick else targets(live),
    }
    md = markdown(res)
    sys.stdout.write(md)
    sys.stdout.flush()
    if interrupted:
        log("interrupted: nothing written")
        return 130
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    args.md.write_text(md, encoding="utf-8")
    failed = [f"batch with {b['workers']} worker(s)" for b in batch if b["exit_status"] != 0 or b["ok"] != b["files"]]
    rounds = [r for m in live.values() for r in m["rounds"]]
    if folder is not None:
        # a smoke run checks that the figures come out, not that this machine meets a target
        # (skips, drops and latency depend on what else runs: reported, not checked)
        failed += [
            f"{r['isolation']}, {s['stream']}: no end record"
            for r in rounds
            for s in r["per_stream"]
            if not s["end_reason"]
        ]
        failed += [f"{r['isolation']}: serve exit status {r['exit_status']}" for r in rounds if r["exit_status"]]
        if failed:
            log(f"smoke: FAILED: {'; '.join(failed)}")
            return 1
        return _smoke.finish("scale", res, SMOKE_NUMBERS, folder)
    if live and not any(r["held"] for r in rounds):
        failed.append("not even one live stream holds")
    log(f"wrote {args.json} and {args.md}" + (f"; FAILED: {'; '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
