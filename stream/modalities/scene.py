"""Scene modality: keyframes -> a vision-language model -> caption -> 8 basic probabilities.

A VLM takes seconds to describe a clip, far longer than a window may take, so the
description is refreshed *asynchronously* (DESIGN.md, "Scene refresh is asynchronous"):

* the window loop hands each window's keyframes to a :class:`SceneWorker` through
  :meth:`SceneWorker.submit`, which never blocks and keeps only the newest window;
* the worker, an asyncio event loop in its own thread, takes the newest keyframes at most
  every ``every_s`` seconds (wall time), JPEG-encodes them and asks an OpenAI-compatible
  chat-completions endpoint (vLLM, Ollama, llama.cpp server...) to describe the person and
  the scene with the seeds' first prompt (the 9th ABAW CER paper of team RAS, 2025; own
  wording below).  One request is in
  flight at most; each has a timeout; transient failures are retried a bounded number of
  times with exponential backoff;
* an answer is turned into probabilities by the caption head (MiniLM + linear head, see
  ``stream/modalities/speech/texthead.py``) on the worker's own executor thread, and cached together with the
  media time of the window its keyframes came from;
* each window (:class:`SceneModality`) uses the newest cached caption whose media-time age is
  within ``max_age_s`` and records the caption, its age and the worker's counters.  No
  caption yet, a caption too old, or an endpoint that is down, slow, failing or talking
  nonsense: the modality is absent for that window (fusion renormalises over the others),
  the error is counted and reported, and the stream goes on.

The API key is read from an environment variable (``--vlm-key-env``, default
``CER_STREAM_VLM_API_KEY``), sent as ``Authorization: Bearer ...`` and never logged or put in a
record: error texts are scrubbed of it and passed through :func:`stream.core.redact.redact`.

HTTP is spoken by ``httpx`` (an :class:`httpx.AsyncClient` on the worker's event loop, see
:func:`make_client`): a request is an ordinary cancellable coroutine, so a hung server costs
nothing but its timeout and :meth:`SceneWorker.close` returns at once even mid-request; the
connection is kept alive between refreshes, redirects are followed, and proxies and CA
settings come from the environment (``HTTPS_PROXY``/``NO_PROXY``, ``SSL_CERT_FILE``) as httpx
reads them.  Failures are logged on the ``cer_stream.scene`` logger (a warning when a run of
failures starts, so it reaches the run's ``warning`` records) and counted in the window records.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import math
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from stream.core.labels import BASIC
from stream.core.redact import redact
from stream.core.windows import WINDOW_S
from stream.modalities.base import Modality, ModalityOutput, WindowInput
from stream.modalities.speech.texthead import TextHead

if TYPE_CHECKING:  # imported when the worker starts: `images` and tests of other parts never pay for it
    import httpx

log = logging.getLogger("cer_stream.scene")

#: The seeds' first prompt (a free-form emotional reading of behaviour and scene: the 9th ABAW
#: CER paper of team RAS, 2025, and its code, SMIL-SPCRAS/ICCVW_25), in this project's words.
PROMPT = (
    "You are an expert in multimodal emotion recognition. The images are frames taken in order "
    "from a short video clip of a person. Analyse the person's facial expressions, body posture, "
    "gestures and head movements, and the surrounding scene, and use the basic emotions "
    "(neutral, anger, disgust, fear, happiness, sadness, surprise) as a reference for the "
    "emotional state they convey. Answer with a single paragraph of at most 100 tokens that "
    "ends with a period."
)

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
#: Seconds between the starts of two requests (issue 7: --vlm-every, default 4).
DEFAULT_EVERY_S = 4.0
#: Seconds one request may take, connection to last byte.  A 32B VLM on a shared server can
#: take well over ten seconds for four images; a shorter bound would throw good answers away.
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_KEY_ENV = "CER_STREAM_VLM_API_KEY"
#: Keyframes sent per request, evenly spaced over the window (4 of its 20 analysed frames).
KEYFRAMES = 4
#: Keyframes are scaled so their longer side is at most this before JPEG encoding: Qwen2.5-VL
#: works at 28-pixel patches, so 448 px is 16 patches a side; larger costs the VLM more time.
KEYFRAME_MAX_SIDE = 448
JPEG_QUALITY = 85
#: Room for the ~100-token paragraph the prompt asks for.
MAX_TOKENS = 160
#: Extra attempts after a transient failure (timeout, refused connection, HTTP 5xx/408/429).
RETRIES = 2
#: Backoff before retry i (1-based) is BACKOFF_S * 2**(i-1), capped at BACKOFF_MAX_S.
BACKOFF_S = 0.5
BACKOFF_MAX_S = 8.0
#: Answers larger than this are not read (a chat completion for one paragraph is ~1-2 kB).
MAX_RESPONSE_BYTES = 1 << 20
#: Seconds an idle kept-alive connection is reused (servers such as vLLM's uvicorn close theirs
#: after 5 s; a request on a connection closed meanwhile is retried).
KEEPALIVE_S = 30.0
#: Captions are cut to this many characters (the text encoder reads ~192 tokens at most).
MAX_CAPTION_CHARS = 2000
#: How long close() waits for the worker thread.
CLOSE_TIMEOUT_S = 2.0
#: Error texts kept for the record are cut to this length.
MAX_ERROR_CHARS = 240


# --------------------------------------------------------------------------- options
@dataclass(frozen=True, kw_only=True)
class SceneOptions:
    """Settings of the scene refresh.  Only the variable's *name* is held, never the key.

    Attributes:
        url: the endpoint's base URL, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions``
            is appended unless the URL already ends with it).
        model: the model name the server knows the VLM by.
        every_s: minimum seconds between the starts of two requests.
        timeout_s: seconds one request may take.
        key_env: environment variable holding the API key (unset or empty: no key is sent).
        max_age_s: a caption older than this (media time, its keyframes' window end to the
            current window's end) is not used; ``None``: ``2 * every_s + WINDOW_S``, which a
            live stream meets when the VLM answers within about one refresh period.
        keyframes, max_side, jpeg_quality: what is sent per request.
        max_tokens: the answer's length limit.
        retries, backoff_s, backoff_max_s: bounded retries of transient failures.
        prompt: the instruction sent with the keyframes.
    """

    url: str
    model: str = DEFAULT_MODEL
    every_s: float = DEFAULT_EVERY_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    key_env: str = DEFAULT_KEY_ENV
    max_age_s: float | None = None
    keyframes: int = KEYFRAMES
    max_side: int = KEYFRAME_MAX_SIDE
    jpeg_quality: int = JPEG_QUALITY
    max_tokens: int = MAX_TOKENS
    retries: int = RETRIES
    backoff_s: float = BACKOFF_S
    backoff_max_s: float = BACKOFF_MAX_S
    prompt: str = PROMPT

    def __post_init__(self) -> None:
        endpoint_url(self.url)  # raises ValueError on a bad URL
        if not self.model.strip():
            raise ValueError("SceneOptions.model must not be empty")
        for name in ("every_s", "timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"SceneOptions.{name} must be a positive number of seconds, got {value}")
        if self.max_age_s is not None and not (math.isfinite(self.max_age_s) and self.max_age_s >= 0):
            raise ValueError(f"SceneOptions.max_age_s must be >= 0 seconds, got {self.max_age_s}")
        if self.keyframes < 1 or self.max_side < 16 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError("keyframes >= 1, max_side >= 16 and 1 <= jpeg_quality <= 100 are required")
        if self.max_tokens < 1 or self.retries < 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("max_tokens >= 1, retries >= 0 and non-negative backoff are required")
        if not self.key_env.strip():
            raise ValueError("SceneOptions.key_env must name an environment variable")

    @property
    def caption_max_age_s(self) -> float:
        return self.max_age_s if self.max_age_s is not None else 2 * self.every_s + WINDOW_S


def endpoint_url(base: str) -> str:
    """The chat-completions URL for a base URL such as ``http://host:8000/v1``."""
    url = base.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"bad VLM URL {redact(base)!r}: expected http(s)://HOST[:PORT]/v1")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"bad VLM URL {redact(base)!r}: bad port") from None
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


