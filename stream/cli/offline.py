"""The offline subcommands' flags, and how they map onto the library's option classes.

``calibrate`` and ``eval`` (:mod:`stream.offline.calibrate`), ``train-temporal``
(:mod:`stream.offline.temporal_train`), ``temporal-features`` (:mod:`stream.offline.temporal_data`),
``train-head`` and ``text`` (:mod:`stream.offline.texthead_train`), ``plot``
(:mod:`stream.offline.plot`), ``batch`` (:mod:`stream.batch`), ``serve`` (:mod:`stream.serve`):
for each, ``*_parser()`` declares the flags, ``*_options(args)`` turns parsed flags into the typed options and
``*_main(argv)`` runs the library function and turns its one-line errors into exit statuses.
The library modules (and their heavy imports) load only when a command is used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

from stream.cli.flags import (
    Parser,
    count,
    fraction,
    max_side,
    non_negative_float,
    open_fraction,
    positive_float,
    positive_int,
    seed,
)
from stream.cli.main import PROG, fail

if TYPE_CHECKING:
    from stream.batch.run import BatchOptions
    from stream.offline.calibrate import CalibrateOptions, EvalOptions
    from stream.offline.plot import PlotOptions
    from stream.offline.temporal_data import TemporalFeaturesOptions
    from stream.offline.temporal_train import TrainTemporalOptions
    from stream.offline.texthead_train import TextClassifyOptions, TrainHeadOptions
    from stream.offline.voice_train import TrainVoiceOptions
    from stream.serve.config import ServeConfig


# --------------------------------------------------------------------------- calibrate
def calibrate_parser() -> argparse.ArgumentParser:
    """Flags of ``cer-stream calibrate``."""
    from stream.fusion.schemes import DIRICHLET_SAMPLES
    from stream.offline.calibrate import FUSION_CHOICES, LABEL_KINDS

    parser = Parser(
        prog=f"{PROG} calibrate", description="Fit fusion weights and PFSA prototypes from feature dumps and labels."
    )
    parser.add_argument("dumps", nargs="+", metavar="DUMP.jsonl", help="feature dumps written by --dump-features")
    parser.add_argument(
        "--labels",
        required=True,
        metavar="PATH",
        help="directory or file of ABAW frame labels (VIDEO.txt), or a CSV video,index,label of window labels",
    )
    parser.add_argument(
        "--label-kind", choices=LABEL_KINDS, default="basic", help="class order of the labels (default: basic)"
    )
    parser.add_argument("-o", "--out", required=True, metavar="CALIBRATION.json")
    parser.add_argument(
        "--fusion",
        choices=FUSION_CHOICES,
        default="mhpf",
        help="fusion scheme to fit (default: mhpf; equal = plain average)",
    )
    parser.add_argument("--heads", type=positive_int, default=1, help="MHPF heads (>= 1; default: 1)")
    parser.add_argument("--epochs", type=positive_int, default=100, help="MHPF epochs (>= 1; default: 100)")
    parser.add_argument(
        "--patience", type=positive_int, default=25, help="MHPF early-stopping patience (>= 1; default: 25)"
    )
    parser.add_argument("--lr", type=positive_float, default=1e-4, help="MHPF Adam learning rate (> 0; default: 1e-4)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="MHPF batch size (>= 1; default: 64)")
    parser.add_argument(
        "--samples",
        type=positive_int,
        default=DIRICHLET_SAMPLES,
        help="Dirichlet random-search samples (>= 1; default: %(default)s)",
    )
    parser.add_argument("--seed", type=seed, default=0, help=f"random seed ({seed.span}; default: 0)")
    parser.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.2,
        help="share of videos (or windows) held out for validation (0 <= F < 1; default: 0.2)",
    )
    parser.add_argument("--modalities", metavar="A,B,...", help="modality order (default: order of first appearance)")
    parser.add_argument(
        "--pfsa-modality",
        metavar="NAME",
        help="modality whose features build PFSA prototypes (default: the first with features)",
    )
    parser.add_argument("--no-pfsa", action="store_true", help="do not fit PFSA")
    parser.add_argument(
        "--temperature", type=positive_float, help="fixed PFSA temperature instead of fitting one (> 0)"
    )
    return parser


def calibrate_options(args: argparse.Namespace) -> CalibrateOptions:
    from stream.offline.calibrate import CalibrateOptions

    return CalibrateOptions(
        dumps=tuple(args.dumps),
        labels=args.labels,
        out=args.out,
        label_kind=args.label_kind,
        fusion=args.fusion,
        heads=args.heads,
        epochs=args.epochs,
        patience=args.patience,
        lr=args.lr,
        batch_size=args.batch_size,
        samples=args.samples,
        seed=args.seed,
        val_fraction=args.val_fraction,
        modalities=args.modalities,
        pfsa_modality=args.pfsa_modality,
        pfsa=not args.no_pfsa,
        temperature=args.temperature,
    )


def calibrate_main(argv: Sequence[str] | None = None) -> int:
    """``cer-stream calibrate``; exit status 2 on bad input."""
    from stream.offline.calibrate import CalibrationError, run_calibrate

    options = calibrate_options(calibrate_parser().parse_args(argv))
    try:
        return run_calibrate(options)
    except CalibrationError as exc:
        return fail(str(exc))


# --------------------------------------------------------------------------- eval
def eval_parser() -> argparse.ArgumentParser:
    """Flags of ``cer-stream eval``."""
    from stream.offline.calibrate import LABEL_KINDS

    parser = Parser(
        prog=f"{PROG} eval", description="Score frame-wise (or window-wise) predictions against ABAW labels."
    )
    parser.add_argument(
        "--pred",
        required=True,
        metavar="PATH",
        help="the analyzer's --csv output (VIDEO/00001.jpg,CLASS rows), ABAW label "
        "txt file(s), or with --level window a CSV video,index,label",
    )
    parser.add_argument(
        "--labels",
        required=True,
        metavar="PATH",
        help="ABAW label txt file or directory (or a window CSV at window level)",
    )
    parser.add_argument(
        "--kind",
        choices=LABEL_KINDS,
        default="compound",
        help="class order of predictions and labels (default: compound)",
    )
    parser.add_argument("--level", choices=("frame", "window"), default="frame")
    parser.add_argument(
        "--windows",
        nargs="+",
        metavar="DUMP.jsonl",
        help="window level with frame labels: dumps giving each window's frames",
    )
    parser.add_argument(
        "--over",
        choices=("all", "observed"),
        default="all",
        help="average over all classes (ABAW) or only those that occur",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="draw the confusion matrix")
    return parser


def eval_options(args: argparse.Namespace) -> EvalOptions:
    from stream.offline.calibrate import EvalOptions

    return EvalOptions(
        pred=args.pred,
        labels=args.labels,
        kind=args.kind,
        level=args.level,
        windows=tuple(args.windows) if args.windows else None,
        over=args.over,
        plot=args.plot,
    )


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``cer-stream eval``; exit status 2 on bad input."""
    from stream.offline.calibrate import CalibrationError, run_eval

    options = eval_options(eval_parser().parse_args(argv))
    try:
        return run_eval(options)
    except CalibrationError as exc:
        return fail(str(exc))


