"""Items that travel between capture processes and the analyzer.

Each item is sent as a ZeroMQ multipart message: a small JSON header and,
for frames and audio, the raw buffer as a second part (no pickling, no copy
into the header).  Every header carries the sender's sequence number, the
media time (``pts``, seconds) and the monotonic capture time in ns.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

VIDEO = "video"
AUDIO = "audio"

#: Sample rate of every audio item, Hz (mono float32).
AUDIO_RATE = 16_000


@dataclass(slots=True)
class StreamInfo:
    """Sent once by a capture process before its first item."""

    source: str  # "video" | "rtsp" | "camera" | "mic"
    streams: list[str]  # which of VIDEO / AUDIO this sender will produce
    fps: float = 0.0
    width: int = 0
    height: int = 0
    duration: float | None = None  # seconds, when the container knows it
    live: bool = False
    audio_note: str | None = None  # why there is no audio, when there is none
    kind: str = "info"


@dataclass(slots=True)
class VideoFrame:
    seq: int
    index: int  # frame number in the stream (0-based), counting every decoded frame
    pts: float  # media time, seconds
    t_capture_ns: int
    image: np.ndarray  # H x W x 3 uint8, RGB
    sender_drops: int = 0
    kind: str = "frame"


@dataclass(slots=True)
class AudioChunk:
    seq: int
    pts: float  # media time of the first sample, seconds
    t_capture_ns: int
    samples: np.ndarray  # float32 mono, AUDIO_RATE
    sender_drops: int = 0
    kind: str = "audio"


@dataclass(slots=True)
class EndOfStream:
    """The sender has no more items: end of file, or it was asked to stop."""

    streams: list[str]
    reason: str = "eof"  # "eof" | "stopped" | "source_lost" (a live source the reconnect policy gave up on)
    frames: int = 0  # frame numbers in all: the last frame's number + 1 (numbers come from timestamps)
    duration: float = 0.0  # media time covered by video, seconds
    sender_drops: dict[str, int] = field(default_factory=dict)
    kind: str = "end"


@dataclass(slots=True)
class CaptureError:
    """A capture process failed; ``fatal`` means it stopped."""

    message: str
    streams: list[str]
    fatal: bool = True
    kind: str = "error"


@dataclass(slots=True)
class Gap:
    """A live source was lost (``end`` is None) or came back after being lost.

    ``start`` is the media time of the last frame before the gap, ``end`` that of the first
    frame after it: no frame lies strictly between them.  ``attempts`` counts the reopen
    attempts it took; ``wall_time`` is the Unix time of the event; ``resumed``: the gap is the
    time between the analyzer process that had the stream and this one (not a reconnect)."""

    start: float
    end: float | None
    reason: str
    attempts: int = 0
    wall_time: float = 0.0
    resumed: bool = False  # the gap between another analyzer process and this one (a restart)
    kind: str = "gap"


Item = StreamInfo | VideoFrame | AudioChunk | EndOfStream | CaptureError | Gap


def now_ns() -> int:
    return time.monotonic_ns()


def encode(item: Item) -> list[bytes | memoryview]:
    """Header + optional raw buffer, ready for ``socket.send_multipart``."""
    if isinstance(item, VideoFrame):
        img = np.ascontiguousarray(item.image, dtype=np.uint8)
        head = {
            "kind": "frame",
            "seq": item.seq,
            "index": item.index,
            "pts": item.pts,
            "t": item.t_capture_ns,
            "shape": list(img.shape),
            "drops": item.sender_drops,
        }
        return [json.dumps(head).encode(), img.data.cast("B")]
    if isinstance(item, AudioChunk):
        pcm = np.ascontiguousarray(item.samples, dtype=np.float32)
        head = {
            "kind": "audio",
            "seq": item.seq,
            "pts": item.pts,
            "t": item.t_capture_ns,
            "n": int(pcm.shape[0]),
            "drops": item.sender_drops,
        }
        return [json.dumps(head).encode(), pcm.data.cast("B")]
    return [json.dumps(asdict(item)).encode()]


def decode(parts: list[bytes] | list[Any]) -> Item:
    """Inverse of :func:`encode`; raises ``ValueError`` on a malformed message."""
    try:
        head = json.loads(bytes(parts[0]))
        kind = head.pop("kind")
        if kind == "frame":
            shape = tuple(head["shape"])
            img = np.frombuffer(parts[1], dtype=np.uint8).reshape(shape)
            return VideoFrame(
                seq=head["seq"],
                index=head["index"],
                pts=head["pts"],
                t_capture_ns=head["t"],
                image=img,
                sender_drops=head["drops"],
            )
        if kind == "audio":
            pcm = np.frombuffer(parts[1], dtype=np.float32)
            if pcm.shape[0] != head["n"]:
                raise ValueError("audio length does not match its header")
            return AudioChunk(
                seq=head["seq"], pts=head["pts"], t_capture_ns=head["t"], samples=pcm, sender_drops=head["drops"]
            )
        cls = {"info": StreamInfo, "end": EndOfStream, "error": CaptureError, "gap": Gap}[kind]
        return cls(**head)
    except (KeyError, IndexError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed capture message: {exc}") from exc
