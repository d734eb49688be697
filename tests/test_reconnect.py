"""Live sources that fail the way real ones do, against the loopback RTSP server: killed and
restarted mid-run, frozen past the read timeout, down at start, behind a TCP proxy that stalls,
and gone for good.  The run must reconnect, put every gap on record, account for every window
and never emit a frame that does not exist."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from faults import StallProxy, make_looped_clip
from live_process import LiveProcess
from rtsp_util import RtspServer, rtsp_available

ok, why = rtsp_available()
pytestmark = pytest.mark.skipif(not ok, reason=f"GStreamer RTSP server unavailable: {why}")

#: Light runs: the faults are in the source, not in the models (face path only, no speech).
LIGHT = ["--no-asr", "--no-clip", "--no-frames", "--reconnect-max-delay", "1"]


class LiveRun(LiveProcess):
    """`cer-stream` as a user runs it, its records read as they come."""

    def __init__(self, *args: str) -> None:
        super().__init__([sys.executable, "-m", "stream.cli", *args])

    def windows_after(self, t: float, n: int, timeout: float) -> None:
        self.wait_for(
            lambda r: r["type"] == "window" and r["start"] >= t and r["index"] >= self._first_after(t) + n - 1,
            timeout,
            f"{n} windows after {t:.1f} s",
        )

    def _first_after(self, t: float) -> int:
        wins = [r["index"] for r in self.records if r["type"] == "window" and r["start"] >= t]
        return min(wins) if wins else 10**9

    def of(self, kind: str) -> list[dict]:
        return [r for r in self.records if r["type"] == kind]


def check_accounting(run: LiveRun) -> dict:
    """Every window index up to the last is a window record, skipped or missing in a gap; window
    starts and final frame times only go forward; no final frame lies inside a closed gap; the
    end record's counts match the records."""
    end = run.of("end")[-1]
    wins = run.of("window")
    gaps = run.of("gap")
    indices = [w["index"] for w in wins]
    assert indices == sorted(set(indices))
    missing = set()
    for g in gaps:
        if g["windows_missing"]:
            a, b = g["windows_missing"]
            missing |= set(range(a, b + 1))
    assert not missing & set(indices)
    unaccounted = set(range(indices[-1] + 1)) - set(indices) - missing
    assert len(unaccounted) == end["windows_skipped"], unaccounted
    assert end["windows_missing"] == len(missing)
    assert end["windows"] == len(wins)
    assert end["gaps"] == len(gaps) and end["reconnects"] == len([g for g in gaps if g["end"] is not None])
    final = [(i, t) for r in run.of("frames") if r["final"] for i, t in zip(r["frame_index"], r["time"])]
    assert [i for i, _ in final] == sorted({i for i, _ in final})  # each frame final once, in order
    for g in gaps:
        if g["end"] is not None:
            assert not [t for _, t in final if g["start"] + 0.03 < t < g["end"] - 0.03], g
    assert all(isinstance(w.get("wall_time"), float) for w in wins)  # live records carry wall time
    return end


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """60 s of the sample (six loops, stream-copied): no end of stream during a test."""
    return make_looped_clip(ROOT / "samples" / "astronaut.mp4", tmp_path_factory.mktemp("loop") / "loop.mp4", 1.0)


def test_server_killed_and_restarted_mid_run(long_clip):
    with RtspServer(long_clip) as server:
        run = LiveRun("--rtsp", server.url, "--timeout", "3", *LIGHT)
        run.wait_for(lambda r: r["type"] == "window" and r["index"] >= 1, 60, "two windows")
        server.kill()
        lost = run.wait_for(lambda r: r["type"] == "warning" and "reconnecting" in r["message"], 15, "a warning")
        time.sleep(7.0)  # long enough to leave at least one whole window without a frame
        server.start()
        gap = run.wait_for(lambda r: r["type"] == "gap", 30, "a gap record")
        run.windows_after(gap["end"], 2, 30)
        code = run.finish()
    assert code == 0, run.stderr
    assert server.url in lost["message"] and lost["stream"] == "video"
    assert gap["end"] - gap["start"] > 6.5  # the server was down 7 s: media time went on by it
    assert gap["attempts"] >= 2 and gap["windows_missing"] is not None
    end = check_accounting(run)
    assert end["reason"] == "interrupted" and end["reconnects"] == 1 and end["gap_s"] > 6.5
    assert end["windows_missing"] >= 1
    after = [w for w in run.of("window") if w["start"] >= gap["end"]]
    assert after and all(w["modalities"]["face"]["present"] for w in after[1:])
    assert after[-1]["audio"]["coverage"] > 0.5  # the audio track came back with the video


