"""CLIP scene-label matching (modality ``"clip"``): frames vs. label prompts, zero-shot.

For the analysed frames of a window, each frame goes through the open_clip ViT-B/32 image
tower (ONNX, through the engines layer); its L2-normalised embedding is compared with the
label-prompt embeddings made once at export time (``engines/export/clip_labels.py``):
cosine similarity x CLIP's logit scale -> softmax over the labels -> per-frame
probabilities, averaged over the frames.  The 8 basic labels give the modality's
probabilities; the 7 compound prompts are matched the same way and recorded in ``info``
(``compound``).  The published code forgot the logit scale (its softmax over cosines of about
0.2-0.3 is almost uniform: SMIL-SPCRAS/ICCVW_25, the code of the 9th ABAW CER paper of team
RAS, 2025); here it is applied.

Run time needs the image tower's ONNX file and the label ``.npz`` only: no torch, no tokenizer.

Cost: the image tower takes 100-200 ms a frame on a 2-core CPU (a few ms on a GPU), so CLIP
is a GPU / ``paper``-profile modality.  By default it embeds ``--clip-frames 4`` frames a
window, chosen on a fixed media-time grid (every ``4 s / N``) so that the half-overlapping
next window re-uses the embeddings of the shared half: with the default, 2 new frames a
window (about 0.3 s on a 2-core CPU).  ``--clip-frames 0`` embeds every analysed frame (20 a
window, 10 new: 1.2-2 s a window on that CPU, slower than real time together with the rest).

Per-frame image features (the tower's ``features`` output) of the embedded frames, in time
order, are left in ``WindowInput.shared["clip_image_features"]`` for the temporal modality
(which resamples them to its sequence length); ``shared["clip_frame_indices"]`` names the
frames.  With a temporal model that reads CLIP features the command line embeds every frame
unless ``--clip-frames`` is given.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stream.core.labels import BASIC, COMPOUND, basic_name
from stream.core.messages import VideoFrame
from stream.core.windows import EPS, WINDOW_S
from stream.modalities.base import AbsentModality, Modality, ModalityOutput, WindowInput
from stream.modalities.temporal import CLIP_FEATURES

if TYPE_CHECKING:
    from engines.base import Engine

log = logging.getLogger("cer_stream.clip")

NAME = "clip"
IMAGE_MODEL = "clip-vit-b32-image"
LABELS_MODEL = "clip-vit-b32-labels"
#: Key of ``WindowInput.shared`` naming the frames whose features are in CLIP_FEATURES.
CLIP_FRAME_INDICES = "clip_frame_indices"
DEFAULT_FRAMES = 4
#: Largest batch sent to the image tower at once (the TensorRT profile's default maximum).
MAX_BATCH = 20
NO_WEIGHTS = "no CLIP weights; supply an open_clip ViT-B/32 folder with --clip-weights or see cer-stream models list"
# The standard OpenAI CLIP constants, used where the ONNX file does not record them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224


# --------------------------------------------------------------------------- preprocessing
def _resize_bicubic(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with mediapipe (matplotlib)
        import cv2

        shrink = width < rgb.shape[1]
        return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    # Image.BICUBIC: set at import by Pillow (the typed Image.Resampling needs Pillow >= 9.1)
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BICUBIC))  # type: ignore[attr-defined]


def preprocess(
    images: Sequence[np.ndarray],
    *,
    size: int = CLIP_SIZE,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> np.ndarray:
    """RGB uint8 images -> float32 ``[N, 3, size, size]`` as open_clip's ViT-B/32 transform does
    it: shorter side to ``size`` (bicubic, PIL; the longer side truncated as torchvision does),
    centre crop, ``/ 255``, normalise with CLIP's mean and std."""
    mean_ = np.asarray(mean, np.float32).reshape(3, 1, 1)
    std_ = np.asarray(std, np.float32).reshape(3, 1, 1)
    out = np.empty((len(images), 3, size, size), np.float32)
    for i, img in enumerate(images):
        img = np.ascontiguousarray(img, dtype=np.uint8)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an RGB image H x W x 3, got shape {img.shape}")
        h, w = img.shape[:2]
        if (h, w) != (size, size):
            if w <= h:
                nw, nh = size, int(size * h / w)
            else:
                nw, nh = int(size * w / h), size
            if (nh, nw) != (h, w):
                img = _resize_bicubic(img, nw, nh)
            top = int(round((nh - size) / 2.0))
            left = int(round((nw - size) / 2.0))
            img = img[top : top + size, left : left + size]
        out[i] = (img.transpose(2, 0, 1).astype(np.float32) / 255.0 - mean_) / std_
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def label_probs(embeds: np.ndarray, labels: np.ndarray, scale: float) -> np.ndarray:
    """Per-frame probabilities ``[n, C]``: softmax of ``scale`` x cosine(frame, label)."""
    e = np.asarray(embeds, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    return softmax(scale * e @ np.asarray(labels, np.float64).T)


def select_frames(frames: Sequence[VideoFrame], n: int, *, window_s: float = WINDOW_S) -> list[int]:
    """Positions (into ``frames``, time order) of the frames to embed: all of them when ``n``
    is 0 or not below their number; else the frame nearest each tick of a fixed media-time grid
    of period ``window_s / n`` inside the frames' span, so overlapping windows pick the same
    frames where they overlap."""
    if not frames:
        return []
    if n <= 0 or n >= len(frames):
        return list(range(len(frames)))
    period = window_s / n
    pts = np.array([f.pts for f in frames], np.float64)
    lo, hi = float(pts[0]), float(pts[-1])
    picks: list[int] = []
    k = math.ceil((lo - EPS) / period)
    while k * period <= hi + EPS:
        i = int(np.argmin(np.abs(pts - k * period)))  # ties: the earlier frame
        if i not in picks:
            picks.append(i)
        k += 1
    if not picks:  # a span shorter than one period: its middle frame
        picks = [len(frames) // 2]
    return sorted(picks)[:n]


# --------------------------------------------------------------------------- the modality
def _meta_value(meta: dict[str, str], key: str) -> Any:
    value = meta.get(key)
    if value is None:
        return None
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


class ClipLabelModality(Modality):
    """CLIP scene-label matching.

    Args:
        image_model: the image tower's ONNX file (``models export clip-vit-b32-image``).
        labels: the label file (``models export clip-vit-b32-labels``), or its contents as
            returned by :func:`engines.export.clip_labels.read_labels`.
        frames_per_window: frames embedded per window (0: every analysed frame).
        logit_scale: overrides the scale recorded in the label file (for tests and ablations).
        backend, device: as for :func:`engines.select.create_engine`.
        check_registry: check the tower's ``cer.*`` metadata against the registry entry.
    """

    name = NAME

    def __init__(
        self,
        image_model: str | Path,
        labels: str | Path | dict[str, Any],
        *,
        frames_per_window: int = DEFAULT_FRAMES,
        logit_scale: float | None = None,
        backend: str = "auto",
        device: str = "auto",
        check_registry: bool = True,
    ) -> None:
        from engines.export.clip_labels import read_labels

        if frames_per_window < 0:
            raise ValueError(f"frames per window must be >= 0 (0: all), got {frames_per_window}")
        self.image_model = Path(image_model)
        self.labels = labels if isinstance(labels, dict) else read_labels(labels)
        self.frames_per_window = int(frames_per_window)
        self.backend, self.device = backend, device
        self.check_registry = check_registry
        self._scale_override = logit_scale
        self.logit_scale = float(logit_scale if logit_scale is not None else self.labels["logit_scale"])
        for name in self.labels["basic_labels"]:
            basic_name(name)  # raises on a name that is no basic state
        unknown = [c for c in self.labels["compound_labels"] if c not in COMPOUND]
        if unknown:
            raise ValueError(f"CLIP label file: unknown compound labels {unknown}")
        self._basic_to = [BASIC.index(basic_name(n)) for n in self.labels["basic_labels"]]
        self._compound_to = [COMPOUND.index(n) for n in self.labels["compound_labels"]]
        self.engine: Engine | None = None
        self._error: str | None = None
        self._features_at = 0
        self._embeds_at: int | None = 1
        self.size = CLIP_SIZE
        self.mean: tuple[float, ...] = CLIP_MEAN
        self.std: tuple[float, ...] = CLIP_STD
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # frame index -> (features, embeds)
        self.embedded = 0  # frames run through the image tower (for stats and tests)

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Load the image tower now (else on the first window). A failure is remembered and
        reported as the reason in every window."""
        if self.engine is not None or self._error is not None:
            return
        try:
            self._load()
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            log.warning("clip modality unavailable: %s", self._error)

    def _load(self) -> None:
        from engines.models import registry
        from engines.select import create_engine

        engine = create_engine(self.image_model, backend=self.backend, device=self.device)
        engine.load()
        try:
            if self.check_registry:
                registry.check_metadata(engine, registry.get(IMAGE_MODEL))
            meta = engine.metadata
            outs = list(engine.output_names)
            self._features_at = outs.index("features") if "features" in outs else 0
            self._embeds_at = outs.index("embeds") if "embeds" in outs else None
            pre = _meta_value(meta, "cer.preprocess")
            norm = pre.get("normalise") if isinstance(pre, dict) else None
            if isinstance(norm, dict) and len(norm.get("mean", ())) == 3 and len(norm.get("std", ())) == 3:
                self.mean = tuple(float(v) for v in norm["mean"])
                self.std = tuple(float(v) for v in norm["std"])
            shape = engine.inputs[0].shape
            if len(shape) == 4 and isinstance(shape[2], int) and shape[2] == shape[3]:
                self.size = int(shape[2])
            width = self.labels["basic"].shape[1]
            src = _meta_value(meta, "cer.source")
            lab_src = self.labels.get("source") or {}
            if (
                isinstance(src, dict)
                and src.get("sha256")
                and lab_src.get("sha256")
                and src["sha256"] != lab_src["sha256"]
            ):
                raise ValueError(
                    f"{self.image_model.name} and the CLIP label file come from different weights "
                    f"({src.get('file')} vs {lab_src.get('file')})"
                )
            probe = engine.infer(np.zeros((1, 3, self.size, self.size), np.float32))
            got = probe[self._embeds_at if self._embeds_at is not None else self._features_at].shape[-1]
            if got != width:
                raise ValueError(f"{self.image_model.name} gives {got}-d embeddings, the label file {width}-d")
        except Exception:
            engine.close()
            raise
        self.engine = engine

    # ------------------------------------------------------------------ per window
    def _embed(self, frames: Sequence[VideoFrame]) -> None:
        """Run the image tower on ``frames`` (batched) and cache their outputs."""
        engine = self.engine
        assert engine is not None  # loaded before any window reaches the tower
        for a in range(0, len(frames), MAX_BATCH):
            chunk = frames[a : a + MAX_BATCH]
            batch = preprocess([f.image for f in chunk], size=self.size, mean=self.mean, std=self.std)
            outs = engine.infer(batch)
            feats = np.asarray(outs[self._features_at], np.float32)
            embeds = np.asarray(outs[self._embeds_at], np.float32) if self._embeds_at is not None else feats
            embeds = embeds / np.maximum(np.linalg.norm(embeds, axis=-1, keepdims=True), 1e-12)
            for f, feat, emb in zip(chunk, feats, embeds):
                self.cache[f.index] = (feat, emb)
            self.embedded += len(chunk)

    def __call__(self, inp: WindowInput) -> ModalityOutput:
        if not inp.frames:
            return ModalityOutput.absent("no frames received", frames=0)
        self.load()
        if self._error is not None:
            return ModalityOutput.absent("CLIP unavailable", error=self._error)
        frames = inp.frames
        # the next window starts inside this one: nothing before this window is needed again
        first = frames[0].index
        for k in [k for k in self.cache if k < first]:
            del self.cache[k]
        chosen = [frames[i] for i in select_frames(frames, self.frames_per_window)]
        new = [f for f in chosen if f.index not in self.cache]
        if new:
            self._embed(new)
        feats = np.stack([self.cache[f.index][0] for f in chosen])
        embeds = np.stack([self.cache[f.index][1] for f in chosen])
        basic_frames = label_probs(embeds, self.labels["basic"], self.logit_scale)
        compound_frames = label_probs(embeds, self.labels["compound"], self.logit_scale)
        basic = np.zeros(len(BASIC), np.float64)
        np.add.at(basic, self._basic_to, basic_frames.mean(axis=0))
        compound = np.zeros(len(COMPOUND), np.float64)
        np.add.at(compound, self._compound_to, compound_frames.mean(axis=0))
        inp.shared[CLIP_FEATURES] = feats
        inp.shared[CLIP_FRAME_INDICES] = [f.index for f in chosen]
        info = {
            "frames": len(frames),
            "frames_embedded": len(chosen),
            "frames_new": len(new),
            "logit_scale": round(self.logit_scale, 4),
            "compound": {name: round(float(p), 4) for name, p in zip(COMPOUND, compound)},
            "compound_label": COMPOUND[int(np.argmax(compound))],
        }
        return ModalityOutput(basic.astype(np.float32), embeds.mean(axis=0).astype(np.float32), info)

    def reset(self) -> None:
        self.cache.clear()

    def close(self) -> None:
        self.cache.clear()
        if self.engine is not None:
            self.engine.close()
            self.engine = None


# --------------------------------------------------------------------------- options
@dataclass(kw_only=True)
class ClipOptions:
    """The clip modality's options (the command line's ``--clip-*`` flags map onto them).

    Attributes:
        enabled: ``False`` leaves the modality absent even where weights exist (``--no-clip``).
        weights: an open_clip ViT-B-32 folder or checkpoint, exported on first use; ``None``:
            ``$CER_STREAM_CLIP`` or the hub cache.
        image, labels: an exported image tower and label embeddings (given together).
        frames: frames embedded per window (``None``: :data:`DEFAULT_FRAMES`; 0: every frame).
        backend, device: ``None``: the face path's.
    """

    enabled: bool = True
    weights: Path | None = None
    image: Path | None = None
    labels: Path | None = None
    frames: int | None = None
    backend: str | None = None
    device: str | None = None


def _frames_option(opts: ClipOptions) -> int:
    n = DEFAULT_FRAMES if opts.frames is None else int(opts.frames)
    if n < 0:
        raise ValueError(f"ClipOptions.frames must be >= 0 (0: every frame), got {n}")
    return n


def build_clip_modality(opts: ClipOptions) -> ClipLabelModality | AbsentModality:
    """The clip modality for ``opts``.

    ``--clip-image`` + ``--clip-labels``: those files. Otherwise the weights from
    ``--clip-weights``, ``$CER_STREAM_CLIP`` or the hub cache, exported on first use (cached);
    none found: an :class:`AbsentModality` saying how to supply them. Raises
    ``FileNotFoundError``/``ValueError``/``RuntimeError`` on bad explicit options.
    """
    from engines.models import registry

    if not opts.enabled:
        return AbsentModality(NAME, "switched off (--no-clip)")
    frames = _frames_option(opts)
    backend, device = opts.backend or "auto", opts.device or "auto"
    image, labels = opts.image, opts.labels
    if (image is None) != (labels is None):
        raise ValueError("ClipOptions.image and ClipOptions.labels go together (the tower and its label embeddings)")
    if image is not None and labels is not None:  # given together (checked above)
        for path in (image, labels):
            if not Path(path).is_file():
                raise FileNotFoundError(f"CLIP file not found: {path}")
        return ClipLabelModality(image, labels, frames_per_window=frames, backend=backend, device=device)
    weights = opts.weights
    image_spec, labels_spec = registry.get(IMAGE_MODEL), registry.get(LABELS_MODEL)
    if weights is not None and not Path(weights).expanduser().exists():
        raise FileNotFoundError(f"ClipOptions.weights {weights}: no such file or folder")
    ok, _ = registry.available(image_spec, weights)
    if not ok:
        return AbsentModality(NAME, NO_WEIGHTS)
    try:
        image_path = registry.export(image_spec, weights=weights)
        labels_path = registry.export(labels_spec, weights=weights)
    except Exception as exc:
        msg = f"CLIP export failed: {type(exc).__name__}: {exc}"
        if weights is not None:
            raise RuntimeError(msg) from None
        log.warning("clip modality absent: %s", msg)
        return AbsentModality(NAME, msg)
    return ClipLabelModality(image_path, labels_path, frames_per_window=frames, backend=backend, device=device)


__all__ = [
    "CLIP_FEATURES",
    "CLIP_FRAME_INDICES",
    "ClipLabelModality",
    "DEFAULT_FRAMES",
    "NO_WEIGHTS",
    "ClipOptions",
    "build_clip_modality",
    "label_probs",
    "preprocess",
    "select_frames",
    "softmax",
]
