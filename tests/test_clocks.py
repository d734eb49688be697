"""Clocks you can trust, on real files with awkward timestamps: variable frame rate, timestamps
that jump forward and backward, an audio track with a hole in it."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import cer_stream, records
from faults import make_pts_jump_clip, make_vfr_clip, render_frame
from test_capture import _collect

from stream.core import messages as m
from stream.io.capture import CaptureConfig, run_av_capture

LIGHT = ["--no-asr", "--no-clip", "--max-side", "320"]


def _capture(path: Path, tmp_path: Path, audio: bool = False) -> dict:
    cfg = CaptureConfig(
        source="video",
        target=str(path),
        frames_endpoint=f"ipc://{tmp_path}/f",
        audio_endpoint=f"ipc://{tmp_path}/a" if audio else None,
        want_audio=audio,
        max_side=160,
    )
    eps = {"f": cfg.frames_endpoint} | ({"a": cfg.audio_endpoint} if audio else {})
    return _collect(eps, lambda: run_av_capture(cfg))


def test_variable_frame_rate_frame_numbers_follow_timestamps(tmp_path):
    # 1.5 s at 50 fps, then 1.5 s at 10 fps, twice: 30 fps on average (what the file declares)
    steps = [Fraction(1, 50)] * 75 + [Fraction(1, 10)] * 15
    clip = make_vfr_clip(tmp_path / "vfr.mp4", seconds=6.0, steps=steps)
    got = _capture(clip.path, tmp_path)
    info, *frames, end = got["f"]
    assert isinstance(info, m.StreamInfo) and isinstance(end, m.EndOfStream)
    fps = info.fps
    assert 29 < fps < 31
    assert [f.pts for f in frames] == pytest.approx([k / 5 for k in range(30)])  # the grid, all of it
    for f in frames:  # a frame's number is its time slot, not how many frames came before it
        assert abs(f.index - f.pts * fps) <= 1.01, (f.index, f.pts)
    assert end.frames == round(clip.times[-1] * fps) + 1


def test_timestamps_that_jump_forward_and_back(tmp_path):
    clip = make_pts_jump_clip(tmp_path / "jumps.ts")  # 0-4 s, then 10-14 s, then 7-11 s: 12 s of pictures
    out_csv = tmp_path / "jumps.csv"
    proc = cer_stream("--video", str(clip.path), "--csv", str(out_csv), *LIGHT, timeout=240)
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    wins = [r for r in recs if r["type"] == "window"]
    end = recs[-1]
    # media time is continuous: 12 s, windows 0..4, each once, no stall, no double window
    assert [w["index"] for w in wins] == [0, 1, 2, 3, 4]
    assert [w["start"] for w in wins] == [0, 2, 4, 6, 8]
    assert all(w["analysed_frames"] == 20 for w in wins)
    assert end["reason"] == "eof" and end["frames"] == 300 and abs(end["media_s"] - 12.0) < 0.05
    jumps = [r["message"] for r in recs if r["type"] == "warning" and "frame times jump" in r["message"]]
    assert len(jumps) == 2 and "forward by 6.00 s at 3.96 s" in jumps[0] and "backward by 7.00 s" in jumps[1]
    final = [i for r in recs if r["type"] == "frames" and r["final"] for i in r["frame_index"]]
    assert final == list(range(300))
    with open(out_csv, newline="") as f:
        assert len(list(csv.reader(f))) == 1 + 300


def make_audio_hole_clip(path: Path, *, seconds: float = 10.0, hole: tuple[float, float] = (4.0, 6.0)) -> Path:
    """A 25 fps clip with a 440 Hz tone that stops for ``hole`` (no audio packets at all there),
    video and audio interleaved in time order as a camera's muxer writes them."""
    import av

    fps, rate, n = 25, 48000, 1024
    with av.open(str(path), "w", format="matroska") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 320, 240, "yuv420p"
        a = c.add_stream("aac", rate=rate)
        a.layout = "mono"
        k = 0
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(render_frame(i / fps, (320, 240)), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in v.encode(frame):
                c.mux(p)
            while k * n / rate < (i + 1) / fps:
                if not hole[0] <= k * n / rate < hole[1]:
                    x = 0.3 * np.sin(2 * np.pi * 440 * (np.arange(n) + k * n) / rate)
                    af = av.AudioFrame.from_ndarray(x.astype(np.float32)[None], format="fltp", layout="mono")
                    af.sample_rate, af.pts, af.time_base = rate, k * n, Fraction(1, rate)
                    for p in a.encode(af):
                        c.mux(p)
                k += 1
        for stream in (v, a):
            for p in stream.encode(None):
                c.mux(p)
    return path


def test_audio_is_placed_by_its_timestamps_not_counted_from_the_first(tmp_path):
    clip = make_audio_hole_clip(tmp_path / "hole.mkv")
    got = _capture(clip, tmp_path, audio=True)
    chunks = [c for c in got["a"] if isinstance(c, m.AudioChunk)]
    spans = [(c.pts, c.pts + c.samples.size / m.AUDIO_RATE) for c in chunks]
    before = [s for s in spans if s[0] < 4.0]
    after = [s for s in spans if s[0] >= 4.0]
    assert max(e for _, e in before) == pytest.approx(4.0, abs=0.05)
    assert min(s for s, _ in after) == pytest.approx(6.0, abs=0.05)  # counting would have said 4.0
    assert max(e for _, e in after) == pytest.approx(10.0, abs=0.05)
    proc = cer_stream("--video", str(clip), *LIGHT, timeout=240)
    assert proc.returncode == 0, proc.stderr
    cover = {w["start"]: w["audio"]["coverage"] for w in records(proc.stdout) if w["type"] == "window"}
    assert cover[0.0] > 0.97 and cover[4.0] == pytest.approx(0.5, abs=0.03) and cover[6.0] > 0.97
