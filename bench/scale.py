#!/usr/bin/env python3
"""Scale benchmark: batch throughput with 1 and 2 workers, and how many live streams this
machine holds at once.

    python bench/scale.py [--source MP4] [--clips N] [--workers-list 1,2] [--max-streams K]
                          [--stagger-s S] [--live-s S] [--p95-ms MS] [--quick] [--allow-dirty]
                          [--json OUT.json] [--md OUT.md] [-- ANALYZER ARGS...]
    python bench/scale.py --smoke [--smoke-dir DIR] [--source MP4] [-- ANALYZER ARGS...]

What runs (each ``cer-stream`` process is ``python -m stream.cli`` in its own session, from
the repository root; the args after ``--`` go to every one of them, batch and live alike:
analysis and model flags such as ``--no-audio`` or ``--face-model NAME``)
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
  * live: for K = 1, 2, ... ``--max-streams`` (default 6), K concurrent
    ``python -m stream.cli --video CLIP --realtime --no-frames`` started ``--stagger-s``
    (default 0.5) apart, each read to its end record.  CLIP is ``--source`` looped to
    ``--live-s`` seconds (default 60; stream copy, ``tests/faults.py: make_looped_clip``), so
    every stream is measured well past its start; ``--live-s 0`` uses ``--source`` as it is.
    Per K: windows, windows skipped (end records), drops (end records, summed per kind),
    ``latency_ms`` p50 / p95 / max over every window record of every stream, the CPU the
    streams used and the machine's, and the memory of all of them.  K *holds* when every
    stream ended on its own (``eof``, exit 0), no window was skipped, every drop counter is 0
    and the pooled p95 is at most ``--p95-ms`` (default 250).  The rounds stop at the first K
    that does not hold (it is reported too); the answer is the largest K that holds.

Reported (stdout as markdown, ``--json``/``--md`` files; default ``bench/results/scale.*``,
``scale-quick.*`` with ``--quick``): the machine, package versions, the git revision and the
exact command.  ``--quick``: 2 clips, 1 worker, up to 2 streams on the 10 s clip as it is.
``--smoke`` checks that the benchmark still runs (``tests/test_bench_smoke.py``): the first 2 s
of the clip, one copy, 1 worker, 1 live stream, reports into ``--smoke-dir`` (default a new
temporary folder, never ``bench/results/``), a dirty tree allowed; exit 0 when the figures came
out and every process ended on its own, whatever the latency (no target is checked).

The results name the git revision; a tree with uncommitted changes to tracked files is refused
before anything runs unless ``--allow-dirty`` (the revision is then recorded with ``+dirty``).
Exit status: 0 when every batch run analysed every file and at least one stream holds, 1 when
not, 2 for a usage or set-up error, 130 when interrupted (nothing is written then).
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

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# As in latency.py: bench/engines.py must not shadow the project's `engines` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT / "samples" / "astronaut.mp4"
RESULTS = BENCH / "results"
#: Seconds between memory samples.
SAMPLE_S = 0.5
#: Seconds the machine is watched before anything starts (what else is running).
BACKGROUND_S = 3.0
#: Seconds a round of live streams may take beyond its clip before the streams are stopped.
LIVE_SLACK_S = 120.0
#: Seconds a stream gets to write its end record after SIGINT when it had to be stopped.
STOP_GRACE_S = 20.0
#: Pause between runs, so that one run's processes are gone before the next starts.
COOL_DOWN_S = 2.0
#: --smoke: seconds of the sample used (batch and live), and the figures it must produce.
SMOKE_S = 2.0
SMOKE_NUMBERS = (
    "batch/0/clips_per_hour",
    "batch/0/media_s_per_wall_s",
    "batch/0/rss/peak_total_mb",
    "live/0/windows",
    "live/0/latency_ms/p95",
    "live/0/cpu_cores_ours",
    "live/0/rss/peak_total_mb",
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


# --------------------------------------------------------------------------- live streams
def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


def live_round(
    k: int, clip: Path, media_s: float, extra: list[str], stagger_s: float, p95_ms: float, tmp: Path
) -> dict:
    """K concurrent ``--realtime`` streams of ``clip``; whether the machine holds them."""
    cmd = [sys.executable, "-m", "stream.cli", "--video", str(clip), "--realtime", "--no-frames", *extra]
    log(f"live, {k} stream(s): {shlex.join(cmd)}")
    sampler = TreeSampler(("analyzer", "capture"))
    streams: list[dict] = []
    c0, b0, t0 = children_cpu_s(), machine_busy_s(), time.monotonic()
    deadline = t0 + media_s + LIVE_SLACK_S + stagger_s * k
    try:
        for i in range(k):
            if i:
                time.sleep(stagger_s)
            err_path = tmp / f"live-k{k}-{i}.stderr"
            err = err_path.open("w")
            started = time.time()
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                encoding="utf-8",
                errors="replace",
                start_new_session=True,
            )
            assert proc.stdout is not None
            reader = soak.RecordReader(proc.stdout)
            reader.start()
            sampler.add(proc.pid)
            if i == 0:
                sampler.start()
            streams.append({"proc": proc, "reader": reader, "err": err, "err_path": err_path, "started": started})
        for s in streams:
            try:
                s["proc"].wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for s in streams:
            s["stopped_by"] = soak.stop_analyzer(s["proc"], STOP_GRACE_S)
        sampler.stop()
        for s in streams:
            s["reader"].join(timeout=10)
            s["err"].close()
    wall = time.monotonic() - t0
    c1, b1 = children_cpu_s(), machine_busy_s()

    per_stream, lat_all, why = [], [], []
    drops: dict[str, float] = {}
    windows = skipped = 0
    for i, s in enumerate(streams):
        recs = s["reader"].snapshot()
        start = next((r for r in recs if r.get("type") == "start"), None)
        end = next((r for r in reversed(recs) if r.get("type") == "end"), None) or {}
        lat = [r["latency_ms"] for r in recs if r.get("type") == "window" and r.get("latency_ms") is not None]
        n_win = sum(r.get("type") == "window" for r in recs)
        lat_all += lat
        windows += n_win
        skipped += int(_num(end.get("windows_skipped")))
        for key, v in (end.get("drops") or {}).items():
            drops[key] = round(drops.get(key, 0.0) + _num(v), 3)
        q = latency.quantiles(lat)
        row = {
            "stream": i,
            "exit_status": s["proc"].returncode,
            "stopped_by": s["stopped_by"],
            "end_reason": end.get("reason"),
            "windows": n_win,
            "windows_skipped": end.get("windows_skipped"),
            "drops": end.get("drops"),
            "latency_ms": None if q is None else {k_: round(q[k_], 1) for k_ in ("p50", "p95", "max")},
            "startup_s": None if start is None else round(start["_arrival"] - s["started"], 2),
            "warnings": sum(r.get("type") == "warning" for r in recs),
            "warning_messages": sorted({str(r.get("message")) for r in recs if r.get("type") == "warning"})[:5],
        }
        per_stream.append(row)
        if not end:
            why.append(f"stream {i}: no end record")
        elif end.get("reason") != "eof":
            why.append(f"stream {i}: ended {end.get('reason')}")
        if s["proc"].returncode not in (0, None) and end:
            why.append(f"stream {i}: exit status {s['proc'].returncode}")
        if not end or s["proc"].returncode:
            row["stderr_tail"] = _tail(s["err_path"], 1000)
    q = latency.quantiles(lat_all)
    lat_q = None if q is None else {k_: round(q[k_], 1) for k_ in ("n", "p50", "p95", "max")}
    if skipped:
        why.append(f"{skipped} window(s) skipped")
    if any(v for v in drops.values()):
        why.append("drops " + ", ".join(f"{k_} {v:g}" for k_, v in drops.items() if v))
    if lat_q is None:
        why.append("no window latency")
    elif lat_q["p95"] > p95_ms:
        why.append(f"latency p95 {lat_q['p95']:.1f} ms > {p95_ms:g} ms")
    cores = os.cpu_count() or 1
    machine = None if b0 is None or b1 is None or wall <= 0 else (b1 - b0) / wall
    res = {
        "streams": k,
        "holds": not why,
        "why_not": why,
        "wall_s": round(wall, 1),
        "windows": windows,
        "windows_skipped": skipped,
        "drops": drops,
        "latency_ms": lat_q,
        "startup_s": latency.dist([r["startup_s"] for r in per_stream]),
        "cpu_cores_ours": round((c1 - c0) / wall, 2) if wall > 0 else None,
        "cpu_cores_machine": None if machine is None else round(machine, 2),
        "cpu_utilisation": None if machine is None else round(machine / cores, 3),
        "loadavg_1_at_end": round(os.getloadavg()[0], 2),
        "rss": sampler.summary(),
        "per_stream": per_stream,
    }
    log(
        f"  {'holds' if res['holds'] else 'does not hold: ' + '; '.join(why)} — windows {windows}, skipped "
        f"{skipped}, p95 {'-' if lat_q is None else lat_q['p95']} ms, machine {res['cpu_cores_machine']} cores"
    )
    return res


# --------------------------------------------------------------------------- report
_f = latency._f  # one cell formatter for every benchmark's report


def markdown(res: dict) -> str:
    m, cfg, bg = res["machine"], res["config"], res["background"]
    L = ["## cer-stream scale: batch throughput and live streams on one machine", ""]
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
    L.append(f"- analyzer args (batch and live):{extra}")
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
            f"{_f(b['media_s_per_wall_s'], 2)} | {_f(speed, 2)} | {_f(rtf.get('median'), 3)} ({_f(rtf.get('max'), 3)}) | "
            f"{_f(b['workers_busy_fraction'], 2)} | {_f(b['cpu_cores_ours'], 2)} / {_f(b['cpu_cores_machine'], 2)} | "
            f"{_f(b['rss']['peak_total_mb'], 0)} / {_f(worker, 0)} |"
        )
    for b in res["batch"]:
        if b["exit_status"] != 0 or b["failed"]:
            L.append("")
            L.append(f"Batch with {b['workers']} worker(s): exit status {b['exit_status']}; {'; '.join(b['errors'])}")
    L += [
        "",
        "Wall time runs from the batch process's start to its exit (interpreter, model loading and the summary "
        "included); per-file RTF is a file's own elapsed time / its media time; *workers busy*: the files' elapsed "
        "times summed / (workers × wall).",
        "",
        f"### Live: K concurrent `--realtime` streams of a {_f(res['live_media_s'])} s clip, started "
        f"{cfg['stagger_s']:g} s apart",
        "",
        "| K | holds | windows | skipped | drops | latency_ms p50 / p95 / max | startup s (median) "
        "| CPU cores (ours / machine) | peak RSS MB (all / largest analyzer) |",
        "|---:|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for r in res["live"]:
        lat = r["latency_ms"] or {}
        an = (r["rss"]["by_process"].get("analyzer") or {}).get("max_mb")
        drops = ", ".join(f"{k} {v:g}" for k, v in r["drops"].items() if v) or "0"
        L.append(
            f"| {r['streams']} | {'yes' if r['holds'] else '**no**: ' + '; '.join(r['why_not'])} | {r['windows']} | "
            f"{r['windows_skipped']} | {drops} | {_f(lat.get('p50'))} / {_f(lat.get('p95'))} / {_f(lat.get('max'))} | "
            f"{_f((r['startup_s'] or {}).get('median'), 1)} | {_f(r['cpu_cores_ours'], 2)} / "
            f"{_f(r['cpu_cores_machine'], 2)} | {_f(r['rss']['peak_total_mb'], 0)} / {_f(an, 0)} |"
        )
    held = res["live_streams_held"]
    L += [
        "",
        f"**Live streams this machine holds** (no skipped window, no drop, p95 ≤ {cfg['p95_ms']:g} ms): "
        f"**{held}**"
        + (
            f" (stopped at {res['live'][-1]['streams']}, which does not hold)"
            if res["live"] and not res["live"][-1]["holds"]
            else f" (every K up to {cfg['max_streams']} holds: the limit was not reached)"
            if res["live"]
            else ""
        ),
        "",
        "latency_ms: capture of a window's newest sample → emission of its record, on the pipeline's own "
        "clock, pooled over every window of every stream. CPU cores: ours = the streams' processes (analyzers "
        "and capture), machine = all busy CPU meanwhile (/proc/stat), averaged over the round, starts included.",
    ]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- main
def _workers_list(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not out or any(n < 1 for n in out):
        raise argparse.ArgumentTypeError("worker counts must be at least 1")
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(
        prog="bench/scale.py",
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after -- go to every cer-stream process (batch and live), e.g. `-- --no-audio`.",
    )
    p.add_argument("--source", type=Path, default=SAMPLE, help="the clip (default samples/astronaut.mp4)")
    p.add_argument("--clips", type=int, default=8, help="copies of the clip the batch analyses (default 8)")
    p.add_argument(
        "--workers-list", type=_workers_list, default=[1, 2], metavar="N,N", help="batch worker counts (default 1,2)"
    )
    p.add_argument("--max-streams", type=int, default=6, help="most concurrent live streams tried (default 6)")
    p.add_argument("--stagger-s", type=float, default=0.5, help="seconds between live stream starts (default 0.5)")
    p.add_argument(
        "--live-s",
        type=float,
        default=60.0,
        help="length of the live clip: the source looped (default 60; 0: the source as it is)",
    )
    p.add_argument("--p95-ms", type=float, default=250.0, help="latency p95 a stream count must keep (default 250)")
    p.add_argument("--no-batch", action="store_true", help="skip the batch runs")
    p.add_argument("--no-live", action="store_true", help="skip the live rounds")
    p.add_argument("--quick", action="store_true", help="a smoke check: 2 clips, 1 worker, up to 2 streams, 10 s clip")
    p.add_argument(
        "--allow-dirty", action="store_true", help="run and write results from a tree with uncommitted changes"
    )
    p.add_argument(
        "--json", metavar="OUT.json", help="default bench/results/scale.json (scale-quick.json with --quick)"
    )
    p.add_argument("--md", metavar="OUT.md", help="default bench/results/scale.md (scale-quick.md with --quick)")
    _smoke.add_args(p, f"one {SMOKE_S:g} s copy of the clip, 1 worker, 1 live stream")
    args = p.parse_args(argv)
    args.analyzer_args = extra
    args.watch_s, args.pause_s = BACKGROUND_S, COOL_DOWN_S
    if args.smoke:
        _smoke.refuse_outputs(p, args, ("json", "md"))
        # the smoke run's batch and live stream both take the cut clip, as it is (smoke_setup)
        args.clips, args.workers_list, args.max_streams, args.live_s, args.stagger_s = 1, [1], 1, 0.0, 0.0
    if args.quick:
        args.clips, args.workers_list, args.max_streams, args.live_s = 2, [1], 2, 0.0
    if args.clips < 1 or args.max_streams < 1 or args.stagger_s < 0 or args.live_s < 0 or args.p95_ms <= 0:
        p.error("--clips and --max-streams must be at least 1, --stagger-s and --live-s not negative")
    if not args.source.is_file():
        p.error(f"no such file: {args.source}")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    folder = None
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
    live: list[dict] = []
    live_s = source_s
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
                clip = args.source
                if args.live_s > source_s:
                    clip = soak.make_looped_clip(args.source, tmp / f"live{args.source.suffix}", args.live_s / 60.0)
                    live_s = media_seconds(clip)
                    log(f"live clip: {args.source.name} looped to {live_s:.1f} s")
                for k in range(1, args.max_streams + 1):
                    r = live_round(k, clip, live_s, args.analyzer_args, args.stagger_s, args.p95_ms, tmp)
                    live.append(r)
                    if not r["holds"]:
                        break
                    time.sleep(args.pause_s)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: the processes were stopped")
    held = max([r["streams"] for r in live if r["holds"]], default=0)
    res: dict[str, Any] = {
        "revision": (rev + ("+dirty" if dirty else "")) if rev else None,
        "command": shlex.join([Path(sys.executable).name, "bench/scale.py", *argv]),
        "config": {
            "source": args.source.name,
            "clips": args.clips,
            "workers_list": args.workers_list,
            "max_streams": args.max_streams,
            "stagger_s": args.stagger_s,
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
        "live_media_s": round(live_s, 3),
        "batch": batch,
        "live": live,
        "live_streams_held": held if live else None,
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
    if folder is not None:
        # a smoke run checks that the figures come out, not that this machine meets a target
        # (skips, drops and latency depend on what else runs: reported, not checked)
        failed += [why for r in live for why in r["why_not"] if why.startswith("stream ")]
        if failed:
            log(f"smoke: FAILED: {'; '.join(failed)}")
            return 1
        return _smoke.finish("scale", res, SMOKE_NUMBERS, folder)
    if live and not held:
        failed.append("not even one live stream holds")
    log(f"wrote {args.json} and {args.md}" + (f"; FAILED: {'; '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
