"""Where predictions go: JSON lines (stdout or file), ZeroMQ PUB, ABAW CSV.

A sink's :meth:`Sink.write` does the writing and may raise: ``OSError`` (a full disk, a
reader that went away).  During a run each sink is driven by its own :class:`SinkWorker`
(:mod:`stream.runtime.delivery`, where :class:`Sink` is declared), a bounded queue and one
writer thread, so a slow or failing sink never stalls the analysis or
the other sinks, and each record reaches a sink whole (one writer per sink: lines never
interleave).  The policy (see docs/outputs.md):

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
import io
import json
import logging
import math
import os
import secrets
import select
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO, cast

from stream.core.labels import COMPOUND
from stream.runtime.delivery import (  # noqa: F401 (the Sink interface and its writers, re-exported)
    CLOSE_TIMEOUT_S,
    QUEUE_SIZE,
    Sink,
    SinkEvent,
    SinkSet,
    SinkWorker,
)

log = logging.getLogger("cer_stream.outputs")


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
