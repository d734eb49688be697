"""Capture processes: decode a source and push items to the analyzer over ZeroMQ.

One process per source.  The audio-visual reader (file, RTSP or V4L2 camera,
through PyAV) sends the analysed-rate frames (5 fps grid, see ``windows``)
and the source's audio track resampled to 16 kHz mono.  The microphone reader
(sounddevice, imported only when used) sends audio alone.

Media time starts at 0 with the first video frame.  Live sources (camera and
microphone) time items by the monotonic clock against an origin the parent
hands to both, so their audio and video line up.

Capture never waits for the analyzer on a live source: sends are
non-blocking and a full high-water mark drops the item (counted in
``sender_drops``).  A file read as fast as possible uses blocking sends, so
the analyzer paces it and nothing is lost.

Errors: a failure the reader can describe (a file that does not open, a decoding error) is
sent to the analyzer as a ``CaptureError`` message.  So that a process that dies before or
without that message (a crash, an import failure, a lost message) still explains itself, its
reason is also written to a small file beside the ZeroMQ endpoints
(:attr:`CaptureConfig.error_path`), which the analyzer reads when it sees the process exit
(:func:`read_capture_error`, :func:`describe_capture_exit`).  The process logs on the
``cer_stream.capture`` logger, set up like the analyzer's (``CER_STREAM_LOG_LEVEL``), and
its native libraries are quieted per library (:func:`stream.core.logs.silence_native`), so
its standard error is not thrown away: a native crash message still reaches the terminal.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from stream.core import messages as m
from stream.core.redact import redact, remember_url
from stream.core.signals import SignalEvent
from stream.core.windows import FrameNumbers, GridSampler, MediaTime, sane_fps
from stream.io.reconnect import OFF, ReconnectPolicy, Resume

log = logging.getLogger("cer_stream.capture")

FRAME_HWM = 8
AUDIO_HWM = 256
#: The defaults of :class:`stream.runtime.options.RuntimeOptions` (``max_side``, ``open_timeout_s``,
#: ``read_timeout_s``), named here once because this layer cannot import that one; a
#: :class:`CaptureConfig` built directly (a test, a tool) gets the same ones.
DEFAULT_MAX_SIDE = 960
DEFAULT_OPEN_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 10.0
AUDIO_CHUNK_S = 0.1
#: How long a finished reader waits for the analyzer to collect its last items.
END_HOLD_S = 3600.0


@dataclass
class CaptureConfig:
    """What one capture process needs, pickled to it (:mod:`stream.io.worker`).

    A run builds it from its :class:`~stream.runtime.options.RuntimeOptions` in one place,
    :func:`stream.runtime.lifecycle.capture_configs`; its defaults are that class's."""

    source: str  # "video" | "rtsp" | "camera" | "mic"
    target: str  # path, URL, or device index
    frames_endpoint: str | None
    audio_endpoint: str | None
    want_audio: bool = True
    #: False: read only the audio even where the source has video (``--audio FILE``); a source
    #: without a video stream is read audio-only either way
    want_video: bool = True
    realtime: bool = False  # pace a file at media speed
    max_side: int = DEFAULT_MAX_SIDE
    t0_ns: int = 0  # origin of live media time (monotonic ns)
    open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    sample_fps: float = 5.0
    parent_pid: int = 0  # the analyzer; the reader ends if it is gone
    extra: dict = field(default_factory=dict)
    #: where the process writes why it failed; default: beside its ipc:// endpoint (see error_path)
    error_file: str | None = None
    #: live sources only: reopen after an end, failure or stall (stream.io.reconnect)
    reconnect: ReconnectPolicy = field(default_factory=lambda: OFF)
    #: live sources only: go on from where another analyzer process left the stream
    resume: Resume | None = None

    @property
    def error_path(self) -> str | None:
        """The failure-reason file: ``error_file``, else ``<ipc endpoint path>.<source>.error``
        (in the analyzer's private temporary folder); ``None`` for tcp:// endpoints."""
        if self.error_file:
            return self.error_file
        endpoint = self.frames_endpoint or self.audio_endpoint or ""
        if endpoint.startswith("ipc://"):
            return f"{endpoint[len('ipc://') :]}.{self.source}.error"
        return None

    @property
    def live(self) -> bool:
        return self.source in ("rtsp", "camera", "mic")

    @property
    def lossless(self) -> bool:
        return self.source == "video" and not self.realtime


class _Stop(SignalEvent):
    """Set by SIGTERM: the parent's way of asking a capture process to end, and the signal
    Linux sends (once per thread of the parent) when the parent dies.  A
    :class:`~stream.core.signals.SignalEvent`, so a burst of them cannot deadlock the handler."""

    def install(self) -> None:
        from stream.core.signals import unblock_stop_signals

        unblock_stop_signals()  # the analyzer's mask may block SIGTERM (see that function)
        signal.signal(signal.SIGTERM, lambda *_: self.set())
        # Ctrl-C reaches the whole process group; the parent coordinates shutdown.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __bool__(self) -> bool:
        return self.is_set()