# --------------------------------------------------------------------------- train-temporal
def train_temporal_parser() -> argparse.ArgumentParser:
    """Flags of ``cer-stream train-temporal``."""
    from stream.offline.temporal_train import ARCHS, TrainOptions

    d = TrainOptions()
    p = Parser(
        prog="cer-stream train-temporal",
        description="Train the dynamic face model on labelled per-window feature sequences and export it "
        "to ONNX (use it with `cer-stream --temporal-model FILE.onnx`).",
        epilog="Training data: .npz files with features [N, 20, D] and labels [N] (BASIC order); make them "
        "from labelled videos with `cer-stream temporal-features` (see stream/offline/temporal_data.py).",
    )
    p.add_argument("--data", required=True, metavar="DIR_OR_FILE", help="an .npz file or a directory of them")
    p.add_argument("--arch", choices=ARCHS, default=d.arch, help=f"temporal encoder (default {d.arch})")
    p.add_argument("--out", required=True, type=Path, metavar="MODEL.onnx")
    p.add_argument("--hidden", type=positive_int, default=d.hidden, help=f"hidden size (>= 1; default {d.hidden})")
    p.add_argument("--layers", type=positive_int, default=d.layers, help=f"encoder layers (>= 1; default {d.layers})")
    p.add_argument("--dropout", type=fraction, default=d.dropout, help=f"dropout (0 <= P < 1; default {d.dropout})")
    p.add_argument(
        "--heads", type=positive_int, default=d.heads, help=f"attention heads, transformer (>= 1; default {d.heads})"
    )
    p.add_argument(
        "--d-state", type=positive_int, default=d.d_state, help=f"SSM state size, mamba (>= 1; default {d.d_state})"
    )
    p.add_argument(
        "--epochs", type=positive_int, default=d.epochs, help=f"at most this many epochs (>= 1; default {d.epochs})"
    )
    p.add_argument(
        "--patience",
        type=positive_int,
        default=d.patience,
        help=f"stop after this many epochs without a better validation macro-F1 (>= 1; default {d.patience})",
    )
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"(>= 1; default {d.batch_size})")
    p.add_argument("--lr", type=positive_float, default=d.lr, help=f"AdamW learning rate (> 0; default {d.lr})")
    p.add_argument(
        "--weight-decay", type=non_negative_float, default=d.weight_decay, help=f"(>= 0; default {d.weight_decay})"
    )
    p.add_argument(
        "--val-fraction",
        type=fraction,
        default=d.val_fraction,
        help=f"held-out fraction (whole videos where named; 0 <= F < 1; default {d.val_fraction})",
    )
    p.add_argument("--no-balance", action="store_true", help="plain cross-entropy (default: class-balanced)")
    p.add_argument("--seed", type=seed, default=d.seed, help=f"({seed.span}; default {d.seed})")
    p.add_argument(
        "--threads", type=positive_int, default=None, help="PyTorch CPU threads (>= 1; default: PyTorch's choice)"
    )
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    return p


