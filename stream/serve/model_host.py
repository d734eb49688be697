"""The model host: one process that loads each model once and serves every stream's analyzer.

``cer-stream serve`` (``--isolation host``, the default) starts one host per machine and points
every stream's analyzer at it (:mod:`stream.modalities.hosted`).  The analyzers keep what is theirs
(capture, decoding, windows, the speech gate, the voice's running mean, the transcript store,
fusion, records); the host holds the weights and does the model work:

* ``face``: a stream's frames → its face results.  Each stream has its own target, tracking
  and validation state (a :class:`~stream.modalities.face.FaceAnalyzer` of its own) over the one
  detector and the one emotion model; the emotion networks run once for the crops of every
  stream whose frames arrived together (one batch).
* ``asr``: a stretch of speech → its words (Whisper); requests that wait together are decoded
  as one batch when the recogniser takes batches (``words_batch``).
* ``voice``: speech → the voice head's features (the Whisper encoder blocks and the prosody).
* ``text``: sentences → their embeddings (the text head's sentence encoder).

Requests wait at most ``batch_wait_ms`` for company (a few milliseconds: a frame never waits
longer than that for others) and a batch holds at most ``max_batch`` requests.  Each kind of
request has a thread of its own, the face one per core (``face_workers``, each with its own copy
of the face models; a stream always goes to the same one, where its tracking state is); speech,
voice and text run at a lower CPU priority than the face (``nice``; the threads their libraries
start inherit it), so a stream's windows never wait behind another stream's Whisper call.  The host answers on one ZeroMQ ROUTER socket; its
records (``type: "host"``: ``ready``, ``stats`` every ``stats_s``, ``stopped``) go to stdout as
JSON lines, its log to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import queue
import sys
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.core.wire import pack, unpack

log = logging.getLogger("cer_stream.host")

#: Longest wait of a request for others to batch with (ms).
BATCH_WAIT_MS = 3.0
#: Most requests in one batch.
MAX_BATCH = 32
#: Face workers (threads, each with its own copy of the face models): one per core, at most 4.
FACE_WORKERS = int(os.environ.get("CER_STREAM_HOST_FACE_WORKERS", "0")) or max(1, min(4, os.cpu_count() or 1))
#: ``nice`` increment of the speech, voice and text threads (the face keeps the host's priority).
SPEECH_NICE = 10
#: A stream's face state is forgotten after this long without a request (s).
IDLE_STREAM_S = 120.0
#: Most stretches of speech in one voice-encoder run (the TensorRT profile's largest batch,
#: ``engines.shapes``; padding to the longest makes larger batches cost more than they save).
VOICE_BATCH_MAX = 8
#: A model that failed to load is tried again after this long (s); until then its requests get the reason.
RELOAD_AFTER_S = 30.0
#: Held while a model loads.
_LOADING = threading.Lock()
#: Seconds between two ``stats`` records.
STATS_S = float(os.environ.get("CER_STREAM_HOST_STATS_S", "30"))


@dataclass
class Request:
    ident: bytes  # the client's ZeroMQ identity
    rid: int
    op: str
    stream: str
    spec: bytes  # the pickled spec: which model (and its options)
    args: Any
    t_in: float = field(default_factory=time.perf_counter)


@dataclass
class OpStats:
    requests: int = 0
    batches: int = 0
    items: int = 0
    busy_s: float = 0.0
    wait_s: float = 0.0
    largest: int = 0

    def add(self, batch: list[Request], items: int, busy_s: float) -> None:
        now = time.perf_counter()
        self.requests += len(batch)
        self.batches += 1
        self.items += items
        self.busy_s += busy_s
        self.wait_s += sum(now - busy_s - r.t_in for r in batch)
        self.largest = max(self.largest, len(batch))

    @classmethod
    def total(cls, parts: list[OpStats]) -> OpStats:
        out = cls()
        for p in parts:
            out.requests += p.requests
            out.batches += p.batches
            out.items += p.items
            out.busy_s += p.busy_s
            out.wait_s += p.wait_s
            out.largest = max(out.largest, p.largest)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "mean_batch": round(self.requests / self.batches, 2) if self.batches else None,
            "largest_batch": self.largest,
            "items": self.items,
            "busy_s": round(self.busy_s, 3),
            "mean_wait_ms": round(1000 * self.wait_s / self.requests, 2) if self.requests else None,
        }


def canonical(value: Any) -> bytes:
    """``value`` (options: dataclasses, dicts, sets, paths, numbers, strings) as bytes that are
    equal exactly when the values are: sets sorted, dict keys sorted, dataclasses by field."""
    import dataclasses
    from pathlib import PurePath

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return [type(v).__name__, {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (set, frozenset)):
            return sorted((plain(x) for x in v), key=repr)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, PurePath):
            return str(v)
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        return repr(v)

    return json.dumps(plain(value), sort_keys=True).encode()


def _nice_this_thread(increment: int) -> None:
    """Lower this thread's CPU priority (Linux: ``nice`` is per thread; threads it starts inherit it)."""
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
    except OSError as exc:  # pragma: no cover - a sandbox that forbids it
        log.warning("could not lower the speech threads' priority: %s", exc)


