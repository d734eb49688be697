"""An analyzer's side of the model host (:mod:`stream.serve.model_host`).

``cer-stream serve`` gives each stream's analyzer the host's endpoint in
``CER_STREAM_MODEL_HOST``; :func:`active_host` reads it once per process, and the builders
(:func:`stream.runtime.build.build_face_analyzer`,
:func:`stream.modalities.audio.build_audio_modalities`) then hand out stand-ins that ask the host
instead of loading a model: :class:`RemoteFaceAnalyzer`, :class:`RemoteSpeechRecognizer`,
:class:`RemoteVoiceFeatures` and :class:`RemoteTextEncoder`.  What is the stream's own stays
here: the speech gate, the voice's running mean, the transcript store and its gate.

A request goes out on a ZeroMQ DEALER socket of the calling thread (``ZMQ_IMMEDIATE``: nothing
is queued for a host that is not there).  A host that is gone is known at once (the socket's
monitor reports the disconnect), not after a timeout: the request raises
:class:`HostUnavailable`, the frames it carried get :class:`UnanalysedFace` results, and the
window goes out with the face absent and the reason; the analyzer writes a ``gap`` record
(``cause: "models"``) when the host answers again.  Requests made while it is down fail at once
(no waiting per window), and the socket reconnects to the restarted host by itself.
"""

from __future__ import annotations

import itertools
import os
import pickle
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.core.wire import pack, unpack
from stream.modalities.face import FaceResult
from stream.modalities.speech.asr import AsrUnavailableError, SpeechRecognizer
from stream.modalities.speech.vad import CHUNK_SAMPLES, SileroVAD, VadState

#: The environment variable that names the model host's endpoint (set by ``cer-stream serve``).
HOST_ENV = "CER_STREAM_MODEL_HOST"
#: The stream's id under ``serve`` (names its state on the host, for the host's records).
STREAM_ENV = "CER_STREAM_STREAM_ID"
#: Longest wait for an answer from a host that is still connected (s); a host that is gone
#: is noticed at once.  Speech waits behind other streams' Whisper calls, so longer.
FACE_TIMEOUT_S = float(os.environ.get("CER_STREAM_HOST_TIMEOUT", "30"))
SPEECH_TIMEOUT_S = 4 * FACE_TIMEOUT_S
#: Longest wait for a connection at the first request (the host may be restarting).
CONNECT_WAIT_S = 2.0
#: While the host is down, a request tries to reach it at most this often (s); others fail at once.
RETRY_EVERY_S = 0.5


class HostUnavailable(RuntimeError):
    """The model host did not answer (gone, restarting, or not started)."""


@dataclass(slots=True)
class UnanalysedFace(FaceResult):
    """A frame the model host could not analyse (``found`` is False): ``error`` says why."""

    error: str = ""


class _Conn:
    """One thread's DEALER socket and the monitor that says whether the host is there."""

    def __init__(self, ctx: Any, endpoint: str) -> None:
        import zmq

        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.connected = False
        self.was_up = False  # a request went out on it once
        self.sock.connect(endpoint)

    def events(self) -> bool:
        """Read the monitor's news (connected or not); whether the host went away meanwhile."""
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        lost = False
        while True:
            try:
                ev = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return lost
            if ev["event"] == zmq.EVENT_CONNECTED:
                self.connected = True
            elif ev["event"] == zmq.EVENT_DISCONNECTED:
                self.connected = False
                lost = True

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except Exception:  # already gone
            pass
        self.monitor.close(0)
        self.sock.close(0)


