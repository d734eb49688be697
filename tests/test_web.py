"""``--serve``: the live page, in a real browser (Debian's headless Chromium driven by selenium
through chromium-driver) during a ``--realtime`` run of the sample, plus its one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cer_stream, free_port

from stream.core.labels import COMPOUND
from stream.sinks import web_assets
from stream.sinks.web import is_loopback, parse_bind

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
BOX_RGB = (255, 0, 255)  # frame.js BOX_COLOUR


def _one_line_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cer-stream: error: ")
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- addresses, errors
def test_parse_bind_and_loopback():
    assert parse_bind("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_bind("[::1]:9000") == ("::1", 9000)
    assert parse_bind("8081") == ("127.0.0.1", 8081)
    assert parse_bind("localhost:0") == ("localhost", 0)
    for bad in ("127.0.0.1:http", "::1:80", ":8080", "127.0.0.1:70000"):
        with pytest.raises(ValueError):
            parse_bind(bad)
    assert is_loopback("127.0.0.1") and is_loopback("127.3.2.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("example.org")


def test_non_loopback_bind_needs_serve_public(sample):
    line = _one_line_error(cer_stream("--video", str(sample), "--serve", "0.0.0.0:8080"), "--serve-public")
    assert "0.0.0.0:8080" in line


def test_serve_public_shows_its_token_once(sample, tmp_path, monkeypatch, capsys):
    """--serve-public on a non-loopback address: the page asks for a token, and stderr says once
    where to open it (the server is a stub here, so nothing listens beyond loopback; the run then
    stops at an unwritable output)."""
    import stream.sinks.web as web
    from stream.cli.main import run_stream

    class Stub(web.Sink):
        def __init__(self, host: str, port: int, *, public: bool = False) -> None:
            assert public
            self.port, self.url = port, f"http://{web.url_host(host)}:{port}/"
            self.token = web.page_token()
            self.login_url = f"{self.url}?token={self.token}"

        def write(self, record: dict) -> None:  # never reached: the run stops at its bad output
            raise AssertionError(record)

    monkeypatch.setattr(web, "WebSink", Stub)
    monkeypatch.delenv(web.TOKEN_ENV, raising=False)
    code = run_stream(
        [
            "--video",
            str(sample),
            "--serve",
            "0.0.0.0:8080",
            "--serve-public",
            "--dump-features",
            str(tmp_path / "no" / "x"),
        ]
    )
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err[0] == "cer-stream: serving http://0.0.0.0:8080/"
    assert err[1].startswith("cer-stream: --serve 0.0.0.0:8080 is reachable from other machines and asks for a token")
    assert "http://0.0.0.0:8080/?token=" in err[1] and len(err[1].split("?token=")[1].split()[0]) >= 32
    assert err[2].startswith("cer-stream: error: ") and "token" not in err[2]


def test_port_in_use_is_one_line(sample):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        _one_line_error(
            cer_stream("--video", str(sample), "--serve", f"127.0.0.1:{port}"), f"127.0.0.1:{port}", "in use"
        )


def test_bad_address_is_one_line(sample):
    _one_line_error(cer_stream("--video", str(sample), "--serve", "127.0.0.1:http"), "port must be a number")


def test_missing_chart_library_names_the_fetch_command(sample, tmp_path, monkeypatch):
    monkeypatch.delenv(web_assets.VENDOR_ENV, raising=False)
    monkeypatch.setenv("CER_STREAM_CACHE", str(tmp_path))
    proc = cer_stream("--video", str(sample), "--serve", "127.0.0.1:0")
    _one_line_error(proc, web_assets.FETCH_COMMAND, web_assets.NPM_SPEC)


def test_models_fetch_web_chart():
    """`cer-stream models fetch web-chart` (as `make install` runs it) prints the folder it filled."""
    proc = cer_stream("models", "fetch", "web-chart", timeout=300)
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.strip())
    assert folder == web_assets.cache_folder() and sorted(p.name for p in folder.iterdir()) == sorted(web_assets.FILES)


def test_fetch_checks_the_pinned_integrity(tmp_path):
    import io
    import tarfile

    fake = tmp_path / "uplot-1.6.32.tgz"
    with tarfile.open(fake, "w:gz") as tar:
        data = b"console.log('not uPlot')"
        info = tarfile.TarInfo("package/dist/uPlot.iife.min.js")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(web_assets.FetchError, match="pinned integrity"):
        web_assets.fetch(tmp_path / "cache", tarball=fake)
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- the server in-process
def _sse_events(res, count: int) -> list[tuple[str, dict]]:
    """The next ``count`` events of a server-sent-event stream (comments skipped)."""
    out: list[tuple[str, dict]] = []
    kind, data = "", ""
    while len(out) < count:
        line = res.readline().decode()
        assert line, "the event stream ended"
        if line.startswith("event: "):
            kind = line[7:].strip()
        elif line.startswith("data: "):
            data = line[6:].strip()
        elif line == "\n" and kind:
            out.append((kind, json.loads(data)))
            kind, data = "", ""
    return out


def _window(index: int, label: str = "Happily Surprised") -> dict:
    compound = {name: (0.9 if name == label else 0.1 / 6) for name in COMPOUND}
    return {
        "type": "window",
        "index": index,
        "start": 2.0 * index,
        "end": 2.0 * index + 4,
        "label": label,
        "compound": compound,
    }


def test_sink_state_events_frame_and_host_guard():
    """In-process: the history a page gets at once (last minute only), events as they come, the
    JPEG encoded once per frame, requests with a foreign Host refused."""
    pytest.importorskip("uvicorn", reason="the web extra is in the test extra: pip install -e '.[test]'")
    try:
        web_assets.vendor_dir()
    except web_assets.AssetsMissing as exc:
        pytest.fail(f"{exc} (`make install` fetches it)")
    from types import SimpleNamespace

    from stream.sinks.web import HISTORY_S, WebSink

    sink = WebSink("127.0.0.1", 0)
    try:
        url = sink.url
        assert url == f"http://127.0.0.1:{sink.port}/"
        with urllib.request.urlopen(f"{url}frame.jpg", timeout=5) as res:
            assert res.status == 204  # no frame yet
        sink.write({"type": "start", "source": "video", "input": "clip.mp4"})
        for i in range(40):  # windows ending at 4 ... 82 s
            sink.write(_window(i))
        sink.write({"type": "frames", "frame_index": [1]})  # not for the page
        image = np.zeros((120, 160, 3), np.uint8)
        image[:, :, 0] = 200
        sink.on_frame(
            SimpleNamespace(index=7, pts=0.28, image=image), SimpleNamespace(found=True, box=(10, 20, 60, 90))
        )
        deadline = time.monotonic() + 5
        while True:
            with urllib.request.urlopen(f"{url}state.json", timeout=5) as res:
                snap = json.load(res)
            if snap["last"] and snap["last"]["index"] == 39 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        ends = [w["end"] for w in snap["windows"]]
        assert ends[-1] == 82.0 and ends[0] >= 82.0 - HISTORY_S and len(ends) == int(HISTORY_S / 2) + 1
        assert snap["start"]["input"] == "clip.mp4" and snap["compound_labels"] == list(COMPOUND)
        assert snap["frame"] == {
            "index": 7,
            "time": 0.28,
            "width": 160,
            "height": 120,
            "box": [10, 20, 60, 90],
            "found": True,
        }

        for _ in range(2):
            with urllib.request.urlopen(f"{url}frame.jpg", timeout=5) as res:
                jpeg = res.read()
                assert res.headers["X-Frame-Box"] == "10,20,60,90" and res.headers["X-Frame-Index"] == "7"
        assert sink.jpeg_encodes == 1
        import cv2

        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (120, 160, 3) and abs(int(img[60, 80, 2]) - 200) < 8  # red stays red (RGB in, BGR out)

        with urllib.request.urlopen(f"{url}events", timeout=5) as res:
            assert res.headers["Content-Type"].startswith("text/event-stream")
            (kind, first), (kind2, frame) = _sse_events(res, 2)
            assert kind == "state" and first["last"]["index"] == 39
            assert kind2 == "frame" and frame["index"] == 7
            sink.write(_window(40, "Sadly Angry"))
            sink.write({"type": "warning", "message": "something"})
            got = _sse_events(res, 2)
            assert [k for k, _ in got] == ["window", "warning"] and got[0][1]["label"] == "Sadly Angry"

        req = urllib.request.Request(url, headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 421
        with urllib.request.urlopen(url, timeout=5) as res:
            assert "default-src 'none'" in res.headers["Content-Security-Policy"]
            page = res.read()
            assert b'src="/static/vendor/uPlot.iife.min.js"' in page
        # the files it shares with the dashboard: linked before its own, served here too
        assert page.index(b'href="/static/base.css"') < page.index(b'href="/static/style.css"')
        assert page.index(b'src="/static/frame.js"') < page.index(b'src="/static/app.js"')
        for name, kind, needle in (
            ("frame.js", "text/javascript", b"window.cerFrame"),
            ("base.css", "text/css", b":root"),
        ):
            with urllib.request.urlopen(f"{url}static/{name}", timeout=5) as res:
                assert res.headers["Content-Type"].startswith(kind) and needle in res.read(), name
        with urllib.request.urlopen(f"{url}static/vendor/uPlot.iife.min.js", timeout=5) as res:
            assert len(res.read()) > 40_000
    finally:
        sink.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


# --------------------------------------------------------------------------- the page in Chromium
def _need_browser() -> None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "headless Chromium is not installed (Debian packages chromium and chromium-driver, "
            "tests/DEBIAN_PACKAGES.txt; `make test` installs them when run as root)"
        )
    pytest.importorskip("selenium", reason="selenium is in the test extra: pip install -e '.[test]'")
    try:
        web_assets.vendor_dir()
    except web_assets.AssetsMissing as exc:
        pytest.fail(f"{exc} (`make install` fetches it)")


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
    ):
        opts.add_argument(arg)
    opts.add_argument("--force-device-scale-factor=1")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def _serving_run(port: int, *args: str) -> subprocess.Popen:
    """``cer-stream ARGS --serve 127.0.0.1:PORT`` in a subprocess, its stderr piped (for _Stderr)."""
    return subprocess.Popen(
        [sys.executable, "-m", "stream.cli", *args, "--serve", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )


def _no_script_errors(driver) -> None:
    """No script error and no blocked resource (the Content-Security-Policy would say so here)."""
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def _close(driver, proc: subprocess.Popen) -> None:
    """Quit the browser, then end the run (SIGTERM; SIGKILL after 15 s)."""
    driver.quit()
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _Stderr:
    """Reads a process's stderr on a thread; ``wait_for(text)``."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                assert left > 0, f"no {text!r} on stderr within {timeout} s: {''.join(self.lines)}"
                self._cond.wait(left)


