"""Command line: ``cer-stream --video FILE | --rtsp URL | --camera N`` and subcommands."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from stream import __version__
from stream.cli.interrupt import as_program, interrupted

PROG = "cer-stream"


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def fail(message: str, code: int = 2) -> int:
    """One line, ``cer-stream: error: ...``; a library error's option fields become flags."""
    from stream.cli.flags import flag_names
    from stream.core.redact import redact

    sys.stderr.write(f"{PROG}: error: {redact(flag_names(message))}\n")
    return code


# --------------------------------------------------------------------------- run
#: One line per subcommand for the top-level help.
SUBCOMMANDS = {
    "images": "analyse still images (largest face each)",
    "text": "classify text with the speech or scene head",
    "calibrate": "fit fusion weights and PFSA prototypes from feature dumps",
    "batch": "analyse many files (local processes or a Ray cluster), resumably",
    "eval": "score frame-wise predictions against ABAW labels",
    "plot": "draw a run's records as a timeline picture",
    "serve": "run one supervised analyzer per live source (config file or flags)",
    "models": "list, fetch and export models",
    "doctor": "say which packages, models, tools and hardware paths are here, and why not the rest",
    "engines": "build TensorRT engines",
    "train-head": "retrain the speech or scene text head",
    "train-temporal": "train a temporal (dynamic face) model",
    "temporal-features": "extract per-frame features for train-temporal",
}


