"""``cer-stream serve``'s dashboard (:class:`stream.serve.dashboard.Dashboard`): one page for
every stream.  A real analyzer run of the sample gives the records (tagged with stream ids as the
supervisor tags them); the server is real (uvicorn on a free loopback port), frames come from a
real in-process per-stream page (:class:`stream.sinks.web.WebSink`), and the page runs in
Debian's headless Chromium driven by selenium, as in tests/test_web.py."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import jsonschema
import numpy as np
import pytest
from conftest import cer_stream, records
from test_web import _driver, _need_browser, _sse_events

from stream.core.labels import COMPOUND
from stream.runtime.records import load_schema
from stream.sinks import web_assets

STREAM_IDS = ["door", "desk"]
VALIDATOR = jsonschema.Draft202012Validator(load_schema())


def _need_web() -> None:
    pytest.importorskip("uvicorn", reason="the web extra is in the test extra: pip install -e '.[test]'")
    try:
        web_assets.vendor_dir()
    except web_assets.AssetsMissing as exc:
        pytest.fail(f"{exc} (`make install` fetches it)")


@pytest.fixture(scope="module")
def run_records(sample, tmp_path_factory) -> list[dict]:
    """The records of one real run of the sample (as one analyzer under serve writes them)."""
    out = tmp_path_factory.mktemp("dashboard") / "run.jsonl"
    cer_stream("--video", str(sample), "--quiet", "--no-asr", "--no-clip", "--out", str(out), check=True)
    recs = records(out.read_text())
    kinds = [r["type"] for r in recs]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("window") >= 3 and "frames" in kinds, kinds
    return recs


def tag(record: dict, stream_id: str, **changes: Any) -> dict:
    """``record`` as the supervisor passes it on: ``stream_id`` right after ``type``."""
    out = {"type": record["type"], "stream_id": stream_id}
    out.update((k, v) for k, v in record.items() if k != "type")
    out.update(changes)
    return out


def sup(stream_id: str, event: str, **fields: Any) -> dict:
    return {"type": "supervisor", "stream_id": stream_id, "event": event, **fields, "wall_time": time.time()}


def caption_counts(ok: int = 0, errors: int = 0, wait_ms_p95: float | None = 480.0) -> dict[str, Any]:
    """One stream's line of a ``vlm_queue`` record."""
    return {
        "requests": ok + errors,
        "forwarded": ok + errors,
        "ok": ok,
        "errors": errors,
        "superseded": 0,
        "expired": 0,
        "wait_ms_p50": None if wait_ms_p95 is None else wait_ms_p95 / 4,
        "wait_ms_p95": wait_ms_p95,
        "wait_ms_max": wait_ms_p95,
        "last_service_ms": 900.0,
    }


def vlm_queue(queued: int, in_flight: int, concurrency: int = 1, **streams: dict) -> dict[str, Any]:
    """A ``vlm_queue`` record as the supervisor writes it (no stream id), valid by the schema."""
    rec = {
        "type": "vlm_queue",
        "endpoint": "http://gpu:8000/v1/chat/completions",
        "concurrency": concurrency,
        "queued": queued,
        "in_flight": in_flight,
        "max_queued": max(queued, 2),
        "streams": streams,
        "wall_time": round(time.time(), 3),
    }
    VALIDATOR.validate(rec)
    return rec


def of(recs: list[dict], kind: str) -> list[dict]:
    return [r for r in recs if r["type"] == kind]


def _get(url: str, host: str | None = None) -> tuple[int, Any, bytes]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, res.headers, res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _doc(d) -> dict[str, Any]:
    """/state.json as it is."""
    status, _, body = _get(f"{d.url}state.json")
    assert status == 200
    doc = json.loads(body)
    assert doc["compound_labels"] == list(COMPOUND)
    return doc


def _state(d) -> dict[str, dict]:
    return {s["stream_id"]: s for s in _doc(d)["streams"]}