def _die_with_parent(parent_pid: int) -> bool:
    """Ask Linux to SIGTERM this process if the analyzer dies without cleaning up.

    Returns False when the parent is already gone (it died before the request).
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    return _parent_alive(parent_pid)


def _parent_alive(parent_pid: int) -> bool:
    """False once the analyzer that started this process is gone (this one was reparented)."""
    return parent_pid <= 0 or os.getppid() == parent_pid


def _report_failure(cfg: CaptureConfig, message: str) -> None:
    """Write why this capture process failed where the analyzer looks for it (one line; the
    newest reason wins).  Never raises."""
    path = cfg.error_path
    if not path:
        return
    line = redact(" ".join(str(message).split()))[:1000]
    try:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(line + "\n")
        os.replace(tmp, path)  # the reader sees the whole line or nothing
    except OSError:
        pass


def read_capture_error(cfg: CaptureConfig) -> str | None:
    """The failure reason a capture process left (``None`` if it left none)."""
    path = cfg.error_path
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().strip()
    except OSError:
        return None
    return text.splitlines()[-1] if text else None


def describe_capture_exit(cfg: CaptureConfig, exitcode: int | None) -> str:
    """One line for a capture process that has ended: its own reason when it left one
    (``capture failed: ValueError: ...``), else its exit code or the signal that killed it."""
    reason = read_capture_error(cfg)
    if reason:
        return reason if reason.startswith("capture failed") else f"capture failed: {reason}"
    what = redact(f"capture process for {cfg.source} {cfg.target}")
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"{what} was killed by {name}"
    return f"{what} exited (code {exitcode})"


def _send_error(sender: _Sender, cfg: CaptureConfig, message: str, streams: list[str]) -> None:
    """Report a failure both ways: a ``CaptureError`` message and the reason file."""
    _report_failure(cfg, message)
    log.debug("capture error: %s", message)
    sender.send_control(m.CaptureError(message, streams))


class _Sender:
    def __init__(self, ctx: zmq.Context, endpoint: str, *, hwm: int, blocking: bool, parent_pid: int = 0) -> None:
        self.parent_pid = parent_pid
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, 3000)
        self.sock.connect(endpoint)
        self.blocking = blocking
        self.drops = 0
        self.seq = 0

    def send(self, item: m.Item, stop: _Stop | None = None) -> bool:
        parts = m.encode(item)
        if not self.blocking:
            try:
                self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                self.drops += 1
                return False
        while True:  # blocking, but still responsive to a stop request
            if self.sock.poll(200, zmq.POLLOUT):
                self.sock.send_multipart(parts, copy=False)
                return True
            if stop is not None and stop:
                return False

    def send_control(self, item: m.Item) -> None:
        """Control messages (info, end, error) wait briefly for room rather than drop (not when
        the analyzer is gone: nobody would read them)."""
        deadline = time.monotonic() + 3.0
        while _parent_alive(self.parent_pid):
            if self.sock.poll(100, zmq.POLLOUT):
                self.sock.send_multipart(m.encode(item))
                return
            if time.monotonic() >= deadline:
                return

    def close(self) -> None:
        # without a reader (the analyzer gone) the queued items would only hold up the exit
        self.sock.close(linger=None if _parent_alive(self.parent_pid) else 0)


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Frame size with the longer side at most ``max_side`` (even numbers)."""
    scale = min(1.0, max_side / max(width, height)) if max_side > 0 else 1.0
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


def decode_audio_file(path: str | Path) -> np.ndarray:
    """The first audio stream of a media file as float32 mono at 16 kHz, resampled the way the
    capture process does it (for tests, benchmarks and offline tools)."""
    import av

    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=m.AUDIO_RATE)
        for frame in container.decode(audio=0):
            out.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        out.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def _open_container(cfg: CaptureConfig):
    import av

    if cfg.source == "video":
        return av.open(cfg.target, mode="r")
    # FFmpeg's own read timeout is only a backstop: the session's watchdog (_Watchdog) notices a
    # stall after read_timeout_s; FFmpeg's RTSP reader hands out one more (queued) packet when its
    # timeout first fires and fails only at the second, so on its own it took twice as long
    backstop = cfg.read_timeout_s + WATCHDOG_SLACK_S
    if cfg.source == "rtsp":
        return av.open(cfg.target, mode="r", options={"rtsp_transport": "tcp"}, timeout=(cfg.open_timeout_s, backstop))
    if cfg.source == "camera":
        device = f"/dev/video{cfg.target}" if str(cfg.target).isdigit() else cfg.target
        return av.open(device, mode="r", format="v4l2", timeout=(cfg.open_timeout_s, backstop))
    raise ValueError(f"unknown source kind {cfg.source!r}")


def describe_open_error(cfg: CaptureConfig, exc: BaseException) -> str:
    what = {"video": "cannot open video file", "rtsp": "cannot open RTSP stream", "camera": "cannot open camera"}.get(
        cfg.source, "cannot open source"
    )
    detail = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
    return redact(f"{what} {cfg.target}: {detail}")


def truncation_note(cfg: CaptureConfig, declared: float | None, decoded: float) -> str | None:
    """A file whose decoded media ends well before the duration its container declares (by
    more than max(1 s, 10 %)) was probably cut short: one line saying so, else ``None``."""
    if cfg.source != "video" or not declared or declared <= 0:
        return None
    if declared - decoded <= max(1.0, 0.1 * declared):
        return None
    return f"file ends at {decoded:.1f} s but declares {declared:.1f} s: truncated?"


