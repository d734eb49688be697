"""The peer for bench/latency.py: the ``fer`` package's own per-frame analysis.

Runs inside the peer virtual environment (fer + tensorflow-cpu; see
``bench/latency.py``), never in cer-stream's own.  It reads the frames the
pipeline analysed (an (N, H, W, 3) uint8 RGB ``.npy``), builds
``FER(mtcnn=False)`` as fer's README does (OpenCV Haar cascade for detection,
fer's default classifier: the quantised mini-Xception through TensorFlow Lite),
warms it up, then times ``detect_emotions(frame)`` on every frame (``--repeat``
passes with OpenCV's default threads, then one pass on one OpenCV thread) and
writes a JSON report.

    PEER_PYTHON bench/fer_peer.py FRAMES.npy --out PEER.json [--warmup 3] [--repeat 1]
    PEER_PYTHON bench/fer_peer.py --smoke [--smoke-dir DIR]

``--smoke`` checks that the script still runs (``tests/test_bench_smoke.py``): 3 frames of
``samples/astronaut.mp4``, 1 warm-up call, 1 pass, the report into ``--smoke-dir`` (default a new
temporary folder); exit 0 only when it holds a time per frame, 77 after one line where fer does
not import (any environment but the peer's: run it with ``bench/.peer-venv/bin/python``).

The RGB -> BGR conversion that fer's input convention needs is done before
timing: a camera read through OpenCV already delivers BGR.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


#: --smoke: frames of the sample given to fer, and the figures the report must hold.
SMOKE_FRAMES = 3
SMOKE_NUMBERS = ("per_frame_ms/0", "per_frame_ms_1thread/0", "load_s", "cpu_cores_used")


def main(argv: list[str] | None = None) -> int:
    import _smoke  # bench/_smoke.py: this script's folder is first on sys.path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("frames", nargs="?", help="(N, H, W, 3) uint8 RGB .npy")
    p.add_argument("--out", help="JSON report")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--repeat", type=int, default=1, help="timed passes over the frames (default 1)")
    _smoke.add_args(p, f"{SMOKE_FRAMES} frames of the sample, 1 warm-up call, 1 pass")
    args = p.parse_args(argv)
    if not args.smoke:
        if args.frames is None or args.out is None:
            p.error("FRAMES.npy and --out are required (or --smoke)")
        return measure(args)
    _smoke.refuse_outputs(p, args, ("out",))
    if args.frames is not None:
        p.error("--smoke reads frames of its own, not FRAMES.npy")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads, as measure() does
    try:
        import fer.fer  # noqa: F401
    except Exception as exc:  # fer needs TensorFlow and pkg_resources: the peer's environment
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return _smoke.skip("fer_peer", f"fer does not import here ({why}); run it with bench/.peer-venv/bin/python")
    try:
        folder = _smoke.out_dir("fer_peer", args.smoke_dir)
    except ValueError as exc:
        p.error(str(exc))
    args.frames, args.out = str(smoke_frames(folder / "frames.npy")), str(folder / "peer.json")
    args.warmup, args.repeat = 1, 1
    status = measure(args)
    if status != 0:
        return status
    with open(args.out, encoding="utf-8") as fh:
        return _smoke.finish("fer_peer", json.load(fh), SMOKE_NUMBERS, folder)


def smoke_frames(path: Path) -> Path:
    """The sample's first :data:`SMOKE_FRAMES` frames as an (N, H, W, 3) RGB .npy, read with
    the peer's own OpenCV (its environment has no PyAV)."""
    import _smoke
    import cv2
    import numpy as np

    cap = cv2.VideoCapture(str(_smoke.SAMPLE))
    frames = []
    while len(frames) < SMOKE_FRAMES:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr[:, :, ::-1])
    cap.release()
    if not frames:
        raise SystemExit(f"fer_peer: cannot read {_smoke.SAMPLE} with OpenCV")
    np.save(path, np.stack(frames))
    return path


def measure(args: argparse.Namespace) -> int:
    """fer on the frames: warm-up, the timed passes, one pass on one OpenCV thread, the report."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    warnings.filterwarnings("ignore")  # tf.lite.Interpreter's deprecation notice
    import numpy as np

    t0 = time.perf_counter()
    import cv2
    from fer.fer import FER

    import_s = time.perf_counter() - t0
    frames_rgb = np.load(args.frames)
    if frames_rgb.ndim != 4 or frames_rgb.shape[-1] != 3 or frames_rgb.dtype != np.uint8:
        raise SystemExit(f"expected (N, H, W, 3) uint8 frames, got {frames_rgb.shape} {frames_rgb.dtype}")
    frames = [np.ascontiguousarray(f[:, :, ::-1]) for f in frames_rgb]  # fer takes BGR

    t0 = time.perf_counter()
    detector = FER(mtcnn=False)
    load_s = time.perf_counter() - t0
    for i in range(args.warmup):
        detector.detect_emotions(frames[i % len(frames)])

    import resource

    def cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    per_frame: list[float] = []
    faces: list[int] = []
    top: list[str | None] = []
    probs: list[dict | None] = []
    default_threads = cv2.getNumThreads()
    c0, w0 = cpu_s(), time.perf_counter()
    for rep in range(args.repeat):
        for f in frames:
            t = time.perf_counter()
            res = detector.detect_emotions(f)
            per_frame.append((time.perf_counter() - t) * 1e3)
            if rep == 0:
                faces.append(len(res))
                if res:
                    # fer lists faces in detector order; take the largest, as cer-stream does
                    best = max(res, key=lambda r: int(r["box"][2]) * int(r["box"][3]))
                    top.append(max(best["emotions"], key=best["emotions"].get))
                    probs.append(best["emotions"])
                else:
                    top.append(None)
                    probs.append(None)
    cores = (cpu_s() - c0) / (time.perf_counter() - w0)
    # the same on one OpenCV thread (the Haar cascade is the part OpenCV parallelises): a per-core figure
    cv2.setNumThreads(1)
    one_thread: list[float] = []
    c1, w1 = cpu_s(), time.perf_counter()
    for f in frames:
        t = time.perf_counter()
        detector.detect_emotions(f)
        one_thread.append((time.perf_counter() - t) * 1e3)
    cores_1 = (cpu_s() - c1) / (time.perf_counter() - w1)
    cv2.setNumThreads(default_threads)
    report = {
        "what": "fer FER(mtcnn=False).detect_emotions(frame): OpenCV Haar cascade + mini-Xception (TFLite)",
        "frames": len(frames),
        "height": int(frames_rgb.shape[1]),
        "width": int(frames_rgb.shape[2]),
        "warmup_calls": args.warmup,
        "repeat": args.repeat,
        "per_frame_ms": per_frame,
        "faces": faces,
        "top_emotion": top,
        "emotions": probs,
        "import_s": import_s,
        "load_s": load_s,
        "cv2_threads": default_threads,
        "cpu_cores_used": cores,
        "per_frame_ms_1thread": one_thread,
        "cpu_cores_used_1thread": cores_1,
        "versions": {
            "python": platform.python_version(),
            **{k: _version(k) for k in ("fer", "tensorflow-cpu", "tensorflow", "opencv-python-headless", "numpy")},
        },
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(report, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
