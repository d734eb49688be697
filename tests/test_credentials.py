"""RTSP passwords never show, whatever characters they hold, and work raw or percent-encoded.

The URL's user information is parsed by its structure (everything between ``://`` and the last
``@``), checked here with a generated password for every printable character and with random
ones; every process remembers the passwords it was given and hides them in free text.  The real
runs look for the password in stdout, stderr, the ``--out`` file, the live page's
``/state.json`` and in the command lines of the analyzer and its children while they run; the
loopback RTSP server asks for the password (basic authentication), so a run that gives windows
proves the password reached the camera intact.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from urllib.parse import quote, unquote_to_bytes

import pytest
from conftest import ROOT, free_port
from live_process import LiveProcess
from rtsp_util import RtspServer, rtsp_available
from secret_watch import CmdlineWatch, leaks

from stream.core import redact as redact_module
from stream.core.redact import (
    MASK,
    ffmpeg_url,
    redact,
    redact_arg,
    redact_url,
    remember_secret,
    split_credentials,
)

PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]


def _random_passwords(n: int, seed: int = 19) -> list[str]:
    rng = random.Random(seed)
    alphabet = PRINTABLE + ["é", "€", "密"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 32))) for _ in range(n)]


#: One password per printable character (twice, between letters), each character alone, random ones.
PASSWORDS = [f"pa{c}ss{c}wd" for c in PRINTABLE] + PRINTABLE + _random_passwords(300)
HOST_PATH = "127.0.0.1:8554/live?x=1"


@pytest.fixture
def fresh_registry(monkeypatch):
    """This test's remembered secrets only (the registry is process-wide)."""
    monkeypatch.setattr(redact_module, "_secrets", set())
    monkeypatch.setattr(redact_module, "_known", ((), None))


def _url(password: str) -> str:
    return f"rtsp://viewer:{password}@{HOST_PATH}"


def test_userinfo_is_parsed_by_structure_whatever_the_password_holds():
    for pw in PASSWORDS:
        url = _url(pw)
        assert split_credentials(url) == ("rtsp", "viewer", pw, HOST_PATH), pw
        assert redact_url(url) == f"rtsp://viewer:{MASK}@{HOST_PATH}", pw
        # FFmpeg ends the authority at the first "/", "?" or "#": the rebuilt URL's only "@"
        # comes before it, and percent-decoding gives the password back (%XX: its byte)
        ff = ffmpeg_url(url)
        authority = ff.split("://", 1)[1]
        end = min(authority.find(c) for c in "/?" if c in authority)
        assert authority.count("@") == 1 and authority.index("@") < end, (pw, ff)
        encoded = split_credentials(ff)
        assert encoded is not None and encoded.rest == HOST_PATH
        assert unquote_to_bytes(encoded.password or "") == unquote_to_bytes(pw), pw


def test_ambiguous_urls_follow_the_documented_rules():
    # %XX is a percent-encoded byte: p%40ss is p@ss; %25 a literal %; a lone % is itself
    assert ffmpeg_url("rtsp://u:p%40ss@h/x") == "rtsp://u:p%40ss@h/x"
    assert ffmpeg_url("rtsp://u:p%2540ss@h/x") == "rtsp://u:p%2540ss@h/x"
    assert ffmpeg_url("rtsp://u:50%off@h/x") == "rtsp://u:50%25off@h/x"
    # the user information runs to the last @; a user name with "/" means the @ is in the path
    assert split_credentials("rtsp://u:a@b@h/x") == ("rtsp", "u", "a@b", "h/x")
    assert split_credentials("rtsp://host/pa@th") is None
    assert split_credentials("rtsp://bob@corp.com:pw@h/x") == ("rtsp", "bob@corp.com", "pw", "h/x")
    assert ffmpeg_url("rtsp://bob@corp.com:pw@h/x") == "rtsp://bob%40corp.com:pw@h/x"
    # no password: nothing to hide; a literal password from the environment is encoded
    assert redact_url("rtsp://viewer@h/x") == "rtsp://viewer@h/x"
    assert ffmpeg_url("rtsp://viewer@h/x", "a b/%40") == "rtsp://viewer:a%20b%2F%2540@h/x"


