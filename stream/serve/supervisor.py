"""Many live streams, one analyzer process each, supervised.

A :class:`Supervisor` runs one child process per stream (``python -m stream.serve.child``,
which is ``cer-stream --rtsp URL ...`` fed its flags on stdin, so no URL is ever on a command
line) and one thread per child that reads the child's JSON lines from its stdout, adds
``"stream_id": ID`` to each and hands it to the shared outputs: the supervisor's stdout, one
ZeroMQ PUB socket (:class:`~stream.sinks.outputs.ZmqPublishSink`, two-part ``[type, json]``)
and, per stream, ``OUT_DIR/ID.jsonl``.  Each child's stderr lines go to the supervisor's
stderr behind ``cer-stream serve [ID]:``, credentials redacted (the supervisor remembers every
stream's password: :func:`stream.core.redact.redact` hides it whatever characters it holds).

A child that exits while the supervisor is not stopping (a crash, an error, a kill) is started
again after an exponential backoff with jitter (:meth:`ReconnectPolicy.delay`), and
``supervisor`` records say so::

    {"type": "supervisor", "stream_id": "door", "event": "exited", "exit_code": -9,
     "signal": "SIGKILL", "restarts": 0, "delay_s": 0.37, "message": "...", "wall_time": ...}
    {"type": "supervisor", "stream_id": "door", "event": "restarted", "pid": 4242, "restarts": 1, ...}

The backoff grows with exits in a row and starts again once a child has emitted a window; a
stream is restarted ``max_restarts`` times in a row at most: the exit after that gives it up
(``gave_up``; ``max_restarts = 2``: the third exit in a row) and the others go on.
:meth:`Supervisor.stop` (SIGINT/SIGTERM in ``cer-stream serve``) sends each child SIGINT: it
flushes, writes its ``end`` record and exits; a child still running after ``stop_grace_s`` is
killed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, TextIO

from stream.core.signals import Flag, SignalEvent
from stream.io.reconnect import ReconnectPolicy, Resume
from stream.serve.children import RESTART_BASE_DELAY_S, follow
from stream.serve.children import signal_name as _signal_name
from stream.serve.config import STREAM_KEY, ConfigError, ServeConfig, StreamSpec, child_environment

PROG = "cer-stream serve"

#: Seconds a child has after SIGINT to flush and write its end record before it is killed.
STOP_GRACE_S = float(os.environ.get("CER_STREAM_SERVE_STOP_GRACE", "20"))
#: ``nice`` increment of the analyzers (and their capture processes) under the model host.
ANALYZER_NICE = 5
#: Seconds between two ``vlm_queue`` records (with a ``[vlm]`` gateway; one more at the end).
VLM_REPORT_S = float(os.environ.get("CER_STREAM_SERVE_VLM_REPORT_S", "30"))
#: Longest child stderr line kept for a supervisor record's ``message``.
_MESSAGE_MAX = 300


def child_command(spec: StreamSpec, python: str | None = None) -> list[str]:
    """The child's command line: the stream id only, never its source."""
    return [python or sys.executable, "-m", "stream.serve.child", "--id", spec.id]


