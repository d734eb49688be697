"""One request queue in front of the VLM endpoint for every stream of ``cer-stream serve``.

Without it each analyzer asks ``--vlm-url`` on its own: ten cameras are ten clients that the
endpoint sees at once, and the first streams to ask starve the others whenever it is slow.
With a ``[vlm]`` table in the config the supervisor runs this gateway (an HTTP server on
loopback, in a thread) and points every analyzer at it, ``--vlm-url
http://127.0.0.1:PORT/streams/ID/v1``.  The gateway

* keeps **one queue** for every stream, served in order of arrival by ``concurrency`` workers
  (default 1): the endpoint never has more than ``concurrency`` requests from this machine in
  flight, and a stream waits its turn behind the others rather than beside them;
* holds at most **one waiting request per stream**: a newer request from the same stream
  replaces the one still waiting (its keyframes are older; it is answered 429, "superseded"),
  so a stream that falls behind never floods the queue; a request that waited longer than
  ``max_wait_s`` is answered 504 without being sent (its caption would be too old to use);
* holds the endpoint's **API key** (read from ``key_env`` in the supervisor's environment, never
  given to an analyzer); the analyzers authenticate to the gateway with a random token made at
  start (``Authorization: Bearer``, through their usual ``--vlm-key-env`` variable), so another
  local user cannot spend the key through it;
* passes the endpoint's answer back unchanged (status and body, at most 1 MiB); a timeout or an
  unreachable endpoint becomes 504 / 502 with an OpenAI-style ``{"error": {"message": ...}}``
  body, which the analyzer reports in its ``warning`` records as it would the endpoint's own;
* counts per stream what it forwarded, answered, superseded and expired and how long requests
  waited (:meth:`VlmGateway.stats`; the supervisor writes it as ``vlm_queue`` records).

HTTP is served by Starlette on uvicorn and spoken to the endpoint by one ``httpx.AsyncClient``
with ``concurrency`` pooled connections (the same libraries as ``--serve`` and the scene
modality).  The gateway listens on 127.0.0.1 unless ``listen`` names another address (for
analyzers on other Ray nodes); it answers only requests that carry the token.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stream.core.redact import redact
from stream.modalities.scene import DEFAULT_KEY_ENV, DEFAULT_MODEL, DEFAULT_TIMEOUT_S, MAX_RESPONSE_BYTES, endpoint_url

log = logging.getLogger("cer_stream.vlm_gateway")

#: Largest request body accepted from an analyzer (4 keyframes of 448 px are ~0.2 MB).
MAX_REQUEST_BYTES = 16 << 20
#: Wait times kept per stream for the percentiles in :meth:`VlmGateway.stats`.
WAITS_KEPT = 200
#: The variable through which each analyzer gets the gateway's token (its ``--vlm-key-env``).
TOKEN_ENV = DEFAULT_KEY_ENV


class GatewayError(Exception):
    """The gateway cannot start (one line: the address, the web extra...)."""


@dataclass(frozen=True)
class VlmConfig:
    """The ``[vlm]`` table of a serve config.

    Attributes:
        url: the endpoint's base URL (``http(s)://HOST:PORT/v1``).
        model: the model name sent in each request (every analyzer's ``--vlm-model``).
        key_env: the variable, in the supervisor's environment, holding the endpoint's API key
            (unset or empty: no key is sent).
        concurrency: requests in flight to the endpoint at most.
        every_s, timeout_s: every analyzer's ``--vlm-every`` / ``--vlm-timeout`` (``None``: the
            analyzer's defaults).
        max_wait_s: longest a request may wait in the queue before it is dropped (504);
            ``None``: the analyzers' request timeout.
        listen: ``HOST:PORT`` the gateway listens on (port 0: a free one).
    """

    url: str
    model: str = DEFAULT_MODEL
    key_env: str = "CER_STREAM_VLM_API_KEY"
    concurrency: int = 1
    every_s: float | None = None
    timeout_s: float | None = None
    max_wait_s: float | None = None
    listen: str = "127.0.0.1:0"

    def __post_init__(self) -> None:
        endpoint_url(self.url)  # ValueError on a bad URL
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {self.concurrency}")
        for name in ("every_s", "timeout_s", "max_wait_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, not {value}")

    @property
    def request_timeout_s(self) -> float:
        return self.timeout_s if self.timeout_s is not None else DEFAULT_TIMEOUT_S

    @property
    def queue_wait_s(self) -> float:
        return self.max_wait_s if self.max_wait_s is not None else self.request_timeout_s

    def analyzer_args(self, gateway_url: str) -> list[str]:
        """The ``--vlm-*`` flags of one analyzer that asks through the gateway at ``gateway_url``."""
        args = ["--vlm-url", gateway_url, "--vlm-model", self.model, "--vlm-key-env", TOKEN_ENV]
        if self.every_s is not None:
            args += ["--vlm-every", f"{self.every_s:g}"]
        if self.timeout_s is not None:
            args += ["--vlm-timeout", f"{self.timeout_s:g}"]
        return args


@dataclass
class _Job:
    stream_id: str
    body: bytes
    enqueued: float
    future: asyncio.Future


class _StreamCounters:
    def __init__(self) -> None:
        self.requests = 0  # received from the analyzer
        self.forwarded = 0  # sent to the endpoint
        self.ok = 0  # answered 2xx by the endpoint
        self.errors = 0  # endpoint answered non-2xx, timed out or could not be reached
        self.superseded = 0  # replaced in the queue by a newer request of the same stream
        self.expired = 0  # waited longer than max_wait_s
        self.waits_ms: collections.deque[float] = collections.deque(maxlen=WAITS_KEPT)
        self.last_service_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        waits = sorted(self.waits_ms)

        def pct(q: float) -> float | None:
            if not waits:
                return None
            return round(waits[min(len(waits) - 1, int(q * len(waits)))], 1)

        return {
            "requests": self.requests,
            "forwarded": self.forwarded,
            "ok": self.ok,
            "errors": self.errors,
            "superseded": self.superseded,
            "expired": self.expired,
            "wait_ms_p50": pct(0.5),
            "wait_ms_p95": pct(0.95),
            "wait_ms_max": round(waits[-1], 1) if waits else None,
            "last_service_ms": self.last_service_ms,
        }


def _error_body(message: str) -> bytes:
    import json

    return json.dumps({"error": {"message": message}}).encode()


class VlmGateway:
    """The gateway of ``config`` for ``stream_ids``, serving from the moment it is made
    (:class:`GatewayError`, one line, when it cannot).  ``env``: where the endpoint's key is
    read (default ``os.environ``).  :meth:`url_for` is an analyzer's ``--vlm-url``;
    :attr:`token` the value of its :data:`TOKEN_ENV`."""

    def __init__(self, config: VlmConfig, stream_ids: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        import os

        from stream.sinks.outputs import SinkError
        from stream.sinks.web import require_web_extra

        try:
            require_web_extra("the [vlm] gateway")
        except SinkError as exc:
            raise GatewayError(str(exc)) from None
        from stream.sinks.web import bind_socket, parse_bind, start_server, url_host

        self.config = config
        self.endpoint = endpoint_url(config.url)
        self.token = secrets.token_urlsafe(24)
        key = (os.environ if env is None else env).get(config.key_env, "")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "cer-stream"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._secrets = [s for s in (key, self.token) if s]
        self._lock = threading.Lock()
        self._counters = {sid: _StreamCounters() for sid in stream_ids}
        self._waiting: dict[str, _Job] = {}  # stream id -> its job still in the queue
        self._queue: collections.deque[_Job] = collections.deque()
        self._in_flight = 0
        self._max_queued = 0
        self._ready: asyncio.Condition | None = None
        self._client: Any = None
        self._workers: list[asyncio.Task] = []
        self._closed = False
        try:
            host, port = parse_bind(config.listen)
        except ValueError as exc:
            raise GatewayError(str(exc).replace("--serve", "vlm.listen")) from None
        try:
            sock = bind_socket(host, port, "the VLM gateway")
        except SinkError as exc:
            raise GatewayError(f"vlm.listen: {exc}") from None
        self.host, self.port = host, int(sock.getsockname()[1])
        self.base_url = f"http://{url_host(host)}:{self.port}"
        where = f"the VLM gateway on {url_host(host)}:{self.port}"
        try:
            self._server = start_server(self._app(), sock, name="cer-vlm-gateway", where=where, cleanup=self._cleanup)
        except SinkError as exc:
            raise GatewayError(f"vlm.listen: {exc}") from None
        try:
            assert self._server.loop is not None
            asyncio.run_coroutine_threadsafe(self._boot(), self._server.loop).result(10.0)
        except Exception as exc:  # noqa: BLE001 - one line, whatever it was
            self.close()
            raise GatewayError(f"vlm.listen: cannot serve {where}: {exc}") from None

    def url_for(self, stream_id: str) -> str:
        return f"{self.base_url}/streams/{stream_id}/v1"

    # ------------------------------------------------------------------ server thread
    async def _boot(self) -> None:
        """On the server's loop: the endpoint's client and the queue's workers."""
        import httpx

        n = self.config.concurrency
        self._ready = asyncio.Condition()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.config.request_timeout_s),
            follow_redirects=True,
            max_redirects=5,
            trust_env=True,
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n, keepalive_expiry=30.0),
        )
        self._workers = [asyncio.create_task(self._worker(self._client)) for _ in range(n)]

    async def _cleanup(self) -> None:
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return redact(text)

    async def _worker(self, client: Any) -> None:
        import httpx

        assert self._ready is not None
        while True:
            async with self._ready:
                await self._ready.wait_for(lambda: bool(self._queue))
                job = self._queue.popleft()
            with self._lock:
                if self._waiting.get(job.stream_id) is job:
                    del self._waiting[job.stream_id]
                counters = self._counters[job.stream_id]
            if job.future.done():  # superseded while it waited
                continue
            waited = time.monotonic() - job.enqueued
            with self._lock:
                counters.waits_ms.append(waited * 1000.0)
            if waited > self.config.queue_wait_s:
                with self._lock:
                    counters.expired += 1
                job.future.set_result(
                    (
                        504,
                        _error_body(
                            f"waited {waited:.1f} s in the gateway's queue (limit {self.config.queue_wait_s:g} s)"
                        ),
                    )
                )
                continue
            with self._lock:
                counters.forwarded += 1
                self._in_flight += 1
            started = time.monotonic()
            result: tuple[int, bytes]
            try:
                result = await self._forward(client, job.body)
            except httpx.TimeoutException:
                result = (
                    504,
                    _error_body(f"the VLM endpoint did not answer within {self.config.request_timeout_s:g} s"),
                )
            except (httpx.HTTPError, OSError) as exc:
                why = self._scrub(str(exc) or type(exc).__name__)
                result = (502, _error_body(f"the VLM endpoint could not be reached: {why}"))
            finally:
                with self._lock:
                    self._in_flight -= 1
                    counters.last_service_ms = round((time.monotonic() - started) * 1000.0, 1)
            with self._lock:
                if 200 <= result[0] < 300:
                    counters.ok += 1
                else:
                    counters.errors += 1
            if not job.future.done():
                job.future.set_result(result)

    async def _forward(self, client: Any, body: bytes) -> tuple[int, bytes]:
        async with client.stream("POST", self.endpoint, content=body, headers=self._headers) as response:
            chunks, total = [], 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > MAX_RESPONSE_BYTES:
                    return 502, _error_body(f"the VLM endpoint's answer is larger than {MAX_RESPONSE_BYTES} bytes")
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        def answer(status: int, body: bytes) -> Response:
            return Response(
                body, status_code=status, media_type="application/json", headers={"Cache-Control": "no-store"}
            )

        async def chat(request: Request) -> Response:
            sid = request.path_params["sid"]
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return answer(401, _error_body("this gateway answers cer-stream serve's analyzers only"))
            if sid not in self._counters:
                return answer(404, _error_body(f"no stream {sid!r} here"))
            body = await request.body()
            if len(body) > MAX_REQUEST_BYTES:
                return answer(413, _error_body(f"request larger than {MAX_REQUEST_BYTES} bytes"))
            assert self._ready is not None
            job = _Job(sid, body, time.monotonic(), asyncio.get_running_loop().create_future())
            with self._lock:
                counters = self._counters[sid]
                counters.requests += 1
                older = self._waiting.get(sid)
                if older is not None and not older.future.done():
                    counters.superseded += 1
                    older.future.set_result((429, _error_body("superseded by a newer request of the same stream")))
                self._waiting[sid] = job
            async with self._ready:
                self._queue.append(job)
                self._max_queued = max(self._max_queued, sum(1 for j in self._queue if not j.future.done()))
                self._ready.notify()
            status, data = await job.future
            return answer(status, data)

        async def health(request: Request) -> Response:
            return Response(b"ok\n", media_type="text/plain")

        return Starlette(
            routes=[
                Route("/streams/{sid}/v1/chat/completions", chat, methods=["POST"]),
                Route("/healthz", health),
            ]
        )

    # ------------------------------------------------------------------ public
    def stats(self) -> dict[str, Any]:
        """Counters for a ``vlm_queue`` record (no URL secrets: the endpoint is redacted)."""
        with self._lock:
            queued = sum(1 for j in self._queue if not j.future.done())
            return {
                "endpoint": redact(self.endpoint),
                "concurrency": self.config.concurrency,
                "queued": queued,
                "in_flight": self._in_flight,
                "max_queued": self._max_queued,
                "streams": {sid: c.as_dict() for sid, c in self._counters.items()},
            }

    def close(self) -> None:
        """Stop serving (waiting requests are dropped with the connections); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._server.stop()


__all__ = ["TOKEN_ENV", "GatewayError", "VlmConfig", "VlmGateway"]
