"""``--serve HOST:PORT``: a live page of the run (Starlette app on uvicorn, in a thread).

The page (``stream/web/``: ``index.html``, ``app.js``, ``style.css``) shows the newest analysed
frame with the face box and the compound label drawn over it on a canvas, the compound
probabilities of the last minute as a chart (uPlot, from npm, fetched at install time:
:mod:`stream.sinks.web_assets`), each modality's presence and fusion weight, the transcript and
the scene caption, drops, latency and warnings.

:class:`WebSink` is both a sink (``write(record)``, on its own writer thread behind a bounded
queue, see :mod:`stream.sinks.outputs`; never lossless: a live page never holds a run back)
and an observer (``on_frame(frame, face)``, on the analysis thread: it only keeps a reference to
the newest frame and its box; the JPEG is encoded when asked for, at most once per frame).

Routes: ``/`` (the page), ``/static/...`` (its script and stylesheet), ``/static/vendor/...``
(uPlot), ``/events`` (server-sent events: one ``state`` event with the run so far, the last
:data:`HISTORY_S` seconds of windows included, then ``start``, ``window``, ``warning``, ``gap``,
``end`` records as they come and ``frame`` events, at most :data:`FRAME_EVENT_HZ` a second, with
the newest frame's index, time and box), ``/frame.jpg`` (the newest analysed frame; its index,
time and face box in ``X-Frame-Index``, ``X-Frame-Time``, ``X-Frame-Box``), ``/state.json``.

Records are applied to the server's state on the event loop's thread (handed over with
``call_soon_threadsafe``), so a page that connects gets each record exactly once: in its
``state`` event or after it.  Bound to loopback by default; another address needs
``public=True`` (``--serve-public``).  A loopback server answers only requests whose ``Host``
is a loopback name (a web page elsewhere cannot reach it through DNS rebinding).  The page
loads nothing from other hosts (its ``Content-Security-Policy`` says so).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.core.labels import BASIC, COMPOUND
from stream.sinks.outputs import Sink, SinkError, dumps

log = logging.getLogger("cer_stream.web")

#: Seconds of window history the server keeps (and a page that connects gets at once).
HISTORY_S = 60.0
#: Most ``frame`` events a second to each page.
FRAME_EVENT_HZ = 5.0
#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE_S = 10.0
#: Events queued for one page before it counts as gone (its browser reconnects and starts over).
CLIENT_QUEUE = 256
#: Warnings (and gaps) the server keeps for a page that connects.
WARNINGS_KEPT = 50
JPEG_QUALITY = 85
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
#: The page's own files, served under /static/.
PAGE_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
VENDOR_FILES = {"uPlot.iife.min.js": "text/javascript; charset=utf-8", "uPlot.min.css": "text/css; charset=utf-8"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
_END = object()


# --------------------------------------------------------------------------- address
def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``PORT`` (loopback) -> (host, port); ``ValueError``
    (one line) otherwise.  Port 0 takes a free port."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"--serve {text}: write an IPv6 address in brackets, e.g. [::1]:8080")
    if not host:
        raise ValueError(f"--serve {text}: give HOST:PORT, e.g. 127.0.0.1:8080")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--serve {text}: the port must be a number, e.g. 127.0.0.1:8080") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--serve {text}: the port must be 0-65535")
    return host, port


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SinkError(f"cannot serve on {url_host(host)}:{port}: {exc.strerror or exc}") from None
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(64)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    why = (last.strerror if last is not None else None) or str(last)
    raise SinkError(f"cannot serve on {url_host(host)}:{port}: {why}")


def _host_allowed(header: str, allowed: set[str]) -> bool:
    """The ``Host`` header's name (port and IPv6 brackets off) is one of ``allowed`` (or any
    127.0.0.0/8 address)."""
    name = header.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    else:
        name = name.partition(":")[0]
    return name in allowed or is_loopback(name)


# --------------------------------------------------------------------------- state
@dataclass
class _Frame:
    index: int
    pts: float
    image: Any  # H x W x 3 uint8 RGB
    box: tuple[int, ...] | None  # x0, y0, x1, y1 in the frame's pixels
    found: bool

    def meta(self) -> dict[str, Any]:
        h, w = self.image.shape[:2]
        return {
            "index": self.index,
            "time": round(float(self.pts), 3),
            "width": int(w),
            "height": int(h),
            "box": list(self.box) if self.box is not None else None,
            "found": self.found,
        }


def _event(kind: str, data: str) -> str:
    return f"event: {kind}\ndata: {data}\n\n"


def _summary(record: dict) -> dict[str, Any]:
    """A window record's point on the chart."""
    return {
        "index": record.get("index"),
        "start": record.get("start"),
        "end": record.get("end"),
        "wall_time": record.get("wall_time"),
        "label": record.get("label"),
        "compound": record.get("compound"),
    }


