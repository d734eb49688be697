"""The analyzer: capture processes → ring buffers → 4 s windows → modalities →
fusion → compound → timeline → sinks.

One analyzer handles one stream.  It owns its capture processes: they are
started here, stopped here (SIGTERM, then SIGKILL after a grace period), and
also die with this process if it is killed outright.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stream.core import messages as m
from stream.io.capture import CaptureConfig, capture_main
from stream.fusion.compound import normalise
from stream.modalities.face import FaceAnalyzer, FaceCache
from stream.fusion.fuser import Fuser
from stream.modalities.base import FaceModality, Modality, ModalityOutput, WindowInput
from stream.core.labels import BASIC, COMPOUND
from stream.io.receiver import Receiver, SourceState
from stream.core.redact import redact
from stream.io.ringbuffer import BLOCK, DROP_OLDEST, AudioRing, FrameRing
from stream.sinks.outputs import Sink
from stream.runtime.timeline import FrameRow, Timeline
from stream.core.windows import EPS, HOP_S, SAMPLE_FPS, WINDOW_S, Window, final_before, full_window, plan_windows

#: Analysed frames the ring holds (12.8 s at 5 fps: three windows' worth).
FRAME_RING = 64
STARTUP_GRACE_S = 5.0
#: How long a live window waits for late audio once its video is complete.
AUDIO_GRACE_S = 0.5
#: File mode: how much audio after a window is handed to the modalities with it (``shared["audio_ahead"]``).
AUDIO_AHEAD_S = 4.0


class StartupError(RuntimeError):
    """The stream could not start (bad file, unreachable URL, no camera...)."""


@dataclass
class Source:
    kind: str  # "video" | "rtsp" | "camera"
    target: str
    mic: str | None = None  # microphone device ("default") to add, camera only
    audio: bool = True

    @property
    def name(self) -> str:
        if self.kind == "video":
            return Path(self.target).stem
        return "camera" + str(self.target) if self.kind == "camera" else "rtsp"

    def describe(self) -> str:
        return redact(self.target if self.kind != "camera" else f"camera {self.target}")


@dataclass
class Options:
    realtime: bool = False  # pace a file at media speed (and treat it as live)
    max_side: int = 960
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    compound: str = "ppa"  # ppa | rule1 | rule2 | pfsa
    emit_frames: bool = True
    progress: bool = False


@dataclass
class RunStats:
    windows: int = 0
    windows_skipped: int = 0
    frames_analysed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    stage_ms: dict[str, list[float]] = field(default_factory=dict)

    def stage(self, name: str, ms: float) -> None:
        self.stage_ms.setdefault(name, []).append(ms)


class CaptureProcess:
    """A capture process started with ``spawn`` (no state inherited from the analyzer)."""

    def __init__(self, cfg: CaptureConfig) -> None:
        ctx = mp.get_context("spawn")
        self.proc = ctx.Process(target=capture_main, args=(cfg,), name=f"cer-capture-{cfg.source}", daemon=True)

    def start(self) -> None:
        self.proc.start()

    def stop(self, grace_s: float = 3.0) -> None:
        if self.proc.pid is None:
            return
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(grace_s)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(1.0)


class Analyzer:
    def __init__(self, source: Source, sinks: list[Sink], *, options: Options | None = None,
                 face: FaceAnalyzer | None = None, modalities: list[Modality] | None = None,
                 fuser: Fuser | None = None, features_out: Sink | None = None,
                 notes: list[str] | None = None) -> None:
        self.source = source
        self.sinks = sinks
        self.opts = options or Options()
        self.face = face
        self.modalities: list[Modality] = modalities if modalities is not None else [FaceModality()]
        self.fuser = fuser or Fuser([m.name for m in self.modalities], method=self.opts.compound)
        self.features_out = features_out
        self._modality_errors: dict[str, str] = {}
        self._notes = notes if notes is not None else []  # warnings from start-up, emitted after `start`
        self.stop_event = threading.Event()
        self.stats = RunStats()
        self._procs: list[CaptureProcess] = []
        self._tmp: str | None = None
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ output
    def emit(self, record: dict) -> None:
        for s in self.sinks:
            s.write(record)

    def warn(self, message: str, **extra) -> None:
        message = redact(message)
        self.warnings.append(message)
        self.emit({"type": "warning", "message": message, **extra})

    # ------------------------------------------------------------------ run
    @property
    def live(self) -> bool:
        return self.source.kind != "video" or self.opts.realtime

    def stop(self) -> None:
        """Ask the run to end: capture stops, buffered windows are flushed."""
        self.stop_event.set()

    def run(self) -> dict:
        """Analyse the source to its end (or until :meth:`stop`); returns the end record."""
        self._load_modalities()
        self._tmp = tempfile.mkdtemp(prefix="cer-stream-")
        frames_ep = f"ipc://{self._tmp}/frames"
        audio_ep = f"ipc://{self._tmp}/audio"
        want_av_audio = self.source.audio
        want_audio = want_av_audio or self.source.mic is not None
        frames = FrameRing(FRAME_RING, policy=DROP_OLDEST if self.live else BLOCK)
        audio = AudioRing(60.0)
        state = SourceState(av_audio=want_av_audio, mic=self.source.mic is not None)
        receiver = Receiver(frames_endpoint=frames_ep, audio_endpoint=audio_ep if want_audio else None,
                            frames=frames, audio=audio, state=state)
        receiver.start()
        t0_ns = m.now_ns()
        try:
            base = dict(frames_endpoint=frames_ep, max_side=self.opts.max_side, t0_ns=t0_ns,
                        open_timeout_s=self.opts.open_timeout_s, read_timeout_s=self.opts.read_timeout_s,
                        sample_fps=SAMPLE_FPS, parent_pid=os.getpid())
            cfgs = [CaptureConfig(source=self.source.kind, target=str(self.source.target),
                                  audio_endpoint=audio_ep if want_av_audio else None,
                                  want_audio=want_av_audio, realtime=self.opts.realtime, **base)]
            if self.source.mic is not None:
                cfgs.append(CaptureConfig(source="mic", target=self.source.mic, audio_endpoint=audio_ep,
                                          **{**base, "frames_endpoint": None}))
            for cfg in cfgs:
                p = CaptureProcess(cfg)
                p.start()
                self._procs.append(p)
            info = self._wait_start(state)
            return self._loop(info, frames, audio, state, receiver)
        finally:
            for p in self._procs:
                p.stop()
            receiver.stop()
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _load_modalities(self) -> None:
        """Load models before capture starts, so the first windows do not pay for it.  A
        modality that cannot load is reported and stays absent; the stream goes on."""
        for mod in self.modalities:
            load = getattr(mod, "load", None)
            if load is None:
                continue
            try:
                load()
            except Exception as exc:
                self._notes.append(redact(f"modality {mod.name} could not load: {type(exc).__name__}: {exc}"))

    def _wait_start(self, state: SourceState) -> m.StreamInfo:
        deadline = time.monotonic() + self.opts.open_timeout_s + STARTUP_GRACE_S
        with state.cond:
            while state.info is None:
                fatal = [e for e in state.errors if e.fatal and m.VIDEO in e.streams]
                if fatal:
                    raise StartupError(fatal[0].message)
                if self.stop_event.is_set():
                    raise StartupError("interrupted before the stream started")
                if not self._procs[0].proc.is_alive() and state.info is None:
                    state.cond.wait(0.5)  # its last message may still be in flight
                    if state.info is None and not state.errors:
                        raise StartupError(f"capture process for {self.source.describe()} exited "
                                           f"(code {self._procs[0].proc.exitcode})")
                    continue
                if time.monotonic() > deadline:
                    raise StartupError(f"timed out opening {self.source.describe()}")
                state.cond.wait(0.1)
            return state.info

    # ------------------------------------------------------------------ windows
    def _loop(self, info: m.StreamInfo, frames: FrameRing, audio: AudioRing, state: SourceState,
              receiver: Receiver) -> dict:
        fps = info.fps or 25.0
        if self.face is None:
            self.face = FaceAnalyzer()
        timeline = Timeline(fps)
        cache = FaceCache()
        wall0 = time.monotonic()
        modalities = [mod.name for mod in self.modalities]
        self.emit({"type": "start", "source": self.source.kind, "input": self.source.describe(),
                   "fps": fps, "width": info.width, "height": info.height, "duration": info.duration,
                   "live": self.live, "audio": state.audio_expected, "modalities": modalities,
                   "fusion": self.fuser.describe(), "compound_method": self.fuser.method, "window_s": WINDOW_S, "hop_s": HOP_S,
                   "basic_labels": list(BASIC), "compound_labels": list(COMPOUND)})
        for note in list(self._notes) + self.fuser.notes:
            self.warn(note)
        if not state.audio_expected:
            self.warn(f"no audio: {info.audio_note or 'audio disabled'}; running video-only")
        seen_errors = 0
        k = 0
        end_reason = "eof"
        total_frames: int | None = None
        while True:
            w = full_window(k)
            video_ready_at: float | None = None
            while True:
                with state.cond:
                    if video_ready_at is None and self._video_ready(w, frames, state):
                        video_ready_at = time.monotonic()
                    if video_ready_at is not None and self._audio_ready(w, frames, audio, state, video_ready_at):
                        break
                # analyse frames as they arrive, so that little is left when the window closes
                if not self._analyse_ahead(w, frames, cache):
                    with state.cond:
                        state.cond.wait(0.05)
            with state.cond:
                for e in state.errors[seen_errors:]:
                    if not e.fatal or m.VIDEO not in e.streams:
                        self.warn(e.message, stream=",".join(e.streams))
                    seen_errors += 1
                video_done = state.video_done
            stopping = self.stop_event.is_set()
            if video_done or stopping:
                # the stream has ended: its length is known, finish with the tail rule
                if state.video_end is not None:
                    duration, total_frames = state.video_end.duration, state.video_end.frames
                    end_reason = state.video_end.reason if not stopping else "interrupted"
                else:
                    duration = frames.horizon + 1.0 / fps if frames.horizon >= 0 else 0.0
                    fatal = [e.message for e in state.errors if e.fatal and m.VIDEO in e.streams]
                    end_reason = "interrupted" if stopping else ("error" if fatal else "eof")
                    if fatal:
                        self.warn(fatal[0], stream="video")
                if stopping:
                    for p in self._procs:
                        p.stop()
                for tail in plan_windows(duration):
                    if tail.index >= k:
                        self._window(tail, fps, frames, audio, state, cache, timeline, total_frames)
                rows = timeline.finalize(total_frames if total_frames is not None else timeline.pending())
                self._emit_frames(rows, final=True)
                break
            if self.live and frames.horizon - w.end > HOP_S + EPS:
                # fell behind a live source: jump to the newest complete window
                newest = int((frames.horizon - WINDOW_S) // HOP_S)
                if newest > k:
                    self.stats.windows_skipped += newest - k
                    self.warn(f"analysis fell behind the live source; skipped {newest - k} window(s)")
                    k = newest
                    continue
            self._window(w, fps, frames, audio, state, cache, timeline, None)
            k += 1
            if self.opts.progress:
                self._progress(w.end, info.duration, wall0)
        if self.opts.progress:
            sys.stderr.write("\n")
        elapsed = time.monotonic() - wall0
        media = (total_frames / fps) if total_frames else max(frames.horizon, 0.0)
        lat = np.asarray(self.stats.latencies_ms) if self.stats.latencies_ms else None
        end = {"type": "end", "reason": end_reason, "windows": self.stats.windows,
               "windows_skipped": self.stats.windows_skipped, "frames": total_frames,
               "frames_analysed": self.stats.frames_analysed, "media_s": media, "elapsed_s": elapsed,
               "real_time_factor": elapsed / media if media > 0 else None,
               "latency_ms": None if lat is None else {"p50": float(np.percentile(lat, 50)),
                                                       "p95": float(np.percentile(lat, 95)),
                                                       "max": float(lat.max())},
               "drops": self._drops(frames, audio, state), "warnings": len(self.warnings)}
        self.emit(end)
        return end

    def _video_ready(self, w: Window, frames: FrameRing, state: SourceState) -> bool:
        """The window's last analysed frame has arrived (or the stream ended / is stopping)."""
        if self.stop_event.is_set() or state.video_done:
            return True
        return frames.horizon >= w.end - 1.0 / SAMPLE_FPS - EPS

    def _audio_ready(self, w: Window, frames: FrameRing, audio: AudioRing, state: SourceState,
                     video_ready_at: float) -> bool:
        """Audio has reached the window's end, or there is no reason to wait for it: no audio,
        it ended, a full lossless frame ring (waiting could deadlock), or a live source whose
        audio is more than AUDIO_GRACE_S late."""
        if self.stop_event.is_set() or state.video_done:
            return True
        if not state.audio_expected or state.audio_done or audio.horizon >= w.end - EPS:
            return True
        if frames.policy == BLOCK and frames.full:
            return True
        return self.live and time.monotonic() - video_ready_at > AUDIO_GRACE_S

    def _analyse_ahead(self, w: Window, frames: FrameRing, cache: FaceCache) -> bool:
        """Analyse the frames of window ``w`` that have arrived and are not cached yet."""
        todo = [(f.index, f.pts, f.image) for f in frames.between(w.start, w.end) if f.index not in cache.items]
        if not todo:
            return False
        t0 = time.perf_counter()
        for r in self.face.analyse(todo):
            cache.items[r.index] = r
        self.stats.stage("face_analysis", (time.perf_counter() - t0) * 1e3)
        self.stats.frames_analysed += len(todo)
        return True

    def _drops(self, frames: FrameRing, audio: AudioRing, state: SourceState) -> dict:
        return {"video_ring": frames.drops, "audio_ring_s": round(audio.dropped_seconds, 3),
                "video_sender": state.sender_drops[m.VIDEO], "audio_sender": state.sender_drops[m.AUDIO]}

    def _window(self, w: Window, fps: float, frames: FrameRing, audio: AudioRing, state: SourceState,
                cache: FaceCache, timeline: Timeline, total: int | None) -> None:
        t_start = time.perf_counter()
        items = frames.between(w.start, w.end)
        have, need = cache.split([f.index for f in items])
        if need:
            wanted = set(need)
            todo = [(f.index, f.pts, f.image) for f in items if f.index in wanted]
            t0 = time.perf_counter()
            for r in self.face.analyse(todo):
                cache.items[r.index] = r
            self.stats.stage("face_analysis", (time.perf_counter() - t0) * 1e3)
            self.stats.frames_analysed += len(todo)
        faces = [cache.items[f.index] for f in items]
        if state.audio_expected:
            pcm, coverage = audio.slice(w.start, w.end)
        else:
            pcm, coverage = None, 0.0
        inp = WindowInput(w, fps, items, faces, pcm, coverage)
        if pcm is not None and not self.live and audio.horizon > w.end + EPS:
            # a file: the audio already received after the window, for speech to text to transcribe
            # with this window's in one call (stream.modalities.speech.asr: the next windows then need no call)
            inp.shared["audio_ahead"] = audio.slice(w.end, min(audio.horizon, w.end + AUDIO_AHEAD_S))[0]
        outputs = self._run_modalities(inp)

        t0 = time.perf_counter()
        fused = self.fuser(outputs)
        rec: dict = {"type": "window", "index": w.index, "start": w.start, "end": w.end,
                     "frames": list(w.frame_range(fps, total)), "analysed_frames": len(items)}
        if fused.basic is not None:
            comp = fused.compound
            rec.update({"basic": dict(zip(BASIC, fused.basic)), "compound": dict(zip(COMPOUND, normalise(comp))),
                        "label": COMPOUND[int(np.argmax(comp))], "basic_label": BASIC[int(np.argmax(fused.basic))]})
            timeline.add(w.frame_range(fps, total), fused.basic, comp)
        else:
            rec.update({"basic": None, "compound": None, "label": None, "basic_label": None})
        rec["compound_method"] = fused.method
        self.stats.stage("fusion", (time.perf_counter() - t0) * 1e3)
        rec["present"] = [name for name, out in outputs.items() if out.basic is not None]
        rec["modalities"] = {
            name: ({"present": True, "weight": fused.weights.get(name), "basic": dict(zip(BASIC, out.basic)),
                    **out.info} if out.basic is not None else {"present": False, **out.info})
            for name, out in outputs.items()}
        if pcm is not None:
            rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if pcm.size else 0.0
            rec["audio"] = {"coverage": round(coverage, 3), "rms_dbfs": round(20 * np.log10(max(rms, 1e-9)), 1)}
        else:
            rec["audio"] = None
        rec["drops"] = self._drops(frames, audio, state)
        stamps = [f.t_capture_ns for f in items]
        if pcm is not None:
            stamps += [t for t in [audio.capture_ns_before(w.end)] if t is not None]
        rec["processing_ms"] = (time.perf_counter() - t_start) * 1e3
        rec["latency_ms"] = (m.now_ns() - max(stamps)) / 1e6 if stamps else None
        if rec["latency_ms"] is not None:
            self.stats.latencies_ms.append(rec["latency_ms"])
        self.stats.windows += 1
        self.emit(rec)
        if self.features_out is not None:
            self.features_out.write({
                "type": "window", "video": self.source.name, "index": w.index, "start": w.start, "end": w.end,
                "frames": list(w.frame_range(fps, total)), "fps": fps,
                "modalities": {name: {"basic": out.basic, "feature": out.feature}
                               for name, out in outputs.items() if out.basic is not None}})
        # frames before the next window's start are final; the rest stay provisional
        cut = final_before(w)
        self._emit_frames(timeline.finalize(int(cut * fps + 1e-6)), final=True)
        self._emit_frames(timeline.provisional(w.frame_range(fps, total)), final=False)
        frames.release_before(cut)
        audio.release_before(cut)
        cache.forget_before(int(cut * fps + 1e-6))

    def _run_modalities(self, inp: WindowInput) -> dict[str, ModalityOutput]:
        outputs: dict[str, ModalityOutput] = {}
        for mod in self.modalities:
            t0 = time.perf_counter()
            try:
                out = mod(inp)
            except Exception as exc:  # one failing modality never stops the stream
                msg = f"{type(exc).__name__}: {exc}"
                if self._modality_errors.get(mod.name) != msg:
                    self.warn(f"modality {mod.name} failed: {msg}", modality=mod.name)
                self._modality_errors[mod.name] = msg
                out = ModalityOutput.absent("error", error=redact(msg))
            self.stats.stage(mod.name, (time.perf_counter() - t0) * 1e3)
            outputs[mod.name] = out
        return outputs

    def _emit_frames(self, rows: list[FrameRow], *, final: bool) -> None:
        if not rows or not self.opts.emit_frames and not final:
            return
        self.emit({"type": "frames", "final": final,
                   "frame_index": [r.index for r in rows],
                   "time": [round(r.time, 4) for r in rows],
                   "label_index": [r.label for r in rows],
                   "label": [None if r.label is None else COMPOUND[r.label] for r in rows],
                   "compound": [None if r.compound is None else np.round(normalise(r.compound), 4)
                                for r in rows]})

    def _progress(self, t: float, duration: float | None, wall0: float) -> None:
        el = time.monotonic() - wall0
        if duration:
            frac = min(1.0, t / duration)
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\r[{bar:<30}] {t:6.1f}/{duration:.1f} s  {el:5.1f} s elapsed")
        else:
            sys.stderr.write(f"\r{t:6.1f} s analysed  {el:5.1f} s elapsed")
        sys.stderr.flush()


