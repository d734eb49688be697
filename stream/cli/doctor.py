"""``cer-stream doctor``: one screen that says what this machine can run and why not the rest.

Four parts, each a table of checks with ``ok``, ``--`` (absent: optional) or ``!!`` (absent and
the default run needs it), and for each absent one the reason and the step that brings it:

* **packages**: the Python packages of the default path and of each extra (what imports, and
  the version; an import that fails says how);
* **models**: every model of the registry (``cer-stream models list``), whether its weights are
  here and where, or what is missing;
* **tools**: the programs some features use (npm for ``models fetch``, espeak-ng, GStreamer's
  RTSP server and Chromium for the test suite);
* **hardware**: the GPU path (an NVIDIA driver, TensorRT and pycuda), V4L2 cameras, microphones.

The exit status is 0 when the default run (``cer-stream --video FILE``) can work, 1 otherwise;
``--json`` prints the same as one JSON document.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

PROG = "cer-stream doctor"


@dataclass
class Check:
    part: str
    name: str
    ok: bool
    needed: bool  # the default run needs it
    detail: str  # where / which version, or why absent and how to get it


#: (import name, distribution shown, extra, needed by the default run)
PACKAGES = (
    ("numpy", "numpy", "", True),
    ("av", "av (PyAV, FFmpeg)", "", True),
    ("zmq", "pyzmq", "", True),
    ("onnxruntime", "onnxruntime", "", True),
    ("mediapipe", "mediapipe", "", True),
    ("cv2", "opencv", "", True),
    ("ctranslate2", "ctranslate2", "", True),
    ("faster_whisper", "faster-whisper", "", True),
    ("tokenizers", "tokenizers", "", True),
    ("tqdm", "tqdm", "", True),
    ("starlette", "starlette", "web", False),
    ("uvicorn", "uvicorn", "web", False),
    ("matplotlib", "matplotlib", "plot", False),
    ("sounddevice", "sounddevice", "mic", False),
    ("ray", "ray", "ray", False),
    ("torch", "torch", "train/export", False),
    ("open_clip", "open_clip_torch", "export", False),
    ("ultralytics", "ultralytics", "export", False),
)

#: (program, what uses it, Debian package)
TOOLS = (
    ("npm", "`models fetch` (face-api.js weights, the live page's chart library)", "npm"),
    ("espeak-ng", "the test suite's speech", "espeak-ng"),
    ("chromium", "the live page's browser tests", "chromium chromium-driver"),
    ("chromedriver", "the live page's browser tests", "chromium-driver"),
)


def _version(module: object) -> str:
    return str(getattr(module, "__version__", "") or "")


def check_packages() -> list[Check]:
    out = []
    for mod, shown, extra, needed in PACKAGES:
        how = "pip install -e ." if not extra else f"pip install 'cer-stream[{extra.split('/')[0]}]'"
        try:
            m = importlib.import_module(mod)
        except Exception as exc:  # ImportError, or a broken install raising something else
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            out.append(Check("packages", shown, False, needed, f"{first[:80]}; {how}"))
            continue
        where = f"[{extra}] " if extra else ""
        out.append(Check("packages", shown, True, needed, f"{where}{_version(m)}".strip()))
    return out


def check_models() -> list[Check]:
    from engines.models import registry as reg

    out = []
    for spec in reg.registry().values():
        ok, where = reg.available(spec)
        detail = where if ok else f"{where} (see `cer-stream models list --json`)"
        # the default run is the lite profile: each of its models is needed, but for the ones it
        # only offers (Whisper tiny.en, an --asr-model)
        needed = "lite" in spec.profiles and not spec.extra.get("optional", False)
        out.append(Check("models", spec.name, ok, needed, detail))
    return out


def _rtsp_server() -> tuple[bool, str]:
    probe = "import gi; gi.require_version('GstRtspServer','1.0'); from gi.repository import GstRtspServer"
    if not os.access("/usr/bin/python3", os.X_OK):
        return False, "no /usr/bin/python3 with GObject bindings; apt-get install python3-gi gir1.2-gst-rtsp-server-1.0"
    import subprocess

    try:
        proc = subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot run /usr/bin/python3: {exc}"
    if proc.returncode:
        return False, "GStreamer's RTSP server bindings missing; apt-get install gir1.2-gst-rtsp-server-1.0"
    return True, "GstRtspServer importable by /usr/bin/python3 (the test suite's RTSP peer)"


def check_tools() -> list[Check]:
    out = []
    for prog, what, deb in TOOLS:
        path = shutil.which(prog)
        if prog == "chromium" and path is None:
            path = shutil.which("chromium-browser")
        detail = f"{path}: {what}" if path else f"not found: {what}; apt-get install {deb}"
        out.append(Check("tools", prog, path is not None, False, detail))
    ok, detail = _rtsp_server()
    out.append(Check("tools", "gst-rtsp-server", ok, False, detail))
    return out


def check_hardware() -> list[Check]:
    from engines.select import tensorrt_status

    out = [Check("hardware", "cpu", True, True, f"{os.cpu_count()} cores, {platform.machine()}")]
    ok, why = tensorrt_status()
    out.append(Check("hardware", "gpu (TensorRT)", ok, False, why if ok else f"{why}; ONNX Runtime on the CPU is used"))
    cams = sorted(str(p) for p in Path("/dev").glob("video*"))
    out.append(
        Check(
            "hardware",
            "camera (V4L2)",
            bool(cams),
            False,
            ", ".join(cams) if cams else "no /dev/video* device: --camera has nothing to open",
        )
    )
    try:
        import sounddevice as sd

        inputs = [d["name"] for d in sd.query_devices() if d.get("max_input_channels", 0) > 0]
        mic = (bool(inputs), ", ".join(inputs[:3]) if inputs else "no input device: --mic has nothing to record")
    except Exception as exc:  # ImportError, or PortAudio missing (OSError)
        mic = (
            False,
            f"sounddevice unusable ({str(exc).strip()[:60] or type(exc).__name__}): pip install "
            "'cer-stream[mic]'; Debian: libportaudio2",
        )
    out.append(Check("hardware", "microphone", mic[0], False, mic[1]))
    return out


def run_checks() -> list[Check]:
    return check_packages() + check_models() + check_tools() + check_hardware()


#: Characters of a check's detail the table shows (``--json`` has all of it).
DETAIL_CHARS = 110


def _short(detail: str) -> str:
    """The first two clauses of a long reason, cut to :data:`DETAIL_CHARS` (the table is one
    screen; ``--json`` has every word)."""
    clauses = detail.split("; ")
    text = "; ".join(clauses[:2])
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 1] + "\u2026"


def render(checks: list[Check]) -> str:
    lines = [f"cer-stream doctor: Python {platform.python_version()} on {platform.platform(terse=True)}"]
    width = max(len(c.name) for c in checks)
    part = None
    for c in checks:
        if c.part != part:
            part = c.part
            lines.append(f"\n{part}")
        mark = "ok" if c.ok else ("!!" if c.needed else "--")
        lines.append(f"  {mark}  {c.name:<{width}}  {_short(c.detail)}")
    blocking = [c for c in checks if c.needed and not c.ok]
    lines.append("")
    if blocking:
        lines.append(f"the default run cannot work: {', '.join(c.name for c in blocking)} (!! above)")
    else:
        lines.append("the default run can work here (-- marks what is optional and absent, and why)")
    return "\n".join(lines)


def doctor_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Say which packages, models, tools and hardware paths are here, and why each absent one is "
        "absent. Exit status 0 when the default run can work, 1 otherwise.",
    )
    p.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    args = p.parse_args(argv)
    checks = run_checks()
    if args.json:
        json.dump({"checks": [asdict(c) for c in checks]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render(checks))
    return 1 if any(c.needed and not c.ok for c in checks) else 0


__all__ = ["Check", "doctor_main", "render", "run_checks"]
