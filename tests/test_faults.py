"""The fault-injection tools themselves (tests/faults.py, RtspServer in tests/rtsp_util.py)
and bench/soak.py's windows accounting: each check takes a few seconds at most."""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import free_port
from faults import StallProxy, make_looped_clip, make_pts_jump_clip, make_vfr_clip
from rtsp_util import RtspServer, rtsp_available

ROOT = Path(__file__).resolve().parents[1]
needs_rtsp = pytest.mark.skipif(
    not rtsp_available()[0], reason=f"GStreamer RTSP server unavailable: {rtsp_available()[1]}"
)
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (Debian) is not installed")


# --------------------------------------------------------------------------- StallProxy
class EchoServer:
    """A TCP echo server on loopback (one thread per connection)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def _recv_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def _eventually(check, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_proxy_forwards_stalls_and_resumes(echo):
    with StallProxy("127.0.0.1", echo.port) as proxy:
        client = socket.create_connection(proxy.address, timeout=5)
        with client:
            client.sendall(b"hello")
            assert _recv_exactly(client, 5) == b"hello"
            assert proxy.connections == 1 and proxy.active == 1
            assert _eventually(lambda: (proxy.bytes_up, proxy.bytes_down) == (5, 5))

            proxy.stall()
            client.sendall(b"stuck" * 1000)
            client.settimeout(0.6)
            with pytest.raises(TimeoutError):
                client.recv(1)
            assert (proxy.bytes_up, proxy.bytes_down) == (5, 5)  # nothing moved either way
            # a connection made during the stall is accepted, but carries nothing either
            late = socket.create_connection(proxy.address, timeout=5)
            assert proxy.wait_connections(2)
            late.sendall(b"late")
            late.settimeout(0.3)
            with pytest.raises(TimeoutError):
                late.recv(1)

            proxy.resume()
            assert _recv_exactly(client, 5000) == b"stuck" * 1000  # nothing was lost
            assert _recv_exactly(late, 4) == b"late"
            # the counters move just after each send(), which a reader can beat
            assert _eventually(lambda: proxy.bytes_up == proxy.bytes_down == 5009)
            late.close()


def test_proxy_drop_closes_connections_and_keeps_accepting(echo):
    with StallProxy("127.0.0.1", echo.port) as proxy:
        a = socket.create_connection(proxy.address, timeout=5)
        b = socket.create_connection(proxy.address, timeout=5)
        a.sendall(b"x")
        assert _recv_exactly(a, 1) == b"x"
        assert proxy.wait_connections(2)
        assert proxy.drop() == 2
        assert _recv_exactly(a, 1) == b"" and _recv_exactly(b, 1) == b""  # FIN
        assert proxy.active == 0
        c = socket.create_connection(proxy.address, timeout=5)
        c.sendall(b"again")
        assert _recv_exactly(c, 5) == b"again"
        proxy.drop(reset=True)
        with pytest.raises(ConnectionResetError):
            c.settimeout(5)
            c.recv(1)
        for s in (a, b, c):
            s.close()
        assert proxy.connections == 3


def test_proxy_with_its_target_down(refused_port):
    # the dead port is held for the whole test: one closed before the proxy started once came
    # back (in CI) as the proxy's own, which forwarded to itself until descriptors ran past 1023
    port = refused_port
    with StallProxy("127.0.0.1", port) as proxy:
        client = socket.create_connection(proxy.address, timeout=5)
        with client:
            assert _recv_exactly(client, 1) == b""
        assert proxy.wait_connections(1) and proxy.failed == 1
        assert proxy.connections == 1
        assert proxy.proxied(f"rtsp://u:p@127.0.0.1:{port}/x?y=1") == f"rtsp://u:p@127.0.0.1:{proxy.port}/x?y=1"


def test_proxy_forwards_on_descriptors_past_1023(echo):
    # select() refuses descriptor numbers of 1024 and more; a long test process can hold that many
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(max(0, 1100 - len(os.listdir("/proc/self/fd"))))]
    try:
        with StallProxy("127.0.0.1", echo.port) as proxy:
            client = socket.create_connection(proxy.address, timeout=5)
            with client:
                assert client.fileno() > 1023
                client.sendall(b"x" * 300_000)  # more than the socket buffers: the proxy's sends wait too
                assert _recv_exactly(client, 300_000) == b"x" * 300_000
    finally:
        for fd in fillers:
            os.close(fd)


def test_proxy_never_listens_on_its_own_target():
    port = free_port()  # the proxy binds it: a bound-and-closed port 0 could be taken meanwhile
    # a fixed port equal to the target is refused (port 0 is asked again until it differs)
    with pytest.raises(ValueError, match="forward to itself"):
        StallProxy("127.0.0.1", port, listen_port=port).start()


# --------------------------------------------------------------------------- media generators
def _video_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(video=0)]


def test_vfr_clip_decodes_at_the_promised_times(tmp_path):
    clip = make_vfr_clip(tmp_path / "vfr.mp4", seconds=2.0)
    got = _video_times(clip.path)
    assert len(got) == len(clip.times) >= 40
    assert np.allclose(got, clip.times, atol=1e-6)
    steps = np.diff(got)
    assert np.allclose(steps[0::2], 1 / 50, atol=1e-6) and np.allclose(steps[1::2], 1 / 15, atol=1e-6)
    with av.open(str(clip.path)) as c:
        frames = [f.to_ndarray(format="gray") for f in c.decode(video=0)][:3]
    assert all(np.abs(a.astype(int) - b).mean() > 0.5 for a, b in zip(frames, frames[1:]))  # frames differ


def test_vfr_clip_in_matroska(tmp_path):
    clip = make_vfr_clip(tmp_path / "vfr.mkv", seconds=1.0)
    assert np.allclose(_video_times(clip.path), clip.times, atol=6e-4)  # Matroska keeps milliseconds


@needs_espeak
def test_vfr_clip_with_audio(tmp_path):
    clip = make_vfr_clip(tmp_path / "vfr-a.mp4", seconds=2.0, audio=True)
    with av.open(str(clip.path)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        frames = list(c.decode(audio=0))
    assert frames[0].time == 0.0 and sum(f.samples for f in frames) / frames[0].sample_rate == pytest.approx(
        2.0, abs=0.1
    )
    assert np.allclose(_video_times(clip.path), clip.times, atol=1e-6)


def test_pts_jump_clip_jumps_forward_then_back(tmp_path):
    clip = make_pts_jump_clip(tmp_path / "jump.ts", segments=((0.0, 1.0), (6.0, 1.0), (3.0, 1.0)))
    got = _video_times(clip.path)
    assert len(got) == len(clip.times) == 75
    assert np.allclose(got, clip.times, atol=1e-4)
    steps = np.diff(got)
    jumps = [(i + 1, round(float(d) - 0.04, 3)) for i, d in enumerate(steps) if abs(d - 0.04) > 1e-3]
    assert jumps == [(25, 5.0), (50, -4.0)]
    assert [(j.index, round(j.delta_s, 3)) for j in clip.jumps] == jumps


@needs_espeak
def test_pts_jump_clip_audio_follows_the_video(tmp_path):
    clip = make_pts_jump_clip(tmp_path / "jump-a.ts", segments=((0.0, 1.0), (6.0, 1.0), (3.0, 1.0)), audio=True)
    assert np.allclose(_video_times(clip.path), clip.times, atol=1e-4)  # the audio shifted nothing
    with av.open(str(clip.path)) as c:
        starts = [float(f.time) for f in c.decode(audio=0)]
    back = [(a, b) for a, b in zip(starts, starts[1:]) if abs(b - a - 1024 / 22050) > 1e-3]
    assert len(back) == 2
    assert back[0][1] == pytest.approx(6.0, abs=0.05) and back[1][1] == pytest.approx(3.0, abs=0.05)


def test_looped_clip_is_a_stream_copy(tmp_path, sample):
    t = time.monotonic()
    out = make_looped_clip(sample, tmp_path / "loop.mp4", 0.5)
    assert time.monotonic() - t < 5
    with av.open(str(out)) as c:
        assert c.duration / 1e6 == pytest.approx(30.0, abs=0.1)
        v = c.streams.video[0]
        assert float(v.duration * v.time_base) == pytest.approx(30.0, abs=0.05) and v.frames == 750
        keys = [float(p.pts * v.time_base) for p in c.demux(v) if p.is_keyframe and p.pts is not None]
    assert {0.0, 10.0, 20.0} <= set(keys)
    with av.open(str(sample)) as a, av.open(str(out)) as b:
        first = [bytes(p) for p in a.demux(video=0) if p.size][:30]
        again = [bytes(p) for p in b.demux(video=0) if p.size][250:280]
    assert first == again  # the second pass is the same bytes: nothing was re-encoded
    times = _video_times(out)
    assert len(times) == 750 and np.allclose(np.diff(times), 0.04, atol=1e-6)


# --------------------------------------------------------------------------- RtspServer
def _read_frames(url: str, n: int) -> list:
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=(10.0, 5.0)) as c:
        out = []
        for frame in c.decode(video=0):
            out.append(frame)
            if len(out) >= n:
                break
    return out


@needs_rtsp
def test_rtsp_server_serves_again_on_the_same_port_after_a_kill(sample):
    with RtspServer(sample) as server:
        url = server.url
        reader = av.open(url, options={"rtsp_transport": "tcp"}, timeout=(10.0, 5.0))
        frames = reader.decode(video=0)
        next(frames)
        server.kill()  # with a client connected
        assert not server.running
        assert server.start() == url and server.starts == 2
        assert len(_read_frames(url, 5)) == 5
        reader.close()

        server.pause()
        with pytest.raises(av.error.FFmpegError):
            av.open(url, options={"rtsp_transport": "tcp"}, timeout=(1.5, 1.5))
        server.resume()
        assert len(_read_frames(url, 3)) == 3

        server.stop()
        with pytest.raises(av.error.FFmpegError):
            av.open(url, options={"rtsp_transport": "tcp"}, timeout=(2.0, 2.0))
        assert server.restart() == url
        assert len(_read_frames(url, 3)) == 3


@needs_rtsp
def test_rtsp_through_a_stalling_proxy(sample):
    with RtspServer(sample) as server, StallProxy("127.0.0.1", server.port) as proxy:
        url = proxy.proxied(server.url)
        with av.open(url, options={"rtsp_transport": "tcp"}, timeout=(10.0, 1.5)) as c:
            frames = c.decode(video=0)
            for _ in range(5):
                next(frames)
            proxy.stall()
            t = time.monotonic()
            with pytest.raises((av.error.FFmpegError, StopIteration)):
                for _ in range(100):  # what was already on its way, then nothing
                    next(frames)
            assert time.monotonic() - t < 10
        proxy.resume()
        assert len(_read_frames(url, 3)) == 3
        assert proxy.connections == 2


# --------------------------------------------------------------------------- bench/soak.py
def _soak():
    return importlib.import_module("bench.soak")


def test_soak_windows_accounting():
    soak = _soak()

    def win(i):
        return {"type": "window", "index": i, "latency_ms": 50.0 + i}

    records = [win(0), win(1), {"type": "warning", "message": "analysis fell behind; skipped 2 window(s)"}]
    records += [win(4), {"type": "gap", "start": 9.0, "end": 16.0, "windows_missing": [5, 7], "attempts": 2}]
    records += [win(8), win(10), {"type": "end", "windows_skipped": 2, "windows_missing": 3, "gaps": 1}]
    acc = soak.account_windows(records)
    assert acc["unaccounted"] == 1 and acc["unaccounted_indices"] == [9]
    assert (acc["skipped_located"], acc["in_gaps"], acc["gap_windows_total"], acc["last_index"]) == (2, 3, 3, 10)
    assert acc["duplicates"] == [] and acc["in_gap_and_emitted"] == []
    records.insert(-1, win(9))
    records.insert(-1, win(6))
    acc = soak.account_windows(records)
    assert acc["unaccounted"] == 0 and acc["in_gap_and_emitted"] == [6]
    # a gap's windows between the window before a skip and the next: the skip is what is left
    skip = {"type": "warning", "message": "skipped 2 window(s)"}
    gap = {"type": "gap", "start": 28.5, "end": 34.8, "windows_missing": [15, 15]}
    acc = soak.account_windows([*map(win, range(13)), gap, skip, win(16), {"type": "end", "windows_skipped": 2}])
    assert acc["unaccounted"] == 0 and acc["skipped_located"] == 2
    assert acc["sequence"][-5:] == [12, "gap 15-15", "skip 2", 16, "end"]
    # a skip only covers windows after the one before its warning
    skip1 = {"type": "warning", "message": "skipped 1 window(s)"}
    acc = soak.account_windows([win(0), win(2), skip1, win(4), {"type": "end", "windows_skipped": 1}])
    assert acc["unaccounted_indices"] == [1] and acc["unaccounted"] == 1
    # a skip the end record counts but no warning located covers one missing index
    acc = soak.account_windows([win(0), win(2), {"type": "end", "windows_skipped": 1}])
    assert acc["unaccounted"] == 0 and acc["unaccounted_indices"] == [1]
    assert soak.latency_summary(records)["p50"] == pytest.approx(56.0)


def test_soak_plan_and_slope():
    soak = _soak()
    plan = soak.make_plan(60, 10, 5, 10, 120, None)
    assert plan.restarts == [600, 1200, 1800, 2400, 3000]
    assert plan.clip_s == pytest.approx(600 + 60)  # the first stretch (0 to 10 min) is the longest
    smoke = soak.make_plan(1.5, 0.5, 5, 5, 30, None)
    assert smoke.restarts == [30] and smoke.clip_s == pytest.approx(55 + 60)
    pts = [(t, 100 + 2 * t / 3600) for t in range(0, 3600, 10)]  # 2 MB/h
    assert soak.slope_mb_per_h(pts, 120) == pytest.approx(2.0)
    assert soak.slope_mb_per_h(pts[:5], 120) is None
