"""The command line does no harm (issue 19): an output never destroys the input or another
output, a run that fails at start leaves existing files as they were, a closed stdout or stderr
does not break a run, every numeric flag is checked when parsed, and a second Ctrl-C says so.
Real processes (`python -m stream.cli`), real files, real signals."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, alive, cer_stream, records
from live_process import LiveProcess

from stream.sinks.outputs import CSV_HEADER

LIGHT = ("--no-asr", "--no-clip")
OLD = b"records of an earlier run\n"
#: A temporary output file's name (stream.sinks.outputs.temp_beside).
TEMP = re.compile(r"^\.(?P<name>.+)\.cer-stream-[0-9a-f]{8}\.tmp$")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cer-stream") and ": error: " in lines[0], lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if TEMP.match(p.name))


@pytest.fixture
def video(sample, tmp_path) -> Path:
    """A copy of the sample the test may (wrongly) write over."""
    v = tmp_path / "v.mp4"
    shutil.copy(sample, v)
    return v


# --------------------------------------------------------------------------- 1: outputs vs the input
@pytest.mark.parametrize("option", ["--out", "--csv", "--dump-features", "--annotate"])
@pytest.mark.parametrize("how", ["same name", "symlink", "hard link"])
def test_an_output_that_is_the_input_is_refused_and_the_input_untouched(video, sample, tmp_path, option, how):
    target = {"same name": video, "symlink": tmp_path / "link.mp4", "hard link": tmp_path / "hard.mp4"}[how]
    if how == "symlink":
        target.symlink_to(video)
    elif how == "hard link":
        os.link(video, target)
    proc = cer_stream("--video", str(video), *LIGHT, option, str(target), timeout=60)
    _one_line_error(proc, f"cannot write {option} {target}", "it is the input file")
    assert proc.stdout == ""
    assert video.read_bytes() == sample.read_bytes()
    assert not _temps(tmp_path)


@pytest.mark.parametrize("existing", [False, True])
def test_two_outputs_on_one_file_are_refused(video, tmp_path, existing):
    both = tmp_path / "both.out"
    if existing:
        both.write_bytes(OLD)
        (tmp_path / "alias.out").symlink_to(both)
    second = tmp_path / ("alias.out" if existing else "./both.out")
    proc = cer_stream("--video", str(video), *LIGHT, "--out", str(both), "--csv", str(second), timeout=60)
    _one_line_error(proc, "--out and --csv name the same file")
    assert both.read_bytes() == OLD if existing else not both.exists()


# --------------------------------------------------------------------------- 1: a failed start
@pytest.mark.parametrize("option", ["--out", "--csv", "--dump-features"])
@pytest.mark.parametrize(
    "why,args,message",
    [
        ("pfsa without calibration", ("--compound", "pfsa"), "pfsa"),
        ("missing input", ("--video", "nope.mp4"), "no such file"),
    ],
)
def test_a_run_that_fails_at_start_leaves_an_existing_output_as_it_was(video, tmp_path, option, why, args, message):
    out = tmp_path / "kept.txt"
    out.write_bytes(OLD)
    out.chmod(0o640)
    source = () if "--video" in args else ("--video", str(video))
    proc = cer_stream(*source, *args, *LIGHT, option, str(out), timeout=120, cwd=tmp_path)
    _one_line_error(proc, message)
    assert out.read_bytes() == OLD and (out.stat().st_mode & 0o777) == 0o640
    assert not _temps(tmp_path)


def test_a_run_that_fails_at_start_creates_no_output(tmp_path, video):
    proc = cer_stream("--video", str(video), "--compound", "pfsa", *LIGHT, "--out", str(tmp_path / "new.jsonl"))
    _one_line_error(proc, "pfsa")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_a_finished_run_replaces_an_existing_output_keeping_its_mode(video, tmp_path):
    out, csv_out = tmp_path / "r.jsonl", tmp_path / "r.csv"
    for f in (out, csv_out):
        f.write_bytes(OLD)
        f.chmod(0o640)
    proc = cer_stream("--video", str(video), *LIGHT, "--quiet", "--out", str(out), "--csv", str(csv_out))
    assert proc.returncode == 0, proc.stderr
    recs = records(out.read_text())
    assert recs[0]["type"] == "start" and recs[-1]["type"] == "end" and recs[-1]["reason"] == "eof"
    assert csv_out.read_text().splitlines()[0] == CSV_HEADER and len(csv_out.read_text().splitlines()) == 251
    assert all((f.stat().st_mode & 0o777) == 0o640 for f in (out, csv_out))
    assert not _temps(tmp_path)


def test_out_to_dev_stdout_writes_into_stdout_even_when_it_is_a_regular_file(video, tmp_path):
    """/dev/stdout names an open descriptor: written in place, never renamed over (here stdout
    is a regular file, which a rename would have replaced rather than written)."""
    log = tmp_path / "stdout.log"
    with open(log, "wb") as f:
        inode = os.fstat(f.fileno()).st_ino
        proc = subprocess.run(
            [sys.executable, "-m", "stream.cli", "--video", str(video), *LIGHT, "--quiet", "--out", "/dev/stdout"],
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            timeout=180,
            cwd=ROOT,
            env=_env(),
        )
    assert proc.returncode == 0, proc.stderr
    assert log.stat().st_ino == inode
    recs = records(log.read_text())
    assert recs[0]["type"] == "start" and recs[-1]["type"] == "end"
    assert not _temps(tmp_path)


def test_a_killed_run_leaves_the_existing_output_and_a_recognisable_temporary_file(video, tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_bytes(OLD)
    run = LiveProcess(
        [sys.executable, "-m", "stream.cli", "--video", str(video), "--realtime", *LIGHT, "--out", str(out)]
    )
    try:
        run.wait_for(lambda r: r["type"] == "start", 120, "start record")
        deadline = time.monotonic() + 30
        while not any(t.read_bytes() for t in _temps(tmp_path)):  # the out sink has its own thread
            assert time.monotonic() < deadline, "no record in the temporary file"
            time.sleep(0.05)
        run.proc.kill()
    finally:
        run.finish(30, interrupt=False)
    assert out.read_bytes() == OLD
    (temp,) = _temps(tmp_path)
    match = TEMP.match(temp.name)
    assert match is not None and match.group("name") == "r.jsonl"
    assert json.loads(temp.read_text().splitlines()[0])["type"] == "start"


# --------------------------------------------------------------------------- 4: closed stdout/stderr
@pytest.mark.parametrize("closed", [">&-", "2>&-", "<&- >&- 2>&-"])
def test_a_closed_stdout_or_stderr_does_not_break_the_run(video, tmp_path, closed):
    """As a service or cron job may start it: the descriptor is closed, not /dev/null (the
    spawned capture process inherits that too)."""
    out = tmp_path / "r.jsonl"
    script = f'exec "$0" -m stream.cli "$@" {closed}'
    proc = subprocess.run(
        ["sh", "-c", script, sys.executable, "--video", str(video), *LIGHT, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
    recs = records(out.read_text())
    end = recs[-1]
    assert recs[0]["type"] == "start" and end["type"] == "end" and end["reason"] == "eof"
    assert end["windows"] == 4 and all(s["error"] is None for s in end["sinks"].values()), end["sinks"]
    if "2>&-" not in closed:
        assert proc.stderr == ""
    if ">&-" not in closed.replace("2>&-", ""):
        assert records(proc.stdout) == recs


# --------------------------------------------------------------------------- 5: numeric flags
BAD_FLAGS = [
    # (subcommand and its required arguments, flag, bad value, the range the error states)
    ((), "--timeout", "-1", "> 0 and <= 86400"),
    ((), "--timeout", "nan", "> 0 and <= 86400"),
    ((), "--timeout", "0", "> 0 and <= 86400"),
    ((), "--timeout", "inf", "> 0 and <= 86400"),
    ((), "--max-side", "0", ">= 64"),
    ((), "--max-side", "-5", ">= 64"),
    ((), "--max-side", "1", ">= 64"),
    ((), "--max-side", "abc", ">= 64"),
    ((), "--reconnect-max-delay", "-1", "> 0"),
    ((), "--reconnect", "-2", "forever, off or a number of attempts >= 0"),
    ((), "--clip-frames", "-1", ">= 0"),
    ((), "--asr-beam-size", "0", ">= 1"),
    ((), "--asr-min-word-prob", "1.5", "0-1"),
    ((), "--vad-threshold", "nan", "0-1"),
    ((), "--min-speech-fraction", "-0.1", "0-1"),
    ((), "--vlm-every", "0", "> 0"),
    ((), "--vlm-timeout", "-3", "> 0"),
    ((), "--vlm-max-age", "inf", "> 0"),
    (("batch", "x.mp4", "--out", "o"), "--workers", "0", ">= 1"),
    (("batch", "x.mp4", "--out", "o"), "--retries", "-1", ">= 0"),
    (("batch", "x.mp4", "--out", "o"), "--worker-cpus", "-1", ">= 0"),
    (("batch", "x.mp4", "--out", "o"), "--max-side", "10", ">= 64"),
    (("serve", "--rtsp", "rtsp://cam/x"), "--restart-max-delay", "0", "> 0"),
    (("serve", "--rtsp", "rtsp://cam/x"), "--max-restarts", "-1", ">= 0 or forever"),
    (("serve", "--rtsp", "rtsp://cam/x"), "--vlm-concurrency", "0", ">= 1"),
    (("serve", "--rtsp", "rtsp://cam/x"), "--worker-gpus", "nan", ">= 0"),
    (("calibrate", "d.jsonl", "--labels", "l", "-o", "c.json"), "--lr", "nan", "> 0"),
    (("calibrate", "d.jsonl", "--labels", "l", "-o", "c.json"), "--val-fraction", "1", ">= 0 and < 1"),
    (("calibrate", "d.jsonl", "--labels", "l", "-o", "c.json"), "--epochs", "0", ">= 1"),
    (("calibrate", "d.jsonl", "--labels", "l", "-o", "c.json"), "--seed", "-1", "0-4294967295"),
    (("train-temporal", "--data", "d", "--out", "m.onnx"), "--dropout", "1", ">= 0 and < 1"),
    (("train-temporal", "--data", "d", "--out", "m.onnx"), "--batch-size", "0", ">= 1"),
    (("temporal-features", "v.mp4", "--labels", "l", "--out", "d.npz"), "--max-side", "32", ">= 64"),
    (("train-head", "--kind", "speech"), "--holdout", "1", "> 0 and < 1"),
    (("train-head", "--kind", "speech"), "--l2", "1,-1", ">= 0"),
    (("text",), "--batch", "0", ">= 1"),
    (("plot", "run.jsonl", "-o", "p.png"), "--dpi", "0", ">= 1"),
    (("plot", "run.jsonl", "-o", "p.png"), "--width", "-2", "> 0"),
    (("plot", "run.jsonl", "-o", "p.png"), "--from", "nan", ">= 0"),
    (("engines", "build"), "--batch", "4,2,1", "1 <= MIN <= OPT <= MAX"),
]


@pytest.mark.parametrize(
    "command,flag,value,span", BAD_FLAGS, ids=[f"{c[0] if c else 'run'} {f}={v}" for c, f, v, _ in BAD_FLAGS]
)
def test_a_bad_numeric_flag_is_one_line_naming_the_flag_and_its_range(sample, tmp_path, command, flag, value, span):
    args = [*command, flag, value] if command else ["--video", str(sample), flag, value]
    proc = cer_stream(*args, timeout=60, cwd=tmp_path)
    line = _one_line_error(proc, f"argument {flag}: ", span)
    assert proc.stdout == "" and value.split(",")[-1] in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was made


def test_help_states_the_ranges():
    out = cer_stream("-h", check=True).stdout
    flat = " ".join(out.split())
    assert "(> 0 and <= 86400; default 10)" in flat
    assert ">= 64: below 64 px even a face that fills the frame is too small" in flat
    assert "(0-1; default 0.5)" in flat  # --vad-threshold


def test_good_values_still_run(sample):
    proc = cer_stream(
        "--video", str(sample), *LIGHT, "--timeout", "0.5", "--max-side", "64", "--reconnect", "3", "--quiet"
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


# --------------------------------------------------------------------------- 7: a second Ctrl-C
def _small_full_pipe() -> tuple[int, int]:
    """A pipe whose one-page buffer is already full: a writer blocks at its first byte."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"\n" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    return r, w


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _wait_until(done, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.05)


