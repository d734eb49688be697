"""The model host (`stream.serve.model_host`): one process with the models, many analyzers asking it.

A real host process on a private ipc:// socket, the real shipped face models: an analyzer's
results through the host are the ones it computes itself; several streams asking at once are
batched and keep their own face state; a host that dies is noticed at once (frames come back
unanalysed, with the reason, no waiting), and a restarted host on the same endpoint is found
again. Then `cer-stream serve` end to end: the host is killed under a live RTSP stream, the
supervisor restarts it, and the stream goes on with a gap record (cause "models") and every
window written; and a killed serve leaves no private socket folder behind (its host removes it).
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

import numpy as np
import pytest
from conftest import ROOT, read_rest

from stream.modalities.hosted import HOST_ENV, HostClient, RemoteFaceAnalyzer, UnanalysedFace
from stream.runtime.options import FaceOptions


def _frames(n: int, shift: int = 0) -> list[tuple[int, float, np.ndarray]]:
    """The astronaut moving across a larger grey canvas, 5 frames a second."""
    from skimage import data

    face = data.astronaut()[:300, 100:400]
    out = []
    for i in range(n):
        canvas = np.full((480, 640, 3), 110, np.uint8)
        x, y = 60 + 8 * i + shift, 60 + 3 * i
        canvas[y : y + 300, x : x + 300] = face
        out.append((i, i / 5, canvas))
    return out


class Host:
    """``python -m stream.cli.host`` on a private endpoint, face models preloaded."""

    def __init__(self, endpoint: str, *extra: str) -> None:
        self.endpoint = endpoint
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli.host", "--endpoint", endpoint, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"argv": ["--no-audio"]}).encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        self.ready = json.loads(line)
        assert self.ready["type"] == "host" and self.ready["event"] == "ready", line

    def stop(self) -> list[dict]:
        """SIGTERM; the records it wrote after ``ready``."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.stdin.close()
        out, _ = read_rest(self.proc, timeout=30)
        return [json.loads(x) for x in out.decode().splitlines() if x.strip()]


@pytest.fixture
def endpoint(tmp_path) -> str:
    return f"ipc://{tmp_path / 'models.sock'}"


def test_results_through_the_host_are_the_analyzers_own(endpoint):
    from stream.runtime.build import build_face_analyzer

    host = Host(endpoint)
    client = HostClient(endpoint)
    try:
        frames = _frames(12)
        local = build_face_analyzer(FaceOptions()).analyse(frames)
        remote_face = RemoteFaceAnalyzer(client, FaceOptions())
        remote = remote_face.analyse(frames)
        assert remote_face.model.labels and remote_face.model.feature_space is not None
        assert [r.found for r in remote] == [r.found for r in local] and all(r.found for r in remote)
        for a, b in zip(remote, local):
            assert a.box == b.box
            np.testing.assert_allclose(a.basic, b.basic, atol=1e-5)
            np.testing.assert_allclose(a.feature, b.feature, atol=1e-5)
        assert client.ping()["pid"] == host.proc.pid
    finally:
        client.close()
        records = host.stop()
    assert records[-1]["event"] == "stopped" and records[-1]["face"]["items"] >= 12


