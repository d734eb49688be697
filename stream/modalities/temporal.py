"""Dynamic (temporal) face modality: the window's per-frame features -> a temporal encoder -> 8 probabilities.

The seeds' dynamic model reads one feature vector per analysed frame of a window (20 frames
at 5 fps) with a Transformer or a Mamba-style encoder and classifies the window into the 8
basic states (the 9th ABAW CER paper of team RAS, 2025; sizes from its published code,
SMIL-SPCRAS/ICCVW_25).  Here the model is an ONNX file made by
``cer-stream train-temporal`` (``stream/offline/temporal_train.py``) and run through the engines layer
(ONNX Runtime); no trained model ships, so the modality is absent unless one is given.

Per-frame features (``cer.feature_kind`` in the model's metadata):

* ``face-logits``: the static face model's own per-frame output (``FaceResult.raw``; for the
  embedded mini-Xception, 7 probabilities in fer's order, named in ``cer.feature_labels`` and
  checked at load).  A frame without a face borrows the nearest frame's face (seed rule); a
  window where fewer than :data:`MIN_FACE_FRACTION` of the frames show the face has no
  prediction.
* ``clip``: per-frame CLIP image features, read from ``WindowInput.shared[CLIP_FEATURES]``
  (an ``[n_frames, D]`` array in frame order) where a CLIP stage put them there; absent
  otherwise (CLIP is not wired yet).

A window with other than 20 frames (a shortened last window, dropped frames) is resampled to
the model's sequence length by nearest frame in time order.

Model file contract (ONNX): input ``features`` float32 ``[batch, L, D]``; outputs ``probs``
``[batch, C]`` (softmax over ``cer.labels``, any order, mapped to BASIC by name) and
``embedding`` ``[batch, H]`` (the pooled representation, used as the modality's feature);
metadata ``cer.format = cer-stream-temporal``, ``cer.labels``, ``cer.input_shape``
(``["batch", L, D]``), ``cer.feature_kind``, ``cer.feature_labels``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.core.labels import FER_MINI_XCEPTION, basic_name, to_basic
from stream.core.windows import FRAMES_PER_WINDOW
from stream.modalities.base import Modality, ModalityOutput, WindowInput
from stream.modalities.face import FaceResult, face_absence_reason

FORMAT = "cer-stream-temporal"
FORMAT_VERSION = 1
SEQ_LEN = FRAMES_PER_WINDOW
FEATURE_KINDS: tuple[str, ...] = ("face-logits", "clip")
#: Key of ``WindowInput.shared`` where a CLIP stage leaves per-frame image features [n, D].
CLIP_FEATURES = "clip_image_features"
#: A temporal prediction needs the face in at least half of the window's frames: with fewer,
#: borrowing would turn most of the sequence into copies and there is little motion to read.
MIN_FACE_FRACTION = 0.5
NO_MODEL = "no temporal model; train one with cer-stream train-temporal"


def resample_indices(n: int, length: int) -> np.ndarray:
    """Indices of ``length`` items taken evenly (nearest) from ``n`` in order."""
    if n <= 0:
        raise ValueError("nothing to resample")
    return np.rint(np.linspace(0, n - 1, length)).astype(np.int64)


def face_sequence(
    faces: Sequence[FaceResult], *, length: int = SEQ_LEN, min_fraction: float = MIN_FACE_FRACTION
) -> tuple[np.ndarray | None, int]:
    """The window's per-frame face-model outputs as ``[length, D]`` (float32), and how many
    frames had a face; ``None`` when too few did.  Frames without a face borrow the nearest
    face (ties: the earlier one)."""
    have = [i for i, f in enumerate(faces) if f.found and f.raw is not None]
    if not have or len(have) < min_fraction * len(faces):
        return None, len(have)
    rows = [faces[min(have, key=lambda h: (abs(h - i), h))].raw for i in range(len(faces))]
    seq = np.stack([np.asarray(r, dtype=np.float32) for r in rows])
    return seq[resample_indices(len(seq), length)], len(have)


def clip_sequence(features: np.ndarray, *, length: int = SEQ_LEN) -> np.ndarray:
    """Per-frame CLIP features ``[n, D]`` resampled to ``[length, D]``."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"CLIP features must be [frames, D], got shape {features.shape}")
    return features[resample_indices(features.shape[0], length)]


def read_metadata(meta: dict[str, str], path: str | Path = "model") -> dict[str, Any]:
    """Parse and check a temporal model's metadata; returns labels, seq_len, dim, kind, order."""
    name = Path(path).name
    if meta.get("cer.format") != FORMAT:
        raise ValueError(f"{name}: not a cer-stream temporal model (cer.format={meta.get('cer.format')!r})")
    try:
        labels = tuple(json.loads(meta["cer.labels"]))
        shape = json.loads(meta["cer.input_shape"])
        kind = meta["cer.feature_kind"]
        order = tuple(json.loads(meta.get("cer.feature_labels") or "[]"))
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{name}: bad temporal-model metadata ({exc})") from None
    for label in labels:
        basic_name(label)  # raises on a class that is no basic state
    if kind not in FEATURE_KINDS:
        raise ValueError(f"{name}: unknown feature kind {kind!r}; known: {', '.join(FEATURE_KINDS)}")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape[1:])):
        raise ValueError(f'{name}: cer.input_shape must be ["batch", L, D], got {shape!r}')
    return {
        "labels": labels,
        "seq_len": shape[1],
        "dim": shape[2],
        "feature_kind": kind,
        "feature_labels": order,
        "arch": meta.get("cer.arch", "?"),
    }


