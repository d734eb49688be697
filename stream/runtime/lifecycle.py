"""Capture lifecycle: start the sources, wait for the start-up handshake, stop them.

:class:`ProcessCapture` runs the capture processes of a file, RTSP or camera source (programs of
their own, :mod:`stream.io.worker`, so they inherit nothing and never re-import the caller's
``__main__``; SIGTERM, then SIGKILL after a grace period; they also die with this process if it
is killed outright) and the receiver thread that drains them into the ring
buffers.  :class:`InProcessCapture` does the same job for a :class:`~stream.io.sources.PushSource`,
whose rings the caller fills.  Either way the window loop sees a :class:`FrameRing`, an
:class:`AudioRing` and a :class:`SourceState`.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stream.core import messages as m
from stream.core.signals import SignalEvent
from stream.core.windows import SAMPLE_FPS
from stream.io.capture import CaptureConfig, describe_capture_exit
from stream.io.receiver import Receiver, SourceState
from stream.io.reconnect import OFF
from stream.io.ringbuffer import BLOCK, DROP_OLDEST, AudioRing, FrameRing
from stream.io.sources import AUDIO_RING_S, FRAME_RING, PushSource, Source
from stream.runtime.options import RuntimeOptions

STARTUP_GRACE_S = 5.0


class StartupError(RuntimeError):
    """The stream could not start (bad file, unreachable URL, no camera...)."""


class CaptureProcess:
    """A capture process: the program ``python -m stream.io.worker`` (:mod:`stream.io.worker`),
    its configuration pickled on its standard input.  It inherits nothing but the environment
    and the standard error (so a native crash message still reaches the terminal), never
    re-imports the caller's ``__main__`` (a script without a main guard, a notebook, a thread of
    an application all start pipelines alike), and dies with the analyzer (``PR_SET_PDEATHSIG``,
    :func:`stream.io.capture.capture_main`)."""

    def __init__(self, cfg: CaptureConfig) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ)
        # the package this analyzer runs, whatever put it on sys.path (a checkout, an install)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.io.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=None if _fd_open(2) else subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(pickle.dumps(self.cfg))
            self.proc.stdin.close()
        except OSError:  # it died at once: its exit code says how
            pass

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def exitcode(self) -> int | None:
        """``None`` while it runs; negative: killed by that signal (like multiprocessing's)."""
        return self.proc.poll() if self.proc is not None else None

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 3.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        try:
            self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            pass


#: The folder that holds the ``stream`` package (put on the capture process's ``PYTHONPATH``).
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class Capture:
    """The sources of one run, seen through their ring buffers."""

    frames: FrameRing
    audio: AudioRing
    state: SourceState

    def start(self) -> None:
        raise NotImplementedError

    def wait_start(self, stop_event: SignalEvent) -> m.StreamInfo:
        raise NotImplementedError

    def stop_sources(self) -> None:
        """Stop producing (an interrupt); what was received stays in the rings."""

    def close(self) -> None:
        """Stop everything and free the resources."""

    @property
    def pids(self) -> list[int]:
        return []


#: The sources that reopen after a loss and can resume another analyzer's stream.
LIVE_KINDS = ("rtsp", "camera")


def paced(source: Source, runtime: RuntimeOptions) -> bool:
    """Whether a source is read at media speed: its own ``realtime`` when it sets one, else
    the run's (:attr:`RuntimeOptions.realtime`)."""
    return runtime.realtime if source.realtime is None else source.realtime


def is_live(source: Source, runtime: RuntimeOptions) -> bool:
    """Whether a run of ``source`` is live (frames dropped and windows skipped when analysis
    falls behind, never held back): RTSP, a camera, a paced file, a ``live`` push source."""
    if isinstance(source, PushSource):
        return source.live
    return source.kind != "video" or paced(source, runtime)


def capture_configs(
    source: Source, runtime: RuntimeOptions, *, frames_endpoint: str, audio_endpoint: str
) -> list[CaptureConfig]:
    """The capture processes' settings for a run: the one place :class:`RuntimeOptions` become
    :class:`CaptureConfig` fields (the audio-visual reader first, then the microphone if any).

    RTSP and cameras reopen under ``runtime.reconnect`` and go on from ``runtime.resume``; a
    file (even paced in real time) ends with itself and has nothing to resume.
    """
    live_kind = source.kind in LIVE_KINDS
    common: dict[str, Any] = {
        "max_side": runtime.max_side,
        "open_timeout_s": runtime.open_timeout_s,
        "read_timeout_s": runtime.read_timeout_s,
        "sample_fps": SAMPLE_FPS,
        "parent_pid": os.getpid(),
    }
    if source.kind == "mic":  # a microphone alone: it is the main source (its control on the frames socket)
        return [
            CaptureConfig(
                source="mic",
                target=source.target,
                frames_endpoint=frames_endpoint,
                audio_endpoint=audio_endpoint,
                **common,
            )
        ]
    cfgs = [
        CaptureConfig(
            source=source.kind,
            target=str(source.target),
            frames_endpoint=frames_endpoint,
            audio_endpoint=audio_endpoint if source.audio else None,
            want_audio=source.audio,
            want_video=source.video,
            realtime=paced(source, runtime),
            reconnect=runtime.reconnect if live_kind else OFF,
            resume=runtime.resume if live_kind else None,
            **common,
        )
    ]
    if source.mic is not None:
        cfgs.append(
            CaptureConfig(
                source="mic", target=source.mic, frames_endpoint=None, audio_endpoint=audio_endpoint, **common
            )
        )
    return cfgs


class ProcessCapture(Capture):
    """A file, RTSP or camera source (and a microphone beside it) read by capture processes; a
    live one's full frame ring drops its oldest frame instead of holding the reader back."""

    def __init__(self, source: Source, runtime: RuntimeOptions) -> None:
        self.source = source
        self.procs: list[CaptureProcess] = []
        self._tmp = tempfile.mkdtemp(prefix="cer-stream-")
        frames_ep = f"ipc://{self._tmp}/frames"
        audio_ep = f"ipc://{self._tmp}/audio"
        self.cfgs = capture_configs(source, runtime, frames_endpoint=frames_ep, audio_endpoint=audio_ep)
        av = self.cfgs[0]
        self.reconnect = av.reconnect
        self.open_timeout_s = av.open_timeout_s
        self.frames = FrameRing(FRAME_RING, policy=DROP_OLDEST if is_live(source, runtime) else BLOCK)
        self.audio = AudioRing(AUDIO_RING_S)
        self.state = SourceState(av_audio=av.want_audio, mic=source.mic is not None)
        self.receiver = Receiver(
            frames_endpoint=frames_ep,
            audio_endpoint=audio_ep if av.want_audio or source.mic is not None else None,
            frames=self.frames,
            audio=self.audio,
            state=self.state,
            lossless_audio=not is_live(source, runtime),
        )

    def start(self) -> None:
        self.receiver.start()
        t0_ns = m.now_ns()  # the origin of live media time, shared by camera and microphone
        for cfg in self.cfgs:
            cfg.t0_ns = t0_ns
            p = CaptureProcess(cfg)
            p.start()
            self.procs.append(p)

    def wait_start(self, stop_event: SignalEvent) -> m.StreamInfo:
        state = self.state
        deadline = time.monotonic() + self.open_timeout_s + STARTUP_GRACE_S
        with state.cond:
            while state.info is None:
                fatal = list(state.main_fatal)
                if fatal:
                    raise StartupError(fatal[0].message)
                if stop_event.is_set():
                    raise StartupError("interrupted before the stream started")
                if not self.procs[0].is_alive() and state.info is None:
                    state.cond.wait(0.5)  # its last message may still be in flight
                    if state.info is None and not state.errors:
                        # its own reason when it left one, else its exit code or signal
                        raise StartupError(describe_capture_exit(self.cfgs[0], self.procs[0].exitcode))
                    continue
                if time.monotonic() > deadline and not self.reconnect.wait_at_start:
                    raise StartupError(f"timed out opening {self.source.describe()}")
                state.cond.wait(0.1)
            return state.info

    def stop_sources(self) -> None:
        for p in self.procs:
            p.stop()

    def close(self) -> None:
        for p in self.procs:
            p.stop()
        if self.receiver.is_alive():
            self.receiver.stop()
        else:  # never started: its sockets are still open
            self.receiver.frame_sock.close()
            if self.receiver.audio_sock is not None:
                self.receiver.audio_sock.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid]


