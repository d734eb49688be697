"""TensorRT backend: builds a plan from an ONNX file once, caches it, runs it with pycuda.

Written against the TensorRT 10 Python API (``tensorrt``) and pycuda, both in the ``gpu``
extra and imported only inside the methods that need them, so this module imports anywhere.

Plan files
    A plan is specific to the GPU model, the TensorRT version, the ONNX file and the shapes it
    was optimised for. :func:`plan_cache_key` hashes exactly those (plus the precision), and
    the plan is cached as ``<model>-<key>.plan`` in the cache folder. Every plan file starts
    with a small JSON header (see :func:`write_plan`): the magic ``CERPLAN1``, a 4-byte
    little-endian length, the header, then TensorRT's serialized engine. The header carries
    what the plan was built from and the ONNX model's ``cer.*`` metadata, so label order,
    preprocessing and input shape travel with the plan and are checked at load exactly as
    for ONNX (STYLE.md 2). The header also records the engine's length, so a truncated
    file is caught before TensorRT sees it. Reading and writing plans is pure Python (tested
    without a GPU).

Stale and corrupt plans
    :func:`cached_plan` accepts a cached plan only when its header is readable, the file is
    as long as the header says, and it was built for this GPU, TensorRT version, ONNX file
    (sha256) and profile; anything else is deleted (with a warning) and rebuilt. When it
    builds a plan, :class:`TrtEngine` also deletes the plans of the same ONNX stem that can
    never run again here (damaged, or built on this GPU with another TensorRT version or from
    another version of the file: :func:`remove_stale_plans`). A cached plan that TensorRT
    cannot deserialize is deleted and rebuilt once.

Build
    ``tensorrt.Builder`` + ``OnnxParser``; an explicit-batch network (the only kind in
    TensorRT 10); FP16 where ``builder.platform_has_fast_fp16`` says the GPU is fast at it;
    one optimisation profile, taken from :mod:`engines.shapes` (the one table that
    ``cer-stream engines build`` uses too, so a prebuilt plan is the one the run asks for);
    a timing cache per GPU and TensorRT
    version, kept on disk next to the plans so later builds are faster.

    TensorRT 11 removed the weak-typing FP16 flag and ``platform_has_fast_fp16``: there the
    plan is built in the ONNX file's own precision (a warning says so). Pin ``tensorrt<11``
    to keep FP16 builds from FP32 ONNX files.

Run
    The device's primary CUDA context (shared with the CUDA runtime TensorRT uses) is
    retained at load and pushed around every call, so any thread may call :meth:`infer`.
    Device buffers and page-locked host buffers are allocated ONCE at load for the profile's
    largest shapes; one CUDA stream per engine; ``execute_async_v3`` with tensor addresses
    set once. pycuda raises on every failed CUDA call; TensorRT calls that report failure by
    a return value are checked here. :meth:`close` frees everything explicitly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from engines.base import Engine, TensorSpec
from engines.models.storage import atomic_write, default_cache_dir, sha256_file
from engines.onnx_info import onnx_input_shapes, onnx_metadata
from engines.shapes import DEFAULT_BATCH, ShapeRange, batch_profiles, requested_profiles

log = logging.getLogger("cer_stream.engines")

PLAN_MAGIC = b"CERPLAN1"
#: Bumped when the header layout or the build recipe changes, so old plans are rebuilt.
PLAN_FORMAT = 2
_LENGTH = struct.Struct("<I")
#: Largest header accepted when reading (a guard against reading a foreign file as a plan).
MAX_HEADER_BYTES = 1 << 20
DEFAULT_WORKSPACE_BYTES = 1 << 30


class PlanFormatError(ValueError):
    """A file is not a cer-stream plan, or its header is damaged."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX file or build a plan from it."""


class _Undeserializable(Exception):
    """TensorRT returned no engine for a plan's bytes (rebuilt once when cached)."""


# ---------------------------------------------------------------------------------------------
# Pure-Python parts: shape profiles, cache keys, the plan header
# ---------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "unknown"


