"""``--serve HOST:PORT``: a live page of the run (Starlette app on uvicorn, in a thread).

The page (``stream/web/``: ``index.html``, ``app.js``, ``style.css``; ``frame.js`` and
``base.css`` are shared with the dashboard) shows the newest analysed frame with the face box
and the compound label drawn over it on a canvas, the compound probabilities of the last minute
as a chart (uPlot, from npm, fetched at install time: :mod:`stream.sinks.web_assets`), each
modality's presence and fusion weight, the transcript and the scene caption, drops, latency and
warnings.

:class:`WebSink` is both a sink (``write(record)``, on its own writer thread behind a bounded
queue, see :mod:`stream.sinks.outputs`; never lossless: a live page never holds a run back)
and an observer (``on_frame(frame, face)``, on the analysis thread: it only keeps a reference to
the newest frame and its box; the JPEG is encoded when asked for, at most once per frame).

Routes: ``/`` (the page), ``/static/...`` (its scripts and stylesheets), ``/static/vendor/...``
(uPlot), ``/events`` (server-sent events: one ``state`` event with the run so far, the last
:data:`HISTORY_S` seconds of windows included, then ``start``, ``window``, ``warning``, ``gap``,
``end`` records as they come and ``frame`` events, at most :data:`FRAME_EVENT_HZ` a second, with
the newest frame's index, time and box), ``/frame.jpg`` (the newest analysed frame; its index,
time and face box in ``X-Frame-Index``, ``X-Frame-Time``, ``X-Frame-Box``), ``/state.json``.

Records are applied to the server's state on the event loop's thread (handed over with
``call_soon_threadsafe``), so a page that connects gets each record exactly once: in its
``state`` event or after it.  Bound to loopback by default; another address needs
``public=True`` (``--serve-public``), and a public page answers only requests that carry its
token (:func:`token_guard`: given, from ``$CER_STREAM_SERVE_TOKEN``, or made up and printed once).  A loopback server answers only requests whose ``Host``
is a loopback name (a web page elsewhere cannot reach it through DNS rebinding).  The page
loads nothing from other hosts (its ``Content-Security-Policy`` says so).

The pieces any such server is made of are shared with the dashboard of ``cer-stream serve``
(:mod:`stream.serve.dashboard`): :func:`bind_socket`, :func:`host_guard`, :class:`PageFiles`
(a page, its files and the chart library), :class:`ServerThread` (uvicorn in a thread) and
:class:`EventHub` (server-sent events behind bounded per-page queues).
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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.core.labels import BASIC, COMPOUND
from stream.runtime.observe import Observer
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
JS = "text/javascript; charset=utf-8"
CSS = "text/css; charset=utf-8"
#: The files this page and the dashboard's share (linked before their own): the frame with the
#: face box drawn on a canvas, and the colours and type.
SHARED_FILES = {"frame.js": JS, "base.css": CSS}
#: The page's own files (and the shared ones), served under /static/.
PAGE_FILES = {**SHARED_FILES, "app.js": JS, "style.css": CSS}
VENDOR_FILES = {"uPlot.iife.min.js": "text/javascript; charset=utf-8", "uPlot.min.css": "text/css; charset=utf-8"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Headers of every response that must not be cached (the page, its files, state, frames).
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
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


def bind_socket(host: str, port: int, what: str = "") -> socket.socket:
    """A listening, non-blocking socket on ``host:port``; ``SinkError`` (one line: ``cannot
    serve WHAT on HOST:PORT: why``) when it cannot be had (a port in use, an unknown name)."""
    where = f"{what} on " if what else "on "
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SinkError(f"cannot serve {where}{url_host(host)}:{port}: {exc.strerror or exc}") from None
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
    raise SinkError(f"cannot serve {where}{url_host(host)}:{port}: {why}")


def _host_allowed(header: str, allowed: set[str]) -> bool:
    """The ``Host`` header's name (port and IPv6 brackets off) is one of ``allowed`` (or any
    127.0.0.0/8 address)."""
    name = header.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    else:
        name = name.partition(":")[0]
    return name in allowed or is_loopback(name)


# --------------------------------------------------------------------------- shared by the pages' servers
def host_guard(app: Any, allowed: set[str]) -> Any:
    """``app`` (ASGI) answering only HTTP requests whose ``Host`` is one of ``allowed`` or a
    loopback name; others get 421 (a web page elsewhere cannot read a loopback server through
    DNS rebinding)."""

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


#: Where a public page's token can come from instead of being made up (never a flag: command
#: lines are visible to every user of the machine).
TOKEN_ENV = "CER_STREAM_SERVE_TOKEN"
#: The cookie a browser keeps the token in once it has opened the page's address with ``?token=``.
TOKEN_COOKIE = "cer_stream_token"


def page_token(given: str | None = None) -> str:
    """The token a public page asks for: ``given``, else ``$CER_STREAM_SERVE_TOKEN``, else a new
    random one (32 URL-safe characters).  ``ValueError`` for one that is not at least 16 characters
    that may stand in an address as they are."""
    import os
    import secrets

    token = given if given is not None else os.environ.get(TOKEN_ENV)
    if token is None:
        return secrets.token_urlsafe(24)
    import re

    token = token.strip()
    if not re.fullmatch(r"[A-Za-z0-9._~-]{16,}", token):
        raise ValueError(f"{TOKEN_ENV}: a page token is at least 16 of A-Z a-z 0-9 . _ ~ - (it goes in an address)")
    return token


def announce_token(page: Any, what: str) -> None:
    """Say on standard error, once, how to open a public ``page`` (a :class:`WebSink` or the
    dashboard): its address with the token in it when cer-stream made the token up (the one
    place it is ever shown: records, logs and errors hide ``token=`` values), or that the token
    is the one in ``$CER_STREAM_SERVE_TOKEN``."""
    import os
    import sys

    if os.environ.get(TOKEN_ENV):
        line = f"cer-stream: {what} asks for the token in ${TOKEN_ENV}: open {page.url}?token=TOKEN\n"
    else:
        line = (
            f"cer-stream: {what} is reachable from other machines and asks for a token; open it at "
            f"{page.login_url} (shown once; set ${TOKEN_ENV} to choose the token)\n"
        )
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no stderr (closed at start): nowhere to say it
        pass


def token_guard(app: Any, token: str) -> Any:
    """``app`` (ASGI) answering only requests that carry ``token``: in the ``Authorization:
    Bearer`` header (scripts), the page's cookie (browsers), or the address's ``token=`` query
    (the link printed once at start: a page opened with it gets the cookie, ``HttpOnly`` and
    ``SameSite=Strict``, and is sent on to the same address without the token, so it does not
    stay in the address bar or the history).  Others get 401 and nothing of the run."""
    import hmac
    from http.cookies import SimpleCookie
    from urllib.parse import parse_qsl, urlencode

    expected = token.encode("utf-8")

    def same(candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode("utf-8"), expected)

    async def guarded(scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        auth = headers.get(b"authorization", "")
        cookie: SimpleCookie = SimpleCookie()
        try:
            cookie.load(headers.get(b"cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is no token
            pass
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        in_query = next((v for k, v in query if k == "token"), None)
        if same(auth[7:].strip() if auth.lower().startswith("bearer ") else None) or (
            TOKEN_COOKIE in cookie and same(cookie[TOKEN_COOKIE].value)
        ):
            await app(scope, receive, send)
            return
        if same(in_query) and scope["type"] == "http":
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = scope.get("path", "/") + (f"?{rest}" if rest else "")
            set_cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [
                        (b"location", location.encode("latin-1")),
                        (b"set-cookie", set_cookie.encode("latin-1")),
                        (b"cache-control", b"no-store"),
                        (b"referrer-policy", b"no-referrer"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": b"this page needs its token: open the address cer-stream printed at start "
                b"(...?token=...) or send Authorization: Bearer TOKEN\n",
            }
        )

    return guarded


def allowed_hosts(host: str) -> set[str]:
    """The ``Host`` names a server bound to ``host`` answers (with :func:`host_guard`)."""
    return {host.lower()} | _LOOPBACK_NAMES


def require_web_extra(what: str) -> None:
    """``SinkError`` (one line: ``WHAT needs the web extra ...``) when Starlette or uvicorn is
    not installed."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise SinkError(f"{what} needs the web extra ({exc.name} is missing): pip install 'cer-stream[web]'") from None


