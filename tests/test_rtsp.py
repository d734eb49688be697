"""--rtsp against a real RTSP server on loopback (GStreamer, started by the test)."""

import pytest
from conftest import cer_stream, records
from rtsp_util import rtsp_available, serve_rtsp

ok, why = rtsp_available()
pytestmark = pytest.mark.skipif(not ok, reason=f"GStreamer RTSP server unavailable: {why}")


def test_rtsp_stream_end_to_end(sample):
    with serve_rtsp(sample) as url:
        proc = cer_stream("--rtsp", url, "--timeout", "10", timeout=120)
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
        proc = cer_stream("--rtsp", url, timeout=90)
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert recs[0]["audio"] is False
    assert any(r["type"] == "warning" and "no audio" in r["message"] for r in recs)
    assert [r for r in recs if r["type"] == "window"]
