"""The one interface every inference runtime in cer-stream implements.

An :class:`Engine` wraps one model file for one runtime (ONNX Runtime today, TensorRT later).
Its life is ``load()`` -> any number of ``infer()`` calls -> ``close()``; used as a context
manager it loads on entry and closes on exit. Backends implement four hooks (``_load``,
``_run``, ``_close`` and filling in the tensor specs and metadata); input checking, the
single-array shortcut, warm-up and metadata checks live here so all backends behave alike.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and element type of one model input or output.

    ``shape`` holds ``None`` for a dynamic dimension (batch, sequence length...).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


class Engine(abc.ABC):
    """Base class of the inference backends.

    Args:
        model_path: the model file this engine runs.
        expect_metadata: key/value pairs the model's metadata must hold; checked at load,
            so that a model with another label order or preprocessing fails early.
    """

    def __init__(self, model_path: str | Path, *, expect_metadata: Mapping[str, str] | None = None):
        self.model_path = Path(model_path)
        self.expect_metadata = dict(expect_metadata or {})
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.metadata: dict[str, str] = {}
        #: Set by :func:`engines.select.create_engine` on an engine that stands in for one that
        #: failed to load (TensorRT -> ONNX Runtime): why, and the engine that failed.
        self.fallback_reason: str | None = None
        self.fallback_from: Engine | None = None
        self._loaded = False

    # -- hooks for the backends ---------------------------------------------------------------
    @abc.abstractmethod
    def _load(self) -> None:
        """Open the model; fill ``self.inputs``, ``self.outputs`` and ``self.metadata``."""

    @abc.abstractmethod
    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch; ``feed`` is complete and cast to the declared dtypes."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Free what ``_load`` acquired."""

    # -- public interface ---------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def load(self) -> Engine:
        """Open the model (idempotent) and check ``expect_metadata``; returns ``self``."""
        if self._loaded:
            return self
        if not self.model_path.is_file():
            raise FileNotFoundError(f"model file not found: {self.model_path}")
        self._load()
        self._loaded = True
        try:
            self._check_metadata()
        except Exception:
            self.close()
            raise
        return self

    def infer(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Run one batch and return the outputs in ``output_names`` order.

        ``inputs`` maps input names to arrays; a bare array is accepted for a model with a
        single input. Arrays are cast to the input's declared dtype.
        """
        if not self._loaded:
            raise RuntimeError(f"{type(self).__name__} is not loaded; call load() first")
        if isinstance(inputs, np.ndarray):
            if len(self.inputs) != 1:
                raise ValueError(
                    f"model has {len(self.inputs)} inputs ({', '.join(self.input_names)}); "
                    "pass a dict of arrays by name"
                )
            inputs = {self.inputs[0].name: inputs}
        unknown = set(inputs) - set(self.input_names)
        missing = [name for name in self.input_names if name not in inputs]
        if unknown or missing:
            raise ValueError(
                f"bad inputs: missing {missing or 'none'}, unknown {sorted(unknown) or 'none'}; "
                f"the model takes {self.input_names}"
            )
        feed = {}
        for spec in self.inputs:
            # np.asarray(order="C") rather than np.ascontiguousarray, which turns a 0-d scalar
            # input (e.g. a sample rate) into shape (1,)
            array = np.asarray(inputs[spec.name], dtype=spec.dtype, order="C")
            if array.ndim != len(spec.shape) or any(
                want is not None and want != got for want, got in zip(spec.shape, array.shape)
            ):
                raise ValueError(f"input {spec.name!r}: expected shape {spec.shape}, got {array.shape}")
            feed[spec.name] = array
        return self._run(feed)

    def warmup(self, *, batch_size: int = 1, runs: int = 2) -> None:
        """Run ``runs`` batches of zeros so that lazy allocations happen before real work.

        A dynamic first dimension takes ``batch_size``; any other dynamic dimension takes 1.
        """
        if not self._loaded:
            self.load()
        feed = {}
        for spec in self.inputs:
            shape = tuple(
                (batch_size if axis == 0 else 1) if dim is None else dim for axis, dim in enumerate(spec.shape)
            )
            feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
        for _ in range(runs):
            self._run(feed)

    def close(self) -> None:
        """Free the runtime's resources (idempotent)."""
        if self._loaded:
            self._loaded = False
            self._close()

    def __enter__(self) -> Engine:
        return self.load()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "loaded" if self._loaded else "not loaded"
        return f"{type(self).__name__}({str(self.model_path)!r}, {state})"

    def _check_metadata(self) -> None:
        wrong = {
            key: (want, self.metadata.get(key))
            for key, want in self.expect_metadata.items()
            if self.metadata.get(key) != want
        }
        if wrong:
            details = "; ".join(f"{k}: expected {w!r}, model has {g!r}" for k, (w, g) in wrong.items())
            raise ValueError(f"{self.model_path.name}: metadata mismatch: {details}")
