"""An event that a signal handler may set.

Python runs a signal handler in the main thread, between two bytecodes of whatever that thread
was doing.  ``threading.Event.set`` takes the event's lock, which is not reentrant, so a handler
that sets an ``Event`` deadlocks when the main thread already holds that lock: a second signal
arriving while the first handler is inside ``set()``, or one arriving at the instant a ``wait()``
holds it.  Bursts are not rare: Linux sends a child its parent-death signal (``PR_SET_PDEATHSIG``)
once for each thread of a dying parent, and an analyzer has a dozen threads; a supervisor's
SIGTERM can meet a user's Ctrl-C.  A capture process whose parent was SIGKILLed was seen stuck
this way for good, four handlers deep.

:class:`SignalEvent` takes no lock: :meth:`~SignalEvent.set` stores a flag and writes one byte
to a non-blocking pipe, and :meth:`~SignalEvent.wait` polls that pipe, so a waiter wakes at once
whichever thread (or handler) set it.
"""

from __future__ import annotations

import os
import select
import weakref
from typing import Protocol


class Flag(Protocol):
    """What waits for a request reads: a ``threading.Event`` or a :class:`SignalEvent`."""

    def is_set(self) -> bool: ...


def _close(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class SignalEvent:
    """``threading.Event``'s ``set``/``is_set``/``wait``, safe to call from a signal handler
    (and from any thread).  It cannot be cleared: it says that something has been asked for
    (a stop, an interrupt), once and for good."""

    def __init__(self) -> None:
        self._flag = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        weakref.finalize(self, _close, self._r, self._w)

    def set(self) -> None:
        self._flag = True
        try:
            os.write(self._w, b"!")
        except OSError:  # a full pipe (already readable) or a closed one (nobody can wait)
            pass

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the event is set or ``timeout`` seconds pass; returns whether it is set."""
        if self._flag:
            return True
        poller = select.poll()
        poller.register(self._r, select.POLLIN)
        poller.poll(None if timeout is None else max(0.0, timeout) * 1000.0)
        return self._flag


def unblock_stop_signals() -> None:
    """Unblock SIGINT and SIGTERM in the calling thread (call it from the main thread at start).

    A signal mask is inherited across ``fork`` and ``exec``: a process started from a thread that
    blocks them (Ray's worker threads block SIGINT, so every analyzer a ``serve --ray`` actor
    started had it blocked) would never receive the stop it is sent, and be killed after the
    grace time without its end record.  (multiprocessing's resource tracker used to unblock them
    as a side effect, while capture processes were multiprocessing children.)"""
    import signal

    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


__all__ = ["Flag", "SignalEvent", "unblock_stop_signals"]
