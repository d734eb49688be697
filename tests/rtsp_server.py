#!/usr/bin/python3
"""Serve an MP4 clip over RTSP on loopback, for tests.

Run this with the *system* interpreter (``/usr/bin/python3``): it needs the
GObject-introspection bindings for GStreamer's RTSP server, which come from
Debian packages (see ``tests/DEBIAN_PACKAGES.txt``) rather than from PyPI::

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --path /sample --file samples/astronaut.mp4

The server binds to 127.0.0.1 only.  Once it is listening it prints exactly one
line to stdout, ``READY rtsp://127.0.0.1:PORT/PATH`` (flushed), and nothing
else; diagnostics go to stderr.  ``--port 0`` lets the OS choose a free port,
which the READY line then reports.  SIGTERM or SIGINT stops it cleanly
(exit status 0).

The H.264 (and, unless ``--no-audio``, AAC) elementary streams are remuxed
from the file without re-encoding and paced in real time by the pipeline.

The media factory is *not* shared: every client connection gets its own
pipeline, which starts at the beginning of the file (so with an IDR frame and
SPS/PPS) and is torn down when that client leaves.  Each connection therefore
sees the same frames whatever happened before, and concurrent clients do not
disturb one another.  (With GStreamer 1.22 a shared factory also served
back-to-back connections, but a client that connects while another is
playing would join the running pipeline mid-stream, making what a test sees
depend on timing.)  A client that reads to the end gets a normal end of
stream after the last frame.

A clip without an audio track must be served with ``--no-audio``; the
server checks this at start-up and exits with an error otherwise (left
unchecked, clients would only see PyAV's "Invalid data found").

``--user NAME`` asks every client for that user name and the password in the
environment variable ``RTSP_SERVER_PASSWORD`` (HTTP basic authentication, as a
camera would; the password is not taken on the command line, which every user
of the machine can read).  A client with other credentials, or none, gets
``401 Unauthorized``.
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

#: The only address the server listens on.
BIND_ADDRESS = "127.0.0.1"
#: The environment variable the password of ``--user`` comes from.
PASSWORD_ENV = "RTSP_SERVER_PASSWORD"


def _quote(value: str) -> str:
    """Quote ``value`` as a string property in a gst-launch description."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_launch(clip: Path, *, audio: bool = True, video: bool = True) -> str:
    """Return the gst-launch description of one client's media pipeline.

    The demuxer's pads are linked by name-less ``d.`` references (naming them
    ``d.video_0`` made PyAV's RTSP demuxer fail with "Invalid data").  Each
    ``d.`` branch gets the demuxer pad whose caps its parser accepts (the
    queue passes caps queries through), so the order of the tracks in the
    file does not matter; with ``audio=False`` the audio pad is simply left
    unlinked.  ``payN`` names are how the RTSP server finds the streams.
    """
    parts = [f"filesrc location={_quote(str(clip))} ! qtdemux name=d"]
    if video:
        parts.append("d. ! queue ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1")
    if audio:  # an audio-only stream's one payloader is pay0
        parts.append(f"d. ! queue ! aacparse ! rtpmp4gpay name=pay{1 if video else 0} pt=97")
    return "( " + " ".join(parts) + " )"


