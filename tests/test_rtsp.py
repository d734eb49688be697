"""--rtsp against a real RTSP server on loopback (GStreamer, started by the test)."""

import pytest
from conftest import cer_stream, records
from rtsp_util import rtsp_available, serve_rtsp

ok, why = rtsp_available()
pytestmark = pytest.mark.skipif(not ok, reason=f"GStreamer RTSP server unavailable: {why}")


def test_rtsp_stream_end_to_end(sample):
    with serve_rtsp(sample) as url:
        proc = cer_stream("--rtsp", url, "--timeout", "10", "--reconnect", "off", timeout=120)
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    start, end = recs[0], recs[-1]
    assert start["source"] == "rtsp" and start["live"] is True and start["audio"] is True
    assert start["fps"] == 25.0 and (start["width"], start["height"]) == (640, 480)
    wins = [r for r in recs if r["type"] == "window"]
    assert len(wins) >= 3
    assert all(w["modalities"]["face"]["present"] for w in wins)
    assert sum(w["basic_label"] == "Happiness" for w in wins) >= 0.75 * len(wins)
    assert all(w["audio"]["coverage"] > 0.5 for w in wins[1:])  # the AAC track arrived over RTP
    assert end["type"] == "end" and end["reason"] == "eof"
    assert end["frames"] >= 240  # live RTP may lose a frame or two at the start


def test_rtsp_video_only_stream(video_only):
    with serve_rtsp(video_only, no_audio=True) as url:
        proc = cer_stream("--rtsp", url, "--reconnect", "off", timeout=90)
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert recs[0]["audio"] is False
    assert any(r["type"] == "warning" and "no audio" in r["message"] for r in recs)
    assert [r for r in recs if r["type"] == "window"]


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _is_analyzer_fork(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"\0-m\0stream.cli\0--rtsp\0" in f.read()
    except OSError:
        return False


def _descendants(root: int) -> set[int]:
    import glob

    kids = {root}
    for _ in range(4):
        for st in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(st, "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid in kids:
                kids.add(int(st.split("/")[2]))
    return kids


def _watch_for_secret(url: str, secret: str, env: dict | None = None):
    """Run `cer-stream --rtsp url` and read the cmdline, environ and comm of every process of the
    run while it goes. The analyzer's own command line is what the user typed: it holds the
    password from exec until cer-stream's first line of Python scrubs it, so it is looked at once
    the run has printed its first record; every child is looked at from the moment it exists."""
    import subprocess
    import sys
    import threading
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "--rtsp", url, "--timeout", "10", "--reconnect", "off"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    started = threading.Event()
    chunks: list[str] = []

    def read_stdout() -> None:
        for line in proc.stdout:
            chunks.append(line)
            started.set()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    seen, leaks = set(), []
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        for pid in _descendants(proc.pid):
            if pid == proc.pid and not started.is_set():
                continue
            seen.add(pid)
            for what in ("cmdline", "environ", "comm"):
                try:
                    with open(f"/proc/{pid}/{what}", "rb") as f:
                        if secret.encode() in f.read():
                            leaks.append((pid, what, open(f"/proc/{pid}/comm").read().strip(), _ppid(pid)))
                except OSError:
                    pass
        time.sleep(0.3)
    err = proc.stderr.read()
    proc.wait(timeout=60)
    reader.join(10)
    return proc.returncode, "".join(chunks), err, seen - {proc.pid}, leaks


def test_rtsp_password_never_in_any_process_cmdline_or_environ(sample):
    secret = "s3cr%40t%3Apw%2Fx"
    with serve_rtsp(sample) as url:
        code, out, err, children, leaks = _watch_for_secret(url.replace("rtsp://", f"rtsp://alice:{secret}@"), secret)
    assert code == 0, err
    assert children  # the capture process was looked at
    assert not leaks
    assert secret not in out and secret not in err


def test_rtsp_password_from_the_environment(sample):
    """rtsp://user@host/... with CER_STREAM_RTSP_PASSWORD: the password is used (the server
    accepts any credentials; the capture gets the URL with it) and appears in no process's
    command line at any time, the analyzer's included."""
    import os

    secret = "Env-Pa55-@:/"
    with serve_rtsp(sample) as url:
        env = {**os.environ, "CER_STREAM_RTSP_PASSWORD": secret}
        code, out, err, children, leaks = _watch_for_secret(url.replace("rtsp://", "rtsp://alice@"), secret, env)
    assert code == 0, err
    assert children and not [leak for leak in leaks if leak[1] != "environ"]  # only the env var holds it
    recs = records(out)
    assert "alice:***@" in recs[0]["input"] and secret not in out and secret not in err
    assert [r for r in recs if r["type"] == "window"]