def _resume(text: str):
    from stream.io.reconnect import Resume

    try:
        return Resume.from_json(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_parser() -> argparse.ArgumentParser:
    from stream.cli.flags import (
        DEFAULT_TIMEOUT_S,
        Parser,
        add_analysis_args,
        add_audio_args,
        add_clip_args,
        add_model_args,
        add_scene_args,
        add_temporal_args,
        positive_float,
        reconnect_policy,
        timeout_s,
    )

    width = max(len(n) for n in SUBCOMMANDS)
    p = Parser(
        prog=PROG,
        description="Real-time zero-shot compound expression recognition.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="subcommands (run `cer-stream SUBCOMMAND -h` for their options):\n"
        + "\n".join(f"  {name:<{width}}  {what}" for name, what in SUBCOMMANDS.items()),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--video",
        metavar="FILE",
        help="a media file (analysed as fast as possible); one without a picture runs audio-only",
    )
    src.add_argument(
        "--audio",
        metavar="FILE",
        help="a sound file (wav, mp3, m4a, flac, ogg...) or the sound of a video: the audio and text modalities only",
    )
    src.add_argument("--rtsp", metavar="URL", help="an RTSP stream (TCP transport)")
    src.add_argument("--camera", metavar="N", help="a V4L2 camera: index N (/dev/videoN) or a device path")
    p.add_argument(
        "--mic",
        nargs="?",
        const="default",
        metavar="DEVICE",
        help="microphone audio: added to --camera, or alone (the audio and text modalities only); DEVICE defaults "
        "to the system default",
    )
    p.add_argument("--realtime", action="store_true", help="pace a file at media speed, like a live source")
    add_analysis_args(p)  # --no-audio, --no-frames, --compound, --fusion, --max-side (shared with batch)
    p.add_argument(
        "--out",
        metavar="FILE.jsonl",
        type=Path,
        help="also write every record to this file (an existing file is replaced when the run ends)",
    )
    p.add_argument(
        "--publish", metavar="ENDPOINT", help="also publish records on a ZeroMQ PUB socket, e.g. tcp://127.0.0.1:5556"
    )
    p.add_argument("--csv", metavar="FILE", type=Path, help="write frame-wise predictions (ABAW layout)")
    p.add_argument(
        "--annotate",
        metavar="OUT.mp4",
        type=Path,
        help="write an annotated copy of the input (H.264; files: full rate with audio; live: the analysed frames)",
    )
    p.add_argument(
        "--serve",
        metavar="HOST:PORT",
        help="serve a live page of the run (frame with box and label, last minute's chart, modalities, "
        "transcript, drops, latency), e.g. 127.0.0.1:8080; loopback only unless --serve-public",
    )
    p.add_argument(
        "--serve-public",
        action="store_true",
        help="allow --serve on an address other machines can reach; the page then asks for a token "
        "(made up and shown once on stderr, or taken from $CER_STREAM_SERVE_TOKEN)",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing on stdout (use with --out/--publish/--csv)")
    p.add_argument(
        "--json",
        action="store_true",
        help="JSON lines on stdout even when it is a terminal (where a person gets one readable line per "
        "window instead); a pipe or a file always gets JSON lines",
    )
    p.add_argument(
        "--dump-features",
        metavar="OUT.jsonl",
        type=Path,
        help="write each window's per-modality probabilities and features (for calibrate)",
    )
    p.add_argument(
        "--timeout",
        type=timeout_s,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait when opening or reading a network/camera source ({timeout_s.span}; "
        f"default {DEFAULT_TIMEOUT_S:g}); a live source with no data for this long counts as lost",
    )
    p.add_argument(
        "--reconnect",
        type=reconnect_policy,
        default="forever",
        metavar="POLICY",
        help="RTSP/camera: reopen a source that ends, fails or stalls: forever (default), off (the run "
        "ends with the source), or a number of attempts in a row before giving up (exit status 1)",
    )
    p.add_argument(
        "--reconnect-max-delay",
        type=positive_float,
        default=30.0,
        metavar="S",
        help="longest wait between two reopen attempts (> 0; exponential backoff with jitter; default 30)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="RTSP/camera: a source that is down at start is retried under --reconnect instead of failing",
    )
    # set by `cer-stream serve` when it restarts a stream's analyzer (stream.io.reconnect.Resume)
    p.add_argument("--resume", type=_resume, default=None, help=argparse.SUPPRESS)
    add_model_args(p)
    add_clip_args(p)
    add_temporal_args(p)
    add_audio_args(p)
    add_scene_args(p)
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error", "critical"],
        default="error",
        help="what cer-stream logs on stderr (default error: warnings are `warning` records in "
        "the output, whatever the level)",
    )
    p.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal and the input is a file)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _source(args: argparse.Namespace):
    """The source the flags name; ``UsageError`` (one line) when it cannot be used."""
    from stream.io.sources import CameraSource, FileSource, MicSource, RtspSource, SourceError

    source: FileSource | RtspSource | CameraSource | MicSource
    try:
        if args.video is None and args.audio is None and args.rtsp is None and args.camera is None:
            if not args.mic:
                raise UsageError("an input is required: --video FILE, --audio FILE, --rtsp URL, --camera N or --mic")
            if args.no_audio:
                raise UsageError("--no-audio leaves a microphone alone nothing to analyse")
            return MicSource(args.mic)
        if args.audio is not None:
            if args.no_audio:
                raise UsageError("--no-audio leaves --audio nothing to analyse")
            source = FileSource(args.audio, realtime=args.realtime, video=False)
            source.check()
            if args.mic:
                raise UsageError("--mic cannot be used with --audio (one sound source at a time)")
            return source
        if args.video is not None:
            source = FileSource(args.video, realtime=args.realtime, audio=not args.no_audio)
            source.check()
            if args.mic:
                raise UsageError("--mic adds live microphone audio to a camera; it cannot be used with --video")
            return source
        if args.rtsp is not None:
            source = RtspSource(args.rtsp, audio=not args.no_audio)
            source.check()
            if args.mic:
                raise UsageError("--mic adds live microphone audio to a camera; it cannot be used with --rtsp")
            return source
        source = CameraSource(args.camera, mic=args.mic)
        source.check()
        return source
    except SourceError as exc:
        raise UsageError(str(exc)) from None


def _check_outputs(args: argparse.Namespace) -> None:
    """``UsageError`` when an output file is the input or another output's file (by device and
    inode: a symlink or a hard link counts): checked before anything is opened, since opening an
    output truncates it."""
    from stream.sinks.outputs import SinkError, check_outputs

    names = ("out", "csv", "dump_features", "annotate")
    outputs = [(f"--{n.replace('_', '-')}", Path(getattr(args, n))) for n in names if getattr(args, n)]
    inputs = [
        (f"--{flag}", Path(getattr(args, flag))) for flag in ("video", "audio") if getattr(args, flag) is not None
    ]
    try:
        check_outputs(outputs, inputs)
    except SinkError as exc:
        raise UsageError(str(exc)) from None


class _Outputs:
    """The run's sinks and feature dump.  :meth:`close` keeps what they wrote once the run has
    started (its first record), else discards it: a run that fails at start (a bad input, a
    model that cannot load, an interrupt) leaves existing output files as they were."""

    def __init__(self) -> None:
        self.sinks: list = []
        self.features: Any = None
        self.started = False
        self._closed = False

    def mark_started(self, _record: object = None) -> None:
        self.started = True

    def close(self) -> None:
        """Idempotent (the run closes them before it reports; an early return here)."""
        if self._closed:
            return
        self._closed = True
        for s in self.sinks + ([self.features] if self.features is not None else []):
            if self.started:
                s.close()
            else:
                s.discard()


def run_stream(argv: list[str]) -> int:
    args = run_parser().parse_args(argv)
    try:
        _check_outputs(args)
        source = _source(args)
    except UsageError as exc:
        return fail(str(exc))
    outputs = _Outputs()
    try:
        return _run(args, source, outputs)
    finally:
        outputs.close()


def human_view(args: argparse.Namespace) -> bool:
    """Whether stdout shows readable lines (:class:`stream.sinks.terminal.TerminalSink`): on a
    terminal, unless ``--json``; JSON lines everywhere else."""
    if args.quiet or args.json:
        return False
    try:
        return sys.stdout.isatty()
    except (AttributeError, OSError, ValueError):
        return False


def _open_outputs(args: argparse.Namespace, source, outputs: _Outputs) -> None:
    """Open every output the flags ask for into ``outputs`` (``SinkError``, ``OSError`` or
    ``ValueError``, one line, when one cannot be used).  Files are staged: an existing one is
    replaced only when the run ends (:func:`stream.sinks.outputs.open_output`)."""
    from stream.sinks.annotate import AnnotateSink
    from stream.sinks.outputs import AbawCsvSink, JsonLinesSink, ZmqPublishSink
    from stream.sinks.web import WebSink, announce_token, parse_bind, url_host

    sinks = outputs.sinks
    if not args.quiet:
        if human_view(args):
            from stream.sinks.terminal import TerminalSink

            sinks.append(TerminalSink(sys.stdout))
        else:
            sinks.append(JsonLinesSink(sys.stdout, name="stdout"))
    if args.out:
        sinks.append(JsonLinesSink(path=args.out, option="--out", staged=True))
    if args.publish:
        sinks.append(ZmqPublishSink(args.publish))
    if args.csv:
        sinks.append(AbawCsvSink(args.csv, source.name, staged=True))
    if args.annotate:
        sinks.append(AnnotateSink(args.annotate, source, max_side=args.max_side))
    if args.serve:
        host, port = parse_bind(args.serve)
        web = WebSink(host, port, public=args.serve_public)
        sinks.append(web)
        sys.stderr.write(f"{PROG}: serving {web.url}\n")
        sys.stderr.flush()
        if web.token is not None:
            announce_token(web, f"--serve {url_host(host)}:{web.port}")
    if args.dump_features:
        outputs.features = JsonLinesSink(path=args.dump_features, option="--dump-features", staged=True)


def _run(args: argparse.Namespace, source, outputs: _Outputs) -> int:
    """The run command once its source is known: outputs, models, the analysis; exit status."""
    from stream.cli.flags import pipeline_options
    from stream.runtime.lifecycle import StartupError
    from stream.runtime.pipeline import Pipeline
    from stream.sinks.outputs import SinkError, SinkEvent

    try:
        _open_outputs(args, source, outputs)
    except (SinkError, OSError, ValueError) as exc:
        return fail(str(exc))
    # auto: a bar for a file when stderr is a terminal and stdout is not showing the human view
    # (whose lines say as much, and would break the bar's line)
    auto = sys.stderr.isatty() and source.kind == "video" and (args.quiet or not human_view(args))
    progress = {"on": True, "off": False}.get(args.progress, auto)
    pipeline = None
    try:
        pipeline = Pipeline(
            pipeline_options(args, progress=progress), sinks=outputs.sinks, features_out=outputs.features
        )
        pipeline.prepare(source)
        analyzer = pipeline.analyzer(source, on_record=outputs.mark_started)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        if pipeline is not None:
            pipeline.close()
        if interrupted():  # Ctrl-C while models loaded, turned into an error by a native import
            raise KeyboardInterrupt from None
        return fail(str(exc))

    def on_sink_event(ev: SinkEvent) -> None:
        # a lost output is said once on stderr too (its `warning` record goes to the other sinks)
        if ev.kind == "failed":
            sys.stderr.write(f"{PROG}: error: {ev.message}\n")
            sys.stderr.flush()

    analyzer.on_sink_event = on_sink_event

    interrupts = [0]

    def on_signal(signum, _frame):
        interrupts[0] += 1
        if signum == signal.SIGINT and interrupts[0] > 1:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, still cleaning up
        analyzer.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        end = analyzer.run()
    except StartupError as exc:
        if interrupts[0]:  # Ctrl-C (or SIGTERM) before the stream started: not an error
            sys.stderr.write(f"{PROG}: interrupted\n")
            return 130
        return fail(str(exc))
    except KeyboardInterrupt:  # a second Ctrl-C: what was written is kept (closed below)
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    finally:
        # the outputs are closed (staged files renamed over their targets) before a signal may end
        # the process: a SIGTERM in this stretch, with the default action back, killed it and left
        # the --out file under its temporary name. From here SIGINT and SIGTERM are ignored, and
        # the program (not a call from Python) keeps them so to its exit, which follows at once:
        # ignored, not a Python handler, which the interpreter's shutdown would reset to the
        # default action for the fraction of a second it takes (a SIGTERM then ended it with -15)
        for sig in old:
            signal.signal(sig, signal.SIG_IGN)
        try:
            pipeline.close()
            outputs.close()
            if analyzer.sinks_closed and "stdout" in analyzer.sinks_closed:
                _quiet_stdout()
        finally:
            if not as_program[0]:
                for sig, h in old.items():
                    signal.signal(sig, h)
    # exit status: 1 when the stream failed (or a live source was lost for good) or an asked-for
    # output was lost to a write error;
    # 0 otherwise, also when stdout's reader went away (`cer-stream ... | head -1`)
    if end.get("reason") in ("error", "source_lost") or analyzer.sinks_failed:
        return 1
    return 0


def _quiet_stdout() -> None:
    """stdout's reader is gone: point stdout at /dev/null so that nothing at exit reports a
    broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------- images
def images_main(argv: list[str]) -> int:
    from stream.cli.flags import Parser, add_model_args, face_options

    p = Parser(prog=f"{PROG} images", description="Analyse still images (largest face each); one JSON line per image.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files (anything OpenCV reads)")
    p.add_argument("--no-validate", action="store_true", help="skip FaceMesh validation of detections")

    add_model_args(p)
    args = p.parse_args(argv)
    import cv2
    import numpy as np

    from stream.core.labels import BASIC, COMPOUND
    from stream.fusion.compound import normalise, ppa
    from stream.runtime.build import build_face_analyzer
    from stream.sinks.outputs import dumps

    try:
        analyzer = build_face_analyzer(face_options(args), validate=not args.no_validate, track=False)
    except (RuntimeError, ValueError) as exc:
        return fail(str(exc))
    failed = 0
    try:
        for i, path in enumerate(args.paths):
            bgr = cv2.imread(path, cv2.IMREAD_COLOR) if Path(path).is_file() else None
            if bgr is None:
                why = "no such file" if not Path(path).exists() else "not a readable image"
                sys.stderr.write(f"{PROG}: error: {path}: {why}\n")
                print(dumps({"path": path, "error": why}), flush=True)
                failed += 1
                continue
            rgb = np.ascontiguousarray(bgr[:, :, ::-1])
            res = analyzer.analyse([(i, 0.0, rgb)])[0]
            if res.found:
                comp = ppa(res.basic)
                rec = {
                    "path": path,
                    "face": True,
                    "box": list(res.box),
                    "basic": dict(zip(BASIC, res.basic)),
                    "compound": dict(zip(COMPOUND, normalise(comp))),
                    "label": COMPOUND[int(np.argmax(comp))],
                    "basic_label": BASIC[int(np.argmax(res.basic))],
                }
            else:
                rec = {"path": path, "face": False, "basic": None, "compound": None, "label": None}
            print(dumps(rec), flush=True)
    finally:
        analyzer.close()
    return 1 if failed else 0


def _lazy(module: str, function: str):
    """A subcommand whose module (and its heavy imports) loads only when it is used."""

    def main(argv: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(argv)

    return main


COMMANDS = {
    "images": images_main,
    "calibrate": _lazy("stream.cli.offline", "calibrate_main"),
    "batch": _lazy("stream.cli.offline", "batch_main"),
    "eval": _lazy("stream.cli.offline", "eval_main"),
    "plot": _lazy("stream.cli.offline", "plot_main"),
    "serve": _lazy("stream.cli.offline", "serve_main"),
    "text": _lazy("stream.cli.offline", "text_main"),
    "train-head": _lazy("stream.cli.offline", "train_head_main"),
    "models": _lazy("engines.cli", "models_main"),
    "doctor": _lazy("stream.cli.doctor", "doctor_main"),
    "engines": _lazy("engines.cli", "engines_main"),
    "train-temporal": _lazy("stream.cli.offline", "train_temporal_main"),
    "temporal-features": _lazy("stream.cli.offline", "temporal_features_main"),
}


def main(argv: list[str] | None = None) -> int:
    from stream.core.logs import LEVELS, setup_logging, silence_native

    if argv is None:  # our own command line may hold an RTSP password: `ps` shows *** instead
        from stream.core.redact import redact_process_args

        redact_process_args()
    argv = list(sys.argv[1:] if argv is None else argv)
    # native libraries (MediaPipe/absl, TFLite, ONNX Runtime, CTranslate2) are quieted per
    # library, before any of them is imported; CER_STREAM_NATIVE_LOGS=1 keeps their lines
    silence_native()
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--log-level", choices=LEVELS, default=os.environ.get("CER_STREAM_LOG_LEVEL"))
    known, argv = pre.parse_known_args(argv)
    stream_run = not (argv and argv[0] in COMMANDS)
    # a stream run's warnings are `warning` records in its output; stderr then carries errors only
    setup_logging(known.log_level or ("error" if stream_run else "warning"))
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return run_stream(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
