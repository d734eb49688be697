"""Shared fixtures: real media made by the tests (or the committed sample)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.core.datadir import DATA_ENV, find_data_dir, missing_message

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "astronaut.mp4"
sys.path.insert(0, str(ROOT / "samples"))

#: The data folder of the tests that read real data (``$CER_STREAM_DATA``, which ``make test
#: DATA_DIR=...`` sets; :mod:`stream.core.datadir`), or ``None``: those tests then skip.
DATA = find_data_dir()


def data_missing(dataset: str, *parts: str) -> str | None:
    """Why a test cannot read ``dataset/parts...`` of :data:`DATA`: its one-line skip reason, or
    ``None`` when the file is there."""
    if DATA is None:
        return missing_message((dataset,), flag=None)
    path = DATA.joinpath(dataset, *parts)
    return None if path.exists() else f"{path} not found (the data folder, ${DATA_ENV}, lacks it)"


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (an exited child its parent has not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # the name in (...) may hold spaces
    except FileNotFoundError:
        return False


def cer_stream(*args: str, timeout: float = 180, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run the real command line (``python -m stream.cli.main``) in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=kw.pop("cwd", ROOT),
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"cer-stream {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


class CollectSink:
    """A sink that keeps every record (for analyzers run in-process)."""

    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(record)

    def close(self):
        pass


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_rest(proc: subprocess.Popen, *, timeout: float) -> tuple:
    """The rest of ``proc``'s stdout and its stderr (None when not a pipe), read to the end,
    after some stdout was read with ``readline()``.

    Never ``communicate()`` after a ``readline()``: it reads the pipe's file descriptor
    directly and so skips whatever the file object had already buffered -- the records right
    after the line readline() returned, or the head of the next one, so that the rest begins
    mid-line (tests/test_pipeline.py and tests/test_annotate.py each once saw that, with the
    program's output intact).  ``proc`` is killed after ``timeout`` seconds."""
    import threading

    err: list = []
    reader = None
    if proc.stderr is not None:
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        reader.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        rest = proc.stdout.read()
        proc.wait()
    finally:
        timer.cancel()
    if reader is None:
        return rest, None
    reader.join(5)
    return rest, err[0] if err else rest[:0]


def free_port() -> int:
    """A loopback port that is free now, for a server another process binds a moment later.

    Picked below the kernel's ephemeral range: a port from ``bind(port 0)`` that is closed again
    can be handed straight back to the next ``bind`` to port 0 (this process's, a proxy's, a
    browser driver's), while a port outside the range goes only to whoever asks for it by number.
    """
    import random
    import socket

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    pick = random.SystemRandom()
    for _ in range(200):
        port = pick.randrange(10000, max(low, 10001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in 10000-{low}")


@pytest.fixture
def refused_port():
    """A loopback port that refuses connections for the whole test: bound, never listening.

    Not a port bound and closed again: the next bind to port 0 (a proxy's, a gateway's, a
    server's in the same test) can get exactly that port back, and then forwards to itself."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture(scope="session")
def sample() -> Path:
    assert SAMPLE.exists(), "samples/astronaut.mp4 is committed with the project"
    return SAMPLE


def _espeak() -> bool:
    from shutil import which

    return which("espeak-ng") is not None


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def video_only(media_dir) -> Path:
    """The astronaut clip without an audio track (6 s)."""
    from make_sample import make_sample

    return make_sample(media_dir / "silent.mp4", seconds=6.0, audio=False)


@pytest.fixture(scope="session")
def faceless(media_dir) -> Path:
    """A real photograph with no face in it, moving, 5 s, no audio."""
    from make_sample import make_sample

    return make_sample(media_dir / "faceless.mp4", seconds=5.0, audio=False, image="brick")


@pytest.fixture(scope="session")
def audio_only(media_dir) -> Path:
    """A real speech recording (espeak-ng) in a file with no video stream."""
    if not _espeak():
        pytest.skip("espeak-ng (Debian) is not installed")
    import av
    import numpy as np

    wav = media_dir / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Hello there, this file has no pictures."], check=True)
    out = media_dir / "speech.m4a"
    with av.open(str(wav)) as src, av.open(str(out), "w") as dst:
        ost = dst.add_stream("aac", rate=22050)
        ost.layout = "mono"
        for frame in src.decode(audio=0):
            frame.pts = None
            for pkt in ost.encode(frame):
                dst.mux(pkt)
        for pkt in ost.encode(None):
            dst.mux(pkt)
    assert np.isfinite(out.stat().st_size)
    return out
