"""``--annotate OUT.mp4``: an annotated copy of the input, written with PyAV (H.264).

Each frame shows the target face's box, the compound label with the top probabilities as bars,
whether the frame's value is provisional or final, and which modalities were present in the
window covering it (:func:`stream.sinks.draw.draw_overlay`).

:class:`AnnotateSink` is a sink (it reads the records on its own writer thread, behind its own
bounded queue: see :mod:`stream.sinks.outputs`) and an observer: ``on_frame(frame, face)`` runs
on the analysis thread and only stores the analysed frame's box (and, for a live source, its
image) in a bounded queue; when that queue is full the frame is dropped and counted
(:attr:`AnnotateSink.frames_dropped`, one ``warning`` per streak).  Nothing is drawn or encoded
on the analysis thread.

* **Files** (``--video`` without ``--realtime``): the sink decodes the input itself (a second
  decoder, every frame) and writes frame *k* once frame *k*'s value is final, at the source's
  size (even), frame rate and timestamps, with the first audio stream kept (stream-copied when
  it is AAC, re-encoded to AAC otherwise).  A run stopped early ends the copy at the last frame
  received.  The copy is written under a temporary name beside ``OUT`` (``.OUT.cer-stream-XXXXXXXX.tmp``)
  and renamed over it when finished, so an existing ``OUT`` is replaced only by a finished copy
  (a plain MP4 is unplayable until its end is written anyway).
* **Live sources** (RTSP, camera, ``--realtime``, pushed frames): the copy holds the analysed
  frames (5 fps grid, at the analysed size) and no audio; each is written once its frame has a
  value (provisional or final) or, past :data:`LIVE_HOLD_S`, with the newest value known.  MP4 is
  written fragmented (a fragment every 2 s), so even a killed run leaves a playable file; a
  stop (Ctrl-C) finishes the file cleanly.  It is written in place, from its first frame on (a
  run that fails before that leaves an existing ``OUT`` as it was).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from stream.core.windows import FrameNumbers, MediaTime
from stream.io.sources import Source
from stream.runtime.observe import Observer
from stream.sinks.draw import draw_overlay, scale_box
from stream.sinks.outputs import Sink, SinkError, move_into_place, same_file, temp_beside

log = logging.getLogger("cer_stream.annotate")

#: Output containers (by suffix), as FFmpeg names them (a temporary file's name says nothing).
FORMATS = {".mp4": "mp4", ".mkv": "matroska"}
SUFFIXES = tuple(FORMATS)
#: Live sources: analysed frames (images) the analysis thread may hand over before they drop.
FRAME_QUEUE = int(os.environ.get("CER_STREAM_ANNOTATE_QUEUE", "64"))
#: Files: analysed frames' boxes held for the writer (small; the record queue paces the run).
BOX_QUEUE = 4096
#: A frame takes the box of the nearest analysed frame within this many seconds.
BOX_MATCH_S = 0.2
#: Live sources: media seconds a frame waits for its own value before the newest one is used.
LIVE_HOLD_S = 6.0
#: Live sources: the output's time base (milliseconds) and the analysed frame rate (a hint).
LIVE_TIME_BASE = Fraction(1, 1000)
LIVE_RATE = 5
#: H.264 settings.
PRESET = "veryfast"
CRF = 20


@dataclass(slots=True)
class _Analysed:
    """One analysed frame as the analysis thread hands it over."""

    index: int
    pts: float
    box: tuple[int, int, int, int] | None
    size: tuple[int, int]  # (W, H) of the image the box is in
    image: np.ndarray | None = None  # live sources only


@dataclass(slots=True)
class _Value:
    label: str | None
    probs: list[float] | None
    final: bool


@dataclass(slots=True)
class _Window:
    start: float
    end: float
    present: list[str]
    basic_label: str | None


def _even_size(width: int, height: int, max_side: int = 0) -> tuple[int, int]:
    """``width`` x ``height`` scaled down so the longer side is at most ``max_side`` (0: no
    limit), in even numbers (H.264 4:2:0)."""
    scale = min(1.0, max_side / max(width, height)) if max_side > 0 else 1.0
    w, h = int(width * scale), int(height * scale)
    return max(2, w - w % 2), max(2, h - h % 2)


def check_path(path: str | os.PathLike, source: Source | None = None) -> Path:
    """``path`` if an annotated video can be written there, else :class:`SinkError` (one line).
    An existing file is left as it is (until the run writes); a new one is tried, then removed."""
    p = Path(path)
    why = None
    if p.suffix.lower() not in SUFFIXES:
        why = "the annotated video must be a .mp4 or .mkv file"
    elif p.is_dir():
        why = "is a directory"
    elif p.exists() and not p.is_file():
        why = "not a regular file"
    elif source is not None and source.kind == "video" and same_file(p, source.target):
        why = "it is the input file"
    if why is None:
        existed = p.exists()
        try:  # a real open: permissions, a read-only or pseudo file system, a missing folder
            with open(p, "ab"):
                pass
        except OSError as exc:
            why = exc.strerror or str(exc)
        else:
            if not existed:
                p.unlink(missing_ok=True)
    if why is not None:
        raise SinkError(f"cannot write --annotate {p}: {why}")
    return p


class AnnotateSink(Sink, Observer):
    """Writes an annotated copy of ``source`` to ``path`` (.mp4 or .mkv; ``SinkError``, one
    line, when it cannot).  ``max_side``: the analysis scale (``--max-side``); a live copy,
    made of the analysed frames, is at most that size.  ``live``: write the analysed frames
    (default: for every source but a file that is not paced at media speed).  ``queue_size``:
    analysed frames handed over before they drop (default :data:`FRAME_QUEUE` live,
    :data:`BOX_QUEUE` for files)."""

    name = "annotate"
    lossless = True

    def __init__(
        self,
        path: str | os.PathLike,
        source: Source,
        *,
        max_side: int = 960,
        live: bool | None = None,
        queue_size: int | None = None,
        preset: str = PRESET,
        crf: int = CRF,
    ) -> None:
        self.path = check_path(path, source)
        self.source = source
        self.max_side = max_side
        self.live = (source.kind != "video" or bool(source.realtime)) if live is None else live
        self.preset, self.crf = preset, crf
        size = queue_size if queue_size is not None else (FRAME_QUEUE if self.live else BOX_QUEUE)
        self._handoff: queue.Queue[_Analysed] = queue.Queue(maxsize=max(1, size))
        #: analysed frames the analysis thread dropped because the queue was full
        self.frames_dropped = 0
        #: frames written to the video
        self.frames_written = 0
        self._dropping = False
        self._lock = threading.Lock()  # write() (the sink's thread) against close() (the caller's)
        self._finished = False
        self._existed = self.path.exists()
        # the run, from its records
        self._labels: list[str] = []
        self._modalities: list[str] = []
        self._fps = 25.0
        self._values: dict[int, _Value] = {}
        self._latest: _Value | None = None  # the value of the newest frame that has one
        self._latest_index = -1
        self._failed = False  # a write raised: the sink stopped (its worker reports it)
        self._windows: deque[_Window] = deque(maxlen=16)
        self._end: dict | None = None
        self._final_upto = -1
        # output
        self._out: Any = None  # av.container.OutputContainer
        self._temp: Path | None = None  # files: what the copy is written to until it is finished
        self._vout: Any = None
        self._size: tuple[int, int] | None = None
        self._last_pts: int | None = None
        # files: the second decoder
        self._in: Any = None
        self._packets: Any = None
        self._vin: Any = None
        self._ain: Any = None
        self._aout: Any = None
        self._acopy = False
        self._decoded: deque[tuple[Any, float, int]] = deque()
        self._media_time: MediaTime | None = None
        self._numbers: FrameNumbers | None = None
        self._in_done = False
        self._n_decoded = 0
        self._boxes: list[_Analysed] = []  # files: sorted by pts
        # live: analysed frames waiting for their value
        self._held: deque[_Analysed] = deque()

    # ------------------------------------------------------------------ analysis thread
    def on_frame(self, frame: Any, face: Any) -> None:
        """An analysed frame (``stream.core.messages.VideoFrame``) and its ``FaceResult``:
        stored for the writer, never waited for (a full queue drops it, counted)."""
        img = frame.image
        box = None
        if face is not None and face.found and face.box is not None:
            x0, y0, x1, y1 = face.box
            box = (int(x0), int(y0), int(x1), int(y1))
        image = None
        if self.live:  # a read-only image (from the capture process) is never changed: no copy
            image = img.copy() if img.flags.writeable else img
        item = _Analysed(int(frame.index), float(frame.pts), box, (int(img.shape[1]), int(img.shape[0])), image)
        try:
            self._handoff.put_nowait(item)
            self._dropping = False
        except queue.Full:
            self.frames_dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning(
                    "the annotated video is not keeping up; analysed frames are left out of it until it "
                    "catches up (%d so far)",
                    self.frames_dropped,
                )

    # ------------------------------------------------------------------ the sink's thread
    def write(self, record: dict) -> None:
        with self._lock:
            if self._finished or self._failed:
                return
            try:
                self._write(record)
            except BaseException:
                self._failed = True  # the worker reports it; close() then only closes
                raise

    def _write(self, record: dict) -> None:
        kind = record.get("type")
        if kind == "start":
            self._labels = list(record.get("compound_labels") or [])
            self._modalities = list(record.get("modalities") or [])
            self._fps = float(record.get("fps") or 25.0)
            if not self.live:
                self._open_input()
        elif kind == "window":
            comp = record.get("compound")
            self._windows.append(
                _Window(
                    float(record["start"]),
                    float(record["end"]),
                    list(record.get("present") or []),
                    record.get("basic_label") if comp is not None else None,
                )
            )
        elif kind == "frames":
            self._frames(record)
        elif kind == "end":
            self._end = record
            self._finish()
            return
        if self.live:
            self._pump_live(flush=False)
        elif self._final_upto >= 0:
            self._advance(self._final_upto)

    def _frames(self, record: dict) -> None:
        final = bool(record.get("final"))
        comps = record.get("compound") or []
        labels = record.get("label") or []
        for j, i in enumerate(record.get("frame_index") or []):
            old = self._values.get(i)
            if old is not None and old.final and not final:
                continue
            label = labels[j] if j < len(labels) else None
            probs = comps[j] if j < len(comps) else None
            v = _Value(label, list(probs) if probs is not None else None, final)
            self._values[i] = v
            if i >= self._latest_index:
                self._latest, self._latest_index = v, i
            if final:
                self._final_upto = max(self._final_upto, i)

    def close(self) -> None:
        """Finish the file (the frames not final yet take what is known), if the end record has
        not already; never raises (a failure is logged)."""
        with self._lock:
            if self._finished:
                return
            if self._failed:
                self._close_containers()
                self._finished = True
                return
            try:
                self._finish()
            except Exception as exc:
                log.error("cannot finish --annotate %s: %s: %s", self.path, type(exc).__name__, exc)
                self._close_containers()
                self._finished = True

    # ------------------------------------------------------------------ shared
    def _finish(self) -> None:
        """Write what is left, flush the encoder, close the file."""
        try:
            if self.live:
                self._pump_live(flush=True)
            else:
                self._flush_file()
            if self._vout is not None:
                for packet in self._vout.encode(None):
                    self._out.mux(packet)
            if self._aout is not None and not self._acopy:
                for packet in self._aout.encode(None):
                    self._out.mux(packet)
            if self._out is not None:
                self._out.close()
                self._out = None
            if self._temp is not None and self.frames_written > 0:
                move_into_place(self._temp, Path(os.path.realpath(self.path)))
                self._temp = None
        finally:
            self._finished = True
            self._close_containers()
            if self.frames_written == 0 and not self._existed and self._temp is None:
                try:  # nothing to show (the run never started): leave no empty file behind
                    self.path.unlink()
                except OSError:
                    pass

    def _close_containers(self) -> None:
        for c in (self._out, self._in):
            if c is not None:
                try:
                    c.close()
                except Exception:  # a broken output is already reported
                    pass
        self._out = self._in = None
        if self._temp is not None:  # an unfinished copy: the target stays as it was
            self._temp.unlink(missing_ok=True)
            self._temp = None

    def _take(self) -> list[_Analysed]:
        out = []
        try:
            while True:
                out.append(self._handoff.get_nowait())
        except queue.Empty:
            return out

    def _window_at(self, t: float) -> _Window | None:
        """The newest window covering media time ``t`` (else the newest that started before)."""
        covering = [w for w in self._windows if w.start <= t + 1e-6 and t < w.end]
        if covering:
            return max(covering, key=lambda w: w.start)
        before = [w for w in self._windows if w.start <= t + 1e-6]
        return before[-1] if before else None

    def _value(self, index: int) -> _Value | None:
        return self._values.get(index)

    def _forget_values(self, before: int) -> None:
        if len(self._values) > 64:
            for k in [k for k in self._values if k < before]:
                del self._values[k]

    def _open_output(self, width: int, height: int, rate: Fraction, time_base: Fraction) -> None:
        import av

        options = {}
        where = self.path
        if self.live and self.path.suffix.lower() == ".mp4":
            # fragmented: what is written is playable even if the process is killed
            options["movflags"] = "frag_keyframe+empty_moov+default_base_moof"
        elif not self.live:  # a finished copy replaces the target, never a part of one
            fd, self._temp = temp_beside(Path(os.path.realpath(self.path)))
            os.close(fd)
            where = self._temp
        self._out = av.open(str(where), "w", format=FORMATS[self.path.suffix.lower()], options=options)
        vout = self._out.add_stream("libx264", rate=rate, options={"preset": self.preset, "crf": str(self.crf)})
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        vout.time_base = time_base
        vout.codec_context.time_base = time_base
        if self.live:
            vout.codec_context.gop_size = 2 * LIVE_RATE  # a keyframe (and a fragment) every 2 s
            vout.codec_context.max_b_frames = 0  # no reordering delay: frames keep their media times
        self._vout = vout
        self._size = (width, height)

    def _encode(self, rgb: np.ndarray, pts: int, time_base: Fraction) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        assert self._size is not None
        frame = frame.reformat(width=self._size[0], height=self._size[1], format="yuv420p")
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = time_base
        for packet in self._vout.encode(frame):
            self._out.mux(packet)
        self.frames_written += 1

    def _draw(
        self, rgb: np.ndarray, *, box: tuple[int, int, int, int] | None, value: _Value | None, t: float
    ) -> np.ndarray:
        w = self._window_at(t)
        return draw_overlay(
            rgb,
            box=box,
            label=value.label if value is not None else None,
            probs=value.probs if value is not None else None,
            labels=self._labels,
            final=value.final if value is not None else None,
            present=w.present if w is not None else None,
            modalities=self._modalities,
            basic_label=w.basic_label if w is not None else None,
            inplace=True,
        )

    # ------------------------------------------------------------------ live: analysed frames
    def _pump_live(self, *, flush: bool) -> None:
        self._held.extend(self._take())
        while self._held:
            item = self._held[0]
            value = self._value(item.index)
            newest = self._held[-1].pts
            if not flush and value is None and newest - item.pts < LIVE_HOLD_S:
                return
            self._held.popleft()
            if value is None:
                value = self._latest
            assert item.image is not None
            if self._out is None:
                h, w = item.image.shape[:2]
                self._open_output(*_even_size(w, h, self.max_side), Fraction(LIVE_RATE), LIVE_TIME_BASE)
            rgb = self._draw(item.image, box=item.box, value=value, t=item.pts)
            self._encode(rgb, int(round(item.pts / LIVE_TIME_BASE)), LIVE_TIME_BASE)
            self._forget_values(item.index)

    # ------------------------------------------------------------------ files: every frame
    def _open_input(self) -> None:
        import av

        self._in = av.open(self.source.target)
        if not self._in.streams.video:
            raise ValueError(f"{self.source.target} has no video stream to annotate")
        self._vin = self._in.streams.video[0]
        self._ain = self._in.streams.audio[0] if self._in.streams.audio else None
        w, h = self._vin.codec_context.width, self._vin.codec_context.height
        rate = self._vin.average_rate or self._vin.guessed_rate or Fraction(self._fps).limit_denominator(1001)
        self._open_output(*_even_size(w, h), Fraction(rate), Fraction(self._vin.time_base))
        if self._ain is not None:
            if self._ain.codec_context.name == "aac":
                self._aout = self._out.add_stream_from_template(self._ain)
                self._acopy = True
            else:
                self._aout = self._out.add_stream("aac", rate=self._ain.rate)
                self._aout.layout = self._ain.layout.name
        self._packets = self._in.demux(*[s for s in (self._vin, self._ain) if s is not None])
        self._media_time = MediaTime(self._fps)
        self._numbers = FrameNumbers(self._fps)

    def _fill(self, audio_until: float | None = None) -> bool:
        """Decode until a source frame is waiting in ``_decoded`` (each as ``(frame, media
        time, frame number)``, numbered as the capture numbers them), muxing the audio met on
        the way (up to ``audio_until``); False at the end of the input."""
        assert self._media_time is not None and self._numbers is not None
        while not self._decoded:
            if self._in_done:
                return False
            try:
                packet = next(self._packets)
            except StopIteration:
                self._in_done = True
                return False
            if packet.stream is self._vin:
                for frame in packet.decode():
                    ft = frame.time if frame.time is not None else self._n_decoded / self._fps
                    self._n_decoded += 1
                    t = self._media_time(ft)
                    self._decoded.append((frame, t, self._numbers(t)))
            elif self._ain is not None:
                self._audio(packet, audio_until)
        return True

    def _audio(self, packet: Any, until: float | None) -> None:
        if until is not None and packet.pts is not None and float(packet.pts * packet.time_base) > until:
            return
        if self._acopy:
            if packet.dts is not None:  # not the demuxer's flush packet
                packet.stream = self._aout
                self._out.mux(packet)
            return
        for frame in packet.decode():
            for out in self._aout.encode(frame):
                self._out.mux(out)

    def _advance(self, upto: int | None) -> None:
        """Write the source frames numbered up to ``upto`` (None: to the end of the input)."""
        self._boxes.extend(self._take())
        self._boxes.sort(key=lambda b: b.pts)  # they come in order: cheap
        while self._fill():
            frame, t, index = self._decoded[0]
            if upto is not None and index > upto:
                return
            self._decoded.popleft()
            self._write_source_frame(frame, t, index)

    def _box_at(self, t: float, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
        boxes = self._boxes
        if not boxes:
            return None
        keys = [b.pts for b in boxes]
        i = bisect_left(keys, t)
        near = [b for b in boxes[max(0, i - 1) : i + 1] if abs(b.pts - t) <= BOX_MATCH_S]
        # forget what is well behind the frames still to write
        cut = bisect_left(keys, t - 1.0)
        if cut > 0:
            del boxes[:cut]
        if not near:
            return None
        best = min(near, key=lambda b: abs(b.pts - t))
        return scale_box(best.box, best.size, size) if best.box is not None else None

    def _write_source_frame(self, frame: Any, t: float, index: int) -> None:
        rgb = frame.to_ndarray(format="rgb24")
        box = self._box_at(t, (frame.width, frame.height))
        rgb = self._draw(rgb, box=box, value=self._value(index), t=t)
        tb = Fraction(self._vin.time_base)
        pts = frame.pts if frame.pts is not None else int(round(t / tb))
        self._encode(rgb, pts, tb)
        self._forget_values(index)

    def _flush_file(self) -> None:
        """The end: the whole input after an end of file; else (a stop, a failure) the frames
        the run received, and their audio."""
        if self._out is None:
            return
        end = self._end or {}
        if end.get("reason") == "eof":
            self._advance(None)
            return
        total = end.get("frames")
        upto = int(total) - 1 if isinstance(total, int) else self._final_upto
        self._advance(upto)
        last_t = (upto + 1) / self._fps
        while self._fill(audio_until=last_t) and self._decoded[-1][1] <= last_t + 1.0:
            self._decoded.clear()  # frames past the end: only their audio neighbours are wanted


__all__ = ["AnnotateSink", "check_path"]
