"""The scene modality against a real chat-completions server on loopback.

The server (``http.server`` in a thread, started by each test) checks nothing itself: it
records every request (path, headers, parsed body) and how many were in flight at once, and
answers with real Qwen2.5-VL-32B captions of C-EXPR-DB segments
(``qwen_scene/cexprdb_unlabeled_qwen2.5-vl-32b_prompt1.csv`` of the data folder, ``$CER_STREAM_DATA``;
published with SMIL-SPCRAS/ICCVW_25), or misbehaves as
a test asks: hangs, HTTP 500 (echoing the request's headers, key included, as a careless
server might), garbage, an empty caption, a refused connection, a redirect, a chunked answer.
It also records each request's client address, so that connection reuse (keep-alive) shows.  The modality is driven
directly with window inputs made of real frames of ``samples/astronaut.mp4``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, data_missing
from vlm_util import MODEL, FakeVLM, fake_vlms

from stream.core.labels import BASIC
from stream.core.messages import VideoFrame
from stream.core.windows import full_window
from stream.modalities.base import WindowInput
from stream.modalities.face import FaceResult
from stream.modalities.scene import (
    PROMPT,
    SceneModality,
    SceneOptions,
    SceneWorker,
    VlmError,
    build_scene_modality,
    endpoint_url,
    parse_caption,
    pick_keyframes,
)

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ("qwen_scene", "cexprdb_unlabeled_qwen2.5-vl-32b_prompt1.csv")
KEY_ENV = "CER_STREAM_TEST_VLM_KEY"
KEY = "sk-test-9f3b2c71d4e8a6"

#: Short intervals so that every test takes a second or two.
FAST = dict(every_s=0.1, timeout_s=0.5, key_env=KEY_ENV, retries=1, backoff_s=0.05, backoff_max_s=0.1, model=MODEL)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def captions() -> list[str]:
    missing = data_missing(*CAPTIONS)
    if missing is not None:
        pytest.skip(missing)
    with open(DATA.joinpath(*CAPTIONS), newline="", encoding="utf-8") as f:
        texts = [row["text"].strip() for row in csv.DictReader(f)]
    return [t for t in texts if t][:50]


@pytest.fixture(scope="module")
def frames() -> list[VideoFrame]:
    """Real frames of the committed sample on the analyser's 5 fps grid (8 s: 40 frames)."""
    import av

    out: list[VideoFrame] = []
    with av.open(str(ROOT / "samples" / "astronaut.mp4")) as c:
        stream = c.streams.video[0]
        fps = float(stream.average_rate)
        for i, frame in enumerate(c.decode(stream)):
            if i % round(fps / 5):
                continue
            out.append(
                VideoFrame(
                    len(out),
                    i,
                    float(frame.pts * stream.time_base),
                    time.monotonic_ns(),
                    frame.to_ndarray(format="rgb24"),
                )
            )
            if len(out) == 40:
                break
    return out


def window_input(k: int, frames: list[VideoFrame]) -> WindowInput:
    """Window k (4 s, hop 2 s) with the sample's frames (reused cyclically past its end)."""
    w = full_window(k)
    chosen = [frames[(10 * k + j) % len(frames)] for j in range(20)]
    faces = [FaceResult(f.index, f.pts, False) for f in chosen]
    return WindowInput(w, 25.0, chosen, faces, None)


