"""``cer-stream serve --ray ADDRESS``: each stream's analyzer under a Ray actor.

One :class:`StreamActor` per stream, placed by Ray on a node with ``--worker-cpus`` /
``--worker-gpus`` free.  The actor runs a one-stream :class:`~stream.serve.supervisor.Supervisor`
on its node (the analyzer child process, restarted with backoff when it exits, exactly as
locally) and keeps the child's records until the driver collects them (:meth:`StreamActor.poll`,
a batch every half second at most).  The driver, :class:`RaySupervisor`, has one thread per
actor that polls it and sends the records to the outputs (stdout, the one publish socket,
``out_dir`` files: all on the driver's machine).

An actor whose process or node dies is restarted by Ray (``max_restarts``: the config's
``max_restarts``, ``-1`` for forever), which starts a new analyzer; the driver says so with an
``exited`` then a ``restarted`` supervisor record, as for a child that dies, and the
``restarts`` counts of the stream go on from where they were.

The RTSP password a stream needs (``password_env``, or ``CER_STREAM_RTSP_PASSWORD``) is read on
the driver and handed to the actor in its creation arguments, through Ray's control plane: keep
the cluster on a private network with token authentication (``RAY_AUTH_MODE=token``).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import socket
import sys
import threading
from typing import Any

from stream.io.reconnect import ReconnectPolicy
from stream.serve.config import ConfigError, ServeConfig, StreamSpec
from stream.serve.supervisor import PROG, RESTART_BASE_DELAY_S, STOP_GRACE_S, Supervisor

#: Longest a driver's poll waits for an actor's first record (seconds).
POLL_WAIT_S = 0.5
#: Records (and stderr lines) one poll returns at most.
POLL_MOST = 2000
#: Seconds a driver waits for one poll before saying on stderr that the actor has not started.
PENDING_NOTE_S = 60.0


class StreamActor:
    """One stream on a Ray node: its analyzer child, supervised there (made remote at run time,
    so that this module imports without Ray)."""

    def __init__(
        self,
        config: ServeConfig,
        env: dict[str, str],
        stop_grace_s: float = STOP_GRACE_S,
        child_pages: bool = False,
        unset_env: tuple[str, ...] = (),
    ) -> None:
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.sup = Supervisor(
            config,
            quiet=True,
            stop_grace_s=stop_grace_s,
            on_record=lambda r: self._q.put(("record", r)),
            stderr=lambda line: self._q.put(("stderr", line)),
            env=env,
            child_pages=child_pages,
            unset_env=unset_env,
        )
        self.sup.start()

    def poll(self, wait_s: float = POLL_WAIT_S, most: int = POLL_MOST) -> dict[str, Any]:
        """What the analyzer wrote since the last poll (waiting ``wait_s`` at most for the first):
        ``{"instance", "records", "stderr", "done"}``; ``done``: the stream has ended here (given
        up or stopped) and everything it wrote has been returned."""
        finished = self.sup.join(0)  # before draining: a finished thread has queued all it had
        records: list[dict[str, Any]] = []
        stderr: list[str] = []
        try:
            item: tuple[str, Any] | None = self._q.get(timeout=0 if finished else wait_s)
        except queue.Empty:
            item = None
        while item is not None:
            (records if item[0] == "record" else stderr).append(item[1])
            if len(records) + len(stderr) >= most:
                break
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                item = None
        return {
            "instance": self.instance,
            "records": records,
            "stderr": stderr,
            "done": finished and self._q.empty(),
        }

    def stop(self) -> None:
        """Stop the analyzer (it writes its end record); kill it after the grace time."""
        self.sup.stop()
        if not self.sup.join(self.sup.stop_grace_s):
            self.sup.kill()
            self.sup.join(10.0)
        self.sup.close()

    def pid(self) -> int:
        return os.getpid()


def _own_stdout() -> Any:
    """Keep stdout for the records: a copy of its file descriptor becomes our output and
    descriptor 1 points at stderr from now on, so that what Ray (or a library under it) prints
    on stdout never lands between two records."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", closefd=True)
    os.dup2(2, 1)
    return out


