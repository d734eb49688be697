"""Training (and measuring) the shipped voice head: ``cer-stream train-head --kind voice``.

Reads acted-speech corpora in their upstream layouts (:func:`read_corpus`):

* ``ravdess``: ``Actor_XX/03-01-EE-II-SS-RR-AA.wav`` (Livingstone & Russo 2018; speech files only,
  vocal channel 01; EE: 01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust,
  08 surprised; AA the actor). **calm -> Neutral**: calm is a low-arousal neutral delivery, not a
  state outside the basic seven (which is what Other means here), and folding it in also
  balances RAVDESS's half-sized neutral class;
* ``nemo``: ``data.tsv`` (file_id, emotion, speaker_id, ...) and ``samples/`` (Christop 2024);
  rows whose file is not in ``samples/`` are skipped (counted in the log);
* ``urdu``: ``Angry/ Happy/ Neutral/ Sad/`` with ``SGX_FXX_EYY.wav`` names (Latif et al. 2018;
  SGX is the speaker);
* ``tess``: folders ``OAF_<emotion>/`` and ``YAF_<emotion>/`` anywhere below the folder
  (Pichora-Fuller & Dupuis 2020; the speaker is OAF or YAF).

Features (:class:`stream.modalities.speech.voice.VoiceFeatures`) are extracted in at most two
processes (one ONNX Runtime thread each, niced) with a progress bar, and cached per clip in
``$CER_STREAM_CACHE/voice-features/`` (keyed by the folder, each file's size and mtime, the
feature version and the Whisper ``model.bin`` sha256), so a second run, or the benchmark
(``bench/accuracy.py``), only refits. The head is softmax regression (scikit-learn's
``LogisticRegression``, lbfgs, C = 0.01, balanced class weights) on source-mean-normalised
features: each corpus's mean vector is subtracted (live: the stream's running mean), then
standardised with the training mean and std. Before fitting, the same design is scored with
speakers held out (GroupKFold) within each training corpus; the scores go into the head's meta.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("cer_stream.voice_train")

CORPORA = ("ravdess", "nemo", "urdu", "tess")
TRAIN_CORPORA = ("ravdess", "nemo")
LICENSES = {
    "ravdess": "CC BY-NC-SA 4.0 (Livingstone & Russo 2018, PLoS ONE 13(5): e0196391)",
    "nemo": "CC BY-NC-SA 4.0 (Christop 2024, LREC-COLING)",
    "urdu": "research use only (Latif et al. 2018, 'Cross Lingual Speech Emotion Recognition: Urdu vs. Western Languages')",
    "tess": "CC BY-NC-ND 4.0 (Pichora-Fuller & Dupuis 2020, Toronto emotional speech set, Borealis)",
}
HEAD_LICENSE = "CC BY-NC-SA 4.0 (trained on RAVDESS and nEMO, both CC BY-NC-SA 4.0): non-commercial use"
C_DEFAULT = 0.01
#: At most this many clips per speaker and class of a training corpus (seed 0): keeps nEMO's 4,481
#: clips to about 1,800 and leaves RAVDESS (at most 8) untouched. Held-out corpora are used whole.
PER_GROUP_DEFAULT = 34
PROCESSES_DEFAULT = 2
CACHE_DIR = "voice-features"

_RAVDESS = {
    "01": "Neutral",
    "02": "Neutral",  # calm
    "03": "Happiness",
    "04": "Sadness",
    "05": "Anger",
    "06": "Fear",
    "07": "Disgust",
    "08": "Surprise",
}
_WORDS = {
    "anger": "Anger",
    "angry": "Anger",
    "disgust": "Disgust",
    "fear": "Fear",
    "happiness": "Happiness",
    "happy": "Happiness",
    "neutral": "Neutral",
    "sadness": "Sadness",
    "sad": "Sadness",
    "surprised": "Surprise",
    "surprise": "Surprise",
    "pleasant_surprise": "Surprise",
    "pleasant_surprised": "Surprise",
    "ps": "Surprise",
}
_URDU = {"Angry": "Anger", "Happy": "Happiness", "Neutral": "Neutral", "Sad": "Sadness"}
_AUDIO = (".wav", ".flac", ".mp3", ".ogg")


class VoiceDataError(ValueError):
    """A corpus folder that is none of the known layouts, or a training run that cannot go on."""


@dataclass
class Clip:
    path: str  # relative to the corpus folder
    label: str  # basic name
    speaker: str


# ---------------------------------------------------------------------------------------------
# Corpus layouts
# ---------------------------------------------------------------------------------------------
def _ravdess(folder: Path) -> list[Clip]:
    clips = []
    for p in sorted(folder.rglob("Actor_*/03-01-*.wav")):
        parts = p.stem.split("-")
        if len(parts) == 7 and parts[2] in _RAVDESS:
            clips.append(Clip(p.relative_to(folder).as_posix(), _RAVDESS[parts[2]], f"ravdess_{parts[6]}"))
    return clips


def _nemo(folder: Path) -> list[Clip]:
    table = folder / "data.tsv"
    if not table.is_file() or not (folder / "samples").is_dir():
        return []
    clips, missing = [], 0
    with open(table, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            label = _WORDS.get(str(row.get("emotion", "")).strip().lower())
            name = str(row.get("file_id", "")).strip()
            if label is None or not name:
                continue
            if not (folder / "samples" / name).is_file():
                missing += 1
                continue
            clips.append(Clip(f"samples/{name}", label, f"nemo_{str(row.get('speaker_id', '')).strip()}"))
    if missing:
        log.info("nemo: %d rows of data.tsv have no file in samples/ (skipped)", missing)
    return sorted(clips, key=lambda c: c.path)


def _urdu(folder: Path) -> list[Clip]:
    clips = []
    for name, label in _URDU.items():
        for p in sorted((folder / name).glob("*.wav")) if (folder / name).is_dir() else []:
            clips.append(Clip(p.relative_to(folder).as_posix(), label, f"urdu_{p.stem.split('_')[0]}"))
    return clips


def _tess(folder: Path) -> list[Clip]:
    clips = []
    for d in sorted(folder.rglob("*")):
        if not d.is_dir() or d.name[:4].upper() not in ("OAF_", "YAF_"):
            continue
        label = _WORDS.get(d.name[4:].lower())
        if label is None:
            continue
        for p in sorted(d.glob("*.wav")):
            clips.append(Clip(p.relative_to(folder).as_posix(), label, f"tess_{d.name[:3].upper()}"))
    return clips


_READERS: dict[str, tuple[Callable[[Path], list[Clip]], str]] = {
    "ravdess": (_ravdess, "Actor_XX/03-01-EE-II-SS-RR-AA.wav files"),
    "nemo": (_nemo, "data.tsv and samples/ with its files"),
    "urdu": (_urdu, "Angry/ Happy/ Neutral/ Sad/ folders of .wav files"),
    "tess": (_tess, "OAF_<emotion>/ and YAF_<emotion>/ folders of .wav files"),
}


def read_corpus(kind: str, folder: str | Path) -> list[Clip]:
    """The clips of a corpus folder in its upstream layout; :class:`VoiceDataError` (one line)
    when the folder is not that corpus."""
    if kind not in _READERS:
        raise VoiceDataError(f"unknown corpus {kind!r}; known: {', '.join(CORPORA)}")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise VoiceDataError(f"{kind}: {folder} is not a folder")
    reader, expected = _READERS[kind]
    clips = reader(folder)
    if not clips:
        raise VoiceDataError(f"{kind}: {folder} is not a {kind} folder (expected {expected})")
    return clips


def cap_per_group(clips: list[Clip], per_group: int | None, seed: int = 0) -> list[Clip]:
    """At most ``per_group`` clips per (speaker, label), drawn with ``seed``; order kept."""
    if not per_group:
        return clips
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(clips):
        groups.setdefault((c.speaker, c.label), []).append(i)
    keep: set[int] = set()
    for idx in groups.values():
        keep.update(idx if len(idx) <= per_group else rng.choice(idx, per_group, replace=False).tolist())
    return [c for i, c in enumerate(clips) if i in keep]


def index_sha256(clips: Sequence[Clip]) -> str:
    """sha256 of the index (``path,label,speaker`` lines, in order)."""
    text = "".join(f"{c.path},{c.label},{c.speaker}\n" for c in clips)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Features, in up to two processes, cached per clip
# ---------------------------------------------------------------------------------------------
_WORKER: Any = None


def _init_worker(whisper_dir: str | None, nice: int, subprocess: bool = True) -> None:
    global _WORKER
    if subprocess:
        os.environ["OMP_NUM_THREADS"] = "1"
    if nice:
        try:
            os.nice(nice)
        except OSError:
            pass
    from stream.modalities.speech.voice import VoiceFeatures

    _WORKER = VoiceFeatures(whisper_dir, backend="onnxruntime", device="cpu", intra_op_threads=1).load()


def _extract(path: str) -> tuple[str, str, np.ndarray | None, str | None]:
    from stream.io.capture import decode_audio_file

    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    try:
        audio = decode_audio_file(path)
        feature, _ = _WORKER(audio)
    except Exception as exc:  # a damaged file: skipped with its reason
        return path, digest, None, f"{type(exc).__name__}: {exc}"
    return path, digest, feature, None if feature is not None else "under 0.3 s of speech"


def _cache_file(cache_dir: Path, kind: str, folder: Path, model_sha: str) -> Path:
    from stream.modalities.speech.voice import FEATURE_VERSION

    where = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return cache_dir / CACHE_DIR / f"{kind}-{where}-f{FEATURE_VERSION}-{model_sha[:16]}.npz"


@dataclass
class CorpusFeatures:
    kind: str
    folder: Path
    clips: list[Clip]
    X: np.ndarray  # [n, 1093]
    y: np.ndarray  # basic names
    speakers: np.ndarray
    file_sha256: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def data_sha256(self) -> str:
        text = "".join(f"{c.path} {s}\n" for c, s in zip(self.clips, self.file_sha256, strict=True))
        return hashlib.sha256(text.encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        labels, counts = np.unique(self.y, return_counts=True)
        return {
            "corpus": self.kind,
            "clips": len(self.clips),
            "speakers": len(set(self.speakers.tolist())),
            "classes": {str(k): int(v) for k, v in zip(labels, counts, strict=True)},
            "skipped": len(self.skipped),
            "index_sha256": index_sha256(self.clips),
            "data_sha256": self.data_sha256(),
            "license": LICENSES[self.kind],
        }


def corpus_features(
    kind: str,
    folder: str | Path,
    *,
    per_group: int | None = PER_GROUP_DEFAULT,
    processes: int = PROCESSES_DEFAULT,
    whisper_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    nice: int = 10,
    progress: bool = True,
) -> CorpusFeatures:
    """Features of every clip of a corpus (see the module docstring)."""
    from engines.models.storage import default_cache_dir
    from engines.models.whisper_base import model_dir
    from engines.models.whisper_encoder import model_sha256

    folder = Path(folder).expanduser()
    clips = cap_per_group(read_corpus(kind, folder), per_group)
    wdir = Path(whisper_dir) if whisper_dir is not None else model_dir()
    model_sha = model_sha256(wdir)
    cache = _cache_file(Path(cache_dir) if cache_dir else default_cache_dir(), kind, folder, model_sha)
    known: dict[str, tuple[int, float, str, np.ndarray]] = {}
    if use_cache and cache.is_file():
        with np.load(cache, allow_pickle=False) as d:
            for p, size, mtime, sha, x in zip(d["path"], d["size"], d["mtime"], d["sha256"], d["X"], strict=True):
                known[str(p)] = (int(size), float(mtime), str(sha), x)

    def fresh(c: Clip) -> bool:
        st = (folder / c.path).stat()
        k = known.get(c.path)
        return k is not None and k[0] == st.st_size and k[1] == st.st_mtime

    todo = [c for c in clips if not fresh(c)]
    results: dict[str, tuple[str, np.ndarray | None, str | None]] = {}
    if todo:
        from tqdm import tqdm

        paths = [str(folder / c.path) for c in todo]
        bar = tqdm(total=len(paths), desc=f"voice features {kind}", unit="clip", disable=not progress, file=sys.stderr)
        if processes <= 1:
            _init_worker(str(wdir), 0, subprocess=False)
            for p in paths:
                out = _extract(p)
                results[out[0]] = out[1:]
                bar.update()
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(processes, _init_worker, (str(wdir), nice)) as pool:
                for out in pool.imap_unordered(_extract, paths, chunksize=4):
                    results[out[0]] = out[1:]
                    bar.update()
        bar.close()
    rows, shas, skipped = [], [], {}
    store: dict[str, tuple[int, float, str, np.ndarray]] = dict(known)
    kept: list[Clip] = []
    for c in clips:
        full = str(folder / c.path)
        if full in results:
            sha, x, why = results[full]
            if x is None:
                skipped[c.path] = why or "no feature"
                continue
            st = (folder / c.path).stat()
            store[c.path] = (st.st_size, st.st_mtime, sha, x)
        entry = store[c.path]
        kept.append(c)
        shas.append(entry[2])
        rows.append(entry[3])
    if skipped:
        log.warning("%s: %d clips skipped (first: %s)", kind, len(skipped), next(iter(skipped.items())))
    if use_cache and results:
        cache.parent.mkdir(parents=True, exist_ok=True)
        names = sorted(store)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            path=np.array(names),
            size=np.array([store[n][0] for n in names], np.int64),
            mtime=np.array([store[n][1] for n in names], np.float64),
            sha256=np.array([store[n][2] for n in names]),
            X=np.stack([store[n][3] for n in names]).astype(np.float32),
        )
        os.replace(tmp, cache)
    if not kept:
        raise VoiceDataError(f"{kind}: no clip of {folder} gave features")
    return CorpusFeatures(
        kind,
        folder,
        kept,
        np.stack(rows).astype(np.float64),
        np.array([c.label for c in kept]),
        np.array([c.speaker for c in kept]),
        shas,
        skipped,
    )


# ---------------------------------------------------------------------------------------------
# Fitting and scoring
# ---------------------------------------------------------------------------------------------
def _sklearn():
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import f1_score
        from sklearn.model_selection import GroupKFold
    except ImportError:
        raise VoiceDataError("training the voice head needs scikit-learn: pip install 'scikit-learn>=1.3'") from None
    return LogisticRegression, f1_score, GroupKFold


@dataclass
class Fit:
    weight: np.ndarray
    bias: np.ndarray
    labels: tuple[str, ...]
    feat_mean: np.ndarray
    feat_std: np.ndarray

    def log_probs(self, Z: np.ndarray) -> np.ndarray:
        logits = ((Z - self.feat_mean) / self.feat_std) @ self.weight.T + self.bias
        logits -= logits.max(1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(1, keepdims=True))


def fit(Z: np.ndarray, y: np.ndarray, C: float = C_DEFAULT) -> Fit:
    """Softmax regression on standardised, already source-mean-normalised features."""
    LogisticRegression, _, _ = _sklearn()
    mu, sd = Z.mean(0), Z.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=1000, class_weight="balanced").fit((Z - mu) / sd, y)
    return Fit(
        clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64), tuple(str(c) for c in clf.classes_), mu, sd
    )


def predict(model: Fit, Z: np.ndarray, allowed: Sequence[str] | None = None) -> np.ndarray:
    """Argmax labels; with ``allowed``, over those classes only (a test corpus without Disgust
    is scored over the classes it has, as the research protocol did)."""
    lp = model.log_probs(Z)
    if allowed is not None:
        lp[:, ~np.isin(np.array(model.labels), np.asarray(allowed))] = -np.inf
    return np.array(model.labels)[lp.argmax(1)]


def scores(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Macro-F1 over the true classes and per-class F1."""
    _, f1_score, _ = _sklearn()
    classes = sorted(set(y.tolist()))
    per = f1_score(y, pred, labels=classes, average=None, zero_division=0)
    return {
        "macro_f1": round(float(np.mean(per)), 4),
        "per_class_f1": {c: round(float(v), 4) for c, v in zip(classes, per, strict=True)},
        "clips": len(y),
    }


