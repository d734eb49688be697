"""The window loop: ring buffers → 4 s windows → face step → modalities → fusion → compound →
timeline → records.

One analyzer handles one stream.  Its parts live in their own modules:
:mod:`~stream.runtime.lifecycle` (capture processes, start-up handshake),
:mod:`~stream.runtime.scheduler` (which window is due, skip-ahead, tail rule),
:mod:`~stream.runtime.records` (record building), :mod:`~stream.runtime.stats` (counts and the
end record), :mod:`~stream.runtime.observe` (the face step and observer hooks).  Most callers
want :class:`stream.Pipeline`, which builds the models from options and yields typed records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any

from engines.memory import Trimmer
from stream.core import messages as m
from stream.core.logs import warning_fields
from stream.core.redact import redact
from stream.core.signals import SignalEvent
from stream.core.windows import EPS, HOP_S, WINDOW_S, Window, final_before, swallowed_windows
from stream.fusion.fuser import Fuser
from stream.io.receiver import SourceState
from stream.io.ringbuffer import BLOCK, AudioRing, FrameRing
from stream.io.sources import FRAME_RING, Source  # noqa: F401  (FRAME_RING: re-exported)
from stream.modalities.base import FaceModality, Modality, ModalityOutput, WindowInput
from stream.modalities.face import FaceAnalyzer, FaceCache
from stream.runtime.delivery import CLOSE_TIMEOUT_S, RecordWriter, Sink, SinkEvent, SinkSet, as_sink
from stream.runtime.lifecycle import (  # noqa: F401
    STARTUP_GRACE_S,
    Capture,
    CaptureProcess,
    StartupError,
    is_live,
    open_capture,
    paced,
)
from stream.runtime.observe import FaceStep, Observer, Observers
from stream.runtime.options import RuntimeOptions
from stream.runtime.progress import Progress
from stream.runtime.records import (
    GapRecord,
    Record,
    StartRecord,
    WarningRecord,
    build_frames_record,
    build_window_record,
)
from stream.runtime.scheduler import (  # noqa: F401
    AUDIO_GRACE_S,
    Arrivals,
    Finish,
    Missing,
    Run,
    Scheduler,
    Skip,
    Wait,
)
from stream.runtime.stats import RunStats
from stream.runtime.timeline import FrameRow, Timeline

#: File mode: how much audio after a window is handed to the modalities with it (``shared["audio_ahead"]``):
#: a Whisper call costs about the same for 4 s as for 12 s of audio (its encoder always sees 30 s),
#: so speech to text transcribes the window and what follows in one call. The frame ring lets the
#: reader run about 12 s ahead of the window being analysed, so 8 s are there to be had.
AUDIO_AHEAD_S = 8.0
#: Frames analysed at a time ahead of the next window while the audio modalities finish (small, so
#: that the window's record goes out soon after they do).
FACE_AHEAD_BATCH = 4
#: File mode: how long the audio modalities wait for that audio to arrive (the reader decodes many
#: times faster than real time, so this is a backstop).
AUDIO_AHEAD_WAIT_S = 2.0
#: File mode: how long the last windows wait, once the video has ended, for the rest of the file's
#: audio (its end comes on the audio socket and may trail the video's end on the frames socket);
#: a backstop: the reader sends it right after the video's.
AUDIO_END_WAIT_S = 10.0


def _file_audio_ended(state: SourceState) -> bool:
    """The file's own audio track has ended (or there is none); a microphone beside it never
    ends and does not count.  Read under ``state.cond``."""
    return not state.av_audio or state.av_audio_done


class Analyzer:
    """Analyses one source to its end.  ``sinks`` receive each record's JSON object;
    ``on_record`` (and the observers' ``on_record``/``on_window``) the typed record.
    ``options`` are the pipeline's own :class:`~stream.runtime.options.RuntimeOptions` (not a
    copy of their fields); the compound method is the ``fuser``'s."""

    def __init__(
        self,
        source: Source,
        sinks: Sequence[Sink | RecordWriter],
        *,
        options: RuntimeOptions | None = None,
        face: FaceAnalyzer | None = None,
        modalities: list[Modality] | None = None,
        fuser: Fuser | None = None,
        features_out: Sink | RecordWriter | None = None,
        notes: list[str] | None = None,
        observers: Sequence[object] | None = None,
        on_record: Callable[[Record], None] | None = None,
        log_records: Any = None,
    ) -> None:
        self.source = source
        self.sinks = [as_sink(s) for s in sinks]
        self.opts = options or RuntimeOptions()
        self.face = face
        self.modalities: list[Modality] = modalities if modalities is not None else [FaceModality()]
        self.fuser = fuser or Fuser([m.name for m in self.modalities])
        self.features_out = as_sink(features_out) if features_out is not None else None
        # a sink that is an Observer too (the annotated video, the live page) sees the analysed frames
        self.observers = Observers([*(observers or []), *(s for s in self.sinks if isinstance(s, Observer))])
        self.on_record = on_record
        self._modality_errors: dict[str, str] = {}
        self._beside: ThreadPoolExecutor | None = None  # runs the audio modalities during a run
        self._side: list[Modality] = []  # those modalities (needs_frames False)
        self._notes = notes if notes is not None else []  # warnings from start-up, emitted after `start`
        # a stream.core.logs.RecordForwarder: every cer_stream warning logged during the run
        # (any thread, any time) becomes a `warning` record, delivered on this thread
        self._log_records = log_records
        self.stop_event = SignalEvent()  # set by signal handlers: see stream.core.signals
        self.stats = RunStats()
        self.capture: Capture | None = None
        self.warnings = 0  # warning records emitted (a count: a live run may emit them for days)
        self._warnings_lock = threading.Lock()  # warn() is called from any thread
        # each sink behind its own queue and writer thread for the run (stream.sinks.outputs)
        self._outputs: SinkSet | None = None
        self._features: SinkSet | None = None
        self._finished_sets: list[SinkSet] = []  # the last run's, for its summary after the run
        self._emit_lock = threading.RLock()
        self._flush_on_stop = True
        #: media time of the last frame before a loss of the live source (an open gap), or None
        self._lost_at: float | None = None
        #: the model host's outage: media time of its first unanalysed frame and why (or None)
        self._models_down: tuple[float, str] | None = None
        #: called (on the analysis thread) for each sink event: dropping, failed, closed
        self.on_sink_event: Callable[[SinkEvent], None] | None = None

    # ------------------------------------------------------------------ output
    def emit(self, record: Record | dict, *, exclude: str | None = None, timeout: float | None = None) -> None:
        """Send a record to every sink (``exclude``: but that one) and the record hooks.  Safe
        from any thread: each record is queued whole, in the same order for every sink."""
        d = record if isinstance(record, dict) else record.to_dict()
        with self._emit_lock:
            if self._outputs is not None:
                self._outputs.put(d, exclude=exclude, timeout=timeout)
            else:  # outside a run: written directly
                for s in self.sinks:
                    if s.name != exclude or exclude is None:
                        s.write(d)
            if not isinstance(record, dict):
                if self.on_record is not None:
                    self.on_record(record)
                self.observers.record(record)

    def _deliver_log(self) -> None:
        self._poll_sinks()
        if self._log_records is not None:
            self._log_records.deliver(lambda msg, name: self.warn(msg, **warning_fields(name)))

    def _poll_sinks(self) -> None:
        """Sink events become `warning` records on the other sinks; a required sink (stdout)
        whose reader went away stops the run, without analysing its buffered windows."""
        events = [
            *(self._outputs.events() if self._outputs is not None else []),
            *(self._features.events() if self._features is not None else []),
        ]
        for ev in events:
            message = redact(ev.message)
            self._count_warning()
            self.emit(WarningRecord(message, sink=ev.sink), exclude=ev.sink)
            if self.on_sink_event is not None:
                self.on_sink_event(ev)
            if ev.kind == "closed" and ev.required:
                self.stop(flush=False)

    @property
    def sink_summary(self) -> dict[str, dict[str, Any]]:
        """Per sink: ``written``, ``dropped``, ``error`` (the end record's ``sinks``)."""
        out: dict[str, dict[str, Any]] = {}
        for ss in self._sink_sets:
            out.update(ss.summary())
        return out

    @property
    def _sink_sets(self) -> list[SinkSet]:
        current = [ss for ss in (self._outputs, self._features) if ss is not None]
        return current or self._finished_sets

    @property
    def sinks_failed(self) -> list[str]:
        """Sinks a write error stopped during the last run."""
        return [n for ss in self._sink_sets for n in ss.failed]

    @property
    def sinks_closed(self) -> list[str]:
        """Sinks whose reader went away during the last run (stdout: the run stopped)."""
        return [n for ss in self._sink_sets for n in ss.closed]

    def _finish_sinks(self, *, force: bool = False) -> None:
        sets = [ss for ss in (self._outputs, self._features) if ss is not None]
        for ss in sets:
            ss.finish(CLOSE_TIMEOUT_S, force=force)
        self._finished_sets = sets
        with self._emit_lock:
            self._outputs = None
        self._features = None

    def warn(self, message: str, **extra) -> None:
        self._count_warning()
        self.emit(WarningRecord(redact(message), **extra))

    def _count_warning(self) -> None:
        with self._warnings_lock:
            self.warnings += 1

    # ------------------------------------------------------------------ run
    @property
    def realtime(self) -> bool:
        return paced(self.source, self.opts)

    @property
    def live(self) -> bool:
        return is_live(self.source, self.opts)

    def stop(self, *, flush: bool = True) -> None:
        """Ask the run to end: capture stops, buffered windows are flushed (``flush=False``:
        left unanalysed, e.g. when stdout's reader went away)."""
        if not flush:
            self._flush_on_stop = False
        self.stop_event.set()

    def run(self) -> dict:
        """Analyse the source to its end (or until :meth:`stop`); returns the end record's JSON."""
        self._load_modalities()
        block = not self.live  # a file run is lossless: a slow sink holds it back; a live run drops
        self._outputs = SinkSet(self.sinks, block=block)
        self._features = SinkSet([self.features_out], block=block) if self.features_out is not None else None
        try:
            end = self._run()
        except BaseException:  # no end record: the writers are not waited for
            self._finish_sinks(force=True)
            raise
        self._finish_sinks()
        return end

    def _run(self) -> dict:
        self.capture = capture = open_capture(self.source, self.opts)
        # the modalities that need no frames (the voice, the words) run on their own thread
        # beside the window's face work: their models (ONNX Runtime, CTranslate2) release the GIL
        self._side = [mod for mod in self.modalities if not getattr(mod, "needs_frames", True)]
        self._beside = ThreadPoolExecutor(1, thread_name_prefix="cer-audio") if self._side else None
        try:
            capture.start()
            self.observers.capture(capture.pids)
            info = capture.wait_start(self.stop_event)
            return self._loop(info, capture.frames, capture.audio, capture.state)
        finally:
            capture.close()
            if self._beside is not None:
                self._beside.shutdown(wait=True)
                self._beside = None

    def _load_modalities(self) -> None:
        """Load models before capture starts, so the first windows do not pay for it.  A
        modality that cannot load is reported and stays absent; the stream goes on."""
        for mod in self.modalities:
            try:
                mod.load()
            except Exception as exc:
                self._notes.append(redact(f"modality {mod.name} could not load: {type(exc).__name__}: {exc}"))

    # ------------------------------------------------------------------ windows
    def _arrivals(self, frames: FrameRing, audio: AudioRing, state: SourceState) -> Arrivals:
        return Arrivals(
            # an audio-only source: its audio paces the windows as the frames do otherwise
            video_horizon=audio.horizon if state.audio_only else frames.horizon,
            audio_horizon=audio.horizon,
            # an audio-only source's end comes on the frames socket and may overtake its last audio
            # on the audio socket: it has ended when its audio has too
            video_done=state.video_done and (not state.audio_only or state.audio_done),
            audio_expected=state.audio_expected,
            audio_done=state.audio_done,
            frames_full=frames.policy == BLOCK and frames.full,
            stopping=self.stop_event.is_set(),
            gaps=tuple(state.gaps),
            lost=state.gap_open.start if state.gap_open is not None else None,
        )

    def _gap(self, gap: m.Gap, fps: float, timeline: Timeline) -> None:
        """A live source was lost (a warning) or is back (a gap record; the frame numbers it left
        empty never appear in the frame records)."""
        if gap.end is None:
            self._lost_at = gap.start
            self.warn(f"{gap.reason}; reconnecting", stream="video")
            return
        self._lost_at = None
        gone = swallowed_windows(gap.start, gap.end)
        timeline.skip(int(round(gap.start * fps)) + 1, int(round(gap.end * fps)))
        self.stats.gaps += 1
        self.stats.gap_s += gap.end - gap.start
        if not gap.resumed:  # the gap since another process had the stream is no reconnect
            self.stats.reconnects += 1
        else:
            self.stats.resumed_gap_s += gap.end - gap.start
        self.emit(
            GapRecord(
                start=round(gap.start, 4),
                end=round(gap.end, 4),
                reason=redact(gap.reason),
                attempts=gap.attempts,
                windows_missing=(gone.start, gone.stop - 1) if len(gone) else None,
                wall_time=round(gap.wall_time, 3),
            )
        )

    def _models_outage(self, faces: list) -> None:
        """Follow the model host's outages (``cer-stream serve``): a warning when a window's
        frames could not be analysed, a ``gap`` record (``cause: "models"``) at the first window
        analysed whole again.  The windows between go out, with the face absent and the reason."""
        failed = [f for f in faces if getattr(f, "error", None)]
        if failed and self._models_down is None:
            self._models_down = (failed[0].pts, failed[0].error)
            self.warn(f"{failed[0].error}; the windows go on without the face", modality="face")
        elif faces and not failed and self._models_down is not None:
            start, reason = self._models_down
            self._models_down = None
            self.emit(
                GapRecord(
                    start=round(start, 4),
                    end=round(min(f.pts for f in faces), 4),
                    reason=redact(reason),
                    attempts=0,
                    windows_missing=None,
                    wall_time=round(time.time(), 3),
                    cause="models",
                )
            )

    def _loop(self, info: m.StreamInfo, frames: FrameRing, audio: AudioRing, state: SourceState) -> dict:
        audio_only = state.audio_only  # the stream info (set before the loop) lists no video
        fps = info.fps or 25.0  # audio-only: a nominal rate for the (empty) frame timeline
        if self.face is None:
            self.face = FaceAnalyzer()
        resume = self.opts.resume if self.live else None
        # a resumed stream: frames up to the last one the previous process made final, and
        # windows up to its last, are that process's; this run goes on after them
        timeline = Timeline(fps, first=int(round(resume.after_s * fps)) + 1 if resume else 0)
        cache = FaceCache()
        # a picture nobody reads after its face step is let go at once (a live stream's frames
        # then cost memory only until they are analysed)
        release = not self.observers.want_frames and not any(
            getattr(mod, "reads_images", True) for mod in self.modalities
        )
        face_step = FaceStep(self.face, cache, self.stats, self.observers, release=release)
        scheduler = Scheduler(live=self.live, first=resume.window if resume else 0)
        trimmer = Trimmer()
        wall0 = time.monotonic()
        self.emit(
            StartRecord(
                source=self.source.kind,
                input=self.source.describe(),
                fps=None if audio_only else fps,
                width=info.width,
                height=info.height,
                duration=info.duration,
                live=self.live,
                audio=state.audio_expected,
                modalities=[mod.name for mod in self.modalities],
                fusion=self.fuser.describe(),
                compound_method=self.fuser.method,
                window_s=WINDOW_S,
                hop_s=HOP_S,
                resumed=(
                    {"window": resume.window, "after_s": round(resume.after_s, 4), "reason": redact(resume.reason)}
                    if resume
                    else None
                ),
                video=not audio_only,
            )
        )
        for note in dict.fromkeys(list(self._notes) + self.fuser.notes):
            self.warn(note)
        self._deliver_log()
        progress = Progress(info.duration, mode="on" if self.opts.progress else "off")
        if audio_only:
            self.warn(f"no video in {self.source.describe()}: running audio only (the audio and text modalities)")
        elif not state.audio_expected:
            self.warn(f"no audio: {info.audio_note or 'audio disabled'}; running video-only")
        seen_errors = 0
        seen_gaps = 0
        end_reason = "eof"
        total_frames: int | None = None
        while True:
            self._deliver_log()
            with state.cond:  # gaps and arrivals seen together: a gap is handled before its windows
                gaps = state.gap_events[seen_gaps:]
                seen_gaps += len(gaps)
                step = scheduler.poll(self._arrivals(frames, audio, state))
            for gap in gaps:
                self._gap(gap, fps, timeline)
                if gap.end is not None:  # back from a gap: its buffers are garbage now
                    trimmer.now()
            if isinstance(step, Missing):
                self.stats.windows_missing += step.missing
                continue
            if isinstance(step, Wait):
                # analyse frames as they arrive, so that little is left when the window closes
                w = step.window
                if not face_step(frames.between(w.start, w.end), w.index):
                    with state.cond:
                        state.cond.wait(0.05)
                continue
            with state.cond:
                for e in state.errors[seen_errors:]:
                    if not e.fatal or e not in state.main_fatal:
                        self.warn(e.message, stream=",".join(e.streams))
                    seen_errors += 1
            if isinstance(step, Finish):
                # the stream has ended: its length is known, finish with the tail rule
                stopping = self.stop_event.is_set()
                if stopping:
                    assert self.capture is not None  # set by run() before the loop starts
                    self.capture.stop_sources()  # its end message says how far it got
                    with state.cond:
                        state.cond.wait_for(lambda: state.video_done, 1.0)
                if not stopping:
                    self._await_file_audio(state)
                if state.video_end is not None:
                    duration, total_frames = state.video_end.duration, state.video_end.frames
                    if audio_only:
                        total_frames = None
                    end_reason = state.video_end.reason if not stopping else "interrupted"
                elif audio_only:
                    duration, total_frames = max(audio.horizon, 0.0), None
                    end_reason = "interrupted" if stopping else ("error" if state.main_fatal else "eof")
                    if state.main_fatal:
                        self.warn(state.main_fatal[0].message, stream="audio")
                else:
                    duration = frames.horizon + 1.0 / fps if frames.horizon >= 0 else 0.0
                    # the frames that exist: up to the newest one received, final like any other
                    total_frames = frames.last_index + 1 if frames.last_index >= 0 else None
                    fatal = [e.message for e in state.main_fatal]
                    end_reason = "interrupted" if stopping else ("error" if fatal else "eof")
                    if fatal:
                        self.warn(fatal[0], stream="video")
                with state.cond:
                    late = state.gap_events[seen_gaps:]
                    seen_gaps += len(late)
                    open_gap, closed = state.gap_open, tuple(state.gaps)
                for gap in late:
                    self._gap(gap, fps, timeline)
                if open_gap is not None:  # the run ended in a gap (the policy gave up, or a stop)
                    self.stats.gaps += 1
                    self.emit(
                        GapRecord(
                            start=round(open_gap.start, 4),
                            end=None,
                            reason=redact(open_gap.reason),
                            attempts=open_gap.attempts,
                            windows_missing=None,
                            wall_time=round(time.time(), 3),
                        )
                    )
                for tail in scheduler.tail(duration, closed) if self._flush_on_stop or not stopping else []:
                    self._window(tail, fps, frames, audio, state, face_step, timeline, total_frames)
                if not audio_only:
                    rows = timeline.finalize(total_frames if total_frames is not None else timeline.pending())
                    self._emit_frames(rows, final=True)
                break
            if isinstance(step, Skip):
                self.stats.windows_skipped += step.skipped
                self.stats.windows_missing += step.missing
                if step.skipped:
                    self.warn(f"analysis fell behind the live source; skipped {step.skipped} window(s)")
                continue
            w = step.window
            self._window(w, fps, frames, audio, state, face_step, timeline, None)
            progress.update(w.end)
            trimmer.maybe()  # freed memory back to the system, at most once a minute
        progress.close()
        self._deliver_log()
        elapsed = time.monotonic() - wall0
        if audio_only:
            media = duration
        else:
            media = (total_frames / fps) if total_frames else max(frames.horizon, 0.0)
        end = self.stats.end_record(
            reason=end_reason,
            total_frames=total_frames,
            media_s=media,
            # a resumed stream: this process analysed the media after the previous one's last
            # final frame, less the time between the two processes
            run_media_s=media - (resume.after_s + self.stats.resumed_gap_s if resume else 0.0),
            elapsed_s=elapsed,
            drops=self._drops(frames, audio, state),
            warnings=self.warnings,
        )
        for ss in self._sink_sets:  # the counts below are then final for the records so far
            ss.drain(CLOSE_TIMEOUT_S)
        self._poll_sinks()
        end.warnings = self.warnings
        end.sinks = self.sink_summary  # before the end record itself
        # a live run's sinks get a moment to take the end record before it counts as dropped
        self.emit(end, timeout=CLOSE_TIMEOUT_S)
        return end.to_dict()

    def _drops(self, frames: FrameRing, audio: AudioRing, state: SourceState) -> dict:
        return {
            "video_ring": frames.drops,
            "audio_ring_s": round(audio.dropped_seconds, 3),
            "video_sender": state.sender_drops[m.VIDEO],
            "audio_sender": state.sender_drops[m.AUDIO],
        }

    def _window(
        self,
        w: Window,
        fps: float,
        frames: FrameRing,
        audio: AudioRing,
        state: SourceState,
        face_step: FaceStep,
        timeline: Timeline,
        total: int | None,
    ) -> None:
        t_start = time.perf_counter()
        items = frames.between(w.start, w.end)
        if state.audio_expected:
            pcm, coverage = audio.slice(w.start, w.end)
        else:
            pcm, coverage = None, 0.0
        inp = WindowInput(w, fps, items, [], pcm, coverage)  # faces: after the face step below
        beside = None
        if self._beside is not None:
            beside = self._beside.submit(self._audio_side, inp, self._side, frames, audio, state)
        else:
            self._audio_ahead(inp, frames, audio, state, wait=False)
        face_step(items, w.index)
        cache = face_step.cache
        inp.faces = [cache.items[f.index] for f in items]
        self._models_outage(inp.faces)
        outputs, timings = self._run_modalities(
            inp, [mod for mod in self.modalities if beside is None or mod not in self._side]
        )
        if beside is not None:
            # while the voice and the words are still being worked out (a Whisper call takes a
            # second or more), analyse the faces of the frames that follow the window: the next
            # windows then find them done
            while not beside.done():
                later = [f for f in frames.between(w.end, w.end + WINDOW_S) if f.index not in cache.items]
                if not later or not face_step(later[:FACE_AHEAD_BATCH], w.index + 1):
                    futures_wait([beside], timeout=0.02)
            done, side_timings = beside.result()
            outputs.update(done)
            timings += side_timings
        outputs = {mod.name: outputs[mod.name] for mod in self.modalities}  # the configured order
        for name, ms in timings:  # observers hear from this thread only
            self.observers.stage(name, ms, inp.window.index, [f.index for f in inp.frames])
        span = w.frame_range(fps, total)
        held = None  # while the source is lost, frames after its last one may not exist
        if self._lost_at is not None:
            held = int(round(self._lost_at * fps)) + 1
            span = (min(span[0], held), min(span[1], held))

        t0 = time.perf_counter()
        fused = self.fuser(outputs)
        # PFSA that cannot score a window adds nothing of another method's scale; no picture, no frames
        if fused.scored and not state.audio_only:
            assert fused.basic is not None and fused.compound is not None  # what `scored` means
            timeline.add(span, fused.basic, fused.compound)
        rec = build_window_record(
            w,
            fps=None if state.audio_only else fps,
            total=total,
            analysed_frames=len(items),
            fused=fused,
            outputs=outputs,
            pcm=pcm,
            coverage=coverage,
            drops=self._drops(frames, audio, state),
        )
        fusion_ms = (time.perf_counter() - t0) * 1e3
        self.observers.stage("fusion", fusion_ms, w.index, [])
        stamps = [f.t_capture_ns for f in items]
        if pcm is not None:
            stamps += [t for t in [audio.capture_ns_before(w.end)] if t is not None]
        rec.processing_ms = (time.perf_counter() - t_start) * 1e3
        rec.latency_ms = (m.now_ns() - max(stamps)) / 1e6 if stamps else None
        if self.live:
            rec.wall_time = round(time.time(), 3)
        if rec.latency_ms is not None:
            self.stats.latency_ms.add(rec.latency_ms)
        self.stats.windows += 1
        self.emit(rec)
        if self.features_out is not None:
            assert self._features is not None  # made by run() with features_out
            self._features.put(
                {
                    "type": "window",
                    "video": self.source.name,
                    "index": w.index,
                    "start": w.start,
                    "end": w.end,
                    "frames": list(w.frame_range(fps, total)),
                    "fps": fps,
                    "modalities": {
                        name: {
                            "basic": out.basic,
                            "feature": out.feature,
                            **({"feature_space": out.info["feature_space"]} if "feature_space" in out.info else {}),
                        }
                        for name, out in outputs.items()
                        if out.basic is not None
                    },
                }
            )
        # frames before the next window's start are final; the rest stay provisional
        cut = final_before(w)
        before = int(cut * fps + 1e-6)  # never past the stream's last frame (short clips)
        before = min([before] + [n for n in (total, held) if n is not None])
        if not state.audio_only:  # no picture: no frame records
            self._emit_frames(timeline.finalize(before), final=True)
            self._emit_frames(timeline.provisional(span), final=False)
        frames.release_before(cut)
        audio.release_before(cut)
        cache.forget_older(cut - EPS)  # by media time, as the ring: a frame still held keeps its result

    def _audio_ahead(
        self, inp: WindowInput, frames: FrameRing, audio: AudioRing, state: SourceState, *, wait: bool
    ) -> None:
        """A file: hand the audio received after the window to the modalities with it
        (``shared["audio_ahead"]``, up to :data:`AUDIO_AHEAD_S`), for speech to text to transcribe
        with this window's in one call (:mod:`stream.modalities.speech.asr`: the next windows then
        need no call).  With ``wait``, first wait (at most :data:`AUDIO_AHEAD_WAIT_S`) until that
        much has arrived, the audio has ended or the reader cannot go further (a full frame ring)."""
        w = inp.window
        if inp.audio is None or self.live:
            return
        want = w.end + AUDIO_AHEAD_S - EPS
        if wait:
            with state.cond:
                state.cond.wait_for(
                    lambda: (
                        audio.horizon >= want or _file_audio_ended(state) or frames.full or self.stop_event.is_set()
                    ),
                    timeout=AUDIO_AHEAD_WAIT_S,
                )
        if audio.horizon > w.end + EPS:
            inp.shared["audio_ahead"] = audio.slice(w.end, min(audio.horizon, w.end + AUDIO_AHEAD_S))[0]

    def _await_file_audio(self, state: SourceState) -> None:
        """A file whose video has ended: wait (at most :data:`AUDIO_END_WAIT_S`) for the end of its
        audio track before the last windows are cut.  The video's end comes on the frames socket
        and its last audio on the audio socket, in either order; without this wait the last
        windows took whatever audio had arrived, so their voice and words depended on timing (a
        run beside a busy host once differed from the same file's run in the fourth decimal)."""
        if self.live or not state.av_audio:
            return
        with state.cond:
            if not state.cond.wait_for(
                lambda: _file_audio_ended(state) or self.stop_event.is_set(), timeout=AUDIO_END_WAIT_S
            ):
                self.warn(f"the file's audio did not end within {AUDIO_END_WAIT_S:g} s of its video", stream="audio")

    def _audio_side(
        self, inp: WindowInput, mods: list[Modality], frames: FrameRing, audio: AudioRing, state: SourceState
    ) -> tuple[dict[str, ModalityOutput], list[tuple[str, float]]]:
        """The audio modalities of a window, on their own thread beside its face work."""
        self._audio_ahead(inp, frames, audio, state, wait=True)
        return self._run_modalities(inp, mods)

    def _run_modalities(
        self, inp: WindowInput, mods: list[Modality]
    ) -> tuple[dict[str, ModalityOutput], list[tuple[str, float]]]:
        """Run ``mods`` on ``inp`` in order (any thread); their outputs and (name, ms) timings."""
        outputs: dict[str, ModalityOutput] = {}
        timings: list[tuple[str, float]] = []
        for mod in mods:
            t0 = time.perf_counter()
            try:
                out = mod(inp)
            except Exception as exc:  # one failing modality never stops the stream
                msg = f"{type(exc).__name__}: {exc}"
                if self._modality_errors.get(mod.name) != msg:
                    self.warn(f"modality {mod.name} failed: {msg}", modality=mod.name)
                self._modality_errors[mod.name] = msg
                out = ModalityOutput.absent("error", error=redact(msg))
            timings.append((mod.name, (time.perf_counter() - t0) * 1e3))
            outputs[mod.name] = out
        return outputs, timings

    def _emit_frames(self, rows: list[FrameRow], *, final: bool) -> None:
        if not rows or not self.opts.emit_frames and not final:
            return
        self.emit(build_frames_record(rows, final=final))


__all__ = ["AUDIO_AHEAD_S", "Analyzer", "Source", "StartupError"]
