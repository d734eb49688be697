#!/usr/bin/env python3
"""Latency benchmark: the real cer-stream pipeline on a video file, with its
physical floor (decode only) and a peer (the ``fer`` package) in the same run.

    python bench/latency.py --video FILE [--realtime] [--repeat N] [--no-peer] [--max-side PX]
                            [--json OUT.json] [--md OUT.md] [--plot OUT.png]
                            [--profile lite|paper] [--face-model NAME] [--face-weights PATH]
                            [--backend auto|onnxruntime|tensorrt] [--device auto|cpu|cuda]
    python bench/latency.py --smoke [--smoke-dir DIR] [--video FILE]

What runs
  * the pipeline, in this process: ``stream.Pipeline`` (the command line's own
    options, modality set and fusion) with its capture process (PyAV ->
    ZeroMQ), an observer that collects the stage times it reports (per frame:
    detection, validation, emotion; per window: each modality, fusion), and a
    sink that collects the records (and serialises each to JSON, as the JSON
    lines sink would, to time the output stage).  The models are warmed up on
    real frames of the clip before anything is timed.  ``--repeat N`` runs it
    N times (same pipeline, same warm models) and pools the distributions.
  * the floor: a decode-only pass over the same clip with PyAV, doing what the
    capture process does (decode every frame, convert the analysed 5 fps grid
    frames to RGB at the pipeline's size, resample the audio to 16 kHz mono).
  * the peer: ``fer``'s ``FER(mtcnn=False).detect_emotions`` on the same
    frames the pipeline analysed, in a separate virtual environment
    (``bench/.peer-venv``, created on first use: fer needs TensorFlow).

Everything it measures is written as JSON (``--json``), a markdown report
(stdout, and ``--md``) and a figure (``--plot``).  Progress goes to stderr.
See bench/README.md for what each number means.

``--smoke`` checks that the benchmark still runs (``tests/test_bench_smoke.py``): the first
2 s of the clip, one run, no peer, every report into ``--smoke-dir`` (default a new temporary
folder), never ``bench/results/``; exit 0 only when the report holds its headline numbers.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# `python bench/latency.py` puts bench/ first on sys.path, where bench/engines.py would shadow the
# project's `engines` package: drop it and put the repository root first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(ROOT))
_smoke: Any = importlib.import_module("bench._smoke")  # --smoke (bench/ is a namespace package under ROOT)
PEER_SCRIPT = BENCH / "fer_peer.py"
PEER_VENV = BENCH / ".peer-venv"
#: What the peer environment holds.  fer is installed without its declared dependencies
#: (facenet-pytorch, moviepy, pandas... are not used by FER(mtcnn=False)); tensorflow-cpu
#: 2.20 still has tf.lite.Interpreter, which fer's default (TFLite) classifier needs;
#: setuptools<81 keeps pkg_resources, which fer imports.
PEER_FER = "fer==25.10.3"
PEER_DEPS = ("tensorflow-cpu==2.20.0", "opencv-python-headless<5", "pillow", "requests", "setuptools<81")
PEER_WARMUP = 3
#: Timed passes of the peer over the frames (pooled): its per-frame time varies from run to run.
PEER_PASSES = 3
#: Untimed passes of the face models over real frames before timing (STYLE.md 12).
WARMUP_FRAMES = 10
#: Decode-only passes (the median is used).
DECODE_PASSES = 3
#: Passes of the face analysis alone over the analysed frames (for the peer comparison).
ISOLATED_PASSES = 3
#: How often the capture process's memory is sampled, seconds.
SAMPLE_S = 0.05
#: --smoke: seconds of the clip analysed (one window), and the figures it must produce.
SMOKE_S = 2.0
SMOKE_NUMBERS = (
    "real_time_factor",
    "busy_factor",
    "latency_ms/p95",
    "stages_ms/per_frame/face total/median",
    "decode_only/wall_s",
    "peak_rss_mb",
)

PACKAGES = {
    "numpy": "numpy",
    "onnxruntime": "onnxruntime",
    "mediapipe": "mediapipe",
    "av": "av",
    "pyzmq": "pyzmq",
    "opencv": ("opencv-contrib-python", "opencv-python", "opencv-python-headless"),
    "onnx": "onnx",
    "tensorrt": "tensorrt",
    "matplotlib": "matplotlib",
    "psutil": "psutil",
}


def log(msg: str) -> None:
    sys.stderr.write(f"[latency] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- statistics
def dist(values) -> dict | None:
    """median / p95 / max (and mean, min, n) of a list of numbers."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return None
    return {
        "n": int(a.size),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
        "min": float(a.min()),
        "mean": float(a.mean()),
    }


def quantiles(values) -> dict | None:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return None
    return {
        "n": int(a.size),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
        "min": float(a.min()),
    }


def frame_key(img: np.ndarray) -> int:
    """Cheap fingerprint of a frame (a sparse pixel sample), to check the peer gets the same frames."""
    return zlib.crc32(np.ascontiguousarray(img[::17, ::13]).tobytes())


# --------------------------------------------------------------------------- machine and versions
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    gpu = None
    if shutil.which("nvidia-smi"):
        try:
            gpu = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.strip()
                or None
            )
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "loadavg_1_5_15_at_report": load,
        "usable_cpus": usable,
        "memory_gb": mem_gb,
        "gpu": gpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for key, dists in PACKAGES.items():
        out[key] = None
        for d in (dists,) if isinstance(dists, str) else dists:
            try:
                out[key] = version(d)
                break
            except PackageNotFoundError:
                continue
    out["cer-stream"] = _smoke.revision().label("short", "+dirty")
    return out


def git_revision() -> tuple[str | None, bool]:
    """``(short revision, dirty)`` (bench/_smoke.py's :func:`revision`: dirty means tracked files
    differ from HEAD, new files do not count); ``(None, False)`` outside a git checkout.  The form
    bench/scale.py reads."""
    rev = _smoke.revision()
    return rev.short, rev.dirty


# --------------------------------------------------------------------------- resources
def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in kB (Linux), {} when unreadable."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


def self_peak_rss_mb() -> float:
    st = _proc_status(os.getpid())
    if "VmHWM" in st:
        return st["VmHWM"] / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def cpu_times() -> tuple[float, float]:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


def system_cpu() -> tuple[float, float] | None:
    """Busy and steal CPU seconds of the whole machine so far (Linux /proc/stat), or None."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq = f[:7]
    steal = f[7] if len(f) > 7 else 0
    return (user + nice + system + irq + softirq + steal) / hz, steal / hz


class ChildSampler(threading.Thread):
    """Samples the capture processes' peak RSS while they live (their pids come from the
    pipeline's ``on_capture`` observer hook)."""

    def __init__(self) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.pids: list[int] = []
        self.peak_kb: dict[int, int] = {}
        self.stop_event = threading.Event()

    def on_capture(self, pids: list[int]) -> None:
        self.pids = list(pids)

    def run(self) -> None:
        while not self.stop_event.wait(SAMPLE_S):
            for pid in list(self.pids):
                hwm = _proc_status(pid).get("VmHWM")
                if hwm:
                    self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), hwm)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(1.0)