def within_corpus(cf: CorpusFeatures, C: float = C_DEFAULT, folds: int = 4) -> dict[str, Any]:
    """Speakers held out: GroupKFold by speaker (at most ``folds``), source-mean per corpus."""
    _, _, GroupKFold = _sklearn()
    Z = cf.X - cf.X.mean(0)
    k = min(folds, len(set(cf.speakers.tolist())))
    if k < 2:
        return {"skipped": "fewer than two speakers"}
    pred = np.empty(len(cf.y), dtype=object)
    for tr, te in GroupKFold(k).split(Z, cf.y, cf.speakers):
        pred[te] = predict(fit(Z[tr], cf.y[tr], C), Z[te], sorted(set(cf.y[te].tolist())))
    out = scores(cf.y, pred.astype(str))
    out["folds"] = k
    return out


def head_scores(head, cf: CorpusFeatures) -> dict[str, Any]:
    """The shipped head on a whole corpus, its source mean = the corpus mean, argmax over the
    corpus's classes (``macro_f1``) and over all 7 (``macro_f1_all_classes``)."""
    probs = head.probs(cf.X, cf.X.mean(0))
    labels = np.array(head.labels)
    have = np.isin(labels, np.unique(cf.y))
    restricted = np.where(have[None], probs, -1.0)
    out = scores(cf.y, labels[restricted.argmax(1)])
    out["macro_f1_all_classes"] = scores(cf.y, labels[probs.argmax(1)])["macro_f1"]
    return out


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainVoiceOptions:
    """Options of ``cer-stream train-head --kind voice``.

    Attributes:
        corpora: (kind, folder) pairs, kinds from :data:`CORPORA` (the shipped head: ravdess and nemo).
        out: where to write the head (default ``stream/heads/voice.npz``).
        C: inverse L2 strength of the regression (default 0.01).
        per_group: at most N clips per speaker and class of the training corpora (seed 0; 0: all);
            the evaluation corpora are used whole.
        processes: feature extraction processes (1 or 2).
        cache: read and write cached features.
        evaluate: (kind, folder) pairs scored with the new head (cross-corpus) into its meta.
    """

    corpora: Sequence[tuple[str, Path]]
    out: Path | None = None
    C: float = C_DEFAULT
    per_group: int = PER_GROUP_DEFAULT
    processes: int = PROCESSES_DEFAULT
    cache: bool = True
    evaluate: Sequence[tuple[str, Path]] = ()


