"""Training the text emotion heads (``cer-stream train-head``) and classifying text from the
command line (``cer-stream text``); the heads themselves are
:class:`stream.modalities.speech.texthead.TextHead`.

Training (numpy only, no torch): full-batch Adam on class-weighted cross-entropy plus an L2
penalty on the weights; the L2 strength, the class weighting (none, 1/sqrt(count), 1/count)
and the number of epochs are chosen by macro-F1 on a held-out set (GoEmotions dev; for the
scene data a split by video, so the segments and the several captions of one video stay on
one side). The committed heads are the selected fits on the training part only, so the
held-out score recorded in each file is the score of that file.  The data folder is ``--data
DIR`` or ``$CER_STREAM_DATA`` (:mod:`stream.core.datadir`; see ``stream/heads/README.md``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from stream.core.datadir import DATA_ENV, GOEMOTIONS_DIR, SCENE_DIR, DataMissing, data_dir
from stream.core.labels import BASIC
from stream.core.metrics import macro_f1
from stream.modalities.speech.texthead import KINDS, MAX_LEN, TextHead, head_path, softmax

SCENE_GLOB = "afew_train_*_prompt[12].csv"

#: Selection grid (L2 penalty on the weights; class weighting) and training schedule.
L2_GRID = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
#: Class weights of the loss: none; 1/sqrt(count); 1/count ("balanced"), each normalised.
WEIGHTINGS = ("none", "sqrt", "balanced")
MAX_EPOCHS = 400
EVAL_EVERY = 10
LEARNING_RATE = 0.05
#: Fraction of the scene videos held out for selection.
SCENE_HOLDOUT = 0.2


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
@dataclass
class TextData:
    texts: list[str]
    labels: np.ndarray  # int class index into ``classes``
    classes: tuple[str, ...]
    groups: list[str] | None = None  # video of each row (scene data)
    dropped: int = 0  # rows left out (multi-label GoEmotions rows)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_goemotions(path: Path, classes: Sequence[str]) -> TextData:
    """GoEmotions (Ekman) ``text<TAB>ids<TAB>id`` rows; only single-label rows are kept.

    About 9 % of the rows carry two or more emotions; a single-label softmax head has no
    right answer for them, so they are left out of training and of the dev score alike.
    """
    texts, labels, dropped = [], [], 0
    with open(path, encoding="utf-8", newline="") as stream:
        for line in stream:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2 or not parts[1]:
                continue
            ids = parts[1].split(",")
            if len(ids) != 1:
                dropped += 1
                continue
            texts.append(parts[0])
            labels.append(int(ids[0]))
    bad = [i for i in set(labels) if not 0 <= i < len(classes)]
    if bad:
        raise ValueError(f"{path}: label ids {sorted(bad)} outside labels.txt ({len(classes)} classes)")
    return TextData(texts, np.asarray(labels, np.int64), tuple(classes), dropped=dropped)


def goemotions_classes(directory: Path) -> tuple[str, ...]:
    return tuple(line.strip() for line in (directory / "labels.txt").read_text().splitlines() if line.strip())


def scene_video(name: str) -> str:
    """The video a segment belongs to: ``000046280___Angry_0001.avi`` -> ``000046280``."""
    stem = name.rsplit(".", 1)[0]
    if "___" in stem:
        return stem.split("___", 1)[0]
    head, _, tail = stem.rpartition("_")
    return head if tail.isdigit() and head else stem


def load_scene(files: Sequence[Path]) -> TextData:
    """Captions (the ``text`` column only) with their one-hot label; never the video name as a
    feature: the name is only used to group rows by video."""
    texts, labels, groups = [], [], []
    for path in files:
        with open(path, encoding="utf-8", newline="") as stream:
            reader = csv.DictReader(stream)
            missing = [c for c in ("video_name", "text", *BASIC) if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing columns {missing}")
            for row in reader:
                onehot = np.array([float(row[c]) for c in BASIC])
                if onehot.max() <= 0:
                    continue
                texts.append(row["text"])
                labels.append(int(onehot.argmax()))
                groups.append(scene_video(row["video_name"]))
    present = sorted(set(labels))  # Other has no rows in AFEW: the head gets the classes seen
    remap = {c: i for i, c in enumerate(present)}
    return TextData(texts, np.asarray([remap[c] for c in labels], np.int64), tuple(BASIC[c] for c in present), groups)


def group_split(groups: Sequence[str], holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, held out) with whole groups on one side."""
    unique = sorted(set(groups))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    n_out = max(1, int(round(holdout * len(unique))))
    held = {unique[i] for i in order[:n_out]}
    mask = np.array([g in held for g in groups])
    return np.flatnonzero(~mask), np.flatnonzero(mask)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    weight: np.ndarray
    bias: np.ndarray
    epochs: int
    score: float  # held-out macro-F1 at ``epochs``
    l2: float
    weighting: str
    curve: list[tuple[int, float]] = field(default_factory=list)


