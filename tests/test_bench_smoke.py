"""Every benchmark still runs (issue 20, item 5): each ``bench/`` script's ``--help`` and its
``--smoke`` mode, as real processes on real media, so that a benchmark broken by a change
elsewhere (an import that moved, a flag renamed) fails ``make test`` instead of the next person
who needs its figures.  A smoke run's numbers are not checked against anything (no timing is
asserted): only that it produced them, into its own folder and never into ``bench/results/``.
Where this machine lacks what a script needs (a GPU, fer's TensorFlow environment, GStreamer's
RTSP server), the honest check is its skip line and status 77."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rtsp_util import rtsp_available

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PEER_PYTHON = BENCH / ".peer-venv" / "bin" / "python"
SKIPPED = 77  # bench/_smoke.py: SKIPPED

#: Every benchmark script, and the arguments of its smoke run besides ``--smoke --smoke-dir``
#: (``{nodata}``: an empty folder, so that the scripts reading the shared data show they run
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
