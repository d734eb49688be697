"""Backend choice (TensorRT / ONNX Runtime), the TensorRT plan cache and plan header.

The plan-cache key, the header format and the shape profiles are pure Python and run
everywhere; building and running a plan needs an NVIDIA GPU with TensorRT and pycuda
(``-m gpu``; skipped elsewhere).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines import select
from engines.runtimes import tensorrt as trtb
from engines.runtimes.onnxruntime import OrtEngine


def tiny_onnx(path, *, batch_dim="N", extra_dynamic=False, weights_seed=0):
    """x [N, 4] -> probs = softmax(x @ W + b) [N, 3]; optionally a second dynamic axis."""
    rng = np.random.default_rng(weights_seed)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    shape = [batch_dim, "T", 4] if extra_dynamic else [batch_dim, 4]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["z"]),
        helper.make_node("Add", ["z", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, shape[:-1] + [3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path, w, b


def reference(x, w, b):
    z = x @ w + b
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --------------------------------------------------------------------------- backend selection
@pytest.fixture
def no_tensorrt(monkeypatch):
    """Pretend this machine has no usable TensorRT (whatever it really has)."""
    monkeypatch.setattr(select, "tensorrt_status", lambda: (False, "test: no GPU here"))
    select.reset_fallback_warning()
    yield
    select.reset_fallback_warning()


def test_auto_falls_back_to_onnxruntime_with_one_warning(tmp_path, caplog, no_tensorrt):
    path, w, b = tiny_onnx(tmp_path / "tiny.onnx")
    with caplog.at_level(logging.WARNING, logger="cer_stream.engines"):
        first = select.create_engine(path)
        second = select.create_engine(path, backend="auto", device="auto")
    assert isinstance(first, OrtEngine) and isinstance(second, OrtEngine)
    warnings = [r for r in caplog.records if r.name == "cer_stream.engines" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "TensorRT is not available" in warnings[0].getMessage()
    assert "test: no GPU here" in warnings[0].getMessage()
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    with first:
        np.testing.assert_allclose(first.infer(x)[0], reference(x, w, b), rtol=1e-5, atol=1e-6)


def test_auto_on_cpu_request_is_silent(tmp_path, caplog, no_tensorrt):
    path, _, _ = tiny_onnx(tmp_path / "tiny.onnx")
    with caplog.at_level(logging.WARNING, logger="cer_stream.engines"):
        engine = select.create_engine(path, device="cpu")
        engine2 = select.create_engine(path, backend="onnxruntime")
    assert isinstance(engine, OrtEngine) and engine.device == "cpu"
    assert isinstance(engine2, OrtEngine)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_explicit_tensorrt_without_gpu_raises(tmp_path, no_tensorrt):
    path, _, _ = tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(select.EngineUnavailable, match="TensorRT backend unavailable: test: no GPU here"):
        select.create_engine(path, backend="tensorrt")
    with pytest.raises(select.EngineUnavailable, match="GPU only"):
        select.create_engine(path, backend="tensorrt", device="cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        select.create_engine(path, backend="tensorflow")


def test_backend_options_are_routed(tmp_path, no_tensorrt):
    path, _, _ = tiny_onnx(tmp_path / "tiny.onnx")
    engine = select.create_engine(
        path, backend="onnxruntime", device="cpu", intra_op_threads=1, batch=(1, 8, 8), fp16=False, expect_metadata={}
    )
    assert isinstance(engine, OrtEngine) and engine.intra_op_threads == 1


def test_gpu_probe_needs_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; from engines.select import gpu_available, tensorrt_status; "
        "r = gpu_available(); s = tensorrt_status(); "
        "assert isinstance(r, bool) and isinstance(s[1], str); "
        "assert 'torch' not in sys.modules, 'the GPU probe imported torch'; "
        "assert r or 'tensorrt' not in sys.modules, 'tensorrt imported on a machine without a GPU'"
    )
    from conftest import ROOT

    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- plan cache (pure Python)
def _profiles(batch=(1, 20, 20)):
    return {"x": trtb.ShapeRange((batch[0], 4), (batch[1], 4), (batch[2], 4))}


def test_plan_cache_key_changes_with_every_build_input():
    base = dict(
        gpu_name="NVIDIA H100 80GB HBM3", trt_version="10.13.0", onnx_sha256="ab" * 32, profiles=_profiles(), fp16=True
    )
    key = trtb.plan_cache_key(**base)
    assert len(key) == 20 and all(c in "0123456789abcdef" for c in key)
    assert trtb.plan_cache_key(**base) == key  # deterministic
    variants = [
        {"gpu_name": "NVIDIA A10"},
        {"trt_version": "10.14.1"},
        {"onnx_sha256": "cd" * 32},
        {"profiles": _profiles((1, 8, 32))},
        {"fp16": False},
    ]
    keys = {trtb.plan_cache_key(**{**base, **change}) for change in variants}
    assert len(keys) == len(variants) and key not in keys
    # the order inputs are listed in does not matter
    two = {"b": trtb.ShapeRange((1, 2), (4, 2), (8, 2)), "a": trtb.ShapeRange((1,), (1,), (1,))}
    assert trtb.plan_cache_key(**{**base, "profiles": two}) == trtb.plan_cache_key(
        **{**base, "profiles": dict(reversed(list(two.items())))}
    )


def test_plan_and_timing_cache_paths(tmp_path):
    plan = trtb.plan_path(tmp_path, tmp_path / "fer-mini-xception-abc-e2.onnx", "0123456789abcdef0123")
    assert plan.name == "fer-mini-xception-abc-e2-0123456789abcdef0123.plan"
    cache = trtb.timing_cache_path(tmp_path, "NVIDIA H100 80GB HBM3", "10.13.0.35")
    assert cache.name == "timing-nvidia-h100-80gb-hbm3-trt10-13-0-35.cache"


def test_plan_header_round_trip(tmp_path):
    header = {
        "format": trtb.PLAN_FORMAT,
        "gpu": "NVIDIA L4",
        "tensorrt": "10.13.0",
        "onnx_sha256": "ff" * 32,
        "profiles": {"x": [[1, 4], [20, 4], [20, 4]]},
        "fp16": True,
        "metadata": {"cer.name": "tiny", "cer.labels": '["a", "b", "c"]'},
    }
    engine_bytes = bytes(range(256)) * 40
    path = tmp_path / "tiny.plan"
    trtb.write_plan(path, engine_bytes, header)
    raw = path.read_bytes()
    assert raw.startswith(b"CERPLAN1")
    assert int.from_bytes(raw[8:12], "little") == len(raw) - 12 - len(engine_bytes)
    got_header, got_plan = trtb.read_plan(path)
    assert got_header == header and got_plan == engine_bytes
    assert trtb.read_plan_header(path) == header
    assert trtb.check_plan_header(header, gpu_name="NVIDIA L4", trt_version="10.13.0", onnx_sha256="ff" * 32) == []
    problems = trtb.check_plan_header(header, gpu_name="NVIDIA A100", trt_version="10.14.0", onnx_sha256="00")
    assert len(problems) == 3 and any("A100" in p for p in problems)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"PLAN",
        b"\x00" * 64,
        b"CERPLAN1" + (10**7).to_bytes(4, "little"),
        b"CERPLAN1" + (5).to_bytes(4, "little") + b"{nope",
    ],
)
def test_damaged_plans_are_rejected(tmp_path, data):
    path = tmp_path / "bad.plan"
    path.write_bytes(data)
    with pytest.raises(trtb.PlanFormatError):
        trtb.read_plan(path)
    with pytest.raises(trtb.PlanFormatError):
        trtb.read_plan_header(path)


def test_batch_profiles_from_onnx(tmp_path):
    path, _, _ = tiny_onnx(tmp_path / "tiny.onnx")
    shapes = trtb.onnx_input_shapes(path)
    assert shapes == {"x": (None, 4)}
    profiles = trtb.batch_profiles(shapes)
    assert profiles["x"] == trtb.ShapeRange((1, 4), (20, 4), (20, 4))
    assert profiles["x"].admits((7, 4)) and not profiles["x"].admits((21, 4)) and not profiles["x"].admits((1, 5))
    seq, _, _ = tiny_onnx(tmp_path / "seq.onnx", extra_dynamic=True)
    with pytest.raises(ValueError, match="dynamic axis 1"):
        trtb.batch_profiles(trtb.onnx_input_shapes(seq))
    fixed = trtb.batch_profiles(trtb.onnx_input_shapes(seq), (2, 4, 8), fixed={"x": {1: 77}})
    assert fixed["x"] == trtb.ShapeRange((2, 77, 4), (4, 77, 4), (8, 77, 4))
    ranged = trtb.batch_profiles(trtb.onnx_input_shapes(seq), fixed={"x": {1: (1, 64, 256)}})
    assert ranged["x"] == trtb.ShapeRange((1, 1, 4), (20, 64, 4), (20, 256, 4))
    with pytest.raises(ValueError):
        trtb.ShapeRange((4,), (2,), (8,))


def test_tensorrt_engine_is_lazy(tmp_path):
    """Constructing a TrtEngine imports nothing; loading without TensorRT says how to get it."""
    import importlib.util
    import sys

    path, _, _ = tiny_onnx(tmp_path / "tiny.onnx")
    engine = trtb.TrtEngine(path, cache_dir=tmp_path)
    assert "tensorrt" not in sys.modules or importlib.util.find_spec("tensorrt") is not None
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(ModuleNotFoundError, match=r"cer-stream\[gpu\]"):
            engine.load()
        assert not engine.loaded


# --------------------------------------------------------------------------- on a GPU
def _tensorrt_ok() -> bool:
    return select.tensorrt_status()[0]


@pytest.mark.gpu
@pytest.mark.skipif(not _tensorrt_ok(), reason="needs an NVIDIA GPU with tensorrt and pycuda")
def test_tensorrt_builds_caches_and_matches_onnxruntime(tmp_path):
    path, w, b = tiny_onnx(tmp_path / "tiny.onnx")
    x = np.random.default_rng(2).normal(size=(20, 4)).astype(np.float32)
    engine = trtb.TrtEngine(path, cache_dir=tmp_path, fp16=False)
    with engine:
        plan = engine.plan_file
        assert plan.is_file() and plan.suffix == ".plan"
        assert engine.header["onnx_sha256"] and engine.header["profiles"]["x"] == [[1, 4], [20, 4], [20, 4]]
        np.testing.assert_allclose(engine.infer(x[:1])[0], reference(x[:1], w, b), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(engine.infer(x)[0], reference(x, w, b), rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="outside the plan's profile"):
            engine.infer(np.zeros((21, 4), np.float32))
    assert list(tmp_path.glob("timing-*.cache"))
    stamp = plan.stat().st_mtime_ns
    with select.create_engine(path, backend="tensorrt", cache_dir=tmp_path, fp16=False) as again:
        assert again.plan_file == plan
        again.warmup(batch_size=20)
    assert plan.stat().st_mtime_ns == stamp  # reused, not rebuilt
    # the plan file alone carries what is needed to run
    with trtb.TrtEngine(plan) as direct:
        np.testing.assert_allclose(direct.infer(x[:3])[0], reference(x[:3], w, b), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- engines build (no GPU)
def test_engines_build_without_gpu_is_one_line(capsys, no_tensorrt):
    from engines.cli import engines_main

    assert engines_main(["build", "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT backend unavailable" in err[0]


def test_build_targets_use_the_runtime_file_and_the_shape_table():
    from engines.cli import build_targets
    from engines.models import registry as reg
    from engines.shapes import plan_shapes, requested_profiles

    specs = [s for s in reg.registry().values() if s.format == "onnx" and reg.available(s)[0]]
    if not specs:
        pytest.skip("no ONNX model available here")
    for spec, engine in build_targets(specs):
        assert isinstance(engine, trtb.TrtEngine) and engine.model == spec.name and engine.batch is None
        assert engine.requested_profiles() == requested_profiles(engine.model_path, model=spec.name)
        assert plan_shapes(spec.name) is plan_shapes(spec.name, metadata={"cer.role": spec.role})


# --------------------------------------------------------------------------- real models on a GPU
REAL_MODELS = ["fer-mini-xception", "faceapi-expression", "all-MiniLM-L6-v2", "silero-vad"]


def _real_model(name):
    from engines.models import registry as reg
    from engines.shapes import runtime_onnx

    spec = reg.get(name)
    ok, where = reg.available(spec)
    if not ok:
        pytest.skip(f"{name} not available: {where}")
    return spec, runtime_onnx(spec)


def _real_feeds(engine, spec, rng):
    """Inputs at the profile's smallest and largest shapes (and one in between)."""
    if spec.role == "vad":
        chunks = []
        for _ in range(3):
            chunks.append(
                {
                    "input": rng.normal(0, 0.1, (1, 576)).astype(np.float32),
                    "state": rng.normal(0, 0.1, (2, 1, 128)).astype(np.float32),
                    "sr": np.array(16000, np.int64),
                }
            )
        return chunks
    if spec.role == "text_encoder":
        feeds = []
        for batch, tokens in ((1, 1), (3, 12), (32, 256)):
            ids = rng.integers(1000, 30000, (batch, tokens)).astype(np.int64)
            ids[:, 0] = 101
            mask = np.ones((batch, tokens), np.int64)
            if tokens > 2:
                mask[0, tokens // 2 :] = 0  # padding in one row
            feeds.append({"input_ids": ids, "attention_mask": mask})
        return feeds
    x = engine.inputs[0]
    high = 255.0 if spec.name == "faceapi-expression" else 1.0
    return [rng.uniform(0, high, (batch,) + tuple(x.shape[1:])).astype(x.dtype) for batch in (1, 7, 20)]


@pytest.mark.gpu
@pytest.mark.skipif(not _tensorrt_ok(), reason="needs an NVIDIA GPU with tensorrt and pycuda")
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_on_tensorrt_matches_onnxruntime(name, fp16, tmp_path):
    """The project's models built to TensorRT (the runtime's file and profile) give what ONNX
    Runtime gives: tight in FP32, looser in FP16."""
    from engines.shapes import requested_profiles

    spec, path = _real_model(name)
    # FP16 is what a run uses: the plan `engines build` left in the model cache is reused (and
    # so checked); FP32 plans are built in a temporary folder.
    engine = trtb.TrtEngine(path, model=name, cache_dir=None if fp16 else tmp_path, fp16=fp16)
    try:
        engine.load()
    except trtb.EngineBuildError as exc:
        if spec.role == "vad":  # recurrent, an If on the sample rate: the run falls back to ONNX Runtime
            pytest.xfail(f"TensorRT cannot build or run Silero VAD: {exc}")
        raise
    rtol, atol = (1e-3, 1e-4) if not fp16 else (5e-2, 2e-2)
    with engine, OrtEngine(path, device="cpu") as ref:
        want = {n: r.as_json() for n, r in requested_profiles(path, model=name).items()}
        assert engine.header["profiles"] == want and engine.header["plan_bytes"] > 0
        assert engine.output_names == ref.output_names
        for feed in _real_feeds(ref, spec, np.random.default_rng(3)):
            for got, exp in zip(engine.infer(feed), ref.infer(feed)):
                assert got.shape == exp.shape
                np.testing.assert_allclose(got.astype(np.float32), exp.astype(np.float32), rtol=rtol, atol=atol)


@pytest.mark.gpu
@pytest.mark.skipif(not _tensorrt_ok(), reason="needs an NVIDIA GPU with tensorrt and pycuda")
def test_create_engine_uses_tensorrt_and_rebuilds_an_undeserializable_plan(tmp_path, caplog):
    spec, path = _real_model("fer-mini-xception")
    with select.create_engine(path, backend="tensorrt", model=spec.name, cache_dir=tmp_path) as engine:
        assert isinstance(engine, trtb.TrtEngine) and engine.fallback_reason is None
        plan = engine.plan_file
    header, body = trtb.read_plan(plan)
    trtb.write_plan(plan, bytes(len(body)), header)  # right header and length, engine bytes zeroed
    with (
        caplog.at_level(logging.WARNING, logger="cer_stream.engines"),
        select.create_engine(path, backend="tensorrt", model=spec.name, cache_dir=tmp_path) as again,
    ):
        assert isinstance(again, trtb.TrtEngine) and again.plan_file == plan
        assert again.infer(np.zeros((2, 1, 64, 64), np.float32))[0].shape == (2, 7)
    assert any("could not deserialize" in r.getMessage() for r in caplog.records)
    assert trtb.read_plan(plan)[1] != bytes(len(body))


@pytest.mark.parametrize("env, arena", [(None, False), ("1", True), ("0", False)])
def test_onnxruntime_memory_arena_is_off_unless_asked(tmp_path, monkeypatch, env, arena):
    """The CPU arena (and memory patterns) grow to every new input shape and never give memory
    back; off by default, CER_STREAM_ORT_ARENA=1 restores them.  Results are the same."""
    from engines.runtimes.onnxruntime import ARENA_ENV

    if env is None:
        monkeypatch.delenv(ARENA_ENV, raising=False)
    else:
        monkeypatch.setenv(ARENA_ENV, env)
    path, w, b = tiny_onnx(tmp_path / "tiny.onnx")
    eng = OrtEngine(path, device="cpu").load()
    opts = eng._session.get_session_options()
    assert opts.enable_cpu_mem_arena is arena and opts.enable_mem_pattern is arena
    for n in (1, 7, 3):  # batches of new sizes, as after a reconnect
        x = np.random.default_rng(n).normal(size=(n, 4)).astype(np.float32)
        np.testing.assert_allclose(eng.infer({"x": x})[0], reference(x, w, b), rtol=1e-5, atol=1e-6)


def test_trim_and_malloc_tuning():
    """glibc (this project's Linux): malloc_trim and mallopt are reachable; the trimmer trims when
    asked and once per period."""
    import platform

    from engines import memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert memory.trim() is True
    assert memory.keep_freed_memory() is True and memory.keep_freed_memory() is True  # once, then a no-op
    now = [100.0]
    t = memory.Trimmer(every_s=60.0, clock=lambda: now[0], background=False)
    t.maybe()
    assert t.count == 0
    now[0] += 59.9
    t.maybe()
    assert t.count == 0
    now[0] += 0.2
    t.maybe()
    assert t.count == 1 and t.last == now[0]
    t.now()
    assert t.count == 2


def test_trimmer_runs_off_the_calling_thread():
    import platform
    import threading

    from engines import memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    seen: list[str] = []
    real = memory.trim
    memory_trim = lambda: seen.append(threading.current_thread().name) or real()  # noqa: E731
    t = memory.Trimmer()
    try:
        memory.trim = memory_trim
        t.now()
        t.join(5)
    finally:
        memory.trim = real
    assert seen == ["cer-trim"] and t.count == 1