# --------------------------------------------------------------------------- probes around the real objects
@dataclass
class FrameTiming:
    index: int
    pts: float
    detect_ms: float = 0.0
    validate_ms: float = 0.0
    validations: int = 0
    locate_ms: float = 0.0  # detection + validation
    emotion_ms: float = 0.0  # this frame's share of its batch
    other_ms: float = 0.0  # this frame's share of the rest of its call (following the face, cropping)
    found: bool = False
    key: int = 0


@dataclass
class CallTiming:
    frames: list[FrameTiming]
    wall_ms: float
    emotion_ms: float
    crops: int
    end_ns: int  # monotonic time the call returned


class FaceProbe:
    """An observer of the pipeline (``PipelineOptions.observers``): keeps each face-analysis call
    the analyzer reports (per-frame detection and validation times, the batch's emotion time,
    the results) and each stage time (per window: every modality, fusion)."""

    def __init__(self) -> None:
        self.calls: list[CallTiming] = []
        self.results: dict[int, object] = {}
        self.stage_ms: dict[str, list[float]] = {}

    def on_face_call(self, call) -> None:
        frames = []
        # the call's time outside detection, validation and the emotion batch (following the face
        # from its previous box, the analyzer's own work), shared by its frames
        located = sum(t.detect_ms + t.validate_ms for t in call.times)
        other = max(0.0, call.wall_ms - located - call.emotion_ms) / max(1, len(call.times))
        for t, (_index, _pts, img) in zip(call.times, call.frames):
            frames.append(
                FrameTiming(
                    t.index,
                    t.pts,
                    detect_ms=t.detect_ms,
                    validate_ms=t.validate_ms,
                    validations=t.validations,
                    locate_ms=t.detect_ms + t.validate_ms,
                    emotion_ms=t.emotion_ms,
                    other_ms=other,
                    found=t.found,
                    key=frame_key(img),
                )
            )
        for r in call.results:
            self.results[r.index] = r
        self.calls.append(CallTiming(frames, call.wall_ms, call.emotion_ms, call.crops, call.end_ns))

    def on_stage(self, name: str, ms: float, window_index, frames) -> None:
        if name not in ("detect", "validate", "emotion", "face_analysis"):
            self.stage_ms.setdefault(name, []).append(ms)

    def take_calls(self) -> list[CallTiming]:
        calls, self.calls = self.calls, []
        return calls

    def take_stages(self) -> dict[str, list[float]]:
        stages, self.stage_ms = self.stage_ms, {}
        return stages


class CollectingSink:
    """Keeps every record with its arrival time; serialises each as the JSON lines sink would
    (into memory) to time the output stage, charged to the window the record follows."""

    def __init__(self) -> None:
        from stream.sinks.outputs import dumps

        self._dumps = dumps
        self.records: list[dict] = []
        self.arrival_ns: list[int] = []
        self.output_ms: dict[int, float] = {}
        self._window: int | None = None
        self.buf = io.StringIO()

    def write(self, record: dict) -> None:
        now = time.monotonic_ns()
        if record.get("type") == "window":
            self._window = len([r for r in self.records if r.get("type") == "window"])
        t = time.perf_counter()
        self.buf.write(self._dumps(record) + "\n")
        ms = (time.perf_counter() - t) * 1e3
        if self._window is not None:
            self.output_ms[self._window] = self.output_ms.get(self._window, 0.0) + ms
        self.records.append(record)
        self.arrival_ns.append(now)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- the pipeline
def build_pipeline(args, observers: list) -> tuple[object, dict]:
    """The command line's pipeline (``stream.Pipeline`` with its default options, or the face
    modality alone with --face-only) for --profile, --face-model, --backend, --device and
    --face-weights, so the benchmark runs what ``cer-stream`` runs."""
    from stream import Pipeline, PipelineOptions, RuntimeOptions
    from stream.cli.flags import face_options

    options = PipelineOptions(
        face=face_options(args),  # the same mapping of the model flags as cer-stream's
        runtime=RuntimeOptions(realtime=args.realtime, max_side=args.max_side, progress=False),
        modalities=["face"] if args.face_only else PipelineOptions().modalities,
        observers=observers,
    )
    notes: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    keep = _Keep(level=logging.INFO)
    logging.getLogger("cer_stream.engines").addHandler(keep)
    try:
        pipeline = Pipeline(options)
    finally:
        logging.getLogger("cer_stream.engines").removeHandler(keep)
    model = pipeline.face.model
    engine = getattr(model, "engine", None)
    used = type(engine).__name__ if engine is not None else type(model).__name__
    if engine is None and hasattr(model, "members"):  # the ensemble: name its members' engines
        used = "+".join(sorted({type(m.engine).__name__ for m in model.members}))
    info = {
        "requested": args.backend,
        "device": args.device,
        "profile": args.profile,
        "engine": used,
        "labels": list(model.labels),
        "providers": list(getattr(engine, "providers", []) or []),
        "intra_op_threads": getattr(engine, "intra_op_threads", None),
        "model": getattr(model, "name", None),
        "model_path": str(getattr(model, "path", "")),
        "engine_notes": notes,
    }
    if args.backend == "tensorrt" and "trt" not in used.lower() and "tensorrt" not in used.lower():
        note = (
            f"--backend tensorrt asked for, but the emotion model ran on {used} "
            f"({', '.join(info['providers']) or 'no providers'}): these figures are not TensorRT's"
        )
        log("WARNING: " + note)
        info["note"] = note
    return pipeline, info


def model_set(face, backend_info: dict, modality_names: list[str]) -> dict:
    meta = {}
    eng = getattr(face.model, "engine", None)
    if eng is not None:
        meta = {k: v for k, v in getattr(eng, "metadata", {}).items() if k in ("cer.name", "cer.source")}
    validate = getattr(face.detector, "_mesh", None) is not None
    return {
        "modalities": list(modality_names),
        "face_detection": "MediaPipe BlazeFace (short-range first, full-range when it finds nothing)",
        "face_validation": (
            "MediaPipe FaceMesh (static_image_mode, refine_landmarks, on the box grown 50 %; a steady target re-validated every 5th frame)"
            if validate
            else "off"
        ),
        "face_following": (
            "a steady target followed from its previous box (normalised cross-correlation), detected and "
            "validated every 5th analysed frame and when lost"
            if getattr(face.tracker, "follower", None) is not None
            else "off"
        ),
        "face_emotion": {
            "model": meta.get("cer.name") or backend_info.get("model"),
            "source": meta.get("cer.source"),
            "file": backend_info.get("model_path"),
            "profile": backend_info.get("profile"),
        },
    }


