"""How records reach the sinks: the :class:`Sink` interface, and one writer thread per sink.

A sink's :meth:`Sink.write` does the writing and may raise: ``OSError`` (a full disk, a reader
that went away).  During a run each sink is driven by its own :class:`SinkWorker`, a bounded
queue and one writer thread, so a slow or failing sink never stalls the analysis or the other
sinks, and each record reaches a sink whole (one writer per sink: lines never interleave).  The
policy (see docs/outputs.md): a file run is lossless (a full queue of a lossless sink holds the
analysis back), a live run never waits (a full queue drops the record, counts it and says so
once per streak), a sink whose write fails stops (its later records count as dropped).

This is the run-time half of the sinks: the analyzer (``stream.runtime``) drives sinks through
it, and the sinks themselves (:mod:`stream.sinks.outputs`: JSON lines, ZeroMQ, ABAW CSV; the
annotated video, the live page) implement :class:`Sink` a layer above.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: Records a sink's queue holds before it blocks (file runs) or drops (live runs).
QUEUE_SIZE = int(os.environ.get("CER_STREAM_SINK_QUEUE", "256"))
#: Seconds the end of a run waits for a live run's sink to take and write its last records.
CLOSE_TIMEOUT_S = float(os.environ.get("CER_STREAM_SINK_CLOSE_TIMEOUT", "3"))


class Sink(ABC):
    """A record consumer: subclass it and implement :meth:`write` (each record's JSON object).

    ``name`` keys it in the ``end`` record's ``sinks``; ``lossless`` sinks hold a file run back
    rather than drop; ``required``: when its reader goes away (``BrokenPipeError``) the run
    stops (stdout).  A sink that also subclasses :class:`stream.Observer` is told about the
    analysed frames (``on_frame``) as well.
    """

    name: str = "sink"
    lossless: bool = True
    required: bool = False

    @abstractmethod
    def write(self, record: dict) -> None:
        """Write one record (on the sink's own writer thread during a run)."""

    def close(self) -> None:  # noqa: B027 (a no-op by design: not every sink has something to close)
        """Flush and close; called once, after the run's last record."""

    def discard(self) -> None:
        """Close, for a run that never started: an output file made for it is removed and an
        existing one left as it was (where the sink can; else as :meth:`close`)."""
        self.close()


class RecordWriter(Protocol):
    """Any object with ``write(record)`` and ``close()``: what :func:`as_sink` accepts besides
    a :class:`Sink`."""

    def write(self, record: dict, /) -> None: ...

    def close(self) -> None: ...


class _WriterSink(Sink):
    """A plain :class:`RecordWriter` as a :class:`Sink`: its optional ``name``, ``lossless`` and
    ``required`` are read once, here; ``name`` defaults to its class's name."""

    def __init__(self, inner: RecordWriter) -> None:
        self.inner = inner
        self.name = str(getattr(inner, "name", None) or type(inner).__name__)
        self.lossless = bool(getattr(inner, "lossless", True))
        self.required = bool(getattr(inner, "required", False))

    def write(self, record: dict) -> None:
        self.inner.write(record)

    def close(self) -> None:
        self.inner.close()


def as_sink(sink: Sink | RecordWriter) -> Sink:
    """``sink`` itself, or a plain writer wrapped once (when a pipeline or analyzer is made)."""
    return sink if isinstance(sink, Sink) else _WriterSink(sink)


@dataclass
class SinkEvent:
    """What a worker reports to the analysis thread: ``kind`` is ``dropping`` (a live run's
    queue is full), ``failed`` (a write error: the sink stopped) or ``closed`` (its reader
    went away: a broken pipe)."""

    sink: str
    kind: str
    message: str
    required: bool = False


_STOP = object()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


class SinkWorker:
    """One sink behind a bounded queue and its own writer thread.  ``block``: a full queue
    holds the caller back (a lossless file run); otherwise the record is dropped and counted.
    Thread-safe :meth:`put`; events are collected with :meth:`events`."""

    def __init__(self, sink: Sink, name: str, *, block: bool, maxsize: int = QUEUE_SIZE) -> None:
        self.sink = sink
        self.name = name
        self.block = block
        self.required = sink.required
        self.written = 0
        self.dropped = 0
        self.error: str | None = None
        self.closed = False  # its reader went away (a broken pipe)
        self.failed = False  # a write error stopped it
        self._q: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        self._dead = threading.Event()
        self._lock = threading.Lock()
        self._dropping = False
        self._events: list[SinkEvent] = []
        self._thread = threading.Thread(target=self._work, name=f"cer-sink-{name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return not self._dead.is_set()

    def put(self, record: dict, *, timeout: float | None = None) -> bool:
        """Queue ``record``; False when it was dropped (full queue of a dropping sink, or a
        stopped sink).  ``timeout``: wait that long for room even when not blocking."""
        if self._dead.is_set():
            self._drop()
            return False
        if self.block or timeout is not None:
            deadline = None if self.block else time.monotonic() + (timeout or 0.0)
            while not self._dead.is_set():
                try:
                    self._q.put(record, timeout=0.1)
                    self._dropping = False
                    return True
                except queue.Full:
                    if deadline is not None and time.monotonic() >= deadline:
                        break
            self._drop()
            return False
        try:
            self._q.put_nowait(record)
            self._dropping = False
            return True
        except queue.Full:
            if not self._dropping:
                self._dropping = True
                self._event(
                    "dropping",
                    f"output {self.name} is not keeping up with the live stream; its records are "
                    f"dropped until it catches up (counted in the end record's sinks)",
                )
            self._drop()
            return False

    def _drop(self) -> None:
        with self._lock:
            self.dropped += 1

    def _event(self, kind: str, message: str) -> None:
        with self._lock:
            self._events.append(SinkEvent(self.name, kind, message, self.required))

    def events(self) -> list[SinkEvent]:
        with self._lock:
            out, self._events = self._events, []
        return out

    def _work(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is _STOP:
                    return
                if self._dead.is_set():
                    self._drop()
                    continue
                try:
                    self.sink.write(item)
                    with self._lock:
                        self.written += 1
                except Exception as exc:
                    self._fail(exc)
            finally:
                self._q.task_done()

    def _fail(self, exc: BaseException) -> None:
        self._drop()
        broken = isinstance(exc, BrokenPipeError) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE)
        if broken and self.required:  # stdout's reader went away: the run stops (not a failure)
            self.closed = True
            self.error = "reader went away (broken pipe)"
            kind, message = "closed", f"output {self.name}: its reader went away; nothing more is written there"
        else:
            self.failed = True
            self.error = _describe(exc)
            kind, message = "failed", f"output {self.name} failed: {self.error}; nothing more is written there"
        self._dead.set()
        self._event(kind, message)
        # free a producer that waits for room
        try:
            while True:
                item = self._q.get_nowait()
                self._q.task_done()
                if item is _STOP:
                    self._q.put_nowait(_STOP)
                    return
                self._drop()
        except queue.Empty:
            pass

    def drain(self, deadline: float | None) -> None:
        """Wait until the writer has taken and written what is queued (or ``deadline``,
        a ``time.monotonic()`` value, has passed)."""
        while self._q.unfinished_tasks and not self._dead.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    def finish(self, timeout: float | None) -> None:
        """Let the writer take what is queued (``timeout`` None: all of it), then stop it.  A
        writer still stuck after ``timeout`` (a reader that never reads) is left behind."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread.is_alive():
            try:
                self._q.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if self._dead.is_set():
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    break
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._thread.join(left)
        if self._thread.is_alive():
            with self._lock:  # what is still queued will not be written
                self.dropped += self._q.qsize()
            if self.error is None:
                self.error = "did not take its last records in time"

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"written": self.written, "dropped": self.dropped, "error": self.error}


class SinkSet:
    """The workers of one run, in order: :meth:`put` sends a record to every sink (one
    record at a time, the same order everywhere)."""

    def __init__(self, sinks: Sequence[Sink | RecordWriter], *, block: bool, maxsize: int = QUEUE_SIZE) -> None:
        self.workers: list[SinkWorker] = []
        seen: dict[str, int] = {}
        for s in map(as_sink, sinks):
            name = s.name
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                name = f"{name}#{seen[name]}"
            self.workers.append(SinkWorker(s, name, block=block and s.lossless, maxsize=maxsize))
        self._lock = threading.Lock()

    def put(self, record: dict, *, exclude: str | None = None, timeout: float | None = None) -> None:
        with self._lock:
            for w in self.workers:
                if w.name != exclude:
                    w.put(record, timeout=timeout)

    def events(self) -> list[SinkEvent]:
        return [e for w in self.workers for e in w.events()]

    def drain(self, timeout: float | None) -> None:
        """Wait for the writers to catch up: blocking (lossless) ones fully, the others for at
        most ``timeout`` seconds in all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for w in self.workers:
            w.drain(None if w.block else deadline)

    def finish(self, timeout: float | None, *, force: bool = False) -> None:
        """Stop the writers once they have written what is queued: blocking (lossless) ones
        whenever that is, unless ``force`` (a run that failed or was interrupted), the others
        within ``timeout`` seconds each."""
        for w in self.workers:
            w.finish(None if w.block and not force else timeout)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {w.name: w.summary() for w in self.workers}

    @property
    def failed(self) -> list[str]:
        """Sinks a write error stopped (an asked-for output was lost)."""
        return [w.name for w in self.workers if w.failed]

    @property
    def closed(self) -> list[str]:
        """Sinks whose reader went away."""
        return [w.name for w in self.workers if w.closed]


__all__ = [
    "CLOSE_TIMEOUT_S",
    "QUEUE_SIZE",
    "RecordWriter",
    "Sink",
    "SinkEvent",
    "SinkSet",
    "SinkWorker",
    "as_sink",
]
