"""The shipped speech-emotion ("voice") head: Whisper base encoder features + prosody, softmax regression.

Features of one stretch of speech (16 kHz mono float32), 1093 values:

1. :func:`stream.modalities.speech.prosody.trim`: energy VAD, cut to the speech (100 ms margin),
   at most the middle 6 s;
2. the log-mel spectrogram of the trimmed stretch ALONE (faster-whisper's ``FeatureExtractor``,
   not padded to 30 s: padding changes the pooled middle layers), through Whisper base's
   encoder blocks 1..3 (:mod:`engines.models.whisper_encoder`, ONNX); the outputs of blocks 2
   and 3 are each pooled as [mean(512), std(512)] over the encoder frames (20 ms) whose two mel
   frames hold speech, and the two pooled vectors are averaged element-wise -> 1024 values;
3. the 69 prosodic/spectral statistics of :func:`stream.modalities.speech.prosody.prosodic`.

Classification (:class:`VoiceHead`, ``stream/heads/voice.npz``): ``z = x - m``, where ``m`` is the
running mean of the stream's speech windows (source-mean normalisation: it removes the
microphone, room, language and speaker-population offsets that dominate cross-corpus error); until
:data:`FULL_MEAN_WINDOWS` windows have been seen ``m`` is blended with the training average
``source_mean_fallback``. Then ``p = softmax(W ((z - feat_mean) / feat_std) + b)`` over Anger,
Disgust, Fear, Happiness, Neutral, Sadness, Surprise (no Other: no corpus has it). Per-speaker
rescaling is deliberately NOT done: a person often stays in one mood for minutes, so per-speaker
statistics subtract the very label (measured: it collapses to chance on natural Urdu speech).

**Batches across streams.** :meth:`VoiceFeatures.batch` computes the features of several
stretches (e.g. the speech windows of several streams) with ONE encoder run, padded to the
longest and masked (:meth:`engines.models.whisper_encoder.WhisperEncoder.batch`): the same
features per item as :meth:`VoiceFeatures.__call__`. The per-stream part (the head and the
stream's running mean) is :class:`VoiceEmotion`; :meth:`VoiceEmotion.predict_from_feature`
takes a feature computed elsewhere (a shared model host), after
:meth:`VoiceEmotion.load_head` with the sha256 of the Whisper model that computed it.

The head records the sha256 of the ``model.bin`` it was trained with; a different Whisper
model is refused with one line (its encoder features would not match the weights).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream.core.labels import basic_name, to_basic
from stream.modalities.speech.prosody import N_PROSODIC, prosodic, speech_mask, trim

HEAD_PATH = Path(__file__).resolve().parents[2] / "heads" / "voice.npz"  # stream/heads/voice.npz
#: Bumped whenever the feature recipe changes (cached training features are keyed by it).
FEATURE_VERSION = 1
WHISPER_DIM = 1024
FEATURE_DIM = WHISPER_DIM + N_PROSODIC  # 1093
#: Windows after which the stream's own mean replaces the training mean entirely.
FULL_MEAN_WINDOWS = 20
#: Stretches shorter than this (after trimming) give no features.
MIN_SPEECH_S = 0.3


class VoiceHeadError(ValueError):
    """The head file is unusable (missing, malformed, or trained with another Whisper model)."""


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------
def speech_frames(x: np.ndarray, encoder_frames: int) -> np.ndarray:
    """Which encoder frames (20 ms, two mel frames each) hold speech; all when fewer than 3 do."""
    m, _ = speech_mask(x)
    mel = np.zeros(2 * encoder_frames, bool)
    k = min(len(m), 2 * encoder_frames)
    mel[:k] = m[:k]
    sel = mel[0::2] | mel[1::2]
    if sel.sum() < 3:
        sel[:] = True
    return sel


def pool(hidden: list[np.ndarray], sel: np.ndarray) -> np.ndarray:
    """The element-wise average over layers of [mean, std] over the selected frames."""
    pooled = [np.concatenate([h[sel].mean(0), h[sel].std(0)]) for h in hidden]
    return np.mean(pooled, axis=0).astype(np.float32)


class VoiceFeatures:
    """``features(audio) -> (1093 values, info)`` for one stretch of 16 kHz speech.

    Args:
        whisper_dir: the CTranslate2 Whisper base folder (default: the joined registry wheels).
        backend/device/intra_op_threads: the encoder's engine (see
            :class:`engines.models.whisper_encoder.WhisperEncoder`).
    """

    def __init__(
        self,
        whisper_dir: str | Path | None = None,
        *,
        backend: str = "auto",
        device: str = "cpu",
        intra_op_threads: int | None = 1,
    ) -> None:
        from engines.models.whisper_encoder import WhisperEncoder

        self.encoder = WhisperEncoder(whisper_dir, backend=backend, device=device, intra_op_threads=intra_op_threads)
        self._mel: Any = None

    def load(self) -> VoiceFeatures:
        """Load the encoder (raises ``WhisperBaseMissing`` with one line when it is missing)."""
        if self._mel is None:
            from faster_whisper.feature_extractor import FeatureExtractor

            self.encoder.load()
            self._mel = FeatureExtractor(feature_size=80)
        return self

    @property
    def model_sha256(self) -> str | None:
        return self.encoder.model_sha256

    def __call__(self, audio: np.ndarray) -> tuple[np.ndarray | None, dict[str, Any]]:
        """The feature vector (None when under :data:`MIN_SPEECH_S` of speech remains after
        trimming) and what was used: ``speech_s`` (the trimmed stretch)."""
        return self.batch([audio])[0]

    def batch(self, audios: Sequence[np.ndarray]) -> list[tuple[np.ndarray | None, dict[str, Any]]]:
        """:meth:`__call__` of each stretch, with one encoder run for all of them (each item
        pooled over its own speech frames only; see the module's docstring)."""
        self.load()
        trimmed = [trim(np.asarray(audio, np.float32).reshape(-1)) for audio in audios]
        infos: list[dict[str, Any]] = [{"speech_s": round(len(x) / 16000, 3)} for x in trimmed]
        keep = [i for i, x in enumerate(trimmed) if len(x) >= MIN_SPEECH_S * 16000]
        # the last frame of faster-whisper's STFT is dropped (as Whisper does)
        hidden = self.encoder.batch([self._mel(trimmed[i])[:, :-1] for i in keep])
        out: list[tuple[np.ndarray | None, dict[str, Any]]] = [(None, info) for info in infos]
        for i, h in zip(keep, hidden):
            x = trimmed[i]
            feature = np.concatenate([pool(h, speech_frames(x, h[0].shape[0])), prosodic(x)]).astype(np.float32)
            out[i] = (np.nan_to_num(feature), infos[i])
        return out

    def close(self) -> None:
        self.encoder.close()


# ---------------------------------------------------------------------------------------------
# The head
# ---------------------------------------------------------------------------------------------
@dataclass
class VoiceHead:
    """Softmax regression over source-mean-normalised voice features (see the module docstring)."""

    weight: np.ndarray  # [C, 1093]
    bias: np.ndarray  # [C]
    labels: tuple[str, ...]
    feat_mean: np.ndarray
    feat_std: np.ndarray
    source_mean_fallback: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path | None = None) -> VoiceHead:
        path = Path(path) if path is not None else HEAD_PATH
        if not path.is_file():
            raise VoiceHeadError(f"no voice head at {path}; train one with `cer-stream train-head --kind voice`")
        try:
            with np.load(path, allow_pickle=False) as d:
                arrays = {k: d[k] for k in d.files}
            head = cls(
                weight=arrays["weight"].astype(np.float32),
                bias=arrays["bias"].astype(np.float32),
                labels=tuple(str(s) for s in arrays["labels"]),
                feat_mean=arrays["feat_mean"].astype(np.float32),
                feat_std=arrays["feat_std"].astype(np.float32),
                source_mean_fallback=arrays["source_mean_fallback"].astype(np.float32),
                meta=json.loads(str(arrays["meta"])),
                path=path,
            )
        except (KeyError, ValueError, OSError) as exc:
            raise VoiceHeadError(f"{path}: not a voice head ({type(exc).__name__}: {exc})") from None
        for name in head.labels:
            basic_name(name)
        dims = {
            head.weight.shape[1],
            head.feat_mean.shape[0],
            head.feat_std.shape[0],
            head.source_mean_fallback.shape[0],
        }
        if dims != {FEATURE_DIM} or head.weight.shape[0] != len(head.labels) or head.bias.shape != (len(head.labels),):
            raise VoiceHeadError(f"{path}: shapes do not match {len(head.labels)} classes x {FEATURE_DIM} features")
        return head

    @property
    def model_sha256(self) -> str | None:
        return self.meta.get("recipe", {}).get("whisper", {}).get("model_bin_sha256")

    def check_model(self, sha256: str | None) -> None:
        """Refuse a Whisper model other than the one the head was trained with."""
        want = self.model_sha256
        if want is None or sha256 != want:
            raise VoiceHeadError(
                f"{self.path}: trained on Whisper model.bin sha256 {str(want)[:16]}..., "
                f"the model in use has {str(sha256)[:16]}...; retrain with `cer-stream train-head --kind voice`"
            )

    def probs(self, x: np.ndarray, source_mean: np.ndarray) -> np.ndarray:
        """Class probabilities [..., C] (head order) for features ``x`` [..., 1093]."""
        z = (np.asarray(x, np.float64) - source_mean - self.feat_mean) / self.feat_std
        logits = z @ self.weight.T.astype(np.float64) + self.bias
        logits -= logits.max(-1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)


