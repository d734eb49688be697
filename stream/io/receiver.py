"""The analyzer's receiving end: drains ZeroMQ into the ring buffers.

A single thread polls the frame and audio PULL sockets, decodes each item
and files it into :class:`~stream.io.ringbuffer.FrameRing` /
:class:`~stream.io.ringbuffer.AudioRing`.  Control items (stream info, end of
stream, capture errors) update :class:`SourceState`, whose condition
variable wakes the window loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import zmq

from stream.core import messages as m
from stream.io.ringbuffer import AudioRing, FrameRing

FRAME_RCVHWM = 8
AUDIO_RCVHWM = 256


@dataclass
class SourceState:
    """What the analyzer knows about its sources; guarded by ``cond``."""

    av_audio: bool  # the audio-visual reader may send audio
    mic: bool = False  # a microphone reader sends audio
    cond: threading.Condition = field(default_factory=threading.Condition)
    info: m.StreamInfo | None = None
    video_end: m.EndOfStream | None = None
    video_failed: bool = False
    av_audio_done: bool = False
    mic_done: bool = False
    errors: list[m.CaptureError] = field(default_factory=list)
    #: the fatal errors of the main source (the one on the frames socket: a video source, or an
    #: audio-only one: a sound file, an audio-only RTSP stream, a microphone alone)
    main_fatal: list[m.CaptureError] = field(default_factory=list)
    sender_drops: dict[str, int] = field(default_factory=lambda: {m.VIDEO: 0, m.AUDIO: 0})
    malformed: int = 0
    #: every Gap message, in order (lost: ``end`` None; back: ``end`` set)
    gap_events: list[m.Gap] = field(default_factory=list)
    #: closed gaps as (last media time before, first after)
    gaps: list[tuple[float, float]] = field(default_factory=list)
    gap_open: m.Gap | None = None

    @property
    def audio_only(self) -> bool:
        """The main source has no video (its stream info lists only audio)."""
        return self.info is not None and m.VIDEO not in self.info.streams

    @property
    def video_done(self) -> bool:
        return self.video_end is not None or self.video_failed

    @property
    def audio_expected(self) -> bool:
        return self.av_audio or self.mic

    @property
    def audio_done(self) -> bool:
        return (not self.av_audio or self.av_audio_done) and (not self.mic or self.mic_done)


class Receiver(threading.Thread):
    """Thread that owns the PULL sockets (bound here, capture processes connect)."""

    def __init__(
        self,
        *,
        frames_endpoint: str,
        audio_endpoint: str | None,
        frames: FrameRing,
        audio: AudioRing,
        state: SourceState,
        context: zmq.Context | None = None,
        lossless_audio: bool = False,
    ) -> None:
        super().__init__(name="cer-receiver", daemon=True)
        self.ctx = context or zmq.Context.instance()
        self.frames, self.audio, self.state = frames, audio, state
        self.stop_event = threading.Event()
        self.frame_sock = self._bind(frames_endpoint, FRAME_RCVHWM)
        self.audio_sock = self._bind(audio_endpoint, AUDIO_RCVHWM) if audio_endpoint else None
        self.received = {m.VIDEO: 0, m.AUDIO: 0}
        self.lossless_audio = lossless_audio  # a file read as fast as possible: never drop its audio

    def _bind(self, endpoint: str, hwm: int) -> zmq.Socket:
        sock = self.ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        return sock

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.frame_sock, zmq.POLLIN)
        if self.audio_sock is not None:
            poller.register(self.audio_sock, zmq.POLLIN)
        try:
            while not self.stop_event.is_set():
                for sock, _ in poller.poll(100):
                    self._handle(sock.recv_multipart(copy=False), video=sock is self.frame_sock)
        finally:
            self.frame_sock.close()
            if self.audio_sock is not None:
                self.audio_sock.close()

    def _handle(self, parts, *, video: bool) -> None:
        try:
            item = m.decode([p.buffer for p in parts])
        except ValueError:
            with self.state.cond:
                self.state.malformed += 1
            return
        st = self.state
        if isinstance(item, m.VideoFrame):
            self.received[m.VIDEO] += 1
            while not self.frames.put(item, timeout=0.2):  # only a lossless ring waits here
                if self.stop_event.is_set():
                    return
            self._notify(drops=(m.VIDEO, item.sender_drops))
        elif isinstance(item, m.AudioChunk):
            self.received[m.AUDIO] += 1
            # an audio-only file read as fast as possible: its audio paces the windows as a video's
            # frames do, so the ring waits for the analyzer instead of dropping unanalysed audio
            # (beside video the frame ring does the waiting: this thread must keep taking frames)
            while self.lossless_audio and self.state.audio_only and self.audio.full(item):
                if self.stop_event.wait(0.05):
                    return
            self.audio.put(item)
            self._notify(drops=(m.AUDIO, item.sender_drops))
        elif isinstance(item, m.StreamInfo):
            with st.cond:
                if video and st.info is None:
                    st.info = item
                    if m.AUDIO not in item.streams:
                        st.av_audio = False  # no audio track, or not asked for
                st.cond.notify_all()
        elif isinstance(item, m.EndOfStream):
            with st.cond:
                if video:
                    st.video_end = item
                    st.sender_drops[m.VIDEO] = max(st.sender_drops[m.VIDEO], item.sender_drops.get(m.VIDEO, 0))
                elif m.VIDEO in item.streams or st.audio_only:
                    st.av_audio_done = True
                else:
                    st.mic_done = True
                if not video:
                    st.sender_drops[m.AUDIO] = max(st.sender_drops[m.AUDIO], item.sender_drops.get(m.AUDIO, 0))
                st.cond.notify_all()
        elif isinstance(item, m.Gap):
            with st.cond:
                st.gap_events.append(item)
                if item.end is None:
                    st.gap_open = item
                else:
                    st.gap_open = None
                    st.gaps.append((item.start, item.end))
                st.cond.notify_all()
        elif isinstance(item, m.CaptureError):
            with st.cond:
                st.errors.append(item)
                if item.fatal:
                    if video or m.VIDEO in item.streams:
                        st.main_fatal.append(item)
                        st.video_failed = True
                        st.av_audio_done = True  # the same process carried the audio track
                    else:
                        st.mic_done = True
                st.cond.notify_all()

    def _notify(self, *, drops: tuple[str, int]) -> None:
        with self.state.cond:
            kind, n = drops
            self.state.sender_drops[kind] = max(self.state.sender_drops[kind], n)
            self.state.cond.notify_all()

    def stop(self, timeout: float = 2.0) -> None:
        self.stop_event.set()
        self.join(timeout)
