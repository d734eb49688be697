"""Outputs under stress, with real processes, pipes and sockets: a stdout that does not read, a
stdout reader that goes away, a full disk (/dev/full), unwritable paths, concurrent emitters,
CSV quoting.  Each sink has its own queue and writer thread (stream.sinks.outputs)."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest
import zmq
from conftest import ROOT, CollectSink, cer_stream, free_port, records

from stream.runtime.records import load_schema
from stream.sinks.outputs import JsonLinesSink, SinkSet


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def _validate(recs: list[dict]) -> None:
    v = jsonschema.Draft202012Validator(load_schema())
    for r in recs:
        errors = list(v.iter_errors(r))
        assert not errors, (r["type"], [e.message[:200] for e in errors[:3]])


def _small_pipe() -> tuple[int, int]:
    """A pipe whose kernel buffer holds one page: a reader that does not read blocks the writer
    after a record or two."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    return r, w


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


# --------------------------------------------------------------------------- live: drop, never stall
def test_zmq_keeps_receiving_while_stdout_does_not_read(sample):
    """A live run (--realtime) whose stdout reader reads nothing: the ZeroMQ subscriber still gets
    every window and the end record on time; stdout drops (counted, with a warning)."""
    port = free_port()
    r, w = _small_pipe()
    os.write(w, b"\n" * 4096)  # the pipe is full before the first record
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 500)
    sub.connect(f"tcp://127.0.0.1:{port}")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "--video",
            str(sample),
            "--realtime",
            "--publish",
            f"tcp://127.0.0.1:{port}",
        ],
        stdout=w,
        stderr=subprocess.PIPE,
        env=_env(CER_STREAM_SINK_QUEUE="6", CER_STREAM_SINK_CLOSE_TIMEOUT="1"),
        cwd=ROOT,
    )
    os.close(w)
    got: list[dict] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                _topic, body = sub.recv_multipart()
            except zmq.Again:
                assert proc.poll() is None or got, proc.stderr.read() if proc.stderr else ""
                continue
            got.append(json.loads(body))
            if got[-1]["type"] == "end":
                break
        t_end = time.monotonic()
        assert got and got[-1]["type"] == "end", [g["type"] for g in got]
        start = next(g for g in got if g["type"] == "start")
        assert start["live"] is True
        # the subscriber had it all while stdout's reader has not read one byte
        end = got[-1]
        wins = [g for g in got if g["type"] == "window"]
        assert len(wins) == end["windows"] >= 3
        assert end["windows"] + end["windows_skipped"] == 4
        assert end["sinks"]["stdout"]["dropped"] > 0
        assert end["sinks"]["publish"] == {"written": len(got) - 1, "dropped": 0, "error": None}
        warn = [g for g in got if g["type"] == "warning" and g.get("sink") == "stdout"]
        assert len(warn) == 1 and "not keeping up" in warn[0]["message"]
        _validate(got)
        # now read stdout: whole lines only, and the process ends promptly
        out = _read_all(r)
        r = -1
        rc = proc.wait(timeout=30)
        assert time.monotonic() - t_end < 30
        assert rc == 0, proc.stderr.read() if proc.stderr else ""
        lines = [ln for ln in out.decode().splitlines() if ln.strip()]
        assert all(json.loads(ln)["type"] for ln in lines)
        assert 0 < len(lines) <= len(got) - end["sinks"]["stdout"]["dropped"]
    finally:
        if r >= 0:
            os.close(r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        sub.close()


# --------------------------------------------------------------------------- file: lossless backpressure
def test_file_run_waits_for_a_slow_stdout_reader_and_loses_nothing(sample):
    r, w = _small_pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "--video", str(sample)],
        stdout=w,
        stderr=subprocess.PIPE,
        env=_env(CER_STREAM_SINK_QUEUE="2"),
        cwd=ROOT,
    )
    os.close(w)
    try:
        time.sleep(8)  # a reader that is late: the run waits for it (backpressure)
        assert proc.poll() is None
        recs = records(_read_all(r).decode())
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    end = recs[-1]
    assert end["type"] == "end" and end["reason"] == "eof" and end["windows"] == 4
    assert end["sinks"]["stdout"] == {"written": len(recs) - 1, "dropped": 0, "error": None}
    final = [i for x in recs if x["type"] == "frames" and x["final"] for i in x["frame_index"]]
    assert final == list(range(250))


# --------------------------------------------------------------------------- write errors
def test_nonblocking_pipe_past_descriptor_1023_waits_and_loses_nothing():
    # a pipe that pushes back makes the sink wait for it to drain (poll, not select: select()
    # refuses descriptor numbers past 1023, which an embedding process may well use)
    r, w = os.pipe()
    high = os.dup2(w, 1500)
    os.close(w)
    fcntl.fcntl(high, fcntl.F_SETFL, fcntl.fcntl(high, fcntl.F_GETFL) | os.O_NONBLOCK)
    got = bytearray()

    def drain():
        time.sleep(0.3)  # let the pipe fill first
        while chunk := os.read(r, 65536):
            got.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    with os.fdopen(high, "w") as out:
        sink = JsonLinesSink(stream=out)
        for i in range(2000):
            sink.write({"type": "window", "i": i, "pad": "p" * 100})
    reader.join(10)
    os.close(r)
    lines = got.decode().splitlines()
    assert [json.loads(x)["i"] for x in lines] == list(range(2000))


