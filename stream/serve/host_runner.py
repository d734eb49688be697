"""The model host under ``cer-stream serve`` (``--isolation host``): started before the streams,
restarted when it exits, stopped after them.

The host (``python -m stream.cli.host``, :mod:`stream.serve.model_host`) listens on an ``ipc://`` path in a
private directory (0700) and gets the analyzer flags every stream shares on stdin, so it loads
their models before the first stream starts.  Its ``host`` records go to every shared output
(``ready``, ``stats``, ``stopped``); the supervisor adds ``exited`` and ``restarted`` (with the
exit code, the signal and the backoff delay) and, when it cannot be started at all, ``gave_up``.
While it is gone the streams go on: their windows are written with the host's models absent and
the reason, and a ``gap`` record (``cause: "models"``) when it is back.

The host removes its directory as it exits (``--own-endpoint-dir``: serve may be killed, and its
host then stops on its own at the end of its stdin), so a restart makes it again first, at the
path the streams were given.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

from stream.io.reconnect import ReconnectPolicy
from stream.serve.children import RESTART_BASE_DELAY_S, follow, signal_name

#: Lines of the libraries' own logs (MediaPipe's glog/absl info and warnings, TFLite's delegate
#: notice) that say nothing to a user: not passed on.
_NOISE = re.compile(r"^(?:[IW]\d{4} |INFO: |WARNING: All log messages before absl)")
#: Longest wait for the host's ``ready`` record at a start (s): it loads every model.
READY_TIMEOUT_S = 300.0
#: Seconds the host gets after SIGTERM before it is killed.
HOST_STOP_GRACE_S = 10.0


class HostRunner:
    """One model host process for the supervisor ``sup``, restarted with backoff when it exits."""

    def __init__(self, sup: Any, python: str, env: dict[str, str]) -> None:
        from stream.core.wire import private_endpoint

        self.sup = sup
        self.python = python
        self.env = env
        self.endpoint, self.folder = private_endpoint()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = threading.Event()
        self.gave_up = False
        self.restarts = 0
        self.last_error = ""
        self.thread = threading.Thread(target=self._run, name="cer-serve-host", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """Whether the host said ``ready`` within ``timeout`` (False also when it gave up)."""
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.gave_up or self.sup.stopping or time.monotonic() >= deadline:
                return False
        return True

    def _make_folder(self) -> None:
        """The endpoint's directory again (0700) if the last host removed it as it exited; one
        that is there now but is not this user's private one makes the host refuse to start."""
        try:
            os.mkdir(self.folder, 0o700)
        except FileExistsError:
            return
        os.chmod(self.folder, 0o700)  # whatever the umask

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._make_folder()
        proc = subprocess.Popen(
            [self.python, "-m", "stream.cli.host", "--endpoint", self.endpoint, "--own-endpoint-dir"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            start_new_session=True,  # a Ctrl-C reaches the supervisor only; it stops the host last
        )
        assert proc.stdin is not None
        try:
            proc.stdin.write((json.dumps({"argv": list(self.sup.config.args)}) + "\n").encode())
            proc.stdin.flush()  # stays open: its end tells the host the supervisor is gone
        except OSError:
            pass
        return proc

    def _read_stderr(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                if line and not _NOISE.match(line):
                    self.last_error = line[:300]
                    self.sup.write_stderr(f"cer-stream serve [host]: {line}")
        except (OSError, ValueError):
            pass

    def _read_stdout(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(record, dict):
                    continue
                if record.get("type") == "host" and record.get("event") == "ready":
                    self.ready.set()
                    record["restarts"] = self.restarts
                    record["endpoint"] = self.endpoint
                self.sup.emit_common(record)
        except (OSError, ValueError):
            pass

    def _record(self, event: str, **fields: Any) -> None:
        record: dict[str, Any] = {"type": "host", "event": event}
        record.update((k, v) for k, v in fields.items() if v is not None)
        record["wall_time"] = round(time.time(), 3)
        self.sup.emit_common(record)

    def _run(self) -> None:

        config = self.sup.config
        policy = ReconnectPolicy(
            attempts=config.max_restarts,
            max_delay_s=config.restart_max_delay_s,
            base_delay_s=min(RESTART_BASE_DELAY_S, config.restart_max_delay_s),
        )
        failures = 0
        while not self.sup.stopping:
            self.ready.clear()
            self.last_error = ""
            try:
                proc = self._spawn()
            except OSError as exc:
                self.last_error = f"cannot start the model host: {exc.strerror or exc}"
                proc = None
            with self.sup.lock:
                self.proc = proc
            code: int | None = None
            if proc is not None:
                if self.restarts:
                    self._record("restarted", pid=proc.pid, restarts=self.restarts)
                code = follow(proc, self._read_stdout, self._read_stderr)
            if self.sup.stopping:
                return
            failures = 1 if self.ready.is_set() else failures + 1
            self.ready.clear()
            if policy.gives_up(failures):
                self.gave_up = True
                self._record("gave_up", exit_code=code, signal=signal_name(code), message=self.last_error or None)
                self.sup.write_stderr(
                    f"cer-stream serve: the model host gave up after {failures} exit(s) in a row"
                    + (f": {self.last_error}" if self.last_error else "")
                )
                self.sup.wake()
                return
            delay = policy.delay(failures)
            self._record(
                "exited",
                exit_code=code,
                signal=signal_name(code),
                restarts=self.restarts,
                delay_s=round(delay, 3),
                message=self.last_error or None,
            )
            if self.sup.wait_stopping(delay):
                return
            self.restarts += 1

    def stop(self) -> None:
        """Stop the host (SIGTERM, then SIGKILL after the grace) and remove its directory."""
        with self.sup.lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(HOST_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        self.thread.join(10.0)
        shutil.rmtree(self.folder, ignore_errors=True)

    def kill(self) -> None:
        with self.sup.lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def path(self) -> Path:
        return self.folder


__all__ = ["HostRunner", "READY_TIMEOUT_S"]