def fit_softmax(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    l2: float,
    weighting: str,
    x_val: np.ndarray,
    y_val: np.ndarray,
    max_epochs: int = MAX_EPOCHS,
    eval_every: int = EVAL_EVERY,
    lr: float = LEARNING_RATE,
) -> FitResult:
    """Full-batch Adam on (optionally class-balanced) cross-entropy + ``l2 * |W|^2 / 2``;
    returns the parameters at the evaluated epoch with the best held-out macro-F1."""
    x = np.asarray(x, np.float32)
    x_val = np.asarray(x_val, np.float32)
    n, d = x.shape
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if weighting == "balanced":
        class_w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    elif weighting == "sqrt":
        class_w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
    elif weighting == "none":
        class_w = np.ones(n_classes)
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    sample_w = (class_w[y] / class_w[y].sum()).astype(np.float32)
    onehot = np.eye(n_classes, dtype=np.float32)[y]
    w = np.zeros((n_classes, d), np.float32)
    # start from the class prior the weighted loss sees
    prior = np.maximum(counts * class_w, 1e-12)
    b = np.log(prior / prior.sum()).astype(np.float32)
    m_w, v_w, m_b, v_b = (np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b))
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    labels = list(range(n_classes))
    best = FitResult(w.copy(), b.copy(), 0, -1.0, l2, weighting)
    for epoch in range(1, max_epochs + 1):
        p = softmax(x @ w.T + b)
        g = (p - onehot) * sample_w[:, None]
        grad_w = g.T @ x + np.float32(l2) * w
        grad_b = g.sum(axis=0)
        for param, grad, m, v in ((w, grad_w, m_w, v_w), (b, grad_b, m_b, v_b)):
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad * grad
            param -= lr * (m / (1 - beta1**epoch)) / (np.sqrt(v / (1 - beta2**epoch)) + eps)
        if epoch % eval_every == 0 or epoch == max_epochs:
            pred = np.argmax(x_val @ w.T + b, axis=1)
            score = macro_f1(y_val, pred, labels=labels)
            best.curve.append((epoch, score))
            if score > best.score:
                best.weight, best.bias, best.epochs, best.score = w.copy(), b.copy(), epoch, score
    return best


def select(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    *,
    l2_grid: Sequence[float] = L2_GRID,
    weightings: Sequence[str] = WEIGHTINGS,
    max_epochs: int = MAX_EPOCHS,
    log: TextIO = sys.stderr,
) -> tuple[FitResult, list[dict]]:
    """Grid over L2 and class weighting (epochs chosen inside each fit) by held-out macro-F1."""
    best: FitResult | None = None
    trials = []
    for weighting in weightings:
        for l2 in l2_grid:
            t0 = time.perf_counter()
            fit = fit_softmax(
                x, y, n_classes, l2=l2, weighting=weighting, x_val=x_val, y_val=y_val, max_epochs=max_epochs
            )
            trials.append({"l2": l2, "weighting": weighting, "epochs": fit.epochs, "macro_f1": round(fit.score, 4)})
            print(
                f"  l2={l2:g} weighting={weighting}: held-out macro-F1 {fit.score:.4f} at epoch {fit.epochs} "
                f"({time.perf_counter() - t0:.1f} s)",
                file=log,
                flush=True,
            )
            if best is None or fit.score > best.score:
                best = fit
    assert best is not None
    return best, trials