def train_temporal_options(args: argparse.Namespace) -> TrainTemporalOptions:
    """``ValueError`` (one line) on bad model or training settings."""
    from stream.offline.temporal_train import TrainOptions, TrainTemporalOptions

    return TrainTemporalOptions(
        data=args.data,
        out=args.out,
        train=TrainOptions(
            arch=args.arch,
            hidden=args.hidden,
            layers=args.layers,
            dropout=args.dropout,
            heads=args.heads,
            d_state=args.d_state,
            epochs=args.epochs,
            patience=args.patience,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            val_fraction=args.val_fraction,
            balanced=not args.no_balance,
            seed=args.seed,
            threads=args.threads,
        ),
        quiet=bool(args.quiet),
    )


def train_temporal_main(argv: Sequence[str] | None = None) -> int:
    """``cer-stream train-temporal``; exit status 2 on bad input, 1 when training or export fails."""
    from stream.offline.temporal_train import TrainTemporalError, run_train_temporal

    args = train_temporal_parser().parse_args(argv)

    def failed(msg: str, code: int = 2) -> int:
        sys.stderr.write(f"cer-stream train-temporal: error: {msg}\n")
        return code

    try:
        options = train_temporal_options(args)
    except ValueError as exc:
        return failed(str(exc))
    try:
        return run_train_temporal(options)
    except TrainTemporalError as exc:
        return failed(str(exc), exc.code)


# --------------------------------------------------------------------------- temporal-features
def temporal_features_parser() -> argparse.ArgumentParser:
    """Flags of ``cer-stream temporal-features``."""
    p = Parser(
        prog="cer-stream temporal-features",
        description="Make training data for `cer-stream train-temporal` from labelled videos "
        "(per-window sequences of the face model's per-frame outputs).",
    )
    p.add_argument("videos", nargs="+", type=Path, metavar="VIDEO")
    p.add_argument(
        "--labels",
        required=True,
        metavar="PATH",
        help="ABAW-style per-frame label files (a directory of VIDEO.txt, or one file) or a "
        "CSV video,index,label of window labels; BASIC classes (index or name)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DATA.npz")
    p.add_argument(
        "--max-side",
        type=max_side,
        default=960,
        metavar="PX",
        help=f"scale frames to at most PX on the longer side first ({max_side.span}; default 960, as the stream)",
    )
    return p


def temporal_features_options(args: argparse.Namespace) -> TemporalFeaturesOptions:
    from stream.offline.temporal_data import TemporalFeaturesOptions

    return TemporalFeaturesOptions(videos=tuple(args.videos), labels=args.labels, out=args.out, max_side=args.max_side)


def temporal_features_main(argv: Sequence[str] | None = None) -> int:
    """``cer-stream temporal-features VIDEO... --labels L --out DATA.npz``; exit status 2 on bad
    input, 1 when a video cannot be used or no window is kept."""
    from stream.offline.temporal_data import TemporalFeaturesError, run_temporal_features

    options = temporal_features_options(temporal_features_parser().parse_args(argv))
    try:
        return run_temporal_features(options)
    except TemporalFeaturesError as exc:
        sys.stderr.write(f"cer-stream temporal-features: error: {exc}\n")
        return exc.code