def plan_cache_key(
    *,
    gpu_name: str,
    trt_version: str,
    onnx_sha256: str,
    profiles: Mapping[str, ShapeRange],
    fp16: bool,
) -> str:
    """A short hex key naming one plan: changes whenever any input of the build changes."""
    identity = {
        "format": PLAN_FORMAT,
        "gpu": gpu_name,
        "tensorrt": trt_version,
        "onnx_sha256": onnx_sha256,
        "profiles": {name: rng.as_json() for name, rng in sorted(profiles.items())},
        "fp16": bool(fp16),
    }
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def plan_path(cache_dir: Path, onnx_path: Path, key: str) -> Path:
    return cache_dir / f"{onnx_path.stem}-{key}.plan"


def timing_cache_path(cache_dir: Path, gpu_name: str, trt_version: str) -> Path:
    return cache_dir / f"timing-{_slug(gpu_name)}-trt{_slug(trt_version)}.cache"


def encode_plan(plan: bytes, header: Mapping[str, Any]) -> bytes:
    """``CERPLAN1`` + u32 little-endian header length + JSON header + the TensorRT plan."""
    body = json.dumps(dict(header), sort_keys=True).encode()
    if len(body) > MAX_HEADER_BYTES:
        raise ValueError(f"plan header too large ({len(body)} bytes)")
    return PLAN_MAGIC + _LENGTH.pack(len(body)) + body + bytes(plan)


