"""Logging for cer-stream: one ``cer_stream.*`` logger hierarchy, native noise silenced per library,
and every warning of a run forwarded into its ``warning`` records.

* :func:`setup_logging` gives the ``cer_stream`` logger one stderr handler and one format
  (``cer-stream: warning [scene] ...``) and stops it propagating to the root logger (no
  duplicates when a library configures root).  ``--log-level`` sets what reaches stderr; the
  logger itself always lets WARNING and above through, so that a :class:`RecordForwarder`
  sees every warning whatever the stderr level.  The level is also exported as
  ``CER_STREAM_LOG_LEVEL``, so spawned capture processes log the same way.
* :func:`silence_native` quiets the native libraries that write straight to file
  descriptor 2 (MediaPipe's absl log and TFLite logger, glog, TensorFlow, ONNX Runtime,
  CTranslate2), each through its own knob, before they are imported.  File descriptor 2
  itself stays open, so a crash, a Python traceback or an unexpected native error is still
  seen.  ``CER_STREAM_NATIVE_LOGS=1`` leaves every library at its default.
* :class:`RecordForwarder` is a :class:`logging.Handler` on ``cer_stream`` that hands every
  WARNING+ record, from any thread and at any time in a run, to a callback
  ``(message, logger_name)``; :func:`warning_fields` turns the logger name into the record's
  ``modality``/``stream`` fields.
* :func:`fill_closed_std_streams` gives a stdin, stdout or stderr that was closed when the
  program started (``2>&-``, as services and cron jobs may start it) ``/dev/null``.
"""

from __future__ import annotations

import collections
import ctypes
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TextIO

ROOT = "cer_stream"
LEVEL_ENV = "CER_STREAM_LOG_LEVEL"
NATIVE_ENV = "CER_STREAM_NATIVE_LOGS"
LEVELS = ("debug", "info", "warning", "error", "critical")
#: Modality names a ``cer_stream.<name>`` logger maps to (the ``modality`` field of a warning).
MODALITIES = frozenset({"face", "clip", "temporal", "audio", "text", "scene"})


# --------------------------------------------------------------------------- setup
def parse_level(level: str | int) -> int:
    """``"warning"`` / ``"WARNING"`` / ``30`` -> 30; raises ``ValueError`` on anything else."""
    if isinstance(level, bool):
        raise ValueError(f"bad log level {level!r}")
    if isinstance(level, int):
        return level
    name = str(level).strip().lower()
    if name not in LEVELS:
        raise ValueError(f"bad log level {level!r}: expected one of {', '.join(LEVELS)}")
    return getattr(logging, name.upper())


class _Formatter(logging.Formatter):
    """``cer-stream: warning [scene] message`` (the logger name without ``cer_stream.``)."""

    def format(self, record: logging.LogRecord) -> str:
        name = record.name[len(ROOT) + 1 :] if record.name.startswith(ROOT + ".") else ""
        text = f"cer-stream: {record.levelname.lower()}{f' [{name}]' if name else ''} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class _StderrHandler(logging.StreamHandler):
    """A stream handler whose default stream is whatever ``sys.stderr`` is at emit time."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self._follow = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow:
            self.stream = sys.stderr
        if self.stream is None:  # stderr closed (``2>&-``) in a program that did not fill it
            return
        super().emit(record)


def fill_closed_std_streams() -> None:
    """Give a closed stdin, stdout or stderr ``/dev/null``; call it before anything opens a file.

    Services and cron jobs may start a program with descriptor 1 or 2 closed (``2>&-``).  Python
    then makes ``sys.stdout``/``sys.stderr`` ``None``, so a write or ``isatty()`` raises; the
    first file or pipe opened takes the free number (a record file, or a signal pipe, would
    receive what is meant for stderr); and spawned children (the capture process) inherit the
    hole.  On ``/dev/null`` instead, what would have been printed there is dropped and every
    other output works as usual."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        try:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        except OSError:
            continue
        if getattr(sys, name) is None:
            stream = open(fd, mode, encoding="utf-8", closefd=False)
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)


