"""The command line: flags become options; nothing below this package knows argparse.

``main`` scrubs credentials from this process's own command line (what ``ps`` shows) before
anything else is imported, so no child forked while modules load can show them either.

Ctrl-C before a run's own handler is in place (while Python imports NumPy, OpenCV, MediaPipe,
ONNX Runtime... or loads models) is one line, ``cer-stream: interrupted``, and exit status 130.
That takes more than catching ``KeyboardInterrupt``: a native extension interrupted inside its
initialisation turns it into an ``ImportError`` of its own ("numpy._core.multiarray failed to
import", pybind11's "initialization failed"), which would read as a broken install.  So
:func:`main` installs a SIGINT handler first that notes the interrupt
(:mod:`stream.cli.interrupt`, a module of its own so that :mod:`stream.cli.main` can ask
:func:`interrupted` without importing this package) before raising it, and whatever an interrupted start-up ends with is reported as the interrupt.
"""

from __future__ import annotations

import threading

from stream.core.logs import fill_closed_std_streams

fill_closed_std_streams()  # before anything here opens a file (SignalEvent's pipe): see there

from stream.cli.interrupt import as_program as as_program_flag  # noqa: E402
from stream.cli.interrupt import interrupted, note_sigint, redeliver_swallowed  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import signal

    as_program = argv is None
    if as_program:
        from stream.core.redact import redact_process_args

        as_program_flag[0] = True

        redact_process_args()
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        from stream.core.signals import unblock_stop_signals

        unblock_stop_signals()  # a parent's thread may have handed us a mask that blocks them
    if main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        import sys

        signal.signal(signal.SIGINT, note_sigint)
        if as_program:  # a process of its own: no caller's unraisable hook to keep
            sys.unraisablehook = redeliver_swallowed(sys.unraisablehook)
    try:
        from stream.cli.main import main as run

        return run(argv)
    except BaseException as exc:
        if not (isinstance(exc, KeyboardInterrupt) or (interrupted() and isinstance(exc, Exception))):
            raise
        import os
        import sys

        sys.stderr.write("cer-stream: interrupted\n")
        if not as_program:
            return 130
        # CPython 3.11 remembers a KeyboardInterrupt that ended code run from C (an extension's
        # initialisation) and then ends the process with SIGINT whatever the exit status asked;
        # nothing has started yet that needs cleaning up, so leave with 130 now
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)


#: :func:`main` under a name that stays: importing the submodule ``stream.cli.main`` rebinds the
#: package's ``main`` attribute to that module.
entry = main

__all__ = ["entry", "interrupted", "main"]
