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
import io
import json
import logging
import math
import os
import queue
import secrets
import select
import stat
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

from stream.core.labels import COMPOUND

log = logging.getLogger("cer_stream.outputs")

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


# --------------------------------------------------------------------------- output files
def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` are one file: the same device and inode when both exist (so a
    symlink or a hard link is caught, not only the same name), else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs: Sequence[tuple[str, Path]], inputs: Sequence[tuple[str, Path]] = ()) -> None:
    """``SinkError`` (one line) when an output is one of the ``inputs`` or two outputs are one
    file: checked before anything is opened, since opening an output truncates it.  Each item is
    ``(option, path)``; ``/dev/null`` may take any number of outputs."""
    for i, (option, path) in enumerate(outputs):
        if same_file(path, os.devnull):
            continue
        for in_option, in_path in inputs:
            if same_file(path, in_path):
                raise SinkError(f"cannot write {option} {path}: it is the input file ({in_option} {in_path})")
        for other, other_path in outputs[:i]:
            if same_file(path, other_path):
                raise SinkError(f"{other} and {option} name the same file ({path}): give each output its own file")


def temp_beside(target: Path) -> tuple[int, Path]:
    """A new file beside ``target`` that is renamed over it once written, named
    ``.NAME.cer-stream-XXXXXXXX.tmp`` (one a SIGKILL leaves behind is recognisably ours), with
    ``target``'s permissions when it exists; an open descriptor and its path."""
    while True:
        temp = target.with_name(f".{target.name}.cer-stream-{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, stat.S_IMODE(os.stat(target).st_mode))
        except OSError:  # a new target: the umask's mode
            pass
        return fd, temp


def move_into_place(temp: Path, target: Path) -> None:
    """Rename a finished ``temp`` over ``target`` (atomic: readers see the old file or the new)."""
    os.replace(temp, target)


def _direct_only(path: Path) -> bool:
    """Whether ``path`` must be written where it is: a FIFO, a device, or an alias of an open
    descriptor (``/dev/stdout``, ``/proc/self/fd/N``: a rename would replace what the alias
    points at, not write into it)."""
    if Path(os.path.abspath(path)).parts[1:2] in (("dev",), ("proc",)):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


class OutputFile(io.TextIOWrapper):
    """A text output of a run (UTF-8, ``\\n``).  :meth:`close` keeps what was written: a file
    written under a temporary name (``temp``) is renamed over ``target`` then.  :meth:`discard`
    is for a run that never started: it removes what this run made (the temporary file, or the
    file when the open created it), so an existing ``target`` is left exactly as it was."""

    def __init__(self, fd: int, target: Path, *, temp: Path | None = None, created: bool = False) -> None:
        super().__init__(io.BufferedWriter(io.FileIO(fd, "w")), encoding="utf-8", newline="")
        self.target, self.temp, self.created = target, temp, created
        self._keep = True

    def discard(self) -> None:
        self._keep = False
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self.temp is not None and self._keep:
                self.flush()
                os.fsync(self.fileno())
        finally:
            try:
                super().close()
            finally:
                self._settle()

    def _settle(self) -> None:
        if self._keep and self.temp is not None:
            try:
                move_into_place(self.temp, self.target)
            except OSError as exc:
                log.error("cannot move %s over %s: %s; the output is left there", self.temp, self.target, exc)
        elif not self._keep:
            made = self.temp if self.temp is not None else (self.target if self.created else None)
            if made is not None:
                try:
                    os.unlink(made)
                except OSError:
                    pass


def _open_file(path: Path, staged: bool) -> OutputFile:
    """Open ``path`` for writing: through a temporary file beside it when ``staged`` and it is
    an existing regular file, else in place (a temporary file that cannot be made, e.g. in a
    folder that is not writable, falls back to writing in place)."""
    if staged and path.is_file() and not _direct_only(path):
        real = Path(os.path.realpath(path))  # a symlink keeps pointing at the new file
        try:
            fd, temp = temp_beside(real)
        except OSError:
            pass
        else:
            return OutputFile(fd, real, temp=temp)
    existed = os.path.lexists(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    return OutputFile(fd, path, created=not existed)


def open_output(path: Path, option: str, *, staged: bool = False) -> OutputFile:
    """Open ``path`` for writing, checking that it takes data: ``SinkError`` (one line) for a
    missing folder, a directory, a read-only or pseudo file (``/proc/version``).  Character
    devices and FIFOs (``/dev/null``, ``/dev/full``, a pipe) are opened as they are.

    ``staged``: an existing regular file is not truncated now but written under a temporary
    name beside it and replaced when the file is closed (:class:`OutputFile`), so a run that
    fails at start leaves it as it was; a new file is written in place (its records show as they
    come) and a discarded one is removed."""
    try:
        f = _open_file(Path(path), staged)
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
        try:
            f.discard()
        except OSError:
            pass
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

    def discard(self) -> None:
        """Close, for a run that never started: an output file made for it is removed and an
        existing one left as it was (where the sink can; else as :meth:`close`)."""
        self.close()


def _discard_quietly(f: Any) -> None:
    if isinstance(f, OutputFile):
        try:
            f.discard()
        except (OSError, ValueError):
            pass
    else:
        _close_quietly(f)


class JsonLinesSink(Sink):
    """One JSON object per line; ``stream`` defaults to stdout.  A stream with a file
    descriptor is written with ``os.write`` (whole lines, nothing left buffered in Python at
    exit); others (``io.StringIO``) with ``write`` + ``flush``.  ``staged``: see
    :func:`open_output`."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        path: Path | None = None,
        types: set[str] | None = None,
        name: str | None = None,
        option: str = "--out",
        staged: bool = False,
    ) -> None:
        self._own = path is not None
        self.stream: TextIO = open_output(path, option, staged=staged) if path is not None else (stream or sys.stdout)
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

    def discard(self) -> None:
        if self._own:
            _discard_quietly(self.stream)


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
    frame's value; if the stream never predicts anything they are left out.  ``staged``: see
    :func:`open_output`.
    """

    def __init__(self, path: Path, video_name: str, *, staged: bool = False) -> None:
        self.name = "csv"
        self.f = open_output(path, "--csv", staged=staged)
        self.video = video_name
        self._csv = csv.writer(self.f, lineterminator="\n")
        self._csv.writerow(CSV_HEADER.split(","))
        try:
            self.f.flush()
        except OSError as exc:
            _discard_quietly(self.f)
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

    def discard(self) -> None:
        _discard_quietly(self.f)


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
    "OutputFile",
    "Sink",
    "SinkError",
    "SinkEvent",
    "SinkSet",
    "SinkWorker",
    "ZmqPublishSink",
    "check_outputs",
    "dumps",
    "move_into_place",
    "open_output",
    "same_file",
    "temp_beside",
]
