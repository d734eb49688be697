"""Ring buffers and the receiver, over real ZeroMQ sockets."""

import threading
import time

import numpy as np
import zmq

from stream.core import messages as m
from stream.io.receiver import Receiver, SourceState
from stream.io.ringbuffer import BLOCK, DROP_OLDEST, AudioRing, FrameRing


def frame(i, pts=None):
    return m.VideoFrame(
        seq=i,
        index=i,
        pts=i * 0.2 if pts is None else pts,
        t_capture_ns=m.now_ns(),
        image=np.full((4, 6, 3), i % 256, np.uint8),
    )


def test_drop_oldest_keeps_newest_and_counts():
    ring = FrameRing(3, policy=DROP_OLDEST)
    for i in range(10):
        assert ring.put(frame(i))
    assert ring.drops == 7
    assert [f.index for f in ring.between(0, 100)] == [7, 8, 9]
    ring.release_before(8 * 0.2)
    assert [f.index for f in ring.between(0, 100)] == [8, 9]


def test_block_policy_waits_for_room():
    ring = FrameRing(2, policy=BLOCK)
    assert ring.put(frame(0)) and ring.put(frame(1))
    assert not ring.put(frame(2), timeout=0.05)  # full: the producer is held, nothing dropped
    threading.Timer(0.1, ring.release_before, args=(0.1,)).start()
    assert ring.put(frame(2), timeout=2.0)
    assert ring.drops == 0
    assert [f.index for f in ring.between(0, 100)] == [1, 2]


def test_audio_ring_slices_by_media_time_and_drops_oldest():
    ring = AudioRing(capacity_s=1.0, rate=100)
    for k in range(5):  # five 0.5 s chunks with values k
        ring.put(m.AudioChunk(seq=k, pts=k * 0.5, t_capture_ns=0, samples=np.full(50, k, np.float32)))
    assert ring.dropped_samples == 150  # only 1 s (two chunks) kept
    pcm, cov = ring.slice(1.5, 2.5)
    assert pcm.shape == (100,) and cov == 1.0
    assert np.all(pcm[:50] == 3) and np.all(pcm[50:] == 4)
    pcm, cov = ring.slice(0.0, 1.0)  # dropped: zeros, no coverage
    assert cov == 0.0 and not pcm.any()
    pcm, cov = ring.slice(2.0, 3.0)  # half of it not yet arrived
    assert cov == 0.5


def _pusher(endpoint, n, *, hwm, blocking, done, pace_s=0.0, sent=None):
    """A capture-like sender; stays connected until ``done`` (ZeroMQ drops what is still
    in flight when the sending socket closes)."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.connect(endpoint)
    drops = 0
    for i in range(n):
        parts = m.encode(frame(i))
        if blocking:
            s.send_multipart(parts)
        else:
            try:
                s.send_multipart(parts, flags=zmq.NOBLOCK)
            except zmq.Again:
                drops += 1
        if pace_s:
            time.sleep(pace_s)
    s.send_multipart(
        m.encode(m.EndOfStream(streams=[m.VIDEO], frames=n, duration=n * 0.2, sender_drops={m.VIDEO: drops}))
    )
    if sent is not None:
        sent.append(drops)
    done.wait(20)
    s.close(linger=0)


def test_slow_consumer_over_zeromq_drops_oldest_never_blocks_sender(tmp_path):
    endpoint = f"ipc://{tmp_path}/frames"
    ring = FrameRing(5, policy=DROP_OLDEST)
    state = SourceState(av_audio=False)
    rx = Receiver(frames_endpoint=endpoint, audio_endpoint=None, frames=ring, audio=AudioRing(), state=state)
    rx.start()
    done, sent = threading.Event(), []
    # a 500 fps "camera" that never waits, against a consumer that takes 20 ms per frame
    sender = threading.Thread(
        target=_pusher, args=(endpoint, 300), kwargs=dict(hwm=4, blocking=False, done=done, pace_s=0.002, sent=sent)
    )
    t0 = time.monotonic()
    sender.start()
    consumed = []
    released = 0
    try:
        while True:
            batch = ring.between(0, 1e9)
            if batch:
                consumed.append(batch[0].index)
                released += ring.release_before(batch[0].pts + 0.1)
                time.sleep(0.02)
            elif state.video_done:
                break
            else:
                time.sleep(0.001)
        assert not sender.is_alive() or sent, "the sender finished without waiting for the consumer"
        send_s = time.monotonic() - t0
    finally:
        done.set()
        sender.join(5)
        rx.stop()
    received = rx.received[m.VIDEO]
    assert received + sent[0] == 300  # every frame either arrived or was counted as dropped
    # every frame that arrived was either dropped by the ring (oldest first) or released by the
    # consumer; a frame the consumer had just read may be dropped before it releases it
    assert ring.drops > 0 and ring.drops + released == received and len(ring) == 0
    assert released <= len(consumed)
    assert consumed == sorted(set(consumed))  # in order, none twice
    assert consumed[-1] == round(ring.horizon / 0.2)  # the newest frame survived
    assert len(consumed) < 100 and send_s < 30


def test_lossless_ring_backpressures_a_file_reader(tmp_path):
    endpoint = f"ipc://{tmp_path}/frames"
    ring = FrameRing(4, policy=BLOCK)
    state = SourceState(av_audio=False)
    rx = Receiver(frames_endpoint=endpoint, audio_endpoint=None, frames=ring, audio=AudioRing(), state=state)
    rx.start()
    done = threading.Event()
    sender = threading.Thread(target=_pusher, args=(endpoint, 60), kwargs=dict(hwm=2, blocking=True, done=done))
    sender.start()
    seen = []
    try:
        deadline = time.monotonic() + 20
        while len(seen) < 60 and time.monotonic() < deadline:
            items = ring.between(0, 1e9)
            if items:
                seen.append(items[0].index)
                ring.release_before(items[0].pts + 0.1)
                time.sleep(0.005)
            else:
                time.sleep(0.001)
        with state.cond:
            assert state.cond.wait_for(lambda: state.video_done, 5)
    finally:
        done.set()
        sender.join(5)
        rx.stop()
    assert seen == list(range(60)) and ring.drops == 0


def test_malformed_messages_are_counted_not_fatal(tmp_path):
    endpoint = f"ipc://{tmp_path}/frames"
    state = SourceState(av_audio=False)
    ring = FrameRing(4)
    rx = Receiver(frames_endpoint=endpoint, audio_endpoint=None, frames=ring, audio=AudioRing(), state=state)
    rx.start()
    s = zmq.Context.instance().socket(zmq.PUSH)
    s.connect(endpoint)
    s.send_multipart([b"not json"])
    s.send_multipart(m.encode(frame(3)))
    s.close(linger=1000)
    try:
        deadline = time.monotonic() + 5
        while len(ring) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        rx.stop()
    assert state.malformed == 1 and [f.index for f in ring.between(0, 10)] == [3]


def test_messages_round_trip():
    f = frame(7)
    g = m.decode(m.encode(f))
    assert g.index == 7 and g.pts == f.pts and np.array_equal(g.image, f.image)
    a = m.AudioChunk(seq=1, pts=0.5, t_capture_ns=5, samples=np.arange(4, dtype=np.float32))
    b = m.decode(m.encode(a))
    assert b.pts == 0.5 and b.samples.tolist() == [0, 1, 2, 3]
    e = m.decode(m.encode(m.CaptureError("boom", [m.VIDEO])))
    assert isinstance(e, m.CaptureError) and e.message == "boom" and e.fatal
