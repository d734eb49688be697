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

A server that a test stops, kills, freezes and starts again on the same port is an
:class:`RtspServer`; ``tests/faults.py`` has the network faults (a stalling proxy).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO

__all__ = ["SERVER_SCRIPT", "SYSTEM_PYTHON", "RtspServer", "rtsp_available", "serve_rtsp"]

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
    """Terminate ``proc`` (SIGTERM; SIGCONT too, in case it is stopped), kill it if it
    lingers, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)


#: What ``rtsp_server.py`` prints when it cannot bind its port.
_BIND_FAILED = "cannot listen on"


class RtspServer:
    """An RTSP server on 127.0.0.1 that a test can stop, kill, freeze and start again on the
    same port, so a client can lose it and find it again at the same URL.

    The first :meth:`start` binds the port given (default 0: the OS picks a free one); every
    later start binds the port the first one got.  ``rtsp_server.py`` binds with
    ``SO_REUSEADDR`` (GStreamer's RTSP server asks for it), so a restart right after
    :meth:`kill` works even while the old connections linger in TIME_WAIT; if the port is
    still busy anyway, :meth:`start` retries for ``bind_retry_s`` seconds.  Each start is a
    new server process: every connection streams the clip from its beginning (see
    ``rtsp_server.py``).  Typical use::

        with RtspServer(clip) as server:        # start() ... stop()
            client_reads(server.url)
            server.kill()                       # SIGKILL: the clients' connections break
            server.start()                      # same port, same URL
            server.pause(); server.resume()     # SIGSTOP / SIGCONT: open sockets, no data

    Args:
        clip: H.264 (+AAC) MP4 file to serve.
        no_audio: Serve the video track only; required for a clip without audio.
        no_video: Serve the audio track only (an audio-only stream).
        path: Mount path of the stream.
        port: Port for the first start (0: any free port).
        ready_timeout: Seconds to wait for each start's READY line.
        bind_retry_s: How long a start keeps retrying when the port is still in use.
        user: Ask clients for this user name and ``password`` (basic authentication; the
            server gets the password in its environment, never on its command line); clients
            without them get ``401 Unauthorized``.  ``url`` holds no credentials either way.
        password: The password of ``user``; any characters.

    Raises:
        FileNotFoundError: If ``clip`` does not exist.
    """

    def __init__(
        self,
        clip: Path,
        *,
        no_audio: bool = False,
        no_video: bool = False,
        path: str = "/sample",
        port: int = 0,
        ready_timeout: float = 15.0,
        bind_retry_s: float = 5.0,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        self.user = user
        self.password = password
        self.clip = Path(clip).resolve()
        if not self.clip.is_file():
            raise FileNotFoundError(self.clip)
        self.no_audio = no_audio
        self.no_video = no_video
        self.path = path
        self.ready_timeout = ready_timeout
        self.bind_retry_s = bind_retry_s
        self._port = port
        self._url: str | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._pump: threading.Thread | None = None
        self._errlog: IO[str] | None = None
        #: Number of successful starts so far.
        self.starts = 0

    # ---- state
    @property
    def url(self) -> str:
        """``rtsp://127.0.0.1:PORT/PATH``, known once the server has started (the same after a restart)."""
        if self._url is None:
            raise RuntimeError("RtspServer has not been started")
        return self._url

    @property
    def port(self) -> int:
        """The port bound (0 before the first start when the OS is to pick it)."""
        return self._port

    @property
    def pid(self) -> int | None:
        """The running server process's pid, or None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether a server process is alive (a paused one included)."""
        return self._proc is not None and self._proc.poll() is None

    # ---- control
    def start(self) -> str:
        """Start the server (on the first start's port when restarting) and return its URL.

        Raises:
            RuntimeError: If it is already running, or exits or is not ready in time; the
                message includes what the server wrote to stderr.
        """
        if self.running:
            raise RuntimeError("RtspServer is already running")
        self._reap()
        deadline = time.monotonic() + self.bind_retry_s
        while True:
            try:
                url = self._start_once()
            except _BindError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
                continue
            break
        if self._port == 0:
            self._port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        self._url = url
        self.starts += 1
        return url

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM): it closes its clients' sessions first."""
        if self._proc is not None:
            _stop(self._proc)
        self._reap()

    def kill(self) -> None:
        """Kill the server (SIGKILL), as a crash or a power cut would: no goodbye to the
        clients, whose TCP connections are closed (or reset) by the kernel."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10.0)
        self._reap()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is sent or answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def restart(self, down_s: float = 0.0, *, kill: bool = True) -> str:
        """:meth:`kill` (or :meth:`stop`), wait ``down_s`` seconds, :meth:`start`; returns the URL."""
        if kill:
            self.kill()
        else:
            self.stop()
        if down_s > 0:
            time.sleep(down_s)
        return self.start()

    def stderr_text(self) -> str:
        """What the current (or last) server process wrote to stderr."""
        if self._errlog is None or self._errlog.closed:
            return ""
        self._errlog.flush()
        self._errlog.seek(0)
        return self._errlog.read()

    def __enter__(self) -> RtspServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- internals
    def _signal(self, signum: int) -> None:
        if not self.running or self._proc is None:
            raise RuntimeError("RtspServer is not running")
        os.kill(self._proc.pid, signum)

    def _command(self) -> list[str]:
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self._port), "--path", self.path]
        cmd += ["--file", str(self.clip)]
        if self.no_audio:
            cmd.append("--no-audio")
        if self.no_video:
            cmd.append("--no-video")
        if self.user is not None:
            cmd += ["--user", self.user]
        return cmd

    def _reap(self) -> None:
        """Forget a finished server process: join its stdout pump, close its pipe."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return
        if self._pump is not None:
            self._pump.join(timeout=5.0)  # the pipe reaches EOF once the server is gone
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc = None
        self._pump = None

    def _start_once(self) -> str:
        cmd = self._command()
        if self._errlog is not None:
            self._errlog.close()
        # stderr goes to a file, not a pipe, so a chatty server can never block on it.
        self._errlog = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        env = None if self.password is None else {**os.environ, "RTSP_SERVER_PASSWORD": self.password}
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._errlog,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        assert proc.stdout is not None
        self._proc = proc
        lines: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=_pump_lines, args=(proc.stdout, lines), daemon=True)
        self._pump.start()

        def fail(why: str) -> RuntimeError:
            """Stop the server and build an error carrying its stderr."""
            _stop(proc)
            self._reap()
            err = self.stderr_text().strip() or "(no stderr output)"
            kind = _BindError if _BIND_FAILED in err else RuntimeError
            return kind(f"RTSP server {why}: {' '.join(cmd)}\n--- server stderr ---\n{err}")

        deadline = time.monotonic() + self.ready_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise fail(f"not ready within {self.ready_timeout:g} s")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise fail(f"exited before READY (exit status {proc.wait()})")
            if line.startswith("READY "):
                return line.split(maxsplit=1)[1].strip()


class _BindError(RuntimeError):
    """The server could not bind its port (still in use)."""


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
    For a server a test stops and starts again, use :class:`RtspServer`.

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
    with RtspServer(clip, no_audio=no_audio, path=path, ready_timeout=timeout, bind_retry_s=0.0) as server:
        yield server.url
