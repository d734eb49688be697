"""Many live streams at once: ``cer-stream serve``.

:mod:`stream.serve.config` reads which streams to run (a TOML file or the command line's
``--rtsp``/``--camera``); :mod:`stream.serve.supervisor` runs one analyzer process per stream
(:mod:`stream.serve.child`), tags every record with its stream id, sends them all to one
stdout, one ZeroMQ PUB socket and per-stream files, and restarts a child that dies.
"""

from __future__ import annotations

from stream.serve.config import (
    STREAM_KEY,
    ConfigError,
    ServeConfig,
    StreamSpec,
    from_flags,
    load_config,
    parse_config,
)

__all__ = [
    "STREAM_KEY",
    "ConfigError",
    "ServeConfig",
    "StreamSpec",
    "from_flags",
    "load_config",
    "parse_config",
]