# --------------------------------------------------------------------------- train-head
def _l2_list(text: str) -> list[float]:
    """``--l2 A,B,...``: L2 strengths, each a finite number >= 0."""
    values = [non_negative_float(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected numbers >= 0 separated by commas, got {text!r}")
    return values


def train_head_parser() -> argparse.ArgumentParser:
    """Flags of ``cer-stream train-head``."""
    from stream.offline.texthead_train import (
        DATA_ENV,
        GOEMOTIONS_DIR,
        KINDS,
        L2_GRID,
        MAX_EPOCHS,
        SCENE_DIR,
        SCENE_HOLDOUT,
        WEIGHTINGS,
    )
    from stream.offline.voice_train import C_DEFAULT, PER_GROUP_DEFAULT

    p = Parser(
        prog="cer-stream train-head",
        description="Train a text emotion head on MiniLM embeddings, or the voice head on acted-speech corpora.",
    )
    p.add_argument(
        "--kind",
        required=True,
        choices=[*KINDS, "voice"],
        help="speech: GoEmotions (Ekman) for transcripts; scene: Qwen AFEW captions; voice: speech emotion "
        "from RAVDESS/nEMO folders (--corpus)",
    )
    p.add_argument(
        "--corpus",
        type=_corpus_arg,
        action="append",
        default=[],
        metavar="KIND=DIR",
        help="voice: a training corpus in its upstream layout (ravdess, nemo, urdu, tess); repeat for several",
    )
    p.add_argument(
        "--eval",
        type=_corpus_arg,
        action="append",
        default=[],
        metavar="KIND=DIR",
        help="voice: a held-out corpus the new head is scored on (into its meta); repeatable",
    )
    p.add_argument(
        "--C", type=positive_float, default=C_DEFAULT, help="voice: inverse L2 strength (> 0; default %(default)s)"
    )
    p.add_argument(
        "--per-speaker-class",
        type=count,
        default=PER_GROUP_DEFAULT,
        metavar="N",
        help="voice: at most N clips per speaker and class, seed 0 (>= 0; 0: all; default %(default)s)",
    )
    p.add_argument(
        "--processes", type=int, choices=(1, 2), default=2, help="voice: feature extraction processes (default 2)"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"speech, scene: the data folder holding {GOEMOTIONS_DIR}/ and {SCENE_DIR}/ (default: ${DATA_ENV})",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE.npz",
        help="where to write the head (default: stream/heads/KIND.npz)",
    )
    p.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        metavar="N",
        help="use a random N rows (>= 1; speech: N training rows and N/4 dev rows), for quick runs",
    )
    p.add_argument(
        "--l2", type=_l2_list, default=list(L2_GRID), metavar="A,B,...", help="L2 strengths to try (each >= 0)"
    )
    p.add_argument(
        "--weighting",
        choices=[*WEIGHTINGS, "all"],
        default="all",
        help="class weighting of the loss (default: choose among all by held-out macro-F1)",
    )
    p.add_argument(
        "--epochs", type=positive_int, default=MAX_EPOCHS, help="most epochs per fit (>= 1; default %(default)s)"
    )
    p.add_argument(
        "--holdout",
        type=open_fraction,
        default=SCENE_HOLDOUT,
        help="scene: fraction of videos held out (0 < F < 1; default %(default)s)",
    )
    p.add_argument("--seed", type=seed, default=0, help=f"random seed ({seed.span}; default 0)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached embeddings")
    return p


def _corpus_arg(text: str) -> tuple[str, Path]:
    """``KIND=DIR`` for ``--corpus``/``--eval``."""
    from stream.offline.voice_train import CORPORA

    kind, sep, folder = text.partition("=")
    if not sep or kind not in CORPORA or not folder:
        raise argparse.ArgumentTypeError(f"expected KIND=DIR with KIND one of {', '.join(CORPORA)}, got {text!r}")
    return kind, Path(folder).expanduser()


def train_voice_options(args: argparse.Namespace) -> TrainVoiceOptions:
    from stream.offline.voice_train import TrainVoiceOptions

    return TrainVoiceOptions(
        corpora=args.corpus,
        out=args.out,
        C=args.C,
        per_group=args.per_speaker_class,
        processes=args.processes,
        cache=not args.no_cache,
        evaluate=args.eval,
    )


def train_head_options(args: argparse.Namespace) -> TrainHeadOptions:
    from stream.offline.texthead_train import TrainHeadOptions

    return TrainHeadOptions(
        kind=args.kind,
        data=args.data,
        out=args.out,
        limit=args.limit,
        l2=args.l2,
        weighting=args.weighting,
        epochs=args.epochs,
        holdout=args.holdout,
        seed=args.seed,
        cache=not args.no_cache,
    )


def train_head_main(argv: Sequence[str] | None = None) -> int:
    """``cer-stream train-head``: train a text head and write it (default: the committed file)."""
    from stream.offline.texthead_train import TextHeadError, run_train_head

    parser = train_head_parser()
    args = parser.parse_args(argv)
    if args.kind == "voice":
        from stream.offline.voice_train import run_train_voice

        if not args.corpus:
            parser.error("--kind voice needs at least one --corpus KIND=DIR")
        return run_train_voice(train_voice_options(args))
    if args.corpus or args.eval:
        parser.error("--corpus and --eval are for --kind voice")
    options = train_head_options(args)
    try:
        return run_train_head(options)
    except TextHeadError as exc:
        print(f"cer-stream train-head: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- text
def text_parser() -> argparse.ArgumentParser:
    """Flags of ``cer-stream text``."""
    from stream.offline.texthead_train import KINDS

    p = Parser(prog="cer-stream text", description="Classify texts with a text emotion head (the live pipeline's).")
    p.add_argument("input", nargs="?", default="-", metavar="FILE|-", help="one text per line (default: stdin)")
    p.add_argument("--kind", choices=KINDS, default="speech", help="which committed head (default %(default)s)")
    p.add_argument("--head", type=Path, default=None, metavar="FILE.npz", help="a head file instead")
    p.add_argument(
        "--batch", type=positive_int, default=32, help="lines per batch when reading a file (>= 1; default 32)"
    )
    return p


def text_options(args: argparse.Namespace) -> TextClassifyOptions:
    from stream.offline.texthead_train import TextClassifyOptions

    return TextClassifyOptions(input=args.input, kind=args.kind, head=args.head, batch=args.batch)


def text_main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """``cer-stream text``: one text per input line -> one JSON line with the head's
    8 basic probabilities and the top state. Blank lines are skipped."""
    from stream.offline.texthead_train import TextHeadError, run_text

    options = text_options(text_parser().parse_args(argv))
    try:
        return run_text(options, stdin=stdin, stdout=stdout)
    except TextHeadError as exc:
        print(f"cer-stream text: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- plot
def plot_parser() -> argparse.ArgumentParser:
    """Flags of ``cer-stream plot``."""
    from stream.offline.plot import DEFAULT_DPI, DEFAULT_WIDTH_IN

    p = Parser(
        prog=f"{PROG} plot",
        description="Draw a run's records (JSON lines) as one timeline picture: compound probabilities of the "
        "final frames, basic probabilities per window, a lane per modality, gaps and missing windows shaded.",
    )
    p.add_argument("run", metavar="RUN.jsonl", help="a run's records (--out FILE, or stdout saved); - reads stdin")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="PNG", help="the picture to write")
    p.add_argument(
        "--width",
        type=positive_float,
        default=DEFAULT_WIDTH_IN,
        metavar="IN",
        help="width in inches (> 0; default %(default)s)",
    )
    p.add_argument(
        "--height",
        type=positive_float,
        default=None,
        metavar="IN",
        help="height in inches (> 0; default: grows with the modalities)",
    )
    p.add_argument("--dpi", type=positive_int, default=DEFAULT_DPI, help="pixels per inch (>= 1; default %(default)s)")
    p.add_argument(
        "--from", dest="start", type=non_negative_float, metavar="S", help="zoom: first media second shown (>= 0)"
    )
    p.add_argument(
        "--to", dest="end", type=non_negative_float, metavar="S", help="zoom: last media second shown (>= 0)"
    )
    return p


def plot_options(args: argparse.Namespace) -> PlotOptions:
    """``ValueError`` (one line) on a bad size or time range."""
    from stream.offline.plot import PlotOptions

    return PlotOptions(width=args.width, height=args.height, dpi=args.dpi, start=args.start, end=args.end)


def plot_main(argv: Sequence[str] | None = None, *, stdin: BinaryIO | None = None) -> int:
    """``cer-stream plot RUN.jsonl -o PNG``; exit status 2 on bad input (one line on stderr), a
    last line cut short is a warning."""
    from stream.offline.plot import PlotError, PlotWriteError, load_records, plot_run, require_matplotlib

    args = plot_parser().parse_args(argv)
    try:
        options = plot_options(args)
        require_matplotlib()
    except (ValueError, PlotError) as exc:
        return fail(str(exc))
    name = "stdin" if args.run == "-" else args.run
    try:
        loaded = load_records((stdin or sys.stdin.buffer) if args.run == "-" else Path(args.run))
    except PlotError as exc:
        return fail(f"{name}: {exc}")
    for warning in loaded.warnings:
        sys.stderr.write(f"{PROG}: warning [plot] {name}: {warning}\n")
    try:
        plot_run(loaded.records, args.out, options=options)
    except PlotWriteError as exc:
        return fail(str(exc))
    except PlotError as exc:
        where = f"line {loaded.lines[exc.record]}: " if exc.record is not None else ""
        return fail(f"{name}: {where}{exc}")
    return 0


# --------------------------------------------------------------------------- batch
def batch_parser() -> argparse.ArgumentParser:
    """Flags of ``cer-stream batch``: its own, and the run command's analysis and model flags."""
    from stream.cli.flags import (
        add_analysis_args,
        add_audio_args,
        add_clip_args,
        add_model_args,
        add_scene_args,
        add_temporal_args,
    )

    p = Parser(
        prog=f"{PROG} batch",
        description="Analyse many files, each as `cer-stream --video FILE` would, on local processes or a Ray "
        "cluster. Per file, named after it, in DIR: NAME.jsonl (every record), NAME.csv (ABAW frame "
        "predictions), NAME.features.jsonl (--dump-features) and NAME.done.json (written last); then "
        "summary.csv and summary.json. A rerun skips the files that are done and retries the others.",
        epilog="exit status: 0 every file done, 1 some failed (see the summary), 2 bad input or models that "
        "cannot load, 130 interrupted (a rerun goes on where it stopped)",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="video files, folders (searched recursively for video files), glob patterns ('clips/**/*.mp4'), "
        "or manifest CSVs with a 'path' column (and an optional 'name' column naming the outputs)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="the output folder (made when missing)")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="worker processes, each loading the models once (>= 1; default 1); with --ray, actors (default: as "
        "many as the cluster's CPUs hold)",
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the workers as Ray actors on a cluster: auto (the one this machine belongs to), HOST:PORT, "
        "ray://HOST:10001, or local (start one here); needs the ray extra",
    )
    p.add_argument(
        "--worker-cpus",
        type=non_negative_float,
        default=1.0,
        metavar="N",
        help="CPUs a Ray actor reserves (>= 0; default 1)",
    )
    p.add_argument(
        "--worker-gpus",
        type=non_negative_float,
        default=0.0,
        metavar="N",
        help="GPUs a Ray actor reserves (>= 0; default 0)",
    )
    p.add_argument(
        "--retries",
        type=count,
        default=1,
        metavar="N",
        help="retry a file this many times when its worker process dies under it (>= 0; default 1)",
    )
    p.add_argument(
        "--dump-features",
        action="store_true",
        help="also write NAME.features.jsonl (each window's per-modality probabilities, for calibrate)",
    )
    p.add_argument("--no-csv", action="store_true", help="do not write NAME.csv")
    p.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="progress bar over the files on stderr (auto: when stderr is a terminal)",
    )
    p.add_argument("--quiet", action="store_true", help="do not print the summary table on stdout")
    add_analysis_args(p)
    add_model_args(p)
    add_clip_args(p)
    add_temporal_args(p)
    add_audio_args(p)
    add_scene_args(p)
    # a file is read as `--video` reads it: lossless, no reconnecting
    p.set_defaults(realtime=False, timeout=10.0, reconnect="off", reconnect_max_delay=30.0, wait=False)
    return p


def batch_options(args: argparse.Namespace) -> BatchOptions:
    """``ValueError`` (one line) on bad values."""
    from stream.batch.run import BatchOptions
    from stream.cli.flags import pipeline_options

    return BatchOptions(
        inputs=tuple(args.inputs),
        out=args.out,
        pipeline=pipeline_options(args),
        audio=not args.no_audio,
        csv=not args.no_csv,
        features=bool(args.dump_features),
        workers=args.workers,
        ray=args.ray,
        worker_cpus=args.worker_cpus,
        worker_gpus=args.worker_gpus,
        retries=args.retries,
        progress=args.progress,
    )


def batch_main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None) -> int:
    """``cer-stream batch INPUT... --out DIR``; prints the summary table on stdout (unless
    ``--quiet``); exit status 0, 1 (some files failed), 2 (bad input, models that cannot load,
    an unreachable Ray cluster) or 130 (interrupted)."""
    import signal
    import threading

    from stream.batch import BatchError, format_table, run_batch

    args = batch_parser().parse_args(argv)
    try:
        options = batch_options(args)
    except ValueError as exc:
        return fail(str(exc))

    def on_term(signum, _frame):
        raise KeyboardInterrupt  # SIGTERM ends a batch as Ctrl-C does: workers stopped, summary written

    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    try:
        result = run_batch(options)
    except BatchError as exc:
        return fail(str(exc))
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old)
    if not args.quiet:
        out = stdout or sys.stdout
        out.write(format_table(result) + "\n")
        out.flush()
    if result.error:
        return fail(result.error)
    if result.status == 130:
        sys.stderr.write(f"{PROG}: interrupted\n")
    return result.status