def test_streams_asking_together_are_batched_and_keep_their_own_state(endpoint):
    host = Host(endpoint, "--batch-wait-ms", "150")  # wide enough to catch four threads' requests
    client = HostClient(endpoint)
    try:
        faces = [RemoteFaceAnalyzer(client, FaceOptions()) for _ in range(4)]
        assert len({f.stream for f in faces}) == 4
        barrier = threading.Barrier(4)
        results: dict[int, list] = {}

        def ask(k: int) -> None:
            barrier.wait()
            results[k] = faces[k].analyse(_frames(3, shift=40 * k))

        threads = [threading.Thread(target=ask, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = client.stats()
        assert stats["face"]["largest_batch"] >= 2, stats  # one emotion-network call for several streams
        assert stats["face_streams"] == 4
        for k in range(4):  # each stream got its own frames' faces (boxes where its face was)
            boxes = [r.box for r in results[k]]
            assert all(b is not None for b in boxes)
            assert boxes[0][0] == pytest.approx(60 + 40 * k + 50, abs=60)
        # a stream that forgets its state (a new source) is no longer held by the host
        faces[0].reset()
        assert client.stats()["face_streams"] == 3
    finally:
        client.close()
        host.stop()


def test_a_dead_host_is_noticed_at_once_and_a_restarted_one_found_again(endpoint):
    host = Host(endpoint)
    client = HostClient(endpoint)
    try:
        face = RemoteFaceAnalyzer(client, FaceOptions())
        assert all(r.found for r in face.analyse(_frames(2)))
        os.kill(host.proc.pid, signal.SIGKILL)
        host.proc.wait(10)
        t0 = time.monotonic()
        lost = face.analyse(_frames(2))
        assert time.monotonic() - t0 < 3.0  # no timeout waited out
        assert all(isinstance(r, UnanalysedFace) and not r.found for r in lost)
        assert "model host unavailable" in lost[0].error
        t0 = time.monotonic()
        assert all(isinstance(r, UnanalysedFace) for r in face.analyse(_frames(2)))
        assert time.monotonic() - t0 < 0.5  # while it is down, at once
        host = Host(endpoint)  # restarted on the same path: the socket reconnects by itself
        deadline = time.monotonic() + 20
        while True:
            back = face.analyse(_frames(2))
            if all(r.found and not isinstance(r, UnanalysedFace) for r in back) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert all(r.found and r.basic is not None for r in back), [getattr(r, "error", "") for r in back]
        assert client.down_since is None
    finally:
        client.close()
        host.stop()


def test_an_analyzer_run_through_the_host_writes_what_it_writes_alone(endpoint, tmp_path):
    """`cer-stream --video` with the host's endpoint in its environment: the same windows, the
    voice, the words and their gate included (the host loads those on the first request)."""
    host = Host(endpoint)
    try:
        cmd = [sys.executable, "-m", "stream.cli", "--video", str(ROOT / "samples" / "astronaut.mp4"), "--no-frames"]
        alone = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
        hosted = subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, HOST_ENV: endpoint}
        )
    finally:
        records = host.stop()
    assert alone.returncode == 0 and hosted.returncode == 0, hosted.stderr[-2000:]

    def windows(out: str) -> list[dict]:
        return [r for r in map(json.loads, out.splitlines()) if r["type"] == "window"]

    a, h = windows(alone.stdout), windows(hosted.stdout)
    assert len(a) == len(h) == 4
    assert any("text" in w["present"] and "audio" in w["present"] for w in h)
    for x, y in zip(a, h):
        assert x["label"] == y["label"] and x["present"] == y["present"]
        assert x["basic"] == pytest.approx(y["basic"], abs=1e-4)
        for name in ("audio", "text"):
            mx, my = x["modalities"][name], y["modalities"][name]
            assert mx.get("reason") == my.get("reason") and mx.get("transcript") == my.get("transcript")
            if mx["present"]:
                assert mx["basic"] == pytest.approx(my["basic"], abs=1e-4)
    done = records[-1]  # the host did the work: faces, speech activity, voice, words, sentences
    assert done["face"]["items"] > 0 and done["vad"]["requests"] > 0 and done["asr"]["requests"] > 0
    assert done["voice"]["requests"] > 0 and done["text"]["requests"] > 0


# --------------------------------------------------------------------------- serve end to end
needs_rtsp = pytest.mark.skipif(
    not __import__("rtsp_util").rtsp_available(), reason="the GStreamer RTSP server (tests/rtsp_server.py) is missing"
)


