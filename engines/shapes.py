"""TensorRT optimisation profiles of every model, in ONE place.

A TensorRT plan only runs the shapes it was built for, and its cache key includes those
shapes: a plan built by ``cer-stream engines build`` is used at run time only when both ask
for exactly the same profile. Both therefore take it from here: :func:`plan_shapes` gives a
model's :class:`PlanShapes` (batch min/opt/max and the sizes of its other dynamic axes) and
:func:`requested_profiles` turns it into one :class:`ShapeRange` per input of an ONNX file.
``engines build`` and :class:`engines.runtimes.tensorrt.TrtEngine` call nothing else.

How a model is recognised, first match wins: the ``model=`` name given to
:func:`engines.select.create_engine` (or ``engines build``'s registry name), the file's
``cer.name`` metadata, its ``cer.role`` metadata, Silero VAD's input signature
(``input``/``state``/``sr``, for the wheel's file which carries no ``cer.*`` metadata), then
:data:`DEFAULT_SHAPES`. A dynamic non-batch axis that the table does not size takes the size
written in the file's ``cer.input_shape`` metadata where that is a number.

Pure Python (reads ONNX headers only); tested without a GPU.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

Shape = tuple[int, ...]
#: A non-batch axis size: one int, a (min, opt, max) triple, or ``"batch"`` (follows the batch triple).
AxisSize = int | tuple[int, int, int] | str

#: Batch sizes of the default optimisation profile: (min, opt, max). The face path classifies
#: up to 20 crops of a window at once; the CLIP image tower gets at most 20 frames
#: (``stream.modalities.clip.MAX_BATCH``).
DEFAULT_BATCH = (1, 20, 20)

#: MiniLM (``engines.models.minilm.TextEncoder``): up to 32 texts per call (its default
#: ``batch_size``), usually one transcript per window; 1..256 tokens (the model's positions;
#: the speech head truncates at 128, the scene head at 256), typically short.
TEXT_BATCH = (1, 1, 32)
TEXT_TOKENS = (1, 32, 256)
#: Silero VAD (``stream.modalities.speech.vad.SileroVAD``): one stream, 64 context + 512 new samples.
VAD_SAMPLES = 576
#: A speech-emotion model with a dynamic waveform length: 0.1 s .. one 4 s window at 16 kHz.
SPEECH_SAMPLES = (1600, 64000, 64000)


@dataclass(frozen=True)
class ShapeRange:
    """The min / opt / max shapes one input may take in a plan."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise ValueError(f"min/opt/max shapes differ in rank: {self.min} {self.opt} {self.max}")
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not (1 <= lo <= mid <= hi):
                raise ValueError(f"need 1 <= min <= opt <= max per axis, got {self.min} {self.opt} {self.max}")

    def as_json(self) -> list[list[int]]:
        return [list(self.min), list(self.opt), list(self.max)]

    def admits(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.max) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))


def _triple(size: Any, batch: tuple[int, int, int]) -> tuple[int, int, int]:
    if size == "batch":
        return batch
    if isinstance(size, (tuple, list)):
        lo, mid, hi = (int(v) for v in size)
        return lo, mid, hi
    return (int(size),) * 3


def batch_profiles(
    input_shapes: Mapping[str, Sequence[int | None]],
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    *,
    fixed: Mapping[str, Mapping[int, AxisSize]] | None = None,
) -> dict[str, ShapeRange]:
    """One :class:`ShapeRange` per input: a dynamic first axis takes ``batch``'s min/opt/max.

    Any other dynamic axis must be given in ``fixed`` (``{input: {axis: size}}``; ``size`` an
    int, a (min, opt, max) triple, or ``"batch"``; the input name ``"*"`` applies to every
    input), for example a text encoder's sequence length; otherwise the plan could not be
    built and a clear error is raised now rather than deep inside TensorRT.
    """
    fixed = fixed or {}
    ranges = {}
    for name, shape in input_shapes.items():
        given = {**fixed.get("*", {}), **fixed.get(name, {})}
        lo, mid, hi = [], [], []
        for axis, dim in enumerate(shape):
            if dim is not None:
                sizes = (dim, dim, dim)
            elif axis in given:
                sizes = _triple(given[axis], batch)
            elif axis == 0:
                sizes = batch
            else:
                raise ValueError(
                    f"input {name!r} has a dynamic axis {axis} besides the batch; give its size "
                    f"(fixed={{{name!r}: {{{axis}: SIZE}}}})"
                )
            lo.append(sizes[0])
            mid.append(sizes[1])
            hi.append(sizes[2])
        ranges[name] = ShapeRange(tuple(lo), tuple(mid), tuple(hi))
    return ranges


