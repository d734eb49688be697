"""End to end on real media with the real models, through the real command line."""

import csv
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq
from conftest import ROOT, CollectSink, alive, cer_stream, free_port, read_rest, records

from stream.core.labels import BASIC, COMPOUND
from stream.modalities.base import Modality, ModalityOutput
from stream.sinks.outputs import CSV_HEADER


@pytest.fixture(scope="module")
def sample_run(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = cer_stream(
        "--video", str(sample), "--csv", str(out / "pred.csv"), "--out", str(out / "all.jsonl"), check=True
    )
    return proc, out


def test_sample_clip_windows_and_happiness(sample_run):
    proc, _ = sample_run
    recs = records(proc.stdout)
    assert recs[0]["type"] == "start" and recs[-1]["type"] == "end"
    assert recs[0]["basic_labels"] == list(BASIC) and recs[0]["compound_labels"] == list(COMPOUND)
    wins = [r for r in recs if r["type"] == "window"]
    assert [(w["start"], w["end"], w["frames"]) for w in wins] == [
        (0.0, 4.0, [0, 100]),
        (2.0, 6.0, [50, 150]),
        (4.0, 8.0, [100, 200]),
        (6.0, 10.0, [150, 250]),
    ]
    for w in wins:
        assert set(w["basic"]) == set(BASIC) and set(w["compound"]) == set(COMPOUND)
        assert abs(sum(w["compound"].values()) - 1) < 1e-3
        assert w["analysed_frames"] == 20
        assert w["present"] == ["face", "audio", "text"]  # the voice heard, the speech transcribed
        assert w["modalities"]["face"]["present"] and w["modalities"]["text"]["transcript"]
        assert set(w["modalities"]) == {"face", "clip", "temporal", "audio", "text", "scene"}
        assert w["modalities"]["audio"]["present"] is True  # the shipped voice head (stream/heads/voice.npz)
        assert abs(sum(m["weight"] for m in w["modalities"].values() if m["present"]) - 1) < 1e-3
        assert w["audio"]["coverage"] > 0.9  # the clip's speech track arrived with the window
        assert set(w["drops"]) >= {"video_ring", "video_sender", "audio_sender"}
    happy = [w for w in wins if w["basic_label"] == "Happiness"]
    assert len(happy) >= 0.75 * len(wins), [w["basic_label"] for w in wins]
    end = recs[-1]
    assert end["reason"] == "eof" and end["frames"] == 250 and end["windows"] == 4
    assert end["frames_analysed"] == 50  # 5 fps over 10 s: overlapping halves were not analysed twice
    assert end["drops"]["video_ring"] == 0  # a file is read losslessly


def test_frame_records_provisional_then_final(sample_run):
    proc, _ = sample_run
    frames = [r for r in records(proc.stdout) if r["type"] == "frames"]
    final = [i for r in frames if r["final"] for i in r["frame_index"]]
    assert final == list(range(250))  # each frame final exactly once, in order
    prov = [i for r in frames if not r["final"] for i in r["frame_index"]]
    assert prov and set(prov) <= set(final)
    # a frame is provisional before it is final
    first_final = {}
    for n, r in enumerate(frames):
        for i in r["frame_index"]:
            if r["final"]:
                first_final.setdefault(i, n)
    for n, r in enumerate(frames):
        if not r["final"]:
            assert all(first_final[i] > n for i in r["frame_index"])


def test_csv_is_frame_wise_abaw_layout(sample_run):
    _, out = sample_run
    rows = list(csv.reader(open(out / "pred.csv")))
    assert ",".join(rows[0]) == CSV_HEADER
    assert [r[0] for r in rows[1:]] == [f"astronaut/{i:05d}.jpg" for i in range(1, 251)]
    labels = [int(r[1]) for r in rows[1:]]
    assert all(0 <= x < 7 for x in labels)
    out_recs = records((out / "all.jsonl").read_text())
    by_frame = {
        i: lab
        for r in out_recs
        if r["type"] == "frames" and r["final"]
        for i, lab in zip(r["frame_index"], r["label_index"])
    }
    assert labels == [by_frame[i] for i in range(250)]


def test_video_without_audio_runs_video_only(video_only):
    proc = cer_stream("--video", str(video_only), check=True)
    recs = records(proc.stdout)
    warn = [r for r in recs if r["type"] == "warning"]
    assert any("no audio" in w["message"] for w in warn)
    assert recs[0]["audio"] is False
    wins = [r for r in recs if r["type"] == "window"]
    assert len(wins) == 2 and all(w["audio"] is None for w in wins)
    assert recs[-1]["frames"] == 150


def test_no_face_window_is_absent_and_stream_goes_on(faceless, tmp_path):
    proc = cer_stream("--video", str(faceless), "--csv", str(tmp_path / "p.csv"), check=True)
    recs = records(proc.stdout)
    wins = [r for r in recs if r["type"] == "window"]
    assert len(wins) == 2  # 5 s: [0,4) and the 3 s tail window [2,5)
    for w in wins:
        assert w["present"] == [] and w["modalities"]["face"]["present"] is False
        assert w["label"] is None and w["basic"] is None
    assert recs[-1]["reason"] == "eof"
    frames = [r for r in recs if r["type"] == "frames" and r["final"]]
    assert [i for r in frames for i in r["frame_index"]] == list(range(125))  # every frame, once
    assert all(lab is None for r in frames for lab in r["label"])  # nothing was ever predicted
    assert (tmp_path / "p.csv").read_text().splitlines()[1:] == []


def test_publish_over_zeromq(sample, tmp_path):
    port = free_port()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"window")
    sub.connect(f"tcp://127.0.0.1:{port}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "--video",
            str(sample),
            "--realtime",
            "--quiet",
            "--publish",
            f"tcp://127.0.0.1:{port}",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    got = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < 2 and time.monotonic() < deadline:
            if sub.poll(500):
                topic, body = sub.recv_multipart()
                got.append((topic, body))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        sub.close(linger=0)
    assert len(got) >= 2 and all(t == b"window" for t, _ in got)
    import json

    assert json.loads(got[0][1])["type"] == "window"


def _realtime_run(sample) -> subprocess.Popen:
    """`cer-stream --video SAMPLE --realtime` as a user starts it, its output in pipes."""
    return subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "--video", str(sample), "--realtime"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_flushes_and_leaves_no_child(sample, sig):
    proc = _realtime_run(sample)
    children: set[int] = set()
    lines = []
    try:
        # wait for the first window: capture is running then
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
            children |= _children(proc.pid)
            if '"type": "window"' in line:
                break
        children |= _children(proc.pid)
        proc.send_signal(sig)
        rest, err = read_rest(proc, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    recs = records("".join(lines) + rest)
    assert recs[-1]["type"] == "end" and recs[-1]["reason"] == "interrupted"
    final = [i for r in recs if r["type"] == "frames" and r["final"] for i in r["frame_index"]]
    first = next(r for r in recs if r["type"] == "window")
    assert final == list(range(len(final))) and len(final) >= 100, first  # flushed: every frame is final
    assert len(final) == recs[-1]["frames"]  # ... up to the last one received, none left provisional
    assert children, "the analyzer should have started capture processes"
    time.sleep(0.5)
    assert not [c for c in children if alive(c)], "a capture process outlived the analyzer"


def _children(pid: int) -> set[int]:
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        out = ""
    return {int(x) for x in out.split()}


def test_kill_of_analyzer_takes_capture_down(sample):
    """Even SIGKILL (no cleanup possible) leaves no capture process: they die with their parent."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "--video", str(sample), "--realtime", "--quiet"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    children: set[int] = set()
    deadline = time.monotonic() + 30
    while not children and time.monotonic() < deadline:
        time.sleep(0.2)
        children = _children(proc.pid)
    proc.kill()
    proc.wait(10)
    assert children
    deadline = time.monotonic() + 10
    while any(alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if alive(c)]


class _SlowModality(Modality):
    """A modality that takes longer than the hop, to make the analyzer fall behind."""

    name = "slow"

    def __init__(self, seconds):
        self.seconds = seconds

    def __call__(self, inp):
        time.sleep(self.seconds)
        return ModalityOutput.absent("test modality")


def test_live_source_never_waits_for_a_slow_analyzer(sample):
    """--realtime behaves as a live source: when analysis is slower than media time the analyzer
    skips to the newest complete window and says so; capture is never held up."""
    from stream.modalities.base import FaceModality
    from stream.runtime.analyzer import Analyzer, Source
    from stream.runtime.options import RuntimeOptions

    sink = CollectSink()
    an = Analyzer(
        Source("video", str(sample)),
        [sink],
        options=RuntimeOptions(realtime=True),
        modalities=[FaceModality(), _SlowModality(4.5)],
    )
    t0 = time.monotonic()
    end = an.run()
    elapsed = time.monotonic() - t0
    wins = [r for r in sink.records if r["type"] == "window"]
    assert end["windows_skipped"] >= 1
    assert any("fell behind" in r["message"] for r in sink.records if r["type"] == "warning")
    assert len(wins) < 4 and end["reason"] == "eof"
    assert all(w["modalities"]["slow"] == {"present": False, "reason": "test modality"} for w in wins)
    assert elapsed < 10.5 + 3 * 4.5  # never more than the tail windows behind the clip


@pytest.mark.parametrize("kind", [ImportError, RuntimeError, KeyboardInterrupt])
def test_an_interrupted_start_is_the_interrupt_whatever_it_turned_into(monkeypatch, capsys, kind):
    """Ctrl-C inside a native module's initialisation comes out as that module's ImportError
    ("numpy._core.multiarray failed to import"); once SIGINT was seen, the start-up's failure is
    the interrupt: one line, 130.  Without SIGINT the same error is not swallowed."""
    import stream.cli as cli
    import stream.cli.interrupt as cli_interrupt
    import stream.cli.main as cli_main

    def failing(argv):
        os.kill(os.getpid(), signal.SIGINT)  # handled by cli.main's handler: noted, then raised
        time.sleep(1.0)
        raise kind("numpy._core.multiarray failed to import")

    monkeypatch.setattr(cli_main, "main", failing)
    monkeypatch.setattr(cli_interrupt, "_interrupted", threading.Event())
    old = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh process has it
    try:
        assert cli.entry(["--video", "x.mp4"]) == 130
        assert capsys.readouterr().err == "cer-stream: interrupted\n"
        # no interrupt: the error is the error
        monkeypatch.setattr(cli_main, "main", lambda argv: (_ for _ in ()).throw(ImportError("broken")))
        monkeypatch.setattr(cli_interrupt, "_interrupted", threading.Event())
        with pytest.raises(ImportError):
            cli.entry(["--video", "x.mp4"])
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("delay", [0.2, 1.0, 2.5])
def test_ctrl_c_at_any_moment_is_one_line_at_most(sample, delay):
    """SIGINT while Python starts, while models load, or as the stream starts: never a
    traceback; one line on stderr at most, exit 130 before the run's handler is in place, 0
    after (the run then ends with its end record)."""
    proc = _realtime_run(sample)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 1, err
    if proc.returncode == 130:
        assert err.strip() in ("", "cer-stream: interrupted")
    else:
        assert proc.returncode == 0, err
        assert records(out)[-1]["type"] == "end"


def test_a_files_last_windows_wait_for_its_audio_to_end():
    """A file's video can end (its end message on the frames socket) before the last of its audio
    has come (on the audio socket): the last windows are still cut with all of it, so a run's
    records never depend on which message came first."""
    from stream import Pipeline, PipelineOptions, PushSource
    from stream.core import messages as m

    source = PushSource(fps=25.0, live=False)
    rate = 16000
    tone = (0.1 * np.sin(2 * np.pi * 220 * np.arange(10 * rate) / rate)).astype(np.float32)
    picture = np.full((240, 320, 3), 90, np.uint8)
    third = threading.Event()

    def capture():
        for i in range(250):  # 10 s of pictures, and the audio up to 9 s beside them
            source.push_frame(picture, i / 25)
            if i % 25 == 0 and i < 225:
                source.push_audio(tone[i * rate // 25 : (i + 25) * rate // 25], i / 25, rate)
        third.wait(120)  # the analyzer is at the last window, waiting for its audio
        with source.state.cond:  # the video's end, as the receiver takes it off the frames socket
            source.state.video_end = m.EndOfStream(streams=[m.VIDEO], reason="eof", frames=250, duration=10.0)
            source.state.cond.notify_all()
        time.sleep(0.6)  # the audio's last second is still on its way
        source.push_audio(tone[9 * rate :], 9.0, rate)
        with source.state.cond:
            source.state.av_audio_done = True
            source.state.cond.notify_all()

    t = threading.Thread(target=capture)
    t.start()
    recs = []
    with Pipeline(PipelineOptions(modalities=["face"])) as p:
        for r in p.run(source):
            recs.append(r.to_dict())
            if recs[-1]["type"] == "window" and recs[-1]["index"] == 2:
                third.set()
    t.join()
    wins = [r for r in recs if r["type"] == "window"]
    assert [(w["start"], w["end"]) for w in wins] == [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 10.0)]
    assert [w["audio"]["coverage"] for w in wins] == [1.0] * 4, [w["audio"] for w in wins]
    assert not [r for r in recs if r["type"] == "warning" and "did not end" in r.get("message", "")]
