"""Exporters: tiny models of the real architectures, random weights, no download.

Each test builds a small model of the same kind as the published one (a TorchScript
ResNet for EmoAffectNet, an open_clip CLIP from a config dict, an ultralytics YOLO11 from
its yaml), exports it through the registry and checks the ONNX output against torch, the
metadata and the cache. torch / open_clip / ultralytics are skipped where not installed
(the ``export`` extra); the YOLO test is also ``slow`` (ultralytics takes ~20 s to import
and export).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import numpy as np
import pytest

from engines.export.common import ExportError, parsed_metadata
from engines.models import registry as reg
from engines.runtimes.onnxruntime import OrtEngine

# torch 2.10+ marks TorchScript deprecated; the EmoAffectNet release is TorchScript all the same.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")


def _ort(path):
    engine = OrtEngine(path, device="cpu")
    engine.load()
    return engine


# --------------------------------------------------------------------------- EmoAffectNet
TINY_RESNET = '''
import torch
from torch import nn


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.down(x))


class TinyEmoResNet(nn.Module):
    """The EmoAffectNet layout at toy width: stem, bottlenecks, pool, fc 512-ish, fc classes."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = Bottleneck(8, 4, 16, 1)
        self.layer2 = Bottleneck(16, 8, 32, 2)
        self.fc1 = nn.Linear(32, 24)
        self.fc2 = nn.Linear(24, classes)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc2(torch.relu(self.fc1(x)))
