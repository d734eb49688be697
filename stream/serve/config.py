"""What ``cer-stream serve`` runs: the live sources, their ids, and where the records go.

From a TOML file::

    publish = "tcp://127.0.0.1:5556"     # one ZeroMQ PUB socket for every stream (optional)
    out_dir = "runs/live"                # ID.jsonl per stream (optional)
    args = ["--no-clip"]                 # analyzer flags every stream gets (optional)
    max_restarts = 10                    # restarts in a row before a stream is given up (default: forever)
    restart_max_delay = 30               # longest wait before a restart, seconds (default 30)
    isolation = "host"                   # "host": one shared model host (default); "process": models per stream

    dashboard = "127.0.0.1:8080"         # one live page for every stream (optional; needs the web extra)

    [vlm]                                # one request queue to a shared VLM endpoint (optional)
    url = "http://gpu-box:8000/v1"
    model = "Qwen/Qwen2.5-VL-7B-Instruct"
    key_env = "VLM_API_KEY"              # the endpoint's key, read by the supervisor only
    concurrency = 2                      # requests in flight to the endpoint at most (default 1)

    [ray]                                # run each stream under a Ray actor (optional; --ray overrides)
    address = "auto"
    worker_cpus = 1

    [[stream]]
    id = "door"
    rtsp = "rtsp://viewer@cam-door/stream"
    password_env = "DOOR_PASSWORD"       # its RTSP password comes from this variable (optional)

    [[stream]]
    id = "desk"
    camera = "0"
    args = ["--mic"]                     # this stream's own extra flags (optional)

or from the command line (:func:`from_flags`: ids ``s0``, ``s1``, ... in the order given).
Every problem is a :class:`ConfigError` with one line that names the key.

Every RTSP password a configuration holds (in a URL, or in a ``password_env`` variable) is
remembered when it is loaded (:func:`stream.core.redact.remember_secret`), so nothing ``serve``
writes shows it, whatever characters it holds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.core.redact import RTSP_PASSWORD_ENV, redact, redact_url, remember_secret, remember_url
from stream.serve.vlm_gateway import VlmConfig

#: The key the supervisor adds to every record: which stream it came from.  (Not ``stream``:
#: ``warning`` records already use that for the media track, ``video`` or ``audio``.)
STREAM_KEY = "stream_id"

#: What a stream id may hold (it names the per-stream file, and travels in every record).
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: Defaults of the restart policy.
DEFAULT_RESTART_MAX_DELAY_S = 30.0

#: How the streams' analyzers get their models: ``host`` (one model host for the machine, shared and
#: batched; :mod:`stream.serve.model_host`) or ``process`` (each analyzer loads its own, as before the host).
ISOLATIONS = ("host", "process")
DEFAULT_ISOLATION = "host"

#: Analyzer flags that ``serve`` sets itself for each child and so cannot be given in ``args``.
RESERVED_FLAGS = {
    "--video": "a stream's source is its rtsp or camera key",
    "--rtsp": "a stream's source is its rtsp key",
    "--camera": "a stream's source is its camera key",
    "--realtime": "serve runs live sources only",
    "--quiet": "serve reads every child's records from its stdout (use serve's own --quiet)",
    "--out": "use out_dir (ID.jsonl per stream)",
    "--publish": "use the top-level publish (one socket for every stream)",
    "--progress": "a child has no terminal",
    "--resume": "serve sets it when it restarts an analyzer",
    "--help": "not an analysis flag",
    "-h": "not an analysis flag",
    "--version": "not an analysis flag",
}
#: Flags that only make sense once per machine: allowed in a stream's own args, not the common ones.
PER_STREAM_ONLY = {"--serve": "each stream's page needs its own port: give --serve in that stream's args"}
#: Analyzer flags the ``[vlm]`` table sets for every stream (the gateway's address and token).
VLM_FLAGS = ("--vlm-url", "--vlm-model", "--vlm-key-env", "--vlm-every", "--vlm-timeout")

_TOP_KEYS = (
    "stream",
    "publish",
    "out_dir",
    "args",
    "max_restarts",
    "restart_max_delay",
    "isolation",
    "dashboard",
    "dashboard_public",
    "vlm",
    "ray",
)
_STREAM_KEYS = ("id", "rtsp", "camera", "args", "password_env")
_VLM_KEYS = ("url", "model", "key_env", "concurrency", "every", "timeout", "max_wait", "listen")
_RAY_KEYS = ("address", "worker_cpus", "worker_gpus")


class ConfigError(ValueError):
    """A ``serve`` configuration that cannot be used (one line, naming the key)."""


@dataclass(frozen=True)
class StreamSpec:
    """One live source: ``kind`` is ``rtsp`` or ``camera``; ``source`` the URL or camera;
    ``args`` the flags this stream's analyzer gets after the common ones; ``password_env``
    names the variable its RTSP password comes from (given to the child as
    ``CER_STREAM_RTSP_PASSWORD``)."""

    id: str
    kind: str
    source: str
    args: tuple[str, ...] = ()
    password_env: str | None = None

    def source_flags(self) -> list[str]:
        return [f"--{self.kind}", self.source]


@dataclass(frozen=True)
class ServeConfig:
    """Every stream and the outputs they share.  ``max_restarts``: how many times in a row
    (without a window in between) a stream's analyzer is restarted after it exits; the exit
    after that gives the stream up, so ``max_restarts = 2`` allows 3 exits in a row (``0``: the
    first exit gives it up; ``None``: restarted forever)."""

    streams: tuple[StreamSpec, ...]
    publish: str | None = None
    out_dir: Path | None = None
    args: tuple[str, ...] = ()
    max_restarts: int | None = None
    restart_max_delay_s: float = DEFAULT_RESTART_MAX_DELAY_S
    isolation: str = DEFAULT_ISOLATION
    dashboard: str | None = None
    dashboard_public: bool = False
    vlm: VlmConfig | None = None
    ray_address: str | None = None
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0
    source_file: Path | None = field(default=None, compare=False)

    def child_args(self, spec: StreamSpec) -> list[str]:
        """The analyzer flags of ``spec``'s child: source, ``--wait`` (a source down at start
        is waited for under the child's ``--reconnect`` policy rather than a start-up error),
        common flags, its own."""
        return [*spec.source_flags(), "--wait", *self.args, *spec.args]


# --------------------------------------------------------------------------- parsing
def _where(prefix: str, key: str) -> str:
    return f"{prefix}{key}" if prefix else key


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a non-empty string, not {value!r}")
    return value.strip()


def _args(value: Any, key: str, *, per_stream: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{key} must be a list of strings (analyzer flags, e.g. ["--no-clip"]), not {value!r}')
    check_args(value, key, per_stream=per_stream)
    return tuple(value)


def check_args(args: Sequence[str], key: str, *, per_stream: bool) -> None:
    """``ConfigError`` when ``args`` holds a flag serve sets itself."""
    for a in args:
        flag = a.split("=", 1)[0]
        why = RESERVED_FLAGS.get(flag) or (None if per_stream else PER_STREAM_ONLY.get(flag))
        if why:
            raise ConfigError(f"{key}: {flag} cannot be given here ({why})")


def _int_or_none(value: Any, key: str) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "forever"):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f'{key} must be a whole number >= 0 or "forever", not {value!r}')
    return value


def _positive(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{key} must be a positive number of seconds, not {value!r}")
    return float(value)


def check_id(value: Any, key: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ConfigError(f"{key} must be 1-64 characters of A-Z a-z 0-9 _ -, not {value!r}")
    return value


def _stream(table: Any, i: int) -> StreamSpec:
    prefix = f"stream[{i}]."
    if not isinstance(table, Mapping):
        raise ConfigError(f"stream[{i}] must be a table ([[stream]] with id and rtsp or camera)")
    for key in table:
        if key not in _STREAM_KEYS:
            raise ConfigError(f"{prefix}{key}: unknown key (a stream takes {', '.join(_STREAM_KEYS)})")
    if "id" not in table:
        raise ConfigError(f"{prefix}id is missing")
    sid = check_id(table["id"], f"{prefix}id")
    prefix = f"stream {sid!r}: "
    given = [k for k in ("rtsp", "camera") if k in table]
    if len(given) != 1:
        raise ConfigError(f"{prefix}give exactly one of rtsp or camera")
    kind = given[0]
    value = table[kind]
    if kind == "camera" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    source = _string(value, _where(prefix, kind))
    if kind == "rtsp":
        _rtsp_source(source, f"{prefix}rtsp must be an rtsp:// URL")
    args = _args(table.get("args", []), _where(prefix, "args"), per_stream=True)
    password_env = None
    if "password_env" in table:
        password_env = _string(table["password_env"], _where(prefix, "password_env"))
        if kind != "rtsp":
            raise ConfigError(f"{prefix}password_env is for rtsp streams")
    return StreamSpec(id=sid, kind=kind, source=source, args=args, password_env=password_env)


def _rtsp_source(url: str, error: str) -> None:
    """Remember ``url``'s password (nothing serve writes shows it); ``ConfigError(error)`` when
    it is not an rtsp:// URL."""
    remember_url(url)
    if not url.lower().startswith(("rtsp://", "rtsps://")):
        raise ConfigError(error)


