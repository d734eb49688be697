"""Where a stream ends: short clips (under one hop), a file cut short, and the 5 fps grid on
real decoded clips.  Real clips written with PyAV from a real photograph."""

import av
import numpy as np
import pytest
from conftest import cer_stream, records
from test_capture import _collect

from stream.core import messages as m
from stream.core.windows import plan_windows
from stream.io.capture import CaptureConfig, run_av_capture, truncation_note


def _write_clip(path, n_frames, *, fps=25, faststart=False, size=(320, 240)):
    """``n_frames`` of skimage's astronaut, panning, as H.264 (moov first with ``faststart``)."""
    import cv2
    from skimage import data

    img = cv2.resize(data.astronaut(), (size[0] + 40, size[1] + 40))
    opts = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.options = {"preset": "ultrafast", "g": str(fps)}
        for i in range(n_frames):
            x = i % 40
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[x : x + size[1], x : x + size[0]]), "rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _final_frames(recs):
    out = []
    for r in recs:
        if r["type"] == "frames" and r["final"]:
            out += r["frame_index"]
    return out


@pytest.mark.parametrize("n", [25, 38])
def test_short_clip_has_only_its_own_frames(tmp_path, n):
    clip = _write_clip(tmp_path / f"c{n}.mp4", n)
    csv = tmp_path / "out.csv"
    proc = cer_stream("--video", str(clip), "--csv", str(csv), timeout=180)
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert _final_frames(recs) == list(range(n))  # every frame final exactly once, none invented
    rows = csv.read_text().splitlines()
    assert len(rows) == n + 1  # header + one row per frame
    end = recs[-1]
    assert end["type"] == "end" and end["reason"] == "eof" and end["frames"] == n
    (win,) = [r for r in recs if r["type"] == "window"]
    assert win["frames"] == [0, n]


def test_grid_on_a_real_clip_29_97(tmp_path):
    """A 29.97 fps clip (frame times never on the 0.2 s grid): one frame per grid point."""
    from fractions import Fraction

    clip = _write_clip(tmp_path / "ntsc.mp4", 360, fps=Fraction(30000, 1001))
    cfg = CaptureConfig("video", str(clip), f"ipc://{tmp_path}/f", None, want_audio=False)
    got = _collect({"f": cfg.frames_endpoint}, lambda: run_av_capture(cfg))
    info, *frames, end = got["f"]
    assert isinstance(end, m.EndOfStream) and end.frames == 360
    pts = [f.pts for f in frames]
    assert pts == [pytest.approx(i / 5) for i in range(len(pts))] and len(pts) == 61  # 0 .. 12.0 < 12.012 s
    for f in frames:  # the nearest frame that exists to the grid point
        assert f.index == min(range(360), key=lambda i: abs(i * 1001 / 30000 - f.pts))
    for w in plan_windows(end.duration):
        assert sum(w.contains(p) for p in pts) == (20 if w.full else int(round(w.duration * 5)))


def test_truncation_note_threshold():
    cfg = CaptureConfig("video", "x.mp4", None, None)
    assert truncation_note(cfg, 10.0, 3.92) == "file ends at 3.9 s but declares 10.0 s: truncated?"
    assert truncation_note(cfg, 10.0, 9.2) is None  # within 1 s
    assert truncation_note(cfg, 60.0, 55.0) is None  # within 10 %
    assert truncation_note(cfg, 60.0, 50.0) is not None
    assert truncation_note(cfg, None, 3.0) is None
    assert truncation_note(CaptureConfig("rtsp", "rtsp://h/x", None, None), 10.0, 3.0) is None


def test_truncated_file_warns_and_ends_eof(tmp_path):
    clip = _write_clip(tmp_path / "full.mp4", 250, faststart=True)
    with av.open(str(clip)) as c:
        assert abs(c.duration / 1e6 - 10.0) < 0.1
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.4)])
    proc = cer_stream("--video", str(cut), timeout=180)
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    warns = [r["message"] for r in recs if r["type"] == "warning" and "truncated?" in r["message"]]
    assert len(warns) == 1 and "declares 10.0 s" in warns[0], warns
    end = recs[-1]
    assert end["type"] == "end" and end["reason"] == "eof"
    assert end["frames"] < 200
    assert _final_frames(recs) == list(range(end["frames"]))