class _State:
    """The run as a page needs it; touched on the event loop's thread only."""

    def __init__(self) -> None:
        self.start: dict | None = None
        self.windows: collections.deque[dict] = collections.deque()
        self.last: dict | None = None
        self.warnings: collections.deque[dict] = collections.deque(maxlen=WARNINGS_KEPT)
        self.end: dict | None = None
        self.received = 0

    def apply(self, kind: str, record: dict) -> None:
        self.received += 1
        if kind == "start":
            self.start = record
            self.windows.clear()
            self.last = None
            self.end = None
        elif kind == "window":
            self.last = record
            self.windows.append(_summary(record))
            newest = record.get("end") or 0.0
            while self.windows and (self.windows[0].get("end") or 0.0) < newest - HISTORY_S:
                self.windows.popleft()
        elif kind in ("warning", "gap"):
            self.warnings.append(record)
        elif kind == "end":
            self.end = record

    def snapshot(self, frame: dict | None) -> dict[str, Any]:
        return {
            "basic_labels": list(BASIC),
            "compound_labels": list(COMPOUND),
            "history_s": HISTORY_S,
            "start": self.start,
            "windows": list(self.windows),
            "last": self.last,
            "warnings": list(self.warnings),
            "end": self.end,
            "frame": frame,
        }