def parse_config(data: Mapping[str, Any], *, source_file: Path | None = None) -> ServeConfig:
    """A :class:`ServeConfig` from the parsed TOML tables; ``ConfigError`` (one line) when a key
    is unknown, missing or of the wrong kind, or two streams share an id."""
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{key}: unknown key (the file takes {', '.join(_TOP_KEYS)})")
    tables = data.get("stream")
    if tables is None:
        raise ConfigError("stream: no [[stream]] table (each names an id and an rtsp URL or camera)")
    if not isinstance(tables, list) or not tables:
        raise ConfigError("stream must be one or more [[stream]] tables")
    streams = [_stream(t, i) for i, t in enumerate(tables)]
    publish = _string(data["publish"], "publish") if "publish" in data else None
    out_dir = Path(_string(data["out_dir"], "out_dir")) if "out_dir" in data else None
    if out_dir is not None and source_file is not None and not out_dir.is_absolute():
        out_dir = source_file.parent / out_dir  # relative to the file, as a manifest's paths are
    dashboard = _string(data["dashboard"], "dashboard") if "dashboard" in data else None
    dashboard_public = data.get("dashboard_public", False)
    if not isinstance(dashboard_public, bool):
        raise ConfigError(f"dashboard_public must be true or false, not {dashboard_public!r}")
    ray: dict[str, Any] = _ray(data["ray"]) if "ray" in data else {}
    return make_config(
        streams,
        publish=publish,
        out_dir=out_dir,
        args=_args(data.get("args", []), "args", per_stream=False),
        max_restarts=_int_or_none(data.get("max_restarts"), "max_restarts"),
        restart_max_delay_s=_positive(data.get("restart_max_delay", DEFAULT_RESTART_MAX_DELAY_S), "restart_max_delay"),
        isolation=_isolation(data.get("isolation", DEFAULT_ISOLATION), "isolation"),
        dashboard=dashboard,
        dashboard_public=dashboard_public,
        vlm=_vlm(data["vlm"]) if "vlm" in data else None,
        source_file=source_file,
        **ray,
    )