def _box_pixels(png: Path, rect: dict, box: list[float]) -> tuple[int, int]:
    """(box-coloured pixels inside the canvas, of them on the drawn box's outline)."""
    import cv2

    shot = cv2.imread(str(png), cv2.IMREAD_COLOR)[:, :, ::-1].astype(int)
    x, y, w, h = (int(round(rect[k])) for k in ("x", "y", "width", "height"))
    area = shot[y : y + h, x : x + w]
    r, g, b = area[..., 0], area[..., 1], area[..., 2]
    mask = (r > 225) & (g < 40) & (b > 225)
    sx, sy = w / rect["cw"], h / rect["ch"]  # canvas pixels -> screen pixels
    x0, y0, x1, y1, lw = box
    pad = lw * max(sx, sy) + 2
    ys, xs = np.nonzero(mask)
    on_top = (np.abs(ys - y0 * sy) <= pad) & (xs >= x0 * sx - pad) & (xs <= x1 * sx + pad)
    on_left = (np.abs(xs - x0 * sx) <= pad) & (ys >= y0 * sy - pad) & (ys <= y1 * sy + pad)
    on_right = (np.abs(xs - x1 * sx) <= pad) & (ys >= y0 * sy - pad) & (ys <= y1 * sy + pad)
    on_bottom = (np.abs(ys - y1 * sy) <= pad) & (xs >= x0 * sx - pad) & (xs <= x1 * sx + pad)
    edges = [int(m.sum()) for m in (on_top, on_left, on_right, on_bottom)]
    return int(mask.sum()), min(edges)