class TemporalModel:
    """A temporal ONNX model through the engines layer: ``[L, D]`` -> (8 BASIC probs, embedding)."""

    def __init__(
        self, path: str | Path, *, device: str = "cpu", intra_op_threads: int | None = None, backend: str = "auto"
    ) -> None:
        from engines.select import create_engine

        self.path = Path(path)
        self.engine = create_engine(
            self.path,
            backend=backend,
            device=device,
            intra_op_threads=intra_op_threads,
            expect_metadata={"cer.format": FORMAT},
            model="face-dynamic",
        )
        try:
            meta = read_metadata(self.engine.metadata, self.path)
            if self.engine.output_names[:2] != ["probs", "embedding"] or self.engine.input_names != ["features"]:
                raise ValueError(f"{self.path.name}: expected input 'features' and outputs 'probs', 'embedding'")
        except Exception:
            self.engine.close()
            raise
        self.labels: tuple[str, ...] = meta["labels"]
        self.seq_len: int = meta["seq_len"]
        self.dim: int = meta["dim"]
        self.feature_kind: str = meta["feature_kind"]
        self.feature_labels: tuple[str, ...] = meta["feature_labels"]
        self.arch: str = meta["arch"]

    def __call__(self, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seq = np.asarray(seq, dtype=np.float32)
        if seq.shape != (self.seq_len, self.dim):
            raise ValueError(f"expected features [{self.seq_len}, {self.dim}], got {list(seq.shape)}")
        probs, emb = self.engine.infer(seq[None])[:2]
        return to_basic(probs[0], self.labels), np.asarray(emb[0], dtype=np.float32)

    def close(self) -> None:
        self.engine.close()


class TemporalModality(Modality):
    """The dynamic face modality (name ``"temporal"``).

    Args:
        model: an ONNX file from ``cer-stream train-temporal``; ``None``: the modality is absent
            in every window (the default: no trained model ships).
        face_labels: the static face model's output order (``FaceResult.raw``); a
            ``face-logits`` model trained on another face model's outputs is refused at load.
        device: ONNX Runtime device ("cpu", "cuda", "auto").
        min_fraction: see :data:`MIN_FACE_FRACTION`.
    """

    reads_images = False  # face results and CLIP features, never the pictures

    name = "temporal"

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        face_labels: Sequence[str] = FER_MINI_XCEPTION,
        device: str = "cpu",
        min_fraction: float = MIN_FACE_FRACTION,
        backend: str = "auto",
    ) -> None:
        self.model = TemporalModel(model, device=device, backend=backend) if model is not None else None
        self.min_fraction = min_fraction
        m = self.model
        if m is not None and m.feature_kind == "face-logits":
            if m.feature_labels and tuple(m.feature_labels) != tuple(face_labels):
                m.close()
                raise ValueError(
                    f"{m.path.name} was trained on face outputs in the order {list(m.feature_labels)}, "
                    f"but the face model gives {list(face_labels)}"
                )
            if m.dim != len(face_labels):
                m.close()
                raise ValueError(
                    f"{m.path.name} expects {m.dim} features per frame, the face model gives {len(face_labels)}"
                )

    def __call__(self, inp: WindowInput) -> ModalityOutput:
        m = self.model
        if m is None:
            return ModalityOutput.absent(NO_MODEL)
        info: dict[str, Any] = {"arch": m.arch, "feature_kind": m.feature_kind, "frames": len(inp.frames)}
        if m.feature_kind == "clip":
            feats = inp.shared.get(CLIP_FEATURES)
            if feats is None or len(feats) == 0:
                return ModalityOutput.absent("no CLIP image features in this window", **info)
            seq = clip_sequence(feats, length=m.seq_len)
        else:
            face_seq, n_face = face_sequence(inp.faces, length=m.seq_len, min_fraction=self.min_fraction)
            info["frames_with_face"] = n_face
            if face_seq is None:
                return ModalityOutput.absent(face_absence_reason(inp.faces, n_face), **info)
            seq = face_seq
        probs, emb = m(seq)
        return ModalityOutput(probs, emb, info)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        if self.model is not None:
            self.model.close()


@dataclass(kw_only=True)
class TemporalOptions:
    """The temporal modality's options.

    Attributes:
        model: a dynamic face model from ``cer-stream train-temporal`` (ONNX); ``None``: the
            modality is absent in every window.
    """

    model: Path | None = None
    backend: str = "auto"  # engines backend (the run's --backend)
    device: str = "auto"  # the run's --device


def build_temporal_modality(
    opts: TemporalOptions, *, face_labels: Sequence[str] = FER_MINI_XCEPTION, device: str = "cpu"
) -> TemporalModality:
    """The temporal modality for ``opts`` (absent in every window without a model).
    Raises ``FileNotFoundError``/``ValueError`` on a bad model file."""
    path = opts.model
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"temporal model not found: {path}")
    return TemporalModality(
        path, face_labels=face_labels, device=device if opts.device == "auto" else opts.device, backend=opts.backend
    )


__all__ = [
    "CLIP_FEATURES",
    "FEATURE_KINDS",
    "FORMAT",
    "MIN_FACE_FRACTION",
    "NO_MODEL",
    "SEQ_LEN",
    "TemporalModality",
    "TemporalModel",
    "TemporalOptions",
    "build_temporal_modality",
    "clip_sequence",
    "face_sequence",
    "read_metadata",
    "resample_indices",
]