def _one_line(exc: BaseException) -> str:
    from stream.core.redact import redact

    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)[:300]


class _RayStreamRunner:
    """The driver's side of one stream: polls its actor, forwards what it returns."""

    def __init__(self, sup: RaySupervisor, spec: StreamSpec, actor: Any) -> None:
        self.sup = sup
        self.spec = spec
        self.actor = actor
        self.gave_up = False
        self.restarts = 0
        self.thread = threading.Thread(target=self._run, name=f"cer-serve-ray-{spec.id}", daemon=True)

    def _forward(self, out: dict[str, Any], base: int, first: bool) -> bool:
        """Emit one poll's records; whether a window was among them."""
        window = False
        for rec in out["records"]:
            if rec.get("type") == "supervisor":
                rec = dict(rec)
                rec["restarts"] = base + int(rec.get("restarts", 0))
                if rec.get("event") == "started" and not first:
                    rec["event"] = "restarted"  # a new actor's first analyzer
                if rec.get("event") == "gave_up":
                    self.gave_up = True
                self.restarts = rec["restarts"]
            elif rec.get("type") == "window":
                window = True
            self.sup.emit(self.spec.id, rec)
        for line in out["stderr"]:
            self.sup.write_stderr(line)
        return window

    def _run(self) -> None:
        from stream.batch.ray_backend import import_ray

        ray = import_ray()
        from ray.exceptions import GetTimeoutError, RayActorError  # type: ignore[import-not-found,unused-ignore]

        config = self.sup.config
        policy = ReconnectPolicy(
            attempts=config.max_restarts,
            max_delay_s=config.restart_max_delay_s,
            base_delay_s=min(RESTART_BASE_DELAY_S, config.restart_max_delay_s),
        )
        instance: str | None = None
        actors_seen = 0  # actor instances (Ray restarts included) seen so far
        base = 0  # restarts counted before the current actor
        lost = False
        failures = 0
        healthy = False
        stop_sent = False
        waiting_said = False
        try:
            while True:
                if self.sup.stopping and not stop_sent:
                    self.actor.stop.remote()
                    stop_sent = True
                try:
                    out = ray.get(self.actor.poll.remote(), timeout=PENDING_NOTE_S)
                except GetTimeoutError:
                    if instance is None and not waiting_said:
                        waiting_said = True
                        self.sup.write_stderr(
                            f"{PROG}: stream {self.spec.id}: its Ray actor has not started after "
                            f"{PENDING_NOTE_S:g} s (does the cluster have {self.sup.cpus:g} CPU(s) "
                            f"and {self.sup.gpus:g} GPU(s) free for it?)"
                        )
                    continue
                except RayActorError as exc:
                    if self.sup.stopping:
                        self.sup.supervisor_record(
                            self.spec.id, "stopped", restarts=self.restarts, message=f"Ray actor lost: {_one_line(exc)}"
                        )
                        return
                    if not lost:
                        lost = True
                        failures = 1 if healthy else failures + 1
                        if policy.gives_up(failures):
                            self.gave_up = True
                            self.sup.supervisor_record(
                                self.spec.id,
                                "gave_up",
                                restarts=self.restarts,
                                message=f"Ray actor lost: {_one_line(exc)}",
                            )
                            self.sup.wake()
                            return
                        self.sup.supervisor_record(
                            self.spec.id,
                            "exited",
                            restarts=self.restarts,
                            message=f"Ray actor lost (Ray restarts it): {_one_line(exc)}",
                        )
                    self.sup.wait_stopping(1.0)
                    continue
                if out["instance"] != instance:
                    actors_seen += 1
                    if actors_seen > 1:
                        if not lost:  # it died and came back between two polls
                            self.sup.supervisor_record(
                                self.spec.id, "exited", restarts=self.restarts, message="Ray actor restarted"
                            )
                        base = self.restarts + 1
                    instance, lost, healthy = out["instance"], False, False
                healthy = self._forward(out, base, actors_seen == 1) or healthy
                if out["done"]:
                    if self.gave_up:
                        self.sup.wake()
                    return
        finally:
            try:
                ray.kill(self.actor, no_restart=True)
            except Exception:  # already gone, or the cluster with it
                pass