def test_live_page_in_headless_chromium(sample, tmp_path):
    """During a --realtime run the page shows the label and the chart updating at least three
    times; the screenshot has the face box drawn over the frame; /frame.jpg is the frame."""
    _need_browser()
    port = free_port()
    driver = _driver()  # the browser first: the page opens as soon as the server listens
    proc = _serving_run(port, "--video", str(sample), "--realtime", "--no-asr", "--no-clip", "--quiet")
    err = _Stderr(proc)
    try:
        line = err.wait_for("serving http://", timeout=60)
        url = f"http://127.0.0.1:{port}/"
        assert line.strip() == f"cer-stream: serving {url}"
        driver.get(url)
        # the page loads nothing from elsewhere: its scripts and stylesheets are this server's
        srcs = driver.execute_script(
            "return [...document.querySelectorAll('script[src], link[rel=stylesheet]')].map(e => e.src || e.href)"
        )
        assert srcs and all(s.startswith(url) for s in srcs), srcs
        assert driver.execute_script("return typeof uPlot") == "function"

        lengths: list[int] = []
        labels: set[str] = set()
        state: dict = {}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            state = driver.execute_script(
                "const c = window.cer; return {n: c.chartLength(), updates: c.updates, frames: c.framesDrawn,"
                " label: document.getElementById('label').textContent, box: c.lastBox,"
                " counter: document.getElementById('updates').textContent}"
            )
            if not lengths or state["n"] != lengths[-1]:
                lengths.append(state["n"])
            if state["label"] in COMPOUND:
                labels.add(state["label"])
            grew = sum(1 for a, b in zip(lengths, lengths[1:]) if b > a)
            if grew >= 3 and state["frames"] > 0 and state["box"]:
                break
            assert proc.poll() is None or grew >= 3, f"the run ended first: {lengths} {''.join(err.lines)}"
            time.sleep(0.1)
        grew = sum(1 for a, b in zip(lengths, lengths[1:]) if b > a)
        assert grew >= 3, f"the chart's data grew {grew} times: {lengths}; {state}"
        assert labels, state
        assert int(state["counter"]) == state["updates"] >= 3

        # the newest frame, as the page got it
        with urllib.request.urlopen(f"{url}frame.jpg", timeout=5) as res:
            jpeg = res.read()
            box_header = res.headers["X-Frame-Box"]
        import cv2

        assert jpeg[:2] == b"\xff\xd8"
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (480, 640, 3)  # the sample's size (under --max-side)
        x0, y0, x1, y1 = (int(v) for v in box_header.split(","))
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480
        with urllib.request.urlopen(f"{url}state.json", timeout=5) as res:
            snap = json.load(res)
        assert snap["start"]["input"].endswith("astronaut.mp4") and len(snap["windows"]) >= 3

        # the screenshot: the box is drawn over the frame, in its colour, on its outline
        rect = driver.execute_script(
            "const c = document.getElementById('frame'); const r = c.getBoundingClientRect();"
            " return {x: r.left, y: r.top, width: r.width, height: r.height, cw: c.width, ch: c.height}"
        )
        png = tmp_path / "live-page.png"
        for _ in range(10):  # a screenshot taken while no new frame was drawn
            before = driver.execute_script("return [window.cer.framesDrawn, window.cer.lastBox]")
            assert driver.save_screenshot(str(png))
            if driver.execute_script("return [window.cer.framesDrawn, window.cer.lastBox]") == before:
                break
        box = before[1]
        assert (rect["cw"], rect["ch"]) == (640, 480)
        _no_script_errors(driver)
        total, per_edge = _box_pixels(png, rect, box)
        side = min(box[2] - box[0], box[3] - box[1])
        assert per_edge >= side * 0.5, (total, per_edge, box, rect)
        assert total >= 4 * side, (total, box)
    finally:
        _close(driver, proc)
    assert proc.returncode == 0, "".join(err.lines)


