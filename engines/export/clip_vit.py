"""open_clip ViT-B/32: image tower and text tower as two ONNX files.

Weights: an open_clip model folder (``open_clip_config.json`` + ``open_clip_model.safetensors``
or ``open_clip_pytorch_model.bin``, the layout of a hub snapshot such as
``timm/vit_base_patch32_clip_224.openai``), loaded with open_clip's ``local-dir:`` schema so
nothing is downloaded; or a bare checkpoint file, loaded into the built-in ``ViT-B-32``
architecture (``ViT-B-32-quickgelu`` when the file name says ``openai``, as OpenAI's weights
use QuickGELU; ``CER_STREAM_CLIP_ARCH`` overrides).

Outputs of both towers: ``features`` (the projected embedding, what ``encode_image`` /
``encode_text`` return) and ``embeds`` (the same, L2-normalised). The logit scale
(``exp(logit_scale)``, 100 for OpenAI's weights) is stored as ``cer.logit_scale``: the
published Team RAS code forgot it when matching frames to label prompts, which flattens the
softmax; multiply the cosine similarities by it.

The text tower takes ``tokens`` int64 [N, context_length] from CLIP's BPE tokenizer
(open_clip's ``SimpleTokenizer``); ``cer.context_length`` records the length.
"""

from __future__ import annotations

import os
from pathlib import Path

from engines.export.common import ExportError, finish, source_info, torch_to_onnx
from engines.models.registry import ModelSpec

EXPORT_VERSION = 1
ARCH_ENV = "CER_STREAM_CLIP_ARCH"


def load_model(source: Path):
    """An open_clip model (eval mode, CPU, fp32) from a model folder or a checkpoint file."""
    try:
        import open_clip
    except ImportError as exc:
        raise ExportError(
            f"open_clip is not importable ({exc}); install the export extra: pip install 'cer-stream[export]'"
        ) from None
    if source.is_dir():
        if not (source / "open_clip_config.json").is_file():
            raise ExportError(f"{source} has no open_clip_config.json (expected an open_clip model folder)")
        model = open_clip.create_model(f"local-dir:{source}", device="cpu", require_pretrained=True)
    else:
        arch = os.environ.get(ARCH_ENV) or ("ViT-B-32-quickgelu" if "openai" in source.name.lower() else "ViT-B-32")
        model = open_clip.create_model(arch, pretrained=str(source), device="cpu", require_pretrained=True)
    return model.eval().float()


def _weights_file(source: Path) -> Path:
    if source.is_file():
        return source
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (source / name).is_file():
            return source / name
    return source


def _towers():
    import torch
    import torch.nn.functional as F

    class ImageTower(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, images):
            features = self.clip.encode_image(images)
            return features, F.normalize(features, dim=-1)

    class TextTower(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, tokens):
            features = self.clip.encode_text(tokens)
            return features, F.normalize(features, dim=-1)

    return ImageTower, TextTower


def _facts(model) -> dict:
    return {
        "logit_scale": float(model.logit_scale.exp().item()),
        "context_length": int(model.context_length),
        "embed_dim": int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else None,
    }


def export_image(source: Path, target: Path, spec: ModelSpec) -> None:
    import torch

    model = load_model(source)
    image_size = model.visual.image_size
    size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    if list(spec.input_shape[1:]) != [3, size, size]:
        raise ExportError(f"{spec.name}: the model takes {size}x{size} images, the registry says {spec.input_shape}")
    ImageTower, _ = _towers()
    onnx_model = torch_to_onnx(
        ImageTower(model).eval(),
        (torch.zeros(1, 3, size, size),),
        input_names=["input"],
        output_names=["features", "embeds"],
        dynamic_axes={"input": {0: "N"}, "features": {0: "N"}, "embeds": {0: "N"}},
    )
    finish(onnx_model, spec, target, source=source_info(_weights_file(source)), extra=_facts(model))


def export_text(source: Path, target: Path, spec: ModelSpec) -> None:
    import torch

    model = load_model(source)
    length = int(model.context_length)
    if list(spec.input_shape[1:]) != [length]:
        raise ExportError(f"{spec.name}: the model's context length is {length}, the registry says {spec.input_shape}")
    _, TextTower = _towers()
    example = torch.zeros(2, length, dtype=torch.long)
    example[:, 0], example[:, 1] = 49406, 49407  # <start_of_text> <end_of_text>: any valid ids trace the graph
    vocab = int(model.vocab_size) if hasattr(model, "vocab_size") else None
    if vocab is not None and vocab <= 49407:
        example[:, 0], example[:, 1] = 0, vocab - 1
    onnx_model = torch_to_onnx(
        TextTower(model).eval(),
        (example,),
        input_names=["tokens"],
        output_names=["features", "embeds"],
        dynamic_axes={"tokens": {0: "N"}, "features": {0: "N"}, "embeds": {0: "N"}},
    )
    finish(
        onnx_model,
        spec,
        target,
        source=source_info(_weights_file(source)),
        extra={**_facts(model), "tokenizer": "open_clip SimpleTokenizer (CLIP BPE, bpe_simple_vocab_16e6)"},
    )
