"""One live page for every stream of ``cer-stream serve`` (a Starlette app on uvicorn, in a thread).

The page (``stream/web/``: ``dashboard.html``, ``dashboard.js``, ``dashboard.css``; ``frame.js``
and ``base.css`` are shared with the per-stream page) is a grid with one card per stream: its id
and status, its newest analysed frame with the face box, the compound label and the top three
compound probabilities, a chart of the last minute's compound probabilities (uPlot, as on the
per-stream page), latency, drops, warnings, gaps and restarts, and, when the streams share a VLM
endpoint through the supervisor's gateway, the stream's captions (answered, failed) and queue
wait (p95); a header sums them up and says how many VLM requests wait and how many are at the
endpoint.

:class:`Dashboard` takes every record the supervisor reads (``write``: from any thread, never
blocking, never raising; ``frames`` records are left out) and applies it on the server's event
loop (``call_soon_threadsafe``), so a page that connects gets each record exactly once: in its
``state`` event or after it.  Of the ``vlm_queue`` records (the gateway's queue: no
``stream_id``, every 30 s and at the end) it keeps the newest.  It keeps, per stream, what :class:`stream.sinks.web.RunState`
keeps for the per-stream page (the last :data:`~stream.sinks.web.HISTORY_S` seconds of window
summaries, the newest window, the last warnings and gaps, the ``start`` and ``end`` records),
the last ``supervisor`` records, counts and a status:

- ``starting``: before the stream's first ``start`` record;
- ``running``: after ``start`` (and after a ``gap``: the source is back; after a supervisor
  ``restarted``: a new analyzer runs);
- ``reconnecting``: the analyzer lost its source (its ``warning`` ending ``; reconnecting``,
  :meth:`stream.runtime.analyzer.Analyzer._gap`) until the ``gap`` record says it is back;
- ``restarting``: the analyzer exited (supervisor ``exited``) until ``restarted``/``started``;
- ``gave up``: supervisor ``gave_up``;
- ``ended``: the analyzer's ``end`` record, or supervisor ``stopped``.

Frames are not sent through the supervisor: each analyzer serves its own page on loopback
(:class:`stream.sinks.web.WebSink`), and :meth:`Dashboard.set_frame_source` points the dashboard
at its ``/frame.jpg``, which ``/streams/ID/frame.jpg`` proxies (``httpx``, a short timeout; 204
when there is no source or it does not answer).

Routes: ``/`` (the page), ``/static/...`` (its scripts and stylesheets), ``/static/vendor/...``
(uPlot), ``/events`` (server-sent events: one ``state`` event with every stream and the newest
``vlm_queue`` record (``null`` before one), then each record as it comes, its ``type`` as the
event's name, each stream's record followed by a ``stream`` event with that stream's status,
counts, restarts and whether it has a frame source; a ``stream`` event also when the frame
source changes), ``/state.json`` (the ``state`` event as a document),
``/streams/ID/frame.jpg``.  Bound to loopback unless ``public``; a loopback server answers only
requests whose ``Host`` is a loopback name (no DNS rebinding).  The page loads nothing from
other hosts and puts what the server sends on the page as text, never as HTML.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Sequence
from typing import Any

from stream.core.labels import BASIC, COMPOUND
from stream.sinks.outputs import SinkError, dumps
from stream.sinks.web import (
    CSS,
    HISTORY_S,
    JS,
    NO_STORE,
    SHARED_FILES,
    EventHub,
    PageFiles,
    RunState,
    allowed_hosts,
    bind_socket,
    is_loopback,
    page_token,
    require_web_extra,
    sse_event,
    start_server,
    url_host,
)

log = logging.getLogger("cer_stream.dashboard")

#: The page's own files (and those it shares with the per-stream page), served under /static/.
PAGE_FILES = {**SHARED_FILES, "dashboard.js": JS, "dashboard.css": CSS}
#: Seconds the proxy waits for an analyzer's frame (connect and read) before it answers 204.
FRAME_TIMEOUT_S = 1.0
#: Largest frame the proxy passes on (a --max-side 960 JPEG is a few hundred KB).
FRAME_MAX_BYTES = 8 * 1024 * 1024
#: Supervisor records kept per stream for a page that connects.
SUPERVISOR_KEPT = 20
#: Record types of one stream the page gets (``frames`` records are not sent: it shows window summaries).
RECORD_TYPES = ("start", "window", "warning", "gap", "end", "supervisor")
#: The record of every stream the page gets (the newest is kept): the shared VLM queue.
VLM_QUEUE = "vlm_queue"
#: A stream's statuses, in the order the page lists them.
STATUSES = ("starting", "running", "reconnecting", "restarting", "gave up", "ended")
#: The end of the analyzer's warning when a live source is lost (stream.runtime.analyzer).
RECONNECTING_SUFFIX = "; reconnecting"
#: The frame headers the proxy passes through (see stream.sinks.web.WebSink's /frame.jpg).
FRAME_HEADERS = ("X-Frame-Index", "X-Frame-Time", "X-Frame-Box")


class DashboardError(Exception):
    """The dashboard cannot be served (one line: a port in use, the web extra or the chart
    library missing, a non-loopback host without ``public``)."""


class _Stream:
    """One stream as the page needs it; touched on the event loop's thread only."""

    def __init__(self, stream_id: str) -> None:
        self.id = stream_id
        self.state = RunState()
        self.status = "starting"
        self.started = False  # a start record has been seen
        self.supervisor: collections.deque[dict] = collections.deque(maxlen=SUPERVISOR_KEPT)
        self.restarts = 0
        self.pid: int | None = None
        self.windows = 0
        self.warnings = 0
        self.gaps = 0
        self.frame_url: str | None = None

    def apply(self, kind: str, record: dict) -> None:
        if kind == "supervisor":
            self._supervisor(record)
            return
        self.state.apply(kind, record)
        if kind == "start":
            self.started = True
            self.status = "running"
        elif kind == "window":
            self.windows += 1
        elif kind == "warning":
            self.warnings += 1
            message = record.get("message")
            if isinstance(message, str) and message.endswith(RECONNECTING_SUFFIX) and self.status == "running":
                self.status = "reconnecting"
        elif kind == "gap":
            self.gaps += 1
            if self.status == "reconnecting" and record.get("end") is not None:
                self.status = "running"
        elif kind == "end":
            self.status = "ended"

    def _supervisor(self, record: dict) -> None:
        self.supervisor.append(record)
        restarts = record.get("restarts")
        if isinstance(restarts, int) and not isinstance(restarts, bool):
            self.restarts = restarts
        event = record.get("event")
        if event in ("started", "restarted"):
            pid = record.get("pid")
            self.pid = pid if isinstance(pid, int) else None
            self.status = "running" if self.started else "starting"
        elif event == "exited":
            self.status = "restarting"
        elif event == "gave_up":
            self.status = "gave up"
        elif event == "stopped":
            self.status = "ended"

    def summary(self) -> dict[str, Any]:
        """What the page's card shows besides the records: the ``stream`` event."""
        return {
            "stream_id": self.id,
            "status": self.status,
            "restarts": self.restarts,
            "pid": self.pid,
            "counts": {"windows": self.windows, "warnings": self.warnings, "gaps": self.gaps},
            "frame_source": self.frame_url is not None,
        }

    def snapshot(self) -> dict[str, Any]:
        st = self.state
        return {
            **self.summary(),
            "start": st.start,
            "windows": list(st.windows),
            "last": st.last,
            "warnings": list(st.warnings),
            "end": st.end,
            "supervisor": list(self.supervisor),
        }