def decode_plan(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a plan file's bytes into (header, TensorRT plan); raises :class:`PlanFormatError`."""
    start = len(PLAN_MAGIC) + _LENGTH.size
    if len(data) < start or not data.startswith(PLAN_MAGIC):
        raise PlanFormatError("not a cer-stream plan (missing the CERPLAN1 header)")
    (length,) = _LENGTH.unpack_from(data, len(PLAN_MAGIC))
    if length > MAX_HEADER_BYTES or start + length > len(data):
        raise PlanFormatError(f"damaged plan header (length {length} in a {len(data)}-byte file)")
    try:
        header = json.loads(data[start : start + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanFormatError(f"damaged plan header: {exc}") from None
    if not isinstance(header, dict):
        raise PlanFormatError("damaged plan header: not a JSON object")
    return header, data[start + length :]


def write_plan(path: str | Path, plan: bytes, header: Mapping[str, Any]) -> None:
    """Write a plan file with its header, atomically."""
    atomic_write(Path(path), encode_plan(plan, header))


def read_plan(path: str | Path) -> tuple[dict[str, Any], bytes]:
    return decode_plan(Path(path).read_bytes())


def read_plan_header(path: str | Path) -> dict[str, Any]:
    """Only the header of a plan file (reads a few bytes, not the engine)."""
    with open(path, "rb") as stream:
        head = stream.read(len(PLAN_MAGIC) + _LENGTH.size)
        if len(head) < len(PLAN_MAGIC) + _LENGTH.size or not head.startswith(PLAN_MAGIC):
            raise PlanFormatError(f"{path}: not a cer-stream plan (missing the CERPLAN1 header)")
        (length,) = _LENGTH.unpack_from(head, len(PLAN_MAGIC))
        if length > MAX_HEADER_BYTES:
            raise PlanFormatError(f"{path}: damaged plan header (length {length})")
        body = stream.read(length)
    header, _ = decode_plan(head + body)
    return header


def check_plan_header(
    header: Mapping[str, Any],
    *,
    gpu_name: str,
    trt_version: str,
    onnx_sha256: str | None = None,
    profiles: Mapping[str, ShapeRange] | None = None,
) -> list[str]:
    """Reasons the plan described by ``header`` cannot run here (empty list: it can)."""
    problems = []
    if header.get("format") != PLAN_FORMAT:
        problems.append(f"plan format {header.get('format')!r}, this code writes {PLAN_FORMAT}")
    if header.get("tensorrt") != trt_version:
        problems.append(f"built with TensorRT {header.get('tensorrt')}, this is {trt_version}")
    if header.get("gpu") != gpu_name:
        problems.append(f"built for {header.get('gpu')!r}, this GPU is {gpu_name!r}")
    if onnx_sha256 is not None and header.get("onnx_sha256") != onnx_sha256:
        problems.append("built from another version of the ONNX file")
    if profiles is not None and header.get("profiles") != {n: r.as_json() for n, r in profiles.items()}:
        problems.append(f"built for the profile {header.get('profiles')}, not the one asked for")
    return problems


def check_plan_file(
    path: str | Path,
    *,
    gpu_name: str,
    trt_version: str,
    onnx_sha256: str | None = None,
    profiles: Mapping[str, ShapeRange] | None = None,
) -> list[str]:
    """Reasons the plan FILE at ``path`` cannot be used here: an unreadable or damaged header,
    a truncated (or padded) engine, or any :func:`check_plan_header` mismatch. Reads the header
    only."""
    path = Path(path)
    try:
        header = read_plan_header(path)
    except (PlanFormatError, OSError) as exc:
        return [str(exc)]
    problems = check_plan_header(
        header, gpu_name=gpu_name, trt_version=trt_version, onnx_sha256=onnx_sha256, profiles=profiles
    )
    size = header.get("plan_bytes")
    if not isinstance(size, int) or size <= 0:
        problems.append("the header does not record the engine's length")
    else:
        length = len(encode_plan(b"", header))
        if path.stat().st_size != length + size:
            problems.append(
                f"truncated or damaged: {path.stat().st_size - length} engine bytes, the header says {size}"
            )
    return problems


def _discard(path: Path, problems: Sequence[str]) -> None:
    log.warning(
        "deleting the stale or damaged TensorRT plan %s (%s); it will be rebuilt", path.name, "; ".join(problems)
    )
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def cached_plan(
    path: str | Path, *, gpu_name: str, trt_version: str, onnx_sha256: str, profiles: Mapping[str, ShapeRange]
) -> Path | None:
    """``path`` when it holds a usable plan; ``None`` when it has to be built, after deleting
    a stale or damaged file found there (with a warning naming the reason)."""
    path = Path(path)
    if not path.is_file():
        return None
    problems = check_plan_file(
        path, gpu_name=gpu_name, trt_version=trt_version, onnx_sha256=onnx_sha256, profiles=profiles
    )
    if not problems:
        return path
    _discard(path, problems)
    return None


def remove_stale_plans(
    cache_dir: str | Path,
    onnx_path: str | Path,
    *,
    gpu_name: str,
    trt_version: str,
    onnx_sha256: str,
    keep: Path | None = None,
) -> list[Path]:
    """Delete the cached plans of ``onnx_path``'s stem that can never be used here again: a
    damaged file, or one built on this GPU with another TensorRT version, plan format or ONNX
    file. Plans for other GPUs or other profiles are left alone. Returns what was deleted."""
    removed = []
    for other in sorted(Path(cache_dir).glob(f"{Path(onnx_path).stem}-*.plan")):
        if keep is not None and other == keep:
            continue
        try:
            header = read_plan_header(other)
        except (PlanFormatError, OSError) as exc:
            problems = [str(exc)]
        else:
            if header.get("gpu") != gpu_name:
                continue
            problems = check_plan_header(header, gpu_name=gpu_name, trt_version=trt_version, onnx_sha256=onnx_sha256)
        if problems:
            _discard(other, problems)
            removed.append(other)
    return removed


# ---------------------------------------------------------------------------------------------
# TensorRT and CUDA
# ---------------------------------------------------------------------------------------------
def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"TensorRT is not importable ({exc}); install the gpu extra: pip install 'cer-stream[gpu]'", name="tensorrt"
        ) from exc
    return trt


def _import_pycuda():
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"pycuda is not importable ({exc}); install the gpu extra: pip install 'cer-stream[gpu]'", name="pycuda"
        ) from exc
    return cuda


def _trt_major(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


_LOGGER = None


def _trt_logger(trt):
    """One TensorRT logger per process (TensorRT keeps a reference to the first one)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def cuda_device_name(device_id: int = 0) -> str:
    cuda = _import_pycuda()
    cuda.init()
    return cuda.Device(device_id).name()


def build_plan(
    onnx_path: str | Path,
    profiles: Mapping[str, ShapeRange],
    *,
    fp16: bool = True,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    timing_cache: Path | None = None,
) -> tuple[bytes, bool]:
    """Build a serialized TensorRT engine from ``onnx_path``; returns (plan, fp16 used).

    Needs a GPU (TensorRT builds for the GPU it runs on). The timing cache, when given, is
    read before and written back after the build.
    """
    trt = _import_tensorrt()
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; the flag only matters to TensorRT 8.
    flags = 0
    if _trt_major(trt) < 10 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {Path(onnx_path).name}: {errors or 'unknown error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    use_fp16 = False
    if fp16:
        if hasattr(trt.BuilderFlag, "FP16") and getattr(builder, "platform_has_fast_fp16", False):
            config.set_flag(trt.BuilderFlag.FP16)
            use_fp16 = True
        elif not hasattr(trt.BuilderFlag, "FP16"):
            log.warning(
                "TensorRT %s has no FP16 builder flag (strong typing only): building %s in "
                "the ONNX file's own precision",
                trt.__version__,
                Path(onnx_path).name,
            )
        else:
            log.info("this GPU has no fast FP16; building %s in FP32", Path(onnx_path).name)

    profile = builder.create_optimization_profile()
    for name, rng in profiles.items():
        profile.set_shape(name, rng.min, rng.opt, rng.max)
    config.add_optimization_profile(profile)

    cache = None
    if timing_cache is not None:
        previous = timing_cache.read_bytes() if timing_cache.is_file() else b""
        try:
            cache = config.create_timing_cache(previous)
        except Exception:  # a damaged cache, or one from another TensorRT build
            cache = None
        if cache is None and previous:
            log.warning("ignoring unreadable timing cache %s", timing_cache)
            cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            log.warning("TensorRT did not accept a timing cache; building without one")
            cache = None

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build a plan from {Path(onnx_path).name} (its log above says why)")
    if cache is not None and timing_cache is not None:
        atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized), use_fp16


class TrtEngine(Engine):
    """Runs an ONNX model (or a cer-stream ``.plan``) with TensorRT on one GPU.

    Args:
        model_path: an ``.onnx`` file (a plan is built on first use and cached) or a
            ``.plan`` file written by this module.
        model: the registry name, for the shape table (:func:`engines.shapes.plan_shapes`);
            default: recognised from the file's ``cer.*`` metadata.
        batch: (min, opt, max) of a dynamic batch axis; default: the shape table's. Give it
            only on purpose: a plan built for other shapes is not the one the run asks for.
        fixed_axes: sizes for other dynamic axes, ``{input: {axis: size}}``, merged over the
            shape table's.
        fp16: build with FP16 kernels where the GPU is fast at them.
        device_id: the CUDA device.
        cache_dir: where plans and the timing cache live (default: the model cache).
        workspace_bytes: TensorRT's workspace memory pool limit for the build.
        expect_metadata: see :class:`engines.base.Engine`.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        model: str | None = None,
        batch: tuple[int, int, int] | None = None,
        fixed_axes: Mapping[str, Mapping[int, Any]] | None = None,
        fp16: bool = True,
        device_id: int = 0,
        cache_dir: str | Path | None = None,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        expect_metadata: Mapping[str, str] | None = None,
    ):
        super().__init__(model_path, expect_metadata=expect_metadata)
        if batch is not None:
            ShapeRange((batch[0],), (batch[1],), (batch[2],))  # validates the triple
        self.model = model
        self.batch: tuple[int, int, int] | None = (
            cast("tuple[int, int, int]", tuple(int(b) for b in batch)) if batch is not None else None
        )
        self.fixed_axes = {k: dict(v) for k, v in (fixed_axes or {}).items()} or None
        self.fp16 = fp16
        self.device_id = device_id
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.workspace_bytes = workspace_bytes
        self.plan_file: Path | None = None
        self.header: dict[str, Any] = {}
        self._lock = threading.Lock()
        # pycuda / TensorRT objects (no type stubs); None until loaded.
        self._cuda: Any = None
        self._cuda_context: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._ranges: dict[str, ShapeRange] = {}
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, Any] = {}

    @property
    def _plan_name(self) -> str:
        """File name of the loaded plan (set by :meth:`_load` before any TensorRT object exists)."""
        assert self.plan_file is not None
        return self.plan_file.name

    # -- plan management (pure Python up to the build) ----------------------------------------
    def requested_profiles(self) -> dict[str, ShapeRange]:
        """The optimisation profile this engine asks for (:func:`engines.shapes.requested_profiles`)."""
        return requested_profiles(self.model_path, model=self.model, batch=self.batch, axes=self.fixed_axes)

    def plan_target(self, gpu_name: str, trt_version: str) -> tuple[Path, str, dict[str, ShapeRange]]:
        """(cached plan path, sha256 of the ONNX file, profiles) for this model on that GPU and
        TensorRT version; needs neither (tested without a GPU)."""
        digest = sha256_file(self.model_path)
        profiles = self.requested_profiles()
        key = plan_cache_key(
            gpu_name=gpu_name, trt_version=trt_version, onnx_sha256=digest, profiles=profiles, fp16=self.fp16
        )
        return plan_path(self.cache_dir, self.model_path, key), digest, profiles

    def ensure_plan(self) -> Path:
        """Path of a plan for this model on this GPU, building (and caching) it if needed."""
        trt = _import_tensorrt()
        gpu = cuda_device_name(self.device_id)
        if self.model_path.suffix == ".plan":
            problems = check_plan_file(self.model_path, gpu_name=gpu, trt_version=trt.__version__)
            if problems:
                raise PlanFormatError(
                    f"{self.model_path.name} cannot run here: {'; '.join(problems)}; "
                    "rebuild it from the ONNX file (cer-stream engines build)"
                )
            return self.model_path
        target, digest, profiles = self.plan_target(gpu, trt.__version__)
        found = cached_plan(target, gpu_name=gpu, trt_version=trt.__version__, onnx_sha256=digest, profiles=profiles)
        if found is not None:
            return found
        log.info(
            "building a TensorRT plan for %s on %s (TensorRT %s); this takes a while once",
            self.model_path.name,
            gpu,
            trt.__version__,
        )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_plans(
            self.cache_dir, self.model_path, gpu_name=gpu, trt_version=trt.__version__, onnx_sha256=digest, keep=target
        )
        plan, used_fp16 = build_plan(
            self.model_path,
            profiles,
            fp16=self.fp16,
            workspace_bytes=self.workspace_bytes,
            timing_cache=timing_cache_path(self.cache_dir, gpu, trt.__version__),
        )
        header = {
            "format": PLAN_FORMAT,
            "gpu": gpu,
            "tensorrt": trt.__version__,
            "onnx": self.model_path.name,
            "onnx_sha256": digest,
            "profiles": {name: rng.as_json() for name, rng in profiles.items()},
            "fp16": used_fp16,
            "plan_bytes": len(plan),
            "metadata": onnx_metadata(self.model_path),
        }
        write_plan(target, plan, header)
        log.info("cached TensorRT plan %s (%.1f MB)", target, len(plan) / 1e6)
        return target

    # -- Engine hooks -------------------------------------------------------------------------
    def _load(self) -> None:
        trt = _import_tensorrt()
        for attempt in (1, 2):
            self.plan_file = self.ensure_plan()
            self.header, plan = read_plan(self.plan_file)
            self.metadata = {str(k): str(v) for k, v in self.header.get("metadata", {}).items()}
            cuda = _import_pycuda()
            cuda.init()
            self._cuda = cuda
            try:
                self._open(trt, cuda, plan)
                return
            except _Undeserializable:
                if attempt == 2 or self.model_path.suffix == ".plan":
                    raise EngineBuildError(f"TensorRT could not deserialize {self.plan_file.name}") from None
                _discard(self.plan_file, ["TensorRT could not deserialize it"])

    def _open(self, trt, cuda, plan: bytes) -> None:
        self._cuda_context = cuda.Device(self.device_id).retain_primary_context()
        self._cuda_context.push()
        try:
            self._runtime = trt.Runtime(_trt_logger(trt))
            self._engine = self._runtime.deserialize_cuda_engine(plan)
            if self._engine is None:
                raise _Undeserializable()
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise EngineBuildError(f"TensorRT could not create an execution context for {self._plan_name}")
            self._stream = cuda.Stream()
            self._allocate(trt, cuda)
        except BaseException:
            self._release()
            cuda.Context.pop()
            self._cuda_context.detach()
            self._cuda_context = None
            raise
        cuda.Context.pop()

    def _allocate(self, trt, cuda) -> None:
        """Fill the tensor specs and allocate every buffer once, for the largest shapes."""
        engine, context = self._engine, self._context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        host_side = [n for n in inputs if engine.is_shape_inference_io(n)]
        if host_side:  # shape tensors live in host memory; this runner stages device buffers only
            raise EngineBuildError(f"{self._plan_name}: inputs {host_side} are shape tensors; not supported")
        for name in inputs:
            lo, mid, hi = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, 0))
            self._ranges[name] = ShapeRange(lo, mid, hi)
            if not context.set_input_shape(name, hi):
                raise EngineBuildError(f"TensorRT refused shape {hi} for input {name!r}")
        self.inputs, self.outputs = [], []
        for name in names:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            declared = tuple(int(d) for d in engine.get_tensor_shape(name))
            largest = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in largest):
                raise EngineBuildError(f"tensor {name!r} has a data-dependent shape {largest}; not supported")
            spec = TensorSpec(name, tuple(None if d < 0 else d for d in declared), dtype)
            (self.inputs if name in inputs else self.outputs).append(spec)
            host = cuda.pagelocked_empty(int(trt.volume(largest)), dtype)
            device = cuda.mem_alloc(max(1, host.nbytes))
            self._host[name], self._device[name] = host, device
            if not context.set_tensor_address(name, int(device)):
                raise EngineBuildError(f"TensorRT refused the buffer address of {name!r}")
        log.debug(
            "loaded %s: inputs %s, outputs %s",
            self._plan_name,
            {s.name: self._ranges[s.name].max for s in self.inputs},
            [s.name for s in self.outputs],
        )

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        cuda, context = self._cuda, self._context
        with self._lock:
            self._cuda_context.push()
            try:
                for spec in self.inputs:
                    array = feed[spec.name]
                    rng = self._ranges[spec.name]
                    if not rng.admits(array.shape):
                        raise ValueError(
                            f"input {spec.name!r}: shape {array.shape} is outside the plan's "
                            f"profile {rng.min}..{rng.max}; rebuild with a larger batch"
                        )
                    if not context.set_input_shape(spec.name, array.shape):
                        raise RuntimeError(f"TensorRT refused shape {array.shape} for {spec.name!r}")
                    staged = self._host[spec.name][: array.size].reshape(array.shape)
                    np.copyto(staged, array)
                    cuda.memcpy_htod_async(self._device[spec.name], staged, self._stream)
                if not context.execute_async_v3(stream_handle=self._stream.handle):
                    raise RuntimeError(f"TensorRT failed to run {self._plan_name}")
                results = []
                for spec in self.outputs:
                    shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
                    view = self._host[spec.name][: int(np.prod(shape, dtype=np.int64))].reshape(shape)
                    cuda.memcpy_dtoh_async(view, self._device[spec.name], self._stream)
                    results.append(view)
                self._stream.synchronize()
                # The page-locked buffers are reused by the next call: hand out copies.
                return [np.array(r, copy=True) for r in results]
            finally:
                cuda.Context.pop()

    def _close(self) -> None:
        if self._cuda_context is None:
            return
        self._cuda_context.push()
        try:
            if self._stream is not None:
                self._stream.synchronize()
            self._release()
        finally:
            self._cuda.Context.pop()
            self._cuda_context.detach()
            self._cuda_context = None

    def _release(self) -> None:
        """Free buffers and TensorRT objects (the CUDA context must be current)."""
        for device in self._device.values():
            device.free()
        for host in self._host.values():
            base = host.base
            while base is not None and not hasattr(base, "free"):
                base = getattr(base, "base", None)
            if base is not None:
                base.free()
        self._device.clear()
        self._host.clear()
        # Destroy in dependency order: context before engine before runtime.
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
        self._ranges.clear()


__all__ = [
    "DEFAULT_BATCH",
    "PLAN_MAGIC",
    "EngineBuildError",
    "PlanFormatError",
    "ShapeRange",
    "TrtEngine",
    "batch_profiles",
    "build_plan",
    "cached_plan",
    "check_plan_file",
    "check_plan_header",
    "decode_plan",
    "encode_plan",
    "onnx_input_shapes",
    "onnx_metadata",
    "plan_cache_key",
    "plan_path",
    "read_plan",
    "read_plan_header",
    "remove_stale_plans",
    "timing_cache_path",
    "write_plan",
]
