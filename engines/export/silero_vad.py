"""Silero VAD: the ONNX file shipped inside the ``silero-vad`` wheel, copied unchanged except
for the ``cer.*`` metadata (the run-time wrapper is ``stream/modalities/speech/vad.py``)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from engines.export.onnx_file import stamp
from engines.models.registry import ModelSpec

EXPORT_VERSION = 1


def export(source: Path, target: Path, spec: ModelSpec) -> None:
    try:
        package = {"package": f"silero-vad=={importlib.metadata.version('silero-vad')}"}
    except importlib.metadata.PackageNotFoundError:
        package = {}
    stamp(source, target, spec, source_extra=package, extra={"sample_rate": 16000})
