"""`cer-stream batch`: many real clips (and a corrupt one) on local processes and on Ray.

Every batch output is compared with a plain `cer-stream --video FILE --out ... --csv ...` run of
the same file; reruns, half-written outputs and worker processes killed in the middle of a file
are checked on real runs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, cer_stream, records

from stream.batch import BatchError, BatchOptions, plan, run_batch
from stream.batch.plan import BatchItem, is_done, outputs, settings_digest
from stream.cli.offline import batch_main
from stream.runtime.options import AudioOptions, FusionOptions, PipelineOptions

GOOD = ("one", "two", "three")


def _espeak() -> bool:
    return shutil.which("espeak-ng") is not None


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Three short real clips (two with speech where espeak-ng exists) and a corrupt `.mp4`."""
    from make_sample import make_sample

    d = tmp_path_factory.mktemp("clips")
    make_sample(d / "one.mp4", seconds=3.0, audio=_espeak())
    make_sample(d / "two.mp4", seconds=4.0, audio=False)
    make_sample(d / "sub" / "three.mp4", seconds=3.5, audio=_espeak(), text="I am so surprised to see you here!")
    (d / "bad.mp4").write_bytes(os.urandom(6000))
    return d


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory) -> Path:
    """A longer clip (killed in the middle) and a short one after it."""
    from make_sample import make_sample

    d = tmp_path_factory.mktemp("long")
    make_sample(d / "long.mp4", seconds=6.0, audio=_espeak())
    make_sample(d / "short.mp4", seconds=3.0, audio=False)
    return d


@pytest.fixture(scope="module")
def reference(clips, tmp_path_factory) -> Path:
    """Each good clip through the plain command line: NAME.jsonl and NAME.csv."""
    d = tmp_path_factory.mktemp("reference")
    for name in GOOD:
        (src,) = clips.rglob(f"{name}.mp4")
        cer_stream(
            "--video",
            str(src),
            "--out",
            str(d / f"{name}.jsonl"),
            "--csv",
            str(d / f"{name}.csv"),
            "--quiet",
            check=True,
        )
    return d


def _close(a, b, where: str) -> None:
    if a is None or b is None:
        assert a is None and b is None, where
        return
    assert list(a) == list(b), where
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-6, (where, k, a[k], b[k])


def assert_same_run(got: Path, want: Path) -> None:
    """The same windows (labels exact, probabilities within 1e-6), final frames and end counts."""
    g, w = records(got.read_text()), records(want.read_text())
    gw, ww = [r for r in g if r["type"] == "window"], [r for r in w if r["type"] == "window"]
    assert len(gw) == len(ww) >= 1
    for x, y in zip(gw, ww):
        for k in ("index", "start", "end", "frames", "analysed_frames", "label", "basic_label", "present"):
            assert x[k] == y[k], (got.name, k, x[k], y[k])
        _close(x["basic"], y["basic"], f"{got.name} window {x['index']} basic")
        _close(x["compound"], y["compound"], f"{got.name} window {x['index']} compound")
        for mod, info in x["modalities"].items():
            assert info["present"] == y["modalities"][mod]["present"], (got.name, mod)
            _close(info.get("basic"), y["modalities"][mod].get("basic"), f"{got.name} {mod}")

    def final(recs):
        return [
            (i, lab)
            for r in recs
            if r["type"] == "frames" and r["final"]
            for i, lab in zip(r["frame_index"], r["label_index"])
        ]

    assert final(g) == final(w)
    ge, we = g[-1], w[-1]
    assert ge["type"] == we["type"] == "end"
    for k in ("reason", "windows", "frames", "frames_analysed", "media_s"):
        assert ge[k] == we[k], (got.name, k)


def summary(out: Path) -> dict[str, dict]:
    doc = json.loads((out / "summary.json").read_text())
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [r["name"] for r in doc["files"]]
    assert [r["status"] for r in rows] == [r["status"] for r in doc["files"]]
    return {r["name"]: r for r in doc["files"]}


