"""Helpers for tests that need a real RTSP server on loopback.

The server itself is ``tests/rtsp_server.py``; it runs under the system
interpreter (:data:`SYSTEM_PYTHON`) because GStreamer's RTSP server bindings
are Debian packages (listed in ``tests/DEBIAN_PACKAGES.txt``) that a virtual
environment does not see.  Typical use::

    ok, reason = rtsp_available()
    if not ok:
        pytest.skip(reason)
    with serve_rtsp(Path("samples/astronaut.mp4")) as url:
        container = av.open(url, options={"rtsp_transport": "tcp"}, timeout=10.0)
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO

__all__ = ["SERVER_SCRIPT", "SYSTEM_PYTHON", "rtsp_available", "serve_rtsp"]

#: Interpreter that has the GObject / GStreamer bindings (python3-gi).
SYSTEM_PYTHON = "/usr/bin/python3"

#: The RTSP server script started by :func:`serve_rtsp`.
SERVER_SCRIPT = Path(__file__).resolve().parent / "rtsp_server.py"

_PROBE = "import gi; gi.require_version('GstRtspServer','1.0'); from gi.repository import GstRtspServer"
_PACKAGES_HINT = "install the Debian packages listed in tests/DEBIAN_PACKAGES.txt"


@lru_cache(maxsize=1)
def rtsp_available() -> tuple[bool, str]:
    """Tell whether :func:`serve_rtsp` can work here.

    Returns:
        ``(True, "")`` when :data:`SYSTEM_PYTHON` can import GStreamer's RTSP
        server bindings, else ``(False, reason)`` with a human-readable reason
        suitable for ``pytest.skip``.  The answer is cached.
    """
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False, f"{SYSTEM_PYTHON} not found; {_PACKAGES_HINT}"
    try:
        proc = subprocess.run(
            [SYSTEM_PYTHON, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot run {SYSTEM_PYTHON}: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        return False, f"GstRtspServer bindings unavailable ({last}); {_PACKAGES_HINT}"
    return True, ""


def _pump_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Copy ``stream``'s lines into ``lines`` until EOF, then put ``None``.

    Runs in a daemon thread for the server's whole life so its stdout pipe
    never fills up, whatever it prints after the READY line.
    """
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):  # pipe closed under us during shutdown
        pass
    finally:
        lines.put(None)


def _stop(proc: subprocess.Popen[str], grace_s: float = 5.0) -> None:
    """Terminate ``proc`` (SIGTERM), kill it if it lingers, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)


@contextlib.contextmanager
def serve_rtsp(
    clip: Path,
    *,
    no_audio: bool = False,
    timeout: float = 15.0,
    path: str = "/sample",
) -> Iterator[str]:
    """Serve ``clip`` over RTSP on 127.0.0.1 for the duration of the ``with`` block.

    The server is asked for port 0, so the OS picks a free port at bind time
    (no race between choosing a port and binding it); the URL from its READY
    line, ``rtsp://127.0.0.1:PORT/sample``, is yielded.  Every connection to
    it streams the clip from the start in real time (see ``rtsp_server.py``).

    Args:
        clip: H.264 (+AAC) MP4 file to serve.
        no_audio: Serve the video track only; required for a clip without audio.
        timeout: Seconds to wait for the server to report READY.
        path: Mount path of the stream.

    Raises:
        FileNotFoundError: If ``clip`` does not exist.
        RuntimeError: If the server exits or is not ready in time; the message
            includes what the server wrote to stderr.
    """
    clip = Path(clip).resolve()
    if not clip.is_file():
        raise FileNotFoundError(clip)
    cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", "0", "--path", path, "--file", str(clip)]
    if no_audio:
        cmd.append("--no-audio")

    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as errlog:
        # stderr goes to a file, not a pipe, so a chatty server can never block on it.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errlog,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        pump = threading.Thread(target=_pump_lines, args=(proc.stdout, lines), daemon=True)
        pump.start()

        def fail(why: str) -> RuntimeError:
            """Stop the server and build an error carrying its stderr."""
            _stop(proc)
            errlog.seek(0)
            err = errlog.read().strip() or "(no stderr output)"
            return RuntimeError(f"RTSP server {why}: {' '.join(cmd)}\n--- server stderr ---\n{err}")

        try:
            url = None
            deadline = time.monotonic() + timeout
            while url is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise fail(f"not ready within {timeout:g} s")
                try:
                    line = lines.get(timeout=remaining)
                except queue.Empty:
                    continue
                if line is None:
                    raise fail(f"exited before READY (exit status {proc.wait()})")
                if line.startswith("READY "):
                    url = line.split(maxsplit=1)[1].strip()
            yield url
        finally:
            _stop(proc)
            pump.join(timeout=5.0)  # the pipe reaches EOF once the server is gone
            proc.stdout.close()
