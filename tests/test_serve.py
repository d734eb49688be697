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
from conftest import ROOT, free_port
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
    # the shared model host unless the file or the flag says otherwise
    assert config.isolation == flags.isolation == "host"
    assert from_flags([("rtsp", "rtsp://a/x")], isolation="process").isolation == "process"
    one = {"stream": [{"id": "a", "rtsp": "rtsp://h/x"}]}
    assert parse_config({**one, "isolation": "process"}).isolation == "process"


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
        (
            {"stream": [{"id": "a", "rtsp": "rtsp://h/x"}], "isolation": "thread"},
            "isolation must be one of host, process",
        ),
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


def test_a_restart_resumes_after_the_last_window_and_final_frame():
    """What the supervisor hands a restarted analyzer (--resume): the window after the last one
    written, media time from the last final frame, never past half a grid step before that
    window's first grid point (its frames must come from the new run)."""
    from stream.serve.supervisor import _StreamRunner

    config = from_flags([("rtsp", "rtsp://cam/x")])
    r = _StreamRunner(None, config.streams[0], {})  # type: ignore[arg-type]
    assert r._resume() is None  # a first start
    r.restarts = 1
    assert r._resume() is None  # no window yet: start afresh
    r._progress({"type": "start", "fps": 25.0})
    r._progress({"type": "window", "index": 4, "start": 8.0, "end": 12.0})
    r._progress({"type": "frames", "final": True, "frame_index": [198, 199], "time": [7.92, 7.96]})
    r.exit_note = "the analyzer exited (SIGKILL)"
    res = r._resume()
    assert res is not None and res.window == 5 and res.after_s == 7.96  # the last final frame
    assert res.reason == "the analyzer exited (SIGKILL); restarted" and res.wall_time > 1e9
    r._progress({"type": "frames", "final": True, "frame_index": [248, 249], "time": [9.92, 9.96]})
    res = r._resume()
    assert res is not None and res.after_s == pytest.approx(10.0 - 0.1 - 1e-3)  # bounded: window 5 starts at 10 s


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
        (["--rtsp", "rtsp://u:secret@cam/x", "--max-restarts", "some"], "--max-restarts: takes a number"),
        (["--rtsp", "rtsp://cam/x", "--isolation", "thread"], "--isolation: invalid choice"),
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
            return [r for r in self.records if r["type"] == kind and (sid is None or r.get(STREAM_KEY) == sid)]


def is_(kind: str, sid: str, **fields):
    return lambda r: r["type"] == kind and r.get(STREAM_KEY) == sid and all(r.get(k) == v for k, v in fields.items())


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
    # the restarted analyzer went on where the killed one left s1: window indices, media time and
    # frame numbers continue, the time between is a gap on record, no window or frame twice
    first_start, second_start = run.of("start", "s1")
    assert "resumed" not in first_start
    cut = run.records.index(exited)
    before = [r for r in run.records[:cut] if r["type"] == "window" and r.get(STREAM_KEY) == "s1"]
    after = [r for r in run.records[cut:] if r["type"] == "window" and r.get(STREAM_KEY) == "s1"]
    resumed = second_start["resumed"]
    assert resumed["window"] == before[-1]["index"] + 1 and "SIGKILL" in resumed["reason"]
    assert after and after[0]["index"] >= resumed["window"] and after[0]["start"] > before[-1]["start"]
    indices = [r["index"] for r in before + after]
    assert indices == sorted(set(indices))
    (restart_gap,) = [g for g in run.of("gap", "s1")]
    assert restart_gap["reason"] == resumed["reason"] and restart_gap["start"] == resumed["after_s"]
    assert before[-1]["start"] < restart_gap["end"] <= after[0]["end"]
    if restart_gap["windows_missing"] is not None:
        lo, hi = restart_gap["windows_missing"]
        assert resumed["window"] <= lo <= hi < after[0]["index"]
    final = [i for r in run.of("frames", "s1") if r["final"] for i in r["frame_index"]]
    assert final == sorted(set(final)) and final[0] == 0
    (end1,) = run.of("end", "s1")
    assert end1["reconnects"] == 0 and end1["gaps"] == 1  # a restart is no reconnect
    # its real-time factor is over the media it analysed itself, from its first frame (the gap's
    # end) on: it was over the whole stream's, the previous process's media included
    own_media = end1["media_s"] - restart_gap["end"]
    assert end1["real_time_factor"] == pytest.approx(end1["elapsed_s"] / own_media, rel=0.02), end1
    # s1 went on while s0's server was down: two windows between s0's loss and its gap record
    gap_at = next(n for n, r in enumerate(run.records) if r["type"] == "gap" and r.get(STREAM_KEY) == "s0")
    assert i < j < gap_at

    # one model host served both (the default isolation): ready before the first stream started,
    # still the same process at the end (an analyzer's death is not the host's), stopped after them
    hosts = run.of("host")
    assert [r["event"] for r in hosts][0] == "ready" and hosts[-1]["event"] == "stopped", hosts
    assert not [r for r in hosts if r["event"] in ("exited", "restarted")]
    assert run.records.index(hosts[0]) < run.records.index(run.of("supervisor", "s0")[0])
    assert hosts[-1]["face"]["requests"] > 0
    # every record of a stream has its id, the host's none, and each validates against the schema
    validator = jsonschema.Draft202012Validator(load_schema())
    for r in run.records:
        assert r.get(STREAM_KEY) in ("s0", "s1") or (r["type"] == "host" and STREAM_KEY not in r)
        errors = list(validator.iter_errors(r))
        assert not errors, (r["type"], errors[0].message[:200])
    # the per-stream files hold that stream's records, as stdout did
    for sid in ("s0", "s1"):
        lines = [json.loads(x) for x in (out_dir / f"{sid}.jsonl").read_text().splitlines()]
        assert lines == [r for r in run.records if r.get(STREAM_KEY) == sid]
    # one ZeroMQ socket for both streams, [type, json] with the id
    assert messages, run.stderr
    assert all(kind == rec["type"] for kind, rec in messages)
    assert {rec[STREAM_KEY] for kind, rec in messages if kind == "window"} == {"s0", "s1"}
    assert "publishing on ipc://" in run.stderr