def _recipe(model_sha: str) -> dict[str, Any]:
    from stream.modalities.speech.voice import FEATURE_VERSION, FULL_MEAN_WINDOWS

    return {
        "feature_version": FEATURE_VERSION,
        "audio": "16 kHz mono; energy VAD (10 ms hops, 25 ms frames): speech = within 35 dB of the 95th-percentile "
        "frame energy and above -55 dBFS; trim to speech +-100 ms; at most the middle 6 s",
        "whisper": {
            "model_bin_sha256": model_sha,
            "input": "faster-whisper FeatureExtractor log-mel (80 bins) of the trimmed clip alone, NOT padded to 30 s",
            "layers": "W2-3: the outputs of encoder blocks 2 and 3 (CTranslate2 encoder/layer_1, layer_2)",
            "pool": "per block [mean(512), std(512)] over encoder frames whose two mel frames hold speech; "
            "the two pooled vectors averaged element-wise (1024 values)",
        },
        "prosodic": "stream.modalities.speech.prosody.prosodic: 69 values",
        "order": "whisper mean(512), whisper std(512), prosodic(69)",
        "normalisation": "z = x - m, m = the source's mean feature vector (training: each corpus's mean; live: running "
        f"mean of the stream's speech windows, blended with source_mean_fallback until {FULL_MEAN_WINDOWS} windows); "
        "then (z - feat_mean) / feat_std. Never per speaker.",
        "classifier": "softmax logistic regression (scikit-learn lbfgs), class_weight balanced",
    }