def test_frozen_server_is_a_stall_that_says_so(long_clip):
    with RtspServer(long_clip) as server:
        run = LiveRun("--rtsp", server.url, "--timeout", "2", "--no-audio", *LIGHT)
        run.wait_for(lambda r: r["type"] == "window", 60, "a window")
        server.pause()
        lost = run.wait_for(lambda r: r["type"] == "warning" and "reconnecting" in r["message"], 15, "a warning")
        time.sleep(3.0)
        server.resume()
        gap = run.wait_for(lambda r: r["type"] == "gap", 40, "a gap record")
        run.windows_after(gap["end"], 1, 30)
        code = run.finish()
    assert code == 0, run.stderr
    assert lost["message"] == f"no data for 2 s from {server.url}; reconnecting"
    assert gap["reason"] == f"no data for 2 s from {server.url}"
    check_accounting(run)


def test_source_down_at_start_is_waited_for_when_asked(long_clip):
    with RtspServer(long_clip) as server:  # learn a port, then take the server down
        url = server.url
    run = LiveRun("--rtsp", url, "--timeout", "2", "--wait", "--no-audio", *LIGHT)
    time.sleep(3.0)
    assert run.proc.poll() is None  # still waiting, not failed
    with RtspServer(long_clip, port=int(url.rsplit(":", 1)[1].split("/")[0])) as server:
        run.wait_for(lambda r: r["type"] == "window", 60, "a window")
        code = run.finish()
    assert code == 0, run.stderr
    waits = [r for r in run.of("warning") if r["message"].startswith(f"waiting for {url}")]
    assert waits and "Connection refused" in waits[0]["message"]
    assert run.records[0]["type"] == "start"


def test_down_at_start_without_wait_or_past_the_policy_is_one_line(refused_port):
    # held for the whole test: no other process can take the port meanwhile (a port freed by a
    # stopped server can be)
    _down_at_start(f"rtsp://127.0.0.1:{refused_port}/sample")


def _down_at_start(url: str) -> None:
    for extra, expect in (([], "cannot open RTSP stream"), (["--wait", "--reconnect", "2"], "gave up on")):
        proc = subprocess.run(
            [sys.executable, "-m", "stream.cli", "--rtsp", url, "--timeout", "2", *extra, *LIGHT],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=ROOT,
        )
        assert proc.returncode == 2 and proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expect in lines[0], proc.stderr


def test_policy_gives_up_and_says_why(long_clip):
    with RtspServer(long_clip) as server:
        run = LiveRun("--rtsp", server.url, "--timeout", "2", "--reconnect", "2", "--no-audio", *LIGHT)
        run.wait_for(lambda r: r["type"] == "window", 60, "a window")
        server.kill()
        code = run.finish(interrupt=False, timeout=60)
    assert code == 1, run.stderr
    end = run.of("end")[-1]
    assert end["reason"] == "source_lost"
    gave_up = [r for r in run.of("warning") if r["message"].startswith("gave up on")]
    assert gave_up and "after 2 reconnect attempt(s)" in gave_up[0]["message"]
    (gap,) = run.of("gap")
    assert gap["end"] is None and end["gaps"] == 1 and end["reconnects"] == 0