def setup_logging(level: str | int = "warning", stream: TextIO | None = None) -> logging.Logger:
    """Configure the ``cer_stream`` hierarchy: one handler on ``stream`` (default: the current
    ``sys.stderr``) at ``level``, no propagation to root.  Idempotent: a second call replaces
    the first one's handler.  Returns the ``cer_stream`` logger."""
    lvl = parse_level(level)
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        if isinstance(h, _StderrHandler):
            logger.removeHandler(h)
    handler = _StderrHandler(stream)
    handler.setLevel(lvl)
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(min(lvl, logging.WARNING))  # warnings always reach a RecordForwarder
    logger.propagate = False
    os.environ[LEVEL_ENV] = logging.getLevelName(lvl).lower()
    return logger


# --------------------------------------------------------------------------- native noise
_silenced = False
_silence_lock = threading.Lock()
_hooks: dict[str, list[Callable]] = {}
_applied: dict[str, str] = {}  # knob -> what was done (for diagnostics and tests)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs callbacks right after a named module is imported (for knobs that exist only as
    functions or symbols of the library itself)."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _hooks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_hook(module, _exec=exec_module, _name=fullname):
            _exec(module)
            _run_hooks(_name, module)

        try:
            loader.exec_module = exec_then_hook  # instance attribute: this loader only
        except AttributeError:  # pragma: no cover - a loader with slots
            return spec
        return spec


_finder = _AfterImport()


def _run_hooks(name: str, module) -> None:
    for fn in _hooks.pop(name, []):
        try:
            fn(module)
        except Exception as exc:  # a knob that moved in a new release: noise, not a failure
            _applied[name] = f"failed: {type(exc).__name__}: {exc}"
    if not _hooks and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


def _after_import(name: str, fn: Callable) -> None:
    """Call ``fn(module)`` once ``name`` is imported (now, if it already is)."""
    if name in sys.modules:
        _hooks.setdefault(name, []).append(fn)
        _run_hooks(name, sys.modules[name])
        return
    _hooks.setdefault(name, []).append(fn)
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def _elf_symbols(path: str, names: set[str]) -> dict[str, tuple[int, int, int]]:
    """``{name: (value, size, type)}`` for the named symbols of an ELF64 file's ``.symtab``."""
    import mmap
    import struct

    import numpy as np

    out: dict[str, tuple[int, int, int]] = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"\x7fELF" or mm[4] != 2 or mm[5] != 1:  # ELF, 64-bit, little-endian
            return out
        (shoff,) = struct.unpack_from("<Q", mm, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", mm, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", mm, shoff + i * shentsize) for i in range(shnum)]
        for sh in sections:
            if sh[1] != 2:  # SHT_SYMTAB
                continue
            strtab = sections[sh[6]]
            strings = mm[strtab[4] : strtab[4] + strtab[5]]
            dtype = np.dtype(
                [("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"), ("value", "<u8"), ("size", "<u8")]
            )
            syms = np.frombuffer(mm[sh[4] : sh[4] + sh[5]], dtype=dtype)
            for name in names:
                offset = strings.find(b"\0" + name.encode() + b"\0")
                if offset < 0:
                    continue
                hit = np.nonzero(syms["name"] == offset + 1)[0]
                if hit.size:
                    s = syms[hit[0]]
                    out[name] = (int(s["value"]), int(s["size"]), int(s["info"]) & 0xF)
    return out


#: MediaPipe 0.10.21 (pinned) has no Python knob for its native loggers: absl's log (the
#: ``W0000 ... inference_feedback_manager.cc`` lines) and TFLite's minimal logger ("INFO: Created
#: TensorFlow Lite XNNPACK delegate for CPU.") read these globals, which its extension module
#: keeps in its (unexported) symbol table.  Each is set only if found with the expected type
#: and size; otherwise nothing is touched and the lines stay.
_MEDIAPIPE_GLOBALS = {
    # absl::(anonymous namespace)::min_log_level; absl::LogSeverityAtLeast: 0 info, 1 warning, 2 error
    "_ZN4absl12_GLOBAL__N_113min_log_levelE.0": 2,
    # tflite::logging_internal::MinimalLogger::minimum_log_severity_; 0 verbose, 1 info, 2 warning, 3 error
    "_ZN6tflite16logging_internal13MinimalLogger21minimum_log_severity_E": 3,
}
_ANCHOR = "PyInit__framework_bindings"  # exported: gives the library's load address


