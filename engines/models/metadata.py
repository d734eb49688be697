"""The ``cer.*`` metadata that describes a model inside its ONNX file (plain ONNX helpers).

Written by every exporter and by the model modules that build their graphs themselves
(:mod:`engines.models.faceapi`), so it lives below the registry: the registry lists those
modules, and they must not import it back.  :func:`metadata_for` takes any object with a
registry entry's fields (:class:`engines.models.registry.ModelSpec`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol


class DescribedModel(Protocol):
    """The fields of a registry entry (:class:`engines.models.registry.ModelSpec`) written as metadata."""

    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def license(self) -> str: ...
    @property
    def input_shape(self) -> tuple[Any, ...]: ...
    @property
    def preprocess(self) -> Mapping[str, Any]: ...
    @property
    def labels(self) -> tuple[str, ...] | None: ...
    @property
    def extra(self) -> Mapping[str, Any]: ...


def metadata_for(
    spec: DescribedModel, *, source: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The ``cer.*`` key/values describing ``spec`` (values are strings; JSON where structured)."""
    meta = {"cer.name": spec.name, "cer.role": spec.role, "cer.license": spec.license}
    if spec.input_shape:
        meta["cer.input_shape"] = json.dumps(list(spec.input_shape))
    if spec.preprocess:
        meta["cer.preprocess"] = json.dumps(dict(spec.preprocess), sort_keys=True)
    if spec.labels is not None:
        meta["cer.labels"] = json.dumps(list(spec.labels))
    if source is not None:
        meta["cer.source"] = json.dumps(dict(source), sort_keys=True)
    for key, value in {**dict(spec.extra), **dict(extra or {})}.items():
        meta[f"cer.{key}"] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return meta


def write_metadata(
    model, spec: DescribedModel, *, source: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None
) -> None:
    """Set ``spec``'s ``cer.*`` metadata on an ``onnx.ModelProto``, replacing those keys and
    keeping every other key (ultralytics' own, or the ``cer.*`` keys a model made by the project
    already carries and the registry does not describe, e.g. a temporal model's labels)."""
    meta = metadata_for(spec, source=source, extra=extra)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    for key, value in kept + sorted(meta.items()):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


__all__ = ["DescribedModel", "metadata_for", "write_metadata"]