class RaySupervisor(Supervisor):
    """A :class:`Supervisor` whose streams run as Ray actors of the cluster at ``address``
    (``auto``, ``HOST:PORT``, ``ray://HOST:10001`` or ``local``)."""

    def __init__(self, config: ServeConfig, *, address: str, cpus: float = 1.0, gpus: float = 0.0, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.address = address
        self.cpus = cpus
        self.gpus = gpus
        self._connected = False
        self.ray_runners: list[_RayStreamRunner] = []

    def start(self) -> None:
        """Connect, open the outputs, start one actor per stream; ``ValueError``/``ConfigError``
        (one line) when the cluster cannot be reached or a password variable is missing."""
        from stream.batch.plan import BatchError
        from stream.batch.ray_backend import connect, import_ray
        from stream.core.redact import RTSP_PASSWORD_ENV, remember_secret

        envs: dict[str, dict[str, str]] = {}
        for spec in self.config.streams:
            env: dict[str, str] = {}
            name = spec.password_env or RTSP_PASSWORD_ENV
            value = os.environ.get(name)
            if spec.password_env is not None and not value:
                raise ConfigError(f"stream {spec.id!r}: password_env {name} is not set")
            if value and spec.kind == "rtsp":
                remember_secret(value)
                env[RTSP_PASSWORD_ENV] = value
            envs[spec.id] = env
        if self._stdout is None and not self.quiet:
            self._stdout = _own_stdout()
        try:
            ray = import_ray()
            self._connected = connect(self.address)
        except BatchError as exc:
            raise ValueError(str(exc)) from None
        self._open()
        actor_class = ray.remote(StreamActor).options(
            num_cpus=self.cpus,
            num_gpus=self.gpus,
            max_restarts=-1 if self.config.max_restarts is None else self.config.max_restarts,
            max_task_retries=0,
            max_concurrency=4,  # a stop while a poll waits
        )
        # the analyzers ask through this machine's gateway: its token, never the endpoint's key
        # (which the actor's node may have in its own environment)
        envs = {sid: self.vlm_env(env) for sid, env in envs.items()}
        unset = (self.config.vlm.key_env,) if self.config.vlm is not None else ()
        for spec in self.config.streams:
            extra = self.config.vlm.analyzer_args(self.gateway.url_for(spec.id)) if self.config.vlm else []
            one = dataclasses.replace(
                self.config,
                streams=(dataclasses.replace(spec, password_env=None, args=(*spec.args, *extra)),),
                publish=None,
                out_dir=None,
                dashboard=None,
                vlm=None,
                ray_address=None,
                # one stream per actor, on whichever node Ray picks: its analyzer loads the models
                # itself (a model host there would serve that one stream, one more process and hop)
                isolation="process",
            )
            actor = actor_class.remote(one, envs[spec.id], self.stop_grace_s, bool(self.config.dashboard), unset)
            runner = _RayStreamRunner(self, spec, actor)
            self.ray_runners.append(runner)
            runner.thread.start()

    def stop(self, signum: int = 0) -> None:
        """Ask every actor to stop its analyzer (it writes its end record); returns at once."""
        self._stopping.set()
        self._wake.set()

    def kill(self) -> None:
        from stream.batch.ray_backend import import_ray

        self._stopping.set()
        ray = import_ray()
        for r in self.ray_runners:
            try:
                ray.kill(r.actor, no_restart=True)
            except Exception:
                pass

    def join(self, timeout: float | None = None) -> bool:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        for r in self.ray_runners:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            r.thread.join(left)
        return not any(r.thread.is_alive() for r in self.ray_runners)

    @property
    def active(self) -> list[str]:
        return [r.spec.id for r in self.ray_runners if not r.gave_up]

    def close(self) -> None:
        super().close()
        if self._connected:
            from stream.batch.ray_backend import disconnect

            disconnect()
            self._connected = False


__all__ = ["POLL_MOST", "POLL_WAIT_S", "RaySupervisor", "StreamActor"]
