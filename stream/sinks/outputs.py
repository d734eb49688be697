"""Where predictions go: JSON lines (stdout or file), ZeroMQ PUB, ABAW CSV.

A sink's :meth:`Sink.write` does the writing and may raise: ``OSError`` (a full disk, a
reader that went away).  During a run each sink is driven by its own :class:`SinkWorker`, a
bounded queue and one writer thread, so a slow or failing sink never stalls the analysis or
the other sinks, and each record reaches a sink whole (one writer per sink: lines never
interleave).  The policy (see README "Outputs"):

* a **file run** (``--video`` without ``--realtime``) is lossless: a lossless sink (stdout,
  ``--out``, ``--csv``, ``--dump-features``) whose queue is full holds the analysis back
  (backpressure: the reader paces the run);
* a **live run** (RTSP, camera, ``--realtime``) never waits: a full queue drops the record,
  counts it and says so once per streak with a ``warning`` record on the other sinks;
* ZeroMQ never waits (a slow subscriber loses messages at the socket's high-water mark);
* a sink whose write fails stops (its later records count as dropped), with a ``warning``
  record on the other sinks; the ``end`` record's ``sinks`` gives each sink's
  ``written``/``dropped``/``error``.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import queue
import select
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

from stream.core.labels import COMPOUND

#: Records a sink's queue holds before it blocks (file runs) or drops (live runs).
QUEUE_SIZE = int(os.environ.get("CER_STREAM_SINK_QUEUE", "256"))
#: Seconds the end of a run waits for a live run's sink to take and write its last records.
CLOSE_TIMEOUT_S = float(os.environ.get("CER_STREAM_SINK_CLOSE_TIMEOUT", "3"))


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy scalars/arrays to Python, NaN to None, floats rounded."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else round(obj, 6)
    return obj


def dumps(record: dict) -> str:
    return json.dumps(_clean(record), ensure_ascii=False, separators=(", ", ": "))


class SinkError(Exception):
    """An output that cannot be used (one line: which option, which path, why)."""


def open_output(path: Path, option: str) -> TextIO:
    """Open ``path`` for writing, checking that it takes data: ``SinkError`` (one line) for a
    missing folder, a directory, a read-only or pseudo file (``/proc/version``).  Character
    devices and FIFOs (``/dev/null``, ``/dev/full``, a pipe) are opened as they are."""
    try:
        f = open(path, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise SinkError(f"cannot write {option} {path}: {exc.strerror or exc}") from None
    try:
        if stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            # a probe byte, then truncated: an open that succeeds on a file that refuses data
            # (procfs, sysfs, a full disk) is an error now, not a lost output later
            f.write("\n")
            f.flush()
            f.truncate(0)
            f.seek(0)
    except OSError as exc:
        _close_quietly(f)
        raise SinkError(f"cannot write {option} {path}: {exc.strerror or exc}") from None
    return f


def _wait_writable(fd: int, timeout_s: float) -> None:
    """Block until ``fd`` takes more bytes or ``timeout_s`` passes (``poll``: any fd number,
    where ``select`` refuses descriptors past 1023 in a process that holds many)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.poll(timeout_s * 1000)


def _close_quietly(f: Any) -> None:
    try:
        f.close()
    except (OSError, ValueError):
        pass