def test_full_disk_loses_that_output_only(sample, tmp_path):
    """/dev/full: every write fails with ENOSPC, as on a full disk."""
    if not Path("/dev/full").is_char_device():
        pytest.skip("no /dev/full")
    proc = cer_stream("--video", str(sample), "--out", "/dev/full", "--csv", str(tmp_path / "p.csv"))
    assert proc.returncode == 1  # an asked-for output was lost
    assert "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("cer-stream: error: output out failed")
    assert "No space left on device" in err[0]
    recs = records(proc.stdout)
    _validate(recs)
    end = recs[-1]
    assert end["type"] == "end" and end["reason"] == "eof" and end["windows"] == 4
    warn = [x for x in recs if x["type"] == "warning" and x.get("sink") == "out"]
    assert len(warn) == 1 and "No space left on device" in warn[0]["message"]
    out = end["sinks"]["out"]
    assert out["written"] == 0 and "Errno 28" in out["error"]
    # every record before the end, but the warning about it (sent to the others only)
    assert out["dropped"] == end["sinks"]["stdout"]["written"] - 1
    assert end["sinks"]["stdout"]["error"] is None
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert len(rows) == 251  # the other outputs went on


def test_fifo_whose_reader_closes_is_a_failed_output(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    sink = JsonLinesSink(path=fifo, option="--out")
    os.close(fd)  # the reader goes away
    collect = CollectSink()
    ss = SinkSet([sink, collect], block=True)
    for i in range(5):
        ss.put({"type": "warning", "message": f"m{i}"})
    ss.finish(5)
    sink.close()
    summary = ss.summary()
    assert summary["out"]["written"] == 0 and summary["out"]["dropped"] == 5
    assert "Broken pipe" in summary["out"]["error"] and ss.failed == ["out"]  # not stdout: a lost output
    assert summary["CollectSink"] == {"written": 5, "dropped": 0, "error": None}
    assert [e.kind for e in ss.events()] == ["failed"]


@pytest.mark.parametrize("option", ["--out", "--csv", "--dump-features"])
@pytest.mark.parametrize("where", ["/proc/version", "dir", "missing/x.out"])
def test_unwritable_output_at_start_is_one_line(sample, tmp_path, option, where):
    path = where if where.startswith("/") else str(tmp_path / where)
    if where == "dir":
        path = str(tmp_path)
    proc = cer_stream("--video", str(sample), option, path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"cer-stream: error: cannot write {option} "), proc.stderr
    assert proc.stdout == ""


# --------------------------------------------------------------------------- stdout reader goes away
def test_head_one_stops_the_run(sample, tmp_path):
    """`cer-stream --video clip | head -1`: the run ends at the next write, not after the file.

    The reader must be able to go away before the file is done: with a 64 KB pipe and a
    256-record queue the whole 10 s file fits in what the analyzer may write ahead, so a reader
    that is slow to close (a loaded machine) once saw `eof`.  A one-page pipe and a two-record
    queue hold the lossless file run back until the reader has closed, as a slow `head` would."""
    import fcntl

    out = tmp_path / "all.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "--video", str(sample), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**_env(), "CER_STREAM_SINK_QUEUE": "2"},
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    fcntl.fcntl(proc.stdout.fileno(), 1031, 4096)  # F_SETPIPE_SZ: one page
    first = json.loads(proc.stdout.readline())
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    proc.stderr.close()
    assert first["type"] == "start"
    assert err == "", err  # no traceback, no BrokenPipeError at exit
    recs = records(out.read_text())
    _validate(recs)
    end = recs[-1]
    assert end["type"] == "end" and end["reason"] == "interrupted"
    assert end["windows"] < 4  # the rest of the file was not analysed
    assert "went away" in end["sinks"]["stdout"]["error"]
    assert any(x.get("sink") == "stdout" for x in recs if x["type"] == "warning")


# --------------------------------------------------------------------------- whole records
def test_concurrent_warnings_are_whole_lines(sample, tmp_path):
    """Threads emitting big warnings during a run: every line of the output is one whole record."""
    from stream.modalities.base import FaceModality
    from stream.runtime.analyzer import Analyzer, Source

    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink(path=path, option="--out")
    threads: list[threading.Thread] = []
    n_threads, n_each = 4, 40

    def chatter(k: int) -> None:
        for i in range(n_each):
            an.warn(f"thread {k} warning {i} " + "x" * 20000)

    def on_record(rec) -> None:
        if rec.type == "start" and not threads:
            threads.extend(threading.Thread(target=chatter, args=(k,)) for k in range(n_threads))
            for t in threads:
                t.start()

    an = Analyzer(Source("video", str(sample)), [sink], modalities=[FaceModality()], on_record=on_record)
    end = an.run()
    for t in threads:
        t.join()
    sink.close()
    lines = path.read_text().splitlines()
    recs = [json.loads(ln) for ln in lines]  # raises on a torn line
    chat = [x for x in recs if x["type"] == "warning" and x["message"].startswith("thread ")]
    emitted_after_end = n_threads * n_each - len(chat)
    assert emitted_after_end >= 0 and len(chat) > 0
    assert recs[0]["type"] == "start" and end["sinks"]["out"]["dropped"] == 0


# --------------------------------------------------------------------------- CSV quoting
def test_csv_quotes_a_video_name_with_a_comma(sample, tmp_path):
    video = tmp_path / "my,clip 1.mp4"
    shutil.copy(sample, video)
    proc = cer_stream("--video", str(video), "--quiet", "--csv", str(tmp_path / "p.csv"), check=True)
    assert proc.stdout == ""
    text = (tmp_path / "p.csv").read_text()
    rows = list(csv.reader(text.splitlines()))
    assert all(len(r) == 2 for r in rows[1:]) and len(rows) == 251
    assert [r[0] for r in rows[1:3]] == ["my,clip 1/00001.jpg", "my,clip 1/00002.jpg"]
    assert text.splitlines()[1].startswith('"my,clip 1/00001.jpg",')