@dataclass(frozen=True)
class PlanShapes:
    """A model's optimisation profile: the batch triple and the sizes of other dynamic axes."""

    batch: tuple[int, int, int] = DEFAULT_BATCH
    axes: Mapping[str, Mapping[int, AxisSize]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ShapeRange((self.batch[0],), (self.batch[1],), (self.batch[2],))  # validates the triple

    def profiles(
        self, input_shapes: Mapping[str, Sequence[int | None]], metadata: Mapping[str, str] | None = None
    ) -> dict[str, ShapeRange]:
        """Profiles for these inputs; a dynamic axis the table leaves open takes the size in
        ``cer.input_shape`` (for a single-input model) where that is a positive int."""
        axes = {name: dict(sizes) for name, sizes in self.axes.items()}
        declared = _declared_shape(metadata or {})
        if declared is not None and len(input_shapes) == 1:
            ((name, shape),) = input_shapes.items()
            if len(declared) == len(shape):
                for axis, (dim, want) in enumerate(zip(shape, declared)):
                    taken = axis in axes.get(name, {}) or axis in axes.get("*", {})
                    if axis > 0 and dim is None and not taken and isinstance(want, int) and want > 0:
                        axes.setdefault(name, {})[axis] = want
        return batch_profiles(input_shapes, self.batch, fixed=axes)


DEFAULT_SHAPES = PlanShapes()
_TEXT = PlanShapes(TEXT_BATCH, {"input_ids": {1: TEXT_TOKENS}, "attention_mask": {1: TEXT_TOKENS}})
_VAD = PlanShapes((1, 1, 1), {"input": {1: VAD_SAMPLES}, "state": {1: "batch"}})

#: Registry name -> shapes. The only table of plan shapes in cer-stream.
BY_NAME: dict[str, PlanShapes] = {
    "fer-mini-xception": DEFAULT_SHAPES,
    "faceapi-expression": DEFAULT_SHAPES,
    "emoaffectnet-resnet50": DEFAULT_SHAPES,
    "yolo11n-face": PlanShapes((1, 1, 1)),  # one frame at a time
    "clip-vit-b32-image": DEFAULT_SHAPES,
    "clip-vit-b32-text": PlanShapes(DEFAULT_BATCH, {"tokens": {1: 77}}),
    "silero-vad": _VAD,
    "all-MiniLM-L6-v2": _TEXT,
    "wavlm-speech-emotion": PlanShapes((1, 1, 1), {"*": {1: SPEECH_SAMPLES}}),
    "face-dynamic": PlanShapes((1, 1, 1)),  # stream.modalities.temporal: one window per call
    # the voice head's encoder: 1-6 s of log-mel (100 frames/s); one stretch of speech per call,
    # or up to VOICE_BATCH_MAX streams' stretches in one masked batch on the model host
    "whisper-base-encoder": PlanShapes((1, 4, 8), {"mel": {2: (100, 400, 600)}}),
}
#: ``cer.role`` -> shapes, for files whose ``cer.name`` is not in :data:`BY_NAME`.
BY_ROLE: dict[str, PlanShapes] = {
    "face_emotion": DEFAULT_SHAPES,
    "face_detection": BY_NAME["yolo11n-face"],
    "clip_image": DEFAULT_SHAPES,
    "clip_text": BY_NAME["clip-vit-b32-text"],
    "vad": _VAD,
    "text_encoder": _TEXT,
    "speech_emotion": BY_NAME["wavlm-speech-emotion"],
    "face_dynamic": BY_NAME["face-dynamic"],
}
_USER_FILE_EXPORTERS = ("engines.export.onnx_file:export",)
_VAD_INPUTS = frozenset({"input", "state", "sr"})


def _declared_shape(metadata: Mapping[str, str]) -> list | None:
    try:
        shape = json.loads(metadata.get("cer.input_shape", "null"))
    except (TypeError, ValueError):
        return None
    return shape if isinstance(shape, list) else None


def plan_shapes(
    model: str | None = None, *, metadata: Mapping[str, str] | None = None, input_names: Sequence[str] = ()
) -> PlanShapes:
    """The :class:`PlanShapes` of a model (see the module docstring for the lookup order)."""
    metadata = metadata or {}
    for name in (model, metadata.get("cer.name")):
        if name and name in BY_NAME:
            return BY_NAME[name]
    role = metadata.get("cer.role")
    if role in BY_ROLE:
        return BY_ROLE[role]
    if set(input_names) == _VAD_INPUTS:
        return _VAD
    return DEFAULT_SHAPES


def requested_profiles(
    onnx_path: str | Path,
    *,
    model: str | None = None,
    batch: tuple[int, int, int] | None = None,
    axes: Mapping[str, Mapping[int, AxisSize]] | None = None,
) -> dict[str, ShapeRange]:
    """The profile a TensorRT plan of ``onnx_path`` is built for (by ``engines build`` and at
    run time alike). ``batch``/``axes`` override the table (a plan the runtime will then not
    find unless it is given the same overrides)."""
    from engines.onnx_info import onnx_input_shapes, onnx_metadata

    inputs = onnx_input_shapes(onnx_path)
    metadata = onnx_metadata(onnx_path)
    shapes = plan_shapes(model, metadata=metadata, input_names=list(inputs))
    if batch is not None or axes is not None:
        merged = {name: dict(sizes) for name, sizes in shapes.axes.items()}
        for name, sizes in (axes or {}).items():
            merged.setdefault(name, {}).update(sizes)
        triple = cast("tuple[int, int, int]", tuple(int(b) for b in batch)) if batch is not None else shapes.batch
        shapes = PlanShapes(triple, merged)
    return shapes.profiles(inputs, metadata)


def runtime_onnx(spec, *, weights: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The ONNX file the run time loads for registry entry ``spec`` (so ``engines build``
    builds the plan of that very file): the registry export, except Silero VAD, which the
    runtime loads straight from the ``silero-vad`` wheel (``silero_model_path``), and the
    user's own ONNX files (speech emotion, temporal face model), which it loads as given."""
    from engines.models import registry as reg

    spec = reg.get(spec) if isinstance(spec, str) else spec
    if spec.role == "vad" or spec.exporter in _USER_FILE_EXPORTERS:
        path = reg.locate(spec, weights).path
        if path is None:
            raise ValueError(f"{spec.name}: weights are a remote endpoint, not an ONNX file")
        return Path(path)
    return reg.export(spec, weights=weights, cache_dir=cache_dir)


__all__ = [
    "BY_NAME",
    "BY_ROLE",
    "DEFAULT_BATCH",
    "DEFAULT_SHAPES",
    "TEXT_BATCH",
    "TEXT_TOKENS",
    "VAD_SAMPLES",
    "PlanShapes",
    "ShapeRange",
    "batch_profiles",
    "plan_shapes",
    "requested_profiles",
    "runtime_onnx",
]