@needs_rtsp
def test_serve_survives_the_death_of_its_model_host(tmp_path):
    from faults import make_looped_clip
    from rtsp_util import RtspServer
    from test_serve import LIGHT, Serve, is_

    clip = make_looped_clip(ROOT / "samples" / "astronaut.mp4", tmp_path / "loop.mp4", 1.0)
    with RtspServer(clip) as server:
        run = Serve("--rtsp", server.url, "--", *LIGHT, "--no-audio")
        try:
            _, ready = run.wait_for(lambda r: r["type"] == "host" and r["event"] == "ready", 120, "the host ready")
            run.wait_for(is_("window", "s0"), 60, "a window of s0")
            os.kill(ready["pid"], signal.SIGKILL)
            run.wait_for(lambda r: r["type"] == "host" and r["event"] == "exited", 15, "the host's exited record")
            run.wait_for(lambda r: r["type"] == "host" and r["event"] == "restarted", 15, "its restarted record")
            k, again = run.wait_for(
                lambda r: r["type"] == "host" and r["event"] == "ready" and r["pid"] != ready["pid"], 120, "ready again"
            )
            _, gap = run.wait_for(is_("gap", "s0"), 60, "s0's gap record", after=0)
            run.wait_for(is_("window", "s0"), 30, "a window of s0 after the host is back", after=k)
        finally:
            code = run.finish()
    assert code == 0, run.stderr
    exited = next(r for r in run.of("host") if r["event"] == "exited")
    assert exited["signal"] == "SIGKILL" and 0 < exited["delay_s"] <= 1.0
    # the analyzer was not restarted: only the host was
    assert [r["event"] for r in run.of("supervisor", "s0")] == ["started", "stopped"]
    # the gap says what happened; the windows over it were written, none lost
    assert gap["cause"] == "models" and "model host unavailable" in gap["reason"]
    assert gap["windows_missing"] is None and gap["start"] < gap["end"]
    windows = run.of("window", "s0")
    indices = [w["index"] for w in windows]
    assert indices == list(range(indices[0], indices[-1] + 1))
    (end,) = run.of("end", "s0")
    assert end["windows_skipped"] == 0 and end["reason"] == "interrupted"
    over = [w for w in windows if w["start"] < gap["end"] and w["end"] > gap["start"]]
    assert over, (gap, [(w["start"], w["end"]) for w in windows])
    # a window with no frame analysed says why its face is absent
    for w in over:
        face = w["modalities"]["face"]
        assert face["present"] or face["reason"] in ("model host unavailable", "face in too few frames"), face
    warnings = [r["message"] for r in run.of("warning", "s0")]
    assert any("model host unavailable" in m for m in warnings)
    assert Path(again.get("endpoint", "")).name == "models.sock"


def _gone_within(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while path.exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def test_serve_killed_leaves_no_host_folder(refused_port):
    """The host removes the private folder of its socket as it exits (``--own-endpoint-dir``):
    stopped on its own while serve runs (serve makes the folder again before the restart, at the
    path the streams were given), and after serve itself was SIGKILLed (its host stops at the end
    of its stdin; nothing else is left to remove the folder)."""
    from conftest import alive
    from test_serve import LIGHT, Serve, _children

    run = Serve("--rtsp", f"rtsp://127.0.0.1:{refused_port}/x", "--", *LIGHT, "--no-audio")
    host_pids: list[int] = []
    children: set[int] = set()
    try:
        _, ready = run.wait_for(lambda r: r["type"] == "host" and r["event"] == "ready", 120, "the host ready")
        host_pids.append(ready["pid"])
        sock = Path(ready["endpoint"].removeprefix("ipc://"))
        folder = sock.parent
        assert folder.name.startswith("cer-host-") and (folder.stat().st_mode & 0o777) == 0o700
        os.kill(ready["pid"], signal.SIGTERM)  # the host alone stops: it removes its folder
        run.wait_for(lambda r: r["type"] == "host" and r["event"] == "exited", 30, "the host's exited record")
        _, again = run.wait_for(
            lambda r: r["type"] == "host" and r["event"] == "ready" and r["pid"] != ready["pid"], 120, "ready again"
        )
        host_pids.append(again["pid"])
        assert again["endpoint"] == ready["endpoint"] and sock.is_socket()  # the same path, made again
        assert (folder.stat().st_mode & 0o777) == 0o700
        children = _children(run.proc.pid)
        run.proc.kill()
        assert run.proc.wait(10) == -signal.SIGKILL
        assert _gone_within(folder, 10), sorted(folder.iterdir())
        deadline = time.monotonic() + 10
        while alive(again["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(again["pid"])  # the host stopped on its own
    finally:
        for pid in [*host_pids, *children]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        run.finish(10, interrupt=False)


def test_the_host_removes_only_a_private_folder_it_was_told_it_owns(tmp_path):
    """``--own-endpoint-dir``: the socket file and then the folder, and only a ``cer-host-*``
    folder of this user with mode 0700; a folder that holds anything else keeps it (and itself);
    a folder that is not such a one is refused at the start, in one line."""
    import shutil
    import socket
    import tempfile

    from stream.cli.host import remove_endpoint_dir

    def private(*, prefix: str = "cer-host-", mode: int = 0o700) -> tuple[str, Path]:
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_path))
        os.chmod(folder, mode)
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(folder / "models.sock"))
        sock.close()
        return f"ipc://{folder / 'models.sock'}", folder

    endpoint, folder = private()
    host = Host(endpoint, "--own-endpoint-dir")
    try:
        assert folder.is_dir()
        host.proc.stdin.close()  # the supervisor is gone: the host stops on its own
        assert host.proc.wait(30) == 0
        assert not folder.exists()
    finally:
        host.stop()

    for kwargs in ({"prefix": "other-"}, {"mode": 0o755}):
        endpoint, folder = private(**kwargs)  # type: ignore[arg-type]
        assert not remove_endpoint_dir(endpoint) and (folder / "models.sock").is_socket()
        cmd = [sys.executable, "-m", "stream.cli.host", "--endpoint", endpoint, "--own-endpoint-dir", "--no-stdin"]
        refused = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "--own-endpoint-dir" in refused.stderr and "Traceback" not in refused.stderr
        assert (folder / "models.sock").is_socket()
    endpoint, folder = private()
    link = tmp_path / "cer-host-link"
    link.symlink_to(folder)
    assert not remove_endpoint_dir(f"ipc://{link / 'models.sock'}") and (folder / "models.sock").is_socket()
    (folder / "notes.txt").write_text("not the host's")
    assert not remove_endpoint_dir(endpoint)  # the socket goes, the rest stays
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert not remove_endpoint_dir("tcp://127.0.0.1:5555")
    shutil.rmtree(folder)