def test_live_page_of_an_audio_only_source(sample, tmp_path):
    """The sample's sound alone at media speed (`--audio --realtime`): the page says there is no
    picture, draws no frame, and shows the voice and the words (the audio and text modalities
    present, the text with its language and what was said)."""
    _need_browser()
    port = free_port()
    driver = _driver()
    proc = _serving_run(port, "--audio", str(sample), "--realtime")
    err = _Stderr(proc)
    rows: dict = {}
    try:
        err.wait_for("serving http://", timeout=60)
        driver.get(f"http://127.0.0.1:{port}/")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = driver.execute_script(
                "const out = {}; for (const tr of document.querySelectorAll('#modalities tr')) {"
                " const c = [...tr.cells].map(td => td.textContent); if (c.length === 4) out[c[0]] = c; }"
                " return out"
            )
            if all(rows.get(name, ["", "no"])[1] == "yes" for name in ("audio", "text")):
                break
            assert proc.poll() is None, f"the run ended first: {rows} {''.join(err.lines)}"
            time.sleep(0.2)
        assert rows["audio"][1] == "yes" and rows["text"][1] == "yes", rows
        assert rows["face"][1] == "no", rows
        assert "en" in rows["text"][3] and "\u201c" in rows["text"][3], rows["text"]  # language, what was said
        page = driver.execute_script(
            "return {info: document.getElementById('frame-info').textContent,"
            " hidden: document.getElementById('frame').hidden, frames: window.cer.framesDrawn}"
        )
        assert page == {"info": "audio only: no picture (the voice and the words decide)", "hidden": True, "frames": 0}
        _no_script_errors(driver)
    finally:
        _close(driver, proc)
    assert proc.returncode == 0, "".join(err.lines)