class RunningMean:
    """The stream's mean feature vector, blended with the training mean until
    :data:`FULL_MEAN_WINDOWS` windows: ``w * stream + (1 - w) * fallback``, ``w = n / 20``."""

    def __init__(self, fallback: np.ndarray, full_after: int = FULL_MEAN_WINDOWS) -> None:
        self.fallback = np.asarray(fallback, np.float64)
        self.full_after = full_after
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self._sum = np.zeros_like(self.fallback)

    def add(self, x: np.ndarray) -> None:
        self.n += 1
        self._sum += x

    @property
    def value(self) -> np.ndarray:
        if self.n == 0:
            return self.fallback
        w = min(1.0, self.n / self.full_after)
        return w * (self._sum / self.n) + (1.0 - w) * self.fallback


class VoiceEmotion:
    """Features + head + the stream's running mean: ``predict(audio) -> (8 basic probs, feature, info)``;
    ``predict_from_feature(x, info)`` for a feature computed elsewhere (after ``load_head``).

    ``predict`` returns ``(None, None, info)`` when too little speech remains after trimming.
    Call :meth:`reset` between streams.
    """

    def __init__(
        self,
        head: str | Path | VoiceHead | None = None,
        *,
        whisper_dir: str | Path | None = None,
        backend: str = "auto",
        device: str = "cpu",
        intra_op_threads: int | None = 1,
    ) -> None:
        self._head_arg = head
        self.head: VoiceHead | None = head if isinstance(head, VoiceHead) else None
        self.features = VoiceFeatures(whisper_dir, backend=backend, device=device, intra_op_threads=intra_op_threads)
        self.mean: RunningMean | None = None

    def load(self) -> VoiceEmotion:
        """Load the head and this object's own feature extractor (the encoder)."""
        self.features.load()
        return self.load_head(self.features.model_sha256)

    def load_head(self, model_sha256: str | None) -> VoiceEmotion:
        """Load the head and the running mean only, for features computed elsewhere by the
        Whisper model whose ``model.bin`` has ``model_sha256`` (refused with one line when the
        head was trained with another)."""
        if self.head is None:
            self.head = VoiceHead.load(self._head_arg if not isinstance(self._head_arg, VoiceHead) else None)
        self.head.check_model(model_sha256)
        if self.mean is None:
            self.mean = RunningMean(self.head.source_mean_fallback)
        return self

    def reset(self) -> None:
        if self.mean is not None:
            self.mean.reset()

    def predict(self, audio: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
        if self.head is None or self.mean is None:
            self.load()
        t0 = time.perf_counter()
        x, info = self.features(audio)
        out = self.predict_from_feature(x, info)
        info["voice_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return out

    def predict_from_feature(
        self, x: np.ndarray | None, info: dict[str, Any]
    ) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
        """:meth:`predict` of a feature computed elsewhere (``(x, info)`` of
        :meth:`VoiceFeatures.__call__` or :meth:`VoiceFeatures.batch`): the stream's running
        mean takes ``x`` and the head classifies it; ``(None, None, info)`` for ``x=None``. Call
        :meth:`load_head` first (else :meth:`load` runs, which loads this object's encoder)."""
        if self.head is None or self.mean is None:
            self.load()
        assert self.head is not None and self.mean is not None
        if x is None:
            return None, None, info
        self.mean.add(x)
        p = self.head.probs(x, self.mean.value)
        info["voice_windows"] = self.mean.n
        return to_basic(p, self.head.labels), x, info

    def close(self) -> None:
        self.features.close()