class Dashboard:
    """Serves the dashboard on ``host:port`` from the moment it is made (:class:`DashboardError`,
    one line, when it cannot); ``stream_ids`` are the cards it shows (a record of another id
    adds one).  :meth:`close` stops the server."""

    def __init__(
        self, host: str, port: int, *, stream_ids: Sequence[str], public: bool = False, token: str | None = None
    ) -> None:
        if not public and not is_loopback(host):
            raise DashboardError(
                f"the dashboard on {url_host(host)}:{port} would let other machines see the page; "
                "allow it with --dashboard-public or dashboard_public = true (the page then asks for a token)"
            )
        try:
            require_web_extra("the dashboard")
            self._files = PageFiles("dashboard.html", PAGE_FILES, what="the dashboard")
            #: what a public dashboard asks for (stream.sinks.web.token_guard); None on loopback
            self.token = page_token(token) if public else token
        except (SinkError, ValueError) as exc:
            raise DashboardError(str(exc)) from None
        self.public = public
        self._allowed_hosts = allowed_hosts(host)
        self._streams: dict[str, _Stream] = {sid: _Stream(sid) for sid in stream_ids}
        self._vlm_queue: dict | None = None  # the newest vlm_queue record (touched on the loop's thread)
        self._hub = EventHub()
        self._client: Any = None  # httpx.AsyncClient, made on the loop at the first frame asked for
        self._closed = False
        try:
            sock = bind_socket(host, port, "the dashboard")
        except SinkError as exc:
            raise DashboardError(str(exc)) from None
        self.host, self.port = host, int(sock.getsockname()[1])
        self.url = f"http://{url_host(host)}:{self.port}/"
        self.login_url = f"{self.url}?token={self.token}" if self.token else self.url
        where = f"the dashboard on {url_host(host)}:{self.port}"
        try:
            self._server = start_server(
                self._app(), sock, name="cer-dashboard", where=where, cleanup=self._close_client
            )
        except SinkError as exc:
            raise DashboardError(str(exc)) from None

    # ------------------------------------------------------------------ the app (loop thread)
    def _app(self) -> Any:
        from starlette.requests import Request
        from starlette.responses import JSONResponse, PlainTextResponse, Response
        from starlette.routing import Route

        async def state(request: Request) -> Response:
            return JSONResponse(self._snapshot(), headers=NO_STORE)

        async def events(request: Request) -> Response:
            # snapshotted and registered in one step of the loop: each record reaches this page
            # once, in the snapshot or after it
            return self._hub.response(sse_event("state", json.dumps(self._snapshot(), ensure_ascii=False)))

        async def frame(request: Request) -> Response:
            stream = self._streams.get(request.path_params["sid"])
            if stream is None:
                return PlainTextResponse("no such stream", status_code=404, headers=NO_STORE)
            got = await self._fetch_frame(stream.frame_url) if stream.frame_url else None
            if got is None:
                return Response(status_code=204, headers=NO_STORE)
            data, headers = got
            return Response(data, media_type="image/jpeg", headers={**NO_STORE, **headers})

        routes = [Route("/state.json", state), Route("/events", events), Route("/streams/{sid}/frame.jpg", frame)]
        return self._files.app(routes, public=self.public, allowed=self._allowed_hosts, token=self.token)

    async def _fetch_frame(self, url: str) -> tuple[bytes, dict[str, str]] | None:
        """The analyzer's newest frame and its X-Frame-* headers, or None (no frame yet, or it
        does not answer within :data:`FRAME_TIMEOUT_S`)."""
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(FRAME_TIMEOUT_S),
                trust_env=False,  # a loopback address: never through a proxy
                follow_redirects=False,
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            )
        try:
            res = await self._client.get(url)
        except (httpx.HTTPError, OSError, ValueError) as exc:
            log.debug("dashboard: no frame from %s: %s", url, exc)
            return None
        if res.status_code != 200 or not res.headers.get("content-type", "").startswith("image/jpeg"):
            return None
        if len(res.content) > FRAME_MAX_BYTES:
            return None
        headers = {name: res.headers[name] for name in FRAME_HEADERS if name in res.headers}
        return res.content, headers

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _stream(self, stream_id: str) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream(stream_id)
        return stream

    def _snapshot(self) -> dict[str, Any]:
        return {
            "basic_labels": list(BASIC),
            "compound_labels": list(COMPOUND),
            "history_s": HISTORY_S,
            "statuses": list(STATUSES),
            "streams": [s.snapshot() for s in self._streams.values()],
            "vlm_queue": self._vlm_queue,
        }

    def _apply(self, stream_id: str, kind: str, record: dict, text: str) -> None:
        """On the loop's thread: update the stream's state, then queue the record and the
        stream's new summary for every page."""
        stream = self._stream(stream_id)
        stream.apply(kind, record)
        self._hub.publish(sse_event(kind, text))
        self._hub.publish(sse_event("stream", json.dumps(stream.summary(), ensure_ascii=False)))

    def _apply_vlm_queue(self, record: dict, text: str) -> None:
        """On the loop's thread: keep the newest ``vlm_queue`` record and queue it for every page."""
        self._vlm_queue = record
        self._hub.publish(sse_event(VLM_QUEUE, text))

    def _set_source(self, stream_id: str, url: str | None) -> None:
        stream = self._stream(stream_id)
        stream.frame_url = url
        self._hub.publish(sse_event("stream", json.dumps(stream.summary(), ensure_ascii=False)))

    # ------------------------------------------------------------------ any thread
    def write(self, record: dict) -> None:
        """One record of one stream, or a ``vlm_queue`` record (any thread; never blocks, never
        raises).  Other records (``frames``, other types, a stream's record without a
        ``stream_id``) are left out."""
        if self._closed:
            return
        try:
            kind = record.get("type")
            if kind == VLM_QUEUE:
                text = dumps(record)
                self._server.call_soon(self._apply_vlm_queue, json.loads(text), text)
                return
            stream_id = record.get("stream_id")
            if kind not in RECORD_TYPES or not isinstance(stream_id, str) or not stream_id:
                return
            text = dumps(record)
            self._server.call_soon(self._apply, stream_id, kind, json.loads(text), text)
        except Exception:  # noqa: BLE001 - a record the page cannot take never stops the supervisor
            log.debug("dashboard: record left out", exc_info=True)

    def set_frame_source(self, stream_id: str, url: str | None) -> None:
        """Where the stream's newest frame is (its analyzer's ``http://127.0.0.1:P/frame.jpg``),
        or None while it has none (the analyzer is down)."""
        if self._closed:
            return
        self._server.call_soon(self._set_source, stream_id, url)

    def close(self) -> None:
        """Ends the pages' event streams and stops the server (waits up to 4 s); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._server.stop(first=self._hub.end_all)


__all__ = ["FRAME_TIMEOUT_S", "STATUSES", "Dashboard", "DashboardError"]
