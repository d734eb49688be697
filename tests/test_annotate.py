"""`--annotate OUT.mp4`: the annotated copy of the input (stream.sinks.annotate), checked with
PyAV: a file's copy has every frame at the source's rate with its audio and the drawing on it; a
live run's copy holds the analysed frames and plays after Ctrl-C; bad paths are one-line errors;
the analysis thread never waits for the sink."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import ROOT, cer_stream, read_rest, records

from stream.core.labels import COMPOUND
from stream.core.messages import VideoFrame
from stream.io.sources import FileSource
from stream.modalities.face import FaceResult
from stream.sinks.annotate import AnnotateSink
from stream.sinks.draw import FINAL, PROVISIONAL, draw_overlay, panel_rect

LIGHT = ("--no-asr", "--no-clip")


def _decode(path: Path) -> tuple[list[av.VideoFrame], dict]:
    with av.open(str(path)) as c:
        info = {
            "streams": [s.type for s in c.streams],
            "duration": c.duration / 1e6 if c.duration else None,
            "rate": c.streams.video[0].average_rate,
            "audio": [
                (s.codec_context.name, float(s.duration * s.time_base) if s.duration else None) for s in c.streams.audio
            ],
        }
        frames = list(c.decode(video=0))
    return frames, info


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)


# --------------------------------------------------------------------------- files
def test_file_copy_has_every_frame_the_audio_and_the_records_count(sample, tmp_path):
    out = tmp_path / "out.mp4"
    proc = cer_stream("--video", str(sample), *LIGHT, "--annotate", str(out))
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    end = recs[-1]
    assert end["type"] == "end" and end["reason"] == "eof"
    assert end["sinks"]["annotate"] == {"written": end["sinks"]["stdout"]["written"], "dropped": 0, "error": None}
    final = [i for r in recs if r["type"] == "frames" and r["final"] for i in r["frame_index"]]

    frames, info = _decode(out)
    assert info["streams"] == ["video", "audio"]
    assert info["rate"] == 25 and abs(info["duration"] - 10.0) < 0.1
    assert info["audio"][0][0] == "aac" and abs(info["audio"][0][1] - 10.0) < 0.1
    assert len(frames) == 250 == len(final) == end["frames"]
    assert (frames[0].width, frames[0].height) == (640, 480)
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == 250
    assert [round(f.time * 25) for f in frames] == list(range(250))  # the source's timestamps

    with av.open(str(sample)) as c:
        src = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    x0, y0, x1, y1 = panel_rect(src[0].shape)
    for k in (0, 60, 249):
        d = _diff(frames[k].to_ndarray(format="rgb24"), src[k])
        assert d[y0:y1, x0:x1].mean() > 40, k  # the label panel
        rest = d.copy()
        rest[: y1 + 4, : x1 + 4] = 0
        assert (rest < 24).mean() > 0.9, k  # elsewhere, little but the box and the encoding


class _Boxes:
    """An observer keeping each analysed frame's face box."""

    def __init__(self) -> None:
        self.boxes: dict[int, tuple[int, int, int, int] | None] = {}

    def on_frame(self, frame, face) -> None:
        self.boxes[frame.index] = face.box if face.found else None


def test_box_is_drawn_where_the_face_was_found(sample, tmp_path):
    """From Python: a sink given to the Pipeline is told about the analysed frames too."""
    from stream import Pipeline, PipelineOptions

    out = tmp_path / "api.mkv"
    seen = _Boxes()
    source = FileSource(sample)
    sink = AnnotateSink(out, source, max_side=960)
    with Pipeline(PipelineOptions(modalities=["face"], observers=[seen]), sinks=[sink]) as pipeline:
        recs = list(pipeline.run(source))
    sink.close()
    assert recs[-1].type == "end" and recs[-1].sinks["annotate"]["error"] is None
    assert len(seen.boxes) == 50 and all(b is not None for b in seen.boxes.values())

    frames, info = _decode(out)
    assert len(frames) == 250 and info["streams"] == ["video", "audio"]
    with av.open(str(sample)) as c:
        src = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    px1, py1 = panel_rect(src[0].shape)[2:]
    checked = 0
    for k in (50, 125, 200):  # analysed frames (the 5 fps grid): their own box
        x0, y0, x1, y1 = seen.boxes[k]  # the frames are analysed at their size (640 < max_side)
        d = _diff(frames[k].to_ndarray(format="rgb24"), src[k])
        edge = [(x, y) for x in range(x0 + 2, x1 - 2, 4) for y in (y0, y1)]
        edge += [(x, y) for y in range(y0 + 2, y1 - 2, 4) for x in (x0, x1)]
        edge = [(x, y) for x, y in edge if not (x < px1 + 4 and y < py1 + 4) and 0 <= x < 640 and 0 <= y < 480]
        assert len(edge) > 40
        strong = np.mean([d[y, x] > 60 for x, y in edge])
        assert strong > 0.9, (k, strong)
        inside = d[y0 + 8 : y1 - 8, max(x0 + 8, px1 + 8) : x1 - 8]
        assert (inside < 24).mean() > 0.9  # the face itself is left as it was
        checked += 1
    assert checked == 3


