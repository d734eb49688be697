"""Whether Ctrl-C came while the command started, in a module of its own.

The package (:mod:`stream.cli`) installs :func:`note_sigint` before anything heavy is imported,
and the run command (:mod:`stream.cli.main`) asks :func:`interrupted` when loading models fails
(a native import interrupted by Ctrl-C turns it into an error of its own).  Kept in the package,
the flag made the package and that module import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from stream.core.logs import fill_closed_std_streams

fill_closed_std_streams()  # before this module opens a file (SignalEvent's pipe): see there

from stream.core.signals import SignalEvent  # noqa: E402

_interrupted = SignalEvent()  # set by a signal handler: see stream.core.signals


def interrupted() -> bool:
    """Whether Ctrl-C (SIGINT) arrived while the command started (see :mod:`stream.cli`)."""
    return _interrupted.is_set()


#: Set by :func:`stream.cli.main` when it runs as the ``cer-stream`` program (not a call from
#: Python): the run command then keeps its signal handlers to the end, since the process exits
#: as soon as it returns (see :func:`stream.cli.main.run_stream`).
as_program = [False]


def note_sigint(signum: int, frame: object) -> NoReturn:
    """The start-up's SIGINT handler: note the interrupt, then raise it as Python would."""
    _interrupted.set()
    raise KeyboardInterrupt


def _again() -> None:
    import _thread
    import signal
    import threading

    timer = threading.Timer(REDELIVER_S, _thread.interrupt_main, args=(signal.SIGINT,))
    timer.daemon = True
    timer.start()


#: How long after a swallowed Ctrl-C it is delivered again (the callback it landed in has
#: returned by then; if not, it is swallowed and delivered again).
REDELIVER_S = 0.005


def redeliver_swallowed(hook: Callable[[Any], object]) -> Callable[[Any], object]:
    """``sys.unraisablehook`` for the start-up: a KeyboardInterrupt that :func:`note_sigint`
    raised where Python cannot propagate it (a signal handler runs at the next bytecode, and that
    can be inside a weakref callback or a ``__del__``: importlib's module-lock callback, under
    load) is not printed as "Exception ignored ... Traceback" and lost; it is delivered to the
    main thread again a few milliseconds later (:func:`_thread.interrupt_main` from a timer
    thread: from this one the handler would run at once, still inside the callback), where it
    ends the start-up as Ctrl-C does.  Anything else goes to ``hook``."""

    def quiet(unraisable: Any) -> object:
        import signal

        try:
            if (
                unraisable.exc_type is not None
                and issubclass(unraisable.exc_type, KeyboardInterrupt)
                and signal.getsignal(signal.SIGINT) is note_sigint
            ):
                _again()
                return None
        except KeyboardInterrupt:  # a second Ctrl-C landed in this hook: the same answer
            _again()
            return None
        return hook(unraisable)

    return quiet


__all__ = ["as_program", "interrupted", "note_sigint", "redeliver_swallowed"]
