"""The speech-text ("text") modality: what was said in the window, classified by the speech head.

Per window: the speech gate's decision (shared with the audio modality) -> on speech, the
window's words from the recogniser's transcript store (``inp.shared["transcript"]``; each
stretch of audio is transcribed once, words are given to windows by timestamp and kept only
where the VAD heard speech) -> the recogniser's evidence gate (:class:`stream.modalities.speech.asr.AsrGate`,
on the words as spoken) -> the English text (the words themselves for English speech, Whisper's
translation of them for any other language the default multilingual model detects) ->
all-MiniLM-L6-v2 embedding -> the committed ``speech`` head (GoEmotions, English) -> 8 basic
probabilities. The window record (``modalities.text``) holds ``transcript`` (the words as
spoken, in their language), ``translation`` (the English the head read, only when translated),
``asr_task`` (``"transcribe"`` or ``"translate"``), ``asr_language`` and
``asr_language_probability`` (multilingual model), the evidence (``asr_avg_logprob``,
``asr_no_speech_prob``, ``asr_compression_ratio``, ``asr_word_probability``, ``asr_calls``,
``asr_ms``) and ``confidence`` (mean word probability, 0..1), by which fusion scales the text's
weight; the embedding is the modality's feature. Absent, with the reason, when the window has
no audio, no speech, an empty transcript (or translation), a transcript the gate rejects
("low-confidence transcript", "off-language speech ...", "uncertain language", ...), when
speech to text failed, or when no recogniser can be loaded (e.g. the Whisper base wheels are
missing: their one-line reason, in every speech window).
"""

from __future__ import annotations

import logging
from typing import Any

from stream.modalities.base import Modality, ModalityOutput, WindowInput
from stream.modalities.speech.asr import SpeechRecognizer
from stream.modalities.speech.texthead import TextHead
from stream.modalities.speech.vad import SpeechGate

log = logging.getLogger("cer_stream.text")


class SpeechTextModality(Modality):
    name = "text"
    needs_frames = False  # the window's audio only: runs beside the face work
    reads_images = False

    def __init__(
        self,
        *,
        gate: SpeechGate,
        asr: SpeechRecognizer,
        head: TextHead | None = None,
        backend: str = "auto",
        device: str = "auto",
    ) -> None:
        self.gate = gate
        self.asr = asr
        self.head = head
        self.backend = backend
        self.device = device
        self._error: str | None = None
        self._loaded = False

    def load(self) -> None:
        """Load the recogniser, the head and its encoder now (else on the first speech window).
        A failure is remembered and reported as the reason in every window."""
        if self._loaded or self._error is not None:
            return
        try:
            self.asr.load()
            if self.head is None:
                self.head = TextHead.load("speech")
            if self.head.encoder is None:
                from engines.models.minilm import TextEncoder

                self.head.encoder = TextEncoder(backend=self.backend, device=self.device, max_len=self.head.max_len)
            self.head.encoder.load()
            self._loaded = True
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            log.warning("text modality unavailable: %s", self._error)

    def __call__(self, inp: WindowInput) -> ModalityOutput:
        if inp.audio is None:
            return ModalityOutput.absent("no audio")
        vad = self.gate(inp)
        if vad is None or not vad.is_speech:
            return ModalityOutput.absent("no speech")
        self.load()
        if self._error is not None:
            return ModalityOutput.absent("text modality unavailable", error=self._error)
        transcript = self.asr(inp)
        assert transcript is not None  # the recogniser returns None only without audio
        info: dict[str, Any] = transcript.info()
        if transcript.error:
            return ModalityOutput.absent("speech to text failed", **info)
        if not transcript.text.strip():
            return ModalityOutput.absent("empty transcript", **info)
        rejected = self.asr.rejection(transcript)
        if rejected is not None:
            return ModalityOutput.absent(rejected, **info)
        text = transcript.head_text  # English: the words, or their translation
        if not text.strip():
            return ModalityOutput.absent("empty translation", **info)
        assert self.head is not None  # load() succeeded, so the head is set
        probs, emb = self.head.predict_with_embeddings([text])
        return ModalityOutput(probs[0], emb[0], info)

    def close(self) -> None:
        self.asr.close()
        if self.head is not None:
            self.head.close()
        self.gate.close()