def test_audio_that_is_not_aac_is_re_encoded_with_its_timestamps(sample, tmp_path):
    """An .mkv input with Opus audio (made here), annotated by the sink fed records by hand."""
    src_path = tmp_path / "opus.mkv"
    with av.open(str(sample)) as src, av.open(str(src_path), "w") as dst:
        ov = dst.add_stream_from_template(src.streams.video[0])
        oa = dst.add_stream("libopus", rate=48000)
        oa.layout = "mono"
        for packet in src.demux():
            if packet.dts is None:
                continue
            if packet.stream.type == "video":
                packet.stream = ov
                dst.mux(packet)
            else:
                for frame in packet.decode():
                    frame.pts = None
                    for p in oa.encode(frame):
                        dst.mux(p)
        for p in oa.encode(None):
            dst.mux(p)
    out = tmp_path / "opus-annotated.mp4"
    sink = AnnotateSink(out, FileSource(src_path))
    sink.write({"type": "start", "fps": 25.0, "compound_labels": list(COMPOUND), "modalities": ["face"]})
    probs = [0.1, 0.7, 0.05, 0.05, 0.05, 0.03, 0.02]
    for a in range(0, 250, 50):
        idx = list(range(a, a + 50))
        sink.write(
            {"type": "frames", "final": True, "frame_index": idx, "label": [COMPOUND[1]] * 50, "compound": [probs] * 50}
        )
    sink.write({"type": "end", "reason": "eof", "frames": 250})
    sink.close()
    frames, info = _decode(out)
    assert len(frames) == 250 and info["streams"] == ["video", "audio"]
    assert info["audio"][0][0] == "aac" and abs(info["audio"][0][1] - 10.0) < 0.15