def test_a_second_ctrl_c_says_interrupted_and_keeps_what_was_written(video, tmp_path):
    """The first Ctrl-C stops the run (its capture process ends), whose end then waits for a
    stdout nobody reads (up to the sinks' close timeout, an hour here); the second Ctrl-C stops
    that: `cer-stream: interrupted`, exit status 130, and the outputs keep what was written
    (an existing --csv file is replaced by this run's)."""
    out, csv_out = tmp_path / "r.jsonl", tmp_path / "p.csv"
    csv_out.write_bytes(OLD)
    r, w = _small_full_pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "--video", str(video), "--realtime", *LIGHT]
        + ["--out", str(out), "--csv", str(csv_out)],
        stdout=w,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(CER_STREAM_SINK_CLOSE_TIMEOUT="3600"),
    )
    os.close(w)
    reader = None
    try:
        _wait_until(lambda: out.exists() and '"start"' in out.read_text(), proc, "start record")
        capture = _children(proc.pid)
        assert capture, "no capture process"
        proc.send_signal(signal.SIGINT)
        _wait_until(lambda: not any(alive(c) for c in capture), proc, "end of the capture process")
        proc.send_signal(signal.SIGINT)
        reader = threading.Thread(target=_read_all, args=(r,), daemon=True)
        reader.start()  # stdout's writer may now finish what it holds
        assert proc.wait(timeout=60) == 130
        assert proc.stderr is not None
        assert proc.stderr.read() == "cer-stream: interrupted\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if reader is None:
            os.close(r)
        else:
            reader.join(10)
    recs = records(out.read_text())
    assert recs[0]["type"] == "start"
    assert csv_out.read_text().startswith(CSV_HEADER + "\n")
    assert not _temps(tmp_path)


def _read_all(fd: int) -> None:
    while os.read(fd, 65536):
        pass
    os.close(fd)


def test_a_sigterm_while_the_run_closes_its_outputs_still_leaves_them_whole(sample, tmp_path):
    # once the run had ended, its signal handlers were put back before the outputs were closed: a
    # SIGTERM in that stretch (a service manager stopping a run that was just finishing) killed the
    # process with the staged --out file still under its temporary name
    out = tmp_path / "r.jsonl"
    out.write_text("an older run\n")
    cmd = [sys.executable, "-m", "stream.cli", "--video", str(sample), "--no-asr", "--no-clip", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["type"] == "end":
            break
    while proc.poll() is None:  # SIGTERM every 20 ms until it exits: one lands while it closes
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.02)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    recs = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert recs[0]["type"] == "start" and recs[-1]["type"] == "end"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
