"""Whether Ctrl-C came while the command started, in a module of its own.

The package (:mod:`stream.cli`) installs :func:`note_sigint` before anything heavy is imported,
and the run command (:mod:`stream.cli.main`) asks :func:`interrupted` when loading models fails
(a native import interrupted by Ctrl-C turns it into an error of its own).  Kept in the package,
the flag made the package and that module import each other.
"""

from __future__ import annotations

from typing import NoReturn

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


__all__ = ["as_program", "interrupted", "note_sigint"]
