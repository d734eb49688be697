"""The capture process's program: ``python -m stream.io.worker``, its
:class:`~stream.io.capture.CaptureConfig` read (pickled) from standard input.

A capture process is a program of its own rather than a ``multiprocessing`` child: the spawn
start method re-imports the parent's ``__main__`` in every child, so a user's script that
starts a pipeline without an ``if __name__ == "__main__":`` guard started it again in the child
(which failed in multiprocessing's "bootstrapping phase"), and a notebook's or an embedding
application's ``__main__`` may not be importable at all.  This module imports only what the
capture needs, whatever started the analyzer.
"""

from __future__ import annotations

import pickle
import sys


def main() -> None:
    from stream.io.capture import CaptureConfig, capture_main

    cfg = pickle.load(sys.stdin.buffer)
    if not isinstance(cfg, CaptureConfig):
        raise SystemExit(f"stream.io.worker: expected a CaptureConfig on standard input, got {type(cfg).__name__}")
    sys.stdin.close()
    capture_main(cfg)


if __name__ == "__main__":
    main()