'''


@pytest.fixture(scope="module")
def tiny_emoaffectnet(tmp_path_factory):
    """A scripted ResNet-style classifier saved with torch.jit.save, like the real release."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("emo")
    source = folder / "tiny_resnet.py"
    source.write_text(TINY_RESNET)  # TorchScript needs the class source in a real file
    spec = importlib.util.spec_from_file_location("tiny_resnet", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def make(classes=7, seed=0):
        torch.manual_seed(seed)
        net = module.TinyEmoResNet(classes).eval()
        with torch.no_grad():  # non-trivial batch-norm statistics
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        scripted = torch.jit.script(net)
        path = folder / f"FER_static_tiny_{classes}.pt"
        torch.jit.save(scripted, str(path))
        return path, scripted

    return make


def test_emoaffectnet_export_matches_torch_with_preprocessing(tiny_emoaffectnet, tmp_path):
    torch = pytest.importorskip("torch")
    weights, scripted = tiny_emoaffectnet()
    spec = reg.get("emoaffectnet-resnet50")
    out = reg.export(spec, weights=weights, cache_dir=tmp_path)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 3, 224, 224)).astype(np.float32)
    # the authors' preprocessing, done in torch: RGB -> BGR, subtract the BGR means
    bgr = torch.from_numpy(rgb).flip(1) - torch.tensor(reg.EMOAFFECTNET_MEAN_BGR).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = scripted(bgr).numpy()
    probs_ref = torch.softmax(torch.from_numpy(logits), 1).numpy()
    engine = _ort(out)
    try:
        assert engine.input_names == ["input"] and engine.output_names == ["probs", "logits"]
        probs, got_logits = engine.infer(rgb)
        np.testing.assert_allclose(got_logits, logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(probs, probs_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        assert engine.infer(rgb[:1])[0].shape == (1, 7)
        reg.check_metadata(engine, spec)
        meta = parsed_metadata(out)
        assert meta["cer.labels"] == ["Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger"]
        assert meta["cer.preprocess"]["in_graph"]["subtract_mean_bgr"] == [91.4953, 103.8827, 131.0912]
        assert meta["cer.source"]["format"] == "torchscript" and meta["cer.source"]["sha256"] == reg.sha256_file(
            weights
        )
    finally:
        engine.close()
    stamp = out.stat().st_mtime_ns
    assert reg.export(spec, weights=weights, cache_dir=tmp_path) == out and out.stat().st_mtime_ns == stamp


def test_emoaffectnet_preprocess_is_pil_nearest():
    pytest.importorskip("PIL")
    from PIL import Image

    from engines.export.emoaffectnet import preprocess

    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in [(95, 95), (130, 101), (300, 257)]]
    batch = preprocess(crops)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32
    for crop, got in zip(crops, batch):
        want = np.asarray(Image.fromarray(crop).resize((224, 224), Image.NEAREST)).transpose(2, 0, 1)
        np.testing.assert_array_equal(got, want.astype(np.float32))


def test_emoaffectnet_rejects_wrong_files(tiny_emoaffectnet, tmp_path):
    spec = reg.get("emoaffectnet-resnet50")
    five, _ = tiny_emoaffectnet(classes=5, seed=1)
    with pytest.raises(ExportError, match="has 5 values, the registry lists 7 labels"):
        reg.export(spec, weights=five, cache_dir=tmp_path)
    junk = tmp_path / "state_dict.pt"
    junk.write_bytes(b"not a torchscript archive")
    with pytest.raises(ExportError, match="not a TorchScript file"):
        reg.export(spec, weights=junk, cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.onnx"))  # nothing half-made is cached


# --------------------------------------------------------------------------- open_clip
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """An open_clip model folder (config + weights), the layout of a hub snapshot."""
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder, model


def test_clip_towers_match_open_clip(tiny_clip_dir, tmp_path):
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    folder, model = tiny_clip_dir
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 3, 224, 224)).astype(np.float32))
    tokens = open_clip.tokenize(["a photo of a happy face", "a fearfully surprised person", "sad"])
    with torch.no_grad():
        image_ref = model.encode_image(images).numpy()
        text_ref = model.encode_text(tokens).numpy()
    image_spec, text_spec = reg.get("clip-vit-b32-image"), reg.get("clip-vit-b32-text")
    image_onnx = reg.export(image_spec, weights=folder, cache_dir=tmp_path)
    text_onnx = reg.export(text_spec, weights=folder, cache_dir=tmp_path)
    assert image_onnx != text_onnx
    with _ort(image_onnx) as image_engine, _ort(text_onnx) as text_engine:
        features, embeds = image_engine.infer(images.numpy())
        np.testing.assert_allclose(features, image_ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(embeds, axis=1), 1.0, atol=1e-5)
        t_features, t_embeds = text_engine.infer(tokens.numpy())
        np.testing.assert_allclose(t_features, text_ref, rtol=1e-4, atol=1e-4)
        reg.check_metadata(image_engine, image_spec)
        reg.check_metadata(text_engine, text_spec)
        scale = float(text_engine.metadata["cer.logit_scale"])
        assert scale == pytest.approx(float(model.logit_scale.exp()), rel=1e-6)
        assert int(text_engine.metadata["cer.context_length"]) == 77
        # label matching as the pipeline does it: scaled cosine similarity, softmax
        logits = scale * embeds @ t_embeds.T
        with torch.no_grad():
            ref = (
                model.logit_scale.exp()
                * torch.nn.functional.normalize(torch.from_numpy(image_ref), dim=-1)
                @ torch.nn.functional.normalize(torch.from_numpy(text_ref), dim=-1).T
            )
        np.testing.assert_allclose(logits, ref.numpy(), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- YOLO11n-face
@pytest.mark.slow
def test_yolo_face_export_through_ultralytics(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("ultralytics")
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    from ultralytics.nn.tasks import DetectionModel

    from engines.export import yolo_face

    torch.manual_seed(0)
    net = DetectionModel("yolo11n.yaml", nc=1, verbose=False)  # the YOLO11n architecture, 1 class
    net.names = {0: "face"}
    net.args = {"imgsz": 160, "task": "detect"}
    weights = tmp_path / "yolov11n-face.pt"
    torch.save({"model": net, "train_args": {"imgsz": 160, "task": "detect"}}, weights)

    spec = replace(reg.get("yolo11n-face"), input_shape=("N", 3, 160, 160))
    target = tmp_path / "yolo.onnx"
    yolo_face.export(weights, target, spec, imgsz=160)
    x = np.random.default_rng(0).random((2, 3, 160, 160), dtype=np.float32)
    with torch.no_grad():
        ref = net.fuse().eval()(torch.from_numpy(x))
        ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).numpy()
    with _ort(target) as engine:
        assert engine.inputs[0].shape == (None, 3, 160, 160)  # only the batch axis is free
        (out,) = engine.infer(x)
        assert out.shape == ref.shape == (2, 5, 525)  # (cx, cy, w, h, face) x anchors at 160 px
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3)
        reg.check_metadata(engine, spec)
        assert engine.metadata["names"]  # ultralytics' own metadata kept
        assert json.loads(engine.metadata["cer.labels"]) == ["face"]
