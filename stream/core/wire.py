"""Messages between the model host and its clients: one pickled object per ZeroMQ message, its
NumPy buffers as frames of their own (pickle protocol 5, out of band), so a video frame crosses
the socket as one copy into the kernel and one out, never through the pickler.

Pickle runs code of the sender's choosing on load: the host's socket is an ``ipc://`` path in a
directory only its user can enter (:func:`private_endpoint`), so only that user's processes, which
could run that code anyway, can send one.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any


def pack(obj: Any) -> list[Any]:
    """``obj`` as the frames of one message: the pickle, then its buffers."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [head, *(b.raw() for b in buffers)]


def unpack(frames: list[Any]) -> Any:
    """The object of :func:`pack`'s frames (``zmq.Frame`` or bytes)."""
    head, *buffers = frames
    return pickle.loads(_bytes(head), buffers=[memoryview(_buf(b)) for b in buffers])


def _bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _buf(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame


def private_endpoint(name: str = "models.sock") -> tuple[str, Path]:
    """A new ``ipc://`` endpoint in a fresh directory readable by this user only (0700), and the
    directory (the caller removes it)."""
    folder = Path(tempfile.mkdtemp(prefix="cer-host-"))
    os.chmod(folder, 0o700)
    return f"ipc://{folder / name}", folder


__all__ = ["pack", "private_endpoint", "unpack"]