#: How much later than the watchdog FFmpeg's own read timeout fires (seconds).
WATCHDOG_SLACK_S = 1.0
#: How often the watchdog looks at the time since the last packet (seconds).
WATCHDOG_POLL_S = 0.1

AUDIO_ANCHOR_TOL_S = 0.1
"""Audio whose timestamps drift this far from the samples counted since its anchor is
re-anchored to its timestamps (a gap, a clock jump, a reconnect)."""


class _AvReader:
    """One audio-visual source read across its sessions (a reconnect opens a new one): the
    5 fps grid, media time, frame numbers and audio timing carry over from session to session,
    so media time never goes backwards and the grid never serves a point twice."""

    def __init__(self, cfg: CaptureConfig, stop: _Stop, frames: _Sender, audio: _Sender | None) -> None:
        self.cfg, self.stop, self.frames, self.audio = cfg, stop, frames, audio
        self.fps = 0.0
        self.size = (0, 0)
        self.sampler = GridSampler(cfg.sample_fps)
        self.media_time: MediaTime | None = None
        self.camera_start = 0.0  # a camera's media time at the run's start (a resumed stream's)
        self.numbers: FrameNumbers | None = None
        self.last_t: float | None = None  # media time of the newest frame
        self.last_wall = 0.0  # monotonic time it arrived
        self.decoded = 0
        self.jump_notes = 0
        self.audio_next: float | None = None  # media time of the next audio sample
        self.pending: list[np.ndarray] = []
        self.pending_n = 0
        self.chunk_n = int(AUDIO_CHUNK_S * m.AUDIO_RATE)
        self.wall0 = time.monotonic()
        # a live source's loss and return, shared with the session's watchdog thread: the
        # reader holds ``lock`` while it handles a packet (never while FFmpeg waits for one),
        # so the two threads never send on the ZeroMQ sockets at the same time
        self.lock = threading.Lock()
        self.last_packet = time.monotonic()  # when the session's last video packet came
        self.stalled = False  # the watchdog found this session silent for read_timeout_s
        self.lost: tuple[float, str] | None = None  # (last media time, why) of an open gap
        self.resumed = False  # the open gap is the one between another analyzer process and this one
        self.origin: float | None = None  # monotonic time of media time 0 (live sources)
        self.attempt = 0  # reopen attempts since the source was last delivering
        #: no video is read (none in the source, or ``want_video`` off): the audio's packets
        #: and timestamps then do what the video's do (media time, pacing, the watchdog)
        self.audio_only = False

    # ------------------------------------------------------------------ set-up
    def describe(self, container) -> tuple[m.StreamInfo, object, object]:
        """The first session fixes frame rate and output size; returns the stream info and the
        video and audio streams to read (no video stream: an audio-only source, see
        :meth:`describe_audio_only`)."""
        cfg = self.cfg
        if not container.streams.video or not cfg.want_video:
            return self.describe_audio_only(container)
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        a_stream = container.streams.audio[0] if (container.streams.audio and cfg.want_audio) else None
        audio_note = None
        if a_stream is None:
            audio_note = "audio not requested" if not cfg.want_audio else "the source has no audio track"
        fps, fps_note = sane_fps(vs.average_rate, vs.guessed_rate, vs.base_rate)
        if fps_note:
            self.frames.send_control(m.CaptureError(fps_note, [m.VIDEO], fatal=False))
        self.fps = fps
        self.size = scaled_size(vs.codec_context.width, vs.codec_context.height, cfg.max_side)
        self.media_time = MediaTime(fps)
        self.numbers = FrameNumbers(fps)
        duration = float(container.duration / 1e6) if container.duration else None
        info = m.StreamInfo(
            source=cfg.source,
            streams=[m.VIDEO] + ([m.AUDIO] if a_stream else []),
            fps=fps,
            width=self.size[0],
            height=self.size[1],
            duration=duration,
            live=cfg.live,
            audio_note=audio_note,
        )
        return info, vs, a_stream

    def describe_audio_only(self, container) -> tuple[m.StreamInfo, object, object]:
        """A source read for its audio alone (a sound file, an audio-only RTSP stream, or
        ``--audio`` on a file with a picture): no frames, media time from the audio's own
        timestamps. The stream info lists only the audio stream."""
        cfg = self.cfg
        a_stream = container.streams.audio[0]
        self.audio_only = True
        self.fps = 0.0
        self.media_time = MediaTime(0.0)
        self.numbers = FrameNumbers(0.0)
        duration = float(container.duration / 1e6) if container.duration else None
        if duration is None and a_stream.duration is not None and a_stream.time_base is not None:
            duration = float(a_stream.duration * a_stream.time_base)
        info = m.StreamInfo(source=cfg.source, streams=[m.AUDIO], duration=duration, live=cfg.live)
        return info, None, a_stream

    # ------------------------------------------------------------------ audio
    def _flush_audio(self, force: bool = False) -> None:
        if not self.pending or (self.pending_n < self.chunk_n and not force):
            return
        pcm = np.concatenate(self.pending)
        self.pending, self.pending_n = [], 0
        if self.audio_next is None or self.audio is None:
            return
        start = self.audio_next
        self.audio_next += pcm.shape[0] / m.AUDIO_RATE
        if start < 0:  # samples before the first video frame
            cut = min(pcm.shape[0], int(round(-start * m.AUDIO_RATE)))
            pcm, start = pcm[cut:], start + cut / m.AUDIO_RATE
            if pcm.size == 0:
                return
        chunk = m.AudioChunk(
            seq=self.audio.seq, pts=start, t_capture_ns=m.now_ns(), samples=pcm, sender_drops=self.audio.drops
        )
        self.audio.seq += 1
        self.audio.send(chunk, self.stop)

    def _audio_frame(self, rf) -> None:
        """One resampled audio frame: placed by its own timestamp when it has one (re-anchored
        whenever the count of samples drifts from it), else right after the previous one."""
        if self.cfg.source == "camera" or rf.time is None:
            at = (
                (m.now_ns() - self.cfg.t0_ns) / 1e9 - rf.samples / m.AUDIO_RATE if self.cfg.source == "camera" else None
            )
        else:
            assert self.media_time is not None
            at = self.media_time.audio_time(rf.time)
        counted = None if self.audio_next is None else self.audio_next + self.pending_n / m.AUDIO_RATE
        if at is not None and (counted is None or abs(at - counted) > AUDIO_ANCHOR_TOL_S):
            self._flush_audio(force=True)
            self.audio_next = at
        elif counted is None:
            return  # no timing yet: wait for a stamped frame
        pcm = rf.to_ndarray().reshape(-1).astype(np.float32, copy=False)
        self.pending.append(pcm)
        self.pending_n += pcm.shape[0]

    # ------------------------------------------------------------------ video
    def _send_picks(self, picks: list) -> None:
        out_w, out_h = self.size
        for grid_t, (index, t_cap, vframe) in picks:
            img = vframe.to_ndarray(format="rgb24", width=out_w, height=out_h)
            # the analysed frame stands for its grid point: its pts is the grid time, so that
            # window membership never depends on timestamp jitter (windows.GridSampler)
            item = m.VideoFrame(
                seq=self.frames.seq,
                index=index,
                pts=grid_t,
                t_capture_ns=t_cap,
                image=img,
                sender_drops=self.frames.drops,
            )
            self.frames.seq += 1
            self.frames.send(item, self.stop)

    def _video_frame(self, frame, on_first) -> None:
        cfg = self.cfg
        assert self.media_time is not None and self.numbers is not None
        t_cap = m.now_ns()
        if cfg.source == "camera":  # its media time: the wall clock since the run began (a resumed
            t = self.camera_start + (t_cap - cfg.t0_ns) / 1e9  # stream's: since its previous run left)
            if self.last_t is not None and t <= self.last_t:
                t = self.last_t + 1e-3
        else:
            ft = frame.time
            if ft is None:
                ft = self.decoded / self.fps
            jumps = self.media_time.jumps
            t = self.media_time(ft)  # from 0, never backwards, clock leaps closed up
            # a file's clock that leaps is worth a warning; a live source's re-synchronising clock
            # (RTSP after a reconnect) is not news
            if self.media_time.jumps > jumps and self.jump_notes < 3 and not cfg.live:
                self.jump_notes += 1
                at, by = self.media_time.last_jump or (t, 0.0)
                way = "forward" if by > 0 else "backward"
                self.frames.send_control(
                    m.CaptureError(
                        f"frame times jump {way} by {abs(by):.2f} s at {at:.2f} s of media time; media time "
                        "continues one frame on",
                        [m.VIDEO],
                        fatal=False,
                    )
                )
        if on_first is not None:
            on_first(t)
        index = self.numbers(t)
        self.decoded += 1
        self.last_t, self.last_wall = t, time.monotonic()
        if cfg.realtime:
            delay = self.wall0 + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t_cap = m.now_ns()  # a paced file frame is "captured" when its time comes
        self._send_picks(self.sampler.push(t, (index, t_cap, frame)))

    # ------------------------------------------------------------------ loss and return
    def declare_lost(self, why: str) -> None:
        """The source is lost (its session ended, failed or stalled): the frame waiting for a
        next one to settle its grid point goes out, then a :class:`~stream.core.messages.Gap`
        with no end, on which the analyzer finishes the windows that hold the last frames at
        once, with the frames they have.  Called with :attr:`lock` held; once per gap."""
        if self.lost is not None:
            return
        last = self.last_t if self.last_t is not None else 0.0
        if not self.stop:
            self._send_picks(self.sampler.flush(self.duration))
        self._flush_audio(force=True)
        self.lost = (last, why)
        self.frames.send_control(m.Gap(last, None, why, attempts=0, wall_time=time.time()))

    def back(self, t_first: float) -> None:
        """The first frame after a gap (media time ``t_first``): the gap closes on record."""
        if self.lost is not None:
            start, why = self.lost
            gap = m.Gap(start, t_first, why, attempts=self.attempt, wall_time=time.time(), resumed=self.resumed)
            self.frames.send_control(gap)
            self.lost, self.resumed = None, False
        self.attempt = 0

    def restart_media_time(self, opened_at: float) -> None:
        """A reopened live source: its first frame's media time is the time since media time 0
        by the monotonic clock, taken when the reopen began, never at or before the last frame.
        From media time 0, not from the last frame: how far a session's frame times ran from
        the wall clock does not carry over.  From when the reopen began, not when the session
        was open: a server's first frames are what it sent while the connection was set up (a
        second or so, delivered in a burst), older than their arrival; counting from the open
        ran media time a second or more ahead of the wall clock per reconnect."""
        assert self.media_time is not None
        anchor = (opened_at - self.origin) if self.origin is not None else (self.last_t or 0.0)
        self.media_time.restart(anchor)
        self.audio_next = None  # re-anchored to the new session's first stamped audio

    # ------------------------------------------------------------------ one session
    def session(self, container, vs, a_stream, on_first=None) -> None:
        """Read one opened container to its end (returns) or a failure (raises).  A live
        session runs under a :class:`_Watchdog`: no video packet for ``read_timeout_s`` seconds
        declares the source lost and ends the session."""
        import av

        resampler = av.AudioResampler(format="flt", layout="mono", rate=m.AUDIO_RATE) if a_stream else None
        demux = ([vs] if vs is not None else []) + ([a_stream] if a_stream else [])
        first = [on_first]
        clock = "audio" if self.audio_only else "video"  # the stream whose packets keep the session alive

        def video(frame) -> None:
            self._video_frame(frame, first[0])
            first[0] = None

        self.stalled = False
        self.last_packet = time.monotonic()
        watchdog = _Watchdog(self, declare=self.cfg.reconnect.enabled) if self.cfg.live else None
        try:
            for packet in container.demux(*demux):
                with self.lock:
                    if self.stop or self.stalled:
                        break
                    if packet.stream.type == clock:
                        self.last_packet = time.monotonic()
                    try:
                        decoded = packet.decode()
                    except av.error.InvalidDataError:
                        continue  # a damaged packet: skip it, keep the stream going
                    for frame in decoded:
                        if packet.stream.type == "video":
                            video(frame)
                        elif resampler is not None and self.audio is not None:
                            if self.audio_only:
                                self._audio_only_frame(frame, first[0])
                                first[0] = None
                            elif self.last_t is None and self.cfg.source != "camera":
                                continue  # wait for the first video frame to fix the origin
                            for rf in resampler.resample(frame):
                                self._audio_frame(rf)
                            self._flush_audio()
        except Exception:
            if not self.stalled:  # the watchdog cut the connection: the stall is the reason
                raise
        finally:
            if watchdog is not None:
                watchdog.close()
            with self.lock:
                if resampler is not None and self.audio is not None and self.last_t is not None and not self.stalled:
                    try:
                        for rf in resampler.resample(None):
                            self._audio_frame(rf)
                    except Exception:  # noqa: BLE001 - a half-read session's resampler may be unusable
                        pass
                    self._flush_audio(force=True)

    def _audio_only_frame(self, frame, on_first) -> None:
        """An audio frame of an audio-only source, before resampling: the first one (of a
        session) anchors media time, as a first video frame does; a paced file waits for its
        time; :attr:`last_t` follows the audio."""
        assert self.media_time is not None
        ft = frame.time
        if self.media_time.offset is None:
            start = self.media_time(ft if ft is not None else 0.0)
            if on_first is not None:
                on_first(start)
        t = self.media_time.audio_time(ft) if ft is not None else self.audio_next
        if t is not None:
            self.last_t, self.last_wall = max(t, self.last_t or 0.0), time.monotonic()
            if self.cfg.realtime:
                delay = self.wall0 + t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

    # ------------------------------------------------------------------ the end
    @property
    def duration(self) -> float:
        if self.audio_only:  # where the audio sent reaches
            return max(self.audio_next or 0.0, self.last_t or 0.0)
        return (self.last_t + 1.0 / self.fps) if self.last_t is not None else 0.0

    def finish(self) -> None:
        if not self.stop:
            self._send_picks(self.sampler.flush(self.duration))

    def end(self, reason: str) -> m.EndOfStream:
        return m.EndOfStream(
            streams=([] if self.audio_only else [m.VIDEO]) + ([m.AUDIO] if self.audio else []),
            reason=reason,
            frames=self.numbers.total if self.numbers is not None else 0,
            duration=self.duration,
            sender_drops={m.VIDEO: self.frames.drops, m.AUDIO: self.audio.drops if self.audio else 0},
        )


