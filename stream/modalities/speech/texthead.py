"""Text emotion heads at run time: softmax regression on all-MiniLM-L6-v2 sentence embeddings.

Two heads ship in ``stream/heads/`` (see ``stream/heads/README.md`` for the commands, the data's
licences and the measured scores):

* ``speech``: GoEmotions mapped to Ekman's emotions (Reddit comments, 7 classes), for ASR
  transcripts of speech windows;
* ``scene``: Qwen2.5-VL scene descriptions of AFEW segments (7 classes: the data has no
  "Other"), for the captions of the scene modality.

A head file (``.npz``, no pickles) holds ``weight`` [C, 384], ``bias`` [C], ``labels`` (the
dataset's class names, in the head's output order) and ``meta`` (JSON provenance: data files
and their sha256, selection, scores, the encoder). Inference is numpy: ``softmax(E W^T + b)``
on the unit-length embeddings ``E``, mapped to the 8 BASIC states by name (joy -> Happiness;
a state the head lacks, such as Other, gets 0).

Training them (``cer-stream train-head``) and classifying text from the command line
(``cer-stream text``) live in :mod:`stream.offline.texthead_train`: this module is what the
live pipeline imports.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream.core.labels import basic_name, to_basic

KINDS = ("speech", "scene")
HEADS_DIR = Path(__file__).resolve().parents[2] / "heads"  # stream/heads

#: Tokens per text: transcripts of 4 s are short; captions run to ~150 tokens (the seeds used 192).
MAX_LEN = {"speech": 128, "scene": 256}


def head_path(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown head kind {kind!r}; known: {', '.join(KINDS)}")
    return HEADS_DIR / f"{kind}.npz"


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# The head at run time
# ---------------------------------------------------------------------------------------------
@dataclass
class TextHead:
    """A linear head over MiniLM embeddings (see the module docstring)."""

    weight: np.ndarray  # [C, D] float32
    bias: np.ndarray  # [C] float32
    labels: tuple[str, ...]  # class names in output order (any spelling labels.basic_name knows)
    meta: dict[str, Any] = field(default_factory=dict)
    encoder: Any = None  # engines.models.minilm.TextEncoder, created on first use

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, np.float32)
        self.bias = np.asarray(self.bias, np.float32)
        self.labels = tuple(str(x) for x in self.labels)
        if self.weight.shape[0] != len(self.labels) or self.bias.shape != (len(self.labels),):
            raise ValueError(f"head shapes {self.weight.shape}/{self.bias.shape} do not fit {len(self.labels)} labels")
        for name in self.labels:
            basic_name(name)  # every class must map to a basic state

    # -- files ------------------------------------------------------------------------------
    @classmethod
    def load(cls, kind_or_path: str | Path, *, encoder: Any = None) -> TextHead:
        """The committed head of ``kind`` ("speech", "scene"), or a head file by path."""
        path = head_path(str(kind_or_path)) if str(kind_or_path) in KINDS else Path(kind_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"text head not found: {path} (train one with cer-stream train-head)")
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(data["weight"], data["bias"], tuple(data["labels"].tolist()), meta, encoder)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(
            tmp,
            weight=self.weight,
            bias=self.bias,
            labels=np.array(self.labels),
            meta=np.array(json.dumps(self.meta, sort_keys=True)),
        )
        os.replace(tmp, path)
        return path

    # -- inference --------------------------------------------------------------------------
    @property
    def max_len(self) -> int:
        return int(self.meta.get("max_len", 128))

    def get_encoder(self):
        if self.encoder is None:
            from engines.models.minilm import TextEncoder

            self.encoder = TextEncoder(max_len=self.max_len)
        return self.encoder

    def probs_from_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities [N, C] in the head's own label order."""
        return softmax(np.asarray(embeddings, np.float32) @ self.weight.T + self.bias)

    def basic_from_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities [N, 8] in BASIC order."""
        return to_basic(self.probs_from_embeddings(embeddings), self.labels)

    def predict_with_embeddings(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        emb = self.get_encoder().encode(list(texts))
        return self.basic_from_embeddings(emb), emb

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """BASIC-order probabilities [N, 8] for ``texts``."""
        return self.predict_with_embeddings(texts)[0]

    def close(self) -> None:
        if self.encoder is not None:
            self.encoder.close()


__all__ = ["HEADS_DIR", "KINDS", "MAX_LEN", "TextHead", "head_path", "softmax"]