def _wait_state(d, pred: Callable[[dict[str, dict]], bool], what: str, timeout: float = 10.0) -> dict[str, dict]:
    """/state.json once ``pred`` holds (records are applied on the server's loop, a moment after
    ``write`` returns)."""
    deadline = time.monotonic() + timeout
    while True:
        st = _state(d)
        if pred(st):
            return st
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s: {json.dumps(st)[:2000]}"
        time.sleep(0.02)


def _dashboard(ids=STREAM_IDS, **kw):
    _need_web()
    from stream.serve.dashboard import Dashboard

    return Dashboard("127.0.0.1", 0, stream_ids=ids, **kw)


# --------------------------------------------------------------------------- state and status
def test_status_follows_records_and_supervisor(run_records):
    d = _dashboard()
    try:
        assert d.url == f"http://127.0.0.1:{d.port}/" and d.port > 0
        st = _state(d)
        assert list(st) == STREAM_IDS
        assert all(s["status"] == "starting" and s["windows"] == [] and s["last"] is None for s in st.values())

        # analyzers started: still starting until their start record
        for i, sid in enumerate(STREAM_IDS):
            d.write(sup(sid, "started", pid=100 + i, restarts=0))
        st = _wait_state(d, lambda st: st["desk"]["pid"] == 101, "started")
        assert [st[sid]["status"] for sid in STREAM_IDS] == ["starting", "starting"]

        # door: a whole run (its frames records are not for the page)
        for rec in run_records:
            d.write(tag(rec, "door"))
        windows = of(run_records, "window")
        st = _wait_state(d, lambda st: st["door"]["end"] is not None, "door's end record")
        door = st["door"]
        assert door["status"] == "ended"
        assert door["counts"] == {"windows": len(windows), "warnings": len(of(run_records, "warning")), "gaps": 0}
        assert [w["index"] for w in door["windows"]] == [w["index"] for w in windows]
        assert [w["compound"] for w in door["windows"]] == [w["compound"] for w in windows]
        assert door["last"] == tag(windows[-1], "door")
        assert door["start"] == tag(run_records[0], "door") and door["end"]["reason"] == "eof"
        assert st["desk"]["status"] == "starting" and st["desk"]["counts"]["windows"] == 0

        # desk: running, loses its source (the analyzer's warning), is back (the gap record)
        d.write(tag(run_records[0], "desk"))
        d.write(tag(windows[0], "desk"))
        st = _wait_state(d, lambda st: st["desk"]["counts"]["windows"] == 1, "desk's window")
        assert st["desk"]["status"] == "running" and st["desk"]["last"]["label"] == windows[0]["label"]
        lost = "no data for 3 s from rtsp://viewer@cam/desk; reconnecting"
        d.write({"type": "warning", "stream_id": "desk", "message": lost, "stream": "video"})
        st = _wait_state(d, lambda st: st["desk"]["counts"]["warnings"] == 1, "the lost warning")
        assert st["desk"]["status"] == "reconnecting" and st["desk"]["warnings"][-1]["message"] == lost
        d.write({"type": "warning", "stream_id": "desk", "message": "modality audio: no audio for 4 s"})
        st = _wait_state(d, lambda st: st["desk"]["counts"]["warnings"] == 2, "another warning")
        assert st["desk"]["status"] == "reconnecting"  # only the gap record says it is back
        gap = {"start": 5.96, "end": 12.5, "reason": lost[: -len("; reconnecting")], "attempts": 2}
        d.write({"type": "gap", "stream_id": "desk", **gap, "windows_missing": [3, 4], "wall_time": time.time()})
        st = _wait_state(d, lambda st: st["desk"]["counts"]["gaps"] == 1, "the gap record")
        assert st["desk"]["status"] == "running" and st["desk"]["warnings"][-1]["type"] == "gap"

        # door's analyzer exits and is restarted
        d.write(sup("door", "exited", exit_code=-9, signal="SIGKILL", restarts=0, delay_s=0.5, message="killed"))
        st = _wait_state(d, lambda st: len(st["door"]["supervisor"]) == 2, "exited")
        assert st["door"]["status"] == "restarting" and st["door"]["supervisor"][-1]["signal"] == "SIGKILL"
        d.write(sup("door", "restarted", pid=102, restarts=1))
        st = _wait_state(d, lambda st: st["door"]["pid"] == 102, "restarted")
        assert st["door"]["status"] == "running" and st["door"]["restarts"] == 1

        # desk's analyzer keeps failing: given up
        d.write(sup("desk", "exited", exit_code=1, restarts=0, delay_s=0.5))
        st = _wait_state(d, lambda st: len(st["desk"]["supervisor"]) == 2, "desk exited")
        assert st["desk"]["status"] == "restarting"
        d.write(sup("desk", "gave_up", exit_code=1, restarts=0, message="cannot open rtsp://viewer@cam/desk"))
        st = _wait_state(d, lambda st: len(st["desk"]["supervisor"]) == 3, "desk gave up")
        assert st["desk"]["status"] == "gave up"
        d.write(sup("door", "stopped", exit_code=0, restarts=1))
        st = _wait_state(d, lambda st: len(st["door"]["supervisor"]) == 4, "door stopped")
        assert st["door"]["status"] == "ended"

        # left out, never raising: frames, no stream id, other types, junk, what JSON cannot hold
        before = st["door"]["counts"]
        d.write(tag(of(run_records, "frames")[0], "door"))
        d.write(windows[0])  # no stream_id
        d.write({"type": "vlm_queues", "stream_id": "door", "queued": 0})
        d.write("not a record")  # type: ignore[arg-type]
        d.write(tag(windows[0], "door", compound=object()))
        d.write(tag(run_records[0], "new-cam"))  # a stream nobody named: a card of its own
        d.write({"type": "warning", "stream_id": "door", "message": "the last one"})
        st = _wait_state(
            d, lambda st: "new-cam" in st and st["door"]["counts"]["warnings"] > before["warnings"], "last"
        )
        assert st["door"]["counts"] == {**before, "warnings": before["warnings"] + 1}
        assert list(st) == [*STREAM_IDS, "new-cam"] and st["new-cam"]["status"] == "running"
        assert _doc(d)["vlm_queue"] is None  # no vlm_queue record came
    finally:
        d.close()