def test_free_text_hides_every_remembered_password(fresh_registry):
    """An FFmpeg error or a log line with the URL as given or as FFmpeg got it: once the password
    is remembered (as building an RtspSource does), no form of it is left."""
    for pw in PASSWORDS:
        url = _url(pw)
        ff = ffmpeg_url(url)  # remembers pw
        text = f"cannot open {url}: Connection refused; tried '{ff}' with <{pw}>"
        masked = f"rtsp://viewer:{MASK}@{HOST_PATH}"
        out = redact(text)
        assert out.startswith(f"cannot open {masked}: Connection refused; tried '{masked}' with <"), (pw, out)
        if len(pw) >= redact_module.MIN_BARE_SECRET:
            assert out.endswith(f"<{MASK}>") and not leaks(out, pw), (pw, out)


def test_a_short_password_is_hidden_in_urls_not_in_every_word(fresh_registry):
    remember_secret("a b")
    remember_secret("x")
    assert redact("cannot open rtsp://u:a b@h/x: a b") == f"cannot open rtsp://u:{MASK}@h/x: a b"
    assert redact("rtsp://u:x@h/x, exit") == f"rtsp://u:{MASK}@h/x, exit"


def test_redact_stays_linear_with_many_remembered_passwords(fresh_registry):
    """600 kB of text and 300 remembered passwords: each form is one scan of the text (the
    test's own time limit is the check; no timing is asserted)."""
    for pw in _random_passwords(300, seed=7):
        remember_secret(pw)
    word = "aB3dE9f-" * 25_000
    text = f"{word} rtsp://alice:s3cr@t@h/x {word}?token=abc {word}"
    assert redact(text) == f"{word} rtsp://alice:***@h/x {word}?token=*** {word}"


def test_command_line_rewrite_masks_every_password():
    """Each generated URL as one argument (and as --rtsp=URL): the rewritten /proc/self/cmdline
    shows every one masked ("*" where "***" would be longer than the password)."""
    urls = [_url(pw) for pw in PASSWORDS]
    code = (
        "import sys; from stream.core.redact import redact_process_args; "
        "assert redact_process_args(); sys.stdout.buffer.write(open('/proc/self/cmdline','rb').read())"
    )
    args = [*urls, *(f"--rtsp={u}" for u in urls[:95])]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    shown = proc.stdout.decode("utf-8", "surrogateescape").split("\0")[3 : 3 + len(args)]

    def masked(pw: str) -> str:
        return f"rtsp://viewer:{MASK if len(pw.encode()) >= len(MASK) else '*'}@{HOST_PATH}"

    expected = [masked(pw) for pw in PASSWORDS] + [f"--rtsp={masked(pw)}" for pw in PASSWORDS[:95]]
    assert shown == expected
    assert redact_arg(f"--vlm-url=http://h/v1?token={'t' * 8}") == "--vlm-url=http://h/v1?token=***"


def test_serve_config_remembers_its_passwords(fresh_registry, monkeypatch):
    from stream.serve.config import ConfigError, StreamSpec, child_environment, from_flags, parse_config

    parse_config({"stream": [{"id": "door", "rtsp": "rtsp://viewer:door pw@cam/x"}]})
    assert redact("lost rtsp://viewer:door pw@cam/x") == f"lost rtsp://viewer:{MASK}@cam/x"
    with pytest.raises(ConfigError) as info:
        from_flags([("rtsp", "http://viewer:flag pw@cam/x")])
    assert "flag pw" not in str(info.value) and "not an rtsp:// URL" in str(info.value)
    spec = StreamSpec(id="desk", kind="rtsp", source="rtsp://viewer@cam/y", password_env="DESK_PW")
    child_environment(spec, base={"DESK_PW": "env pw"})
    assert redact("auth failed for env pw") == f"auth failed for {MASK}"


# --------------------------------------------------------------------------- real runs
#: Passwords with the characters a URL cannot hold raw: space, quotes, <>, /, #, ?, @, %.
HARD = ["hunter2 sp", "q\"u'o<t>e", "s/l#a?s@h:", "p%40ss 100%"]


def _watched(args: list[str]) -> tuple[LiveProcess, CmdlineWatch]:
    """``python -m stream.cli ARGS``, its records read as they come, its command lines (and its
    children's) watched."""
    cmd = [sys.executable, "-m", "stream.cli", *args]
    run = LiveProcess(cmd)
    return run, CmdlineWatch(run.proc.pid, cmd)


