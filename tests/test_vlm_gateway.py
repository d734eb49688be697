"""The ``[vlm]`` gateway of ``cer-stream serve``: one request queue in front of a VLM endpoint.

The endpoint is a real chat-completions server on loopback (:class:`tests.vlm_util.FakeVLM`,
which records every request and how many were in flight at once); the clients are the scene
modality's own :class:`SceneWorker` (as each analyzer runs it) or plain httpx requests.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
import httpx  # noqa: E402
from vlm_util import MODEL, fake_vlms  # noqa: E402

from stream.modalities.scene import SceneOptions, SceneWorker  # noqa: E402
from stream.serve.config import ConfigError, parse_config  # noqa: E402
from stream.serve.vlm_gateway import TOKEN_ENV, GatewayError, VlmConfig, VlmGateway  # noqa: E402

KEY_ENV = "CER_STREAM_TEST_UPSTREAM_KEY"
KEY = "sk-upstream-5c1e9a"
CAPTIONS = [
    "A woman in a spacesuit smiles broadly at the camera, relaxed and cheerful in a bright room.",
    "The person looks surprised, eyebrows raised and mouth open, standing in front of a flag.",
]


@pytest.fixture
def vlm():
    with fake_vlms(CAPTIONS) as make:
        yield make


@pytest.fixture
def gateways():
    made: list[VlmGateway] = []

    def make(upstream: str, ids=("a", "b"), **kw) -> VlmGateway:
        made.append(VlmGateway(VlmConfig(url=upstream, model=MODEL, key_env=KEY_ENV, **kw), ids, env={KEY_ENV: KEY}))
        return made[-1]

    yield make
    for g in made:
        g.close()


@pytest.fixture(scope="module")
def keyframes() -> list[np.ndarray]:
    from skimage import data

    img = data.astronaut()
    return [img, img[::-1].copy()]


def worker_for(gw: VlmGateway, sid: str, monkeypatch, **kw) -> SceneWorker:
    monkeypatch.setenv(TOKEN_ENV, gw.token)
    opts = SceneOptions(
        url=gw.url_for(sid),
        model=MODEL,
        key_env=TOKEN_ENV,
        every_s=0.05,
        timeout_s=kw.pop("timeout_s", 5.0),
        retries=0,
        **kw,
    )
    return SceneWorker(opts).start()


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def post(
    gw: VlmGateway, sid: str, token: str | None = None, body: bytes = b"{}", timeout: float = 10.0
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token != "":
        headers["Authorization"] = f"Bearer {gw.token if token is None else token}"
    return httpx.post(f"{gw.url_for(sid)}/chat/completions", content=body, headers=headers, timeout=timeout)


def test_streams_share_one_queue_and_only_the_gateway_holds_the_key(vlm, gateways, keyframes, monkeypatch):
    up = vlm(delay=0.15)
    gw = gateways(up.url, ids=("a", "b", "c"))
    workers = [worker_for(gw, sid, monkeypatch) for sid in ("a", "b", "c")]
    try:
        for round_ in range(3):  # each stream has one request in flight at most, as an analyzer
            for w in workers:
                w.submit(round_, float(round_), keyframes)
            wait_until(
                lambda r=round_: all((w.caption() and w.caption().window_index == r) for w in workers), 15, "captions"
            )
    finally:
        for w in workers:
            w.close()
    # the endpoint never had more than `concurrency` (1) requests from the gateway at once,
    # though three streams asked at the same moments
    assert up.max_in_flight == 1
    assert len(up.requests) == 9
    # the endpoint got the real key; the analyzers sent the gateway's token, never the key
    assert {r["headers"].get("Authorization") for r in up.requests} == {f"Bearer {KEY}"}
    assert all(r["body"]["model"] == MODEL and r["body"]["messages"] for r in up.requests)
    stats = gw.stats()
    assert stats["concurrency"] == 1 and stats["queued"] == 0 and stats["in_flight"] == 0
    for sid in ("a", "b", "c"):
        s = stats["streams"][sid]
        assert s["requests"] == s["forwarded"] == s["ok"] == 3 and s["errors"] == 0, s
        assert s["wait_ms_max"] is not None and s["last_service_ms"] >= 100
    # three streams queued behind one slow endpoint: someone waited about one service time
    assert max(stats["streams"][sid]["wait_ms_max"] for sid in "abc") >= 100
    assert stats["max_queued"] >= 2
    assert KEY not in json.dumps(stats)


def test_concurrency_bounds_the_requests_in_flight(vlm, gateways):
    up = vlm(delay=0.4)
    gw = gateways(up.url, ids=("a", "b", "c", "d"), concurrency=2)
    answers: dict[str, int] = {}

    def ask(sid: str) -> None:
        answers[sid] = post(gw, sid, body=b'{"model": "m", "messages": []}').status_code

    threads = [threading.Thread(target=ask, args=(sid,)) for sid in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert answers == {sid: 200 for sid in "abcd"}
    assert up.max_in_flight == 2  # four at once from the streams, two at the endpoint


def test_a_newer_request_supersedes_the_waiting_one(vlm, gateways):
    up = vlm(delay=0.6)
    gw = gateways(up.url)
    results: dict[str, httpx.Response] = {}
    busy = threading.Thread(target=lambda: results.setdefault("b", post(gw, "b")))
    busy.start()
    wait_until(lambda: up.in_flight == 1, 5, "the endpoint busy with b")
    first = threading.Thread(target=lambda: results.setdefault("a1", post(gw, "a")))
    first.start()
    wait_until(lambda: gw.stats()["queued"] == 1, 5, "a's request queued")
    second = threading.Thread(target=lambda: results.setdefault("a2", post(gw, "a")))
    second.start()
    for t in (busy, first, second):
        t.join(10)
    assert results["b"].status_code == 200
    assert results["a1"].status_code == 429 and "superseded" in results["a1"].json()["error"]["message"]
    assert results["a2"].status_code == 200
    assert len(up.requests) == 2  # the superseded request never reached the endpoint
    a = gw.stats()["streams"]["a"]
    assert a["requests"] == 2 and a["superseded"] == 1 and a["forwarded"] == 1 and a["ok"] == 1


def test_a_request_that_waited_too_long_is_not_sent(vlm, gateways):
    up = vlm(delay=0.8)
    gw = gateways(up.url, max_wait_s=0.3)
    results: dict[str, httpx.Response] = {}
    busy = threading.Thread(target=lambda: results.setdefault("b", post(gw, "b")))
    busy.start()
    wait_until(lambda: up.in_flight == 1, 5, "the endpoint busy with b")
    results["a"] = post(gw, "a")
    busy.join(10)
    assert results["b"].status_code == 200
    assert results["a"].status_code == 504 and "waited" in results["a"].json()["error"]["message"]
    assert len(up.requests) == 1
    assert gw.stats()["streams"]["a"]["expired"] == 1


def test_the_gateway_answers_its_analyzers_only(vlm, gateways):
    up = vlm()
    gw = gateways(up.url)
    assert post(gw, "a", token="").status_code == 401
    assert post(gw, "a", token=KEY).status_code == 401  # the endpoint's key is not the gateway's token
    assert post(gw, "zz").status_code == 404
    assert post(gw, "a").status_code == 200
    assert len(up.requests) == 1
    assert gw.base_url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("mode", ["down", "hang", "500"])
def test_endpoint_failures_reach_the_analyzer_as_its_own_errors(
    vlm, gateways, keyframes, monkeypatch, mode, refused_port
):
    if mode == "down":
        gw = gateways(f"http://127.0.0.1:{refused_port}/v1", timeout_s=0.5)
    else:
        up = vlm(mode=mode)
        gw = gateways(up.url, timeout_s=0.5)
    w = worker_for(gw, "a", monkeypatch, timeout_s=3.0)
    try:
        w.submit(0, 0.0, keyframes)
        wait_until(lambda: w.status()["errors"] >= 1, 10, "an error")
        status = w.status()
    finally:
        w.close()
    expect = {"down": "could not be reached", "hang": "did not answer within 0.5 s", "500": "internal error"}[mode]
    assert expect in status["last_error"], status
    assert KEY not in status["last_error"] and w.caption() is None
    a = gw.stats()["streams"]["a"]
    assert a["errors"] >= 1 and a["ok"] == 0


def test_a_port_in_use_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(GatewayError) as err:
            VlmGateway(VlmConfig(url="http://127.0.0.1:9/v1", listen=f"127.0.0.1:{port}"), ["a"])
    assert "\n" not in str(err.value) and "vlm.listen" in str(err.value)


BASE = {"stream": [{"id": "a", "rtsp": "rtsp://cam/a"}, {"id": "b", "rtsp": "rtsp://cam/b"}]}


def test_the_vlm_table():
    cfg = parse_config(
        {**BASE, "vlm": {"url": "http://gpu:8000/v1", "model": "m", "key_env": "K", "concurrency": 3, "every": 6}}
    )
    assert cfg.vlm == VlmConfig(url="http://gpu:8000/v1", model="m", key_env="K", concurrency=3, every_s=6.0)
    args = cfg.vlm.analyzer_args("http://127.0.0.1:5/streams/a/v1")
    assert args == [
        "--vlm-url",
        "http://127.0.0.1:5/streams/a/v1",
        "--vlm-model",
        "m",
        "--vlm-key-env",
        TOKEN_ENV,
        "--vlm-every",
        "6",
    ]


@pytest.mark.parametrize(
    "vlm_table, extra, expect",
    [
        ({"model": "m"}, {}, "vlm.url is missing"),
        ({"url": "ftp://x"}, {}, "bad VLM URL"),
        ({"url": "http://g/v1", "concurrency": 0}, {}, "vlm.concurrency must be a whole number >= 1"),
        ({"url": "http://g/v1", "colour": 1}, {}, "vlm.colour: unknown key"),
        ({"url": "http://g/v1", "timeout": -1}, {}, "vlm.timeout must be a positive number"),
        (
            {"url": "http://g/v1"},
            {"args": ["--vlm-url", "http://x/v1"]},
            "--vlm-url cannot be given with a [vlm] table or --vlm",
        ),
    ],
)
def test_vlm_table_mistakes_are_one_line(vlm_table, extra, expect):
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, **extra, "vlm": vlm_table})
    assert expect in str(err.value) and "\n" not in str(err.value)
