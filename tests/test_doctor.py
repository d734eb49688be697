"""`cer-stream doctor`: what is here, and why the rest is not, on one screen."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT, cer_stream


def test_doctor_says_what_is_here_and_why_the_rest_is_not():
    proc = cer_stream("doctor", timeout=120)
    assert proc.returncode == 0, proc.stderr  # the test machine runs the default path
    out = proc.stdout
    for part in ("packages", "models", "tools", "hardware"):
        assert f"\n{part}\n" in out
    assert "  ok  fer-mini-xception " in out and "  ok  onnxruntime " in out
    # an absent optional thing says why and how to get it
    gpu = next(ln for ln in out.splitlines() if "gpu (TensorRT)" in ln)
    assert gpu.lstrip().startswith("--") and "ONNX Runtime" in gpu
    assert "the default run can work here" in out
    assert max(len(ln) for ln in out.splitlines()) < 160  # a screen's width, not a wall of text
    doc = json.loads(cer_stream("doctor", "--json", timeout=120).stdout)
    names = {c["name"]: c for c in doc["checks"]}
    assert names["fer-mini-xception"]["ok"] and names["fer-mini-xception"]["needed"]


def test_doctor_fails_when_a_default_model_is_missing(tmp_path):
    # an empty model cache: the face-api.js weights (fetched at install time) are not there
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CER_STREAM_CACHE": str(tmp_path)}
    env.pop("CER_STREAM_FACEAPI", None)
    cmd = [sys.executable, "-m", "stream.cli", "doctor"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 1, proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if "faceapi-expression" in ln)
    assert line.lstrip().startswith("!!")
    assert "the default run cannot work: " in proc.stdout and "faceapi-expression" in proc.stdout.splitlines()[-1]