# --------------------------------------------------------------------------- the shared VLM queue
def test_vlm_queue_newest_in_state_and_once_in_events():
    """``vlm_queue`` records (no stream id): the newest in /state.json and the ``state`` event,
    each later one once as a ``vlm_queue`` event; no card, no stream's counts change."""
    d = _dashboard()
    older = vlm_queue(queued=2, in_flight=1, door=caption_counts(ok=1))
    newer = vlm_queue(queued=0, in_flight=1, door=caption_counts(ok=4, errors=1), desk=caption_counts(ok=2))
    latest = vlm_queue(queued=1, in_flight=0, door=caption_counts(ok=5, errors=1))
    try:
        assert _doc(d)["vlm_queue"] is None
        d.write(older)
        d.write(newer)
        d.write({"type": "warning", "stream_id": "desk", "message": "after the queue"})  # applied after both
        st = _wait_state(d, lambda st: st["desk"]["counts"]["warnings"] == 1, "the warning after the queue")
        doc = _doc(d)
        assert doc["vlm_queue"] == newer
        assert list(st) == STREAM_IDS and st["door"]["counts"] == {"windows": 0, "warnings": 0, "gaps": 0}

        with urllib.request.urlopen(f"{d.url}events", timeout=10) as res:
            [(kind, state)] = _sse_events(res, 1)
            assert kind == "state" and state["vlm_queue"] == newer
            d.write(latest)
            d.write({"type": "warning", "stream_id": "door", "message": "sentinel"})
            got: list[tuple[str, dict]] = []
            while not got or got[-1][1].get("message") != "sentinel":
                got += _sse_events(res, 1)
        assert [k for k, _ in got] == ["vlm_queue", "warning"]  # once, and no stream event of its own
        assert got[0][1] == latest
        assert _doc(d)["vlm_queue"] == latest
    finally:
        d.close()


