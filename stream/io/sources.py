"""What a pipeline reads: files, RTSP, V4L2 cameras (with a microphone), or frames and audio
that the caller pushes in.

:class:`FileSource`, :class:`RtspSource` and :class:`CameraSource` are read by capture
processes (``stream.io.capture``) that push into the analyzer's ring buffers over ZeroMQ.
:class:`PushSource` has no process: the caller's own capture loop calls :meth:`PushSource.push_frame`
and :meth:`PushSource.push_audio`, which put items straight into the same ring buffers (after the
same 5 fps sampling, scaling and 16 kHz resampling the capture processes do).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.core import messages as m
from stream.core.redact import redact, redact_url, split_credentials, with_env_password
from stream.core.windows import SAMPLE_FPS, SampleClock
from stream.io.receiver import SourceState
from stream.io.ringbuffer import BLOCK, DROP_OLDEST, AudioRing, FrameRing

#: Analysed frames a ring holds (12.8 s at 5 fps: three windows' worth).
FRAME_RING = 64
#: Seconds of audio an audio ring holds.
AUDIO_RING_S = 60.0


class SourceError(ValueError):
    """A source that cannot be used as given (no such file, bad URL, no camera...)."""


@dataclass
class Source:
    """A stream to analyse.  ``kind`` is ``video``, ``rtsp``, ``camera`` or ``push``.

    ``realtime`` (files only): pace at media speed, like a live source; ``None`` takes the
    pipeline's ``RuntimeOptions.realtime``.
    """

    kind: str
    target: str
    mic: str | None = None  # microphone device ("default") to add, camera only
    audio: bool = True
    realtime: bool | None = None
    #: False: read the audio only, even where the source has a picture (``--audio FILE``); a
    #: source without a video stream is read audio-only either way
    video: bool = True

    @property
    def name(self) -> str:
        if self.kind == "video":
            return Path(self.target).stem
        return {"camera": "camera" + str(self.target), "rtsp": "rtsp"}.get(self.kind, self.kind)

    def describe(self) -> str:
        if self.kind == "camera":
            return redact(f"camera {self.target}")
        if self.kind == "mic":
            return f"microphone {self.target}"
        return redact(redact_url(self.target))

    def check(self) -> None:
        """Raise :class:`SourceError` (one line) when the source cannot be opened as given."""


class FileSource(Source):
    """A media file, analysed as fast as possible (nothing dropped) or, with ``realtime``,
    paced at media speed like a live source.  ``audio=False`` ignores its audio track;
    ``video=False`` its picture (``--audio FILE``: the audio and text modalities only).  A file
    without a video stream (wav, mp3, m4a, flac, ogg...) is analysed audio-only either way.
    ``realtime=None`` (default) takes the pipeline's ``RuntimeOptions.realtime``, so setting
    that option alone paces a file."""

    def __init__(
        self, path: str | os.PathLike, *, realtime: bool | None = None, audio: bool = True, video: bool = True
    ) -> None:
        super().__init__("video", str(path), audio=audio, realtime=realtime, video=video)

    def check(self) -> None:
        path = Path(self.target)
        if not path.exists():
            raise SourceError(f"no such file: {path}")
        if path.is_dir():
            raise SourceError(f"not a file: {path}")
        if not os.access(path, os.R_OK):
            raise SourceError(f"cannot read {path}: permission denied")


class RtspSource(Source):
    """An RTSP stream (TCP transport).  ``audio=False`` ignores its audio track.

    A password in the URL may hold any character, raw or percent-encoded (``%XX`` stands for
    its byte; see :func:`stream.core.redact.split_credentials` for where it ends); ``target``
    is the URL as FFmpeg gets it, user and password percent-encoded.  ``rtsp://user@host/...``
    takes its password from ``$CER_STREAM_RTSP_PASSWORD`` (never on a command line).  The
    password is remembered, so no text this process writes shows it."""

    def __init__(self, url: str, *, audio: bool = True) -> None:
        super().__init__("rtsp", with_env_password(url.strip()), audio=audio)

    def check(self) -> None:
        url = self.target
        parts = split_credentials(url)
        host = (parts.rest if parts else url.partition("://")[2]).split("/", 1)[0]
        if not url.lower().startswith(("rtsp://", "rtsps://")) or not host:
            raise SourceError(f"bad RTSP URL {redact(redact_url(url))!r}: expected rtsp://HOST[:PORT]/PATH")


class MicSource(Source):
    """A microphone alone (``--mic`` without a camera): live audio, the audio and text
    modalities only.  ``device``: ``"default"``, a device index or a name (sounddevice)."""

    def __init__(self, device: str | int = "default") -> None:
        super().__init__("mic", str(device).strip() or "default", audio=True, video=False)


@dataclass(frozen=True)
class MicrophoneSource:
    """A microphone (sounddevice; the ``mic`` extra), to add to a :class:`CameraSource`.
    ``device``: ``"default"``, a device index or a name."""

    device: str | int = "default"


class CameraSource(Source):
    """A V4L2 camera: an index (``/dev/videoN``) or a device path; ``mic`` adds microphone audio
    (a :class:`MicrophoneSource`, a device name, or ``True`` for the default microphone)."""

    def __init__(self, index_or_device: int | str, mic: MicrophoneSource | str | bool | None = None) -> None:
        if isinstance(mic, MicrophoneSource):
            mic = str(mic.device)
        elif mic is True:
            mic = "default"
        elif mic is False:
            mic = None
        # a V4L2 camera has no audio track; sound comes from the microphone
        super().__init__("camera", str(index_or_device).strip(), audio=False, mic=mic)

    def check(self) -> None:
        cam = self.target
        device = f"/dev/video{cam}" if cam.isdigit() else cam
        if not cam.isdigit() and not cam.startswith("/dev/"):
            raise SourceError(f"bad camera {cam!r}: give an index (0) or a device path (/dev/video0)")
        if not Path(device).exists():
            raise SourceError(f"camera {cam} not found: {device} does not exist")


class PushSource(Source):
    """Frames and audio pushed in by the caller, for applications that own their capture loop.

    ``push_frame(rgb, pts)`` takes an ``H x W x 3`` uint8 RGB frame and its media time in
    seconds (the first pushed item's time is media time 0); frames are sampled on the pipeline's 5 fps
    grid and scaled to ``max_side`` as the capture processes do, so push every frame you have.
    ``push_audio(samples, pts, sample_rate)`` takes float32 mono samples starting at media time
    ``pts`` (same clock as the frames); they are resampled to 16 kHz.  ``end()`` ends the stream.

    ``live=True`` (default) treats the source like a camera: when analysis falls behind, the
    oldest frames are dropped and windows skipped, and pushing never blocks.  ``live=False`` is
    lossless like a file: ``push_frame`` blocks while the frame ring is full, so push from
    another thread than the one that consumes :meth:`stream.Pipeline.run`.

    A PushSource serves one run.  ``fps`` is the rate of the frames you push (frame numbers in the
    records count pushed frames); ``audio=False`` says no audio will come.
    """

    def __init__(
        self,
        *,
        fps: float = 25.0,
        audio: bool = True,
        live: bool = True,
        name: str = "push",
        max_side: int | None = None,
    ) -> None:
        super().__init__("push", name, audio=audio)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.live = live
        self.max_side = max_side
        self.frames = FrameRing(FRAME_RING, policy=DROP_OLDEST if live else BLOCK)
        self.audio_ring = AudioRing(AUDIO_RING_S)
        self.state = SourceState(av_audio=audio)
        self._clock = SampleClock(SAMPLE_FPS)
        self._lock = threading.Lock()
        self._origin: float | None = None
        self._n = 0
        self._last_t = 0.0
        self._audio_next: float | None = None
        self._ended = False
        self._stopped = threading.Event()

    @property
    def name(self) -> str:
        return self.target

    def describe(self) -> str:
        return f"pushed frames ({self.target})"

    # ------------------------------------------------------------------ producer side
    def push_frame(self, rgb: np.ndarray, pts: float) -> bool:
        """Add one frame; returns whether it was kept for analysis (on the 5 fps grid)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB frame, got shape {rgb.shape}")
        with self._lock:
            if self._ended:
                raise RuntimeError("push_frame after end()")
            if self._origin is None:
                self._origin = float(pts)
            t = float(pts) - self._origin
            index = self._n
            self._n += 1
            self._last_t = max(self._last_t, t)
            t_cap = m.now_ns()
            if self.state.info is None:
                from stream.io.capture import scaled_size

                h, w = rgb.shape[:2]
                ow, oh = scaled_size(w, h, self.max_side or 960)
                self._size = (ow, oh)
                with self.state.cond:
                    self.state.info = m.StreamInfo(
                        source="push",
                        streams=[m.VIDEO] + ([m.AUDIO] if self.audio else []),
                        fps=self.fps,
                        width=ow,
                        height=oh,
                        duration=None,
                        live=self.live,
                        audio_note=None if self.audio else "audio not requested",
                    )
                    self.state.cond.notify_all()
            if not self._clock(t):
                return False
            img = self._scale(rgb)
            item = m.VideoFrame(seq=index, index=index, pts=t, t_capture_ns=t_cap, image=img)
        while not self.frames.put(item, timeout=0.2):  # only a lossless ring waits here
            if self._stopped.is_set():
                return False
        with self.state.cond:
            self.state.cond.notify_all()
        return True

    def _scale(self, rgb: np.ndarray) -> np.ndarray:
        ow, oh = self._size
        if rgb.shape[1] == ow and rgb.shape[0] == oh:
            return np.ascontiguousarray(rgb, dtype=np.uint8)
        import cv2

        return cv2.resize(np.ascontiguousarray(rgb, dtype=np.uint8), (ow, oh), interpolation=cv2.INTER_AREA)

    def push_audio(self, samples: np.ndarray, pts: float, sample_rate: int = m.AUDIO_RATE) -> None:
        """Add mono audio that starts at media time ``pts`` (the frames' clock)."""
        if not self.audio:
            raise RuntimeError("this PushSource was made with audio=False")
        pcm = np.asarray(samples, dtype=np.float32).reshape(-1)
        if sample_rate != m.AUDIO_RATE and pcm.size:
            n = int(round(pcm.size * m.AUDIO_RATE / sample_rate))
            x = np.arange(n) * (sample_rate / m.AUDIO_RATE)
            pcm = np.interp(x, np.arange(pcm.size), pcm).astype(np.float32)
        with self._lock:
            if self._ended:
                raise RuntimeError("push_audio after end()")
            if self._origin is None:
                self._origin = float(pts)
            start = float(pts) - self._origin
            if start < 0:  # samples before the first video frame
                cut = min(pcm.size, int(round(-start * m.AUDIO_RATE)))
                pcm, start = pcm[cut:], start + cut / m.AUDIO_RATE
            if pcm.size == 0:
                return
            self.audio_ring.put(m.AudioChunk(seq=0, pts=start, t_capture_ns=m.now_ns(), samples=pcm))
        with self.state.cond:
            self.state.cond.notify_all()

    def end(self) -> None:
        """No more frames or audio: the remaining windows are analysed and the run ends."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            n, last_t = self._n, self._last_t
        with self.state.cond:
            if self.state.info is None:  # nothing was pushed
                self.state.info = m.StreamInfo(
                    source="push", streams=[m.VIDEO], fps=self.fps, live=self.live, audio_note="nothing was pushed"
                )
                self.state.av_audio = False
            self.state.video_end = m.EndOfStream(
                streams=[m.VIDEO], reason="eof", frames=n, duration=(last_t + 1.0 / self.fps) if n else 0.0
            )
            self.state.av_audio_done = True
            self.state.cond.notify_all()

    # ------------------------------------------------------------------ analyzer side
    def attach(self, max_side: int) -> None:
        """Called when a run starts: frames pushed from now on are scaled to ``max_side``."""
        if self.max_side is None:
            self.max_side = max_side

    def detach(self) -> None:
        """The run is over: a producer blocked on a full lossless ring returns."""
        self._stopped.set()


__all__ = ["CameraSource", "FileSource", "MicrophoneSource", "PushSource", "RtspSource", "Source", "SourceError"]
