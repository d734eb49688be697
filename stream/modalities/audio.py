"""The speech-emotion ("audio") modality, and how the audio/text modalities are put together.

By default the modality runs the shipped voice head (:mod:`stream.modalities.speech.voice`):
Whisper base encoder blocks 2-3 pooled over the window's speech plus 69 prosodic statistics,
normalised by the stream's running mean, softmax regression trained on RAVDESS and nEMO
(``stream/heads/voice.npz``, CC BY-NC-SA 4.0: non-commercial). It needs the joined Whisper base
(``cer-stream models fetch whisper-base``); without it the modality is absent in every window with
that one-line reason. Its info says ``speech_s`` (the trimmed speech the features used),
``voice_windows`` (speech windows in the stream's running mean) and ``voice_ms`` (its cost).

``--speech-emotion PATH`` replaces it with the user's own ONNX model (wav2vec2/WavLM kind). The
model's contract:

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

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.models.whisper_base import WhisperBaseMissing
from stream.core.labels import basic_name, to_basic
from stream.modalities.base import Modality, ModalityOutput, WindowInput
from stream.modalities.speech.vad import SAMPLE_RATE, SileroVAD, SpeechGate, VadOptions
from stream.modalities.speech.voice import VoiceEmotion, VoiceHeadError

if TYPE_CHECKING:
    from stream.modalities.speech.texthead import TextHead

log = logging.getLogger("cer_stream.audio")

VOICE_UNAVAILABLE = "voice head unavailable"
NO_MODEL = "no speech-emotion model (the voice head is off); supply one with --speech-emotion PATH"


class SpeechEmotionModel:
    """An ONNX speech-emotion model with its label order from metadata, through the engines layer."""

    def __init__(self, path: str | Path, *, device: str = "auto", engine=None, backend: str = "auto") -> None:
        self.path = Path(path).expanduser()
        self.device = device
        self.backend = backend
        self.engine = engine
        self.labels: tuple[str, ...] = ()
        self.output_kind: str | None = None
        self.normalize = False
        self.length: int | None = None

    def load(self) -> SpeechEmotionModel:
        if self.engine is None:
            from engines.select import create_engine

            self.engine = create_engine(
                self.path, backend=self.backend, device=self.device, model="wavlm-speech-emotion"
            )
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
            x = x[: self.length] if x.shape[0] >= self.length else np.pad(x, (0, self.length - x.shape[0]))
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


class SpeechEmotionModality(Modality):
    """Modality "audio": the shipped voice head, or the user's speech-emotion model, on speech windows.

    ``model=None`` with ``voice=True`` (the default) runs :class:`VoiceEmotion`; ``voice=False``
    leaves the modality absent (:data:`NO_MODEL`) unless a model is given."""

    name = "audio"
    needs_frames = False  # the window's audio only: runs beside the face work
    reads_images = False

    def __init__(
        self,
        model: SpeechEmotionModel | str | Path | None,
        *,
        gate: SpeechGate,
        device: str = "auto",
        backend: str = "auto",
        voice: bool | VoiceEmotion = True,
        voice_threads: int = 1,
    ) -> None:
        if model is not None and not isinstance(model, SpeechEmotionModel):
            model = SpeechEmotionModel(model, device=device, backend=backend)
        self.model = model
        self.voice: VoiceEmotion | None = None
        if model is None and voice is not False:
            if isinstance(voice, VoiceEmotion):
                self.voice = voice
            else:
                # ONNX Runtime unless TensorRT is asked for: the encoder's time axis has no plan profile yet
                self.voice = VoiceEmotion(
                    backend="tensorrt" if backend == "tensorrt" else "onnxruntime",
                    device=device,
                    intra_op_threads=voice_threads,
                )
        self.gate = gate
        self._error: str | None = None
        self._loaded = False

    def load(self) -> None:
        """Load the model or the voice head now (else on the first window); a failure is
        reported per window."""
        if self._loaded or self._error is not None:
            return
        try:
            if self.model is not None:
                if not self.model.labels:
                    self.model.load()
            elif self.voice is not None:
                self.voice.load()
            self._loaded = True
        except (WhisperBaseMissing, VoiceHeadError) as exc:
            self._error = str(exc)
            log.warning("voice head unavailable: %s", self._error)
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            where = self.model.path if self.model is not None else "voice head"
            log.warning("speech-emotion model %s unusable: %s", where, self._error)

    def reset(self) -> None:
        """A new stream: the voice head's running mean starts again."""
        if self.voice is not None:
            self.voice.reset()

    def __call__(self, inp: WindowInput) -> ModalityOutput:
        if inp.audio is None:
            return ModalityOutput.absent("no audio")
        vad = self.gate(inp)
        info: dict[str, Any] = vad.info() if vad is not None else {}
        if self.model is None and self.voice is None:
            return ModalityOutput.absent(NO_MODEL, **info)
        if vad is None or not vad.is_speech:
            return ModalityOutput.absent("no speech", **info)
        self.load()
        if self._error is not None:
            if self.model is None:
                return ModalityOutput.absent(VOICE_UNAVAILABLE, error=self._error, **info)
            return ModalityOutput.absent("speech-emotion model unusable", error=self._error, **info)
        if self.model is not None:
            probs, feature = self.model(inp.audio)
            return ModalityOutput(to_basic(probs, self.model.labels), feature, info)
        assert self.voice is not None
        basic, feature, voice_info = self.voice.predict(inp.audio)
        info.update(voice_info)
        if basic is None:
            return ModalityOutput.absent("too little speech after trimming", **info)
        return ModalityOutput(basic, feature, info)

    def close(self) -> None:
        if self.model is not None:
            self.model.close()
        if self.voice is not None:
            self.voice.close()
        self.gate.close()