# --------------------------------------------------------------------------- events
def test_events_give_the_state_then_each_record_once(run_records):
    """A page connecting while records pour in gets each one once: in its state event or after."""
    d = _dashboard()
    windows = of(run_records, "window")
    n = 80

    def pour(first: int, last: int) -> None:
        for i in range(first, last):
            w = windows[i % len(windows)]
            d.write(tag(w, "door", index=i, start=2.0 * i, end=2.0 * i + 4))
            time.sleep(0.002)

    try:
        pour(0, 10)  # some before the page connects, the rest while it does
        _wait_state(d, lambda st: st["door"]["counts"]["windows"] == 10, "the first windows")
        writer = threading.Thread(target=pour, args=(10, n))
        writer.start()
        with urllib.request.urlopen(f"{d.url}events", timeout=10) as res:
            assert res.headers["Content-Type"].startswith("text/event-stream")
            [(kind, state)] = _sse_events(res, 1)
            assert kind == "state"
            writer.join()
            door = {s["stream_id"]: s for s in state["streams"]}["door"]
            seen = door["counts"]["windows"]
            assert 10 <= seen <= n
            assert len(door["windows"]) == min(seen, 31)  # the last minute: windows ending 60 s before the newest on
            d.write(tag(of(run_records, "frames")[0], "desk"))  # not for the page
            d.write(tag(windows[1], "desk"))
            d.write({"type": "warning", "stream_id": "desk", "message": "sentinel"})
            got: list[tuple[str, dict]] = []
            while not got or got[-1][1].get("message") != "sentinel":
                got += _sse_events(res, 1)
            got += _sse_events(res, 1)  # the sentinel's stream event
    finally:
        d.close()
    recs = [(k, e) for k, e in got if k != "stream"]
    assert [e["index"] for k, e in recs if e["stream_id"] == "door"] == list(range(seen, n))
    assert [(k, e["stream_id"]) for k, e in recs[n - seen :]] == [("window", "desk"), ("warning", "desk")]
    assert recs[-2][1] == tag(windows[1], "desk")
    # each record is followed by its stream's summary, counts included
    assert [k for k, _ in got] == ["window", "stream"] * (n - seen + 1) + ["warning", "stream"]
    summaries = [e for k, e in got if k == "stream"]
    assert [s["stream_id"] for s in summaries] == [e["stream_id"] for _, e in recs]
    assert [s["counts"]["windows"] for s in summaries[: n - seen]] == list(range(seen + 1, n + 1))
    assert summaries[-1]["counts"] == {"windows": 1, "warnings": 1, "gaps": 0}