# ---------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------
class FaceModels:
    """The face detector and emotion model of one set of face options, and one
    :class:`FaceAnalyzer` per stream over them."""

    def __init__(self, opts: Any) -> None:
        from stream.runtime.build import build_face_analyzer

        self.template = build_face_analyzer(opts, instrument=False)
        self.streams: dict[str, Any] = {}
        self.last_seen: dict[str, float] = {}

    def info(self) -> dict[str, Any]:
        model = self.template.model
        return {
            "labels": tuple(model.labels),
            "feature_space": getattr(model, "feature_space", None),
            "feature_dim": getattr(model, "feature_dim", None),
            "name": getattr(model, "name", None),
        }

    def analyzer(self, stream: str) -> Any:
        """The stream's own analyzer: a fork of the template (same graphs and model, own state)."""
        fa = self.streams.get(stream)
        if fa is None:
            fa = self.streams[stream] = self.template.fork(track=True)
        self.last_seen[stream] = time.monotonic()
        return fa

    def forget(self, stream: str) -> None:
        fa = self.streams.pop(stream, None)
        self.last_seen.pop(stream, None)
        if fa is not None:
            fa.close()  # its hold on the shared graphs and model

    def forget_idle(self) -> None:
        now = time.monotonic()
        for s in [s for s, t in self.last_seen.items() if now - t > IDLE_STREAM_S]:
            self.forget(s)

    def analyse(self, batch: list[Request]) -> list[Any]:
        """Every request's frames located by its stream's analyzer, then one emotion-model call
        for every crop of the batch (:func:`~stream.modalities.face.analyse_streams`)."""
        from stream.modalities.face import analyse_streams

        return analyse_streams([(self.analyzer(r.stream), r.args) for r in batch])

    def close(self) -> None:
        for stream in list(self.streams):
            self.forget(stream)
        self.template.close()


class SpeechModels:
    """One Whisper recogniser per set of recogniser options."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from stream.modalities.speech.asr import SpeechRecognizer

        self.rec = SpeechRecognizer(**spec).load()

    def info(self) -> dict[str, Any]:
        return {"multilingual": self.rec.multilingual, "device": self.rec.resolved_device()}

    def run(self, batch: list[Request]) -> list[Any]:
        """Every request's words, one batched encoder pass (per-item failures stay per item)."""
        return list(self.rec.words_batch([np.asarray(r.args, np.float32) for r in batch]))

    def close(self) -> None:
        self.rec.close()


