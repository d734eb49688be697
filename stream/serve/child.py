"""One stream's analyzer under ``cer-stream serve``: ``python -m stream.serve.child --id ID``.

The supervisor writes one JSON line on the child's stdin, ``{"argv": [...]}``: the analyzer's
flags, the source URL among them, so a URL (and any password in it) never appears on a command
line or in the environment.  The child then runs ``cer-stream ARGV`` in this process, its
records going to stdout as JSON lines.  Its stdin stays open: when it reaches end of file (the
supervisor is gone, killed even), the child stops as on SIGTERM (flushes, writes its ``end``
record) instead of running on unsupervised.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading


def _read_line(fd: int) -> bytes:
    """The first line on ``fd``, read unbuffered (``sys.stdin`` is left alone: a thread blocked
    in its buffered reader would hold its lock at interpreter shutdown)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data


def _watch_stdin(fd: int) -> None:
    """Stop this process (SIGTERM: the run's own clean stop) once stdin is closed."""
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


#: The environment variable that lowers this analyzer's CPU priority (``nice`` increment; its
#: capture process inherits it): under the model host the host is in every window's path and the
#: analyzers and their decoders are not, so they yield to it (see stream.serve.supervisor).
NICE_ENV = "CER_STREAM_SERVE_NICE"


def main() -> int:
    try:
        nice = int(os.environ.get(NICE_ENV, "0"))
    except ValueError:
        nice = 0
    if nice > 0:
        os.nice(nice)
    fd = sys.stdin.fileno()
    line = _read_line(fd)
    try:
        argv = json.loads(line)["argv"]
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        sys.stderr.write('cer-stream serve child: error: expected a JSON line {"argv": [...]} on stdin\n')
        return 2
    threading.Thread(target=_watch_stdin, args=(fd,), name="cer-serve-stdin", daemon=True).start()
    from stream.cli import entry as run  # Ctrl-C (serve's stop) while it starts: one line, 130

    return run(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
