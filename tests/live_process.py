"""A `cer-stream` process as a user runs it, its JSON lines read as they come (live tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from conftest import ROOT


class LiveProcess:
    """Starts ``cmd``; a thread collects its stdout records (non-JSON lines go to ``junk``)."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.records: list[dict] = []
        self.junk: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.stderr = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    self.junk.append(line)  # stdout must hold records only
                self.cond.notify_all()

    def wait_at(self, pred: Callable[[dict], bool], timeout: float, what: str, *, after: int = 0) -> tuple[int, dict]:
        """The first record from position ``after`` on that ``pred`` accepts, and its position."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hit = next(((i, r) for i, r in enumerate(self.records) if i >= after and pred(r)), None)
                if hit is not None:
                    return hit
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no {what} within {timeout:g} s; last records: {self.records[-6:]}")
                self.cond.wait(min(left, 0.5))

    def wait_for(self, pred: Callable[[dict], bool], timeout: float, what: str) -> dict:
        return self.wait_at(pred, timeout, what)[1]

    def finish(self, timeout: float = 60, *, interrupt: bool = True) -> int:
        """SIGINT (unless ``interrupt=False``), wait, collect stderr; the exit status."""
        if interrupt and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self.reader.join(10)
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()
        return self.proc.returncode