# --------------------------------------------------------------------------- serve
def _restarts(text: str) -> str:
    """``--max-restarts``: a whole number >= 0 or ``forever``, checked here and kept as text
    (:func:`serve_options` tells "not given" from "forever")."""
    if text.strip().lower() != "forever" and not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"takes a number >= 0 or forever, not {text!r}")
    return text


def serve_parser() -> argparse.ArgumentParser:
    """Flags of ``cer-stream serve``; analyzer flags for every stream follow ``--``."""
    from stream.serve.config import DEFAULT_RESTART_MAX_DELAY_S

    p = Parser(
        prog=f"{PROG} serve",
        usage=f"{PROG} serve [CONFIG.toml | --rtsp URL ... --camera N ...] [options] [-- ANALYZER FLAGS]",
        description="Run one supervised analyzer process per live source. Every record gets the stream's id "
        "(`stream_id`) and goes to stdout (JSON lines), the --publish socket and DIR/ID.jsonl; an analyzer that "
        "exits is restarted with exponential backoff and `supervisor` records say so. Ctrl-C (or SIGTERM) stops "
        "every analyzer (each writes its end record); exit status 0.",
        epilog="CONFIG.toml: [[stream]] tables (id, rtsp or camera, args, password_env), the top-level keys "
        "publish, out_dir, args, max_restarts, restart_max_delay, isolation, dashboard, dashboard_public, and the "
        "tables "
        "[vlm] (url, model, key_env, concurrency, every, timeout, max_wait, listen) and [ray] (address, "
        "worker_cpus, worker_gpus) (see docs/serve.md). Flags given here override the file's. "
        "Flags after -- go to every stream's analyzer, e.g. -- --no-asr. Exit status: 0 stopped, 1 every stream "
        "given up, 2 bad input.",
    )
    p.add_argument("config", nargs="?", type=Path, metavar="CONFIG.toml", help="the streams to run (TOML)")
    p.add_argument(
        "--rtsp",
        action="append",
        dest="sources",
        type=lambda v: ("rtsp", v),
        metavar="URL",
        help="an RTSP stream (repeat for more; ids s0, s1, ... in the order given, --camera included); "
        "rtsp://user@host/... takes its password from $CER_STREAM_RTSP_PASSWORD",
    )
    p.add_argument(
        "--camera", action="append", dest="sources", type=lambda v: ("camera", v), metavar="N", help="a V4L2 camera"
    )
    p.add_argument(
        "--publish",
        metavar="ENDPOINT",
        help="publish every stream's records on one ZeroMQ PUB socket, e.g. tcp://127.0.0.1:5556",
    )
    p.add_argument("--out-dir", type=Path, metavar="DIR", help="also write each stream's records to DIR/ID.jsonl")
    p.add_argument("--quiet", action="store_true", help="print no records on stdout (use with --publish/--out-dir)")
    p.add_argument(
        "--max-restarts",
        metavar="N",
        type=_restarts,
        help="restart a stream at most N times in a row (without a window in between); the next exit gives it "
        "up (>= 0 or forever; default: forever)",
    )
    p.add_argument(
        "--restart-max-delay",
        type=positive_float,
        default=None,
        metavar="S",
        help=f"longest wait before restarting an analyzer (> 0; exponential backoff with jitter; default "
        f"{DEFAULT_RESTART_MAX_DELAY_S:g})",
    )
    p.add_argument(
        "--isolation",
        choices=("host", "process"),
        default=None,
        help="host (default): every stream's analyzer asks one model host on this machine, which loads each "
        "model once and batches the streams' requests; process: each analyzer loads its own models",
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run each stream's analyzer under a Ray actor (restarted by Ray when its process or node dies): "
        "auto, HOST:PORT, ray://HOST:10001, or local; records still come here; needs the ray extra",
    )
    p.add_argument(
        "--worker-cpus",
        type=non_negative_float,
        default=None,
        metavar="N",
        help="CPUs a stream's actor reserves (>= 0; default 1)",
    )
    p.add_argument(
        "--worker-gpus",
        type=non_negative_float,
        default=None,
        metavar="N",
        help="GPUs a stream's actor reserves (>= 0; default 0)",
    )
    p.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        help="serve one live page for every stream (frame, label, last minute's chart, status, restarts), "
        "e.g. 127.0.0.1:8080; loopback only unless --dashboard-public; needs the web extra",
    )
    p.add_argument(
        "--dashboard-public",
        action="store_true",
        help="allow --dashboard on an address other machines can reach (the page has no authentication)",
    )
    p.add_argument(
        "--vlm",
        metavar="URL",
        help="a VLM endpoint every stream asks through one request queue (e.g. http://gpu-box:8000/v1; its key "
        "from $CER_STREAM_VLM_API_KEY); the [vlm] table of a config file says more",
    )
    p.add_argument(
        "--vlm-model", metavar="NAME", help="the model name sent to --vlm (default Qwen/Qwen2.5-VL-7B-Instruct)"
    )
    p.add_argument(
        "--vlm-concurrency",
        type=positive_int,
        metavar="N",
        help="requests in flight to the VLM endpoint at most (>= 1; default 1)",
    )
    return p