# ---------------------------------------------------------------------------------------------
# Building the audio and text modalities from options
# ---------------------------------------------------------------------------------------------
@dataclass
class AudioOptions:
    """Options of the audio and text modalities (defaults: VAD + the shipped voice head + Whisper
    + text head).  The command line's ``--asr-*``, ``--vad-*``, ``--speech-emotion``,
    ``--no-asr``/``--no-text`` flags map onto them.  ``speech_emotion``: the user's own ONNX
    speech-emotion model instead of the voice head; ``voice``: the shipped voice head when no
    model is given (``False``: the audio modality is absent); ``voice_threads``: its encoder's
    ONNX Runtime threads."""

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
    #: languages a multilingual model may detect (empty: every language, translated to English,
    #: with a multilingual model; ``language`` only when ``asr_translate`` is off), or no gate at all
    asr_min_word_probability: float = 0.55
    asr_languages: tuple[str, ...] = ()
    asr_gate: bool = True
    #: a multilingual recogniser translates other languages to English for the text head (Whisper's
    #: translate task); False: only ``language`` (and ``asr_languages``) are read
    asr_translate: bool = True
    voice: bool = True
    #: ONNX Runtime threads of the voice head's encoder (1: the speech stages share the cores)
    voice_threads: int = 1
    #: a live source: how many windows late the voice's and the words' result may be and still be
    #: used (:class:`stream.modalities.base.LaggedModality`'s ``max_lag``; the record's
    #: ``lag_windows`` says how late it was).  1: at most the previous window's; more keeps them
    #: when the recogniser falls behind (many speaking streams on few cores), older as they are
    max_lag: int = 1


def _wants_text(opts: AudioOptions) -> bool:
    """Whether ``opts`` asks for the text modality (words, then the speech text head)."""
    return opts.asr and opts.text


