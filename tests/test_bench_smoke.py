"""Every benchmark still runs (issue 20, item 5): each ``bench/`` script's ``--help`` and its
``--smoke`` mode, as real processes on real media, so that a benchmark broken by a change
elsewhere (an import that moved, a flag renamed) fails ``make test`` instead of the next person
who needs its figures.  A smoke run's numbers are not checked against anything (no timing is
asserted): only that it produced them, into its own folder and never into ``bench/results/``.
Where this machine lacks what a script needs (a GPU, fer's TensorFlow environment, GStreamer's
RTSP server), the honest check is its skip line and status 77."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rtsp_util import rtsp_available

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PEER_PYTHON = BENCH / ".peer-venv" / "bin" / "python"
SKIPPED = 77  # bench/_smoke.py: SKIPPED

#: Every benchmark script, and the arguments of its smoke run besides ``--smoke --smoke-dir``
#: (``{nodata}``: an empty folder, so that the scripts reading the data folder show they run
#: on a fresh clone without it, as a stand-in).
SMOKE_ARGS: dict[str, list[str]] = {
    "accuracy.py": ["--data", "{nodata}"],
    "audio_text.py": [],
    "engines.py": [],
    "fer_peer.py": [],
    "host_transport.py": [],
    "latency.py": [],
    "mediapipe_tasks.py": ["--faces", "{nodata}/faces_dev"],
    "multilingual.py": [],
    "scale.py": [],
    "soak.py": [],
    "speech_batch.py": [],
    "tracking.py": ["--data", "{nodata}"],
}


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def results_state() -> dict[str, tuple[int, int]]:
    """bench/results/ as (modification time, size) per file: a smoke run must leave it alone."""
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in RESULTS.iterdir() if p.is_file()}


def smoke(cmd: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "smoke"
    before = results_state()
    proc = run([*cmd, "--smoke", "--smoke-dir", str(out)])
    assert results_state() == before, "a smoke run changed bench/results/"
    return proc, out


def test_every_benchmark_has_a_smoke_test() -> None:
    scripts = {p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(SMOKE_ARGS), "a benchmark script without a smoke test (add it to SMOKE_ARGS)"


@pytest.mark.parametrize("script", sorted(SMOKE_ARGS))
def test_help(script: str) -> None:
    proc = run([sys.executable, f"bench/{script}", "--help"])
    assert proc.returncode == 0, proc.stderr
    assert "--smoke" in proc.stdout


@pytest.mark.parametrize("script", sorted(set(SMOKE_ARGS) - {"fer_peer.py", "scale.py", "soak.py"}))
def test_smoke(script: str, tmp_path: Path) -> None:
    nodata = tmp_path / "nodata"
    nodata.mkdir()
    args = [a.replace("{nodata}", str(nodata)) for a in SMOKE_ARGS[script]]
    proc, out = smoke([sys.executable, f"bench/{script}", *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "smoke: ok: " in proc.stderr
    assert any(p.suffix == ".json" for p in out.iterdir()), sorted(out.iterdir())


def test_smoke_soak(tmp_path: Path) -> None:
    """A live RTSP source whose server is killed once; needs GStreamer's RTSP server."""
    proc, out = smoke([sys.executable, "bench/soak.py"], tmp_path)
    if not rtsp_available()[0]:
        assert proc.returncode == SKIPPED and "smoke: skipped: GStreamer's RTSP server" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all checks pass" in proc.stderr and "smoke: ok: " in proc.stderr
    assert {"soak.json", "soak.md"} <= {p.name for p in out.iterdir()}


def test_smoke_scale(tmp_path: Path) -> None:
    """Batch, then one face-only stream through ``cer-stream serve`` per isolation (the shared
    model host and one model set per process) from a loopback RTSP server; needs GStreamer's
    RTSP server."""
    proc, out = smoke([sys.executable, "bench/scale.py"], tmp_path)
    if not rtsp_available()[0]:
        assert proc.returncode == SKIPPED and "smoke: skipped: GStreamer's RTSP server" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "smoke: ok: " in proc.stderr
    report = json.loads((out / "scale.json").read_text(encoding="utf-8"))
    rounds = report["live"]["face"]["rounds"]
    assert [(r["isolation"], r["streams"]) for r in rounds] == [("host", 1), ("process", 1)]
    for r in rounds:
        assert "--no-audio" in r["command"] and f"--isolation {r['isolation']}" in r["command"]
        (stream,) = r["per_stream"]
        assert stream["end_reason"] == "interrupted" and stream["windows"] >= 1 and stream["restarts"] == 0
        assert stream["startup_to_start_s"] is not None and r["memory"]["serve_processes"] >= 2


def test_smoke_fer_peer(tmp_path: Path) -> None:
    """fer needs TensorFlow: its script runs in bench/.peer-venv (bench/latency.py makes it on
    first use); the project's environment says so and skips."""
    proc, _ = smoke([sys.executable, "bench/fer_peer.py"], tmp_path / "here")
    assert proc.returncode == SKIPPED, proc.stderr[-3000:]
    assert "smoke: skipped: fer does not import here" in proc.stderr
    if PEER_PYTHON.exists():
        proc, out = smoke([str(PEER_PYTHON), "bench/fer_peer.py"], tmp_path / "peer")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (out / "peer.json").is_file()