class PageFiles:
    """A page (``stream/web/PAGE``), its own files (served under ``/static/NAME``) and the chart
    library (``/static/vendor/NAME``), read once; ``SinkError`` (one line) when one is missing."""

    def __init__(self, page: str, files: Mapping[str, str], *, what: str) -> None:
        from stream.sinks.web_assets import AssetsMissing, vendor_dir

        try:
            vendor = vendor_dir(what=what)
        except AssetsMissing as exc:
            raise SinkError(str(exc)) from None
        self.types = dict(files)
        try:
            self.page = (WEB_DIR / page).read_bytes()
            self.files = {name: (WEB_DIR / name).read_bytes() for name in self.types}
            self.vendor = {name: (vendor / name).read_bytes() for name in VENDOR_FILES}
        except OSError as exc:
            raise SinkError(f"{what}: cannot read the page's files: {exc.strerror or exc} ({exc.filename})") from None

    def routes(self, *page_paths: str) -> list[Any]:
        """Starlette routes: the page at each of ``page_paths``, ``/static/NAME`` and
        ``/static/vendor/NAME``."""
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse, Response
        from starlette.routing import Route

        async def page(request: Request) -> Response:
            return Response(
                self.page,
                media_type="text/html; charset=utf-8",
                headers={**NO_STORE, "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"},
            )

        async def static(request: Request) -> Response:
            name = request.path_params["name"]
            if name not in self.types:
                return PlainTextResponse("not found", status_code=404)
            return Response(self.files[name], media_type=self.types[name], headers=NO_STORE)

        async def vendor(request: Request) -> Response:
            name = request.path_params["name"]
            if name not in VENDOR_FILES:
                return PlainTextResponse("not found", status_code=404)
            return Response(
                self.vendor[name],
                media_type=VENDOR_FILES[name],
                headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
            )

        return [
            *(Route(path, page) for path in page_paths),
            Route("/static/vendor/{name}", vendor),
            Route("/static/{name}", static),
        ]

    def app(self, routes: list[Any], *, public: bool, allowed: set[str], token: str | None = None) -> Any:
        """The page's app: the page (at ``/`` and ``/index.html``) and its files, then ``routes``;
        behind :func:`host_guard` unless ``public``, and behind :func:`token_guard` when a
        ``token`` is given (a public page always has one)."""
        from starlette.applications import Starlette

        app: Any = Starlette(routes=[*self.routes("/", "/index.html"), *routes])
        if token is not None:
            app = token_guard(app, token)
        return app if public else host_guard(app, allowed)


