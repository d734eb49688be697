"""Voice activity: Silero VAD (ONNX, from the ``silero-vad`` wheel) and the per-window speech gate.

Only the model file ``silero_vad/data/silero_vad.onnx`` of the wheel is used (MIT); its Python
code imports torch and is never imported. Install it without its dependencies:
``pip install --no-deps silero-vad``.

The model's contract (v5/v6, the file shipped since silero-vad 5):

* one call scores one chunk of 512 samples at 16 kHz (32 ms);
* the input is the chunk with the *last 64 samples of the previous chunk* in front of it
  (zeros before the first chunk): ``input`` float32 [B, 576];
* ``state`` float32 [2, B, 128] is the recurrent state, returned as ``stateN`` and fed back
  on the next call; zeros to start;
* ``sr`` int64 scalar, 16000;
* ``output`` [B, 1] is the speech probability of the chunk.

:class:`SileroVAD` is the stateful callable (``__call__(chunk) -> probability``,
``reset_states()``). :class:`SpeechGate` turns a window's audio into a :class:`VadResult`
(per-chunk probabilities, speech segments, the speech fraction and the decision: speech when
more than 10 % of the window is speech, the rule of the seeds' published code,
SMIL-SPCRAS/ICCVW_25), computed once per window and left in
``WindowInput.shared["vad"]`` for the speech-emotion and speech-text modalities.

Overlapping windows (4 s every 2 s) share 2 s of audio. The gate runs the VAD as one stream on
a grid of 512-sample chunks in media time: a window feeds only the chunks after the last one
already scored, and reuses the scores of the overlap, so each chunk is scored once and the
recurrent state carries over exactly as in one pass over the whole stream. The chunk that
straddles a window's end is scored from a copy of the state with zero padding ("peeked") and
scored for real by the next window. The overlap is compared with the samples scored before;
if it differs (audio that arrived late in a live run, a skipped window, a gap) the stream is
restarted at the window's start.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("cer_stream.audio")

SAMPLE_RATE = 16000
#: Samples per VAD call at 16 kHz (32 ms), and the context the model wants in front of them.
CHUNK_SAMPLES = 512
CONTEXT_SAMPLES = 64
STATE_SHAPE = (2, 1, 128)

PACKAGE = "silero-vad"
PACKAGE_MODULE = "silero_vad"
MODEL_FILE = "data/silero_vad.onnx"
MISSING = (
    f"{PACKAGE} is not installed; install it without its dependencies (it declares torch): "
    f"pip install --no-deps {PACKAGE}"
)
SHARED_KEY = "vad"


class SileroNotInstalledError(ModuleNotFoundError):
    """The ``silero-vad`` wheel, which carries the ONNX model, is not installed."""


def silero_model_path() -> Path:
    """``silero_vad/data/silero_vad.onnx`` of the installed wheel, found without importing it."""
    from engines.models.storage import package_dir

    root = package_dir(PACKAGE_MODULE)
    if root is None:
        raise SileroNotInstalledError(MISSING, name=PACKAGE_MODULE)
    path = root / MODEL_FILE
    if not path.is_file():
        raise SileroNotInstalledError(f"{MISSING} (found the package but not {MODEL_FILE})", name=PACKAGE_MODULE)
    return path


def silero_version() -> str | None:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class VadOptions:
    """How chunk probabilities become speech segments and a window decision.

    The segment rules are Silero's own (``get_speech_timestamps`` defaults): a segment starts
    at a chunk with probability >= ``threshold``, ends after ``min_silence_ms`` below
    ``neg_threshold``, is kept when at least ``min_speech_ms`` long and padded by
    ``speech_pad_ms`` on each side.
    """

    threshold: float = 0.5
    neg_threshold: float | None = None  # default: threshold - 0.15
    min_speech_ms: float = 250.0
    min_silence_ms: float = 100.0
    speech_pad_ms: float = 30.0
    #: A window is speech when its speech segments cover more than this fraction (the published
    #: code of the 9th ABAW CER paper of team RAS, SMIL-SPCRAS/ICCVW_25).
    min_speech_fraction: float = 0.10

    @property
    def exit_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


@dataclass(frozen=True)
class VadState:
    """Where a Silero VAD stream stands: the recurrent state ``[2, 1, 128]`` and the last
    ``CONTEXT_SAMPLES`` samples of the previous chunk (the next call's context).

    Read-only copies, so a snapshot never changes as the stream goes on, and one taken from a
    VAD can be handed to another (the model host runs every stream's chunks on one VAD, the
    state travelling with each request: :mod:`stream.serve.model_host`).
    """

    recurrent: np.ndarray
    context: np.ndarray

    def __post_init__(self) -> None:
        for name, shape in (("recurrent", STATE_SHAPE), ("context", (CONTEXT_SAMPLES,))):
            value = np.array(getattr(self, name), dtype=np.float32)  # a copy
            if value.shape != shape:
                raise ValueError(f"Silero VAD {name} state must have shape {shape}, got {value.shape}")
            value.setflags(write=False)
            object.__setattr__(self, name, value)


class SileroVAD:
    """Silero VAD as a streaming stage: feed 512-sample chunks in order, get probabilities.

    Args:
        model_path: the ONNX file (default: the one in the ``silero-vad`` wheel).
        device: passed to the engine; the model is tiny and runs best on one CPU thread.
        engine: an already built engine (tests, or a registry choosing the backend).
    """

    def __init__(
        self, model_path: str | Path | None = None, *, device: str = "cpu", engine=None, backend: str = "auto"
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.device = device
        self.backend = backend
        self.engine = engine
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset_states()

    def load(self) -> SileroVAD:
        if self.engine is None:
            from engines.select import create_engine

            self.engine = create_engine(
                self.model_path or silero_model_path(),
                backend=self.backend,
                device=self.device,
                intra_op_threads=1,
                model="silero-vad",
            )
        self.engine.load()
        names = set(self.engine.input_names)
        if names != {"input", "state", "sr"}:
            raise ValueError(
                f"{self.engine.model_path.name}: expected Silero VAD inputs input/state/sr, got {sorted(names)}"
            )
        return self

    def reset_states(self) -> None:
        """Forget the stream: zero recurrent state and zero context."""
        self._state = np.zeros(STATE_SHAPE, np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, np.float32)

    @property
    def state(self) -> VadState:
        """Where the stream stands now (a snapshot: later chunks leave it as it is)."""
        return VadState(self._state, self._context)

    @state.setter
    def state(self, value: VadState) -> None:
        """Go on from ``value``: the next chunk is scored as it would be by the VAD that reached it."""
        self._state, self._context = value.recurrent, value.context

    def _run(self, chunk: np.ndarray) -> tuple[float, np.ndarray]:
        if self.engine is None or not self.engine.loaded:
            self.load()
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if chunk.shape[0] != CHUNK_SAMPLES:
            raise ValueError(f"Silero VAD takes chunks of {CHUNK_SAMPLES} samples at 16 kHz, got {chunk.shape[0]}")
        x = np.concatenate([self._context, chunk])[None, :]
        prob, state = self.engine.infer({"input": x, "state": self._state, "sr": self._sr})
        return float(prob.reshape(-1)[0]), state

    def __call__(self, chunk: np.ndarray) -> float:
        """Speech probability of the next 512-sample chunk; advances the stream."""
        prob, self._state = self._run(chunk)
        self._context = np.array(chunk[-CONTEXT_SAMPLES:], dtype=np.float32)
        return prob

    def feed(self, chunks: np.ndarray) -> np.ndarray:
        """Probabilities of consecutive 512-sample chunks ``[n, 512]``; advances the stream."""
        return np.asarray([self(c) for c in np.asarray(chunks, np.float32).reshape(-1, CHUNK_SAMPLES)], np.float32)

    def peek(self, chunk: np.ndarray) -> float:
        """Probability of ``chunk`` as the next chunk, leaving the stream where it was."""
        return self._run(chunk)[0]

    def probs(self, audio: np.ndarray) -> np.ndarray:
        """Probabilities of every 512-sample chunk of ``audio`` (the last one zero-padded),
        continuing the current stream."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        out = []
        for begin in range(0, audio.shape[0], CHUNK_SAMPLES):
            chunk = audio[begin : begin + CHUNK_SAMPLES]
            if chunk.shape[0] < CHUNK_SAMPLES:
                chunk = np.pad(chunk, (0, CHUNK_SAMPLES - chunk.shape[0]))
            out.append(self(chunk))
        return np.asarray(out, np.float32)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def speech_segments(
    probs: np.ndarray, n_samples: int, options: VadOptions = VadOptions(), *, chunk: int = CHUNK_SAMPLES
) -> list[tuple[int, int]]:
    """Speech segments ``[(begin, end)]`` in samples from per-chunk probabilities.

    Chunk ``i`` covers samples ``[i*chunk, (i+1)*chunk)``; segments are clipped to
    ``[0, n_samples)``. Hysteresis, minimum lengths and padding as in :class:`VadOptions`.
    """
    sr = SAMPLE_RATE
    min_speech = sr * options.min_speech_ms / 1000
    min_silence = sr * options.min_silence_ms / 1000
    pad = int(sr * options.speech_pad_ms / 1000)
    raw: list[list[int]] = []
    start: int | None = None
    silence_from: int | None = None
    for i, p in enumerate(np.asarray(probs, np.float64)):
        pos = i * chunk
        if p >= options.threshold:
            silence_from = None
            if start is None:
                start = pos
        elif start is not None and p < options.exit_threshold:
            if silence_from is None:
                silence_from = pos
            if pos + chunk - silence_from >= min_silence:
                raw.append([start, silence_from])
                start = silence_from = None
    if start is not None:
        raw.append([start, n_samples])
    kept = [seg for seg in raw if seg[1] - seg[0] >= min_speech]
    out: list[tuple[int, int]] = []
    for begin, end in kept:
        begin, end = max(0, begin - pad), min(n_samples, end + pad)
        if out and begin <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((begin, end))
    return out


@dataclass
class VadResult:
    """Voice activity of one window (times in seconds from the window's start)."""

    probs: np.ndarray  # per chunk of the window's grid
    chunk_starts: np.ndarray  # sample offset of each chunk from the window start (may be < 0)
    segments: list[tuple[float, float]]
    speech_s: float
    duration_s: float
    is_speech: bool
    reused_chunks: int = 0  # chunks whose score came from the previous window
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.speech_s / self.duration_s if self.duration_s > 0 else 0.0

    def info(self) -> dict[str, Any]:
        """Compact fields for the window record."""
        return {
            "speech": self.is_speech,
            "speech_fraction": round(self.fraction, 3),
            "speech_segments": [[round(a, 2), round(b, 2)] for a, b in self.segments],
        }


class SpeechGate:
    """Decides per window whether there is speech, running Silero VAD as one media-time stream.

    ``gate(inp)`` returns the window's :class:`VadResult` (``None`` when the window has no
    audio), computed on the first call and cached in ``inp.shared["vad"]``.
    """

    def __init__(self, vad: SileroVAD | None = None, *, options: VadOptions = VadOptions()) -> None:
        self.vad = vad or SileroVAD()
        self.options = options
        self.reset_states()

    def reset_states(self) -> None:
        self.vad.reset_states()
        self._scores: dict[int, float] = {}  # absolute chunk start sample -> probability
        self._fed_until: int | None = None  # absolute sample where the next chunk starts
        self._last: tuple[int, np.ndarray] | None = None  # (start sample, audio) of the last window
        self.restarts = 0

    def __call__(self, inp) -> VadResult | None:
        if SHARED_KEY in inp.shared:
            return inp.shared[SHARED_KEY]
        result = None if inp.audio is None else self.analyse(inp.audio, inp.window.start)
        inp.shared[SHARED_KEY] = result
        return result

    def _continues(self, start: int, audio: np.ndarray) -> bool:
        if self._fed_until is None or self._last is None:
            return False
        last_start, last_audio = self._last
        end = start + audio.shape[0]
        if not (last_start <= start <= self._fed_until <= end):
            return False
        shared = min(last_start + last_audio.shape[0] - start, audio.shape[0])
        # the samples this window shares with the last one must be the ones scored then
        offset = start - last_start
        return shared <= 0 or np.array_equal(audio[:shared], last_audio[offset : offset + shared])

    def analyse(self, audio: np.ndarray, start_s: float) -> VadResult:
        """Voice activity of ``audio`` (16 kHz mono) that starts at media time ``start_s``."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        start = int(round(start_s * SAMPLE_RATE))
        n = audio.shape[0]
        end = start + n
        if not self._continues(start, audio):
            if self._fed_until is not None:
                self.restarts += 1
            self.vad.reset_states()
            self._scores = {}
            self._fed_until = start
        reused = sum(1 for pos in self._scores if pos + CHUNK_SAMPLES > start)
        pos = self._fed_until
        assert pos is not None  # set just above, or kept because this window continues the stream
        whole = (end - pos) // CHUNK_SAMPLES
        if whole > 0:  # the chunks not scored yet, in one call
            chunks = audio[pos - start : pos - start + whole * CHUNK_SAMPLES].reshape(whole, CHUNK_SAMPLES)
            for k, prob in enumerate(self.vad.feed(chunks)):
                self._scores[pos + k * CHUNK_SAMPLES] = float(prob)
            pos += whole * CHUNK_SAMPLES
        self._fed_until = pos
        starts = sorted(p for p in self._scores if p + CHUNK_SAMPLES > start)
        probs = [self._scores[p] for p in starts]
        if pos < end:  # the straddling tail chunk: scored without advancing the stream
            tail = audio[pos - start :]
            probs.append(self.vad.peek(np.pad(tail, (0, CHUNK_SAMPLES - tail.shape[0]))))
            starts.append(pos)
        self._last = (start, audio)
        for old in [p for p in self._scores if p + CHUNK_SAMPLES <= start]:
            del self._scores[old]

        offsets = np.asarray(starts, np.int64) - start
        probs_arr = np.asarray(probs, np.float32)
        segments = self._segments(probs_arr, offsets, n)
        speech = sum(b - a for a, b in segments)
        duration = n / SAMPLE_RATE
        frac = speech / duration if duration > 0 else 0.0
        return VadResult(
            probs_arr,
            offsets,
            segments,
            speech,
            duration,
            is_speech=frac > self.options.min_speech_fraction,
            reused_chunks=reused,
        )

    def _segments(self, probs: np.ndarray, offsets: np.ndarray, n: int) -> list[tuple[float, float]]:
        if probs.size == 0:
            return []
        first = int(offsets[0])  # <= 0: the grid may start before the window
        segs = speech_segments(probs, n - first, self.options)
        out = []
        for a, b in segs:
            a, b = max(a + first, 0), min(b + first, n)
            if b > a:
                out.append((a / SAMPLE_RATE, b / SAMPLE_RATE))
        return out

    def close(self) -> None:
        self.vad.close()