def serve_options(args: argparse.Namespace, analyzer_args: Sequence[str] = ()) -> ServeConfig:
    """The streams and outputs the flags (and the config file) name; ``ConfigError`` (one line)."""
    import dataclasses

    from stream.serve.config import ConfigError, check_args, from_flags, load_config

    max_restarts: int | None = None
    if args.max_restarts is not None and args.max_restarts.strip().lower() != "forever":
        try:
            max_restarts = int(args.max_restarts)
        except ValueError:
            raise ConfigError(f"--max-restarts takes a number or forever, not {args.max_restarts!r}") from None
    if args.config is not None:
        if args.sources:
            raise ConfigError("give a config file or --rtsp/--camera, not both")
        config = load_config(args.config)
        check_args(analyzer_args, "analyzer flags after --", per_stream=False)
        changes: dict = {"args": (*config.args, *analyzer_args)}
        if args.publish is not None:
            changes["publish"] = args.publish
        if args.out_dir is not None:
            changes["out_dir"] = args.out_dir
        if args.max_restarts is not None:
            if max_restarts is not None and max_restarts < 0:
                raise ConfigError("--max-restarts must be >= 0")
            changes["max_restarts"] = max_restarts
        if args.restart_max_delay is not None:
            if args.restart_max_delay <= 0:
                raise ConfigError("--restart-max-delay must be positive")
            changes["restart_max_delay_s"] = args.restart_max_delay
        if args.isolation is not None:
            changes["isolation"] = args.isolation
        config = dataclasses.replace(config, **changes)
    else:
        if not args.sources:
            raise ConfigError("no stream to serve: give a CONFIG.toml or --rtsp/--camera")
        kw: dict = {}
        if args.restart_max_delay is not None:
            kw["restart_max_delay_s"] = args.restart_max_delay
        if args.isolation is not None:
            kw["isolation"] = args.isolation
        config = from_flags(
            args.sources,
            publish=args.publish,
            out_dir=args.out_dir,
            args=analyzer_args,
            max_restarts=max_restarts,
            **kw,
        )
    return _serve_services(config, args)