# --------------------------------------------------------------------------- live
def test_live_run_interrupted_leaves_a_playable_file(sample, tmp_path):
    out = tmp_path / "live.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "--video", str(sample), "--realtime", *LIGHT, "--annotate", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:  # the first window: capture runs, frames are analysed
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
            if '"type": "window"' in line:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        rest, err = read_rest(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    recs = records("".join(lines) + rest)
    end = recs[-1]
    assert end["type"] == "end" and end["reason"] == "interrupted"
    assert end["sinks"]["annotate"]["error"] is None
    frames, info = _decode(out)  # decodes to the end without an error
    assert info["streams"] == ["video"]  # the analysed frames, no audio
    assert len(frames) > 10 and len(frames) <= end["frames_analysed"]
    pts = [f.time for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert abs(pts[1] - pts[0] - 0.2) < 0.01  # the 5 fps grid, at media time
    assert (frames[0].width, frames[0].height) == (640, 480)


def _frame(i: int, img: np.ndarray) -> VideoFrame:
    return VideoFrame(seq=i, index=i * 5, pts=i * 0.2, t_capture_ns=0, image=img)


def _color(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, _ = box
    return rgb[y0, x0 + 10 : x1 - 10].astype(float).mean(axis=0)


def test_live_frames_say_provisional_then_final(tmp_path):
    """The sink alone, fed analysed frames and records by hand: each frame waits for its own
    value and shows whether it is provisional or final (the box's colour)."""
    out = tmp_path / "push.mkv"
    sink = AnnotateSink(out, FileSource(ROOT / "samples" / "astronaut.mp4", realtime=True))
    img = np.full((480, 640, 3), 128, np.uint8)
    img.flags.writeable = False
    box = (350, 200, 550, 400)
    sink.write({"type": "start", "fps": 25.0, "compound_labels": list(COMPOUND), "modalities": ["face", "audio"]})
    for i in range(10):
        sink.on_frame(_frame(i, img), FaceResult(index=i * 5, pts=i * 0.2, found=True, box=box))
    probs = [0.2, 0.6, 0.1, 0.05, 0.05, 0.0, 0.0]
    sink.write(
        {"type": "window", "start": 0.0, "end": 4.0, "compound": {}, "present": ["face"], "basic_label": "Happiness"}
    )
    prov = list(range(0, 25))
    sink.write(
        {"type": "frames", "final": False, "frame_index": prov, "label": [COMPOUND[1]] * 25, "compound": [probs] * 25}
    )
    assert sink.frames_written == 5  # frames 0-20 have a value; 25-45 wait for theirs
    fin = list(range(25, 50))
    sink.write(
        {"type": "frames", "final": True, "frame_index": fin, "label": [COMPOUND[1]] * 25, "compound": [probs] * 25}
    )
    sink.write({"type": "end", "reason": "interrupted", "frames": 50})
    sink.close()
    frames, info = _decode(out)
    assert len(frames) == 10 and info["streams"] == ["video"]
    assert [round(f.time, 3) for f in frames] == [round(i * 0.2, 3) for i in range(10)]
    first, last = (frames[k].to_ndarray(format="rgb24") for k in (0, 9))
    for rgb, want in ((first, PROVISIONAL), (last, FINAL)):
        got = _color(rgb, box)
        assert np.abs(got - np.array(want)).max() < 40, (got, want)


def test_on_frame_never_blocks_and_counts_drops(tmp_path):
    sink = AnnotateSink(tmp_path / "x.mp4", FileSource(ROOT / "samples" / "astronaut.mp4", realtime=True), queue_size=4)
    img = np.zeros((480, 640, 3), np.uint8)
    face = FaceResult(index=0, pts=0.0, found=True, box=(10, 10, 50, 50))
    done = threading.Event()

    def analysis() -> None:
        for i in range(200):
            sink.on_frame(_frame(i, img), face)
        done.set()

    t0 = time.monotonic()
    threading.Thread(target=analysis, daemon=True).start()
    assert done.wait(5)  # nothing takes the frames: the queue fills, then they drop
    assert time.monotonic() - t0 < 2
    assert sink.frames_dropped == 196
    sink.close()  # the frames that were kept are written
    frames, _ = _decode(tmp_path / "x.mp4")
    assert len(frames) == 4


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("where", ["out.avi", "dir.mp4", "missing/x.mp4", "input"])
def test_bad_annotate_path_is_one_line(sample, tmp_path, where):
    video = sample
    path = tmp_path / where
    if where == "dir.mp4":
        path.mkdir()
    if where == "input":
        video = tmp_path / "in.mp4"
        shutil.copy(sample, video)
        path = video
    before = video.read_bytes()
    proc = cer_stream("--video", str(video), "--annotate", str(path), timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("cer-stream: error: cannot write --annotate "), proc.stderr
    assert proc.stdout == ""
    assert video.read_bytes() == before
    if where in ("out.avi", "missing/x.mp4"):
        assert not path.exists()


def test_draw_overlay_is_pure_unless_asked():
    img = np.full((480, 640, 3), 90, np.uint8)
    kw = dict(box=(350, 200, 450, 320), label=COMPOUND[0], probs=[0.5, 0.3, 0.2, 0, 0, 0, 0], labels=COMPOUND)
    drawn = draw_overlay(img, final=True, present=["face"], modalities=["face", "audio"], **kw)
    assert (img == 90).all() and drawn.shape == img.shape and (drawn != 90).any()
    assert np.abs(drawn[200, 400].astype(int) - FINAL).max() < 30
    same = draw_overlay(img, final=False, present=None, inplace=True, **kw)
    assert same is img and np.abs(img[200, 400].astype(int) - PROVISIONAL).max() < 30
