"""``cer-stream calibrate`` and ``cer-stream eval``: fit fusion/PFSA, score predictions.

calibrate
    Reads feature dumps (``cer-stream --video FILE --dump-features OUT.jsonl``:
    one JSON object per window, ``{"type": "window", "video", "index", "start",
    "end", "frames": [first, last_exclusive], "fps", "modalities": {name:
    {"basic": [8 floats, BASIC order], "feature": [floats] | null}}}``; other
    record types are skipped) and labels, fits the chosen fusion scheme and,
    where features and basic labels exist, PFSA prototypes and temperature,
    and writes one versioned JSON file (see :class:`Calibration`).

    PFSA prototypes live in one modality's feature space: for the face, the
    face model's penultimate-layer embedding (face-api 256-d, mini-Xception
    128-d, the ensemble 384-d), not its probabilities.  The file records the
    modality and the space (``pfsa.feature_space``: name, dimension, model; a
    modality entry's optional ``"feature_space"`` in the dumps names it, else
    the dimension alone is known), and a run whose model gives features of
    another size refuses the file in one line.

    Labels are either ABAW-style frame label files (a directory of
    ``VIDEO.txt`` or one such file: a header line, then one class index per
    frame, -1 = unlabelled), given to a window by majority over its frames
    (ties go to the lower class index), or a CSV ``video,index,label`` of
    window labels (label as class index or name).  ``--label-kind`` says
    whether indices are BASIC (8) or COMPOUND (7) order.  With compound
    labels the fusion is fitted through PPA (fused basic -> compound); PFSA
    prototypes need basic labels and are skipped.

    Windows of one video overlap by half, so the validation split holds out
    whole videos when there are at least two; otherwise it draws windows.

eval
    Compares predictions with ABAW label files frame by frame (or window by
    window) and prints macro-F1, UAR, per-class F1 and support, and the
    confusion matrix (rows = true class, % per row) as JSON.

Both take typed options (:class:`CalibrateOptions`, :class:`EvalOptions`; the command line in
:mod:`stream.cli.offline` maps its flags onto them).  Bad input raises :class:`CalibrationError`
with a one-line message.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream.core import metrics
from stream.core.labels import BASIC, COMPOUND, basic_name
from stream.fusion.calibration import (  # noqa: F401 (the file format, re-exported from its old home)
    FORMAT,
    VERSION,
    Calibration,
    CalibrationError,
    load_calibration,
)
from stream.fusion.compound import PFSA, TEMPERATURE_BOUNDS, ppa
from stream.fusion.schemes import DIRICHLET_SAMPLES, MHPF, DirichletWeights, Fusion, HierarchicalWeights, train_mhpf

FUSION_CHOICES: tuple[str, ...] = ("mhpf", "dirichlet", "hierarchical", "equal")
LABEL_KINDS: tuple[str, ...] = ("basic", "compound")


# --------------------------------------------------------------------------- data
@dataclass
class Window:
    """One window record of a feature dump."""

    video: str
    index: int
    start: float
    end: float
    frames: tuple[int, int]
    fps: float
    basic: dict[str, np.ndarray]  # modality -> [8]
    features: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> [D]
    feature_spaces: dict[str, dict] = field(default_factory=dict)  # modality -> {"name", "dim", "model"}


def _num_list(value: Any, where: str, what: str, n: int | None = None) -> np.ndarray:
    if not isinstance(value, list) or (n is not None and len(value) != n):
        size = f"{n} " if n is not None else ""
        raise CalibrationError(f"{where}: {what} must be a list of {size}numbers")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(f"{where}: {what} must contain numbers only") from None
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise CalibrationError(f"{where}: {what} must be finite numbers")
    return arr


def read_dumps(paths: Iterable[str | Path]) -> list[Window]:
    """All window records of the feature-dump JSONL files, in file order."""
    windows: list[Window] = []
    for path in map(Path, paths):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CalibrationError(f"cannot read feature dump {path}: {exc.strerror or exc}") from None
        for no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{no}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CalibrationError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise CalibrationError(f"{where}: expected a JSON object")
            if rec.get("type") != "window":
                continue
            try:
                frames = rec["frames"]
                win = Window(
                    video=str(rec["video"]),
                    index=int(rec["index"]),
                    start=float(rec["start"]),
                    end=float(rec["end"]),
                    frames=(int(frames[0]), int(frames[1])),
                    fps=float(rec["fps"]),
                    basic={},
                )
                mods = rec["modalities"]
                if not isinstance(mods, dict):
                    raise TypeError("modalities must be an object")
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise CalibrationError(f"{where}: malformed window record ({exc})") from None
            for name, entry in mods.items():
                if not isinstance(entry, dict) or "basic" not in entry:
                    raise CalibrationError(f"{where}: modality {name!r} has no 'basic' list")
                win.basic[name] = _num_list(entry["basic"], where, f"{name}.basic", len(BASIC))
                feat = entry.get("feature")
                if feat is not None:
                    win.features[name] = _num_list(feat, where, f"{name}.feature")
                    space = entry.get("feature_space")
                    if space is not None:
                        if not isinstance(space, dict):
                            raise CalibrationError(f"{where}: {name}.feature_space must be an object")
                        win.feature_spaces[name] = space
            windows.append(win)
    if not windows:
        raise CalibrationError("the feature dumps hold no window record")
    return windows


def _read_frame_file(path: Path) -> np.ndarray:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CalibrationError(f"cannot read label file {path}: {exc.strerror or exc}") from None
    values = []
    for no, line in enumerate(lines[1:], 2):
        text = line.strip()
        if not text:
            continue
        try:
            values.append(int(text.split(",")[0]))
        except ValueError:
            raise CalibrationError(f"{path}:{no}: expected a class index, got {text[:40]!r}") from None
    return np.asarray(values, dtype=np.int64)


def read_frame_labels(path: str | Path, *, what: str = "label") -> dict[str, np.ndarray]:
    """ABAW-style label files: ``{video: labels per frame (0-based frame index)}``.

    ``path`` is a directory of ``VIDEO.txt`` files or a single such file.  The
    first line of each file is a header; line ``k + 1`` after it is frame ``k``
    (image ``{k+1:05d}.jpg``).
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.txt"))
        if not files:
            raise CalibrationError(f"no *.txt {what} file in {p}")
    elif p.is_file():
        files = [p]
    else:
        raise CalibrationError(f"{what} path {p} does not exist")
    return {f.stem: _read_frame_file(f) for f in files}