def _serve_services(config: ServeConfig, args: argparse.Namespace) -> ServeConfig:
    """``config`` with the dashboard, VLM gateway and Ray flags applied over the file's keys."""
    import dataclasses

    from stream.serve.config import ConfigError, check_vlm_flags
    from stream.serve.vlm_gateway import VlmConfig

    changes: dict = {}
    if args.dashboard is not None:
        changes["dashboard"] = args.dashboard
    if args.dashboard_public:
        changes["dashboard_public"] = True
    if args.ray is not None:
        changes["ray_address"] = args.ray
    for flag, key in (("worker_cpus", "worker_cpus"), ("worker_gpus", "worker_gpus")):
        value = getattr(args, flag)
        if value is not None:
            if value < 0:
                raise ConfigError("--worker-cpus and --worker-gpus must be >= 0")
            changes[key] = value
    vlm = config.vlm
    if args.vlm is None and vlm is None and (args.vlm_model is not None or args.vlm_concurrency is not None):
        raise ConfigError("--vlm-model and --vlm-concurrency go with --vlm URL (or a [vlm] table)")
    if args.vlm is not None or vlm is not None:
        kw = dataclasses.asdict(vlm) if vlm is not None else {}
        if args.vlm is not None:
            kw["url"] = args.vlm
        if args.vlm_model is not None:
            kw["model"] = args.vlm_model
        if args.vlm_concurrency is not None:
            kw["concurrency"] = args.vlm_concurrency
        try:
            changes["vlm"] = VlmConfig(**kw)
        except ValueError as exc:
            raise ConfigError(f"--vlm: {exc}") from None
    config = dataclasses.replace(config, **changes)
    check_vlm_flags(config)
    return config


