"""Pieces shared by the exporters: torch -> ONNX, metadata, checks, atomic writes."""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.models.registry import ModelSpec, write_metadata
from engines.models.storage import atomic_write, sha256_file

#: ONNX opset of the exported files: old enough for TensorRT 8.6+ and ONNX Runtime 1.15+.
OPSET = 17


class ExportError(RuntimeError):
    """The weights could not be turned into an ONNX model."""


def source_info(path: Path, **more: Any) -> dict[str, Any]:
    """What a model was exported from: file name and sha256 (of the main weights file)."""
    info: dict[str, Any] = {"file": path.name}
    if path.is_file():
        info["sha256"] = sha256_file(path)
    info.update(more)
    return info


def torch_to_onnx(
    module,
    args: tuple,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int = OPSET,
):
    """Export a torch module (or TorchScript module) with the TorchScript-based exporter.

    The TorchScript-based exporter (``dynamo=False``) is used because it accepts
    ``torch.jit.ScriptModule`` objects (EmoAffectNet ships as one) and needs no onnxscript;
    torch 2.9+ marks it deprecated, so its warning is silenced here.
    """
    import onnx
    import torch

    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention, taken in
    # eval mode without grad) has no ONNX conversion: trace the plain path instead.
    mha = getattr(torch.backends, "mha", None)
    was_fast = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)
    try:
        with tempfile.TemporaryDirectory(prefix="cer-export-") as tmp:
            path = Path(tmp) / "model.onnx"
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    dynamo=False,
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                    opset_version=opset,
                    do_constant_folding=True,
                )
            return onnx.load(str(path))
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(was_fast)


def output_widths(model) -> dict[str, int]:
    """Last-axis sizes of a model's outputs, found by running one zero batch in ONNX Runtime."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}[arg.type]
        feed[arg.name] = np.zeros(shape, dtype)
    results = session.run(None, feed)
    return {arg.name: int(r.shape[-1]) for arg, r in zip(session.get_outputs(), results)}


def finish(
    model,
    spec: ModelSpec,
    target: Path,
    *,
    source: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    check_labels: str | None = None,
) -> None:
    """Stamp metadata, check the model (structure, and label count on output ``check_labels``),
    write it atomically."""
    import onnx

    write_metadata(model, spec, source=source, extra=extra)
    model.producer_name = "cer-stream"
    onnx.checker.check_model(model)
    if check_labels is not None and spec.labels is not None:
        width = output_widths(model).get(check_labels)
        if width != len(spec.labels):
            raise ExportError(
                f"{spec.name}: output {check_labels!r} has {width} values, "
                f"the registry lists {len(spec.labels)} labels {list(spec.labels)}"
            )
    atomic_write(target, model.SerializeToString())


def metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file (weights not read)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def parsed_metadata(path: str | Path) -> dict[str, Any]:
    """Like :func:`metadata`, JSON values decoded."""
    out = {}
    for key, value in metadata(path).items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
