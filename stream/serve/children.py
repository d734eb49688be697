"""What the supervisor and the model host's runner share about a child process: following its
output to its end, naming the signal that ended it, and the first restart delay."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable
from typing import IO

#: First restart delay (then doubling up to the config's ``restart_max_delay``).
RESTART_BASE_DELAY_S = 0.5


def signal_name(code: int | None) -> str | None:
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def follow(
    proc: subprocess.Popen[bytes], read_stdout: Callable[[IO[bytes]], None], read_stderr: Callable[[IO[bytes]], None]
) -> int:
    """Read a child's stdout (here) and stderr (on a thread) to their ends; its exit code, its
    pipes closed."""
    assert proc.stdout is not None and proc.stderr is not None
    err = threading.Thread(target=read_stderr, args=(proc.stderr,), daemon=True)
    err.start()
    read_stdout(proc.stdout)
    code = proc.wait()
    err.join(5.0)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        try:
            if pipe is not None:
                pipe.close()
        except OSError:
            pass
    return code


__all__ = ["RESTART_BASE_DELAY_S", "follow", "signal_name"]