# --------------------------------------------------------------------------- request / answer
def pick_keyframes(items: Sequence[Any], count: int) -> list[Any]:
    """``count`` items evenly spaced over ``items`` (first and last included), in order."""
    n = len(items)
    if n <= count:
        return list(items)
    idx = sorted({int(round(i)) for i in np.linspace(0, n - 1, count)})
    return [items[i] for i in idx]


def jpeg_data_url(rgb: np.ndarray, *, max_side: int = KEYFRAME_MAX_SIDE, quality: int = JPEG_QUALITY) -> str:
    """An RGB uint8 image as a ``data:image/jpeg;base64,...`` URL, scaled to ``max_side``."""
    import cv2

    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    if scale < 1:
        bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def chat_request(options: SceneOptions, image_urls: Sequence[str]) -> dict[str, Any]:
    """The chat-completions request body: the keyframes, then the instruction, one user turn."""
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
    content.append({"type": "text", "text": options.prompt})
    return {
        "model": options.model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": options.max_tokens,
        "temperature": 0,
    }


class VlmError(Exception):
    """A failed request.  ``retry``: worth trying again soon (the failure may be transient)."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def parse_caption(body: bytes) -> str:
    """The caption in a chat-completions answer (whitespace collapsed), or :class:`VlmError`."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise VlmError(f"bad answer: not JSON ({_snippet(body)})", retry=False) from None
    try:
        content = obj["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        err = obj.get("error") if isinstance(obj, dict) else None
        if err:
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise VlmError(f"server error: {msg}", retry=False) from None
        raise VlmError("bad answer: no choices[0].message.content", retry=False) from None
    if isinstance(content, list):  # content parts, as some servers answer
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise VlmError(f"bad answer: content is {type(content).__name__}, not text", retry=False)
    text = " ".join(content.split())
    if not text:
        raise VlmError("empty caption", retry=False)
    return text[:MAX_CAPTION_CHARS]


def _snippet(body: bytes, n: int = 120) -> str:
    text = " ".join(body[:n].decode("utf-8", "replace").split())
    return text + ("..." if len(body) > n else "") if text else "empty body"


def make_client(timeout_s: float = DEFAULT_TIMEOUT_S) -> httpx.AsyncClient:
    """The worker's HTTP client: HTTP/1.1 with keep-alive (one pooled connection: one request is
    in flight at most), redirects followed, proxies and CA settings from the environment
    (``HTTPS_PROXY``, ``NO_PROXY``, ``SSL_CERT_FILE``...), no retries of its own (the worker
    retries with backoff)."""
    import httpx

    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=True,
        max_redirects=5,
        trust_env=True,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=KEEPALIVE_S),
        headers={"User-Agent": "cer-stream", "Accept": "application/json"},
    )