def test_a_stream_that_keeps_failing_is_given_up(refused_port, tmp_path):
    """A source that refuses every connection, analyzers that may not reconnect: each exits (2);
    max_restarts = 2 restarts it twice, the third exit in a row gives it up, and with no stream
    left serve exits 1.  The password in the URL (a space, quotes, "/", "#", "@" in it) shows
    nowhere: stdout, stderr, ID.jsonl, and the command lines of serve and its children."""
    from secret_watch import CmdlineWatch, leaks

    password = "hunter2 \"sp/#@'"
    url = f"rtsp://viewer:{password}@127.0.0.1:{refused_port}/x"
    out_dir = tmp_path / "out"
    args = ["--rtsp", url, "--max-restarts", "2", "--restart-max-delay", "0.5", "--out-dir", str(out_dir)]
    run = Serve(*args, "--", *LIGHT, "--reconnect", "off")
    watch = CmdlineWatch(run.proc.pid, [*_serve_cmd(), *args, "--", *LIGHT, "--reconnect", "off"])
    try:
        code = run.finish(120, interrupt=False)
    finally:
        watch.stop()
    assert code == 1, run.stderr
    events = run.of("supervisor", "s0")
    assert [r["event"] for r in events] == ["started", "exited", "restarted", "exited", "restarted", "gave_up"]
    exits = [r for r in events if r["event"] in ("exited", "gave_up")]
    assert len(exits) == 2 + 1 and all(r["exit_code"] == 2 for r in exits)
    assert [r["restarts"] for r in exits] == [0, 1, 2] and all(0 < r["delay_s"] <= 0.5 for r in exits[:2])
    assert exits[-1]["message"] and "viewer:***@" in exits[-1]["message"]
    assert "gave up after 3 exit(s) in a row" in run.stderr
    assert "viewer:***@" in run.stderr
    file = (out_dir / "s0.jsonl").read_text()
    assert [json.loads(x) for x in file.splitlines()] == [r for r in run.records if r["type"] != "host"]
    assert not run.junk
    for text in (run.stderr, file, json.dumps(run.records)):
        assert not leaks(text, password), text
    assert watch.rewritten and watch.children_seen() >= 1
    assert not watch.leaks(password)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@needs_rtsp
def test_ray_actor_killed_is_restarted_by_ray(long_clip, tmp_path):
    """`serve --ray local`: the stream's analyzer runs under a Ray actor; the actor's process is
    killed, Ray starts it again, the supervisor records say so and the windows come back."""
    pytest.importorskip("ray")
    with RtspServer(long_clip) as a:
        # Ray chosen by the config file's [ray] table (the --ray flag would override it)
        config = tmp_path / "serve.toml"
        config.write_text(
            f'args = {json.dumps(LIGHT)}\n[ray]\naddress = "local"\n[[stream]]\nid = "s0"\nrtsp = "{a.url}"\n'
        )
        run = Serve(str(config))
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


