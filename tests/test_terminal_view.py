"""The human view: on a terminal (a real pseudo-terminal here) `cer-stream` prints one readable
line per window and a closing summary; `--json`, a pipe or a file get JSON lines as before."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

from conftest import ROOT

LIGHT = ["--no-asr", "--no-clip", "--no-frames"]
WINDOW_LINE = re.compile(r"^\s*(\d+\.\d)-\s*(\d+\.\d) s  (.{20}) (\d\.\d\d)  (\S+)\s+(.*?)\s+(\d+) ms$")


def _on_a_terminal(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run cer-stream with its stdout on a pseudo-terminal; (exit status, what the terminal
    showed, stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", *args],
        stdout=slave,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = proc.wait(timeout=120)
    return code, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n"), err


def test_a_terminal_gets_readable_lines_and_a_summary(sample):
    code, shown, err = _on_a_terminal("--video", str(sample), *LIGHT, env={"NO_COLOR": "1"})
    assert code == 0, err
    lines = [ln for ln in shown.splitlines() if ln.strip()]
    assert not any(ln.lstrip().startswith("{") for ln in lines), shown  # no JSON for a person
    windows = [WINDOW_LINE.match(ln) for ln in lines]
    spans = [(float(m[1]), float(m[2])) for m in windows if m]
    assert spans == [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 10.0)], shown
    first = next(m for m in windows if m)
    assert first[3].strip() == "Happily Surprised" and 0 < float(first[4]) <= 1 and first[5] == "Happiness"
    assert "face" in first[6].split()  # the modalities of the window
    assert lines[-1].startswith("= 4 windows, ") and "RTF" in lines[-1] and lines[-1].endswith("; eof")
    assert "\033[" not in shown  # NO_COLOR
    assert "%|" not in err  # no progress bar fighting the lines on the same terminal


def test_json_on_a_terminal_when_asked_and_colour_otherwise(sample):
    code, shown, err = _on_a_terminal("--video", str(sample), *LIGHT, "--json")
    assert code == 0, err
    recs = [json.loads(ln) for ln in shown.splitlines() if ln.strip()]
    assert [r["type"] for r in recs][0] == "start" and recs[-1]["type"] == "end"
    code, shown, err = _on_a_terminal("--video", str(sample), *LIGHT, env={"TERM": "xterm", "NO_COLOR": ""})
    assert code == 0, err
    assert "\033[1mHappily Surprised" in shown