async def post_json(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    client: httpx.AsyncClient | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> tuple[int, bytes]:
    """POST ``body`` (JSON) to ``url`` and return ``(status, response body)``.

    ``client``: an :class:`httpx.AsyncClient` (see :func:`make_client`; its connection is
    kept alive between calls); without one, a client is made for this call.  Answers larger
    than ``max_bytes`` are not read (:class:`VlmError`).  httpx errors propagate (the worker
    maps them, see :func:`_describe_http_error`); the caller bounds the total time.
    """
    if client is None:
        async with make_client() as own:
            return await post_json(url, body, headers, client=own, max_bytes=max_bytes)
    headers = {"Content-Type": "application/json", **headers}
    async with client.stream("POST", url, content=body, headers=headers) as response:
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise VlmError(f"bad answer: larger than {max_bytes} bytes", retry=False)
        chunks, total = [], 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > max_bytes:
                raise VlmError(f"bad answer: larger than {max_bytes} bytes", retry=False)
            chunks.append(chunk)
        return response.status_code, b"".join(chunks)


def _caused_by(exc: BaseException, kind: type, depth: int = 8) -> bool:
    """Whether ``exc`` or an exception in its cause chain (exception groups included) is a ``kind``."""
    if isinstance(exc, kind):
        return True
    if depth <= 0:
        return False
    nested = list(getattr(exc, "exceptions", ()) or ())
    nested += [e for e in (exc.__cause__, exc.__context__) if e is not None]
    return any(_caused_by(e, kind, depth - 1) for e in nested)


def _describe_http_error(exc: Exception, timeout_s: float = DEFAULT_TIMEOUT_S) -> VlmError:
    """An httpx (or socket) failure as a :class:`VlmError`: the message the record shows, and
    whether it is worth a retry."""
    import httpx

    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return VlmError(f"no answer within {timeout_s:g} s ({type(exc).__name__})", retry=True)
    if isinstance(exc, (httpx.ConnectError, ConnectionRefusedError)):
        if "refused" in text.lower() or _caused_by(exc, ConnectionRefusedError):
            return VlmError("connection refused", retry=True)
        return VlmError(f"cannot connect: {text}", retry=True)
    if isinstance(exc, httpx.TooManyRedirects):
        return VlmError(f"too many redirects: {text}", retry=False)
    if isinstance(exc, httpx.RemoteProtocolError):
        low = text.lower()
        if "disconnect" in low or "incomplete" in low or "closed" in low:
            # also a kept-alive connection the server closed just as it was reused
            return VlmError("connection closed mid-answer", retry=True)
        return VlmError(f"bad answer: not HTTP ({text})", retry=False)
    if isinstance(exc, (httpx.DecodingError, httpx.InvalidURL, httpx.UnsupportedProtocol)):
        return VlmError(f"{type(exc).__name__}: {text}", retry=False)
    if isinstance(exc, (httpx.TransportError, OSError)):  # reset, unreachable, DNS, TLS, proxy...
        return VlmError(f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or text}", retry=True)
    return VlmError(f"{type(exc).__name__}: {text}", retry=False)


# --------------------------------------------------------------------------- worker
@dataclass(frozen=True, slots=True)
class Caption:
    """A VLM answer, as cached by the worker."""

    text: str
    media_time: float  # media time of the keyframes' window (its end), seconds
    window_index: int
    arrived: float  # time.monotonic() when the answer arrived
    latency_s: float  # the successful attempt's request time
    seq: int  # 1, 2, ... in arrival order
    result: Any = None  # what the worker's ``postprocess`` made of the text (probabilities)


@dataclass(slots=True)
class _Job:
    window_index: int
    media_time: float
    frames: list[np.ndarray]
    image_urls: list[str] | None = None


@dataclass
class _Counters:
    requests: int = 0  # attempts sent (retries included)
    ok: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    last_error: str | None = None
    last_latency_ms: float | None = None
    in_flight: bool = False
    submitted: int = 0
    replaced: int = 0  # submissions overwritten by a newer one before being sent


class SceneWorker:
    """Refreshes the scene caption in the background; see the module docstring.

    Args:
        options: the endpoint and timing.
        postprocess: optional callable run on each new caption's text on the worker's executor
            thread (never the window thread); its result is cached with the caption.  If it
            raises, the caption is not used and the failure counts as an error.
    """

    def __init__(self, options: SceneOptions, *, postprocess: Callable[[str], Any] | None = None) -> None:
        self.options = options
        self.url = endpoint_url(options.url)
        self.postprocess = postprocess
        self._lock = threading.Lock()
        self._pending: _Job | None = None
        self._caption: Caption | None = None
        self._counters = _Counters()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._client: httpx.AsyncClient | None = None

    # -- life cycle ---------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> SceneWorker:
        """Start the worker thread (idempotent); returns once its event loop runs."""
        if self._thread is not None:
            return self
        if self._stop.is_set():
            raise RuntimeError("a closed SceneWorker cannot be restarted")
        self._thread = threading.Thread(target=self._run, name="cer-scene", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)
        return self

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Stop the worker: an in-flight request is cancelled; joins with ``timeout``."""
        self._stop.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop has already closed
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("scene worker did not stop within %.1f s", timeout)

    def __enter__(self) -> SceneWorker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- window-thread side -------------------------------------------------------------------
    def submit(self, window_index: int, media_time: float, frames: Sequence[np.ndarray]) -> None:
        """Offer a window's keyframes (RGB uint8).  Never blocks; only the newest is kept.

        The arrays are referenced, not copied: the caller must not modify them afterwards.
        """
        job = _Job(int(window_index), float(media_time), list(frames))
        with self._lock:
            if self._pending is not None:
                self._counters.replaced += 1
            self._pending = job
            self._counters.submitted += 1
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # loop closed: the worker has stopped
                pass

    def reset(self) -> None:
        """Forget the cached caption and any keyframes not sent yet (counters are kept)."""
        with self._lock:
            self._caption = None
            self._pending = None

    def caption(self) -> Caption | None:
        """The newest caption, however old."""
        with self._lock:
            return self._caption

    def latest(self, now_media_time: float, max_age_s: float) -> tuple[str, float] | None:
        """``(caption, age_s)`` of the newest caption if its media-time age is at most
        ``max_age_s``, else ``None``."""
        cap = self.caption()
        if cap is None:
            return None
        age = max(0.0, now_media_time - cap.media_time)
        return (cap.text, age) if age <= max_age_s else None

    def status(self) -> dict[str, Any]:
        """Counters for the window record (no secrets: the URL is redacted, the key never held)."""
        with self._lock:
            c, cap = self._counters, self._caption
            return {
                "endpoint": redact(self.url),
                "model": self.options.model,
                "requests": c.requests,
                "ok": c.ok,
                "errors": c.errors,
                "consecutive_errors": c.consecutive_errors,
                "last_error": c.last_error,
                "last_latency_ms": c.last_latency_ms,
                "in_flight": c.in_flight,
                "submitted": c.submitted,
                "skipped": c.replaced,
                "caption_window": cap.window_index if cap else None,
                "caption_wall_age_s": round(time.monotonic() - cap.arrived, 3) if cap else None,
            }

    # -- worker thread ------------------------------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        # one executor thread for the blocking work (JPEG encoding, the caption head), so that it
        # stays off the event loop and never competes with itself
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cer-scene-work")
        try:
            asyncio.set_event_loop(loop)
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._main())
            self._loop = loop
            self._ready.set()
            if self._stop.is_set():
                self._task.cancel()
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except Exception:  # pragma: no cover - a bug; the stream goes on without captions
            log.exception("scene worker stopped")
        finally:
            self._ready.set()
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                if self._client is not None:
                    loop.run_until_complete(self._client.aclose())
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:  # pragma: no cover - closing a connection failed: nothing to keep
                log.debug("scene worker clean-up failed", exc_info=True)
            finally:
                # wait for a running head call or JPEG encoding (tens of ms), so that whoever
                # closes the head after close() never pulls it from under a running call
                self._executor.shutdown(wait=True, cancel_futures=True)
                with self._lock:
                    self._counters.in_flight = False
                asyncio.set_event_loop(None)
                loop.close()

    def _take(self) -> _Job | None:
        with self._lock:
            job, self._pending = self._pending, None
            return job

    async def _main(self) -> None:
        assert self._wake is not None
        # made here, not before the loop reports ready: importing httpx (~0.1 s) must not
        # delay the window that starts the worker
        self._client = make_client(self.options.timeout_s)
        next_due = 0.0
        while not self._stop.is_set():
            delay = next_due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            job = self._take()
            if job is None:
                self._wake.clear()
                job = self._take()  # a submit may have landed between the two lines above
                if job is None:
                    await self._wake.wait()
                    continue
            next_due = time.monotonic() + self.options.every_s
            await self._refresh(job)

    async def _refresh(self, job: _Job) -> None:
        """One refresh: the first attempt plus at most ``retries`` retries of transient errors,
        each retry on the newest keyframes available."""
        opts = self.options
        for attempt in range(opts.retries + 1):
            if attempt:
                await asyncio.sleep(min(opts.backoff_max_s, opts.backoff_s * 2 ** (attempt - 1)))
                job = self._take() or job
            try:
                caption = await self._attempt(job)
            except VlmError as exc:
                self._record_error(str(exc))
                if not exc.retry:
                    return
            except Exception as exc:  # a bug or an unexpected failure: report, carry on
                self._record_error(f"{type(exc).__name__}: {exc}")
                log.debug("scene refresh failed", exc_info=True)
                return
            else:
                self._record_caption(caption)
                return

    async def _attempt(self, job: _Job) -> Caption:
        loop = asyncio.get_running_loop()
        opts = self.options
        if job.image_urls is None:
            job.image_urls = await loop.run_in_executor(self._executor, self._encode, job.frames)
            job.frames = []  # the encoded images are all a retry needs
        body = json.dumps(chat_request(opts, job.image_urls)).encode("utf-8")
        headers = {}
        key = os.environ.get(opts.key_env, "").strip()
        if key:
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
                raise VlmError(f"the API key in ${opts.key_env} contains control characters", retry=False)
            headers["Authorization"] = f"Bearer {key}"
        with self._lock:
            self._counters.requests += 1
            self._counters.in_flight = True
        t0 = time.monotonic()
        try:
            status, data = await asyncio.wait_for(
                post_json(self.url, body, headers, client=self._client), opts.timeout_s
            )
        except asyncio.TimeoutError:  # (TimeoutError itself from 3.11 on)
            raise VlmError(f"no answer within {opts.timeout_s:g} s", retry=True) from None
        except VlmError:
            raise
        except Exception as exc:  # httpx / socket failures
            raise _describe_http_error(exc, opts.timeout_s) from None
        finally:
            with self._lock:
                self._counters.in_flight = False
        latency = time.monotonic() - t0
        if status != 200:
            raise VlmError(f"HTTP {status}: {_snippet(data)}", retry=status >= 500 or status in (408, 429))
        text = parse_caption(data)
        result = None
        if self.postprocess is not None:
            try:
                result = await loop.run_in_executor(self._executor, self.postprocess, text)
            except Exception as exc:
                raise VlmError(f"caption head failed: {type(exc).__name__}: {exc}", retry=False) from None
        return Caption(text, job.media_time, job.window_index, time.monotonic(), latency, 0, result)

    def _encode(self, frames: list[np.ndarray]) -> list[str]:
        opts = self.options
        return [jpeg_data_url(f, max_side=opts.max_side, quality=opts.jpeg_quality) for f in frames]

    def _clean(self, message: str) -> str:
        key = os.environ.get(self.options.key_env, "").strip()
        if key:
            message = message.replace(key, "***")
        message = redact(" ".join(message.split()))
        return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 3] + "..."

    def _record_error(self, message: str) -> None:
        message = self._clean(message)
        with self._lock:
            c = self._counters
            c.errors += 1
            c.consecutive_errors += 1
            c.last_error = message
            first = c.consecutive_errors == 1
        if first:
            log.warning("scene VLM request failed (%s); the scene modality is absent until it answers", message)

    def _record_caption(self, caption: Caption) -> None:
        with self._lock:
            c = self._counters
            recovered = c.consecutive_errors > 0
            c.ok += 1
            c.consecutive_errors = 0
            c.last_latency_ms = round(caption.latency_s * 1e3, 1)
            seq = (self._caption.seq if self._caption else 0) + 1
            self._caption = Caption(
                caption.text,
                caption.media_time,
                caption.window_index,
                caption.arrived,
                caption.latency_s,
                seq,
                caption.result,
            )
        if recovered:
            log.info("scene VLM answers again")


# --------------------------------------------------------------------------- modality
class CaptionHead(Protocol):
    def predict(self, texts: Sequence[str]) -> np.ndarray: ...


def load_scene_head() -> TextHead:
    """The project's caption head (MiniLM + linear head trained on Qwen2.5-VL captions)."""
    try:
        return TextHead.load("scene")
    except (OSError, ValueError, RuntimeError) as exc:
        raise RuntimeError(f"cannot load the scene caption head: {exc}") from exc


class _HeadCall:
    """The caption head as the worker's ``postprocess``: text -> (probabilities [8], embedding
    or None).  The embedding (the project's :class:`TextHead`: MiniLM's 384-d sentence vector)
    becomes the modality's feature; another head gives probabilities only."""

    def __init__(self, head: CaptionHead) -> None:
        self.head = head

    def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray | None]:
        if isinstance(self.head, TextHead):
            probs, emb = self.head.predict_with_embeddings([text])
            emb = np.asarray(emb, dtype=np.float32)[0]
        else:
            probs, emb = self.head.predict([text]), None
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != (1, len(BASIC)) or not np.isfinite(probs).all():
            raise ValueError(f"the caption head returned shape {probs.shape}, expected (1, {len(BASIC)})")
        return probs[0], emb


