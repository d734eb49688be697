"""Logging plumbing: the ``cer_stream`` hierarchy, warnings forwarded into records at any time
of a run, native noise silenced per library, the progress bar, capture failure reasons."""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time

import pytest

from stream.core import logs
from stream.core.logs import RecordForwarder, parse_level, setup_logging, silence_native, warning_fields
from stream.runtime.progress import Progress

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def clean_logging(monkeypatch):
    """Restore the ``cer_stream`` logger (handlers, level, propagation) after the test."""
    logger = logging.getLogger("cer_stream")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    monkeypatch.setenv(logs.LEVEL_ENV, "warning")  # restored (or removed) afterwards
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


# --------------------------------------------------------------------------- setup_logging
def test_setup_logging_one_handler_one_format_no_propagation(clean_logging):
    out = io.StringIO()
    setup_logging("info", stream=out)
    setup_logging("info", stream=out)  # idempotent: still one handler
    logger = clean_logging
    assert logger.propagate is False
    assert sum(isinstance(h, logs._StderrHandler) for h in logger.handlers) == 1
    logging.getLogger("cer_stream.scene").warning("VLM down (%s)", "refused")
    logging.getLogger("cer_stream").info("plain")
    assert out.getvalue().splitlines() == ["cer-stream: warning [scene] VLM down (refused)", "cer-stream: info plain"]
    assert os.environ[logs.LEVEL_ENV] == "info"  # what spawned capture processes follow


def test_levels(clean_logging):
    out = io.StringIO()
    got = []
    setup_logging("error", stream=out)
    with RecordForwarder(lambda msg, name: got.append(msg), deferred=False):
        log = logging.getLogger("cer_stream.engines")
        log.debug("d")
        log.info("i")
        log.warning("w")  # not printed at --log-level error, but still a warning record
        log.error("e")
    assert out.getvalue().splitlines() == ["cer-stream: error [engines] e"]
    assert got == ["w", "e"]

    out2 = io.StringIO()
    setup_logging("debug", stream=out2)
    logging.getLogger("cer_stream.capture").debug("details")
    assert "cer-stream: debug [capture] details" in out2.getvalue()

    assert parse_level("WARNING") == logging.WARNING and parse_level(10) == 10
    for bad in ("loud", "", True):
        with pytest.raises(ValueError):
            parse_level(bad)


# --------------------------------------------------------------------------- forwarding
def test_warning_from_another_thread_late_in_a_run_reaches_the_callback(clean_logging):
    """A start-up warning, then a long quiet run, then a warning from a worker thread much later:
    both become records, on the analyzer's thread, in order."""
    setup_logging("warning", stream=io.StringIO())
    records: list[tuple[str, dict, str]] = []

    def warn(message, name):  # stands in for Analyzer.warn
        records.append((message, warning_fields(name), threading.current_thread().name))

    forwarder = RecordForwarder(warn).install()
    try:
        logging.getLogger("cer_stream.engines").warning("TensorRT unavailable; using ONNX Runtime")
        assert records == []  # before the run's `start` record nothing is delivered
        assert forwarder.deliver() == 1
        for _ in range(200):  # "an hour" of windows with nothing to say
            assert forwarder.deliver() == 0
        logged = threading.Event()

        def later():
            time.sleep(0.2)
            logging.getLogger("cer_stream.scene").warning("scene VLM request failed (%s)", "connection refused")
            logged.set()

        threading.Thread(target=later, name="cer-scene").start()
        deadline = time.monotonic() + 5
        while not records[1:] and time.monotonic() < deadline:  # the window loop, delivering
            forwarder.deliver()
            time.sleep(0.01)
        assert logged.is_set()
    finally:
        forwarder.remove()
    me = threading.current_thread().name
    assert records == [
        ("TensorRT unavailable; using ONNX Runtime", {}, me),
        ("scene VLM request failed (connection refused)", {"modality": "scene"}, me),
    ]


def test_forwarder_is_removable_and_never_raises(clean_logging):
    logger = logging.getLogger("cer_stream.clip")
    got = []

    def bad(message, name):
        got.append(message)
        logging.getLogger("cer_stream").warning("logged by the callback")  # not forwarded again
        raise RuntimeError("sink closed")

    f = RecordForwarder(bad, deferred=False).install()
    logger.warning("one")  # the callback raises: the logging call does not
    logger.error("two %s", "args")
    # a broken record still says something (handed to the handler directly: pytest's own
    # capture handler would raise on it)
    f.handle(logging.LogRecord("cer_stream.clip", logging.WARNING, __file__, 1, "bad %d", ("format",), None))
    f.remove()
    logger.warning("after removal")
    assert got[:2] == ["one", "two args"] and len(got) == 3 and "bad" in got[2]
    assert f.failed == 3 and f not in logging.getLogger("cer_stream").handlers

    # deferred, without a callback yet: kept until one is given
    f2 = RecordForwarder().install()
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("modality clip failed")
        assert f2.deliver() == 0 and f2.pending() == 1
        out = []
        assert f2.deliver(lambda m, n: out.append((m, n))) == 1
        assert out == [("modality clip failed (ValueError: boom)", "cer_stream.clip")]
    finally:
        f2.remove()


