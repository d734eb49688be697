"""A chat-completions server on loopback for the scene modality's and the VLM gateway's tests.

It checks nothing itself: it records every request (path, headers, parsed body, client address)
and how many were in flight at once, and answers with the captions it is given, or misbehaves as
a test asks: hangs, HTTP 500 (echoing the request's headers, key included, as a careless server
might), garbage, an empty caption, a redirect, a chunked answer, an answer without a length.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "qwen2.5-vl-test"


class FakeVLM:
    """A chat-completions server on 127.0.0.1 with a chosen behaviour."""

    def __init__(
        self,
        captions: list[str],
        *,
        mode: str = "ok",
        delay: float = 0.0,
        fail_first: int = 0,
        redirect: int | None = None,
    ):
        self.redirect = redirect  # an HTTP status: requests outside /moved/ are sent there
        self.connections: set[tuple[str, int]] = set()  # client (address, port): one per TCP connection
        self.captions = captions
        self.mode = mode
        self.delay = delay
        self.fail_first = fail_first
        self.requests: list[dict] = []
        self.answered: list[str] = []
        self.in_flight = 0  # requests whose client still waits (its connection is open)
        self.max_in_flight = 0
        self._waiting: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.release = threading.Event()  # set at teardown: hung handlers return
        vlm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                vlm._arrived(self.connection)
                try:
                    vlm.handle(self)
                finally:
                    vlm._left(self.connection)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                import sys

                if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        try:
            req = json.loads(body)
        except ValueError:
            req = None
        if self.redirect and "/moved/" not in h.path:
            with self.lock:
                self.requests.append(
                    {
                        "path": h.path,
                        "headers": dict(h.headers),
                        "body": req,
                        "t": time.monotonic(),
                        "redirected": True,
                        "client": h.client_address,
                    }
                )
            h.send_response(self.redirect)
            h.send_header("Location", "/moved" + h.path)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        with self.lock:
            n = len([r for r in self.requests if not r.get("redirected")])
            self.connections.add(h.client_address)
            self.requests.append(
                {
                    "path": h.path,
                    "headers": dict(h.headers),
                    "body": req,
                    "t": time.monotonic(),
                    "client": h.client_address,
                }
            )
        mode = self.mode if n >= self.fail_first else "500"
        if self.delay:
            self.release.wait(self.delay)
        if mode == "hang":  # until the client gives up (closes its end) or the test ends
            while not self.release.wait(0.01):
                if _peer_closed(h.connection):
                    return
            return
        if mode == "500":
            echo = json.dumps({"error": {"message": "internal error", "request_headers": dict(h.headers)}})
            return self.reply(h, 500, echo.encode())
        if mode == "garbage":
            return self.reply(h, 200, b"<html>{not json at all")
        if mode == "empty":
            return self.reply(h, 200, json.dumps(self.completion("  \n ")).encode())
        caption = self.captions[n % len(self.captions)]
        self.answered.append(caption)
        # the real text with the line breaks a VLM might add
        payload = json.dumps(self.completion(caption.replace(". ", ".\n", 1))).encode()
        if mode == "chunked":  # as Go's net/http (Ollama) sends a large answer
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for i in range(0, len(payload), 300):
                part = payload[i : i + 300]
                h.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            h.wfile.write(b"0\r\n\r\n")
        elif mode == "eof":  # no length: the body ends when the server closes
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(payload)
            h.close_connection = True
        else:
            self.reply(h, 200, payload)

    @staticmethod
    def completion(text: str) -> dict:
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
        }

    def _arrived(self, conn: socket.socket) -> None:
        """Count a request in flight.  A request whose client gave up (closed its connection)
        no longer is, even if its handler has not seen the close yet: a hung handler looks every
        10 ms, and a client's next request can come sooner than that after a timeout."""
        with self.lock:
            self._waiting = {s for s in self._waiting if not _peer_closed(s)}
            self._waiting.add(conn)
            self.in_flight = len(self._waiting)
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _left(self, conn: socket.socket) -> None:
        with self.lock:
            self._waiting.discard(conn)
            self.in_flight = len(self._waiting)

    @staticmethod
    def reply(h: BaseHTTPRequestHandler, status: int, payload: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock`` (it reads as end of file now, without consuming)."""
    poller = select.poll()  # not select(): the test process may hold fds past 1023
    poller.register(sock, select.POLLIN)
    try:
        return bool(poller.poll(0)) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # reset, or already closed here
        return True


@contextlib.contextmanager
def fake_vlms(captions: list[str]) -> Iterator[Callable[..., FakeVLM]]:
    """A maker of :class:`FakeVLM` servers answering with ``captions`` (keyword arguments as
    FakeVLM's); every server it made is closed on exit."""
    servers: list[FakeVLM] = []

    def make(**kw) -> FakeVLM:
        servers.append(FakeVLM(captions, **kw))
        return servers[-1]

    try:
        yield make
    finally:
        for s in servers:
            s.close()