def test_a_proxy_that_stalls_then_recovers(long_clip):
    with RtspServer(long_clip) as server, StallProxy("127.0.0.1", server.port) as proxy:
        url = proxy.proxied(server.url)
        run = LiveRun("--rtsp", url, "--timeout", "2", "--no-audio", *LIGHT)
        run.wait_for(lambda r: r["type"] == "window", 60, "a window")
        proxy.stall()
        run.wait_for(lambda r: r["type"] == "warning" and "no data for 2 s" in r["message"], 15, "a stall warning")
        time.sleep(2.0)
        proxy.resume()
        gap = run.wait_for(lambda r: r["type"] == "gap", 40, "a gap record")
        run.windows_after(gap["end"], 1, 30)
        code = run.finish()
    assert code == 0, run.stderr
    assert gap["reason"] == f"no data for 2 s from {url}"
    check_accounting(run)


def _cut_windows_before(run: LiveRun, gap: dict, position: int) -> list[dict]:
    """The windows the loss cut short: some of their grid points (0.2 s apart) are within half a
    step of a frame from before ``gap``, their last is not.  Each must be among the first
    ``position`` records."""
    reach = gap["start"] + 0.1
    cut = [w for w in run.of("window") if w["start"] <= reach < w["end"] - 0.2]
    assert cut, "no window was cut short by the loss"
    late = [w["index"] for w in cut if run.records.index(w) >= position]
    assert not late, f"windows {late} waited for the source to come back"
    return cut


@pytest.mark.parametrize("timeout", [5, 2])
def test_a_stall_is_noticed_within_the_timeout_and_its_windows_come_out_at_once(long_clip, timeout):
    # FFmpeg's own read timeout hands out one more queued packet when it first fires and fails
    # only at the second: a stall used to be noticed after twice --timeout, and the windows
    # holding the last frames before it waited for the source to come back (also with a
    # timeout shorter than a window, when the windows after the loss are not yet complete)
    with RtspServer(long_clip) as server:
        run = LiveRun("--rtsp", server.url, "--timeout", str(timeout), "--no-audio", *LIGHT)
        run.wait_for(lambda r: r["type"] == "window" and r["index"] >= 1, 60, "two windows")
        server.pause()
        frozen = time.monotonic()
        run.wait_for(lambda r: r["type"] == "warning" and "reconnecting" in r["message"], 15, "a warning")
        noticed = time.monotonic() - frozen
        time.sleep(3.0)  # the source stays frozen: whatever comes now did not wait for it
        position = len(run.records)
        server.resume()
        gap = run.wait_for(lambda r: r["type"] == "gap", 40, "a gap record")
        run.windows_after(gap["end"], 2, 30)
        code = run.finish()
    assert code == 0, run.stderr
    assert noticed < timeout + 2.0, f"a {timeout} s stall noticed after {noticed:.1f} s"
    assert gap["reason"] == f"no data for {timeout} s from {server.url}"
    for w in _cut_windows_before(run, gap, position):
        assert w["analysed_frames"] < 20  # analysed with the frames that came before the loss
    check_accounting(run)


def test_media_time_keeps_to_the_wall_clock_over_ten_reconnects(long_clip):
    # a reopened RTSP session delivers what the server sent while the connection was set up
    # (about a second of frames) in a burst: anchoring the first of them to the moment the
    # session was open ran media time about a second ahead of the wall clock per reconnect
    with RtspServer(long_clip) as server, StallProxy("127.0.0.1", server.port) as proxy:
        run = LiveRun("--rtsp", proxy.proxied(server.url), "--timeout", "3", "--no-audio", *LIGHT)
        first = run.wait_for(lambda r: r["type"] == "window", 60, "a window")
        after = 0
        for n in range(10):
            assert proxy.drop() >= 1
            after, gap = run.wait_at(lambda r: r["type"] == "gap" and r["end"] is not None, 30, f"gap {n}", after=after)
            after += 1
            after, _ = run.wait_at(
                lambda r, g=gap: r["type"] == "window" and r["start"] >= g["end"], 30, "a window", after=after
            )
            after += 1
        run.windows_after(run.of("gap")[-1]["end"], 2, 30)
        code = run.finish()
    assert code == 0, run.stderr
    end = check_accounting(run)
    assert end["reconnects"] == 10
    last = run.of("window")[-1]
    drift = (last["end"] - first["end"]) - (last["wall_time"] - first["wall_time"])
    assert abs(drift) < 1.0, f"media time {drift:+.2f} s off the wall clock after 10 reconnects"