# --------------------------------------------------------------------------- frames
def test_frames_are_proxied_from_the_streams_own_page():
    from skimage import data

    from stream.serve.dashboard import FRAME_TIMEOUT_S
    from stream.sinks.web import WebSink

    d = _dashboard()
    sink = WebSink("127.0.0.1", 0)
    silent = socket.socket()  # listens, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        assert _get(f"{d.url}streams/door/frame.jpg")[0] == 204  # no source yet
        astronaut = data.astronaut()
        sink.on_frame(
            SimpleNamespace(index=12, pts=0.48, image=astronaut), SimpleNamespace(found=True, box=(180.4, 40, 330, 230))
        )
        d.set_frame_source("door", f"{sink.url}frame.jpg")
        status, headers, body = _get(f"{d.url}streams/door/frame.jpg")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert (headers["X-Frame-Index"], headers["X-Frame-Time"], headers["X-Frame-Box"]) == (
            "12",
            "0.480",
            "180,40,330,230",
        )
        assert headers["Cache-Control"] == "no-store"
        direct = _get(f"{sink.url}frame.jpg")[2]
        assert body == direct and sink.jpeg_encodes == 1
        import cv2

        img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        assert img.shape == astronaut.shape and np.abs(img.astype(int) - astronaut).mean() < 6

        # the newest frame, without a face
        sink.on_frame(SimpleNamespace(index=13, pts=0.52, image=astronaut[::-1]), SimpleNamespace(found=False))
        status, headers, _ = _get(f"{d.url}streams/door/frame.jpg")
        assert status == 200 and headers["X-Frame-Index"] == "13" and headers["X-Frame-Box"] == ""

        # an analyzer that does not answer: 204 after the short timeout
        d.set_frame_source("desk", f"http://127.0.0.1:{silent.getsockname()[1]}/frame.jpg")
        t0 = time.monotonic()
        assert _get(f"{d.url}streams/desk/frame.jpg")[0] == 204
        assert FRAME_TIMEOUT_S * 0.9 <= time.monotonic() - t0 < FRAME_TIMEOUT_S + 2
        st = _state(d)
        assert st["door"]["frame_source"] and st["desk"]["frame_source"]

        # the analyzer is down
        d.set_frame_source("door", None)
        assert _get(f"{d.url}streams/door/frame.jpg")[0] == 204
        assert not _state(d)["door"]["frame_source"]
        assert _get(f"{d.url}streams/nobody/frame.jpg")[0] == 404
    finally:
        silent.close()
        sink.close()
        d.close()


# --------------------------------------------------------------------------- the page, security, errors
def test_page_files_and_host_guard():
    d = _dashboard()
    url = d.url
    try:
        status, headers, body = _get(url)
        assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
        for src in (b"/static/dashboard.js", b"/static/dashboard.css", b"/static/vendor/uPlot.iife.min.js"):
            assert src in body
        # the files it shares with the per-stream page: linked before its own
        assert body.index(b'href="/static/base.css"') < body.index(b'href="/static/dashboard.css"')
        assert body.index(b'src="/static/frame.js"') < body.index(b'src="/static/dashboard.js"')
        status, headers, js = _get(f"{url}static/dashboard.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript") and b"window.dash" in js
        assert b"innerHTML" not in js
        status, headers, shared = _get(f"{url}static/frame.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript") and b"window.cerFrame" in shared
        assert b"innerHTML" not in shared
        status, headers, css = _get(f"{url}static/base.css")
        assert status == 200 and headers["Content-Type"].startswith("text/css") and b"--box: #ff00ff" in css
        assert _get(f"{url}static/app.js")[0] == 404  # the per-stream page's script is not this page's
        status, _, vendor = _get(f"{url}static/vendor/uPlot.iife.min.js")
        assert status == 200 and len(vendor) > 40_000
        assert _get(url, host=f"localhost:{d.port}")[0] == 200
        for path in ("", "state.json", "events", "streams/door/frame.jpg"):
            status, _, body = _get(f"{url}{path}", host="evil.example")
            assert status == 421, (path, status)
    finally:
        d.close()
    d.close()  # idempotent
    d.write(sup("door", "stopped"))  # after close: nothing, no error
    d.set_frame_source("door", None)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_errors_are_one_line(tmp_path, monkeypatch):
    _need_web()
    from stream.serve.dashboard import Dashboard, DashboardError

    for host in ("0.0.0.0", "192.168.1.10"):
        with pytest.raises(DashboardError) as info:
            Dashboard(host, 8080, stream_ids=["a"])
        msg = str(info.value)
        assert "\n" not in msg and f"{host}:8080" in msg and "dashboard_public" in msg, msg

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(DashboardError) as info:
            Dashboard("127.0.0.1", port, stream_ids=["a"])
        msg = str(info.value)
        assert "\n" not in msg and f"127.0.0.1:{port}" in msg and "in use" in msg, msg

    monkeypatch.delenv(web_assets.VENDOR_ENV, raising=False)
    monkeypatch.setenv("CER_STREAM_CACHE", str(tmp_path))
    with pytest.raises(DashboardError) as info:
        Dashboard("127.0.0.1", 0, stream_ids=["a"])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("the dashboard needs") and web_assets.FETCH_COMMAND in msg, msg