def test_a_public_page_answers_only_with_its_token(monkeypatch):
    """--serve-public: the page, its files, state, events and frames need the token (made up, or
    from $CER_STREAM_SERVE_TOKEN); the printed address sets a cookie and drops the token from the
    address bar; a script sends it as a bearer token."""
    pytest.importorskip("uvicorn", reason="the web extra is in the test extra: pip install -e '.[test]'")
    from stream.sinks.web import TOKEN_COOKIE, TOKEN_ENV, SinkError, WebSink

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)

    def status(url: str, **headers: str) -> tuple[int, dict]:
        try:
            with opener.open(urllib.request.Request(url, headers=headers), timeout=5) as res:
                return res.status, dict(res.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers)

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    sink = WebSink("127.0.0.1", 0, public=True)
    try:
        token = sink.token
        assert token and len(token) >= 32 and sink.login_url == f"{sink.url}?token={token}"
        for path in (
            "",
            "index.html",
            "static/app.js",
            "static/vendor/uPlot.min.css",
            "state.json",
            "events",
            "frame.jpg",
        ):
            assert status(sink.url + path)[0] == 401, path
            assert status(f"{sink.url}{path}?token=wrong-{token}")[0] == 401, path
            assert status(sink.url + path, Authorization=f"Bearer {token[:-1]}")[0] == 401, path
            assert status(sink.url + path, Cookie=f"{TOKEN_COOKIE}=x{token}")[0] == 401, path
        code, headers = status(sink.login_url)
        assert code == 303 and headers["location"] == "/"
        cookie = headers["set-cookie"]
        assert cookie.startswith(f"{TOKEN_COOKIE}={token};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert status(sink.url, Cookie=f"{TOKEN_COOKIE}={token}")[0] == 200
        assert status(f"{sink.url}state.json", Authorization=f"Bearer {token}")[0] == 200
        assert status(f"{sink.url}frame.jpg", Cookie=f"{TOKEN_COOKIE}={token}")[0] == 204
    finally:
        sink.close()
    # a token of one's own, from the environment; one too short to guess at is refused
    monkeypatch.setenv(TOKEN_ENV, "my-own-page-token-1234")
    sink = WebSink("127.0.0.1", 0, public=True)
    try:
        assert sink.token == "my-own-page-token-1234"
        assert status(f"{sink.url}state.json", Authorization="Bearer my-own-page-token-1234")[0] == 200
    finally:
        sink.close()
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(SinkError, match=TOKEN_ENV):
        WebSink("127.0.0.1", 0, public=True)
    # a loopback page without --serve-public has no token (as before)
    sink = WebSink("127.0.0.1", 0)
    try:
        assert sink.token is None and sink.login_url == sink.url and status(sink.url)[0] == 200
    finally:
        sink.close()