def batch(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = batch_main([*argv, "--progress", "off"], stdout=out)
    return code, out.getvalue()


def check_batch_outputs(out: Path, reference: Path, rows: dict[str, dict]) -> None:
    for name in GOOD:
        assert rows[name]["status"] == "ok", rows[name]
        assert_same_run(out / f"{name}.jsonl", reference / f"{name}.jsonl")
        assert (out / f"{name}.csv").read_text() == (reference / f"{name}.csv").read_text()
        marker = json.loads((out / f"{name}.done.json").read_text())
        assert marker["summary"]["status"] == "ok" and marker["input"]["path"].endswith(f"{name}.mp4")
        assert rows[name]["windows"] >= 1 and rows[name]["media_s"] > 2.9 and rows[name]["rtf"] > 0
    bad = rows["bad"]
    assert bad["status"] == "failed" and bad["windows"] is None
    assert "\n" not in bad["error"] and "bad.mp4" in bad["error"] and "cannot open" in bad["error"], bad["error"]
    assert not list(out.glob("bad.*")), "a failed file leaves no outputs"
    assert not list(out.glob(".*.part")), "no part file is left"


# --------------------------------------------------------------------------- plan
def test_plan_expands_folders_globs_manifests_and_names_outputs(tmp_path):
    for rel in ("a/clip.mp4", "b/clip.MP4", "b/deep/x.mkv", "b/notes.txt", "c/summary.mp4", "d/y.webm"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "list.csv").write_text("name,path\nwhy,d/y.webm\n,a/clip.mp4\n")
    items = plan(
        [
            tmp_path / "a",
            str(tmp_path / "b"),
            str(tmp_path / "c" / "*.mp4"),
            tmp_path / "list.csv",  # y.webm named "why"; a/clip.mp4 again: dropped
            tmp_path / "b" / "deep" / "x.mkv",  # already in b/: dropped
        ]
    )
    paths = [Path(i.path).relative_to(tmp_path).as_posix() for i in items]
    assert paths == ["a/clip.mp4", "b/clip.MP4", "b/deep/x.mkv", "c/summary.mp4", "d/y.webm"]
    names = [i.name for i in items]
    # the same stem twice: each gets a stable hash of its path; "summary" is the batch's own
    assert names[0].startswith("clip-") and names[1].startswith("clip-") and names[0] != names[1]
    assert names[2] == "x" and names[3].startswith("summary-") and names[4] == "why"
    assert [i.name for i in plan([tmp_path / "b", tmp_path / "a"])] == [names[1], "x", names[0]]
    with pytest.raises(BatchError, match="no such file or folder"):
        plan([tmp_path / "nope.mp4"])
    with pytest.raises(BatchError, match="no file matches"):
        plan([str(tmp_path / "*.avi")])
    (tmp_path / "bad.csv").write_text("file\nx.mp4\n")
    with pytest.raises(BatchError, match="no 'path' column"):
        plan([tmp_path / "bad.csv"])


def test_done_needs_marker_same_input_same_settings_and_every_output(tmp_path):
    clip = tmp_path / "v.mp4"
    clip.write_bytes(b"x" * 10)
    out = tmp_path / "out"
    out.mkdir()
    item = BatchItem("v", str(clip))
    settings = settings_digest(PipelineOptions())
    wanted = list(outputs("v").values())
    for name in wanted:
        (out / name).write_text("{}\n")
    st = clip.stat()
    marker = {
        "version": 1,
        "input": {"path": str(clip), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        "settings": settings,
        "outputs": wanted,
        "summary": {},
    }
    assert is_done(item, out, settings=settings, wanted=wanted) is None, "no marker: not done"
    (out / "v.done.json").write_text(json.dumps(marker)[:-5])
    assert is_done(item, out, settings=settings, wanted=wanted) is None, "a cut marker: not done"
    (out / "v.done.json").write_text(json.dumps(marker))
    assert is_done(item, out, settings=settings, wanted=wanted) is not None
    other = settings_digest(PipelineOptions(fusion=FusionOptions(compound="rule1")))
    assert is_done(item, out, settings=other, wanted=wanted) is None, "other settings: analysed again"
    # a live-only setting (how late the voice and words may be) is no analysis setting of a file
    assert settings_digest(PipelineOptions(audio=AudioOptions(max_lag=3))) == settings
    assert is_done(item, out, settings=settings, wanted=[*wanted, "v.features.jsonl"]) is None
    (out / "v.csv").unlink()
    assert is_done(item, out, settings=settings, wanted=wanted) is None, "an output is missing"
    (out / "v.csv").write_text("")
    clip.write_bytes(b"y" * 11)
    assert is_done(item, out, settings=settings, wanted=wanted) is None, "the input changed"


def test_bad_batch_input_is_one_line_exit_2(tmp_path, capsys):
    assert batch(str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o"))[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cer-stream: error: no such file or folder: {tmp_path / 'missing.mp4'}"]


def test_a_batch_never_writes_over_its_inputs(clips, tmp_path, capsys):
    # a manifest kept in the output folder as summary.csv (a name the batch writes) would be
    # replaced at the end; a hard link to a video named like an output likewise
    out = tmp_path / "o"
    out.mkdir()
    manifest = out / "summary.csv"
    manifest.write_text(f"path\n{clips / 'two.mp4'}\n")
    before = manifest.read_bytes()
    assert batch(str(manifest), "--out", str(out))[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "over its input" in err[0] and str(manifest) in err[0], err
    assert manifest.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["summary.csv"]
    out2 = tmp_path / "o2"
    out2.mkdir()
    os.link(clips / "two.mp4", out2 / "two.jsonl")
    assert batch(str(clips / "two.mp4"), "--out", str(out2))[0] == 2
    assert "over its input" in capsys.readouterr().err


def test_ray_missing_is_one_line(clips, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    code, _ = batch(str(clips / "two.mp4"), "--out", str(tmp_path / "o"), "--ray", "auto")
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "cer-stream: error: --ray needs Ray, which is not installed: pip install 'cer-stream[ray]'"
    )


def test_models_that_cannot_load_stop_the_batch_with_one_line(clips, tmp_path, capsys):
    out = tmp_path / "o"
    missing = tmp_path / "missing.pt"
    code, _ = batch(str(clips / "two.mp4"), "--out", str(out), "--profile", "paper", "--face-weights", str(missing))
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"cer-stream: error: emoaffectnet-resnet50: --face-weights {missing}: no such file or folder"
    ]
    assert summary(out)["two"]["status"] == "not run" and not list(out.glob("two*"))


# --------------------------------------------------------------------------- local processes
@pytest.fixture(scope="module")
def one_worker_run(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch1")
    code, table = batch(str(clips), "--out", str(out), "--workers", "1")
    return out, code, table


def test_one_worker_outputs_match_plain_runs_and_bad_file_is_reported(one_worker_run, reference):
    out, code, table = one_worker_run
    assert code == 1  # one file failed
    rows = summary(out)
    assert list(rows) == ["bad", "one", "three", "two"]  # the folder by path: bad, one, sub/three, two
    check_batch_outputs(out, reference, rows)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["file", "status", "windows"]
    assert any(ln.startswith("bad") and "failed" in ln and "cannot open" in ln for ln in lines)
    assert lines[-1].startswith("4 files: 3 ok, 1 failed")


def test_rerun_skips_done_files_and_retries_the_failed_one(one_worker_run, clips, tmp_path):
    src, _, _ = one_worker_run
    out = tmp_path / "again"
    shutil.copytree(src, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    first = summary(src)
    code, _ = batch(str(clips), "--out", str(out))
    assert code == 1
    rows = summary(out)
    assert [rows[n]["status"] for n in GOOD] == ["skipped"] * 3
    for name in GOOD:  # the earlier numbers are kept, the files untouched
        assert rows[name]["windows"] == first[name]["windows"] and rows[name]["elapsed_s"] == first[name]["elapsed_s"]
        for suffix in (".jsonl", ".csv", ".done.json"):
            assert (out / f"{name}{suffix}").stat().st_mtime_ns == before[f"{name}{suffix}"]
    assert rows["bad"]["status"] == "failed" and rows["bad"]["worker"] != first["bad"]["worker"]  # tried again

    # the bad file mended (same name, now a real clip): it is analysed, and then done too
    mended = tmp_path / "mended" / "bad.mp4"
    mended.parent.mkdir()
    shutil.copy(clips / "two.mp4", mended)
    code, _ = batch(str(mended), "--out", str(out))
    assert code == 0 and summary(out)["bad"]["status"] == "ok"
    code, table = batch(
        str(clips / "one.mp4"), str(clips / "two.mp4"), str(clips / "sub"), str(mended), "--out", str(out)
    )
    assert code == 0 and all(r["status"] == "skipped" for r in summary(out).values())
    assert table.splitlines()[-1].startswith("4 files: 0 ok, 0 failed, 4 skipped")


def test_half_written_outputs_never_look_done(one_worker_run, clips, reference, tmp_path):
    src, _, _ = one_worker_run
    out = tmp_path / "half"
    shutil.copytree(src, out)
    (out / "one.done.json").unlink()  # stopped after the outputs were renamed, before the marker
    (out / "two.jsonl").write_text('{"type": "start"}\n')  # cut short, and its marker never written
    (out / "two.done.json").unlink()
    (out / ".two.csv.4242.part").write_text("image_location\n")  # a part file of a run that died
    (out / "three.done.json").write_text('{"version": 1, "na')  # a marker cut short
    code, _ = batch(str(clips / "one.mp4"), str(clips / "two.mp4"), str(clips / "sub"), "--out", str(out))
    assert code == 0
    rows = summary(out)
    assert [rows[n]["status"] for n in GOOD] == ["ok"] * 3
    for name in GOOD:
        assert_same_run(out / f"{name}.jsonl", reference / f"{name}.jsonl")
    assert not list(out.glob(".*.part"))


def test_two_workers_give_the_same_outputs_and_feature_dumps(clips, reference, tmp_path):
    out = tmp_path / "batch2"
    code, _ = batch(str(clips), "--out", str(out), "--workers", "2", "--dump-features")
    assert code == 1
    rows = summary(out)
    check_batch_outputs(out, reference, rows)
    for name in GOOD:
        dump = records((out / f"{name}.features.jsonl").read_text())
        windows = [r for r in records((out / f"{name}.jsonl").read_text()) if r["type"] == "window"]
        assert [r["index"] for r in dump] == [w["index"] for w in windows]
        assert all(r["type"] == "window" and r["video"] == name and "face" in r["modalities"] for r in dump)
    # the same batch without features asks for less: everything is done
    code, _ = batch(str(clips), "--out", str(out), "--workers", "2")
    assert code == 1 and [summary(out)[n]["status"] for n in GOOD] == ["skipped"] * 3


def _holders(path: Path) -> list[int]:
    """Processes of ours that have ``path`` open (Linux /proc)."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
        except OSError:
            continue
    return pids


def kill_worker_mid_file(out: Path, name: str, run) -> tuple[int, object]:
    """Run ``run()`` in a thread, SIGKILL the process writing ``name``'s part file as soon as it
    appears; returns (the killed pid, run's result)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(run()), daemon=True)
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        for part in out.glob(f".{name}.jsonl.*.part"):
            for pid in _holders(part.absolute()):
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                    break
        time.sleep(0.01)
    thread.join(240)
    assert killed is not None, "the worker was never seen writing the file"
    assert result, "the batch did not finish"
    return killed, result[0]


def test_local_worker_killed_mid_file_is_retried(long_clips, tmp_path):
    out = tmp_path / "killed"
    out.mkdir()
    options = BatchOptions(inputs=[long_clips], out=out, workers=1, progress="off")
    killed, result = kill_worker_mid_file(out, "long", lambda: run_batch(options))
    assert result.status == 0, result.rows
    rows = summary(out)
    assert rows["long"]["status"] == "ok" and rows["short"]["status"] == "ok"
    assert rows["long"]["worker"].split(":")[-1] != str(killed)
    assert json.loads((out / "long.done.json").read_text())["summary"]["windows"] >= 2
    assert not list(out.glob(".*.part"))


# --------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_cluster():
    """A small one-machine Ray cluster started in this process (2 CPUs, 200 MB object store,
    no dashboard), with token authentication so nothing else can join it."""
    import importlib.util
    import secrets

    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))  # read when ray loads
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=200 * 1024 * 1024,
        log_to_driver=False,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_ray_batch_from_another_driver_matches_the_plain_runs(ray_cluster, clips, reference, tmp_path):
    """`cer-stream batch --ray HOST:PORT` in its own process, joining the cluster by address."""
    out = tmp_path / "ray"
    code = "import sys; from stream.cli.offline import batch_main; sys.exit(batch_main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(clips), "--out", str(out), "--ray", ray_cluster, "--progress", "off"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 1, proc.stderr
    rows = summary(out)
    check_batch_outputs(out, reference, rows)
    assert len({rows[n]["worker"] for n in rows}) <= 2  # the cluster's 2 CPUs: at most two actors
    assert proc.stdout.splitlines()[-1].startswith("4 files: 3 ok, 1 failed")


def test_ray_actor_killed_mid_file_is_restarted_and_the_file_retried(ray_cluster, long_clips, tmp_path):
    out = tmp_path / "ray-killed"
    out.mkdir()
    options = BatchOptions(inputs=[long_clips], out=out, workers=1, ray="auto", progress="off")
    killed, result = kill_worker_mid_file(out, "long", lambda: run_batch(options))
    assert result.status == 0, result.rows
    rows = summary(out)
    assert rows["long"]["status"] == "ok" and rows["short"]["status"] == "ok"
    assert rows["long"]["worker"].split(":")[-1] != str(killed)  # a restarted actor did it
    assert not list(out.glob(".*.part"))
