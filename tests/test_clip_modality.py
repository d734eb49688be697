"""CLIP scene-label matching: a tiny image tower with the real I/O contract and metadata, label
embeddings with a fixed seed, real frames of the committed clip.

The tower is built with onnx.helper (patchify conv -> linear -> features, L2-normalised ->
embeds) and stamped by the exporters' own ``finish`` with the metadata the real exporter
writes (``cer.logit_scale``, ``cer.preprocess``, ``cer.source``...). The open_clip test at the
end (the label exporter with a tiny open_clip model) is skipped where open_clip is not
installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, cer_stream, records

from engines.export.clip_labels import FORMAT, read_labels, write_labels
from engines.export.common import finish
from engines.models import registry as reg
from stream.cli.flags import add_clip_args, clip_options
from stream.core.labels import BASIC, COMPOUND
from stream.core.messages import VideoFrame
from stream.core.windows import SAMPLE_FPS, SampleClock, full_window
from stream.modalities.base import AbsentModality, WindowInput
from stream.modalities.clip import (
    CLIP_FRAME_INDICES,
    NO_WEIGHTS,
    ClipLabelModality,
    build_clip_modality,
    preprocess,
    select_frames,
)
from stream.modalities.temporal import CLIP_FEATURES, clip_sequence

DIM = 16
SOURCE = {"file": "open_clip_model.safetensors", "sha256": "ab" * 32}


# --------------------------------------------------------------------------- fixtures
def tiny_tower(path: Path, *, seed: int = 0, dim: int = DIM, source: dict = SOURCE, logit_scale: float = 100.0) -> Path:
    """An image tower with the exporter's contract: input [N, 3, 224, 224] -> features, embeds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    conv = rng.normal(0, 0.05, (8, 3, 32, 32)).astype(np.float32)  # 32 x 32 patches, like ViT-B/32
    proj = rng.normal(0, 0.1, (8 * 7 * 7, dim)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "conv_w"], ["patches"], kernel_shape=[32, 32], strides=[32, 32]),
        helper.make_node("Relu", ["patches"], ["act"]),
        helper.make_node("Flatten", ["act"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "proj"], ["features"]),
        helper.make_node("ReduceL2", ["features"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Div", ["features", "norm"], ["embeds"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_clip_image",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", dim]),
            helper.make_tensor_value_info("embeds", TensorProto.FLOAT, ["N", dim]),
        ],
        initializer=[numpy_helper.from_array(conv, "conv_w"), numpy_helper.from_array(proj, "proj")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    finish(
        model,
        reg.get("clip-vit-b32-image"),
        path,
        source=source,
        extra={"logit_scale": logit_scale, "context_length": 77, "embed_dim": dim},
    )
    onnx.checker.check_model(str(path))
    return path


def tiny_labels(
    path: Path,
    *,
    seed: int = 1,
    dim: int = DIM,
    logit_scale: float = 100.0,
    basic_order: tuple[str, ...] = BASIC,
    source: dict = SOURCE,
) -> Path:
    rng = np.random.default_rng(seed)

    def unit(n: int) -> np.ndarray:
        x = rng.normal(size=(n, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    arrays = {
        "basic_labels": np.array(basic_order),
        "basic": unit(len(basic_order)),
        "compound_labels": np.array(COMPOUND),
        "compound": unit(len(COMPOUND)),
        "basic_phrases": np.array([f"with {b}" for b in basic_order]),
        "compound_phrases": np.array([f"looking {c}" for c in COMPOUND]),
        "templates": np.array(["a photo of a person {}."]),
        "logit_scale": np.float32(logit_scale),
    }
    return write_labels(path, arrays, source=source)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("clip")
    return tiny_tower(d / "image.onnx"), tiny_labels(d / "labels.npz")


@pytest.fixture(scope="module")
def frames() -> list[VideoFrame]:
    """The committed clip's first 6 s on the analyser's 5 fps grid (real decoded frames)."""
    import av

    clock = SampleClock(SAMPLE_FPS)
    out: list[VideoFrame] = []
    with av.open(str(SAMPLE)) as container:
        vs = container.streams.video[0]
        fps = float(vs.average_rate)
        for n, frame in enumerate(container.decode(vs)):
            t = n / fps
            if t >= 6.0:
                break
            if clock(t):
                out.append(VideoFrame(len(out), n, t, 0, frame.to_ndarray(format="rgb24")))
    assert len(out) == 30
    return out


def window(frames: list[VideoFrame], k: int) -> WindowInput:
    w = full_window(k)
    items = [f for f in frames if w.contains(f.pts)]
    return WindowInput(w, 25.0, items, [], None)


class Counting:
    """Wraps an engine and records the batch size of every call."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.batches: list[int] = []

    def infer(self, x):
        self.batches.append(int(x.shape[0]))
        return self.engine.infer(x)

    def close(self) -> None:
        self.engine.close()


def modality(files, **kw) -> ClipLabelModality:
    mod = ClipLabelModality(*files, backend="onnxruntime", device="cpu", **kw)
    mod.load()
    assert mod.engine is not None, mod._error
    mod.engine = Counting(mod.engine)
    return mod


# --------------------------------------------------------------------------- the numpy reference
def reference_preprocess(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = 224 / min(h, w)
    nw, nh = (224, int(h * s)) if w <= h else (int(w * s), 224)
    im = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC), np.float32) / 255
    top, left = round((nh - 224) / 2), round((nw - 224) / 2)
    im = im[top : top + 224, left : left + 224]
    mean, std = np.array(reg.CLIP_MEAN, np.float32), np.array(reg.CLIP_STD, np.float32)
    return ((im - mean) / std).transpose(2, 0, 1)


def reference(tower: Path, labels: Path, images: list[np.ndarray], scale: float | None = None):
    """(basic [8] in BASIC order, compound [7], features [n, D]) computed directly."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(tower), providers=["CPUExecutionProvider"])
    feats = session.run(["features"], {"input": np.stack([reference_preprocess(i) for i in images])})[0]
    emb = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    with np.load(labels) as z:
        scale = float(z["logit_scale"]) if scale is None else scale
        out = []
        for kind, order in (("basic", BASIC), ("compound", COMPOUND)):
            lab = z[kind] / np.linalg.norm(z[kind], axis=1, keepdims=True)
            logits = scale * emb.astype(np.float64) @ lab.T.astype(np.float64)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p = (p / p.sum(axis=1, keepdims=True)).mean(axis=0)
            names = [str(n) for n in z[f"{kind}_labels"]]
            out.append(np.array([p[names.index(n)] for n in order]))
    return out[0], out[1], feats


# --------------------------------------------------------------------------- tests
def test_preprocess_geometry_and_normalisation():
    img = np.zeros((480, 640, 3), np.uint8)
    img[:, 320:] = 255  # right half white
    x = preprocess([img])
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    # 640x480 -> 298x224, centre crop from x = 37: the white edge lands at 160*224/480... - 37
    edge = int(np.argmax(x[0, 0, 100] > 0))
    assert abs(edge - (round(320 * 224 / 480) - 37)) <= 1
    np.testing.assert_allclose(x[0, :, 0, 0], -np.array(reg.CLIP_MEAN) / np.array(reg.CLIP_STD), rtol=1e-5)
    np.testing.assert_allclose(x[0, :, 0, -1], (1 - np.array(reg.CLIP_MEAN)) / np.array(reg.CLIP_STD), rtol=1e-5)
    np.testing.assert_allclose(
        preprocess([np.full((224, 224, 3), 255, np.uint8)])[0, :, 5, 5],
        (1 - np.array(reg.CLIP_MEAN)) / np.array(reg.CLIP_STD),
        rtol=1e-5,
    )


def test_probabilities_match_a_numpy_reference(files, frames, tmp_path):
    tower, _ = files
    # the label file lists the basic states in another order: the modality maps them by name
    shuffled = tuple(BASIC[i] for i in (3, 7, 0, 5, 1, 6, 2, 4))
    labels = tiny_labels(tmp_path / "shuffled.npz", basic_order=shuffled, seed=5)
    mod = modality((tower, labels), frames_per_window=0)
    try:
        inp = window(frames, 0)
        out = mod(inp)
    finally:
        mod.close()
    basic, compound, feats = reference(tower, labels, [f.image for f in inp.frames])
    assert out.basic is not None and out.basic.shape == (8,)
    np.testing.assert_allclose(out.basic, basic, rtol=1e-4, atol=1e-5)
    assert abs(float(out.basic.sum()) - 1) < 1e-5
    got = np.array([out.info["compound"][c] for c in COMPOUND])
    np.testing.assert_allclose(got, compound, atol=1e-4)
    assert out.info["compound_label"] == COMPOUND[int(np.argmax(compound))]
    assert out.info["frames"] == out.info["frames_embedded"] == out.info["frames_new"] == 20
    assert out.info["logit_scale"] == 100.0
    emb = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    np.testing.assert_allclose(out.feature, emb.mean(axis=0), rtol=1e-4, atol=1e-5)
    json.dumps(out.info)  # goes into the window record as is


def test_logit_scale_is_applied(files, frames):
    inp = window(frames, 0)
    peaked, flat = modality(files, frames_per_window=0), modality(files, frames_per_window=0, logit_scale=1.0)
    try:
        p100, p1 = peaked(inp).basic, flat(inp).basic
    finally:
        peaked.close()
        flat.close()
    assert peaked.logit_scale == 100.0  # read from the label file

    def from_uniform(p):  # total variation distance from the uniform distribution
        return 0.5 * float(np.abs(p - 1 / 8).sum())

    # scale 1 (the published code): every probability within a factor e^2 of the others (|cos| <= 1)
    assert from_uniform(p1) < 0.15 and p1.max() / p1.min() < math.e**2
    # CLIP's scale: a clear answer, several labels ruled out
    assert from_uniform(p100) > 0.4 and (p100 < 0.01).sum() >= 3 and from_uniform(p100) > 3 * from_uniform(p1)
    np.testing.assert_allclose(p1, reference(*files, [f.image for f in inp.frames], scale=1.0)[0], atol=1e-5)


def test_overlapping_windows_embed_only_new_frames(files, frames):
    mod = modality(files, frames_per_window=0)
    try:
        first = mod(window(frames, 0))
        assert mod.engine.batches == [20]  # one batch for the whole window
        second = mod(window(frames, 1))
        assert mod.engine.batches == [20, 10]  # [2, 4) was cached: only [4, 6) is new
        assert (first.info["frames_new"], second.info["frames_new"]) == (20, 10)
        assert min(mod.cache) >= 10  # frames before the current window were forgotten
        ref = reference(*files, [f.image for f in window(frames, 1).frames])[0]
        np.testing.assert_allclose(second.basic, ref, rtol=1e-4, atol=1e-5)  # cached rows are the same
    finally:
        mod.close()


def test_frame_subset_on_a_shared_grid(files, frames):
    mod = modality(files)  # default: 4 frames a window
    try:
        a, b = window(frames, 0), window(frames, 1)
        out_a, out_b = mod(a), mod(b)
        assert mod.engine.batches == [4, 2]  # the grid ticks at 2 s and 3 s are shared
        by_index = {f.index: f.pts for f in frames}
        assert [by_index[i] for i in a.shared[CLIP_FRAME_INDICES]] == pytest.approx([0, 1, 2, 3])
        assert [by_index[i] for i in b.shared[CLIP_FRAME_INDICES]] == pytest.approx([2, 3, 4, 5])
        assert b.shared[CLIP_FEATURES].shape == (4, DIM)
        imgs = [f.image for f in b.frames if f.index in b.shared[CLIP_FRAME_INDICES]]
        np.testing.assert_allclose(out_b.basic, reference(*files, imgs)[0], rtol=1e-4, atol=1e-5)
        assert out_a.info["frames_embedded"] == 4 and out_b.info["frames_new"] == 2
    finally:
        mod.close()


def test_select_frames_rules(frames):
    w0 = window(frames, 0).frames
    assert select_frames(w0, 0) == list(range(20)) == select_frames(w0, 20) == select_frames(w0, 50)
    assert [w0[i].pts for i in select_frames(w0, 4)] == pytest.approx([0, 1, 2, 3])
    assert len(select_frames(w0, 3)) == 3 and len(select_frames(w0, 1)) == 1
    assert select_frames(w0[:2], 1) == [0] and select_frames([], 4) == []


def test_shared_features_one_row_per_frame(files, frames):
    mod = modality(files, frames_per_window=0)
    try:
        inp = window(frames, 0)
        mod(inp)
    finally:
        mod.close()
    feats = inp.shared[CLIP_FEATURES]
    assert feats.shape == (len(inp.frames), DIM) and feats.dtype == np.float32
    assert inp.shared[CLIP_FRAME_INDICES] == [f.index for f in inp.frames]
    _, _, ref = reference(*files, [f.image for f in inp.frames])
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)  # the tower's `features`, not normalised
    assert clip_sequence(feats).shape == (20, DIM)  # what the temporal modality reads


def test_temporal_reads_the_clip_features(files, frames, tmp_path):
    """A temporal model of the ``clip`` feature kind after the clip modality: present; with CLIP
    absent it is absent with its reason and nothing else changes."""
    torch = pytest.importorskip("torch")
    from stream.modalities.temporal import TemporalModality
    from stream.offline.temporal_data import SequenceData
    from stream.offline.temporal_train import TrainOptions, build_model, export_onnx, model_metadata

    torch.manual_seed(0)
    opts = TrainOptions(arch="transformer", hidden=16, heads=2, layers=1)
    data = SequenceData(np.zeros((8, 20, DIM), np.float32), np.arange(8), "clip", ())
    fake = type("R", (), {"options": opts, "summary": lambda self: {}})()
    path = export_onnx(
        build_model(opts, DIM, 20).eval(), tmp_path / "t.onnx", seq_len=20, dim=DIM, metadata=model_metadata(fake, data)
    )
    clip, temporal = modality(files), TemporalModality(path)
    absent = AbsentModality("clip", NO_WEIGHTS)
    try:
        inp = window(frames, 0)
        assert clip(inp).basic is not None and temporal(inp).basic is not None
        inp = window(frames, 0)
        assert absent(inp).basic is None and CLIP_FEATURES not in inp.shared
        assert temporal(inp).info["reason"] == "no CLIP image features in this window"
    finally:
        clip.close()
        temporal.close()


def parse(argv: list[str]):
    """The clip options the command line makes of ``argv``."""
    p = argparse.ArgumentParser()
    add_clip_args(p)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--device", default="cpu")
    return clip_options(p.parse_args(argv))


def test_absent_without_weights(monkeypatch, tmp_path, frames):
    monkeypatch.delenv("CER_STREAM_CLIP", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    mod = build_clip_modality(parse([]))
    assert isinstance(mod, AbsentModality) and mod.name == "clip"
    out = mod(window(frames, 0))
    assert out.basic is None and out.info["reason"] == NO_WEIGHTS
    assert "--clip-weights" in NO_WEIGHTS and "models list" in NO_WEIGHTS
    assert build_clip_modality(parse(["--no-clip"])).reason.startswith("switched off")
    with pytest.raises(FileNotFoundError, match=r"ClipOptions\.weights"):  # the field a caller set
        build_clip_modality(parse(["--clip-weights", str(tmp_path / "nope")]))
    with pytest.raises(ValueError, match="go together"):
        build_clip_modality(parse(["--clip-image", str(tmp_path / "a.onnx")]))
    with pytest.raises(SystemExit):  # refused when the flags are parsed (stream.cli.flags)
        parse(["--clip-frames", "-1"])
    with pytest.raises(ValueError, match=r"ClipOptions\.frames"):
        build_clip_modality(dataclasses.replace(parse([]), frames=-1))


def test_exported_files_from_the_command_line(files, frames):
    tower, labels = files
    mod = build_clip_modality(parse(["--clip-image", str(tower), "--clip-labels", str(labels), "--clip-frames", "2"]))
    try:
        assert isinstance(mod, ClipLabelModality) and mod.frames_per_window == 2
        out = mod(window(frames, 0))
        assert out.basic is not None and out.info["frames_embedded"] == 2
    finally:
        mod.close()


def test_label_file_round_trip_and_refusals(files, tmp_path, frames):
    tower, labels = files
    data = read_labels(labels)
    assert data["basic_labels"] == BASIC and data["compound_labels"] == COMPOUND
    assert data["basic"].shape == (8, DIM) and data["logit_scale"] == 100.0 and data["source"] == SOURCE
    np.testing.assert_allclose(np.linalg.norm(data["compound"], axis=1), 1, atol=1e-6)
    with np.load(labels) as z:
        assert str(z["format"]) == FORMAT and z["basic"].dtype == np.float32
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a CLIP label file"):
        read_labels(bad)
    # labels made from other weights than the tower: refused at load, absent with the reason
    other = tiny_labels(tmp_path / "other.npz", source={"file": "x.bin", "sha256": "cd" * 32})
    mod = ClipLabelModality(tower, other, backend="onnxruntime", device="cpu")
    try:
        out = mod(window(frames, 0))
        assert out.basic is None and "different weights" in out.info["error"]
    finally:
        mod.close()
    # a label file of another width
    wide = tiny_labels(tmp_path / "wide.npz", dim=DIM + 1)
    mod = ClipLabelModality(tower, wide, backend="onnxruntime", device="cpu")
    try:
        assert "embeddings" in mod(window(frames, 0)).info["error"]
    finally:
        mod.close()


def test_registry_entry_for_the_label_file():
    spec = reg.get("clip-vit-b32-labels")
    assert spec.format == "npz" and spec.exporter == "engines.export.clip_labels:export"
    assert spec.sources == reg.get("clip-vit-b32-image").sources  # the same weights as the towers
    assert "paper" in spec.profiles


def test_stream_with_clip(files, tmp_path):
    """The real command line on the committed clip with the tiny tower: the clip modality is in
    every window record, present, fused, its compound matching recorded."""
    tower, labels = files
    proc = cer_stream(
        "--video",
        str(SAMPLE),
        "--no-audio",
        "--quiet",
        "--out",
        str(tmp_path / "o.jsonl"),
        "--clip-image",
        str(tower),
        "--clip-labels",
        str(labels),
        "--device",
        "cpu",
        check=True,
    )
    assert proc.returncode == 0
    wins = [r for r in records((tmp_path / "o.jsonl").read_text()) if r["type"] == "window"]
    assert len(wins) == 4
    for w in wins:
        clip = w["modalities"]["clip"]
        assert clip["present"] and "clip" in w["present"] and clip["weight"] > 0
        assert set(clip["compound"]) == set(COMPOUND) and abs(sum(clip["basic"].values()) - 1) < 1e-3
    assert [w["modalities"]["clip"]["frames_new"] for w in wins][:3] == [4, 2, 2]


# --------------------------------------------------------------------------- export (open_clip)
def test_label_export_with_a_tiny_open_clip(tmp_path, frames):
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from engines.export.clip_labels import BASIC_PHRASES, COMPOUND_PHRASES, TEMPLATES

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
    }
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(50.0))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")

    labels_path = reg.export("clip-vit-b32-labels", weights=folder, cache_dir=tmp_path / "cache")
    image_path = reg.export("clip-vit-b32-image", weights=folder, cache_dir=tmp_path / "cache")
    assert labels_path.suffix == ".npz" and labels_path.parent == image_path.parent
    assert reg.export("clip-vit-b32-labels", weights=folder, cache_dir=tmp_path / "cache") == labels_path  # cached
    data = read_labels(labels_path)
    assert data["basic_labels"] == BASIC and data["compound_labels"] == COMPOUND
    assert data["templates"] == TEMPLATES and data["logit_scale"] == pytest.approx(50.0, rel=1e-5)
    assert data["source"]["file"] == "open_clip_pytorch_model.bin"

    # each label: its prompts encoded by open_clip, normalised, averaged over templates, normalised
    tok = open_clip.get_tokenizer(f"local-dir:{folder}")
    for kind, phrases in (("basic", BASIC_PHRASES), ("compound", COMPOUND_PHRASES)):
        for i, phrase in enumerate(phrases.values()):
            with torch.no_grad():
                e = model.encode_text(tok([t.format(phrase) for t in TEMPLATES]), normalize=True).mean(0)
            np.testing.assert_allclose(data[kind][i], (e / e.norm()).numpy(), rtol=1e-4, atol=1e-5)

    # the modality on exported files vs. open_clip end to end (torch preprocessing of one frame)
    mod = ClipLabelModality(image_path, labels_path, frames_per_window=1, backend="onnxruntime", device="cpu")
    try:
        inp = window(frames, 0)
        out = mod(inp)
        (i,) = inp.shared[CLIP_FRAME_INDICES]
    finally:
        mod.close()
    img = next(f.image for f in inp.frames if f.index == i)
    try:
        from PIL import Image

        transform = open_clip.image_transform(224, is_train=False)
        x = transform(Image.fromarray(img))[None]
    except Exception:  # torchvision missing or broken beside this torch
        x = torch.from_numpy(preprocess([img]))
    with torch.no_grad():
        e = model.encode_image(x, normalize=True)
        t = torch.from_numpy(data["basic"])
        p = torch.softmax(model.logit_scale.exp() * e @ t.T, dim=-1)[0].numpy()
    np.testing.assert_allclose(out.basic, p, rtol=1e-3, atol=1e-4)
