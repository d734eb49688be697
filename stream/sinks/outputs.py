"""Where predictions go: JSON lines (stdout or file), ZeroMQ PUB, ABAW CSV."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, TextIO, cast

from stream.core.labels import COMPOUND


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy scalars/arrays to Python, NaN to None, floats rounded."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else round(obj, 6)
    return obj


def dumps(record: dict) -> str:
    return json.dumps(_clean(record), ensure_ascii=False, separators=(", ", ": "))


class Sink:
    def write(self, record: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class JsonLinesSink(Sink):
    """One JSON object per line; ``stream`` defaults to stdout."""

    def __init__(
        self, stream: TextIO | None = None, *, path: Path | None = None, types: set[str] | None = None
    ) -> None:
        self._own = path is not None
        self.stream = open(path, "w", encoding="utf-8") if path is not None else (stream or sys.stdout)
        self.types = types

    def write(self, record: dict) -> None:
        if self.types is not None and record.get("type") not in self.types:
            return
        try:
            self.stream.write(dumps(record) + "\n")
            self.stream.flush()
        except BrokenPipeError:  # e.g. `cer-stream ... | head`
            self.types = set()

    def close(self) -> None:
        if self._own:
            self.stream.close()


class ZmqPublishSink(Sink):
    """ZeroMQ PUB socket: two-part messages ``[type, json]`` so subscribers can filter."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self._sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, 1000)
        self._sock.setsockopt(zmq.LINGER, 1000)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close()
            raise ValueError(f"cannot publish on {endpoint}: {exc}") from None
        self.endpoint = cast(bytes, self._sock.getsockopt(zmq.LAST_ENDPOINT)).decode()  # a bytes option

    def write(self, record: dict) -> None:
        import zmq

        try:
            self._sock.send_multipart([str(record.get("type", "")).encode(), dumps(record).encode()], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # a slow subscriber loses messages; the analyzer never waits for it

    def close(self) -> None:
        self._sock.close()


#: Header of the ABAW compound-expression prediction file.
CSV_HEADER = "image_location," + ",".join(name.replace(" ", "_") for name in COMPOUND)


class AbawCsvSink(Sink):
    """Frame-wise final predictions in the ABAW layout: ``VIDEO/00001.jpg,<class index>``.

    Frames before the stream's first prediction (no face or speech yet) take the first
    prediction that follows, the mirror of the rule that uncovered frames take the previous
    frame's value; if the stream never predicts anything they are left out.
    """

    def __init__(self, path: Path, video_name: str) -> None:
        self.f = open(path, "w", encoding="utf-8")
        self.video = video_name
        self.f.write(CSV_HEADER + "\n")
        self._waiting: list[int] = []

    def write(self, record: dict) -> None:
        if record.get("type") != "frames" or not record.get("final"):
            return
        for i, lab in zip(record["frame_index"], record["label_index"]):
            if lab is None:
                self._waiting.append(i)
                continue
            for j in self._waiting:
                self.f.write(f"{self.video}/{j + 1:05d}.jpg,{lab}\n")
            self._waiting.clear()
            self.f.write(f"{self.video}/{i + 1:05d}.jpg,{lab}\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()