def _stdout(run: LiveProcess) -> str:
    return json.dumps(run.records) + "".join(run.junk)


@pytest.mark.parametrize("password", HARD)
def test_refused_source_never_shows_the_password(refused_port, password):
    """A source that refuses every connection, waited for twice: the error names the URL with
    ``***``; the password is in no output and on no command line while the run goes on."""
    url = f"rtsp://viewer:{password}@127.0.0.1:{refused_port}/live"
    args = ["--rtsp", url, "--wait", "--reconnect", "2", "--reconnect-max-delay", "0.5", "--timeout", "2"]
    run, watch = _watched([*args, "--no-asr", "--no-clip", "--no-frames"])
    try:
        code = run.finish(90, interrupt=False)
    finally:
        watch.stop()
    assert code == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cer-stream: error: gave up on rtsp://viewer:***@127.0.0.1:")
    assert "Connection refused" in lines[0]
    assert not leaks(_stdout(run), password) and not leaks(run.stderr, password)
    assert watch.rewritten and watch.children_seen() >= 1, watch.seen  # the capture process ran
    assert not watch.leaks(password)


ok, why = rtsp_available()
needs_rtsp = pytest.mark.skipif(not ok, reason=f"GStreamer RTSP server unavailable: {why}")

#: The camera's password: every character that needs care in a URL.
CAMERA_PW = "a b/c#d?e@f%g:h\"i'j<k>l"


@needs_rtsp
def test_the_test_camera_asks_for_its_password(sample):
    """The loopback server refuses no credentials and wrong ones (so a run with windows below
    proves the password arrived intact)."""
    import av

    with RtspServer(sample, user="viewer", password=CAMERA_PW) as server:
        where = server.url.split("://", 1)[1]
        for url in (
            server.url,
            f"rtsp://viewer:wrong@{where}",
            f"rtsp://viewer:{quote(CAMERA_PW[:-1], safe='')}@{where}",
        ):
            with pytest.raises(av.error.HTTPUnauthorizedError):
                av.open(url, options={"rtsp_transport": "tcp"}, timeout=10)
        av.open(f"rtsp://viewer:{quote(CAMERA_PW, safe='')}@{where}", options={"rtsp_transport": "tcp"}).close()


@needs_rtsp
@pytest.mark.parametrize(
    ("server_pw", "written"),
    [
        (CAMERA_PW, CAMERA_PW),  # raw, every reserved character as it is
        (CAMERA_PW, quote(CAMERA_PW, safe="")),  # percent-encoded
        ("p@ss", "p%40ss"),  # looks percent-encoded: %40 is "@"
    ],
    ids=["raw", "percent-encoded", "percent-rule"],
)
def test_password_authenticates_and_shows_nowhere(sample, tmp_path, server_pw, written):
    import httpx

    out = tmp_path / "out.jsonl"
    port = free_port()
    with RtspServer(sample, user="viewer", password=server_pw) as server:
        url = server.url.replace("rtsp://", f"rtsp://viewer:{written}@", 1)
        args = ["--rtsp", url, "--reconnect", "off", "--out", str(out), "--serve", f"127.0.0.1:{port}"]
        run, watch = _watched([*args, "--no-asr", "--no-clip"])
        try:
            run.wait_for(lambda r: r["type"] == "window", 60, "a window")  # the live page while it runs
            state = httpx.get(f"http://127.0.0.1:{port}/state.json", timeout=10).json()
            code = run.finish(60, interrupt=False)  # the clip's end ends the run
        finally:
            if run.proc.poll() is None:  # a failed wait: stop it
                run.finish(10)
            watch.stop()
    assert code == 0, run.stderr
    records = run.records
    assert records[0]["type"] == "start" and records[-1]["type"] == "end" and not run.junk
    assert sum(r["type"] == "window" for r in records) >= 3
    masked = server.url.replace("rtsp://", "rtsp://viewer:***@", 1)
    assert records[0]["input"] == masked
    assert state["start"]["input"] == masked
    for text in (_stdout(run), run.stderr, out.read_text(), json.dumps(state)):
        assert not leaks(text, written) and not leaks(text, server_pw)
    assert watch.rewritten and watch.children_seen() >= 1
    assert not watch.leaks(written) and not watch.leaks(server_pw)