def test_forwarder_under_concurrent_logging(clean_logging):
    f = RecordForwarder(max_pending=10_000).install()
    got = []
    try:

        def spam(k):
            for i in range(500):
                logging.getLogger(f"cer_stream.t{k}").warning("w %d %d", k, i)

        threads = [threading.Thread(target=spam, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            f.deliver(lambda m, n: got.append(m))
        for t in threads:
            t.join()
        f.deliver(lambda m, n: got.append(m))
    finally:
        f.remove()
    assert len(got) == 2000 and len(set(got)) == 2000


def test_warning_fields():
    assert warning_fields("cer_stream.scene") == {"modality": "scene"}
    assert warning_fields("cer_stream.clip.sub") == {"modality": "clip"}
    assert warning_fields("cer_stream.capture.audio") == {"stream": "audio"}
    assert warning_fields("cer_stream.engines") == {}
    assert warning_fields("httpx") == {}


# --------------------------------------------------------------------------- native noise
def test_silence_native_is_idempotent(monkeypatch):
    monkeypatch.setattr(logs, "_silenced", False)
    monkeypatch.delenv(logs.NATIVE_ENV, raising=False)
    for key in logs.NATIVE_ENV_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("GLOG_minloglevel", "0")  # a user's own setting wins
    first = silence_native()
    hooks = {k: len(v) for k, v in logs._hooks.items()}
    second = silence_native()
    assert second == first or set(second) >= set(first)
    assert {k: len(v) for k, v in logs._hooks.items()} == hooks  # nothing registered twice
    assert sys.meta_path.count(logs._finder) <= 1
    assert os.environ["GLOG_minloglevel"] == "0" and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert os.environ["CT2_VERBOSE"] == "-1"


_MEDIAPIPE_RUN = r"""
import sys
sys.path.insert(0, {root!r})
if {silence}:
    from stream.core.logs import silence_native
    silence_native()
import numpy as np, mediapipe as mp, skimage.data
img = np.ascontiguousarray(skimage.data.astronaut())
with mp.solutions.face_detection.FaceDetection(model_selection=0) as det:
    found = det.process(img).detections
with mp.solutions.face_mesh.FaceMesh(static_image_mode=True) as mesh:
    mesh.process(img)
import onnxruntime
print("faces", len(found or []))
"""


@pytest.mark.parametrize("silence", [False, True])
def test_native_noise_is_silenced_per_library(silence):
    """MediaPipe (absl log + TFLite) writes straight to fd 2; silence_native quiets it without
    touching fd 2.  The unsilenced run shows that the check is meaningful."""
    pytest.importorskip("mediapipe")
    pytest.importorskip("skimage")
    env = {k: v for k, v in os.environ.items() if k not in logs.NATIVE_ENV_DEFAULTS and k != logs.NATIVE_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", _MEDIAPIPE_RUN.format(root=ROOT_DIR, silence=silence)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "faces 1" in proc.stdout
    if silence:
        assert proc.stderr == "", proc.stderr
    else:
        assert "TensorFlow Lite" in proc.stderr or "W0000" in proc.stderr


# --------------------------------------------------------------------------- progress
def test_progress_forced_on_writes_to_the_stream():
    out = io.StringIO()
    with Progress(10.0, mode="on", file=out) as p:
        for t in (2.0, 4.0, 4.0, 9.5, 12.0):  # repeats and overshoot are harmless
            p.update(t)
    text = out.getvalue()
    assert "100%" in text and "10.0/10.0 s" in text
    out2 = io.StringIO()
    with Progress(None, mode="on", file=out2) as p:
        p.update(3.25)
    assert "s analysed" in out2.getvalue()


@pytest.mark.parametrize("mode", ["off", "auto"])  # auto: a StringIO is not a terminal
def test_progress_off_writes_nothing(mode):
    out = io.StringIO()
    p = Progress(10.0, mode=mode, file=out)
    p.update(5.0)
    p.close()
    p.close()
    assert out.getvalue() == "" and not p.enabled
    with pytest.raises(ValueError):
        Progress(1.0, mode="sometimes")


# --------------------------------------------------------------------------- capture failures
def test_capture_crash_reason_reaches_the_analyzer(tmp_path):
    """A capture process that dies of an unexpected error leaves its reason, which the analyzer
    reads when it sees the exit (instead of a bare "exited (code 1)")."""
    from stream.io.capture import CaptureConfig, capture_main, describe_capture_exit, read_capture_error

    cfg = CaptureConfig(
        source="video",
        target=str(tmp_path / "clip.mp4"),
        frames_endpoint="bogus://nowhere",
        audio_endpoint=None,
        error_file=str(tmp_path / "capture.error"),
    )
    proc = mp.get_context("spawn").Process(target=capture_main, args=(cfg,), daemon=True)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 1
    reason = read_capture_error(cfg)
    assert reason and reason.startswith("capture failed: ZMQError")
    assert describe_capture_exit(cfg, proc.exitcode) == reason

    silent = CaptureConfig(
        source="rtsp", target="rtsp://user:secret@cam/x", frames_endpoint=f"ipc://{tmp_path}/f", audio_endpoint=None
    )
    assert silent.error_path == f"{tmp_path}/f.rtsp.error"
    assert read_capture_error(silent) is None
    msg = describe_capture_exit(silent, 1)
    assert msg.endswith("exited (code 1)") and "secret" not in msg
    assert describe_capture_exit(silent, -11).endswith("was killed by SIGSEGV")