@needs_rtsp
def test_two_streams_share_one_vlm_queue_and_one_dashboard(long_clip, tmp_path, monkeypatch):
    """A [vlm] table: both analyzers ask a slow VLM endpoint through the supervisor's gateway,
    which holds the endpoint's key (no analyzer has it) and keeps one request at the endpoint at
    a time; both streams still get captions, and vlm_queue records say who waited how long.  The
    dashboard serves both streams' state and their frames from one address."""
    import httpx
    import jsonschema
    from vlm_util import MODEL, FakeVLM

    from stream.runtime.records import load_schema

    key_env, key = "CER_STREAM_TEST_SERVE_VLM_KEY", "sk-serve-test-7d2a"
    monkeypatch.setenv(key_env, key)
    monkeypatch.setenv("CER_STREAM_SERVE_VLM_REPORT_S", "3")
    captions = ["A smiling woman in a white spacesuit poses cheerfully in front of a flag."]
    up = FakeVLM(captions, delay=0.5)
    port = free_port()
    config = tmp_path / "serve.toml"
    with RtspServer(long_clip) as a, RtspServer(long_clip) as b:
        config.write_text(
            f"args = {json.dumps(LIGHT)}\n"
            f'dashboard = "127.0.0.1:{port}"\n'
            f'[vlm]\nurl = "{up.url}"\nmodel = "{MODEL}"\nkey_env = "{key_env}"\nevery = 1\n'
            f'[[stream]]\nid = "a"\nrtsp = "{a.url}"\n'
            f'[[stream]]\nid = "b"\nrtsp = "{b.url}"\n'
        )
        run = Serve(str(config))
        try:

            def captioned(sid):
                return lambda r: is_("window", sid)(r) and (r["modalities"].get("scene") or {}).get("present")

            run.wait_for(captioned("a"), 90, "a window of a with a caption")
            run.wait_for(captioned("b"), 60, "a window of b with a caption")
            run.wait_for(lambda r: r["type"] == "vlm_queue", 10, "a vlm_queue record")
            children = {r[STREAM_KEY]: r for r in run.of("supervisor") if r["event"] == "started"}
            environs = {sid: Path(f"/proc/{r['pid']}/environ").read_bytes() for sid, r in children.items()}
            cmdlines = {sid: Path(f"/proc/{r['pid']}/cmdline").read_bytes() for sid, r in children.items()}
            # the dashboard: one address for both streams, frames proxied from each analyzer's page
            state = httpx.get(f"http://127.0.0.1:{port}/state.json", timeout=5).json()
            frames = {sid: httpx.get(f"http://127.0.0.1:{port}/streams/{sid}/frame.jpg", timeout=5) for sid in "ab"}
        finally:
            code = run.finish()
            up.close()
    assert code == 0, run.stderr
    assert not run.junk

    # the endpoint saw one request at a time, with the real key, from both streams
    assert up.max_in_flight == 1
    assert {r["headers"].get("Authorization") for r in up.requests} == {f"Bearer {key}"}
    assert all(r["path"] == "/v1/chat/completions" and r["body"]["model"] == MODEL for r in up.requests)
    # the analyzers never had the key: not in their environment, nor their command line
    for sid in "ab":
        assert key.encode() not in environs[sid] and key.encode() not in cmdlines[sid]
    # the windows' scene entries came through the gateway
    for sid in "ab":
        scenes = [
            r["modalities"]["scene"] for r in run.of("window", sid) if r["modalities"].get("scene", {}).get("present")
        ]
        assert scenes and all(s["caption"] == captions[0] for s in scenes)
        assert all(
            s["vlm"]["endpoint"].startswith("http://127.0.0.1:") and f"/streams/{sid}/" in s["vlm"]["endpoint"]
            for s in scenes
        )
    # vlm_queue records: both streams served, none an error; the last one at the end
    queues = [r for r in run.records if r["type"] == "vlm_queue"]
    assert len(queues) >= 2 and run.records[-1]["type"] in ("vlm_queue", "supervisor", "end")
    last = queues[-1]["streams"]
    assert last["a"]["ok"] >= 1 and last["b"]["ok"] >= 1 and last["a"]["errors"] == last["b"]["errors"] == 0
    assert sum(s["forwarded"] for s in last.values()) == len(up.requests)  # the last may still be in flight
    assert "VLM requests of every stream queue at http://127.0.0.1:" in run.stderr
    validator = jsonschema.Draft202012Validator(load_schema())
    for r in run.records:
        errors = list(validator.iter_errors(r))
        assert not errors, (r["type"], errors[0].message[:200])
    # the dashboard knew both streams and showed their frames
    assert f"dashboard http://127.0.0.1:{port}/" in run.stderr
    cards = {c["stream_id"]: c for c in state["streams"]}
    assert set(cards) == {"a", "b"}
    assert all(c["status"] == "running" and c["frame_source"] and c["counts"]["windows"] >= 1 for c in cards.values())
    for sid in "ab":
        assert frames[sid].status_code == 200 and frames[sid].headers["content-type"] == "image/jpeg"
        assert frames[sid].content[:2] == b"\xff\xd8"
    started = [r for r in run.of("supervisor") if r["event"] == "started"]
    assert all(r["page"].startswith("http://127.0.0.1:") for r in started)