def _isolation(value: Any, key: str) -> str:
    if value not in ISOLATIONS:
        raise ConfigError(f"{key} must be one of {', '.join(ISOLATIONS)}, not {value!r}")
    return str(value)


def _table(value: Any, name: str, keys: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a table ([{name}] with {', '.join(keys)})")
    for key in value:
        if key not in keys:
            raise ConfigError(f"{name}.{key}: unknown key ([{name}] takes {', '.join(keys)})")
    return value


def _vlm(value: Any) -> VlmConfig:
    """The ``[vlm]`` table: the shared endpoint every stream asks through one queue."""
    table = _table(value, "vlm", _VLM_KEYS)
    if "url" not in table:
        raise ConfigError("vlm.url is missing (the endpoint's base URL, e.g. http://gpu-box:8000/v1)")
    kw: dict[str, Any] = {"url": _string(table["url"], "vlm.url")}
    for key in ("model", "key_env", "listen"):
        if key in table:
            kw[key] = _string(table[key], f"vlm.{key}")
    if "concurrency" in table:
        n = table["concurrency"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"vlm.concurrency must be a whole number >= 1, not {n!r}")
        kw["concurrency"] = n
    for key, name in (("every", "every_s"), ("timeout", "timeout_s"), ("max_wait", "max_wait_s")):
        if key in table:
            kw[name] = _positive(table[key], f"vlm.{key}")
    try:
        return VlmConfig(**kw)
    except ValueError as exc:
        raise ConfigError(f"vlm: {exc}") from None


def _ray(value: Any) -> dict[str, Any]:
    """The ``[ray]`` table: ``ServeConfig`` fields."""
    table = _table(value, "ray", _RAY_KEYS)
    out: dict[str, Any] = {}
    if "address" in table:
        out["ray_address"] = _string(table["address"], "ray.address")
    for key in ("worker_cpus", "worker_gpus"):
        if key in table:
            v = table[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"ray.{key} must be a number >= 0, not {v!r}")
            out[key] = float(v)
    return out


def make_config(streams: Sequence[StreamSpec], **kw: Any) -> ServeConfig:
    """A :class:`ServeConfig` whose streams have unique ids."""
    seen: set[str] = set()
    for s in streams:
        if s.id in seen:
            raise ConfigError(f"stream {s.id!r}: id used twice (every stream needs its own)")
        seen.add(s.id)
    if not streams:
        raise ConfigError("no stream to serve (give a config file or --rtsp/--camera)")
    config = ServeConfig(streams=tuple(streams), **kw)
    check_vlm_flags(config)
    return config


def check_vlm_flags(config: ServeConfig) -> None:
    """``ConfigError`` when a ``[vlm]`` table is given and some analyzer flags set what it sets."""
    if config.vlm is None:
        return
    common = ("args (or the flags after --)", config.args)
    for key, args in [common, *((f"stream {s.id!r}: args", s.args) for s in config.streams)]:
        for a in args:
            flag = a.split("=", 1)[0]
            if flag in VLM_FLAGS:
                raise ConfigError(
                    f"{key}: {flag} cannot be given with a [vlm] table or --vlm (they set it for every stream)"
                )


def load_config(path: str | Path) -> ServeConfig:
    """Read and check a TOML file; ``ConfigError`` (one line, naming the file and the key)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(
                f"{path}: reading a config file needs Python 3.11 or the tomli package (or give --rtsp/--camera)"
            ) from None

    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {str(exc).splitlines()[0]}") from None
    try:
        return parse_config(data, source_file=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def from_flags(
    sources: Sequence[tuple[str, str]],
    *,
    publish: str | None = None,
    out_dir: Path | None = None,
    args: Sequence[str] = (),
    max_restarts: int | None = None,
    restart_max_delay_s: float = DEFAULT_RESTART_MAX_DELAY_S,
    isolation: str = DEFAULT_ISOLATION,
) -> ServeConfig:
    """Streams ``s0``, ``s1``, ... from ``(kind, source)`` pairs (``--rtsp``/``--camera`` in the
    order given); ``args`` (after ``--``) go to every stream."""
    check_args(args, "analyzer flags after --", per_stream=False)
    streams = []
    for i, (kind, source) in enumerate(sources):
        if kind == "rtsp":
            _rtsp_source(source.strip(), f"--rtsp {redact(redact_url(source.strip()))!r}: not an rtsp:// URL")
        streams.append(StreamSpec(id=f"s{i}", kind=kind, source=source.strip()))
    if max_restarts is not None and max_restarts < 0:
        raise ConfigError("--max-restarts must be >= 0")
    if restart_max_delay_s <= 0:
        raise ConfigError("--restart-max-delay must be positive")
    return make_config(
        streams,
        publish=publish,
        out_dir=out_dir,
        args=tuple(args),
        max_restarts=max_restarts,
        restart_max_delay_s=restart_max_delay_s,
        isolation=_isolation(isolation, "--isolation"),
    )


def child_environment(spec: StreamSpec, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of ``spec``'s child: ours, with its RTSP password (from
    ``password_env``) as ``CER_STREAM_RTSP_PASSWORD``; ``ConfigError`` when that variable is
    not set.  The password is remembered (nothing serve writes shows it)."""
    env = dict(os.environ if base is None else base)
    if spec.password_env is not None:
        value = env.get(spec.password_env)
        if not value:
            raise ConfigError(f"stream {spec.id!r}: password_env {spec.password_env} is not set")
        env[RTSP_PASSWORD_ENV] = value
    if spec.kind == "rtsp" and env.get(RTSP_PASSWORD_ENV):
        remember_secret(env[RTSP_PASSWORD_ENV])
    return env


__all__ = [
    "DEFAULT_RESTART_MAX_DELAY_S",
    "ID_PATTERN",
    "STREAM_KEY",
    "VLM_FLAGS",
    "ConfigError",
    "ServeConfig",
    "StreamSpec",
    "check_args",
    "check_id",
    "check_vlm_flags",
    "child_environment",
    "from_flags",
    "load_config",
    "make_config",
    "parse_config",
]