def check_analyzer_flags(config: ServeConfig) -> None:
    """Parse every child's flags as ``cer-stream`` would, now: ``ConfigError`` (one line,
    naming the stream) for a flag the analyzer does not take, rather than a child that
    fails the same way at every restart."""
    import contextlib
    import io

    from stream.cli.main import run_parser

    parser = run_parser()
    for spec in config.streams:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(config.child_args(spec))
        except SystemExit:
            lines = err.getvalue().strip().splitlines() or ["bad analyzer flags"]
            message = lines[-1].split("error: ", 1)[-1]
            raise ConfigError(f"stream {spec.id!r}: analyzer flags: {message}") from None


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value of the last ``flag VALUE`` or ``flag=VALUE`` in ``argv``."""
    value = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def _free_port() -> int:
    """A loopback port free now (the analyzer binds it a moment later; if another process took it
    meanwhile, the analyzer fails to start and is restarted on another)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _StreamRunner:
    """One stream: its child process, the thread that starts, reads and restarts it."""

    def __init__(self, sup: Supervisor, spec: StreamSpec, env: dict[str, str]) -> None:
        self.sup = sup
        self.spec = spec
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.gave_up = False
        self.last_error = ""
        self.page: str | None = None  # the child's own live page (when the dashboard shows its frames)
        # how far the stream got (its analyzers' records): where a restarted analyzer goes on
        self.fps: float | None = None
        self.last_window: int | None = None
        self.last_final_t: float | None = None
        self.last_wall = 0.0
        self.exit_note = ""
        self._healthy = False
        self.thread = threading.Thread(target=self._run, name=f"cer-serve-{spec.id}", daemon=True)

    # ---- the child
    def _spawn(self) -> subprocess.Popen[bytes]:
        argv, self.page = self.sup.spawn_args(self.spec, self._resume())
        proc = subprocess.Popen(
            child_command(self.spec, self.sup.python),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            # its own session: a Ctrl-C in the terminal reaches the supervisor only, which
            # stops each child once (a second SIGINT would make a child stop without its end record)
            start_new_session=True,
        )
        assert proc.stdin is not None
        try:
            proc.stdin.write((json.dumps({"argv": argv}) + "\n").encode())
            proc.stdin.flush()  # stdin stays open: its end of file tells the child we are gone
        except OSError:
            pass  # it died at once; its exit is handled as any other
        return proc

    def _read_stderr(self, stream: IO[bytes]) -> None:
        from stream.core.redact import redact

        try:
            for raw in stream:
                line = redact(raw.decode("utf-8", "replace").rstrip())
                if not line:
                    continue
                self.last_error = line[:_MESSAGE_MAX]
                self.sup.write_stderr(f"{PROG} [{self.spec.id}]: {line}")
        except (OSError, ValueError):  # the pipe closed under us (a child whose heir kept it open)
            pass

    def _read_stdout(self, stream: IO[bytes]) -> None:
        from stream.core.redact import redact

        try:
            for raw in stream:
                text = raw.decode("utf-8", "replace").strip()
                if not text:
                    continue
                try:
                    record = json.loads(text)
                    if not isinstance(record, dict):
                        raise ValueError
                except ValueError:
                    record = {
                        "type": "warning",
                        "message": f"analyzer wrote a line that is not a record: {redact(text)[:200]}",
                    }
                self._progress(record)
                self.sup.emit(self.spec.id, record)
        except (OSError, ValueError):  # the pipe failed under us: the child's exit says the rest
            pass

    def _progress(self, record: dict[str, Any]) -> None:
        """Note how far the stream got: its last window and its last final frame."""
        kind = record.get("type")
        if kind == "start" and isinstance(record.get("fps"), (int, float)) and record["fps"] > 0:
            self.fps = float(record["fps"])
        elif kind == "window" and isinstance(record.get("index"), int):
            self._healthy = True
            self.last_window = max(record["index"], self.last_window if self.last_window is not None else -1)
            self.last_wall = time.time()
        elif kind == "frames" and record.get("final") and record.get("time"):
            try:
                t = float(max(record["time"]))
            except (TypeError, ValueError):
                return
            self.last_final_t = max(t, self.last_final_t or 0.0)
            self.last_wall = time.time()

    def _resume(self) -> Resume | None:
        """Where a restarted analyzer goes on (``None`` at the first start, or before any window):
        the window after the last one written, media time from the last final frame (without
        frame records, the next window's start; :class:`Resume` holds it before that window's
        first grid point)."""
        if not self.restarts or self.last_window is None:
            return None
        from stream.core.windows import HOP_S

        window = self.last_window + 1
        after = self.last_final_t if self.last_final_t is not None else window * HOP_S
        why = self.exit_note or "the analyzer exited"
        return Resume(window=window, after_s=after, wall_time=self.last_wall, reason=f"{why}; restarted")

    # ---- the loop
    def _run(self) -> None:
        policy = ReconnectPolicy(
            attempts=self.sup.config.max_restarts,
            max_delay_s=self.sup.config.restart_max_delay_s,
            base_delay_s=min(RESTART_BASE_DELAY_S, self.sup.config.restart_max_delay_s),
        )
        failures = 0  # exits in a row without a window in between
        while True:
            with self.sup.lock:
                if self.sup.stopping:
                    return
                self._healthy = False
                self.last_error = ""
                try:
                    proc = self._spawn()
                except OSError as exc:
                    proc = None
                    self.last_error = f"cannot start the analyzer: {exc.strerror or exc}"
                self.proc = proc
            code: int | None = None
            if proc is not None:
                event = "restarted" if self.restarts else "started"
                self.sup.supervisor_record(
                    self.spec.id, event, pid=proc.pid, restarts=self.restarts, page=self.page, host=self.sup.hostname
                )
                code = follow(proc, self._read_stdout, self._read_stderr)
            if self.sup.stopping:
                self.sup.supervisor_record(
                    self.spec.id, "stopped", exit_code=code, signal=_signal_name(code), restarts=self.restarts
                )
                return
            failures = 1 if self._healthy else failures + 1
            sig = _signal_name(code)
            if policy.gives_up(failures):  # exit max_restarts + 1 in a row: max_restarts restarts made
                self.gave_up = True
                self.sup.supervisor_record(
                    self.spec.id,
                    "gave_up",
                    exit_code=code,
                    signal=sig,
                    restarts=self.restarts,
                    message=self.last_error or None,
                )
                self.sup.write_stderr(
                    f"{PROG}: stream {self.spec.id} gave up after {failures} exit(s) in a row"
                    + (f": {self.last_error}" if self.last_error else "")
                )
                self.sup.wake()
                return
            delay = policy.delay(failures)
            self.exit_note = f"the analyzer exited ({sig or f'exit status {code}'})"
            self.sup.supervisor_record(
                self.spec.id,
                "exited",
                exit_code=code,
                signal=sig,
                restarts=self.restarts,
                delay_s=round(delay, 3),
                message=self.last_error or None,
            )
            if self.sup.wait_stopping(delay):
                self.sup.supervisor_record(self.spec.id, "stopped", exit_code=code, restarts=self.restarts)
                return
            self.restarts += 1

    # ---- control (under the supervisor's lock)
    def send(self, signum: int) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                pass


