"""CLIP label prompts, embedded once at export time: the 8 basic states and the 7 compounds.

The CLIP scene-label modality (``stream/modalities/clip.py``) compares each frame's image
embedding with one embedding per label. Those label embeddings depend only on the weights and
the prompt wording, so they are computed here, with torch and open_clip (the ``export``
extra), and saved in a small ``.npz`` beside the exported towers: the runtime then needs the
image tower's ONNX file and this file, never torch nor CLIP's BPE tokenizer.

Each label has a short phrase; every phrase is put into each of :data:`TEMPLATES`, the
prompts are encoded by the text tower, each prompt embedding is L2-normalised, the
normalised embeddings of one label are averaged over the templates and the mean is
normalised again (the usual CLIP prompt ensembling).

File format (``.npz``, no pickles; read with :func:`read_labels`)::

    format           str []      "cer-stream-clip-labels"
    version          int64 []    FORMAT_VERSION
    basic_labels     str [8]     basic state names (ABAW names; consumers map by name)
    basic            f32 [8, D]  L2-normalised label embeddings, same order
    compound_labels  str [7]     compound expression names
    compound         f32 [7, D]  L2-normalised label embeddings, same order
    basic_phrases    str [8]     the phrase of each basic label
    compound_phrases str [7]     the phrase of each compound label
    templates        str [T]     prompt templates ("{}" is replaced by the phrase)
    logit_scale      f32 []      exp(model.logit_scale): multiply cosine similarities by it
    source           str []      JSON: the weights file and its sha256 (as in the towers'
                                 cer.source), so a mismatched image tower can be refused
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.export.common import ExportError, source_info
from engines.models.registry import ModelSpec
from engines.models.storage import atomic_write

EXPORT_VERSION = 1
FORMAT = "cer-stream-clip-labels"
FORMAT_VERSION = 1

#: Prompt templates; "{}" takes a label phrase ("with a happy facial expression").
TEMPLATES: tuple[str, ...] = (
    "a photo of a person {}.",
    "a close-up photo of a face {}.",
    "a video frame showing someone {}.",
    "a cropped photo of a person's face {}.",
)

#: Phrase per basic state (ABAW names and order).
BASIC_PHRASES: dict[str, str] = {
    "Neutral": "with a neutral, expressionless face",
    "Anger": "with an angry facial expression",
    "Disgust": "with a disgusted facial expression",
    "Fear": "with a fearful facial expression",
    "Happiness": "with a happy facial expression",
    "Sadness": "with a sad facial expression",
    "Surprise": "with a surprised facial expression",
    "Other": "with an ambiguous, mixed facial expression",
}

#: Phrase per compound expression (ABAW submission names and order).
COMPOUND_PHRASES: dict[str, str] = {
    "Fearfully Surprised": "looking fearfully surprised",
    "Happily Surprised": "looking happily surprised",
    "Sadly Surprised": "looking sadly surprised",
    "Disgustedly Surprised": "looking disgustedly surprised",
    "Angrily Surprised": "looking angrily surprised",
    "Sadly Fearful": "looking sad and fearful",
    "Sadly Angry": "looking sad and angry",
}


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def encode_labels(
    model,
    *,
    tokenizer: Callable[[list[str]], Any] | None = None,
    templates: Sequence[str] = TEMPLATES,
    basic: dict[str, str] | None = None,
    compound: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Embed the label prompts with an open_clip model (as returned by
    :func:`engines.export.clip_vit.load_model`).

    ``tokenizer`` maps a list of strings to a ``[N, context_length]`` token tensor (default:
    open_clip's CLIP BPE ``tokenize`` at the model's context length). Returns the arrays of
    the file format (without ``source``), ready for :func:`write_labels`.
    """
    import torch

    basic = dict(BASIC_PHRASES if basic is None else basic)
    compound = dict(COMPOUND_PHRASES if compound is None else compound)
    templates = tuple(templates)
    if not templates or any("{}" not in t for t in templates):
        raise ExportError("every prompt template must contain '{}'")
    if tokenizer is None:
        import open_clip

        length = int(getattr(model, "context_length", 77))

        def tokenizer(texts):
            return open_clip.tokenize(texts, context_length=length)

    def embed(phrases: dict[str, str]) -> np.ndarray:
        prompts = [t.format(p) for p in phrases.values() for t in templates]
        with torch.no_grad():
            out = model.encode_text(tokenizer(prompts)).float().cpu().numpy()
        per = _normalise(out).reshape(len(phrases), len(templates), -1).mean(axis=1)
        return _normalise(per).astype(np.float32)

    return {
        "basic_labels": np.array(list(basic)),
        "basic": embed(basic),
        "compound_labels": np.array(list(compound)),
        "compound": embed(compound),
        "basic_phrases": np.array(list(basic.values())),
        "compound_phrases": np.array(list(compound.values())),
        "templates": np.array(templates),
        "logit_scale": np.float32(float(model.logit_scale.exp().item())),
    }