class VoiceModels:
    """The voice head's feature extractor (Whisper encoder blocks + prosody)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from stream.modalities.speech.voice import VoiceFeatures

        self.features = VoiceFeatures(**spec).load()

    def info(self) -> dict[str, Any]:
        return {"model_sha256": self.features.model_sha256}

    def run(self, batch: list[Request]) -> list[Any]:
        """Every request's features, one encoder run per :data:`VOICE_BATCH_MAX` items (each
        item's padding masked)."""
        audios = [np.asarray(r.args, np.float32) for r in batch]
        out: list[Any] = []
        for lo in range(0, len(audios), VOICE_BATCH_MAX):
            out += self.features.batch(audios[lo : lo + VOICE_BATCH_MAX])
        return out

    def close(self) -> None:
        self.features.close()


class VadModels:
    """Silero VAD for every stream, the stream's recurrent state travelling with each request."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from stream.modalities.speech.vad import SileroVAD

        self.vad = SileroVAD(**spec).load()

    def info(self) -> dict[str, Any]:
        return {}

    def run(self, batch: list[Request]) -> list[Any]:
        from stream.modalities.speech.vad import VadState

        out: list[Any] = []
        for r in batch:
            op, chunks, state, context = r.args
            try:
                self.vad.state = VadState(state, context)
                if op == "peek":
                    probs = np.asarray([self.vad.peek(chunks)], np.float32)
                else:
                    probs = self.vad.feed(chunks)
                now = self.vad.state
                out.append((probs, now.recurrent, now.context))
            except Exception as exc:
                out.append(exc)
        return out

    def close(self) -> None:
        self.vad.close()


class TextModels:
    """The text head's sentence encoder."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from engines.models.minilm import TextEncoder

        self.encoder = TextEncoder(**spec)
        self.encoder.load()

    def info(self) -> dict[str, Any]:
        return {}

    def run(self, batch: list[Request]) -> list[Any]:
        texts = [list(r.args) for r in batch]
        flat = [t for ts in texts for t in ts]
        emb = self.encoder.encode(flat) if flat else np.zeros((0, 0), np.float32)
        out, i = [], 0
        for ts in texts:
            out.append(np.asarray(emb[i : i + len(ts)]))
            i += len(ts)
        return out

    def close(self) -> None:
        self.encoder.close()


#: What each op loads: its models class, and whether it runs at the speech priority.
_KINDS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "face": (FaceModels, False),
    "asr": (SpeechModels, True),
    "voice": (VoiceModels, True),
    "text": (TextModels, True),
    "vad": (VadModels, False),  # a few ms a window, and every speech decision waits for it
}


