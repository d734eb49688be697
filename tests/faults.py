"""Fault injection for the stream tests and the soak benchmark: a TCP proxy that can stall
or drop its connections, and media files whose timing is awkward on purpose.

Network (stdlib only)::

    with StallProxy("127.0.0.1", server_port) as proxy:
        url = proxy.proxied(rtsp_url)     # the same URL through the proxy
        ...                                # a client reads url
        proxy.stall()                      # nothing moves, every socket stays open
        proxy.resume()                     # data flows again
        proxy.drop()                       # every current connection is closed (reset=True: RST)

Media (PyAV + real pictures: ``skimage.data.astronaut()`` moved and scaled with the media
time, so every frame differs and a jump in time is also a jump in the picture; audio, where
asked for, is real speech from espeak-ng through ``samples/make_sample.py``):

* :func:`make_vfr_clip`: H.264 (+AAC) MP4/MKV at a variable frame rate (irregular steps);
* :func:`make_pts_jump_clip`: H.264 (+AAC) MPEG-TS whose timestamps jump forward, then back;
* :func:`make_looped_clip`: an MP4 played N times in a row, by stream copy (no re-encode).

The two generators return a :class:`Clip` naming every video frame's presentation time, so a
test can compare what a reader decodes with what was written.  Heavy imports (numpy, cv2,
skimage) happen inside the functions: ``bench/soak.py`` imports this module for
:func:`make_looped_clip`, which needs PyAV only.
"""

from __future__ import annotations

import importlib.util
import math
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Clip",
    "Jump",
    "StallProxy",
    "make_looped_clip",
    "make_pts_jump_clip",
    "make_vfr_clip",
    "render_frame",
]

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- the proxy

#: How long a proxy thread blocks waiting for a socket before it looks at its flags again.
_POLL_S = 0.1
_CHUNK = 65536


def _wait_writable(sock: socket.socket, timeout_s: float) -> None:
    """Until ``sock`` takes more bytes, or ``timeout_s`` (a poll selector, not select(): the test
    process may hold descriptors past 1023)."""
    with selectors.PollSelector() as sel:
        sel.register(sock, selectors.EVENT_WRITE)
        sel.select(timeout_s)