def write_labels(target: str | Path, arrays: dict[str, Any], *, source: dict[str, Any] | None = None) -> Path:
    """Write a label file (atomically); ``arrays`` as returned by :func:`encode_labels`."""
    data = {k: np.asarray(v) for k, v in arrays.items()}
    data["format"] = np.array(FORMAT)
    data["version"] = np.array(FORMAT_VERSION, dtype=np.int64)
    data["source"] = np.array(json.dumps(dict(source or {}), sort_keys=True))
    buf = io.BytesIO()
    np.savez(buf, **data)
    target = Path(target)
    atomic_write(target, buf.getvalue())
    return target


def read_labels(path: str | Path) -> dict[str, Any]:
    """Read and check a label file (numpy only). Returns plain Python/NumPy values:
    ``basic_labels``/``compound_labels`` (tuples of str), ``basic``/``compound`` (float32,
    rows L2-normalised), ``templates``, ``basic_phrases``, ``compound_phrases`` (tuples),
    ``logit_scale`` (float) and ``source`` (dict). Raises ``ValueError`` on a bad file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path.name}: not a CLIP label file ({exc})") from None
    if str(raw.get("format", "")) != FORMAT:
        raise ValueError(f"{path.name}: not a CLIP label file (format {str(raw.get('format'))!r})")
    if int(raw.get("version", -1)) > FORMAT_VERSION:
        raise ValueError(
            f"{path.name}: label file version {int(raw['version'])} is newer than this program's {FORMAT_VERSION}"
        )
    out: dict[str, Any] = {}
    try:
        for kind in ("basic", "compound"):
            labels = tuple(str(v) for v in raw[f"{kind}_labels"])
            emb = np.asarray(raw[kind], dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != len(labels) or not labels:
                raise ValueError(f"{kind}: {len(labels)} labels but embeddings of shape {emb.shape}")
            out[f"{kind}_labels"] = labels
            out[kind] = _normalise(emb).astype(np.float32)
            out[f"{kind}_phrases"] = tuple(str(v) for v in raw.get(f"{kind}_phrases", ()))
        if out["basic"].shape[1] != out["compound"].shape[1]:
            raise ValueError("basic and compound embeddings differ in width")
        out["templates"] = tuple(str(v) for v in raw.get("templates", ()))
        out["logit_scale"] = float(raw["logit_scale"])
        out["source"] = json.loads(str(raw["source"])) if "source" in raw else {}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path.name}: bad CLIP label file ({exc})") from None
    if not np.isfinite(out["logit_scale"]) or out["logit_scale"] <= 0:
        raise ValueError(f"{path.name}: bad logit scale {out['logit_scale']}")
    return out


def _tokenizer_for(source: Path, model):
    import open_clip

    from engines.export.clip_vit import ARCH_ENV

    if source.is_dir():
        name = f"local-dir:{source}"
    else:
        name = os.environ.get(ARCH_ENV) or ("ViT-B-32-quickgelu" if "openai" in source.name.lower() else "ViT-B-32")
    return open_clip.get_tokenizer(name, context_length=int(getattr(model, "context_length", 77)))


def export(source: Path, target: Path, spec: ModelSpec) -> None:
    """Registry exporter (``convert`` kind): the label file of the open_clip model at ``source``."""
    from engines.export.clip_vit import _weights_file, load_model

    model = load_model(source)
    arrays = encode_labels(model, tokenizer=_tokenizer_for(source, model))
    write_labels(target, arrays, source=source_info(_weights_file(source)))
