"""Giving freed memory back to the system, so that a live process's size stays flat.

glibc's ``malloc`` keeps memory that the program freed inside its heaps for later use; after a
burst of large temporary buffers (a reconnect: a window that straddles the gap, models run on
batches of a new size, a decoder opened again) the heap has many free pages that still count
as resident memory.  ``malloc_trim(0)`` hands those pages back (``madvise(MADV_DONTNEED)`` on
every arena) without moving anything in use.  Measured on the analyzer after six reconnects:
546.6 MB resident before, 519.4 MB after (``bench/soak.py``, a probe of ``mallinfo2``).

:func:`trim` does that where the C library is glibc and does nothing elsewhere (musl, macOS).
It takes 10-35 ms on a fragmented ~300 MB heap, so the analyzer asks for it after a gap and at
most once a minute (:data:`TRIM_EVERY_S`), and :class:`Trimmer` runs it on a thread of its own,
off the window loop (glibc's arenas are locked one at a time meanwhile, as for any ``free``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from typing import Any

log = logging.getLogger("cer_stream.memory")

#: Least seconds between two trims between windows.
TRIM_EVERY_S = 60.0
#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`keep_freed_memory` sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
TRIM_THRESHOLD = 256 << 20
MMAP_THRESHOLD = 32 << 20  # glibc's upper bound on 64-bit systems


@functools.cache
def _glibc(name: str, argtypes: tuple[Any, ...]) -> Any:
    """The C library's function ``name`` where the C library is glibc (``None`` elsewhere)."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


_tuned = False


def keep_freed_memory() -> bool:
    """Let malloc keep freed memory for reuse instead of returning it at every ``free``: blocks
    up to 32 MB come from the heap rather than their own ``mmap``, and the heap is not shrunk
    automatically (``mallopt`` thresholds; :func:`trim` returns the free pages when the
    analyzer chooses).  ONNX Runtime's own arena is off (``engines/runtimes/onnxruntime.py``),
    so its models' large temporary tensors come from malloc on every run: without this each
    run mapped and faulted them in anew (faceapi-expression on a batch of 20: 53-59 ms against
    33 ms, ``bench/engines.py``).  Once per process, glibc only; whether it applied."""
    global _tuned
    if _tuned:
        return True
    mallopt = _glibc("mallopt", (ctypes.c_int, ctypes.c_int))
    if mallopt is None:
        return False
    _tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _tuned


def trim() -> bool:
    """Return the heap's free pages to the system; whether the C library could (glibc)."""
    fn = _glibc("malloc_trim", (ctypes.c_size_t,))
    if fn is None:
        return False
    t0 = time.perf_counter()
    fn(0)
    log.debug("malloc_trim: %.1f ms", (time.perf_counter() - t0) * 1000.0)
    return True


class Trimmer:
    """Runs :func:`trim` on a thread of its own when asked (:meth:`now`) or when :meth:`maybe`
    finds that ``every_s`` seconds have passed since the last one; one at a time (a request
    while one runs is dropped).  ``background=False`` trims in the caller's thread."""

    def __init__(self, every_s: float = TRIM_EVERY_S, clock: Any = time.monotonic, *, background: bool = True) -> None:
        self.every_s = every_s
        self.clock = clock
        self.background = background
        self.last = clock()
        self.count = 0
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        if trim():
            self.count += 1

    def now(self) -> None:
        self.last = self.clock()
        if not self.background:
            self._run()
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="cer-trim", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def maybe(self) -> None:
        if self.clock() - self.last >= self.every_s:
            self.now()


__all__ = ["TRIM_EVERY_S", "Trimmer", "keep_freed_memory", "trim"]