class _Watchdog:
    """Watches a live session from a thread of its own: when no video packet has come for
    ``read_timeout_s`` seconds, it marks the session stalled and cuts its TCP connection
    (``shutdown``, see :func:`_cut_connections`), so that the read FFmpeg waits in returns now,
    not when FFmpeg's own timeout fires, and the reader declares the loss.  A V4L2 camera has no
    connection to cut: the watchdog then declares the loss itself (``declare``: when the source
    is to be reopened), under the reader's lock, and the read ends when FFmpeg's timeout does."""

    def __init__(self, reader: _AvReader, *, declare: bool) -> None:
        self.reader = reader
        self.declare = declare
        self.done = threading.Event()
        self.peers = _peer_addresses(reader.cfg) if reader.cfg.source == "rtsp" else set()
        self.thread = threading.Thread(target=self._run, name="capture-watchdog", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        r = self.reader
        timeout = r.cfg.read_timeout_s
        while not self.done.wait(WATCHDOG_POLL_S):
            if r.stop or time.monotonic() - r.last_packet < timeout:
                continue
            if not r.lock.acquire(timeout=WATCHDOG_POLL_S):
                continue  # the reader is handling a packet: it is not stalled
            try:
                if self.done.is_set() or time.monotonic() - r.last_packet < timeout:
                    continue
                r.stalled = True
            finally:
                r.lock.release()
            cut = _cut_connections(self.peers)
            log.info("no data for %g s: %d connection(s) cut", timeout, cut)
            if not cut and self.declare:
                with r.lock:
                    r.declare_lost(describe_stall(r.cfg))
            return

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=2.0)