def test_a_batch_larger_than_an_engine_takes_is_cut_into_calls():
    """The host's batches of many streams are cut at the plan's largest batch: same results."""
    from stream.modalities.face import analyse_streams
    from stream.runtime.build import build_face_analyzer

    base = build_face_analyzer(FaceOptions(), instrument=False)
    forks = [base.fork(), base.fork()]
    whole = analyse_streams([(f, _frames(6, shift=30 * k)) for k, f in enumerate(forks)], max_batch=100)
    forks = [base.fork(), base.fork()]
    cut = analyse_streams([(f, _frames(6, shift=30 * k)) for k, f in enumerate(forks)], max_batch=5)
    for a, b in zip(whole, cut):
        assert not isinstance(a, Exception) and not isinstance(b, Exception)
        assert [r.box for r in a] == [r.box for r in b]
        for x, y in zip(a, b):
            np.testing.assert_allclose(x.basic, y.basic, atol=1e-5)


@pytest.mark.parametrize("hosted", [False, True])
def test_the_speech_text_head_is_read_once_when_the_modalities_are_built(hosted, tmp_path, monkeypatch):
    """The head file gives both the sentence encoder's max_len (the spec the host preloads by) and
    the text modality's head: one read, under a model host or not."""
    import pickle

    from stream.modalities import hosted as H
    from stream.modalities.audio import AudioOptions, build_audio_modalities
    from stream.modalities.speech.texthead import TextHead

    reads: list[str] = []
    real = TextHead.load.__func__  # type: ignore[attr-defined]

    def counting(cls, kind_or_path, **kw):
        reads.append(str(kind_or_path))
        return real(cls, kind_or_path, **kw)

    monkeypatch.setattr(TextHead, "load", classmethod(counting))
    monkeypatch.setattr(H, "_ACTIVE", None)  # this test's own client, closed below
    if hosted:  # nothing listens there: building the stand-ins asks the host nothing
        monkeypatch.setenv(HOST_ENV, f"ipc://{tmp_path / 'models.sock'}")
    else:
        monkeypatch.delenv(HOST_ENV, raising=False)
    mods = build_audio_modalities(AudioOptions(device="cpu"))
    try:
        text = mods[-1]
        assert reads == ["speech"]
        assert text.name == "text" and isinstance(text.head, TextHead)
        if hosted:
            assert isinstance(text.head.encoder, H.RemoteTextEncoder)
            assert pickle.loads(text.head.encoder._spec)["max_len"] == text.head.max_len
        else:
            assert text.head.encoder is None  # made by the modality's load, with the head's max_len
    finally:
        for mod in mods:
            mod.close()
        if H._ACTIVE is not None:
            H._ACTIVE.close()
