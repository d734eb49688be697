"""ONNX Runtime backend: CUDA when asked for and present, otherwise CPU."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.base import Engine, TensorSpec

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = logging.getLogger("cer_stream.engines")

#: Intra-op threads used when none are given: one less than the CPUs this process may use
#: (capture, decoding and the other models need a core too), at least 1, at most this.
#: Measured on a 2-vCPU machine with the mini-Xception: 1 thread runs a single face in
#: 0.35-0.40 ms against 0.87-0.90 ms with 2 (the second thread only adds synchronisation),
#: and a batch of 20 in about the same time either way (0.45-0.53 ms per face).
MAX_DEFAULT_THREADS = 4

DEVICES = ("auto", "cpu", "cuda")

#: ``CER_STREAM_ORT_ARENA=1`` turns ONNX Runtime's CPU memory arena and memory patterns back on.
#: They are off by default: the arena keeps every block it ever took and grows by doubling
#: whenever a model sees a new input shape (a batch of a different size after a reconnect, a
#: shorter audio slice), so a live process grew in steps of 16-50 MB that it never gave back
#: (bench/soak.py: +42 MB in 7 minutes with a reconnect every minute; +14 MB with the arena off,
#: all of it malloc's own free space, which the analyzer returns, see engines/memory.py).
#: The models here are small, and plain malloc costs them no measurable time (bench/engines.py).
ARENA_ENV = "CER_STREAM_ORT_ARENA"


def arena_default() -> bool:
    return os.environ.get(ARENA_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


# ONNX element type strings as reported by onnxruntime -> numpy dtypes.
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def available_cpus() -> int:
    """CPUs this process may use (respects affinity masks, e.g. in containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    return max(1, min(available_cpus() - 1, MAX_DEFAULT_THREADS))


class OrtEngine(Engine):
    """Runs an ONNX model with ONNX Runtime.

    Args:
        model_path: the ``.onnx`` file.
        device: ``"cpu"``; ``"cuda"`` (falls back to CPU with a warning when the CUDA provider
            is missing); ``"auto"`` (CUDA when present, silently CPU otherwise).
        intra_op_threads: threads inside one operator; default ``usable CPUs - 1`` within
            [1, 4], so 1 on a 2-core machine (see :data:`MAX_DEFAULT_THREADS`).
        inter_op_threads: threads across independent operators (only used by the parallel
            executor, which is off); default 1.
        expect_metadata: see :class:`engines.base.Engine`.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "auto",
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        expect_metadata: Mapping[str, str] | None = None,
    ):
        super().__init__(model_path, expect_metadata=expect_metadata)
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if intra_op_threads is not None and intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        self.device = device
        self.intra_op_threads = intra_op_threads or default_threads()
        self.inter_op_threads = inter_op_threads
        self.providers: list[str] = []
        self._session: InferenceSession | None = None

    def _load(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        arena = arena_default()  # see ARENA_ENV
        options.enable_cpu_mem_arena = arena
        options.enable_mem_pattern = arena
        if not arena:
            from engines.memory import keep_freed_memory

            keep_freed_memory()  # malloc then keeps the freed tensors for the next run

        providers = ["CPUExecutionProvider"]
        if self.device != "cpu":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            elif self.device == "cuda":
                log.warning(
                    "CUDA was requested for %s but onnxruntime %s has no CUDAExecutionProvider; running on CPU",
                    self.model_path.name,
                    ort.__version__,
                )

        session = ort.InferenceSession(str(self.model_path), options, providers=providers)
        self._session = session
        self.providers = session.get_providers()
        self.inputs = [self._spec(arg) for arg in session.get_inputs()]
        self.outputs = [self._spec(arg) for arg in session.get_outputs()]
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)
        log.debug("loaded %s with %s, %d intra-op threads", self.model_path.name, self.providers, self.intra_op_threads)

    @staticmethod
    def _spec(arg) -> TensorSpec:
        try:
            dtype = np.dtype(_ORT_DTYPES[arg.type])
        except KeyError:
            raise TypeError(f"tensor {arg.name!r} has unsupported type {arg.type}") from None
        # Dynamic dimensions come back as strings (symbolic names) or None.
        shape = tuple(dim if isinstance(dim, int) else None for dim in arg.shape)
        return TensorSpec(arg.name, shape, dtype)

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        assert self._session is not None  # Engine.infer refuses an engine that is not loaded
        return self._session.run(self.output_names, feed)

    def _close(self) -> None:
        self._session = None
        self.providers = []