class KeywordHead:
    """Stand-in caption head: joy/smile -> Happiness, else Neutral; records what it read."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def predict(self, texts):
        self.seen.extend(texts)
        out = np.full((len(texts), len(BASIC)), 0.02, np.float32)
        for row, t in zip(out, texts):
            row[BASIC.index("Happiness" if ("joy" in t.lower() or "smil" in t.lower()) else "Neutral")] = 0.86
        return out


@pytest.fixture
def vlm_factory(captions):
    with fake_vlms(captions) as make:
        yield make


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def wait_for(predicate, timeout: float = 3.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def timed_call(mod: SceneModality, inp: WindowInput):
    t0 = time.perf_counter()
    out = mod(inp)
    return out, time.perf_counter() - t0


#: A window's call must never wait for the VLM (submit + a cache look-up).
QUICK_S = 0.1


# --------------------------------------------------------------------------- tests
def test_caption_lands_in_a_later_window(vlm_factory, key_env, frames, captions, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    vlm = vlm_factory(delay=0.3)
    head = KeywordHead()
    mod = SceneModality(SceneOptions(url=vlm.url, **{**FAST, "every_s": 5.0}), head=head)
    outputs = []
    try:
        out0, dt0 = timed_call(mod, window_input(0, frames))
        outputs.append(out0)
        assert dt0 < QUICK_S
        assert out0.basic is None and out0.info["reason"] == "no caption yet"
        assert wait_for(lambda: mod.worker.caption() is not None)
        out1, dt1 = timed_call(mod, window_input(1, frames))
        outputs.append(out1)
        assert dt1 < QUICK_S
    finally:
        mod.close()

    # the window after the answer has the scene, with the caption and its media-time age
    assert out1.basic is not None and out1.basic.shape == (len(BASIC),)
    assert out1.info["caption"] == " ".join(vlm.answered[0].split())
    assert out1.info["caption"] in [" ".join(c.split()) for c in captions]
    assert out1.info["caption_age_s"] == pytest.approx(2.0)  # keyframes of window 0, used in window 1
    assert out1.info["caption_window"] == 0
    assert head.seen == [out1.info["caption"]]
    np.testing.assert_allclose(out1.basic, head.predict([out1.info["caption"]])[0])
    assert out1.feature is None  # the stand-in head has no embeddings
    assert out1.info["vlm"]["ok"] == 1 and out1.info["vlm"]["errors"] == 0

    # the request had the chat-completions shape
    assert len(vlm.requests) == 1
    req = vlm.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert req["headers"]["Content-Type"] == "application/json"
    body = req["body"]
    assert body["model"] == MODEL and body["temperature"] == 0 and body["max_tokens"] > 0
    (msg,) = body["messages"]
    assert msg["role"] == "user"
    images = [p for p in msg["content"] if p["type"] == "image_url"]
    texts = [p["text"] for p in msg["content"] if p["type"] == "text"]
    assert texts == [PROMPT] and len(images) == 4
    import cv2

    for part in images:
        url = part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        img = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and max(img.shape[:2]) <= 448 and img.std() > 10  # a real picture

    # the key is in no output, record or log line
    dumped = json.dumps([o.info for o in outputs])
    out, err = capsys.readouterr()
    for text in (dumped, caplog.text, out, err, repr(mod.options)):
        assert KEY not in text


@pytest.mark.parametrize("mode", ["chunked", "eof"])
def test_answer_framings(vlm_factory, frames, monkeypatch, mode):
    monkeypatch.delenv(KEY_ENV, raising=False)
    vlm = vlm_factory(mode=mode)
    mod = SceneModality(SceneOptions(url=vlm.url, **FAST), head=KeywordHead())
    try:
        mod(window_input(0, frames))
        assert wait_for(lambda: mod.worker.caption() is not None)
        out = mod(window_input(1, frames))
    finally:
        mod.close()
    assert out.basic is not None and out.info["caption"] == " ".join(vlm.answered[0].split())


def test_no_key_no_authorization_header(vlm_factory, frames, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    vlm = vlm_factory()
    mod = SceneModality(SceneOptions(url=vlm.url + "/", **FAST), head=KeywordHead())
    try:
        mod(window_input(0, frames))
        assert wait_for(lambda: mod.worker.caption() is not None)
    finally:
        mod.close()
    assert vlm.requests and "Authorization" not in vlm.requests[0]["headers"]


def test_stream_of_windows_never_waits_and_never_overlaps(vlm_factory, key_env, frames):
    """Windows every 50 ms against a VLM that takes 250 ms: each call returns at once, the
    first windows have no scene, later ones do, captions refresh, one request at a time."""
    vlm = vlm_factory(delay=0.25)
    mod = SceneModality(SceneOptions(url=vlm.url, **{**FAST, "every_s": 0.05, "max_age_s": 1000}), head=KeywordHead())
    outs, times = [], []
    try:
        for k in range(40):
            out, dt = timed_call(mod, window_input(k, frames))
            outs.append(out)
            times.append(dt)
            time.sleep(0.05)
    finally:
        mod.close()
    assert max(times) < QUICK_S
    present = [o.basic is not None for o in outs]
    assert not present[0] and present[-1]
    first = present.index(True)
    assert all(present[first:]), "once a caption arrived, every later window has one"
    assert len({o.info["caption"] for o in outs if o.basic is not None}) >= 3, "captions refresh"
    assert vlm.max_in_flight == 1
    assert len(vlm.requests) >= 4
    # newest keyframes are sent, older submissions skipped: later captions come from later windows
    used = [o.info["caption_window"] for o in outs if o.basic is not None]
    assert used == sorted(used) and used[-1] > used[0] + 3
    starts = [r["t"] for r in vlm.requests]
    assert all(b - a >= 0.05 - 0.01 for a, b in zip(starts, starts[1:])), "refresh period respected"


@pytest.mark.parametrize(
    "mode,expect",
    [
        ("hang", "no answer within"),
        ("500", "HTTP 500"),
        ("garbage", "not JSON"),
        ("empty", "empty caption"),
        ("refused", "connection refused"),
    ],
)
def test_failing_endpoint_leaves_scene_absent(vlm_factory, key_env, frames, caplog, capsys, mode, expect, refused_port):
    caplog.set_level(logging.DEBUG)
    if mode == "refused":
        url = f"http://127.0.0.1:{refused_port}/v1"
        vlm = None
    else:
        vlm = vlm_factory(mode=mode)
        url = vlm.url
    mod = SceneModality(SceneOptions(url=url, **{**FAST, "timeout_s": 0.3}), head=KeywordHead())
    outs = []
    try:
        k = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            out, dt = timed_call(mod, window_input(k, frames))
            outs.append(out)
            assert dt < QUICK_S
            k += 1
            if out.info["vlm"]["errors"] >= 2:
                break
            time.sleep(0.05)
        t0 = time.perf_counter()
        mod.close()
        assert time.perf_counter() - t0 < 1.0, "close() returns at once, even mid-request"
    finally:
        mod.close()
    assert all(o.basic is None for o in outs)
    last = outs[-1]
    assert last.info["vlm"]["errors"] >= 2
    assert last.info["reason"].startswith("VLM unreachable: ")
    assert expect in last.info["reason"] and expect in last.info["vlm"]["last_error"]
    if vlm is not None:
        assert vlm.max_in_flight == 1
    if mode == "500":  # the server echoed the key in its error body: it must not get through
        assert "internal error" in last.info["vlm"]["last_error"] or "request_headers" in last.info["vlm"]["last_error"]
    out, err = capsys.readouterr()
    for text in (json.dumps([o.info for o in outs]), caplog.text, out, err):
        assert KEY not in text
    assert "scene VLM request failed" in caplog.text  # reported once per failing run, in the log


def test_transient_errors_are_retried_with_backoff(vlm_factory, key_env, frames):
    vlm = vlm_factory(fail_first=2)
    opts = SceneOptions(url=vlm.url, **{**FAST, "every_s": 10.0, "retries": 2, "backoff_s": 0.1, "backoff_max_s": 1.0})
    mod = SceneModality(opts, head=KeywordHead())
    try:
        mod(window_input(0, frames))
        assert wait_for(lambda: mod.worker.caption() is not None)
        out = mod(window_input(1, frames))
    finally:
        mod.close()
    assert out.basic is not None
    st = out.info["vlm"]
    assert (st["requests"], st["errors"], st["ok"], st["consecutive_errors"]) == (3, 2, 1, 0)
    t = [r["t"] for r in vlm.requests]
    assert t[1] - t[0] >= 0.1 - 0.02 and t[2] - t[1] >= 0.2 - 0.02  # exponential backoff


def test_old_caption_is_not_used(vlm_factory, key_env, frames):
    vlm = vlm_factory()
    mod = SceneModality(SceneOptions(url=vlm.url, **{**FAST, "every_s": 10.0, "max_age_s": 5.0}), head=KeywordHead())
    try:
        mod(window_input(0, frames))
        assert wait_for(lambda: mod.worker.caption() is not None)
        fresh = mod(window_input(2, frames))  # 4 s after the caption's window
        stale = mod(window_input(3, frames))  # 6 s after it; no new request before every_s
    finally:
        mod.close()
    assert fresh.basic is not None and fresh.info["caption_age_s"] == pytest.approx(4.0)
    assert stale.basic is None and stale.info["reason"] == "caption too old"
    assert stale.info["caption_age_s"] == pytest.approx(6.0)
    assert mod.worker.latest(12.0, 5.0) is None
    text, age = mod.worker.latest(8.0, 5.0)
    assert age == pytest.approx(4.0) and text == fresh.info["caption"]


def test_submit_never_blocks_and_keeps_the_newest(vlm_factory, frames, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    vlm = vlm_factory(delay=0.3)
    worker = SceneWorker(SceneOptions(url=vlm.url, **FAST))
    imgs = [f.image for f in frames[:4]]
    with worker:
        worker.submit(0, 4.0, imgs)
        assert wait_for(lambda: worker.status()["in_flight"])
        t0 = time.perf_counter()
        for k in range(1, 2001):
            worker.submit(k, 4.0 + 2 * k, imgs)
        assert time.perf_counter() - t0 < 0.5  # 2000 submissions during a request
        assert wait_for(lambda: (worker.caption() or None) is not None and worker.caption().window_index == 2000)
    assert len(vlm.requests) == 2, "the 1999 superseded submissions were never sent"
    assert worker.caption().result is None  # no postprocess given


def test_options_and_command_line():
    from stream.cli.flags import add_scene_args, scene_options  # the --vlm-* flags live with the CLI

    p = argparse.ArgumentParser()
    add_scene_args(p)
    assert build_scene_modality(scene_options(p.parse_args([]))) is None
    args = p.parse_args(
        [
            "--vlm-url",
            "http://127.0.0.1:8000/v1",
            "--vlm-model",
            "m",
            "--vlm-every",
            "2",
            "--vlm-timeout",
            "9",
            "--vlm-key-env",
            "MY_KEY",
            "--vlm-max-age",
            "7",
        ]
    )
    mod = build_scene_modality(scene_options(args), head=KeywordHead())
    try:
        o = mod.options
        assert (o.url, o.model, o.every_s, o.timeout_s, o.key_env, o.caption_max_age_s) == (
            "http://127.0.0.1:8000/v1",
            "m",
            2.0,
            9.0,
            "MY_KEY",
            7.0,
        )
        assert not mod.worker.started  # nothing runs before the first window
    finally:
        mod.close()
    assert SceneOptions(url="http://h/v1").caption_max_age_s == 2 * 4.0 + 4.0
    assert endpoint_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert endpoint_url("https://h/api/v1/chat/completions") == "https://h/api/v1/chat/completions"
    for bad in ("ftp://h/v1", "127.0.0.1:8000", "http://:80/v1"):
        with pytest.raises(ValueError):
            SceneOptions(url=bad)
    with pytest.raises(ValueError, match="\\*\\*\\*"):  # a password in a bad URL is not echoed
        endpoint_url("ftp://user:hunter2@h/v1")
    for field, value in (("every_s", 0), ("timeout_s", -1), ("retries", -1), ("keyframes", 0)):
        with pytest.raises(ValueError):
            SceneOptions(url="http://h/v1", **{field: value})


def test_parse_caption_and_keyframes():
    assert parse_caption(json.dumps(FakeVLM.completion(" A  calm\nface. ")).encode()) == "A calm face."
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "Smiling."}]}}]}
    assert parse_caption(json.dumps(parts).encode()) == "Smiling."
    for body, msg in (
        (b"nope", "not JSON"),
        (b"{}", "no choices"),
        (b'{"error": {"message": "model not found"}}', "model not found"),
    ):
        with pytest.raises(VlmError, match=msg):
            parse_caption(body)
    assert pick_keyframes(list(range(20)), 4) == [0, 6, 13, 19]
    assert pick_keyframes([1, 2], 4) == [1, 2]


def _text_head():
    """The committed scene head; where it is not trained yet, the same class (MiniLM encoder and
    all) with random weights, so that the encoder path is still exercised."""
    from stream.modalities.scene import load_scene_head

    try:
        return load_scene_head(), True
    except RuntimeError:
        pass
    try:
        from engines.models.minilm import TextEncoder
        from stream.modalities.speech.texthead import TextHead

        encoder = TextEncoder(max_len=256)
    except Exception as exc:  # no texthead module or no MiniLM package here
        pytest.skip(f"no caption head available: {exc}")
    rng = np.random.default_rng(0)
    names = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
    return TextHead(rng.normal(size=(7, 384)), np.zeros(7), names, {"max_len": 256}, encoder), False


def test_with_a_minilm_caption_head(vlm_factory, key_env, frames):
    head, _committed = _text_head()
    vlm = vlm_factory()
    mod = SceneModality(SceneOptions(url=vlm.url, **{**FAST, "every_s": 5.0}), head=head)
    try:
        mod(window_input(0, frames))
        assert wait_for(lambda: mod.worker.caption() is not None, timeout=10)
        out = mod(window_input(1, frames))
        expected = head.predict([out.info["caption"]])[0] if out.basic is not None else None
    finally:
        mod.close()
        head.close()
    assert out.basic is not None and out.basic.shape == (8,)
    assert np.isfinite(out.basic).all() and out.basic.sum() == pytest.approx(1.0, abs=1e-4)
    assert out.feature is not None and out.feature.shape == (384,)  # the caption embedding
    np.testing.assert_allclose(out.basic, expected, atol=1e-5)


# --------------------------------------------------------------------------- HTTP client (httpx)
def _captions_for(mod: SceneModality, frames, n: int, timeout: float = 5.0) -> None:
    """Drive windows until the worker has had ``n`` answers."""
    k = 0
    deadline = time.monotonic() + timeout
    while mod.worker.status()["ok"] < n and time.monotonic() < deadline:
        mod(window_input(k, frames))
        k += 1
        time.sleep(0.05)
    assert mod.worker.status()["ok"] >= n, mod.worker.status()


@pytest.mark.parametrize("mode", ["ok", "chunked"])
def test_connection_is_kept_alive(vlm_factory, key_env, frames, mode):
    """Several refreshes travel over one TCP connection (the server sees one client port)."""
    vlm = vlm_factory(mode=mode)
    mod = SceneModality(SceneOptions(url=vlm.url, **{**FAST, "every_s": 0.05, "max_age_s": 1000}), head=KeywordHead())
    try:
        _captions_for(mod, frames, 4)
    finally:
        mod.close()
    assert len(vlm.requests) >= 4
    assert len(vlm.connections) == 1, vlm.connections
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in vlm.requests)


def test_chunked_answer_is_decoded(vlm_factory, frames, monkeypatch):
    """A chunked answer (as Go's net/http, i.e. Ollama, sends one) of several chunks."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    vlm = vlm_factory(mode="chunked")
    mod = SceneModality(SceneOptions(url=vlm.url, **FAST), head=KeywordHead())
    try:
        mod(window_input(0, frames))
        assert wait_for(lambda: mod.worker.caption() is not None)
        out = mod(window_input(1, frames))
    finally:
        mod.close()
    assert len(json.dumps(FakeVLM.completion(vlm.answered[0]))) > 300  # more than one chunk
    assert out.basic is not None and out.info["caption"] == " ".join(vlm.answered[0].split())


@pytest.mark.parametrize("status", [307, 308])
def test_redirect_is_followed(vlm_factory, key_env, frames, status):
    """A 307/308 to another path on the same server: the POST, its body and the key follow."""
    vlm = vlm_factory(redirect=status)
    mod = SceneModality(SceneOptions(url=vlm.url, **FAST), head=KeywordHead())
    try:
        mod(window_input(0, frames))
        assert wait_for(lambda: mod.worker.caption() is not None)
        out = mod(window_input(1, frames))
    finally:
        mod.close()
    assert out.basic is not None
    first, second = vlm.requests[:2]
    assert first.get("redirected") and first["path"] == "/v1/chat/completions"
    assert second["path"] == "/moved/v1/chat/completions" and not second.get("redirected")
    assert second["body"]["model"] == MODEL and len(second["body"]["messages"][0]["content"]) == 5
    assert second["headers"]["Authorization"] == f"Bearer {KEY}"  # same origin: kept
    assert out.info["vlm"]["requests"] == 1 and out.info["vlm"]["errors"] == 0  # one request to the worker


def test_proxy_from_the_environment(vlm_factory, frames, monkeypatch):
    """``HTTP_PROXY`` is honoured: the request goes to the proxy in absolute form."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    proxy = vlm_factory()  # serves whatever target it is asked for
    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url.rsplit("/", 1)[0])
    mod = SceneModality(SceneOptions(url="http://vlm.invalid:8000/v1", **FAST), head=KeywordHead())
    try:
        mod(window_input(0, frames))
        assert wait_for(lambda: mod.worker.caption() is not None)
    finally:
        mod.close()
    assert proxy.requests[0]["path"] == "http://vlm.invalid:8000/v1/chat/completions"


def test_failures_are_logged_under_cer_stream_scene(vlm_factory, key_env, frames):
    """The worker's warning goes to the ``cer_stream.scene`` logger, from its own thread, so a
    RecordForwarder turns it into a ``warning`` record with ``modality: scene``."""
    from stream.core.logs import RecordForwarder, warning_fields

    vlm = vlm_factory(mode="500")
    got = []
    forwarder = RecordForwarder(lambda msg, name: got.append((msg, warning_fields(name))), deferred=False)
    mod = SceneModality(SceneOptions(url=vlm.url, **FAST), head=KeywordHead())
    with forwarder:
        try:
            mod(window_input(0, frames))
            assert wait_for(lambda: got)
        finally:
            mod.close()
    (msg, fields), *_ = got
    assert "scene VLM request failed" in msg and "HTTP 500" in msg and KEY not in msg
    assert fields == {"modality": "scene"}