def audio_specs(opts: AudioOptions, *, text_head: TextHead | None = None) -> dict[str, dict[str, Any]]:
    """The constructor arguments of the models ``opts`` asks for, by kind: ``vad``
    (:class:`SileroVAD`), ``voice`` (:class:`VoiceFeatures`), ``asr`` (:class:`SpeechRecognizer`), ``text`` (the sentence encoder;
    only with the text modality).  One place for both the modalities built here and the model
    host's preloading (:mod:`stream.serve.model_host`), so a stream finds its models already loaded.

    The sentence encoder's ``max_len`` is the speech text head's: ``text_head`` when the caller
    has it already (:func:`build_audio_modalities`, so the head file is read once), else it is read."""
    from stream.modalities.speech.asr import AsrGate, AsrOptions

    specs: dict[str, dict[str, Any]] = {"vad": {"backend": opts.backend, "device": opts.device}}
    if opts.speech_emotion is None and opts.voice:
        # ONNX Runtime unless TensorRT is asked for: the encoder's time axis has no plan profile yet
        specs["voice"] = {
            "whisper_dir": None,
            "backend": "tensorrt" if opts.backend == "tensorrt" else "onnxruntime",
            "device": opts.device,
            "intra_op_threads": opts.voice_threads,
        }
    if _wants_text(opts):
        gate = (
            AsrGate(min_word_probability=opts.asr_min_word_probability, languages=opts.asr_languages)
            if opts.asr_gate
            else AsrGate.off()
        )
        specs["asr"] = {
            "model_path": opts.asr_model,
            "device": opts.device,
            "options": AsrOptions(
                language=opts.language, beam_size=opts.asr_beam_size, gate=gate, translate=opts.asr_translate
            ),
        }
        if text_head is None:
            from stream.modalities.speech.texthead import TextHead

            text_head = TextHead.load("speech")
        specs["text"] = {"backend": opts.backend, "device": opts.device, "max_len": text_head.max_len}
    return specs


def build_audio_modalities(opts: AudioOptions, *, share_gate: bool = True) -> list[Modality]:
    """The audio modality, then the text modality (unless disabled).  With ``share_gate`` both
    use one speech gate (one VAD stream); without it the text modality gets its own, so that it
    can run on another thread.  The text modality owns the recogniser.

    Under ``cer-stream serve``'s model host (:func:`stream.modalities.hosted.active_host`) the voice's
    encoder, Whisper and the sentence encoder are the host's; the gates, the voice's running mean
    and the transcript store stay in this process."""
    from stream.modalities.hosted import active_host

    host = active_host()
    head: TextHead | None = None
    if _wants_text(opts):  # read once: the encoder's max_len (the specs) and the text modality's head
        from stream.modalities.speech.texthead import TextHead

        head = TextHead.load("speech")
    specs = audio_specs(opts, text_head=head)

    def new_gate() -> SpeechGate:
        vad: SileroVAD
        if host is not None:
            from stream.modalities.hosted import RemoteVAD

            vad = RemoteVAD(host, **specs["vad"])
        else:
            vad = SileroVAD(**specs["vad"])
        return SpeechGate(
            vad, options=VadOptions(threshold=opts.vad_threshold, min_speech_fraction=opts.min_speech_fraction)
        )

    gate = new_gate()
    voice: bool | VoiceEmotion = opts.voice
    if host is not None and "voice" in specs:
        from stream.modalities.hosted import RemoteVoiceFeatures

        v = specs["voice"]
        voice = VoiceEmotion(backend=v["backend"], device=v["device"], intra_op_threads=v["intra_op_threads"])
        voice.features = RemoteVoiceFeatures(host, **v)  # type: ignore[assignment]
    mods: list[Modality] = [
        SpeechEmotionModality(
            opts.speech_emotion,
            gate=gate,
            device=opts.device,
            backend=opts.backend,
            voice=voice,
            voice_threads=opts.voice_threads,
        )
    ]
    if "asr" in specs:
        from stream.modalities.speech.asr import SpeechRecognizer
        from stream.modalities.text import SpeechTextModality

        a = specs["asr"]
        assert head is not None  # "asr" is in the specs only when the text modality is wanted
        if host is not None:
            from stream.modalities.hosted import RemoteSpeechRecognizer, RemoteTextEncoder

            asr: SpeechRecognizer = RemoteSpeechRecognizer(host, **a)
            head.encoder = RemoteTextEncoder(host, **specs["text"])
        else:
            asr = SpeechRecognizer(**a)
        mods.append(
            SpeechTextModality(
                gate=gate if share_gate else new_gate(),
                asr=asr,
                head=head,
                backend=opts.backend,
                device=opts.device,
            )
        )
    return mods