# ---------------------------------------------------------------------------------------------
# The host
# ---------------------------------------------------------------------------------------------
class _Worker:
    """One kind of request: its queue, its thread, its models (one per spec)."""

    def __init__(self, host: ModelHost, op: str) -> None:
        self.host = host
        self.op = op
        self.factory, self.low = _KINDS[op]
        self.queue: queue.Queue[Request | None] = queue.Queue()
        self.models: dict[bytes, Any] = {}
        self.errors: dict[bytes, tuple[str, float]] = {}  # spec -> (why it failed, when)
        self.keys: dict[bytes, bytes] = {}  # a request's pickled spec -> its canonical key
        self.first: dict[bytes, bytes] = {}  # canonical key -> the first pickle seen (to build from)
        self.stats = OpStats()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"cer-host-{op}", daemon=True)

    def models_for(self, spec: bytes) -> Any:
        """The models of ``spec``, loaded on first use on this thread (``RuntimeError`` with the
        load's one-line reason, remembered).  Specs are told apart by what they hold
        (:func:`canonical`), not by their pickles, which differ between processes for equal
        options (a set's order follows the process's string hashing)."""
        raw = spec
        spec = self.keys.get(raw) or self.keys.setdefault(raw, canonical(pickle.loads(raw)))
        self.first.setdefault(spec, raw)
        failed = self.errors.get(spec)
        if failed is not None and time.monotonic() - failed[1] < RELOAD_AFTER_S:
            raise RuntimeError(failed[0])
        m = self.models.get(spec)
        if m is None:
            t0 = time.perf_counter()
            try:
                with _LOADING:  # one load at a time: imports on several threads can deadlock
                    m = self.factory(pickle.loads(self.first[spec]))
            except Exception as exc:
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.errors[spec] = (f"{self.op} models could not load on the model host: {msg}", time.monotonic())
                raise RuntimeError(self.errors[spec][0]) from None
            self.errors.pop(spec, None)
            self.models[spec] = m
            log.info("%s models loaded in %.1f s", self.op, time.perf_counter() - t0)
        return m

    def _take(self) -> list[Request] | None:
        first = self.queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.perf_counter() + self.host.batch_wait_ms / 1000
        while len(batch) < self.host.max_batch:
            left = deadline - time.perf_counter()
            try:
                nxt = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self.queue.put(None)
                break
            batch.append(nxt)
        return batch

    def _run(self) -> None:
        if self.low:
            _nice_this_thread(self.host.speech_nice)
        for spec in self.host.preload.get(self.op, []):
            try:
                self.models_for(spec)
            except RuntimeError as exc:
                log.warning("%s", exc)
        self.ready.set()
        while True:
            batch = self._take()
            if batch is None:
                return
            groups: dict[tuple[bytes, str], list[Request]] = defaultdict(list)
            for r in batch:
                groups[(r.spec, r.op)].append(r)
            for (spec, _op), reqs in groups.items():
                t0 = time.perf_counter()
                try:
                    models = self.models_for(spec)
                    if reqs[0].op == "info":
                        results: list[Any] = [models.info() for _ in reqs]
                    elif reqs[0].op == "forget":
                        for r in reqs:
                            models.forget(r.stream)
                        results = [True for _ in reqs]
                    else:
                        results = models.analyse(reqs) if self.op == "face" else models.run(reqs)
                except Exception as exc:
                    results = [exc for _ in reqs]
                busy = time.perf_counter() - t0
                items = sum(len(r.args or ()) for r in reqs) if self.op == "face" else len(reqs)
                self.stats.add(reqs, items, busy)
                for r, res in zip(reqs, results):
                    self.host.reply(r, res)
            if self.op == "face":
                for m in self.models.values():
                    m.forget_idle()

    def close(self) -> None:
        for m in self.models.values():
            try:
                m.close()
            except Exception:  # closing at exit: nothing left to tell
                pass


