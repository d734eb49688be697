"""Engines that degrade, with the project's real ONNX models and no GPU.

* TensorRT chosen but failing to load -> a loaded ONNX Runtime engine and one log record
  naming the model (WARNING for ``auto``, ERROR for an explicit ``--backend tensorrt``).
  The failure is real here: ``tensorrt`` is not installed, so ``TrtEngine.load`` fails on its
  import; only the GPU probe is told there is a GPU (so that TensorRT is chosen at all).
* Every model (face, VAD, MiniLM) goes through :func:`engines.select.create_engine`.
* The profile and plan cache key ``engines build`` uses equal the ones the run asks for.
* Stale, damaged and truncated plan files are found, deleted and rebuilt.
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest

from engines import select, shapes
from engines.models import registry as reg
from engines.runtimes import tensorrt as trtb
from engines.runtimes.onnxruntime import OrtEngine

GPU, TRT = "Test GPU (no device)", "10.9.0.34"
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="the real failure used here is 'tensorrt not installed'")


def _onnx(name):
    spec = reg.get(name)
    ok, where = reg.available(spec)
    if not ok:
        pytest.skip(f"{name} not available here: {where}")
    return spec, shapes.runtime_onnx(spec)


@pytest.fixture
def pretend_gpu(monkeypatch, tmp_path):
    """The GPU probe reports a GPU with TensorRT (so TensorRT is chosen); nothing else is faked.
    Plans go to a temporary cache."""
    monkeypatch.setattr(select, "tensorrt_status", lambda: (True, "test: pretend a GPU"))
    yield tmp_path


def _records(caplog, level):
    return [r.getMessage() for r in caplog.records if r.name == "cer_stream.engines" and r.levelno == level]


# ------------------------------------------------------------------------------- fallback at load
@needs_no_tensorrt
@pytest.mark.parametrize("name", ["fer-mini-xception", "silero-vad", "all-MiniLM-L6-v2"])
@pytest.mark.parametrize("backend", ["auto", "tensorrt"])
def test_tensorrt_failure_falls_back_to_onnxruntime(name, backend, pretend_gpu, caplog):
    spec, path = _onnx(name)
    with caplog.at_level(logging.WARNING, logger="cer_stream.engines"):
        engine = select.create_engine(path, backend=backend, model=spec.name, cache_dir=pretend_gpu)
    try:
        assert isinstance(engine, OrtEngine) and engine.loaded
        assert "TensorRT is not importable" in engine.fallback_reason
        assert isinstance(engine.fallback_from, trtb.TrtEngine) and not engine.fallback_from.loaded
        level = logging.ERROR if backend == "tensorrt" else logging.WARNING
        lines = _records(caplog, level)
        assert len(lines) == 1 and spec.name in lines[0] and "ONNX Runtime instead" in lines[0], lines
        assert ("--backend tensorrt" in lines[0]) == (backend == "tensorrt")
        # the stand-in gives what ONNX Runtime gives
        with OrtEngine(path, device="cpu") as direct:
            feed = _feed(direct, spec)
            for got, want in zip(engine.infer(feed), direct.infer(feed)):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    finally:
        engine.close()


def _feed(engine, spec, batch=2):
    rng = np.random.default_rng(0)
    if spec.role == "vad":
        return {
            "input": rng.normal(0, 0.1, (1, 576)).astype(np.float32),
            "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(16000, np.int64),
        }
    if spec.role == "text_encoder":
        return {
            "input_ids": rng.integers(1000, 2000, (batch, 12)).astype(np.int64),
            "attention_mask": np.ones((batch, 12), np.int64),
        }
    x = engine.inputs[0]
    return rng.uniform(0, 1, (batch,) + tuple(x.shape[1:])).astype(x.dtype)


@needs_no_tensorrt
def test_runtime_models_get_their_engine_from_backend_selection(pretend_gpu, caplog):
    """Face (mini-Xception), VAD and MiniLM as the pipeline makes them: each asks for TensorRT
    and, where it fails, runs on ONNX Runtime with a warning naming it; never a traceback."""
    from engines.models.minilm import TextEncoder
    from stream.modalities.face import EmotionModel
    from stream.modalities.speech.vad import SileroVAD

    _onnx("fer-mini-xception"), _onnx("silero-vad"), _onnx("all-MiniLM-L6-v2")
    with caplog.at_level(logging.WARNING, logger="cer_stream.engines"):
        face = EmotionModel("minixception", backend="auto", device="auto")
        vad = SileroVAD(backend="auto", device="auto").load()
        text = TextEncoder(backend="auto", device="auto").load()
    try:
        for engine in (face.engine, vad.engine, text.engine):
            assert isinstance(engine, OrtEngine) and isinstance(engine.fallback_from, trtb.TrtEngine)
        lines = _records(caplog, logging.WARNING)
        for name in ("fer-mini-xception", "silero-vad", "all-MiniLM-L6-v2"):
            assert any(name in line for line in lines), lines
        assert 0.0 <= vad(np.zeros(512, np.float32)) <= 1.0
        assert text.encode(["hello there", "a short text"]).shape == (2, 384)
    finally:
        vad.close(), text.close()


# ------------------------------------------------------------------------ one table of plan shapes
@needs_no_tensorrt
def test_engines_build_asks_for_the_plan_the_runtime_asks_for(pretend_gpu):
    """For every ONNX model available here, the profile and the cache key (so the plan file)
    of ``engines build`` equal those of the engine the runtime makes."""
    from engines.cli import build_targets
    from engines.models.minilm import TextEncoder
    from stream.modalities.face import EmotionModel
    from stream.modalities.speech.vad import SileroVAD

    def runtime_engines():
        if reg.available(reg.get("fer-mini-xception"))[0]:
            yield "fer-mini-xception", EmotionModel("minixception", backend="auto").engine
        if reg.available(reg.get("faceapi-expression"))[0]:
            yield "faceapi-expression", EmotionModel("faceapi", backend="auto").engine
        if reg.available(reg.get("silero-vad"))[0]:
            yield "silero-vad", SileroVAD(backend="auto", device="auto").load().engine
        if reg.available(reg.get("all-MiniLM-L6-v2"))[0]:
            for max_len in (128, 256):  # the speech and the scene heads share one plan
                yield "all-MiniLM-L6-v2", TextEncoder(backend="auto", device="auto", max_len=max_len).load().engine

    checked = set()
    for name, used in runtime_engines():
        runtime = used.fallback_from
        assert isinstance(runtime, trtb.TrtEngine), name
        [(_, built)] = build_targets([reg.get(name)])
        assert built.model_path.resolve() == runtime.model_path.resolve(), name
        assert built.requested_profiles() == runtime.requested_profiles(), name
        assert built.plan_target(GPU, TRT) == runtime.plan_target(GPU, TRT), name
        used.close()
        checked.add(name)
    assert {"fer-mini-xception", "silero-vad", "all-MiniLM-L6-v2"} <= checked


def test_minilm_profile_admits_what_the_text_encoder_sends():
    """The old build profile (batch 1..20, 64 opt tokens) was never the one TextEncoder asked
    for; the table's must admit every batch it sends: up to 32 texts of up to 256 tokens."""
    spec, path = _onnx("all-MiniLM-L6-v2")
    from engines.models.minilm import MODEL_MAX_LEN, TextEncoder

    prof = shapes.requested_profiles(path, model=spec.name)
    assert set(prof) == {"input_ids", "attention_mask"}
    enc = TextEncoder(device="cpu", max_len=MODEL_MAX_LEN)
    with enc:
        long = " ".join(["word"] * 400)
        ids, _ = enc.tokenize([long] * enc.batch_size)
    assert ids.shape == (32, 256)
    for rng in prof.values():
        assert rng.admits(ids.shape) and rng.admits((1, 1)) and rng.admits((1, 12))
    assert prof["input_ids"].max == (shapes.TEXT_BATCH[2], shapes.TEXT_TOKENS[2])