def train(options: TrainVoiceOptions, *, progress: bool = True) -> dict[str, Any]:
    """Extract, score within corpus, fit on all, score the evaluation corpora, write the head."""
    from engines.models.whisper_base import model_dir
    from engines.models.whisper_encoder import model_sha256
    from stream.modalities.speech.voice import HEAD_PATH, VoiceHead

    if not options.corpora:
        raise VoiceDataError("no training corpus (give --corpus KIND=DIR)")
    for kind, folder in [*options.corpora, *options.evaluate]:
        read_corpus(kind, folder)  # fail fast on a bad folder, before any extraction
    t0 = time.time()
    model_sha = model_sha256(model_dir())
    kw = {
        "per_group": options.per_group or None,
        "processes": options.processes,
        "use_cache": options.cache,
        "progress": progress,
    }
    train_sets = [corpus_features(kind, folder, **kw) for kind, folder in options.corpora]  # type: ignore[arg-type]
    within = {cf.kind: within_corpus(cf, options.C) for cf in train_sets}
    Z = np.vstack([cf.X - cf.X.mean(0) for cf in train_sets])
    y = np.concatenate([cf.y for cf in train_sets])
    model = fit(Z, y, options.C)
    fallback = np.vstack([cf.X for cf in train_sets]).mean(0)
    out = Path(options.out) if options.out is not None else HEAD_PATH
    meta: dict[str, Any] = {
        "kind": "voice",
        "design": {"features": "W2-3+P", "norm": "source-mean", "C": options.C, "augmentation": None},
        "classes_map": "RAVDESS calm -> Neutral (a low-arousal neutral delivery, not a state outside the basic "
        "seven); Other is never predicted (no corpus has it)",
        "data": [cf.summary() for cf in train_sets],
        "per_speaker_class_cap": options.per_group or None,
        "recipe": _recipe(model_sha),
        "license": HEAD_LICENSE,
        "within_corpus_speakers_held_out": within,
        "command": "cer-stream train-head --kind voice "
        + " ".join(f"--corpus {k}=DIR" for k, _ in options.corpora)
        + "".join(f" --eval {k}=DIR" for k, _ in options.evaluate),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")

    def write() -> None:
        np.savez(
            tmp,
            weight=model.weight.astype(np.float32),
            bias=model.bias.astype(np.float32),
            labels=np.array(model.labels),
            feat_mean=model.feat_mean.astype(np.float32),
            feat_std=model.feat_std.astype(np.float32),
            source_mean_fallback=fallback.astype(np.float32),
            meta=np.array(json.dumps(meta, sort_keys=True)),
        )
        os.replace(tmp, out)

    write()
    if options.evaluate:
        head = VoiceHead.load(out)
        cross = {}
        for kind, folder in options.evaluate:
            cf = corpus_features(kind, folder, **{**kw, "per_group": None})  # type: ignore[arg-type]
            cross[kind] = {**head_scores(head, cf), "data": cf.summary()}
        meta["cross_corpus_held_out"] = cross
        write()
    meta["seconds"] = round(time.time() - t0, 1)
    return {"out": str(out), **meta}


def run_train_voice(options: TrainVoiceOptions) -> int:
    """The command: train, print a short summary, exit status."""
    from engines.models.whisper_base import WhisperBaseMissing

    try:
        result = train(options)
    except (VoiceDataError, WhisperBaseMissing) as exc:
        print(f"cer-stream train-head: {exc}", file=sys.stderr)
        return 2
    within = {k: v.get("macro_f1") for k, v in result["within_corpus_speakers_held_out"].items()}
    cross = {k: v["macro_f1"] for k, v in result.get("cross_corpus_held_out", {}).items()}
    clips = sum(d["clips"] for d in result["data"])
    print(f"wrote {result['out']}: {clips} clips from {', '.join(d['corpus'] for d in result['data'])}")
    print(f"macro-F1, speakers held out within corpus: {within}")
    if cross:
        print(f"macro-F1 of the head on held-out corpora: {cross}")
    return 0