def _names(kind: str) -> tuple[str, ...]:
    if kind == "basic":
        return BASIC
    if kind == "compound":
        return COMPOUND
    raise CalibrationError(f"label kind must be basic or compound, not {kind!r}")


def _class_index(text: str, kind: str, where: str) -> int:
    names = _names(kind)
    text = text.strip()
    try:
        idx = int(text)
    except ValueError:
        key = text.replace("_", " ").lower()
        if kind == "compound":
            found = [i for i, n in enumerate(names) if n.lower() == key]
            if not found:
                raise CalibrationError(f"{where}: unknown compound label {text!r}") from None
            return found[0]
        try:
            return BASIC.index(basic_name(text))
        except ValueError:
            raise CalibrationError(f"{where}: unknown basic label {text!r}") from None
    if not -1 <= idx < len(names):
        raise CalibrationError(f"{where}: class index {idx} out of range for {kind} labels")
    return idx


def read_window_labels(path: str | Path, kind: str) -> dict[tuple[str, int], int]:
    """CSV ``video,index,label`` (header optional) -> ``{(video, index): class}``."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CalibrationError(f"cannot read window labels {p}: {exc.strerror or exc}") from None
    out: dict[tuple[str, int], int] = {}
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = [s.strip() for s in line.rsplit(",", 2)]
        if no == 1 and parts[:2] == ["video", "index"]:
            continue
        where = f"{p}:{no}"
        if len(parts) != 3:
            raise CalibrationError(f"{where}: expected 'video,index,label'")
        try:
            index = int(parts[1])
        except ValueError:
            raise CalibrationError(f"{where}: window index {parts[1]!r} is not an integer") from None
        out[(parts[0], index)] = _class_index(parts[2], kind, where)
    return out


def majority_label(frame_labels: np.ndarray, first: int, last: int) -> int:
    """Most frequent label >= 0 in ``frame_labels[first:last]`` (ties: lower class); -1 if none."""
    seg = frame_labels[max(first, 0) : max(last, 0)]
    seg = seg[seg >= 0]
    if seg.size == 0:
        return -1
    return int(np.argmax(np.bincount(seg)))


@dataclass
class Labels:
    """Ground truth as read from disk: per-frame files or per-window CSV (one of the two)."""

    frames: dict[str, np.ndarray] | None = None  # video -> label per frame
    windows: dict[tuple[str, int], int] | None = None  # (video, window index) -> label


def load_labels(path: str | Path, kind: str) -> Labels:
    """Window labels from a ``.csv`` file, else frame labels (directory or ``.txt``)."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".csv":
        return Labels(windows=read_window_labels(p, kind))
    frames = read_frame_labels(p)
    n = len(_names(kind))
    for video, arr in frames.items():
        bad = arr[(arr < -1) | (arr >= n)]
        if bad.size:
            raise CalibrationError(f"label file {video}.txt has class {int(bad[0])}, out of range for {kind} labels")
    return Labels(frames=frames)