class SceneModality(Modality):
    """The scene modality (name ``"scene"``): submits each window's keyframes to the worker and
    uses the newest caption no older than ``options.caption_max_age_s``.

    Args:
        options: the endpoint and timing.
        head: an object with ``predict(texts) -> [N, 8]`` (BASIC order), and optionally
            ``predict_with_embeddings(texts) -> ([N, 8], [N, D])`` (the embedding is then the
            modality's feature); default: the project's scene head (:func:`load_scene_head`),
            closed with the modality.  It runs on the worker's executor thread, never the
            window thread (MiniLM takes ~70 ms per caption on one CPU core).
    The worker starts with the first window, so a modality that is never called opens nothing.
    """

    name = "scene"

    def __init__(self, options: SceneOptions, *, head: CaptionHead | None = None) -> None:
        self.options = options
        self._own_head: TextHead | None = None  # loaded here: closed with the modality
        if head is None:
            head = self._own_head = load_scene_head()
        self.head: CaptionHead = head
        self.worker = SceneWorker(options, postprocess=_HeadCall(self.head))

    def __call__(self, inp: WindowInput) -> ModalityOutput:
        if not self.worker.started:
            self.worker.start()
        keyframes = pick_keyframes(inp.frames, self.options.keyframes)
        if keyframes:
            self.worker.submit(inp.window.index, inp.window.end, [f.image for f in keyframes])
        status = self.worker.status()
        cap = self.worker.caption()
        if cap is None:
            if status["consecutive_errors"]:
                return ModalityOutput.absent(f"VLM unreachable: {status['last_error']}", vlm=status)
            return ModalityOutput.absent("no caption yet", vlm=status)
        age = round(max(0.0, inp.window.end - cap.media_time), 3)
        if age > self.options.caption_max_age_s:
            reason = "caption too old"
            if status["consecutive_errors"]:
                reason += f" (VLM unreachable: {status['last_error']})"
            return ModalityOutput.absent(reason, caption_age_s=age, vlm=status)
        probs, emb = cap.result
        return ModalityOutput(
            probs.copy(),
            None if emb is None else emb.copy(),
            {"caption": cap.text, "caption_age_s": age, "caption_window": cap.window_index, "vlm": status},
        )

    def reset(self) -> None:
        """Forget the cached caption (a new stream starts)."""
        self.worker.reset()

    def close(self) -> None:
        self.worker.close()
        if self._own_head is not None:
            self._own_head.close()


# --------------------------------------------------------------------------- building
def build_scene_modality(options: SceneOptions | None, *, head: CaptionHead | None = None) -> SceneModality | None:
    """The scene modality for ``options``, or ``None`` without options (no VLM endpoint).
    Raises ``RuntimeError`` when the caption head is missing."""
    return None if options is None else SceneModality(options, head=head)


__all__ = [
    "Caption",
    "DEFAULT_KEY_ENV",
    "PROMPT",
    "SceneModality",
    "SceneOptions",
    "SceneWorker",
    "VlmError",
    "build_scene_modality",
    "chat_request",
    "endpoint_url",
    "jpeg_data_url",
    "load_scene_head",
    "parse_caption",
    "pick_keyframes",
    "post_json",
]
