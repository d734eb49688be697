#!/usr/bin/env python3
"""Following a steady face costs no accuracy (issue 22): the face path with following on and off
on video-like sequences built from faces_dev, and on the sample clip.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/tracking.py [--data DIR] [--per-class N]
                                                            [--json OUT] [--md OUT] [--allow-dirty]
    python bench/tracking.py --smoke [--smoke-dir DIR] [--data DIR]

Sequences: ``--per-class`` photographs of each posed class (``bench/accuracy.py``'s fixed
subset), each pasted into a 640x480 frame of smoothed noise and moved and zoomed smoothly over
:data:`FRAMES` analysed frames (5 a second, as the pipeline analyses): one sequence in three
just moves, one jumps half the frame after 3/5 of it, one cuts there to two frames without a face and
then to the next photograph elsewhere (the detector must take over each time). Every frame is
one ``FaceAnalyzer.analyse`` call, as a live stream makes them; both modes share the MediaPipe
graphs and the emotion models (``FaceAnalyzer.fork``) and run frame by frame in turn, so their
timings share the machine's state.

Reported per mode: accuracy on the labelled frames (the posed label against the argmax of the 7
posed classes; a frame without a face counts as wrong), the face found rate (and faces found on
the frames without one), the milliseconds per analysed frame (detection, validation, following,
emotion, and the whole call) and the follower's counts; between the modes: the mean absolute
difference of the 8 basic probabilities, their argmax agreement and the boxes' IoU on frames
where both found the face. The sample clip (every 5th frame) gives the same without labels.

The report names the command and the git revision; a tree whose measured files (the face path
and this script) differ from it is refused unless ``--allow-dirty`` (recorded). faces_dev is
read from the data folder (``--data DIR`` or ``$CER_STREAM_DATA``; without either, one line says
so and the exit status is 2) and used for evaluation only (its terms): nothing of it is written
anywhere.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(ROOT))
_smoke: Any = importlib.import_module("bench._smoke")  # --smoke
_accuracy: Any = importlib.import_module("bench.accuracy")  # faces_dev's loader and fixed subset

#: Files measured: a run of a tree where these differ from HEAD is refused (--allow-dirty).
MEASURED = ("stream/modalities/face.py", "stream/modalities/face_crops.py", "bench/tracking.py")
#: Analysed frames per sequence (4 s at the pipeline's 5 analysed frames a second).
FRAMES = 20
FRAME_SIZE = (480, 640)  # height, width: the sample clip's
#: The sample clip's frames analysed: every 5th (25 fps -> 5 a second, as the pipeline).
CLIP_STEP = 5
STAGES = ("detect", "validate", "track", "emotion")
SMOKE_NUMBERS = (
    "faces_dev/on/accuracy",
    "faces_dev/off/accuracy",
    "faces_dev/agreement/mean_abs_diff",
    "faces_dev/on/ms_per_frame/call",
    "clip/agreement/argmax_agreement",
)


def say(msg: str) -> None:
    print(f"[tracking] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- sequences
def background(seed: int) -> np.ndarray:
    """A frame of smoothed noise (no face, some texture for the follower to be fooled by)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.normal(120, 30, (FRAME_SIZE[0] // 16, FRAME_SIZE[1] // 16, 3)).clip(0, 255).astype(np.uint8)
    return cv2.resize(small, (FRAME_SIZE[1], FRAME_SIZE[0]), interpolation=cv2.INTER_CUBIC)


def paste(frame: np.ndarray, photo: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """``photo`` resized to ``side`` pixels, centred at (cx, cy), clipped to ``frame`` (a copy)."""
    import cv2

    out = frame.copy()
    s = int(round(side))
    img = cv2.resize(photo, (s, s), interpolation=cv2.INTER_AREA if s < photo.shape[0] else cv2.INTER_LINEAR)
    x0, y0 = int(round(cx - s / 2)), int(round(cy - s / 2))
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(out.shape[1], x0 + s), min(out.shape[0], y0 + s)
    if fx1 > fx0 and fy1 > fy0:
        out[fy0:fy1, fx0:fx1] = img[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    return out


def sequence(k: int, photo: np.ndarray, other: np.ndarray, frames: int) -> tuple[str, list[tuple[np.ndarray, int]]]:
    """Sequence ``k``'s kind and its frames, each with which photograph it shows (0: ``photo``,
    1: ``other``, -1: none). Motion: a smooth drift of about 60 % of the face's size and a zoom
    of +-20 % over the sequence; ``jump``: 45 % of the frame sideways from frame ``event``; ``cut``:
    two empty frames from ``event``, then ``other`` elsewhere. ``event`` (13 of 20) is off the
    re-detection schedule (every 5th frame), so the follower meets the change itself."""
    kind = ("smooth", "jump", "cut")[k % 3]
    rng = np.random.default_rng(1000 + k)
    bg = background(k)
    h, w = FRAME_SIZE
    side0 = rng.uniform(150, 230)
    zoom = rng.uniform(-0.2, 0.2)
    cx0, cy0 = rng.uniform(0.35, 0.65) * w, rng.uniform(0.4, 0.6) * h
    vx, vy = rng.uniform(-1, 1, 2) * 0.6 * side0 / frames
    out = []
    mid = frames * 3 // 5 + 1  # the event
    for i in range(frames):
        side = side0 * (1 + zoom * i / frames)
        cx, cy = cx0 + vx * i, cy0 + vy * i
        if kind == "jump" and i >= mid:
            cx += (0.45 if cx0 < w / 2 else -0.45) * w
        if kind == "cut" and mid <= i < mid + 2:
            out.append((bg, -1))
        elif kind == "cut" and i >= mid + 2:
            out.append((paste(bg, other, w - cx, cy, side0), 1))
        else:
            out.append((paste(bg, photo, cx, cy, side), 0))
    return kind, out


# --------------------------------------------------------------------------- measuring
class Mode:
    """One way of running the face path (following on or off) and what it produced."""

    def __init__(self, face: Any) -> None:
        self.face = face
        self.results: list[Any] = []
        self.call_s = 0.0
        self.frames = 0
        self.t0 = dict(face.timings)
        self.c0 = dict(face.counts)

    def reset(self) -> None:
        """A new stream: no target, no steady face."""
        if self.face.tracker is not None:
            self.face.tracker.reset_states()
        self.face.detector.reset_states()

    def run(self, index: int, rgb: np.ndarray) -> Any:
        t = time.perf_counter()
        res = self.face.analyse([(index, index / 5, rgb)])[0]
        self.call_s += time.perf_counter() - t
        self.frames += 1
        self.results.append(res)
        return res

    def ms(self) -> dict[str, float]:
        n = max(1, self.frames)
        out = {k: (self.face.timings[k] - self.t0.get(k, 0.0)) * 1e3 / n for k in STAGES}
        out["call"] = self.call_s * 1e3 / n
        return out


def agreement(on: list[Any], off: list[Any]) -> dict[str, Any]:
    """How the two modes' results compare on the frames where both found the face."""
    from stream.modalities.face import iou

    both = [(a, b) for a, b in zip(on, off) if a.found and b.found and a.basic is not None and b.basic is not None]
    if not both:
        return {"frames_both_found": 0, "mean_abs_diff": None, "argmax_agreement": None, "box_iou_mean": None}
    diff = [float(np.abs(a.basic - b.basic).mean()) for a, b in both]
    ious = [iou(a.box, b.box) for a, b in both]
    return {
        "frames_both_found": len(both),
        "found_only_on": sum(1 for a, b in zip(on, off) if a.found and not b.found),
        "found_only_off": sum(1 for a, b in zip(on, off) if b.found and not a.found),
        "mean_abs_diff": float(np.mean(diff)),
        "max_abs_diff": float(np.max([np.abs(a.basic - b.basic).max() for a, b in both])),
        "argmax_agreement": float(np.mean([int(np.argmax(a.basic)) == int(np.argmax(b.basic)) for a, b in both])),
        "box_iou_mean": float(np.mean(ious)),
        "box_iou_min": float(np.min(ious)),
    }


def jitter(results: list[Any], same: list[bool]) -> float | None:
    """Mean |diff| of the 8 basic probabilities between consecutive frames of one photograph
    (``same[i]``: frame i shows what frame i-1 showed): how much the output moves with the box
    from frame to frame, the scale for the on-vs-off difference."""
    diffs = [
        float(np.abs(a.basic - b.basic).mean())
        for a, b, s in zip(results[1:], results[:-1], same[1:])
        if s and a.basic is not None and b.basic is not None
    ]
    return float(np.mean(diffs)) if diffs else None


def summary(mode: Mode, labels: list[int | None] | None) -> dict[str, Any]:
    res = mode.results
    counts = {k: v - mode.c0.get(k, 0) for k, v in mode.face.counts.items()}
    out: dict[str, Any] = {"frames": len(res), "ms_per_frame": mode.ms(), "counts": counts}
    if labels is None:
        out["found_rate"] = float(np.mean([r.found for r in res])) if res else None
        return out
    with_face = [(r, y) for r, y in zip(res, labels) if y is not None]
    without = [r for r, y in zip(res, labels) if y is None]
    posed = len(_accuracy.CLASSES)  # the 7 posed classes come first in BASIC order
    correct = [r.found and r.basic is not None and int(np.argmax(r.basic[:posed])) == y for r, y in with_face]
    out.update(
        labelled_frames=len(with_face),
        accuracy=float(np.mean(correct)) if correct else None,
        found_rate=float(np.mean([r.found for r, _ in with_face])) if with_face else None,
        empty_frames=len(without),
        found_on_empty=sum(1 for r in without if r.found),
    )
    return out


def faces_dev_part(args: argparse.Namespace, on: Mode, off: Mode) -> dict[str, Any]:
    import cv2

    folder, items = _accuracy.load_faces_dev(args.data)
    chosen = _accuracy.fixed_subset(items, args.per_class)
    say(f"faces_dev: {len(chosen)} photographs, {len(chosen)} sequences of {args.frames} frames")
    labels: list[int | None] = []
    same: list[bool] = []  # the frame shows the photograph the previous frame showed
    kinds: dict[str, int] = {}
    index = 0
    for k, item in enumerate(chosen):
        nxt = chosen[(k + 1) % len(chosen)]
        photo = cv2.cvtColor(cv2.imread(str(folder / item.path)), cv2.COLOR_BGR2RGB)
        other = cv2.cvtColor(cv2.imread(str(folder / nxt.path)), cv2.COLOR_BGR2RGB)
        kind, frames = sequence(k, photo, other, args.frames)
        kinds[kind] = kinds.get(kind, 0) + 1
        on.reset()
        off.reset()
        for i, (rgb, which) in enumerate(frames):
            labels.append(None if which < 0 else (item.label if which == 0 else nxt.label))
            same.append(i > 0 and which >= 0 and which == frames[i - 1][1])
            # in turn, with the order swapped every frame: neither mode always runs on a warm cache
            for mode in (on, off) if index % 2 else (off, on):
                mode.run(index, rgb)
            index += 1
    out = {
        "sequences": len(chosen),
        "kinds": kinds,
        "frames_per_sequence": args.frames,
        "on": summary(on, labels),
        "off": summary(off, labels),
        "agreement": agreement(on.results, off.results),
    }
    posed = len(_accuracy.CLASSES)

    def right(r: Any, y: int | None) -> bool:
        return y is not None and r.found and r.basic is not None and int(np.argmax(r.basic[:posed])) == y

    pairs = [(right(a, y), right(b, y)) for a, b, y in zip(on.results, off.results, labels) if y is not None]
    out["agreement"]["right_only_on"] = sum(1 for a, b in pairs if a and not b)
    out["agreement"]["right_only_off"] = sum(1 for a, b in pairs if b and not a)
    for name, mode in (("on", on), ("off", off)):
        out[name]["frame_to_frame_diff"] = jitter(mode.results, same)
    return out


def clip_part(args: argparse.Namespace, on: Mode, off: Mode) -> dict[str, Any]:
    import av

    on.reset()
    off.reset()
    n = 0
    with av.open(str(args.video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if args.clip_seconds and frame.time is not None and frame.time >= args.clip_seconds:
                break
            if i % CLIP_STEP:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            for mode in (on, off) if n % 2 else (off, on):
                mode.run(i, rgb)
            n += 1
    say(f"clip: {n} analysed frames")
    return {
        "video": str(Path(args.video).relative_to(ROOT))
        if Path(args.video).resolve().is_relative_to(ROOT)
        else args.video,
        "every": CLIP_STEP,
        "on": summary(on, None),
        "off": summary(off, None),
        "agreement": agreement(on.results, off.results),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from stream.runtime.build import build_face_analyzer

    base = build_face_analyzer()  # the pipeline's face path (lite profile, ensemble, following on)
    on, off = base.fork(follow=True), base.fork(follow=False)
    try:
        warm = background(0)
        for i in range(5):  # untimed: the engines' first calls
            base.analyse([(i, 0.0, warm)])
        fd = faces_dev_part(args, Mode(on), Mode(off))
        clip = clip_part(args, Mode(on), Mode(off))
        model = getattr(base.model, "name", type(base.model).__name__)
    finally:
        on.close()
        off.close()
        base.close()
    return {"faces_dev": fd, "clip": clip, "model": model}


# --------------------------------------------------------------------------- report
def _f(v: Any, nd: int = 2) -> str:
    return "–" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def markdown(res: dict[str, Any]) -> str:
    rev = res["revision"]
    lines = [
        "## Following a steady face: accuracy and cost, following on vs off (issue 22)",
        "",
        f"Revision `{rev['describe']}`"
        + (f" (**measured files differ**: {', '.join(rev['changed'])})" if rev["changed"] else "")
        + f"; `{res['command']}`; {res['machine']['cpus']} CPUs ({res['machine']['processor']}), "
        f"OMP_NUM_THREADS={res['machine']['omp_threads']}; face model {res['model']}.",
        "",
    ]
    for part, title in (("faces_dev", "faces_dev sequences"), ("clip", "the sample clip")):
        p = res[part]
        if part == "faces_dev":
            lines.append(
                f"### {title}: {p['sequences']} sequences of {p['frames_per_sequence']} frames "
                f"({', '.join(f'{v} {k}' for k, v in sorted(p['kinds'].items()))})"
            )
        else:
            lines.append(f"### {title}: `{p['video']}`, every {p['every']}th frame")
        lines += ["", "| | following on | following off |", "|---|---:|---:|"]
        rows = [("accuracy (labelled frames)", "accuracy", 3), ("face found rate", "found_rate", 3)]
        if part == "faces_dev":
            rows.append(("faces found on empty frames", "found_on_empty", 0))
        for name, key, nd in rows:
            lines.append(f"| {name} | {_f(p['on'].get(key), nd)} | {_f(p['off'].get(key), nd)} |")
        for st in (*STAGES, "call"):
            lines.append(
                f"| ms per frame: {st} | {_f(p['on']['ms_per_frame'][st])} | {_f(p['off']['ms_per_frame'][st])} |"
            )
        if "frame_to_frame_diff" in p["on"]:
            lines.append(
                "| mean abs diff of the 8 probabilities, frame to frame (same photograph) | "
                f"{_f(p['on']['frame_to_frame_diff'], 4)} | {_f(p['off']['frame_to_frame_diff'], 4)} |"
            )
        for key in ("tracked", "track_lost", "redetect_due", "detect_short", "detect_full", "validate"):
            lines.append(f"| count: {key} | {_f(p['on']['counts'].get(key))} | {_f(p['off']['counts'].get(key))} |")
        a = p["agreement"]
        lines += [
            "",
            f"On vs off, {a['frames_both_found']} frames where both found the face "
            f"(found only on: {a.get('found_only_on', 0)}, only off: {a.get('found_only_off', 0)}): "
            f"8 basic probabilities mean |diff| {_f(a['mean_abs_diff'], 4)} (max {_f(a.get('max_abs_diff'), 3)}), "
            f"argmax agreement {_f(a['argmax_agreement'], 3)}, box IoU mean {_f(a['box_iou_mean'], 3)} "
            f"(min {_f(a.get('box_iou_min'), 3)})"
            + (
                f"; labelled frames right only with following on: {a['right_only_on']}, only off: {a['right_only_off']}."
                if "right_only_on" in a
                else "."
            ),
            "",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/tracking.py", description=__doc__.splitlines()[0])
    p.add_argument("--data", help="the data folder holding faces_dev/ (default $CER_STREAM_DATA)")
    p.add_argument("--per-class", type=int, default=10, help="photographs per posed class (default 10)")
    p.add_argument("--frames", type=int, default=FRAMES, help=f"analysed frames per sequence (default {FRAMES})")
    p.add_argument("--video", default=str(_smoke.SAMPLE), help="the clip (default the sample)")
    p.add_argument("--json", type=Path, help="default bench/results/tracking.json")
    p.add_argument("--md", type=Path, help="default bench/results/tracking.md")
    p.add_argument("--allow-dirty", action="store_true", help="measure a tree whose measured files differ from HEAD")
    _smoke.add_args(p, "one photograph per class (a stand-in without faces_dev), 10-frame sequences, 2 s of the clip")
    args = p.parse_args(argv)
    if args.smoke:
        _smoke.refuse_outputs(p, args, ("json", "md"))
    if args.per_class < 1 or args.frames < 6:
        p.error("--per-class must be at least 1 and --frames at least 6")
    args.clip_seconds = 2.0 if args.smoke else None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _accuracy.load_faces_dev(args.data)
        missing = False
    except _accuracy.DataMissing as exc:
        if not args.smoke:  # before the models load: one line naming what to supply
            print(f"bench/tracking.py: error: {exc}", file=sys.stderr)
            return 2
        missing = True
    started = _smoke.begin("bench/tracking.py:", "tracking", "tracking", args, MEASURED)
    if started is None:
        return 2
    revision, json_out, md_out, folder = started
    if args.smoke:
        args.per_class, args.frames = 1, 10
        if missing:
            args.data = str(_smoke.standin_faces_dev(folder / "data"))
    try:
        report = run(args)
    except _accuracy.DataMissing as exc:
        print(f"bench/tracking.py: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, OSError) as exc:  # a missing model, clip or tool: one line
        print(f"bench/tracking.py: error: {exc}", file=sys.stderr)
        return 1
    res = {
        "command": "python bench/tracking.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "revision": revision.record("describe"),
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(),
            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        **report,
    }
    _smoke.write_results(json_out, res, md_out, markdown(res) + "\n", indent=2)
    say(f"wrote {json_out} and {md_out}")
    if args.smoke:
        return _smoke.finish("tracking", res, SMOKE_NUMBERS, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