def warm_up(face, video: str, max_side: int) -> int:
    """Run the face models over the first analysed frames of the clip (single frames and
    batches of 10 and 20, the shapes the analyzer uses), then forget all state."""
    frames = decode_pass(video, max_side, keep_frames=True, limit=WARMUP_FRAMES)["frames"]
    if not frames:
        return 0
    batch = [(i, 0.0, img) for i, img in enumerate(frames)]
    for item in batch[:3]:
        face.analyse([item])
    face.analyse(batch)
    face.analyse((batch * 2)[:20])
    face.reset_states()
    for k in face.timings:
        face.timings[k] = 0.0
    return len(frames)


@dataclass
class RunResult:
    end: dict
    records: list[dict]
    arrival_ns: list[int]
    output_ms: dict[int, float]
    calls: list[CallTiming]
    modality_ms: dict[str, list[float]]
    stage_ms: dict[str, list[float]]
    wall_s: float
    startup_s: float
    cpu_self_s: float
    cpu_children_s: float
    capture_peak_mb: float | None
    analyzer_peak_mb: float
    face_timings: dict[str, float]
    face_counts: dict[str, int] = field(default_factory=dict)  # detections, validations, frames followed
    background_cpu_s: float | None = None
    steal_s: float | None = None


def run_pipeline(video: str, pipeline, probe: FaceProbe, *, realtime: bool) -> RunResult:
    from stream import FileSource

    face = pipeline.face
    sink = CollectingSink()  # on the analyzer's thread, like the command line's sinks
    pipeline.sinks = [sink]
    face.reset_states()
    t_face0 = dict(face.timings)
    c_face0 = dict(getattr(face, "counts", {}))
    sampler = ChildSampler()
    probe.take_stages()  # anything left from an earlier run
    old = signal.signal(signal.SIGINT, lambda *_: pipeline.stop())
    cpu0 = cpu_times()
    sys0 = system_cpu()
    t0 = time.monotonic()
    t0_ns = time.monotonic_ns()
    pipeline.options.observers.append(sampler)
    sampler.start()
    end = None
    try:
        for rec in pipeline.run(FileSource(video, realtime=realtime)):
            if rec.type == "end":
                end = rec.to_dict()
    finally:
        sampler.stop()
        pipeline.options.observers.remove(sampler)
        signal.signal(signal.SIGINT, old)
    wall = time.monotonic() - t0
    stages = probe.take_stages()
    modalities = next(r["modalities"] for r in sink.records if r.get("type") == "start")
    cpu1 = cpu_times()  # capture processes are joined by now, so RUSAGE_CHILDREN holds them
    sys1 = system_cpu()
    ours = (cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1])
    # what the rest of the machine did meanwhile (other programs compete for the same cores)
    background = (max(0.0, (sys1[0] - sys0[0]) - ours), sys1[1] - sys0[1]) if sys0 and sys1 else (None, None)
    start_ns = next(t for r, t in zip(sink.records, sink.arrival_ns) if r.get("type") == "start")
    # Sampled VmHWM, not RUSAGE_CHILDREN's ru_maxrss: a spawned child is forked from this
    # process before it execs, and Linux keeps that pre-exec high-water mark (this process's
    # whole RSS) in the child's ru_maxrss.
    child_peak = max(sampler.peak_kb.values()) / 1024 if sampler.peak_kb else None
    return RunResult(
        end=end,
        records=sink.records,
        arrival_ns=sink.arrival_ns,
        output_ms=sink.output_ms,
        calls=[],
        modality_ms={name: stages.get(name, []) for name in modalities},
        stage_ms=stages,
        wall_s=wall,
        startup_s=(start_ns - t0_ns) / 1e9,
        cpu_self_s=cpu1[0] - cpu0[0],
        cpu_children_s=cpu1[1] - cpu0[1],
        capture_peak_mb=child_peak,
        analyzer_peak_mb=self_peak_rss_mb(),
        face_timings={k: face.timings[k] - t_face0.get(k, 0.0) for k in face.timings},
        face_counts={k: v - c_face0.get(k, 0) for k, v in getattr(face, "counts", {}).items()},
        background_cpu_s=background[0],
        steal_s=background[1],
    )


# --------------------------------------------------------------------------- the floor: decode only
def decode_pass(video: str, max_side: int, *, keep_frames: bool = False, limit: int | None = None) -> dict:
    """What the capture process does, minus ZeroMQ: decode every video frame, convert the
    5 fps grid frames to RGB at the pipeline's size, resample the audio to 16 kHz mono."""
    import av

    from stream.core.messages import AUDIO_RATE
    from stream.core.windows import SAMPLE_FPS, SampleClock
    from stream.io.capture import scaled_size

    t_open = time.perf_counter()
    container = av.open(video, mode="r")
    try:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        a_stream = container.streams.audio[0] if container.streams.audio else None
        fps = float(vs.average_rate or vs.guessed_rate or 0) or 25.0
        out_w, out_h = scaled_size(vs.codec_context.width, vs.codec_context.height, max_side)
        clock = SampleClock(SAMPLE_FPS)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE) if a_stream else None
        origin = None
        n = 0
        last_t = 0.0
        kept: list[np.ndarray] = []
        analysed: list[dict] = []
        samples = 0
        open_s = time.perf_counter() - t_open
        t0 = time.perf_counter()
        mark = t0
        streams = [vs] + ([a_stream] if a_stream else [])
        for packet in container.demux(*streams):
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError:
                continue
            for frame in decoded:
                if packet.stream.type == "video":
                    ft = frame.time if frame.time is not None else n / fps
                    if origin is None:
                        origin = ft
                    t = ft - origin
                    index = n
                    n += 1
                    last_t = t
                    if clock(t):
                        img = frame.to_ndarray(format="rgb24", width=out_w, height=out_h)
                        now = time.perf_counter()
                        analysed.append({"index": index, "pts": t, "ms": (now - mark) * 1e3, "key": frame_key(img)})
                        mark = now
                        if keep_frames:
                            kept.append(img)
                        if limit is not None and len(analysed) >= limit:
                            return {"frames": kept, "analysed": analysed}
                elif resampler is not None and origin is not None:
                    for rf in resampler.resample(frame):
                        samples += rf.to_ndarray().reshape(-1).astype(np.float32, copy=False).shape[0]
        if resampler is not None:
            for rf in resampler.resample(None):
                samples += rf.to_ndarray().shape[-1]
        total = time.perf_counter() - t0
    finally:
        container.close()
    return {
        "frames": kept,
        "analysed": analysed,
        "decoded_frames": n,
        "wall_s": total,
        "open_s": open_s,
        "media_s": (last_t + 1.0 / fps) if n else 0.0,
        "fps": fps,
        "width": out_w,
        "height": out_h,
        "audio_samples": samples,
        "tail_ms": (time.perf_counter() - mark) * 1e3,
    }