# --------------------------------------------------------------------------- the page in Chromium
def test_dashboard_in_headless_chromium(run_records):
    """Two streams fed over time: both cards show a compound label and a growing chart, the
    stream with a frame source shows its frames (at most about 2 requests a second), the other
    none, and a supervisor ``exited`` record turns a card's badge to ``restarting``."""
    _need_browser()
    from skimage import data

    from stream.serve.dashboard import Dashboard
    from stream.sinks.web import WebSink

    astronaut = data.astronaut()
    box = (180, 40, 330, 230)
    ids = ["cam-a", "cam-b"]
    windows = of(run_records, "window")
    driver = _driver()
    sink = WebSink("127.0.0.1", 0)
    d = Dashboard("127.0.0.1", 0, stream_ids=ids)
    requests: list[float] = []
    real_jpeg = sink.jpeg

    def counted_jpeg():
        requests.append(time.monotonic())
        return real_jpeg()

    sink.jpeg = counted_jpeg  # type: ignore[method-assign]
    stop = threading.Event()

    def feed() -> None:
        for sid in ids:
            d.write(sup(sid, "started", pid=4000 + len(sid), restarts=0))
            d.write(tag(run_records[0], sid))
        for i in range(24):
            if i % 3 == 0:
                sink.on_frame(
                    SimpleNamespace(index=i, pts=0.2 * i, image=astronaut), SimpleNamespace(found=True, box=box)
                )
            for sid in ids:
                d.write(tag(windows[i % len(windows)], sid, index=i, start=2.0 * i, end=2.0 * i + 4))
            if stop.wait(0.2):  # pacing: a live stream's windows come one by one
                return

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        driver.get(d.url)
        srcs = driver.execute_script(
            "return [...document.querySelectorAll('script[src], link[rel=stylesheet]')].map(e => e.src || e.href)"
        )
        assert srcs and all(s.startswith(d.url) for s in srcs), srcs
        deadline = time.monotonic() + 20
        while not driver.execute_script("return !!(window.dash && window.dash.connected)"):
            assert time.monotonic() < deadline, "the page got no state event"
            time.sleep(0.05)
        cards = driver.execute_script(
            "return [...document.querySelectorAll('article.card')].map(c => [c.dataset.stream,"
            " c.querySelector('.badge').textContent])"
        )
        assert cards == [["cam-a", "starting"], ["cam-b", "starting"]]
        vlm_shown = (
            "const q = document.getElementById('vlm-queue'); return [q.getClientRects().length > 0, q.textContent,"
            " ...['cam-a', 'cam-b'].map(id => { const c = window.dash.streams[id].card.querySelector('dd.vlm');"
            " return [c.getClientRects().length > 0, c.textContent] })]"
        )
        assert driver.execute_script(vlm_shown) == [False, "", [False, ""], [False, ""]]  # no VLM queue yet
        d.set_frame_source("cam-a", f"{sink.url}frame.jpg")
        t0 = time.monotonic()
        feeder.start()

        lengths: dict[str, list[int]] = {sid: [] for sid in ids}
        state: dict = {}
        read = (
            "const out = {}; for (const id of ['cam-a', 'cam-b']) { const s = window.dash.streams[id];"
            " out[id] = {n: s.chartLength(), updates: s.updates, label: s.label, status: s.status,"
            " frames: s.framesDrawn, box: s.lastBox, shown: s.card.querySelector('.label').textContent,"
            " badge: s.card.querySelector('.badge').textContent, top3: s.card.querySelectorAll('.top3 tr').length,"
            " info: s.card.querySelector('.frame-info').textContent} } return out"
        )
        deadline = time.monotonic() + 30
        while True:
            state = driver.execute_script(read)
            for sid in ids:
                if not lengths[sid] or state[sid]["n"] != lengths[sid][-1]:
                    lengths[sid].append(state[sid]["n"])
            grew = {sid: sum(1 for a, b in zip(v, v[1:]) if b > a) for sid, v in lengths.items()}
            if all(g >= 3 for g in grew.values()) and state["cam-a"]["frames"] >= 2 and state["cam-a"]["box"]:
                break
            assert time.monotonic() < deadline, f"{lengths} {state}"
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        for sid in ids:
            s = state[sid]
            assert s["label"] in COMPOUND and s["shown"] == s["label"], s
            assert s["status"] == "running" and s["badge"] == "running" and s["top3"] == 3, s
            assert s["n"] == s["updates"] >= 3, s  # every window so far is in the last minute
        assert state["cam-a"]["box"][:4] == list(box)
        assert state["cam-b"]["frames"] == 0 and state["cam-b"]["info"] == "no frame"  # no frame source
        assert requests and len(requests) <= 2 * elapsed + 3, (len(requests), elapsed)

        # the supervisor says cam-b's analyzer exited
        d.write(sup("cam-b", "exited", exit_code=-9, signal="SIGKILL", restarts=0, delay_s=0.5, message="killed"))
        deadline = time.monotonic() + 10
        while True:
            got = driver.execute_script(
                "const b = window.dash.streams['cam-b']; return [b.status,"
                " b.card.querySelector('.badge').textContent, b.card.querySelector('.note').textContent,"
                " window.dash.streams['cam-a'].status, document.getElementById('total-restarting').textContent]"
            )
            if got[0] == "restarting":
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
        assert got[1] == "restarting" and "SIGKILL" in got[2] and "killed" in got[2], got
        assert got[3] == "running" and got[4] == "1", got
        assert driver.execute_script("return document.getElementById('total-streams').textContent") == "2"

        # the shared VLM queue: in the header, and on the card of the stream it has counts of
        d.write(vlm_queue(queued=3, in_flight=1, **{"cam-a": caption_counts(ok=4, errors=1, wait_ms_p95=480.4)}))
        deadline = time.monotonic() + 10
        while not driver.execute_script("return window.dash.vlmUpdates"):
            assert time.monotonic() < deadline, "the page got no vlm_queue event"
            time.sleep(0.05)
        assert driver.execute_script(vlm_shown) == [
            True,
            "VLM queue: 3 waiting, 1 at the endpoint (of 1)",
            [True, "4 ok \u00b7 1 errors \u00b7 wait p95 480 ms"],
            [False, ""],  # cam-b asked the VLM nothing
        ]
        assert driver.execute_script("return [window.dash.vlm.queued, window.dash.vlmUpdates]") == [3, 1]
        shown = driver.execute_script(vlm_shown)
        driver.refresh()  # a page opened now gets the queue in its state event
        deadline = time.monotonic() + 20
        while not driver.execute_script("return !!(window.dash && window.dash.connected)"):
            assert time.monotonic() < deadline, "the reloaded page got no state event"
            time.sleep(0.05)
        assert driver.execute_script(vlm_shown) == shown
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join(5)
        driver.quit()
        d.close()
        sink.close()


def test_a_public_dashboard_answers_only_with_its_token(monkeypatch, capsys):
    _need_web()
    from stream.serve.dashboard import Dashboard
    from stream.sinks.web import TOKEN_ENV, announce_token

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    d = Dashboard("127.0.0.1", 0, stream_ids=["a"], public=True)
    try:
        for path in ("", "state.json", "streams/a/frame.jpg", "static/dashboard.js"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(d.url + path, timeout=5)
            assert info.value.code == 401, path
        req = urllib.request.Request(f"{d.url}state.json", headers={"Authorization": f"Bearer {d.token}"})
        with urllib.request.urlopen(req, timeout=5) as res:
            assert res.status == 200 and [s["stream_id"] for s in json.load(res)["streams"]] == ["a"]
        announce_token(d, "the dashboard")
        err = capsys.readouterr().err
        assert err.count(d.login_url) == 1 and d.token in d.login_url  # shown once, where asked
    finally:
        d.close()