def _quiet_mediapipe(module) -> None:
    path = getattr(module, "__file__", None)
    if not path:
        return
    found = _elf_symbols(path, set(_MEDIAPIPE_GLOBALS) | {_ANCHOR})
    if _ANCHOR not in found:
        _applied["mediapipe"] = "no symbol table"
        return
    lib = ctypes.CDLL(path)  # already loaded: the same handle, nothing runs
    anchor = ctypes.cast(getattr(lib, _ANCHOR), ctypes.c_void_p).value
    assert anchor is not None  # the address of a symbol the library exports
    base = anchor - found[_ANCHOR][0]
    done = []
    for name, level in _MEDIAPIPE_GLOBALS.items():
        value, size, kind = found.get(name, (0, 0, 0))
        if value and size == 4 and kind == 1:  # STT_OBJECT, a 4-byte int
            var = ctypes.c_int.from_address(base + value)
            if 0 <= var.value <= 4:  # a severity, as expected
                var.value = max(var.value, level)
                done.append(name)
    _applied["mediapipe"] = f"{len(done)} of {len(_MEDIAPIPE_GLOBALS)} native log levels set"


def _quiet_onnxruntime(module) -> None:
    module.set_default_logger_severity(3)  # 0 verbose .. 3 error
    _applied["onnxruntime"] = "default logger severity 3 (error)"


def _quiet_absl(module) -> None:
    module.set_verbosity(module.ERROR)
    _applied["absl.logging"] = "verbosity ERROR"


def _quiet_ctranslate2(module) -> None:
    if hasattr(module, "set_log_level"):
        module.set_log_level(logging.ERROR)
        _applied["ctranslate2"] = "log level ERROR"


#: Knobs read from the environment when each library starts (user settings win).
NATIVE_ENV_DEFAULTS = {
    "GLOG_minloglevel": "2",  # glog (MediaPipe's older graph code): errors only
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow / TFLite builds that read it
    "GRPC_VERBOSITY": "ERROR",  # gRPC inside TensorFlow-based wheels
    "CT2_VERBOSE": "-1",  # CTranslate2 (faster-whisper): -1 = errors only
}


def silence_native() -> dict[str, str]:
    """Quiet the native libraries' own log output, library by library (idempotent).

    Call it first thing, before MediaPipe, ONNX Runtime or CTranslate2 are imported: the
    environment knobs are read once at their start, and the knobs that are functions or
    symbols of a library are applied right after its import.  Python loggers of libraries
    (``httpx``, ``absl``) are set to WARNING/ERROR.  With ``CER_STREAM_NATIVE_LOGS=1`` it does
    nothing.  Returns what was applied so far (knob -> description)."""
    global _silenced
    with _silence_lock:
        if _silenced or os.environ.get(NATIVE_ENV) == "1":
            return dict(_applied)
        _silenced = True
        for key, value in NATIVE_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        _applied["env"] = " ".join(f"{k}={os.environ[k]}" for k in NATIVE_ENV_DEFAULTS)
        _after_import("onnxruntime", _quiet_onnxruntime)
        _after_import("absl.logging", _quiet_absl)
        _after_import("ctranslate2", _quiet_ctranslate2)
        if sys.platform.startswith("linux"):
            _after_import("mediapipe.python._framework_bindings", _quiet_mediapipe)
        for name in ("httpx", "httpcore"):  # per-request INFO lines
            logging.getLogger(name).setLevel(logging.WARNING)
        return dict(_applied)


def native_status() -> dict[str, str]:
    """What :func:`silence_native` has applied so far."""
    return dict(_applied)


# --------------------------------------------------------------------------- forwarding
def warning_fields(logger_name: str) -> dict[str, str]:
    """The ``warning`` record's extra fields for a logger: ``cer_stream.scene`` ->
    ``{"modality": "scene"}``, ``cer_stream.capture.audio`` -> ``{"stream": "audio"}``."""
    if not logger_name.startswith(ROOT + "."):
        return {}
    parts = logger_name[len(ROOT) + 1 :].split(".")
    if parts[0] in MODALITIES:
        return {"modality": parts[0]}
    if parts[0] == "capture" and len(parts) > 1 and parts[1] in ("video", "audio"):
        return {"stream": parts[1]}
    return {}


