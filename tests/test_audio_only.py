"""Sources without a picture: `--audio FILE`, a `--video` file with no video stream, an audio-only
RTSP stream; the audio and text modalities run, windows carry no frames, no frame records.

Real media only: espeak-ng speech encoded by PyAV into the containers users bring (wav, mp3,
flac, m4a), the committed sample's own sound, and a real RTSP server serving its audio track."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from audio_fixtures import RATE, espeak
from conftest import SAMPLE, cer_stream, records

from stream.runtime.records import load_schema

SENTENCE = "I am so happy to see you again. What a wonderful surprise this is."


def _write_wav(path: Path, pcm: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def _encode(pcm: np.ndarray, path: Path, codec: str) -> Path:
    """``pcm`` (16 kHz mono) in ``path``'s container with ``codec`` (PyAV's own encoders)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=RATE)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = RATE
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[Path, np.ndarray]:
    d = tmp_path_factory.mktemp("speech")
    pcm = espeak(SENTENCE, d / "raw.wav", lead_s=0.3, tail_s=0.8)
    return d, pcm


def _validator():
    return jsonschema.Draft202012Validator(load_schema())


def _check_audio_only(proc, *, min_windows: int = 1) -> list[dict]:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    recs = records(proc.stdout)
    v = _validator()
    for r in recs:
        v.validate(r)
    start = recs[0]
    assert start["type"] == "start" and start["video"] is False and start["fps"] is None
    notes = [r["message"] for r in recs if r["type"] == "warning" and "running audio only" in r["message"]]
    assert len(notes) == 1, [r for r in recs if r["type"] == "warning"]
    assert not [r for r in recs if r["type"] == "frames"]  # no picture: no frame records
    windows = [r for r in recs if r["type"] == "window"]
    assert len(windows) >= min_windows
    for w in windows:
        assert w["frames"] is None and w["analysed_frames"] == 0
        assert w["audio"]["coverage"] > 0.9
        assert w["modalities"]["face"]["present"] is False
    end = recs[-1]
    assert end["type"] == "end" and end["reason"] == "eof" and end["frames"] is None
    assert end["drops"]["audio_ring_s"] == 0
    return windows


@pytest.mark.parametrize(("suffix", "codec"), [(".wav", None), (".mp3", "mp3"), (".flac", "flac"), (".m4a", "aac")])
def test_audio_file_runs_audio_and_text(speech, suffix, codec):
    d, pcm = speech
    path = _write_wav(d / "clip.wav", pcm) if codec is None else _encode(pcm, d / f"clip{suffix}", codec)
    proc = cer_stream("--audio", str(path), "--json")
    windows = _check_audio_only(proc)
    text = windows[0]["modalities"]["text"]
    assert text["present"] is True, text
    assert "happy" in text["transcript"].lower()
    assert windows[0]["basic_label"] is not None  # the audio modalities alone decide the window


def test_video_flag_on_a_sound_file_runs_audio_only(speech):
    d, pcm = speech
    path = _write_wav(d / "as-video.wav", pcm)
    _check_audio_only(cer_stream("--video", str(path), "--json", "--no-text"))


def test_audio_flag_reads_only_the_sound_of_a_video():
    proc = cer_stream("--audio", str(SAMPLE), "--json", "--no-text")
    windows = _check_audio_only(proc, min_windows=4)
    assert [w["index"] for w in windows] == [0, 1, 2, 3]  # 10 s: the same windows as with the picture


def test_two_second_clip_gives_one_window(speech):
    d, pcm = speech
    path = _write_wav(d / "short.wav", pcm[: 2 * RATE])
    windows = _check_audio_only(cer_stream("--audio", str(path), "--json", "--no-text"))
    assert len(windows) == 1 and windows[0]["start"] == 0.0 and windows[0]["end"] == pytest.approx(2.0, abs=0.05)


def test_long_sound_file_loses_no_audio(tmp_path, speech):
    """160 s read as fast as possible: more than the 60 s audio ring, so the ring must wait for the
    analyzer (a sound file has no frame ring to pace its reader) instead of dropping audio."""
    _, pcm = speech
    one = np.concatenate([pcm, np.zeros(int(RATE * (8.0 - pcm.shape[0] / RATE)), np.float32)])
    path = _write_wav(tmp_path / "long.wav", np.tile(one, 20))
    windows = _check_audio_only(cer_stream("--audio", str(path), "--json", "--no-text"))
    assert [w["index"] for w in windows] == list(range(79))


def test_rtsp_stream_with_audio_only():
    from rtsp_util import RtspServer, rtsp_available

    ok, why = rtsp_available()
    if not ok:
        pytest.skip(why)
    with RtspServer(SAMPLE, no_video=True) as server:
        proc = cer_stream("--rtsp", server.url, "--json", "--no-text", "--reconnect", "off", timeout=120)
    windows = _check_audio_only(proc, min_windows=3)
    assert all(w["audio"]["rms_dbfs"] > -60 for w in windows[:3])  # the sample's speech came through


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "an input is required"),
        (("--audio", "{wav}", "--no-audio"), "--no-audio leaves --audio nothing"),
        (("--audio", "{wav}", "--mic"), "--mic cannot be used with --audio"),
        (("--mic", "--no-audio"), "--no-audio leaves a microphone alone nothing"),
        (("--audio", "{missing}"), "no such file"),
        (("--audio", "{wav}", "--video", "{wav}"), "not allowed with argument"),
    ],
)
def test_bad_audio_only_use_is_one_line(tmp_path, args, needle):
    wav = _write_wav(tmp_path / "a.wav", np.zeros(RATE, np.float32))
    argv = [a.format(wav=wav, missing=tmp_path / "missing.wav") for a in args]
    proc = cer_stream(*argv)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("cer-stream: error:") and needle in lines[0], proc.stderr


def test_a_file_without_video_or_audio_is_one_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not media\n")
    proc = cer_stream("--audio", str(path))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, proc.stderr


def test_mic_alone_is_an_audio_only_source():
    from stream.cli.main import _source, run_parser
    from stream.io.sources import MicSource
    from stream.runtime.lifecycle import capture_configs
    from stream.runtime.options import RuntimeOptions

    source = _source(run_parser().parse_args(["--mic"]))
    assert isinstance(source, MicSource) and source.kind == "mic" and not source.video
    cfgs = capture_configs(source, RuntimeOptions(), frames_endpoint="ipc:///tmp/f", audio_endpoint="ipc:///tmp/a")
    # one capture process, the microphone, on both sockets: its control items are the main source's
    assert [(c.source, c.frames_endpoint, c.audio_endpoint) for c in cfgs] == [("mic", "ipc:///tmp/f", "ipc:///tmp/a")]


def test_batch_finds_sound_files(tmp_path, speech):
    _, pcm = speech
    src = tmp_path / "in"
    src.mkdir()
    _write_wav(src / "a.wav", pcm[: 3 * RATE])
    _encode(pcm[: 3 * RATE], src / "b.flac", "flac")
    (src / "notes.txt").write_text("skip me\n")
    out = tmp_path / "out"
    proc = cer_stream("batch", str(src), "--out", str(out), "--workers", "1", "--no-text", timeout=300)
    assert proc.returncode == 0, proc.stderr
    for stem in ("a", "b"):
        recs = [json.loads(ln) for ln in (out / f"{stem}.jsonl").read_text().splitlines()]
        assert recs[0]["type"] == "start" and recs[0]["video"] is False
        assert [r["type"] for r in recs].count("window") == 1 and recs[-1]["type"] == "end"