# --------------------------------------------------------------------------- the peer
class PeerUnavailable(RuntimeError):
    pass


def ensure_peer_venv(venv: Path = PEER_VENV) -> Path:
    """The peer environment's python, creating the environment on first use."""
    py = venv / "bin" / "python"
    stamp = venv / ".cer-bench-peer"
    spec = " ".join((PEER_FER,) + PEER_DEPS)
    if py.exists() and stamp.exists() and stamp.read_text().strip() == spec:
        return py
    log(f"creating the peer environment {venv} ({spec}); this takes a minute or two, once")
    if venv.exists():
        shutil.rmtree(venv)
    base = getattr(sys, "_base_executable", None) or sys.executable
    steps = [
        [base, "-m", "venv", str(venv)],
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", PEER_FER],
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER_DEPS],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise PeerUnavailable(f"`{shlex.join(cmd[-3:])}` failed: {' | '.join(tail)}")
    stamp.write_text(spec + "\n")
    return py


def run_peer(frames: list[np.ndarray], tmp: Path) -> dict:
    py = ensure_peer_venv()
    npy = tmp / "peer_frames.npy"
    np.save(npy, np.stack(frames))
    out = tmp / "peer.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""}
    cmd = [
        str(py),
        str(PEER_SCRIPT),
        str(npy),
        "--out",
        str(out),
        "--warmup",
        str(PEER_WARMUP),
        "--repeat",
        str(PEER_PASSES),
    ]
    log(f"peer: fer on {len(frames)} frames ({frames[0].shape[1]}x{frames[0].shape[0]})")
    sys0, cpu0, t0 = system_cpu(), cpu_times(), time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    sys1, cpu1, wall = system_cpu(), cpu_times(), time.monotonic() - t0
    if proc.returncode != 0 or not out.exists():
        tail = proc.stderr.strip().splitlines()[-5:]
        raise PeerUnavailable(f"the peer script failed (exit {proc.returncode}): {' | '.join(tail)}")
    rep = json.loads(out.read_text())
    if sys0 and sys1 and wall > 0:
        ours = (cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1])
        rep["background_cores"] = max(0.0, (sys1[0] - sys0[0]) - ours) / wall
    return rep


# --------------------------------------------------------------------------- analysis
def analyse_run(run: RunResult, decode: dict | None, realtime: bool) -> dict:
    """Per-window and per-frame rows from one pipeline run."""
    recs = run.records
    windows = [(r, t) for r, t in zip(recs, run.arrival_ns) if r.get("type") == "window"]
    start_ns = next(t for r, t in zip(recs, run.arrival_ns) if r.get("type") == "start")
    dec_ms = {d["index"]: d["ms"] for d in decode["analysed"]} if decode else {}
    calls = run.calls
    fusion = run.stage_ms.get("fusion", [])
    rows = []
    call_i = 0
    for k, (rec, t_emit) in enumerate(windows):
        # The analyzer analyses frames as they arrive (several calls per window) and at the
        # window's close; a window is charged with the calls made since the previous emission.
        mine = []
        while call_i < len(calls) and calls[call_i].end_ns <= t_emit:
            mine.append(calls[call_i])
            call_i += 1
        frames = [f for c in mine for f in c.frames]
        row = {
            "window": rec["index"],
            "start": rec["start"],
            "end": rec["end"],
            "analysed_frames": rec.get("analysed_frames"),
            "new_frames": len(frames),
            "label": rec.get("label"),
            "basic_label": rec.get("basic_label"),
            "decode_ms": sum(dec_ms.get(f.index, 0.0) for f in frames) if dec_ms else None,
            "detect_ms": sum(f.detect_ms for f in frames),
            "validate_ms": sum(f.validate_ms for f in frames),
            "emotion_ms": sum(c.emotion_ms for c in mine),
            "face_ms": sum(c.wall_ms for c in mine),
            "face_calls": len(mine),
            "fusion_ms": fusion[k] if k < len(fusion) else None,
            "output_ms": run.output_ms.get(k, 0.0),
            "processing_ms": rec.get("processing_ms"),
            "latency_ms": rec.get("latency_ms"),
        }
        row["face_other_ms"] = row["face_ms"] - row["detect_ms"] - row["validate_ms"] - row["emotion_ms"]
        mod_ms = 0.0
        for name, times in run.modality_ms.items():
            row[f"modality_{name}_ms"] = times[k] if k < len(times) else None
            mod_ms += row[f"modality_{name}_ms"] or 0.0
        # all the analyzer's work for this window, wherever it happened (ahead or at close)
        row["total_ms"] = row["face_ms"] + mod_ms + (row["fusion_ms"] or 0.0) + row["output_ms"]
        if realtime:
            # media clock: a realtime reader starts its clock when it announces the stream,
            # which is when the analyzer emits "start" (within about a millisecond)
            row["latency_after_close_ms"] = (t_emit - start_ns) / 1e6 - rec["end"] * 1e3
        rows.append(row)
    per_frame = []
    for call in calls:
        for f in call.frames:
            per_frame.append(
                {
                    "index": f.index,
                    "pts": f.pts,
                    "found": f.found,
                    "detect_ms": f.detect_ms,
                    "validate_ms": f.validate_ms,
                    "validations": f.validations,
                    "emotion_ms": f.emotion_ms,
                    "other_ms": f.other_ms,
                    "face_ms": f.locate_ms + f.emotion_ms + f.other_ms,
                    "decode_ms": dec_ms.get(f.index) if dec_ms else None,
                    "key": f.key,
                }
            )
    return {"windows": rows, "frames": per_frame}


STAGES_WINDOW = [
    (
        "decode",
        "decode_ms",
        "capture process: decode + RGB conversion of the window's new frames (from the decode-only pass)",
    ),
    ("face detection", "detect_ms", "MediaPipe BlazeFace on the new frames"),
    ("face landmarks/validation", "validate_ms", "MediaPipe FaceMesh on the detected box"),
    ("face emotion", "emotion_ms", "face-emotion model batch (crop + preprocess + inference)"),
    ("face other", "face_other_ms", "tracking, cropping, label mapping"),
    ("face total", "face_ms", "all face analysis of the window"),
    ("fusion", "fusion_ms", "fusion + compound conversion + record"),
    ("output", "output_ms", "JSON serialisation of the window's records"),
    ("window total", "total_ms", "face + modalities + fusion + output (analyzer thread's work)"),
    (
        "at window close",
        "processing_ms",
        "analyzer's processing_ms: work left once the window's data is complete (excl. output)",
    ),
]
STAGES_FRAME = [
    ("decode", "decode_ms"),
    ("face detection", "detect_ms"),
    ("face landmarks/validation", "validate_ms"),
    ("face emotion", "emotion_ms"),
    ("face other (following)", "other_ms"),
    ("face total", "face_ms"),
]