def test_vad_profile_admits_the_streaming_feed():
    _, path = _onnx("silero-vad")
    prof = shapes.requested_profiles(path)  # the wheel's file has no cer.* metadata: found by its inputs
    assert prof["input"].admits((1, 576)) and prof["state"].admits((2, 1, 128)) and prof["sr"].admits(())
    assert prof == shapes.requested_profiles(path, model="silero-vad")


def test_every_registry_model_has_shapes():
    for spec in reg.registry().values():
        if spec.format == "onnx":
            assert spec.name in shapes.BY_NAME and spec.role in shapes.BY_ROLE, spec.name


# --------------------------------------------------------------------------- stale or corrupt plans
@pytest.fixture
def real_plan(tmp_path):
    """A plan file for the real mini-Xception ONNX, at the very path the runtime looks for,
    with the header the runtime writes (the engine bytes are opaque to this check)."""
    _, path = _onnx("fer-mini-xception")
    engine = trtb.TrtEngine(path, model="fer-mini-xception", cache_dir=tmp_path)
    target, digest, profiles = engine.plan_target(GPU, TRT)
    body = bytes(range(256)) * 64
    header = {
        "format": trtb.PLAN_FORMAT,
        "gpu": GPU,
        "tensorrt": TRT,
        "onnx": path.name,
        "onnx_sha256": digest,
        "profiles": {n: r.as_json() for n, r in profiles.items()},
        "fp16": True,
        "plan_bytes": len(body),
        "metadata": trtb.onnx_metadata(path),
    }
    trtb.write_plan(target, body, header)
    return engine, target, digest, profiles, header, body


def _lookup(target, digest, profiles):
    return trtb.cached_plan(target, gpu_name=GPU, trt_version=TRT, onnx_sha256=digest, profiles=profiles)