class Sink:
    """A record consumer.  ``name`` keys it in the ``end`` record's ``sinks``; ``lossless``
    sinks hold a file run back rather than drop; ``required``: when its reader goes away
    (``BrokenPipeError``) the run stops (stdout)."""

    name: str = "sink"
    lossless: bool = True
    required: bool = False

    def write(self, record: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class JsonLinesSink(Sink):
    """One JSON object per line; ``stream`` defaults to stdout.  A stream with a file
    descriptor is written with ``os.write`` (whole lines, nothing left buffered in Python at
    exit); others (``io.StringIO``) with ``write`` + ``flush``."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        path: Path | None = None,
        types: set[str] | None = None,
        name: str | None = None,
        option: str = "--out",
    ) -> None:
        self._own = path is not None
        self.stream: TextIO = open_output(path, option) if path is not None else (stream or sys.stdout)
        self.types = types
        self.name = name or ("stdout" if self.stream is sys.stdout else option.lstrip("-") if path else "stream")
        self.required = self.stream is sys.stdout
        self._fd: int | None = None
        try:
            fd = self.stream.fileno()
            self.stream.flush()
            self._fd = fd
        except (AttributeError, OSError, ValueError):
            self._fd = None

    def write(self, record: dict) -> None:
        if self.types is not None and record.get("type") not in self.types:
            return
        line = dumps(record) + "\n"
        if self._fd is None:
            self.stream.write(line)
            self.stream.flush()
            return
        data = line.encode("utf-8")
        while data:
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:  # a non-blocking pipe: wait until it takes more
                _wait_writable(self._fd, 0.5)
                continue
            except InterruptedError:
                continue
            data = data[n:]

    def close(self) -> None:
        if self._own:
            _close_quietly(self.stream)


class ZmqPublishSink(Sink):
    """ZeroMQ PUB socket: two-part messages ``[type, json]`` so subscribers can filter."""

    lossless = False

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.name = "publish"
        self._sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, 1000)
        self._sock.setsockopt(zmq.LINGER, 1000)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close()
            raise ValueError(f"cannot publish on {endpoint}: {exc}") from None
        self.endpoint = cast(bytes, self._sock.getsockopt(zmq.LAST_ENDPOINT)).decode()  # a bytes option

    def write(self, record: dict) -> None:
        import zmq

        try:
            self._sock.send_multipart([str(record.get("type", "")).encode(), dumps(record).encode()], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # a slow subscriber loses messages; the analyzer never waits for it

    def close(self) -> None:
        self._sock.close()


#: Header of the ABAW compound-expression prediction file.
CSV_HEADER = "image_location," + ",".join(name.replace(" ", "_") for name in COMPOUND)


class AbawCsvSink(Sink):
    """Frame-wise final predictions in the ABAW layout: ``VIDEO/00001.jpg,<class index>``
    (written with the csv module: a video name with commas or quotes is quoted).

    Frames before the stream's first prediction (no face or speech yet) take the first
    prediction that follows, the mirror of the rule that uncovered frames take the previous
    frame's value; if the stream never predicts anything they are left out.
    """

    def __init__(self, path: Path, video_name: str) -> None:
        self.name = "csv"
        self.f = open_output(path, "--csv")
        self.video = video_name
        self._csv = csv.writer(self.f, lineterminator="\n")
        self._csv.writerow(CSV_HEADER.split(","))
        try:
            self.f.flush()
        except OSError as exc:
            _close_quietly(self.f)
            raise SinkError(f"cannot write --csv {path}: {exc.strerror or exc}") from None
        self._waiting: list[int] = []

    def _row(self, i: int, lab: int) -> None:
        self._csv.writerow([f"{self.video}/{i + 1:05d}.jpg", lab])

    def write(self, record: dict) -> None:
        if record.get("type") != "frames" or not record.get("final"):
            return
        for i, lab in zip(record["frame_index"], record["label_index"]):
            if lab is None:
                self._waiting.append(i)
                continue
            for j in self._waiting:
                self._row(j, lab)
            self._waiting.clear()
            self._row(i, lab)
        self.f.flush()

    def close(self) -> None:
        _close_quietly(self.f)


# --------------------------------------------------------------------------- workers
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

    def __init__(self, sink: Any, name: str, *, block: bool, maxsize: int = QUEUE_SIZE) -> None:
        self.sink = sink
        self.name = name
        self.block = block
        self.required = bool(getattr(sink, "required", False))
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

    def __init__(self, sinks: list[Any], *, block: bool, maxsize: int = QUEUE_SIZE) -> None:
        self.workers: list[SinkWorker] = []
        seen: dict[str, int] = {}
        for s in sinks:
            name = str(getattr(s, "name", None) or type(s).__name__)
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                name = f"{name}#{seen[name]}"
            lossless = bool(getattr(s, "lossless", True))
            self.workers.append(SinkWorker(s, name, block=block and lossless, maxsize=maxsize))
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
    "CSV_HEADER",
    "AbawCsvSink",
    "JsonLinesSink",
    "Sink",
    "SinkError",
    "SinkEvent",
    "SinkSet",
    "SinkWorker",
    "ZmqPublishSink",
    "dumps",
    "open_output",
]