def _message(record: logging.LogRecord) -> str:
    try:
        text = record.getMessage()
    except Exception:  # bad %-arguments: still say something
        text = f"{record.msg!r} {record.args!r}"
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        text += f" ({type(exc).__name__}: {exc})" if str(exc) else f" ({type(exc).__name__})"
    return text


class RecordForwarder(logging.Handler):
    """Forwards every record at ``level`` or above of the ``logger`` hierarchy to
    ``callback(message, logger_name)``.

    ``deferred=True`` (default): records are queued (thread-safe, at most ``max_pending``, the
    oldest dropped and counted) and handed over by :meth:`deliver`, on the caller's thread,
    so the callback (e.g. ``Analyzer.warn``, which writes to sinks that are not thread-safe)
    always runs on the analyzer's own thread; records logged before the run starts simply
    wait for the first :meth:`deliver`.  ``deferred=False``: the callback runs in the logging
    thread, under a lock.  Either way ``emit`` never raises into the logging call, and a
    record the callback logs itself is not forwarded again.
    """

    def __init__(
        self,
        callback: Callable[[str, str], None] | None = None,
        *,
        level: int = logging.WARNING,
        logger: str = ROOT,
        deferred: bool = True,
        max_pending: int = 1000,
    ) -> None:
        super().__init__(level)
        self.callback = callback
        self.logger_name = logger
        self.deferred = deferred
        self._pending: collections.deque[tuple[str, str]] = collections.deque(maxlen=max_pending)
        self._queue_lock = threading.Lock()
        self._call_lock = threading.RLock()
        self._inside = threading.local()
        self.forwarded = 0
        self.dropped = 0
        self.failed = 0

    # -- installation --------------------------------------------------------------------
    def install(self) -> RecordForwarder:
        logger = logging.getLogger(self.logger_name)
        if self not in logger.handlers:
            logger.addHandler(self)
        if logger.getEffectiveLevel() > self.level:  # let the records reach the handler
            logger.setLevel(self.level)
        return self

    def remove(self) -> None:
        logging.getLogger(self.logger_name).removeHandler(self)

    def __enter__(self) -> RecordForwarder:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()

    # -- logging side ---------------------------------------------------------------------
    def handle(self, record: logging.LogRecord) -> bool:
        # no I/O lock needed (logging.Handler.handle would take self.lock around emit)
        if record.levelno < self.level or not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if getattr(self._inside, "active", False):
                return  # logged by the callback itself
            item = (_message(record), record.name)
            if self.deferred:
                with self._queue_lock:
                    if len(self._pending) == self._pending.maxlen:
                        self.dropped += 1
                    self._pending.append(item)
            else:
                self._call(self.callback, [item])
        except Exception:
            self.failed += 1

    # -- delivering side ------------------------------------------------------------------
    def pending(self) -> int:
        with self._queue_lock:
            return len(self._pending)

    def deliver(self, callback: Callable[[str, str], None] | None = None) -> int:
        """Hand the queued records to ``callback`` (default: the constructor's), in order, on
        this thread; returns how many.  Cheap when nothing is queued: call it often."""
        if not self._pending:
            return 0
        with self._queue_lock:
            items = list(self._pending)
            self._pending.clear()
        return self._call(callback or self.callback, items)

    def _call(self, callback, items: list[tuple[str, str]]) -> int:
        if callback is None:
            with self._queue_lock:  # nobody to hand them to yet: keep them
                self._pending.extendleft(reversed(items))
            return 0
        n = 0
        with self._call_lock:
            self._inside.active = True
            try:
                for message, name in items:
                    try:
                        callback(message, name)
                        n += 1
                    except Exception:
                        self.failed += 1
            finally:
                self._inside.active = False
        self.forwarded += n
        return n


__all__ = [
    "LEVELS",
    "NATIVE_ENV_DEFAULTS",
    "RecordForwarder",
    "native_status",
    "parse_level",
    "setup_logging",
    "silence_native",
    "warning_fields",
]