class EmbeddingCache:
    """Embeddings of a list of texts kept in the model cache directory (``.npy``), keyed by the
    encoder file, the truncation length and the texts themselves."""

    def __init__(self, encoder, directory: Path | None) -> None:
        self.encoder = encoder
        self.directory = directory

    def embed(self, texts: Sequence[str], *, what: str, log: TextIO = sys.stderr) -> np.ndarray:
        key = hashlib.sha256()
        key.update(str(self.encoder_id()).encode())
        for t in texts:
            key.update(t.encode("utf-8", "surrogatepass") + b"\0")
        path = self.directory / f"emb-{key.hexdigest()[:24]}.npy" if self.directory else None
        if path is not None and path.is_file():
            emb = np.load(path, allow_pickle=False)
            if emb.shape == (len(texts), self.encoder.dim):
                print(f"  {what}: {len(texts)} embeddings from {path}", file=log, flush=True)
                return emb
        t0 = time.perf_counter()
        emb = np.zeros((len(texts), self.encoder.dim), np.float32)
        step = 2048
        for begin in range(0, len(texts), step):
            emb[begin : begin + step] = self.encoder.encode(texts[begin : begin + step])
            done = min(begin + step, len(texts))
            print(
                f"\r  {what}: encoded {done}/{len(texts)} texts ({time.perf_counter() - t0:.0f} s)",
                end="",
                file=log,
                flush=True,
            )
        print(file=log, flush=True)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp.npy")
            np.save(tmp, emb)
            os.replace(tmp, path)
        return emb

    def encoder_id(self) -> str:
        self.encoder.load()
        return f"{self.encoder.engine.model_path.name}|{self.encoder.max_len}"


def _check_files(files: Sequence[Path]) -> None:
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"training data not found: {path} (point --data at the data folder)")


def _subset(data: TextData, limit: int | None, seed: int) -> TextData:
    if limit is None or limit >= len(data.texts):
        return data
    idx = np.sort(np.random.default_rng(seed).permutation(len(data.texts))[:limit])
    return TextData(
        [data.texts[i] for i in idx],
        data.labels[idx],
        data.classes,
        None if data.groups is None else [data.groups[i] for i in idx],
        data.dropped,
    )


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return path.name