class _Pair:
    """One proxied connection: the client's socket and ours to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket, peer: tuple[str, int]) -> None:
        self.client = client
        self.upstream = upstream
        self.peer = peer
        self.closing = False  # set by drop()/close(); the pair's thread closes the sockets
        self.reset = False  # close with SO_LINGER 0 (RST) instead of FIN
        self.done = threading.Event()


class StallProxy:
    """A TCP proxy on loopback in front of ``target_host:target_port`` that can stall or drop.

    Every accepted connection gets its own connection to the target and one thread that
    forwards both ways (non-blocking sockets, a selector with a short timeout, so the flags
    below take effect within :data:`_POLL_S`).

    * :meth:`stall`: from the moment it returns, no byte is read from or written to any
      socket, old or new (a connection accepted while stalled is connected to the target but
      carries nothing).  Sockets stay open; the peers' kernels keep the TCP connections
      alive, so each side just sees silence (a network black hole, or a frozen camera).
    * :meth:`resume`: forwarding goes on where it stopped; nothing is lost.
    * :meth:`drop`: closes every current connection on both sides (FIN, or RST with
      ``reset=True``) and returns once they are closed; the proxy keeps accepting new ones.

    Counters: :attr:`connections` (accepted so far), :attr:`failed` (accepted but the
    target refused), :attr:`active`, :attr:`bytes_up` (client to target) and
    :attr:`bytes_down` (target to client).  It is a context manager (:meth:`start` /
    :meth:`close`); :meth:`proxied` rewrites a URL to go through it.
    """

    def __init__(
        self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1", listen_port: int = 0
    ) -> None:
        self.target = (target_host, int(target_port))
        self._listen_addr = (listen_host, int(listen_port))
        self._listener: socket.socket | None = None
        self._cond = threading.Condition()
        self._stalled = False
        self._closed = False
        self._pairs: set[_Pair] = set()
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self.failed = 0
        self.bytes_up = 0
        self.bytes_down = 0

    # ---- life cycle
    def start(self) -> StallProxy:
        """Bind, listen and start accepting (in a daemon thread); returns ``self``."""
        if self._listener is not None:
            raise RuntimeError("StallProxy already started")
        held: list[socket.socket] = []
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(self._listen_addr)
            # Port 0 may hand back a port just freed, the target's among them: a proxy in front
            # of itself accepts its own connections without end.  Keep that port bound (so the
            # next bind gets another) and try again; a fixed port equal to the target is an error.
            if self._forwards_to(sock.getsockname()[:2]):
                if self._listen_addr[1]:
                    sock.close()
                    raise ValueError(f"StallProxy on {self._listen_addr} would forward to itself")
                held.append(sock)
                continue
            break
        for h in held:
            h.close()
        sock.listen(64)
        sock.settimeout(_POLL_S)
        self._listener = sock
        t = threading.Thread(target=self._accept_loop, name="stall-proxy-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _forwards_to(self, addr: tuple[str, int]) -> bool:
        host, port = self.target
        if port != addr[1]:
            return False
        try:
            target_ip = socket.gethostbyname(host)
        except OSError:
            return False
        both_loopback = target_ip.startswith("127.") and addr[0].startswith("127.")
        return target_ip == addr[0] or addr[0] == "0.0.0.0" or both_loopback

    def close(self) -> None:
        """Stop accepting, close every connection (FIN) and wait for the threads."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self.drop()
        for t in self._threads:
            t.join(timeout=5.0)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> StallProxy:
        return self.start() if self._listener is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- addresses
    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the proxy listens on."""
        if self._listener is None:
            raise RuntimeError("StallProxy not started")
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def port(self) -> int:
        return self.address[1]

    def proxied(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (user info and path kept)."""
        parts = urlsplit(url)
        host, port = self.address
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    # ---- faults
    @property
    def stalled(self) -> bool:
        return self._stalled

    @property
    def active(self) -> int:
        with self._cond:
            return len(self._pairs)

    def stall(self) -> None:
        """Stop forwarding in both directions on every connection; sockets stay open."""
        with self._cond:  # a forwarding thread reads and writes only while holding this lock
            self._stalled = True

    def resume(self) -> None:
        """Forward again after :meth:`stall`."""
        with self._cond:
            self._stalled = False
            self._cond.notify_all()

    def drop(self, *, reset: bool = False, timeout: float = 5.0) -> int:
        """Close every current connection, both sides (``reset``: RST instead of FIN).

        Returns the number of connections closed; new connections are still accepted.
        """
        with self._cond:
            pairs = list(self._pairs)
            for p in pairs:
                p.closing = True
                p.reset = reset
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for p in pairs:
            p.done.wait(max(0.0, deadline - time.monotonic()))
        return len(pairs)

    def wait_connections(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``n`` connections have been accepted; return whether they were."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.connections < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, _POLL_S))
            return True

    # ---- threads
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed:
            try:
                client, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream: socket.socket | None = socket.create_connection(self.target, timeout=5.0)
            except OSError:
                upstream = None
            with self._cond:  # counted once registered, so wait_connections() sees it in drop()
                self.connections += 1
                self._cond.notify_all()
                if upstream is None or self._closed:
                    self.failed += upstream is None
                    client.close()
                    if upstream is not None:
                        upstream.close()
                    continue
                for s in (client, upstream):
                    s.setblocking(False)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pair = _Pair(client, upstream, peer)
                self._pairs.add(pair)
            t = threading.Thread(target=self._forward, args=(pair,), name=f"stall-proxy-{peer[1]}", daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _forward(self, pair: _Pair) -> None:
        """Move bytes both ways until both directions ended, or the pair is dropped."""
        other = {pair.client: pair.upstream, pair.upstream: pair.client}
        open_in = {pair.client, pair.upstream}  # sockets we still read from (no EOF yet)
        sel = selectors.PollSelector()  # as in _wait_writable
        for s in open_in:
            sel.register(s, selectors.EVENT_READ)
        try:
            while open_in and not pair.closing:
                with self._cond:
                    if self._stalled:
                        self._cond.wait(_POLL_S)
                        continue
                readable = [key.fileobj for key, _ in sel.select(_POLL_S)]
                for src in readable:
                    assert isinstance(src, socket.socket)
                    dst = other[src]
                    with self._cond:
                        if self._stalled or pair.closing:
                            break
                        try:
                            data = src.recv(_CHUNK)
                        except BlockingIOError:
                            continue
                    if not data:  # EOF one way: pass it on, keep the other way open
                        open_in.discard(src)
                        sel.unregister(src)
                        try:
                            dst.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        continue
                    self._send(pair, dst, data, up=src is pair.client)
        except OSError:
            pass
        finally:
            sel.close()
            with self._cond:
                self._pairs.discard(pair)
            for s in (pair.client, pair.upstream):
                try:
                    if pair.reset:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    s.close()
                except OSError:
                    pass
            pair.done.set()

    def _send(self, pair: _Pair, dst: socket.socket, data: bytes, *, up: bool) -> None:
        """Write all of ``data`` to ``dst``, pausing while stalled; raises OSError when dropped."""
        view = memoryview(data)
        while view:
            if pair.closing:
                raise OSError("dropped")
            with self._cond:
                if self._stalled:
                    self._cond.wait(_POLL_S)
                    continue
                try:
                    n = dst.send(view)
                except BlockingIOError:
                    n = 0
                if up:
                    self.bytes_up += n
                else:
                    self.bytes_down += n
            view = view[n:]
            if view:
                _wait_writable(dst, _POLL_S)


# --------------------------------------------------------------------------- media

#: Sample rate of the generated AAC tracks (espeak-ng's own rate).
AUDIO_RATE = 22050
#: Time base of the generated video streams (MPEG's 90 kHz clock: 1/50 and 1/15 s are exact).
VIDEO_TB = Fraction(1, 90000)


@dataclass(frozen=True)
class Jump:
    """A discontinuity in a clip's timestamps: frame ``index`` is shown at ``to_s`` where a
    regular clip would show it at ``expected_s`` (the previous frame's time + one interval)."""

    index: int
    expected_s: float
    to_s: float

    @property
    def delta_s(self) -> float:
        """How far the timestamps jump: > 0 forward, < 0 backward."""
        return self.to_s - self.expected_s


@dataclass(frozen=True)
class Clip:
    """A generated clip: where it is and when each of its video frames is shown.

    ``times``: presentation time (seconds) of every video frame in file (= decode) order, as
    written; ``jumps``: the discontinuities in them (empty for a clip without any);
    ``audio``: whether an AAC track was written (it follows the video's timestamps).
    """

    path: Path
    times: list[float]
    audio: bool
    jumps: list[Jump] = field(default_factory=list)
    size: tuple[int, int] = (640, 480)


@lru_cache(maxsize=1)
def _astronaut() -> np.ndarray:
    import numpy as np
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[..., :3])


def render_frame(t: float, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """The astronaut photograph as a camera at media time ``t`` sees it: ``(h, w, 3)`` RGB uint8.

    The face (about 140 to 170 px wide at 640x480) stays in the picture; the camera pans and
    zooms with slow sinusoids of ``t``, so two different times give two different frames.
    """
    import cv2
    import numpy as np

    width, height = size
    tau = 2.0 * math.pi
    scale = 1.5 * (width / 640.0) * (1.0 + 0.1 * (1.0 - math.cos(tau * t / 7.3)))
    cx = 230.0 + 22.0 * math.sin(tau * t / 8.3)
    cy = 178.0 + 10.0 * math.sin(tau * t / 5.7 + 0.7)
    m = np.array([[scale, 0.0, width / 2 - scale * cx], [0.0, scale, height / 2 - scale * cy]])
    return cv2.warpAffine(_astronaut(), m, (width, height), flags=cv2.INTER_LINEAR, borderValue=(16, 16, 16))


@lru_cache(maxsize=1)
def _make_sample_module() -> ModuleType:
    """``samples/make_sample.py`` as the module ``make_sample`` (the name the tests import it
    by, through the ``samples/`` entry conftest.py puts on ``sys.path``), loaded by path if
    nothing imported it yet."""
    if "make_sample" in sys.modules:
        return sys.modules["make_sample"]
    spec = importlib.util.spec_from_file_location("make_sample", ROOT / "samples" / "make_sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_sample"] = module  # dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["make_sample"]
        raise
    return module


@lru_cache(maxsize=1)
def _speech() -> np.ndarray:
    """Real speech (espeak-ng, float32 mono at :data:`AUDIO_RATE`) followed by 0.3 s of silence."""
    import numpy as np

    make_sample = _make_sample_module()
    speech = make_sample.synthesize_speech(make_sample.DEFAULT_TEXT)
    return np.concatenate([speech, np.zeros(int(0.3 * AUDIO_RATE), np.float32)])


def _speech_at(start_s: float, seconds: float) -> np.ndarray:
    """``seconds`` of the speech, repeated end to end, from ``start_s`` of that endless loop."""
    import numpy as np

    loop = _speech()
    first = int(round(start_s * AUDIO_RATE))
    n = int(round(seconds * AUDIO_RATE))
    return np.take(loop, np.arange(first, first + n), mode="wrap").astype(np.float32)


def _add_video(container: Any, size: tuple[int, int], *, fps: int = 25) -> Any:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.time_base = VIDEO_TB
    stream.codec_context.time_base = VIDEO_TB
    stream.codec_context.gop_size = fps
    # no B-frames: decode order = presentation order, so `times` is also the decode order
    stream.options = {"preset": "veryfast", "crf": "26", "bf": "0", "threads": "1", "sc_threshold": "0"}
    return stream


def _add_audio(container: Any) -> Any:
    stream = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
    stream.bit_rate = 48_000
    return stream


def _write_video(container: Any, stream: Any, times: Sequence[Fraction], size: tuple[int, int]) -> None:
    import av

    for t in times:
        frame = av.VideoFrame.from_ndarray(render_frame(float(t), size), format="rgb24")
        frame.pts = int(t / VIDEO_TB)
        frame.time_base = VIDEO_TB
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _write_audio(container: Any, stream: Any, start_s: float, seconds: float, *, negative_ok: bool = True) -> None:
    """Encode ``seconds`` of speech whose first sample is at media time ``start_s``.

    The AAC encoder's first packet (its priming) is stamped 1024 samples before ``start_s``;
    ``negative_ok=False`` drops it when that is before 0, for containers (MPEG-TS) where a
    negative timestamp would make FFmpeg shift every track of the file.
    """
    import av

    def mux(packets: list[Any]) -> None:
        container.mux([p for p in packets if negative_ok or p.pts is None or p.pts >= 0])

    pcm = _speech_at(start_s, seconds)
    first = int(round(start_s * AUDIO_RATE))
    tb = Fraction(1, AUDIO_RATE)
    chunk = stream.codec_context.frame_size or 1024
    for off in range(0, len(pcm), chunk):
        frame = av.AudioFrame.from_ndarray(pcm[None, off : off + chunk], format="fltp", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = first + off
        frame.time_base = tb
        mux(stream.encode(frame))
    mux(stream.encode(None))


def make_vfr_clip(
    path: str | Path,
    *,
    seconds: float = 6.0,
    steps: Sequence[float | Fraction] = (Fraction(1, 50), Fraction(1, 15)),
    size: tuple[int, int] = (640, 480),
    audio: bool = False,
) -> Clip:
    """Write a variable-frame-rate H.264 clip (MP4, or Matroska for a ``.mkv`` path).

    Frame ``i`` is shown ``steps[i % len(steps)]`` seconds after frame ``i - 1`` (default:
    alternately 1/50 and 1/15 s, an average of about 23 fps; frames are rendered at their own
    time), for frames up to ``seconds``.  The stream's time base is 1/90000 s in MP4, so the
    times are exact there; Matroska stores milliseconds (each time within 0.5 ms).
    ``audio=True`` adds ``seconds`` of continuous AAC speech (espeak-ng needed).

    Returns:
        A :class:`Clip` whose ``times`` are the frames' presentation times.
    """
    import av

    path = Path(path)
    fmt = {".mp4": "mp4", ".mkv": "matroska"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"make_vfr_clip writes .mp4 or .mkv, not {path.name}")
    fsteps = [Fraction(s).limit_denominator(90000) for s in steps]
    if not fsteps or min(fsteps) <= 0:
        raise ValueError("steps must be positive")
    times: list[Fraction] = []
    t = Fraction(0)
    while t < seconds:
        times.append(t)
        t += fsteps[(len(times) - 1) % len(fsteps)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=fmt) as container:
        vstream = _add_video(container, size)
        astream = _add_audio(container) if audio else None
        _write_video(container, vstream, times, size)
        if astream is not None:
            _write_audio(container, astream, 0.0, seconds)
    return Clip(path, [float(x) for x in times], audio, [], size)


def make_pts_jump_clip(
    path: str | Path,
    *,
    segments: Sequence[tuple[float, float]] = ((0.0, 4.0), (10.0, 4.0), (7.0, 4.0)),
    fps: int = 25,
    size: tuple[int, int] = (640, 480),
    audio: bool = False,
) -> Clip:
    """Write an H.264 (+AAC) MPEG-TS clip whose timestamps jump between ``segments``.

    Each ``(start_s, seconds)`` segment is ``seconds`` of constant ``fps`` video (and audio)
    stamped from ``start_s``.  The default is 0-4 s, then a jump forward by 6 s to 10-14 s,
    then a jump back by 7 s to 7-11 s (so the last segment also repeats timestamps already
    seen): 12 s of pictures over a 14 s timeline.  The picture follows the timestamps.

    FFmpeg's muxers refuse timestamps that go back, whatever the container, so each segment
    is written as a complete transport stream of its own (fresh encoders: it starts with an
    IDR frame, SPS/PPS and PAT/PMT) and the segments are concatenated byte for byte, as a
    broadcast splice or a restarted encoder behind a TS relay would produce.  Readers see
    the timestamps as written (the tests check it by decoding); the TS continuity counters
    restart at each seam.  With ``audio=True`` each segment's AAC track starts with its
    encoder's priming frame, stamped 1024 samples (46 ms) before the segment's start, so the
    audio jumps with the video; at 0 s that frame is left out (a negative timestamp would
    make FFmpeg shift the whole file).  Needs espeak-ng for the audio.

    Returns:
        A :class:`Clip` with every frame's time and one :class:`Jump` per segment boundary.
    """
    import av

    path = Path(path)
    if path.suffix.lower() != ".ts":
        raise ValueError(f"make_pts_jump_clip writes MPEG-TS (.ts), not {path.name}")
    if not segments or any(n <= 0 or s < 0 for s, n in segments):
        raise ValueError("segments must be (start_s >= 0, seconds > 0) pairs")
    path.parent.mkdir(parents=True, exist_ok=True)
    step = Fraction(1, fps)
    times: list[Fraction] = []
    jumps: list[Jump] = []
    with path.open("wb") as out:
        for k, (start_s, seconds) in enumerate(segments):
            start = Fraction(start_s).limit_denominator(90000)
            seg = [start + i * step for i in range(int(round(seconds * fps)))]
            if k:
                jumps.append(Jump(len(times), float(times[-1] + step), float(seg[0])))
            times += seg
            part = path.with_name(f".{path.name}.part{k}")
            try:
                with av.open(str(part), "w", format="mpegts") as container:
                    vstream = _add_video(container, size, fps=fps)
                    astream = _add_audio(container) if audio else None
                    _write_video(container, vstream, seg, size)
                    if astream is not None:
                        _write_audio(container, astream, float(start), seconds, negative_ok=False)
                out.write(part.read_bytes())
            finally:
                part.unlink(missing_ok=True)
    return Clip(path, [float(x) for x in times], audio, jumps, size)


def _packets(src: Path) -> Iterator[tuple[int, Any]]:
    """``(stream index, packet)`` for every real packet of ``src`` (not the flush packets)."""
    import av

    with av.open(str(src)) as container:
        for packet in container.demux():
            if packet.dts is None or packet.size == 0:
                continue
            yield packet.stream.index, packet


def make_looped_clip(src: str | Path, dst: str | Path, minutes: float) -> Path:
    """Write ``src`` (an MP4, e.g. ``samples/astronaut.mp4``) played again and again into the
    MP4 ``dst``, enough times to last at least ``minutes``; returns ``dst``.

    Stream copy, no re-encode (about 0.2 s per 10 minutes of the 10 s sample): every track
    is copied ``N = ceil(minutes * 60 / D)`` times, pass ``k`` shifted by ``k * D`` where
    ``D`` is the longest track's end time (10.0 s for the sample, whose audio and video end
    together).  The AAC priming packet (negative pts) is kept for the first pass only; later
    passes start on their first real audio frame, so each seam of the audio loses its
    encoder priming (a click-sized glitch, about 46 ms) but timestamps stay monotonic and
    the tracks stay in sync over any length.  Each pass starts on a key frame when ``src``
    does.  ``moov`` is written first (``+faststart``), so a reader can start at once.
    """
    import av

    src, dst = Path(src), Path(dst)
    with av.open(str(src)) as probe:
        streams = list(probe.streams)
        ends = [
            (s.start_time or 0) * s.time_base + s.duration * s.time_base
            for s in streams
            if s.duration is not None and s.time_base is not None
        ]
        if not ends:
            raise ValueError(f"{src}: no track with a known duration")
        period = max(ends)
        if period <= 0:
            raise ValueError(f"{src}: empty")
        passes = max(1, math.ceil(minutes * 60 / period - 1e-9))
        dst.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(dst), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            out_streams = [out.add_stream_from_template(s) for s in streams]
            for k in range(passes):
                for index, packet in _packets(src):
                    tb = streams[index].time_base
                    assert tb is not None
                    if k and packet.pts is not None and packet.pts < 0:
                        continue  # encoder priming: only where the audio really starts
                    shift = int(round(k * period / tb))
                    packet.stream = out_streams[index]
                    packet.time_base = tb
                    packet.pts = None if packet.pts is None else packet.pts + shift
                    packet.dts = packet.dts + shift
                    out.mux(packet)
    return dst