class ServerThread:
    """``app`` served by uvicorn on ``sock`` in a daemon thread with its own event loop.
    :meth:`start` waits until it listens; :attr:`loop` is that loop (for
    ``call_soon_threadsafe``); ``cleanup`` is awaited on the loop once the server has stopped."""

    def __init__(
        self, app: Any, sock: socket.socket, *, name: str, cleanup: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        import uvicorn

        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", ws="none", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._sock = sock
        self._cleanup = cleanup
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def _serve(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            try:
                await self.server.serve(sockets=[self._sock])
            finally:
                if self._cleanup is not None:
                    await self._cleanup()

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by start() or the log
            self.error = exc
            log.error("the web server stopped: %s", exc)
        finally:
            self._sock.close()

    def start(self, timeout: float = 10.0) -> bool:
        """Start the thread; whether the server listens within ``timeout`` seconds."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return bool(self.server.started)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the server's loop (from any thread); nothing once it has stopped."""
        loop = self.loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop has stopped
            pass

    def stop(self, first: Callable[[], Any] | None = None) -> None:
        """Stop the server (waits up to 3 s, then forces it); ``first`` runs on its loop before
        (e.g. :meth:`EventHub.end_all`: the pages' event streams end)."""
        if first is not None:
            self.call_soon(first)
        self.server.should_exit = True
        if self._thread.ident is None:
            self._sock.close()
            return
        self._thread.join(3.0)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(1.0)


def start_server(
    app: Any, sock: socket.socket, *, name: str, where: str, cleanup: Callable[[], Awaitable[None]] | None = None
) -> ServerThread:
    """``app`` served on ``sock`` by a started :class:`ServerThread`; ``SinkError`` (one line:
    ``cannot serve WHERE: why``) when the server cannot be made or does not start."""
    try:
        server = ServerThread(app, sock, name=name, cleanup=cleanup)
    except Exception as exc:
        sock.close()
        raise SinkError(f"cannot serve {where}: {exc}") from None
    if not server.start():
        server.stop()
        why = f": {server.error}" if server.error else ""
        raise SinkError(f"cannot serve {where}: the server did not start{why}")
    return server


def sse_event(kind: str, data: str) -> str:
    """One server-sent event named ``kind`` with ``data`` (one line of JSON)."""
    return f"event: {kind}\ndata: {data}\n\n"


class EventHub:
    """Server-sent events to every connected page, each behind a bounded queue (touched on the
    event loop's thread only).  A page whose queue is full is dropped: its stream ends and its
    browser reconnects to a fresh ``state``."""

    def __init__(self, maxsize: int = CLIENT_QUEUE) -> None:
        self.maxsize = maxsize
        self._clients: set[asyncio.Queue] = set()

    def response(self, first: str, *, period: float = 1.0, poll: Callable[[], str | None] | None = None) -> Any:
        """A page's event stream: ``first`` (its ``state`` event), then every event published
        from now on.  Called on the loop's thread in the same step as ``first`` is made, so
        each event reaches the page once: in ``first`` or after it.  ``poll`` (optional) is
        asked every ``period`` seconds for an extra event."""
        from starlette.responses import StreamingResponse

        q: asyncio.Queue = asyncio.Queue(maxsize=self.maxsize)
        self._clients.add(q)
        return StreamingResponse(
            self._stream(q, first, period, poll),
            media_type="text/event-stream",
            headers={**NO_STORE, "X-Accel-Buffering": "no"},
        )

    async def _stream(
        self, q: asyncio.Queue, first: str, period: float, poll: Callable[[], str | None] | None
    ) -> AsyncIterator[str]:
        try:
            yield first
            last_sent = time.monotonic()
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
                extra = poll() if poll is not None else None
                if extra is not None:
                    yield extra
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent > KEEPALIVE_S:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
        finally:
            self._clients.discard(q)

    def publish(self, event: str) -> None:
        """Queue ``event`` for every page (on the loop's thread)."""
        for q in list(self._clients):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:  # a page that does not read: its stream ends, it reconnects
                self._clients.discard(q)
                q.get_nowait()
                q.put_nowait(_END)

    def end_all(self) -> None:
        """End every page's stream (on the loop's thread)."""
        for q in list(self._clients):
            while True:
                try:
                    q.put_nowait(_END)
                    break
                except asyncio.QueueFull:
                    q.get_nowait()
        self._clients.clear()


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


class RunState:
    """The run as a page needs it (one stream's, on the dashboard); touched on the event loop's thread only."""

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
class WebSink(Sink, Observer):
    """Serves the live page on ``host:port`` from the moment it is made (``SinkError``, one
    line, when it cannot: a non-loopback ``host`` without ``public``, a port in use, the web
    extra or the chart library missing).  :meth:`close` stops the server."""

    name = "serve"
    lossless = False

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8080, *, public: bool = False, token: str | None = None
    ) -> None:
        if not public and not is_loopback(host):
            raise SinkError(
                f"--serve {url_host(host)}:{port} would let other machines see the page; "
                "add --serve-public to allow it (the page then asks for a token)"
            )
        require_web_extra("--serve")
        self._files = PageFiles("index.html", PAGE_FILES, what="--serve")
        self.public = public
        try:
            #: what a public page asks for (:func:`token_guard`); None: a loopback page, no token
            self.token = page_token(token) if public else token
        except ValueError as exc:
            raise SinkError(str(exc)) from None
        self._allowed_hosts = allowed_hosts(host)
        self._state = RunState()
        self._hub = EventHub()
        self._frame: _Frame | None = None  # replaced whole by on_frame (one reference assignment)
        self._jpeg_lock = threading.Lock()
        self._jpeg: tuple[int, bytes] | None = None
        self.jpeg_encodes = 0
        self._closed = False
        sock = bind_socket(host, port)
        self.host, self.port = host, int(sock.getsockname()[1])
        self.url = f"http://{url_host(host)}:{self.port}/"
        #: the address to open: with the token in it when the page asks for one (print it once)
        self.login_url = f"{self.url}?token={self.token}" if self.token else self.url
        self._server = start_server(self._app(), sock, name="cer-serve", where=f"on {url_host(host)}:{self.port}")

    # ------------------------------------------------------------------ server thread
    def _app(self):
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def state(request: Request) -> Response:
            return JSONResponse(self._snapshot(), headers=NO_STORE)

        def frame_jpg(request: Request) -> Response:  # a plain def: Starlette runs it in its thread pool
            got = self.jpeg()
            if got is None:
                return Response(status_code=204, headers=NO_STORE)
            data, meta = got
            box = meta["box"]
            headers = {
                **NO_STORE,
                "X-Frame-Index": str(meta["index"]),
                "X-Frame-Time": f"{meta['time']:.3f}",
                "X-Frame-Box": ",".join(str(v) for v in box) if box else "",
            }
            return Response(data, media_type="image/jpeg", headers=headers)

        async def events(request: Request) -> Response:
            # registered and snapshotted in one step of the loop: each record reaches this page
            # once, in the snapshot or in the queue
            first = sse_event("state", json.dumps(self._snapshot(), ensure_ascii=False))
            last_frame: list[int | None] = [None]

            def frame_event() -> str | None:
                frame = self._frame
                if frame is None or frame.index == last_frame[0]:
                    return None
                last_frame[0] = frame.index
                return sse_event("frame", json.dumps(frame.meta()))

            return self._hub.response(first, period=1.0 / FRAME_EVENT_HZ, poll=frame_event)

        routes = [Route("/state.json", state), Route("/frame.jpg", frame_jpg), Route("/events", events)]
        return self._files.app(routes, public=self.public, allowed=self._allowed_hosts, token=self.token)

    def _snapshot(self) -> dict[str, Any]:
        frame = self._frame
        return self._state.snapshot(frame.meta() if frame is not None else None)

    def _apply(self, kind: str, record: dict, text: str) -> None:
        """On the loop's thread: update the state, then queue the event for every page."""
        self._state.apply(kind, record)
        self._hub.publish(sse_event(kind, text))

    # ------------------------------------------------------------------ sink and observer
    def write(self, record: dict) -> None:
        kind = str(record.get("type", ""))
        if kind not in ("start", "window", "warning", "gap", "end"):
            return  # frames records: the page has the window records and the newest frame
        text = dumps(record)
        if self._closed:
            return
        self._server.call_soon(self._apply, kind, json.loads(text), text)

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
        self._server.stop(first=self._hub.end_all)


__all__ = [
    "CSP",
    "CSS",
    "HISTORY_S",
    "JS",
    "NO_STORE",
    "EventHub",
    "PageFiles",
    "RunState",
    "SHARED_FILES",
    "ServerThread",
    "WebSink",
    "allowed_hosts",
    "bind_socket",
    "host_guard",
    "is_loopback",
    "parse_bind",
    "require_web_extra",
    "sse_event",
    "url_host",
]
