"""`cer-stream serve`: many live streams, one supervised analyzer process each.

The configuration's every mistake is one line naming the key; the real run serves two loopback
RTSP servers, loses one (the other stream goes on; the lost one reconnects and puts its gap on
record), has one analyzer process killed (the supervisor says so and restarts it) and stops on
Ctrl-C with both streams' end records, on stdout, on the ZeroMQ socket and in the per-stream files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT
from faults import make_looped_clip
from live_process import LiveProcess
from rtsp_util import RtspServer, rtsp_available

from stream.serve.config import STREAM_KEY, ConfigError, from_flags, load_config, parse_config

#: Light analyzers: the test is about supervision, not models (face path only, no speech).
LIGHT = ["--no-asr", "--no-clip", "--no-frames", "--reconnect-max-delay", "1", "--timeout", "3"]


# --------------------------------------------------------------------------- configuration
def _one_line_error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_config_file_is_read_with_its_defaults(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text(
        'publish = "tcp://127.0.0.1:5556"\nout_dir = "runs"\nargs = ["--no-clip"]\nmax_restarts = 3\n\n'
        '[[stream]]\nid = "door"\nrtsp = "rtsp://viewer@cam/stream"\npassword_env = "DOOR_PW"\n\n'
        '[[stream]]\nid = "desk"\ncamera = 0\nargs = ["--mic", "--serve", "127.0.0.1:8081"]\n'
    )
    config = load_config(path)
    assert [s.id for s in config.streams] == ["door", "desk"]
    assert config.publish == "tcp://127.0.0.1:5556" and config.out_dir == tmp_path / "runs"
    assert config.max_restarts == 3 and config.restart_max_delay_s == 30.0
    door, desk = config.streams
    assert config.child_args(door) == ["--rtsp", "rtsp://viewer@cam/stream", "--wait", "--no-clip"]
    assert config.child_args(desk) == ["--camera", "0", "--wait", "--no-clip", "--mic", "--serve", "127.0.0.1:8081"]
    assert door.password_env == "DOOR_PW"
    flags = from_flags([("rtsp", "rtsp://a/x"), ("camera", "1"), ("rtsp", "rtsp://b/y")], args=["--no-asr"])
    assert [(s.id, s.kind) for s in flags.streams] == [("s0", "rtsp"), ("s1", "camera"), ("s2", "rtsp")]


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        ({}, "stream: no [[stream]] table"),
        ({"stream": [{"id": "a", "rtsp": "rtsp://h/x"}], "pubish": "x"}, "pubish: unknown key"),
        ({"stream": [{"rtsp": "rtsp://h/x"}]}, "stream[0].id is missing"),
        ({"stream": [{"id": "a b", "rtsp": "rtsp://h/x"}]}, "stream[0].id must be 1-64 characters"),
        ({"stream": [{"id": "a", "rtsp": "rtsp://h/x", "url": "x"}]}, "stream[0].url: unknown key"),
        ({"stream": [{"id": "a"}]}, "stream 'a': give exactly one of rtsp or camera"),
        ({"stream": [{"id": "a", "rtsp": "rtsp://h/x", "camera": "0"}]}, "give exactly one of rtsp or camera"),
        ({"stream": [{"id": "a", "rtsp": "http://h/x"}]}, "stream 'a': rtsp must be an rtsp:// URL"),
        ({"stream": [{"id": "a", "rtsp": "rtsp://h/x", "args": "--no-asr"}]}, "stream 'a': args must be a list"),
        ({"stream": [{"id": "a", "rtsp": "rtsp://h/x", "args": ["--quiet"]}]}, "--quiet cannot be given here"),
        ({"stream": [{"id": "a", "rtsp": "rtsp://h/x"}], "args": ["--serve", "127.0.0.1:1"]}, "args: --serve"),
        ({"stream": [{"id": "a", "rtsp": "rtsp://h/x"}, {"id": "a", "camera": "0"}]}, "stream 'a': id used twice"),
        ({"stream": [{"id": "a", "camera": "0", "password_env": "X"}]}, "password_env is for rtsp streams"),
        ({"stream": [{"id": "a", "rtsp": "rtsp://h/x"}], "max_restarts": -1}, "max_restarts must be"),
        ({"stream": [{"id": "a", "rtsp": "rtsp://h/x"}], "restart_max_delay": 0}, "restart_max_delay must be"),
        ({"stream": {"id": "a"}}, "stream must be one or more [[stream]] tables"),
    ],
)
def test_config_mistakes_are_one_line_naming_the_key(data, expect):
    assert expect in _one_line_error(data)


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[stream]]\nid = "a"\nrtsp = \n')
    for path, expect in ((bad, "not valid TOML"), (tmp_path / "none.toml", "no such file")):
        with pytest.raises(ConfigError, match=expect) as info:
            load_config(path)
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def _serve_cmd() -> list[str]:
    """`cer-stream serve` once the subcommand is registered; `python -m stream.serve` before."""
    from stream.cli.main import COMMANDS

    return (
        [sys.executable, "-m", "stream.cli", "serve"] if "serve" in COMMANDS else [sys.executable, "-m", "stream.serve"]
    )


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        ([], "no stream to serve"),
        (["--rtsp", "http://cam/x"], "not an rtsp:// URL"),
        (["--rtsp", "rtsp://cam/x", "--", "--no-such-flag"], "stream 's0': analyzer flags: unrecognized arguments"),
        (["--rtsp", "rtsp://cam/x", "--", "--publish", "tcp://127.0.0.1:1"], "--publish cannot be given here"),
        (["--rtsp", "rtsp://u:secret@cam/x", "--max-restarts", "some"], "--max-restarts takes a number"),
    ],
)
def test_command_line_mistakes_are_one_line(args, expect):
    proc = subprocess.run(
        [*_serve_cmd(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], proc.stderr
    assert "secret" not in proc.stderr


def test_cli_main_hands_serve_its_whole_command_line(monkeypatch):
    """Through `cer-stream serve` (stream.cli.main), analyzer flags after -- reach serve as given."""
    import importlib

    cli_main_module = importlib.import_module("stream.cli.main")  # the module, not stream.cli's main()
    seen: list[list[str]] = []
    monkeypatch.setitem(cli_main_module.COMMANDS, "serve", lambda argv: seen.append(list(argv)) or 0)
    # main() sets up logging, which records its level in CER_STREAM_LOG_LEVEL for the processes
    # it spawns: restored after the test, else every later `cer-stream` subprocess of this test
    # session inherits "warning" and prints warnings on stderr (seen in test_reconnect)
    monkeypatch.setenv("CER_STREAM_LOG_LEVEL", "error")
    argv = ["serve", "--rtsp", "rtsp://cam/x", "--", "--no-asr", "--log-level", "debug"]
    assert cli_main_module.main(argv) == 0
    assert seen == [argv[1:]]


def test_password_env_reaches_the_child_not_its_command_line(monkeypatch):
    from stream.serve.config import StreamSpec, child_environment
    from stream.serve.supervisor import child_command

    spec = StreamSpec(id="door", kind="rtsp", source="rtsp://viewer@cam/x", password_env="DOOR_PW")
    with pytest.raises(ConfigError, match="password_env DOOR_PW is not set"):
        child_environment(spec, base={})
    env = child_environment(spec, base={"DOOR_PW": "s3cret"})
    assert env["CER_STREAM_RTSP_PASSWORD"] == "s3cret"
    assert child_command(spec)[-2:] == ["--id", "door"] and not any("rtsp" in a for a in child_command(spec))


# --------------------------------------------------------------------------- the real thing
ok, why = rtsp_available()
needs_rtsp = pytest.mark.skipif(not ok, reason=f"GStreamer RTSP server unavailable: {why}")


class Serve(LiveProcess):
    """`cer-stream serve` as a user runs it, its records read as they come."""

    def __init__(self, *args: str) -> None:
        super().__init__([*_serve_cmd(), *args])

    def wait_for(self, pred, timeout: float, what: str, *, after: int = 0) -> tuple[int, dict]:  # type: ignore[override]
        return self.wait_at(pred, timeout, what, after=after)

    def of(self, kind: str, sid: str | None = None) -> list[dict]:
        with self.cond:
            return [r for r in self.records if r["type"] == kind and (sid is None or r[STREAM_KEY] == sid)]


def is_(kind: str, sid: str, **fields):
    return lambda r: r["type"] == kind and r[STREAM_KEY] == sid and all(r.get(k) == v for k, v in fields.items())


class Subscriber:
    """A ZeroMQ SUB socket that keeps every ``[type, json]`` message."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.RCVTIMEO, 200)
        self.sock.connect(endpoint)
        self.messages: list[tuple[str, dict]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import zmq

        while not self.done.is_set():
            try:
                kind, body = self.sock.recv_multipart()
            except zmq.Again:
                continue
            self.messages.append((kind.decode(), json.loads(body)))

    def close(self) -> list[tuple[str, dict]]:
        time.sleep(0.5)  # the last records
        self.done.set()
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()
        return self.messages


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """60 s of the sample: no end of stream during the test."""
    return make_looped_clip(ROOT / "samples" / "astronaut.mp4", tmp_path_factory.mktemp("loop") / "loop.mp4", 1.0)


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out |= {int(c) for c in text}
    return out


@needs_rtsp
def test_two_streams_one_lost_one_analyzer_killed(long_clip, tmp_path):
    import jsonschema

    from stream.runtime.records import load_schema

    pub = f"ipc://{tmp_path / 'pub.sock'}"
    out_dir = tmp_path / "out"
    with RtspServer(long_clip) as a, RtspServer(long_clip) as b:
        sub = Subscriber(pub)
        run = Serve("--rtsp", a.url, "--rtsp", b.url, "--publish", pub, "--out-dir", str(out_dir), "--", *LIGHT)
        try:
            # both streams run, each record with its id
            run.wait_for(is_("window", "s0"), 60, "a window of s0")
            run.wait_for(is_("window", "s1"), 60, "a window of s1")

            # server A dies: s0 says so and reconnects; s1 goes on meanwhile
            a.kill()
            i, _ = run.wait_for(
                lambda r: is_("warning", "s0")(r) and "reconnecting" in r["message"], 15, "s0's lost warning"
            )
            p, _ = run.wait_for(is_("window", "s1"), 10, "a window of s1 while s0 is down", after=i)
            j, _ = run.wait_for(is_("window", "s1"), 10, "another window of s1 while s0 is down", after=p + 1)
            time.sleep(2.0)
            a.start()
            _, gap = run.wait_for(is_("gap", "s0"), 30, "s0's gap record")
            run.wait_for(
                lambda r: is_("window", "s0")(r) and r["start"] >= gap["end"], 30, "a window of s0 after its gap"
            )

            # the analyzer of s1 is killed: the supervisor says so and starts it again
            (started,) = run.of("supervisor", "s1")
            assert started["event"] == "started" and started["pid"] in _children(run.proc.pid)
            os.kill(started["pid"], signal.SIGKILL)
            _, exited = run.wait_for(is_("supervisor", "s1", event="exited"), 15, "s1's exited record")
            k, restarted = run.wait_for(is_("supervisor", "s1", event="restarted"), 15, "s1's restarted record")
            run.wait_for(is_("window", "s1"), 60, "a window of s1 after its restart", after=k)
        finally:
            code = run.finish()
        messages = sub.close()
    assert code == 0, run.stderr
    assert not run.junk

    # what the supervisor said
    assert exited["exit_code"] == -9 and exited["signal"] == "SIGKILL" and exited["restarts"] == 0
    assert 0 < exited["delay_s"] <= 1.0
    assert restarted["restarts"] == 1 and restarted["pid"] != started["pid"]
    # s0 lost its server, not its analyzer: no restart
    assert [r["event"] for r in run.of("supervisor", "s0")] == ["started", "stopped"]
    assert [r["event"] for r in run.of("supervisor", "s1")] == ["started", "exited", "restarted", "stopped"]
    assert all(r["exit_code"] == 0 for r in run.of("supervisor") if r["event"] == "stopped")
    # Ctrl-C: both analyzers ended cleanly (s1's second one; its first was killed without one)
    for sid in ("s0", "s1"):
        (end,) = run.of("end", sid)
        assert end["reason"] == "interrupted"
    assert run.of("end", "s0")[0]["reconnects"] == 1
    assert len(run.of("start", "s1")) == 2 and len(run.of("start", "s0")) == 1
    # s1 went on while s0's server was down: two windows between s0's loss and its gap record
    gap_at = next(n for n, r in enumerate(run.records) if r["type"] == "gap" and r[STREAM_KEY] == "s0")
    assert i < j < gap_at

    # every record has its stream's id and validates against the schema
    validator = jsonschema.Draft202012Validator(load_schema())
    for r in run.records:
        assert r[STREAM_KEY] in ("s0", "s1")
        errors = list(validator.iter_errors(r))
        assert not errors, (r["type"], errors[0].message[:200])
    # the per-stream files hold that stream's records, as stdout did
    for sid in ("s0", "s1"):
        lines = [json.loads(x) for x in (out_dir / f"{sid}.jsonl").read_text().splitlines()]
        assert lines == [r for r in run.records if r[STREAM_KEY] == sid]
    # one ZeroMQ socket for both streams, [type, json] with the id
    assert messages, run.stderr
    assert all(kind == rec["type"] for kind, rec in messages)
    assert {rec[STREAM_KEY] for kind, rec in messages if kind == "window"} == {"s0", "s1"}
    assert "publishing on ipc://" in run.stderr


def test_a_stream_that_keeps_failing_is_given_up():
    """A source that refuses every connection, analyzers that may not reconnect: each exits (2),
    is restarted once, then given up; with no stream left serve exits 1.  The password in the
    URL shows nowhere."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    url = f"rtsp://viewer:hunter2@127.0.0.1:{port}/x"
    run = Serve("--rtsp", url, "--max-restarts", "1", "--restart-max-delay", "0.5", "--", *LIGHT, "--reconnect", "off")
    time.sleep(1.5)
    cmdline = Path(f"/proc/{run.proc.pid}/cmdline").read_bytes() if run.proc.poll() is None else b""
    code = run.finish(90, interrupt=False)
    assert code == 1, run.stderr
    assert b"hunter2" not in cmdline
    events = run.of("supervisor", "s0")
    assert [r["event"] for r in events] == ["started", "exited", "restarted", "gave_up"]
    assert events[1]["exit_code"] == 2 and 0 < events[1]["delay_s"] <= 0.5
    assert events[3]["exit_code"] == 2 and events[3]["restarts"] == 1 and events[3]["message"]
    assert "gave up after 2 exit(s) in a row" in run.stderr
    assert "hunter2" not in run.stderr and not any("hunter2" in json.dumps(r) for r in run.records)
    assert "viewer:***@" in run.stderr


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@needs_rtsp
def test_ray_actor_killed_is_restarted_by_ray(long_clip):
    """`serve --ray local`: the stream's analyzer runs under a Ray actor; the actor's process is
    killed, Ray starts it again, the supervisor records say so and the windows come back."""
    pytest.importorskip("ray")
    with RtspServer(long_clip) as a:
        run = Serve("--ray", "local", "--rtsp", a.url, "--", *LIGHT)
        try:
            run.wait_for(is_("window", "s0"), 90, "a window")
            (started,) = run.of("supervisor", "s0")
            actor = _ppid(started["pid"])  # the analyzer is the actor's child
            assert actor != run.proc.pid and "StreamActor" in Path(f"/proc/{actor}/cmdline").read_text()
            os.kill(actor, signal.SIGKILL)
            _, exited = run.wait_for(is_("supervisor", "s0", event="exited"), 30, "an exited record")
            k, restarted = run.wait_for(is_("supervisor", "s0", event="restarted"), 60, "a restarted record")
            run.wait_for(is_("window", "s0"), 60, "a window after the restart", after=k)
        finally:
            code = run.finish()
    assert code == 0, run.stderr
    assert not run.junk, run.junk[:3]  # whatever Ray prints goes to stderr
    assert "Ray actor lost" in exited["message"] and restarted["restarts"] == 1
    assert restarted["pid"] != started["pid"]
    assert [r["event"] for r in run.of("supervisor")] == ["started", "exited", "restarted", "stopped"]
    (end,) = run.of("end", "s0")  # the killed actor's analyzer had no one to hand its end record to
    assert end["reason"] == "interrupted"
    assert len(run.of("start", "s0")) == 2