class HostClient:
    """Requests to the model host at ``endpoint``, from any thread (one socket per thread)."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.endpoint = endpoint
        self._ctx: Any = zmq.Context.instance()
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self.down_since: float | None = None  # wall time the host was found gone
        self.down_reason = ""
        self._last_try = 0.0
        self.failures = 0

    def _conn(self) -> _Conn:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _Conn(self._ctx, self.endpoint)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _down(self, reason: str) -> HostUnavailable:
        with self._lock:
            if self.down_since is None:
                self.down_since = time.time()
            self.down_reason = reason
            self.failures += 1
        return HostUnavailable(reason)

    def call(self, kind: str, op: str, spec: bytes, args: Any = None, *, stream: str = "", timeout: float) -> Any:
        """Send one request and wait for its answer; the host's error as ``RuntimeError``, an
        absent host as :class:`HostUnavailable`."""
        import zmq

        now = time.monotonic()
        if self.down_since is not None:
            with self._lock:
                if now - self._last_try < RETRY_EVERY_S:
                    raise HostUnavailable(self.down_reason)
                self._last_try = now
        conn = self._conn()
        rid = next(self._ids)
        frames = pack({"id": rid, "op": op, "kind": kind, "stream": stream, "spec": spec, "args": args})
        # only a first connection is waited for (the host may still be binding); a host that
        # was there and is not now is down: this request fails at once
        first = not conn.was_up and self.down_since is None
        deadline = time.monotonic() + (CONNECT_WAIT_S if first else 0.05)
        conn.events()  # old news (a disconnect before this request) says nothing about its answer
        while True:
            try:
                conn.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
                conn.was_up = True
                break
            except zmq.Again:
                conn.events()
                if time.monotonic() >= deadline:
                    raise self._down(f"no model host at {self.endpoint}") from None
                conn.monitor.poll(20)
        poller = zmq.Poller()
        poller.register(conn.sock, zmq.POLLIN)
        poller.register(conn.monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._down(f"the model host did not answer a {op} request in {timeout:g} s")
            events = dict(poller.poll(int(min(left, 1.0) * 1000) + 1))
            if conn.monitor in events and conn.events():  # the answer will not come
                raise self._down("the model host went away")
            if conn.sock in events:
                reply = unpack(conn.sock.recv_multipart(copy=False))
                if reply.get("id") != rid:
                    continue  # the answer to a request that already gave up
                with self._lock:
                    self.down_since = None
                if "error" in reply:
                    raise RuntimeError(reply["error"])
                return reply["result"]

    def ping(self, timeout: float = 2.0) -> dict[str, Any]:
        """The host's pid and start time."""
        return self.call("ping", "ping", b"", timeout=timeout)

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """What the host has done so far (the ``stats`` record's fields)."""
        return self.call("stats", "stats", b"", timeout=timeout)

    def close(self) -> None:
        with self._lock:
            for c in self._conns:
                c.close()
            self._conns.clear()
        self._local = threading.local()


_ACTIVE: HostClient | None = None
_ACTIVE_LOCK = threading.Lock()


def active_host() -> HostClient | None:
    """The client of the host ``CER_STREAM_MODEL_HOST`` names (one per process), or None."""
    global _ACTIVE
    endpoint = os.environ.get(HOST_ENV, "").strip()
    if not endpoint:
        return None
    with _ACTIVE_LOCK:
        if _ACTIVE is None or _ACTIVE.endpoint != endpoint:
            _ACTIVE = HostClient(endpoint)
        return _ACTIVE


def _stream_key() -> str:
    """This analyzer's name on the host: the stream id and a fresh suffix (a restarted
    analyzer starts with fresh state)."""
    return f"{os.environ.get(STREAM_ENV, 'stream')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _spec(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def _unavailable(exc: Exception) -> str:
    return f"model host unavailable: {exc}"


def _models_info(host: HostClient, kind: str, spec: bytes) -> Any:
    """What the host says of the models of ``spec`` (loading them if it has not): the load every
    stand-in makes first; a host that is not there is ``RuntimeError`` with the reason."""
    try:
        return host.call(kind, "info", spec, timeout=SPEECH_TIMEOUT_S)
    except HostUnavailable as exc:
        raise RuntimeError(_unavailable(exc)) from None


# ---------------------------------------------------------------------------------------------
# The face
# ---------------------------------------------------------------------------------------------
class HostedFaceModel:
    """What the analyzer reads of the face model (labels, feature space) when the host runs it."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.labels = tuple(info["labels"])
        self.feature_space = info.get("feature_space")
        self.feature_dim = info.get("feature_dim")
        self.name = info.get("name")

    def close(self) -> None:
        pass


class RemoteFaceAnalyzer:
    """A :class:`~stream.modalities.face.FaceAnalyzer` whose work the model host does: the same
    ``analyse(frames)``; frames it could not analyse come back as :class:`UnanalysedFace`."""

    def __init__(self, host: HostClient, opts: Any) -> None:
        self.host = host
        self.spec = _spec(opts)
        self.stream = _stream_key()
        self.model = HostedFaceModel(_models_info(host, "face", self.spec))
        self.timings: dict[str, float] = {"detect": 0.0, "validate": 0.0, "emotion": 0.0, "host": 0.0}

    def analyse(self, frames: list[tuple[int, float, np.ndarray]]) -> list[FaceResult]:
        t0 = time.perf_counter()
        try:
            results = self.host.call("face", "face", self.spec, frames, stream=self.stream, timeout=FACE_TIMEOUT_S)
        except HostUnavailable as exc:
            why = _unavailable(exc)
            return [UnanalysedFace(index, pts, False, error=why) for index, pts, _ in frames]
        finally:
            self.timings["host"] += time.perf_counter() - t0
        return list(results)

    def reset_states(self) -> None:
        """A new source: the host forgets this stream's face state."""
        self.reset()

    def reset(self) -> None:
        try:
            self.host.call("face", "forget", self.spec, stream=self.stream, timeout=FACE_TIMEOUT_S)
        except (HostUnavailable, RuntimeError):
            pass  # a host that is gone has forgotten already
        self.stream = _stream_key()

    def close(self) -> None:
        self.reset()