def test_good_plan_is_used(real_plan):
    _, target, digest, profiles, _, _ = real_plan
    assert _lookup(target, digest, profiles) == target and target.is_file()


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",
        "padded",
        "garbage header",
        "not a plan",
        "empty",
        "other model",
        "other tensorrt",
        "other profile",
        "old format",
        "no length",
    ],
)
def test_stale_or_damaged_plan_is_deleted(real_plan, damage, caplog):
    _, target, digest, profiles, header, body = real_plan
    raw = target.read_bytes()
    if damage == "truncated":
        target.write_bytes(raw[:-100])
    elif damage == "padded":
        target.write_bytes(raw + b"\0")
    elif damage == "garbage header":
        target.write_bytes(raw[:12] + b"#" * 20 + raw[32:])
    elif damage == "not a plan":
        target.write_bytes(b"\x7fELF" + raw[4:])
    elif damage == "empty":
        target.write_bytes(b"")
    else:
        changed = dict(header)
        if damage == "other model":
            changed["onnx_sha256"] = "0" * 64
        elif damage == "other tensorrt":
            changed["tensorrt"] = "10.3.0"
        elif damage == "other profile":
            changed["profiles"] = {"input": [[1, 1, 64, 64], [20, 1, 64, 64], [32, 1, 64, 64]]}
        elif damage == "old format":
            changed["format"] = 1
        else:
            del changed["plan_bytes"]
        trtb.write_plan(target, body, changed)
    with caplog.at_level(logging.WARNING, logger="cer_stream.engines"):
        assert _lookup(target, digest, profiles) is None
    assert not target.exists()
    assert any(
        "deleting the stale or damaged TensorRT plan" in line and target.name in line
        for line in _records(caplog, logging.WARNING)
    )


def test_old_plans_of_the_same_model_are_removed(real_plan, tmp_path):
    engine, target, digest, _, header, body = real_plan
    stem = engine.model_path.stem
    older = tmp_path / f"{stem}-{'1' * 20}.plan"
    trtb.write_plan(older, body, {**header, "tensorrt": "10.0.1"})
    broken = tmp_path / f"{stem}-{'2' * 20}.plan"
    broken.write_bytes(b"CERPLAN1\xff\xff")
    other_gpu = tmp_path / f"{stem}-{'3' * 20}.plan"
    trtb.write_plan(other_gpu, body, {**header, "gpu": "NVIDIA L4", "tensorrt": "10.0.1"})
    other_batch = tmp_path / f"{stem}-{'4' * 20}.plan"
    trtb.write_plan(other_batch, body, {**header, "profiles": {"input": [[1, 1, 64, 64]] * 3}})
    removed = trtb.remove_stale_plans(
        tmp_path, engine.model_path, gpu_name=GPU, trt_version=TRT, onnx_sha256=digest, keep=target
    )
    assert sorted(removed) == sorted([older, broken])
    assert target.is_file() and other_gpu.is_file() and other_batch.is_file()


@needs_no_tensorrt
def test_stale_plan_in_the_cache_is_deleted_rebuilt_and_a_failed_rebuild_falls_back(real_plan, monkeypatch, caplog):
    """The whole path through create_engine: the cached plan (real file, wrong TensorRT
    version in its header) is deleted, a rebuild is tried, and when the rebuild fails the run
    gets ONNX Runtime. TensorRT itself is not installed, so its module and the GPU name are
    stood in for up to the build, which fails on the real missing module."""
    import types

    engine, target, _, profiles, header, body = real_plan
    trtb.write_plan(target, body, {**header, "tensorrt": "10.3.0"})
    real_import = trtb._import_tensorrt
    monkeypatch.setattr(select, "tensorrt_status", lambda: (True, "test: pretend a GPU"))
    monkeypatch.setattr(trtb, "cuda_device_name", lambda device_id=0: GPU)
    monkeypatch.setattr(trtb, "_import_tensorrt", lambda: types.SimpleNamespace(__version__=TRT))
    built = []

    def build_plan(onnx_path, profiles, **kw):  # the real builder starts with this import: fails here
        built.append(profiles)
        real_import()

    monkeypatch.setattr(trtb, "build_plan", build_plan)
    with caplog.at_level(logging.WARNING, logger="cer_stream.engines"):
        got = select.create_engine(engine.model_path, model="fer-mini-xception", cache_dir=engine.cache_dir)
    assert isinstance(got, OrtEngine) and got.loaded
    assert not target.exists() and built == [profiles]
    lines = _records(caplog, logging.WARNING)
    assert any("deleting the stale or damaged TensorRT plan" in line for line in lines)
    assert any("fer-mini-xception" in line and "TensorRT is not importable" in line for line in lines)
    got.close()


def test_damaged_given_plan_is_refused_with_its_reason(tmp_path):
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"CERPLAN1" + (2).to_bytes(4, "little") + b"{}x")
    problems = trtb.check_plan_file(plan, gpu_name=GPU, trt_version=TRT)
    assert problems and any("format" in p for p in problems) and any("length" in p for p in problems)