def test_gpu_check() -> None:
    """bash bench/gpu_check.sh: --help, and --smoke where there is no GPU says so (77)."""
    proc = run(["bash", "bench/gpu_check.sh", "--help"])
    assert proc.returncode == 0 and "--smoke" in proc.stdout
    has_gpu = run(["bash", "-c", "nvidia-smi -L"]).returncode == 0
    if has_gpu:
        pytest.skip("an NVIDIA GPU is here: bench/gpu_check.sh --smoke belongs to its GPU run")
    before = results_state()
    proc = run(["bash", "bench/gpu_check.sh", "--smoke"])
    assert proc.returncode == SKIPPED and "gpu_check: smoke: no NVIDIA GPU here" in proc.stderr
    assert results_state() == before


def test_smoke_never_writes_into_results() -> None:
    before = results_state()
    proc = run([sys.executable, "bench/latency.py", "--smoke", "--smoke-dir", str(RESULTS)])
    assert proc.returncode == 2
    assert "a smoke run never writes into bench/results/" in proc.stderr
    proc = run([sys.executable, "bench/latency.py", "--smoke", "--json", str(RESULTS / "latency.json")])
    assert proc.returncode == 2 and "--smoke writes into --smoke-dir, not --json" in proc.stderr
    assert results_state() == before


# --------------------------------------------------------------------------- the shared output steps
def smoke_module() -> Any:
    """bench/_smoke.py, loaded by its path (``bench`` is a namespace package under ROOT, which
    pytest alone does not put on ``sys.path``)."""
    spec = importlib.util.spec_from_file_location("bench_smoke_under_test", BENCH / "_smoke.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_revision_and_the_refusal_of_a_dirty_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bench/_smoke.py's revision(): the measured files that differ from HEAD (a change in the
    work tree's first column kept: porcelain's `` M path`` lines begin with a blank), every
    tracked change when none is named, and refuse_dirty(): one line and True for a real run
    only (``--allow-dirty`` and ``--smoke`` go on)."""
    smoke = smoke_module()
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    for name in ("measured.py", "other.py"):
        (repo / name).write_text("x = 1\n")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    clean = smoke.revision(("measured.py",), root=repo)
    assert clean.changed == () and not clean.dirty and len(clean.commit) == 40
    assert clean.record("short") == {"commit": clean.commit, "short": clean.short, "changed": []}
    assert clean.label("short", "+dirty") == clean.short == clean.describe
    real = argparse.Namespace(allow_dirty=False, smoke=False)
    assert not smoke.refuse_dirty("bench/x.py:", clean, real)

    (repo / "measured.py").write_text("x = 2\n")  # unstaged: " M measured.py"
    (repo / "other.py").write_text("x = 2\n")
    (repo / "new.py").write_text("x = 3\n")
    rev = smoke.revision(("measured.py", "new.py"), root=repo)
    assert rev.changed == ("measured.py", "new.py") and rev.commit == clean.commit
    assert rev.label() == f"{clean.describe}-dirty"
    whole = smoke.revision(root=repo)  # every tracked file; new files do not count
    assert whole.changed == ("measured.py", "other.py")
    assert smoke.revision(("new.py",), root=repo).changed == ("new.py",)
    assert smoke.revision(root=tmp_path / "nothing").commit is None

    for allowed in (
        argparse.Namespace(allow_dirty=True, smoke=False),
        argparse.Namespace(allow_dirty=False, smoke=True),
    ):
        assert not smoke.refuse_dirty("bench/x.py:", rev, allowed)
    assert capsys.readouterr().err == ""
    assert smoke.refuse_dirty("bench/x.py:", rev, real)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench/x.py: error: the measured files differ from the revision")
    assert "(measured.py, new.py)" in err and "--allow-dirty" in err


def test_write_results(tmp_path: Path) -> None:
    """write_results(): the JSON with a final newline, the markdown as given, folders made, a
    path None not written."""
    smoke = smoke_module()
    res = {"a": [1, 2], "é": "ü"}
    out = tmp_path / "deep" / "er"
    written = smoke.write_results(out / "r.json", res, out / "r.md", "# r\n\n", indent=2, ensure_ascii=False)
    assert written == [out / "r.json", out / "r.md"]
    assert (out / "r.json").read_text(encoding="utf-8") == json.dumps(res, indent=2, ensure_ascii=False) + "\n"
    assert (out / "r.md").read_text(encoding="utf-8") == "# r\n\n"
    assert smoke.write_results(None, res, out / "only.md", "m") == [out / "only.md"]
    assert not (out / "only.json").exists()


def test_smoke_dir_inside_results_is_one_line(tmp_path: Path) -> None:
    """Every script's --smoke-dir inside bench/results/ is refused with one line and status 2."""
    before = results_state()
    for script in ("tracking.py", "speech_batch.py", "audio_text.py"):
        proc = run([sys.executable, f"bench/{script}", "--smoke", "--smoke-dir", str(RESULTS / "x")])
        assert proc.returncode == 2, (script, proc.stderr)
        assert proc.stderr.strip().endswith("a smoke run never writes into bench/results/"), proc.stderr
        assert "Traceback" not in proc.stderr
    assert results_state() == before
