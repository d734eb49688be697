"""The run's RuntimeOptions reach the capture processes whole (issue 20, item 2): one object from
the pipeline to the capture, turned into CaptureConfig fields in one place
(stream.runtime.lifecycle.capture_configs), with the defaults RuntimeOptions has."""

from __future__ import annotations

import pickle
import threading

from stream.core.signals import SignalEvent
from stream.io.capture import CaptureConfig
from stream.io.reconnect import OFF, ReconnectPolicy, Resume
from stream.io.sources import CameraSource, FileSource, RtspSource
from stream.runtime.lifecycle import ProcessCapture, capture_configs, is_live, open_capture
from stream.runtime.options import RuntimeOptions

EPS = {"frames_endpoint": "ipc:///tmp/x/frames", "audio_endpoint": "ipc:///tmp/x/audio"}


def test_a_live_source_gets_every_runtime_field():
    resume = Resume(window=7, after_s=12.0, wall_time=1.7e9)
    policy = ReconnectPolicy(attempts=3, max_delay_s=4.0)
    runtime = RuntimeOptions(max_side=320, open_timeout_s=3.0, read_timeout_s=4.0, reconnect=policy, resume=resume)
    (cfg,) = capture_configs(RtspSource("rtsp://cam/x"), runtime, **EPS)
    assert (cfg.max_side, cfg.open_timeout_s, cfg.read_timeout_s) == (320, 3.0, 4.0)
    assert cfg.reconnect is policy and cfg.resume is resume
    assert cfg.audio_endpoint == EPS["audio_endpoint"] and cfg.want_audio
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # what stream.io.worker reads on its stdin


def test_a_file_ends_with_itself_and_resumes_nothing():
    runtime = RuntimeOptions(realtime=True, reconnect=ReconnectPolicy(), resume=Resume(1, 0.0, 1.7e9))
    (paced,) = capture_configs(FileSource("clip.mp4"), runtime, **EPS)
    assert paced.realtime and paced.reconnect == OFF and paced.resume is None
    (own,) = capture_configs(FileSource("clip.mp4", realtime=False), runtime, **EPS)
    assert not own.realtime  # the source's own realtime wins over the run's
    assert is_live(FileSource("clip.mp4"), runtime) and not is_live(FileSource("clip.mp4"), RuntimeOptions())


def test_a_camera_microphone_shares_the_limits_without_reconnecting():
    runtime = RuntimeOptions(max_side=200, read_timeout_s=2.5)
    camera, mic = capture_configs(CameraSource(0, mic=True), runtime, **EPS)
    assert camera.frames_endpoint and camera.audio_endpoint is None and not camera.want_audio
    assert camera.reconnect == runtime.reconnect
    assert mic.source == "mic" and mic.frames_endpoint is None and mic.audio_endpoint == EPS["audio_endpoint"]
    assert (mic.max_side, mic.read_timeout_s, mic.reconnect, mic.resume) == (200, 2.5, OFF, None)


def test_defaults_are_the_runtime_options():
    direct = CaptureConfig("video", "clip.mp4", None, None)
    default = RuntimeOptions()
    assert (direct.max_side, direct.open_timeout_s, direct.read_timeout_s) == (
        default.max_side,
        default.open_timeout_s,
        default.read_timeout_s,
    )


def test_a_capture_process_reads_the_options_it_was_given(sample):
    """A real capture process, started from the options alone, scales to their max_side."""
    capture = open_capture(FileSource(sample, audio=False), RuntimeOptions(max_side=160))
    assert isinstance(capture, ProcessCapture)
    stop = SignalEvent()
    timer = threading.Timer(120, stop.set)  # a hung start ends the test as a failure, not a hang
    timer.start()
    try:
        capture.start()
        info = capture.wait_start(stop)
    finally:
        timer.cancel()
        capture.close()
    assert max(info.width, info.height) == 160