def train_head(
    kind: str,
    *,
    data_dir: Path,
    limit: int | None = None,
    seed: int = 0,
    l2_grid: Sequence[float] = L2_GRID,
    weightings: Sequence[str] = WEIGHTINGS,
    max_epochs: int = MAX_EPOCHS,
    holdout: float = SCENE_HOLDOUT,
    cache: bool = True,
    encoder=None,
    log: TextIO = sys.stderr,
) -> tuple[TextHead, dict]:
    """Train the ``kind`` head on ``data_dir``; returns the head and a summary."""
    from engines.models.minilm import TextEncoder, default_cache_dir

    encoder = encoder or TextEncoder(max_len=MAX_LEN[kind], intra_op_threads=_threads())
    embedder = EmbeddingCache(encoder, (default_cache_dir() / "embeddings") if cache else None)
    files: list[Path]
    if kind == "speech":
        directory = data_dir / GOEMOTIONS_DIR
        files = [directory / "train.tsv", directory / "dev.tsv", directory / "labels.txt"]
        _check_files(files)
        classes = goemotions_classes(directory)
        train = _subset(load_goemotions(files[0], classes), limit, seed)
        val = _subset(load_goemotions(files[1], classes), None if limit is None else max(limit // 4, 50), seed)
        split = {
            "train": "train.tsv (single-label rows)",
            "selection": "dev.tsv (single-label rows)",
            "train_dropped_multilabel": train.dropped,
            "dev_dropped_multilabel": val.dropped,
        }
    elif kind == "scene":
        directory = data_dir / SCENE_DIR
        files = sorted(directory.glob(SCENE_GLOB))
        if not files:
            raise FileNotFoundError(
                f"training data not found: no {SCENE_GLOB} in {directory} (point --data at the data folder)"
            )
        data = _subset(load_scene(files), limit, seed)
        assert data.groups is not None  # load_scene records each row's video
        tr_idx, val_idx = group_split(data.groups, holdout, seed)

        def pick(idx):
            return TextData([data.texts[i] for i in idx], data.labels[idx], data.classes, [data.groups[i] for i in idx])

        train, val = pick(tr_idx), pick(val_idx)
        split = {
            "train": f"{1 - holdout:.0%} of the videos",
            "selection": f"{holdout:.0%} of the videos held out "
            f"(seed {seed}), all captions and segments of a video on one side",
            "train_videos": len(set(train.groups)),
            "heldout_videos": len(set(val.groups)),
        }
    else:
        raise ValueError(f"unknown head kind {kind!r}; known: {', '.join(KINDS)}")
    classes = train.classes
    print(
        f"{kind} head: {len(train.texts)} training texts, {len(val.texts)} held-out texts, "
        f"classes {', '.join(classes)}",
        file=log,
        flush=True,
    )
    x = embedder.embed(train.texts, what="train", log=log)
    x_val = embedder.embed(val.texts, what="held-out", log=log)
    best, trials = select(
        x,
        train.labels,
        x_val,
        val.labels,
        len(classes),
        l2_grid=l2_grid,
        weightings=weightings,
        max_epochs=max_epochs,
        log=log,
    )
    pred = np.argmax(x_val @ best.weight.T.astype(np.float32) + best.bias.astype(np.float32), axis=1)
    score = macro_f1(val.labels, pred, labels=list(range(len(classes))))
    from stream.core.metrics import per_class_f1

    per_class = per_class_f1(val.labels, pred, labels=list(range(len(classes))))
    encoder.load()
    meta = {
        "kind": kind,
        "classes": list(classes),
        "encoder": {
            "name": "all-MiniLM-L6-v2",
            "file": encoder.engine.model_path.name,
            "source": json.loads(encoder.engine.metadata.get("cer.source", "{}")),
        },
        "max_len": encoder.max_len,
        "data": {_rel(p, data_dir): sha256_file(p) for p in files},
        "split": split,
        "n_train": len(train.texts),
        "n_heldout": len(val.texts),
        "limit": limit,
        "seed": seed,
        "selection": {
            "metric": "macro-F1",
            "l2": best.l2,
            "weighting": best.weighting,
            "epochs": best.epochs,
            "optimizer": f"full-batch Adam lr {LEARNING_RATE}",
            "trials": trials,
        },
        "heldout_macro_f1": round(float(score), 4),
        "heldout_per_class_f1": {c: round(float(f), 4) for c, f in zip(classes, per_class)},
        "licence": (
            "GoEmotions (Demszky et al. 2020, Google), CC BY 4.0"
            if kind == "speech"
            else "Qwen2.5-VL captions of AFEW segments from SMIL-SPCRAS/ICCVW_25, MIT"
        ),
        "command": f"cer-stream train-head --kind {kind}" + (f" --limit {limit}" if limit else ""),
    }
    head = TextHead(best.weight.astype(np.float32), best.bias.astype(np.float32), classes, meta, encoder)
    return head, meta


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class TextHeadError(Exception):
    """``train-head`` or ``text`` cannot run (one-line message; exit status 2)."""


@dataclass(frozen=True, kw_only=True)
class TrainHeadOptions:
    """Options of ``cer-stream train-head``.

    Attributes:
        kind: ``"speech"`` (GoEmotions, Ekman, for transcripts) or ``"scene"`` (Qwen AFEW
            captions); required.
        data: the data folder; ``None`` (default): ``$CER_STREAM_DATA``
            (:func:`stream.core.datadir.data_dir`).
        out: where to write the head; ``None`` (default): ``stream/heads/KIND.npz``.
        limit: use a random N rows (speech: N training rows and N/4 dev rows), for quick runs;
            ``None`` (default): all.
        l2: L2 strengths to try (default ``L2_GRID``).
        weighting: class weighting of the loss, one of ``WEIGHTINGS`` or ``"all"`` (default:
            choose among all by held-out macro-F1).
        epochs: most epochs per fit (default ``MAX_EPOCHS``).
        holdout: scene: fraction of videos held out (default ``SCENE_HOLDOUT``).
        seed: random seed (0).
        cache: read and write cached embeddings (default ``True``).
    """

    kind: str
    data: Path | None = None
    out: Path | None = None
    limit: int | None = None
    l2: Sequence[float] = L2_GRID
    weighting: str = "all"
    epochs: int = MAX_EPOCHS
    holdout: float = SCENE_HOLDOUT
    seed: int = 0
    cache: bool = True


def run_train_head(options: TrainHeadOptions) -> int:
    """Train a text head and write it; prints its scores on stdout.  Returns 0; raises
    :class:`TextHeadError` on bad input."""
    try:
        folder = data_dir(options.data, needs=(GOEMOTIONS_DIR if options.kind == "speech" else SCENE_DIR,))
    except DataMissing as exc:
        raise TextHeadError(str(exc)) from None
    if not folder.is_dir():
        raise TextHeadError(f"data folder not found: {folder} (use --data DIR or ${DATA_ENV})")
    weightings = WEIGHTINGS if options.weighting == "all" else (options.weighting,)
    t0 = time.perf_counter()
    try:
        head, meta = train_head(
            options.kind,
            data_dir=folder,
            limit=options.limit,
            seed=options.seed,
            l2_grid=options.l2,
            weightings=weightings,
            max_epochs=options.epochs,
            holdout=options.holdout,
            cache=options.cache,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise TextHeadError(str(exc)) from None
    meta["train_seconds"] = round(time.perf_counter() - t0, 1)
    out = head.save(options.out or head_path(options.kind))
    sel = meta["selection"]
    which = "dev" if options.kind == "speech" else "held-out"
    print(
        f"{options.kind} head: {which} macro-F1 {meta['heldout_macro_f1']:.4f} on {meta['n_heldout']} texts "
        f"(l2={sel['l2']:g}, weighting={sel['weighting']}, epochs={sel['epochs']}, {meta['n_train']} training texts)"
    )
    print("per-class F1: " + ", ".join(f"{c} {f:.3f}" for c, f in meta["heldout_per_class_f1"].items()))
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# cer-stream text
# ---------------------------------------------------------------------------------------------
def _records(head: TextHead, texts: list[str]) -> list[dict]:
    probs = head.predict(texts)
    return [
        {
            "text": t,
            "basic": {name: round(float(v), 4) for name, v in zip(BASIC, row)},
            "label": BASIC[int(np.argmax(row))],
        }
        for t, row in zip(texts, probs)
    ]


@dataclass(frozen=True, kw_only=True)
class TextClassifyOptions:
    """Options of ``cer-stream text``.

    Attributes:
        input: a file with one text per line, or ``"-"`` (default): standard input, each line
            answered as it comes.
        kind: which committed head, ``"speech"`` (default) or ``"scene"``.
        head: a head file instead; ``None`` (default): the committed ``kind`` head.
        batch: lines per batch when reading a file (32).
    """

    input: str | Path = "-"
    kind: str = "speech"
    head: Path | None = None
    batch: int = 32


def run_text(options: TextClassifyOptions, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """One text per input line -> one JSON line with the head's 8 basic probabilities and the
    top state; blank lines are skipped.  Returns 0; raises :class:`TextHeadError` when the head
    or the input cannot be opened."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    try:
        head = TextHead.load(options.head or options.kind)
        head.get_encoder().load()
    except Exception as exc:
        raise TextHeadError(str(exc)) from None
    if options.input == "-":
        stream, batch = stdin, 1  # answer each line as it comes
    else:
        try:
            stream, batch = open(options.input, encoding="utf-8"), max(1, options.batch)
        except OSError as exc:
            raise TextHeadError(str(exc)) from None
    try:
        pending: list[str] = []
        for line in stream:
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            pending.append(text)
            if len(pending) >= batch:
                for rec in _records(head, pending):
                    stdout.write(json.dumps(rec, ensure_ascii=False) + "\n")
                stdout.flush()
                pending = []
        if pending:
            for rec in _records(head, pending):
                stdout.write(json.dumps(rec, ensure_ascii=False) + "\n")
            stdout.flush()
    finally:
        if stream is not stdin:
            stream.close()
        head.close()
    return 0


__all__ = [
    "DATA_ENV",
    "GOEMOTIONS_DIR",
    "KINDS",
    "L2_GRID",
    "MAX_EPOCHS",
    "MAX_LEN",
    "SCENE_DIR",
    "SCENE_HOLDOUT",
    "WEIGHTINGS",
    "EmbeddingCache",
    "TextClassifyOptions",
    "TextData",
    "TextHead",
    "TextHeadError",
    "TrainHeadOptions",
    "fit_softmax",
    "goemotions_classes",
    "group_split",
    "load_goemotions",
    "load_scene",
    "run_text",
    "run_train_head",
    "train_head",
]