class Supervisor:
    """Runs ``config``'s streams until :meth:`stop`.  Records go to ``stdout`` (default
    ``sys.stdout``; none with ``quiet``), the config's ``publish`` socket and ``out_dir``
    files, and to ``on_record`` (called on the reading thread).  ``env``: variables the
    children get on top of ours.  Thread-safe :meth:`stop`; :meth:`run` is the whole life in
    one call."""

    def __init__(
        self,
        config: ServeConfig,
        *,
        stdout: TextIO | None = None,
        quiet: bool = False,
        stop_grace_s: float = STOP_GRACE_S,
        python: str | None = None,
        stderr: Callable[[str], None] | None = None,
        on_record: Callable[[dict[str, Any]], None] | None = None,
        env: Mapping[str, str] | None = None,
        child_pages: bool | None = None,
        unset_env: tuple[str, ...] = (),
    ) -> None:
        from stream.core.redact import remember_url

        self.config = config
        for spec in config.streams:  # a config that came through Ray was not loaded here
            remember_url(spec.source)
        self.env = env
        # each analyzer serves its own page on a free loopback port (the dashboard shows its frames)
        self.child_pages = bool(config.dashboard) if child_pages is None else child_pages
        self.unset_env = unset_env  # variables the children must not inherit (the VLM key on a Ray node)
        self.hostname = socket.gethostname()
        self.gateway: Any = None  # VlmGateway of the config's [vlm] table
        self.dashboard: Any = None  # Dashboard of the config's dashboard address
        self.quiet = quiet
        self.stop_grace_s = stop_grace_s
        self.python = python
        self.lock = threading.RLock()
        self.publish_endpoint: str | None = None
        self._stdout = stdout
        self._stderr = stderr
        self._on_record = on_record
        self._stderr_lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._common: Any = None  # SinkSet of stdout and publish
        self._files: dict[str, Any] = {}  # stream id -> SinkSet of its file
        self._sinks: list[Any] = []
        self.runners: list[_StreamRunner] = []
        self.host: Any = None  # HostRunner of the shared model host (isolation "host")

    # ---- outputs
    def vlm_env(self, env: dict[str, str]) -> dict[str, str]:
        """A child's environment with the gateway's token and without the endpoint's key (only the
        gateway holds that); unchanged without a ``[vlm]`` table."""
        if self.config.vlm is None:
            return env
        from stream.serve.vlm_gateway import TOKEN_ENV

        env = dict(env)
        env.pop(self.config.vlm.key_env, None)
        if self.gateway is not None:
            env[TOKEN_ENV] = self.gateway.token
        return env

    def _open_services(self) -> None:
        """Start the ``[vlm]`` gateway and the dashboard; ``ValueError`` (one line) when one
        cannot start."""
        from stream.serve.vlm_gateway import GatewayError, VlmGateway

        ids = [s.id for s in self.config.streams]
        try:
            if self.config.vlm is not None and self.gateway is None:
                self.gateway = VlmGateway(self.config.vlm, ids)
                self.write_stderr(
                    f"{PROG}: VLM requests of every stream queue at {self.gateway.base_url} "
                    f"({self.config.vlm.concurrency} in flight at most)"
                )
            if self.config.dashboard and self.dashboard is None:
                from stream.serve.dashboard import Dashboard, DashboardError
                from stream.sinks.web import announce_token, parse_bind, url_host

                try:
                    host, port = parse_bind(self.config.dashboard)
                except ValueError as exc:
                    raise ValueError(f"dashboard: {str(exc).replace('--serve ', '')}") from None
                try:
                    self.dashboard = Dashboard(host, port, stream_ids=ids, public=self.config.dashboard_public)
                except DashboardError as exc:
                    raise ValueError(str(exc)) from None
                self.write_stderr(f"{PROG}: dashboard {self.dashboard.url}")
                if self.dashboard.token is not None:
                    announce_token(self.dashboard, f"the dashboard on {url_host(host)}:{self.dashboard.port}")
        except GatewayError as exc:
            self._close_services()
            raise ValueError(str(exc)) from None
        except ValueError:
            self._close_services()
            raise

    def _close_services(self) -> None:
        for service in (self.dashboard, self.gateway):
            if service is not None:
                service.close()

    def report_vlm(self) -> None:
        """A ``vlm_queue`` record: the gateway's queue and what each stream got from it."""
        if self.gateway is not None:
            self.emit_common({"type": "vlm_queue", **self.gateway.stats(), "wall_time": round(time.time(), 3)})

    def _open(self) -> None:
        """Open every output (and the gateway and dashboard); ``ValueError`` (one line) when one
        cannot be used."""
        from stream.sinks.outputs import JsonLinesSink, SinkError, SinkSet, ZmqPublishSink

        self._open_services()
        common: list[Any] = []
        try:
            if not self.quiet:
                out = JsonLinesSink(self._stdout or sys.stdout, name="stdout")
                out.required = True  # its reader going away ends the run (also for a copy of fd 1)
                common.append(out)
            if self.config.publish:
                pub = ZmqPublishSink(self.config.publish)
                self.publish_endpoint = pub.endpoint
                common.append(pub)
            self._sinks.extend(common)
            files: dict[str, JsonLinesSink] = {}
            if self.config.out_dir is not None:
                try:
                    self.config.out_dir.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise SinkError(f"cannot make out_dir {self.config.out_dir}: {exc.strerror or exc}") from None
                for spec in self.config.streams:
                    files[spec.id] = JsonLinesSink(
                        path=Path(self.config.out_dir) / f"{spec.id}.jsonl", option="out_dir"
                    )
                    self._sinks.append(files[spec.id])
        except (SinkError, ValueError, OSError) as exc:
            for s in self._sinks:
                s.close()
            self._sinks.clear()
            self._close_services()
            raise ValueError(str(exc)) from None
        # stdout and files are lossless: a reader that falls behind holds the readers back, the
        # children's pipes fill and each child drops records on its own side (a live run never
        # waits) and counts them in its end record; ZeroMQ never waits
        self._common = SinkSet(common, block=True)
        self._files = {sid: SinkSet([f], block=True) for sid, f in files.items()}

    def emit(self, stream_id: str, record: dict[str, Any]) -> None:
        """Send one stream's record to every output, tagged with its stream id (right after
        ``type``)."""
        tagged = {"type": record.get("type"), STREAM_KEY: stream_id}
        tagged.update((k, v) for k, v in record.items() if k not in ("type", STREAM_KEY))
        files = self._files.get(stream_id)
        if files is not None:
            files.put(tagged)
        if self.dashboard is not None and tagged["type"] == "supervisor":
            self._frame_source(stream_id, tagged)
        self.emit_common(tagged)

    def _frame_source(self, stream_id: str, record: dict[str, Any]) -> None:
        """Point the dashboard at a (re)started analyzer's frames: only one on this machine can
        be reached (its page listens on loopback)."""
        event = record.get("event")
        if event in ("started", "restarted"):
            page = record.get("page")
            here = record.get("host") == self.hostname
            self.dashboard.set_frame_source(stream_id, f"{page}frame.jpg" if page and here else None)
        elif event in ("exited", "gave_up", "stopped"):
            self.dashboard.set_frame_source(stream_id, None)

    def emit_common(self, record: dict[str, Any]) -> None:
        """A record to the outputs every stream shares: ``on_record``, stdout, the publish socket,
        the dashboard (a stream's own file is :meth:`emit`'s; a ``vlm_queue`` record has none)."""
        if self._on_record is not None:
            self._on_record(record)
        if self._common is not None:
            self._common.put(record)
        if self.dashboard is not None:
            self.dashboard.write(record)

    def spawn_args(self, spec: StreamSpec, resume: Resume | None = None) -> tuple[list[str], str | None]:
        """One start of ``spec``'s analyzer: its flags and the URL of its own page (``None``
        without one).  A restart goes on from ``resume`` (window indices, media time and frame
        numbers continue).  With a ``[vlm]`` gateway it asks the VLM through it; with the
        dashboard on it serves its page on a free loopback port, unless its args give ``--serve``."""
        argv = self.config.child_args(spec)
        if resume is not None:
            argv += ["--resume", json.dumps(dataclasses.asdict(resume))]
        if self.gateway is not None:
            argv += self.config.vlm.analyzer_args(self.gateway.url_for(spec.id))  # type: ignore[union-attr]
        page = None
        if self.child_pages:
            given = _flag_value(argv, "--serve")
            if given is None:
                port = _free_port()
                argv += ["--serve", f"127.0.0.1:{port}"]
                page = f"http://127.0.0.1:{port}/"
            else:
                from stream.sinks.web import is_loopback, parse_bind, url_host

                try:
                    host, port = parse_bind(given)
                except ValueError:
                    host, port = "", 0  # the analyzer says what is wrong with it
                if port and (is_loopback(host) or host in ("0.0.0.0", "::")):  # reachable from here
                    page = f"http://{url_host(host) if is_loopback(host) else '127.0.0.1'}:{port}/"
        return argv, page

    def supervisor_record(self, stream_id: str, event: str, **fields: Any) -> None:
        record: dict[str, Any] = {"type": "supervisor", "event": event}
        record.update((k, v) for k, v in fields.items() if v is not None)
        record["wall_time"] = round(time.time(), 3)
        self.emit(stream_id, record)

    def write_stderr(self, line: str) -> None:
        if self._stderr is not None:
            self._stderr(line)
            return
        with self._stderr_lock:
            try:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    # ---- life
    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wait_stopping(self, timeout: float) -> bool:
        return self._stopping.wait(timeout)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        """Open the outputs and start every stream's child; ``ValueError``/``ConfigError``
        (one line) when an output or a stream's environment cannot be used."""
        base = {**{k: v for k, v in os.environ.items() if k not in self.unset_env}, **(self.env or {})}
        envs = {spec.id: child_environment(spec, base) for spec in self.config.streams}
        self._open()
        envs = {sid: self.vlm_env(env) for sid, env in envs.items()}  # the gateway's token, now it runs
        if self.config.isolation == "host":
            self._start_host(base)
            assert self.host is not None
            from stream.modalities.hosted import HOST_ENV, STREAM_ENV
            from stream.serve.child import NICE_ENV

            for sid, env in envs.items():
                env[HOST_ENV] = self.host.endpoint
                env[STREAM_ENV] = sid
                # the host does every stream's model work and each window waits for it; the
                # analyzers and their decoders have slack (frame rings): they yield the CPU to it
                env.setdefault(NICE_ENV, str(ANALYZER_NICE))
        self.runners = [_StreamRunner(self, spec, envs[spec.id]) for spec in self.config.streams]
        for r in self.runners:
            r.thread.start()

    def _start_host(self, base: Mapping[str, str]) -> None:
        """Start the model host and wait for its models (``ValueError``, one line, when it cannot
        start); it gets none of the streams' secrets."""
        from stream.core.redact import RTSP_PASSWORD_ENV
        from stream.serve.host_runner import HostRunner

        secret = {RTSP_PASSWORD_ENV, *(s.password_env for s in self.config.streams if s.password_env)}
        if self.config.vlm is not None:
            secret.add(self.config.vlm.key_env)
        env = {k: v for k, v in base.items() if k not in secret}
        self.host = HostRunner(self, self.python or sys.executable, env)
        self.host.start()
        self.write_stderr(f"{PROG}: loading the models once for every stream (model host)")
        if not self.host.wait_ready():
            why = self.host.last_error or "it did not say it was ready"
            self.host.stop()
            raise ValueError(f"the model host did not start: {why}")

    def stop(self, signum: int = signal.SIGINT) -> None:
        """Stop every child (``signum``, default SIGINT: each flushes and writes its end record)
        and restart none; returns at once (:meth:`join` waits)."""
        with self.lock:
            self._stopping.set()
            for r in self.runners:
                r.send(signum)
        self._wake.set()

    def kill(self) -> None:
        """Kill every child still running (SIGKILL)."""
        with self.lock:
            self._stopping.set()
            for r in self.runners:
                r.send(signal.SIGKILL)
            if self.host is not None:
                self.host.kill()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every stream's thread to end; whether they all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for r in self.runners:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            r.thread.join(left)
        return not any(r.thread.is_alive() for r in self.runners)

    @property
    def active(self) -> list[str]:
        """Streams not given up."""
        return [r.spec.id for r in self.runners if not r.gave_up]

    def output_closed(self) -> bool:
        """Whether stdout's reader went away (or writing to it failed): nothing more to say."""
        return self._common is not None and "stdout" in (*self._common.closed, *self._common.failed)

    def report_sink_events(self) -> None:
        sets = [self._common, *self._files.values()] if self._common is not None else []
        for s in sets:
            for ev in s.events():
                if ev.kind == "failed":
                    self.write_stderr(f"{PROG}: error: {ev.message}")

    def close(self) -> None:
        """Stop the model host, if there is one (after the streams: their last windows need it),
        let the outputs write what they hold (a few seconds at most), then close them."""
        if self.host is not None:
            self.host.stop()
        if self._common is not None:
            self.report_vlm()
        for s in [self._common, *self._files.values()]:
            if s is not None:
                s.finish(10.0, force=True)
        for sink in self._sinks:
            sink.close()
        self._sinks.clear()
        self._close_services()
        self.gateway = self.dashboard = None

    def run(self, stop_requested: Flag | None = None, kill_requested: Flag | None = None) -> int:
        """Start, run until ``stop_requested`` is set (or every stream has given up, or
        stdout's reader went away), stop the children and close the outputs.  Exit status 0,
        or 1 when every stream gave up.  Events set by a signal handler should be
        :class:`~stream.core.signals.SignalEvent` (a ``threading.Event`` can deadlock there)."""
        stop_requested = SignalEvent() if stop_requested is None else stop_requested
        kill_requested = SignalEvent() if kill_requested is None else kill_requested
        try:
            self.start()
            if self.publish_endpoint:
                self.write_stderr(f"{PROG}: publishing on {self.publish_endpoint}")
            next_vlm = time.monotonic() + VLM_REPORT_S
            while not stop_requested.is_set():
                self._wake.wait(0.2)
                self._wake.clear()
                self.report_sink_events()
                if time.monotonic() >= next_vlm:
                    self.report_vlm()
                    next_vlm = time.monotonic() + VLM_REPORT_S
                if not self.active or self.output_closed():
                    break
                if self.host is not None and self.host.gave_up:
                    for r in self.runners:  # nothing can analyse them: stop, exit status 1
                        r.gave_up = True
                    break
            self.stop()
            deadline = time.monotonic() + self.stop_grace_s
            while not self.join(0.2):
                if kill_requested.is_set() or time.monotonic() >= deadline:
                    self.kill()
                    self.join(10.0)
                    break
        finally:
            self.stop()
            self.close()
        if not self.active and not stop_requested.is_set():
            return 1
        return 0


__all__ = ["PROG", "STOP_GRACE_S", "Supervisor", "check_analyzer_flags", "child_command"]