def _peer_addresses(cfg: CaptureConfig) -> set[tuple[str, int]]:
    """The (address, port) pairs an RTSP URL's server may be reached at (empty when the URL's
    host cannot be resolved: nothing is cut then, and FFmpeg's own timeout ends the read)."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(cfg.target)
        host, port = url.hostname, url.port or (322 if url.scheme.lower() == "rtsps" else 554)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM) if host else []
    except (OSError, ValueError):
        return set()
    return {(str(info[4][0]), int(info[4][1])) for info in infos}


def _cut_connections(peers: set[tuple[str, int]]) -> int:
    """Shut down this process's TCP connections to ``peers`` (both directions), so that a read
    FFmpeg is waiting in returns at once; the descriptors stay FFmpeg's to close.  Returns how
    many were cut."""
    if not peers:
        return 0
    cut = 0
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    for name in fds:
        try:
            fd = int(name)
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            dup = os.dup(fd)
        except (ValueError, OSError):
            continue
        try:
            with socket.socket(fileno=dup) as sock:  # closes the duplicate only
                if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                    continue
                peer = sock.getpeername()
                if (str(peer[0]), int(peer[1])) in peers:
                    sock.shutdown(socket.SHUT_RDWR)
                    cut += 1
        except OSError:
            continue
    return cut


def describe_stall(cfg: CaptureConfig) -> str:
    """``no data for N s from rtsp://…``: a live session that went silent."""
    where = redact(f"camera {cfg.target}" if cfg.source == "camera" else cfg.target)
    return f"no data for {cfg.read_timeout_s:g} s from {where}"