# --------------------------------------------------------------------------- sink
class WebSink(Sink):
    """Serves the live page on ``host:port`` from the moment it is made (``SinkError``, one
    line, when it cannot: a non-loopback ``host`` without ``public``, a port in use, the web
    extra or the chart library missing).  :meth:`close` stops the server."""

    name = "serve"
    lossless = False

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, public: bool = False) -> None:
        if not public and not is_loopback(host):
            raise SinkError(
                f"--serve {url_host(host)}:{port} would let other machines see the page; "
                "add --serve-public to allow it (the page has no authentication)"
            )
        try:
            import starlette  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as exc:
            raise SinkError(
                f"--serve needs the web extra ({exc.name} is missing): pip install 'cer-stream[web]'"
            ) from None
        from stream.sinks.web_assets import AssetsMissing, vendor_dir

        try:
            vendor = vendor_dir()
        except AssetsMissing as exc:
            raise SinkError(str(exc)) from None
        try:
            self._files = {
                "index.html": (WEB_DIR / "index.html").read_bytes(),
                **{name: (WEB_DIR / name).read_bytes() for name in PAGE_FILES},
            }
            self._vendor = {name: (vendor / name).read_bytes() for name in VENDOR_FILES}
        except OSError as exc:
            raise SinkError(f"--serve: cannot read the page's files: {exc.strerror or exc} ({exc.filename})") from None
        self.public = public
        self._allowed_hosts = {host.lower()} | _LOOPBACK_NAMES
        self._state = _State()
        self._clients: set[asyncio.Queue] = set()
        self._frame: _Frame | None = None  # replaced whole by on_frame (one reference assignment)
        self._jpeg_lock = threading.Lock()
        self._jpeg: tuple[int, bytes] | None = None
        self.jpeg_encodes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        sock = _bind(host, port)
        self.host, self.port = host, int(sock.getsockname()[1])
        self.url = f"http://{url_host(host)}:{self.port}/"
        import uvicorn

        try:
            config = uvicorn.Config(
                self._app(),
                log_level="warning",
                access_log=False,
                lifespan="off",
                ws="none",
                timeout_graceful_shutdown=1,
            )
            self._server = uvicorn.Server(config)
        except Exception as exc:
            sock.close()
            raise SinkError(f"cannot serve on {url_host(host)}:{self.port}: {exc}") from None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="cer-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            self.close()
            why = f": {self._error}" if self._error else ""
            raise SinkError(f"cannot serve on {url_host(host)}:{self.port}: the server did not start{why}")

    # ------------------------------------------------------------------ server thread
    def _serve(self, sock: socket.socket) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self._server.serve(sockets=[sock])

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by the constructor or close()
            self._error = exc
            log.error("--serve: the server stopped: %s", exc)
        finally:
            sock.close()

    def _app(self):
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
        from starlette.routing import Route

        no_store = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

        async def index(request: Request) -> Response:
            return Response(
                self._files["index.html"],
                media_type="text/html; charset=utf-8",
                headers={**no_store, "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"},
            )

        async def static(request: Request) -> Response:
            name = request.path_params["name"]
            if name not in PAGE_FILES:
                return PlainTextResponse("not found", status_code=404)
            return Response(self._files[name], media_type=PAGE_FILES[name], headers=no_store)

        async def vendor(request: Request) -> Response:
            name = request.path_params["name"]
            if name not in VENDOR_FILES:
                return PlainTextResponse("not found", status_code=404)
            return Response(
                self._vendor[name],
                media_type=VENDOR_FILES[name],
                headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
            )

        async def state(request: Request) -> Response:
            return JSONResponse(self._snapshot(), headers=no_store)

        def frame_jpg(request: Request) -> Response:  # a plain def: Starlette runs it in its thread pool
            got = self.jpeg()
            if got is None:
                return Response(status_code=204, headers=no_store)
            data, meta = got
            box = meta["box"]
            headers = {
                **no_store,
                "X-Frame-Index": str(meta["index"]),
                "X-Frame-Time": f"{meta['time']:.3f}",
                "X-Frame-Box": ",".join(str(v) for v in box) if box else "",
            }
            return Response(data, media_type="image/jpeg", headers=headers)

        async def events(request: Request) -> Response:
            q: asyncio.Queue = asyncio.Queue(maxsize=CLIENT_QUEUE)
            # registered and snapshotted in one step of the loop: each record reaches this page
            # once, in the snapshot or in the queue
            self._clients.add(q)
            first = _event("state", json.dumps(self._snapshot(), ensure_ascii=False))
            return StreamingResponse(
                self._stream(q, first),
                media_type="text/event-stream",
                headers={**no_store, "X-Accel-Buffering": "no"},
            )

        app = Starlette(
            routes=[
                Route("/", index),
                Route("/index.html", index),
                Route("/static/vendor/{name}", vendor),
                Route("/static/{name}", static),
                Route("/state.json", state),
                Route("/frame.jpg", frame_jpg),
                Route("/events", events),
            ]
        )
        if self.public:
            return app
        return self._host_guard(app)

    def _host_guard(self, app):
        allowed = self._allowed_hosts

        async def guarded(scope, receive, send):
            if scope["type"] == "http":
                host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
                if not _host_allowed(host, allowed):
                    await send(
                        {"type": "http.response.start", "status": 421, "headers": [(b"content-type", b"text/plain")]}
                    )
                    await send({"type": "http.response.body", "body": b"this server answers loopback names only\n"})
                    return
            await app(scope, receive, send)

        return guarded

    async def _stream(self, q: asyncio.Queue, first: str):
        try:
            yield first
            last_frame: int | None = None
            last_sent = time.monotonic()
            period = 1.0 / FRAME_EVENT_HZ
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), timeout=period)
                except asyncio.TimeoutError:
                    item = None
                if item is _END:
                    return
                if item is not None:
                    yield item
                    last_sent = time.monotonic()
                frame = self._frame
                if frame is not None and frame.index != last_frame:
                    last_frame = frame.index
                    yield _event("frame", json.dumps(frame.meta()))
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent > KEEPALIVE_S:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
        finally:
            self._clients.discard(q)

    def _snapshot(self) -> dict[str, Any]:
        frame = self._frame
        return self._state.snapshot(frame.meta() if frame is not None else None)

    def _apply(self, kind: str, record: dict, text: str) -> None:
        """On the loop's thread: update the state, then queue the event for every page."""
        self._state.apply(kind, record)
        event = _event(kind, text)
        for q in list(self._clients):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:  # a page that does not read: its stream ends, it reconnects
                self._clients.discard(q)
                q.get_nowait()
                q.put_nowait(_END)

    def _broadcast_end(self) -> None:
        for q in list(self._clients):
            while True:
                try:
                    q.put_nowait(_END)
                    break
                except asyncio.QueueFull:
                    q.get_nowait()
        self._clients.clear()

    # ------------------------------------------------------------------ sink and observer
    def write(self, record: dict) -> None:
        kind = str(record.get("type", ""))
        if kind not in ("start", "window", "warning", "gap", "end"):
            return  # frames records: the page has the window records and the newest frame
        text = dumps(record)
        loop = self._loop
        if loop is None or self._closed:
            return
        try:
            loop.call_soon_threadsafe(self._apply, kind, json.loads(text), text)
        except RuntimeError:  # the loop has stopped
            pass

    def on_frame(self, frame: Any, face: Any) -> None:
        """Each analysed frame (analysis thread): keep the newest frame and its face box."""
        found = bool(getattr(face, "found", False))
        box = getattr(face, "box", None) if found else None
        self._frame = _Frame(
            index=int(frame.index),
            pts=float(frame.pts),
            image=frame.image,
            box=tuple(int(round(float(v))) for v in box) if box is not None else None,
            found=found,
        )

    def jpeg(self) -> tuple[bytes, dict[str, Any]] | None:
        """The newest frame as JPEG (encoded once per frame) and its meta, or None before one."""
        frame = self._frame
        if frame is None:
            return None
        with self._jpeg_lock:
            if self._jpeg is None or self._jpeg[0] != frame.index:
                import cv2

                bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
                ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:
                    return None
                self._jpeg = (frame.index, buf.tobytes())
                self.jpeg_encodes += 1
            return self._jpeg[1], frame.meta()

    def close(self) -> None:
        """Ends the pages' event streams and stops the server (waits up to 3 s)."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._broadcast_end)
            except RuntimeError:
                pass
        self._server.should_exit = True
        self._thread.join(3.0)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(1.0)


__all__ = ["CSP", "HISTORY_S", "WebSink", "is_loopback", "parse_bind", "url_host"]