def window_labels(windows: Sequence[Window], labels: Labels) -> np.ndarray:
    """Label of each window (-1 where none): by key for window CSVs, majority for frame files."""
    out = np.full(len(windows), -1, dtype=np.int64)
    for i, w in enumerate(windows):
        if labels.windows is not None:
            out[i] = labels.windows.get((w.video, w.index), -1)
        elif labels.frames is not None and w.video in labels.frames:
            out[i] = majority_label(labels.frames[w.video], *w.frames)
    return out


def stack_windows(windows: Sequence[Window], modalities: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``probs [N, M, 8]`` and ``mask [N, M]`` in ``modalities`` order."""
    probs = np.zeros((len(windows), len(modalities), len(BASIC)))
    mask = np.zeros((len(windows), len(modalities)), dtype=bool)
    for i, w in enumerate(windows):
        for j, name in enumerate(modalities):
            if name in w.basic:
                probs[i, j] = w.basic[name]
                mask[i, j] = True
    return probs, mask


def split_windows(videos: Sequence[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices: whole videos held out when there are >= 2, else windows."""
    n = len(videos)
    rng = np.random.default_rng(seed)
    if val_fraction <= 0 or n < 2:
        return np.arange(n), np.arange(0)
    names = sorted(set(videos))
    if len(names) >= 2:
        order = rng.permutation(len(names))
        k = min(max(1, int(round(val_fraction * len(names)))), len(names) - 1)
        held = {names[i] for i in order[:k]}
        is_val = np.array([v in held for v in videos])
    else:
        k = min(max(1, int(round(val_fraction * n))), n - 1)
        is_val = np.zeros(n, dtype=bool)
        is_val[rng.permutation(n)[:k]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


# --------------------------------------------------------------------------- calibrate
@dataclass(frozen=True, kw_only=True)
class CalibrateOptions:
    """Options of ``cer-stream calibrate`` (defaults: the command line's).

    Attributes:
        dumps: feature dumps written by ``--dump-features`` (required).
        labels: a directory or file of ABAW frame labels (``VIDEO.txt``), or a CSV
            ``video,index,label`` of window labels (required).
        out: the calibration file to write (required).
        label_kind: class order of the labels, ``"basic"`` (default) or ``"compound"``.
        fusion: fusion scheme to fit: ``"mhpf"`` (default), ``"dirichlet"``, ``"hierarchical"``
            or ``"equal"`` (plain average).
        heads: MHPF heads (1).
        epochs: MHPF epochs (100).
        patience: MHPF early-stopping patience (25).
        lr: MHPF Adam learning rate (1e-4).
        batch_size: MHPF batch size (64).
        samples: Dirichlet random-search samples (``DIRICHLET_SAMPLES``).
        seed: random seed (0).
        val_fraction: share of videos (or windows) held out for validation (0.2).
        modalities: modality order, comma-separated or a sequence of names; ``None`` (default):
            the order of first appearance in the dumps.
        pfsa_modality: modality whose features build PFSA prototypes; ``None`` (default): the
            first with features.
        pfsa: fit PFSA (default ``True``).
        temperature: a fixed PFSA temperature instead of fitting one (default ``None``: fit).
    """

    dumps: Sequence[str | Path]
    labels: str | Path
    out: str | Path
    label_kind: str = "basic"
    fusion: str = "mhpf"
    heads: int = 1
    epochs: int = 100
    patience: int = 25
    lr: float = 1e-4
    batch_size: int = 64
    samples: int = DIRICHLET_SAMPLES
    seed: int = 0
    val_fraction: float = 0.2
    modalities: str | Sequence[str] | None = None
    pfsa_modality: str | None = None
    pfsa: bool = True
    temperature: float | None = None


def _fit_fusion(args: CalibrateOptions, probs, mask, y, tr, va, target: str) -> Fusion:
    p, m, t = probs[tr], mask[tr], y[tr]
    if args.fusion == "equal":
        return MHPF.equal(probs.shape[1], probs.shape[2])
    if args.fusion == "mhpf":
        try:
            import torch  # noqa: F401  (only to give a clear message when it is missing)
        except ImportError:
            raise CalibrationError(
                "--fusion mhpf needs torch (pip install 'cer-stream[train]'); "
                "or use --fusion dirichlet|hierarchical|equal"
            ) from None
        val = (probs[va], mask[va], y[va]) if va.size and (y[va] >= 0).any() else None
        return train_mhpf(
            p,
            m,
            t,
            heads=args.heads,
            epochs=args.epochs,
            patience=args.patience,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            val=val,
            val_fraction=0.0,
            target=target,
        )
    cls = DirichletWeights if args.fusion == "dirichlet" else HierarchicalWeights
    return cls().fit(p, m, t, target=target, n_samples=args.samples, seed=args.seed)


def _decision_f1(fusion: Fusion, probs, mask, y, target: str) -> float | None:
    keep = (y >= 0) & mask.any(axis=1)
    if not keep.any():
        return None
    fused = fusion.fuse(probs[keep], mask[keep])
    scores = ppa(fused) if target == "compound" else fused
    return metrics.macro_f1(y[keep], np.argmax(scores, axis=1))


def _fit_pfsa(
    args: CalibrateOptions, windows, modalities, y, tr, va
) -> tuple[PFSA | None, str | None, str, dict | None]:
    """PFSA on one modality's features; returns (pfsa, modality, note for the summary, the
    feature space {"name", "dim", "model"})."""
    with_feat = [m for m in modalities if any(m in w.features for w in windows)]
    if not args.pfsa:
        return None, None, "PFSA: off", None
    if args.pfsa_modality is not None:
        if args.pfsa_modality not in with_feat:
            raise CalibrationError(
                f"--pfsa-modality {args.pfsa_modality!r} has no features "
                f"in the dumps (with features: {with_feat or 'none'})"
            )
        name = args.pfsa_modality
    elif with_feat:
        name = with_feat[0]
    else:
        return None, None, "PFSA: no features in the dumps", None
    if args.label_kind != "basic":
        return None, None, "PFSA: skipped (prototypes need basic labels)", None
    dims = {w.features[name].size for w in windows if name in w.features}
    if len(dims) != 1:
        raise CalibrationError(f"modality {name!r} has features of several sizes: {sorted(dims)}")
    dim = dims.pop()
    space = _feature_space(windows, name, dim)

    def gather(idx: np.ndarray):
        rows = [i for i in idx if name in windows[i].features and y[i] >= 0]
        feats = np.array([windows[i].features[name] for i in rows]).reshape(len(rows), dim)
        pred = np.array([int(np.argmax(windows[i].basic[name])) for i in rows], dtype=np.int64)
        return feats, y[rows], pred

    feats, labels, pred = gather(tr)
    pfsa = PFSA()
    try:
        pfsa.fit(feats, labels, pred)
    except ValueError as exc:
        return None, None, f"PFSA: not fitted ({exc})", None
    if args.temperature is not None:
        pfsa.temperature = float(args.temperature)
        how = "given"
    else:
        vf, vl, _ = gather(va)
        if vl.size == 0:
            vf, vl = feats, labels
        try:
            # Only basic labels here: fit T on the basic prototypes (same space, same scale).
            pfsa.fit_temperature(vf, vl, level="basic")
            how = "fitted on basic labels"
            if pfsa.temperature <= TEMPERATURE_BOUNDS[0] * 1.01:
                how += ", at the lower bound: the labels are separable here"
        except ValueError:
            how = "default"
    pfsa.meta = {"temperature": how, "dim": int(feats.shape[1])}
    have = len(BASIC) - len(pfsa.missing_basic)
    where = f" ({space['name']}{', model ' + str(space['model']) if space.get('model') else ''})"
    note = (
        f"PFSA on {name!r}: {feats.shape[1]}-d{where}, {have}/{len(BASIC)} basic prototypes"
        f"{' (missing ' + ', '.join(pfsa.missing_basic) + ')' if pfsa.missing_basic else ''}, "
        f"T={pfsa.temperature:.4g} ({how})"
    )
    return pfsa, name, note, space


def _feature_space(windows, name: str, dim: int) -> dict:
    """The feature space of modality ``name`` as the dumps name it (one for all windows)."""
    found = {
        json.dumps({k: s.get(k) for k in ("name", "model")}, sort_keys=True)
        for w in windows
        if name in w.features
        for s in [w.feature_spaces.get(name)]
        if s
    }
    if len(found) > 1:
        raise CalibrationError(f"modality {name!r} has features from several spaces: {sorted(found)}")
    space = json.loads(found.pop()) if found else {"name": f"{name}.feature", "model": None}
    return {"name": space.get("name") or f"{name}.feature", "dim": int(dim), "model": space.get("model")}


def run_calibrate(args: CalibrateOptions) -> int:
    """Fit and write a calibration file; prints a summary to stderr.  Returns 0."""
    if not 0 <= args.val_fraction < 1:
        raise CalibrationError("--val-fraction must be in [0, 1)")
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise CalibrationError("--temperature must be a positive number")
    windows = read_dumps(args.dumps)
    seen: list[str] = []
    for w in windows:
        seen.extend(n for n in w.basic if n not in seen)
    if args.modalities:
        names = args.modalities.split(",") if isinstance(args.modalities, str) else args.modalities
        modalities = [s.strip() for s in names if s.strip()]
        unknown = [m for m in modalities if m not in seen]
        if unknown or len(set(modalities)) != len(modalities):
            raise CalibrationError(
                f"--modalities {args.modalities!r}: unknown or repeated names (the dumps have {', '.join(seen)})"
            )
    else:
        modalities = seen
    if not modalities:
        raise CalibrationError("no window in the dumps has any modality")
    y = window_labels(windows, load_labels(args.labels, args.label_kind))
    probs, mask = stack_windows(windows, modalities)
    usable = (y >= 0) & mask.any(axis=1)
    if not usable.any():
        raise CalibrationError(
            "no window has both a label and a modality: do the video names in the dumps match the label files?"
        )
    idx = np.flatnonzero(usable)
    tr_rel, va_rel = split_windows([windows[i].video for i in idx], args.val_fraction, args.seed)
    tr, va = idx[tr_rel], idx[va_rel]
    target = args.label_kind
    try:
        fusion = _fit_fusion(args, probs, mask, y, tr, va, target)
    except ValueError as exc:
        raise CalibrationError(f"fusion fit failed: {exc}") from None
    f1_tr = _decision_f1(fusion, probs[tr], mask[tr], y[tr], target)
    f1_va = _decision_f1(fusion, probs[va], mask[va], y[va], target) if va.size else None
    pfsa, pfsa_mod, pfsa_note, pfsa_space = _fit_pfsa(args, windows, modalities, y, tr, va)
    meta: dict[str, Any] = {
        "fusion": args.fusion,
        "label_kind": args.label_kind,
        "seed": args.seed,
        "windows": int(len(windows)),
        "train_windows": int(tr.size),
        "val_windows": int(va.size),
        "videos": sorted({w.video for w in windows}),
        "train_macro_f1": f1_tr,
        "val_macro_f1": f1_va,
    }
    Calibration(tuple(modalities), fusion, pfsa, pfsa_mod, meta, pfsa_space).save(args.out)
    val_text = f"{f1_va:.3f}" if f1_va is not None else "n/a"
    print(
        f"calibrate: {len(windows)} windows, {tr.size} train / {va.size} val "
        f"({len(meta['videos'])} videos), modalities {', '.join(modalities)}",
        file=sys.stderr,
    )
    print(
        f"calibrate: fusion {args.fusion} ({target} labels): macro-F1 train {f1_tr:.3f}, val {val_text}",
        file=sys.stderr,
    )
    print(f"calibrate: {pfsa_note}", file=sys.stderr)
    print(f"calibrate: wrote {args.out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- eval
@dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """Options of ``cer-stream eval`` (defaults: the command line's).

    Attributes:
        pred: the analyzer's ``--csv`` output (``VIDEO/00001.jpg,CLASS`` rows), ABAW label txt
            file(s), or at window level a CSV ``video,index,label`` (required).
        labels: an ABAW label txt file or directory (or a window CSV at window level; required).
        kind: class order of predictions and labels, ``"compound"`` (default) or ``"basic"``.
        level: ``"frame"`` (default) or ``"window"``.
        windows: at window level with frame labels, the dumps giving each window's frames
            (default ``None``).
        over: average over ``"all"`` classes (ABAW; default) or only the ``"observed"`` ones.
        plot: where to draw the confusion matrix (PNG; default ``None``: no plot).
    """

    pred: str | Path
    labels: str | Path
    kind: str = "compound"
    level: str = "frame"
    windows: Sequence[str | Path] | None = None
    over: str = "all"
    plot: str | Path | None = None


def read_frame_predictions(path: str | Path, kind: str) -> dict[str, dict[int, int]]:
    """``{video: {frame (0-based): class}}`` from the ``--csv`` layout or ABAW txt files.

    The CSV layout is a header starting ``image_location`` (``image_location,label``
    or the ABAW header with class names that ``--csv`` writes) and rows
    ``VIDEO/00001.jpg,3`` (1-based frame number, class index).
    """
    p = Path(path)
    n = len(_names(kind))
    first = ""
    if p.is_file():
        with open(p, encoding="utf-8") as fh:
            first = fh.readline()
    if not first.startswith("image_location"):
        frames = read_frame_labels(p, what="prediction")
        for video, arr in frames.items():
            if np.any((arr < -1) | (arr >= n)):
                raise CalibrationError(f"prediction file {video}.txt has a class out of range for {kind} labels")
        return {v: {i: int(c) for i, c in enumerate(arr) if c >= 0} for v, arr in frames.items()}
    out: dict[str, dict[int, int]] = {}
    for no, line in enumerate(p.read_text(encoding="utf-8").splitlines()[1:], 2):
        if not line.strip():
            continue
        where = f"{p}:{no}"
        try:
            loc, label = line.rsplit(",", 1)
            video, image = loc.strip().rsplit("/", 1)
            frame = int(Path(image).stem) - 1
            cls = int(label)
        except ValueError:
            raise CalibrationError(f"{where}: expected 'VIDEO/00001.jpg,CLASS'") from None
        if not -1 <= cls < n or frame < 0:
            raise CalibrationError(f"{where}: class {cls} or frame {frame + 1} out of range")
        if cls >= 0:
            out.setdefault(video, {})[frame] = cls
    return out


def _pairs_frames(pred: dict[str, dict[int, int]], labels: dict[str, np.ndarray]):
    y_true, y_pred, missing = [], [], 0
    for video, lab in labels.items():
        got = pred.get(video, {})
        for frame in np.flatnonzero(lab >= 0):
            if int(frame) in got:
                y_true.append(int(lab[frame]))
                y_pred.append(got[int(frame)])
            else:
                missing += 1
    return y_true, y_pred, missing


def _pairs_windows(args: EvalOptions):
    pred = read_window_labels(args.pred, args.kind)
    labels = load_labels(args.labels, args.kind)
    if labels.windows is not None:
        truth = {k: v for k, v in labels.windows.items() if v >= 0}
    else:
        if not args.windows:
            raise CalibrationError("--level window with frame label files needs --windows DUMP.jsonl")
        wins = read_dumps(args.windows)
        truth = {(w.video, w.index): int(t) for w, t in zip(wins, window_labels(wins, labels)) if t >= 0}
    y_true, y_pred, missing = [], [], 0
    for key, t in truth.items():
        if pred.get(key, -1) >= 0:
            y_true.append(t)
            y_pred.append(pred[key])
        else:
            missing += 1
    return y_true, y_pred, missing


def plot_confusion(result: dict[str, Any], path: str | Path, *, title: str = "") -> None:
    """Draw ``result["confusion"]`` (% per true class) as an annotated heat map PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.asarray(result["confusion"], dtype=float)
    names = result["labels"]
    size = 1.0 + 0.75 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    try:
        im = ax.imshow(conf, vmin=0, vmax=100, cmap="Blues")
        for i in range(conf.shape[0]):
            for j in range(conf.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{conf[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if conf[i, j] > 50 else "black",
                )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(
            title
            or f"macro-F1 {100 * result['macro_f1']:.1f}%, UAR {100 * result['uar']:.1f}% (n={result.get('n', '?')})",
            fontsize=9,
        )
        fig.colorbar(im, ax=ax, label="% of true class")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise CalibrationError(f"cannot write plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def evaluate(args: EvalOptions) -> dict[str, Any]:
    """The result dict that ``eval`` prints."""
    names = _names(args.kind)
    if args.level == "frame":
        labels = load_labels(args.labels, args.kind)
        if labels.frames is None:
            raise CalibrationError("frame-level eval needs ABAW label txt files, not a window CSV")
        y_true, y_pred, missing = _pairs_frames(read_frame_predictions(args.pred, args.kind), labels.frames)
    else:
        y_true, y_pred, missing = _pairs_windows(args)
    if not y_true:
        raise CalibrationError(f"no labelled {args.level} has a prediction: do the video names match?")
    result = metrics.report(y_true, y_pred, names, over=args.over)
    result.update({"kind": args.kind, "level": args.level, "n": len(y_true), "missing": missing})
    return result


def run_eval(args: EvalOptions) -> int:
    """Print the evaluation JSON to stdout (and draw ``--plot``).  Returns 0."""
    result = evaluate(args)
    if args.plot:
        plot_confusion(result, args.plot)
    print(json.dumps(result, indent=2))
    return 0
