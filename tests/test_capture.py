"""Capture readers driven directly, over real ZeroMQ sockets."""

import os
import threading

import numpy as np
import zmq

from stream.core import messages as m
from stream.io.capture import CaptureConfig, _Sender, _Stop, run_av_capture, run_mic_capture, scaled_size


def _collect(endpoints, target, timeout_s=30.0):
    ctx = zmq.Context.instance()
    socks = {}
    for name, ep in endpoints.items():
        s = ctx.socket(zmq.PULL)
        s.bind(ep)
        socks[name] = s
    th = threading.Thread(target=target)
    th.start()
    got = {name: [] for name in socks}
    poller = zmq.Poller()
    for s in socks.values():
        poller.register(s, zmq.POLLIN)
    ended = set()
    import time

    deadline = time.monotonic() + timeout_s
    while len(ended) < len(socks) and time.monotonic() < deadline:
        for s, _ in poller.poll(200):
            name = next(n for n, x in socks.items() if x is s)
            item = m.decode(s.recv_multipart())
            got[name].append(item)
            if isinstance(item, (m.EndOfStream, m.CaptureError)):
                ended.add(name)
    th.join(10)
    for s in socks.values():
        s.close(linger=0)
    return got


def test_file_reader_sends_grid_frames_and_contiguous_audio(sample, tmp_path):
    cfg = CaptureConfig(
        source="video",
        target=str(sample),
        frames_endpoint=f"ipc://{tmp_path}/f",
        audio_endpoint=f"ipc://{tmp_path}/a",
        max_side=320,
    )
    got = _collect({"f": cfg.frames_endpoint, "a": cfg.audio_endpoint}, lambda: run_av_capture(cfg))
    info, *frames, end = got["f"]
    assert isinstance(info, m.StreamInfo) and info.fps == 25.0 and (info.width, info.height) == (320, 240)
    assert isinstance(end, m.EndOfStream) and end.frames == 250 and abs(end.duration - 10.0) < 1e-6
    assert [f.index for f in frames] == list(range(0, 250, 5))  # the 5 fps analysis grid
    assert all(f.image.shape == (240, 320, 3) for f in frames)
    assert [f.seq for f in frames] == list(range(50))
    chunks = [c for c in got["a"] if isinstance(c, m.AudioChunk)]
    assert chunks and chunks[0].pts >= 0
    for a, b in zip(chunks, chunks[1:]):  # no gaps or overlaps between chunks
        assert abs(a.pts + a.samples.size / m.AUDIO_RATE - b.pts) < 1e-6
    total = sum(c.samples.size for c in chunks) / m.AUDIO_RATE
    assert 9.8 < total < 10.2
    speech = np.concatenate([c.samples for c in chunks])
    assert np.sqrt(np.mean(speech[: 8 * m.AUDIO_RATE] ** 2)) > 0.01  # real speech, not silence


def test_stop_request_ends_a_realtime_reader_early(sample, tmp_path):
    stop = _Stop()
    cfg = CaptureConfig(
        source="video",
        target=str(sample),
        frames_endpoint=f"ipc://{tmp_path}/f",
        audio_endpoint=None,
        want_audio=False,
        realtime=True,
    )
    threading.Timer(1.0, stop.set).start()
    got = _collect({"f": cfg.frames_endpoint}, lambda: run_av_capture(cfg, stop))
    end = got["f"][-1]
    assert isinstance(end, m.EndOfStream) and end.reason == "stopped"
    assert 10 <= end.frames < 100  # about one second of a 25 fps clip


def test_microphone_reader_reports_what_it_finds(tmp_path):
    """No microphone (or no PortAudio) here: a clear error; with a device: audio flows."""
    stop = _Stop()
    cfg = CaptureConfig(source="mic", target="default", frames_endpoint=None, audio_endpoint=f"ipc://{tmp_path}/a")
    threading.Timer(1.5, stop.set).start()
    got = _collect({"a": cfg.audio_endpoint}, lambda: run_mic_capture(cfg, stop))
    first = got["a"][0]
    if isinstance(first, m.CaptureError):
        assert first.fatal and ("microphone" in first.message)
    else:
        assert isinstance(first, m.StreamInfo) and first.source == "mic"
        assert any(isinstance(c, m.AudioChunk) for c in got["a"])


def test_scaled_size_keeps_aspect_and_even_numbers():
    assert scaled_size(1920, 1080, 960) == (960, 540)
    assert scaled_size(640, 480, 960) == (640, 480)
    assert scaled_size(1081, 721, 500) == (500, 334)


def test_no_control_messages_wait_for_an_analyzer_that_is_gone(tmp_path):
    """A capture whose analyzer died (it was reparented) sends no end or error message and
    closes without lingering: nobody would read them, and they held its exit up for seconds."""
    import time

    not_our_parent = 1 if os.getppid() != 1 else 2
    ep_gone, ep_here = f"ipc://{tmp_path}/gone", f"ipc://{tmp_path}/here"
    gone_ctx, ctx = zmq.Context(), zmq.Context.instance()
    gone = _Sender(gone_ctx, ep_gone, hwm=8, blocking=False, parent_pid=not_our_parent)
    here = _Sender(ctx, ep_here, hwm=8, blocking=False, parent_pid=os.getppid())
    end = m.EndOfStream(streams=[m.VIDEO], reason="stopped")
    gone.send_control(end)
    here.send_control(end)  # queued until a reader binds: the analyzer may still be starting
    received = {}
    for name, ep in (("gone", ep_gone), ("here", ep_here)):
        sock = ctx.socket(zmq.PULL)
        sock.bind(ep)
        received[name] = [m.decode(sock.recv_multipart())] if sock.poll(2000) else []
        sock.close(linger=0)
    assert received["gone"] == []
    assert [type(x) for x in received["here"]] == [m.EndOfStream]
    here.close()
    # an item still queued (its reader never came) does not hold the exit for the 3 s linger
    assert gone.send(end)
    gone.close()
    t0 = time.monotonic()
    gone_ctx.term()
    assert time.monotonic() - t0 < 1.5