def summarise(
    runs: list[RunResult],
    rows: list[dict],
    frames: list[dict],
    decode: dict | None,
    peer: dict | None,
    peer_error: str | None,
    args,
    backend_info: dict,
    models: dict,
    warm_frames: int,
    isolated: list[float],
) -> dict:
    realtime = args.realtime
    media_s = runs[0].end.get("media_s") or (decode or {}).get("media_s")
    elapsed = [r.end.get("elapsed_s") for r in runs]
    rtf = [e / media_s for e in elapsed if e and media_s]
    busy = [sum(w["total_ms"] for w in rws) / 1e3 for rws in _per_run(rows, runs)]
    analysed = [r.end.get("frames_analysed") for r in runs]
    stages_ms = {"per_window": {}, "per_frame": {}}
    for name, key, _what in STAGES_WINDOW:
        stages_ms["per_window"][name] = dist([w.get(key) for w in rows])
    for name in {k for w in rows for k in w if k.startswith("modality_")}:
        stages_ms["per_window"][name[:-3].replace("_", " ", 1)] = dist([w.get(name) for w in rows])
    for name, key in STAGES_FRAME:
        stages_ms["per_frame"][name] = dist([f.get(key) for f in frames])
    lat = quantiles([w["latency_ms"] for w in rows])
    out = {
        "video": str(args.video),
        "mode": "realtime" if realtime else "as fast as possible",
        "realtime": realtime,
        "repeat": args.repeat,
        "media_s": media_s,
        "windows_per_run": runs[0].end.get("windows"),
        "frames_analysed_per_run": analysed[0],
        "real_time_factor": float(np.median(rtf)) if rtf else None,
        "real_time_factor_runs": rtf,
        "real_time_factor_incl_startup": (float(np.median([r.wall_s for r in runs])) / media_s) if media_s else None,
        "busy_factor": float(np.median([b / media_s for b in busy])) if media_s else None,
        "latency_ms": lat,
        "latency_note": (
            "latency_ms uses the pipeline's own stamps: the capture time of the window's newest sample (analysed "
            "video frame, or audio chunk starting before the window's end) -> emission of the window record. "
            + (
                "Realtime: the file is paced at media speed like a live source. The capture process stamps a video "
                "frame before it sleeps until the frame's media time, and an audio chunk when its packet is "
                "demuxed (the container interleaves audio ahead of or behind video), so stamps can be early or "
                "late against a live clock; latency_after_close_ms measures on the media clock instead: emission "
                "minus the wall time at which the window's end was reached (reader clock start + window end)."
                if realtime
                else "As fast as possible the reader runs ahead of the analyzer (lossless backpressure: the frame "
                "ring holds 64 analysed frames = 12.8 s), so a frame waits in the ring for the windows before "
                "it and this latency is queueing time that grows along the clip; it is not the live latency. "
                "Use --realtime for that."
            )
        ),
        "stages_ms": stages_ms,
        "analysed_fps": float(np.median([a / e for a, e in zip(analysed, elapsed) if a and e]))
        if any(elapsed)
        else None,
        "face_capacity_fps": (
            1e3 / stages_ms["per_frame"]["face total"]["mean"] if stages_ms["per_frame"].get("face total") else None
        ),
        "startup_s": float(np.median([r.startup_s for r in runs])),
        "cpu": {
            "process_s": float(np.median([r.cpu_self_s for r in runs])),
            "children_s": float(np.median([r.cpu_children_s for r in runs])),
            "wall_s": float(np.median([r.wall_s for r in runs])),
        },
        "peak_rss_mb": None,
        "peak_rss_detail_mb": None,
        "machine": machine_info(),
        "versions": versions(),
        "backend": backend_info,
        "model_set": models,
        "warmup": {
            "face_frames": warm_frames,
            "note": "face models run on real frames (single and batches of "
            "10 and 20) before timing; tracker state and timings reset afterwards",
        },
        "command": shlex.join([sys.executable] + sys.argv),
    }
    c = out["cpu"]
    bg = [r.background_cpu_s / r.wall_s for r in runs if r.background_cpu_s is not None and r.wall_s]
    c["background_cores"] = float(np.median(bg)) if bg else None
    c["background_note"] = (
        "CPU the rest of the machine used during the pipeline runs, in cores (median over "
        "runs; /proc/stat busy time minus this benchmark's): other programs on the same "
        "cores slow every figure here"
    )
    c["steal_s"] = (
        float(np.median([r.steal_s for r in runs if r.steal_s is not None])) if runs[0].steal_s is not None else None
    )
    c["total_s"] = c["process_s"] + c["children_s"]
    c["utilisation_of_one_core"] = c["total_s"] / c["wall_s"] if c["wall_s"] else None
    c["utilisation_of_machine"] = (c["total_s"] / c["wall_s"] / (os.cpu_count() or 1)) if c["wall_s"] else None
    if realtime:
        out["latency_after_close_ms"] = quantiles([w.get("latency_after_close_ms") for w in rows])
    an_peak = max(r.analyzer_peak_mb for r in runs)
    cap_peak = max((r.capture_peak_mb or 0.0) for r in runs) or None
    out["peak_rss_mb"] = an_peak + (cap_peak or 0.0)
    out["peak_rss_detail_mb"] = {
        "analyzer": an_peak,
        "capture": cap_peak,
        "note": "sum of the two processes' peaks (VmHWM); the analyzer's includes model loading and the warm-up",
    }
    out["face_timings_s"] = runs[0].face_timings
    out["face_counts"] = runs[0].face_counts
    ends = [r.end for r in runs]
    out["drops"] = ends[-1].get("drops")
    out["windows_skipped"] = sum(e.get("windows_skipped", 0) for e in ends)
    if decode:
        dec_wall = decode["wall_s_median"]
        basis = (
            "analyzer busy time (summed window totals)"
            if realtime
            else "analyzer wall time (first stream item -> end record)"
        )
        pipe = float(np.median(busy)) if realtime else float(np.median(elapsed))
        out["decode_only"] = {
            k: decode[k] for k in ("decoded_frames", "media_s", "fps", "width", "height", "audio_samples", "open_s")
        }
        out["decode_only"].update(
            {
                "wall_s": dec_wall,
                "wall_s_runs": decode["wall_s_runs"],
                "real_time_factor": dec_wall / decode["media_s"] if decode["media_s"] else None,
                "per_analysed_frame_ms": dist([d["ms"] for d in decode["analysed"]]),
            }
        )
        out["decode_only_ratio"] = pipe / dec_wall if dec_wall else None
        out["decode_only_ratio_basis"] = basis
    else:
        out["decode_only_ratio"] = None
    ours_mean = stages_ms["per_frame"]["face total"]["mean"] if stages_ms["per_frame"].get("face total") else None
    ours_med = stages_ms["per_frame"]["face total"]["median"] if stages_ms["per_frame"].get("face total") else None
    if peer is not None:
        pd_ = dist(peer["per_frame_ms"])
        out["peer"] = {
            k: peer.get(k)
            for k in (
                "what",
                "frames",
                "width",
                "height",
                "warmup_calls",
                "repeat",
                "import_s",
                "load_s",
                "cv2_threads",
                "cpu_cores_used",
                "cpu_cores_used_1thread",
                "versions",
                "background_cores",
            )
        }
        out["peer"]["per_frame_ms"] = pd_
        out["peer"]["frames_with_face"] = sum(1 for n in peer["faces"] if n)
        out["peer"]["same_frames"] = peer.get("same_frames")
        out["peer_ratio"] = pd_["mean"] / ours_mean if ours_mean else None
        out["peer_ratio_median"] = pd_["median"] / ours_med if ours_med else None
        if peer.get("per_frame_ms_1thread"):
            p1 = dist(peer["per_frame_ms_1thread"])
            out["peer"]["per_frame_ms_1thread"] = p1
            out["peer_ratio_1thread"] = p1["mean"] / ours_mean if ours_mean else None
        iso = dist(isolated)
        if iso:
            out["ours_alone_per_frame_ms"] = iso
            out["peer_ratio_alone"] = pd_["mean"] / iso["mean"]
        agree = peer.get("agreement")
        if agree is not None:
            out["peer"]["top_emotion_agreement"] = agree
    else:
        out["peer_ratio"] = None
        out["peer_error"] = peer_error
    out["ours_per_frame_ms"] = {
        "mean": ours_mean,
        "median": ours_med,
        "what": "face detection + validation + emotion share + the rest of the call (following), per analysed frame",
    }
    out["targets"] = {
        "real_time_factor<=0.25": (out["real_time_factor"] <= 0.25)
        if out["real_time_factor"] and not realtime
        else None,
        "p95_latency_after_close<=250ms": ((out["latency_after_close_ms"] or {}).get("p95", 1e9) <= 250)
        if realtime and out.get("latency_after_close_ms")
        else None,
        "peer_ratio>=3": (out["peer_ratio"] >= 3) if out.get("peer_ratio") else None,
    }
    out["windows"] = rows
    return out


