"""The streaming path imports neither torch nor transformers.

torch is installed beside the project for training and exporting only; the analyzer must run
on the ONNX files alone. ``python -X importtime`` lists every module a real run imports (on
stderr, one ``import time:`` line each), which is checked here for a still image.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

FORBIDDEN = ("torch", "transformers", "tensorflow", "open_clip", "ultralytics", "tensorrt")


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from ``-X importtime`` output (``import time: self | cumulative | name``)."""
    names = set()
    for line in importtime_stderr.splitlines():
        match = re.match(r"import time:\s+\d+\s+\|\s+\d+\s+\|\s+(\S.*)$", line)
        if match:
            names.add(match.group(1).strip())
    return names


def test_importtime_parser():
    sample = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       120 |        120 |   _io\n"
        "import time:      2000 |      90000 | torch\n"
        "import time:        15 |         15 |     torch._C\n"
    )
    assert imported_modules(sample) == {"_io", "torch", "torch._C"}


def _run_recording_modules(tmp_path, *args):
    """Run the CLI under -X importtime; return (process, attempted imports, loaded modules)."""
    # -X importtime also lists imports that were attempted and failed (MediaPipe tries
    # ``tensorflow`` and carries on without it), so what the process really loaded is taken from
    # sys.modules at exit, written by a sitecustomize put in front of the path.
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(
        "import atexit, os, sys\n"
        "def _dump():\n"
        "    if not sys.argv[0].endswith(os.path.join('cli', '__main__.py')):\n"
        "        return  # a capture or multiprocessing helper process, not the analyzer\n"
        "    with open(os.environ['CER_TEST_MODULES'], 'w') as f:\n"
        "        f.write('\\n'.join(sorted(sys.modules)))\n"
        "atexit.register(_dump)\n"
    )
    modules_file = tmp_path / "modules.txt"
    # CER_STREAM_NATIVE_LOGS=1 keeps file descriptor 2 open: the CLI otherwise points it at
    # /dev/null to hide MediaPipe's native log lines, and -X importtime writes there.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)]),
        "CER_STREAM_CACHE": str(tmp_path / "cache"),
        "CER_STREAM_NATIVE_LOGS": "1",
        "CER_TEST_MODULES": str(modules_file),
    }
    # a fresh model cache, but the face-api.js weights (fetched by `make install`) where they are
    from engines.models.faceapi import WEIGHTS_ENV, weights_dir

    env[WEIGHTS_ENV] = str(weights_dir())
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "stream.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, imported_modules(proc.stderr), set(modules_file.read_text().split())


def _assert_torch_free(attempted, loaded):
    offending = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert not offending, f"the streaming path imported {offending[:10]}"
    # torch is installed in the test environment: an attempt to import it would have succeeded
    assert not [m for m in attempted if m.split(".")[0] in ("torch", "transformers")]


def test_images_command_imports_no_torch(tmp_path):
    pytest.importorskip("skimage")
    import cv2
    import skimage.data

    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), skimage.data.astronaut()[:, :, ::-1])
    proc, attempted, loaded = _run_recording_modules(tmp_path, "images", str(image))
    assert '"face": true' in proc.stdout  # it really analysed the image
    assert "stream.modalities.face" in attempted and "onnxruntime" in attempted, "importtime output not understood"
    assert "stream.modalities.face" in loaded and "engines.runtimes.onnxruntime" in loaded
    _assert_torch_free(attempted, loaded)


def test_video_run_imports_no_torch(tmp_path, sample):
    """The analyzer process of a full --video run (face, VAD, speech-to-text, text head)."""
    proc, attempted, loaded = _run_recording_modules(tmp_path, "--video", str(sample), "--no-frames")
    assert '"transcript"' in proc.stdout and '"type": "end"' in proc.stdout  # every modality ran
    assert {
        "stream.runtime.analyzer",
        "stream.modalities.speech.vad",
        "stream.modalities.speech.asr",
        "engines.models.minilm",
    } <= loaded
    _assert_torch_free(attempted, loaded)