def _iter_boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """Yield ``(type, payload_start, payload_end)`` for the ISO-BMFF boxes in ``data[start:end]``."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def _read_moov(clip: Path) -> bytes:
    """Return the payload of the top-level ``moov`` box of an MP4 file (or ``b""``)."""
    with clip.open("rb") as f:
        while True:
            head = f.read(8)
            if len(head) < 8:
                return b""
            size, kind = struct.unpack(">I4s", head)
            header = 8
            if size == 1:
                (size,) = struct.unpack(">Q", f.read(8))
                header = 16
            elif size == 0:
                return f.read() if kind == b"moov" else b""
            if size < header:
                return b""
            if kind == b"moov":
                return f.read(size - header)
            f.seek(size - header, 1)


def probe_tracks(clip: Path) -> tuple[int, int]:
    """Return the numbers of (video, audio) tracks in the MP4 file ``clip``.

    Reads the ``moov/trak/mdia/hdlr`` handler types directly, so no GStreamer
    pipeline is needed.  A file that is not an MP4 yields ``(0, 0)``.
    """
    moov = _read_moov(clip)
    counts = {b"vide": 0, b"soun": 0}
    for kind, a, b in _iter_boxes(moov):
        if kind != b"trak":
            continue
        for kind2, a2, b2 in _iter_boxes(moov, a, b):
            if kind2 != b"mdia":
                continue
            for kind3, a3, b3 in _iter_boxes(moov, a2, b2):
                # hdlr: version/flags (4), pre_defined (4), handler_type (4), ...
                if kind3 == b"hdlr" and b3 - a3 >= 12:
                    handler = moov[a3 + 8 : a3 + 12]
                    if handler in counts:
                        counts[handler] += 1
    return counts[b"vide"], counts[b"soun"]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve an MP4 clip over RTSP on 127.0.0.1.")
    parser.add_argument("--port", type=int, required=True, help="TCP port; 0 picks a free one")
    parser.add_argument("--path", default="/sample", help="mount path (default: %(default)s)")
    parser.add_argument("--file", type=Path, required=True, help="H.264 (+AAC) .mp4 clip to serve")
    parser.add_argument("--no-audio", action="store_true", help="serve the video track only")
    parser.add_argument("--no-video", action="store_true", help="serve the audio track only (an audio-only stream)")
    parser.add_argument("--user", help=f"require basic authentication: this user, the password in ${PASSWORD_ENV}")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"invalid port {args.port}")
    if not args.path.startswith("/"):
        args.path = "/" + args.path
    if not args.file.is_file():
        parser.error(f"no such file: {args.file}")
    if args.no_audio and args.no_video:
        parser.error("--no-audio and --no-video leave nothing to serve")
    if args.user is not None and PASSWORD_ENV not in os.environ:
        parser.error(f"--user needs the password in ${PASSWORD_ENV}")
    return args


def require_basic_auth(server: GstRtspServer.RTSPServer, factory: GstRtspServer.RTSPMediaFactory, user: str) -> None:
    """Let only ``user`` with the password of :data:`PASSWORD_ENV` play ``factory``'s media:
    clients without those credentials are answered ``401 Unauthorized``."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "viewer")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, os.environ[PASSWORD_ENV]), token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    for name in ("media.factory.access", "media.factory.construct"):
        permissions.add_permission_for_role("viewer", name, True)
    factory.set_permissions(permissions)


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; return the process exit status."""
    args = _parse_args(argv)
    Gst.init(None)

    try:
        n_video, n_audio = probe_tracks(args.file)
    except OSError as exc:
        print(f"rtsp_server: cannot read {args.file}: {exc}", file=sys.stderr)
        return 1
    if n_video == 0:
        print(f"rtsp_server: {args.file} has no video track (is it an MP4?)", file=sys.stderr)
        return 1
    if n_audio == 0 and not args.no_audio:
        print(f"rtsp_server: {args.file} has no audio track; pass --no-audio", file=sys.stderr)
        return 1

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(build_launch(args.file.resolve(), audio=not args.no_audio, video=not args.no_video))
    factory.set_shared(False)

    server = GstRtspServer.RTSPServer()
    server.set_address(BIND_ADDRESS)
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.path, factory)
    if args.user is not None:
        require_basic_auth(server, factory, args.user)

    loop = GLib.MainLoop()

    def _stop(signum: int) -> bool:
        print(f"rtsp_server: signal {signum}, stopping", file=sys.stderr)
        loop.quit()
        return GLib.SOURCE_REMOVE

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, _stop, signum)

    try:
        source_id = server.attach(None)
    except GLib.Error as exc:  # raised by newer bindings when bind() fails
        print(f"rtsp_server: cannot listen on {BIND_ADDRESS}:{args.port}: {exc.message}", file=sys.stderr)
        return 1
    if source_id == 0:
        print(f"rtsp_server: cannot listen on {BIND_ADDRESS}:{args.port}", file=sys.stderr)
        return 1

    port = server.get_bound_port()
    print(f"READY rtsp://{BIND_ADDRESS}:{port}{args.path}", flush=True)
    try:
        loop.run()
    finally:
        # Stop accepting, then drop any connected clients and their media.
        GLib.source_remove(source_id)
        server.client_filter(lambda _server, _client: GstRtspServer.RTSPFilterResult.REMOVE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