class ModelHost:
    """Serve model requests on ``endpoint`` until :meth:`stop`.

    ``preload``: specs to load before ``ready`` (``{op: [spec, ...]}``, the pickled option
    objects :mod:`stream.modalities.hosted` sends), so the first stream finds them loaded."""

    def __init__(
        self,
        endpoint: str,
        *,
        preload: dict[str, list[bytes]] | None = None,
        batch_wait_ms: float = BATCH_WAIT_MS,
        max_batch: int = MAX_BATCH,
        speech_nice: int = SPEECH_NICE,
        face_workers: int = FACE_WORKERS,
        emit: Callable[[dict[str, Any]], None] | None = None,
        stats_s: float = STATS_S,
    ) -> None:
        import zmq

        self.endpoint = endpoint
        self.preload = preload or {}
        self.batch_wait_ms = batch_wait_ms
        self.max_batch = max_batch
        self.speech_nice = speech_nice
        self.stats_s = stats_s
        self._emit = emit or _print_record
        self._ctx: Any = zmq.Context.instance()
        self._replies: queue.Queue[tuple[bytes, list[Any]]] = queue.Queue()
        self._wake_addr = f"inproc://cer-host-wake-{id(self)}"
        self._wake_pull = self._ctx.socket(zmq.PULL)
        self._wake_pull.bind(self._wake_addr)
        self._wake_lock = threading.Lock()
        self._wake_push = self._ctx.socket(zmq.PUSH)
        self._wake_push.connect(self._wake_addr)
        self.router = self._ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.router.bind(endpoint)
        self._stop = threading.Event()
        # the face has a worker (thread and models) per core: a stream always goes to the same one
        # (its tracking state lives there), and the streams spread over them; ONNX Runtime and
        # MediaPipe let go of the GIL while they run, so the workers' model work runs in parallel
        self.workers: dict[str, list[_Worker]] = {
            op: [_Worker(self, op) for _ in range(face_workers if op == "face" else 1)] for op in _KINDS
        }
        self.started = time.time()

    def reply(self, req: Request, result: Any) -> None:
        """Queue ``result`` for ``req``'s client (any thread); an exception travels as its message."""
        if isinstance(result, BaseException):
            body: Any = {"id": req.rid, "error": f"{type(result).__name__}: {result}"}
        else:
            body = {"id": req.rid, "result": result}
        try:
            frames = pack(body)
        except Exception as exc:  # a result that cannot be sent is that request's failure
            frames = pack({"id": req.rid, "error": f"cannot send the result: {exc}"})
        self._replies.put((req.ident, frames))
        with self._wake_lock:
            self._wake_push.send(b"")

    def record(self, event: str, **fields: Any) -> None:
        self._emit({"type": "host", "event": event, **fields, "wall_time": round(time.time(), 3)})

    def _all(self) -> list[_Worker]:
        return [w for ws in self.workers.values() for w in ws]

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for op, ws in self.workers.items():
            total = OpStats.total([w.stats for w in ws])
            if total.requests:
                out[op] = total.to_dict()
        out["face_streams"] = sum(len(m.streams) for w in self.workers["face"] for m in w.models.values())
        out["face_workers"] = len(self.workers["face"])
        return out

    def _dispatch(self, frames: list[Any]) -> None:
        ident, *body = frames
        try:
            msg = unpack(body)
            req = Request(
                ident.bytes, int(msg["id"]), str(msg["op"]), str(msg.get("stream", "")), msg["spec"], msg.get("args")
            )
        except Exception as exc:
            log.warning("a request the host cannot read: %s", exc)
            return
        if req.op == "ping":
            self.reply(req, {"pid": os.getpid(), "started": self.started})
            return
        if req.op == "stats":
            self.reply(req, self.stats())
            return
        kind = msg.get("kind", req.op)
        workers = self.workers.get(kind)
        if not workers:
            self.reply(req, ValueError(f"unknown request {req.op!r}"))
            return
        workers[zlib.crc32(req.stream.encode()) % len(workers)].queue.put(req)

    def serve(self) -> int:
        """Load the preloaded models, say ``ready``, answer until :meth:`stop`; exit status."""
        import zmq

        t0 = time.perf_counter()
        for w in self._all():
            w.thread.start()
        for w in self._all():
            w.ready.wait()
        failed = {
            op: sorted({e for w in ws for e, _ in w.errors.values()})
            for op, ws in self.workers.items()
            if any(w.errors for w in ws)
        }
        self.record(
            "ready",
            pid=os.getpid(),
            load_s=round(time.perf_counter() - t0, 2),
            models={op: len(ws[0].models) for op, ws in self.workers.items()},
            face_workers=len(self.workers["face"]),
            errors=failed or None,
        )
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self._wake_pull, zmq.POLLIN)
        next_stats = time.monotonic() + self.stats_s
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(200))
                if self.router in events:
                    for _ in range(1000):
                        try:
                            frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._dispatch(frames)
                if self._wake_pull in events:
                    while True:
                        try:
                            self._wake_pull.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                while True:
                    try:
                        ident, frames = self._replies.get_nowait()
                    except queue.Empty:
                        break
                    try:
                        self.router.send_multipart([ident, *frames], copy=False)
                    except zmq.ZMQError:  # the client went away: nothing to answer
                        pass
                if time.monotonic() >= next_stats:
                    self.record("stats", **self.stats())
                    next_stats = time.monotonic() + self.stats_s
        finally:
            for w in self._all():
                w.queue.put(None)
            for w in self._all():
                w.thread.join(5.0)
                w.close()
            self.record("stopped", **self.stats())
            self.router.close(0)
            self._wake_pull.close(0)
            self._wake_push.close(0)
        return 0

    def stop(self) -> None:
        self._stop.set()


def _print_record(record: dict[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


__all__ = ["BATCH_WAIT_MS", "MAX_BATCH", "ModelHost"]
