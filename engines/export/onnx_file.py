"""Models that arrive as ONNX (a user's speech-emotion or temporal face model): copied as
they are, with the registry's ``cer.*`` metadata stamped on."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engines.export.common import ExportError, finish, source_info
from engines.models.registry import ModelSpec

EXPORT_VERSION = 1


def stamp(
    source: Path,
    target: Path,
    spec: ModelSpec,
    *,
    source_extra: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    import onnx

    if source.is_dir():
        raise ExportError(f"{spec.name}: expected an .onnx file, got the folder {source}")
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError and others for a non-ONNX file
        raise ExportError(f"{source.name} is not an ONNX model ({type(exc).__name__}: {exc})") from None
    finish(model, spec, target, source=source_info(source, format="onnx", **dict(source_extra or {})), extra=extra)


def export(source: Path, target: Path, spec: ModelSpec) -> None:
    stamp(source, target, spec)