class InProcessCapture(Capture):
    """A :class:`PushSource`: the caller fills the rings; nothing to spawn."""

    def __init__(self, source: PushSource, runtime: RuntimeOptions) -> None:
        self.source = source
        self.frames, self.audio, self.state = source.frames, source.audio_ring, source.state
        source.attach(runtime.max_side)

    def start(self) -> None:
        pass

    def wait_start(self, stop_event: SignalEvent) -> m.StreamInfo:
        state = self.state
        with state.cond:
            while state.info is None:
                if stop_event.is_set():
                    raise StartupError("interrupted before the stream started")
                state.cond.wait(0.1)
            return state.info

    def stop_sources(self) -> None:
        self.source.detach()

    def close(self) -> None:
        self.source.detach()


def open_capture(source: Source, runtime: RuntimeOptions) -> Capture:
    """The capture of a run, from the run's own options (not a copy of their fields)."""
    if isinstance(source, PushSource):
        return InProcessCapture(source, runtime)
    return ProcessCapture(source, runtime)


__all__ = [
    "STARTUP_GRACE_S",
    "Capture",
    "CaptureProcess",
    "InProcessCapture",
    "ProcessCapture",
    "StartupError",
    "capture_configs",
    "is_live",
    "open_capture",
    "paced",
]