def serve_main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None) -> int:
    """``cer-stream serve CONFIG.toml`` or ``cer-stream serve --rtsp URL --rtsp URL2 ... [-- FLAGS]``:
    runs until Ctrl-C or SIGTERM (exit status 0); 1 when every stream was given up; 2 on bad input."""
    import signal
    import threading

    from stream.core.signals import SignalEvent
    from stream.serve.config import ConfigError
    from stream.serve.supervisor import Supervisor, check_analyzer_flags

    argv = list(sys.argv[1:] if argv is None else argv)
    analyzer_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, analyzer_args = argv[:i], argv[i + 1 :]
    args = serve_parser().parse_args(argv)
    try:
        config = serve_options(args, analyzer_args)
        check_analyzer_flags(config)
    except ConfigError as exc:
        return fail(f"serve: {exc}")
    supervisor: Supervisor
    if config.ray_address:
        from stream.serve.ray_backend import RaySupervisor

        supervisor = RaySupervisor(
            config,
            address=config.ray_address,
            cpus=config.worker_cpus,
            gpus=config.worker_gpus,
            stdout=stdout,
            quiet=args.quiet,
        )
    else:
        supervisor = Supervisor(config, stdout=stdout, quiet=args.quiet)
    stop_requested, kill_requested = SignalEvent(), SignalEvent()  # set by signal handlers

    def on_signal(_signum, _frame):
        if stop_requested.is_set():
            kill_requested.set()  # a second Ctrl-C: kill the analyzers now
        stop_requested.set()

    main_thread = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        return supervisor.run(stop_requested, kill_requested)
    except (ConfigError, ValueError) as exc:
        return fail(f"serve: {exc}")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


__all__ = [
    "batch_main",
    "batch_options",
    "batch_parser",
    "calibrate_main",
    "calibrate_options",
    "calibrate_parser",
    "eval_main",
    "eval_options",
    "eval_parser",
    "plot_main",
    "plot_options",
    "plot_parser",
    "serve_main",
    "serve_options",
    "serve_parser",
    "temporal_features_main",
    "temporal_features_options",
    "temporal_features_parser",
    "text_main",
    "text_options",
    "text_parser",
    "train_head_main",
    "train_head_options",
    "train_head_parser",
    "train_temporal_main",
    "train_temporal_options",
    "train_temporal_parser",
]