def _per_run(rows: list[dict], runs: list[RunResult]) -> list[list[dict]]:
    out, i = [], 0
    for r in runs:
        n = r.end.get("windows") or 0
        out.append(rows[i : i + n])
        i += n
    return out


# --------------------------------------------------------------------------- reports
def _f(v, nd=1) -> str:
    """A table cell: ``nd`` decimals for a float, counts and words as they are, a dash for none."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, str)):
        return str(v)
    return f"{v:.{nd}f}"


def markdown(res: dict) -> str:
    L = []
    m, v, b = res["machine"], res["versions"], res["backend"]
    L.append(f"## cer-stream latency: `{Path(res['video']).name}`, {res['mode']}")
    L.append("")
    L.append(f"`{res['command']}`")
    L.append("")
    L.append(
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cpus']} usable), {m['memory_gb']} GB"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
        + f"; {m['os']}; Python {m['python']}"
    )
    L.append("- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
    L.append(
        f"- backend: requested {b['requested']} (device {b.get('device')}, profile {b.get('profile')}), "
        f"emotion model on {b['engine']} "
        f"{'/'.join(b['providers'])} ({b.get('intra_op_threads')} intra-op threads)"
        + (f" — {b['note']}" if b.get("note") else "")
    )
    ms = res["model_set"]
    L.append(
        f"- models: detection {ms['face_detection']}; validation {ms['face_validation']}; emotion "
        f"{ms['face_emotion']['model']}; following {ms.get('face_following', 'off')}; modalities "
        f"{', '.join(ms['modalities'])}"
    )
    if res.get("face_counts"):
        L.append("- face path counts (first run): " + ", ".join(f"{k} {v}" for k, v in res["face_counts"].items()))
    L.append(
        f"- media {res['media_s']} s, {res['windows_per_run']} windows and {res['frames_analysed_per_run']} "
        f"analysed frames per run, {res['repeat']} run(s) pooled; models warmed up on "
        f"{res['warmup']['face_frames']} real frames first"
    )
    L.append("")
    L.append("| headline | value |")
    L.append("|---|---|")
    L.append(
        f"| real-time factor (analyzer wall / media; with process start) | {_f(res['real_time_factor'], 3)}; "
        f"{_f(res['real_time_factor_incl_startup'], 3)} |"
    )
    L.append(f"| busy factor (analyzer work per window, summed / media) | {_f(res['busy_factor'], 3)} |")
    L.append(
        f"| analysed frames per second | {_f(res['analysed_fps'])} (face capacity {_f(res['face_capacity_fps'])}) |"
    )
    lat = res["latency_ms"] or {}
    L.append(
        f"| end-to-end latency, pipeline stamps, ms (p50 / p95 / p99 / max) | "
        f"{_f(lat.get('p50'))} / {_f(lat.get('p95'))} / {_f(lat.get('p99'))} / {_f(lat.get('max'))} |"
    )
    if res["realtime"]:
        for key, what in (("latency_after_close_ms", "latency after the window closes, media clock"),):
            q = res.get(key) or {}
            L.append(
                f"| {what}, ms (p50 / p95 / p99 / max) | {_f(q.get('p50'))} / {_f(q.get('p95'))} / "
                f"{_f(q.get('p99'))} / {_f(q.get('max'))} |"
            )
    L.append(
        f"| decode-only pass, s (RTF) | {_f((res.get('decode_only') or {}).get('wall_s'), 3)} "
        f"({_f((res.get('decode_only') or {}).get('real_time_factor'), 4)}) |"
    )
    L.append(f"| decode_only_ratio ({res.get('decode_only_ratio_basis', '–')}) | {_f(res['decode_only_ratio'], 1)} |")
    peer = res.get("peer")
    if peer:
        L.append(
            f"| peer (fer, Haar + TFLite) per frame, ms (median / p95; other programs' CPU meanwhile) | "
            f"{_f(peer['per_frame_ms']['median'])} / {_f(peer['per_frame_ms']['p95'])}; "
            f"{_f(peer.get('background_cores'), 2)} cores |"
        )
        L.append(
            f"| ours per frame (face total), ms (mean / median) | {_f(res['ours_per_frame_ms']['mean'])} / "
            f"{_f(res['ours_per_frame_ms']['median'])} |"
        )
        L.append(f"| peer_ratio (mean; median) | {_f(res['peer_ratio'], 2)}; {_f(res.get('peer_ratio_median'), 2)} |")
        if peer.get("per_frame_ms_1thread"):
            L.append(
                f"| peer on one OpenCV thread, ms (median); peer_ratio_1thread | "
                f"{_f(peer['per_frame_ms_1thread']['median'])}; {_f(res.get('peer_ratio_1thread'), 2)} |"
            )
        if res.get("ours_alone_per_frame_ms"):
            a_ = res["ours_alone_per_frame_ms"]
            L.append(
                f"| ours alone on the same frames, ms (mean / median); peer_ratio_alone | "
                f"{_f(a_['mean'])} / {_f(a_['median'])}; {_f(res['peer_ratio_alone'], 2)} |"
            )
    else:
        L.append(f"| peer_ratio | – ({res.get('peer_error') or 'not run'}) |")
    c = res["cpu"]
    L.append(
        f"| CPU s: analyzer process / capture process (utilisation of the {m['cores']} cores) | "
        f"{_f(c['process_s'], 2)} / {_f(c['children_s'], 2)} ({_f(100 * (c['utilisation_of_machine'] or 0), 0)} %) |"
    )
    d = res["peak_rss_detail_mb"]
    if c.get("background_cores") is not None:
        L.append(f"| other programs' CPU during the runs, cores (median) | {_f(c['background_cores'], 2)} |")
    L.append(
        f"| peak RSS, MB (analyzer + capture) | {_f(res['peak_rss_mb'], 0)} ({_f(d['analyzer'], 0)} + "
        f"{_f(d['capture'], 0)}) |"
    )
    L.append(f"| startup (run() -> start record), s | {_f(res['startup_s'], 2)} |")
    L.append("")
    L.append("Per window (ms; decode runs in the capture process, in parallel with analysis):")
    L.append("")
    L.append("| stage | median | p95 | max |")
    L.append("|---|---:|---:|---:|")
    for name, d_ in res["stages_ms"]["per_window"].items():
        if d_:
            L.append(f"| {name} | {_f(d_['median'], 2)} | {_f(d_['p95'], 2)} | {_f(d_['max'], 2)} |")
    L.append("")
    L.append("Per analysed frame (ms; emotion = the frame's share of its batch):")
    L.append("")
    L.append("| stage | median | p95 | max |")
    L.append("|---|---:|---:|---:|")
    for name, d_ in res["stages_ms"]["per_frame"].items():
        if d_:
            L.append(f"| {name} | {_f(d_['median'], 2)} | {_f(d_['p95'], 2)} | {_f(d_['max'], 2)} |")
    L.append("")
    L.append("Windows:")
    L.append("")
    head = "| run.window | span s | new frames | face ms | fusion ms | output ms | latency ms |"
    sep = "|---|---|---:|---:|---:|---:|---:|"
    if res["realtime"]:
        head += " after close ms |"
        sep += "---:|"
    L.append(head)
    L.append(sep)
    run = 0
    for i, w in enumerate(res["windows"]):
        if i and w["window"] <= res["windows"][i - 1]["window"]:
            run += 1
        line = (
            f"| {run}.{w['window']} | {w['start']:g}–{w['end']:g} | {w['new_frames']} | {_f(w['face_ms'])} | "
            f"{_f(w['fusion_ms'], 2)} | {_f(w['output_ms'], 2)} | {_f(w['latency_ms'])} |"
        )
        if res["realtime"]:
            line += f" {_f(w.get('latency_after_close_ms'))} |"
        L.append(line)
    L.append("")
    L.append(res["latency_note"])
    L.append("")
    t = res["targets"]
    L.append(
        "Targets (default CPU profile): "
        + "; ".join(f"{k}: {_f(val) if val is not None else 'n/a in this mode'}" for k, val in t.items())
    )
    return "\n".join(L) + "\n"


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["windows"]
    x = np.arange(len(rows))
    labels = []
    run = 0
    for i, w in enumerate(rows):
        if i and w["window"] <= rows[i - 1]["window"]:
            run += 1
        labels.append(f"{run}.{w['window']}")
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(7, 0.5 * len(rows) + 4), 7), sharex=True)
    lat = [w["latency_ms"] or 0 for w in rows]
    if res["realtime"]:
        ax1.bar(x - 0.2, lat, 0.4, label="pipeline stamps")
        ax1.bar(
            x + 0.2, [w.get("latency_after_close_ms") or 0 for w in rows], 0.4, label="after window close (media clock)"
        )
        ax1.axhline(250, color="r", lw=1, ls="--", label="target p95 250 ms")
    else:
        ax1.bar(x, lat, 0.6, label="pipeline stamps (queueing: reader runs ahead)")
    ax1.set_ylabel("end-to-end latency, ms")
    ax1.legend(fontsize=8)
    ax1.set_title(
        f"{Path(res['video']).name}, {res['mode']}: RTF {_f(res['real_time_factor'], 3)}, "
        f"peer ratio {_f(res.get('peer_ratio'), 1)}",
        fontsize=10,
    )
    bottom = np.zeros(len(rows))
    for name, key in (
        ("face detection", "detect_ms"),
        ("landmarks/validation", "validate_ms"),
        ("emotion", "emotion_ms"),
        ("face other", "face_other_ms"),
        ("fusion", "fusion_ms"),
        ("output", "output_ms"),
    ):
        vals = np.array([max(0.0, w.get(key) or 0.0) for w in rows])
        ax2.bar(x, vals, 0.6, bottom=bottom, label=name)
        bottom += vals
    dec = [w.get("decode_ms") for w in rows]
    if any(d is not None for d in dec):
        ax2.plot(x, [d or 0 for d in dec], "k.--", label="decode (capture process, parallel)")
    top = max([float(bottom.max()) if len(bottom) else 0.0] + [d or 0.0 for d in dec])
    ax2.set_ylim(0, top * 1.45 or 1.0)  # room for the legend
    ax2.set_ylabel("analyzer time per window, ms")
    ax2.set_xticks(x, labels, fontsize=8)
    ax2.set_xlabel("run.window")
    ax2.legend(fontsize=8, ncol=3, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/latency.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--video",
        help="video file (the same clip is decoded for the floor and the peer); with --smoke, default the sample",
    )
    p.add_argument("--realtime", action="store_true", help="pace the file at media speed, as a live source")
    p.add_argument("--json", metavar="OUT.json")
    p.add_argument("--md", metavar="OUT.md")
    p.add_argument("--plot", metavar="OUT.png")
    p.add_argument("--repeat", type=int, default=1, help="pipeline runs, pooled (default 1)")
    p.add_argument("--no-peer", action="store_true", help="skip the fer peer (and its virtual environment)")
    p.add_argument(
        "--face-only",
        action="store_true",
        help="run the face modality alone (default: the CLI's full modality set, ASR included)",
    )
    p.add_argument("--max-side", type=int, default=960, help="frame size limit, as the CLI's --max-side (default 960)")
    from stream.cli.flags import add_model_args

    add_model_args(p)  # --profile, --face-weights, --backend, --device: the same as cer-stream's
    _smoke.add_args(p, f"the first {SMOKE_S:g} s of the clip, one run, no peer")
    args = p.parse_args(argv)
    if args.smoke:
        _smoke.refuse_outputs(p, args, ("json", "md", "plot"))
        args.video = args.video or str(_smoke.SAMPLE)
    if args.video is None:
        p.error("the following arguments are required: --video")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if not Path(args.video).is_file():
        p.error(f"no such file: {args.video}")
    return args


def smoke_setup(args) -> Path:
    """--smoke: the clip cut to :data:`SMOKE_S` seconds, one run, no peer (its environment needs
    PyPI once; bench/fer_peer.py --smoke checks the peer's script), every report written into the
    smoke folder."""
    folder = _smoke.out_dir("latency", args.smoke_dir)
    args.video = str(_smoke.short_clip(folder / "clip.mp4", SMOKE_S, Path(args.video)))
    args.repeat, args.no_peer = 1, True
    args.json, args.md, args.plot = (str(folder / f"latency.{ext}") for ext in ("json", "md", "png"))
    return folder


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.smoke:
        return measure(args)
    try:
        folder = smoke_setup(args)
    except ValueError as exc:
        log(f"error: {exc}")
        return 2
    status = measure(args)
    if status != 0:
        return status
    return _smoke.finish("latency", json.loads(Path(args.json).read_text()), SMOKE_NUMBERS, folder)


def measure(args) -> int:
    """The benchmark itself: models, warm-up, the runs, the floor, the peer and the reports."""
    from stream.core.logs import setup_logging, silence_native

    silence_native()  # MediaPipe/TFLite/ORT quieted per library, as the command line does
    setup_logging("error")  # warnings become the runs' warning records, as in a stream run
    log(f"loading models (backend {args.backend})")
    probe = FaceProbe()
    try:
        pipeline, backend_info = build_pipeline(args, [probe])
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        log(f"error: {exc}")
        return 2
    face = pipeline.face
    isolated: list[float] = []
    ours_res: dict[int, object] = {}
    try:
        warm = warm_up(face, args.video, args.max_side)
        log(f"warmed up on {warm} frames")
        runs: list[RunResult] = []
        for i in range(args.repeat):
            log(f"pipeline run {i + 1}/{args.repeat} ({'realtime' if args.realtime else 'as fast as possible'})")
            r = run_pipeline(args.video, pipeline, probe, realtime=args.realtime)
            r.calls = probe.take_calls()
            runs.append(r)
            e = r.end
            log(
                f"  {e.get('windows')} windows, {e.get('frames_analysed')} frames analysed, "
                f"elapsed {e.get('elapsed_s', 0):.2f} s, RTF {e.get('real_time_factor') or 0:.3f}"
            )
        models = model_set(face, backend_info, list(runs[0].modality_ms))
        ours_res = dict(probe.results)

        log(f"decode-only pass x{DECODE_PASSES}")
        passes = [decode_pass(args.video, args.max_side, keep_frames=(i == 0)) for i in range(DECODE_PASSES)]
        walls = [p_["wall_s"] for p_ in passes]
        decode = passes[int(np.argsort(walls)[len(walls) // 2])]
        decode["wall_s_median"] = float(np.median(walls))
        decode["wall_s_runs"] = walls
        first = passes[0]
        # the frames the pipeline analysed, taken from the identical decode path (checked below)
        by_index = {d["index"]: (d, img) for d, img in zip(first["analysed"], first["frames"])}
        ours = analyse_run(runs[0], None, args.realtime)["frames"]
        chosen = [(f["index"], by_index[f["index"]]) for f in ours if f["index"] in by_index]
        if not args.no_peer and chosen:
            # our face analysis alone on those frames, one frame per call, nothing else running:
            # the like-for-like figure for the peer, which also runs alone
            log(f"face analysis alone on the same {len(chosen)} frames x{ISOLATED_PASSES}")
            for _ in range(ISOLATED_PASSES):
                face.reset_states()
                for index, (d, img) in chosen:
                    t = time.perf_counter()
                    face.analyse([(index, d["pts"], img)])
                    isolated.append((time.perf_counter() - t) * 1e3)
    finally:
        pipeline.close()

    per_window, per_frame = [], []
    for r in runs:
        a = analyse_run(r, decode, args.realtime)
        per_window += a["windows"]
        per_frame += a["frames"]

    peer, peer_error = None, None
    if args.no_peer:
        peer_error = "skipped (--no-peer)"
    elif not chosen:
        peer_error = "no analysed frames to give the peer"
    else:
        same = sum(1 for f in ours if f["index"] in by_index and by_index[f["index"]][0]["key"] == f["key"])
        tmp = Path(tempfile.mkdtemp(prefix="cer-bench-"))
        try:
            peer = run_peer([img for _i, (_d, img) in chosen], tmp)
            peer["same_frames"] = f"{same}/{len(ours)} frames identical to the pipeline's (sampled checksum)"
            peer["agreement"] = _agreement([ours_res.get(i) for i, _ in chosen], peer, backend_info["labels"])
        except PeerUnavailable as exc:
            peer_error = str(exc)
            log(f"peer unavailable: {exc}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for p_ in passes:
        p_.pop("frames", None)

    res = summarise(runs, per_window, per_frame, decode, peer, peer_error, args, backend_info, models, warm, isolated)
    md = markdown(res)
    sys.stdout.write(md)
    sys.stdout.flush()
    from stream.sinks.outputs import dumps

    _smoke.write_results(
        Path(args.json) if args.json else None, res, Path(args.md) if args.md else None, md, dumps=dumps
    )
    if args.plot:
        plot(res, args.plot)
    log("done" + "".join(f"; wrote {p_}" for p_ in (args.json, args.md, args.plot) if p_))
    return 0


def _agreement(ours: list, peer: dict, labels: tuple[str, ...]) -> dict:
    """Top-emotion agreement on frames where both found a face (fer's label names)."""
    both = same = 0
    for r, top in zip(ours, peer["top_emotion"]):
        if r is None or not getattr(r, "found", False) or getattr(r, "raw", None) is None or top is None:
            continue
        both += 1
        same += labels[int(np.argmax(r.raw))] == top
    return {"frames_both_found_face": both, "same_top_emotion": same}


if __name__ == "__main__":
    sys.exit(main())