def describe_session_end(cfg: CaptureConfig, exc: BaseException | None) -> str:
    """Why a live session ended, in one line: ``no data for N s from rtsp://…`` for a read
    that timed out, ``end of stream from …`` for a source that closed, else the error."""
    where = redact(f"camera {cfg.target}" if cfg.source == "camera" else cfg.target)
    if exc is None:
        return f"end of stream from {where}"
    if _is_timeout(exc):
        return describe_stall(cfg)
    detail = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
    return redact(f"lost {where}: {detail}")


def _is_timeout(exc: BaseException) -> bool:
    """FFmpeg's interrupt callback (PyAV's read timeout) ends a read with AVERROR_EXIT, or a
    socket read times out with ETIMEDOUT."""
    import errno

    code = getattr(exc, "errno", None)
    return code in (-1414092869, 1414092869, errno.ETIMEDOUT, -errno.ETIMEDOUT) or "Immediate exit" in str(exc)


def run_av_capture(cfg: CaptureConfig, stop: _Stop | None = None, *, hold_s: float = 0.0) -> None:
    """Decode a file/RTSP/camera source and push frames and audio until the end or a stop.

    A live source is reopened under ``cfg.reconnect`` when it ends, fails or stalls (no video
    packet for ``read_timeout_s``: :class:`_Watchdog`): a :class:`~stream.core.messages.Gap`
    goes out when it is lost and again when it is back (with the media times of the last frame
    before and the first frame after), and media time goes on by the wall-clock time away
    (:meth:`_AvReader.restart_media_time`).  When the policy gives up, the stream ends with
    reason ``source_lost``."""
    if cfg.frames_endpoint is None:
        raise ValueError(f"{cfg.source} capture needs a frames endpoint")
    stop = _Stop() if stop is None else stop
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    frames = _Sender(ctx, cfg.frames_endpoint, hwm=FRAME_HWM, blocking=cfg.lossless, parent_pid=cfg.parent_pid)
    audio = (
        _Sender(ctx, cfg.audio_endpoint, hwm=AUDIO_HWM, blocking=cfg.lossless, parent_pid=cfg.parent_pid)
        if cfg.audio_endpoint
        else None
    )
    streams = [m.VIDEO] + ([m.AUDIO] if audio else [])
    policy = cfg.reconnect if cfg.live and cfg.source != "mic" else OFF
    reader = _AvReader(cfg, stop, frames, audio)
    rng = random.Random()
    info: m.StreamInfo | None = None
    vs = a_stream = None
    end_reason = "eof"

    def send_both(item: m.Item) -> None:
        frames.send_control(item)
        if audio is not None and info is not None and m.AUDIO in info.streams:
            audio.send_control(item)

    try:
        while not stop:
            container = None
            opened_at = time.monotonic()
            try:
                container = _open_container(cfg)
                if not container.streams.video and not (container.streams.audio and audio is not None):
                    what = "no video or audio stream" if cfg.want_audio else "no video stream"
                    raise _NoVideo(redact(f"{what} in {cfg.target}"))
                if not cfg.want_video and not container.streams.audio:
                    raise _NoVideo(redact(f"no audio stream in {cfg.target}"))
            except Exception as exc:  # av.error.* and OSError: report, never a traceback
                if container is not None:
                    container.close()
                why = str(exc) if isinstance(exc, _NoVideo) else describe_open_error(cfg, exc)
                waiting = info is None and policy.wait_at_start
                if not policy.enabled or (info is None and not waiting):
                    if info is None:
                        _send_error(frames, cfg, why, streams)
                        return
                    end_reason = "source_lost"
                    frames.send_control(m.CaptureError(why, [m.VIDEO], fatal=False))
                    break
                reader.attempt += 1
                if policy.gives_up(reader.attempt):
                    tries = reader.attempt - 1
                    note = f"gave up on {redact(cfg.target)} after {tries} reconnect attempt(s): {why}"
                    if info is None:
                        _send_error(frames, cfg, note, streams)
                        return
                    frames.send_control(m.CaptureError(note, [m.VIDEO], fatal=False))
                    end_reason = "source_lost"
                    break
                delay = policy.delay(reader.attempt, rng)
                if info is None:
                    frames.send_control(
                        m.CaptureError(
                            f"waiting for {redact(cfg.target)}: {why}; attempt {reader.attempt + 1} in {delay:.1f} s",
                            [m.VIDEO],
                            fatal=False,
                        )
                    )
                log.info("%s; reopening in %.1f s (attempt %d)", why, delay, reader.attempt)
                stop.wait(delay)
                continue
            try:
                if info is None:
                    info, vs, a_stream = reader.describe(container)
                    send_both(info)
                    reader.origin = opened_at  # media time 0: the first frame, sent from about now
                    if cfg.resume is not None and cfg.live:
                        # another analyzer process had this stream: go on from where it left it,
                        # the stretch since then a gap (closed by the first frame, see back())
                        assert reader.media_time is not None
                        start = cfg.resume.media_start(time.time())
                        reader.media_time.restart(start)
                        reader.camera_start = start - (m.now_ns() - cfg.t0_ns) / 1e9
                        reader.origin = opened_at - start
                        reader.lost = (cfg.resume.after_s, cfg.resume.reason)
                        reader.resumed = True
                elif reader.audio_only:
                    vs, a_stream = None, (container.streams.audio[0] if container.streams.audio else None)
                    if a_stream is None:
                        raise _NoVideo(redact(f"no audio stream in {cfg.target}"))
                    reader.restart_media_time(opened_at)
                else:
                    vs = container.streams.video[0]
                    vs.thread_type = "AUTO"
                    a_stream = container.streams.audio[0] if (container.streams.audio and audio) else None
                    # media time goes on by the time the source was away (a camera's clock does so itself)
                    reader.restart_media_time(opened_at)
                failure: BaseException | None = None
                try:
                    reader.session(container, vs, a_stream, on_first=reader.back)
                except Exception as exc:  # a failure mid-stream: reconnect or end
                    failure = exc
                    log.debug("capture session ended by an error", exc_info=True)
            finally:
                container.close()
            if stop:
                break
            if not policy.enabled:
                if reader.stalled:  # silent for --timeout: not an end of stream, the source is lost
                    frames.send_control(m.CaptureError(describe_stall(cfg), [m.VIDEO], fatal=False))
                    end_reason = "source_lost"
                elif failure is not None:
                    raise failure
                break
            why = describe_stall(cfg) if reader.stalled else describe_session_end(cfg, failure)
            with reader.lock:
                reader.declare_lost(why)
            reader.attempt += 1
            if policy.gives_up(reader.attempt):
                frames.send_control(
                    m.CaptureError(
                        f"gave up on {redact(cfg.target)} after {reader.attempt - 1} reconnect attempt(s): {why}",
                        [m.VIDEO],
                        fatal=False,
                    )
                )
                end_reason = "source_lost"
                break
            delay = policy.delay(reader.attempt, rng)
            log.info("%s; reopening in %.1f s (attempt %d)", why, delay, reader.attempt)
            stop.wait(delay)
        if info is None:  # stopped before the source ever opened
            return
        reader.finish()
        if reader.media_time is not None and reader.media_time.jumps:
            log.debug("frame times jumped %d time(s); media time continued", reader.media_time.jumps)
        truncated = truncation_note(cfg, info.duration, reader.duration) if not stop else None
        if truncated:
            frames.send_control(m.CaptureError(truncated, [m.VIDEO], fatal=False))
        send_both(reader.end("stopped" if stop else end_reason))
    except Exception as exc:  # decoding failed mid-stream: say so, end cleanly
        msg = redact(f"capture failed: {type(exc).__name__}: {exc}")
        log.debug("capture failed", exc_info=True)
        _send_error(frames, cfg, msg, streams)
    finally:
        # Stay connected until the analyzer says it is done (SIGTERM): the last items may still
        # sit in kernel socket buffers, and ZeroMQ discards them when the sending end goes away.
        stop.wait(hold_s)
        frames.close()
        if audio is not None:
            audio.close()