# ---------------------------------------------------------------------------------------------
# Speech
# ---------------------------------------------------------------------------------------------
class RemoteSpeechRecognizer(SpeechRecognizer):
    """The speech recogniser with Whisper on the model host: the transcript store, the gate and
    the window logic stay here; each Whisper call is a request."""

    def __init__(self, host: HostClient, **spec: Any) -> None:
        super().__init__(**spec)
        self.host = host
        self._info: dict[str, Any] | None = None
        self._host_spec = _spec(spec)  # exactly what the host preloads (audio_specs)

    @property
    def loaded(self) -> bool:
        return self._info is not None

    @property
    def multilingual(self) -> bool:
        return bool(self._info and self._info.get("multilingual"))

    def resolved_device(self) -> str:
        return str(self._info["device"]) if self._info else self.device

    def load(self) -> RemoteSpeechRecognizer:
        if self._info is None:
            try:
                self._info = self.host.call("asr", "info", self._host_spec, timeout=SPEECH_TIMEOUT_S)
            except (HostUnavailable, RuntimeError) as exc:
                raise AsrUnavailableError(str(exc)) from None
        return self

    def words(self, audio: np.ndarray) -> list[Any]:
        self.load()
        t0 = time.perf_counter()
        try:
            return list(
                self.host.call(
                    "asr", "asr", self._host_spec, np.ascontiguousarray(audio, np.float32), timeout=SPEECH_TIMEOUT_S
                )
            )
        finally:
            self.calls += 1
            self.encodes += 1
            self.call_seconds += time.perf_counter() - t0

    def close(self) -> None:
        self._info = None


class RemoteVoiceFeatures:
    """The voice head's features computed on the model host (``VoiceFeatures``' interface)."""

    def __init__(self, host: HostClient, **spec: Any) -> None:
        self.host = host
        self._spec = _spec(spec)
        self.model_sha256: str | None = None
        self._loaded = False

    def load(self) -> RemoteVoiceFeatures:
        if not self._loaded:
            info = _models_info(self.host, "voice", self._spec)
            self.model_sha256 = info.get("model_sha256")
            self._loaded = True
        return self

    def __call__(self, audio: np.ndarray) -> tuple[np.ndarray | None, dict[str, Any]]:
        self.load()
        feature, info = self.host.call(
            "voice", "voice", self._spec, np.ascontiguousarray(audio, np.float32), timeout=SPEECH_TIMEOUT_S
        )
        return feature, dict(info)

    def close(self) -> None:
        pass


class RemoteVAD(SileroVAD):
    """Silero VAD run by the model host: the stream's recurrent state and context stay here and
    travel with each request (two a window: the new chunks, and the straddling tail's peek)."""

    def __init__(self, host: HostClient, **spec: Any) -> None:
        super().__init__(**spec)
        self.host = host
        self._spec = _spec(spec)
        self._loaded = False

    def load(self) -> RemoteVAD:
        if not self._loaded:
            _models_info(self.host, "vad", self._spec)
            self._loaded = True
        return self

    def _ask(self, op: str, chunks: np.ndarray) -> np.ndarray:
        self.load()
        now = self.state
        probs, state, context = self.host.call(
            "vad",
            "vad",
            self._spec,
            (op, np.asarray(chunks, np.float32), now.recurrent, now.context),
            timeout=SPEECH_TIMEOUT_S,
        )
        if op == "feed":
            self.state = VadState(state, context)
        return np.asarray(probs, np.float32)

    def feed(self, chunks: np.ndarray) -> np.ndarray:
        return self._ask("feed", np.asarray(chunks, np.float32).reshape(-1, CHUNK_SAMPLES))

    def __call__(self, chunk: np.ndarray) -> float:
        return float(self.feed(chunk)[0])

    def peek(self, chunk: np.ndarray) -> float:
        return float(self._ask("peek", chunk)[0])

    def close(self) -> None:
        pass


class RemoteTextEncoder:
    """The text head's sentence encoder on the model host (``TextEncoder``'s ``encode``)."""

    def __init__(self, host: HostClient, **spec: Any) -> None:
        self.host = host
        self._spec = _spec(spec)

    def load(self) -> RemoteTextEncoder:
        _models_info(self.host, "text", self._spec)
        return self

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.host.call("text", "text", self._spec, list(texts), timeout=SPEECH_TIMEOUT_S))

    def close(self) -> None:
        pass


__all__ = [
    "HOST_ENV",
    "HostClient",
    "HostUnavailable",
    "HostedFaceModel",
    "RemoteFaceAnalyzer",
    "RemoteSpeechRecognizer",
    "RemoteTextEncoder",
    "RemoteVAD",
    "RemoteVoiceFeatures",
    "STREAM_ENV",
    "UnanalysedFace",
    "active_host",
]
