"""Choosing a backend at run time: TensorRT where a CUDA GPU and TensorRT exist, else ONNX Runtime.

``backend="auto"`` never fails for want of a GPU: it falls back to ONNX Runtime and says so
ONCE per process on the ``cer_stream.engines`` logger (one analyzer loads several models; one
line is enough). Asking for ``backend="tensorrt"`` explicitly where it cannot run at all (no
GPU, no tensorrt/pycuda) raises :class:`EngineUnavailable` with the reason. Where TensorRT is
present but a model's plan cannot be built or loaded, :func:`create_engine` falls back to ONNX
Runtime for that model with a log record naming it (never a traceback).

GPU detection imports no deep-learning framework: it asks the CUDA driver (``libcuda``) through
ctypes how many devices there are, and falls back to ``nvidia-smi -L``.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import logging
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from engines.base import Engine

log = logging.getLogger("cer_stream.engines")

BACKENDS = ("auto", "tensorrt", "onnxruntime")
DEVICES = ("auto", "cpu", "cuda")


class EngineUnavailable(RuntimeError):
    """The requested backend or device cannot run on this machine."""


@functools.lru_cache(maxsize=1)
def _gpu_probe() -> tuple[bool, str]:
    """(found, how): CUDA devices visible to the driver."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return False, f"{name} loaded but cuInit failed (no usable GPU or driver)"
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return False, f"{name}: cuDeviceGetCount failed"
            if count.value > 0:
                return True, f"{count.value} CUDA device(s) ({name})"
            return False, "the CUDA driver reports no devices"
        except AttributeError:
            continue
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"nvidia-smi failed: {exc}"
        gpus = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
        if out.returncode == 0 and gpus:
            return True, f"{len(gpus)} GPU(s) (nvidia-smi)"
    return False, "no CUDA driver (libcuda) and no GPU reported by nvidia-smi"


def gpu_available() -> bool:
    """True when an NVIDIA GPU with a working CUDA driver is visible (no torch import)."""
    return _gpu_probe()[0]


@functools.lru_cache(maxsize=1)
def _tensorrt_probe() -> tuple[bool, str]:
    missing = []
    for module in ("tensorrt", "pycuda.driver"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a broken install raising OSError etc.
            missing.append(f"{module.split('.')[0]} not importable ({exc})")
    if missing:
        return False, "; ".join(missing) + "; install the gpu extra: pip install 'cer-stream[gpu]'"
    return True, "tensorrt and pycuda importable"


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): a GPU and importable tensorrt + pycuda. tensorrt is imported only
    where a GPU exists, so CPU machines never load it."""
    gpu, how = _gpu_probe()
    if not gpu:
        return False, how
    return _tensorrt_probe()


_warned = False
_warn_lock = threading.Lock()


def _warn_fallback_once(reason: str) -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    log.warning("TensorRT is not available (%s); using ONNX Runtime", reason)


def reset_fallback_warning() -> None:
    """Forget that the fallback warning was given (for tests)."""
    global _warned
    with _warn_lock:
        _warned = False


def resolve(backend: str = "auto", device: str = "auto") -> tuple[str, str]:
    """The (backend, device) that :func:`create_engine` would use, or :class:`EngineUnavailable`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if backend == "tensorrt":
        if device == "cpu":
            raise EngineUnavailable("TensorRT runs on an NVIDIA GPU only; --device cpu needs --backend onnxruntime")
        ok, reason = tensorrt_status()
        if not ok:
            raise EngineUnavailable(f"TensorRT backend unavailable: {reason}")
        return "tensorrt", "cuda"
    if backend == "onnxruntime":
        return "onnxruntime", device
    # auto
    if device == "cpu":
        return "onnxruntime", "cpu"
    ok, reason = tensorrt_status()
    if ok:
        return "tensorrt", "cuda"
    _warn_fallback_once(reason)
    return "onnxruntime", device


#: Options each backend takes (the others are dropped with a debug message).
_TRT_OPTIONS = {"expect_metadata", "model", "batch", "fixed_axes", "fp16", "device_id", "cache_dir", "workspace_bytes"}
_ORT_OPTIONS = {"expect_metadata", "intra_op_threads", "inter_op_threads"}


def _construct(chosen: str, onnx_path, device: str, kw: dict) -> Engine:
    args: dict[str, Any]
    if chosen == "tensorrt":
        from engines.runtimes.tensorrt import TrtEngine

        cls: type[Engine] = TrtEngine
        allowed, args = _TRT_OPTIONS, {}
    else:
        from engines.runtimes.onnxruntime import OrtEngine

        cls = OrtEngine
        allowed, args = _ORT_OPTIONS, {"device": device}
    dropped = sorted(set(kw) - allowed)
    if dropped:
        log.debug("%s ignores options %s", cls.__name__, dropped)
    args.update({k: v for k, v in kw.items() if k in allowed})
    return cls(onnx_path, **args)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def create_engine(
    onnx_path: str | Path,
    *,
    backend: str = "auto",
    device: str = "auto",
    load: bool = True,
    model: str | None = None,
    **kw,
) -> Engine:
    """A LOADED engine for ``onnx_path`` on the best backend this machine has (``load=False``:
    constructed only, no fallback).

    When TensorRT is chosen (``auto`` on a GPU machine, or ``backend="tensorrt"``) and building,
    reading or deserialising the plan fails for any reason, the failure is logged on the
    ``cer_stream.engines`` logger (WARNING; ERROR when TensorRT was asked for explicitly)
    naming the model and the reason, and a loaded ONNX Runtime engine is returned instead,
    with ``fallback_reason`` and ``fallback_from`` set. A failure of that ONNX Runtime engine
    (a missing file, a metadata mismatch) raises as usual.

    ``model`` is the registry name (TensorRT's shape table, :mod:`engines.shapes`, and the log
    line). ``kw`` goes to the backend: ``expect_metadata`` to both; ``intra_op_threads`` /
    ``inter_op_threads`` to ONNX Runtime; ``batch``, ``fixed_axes``, ``fp16``, ``device_id``,
    ``cache_dir``, ``workspace_bytes`` to TensorRT. Options of the other backend are dropped
    with a debug message, so callers may pass both sets.
    """
    chosen, dev = resolve(backend, device)
    if model is not None:
        kw["model"] = model
    if chosen != "tensorrt":
        engine = _construct(chosen, onnx_path, dev, kw)
        return engine.load() if load else engine
    engine = _construct("tensorrt", onnx_path, dev, kw)
    if not load:
        return engine
    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"model file not found: {onnx_path}")
    try:
        return engine.load()
    except Exception as exc:  # TensorRT or CUDA missing or failing, a damaged plan, a failed build...
        reason = _one_line(exc)
        failed = engine
        try:
            failed.close()
        except Exception:  # pragma: no cover - best effort after a failed load
            pass
    name = model or Path(onnx_path).name
    if backend == "tensorrt":
        log.error(
            "--backend tensorrt was asked for, but TensorRT FAILED to load %s (%s); running it on ONNX Runtime instead",
            name,
            reason,
        )
    else:
        log.warning("TensorRT could not load %s (%s); running it on ONNX Runtime instead", name, reason)
    # ONNX Runtime on the device the caller asked for ("auto": CUDA provider if present, else CPU).
    fallback = _construct("onnxruntime", onnx_path, device, kw).load()
    fallback.fallback_reason = reason
    fallback.fallback_from = failed
    return fallback


__all__ = [
    "BACKENDS",
    "DEVICES",
    "EngineUnavailable",
    "create_engine",
    "gpu_available",
    "reset_fallback_warning",
    "resolve",
    "tensorrt_status",
]