class _NoVideo(Exception):
    """The source opened but has no video stream."""


def run_mic_capture(cfg: CaptureConfig, stop: _Stop | None = None, *, hold_s: float = 0.0) -> None:
    """Record the default (or ``cfg.target``) microphone at 16 kHz mono and push it.  Beside a
    camera it only adds audio; alone (``cfg.frames_endpoint`` set) it is the main source and its
    stream info, end and failures go on the frames socket too, as an audio-only source's."""
    import queue

    if cfg.audio_endpoint is None:
        raise ValueError("microphone capture needs an audio endpoint")
    stop = _Stop() if stop is None else stop
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    audio = _Sender(ctx, cfg.audio_endpoint, hwm=AUDIO_HWM, blocking=False, parent_pid=cfg.parent_pid)
    main = (
        _Sender(ctx, cfg.frames_endpoint, hwm=FRAME_HWM, blocking=False, parent_pid=cfg.parent_pid)
        if cfg.frames_endpoint
        else None
    )
    control = main if main is not None else audio  # where failures are reported
    streams = [m.AUDIO]

    def send_control(item: m.Item) -> None:
        audio.send_control(item)
        if main is not None:
            main.send_control(item)

    try:
        try:
            import sounddevice as sd
        except (ImportError, OSError) as exc:
            _send_error(
                control, cfg, f"microphone unavailable: {exc} (pip install sounddevice; Debian: libportaudio2)", streams
            )
            return
        q: queue.Queue = queue.Queue(maxsize=200)
        lost = [0]

        def callback(indata, nframes, time_info, status) -> None:  # PortAudio thread
            t = (m.now_ns() - cfg.t0_ns) / 1e9 - nframes / m.AUDIO_RATE
            try:
                q.put_nowait((max(t, 0.0), indata[:, 0].copy()))
            except queue.Full:
                lost[0] += 1

        device = None if cfg.target in ("", "default") else (int(cfg.target) if cfg.target.isdigit() else cfg.target)
        try:
            stream = sd.InputStream(
                samplerate=m.AUDIO_RATE,
                channels=1,
                dtype="float32",
                device=device,
                blocksize=int(AUDIO_CHUNK_S * m.AUDIO_RATE),
                callback=callback,
            )
        except Exception as exc:
            _send_error(control, cfg, f"cannot open microphone {cfg.target or 'default'}: {exc}", streams)
            return
        send_control(m.StreamInfo(source="mic", streams=streams, live=True))
        with stream:
            while not stop:
                try:
                    t, pcm = q.get(timeout=0.2)
                except queue.Empty:
                    continue
                audio.send(
                    m.AudioChunk(
                        seq=audio.seq, pts=t, t_capture_ns=m.now_ns(), samples=pcm, sender_drops=audio.drops + lost[0]
                    )
                )
                audio.seq += 1
        send_control(m.EndOfStream(streams=streams, reason="stopped", sender_drops={m.AUDIO: audio.drops + lost[0]}))
    finally:
        stop.wait(hold_s)
        audio.close()
        if main is not None:
            main.close()


def _setup_process_logging() -> None:
    """A spawned capture process inherits nothing: quiet its native libraries and log the
    ``cer_stream`` hierarchy like the analyzer (level from ``CER_STREAM_LOG_LEVEL``)."""
    from stream.core.logs import LEVEL_ENV, setup_logging, silence_native

    silence_native()
    try:
        setup_logging(os.environ.get(LEVEL_ENV, "warning"))
    except ValueError:
        setup_logging("warning")


def capture_main(cfg: CaptureConfig) -> None:
    """Entry point of a capture process.  An unexpected failure ends it with exit status 1,
    its reason left for the analyzer (:func:`describe_capture_exit`); the traceback is logged
    at debug level (``--log-level debug``)."""
    remember_url(cfg.target)  # this process's texts hide the source's password too (a fresh registry)
    stop = _Stop()
    stop.install()
    if not _die_with_parent(cfg.parent_pid):
        return
    failed = False
    try:
        _setup_process_logging()
        if cfg.source == "mic":
            run_mic_capture(cfg, stop, hold_s=END_HOLD_S)
        else:
            run_av_capture(cfg, stop, hold_s=END_HOLD_S)
    except BaseException as exc:  # noqa: BLE001 - the process ends here either way
        failed = True
        _report_failure(
            cfg, f"capture failed: {type(exc).__name__}: {exc}" if str(exc) else f"capture failed: {type(exc).__name__}"
        )
        log.debug("capture process failed", exc_info=True)
    finally:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        if not _parent_alive(cfg.parent_pid):
            ctx.destroy(linger=0)  # the analyzer is gone: what is still queued has no reader
        elif failed:
            ctx.destroy(linger=1000)  # sockets a failure left open would make term() wait forever
        else:
            ctx.term()
    if failed:
        sys.exit(1)
