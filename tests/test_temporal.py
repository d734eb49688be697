"""The dynamic face model: training (both encoders), ONNX export, the modality.

The synthetic task is temporal on purpose: class = which of four feature channels moves and
whether it rises or falls over the 20 frames.  A rising and a falling ramp have the same mean,
so a model that ignored frame order could not tell the pairs apart.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stream.cli.offline import train_temporal_main  # noqa: E402
from stream.core.labels import BASIC, FER_MINI_XCEPTION  # noqa: E402
from stream.core.messages import VideoFrame  # noqa: E402
from stream.core.windows import full_window  # noqa: E402
from stream.modalities.base import WindowInput  # noqa: E402
from stream.modalities.face import FaceResult  # noqa: E402
from stream.modalities.temporal import (  # noqa: E402
    CLIP_FEATURES,
    NO_MODEL,
    TemporalModality,
    TemporalModel,
    face_sequence,
    resample_indices,
)
from stream.offline.temporal_data import DataError, SequenceData, load_sequences  # noqa: E402
from stream.offline.temporal_train import (  # noqa: E402
    TrainOptions,
    _modules,
    build_model,
    check_onnx,
    export_onnx,
    model_metadata,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(
    hidden=32,
    layers=2,
    heads=4,
    d_state=8,
    dropout=0.1,
    epochs=25,
    patience=25,
    lr=3e-3,
    batch_size=32,
    seed=0,
    threads=1,
)


def synthetic(n_per_class: int, seed: int, *, dim: int = 7) -> SequenceData:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-1.0, 1.0, 20, dtype=np.float32)
    feats, labels, videos = [], [], []
    for c in range(len(BASIC)):
        channel, sign = c // 2, (1.0 if c % 2 == 0 else -1.0)
        for i in range(n_per_class):
            x = rng.normal(0.5, 0.2, size=(20, dim)).astype(np.float32)
            x[:, channel] += 1.5 * sign * ramp
            feats.append(x)
            labels.append(c)
            videos.append(f"s{seed}_c{c}_v{i % 4}")
    return SequenceData(np.stack(feats), np.array(labels), "face-logits", FER_MINI_XCEPTION[:dim], np.array(videos))


def window_of(seq: np.ndarray, *, found: list[bool] | None = None) -> WindowInput:
    """A window whose frames' face outputs are the rows of ``seq``."""
    img = np.zeros((8, 8, 3), np.uint8)
    frames = [VideoFrame(i, 5 * i, i / 5, 0, img) for i in range(len(seq))]
    found = found or [True] * len(seq)
    faces = [
        FaceResult(f.index, f.pts, ok, (0, 0, 4, 4) if ok else None, raw=row if ok else None)
        for f, ok, row in zip(frames, found, seq)
    ]
    return WindowInput(full_window(0), 25.0, frames, faces, None)


@pytest.fixture(scope="module")
def train_set() -> SequenceData:
    return synthetic(12, seed=0)


@pytest.fixture(scope="module")
def test_set() -> SequenceData:
    return synthetic(6, seed=1)


@pytest.fixture(scope="module", params=["transformer", "mamba"])
def trained(request, train_set, tmp_path_factory):
    arch = request.param
    t0 = time.perf_counter()
    result = train(train_set, TrainOptions(arch=arch, **SMALL))
    seconds = time.perf_counter() - t0
    path = tmp_path_factory.mktemp(arch) / f"{arch}.onnx"
    export_onnx(result.model, path, seq_len=20, dim=7, metadata=model_metadata(result, train_set, source="synthetic"))
    return arch, result, path, seconds


def test_both_architectures_learn_the_temporal_task(trained, test_set):
    arch, result, _, seconds = trained
    assert seconds < 20
    assert result.val_accuracy == 1.0 and result.train_accuracy == 1.0
    result.model.eval()
    with torch.no_grad():
        pred = result.model(torch.from_numpy(test_set.features))[0].argmax(-1).numpy()
    assert (pred == test_set.labels).mean() >= 0.95, f"{arch}: held-out accuracy {(pred == test_set.labels).mean()}"


def test_onnx_export_matches_torch(trained, test_set):
    arch, result, path, _ = trained
    assert check_onnx(result.model, path, test_set.features) < 1e-4
    model = TemporalModel(path)
    try:
        assert (model.seq_len, model.dim, model.feature_kind, model.arch) == (20, 7, "face-logits", arch)
        assert model.feature_labels == FER_MINI_XCEPTION
        meta = model.engine.metadata
        assert json.loads(meta["cer.labels"]) == list(BASIC)
        assert json.loads(meta["cer.input_shape"]) == ["batch", 20, 7]
        training = json.loads(meta["cer.training"])
        assert training["data"] == "synthetic" and len(training["data_sha256"]) == 64
        # batches of any size (the batch axis is dynamic)
        probs = model.engine.infer(test_set.features[:5])[0]
        assert probs.shape == (5, 8) and np.allclose(probs.sum(1), 1, atol=1e-5)
    finally:
        model.close()


def test_modality_on_a_window(trained, test_set):
    arch, result, path, _ = trained
    mod = TemporalModality(path)
    try:
        for i in (0, 7, 20, 41):
            seq = test_set.features[i]
            t0 = time.perf_counter()
            out = mod(window_of(seq))
            assert time.perf_counter() - t0 < 0.5
            assert out.basic is not None and out.basic.shape == (8,)
            with torch.no_grad():
                logits, emb = result.model(torch.from_numpy(seq[None]))
            np.testing.assert_allclose(out.basic, torch.softmax(logits, -1)[0].numpy(), atol=1e-4)
            np.testing.assert_allclose(out.feature, emb[0].numpy(), atol=1e-3)
            assert int(np.argmax(out.basic)) == test_set.labels[i]
            assert out.info["frames_with_face"] == 20 and out.info["arch"] == arch

        # frames without a face borrow the nearest face; too few faces: absent
        found = [True, False] * 10
        out = mod(window_of(test_set.features[0], found=found))
        assert out.basic is not None and out.info["frames_with_face"] == 10
        out = mod(window_of(test_set.features[0], found=[i < 3 for i in range(20)]))
        assert out.basic is None and out.info["reason"] == "face in too few frames"
        out = mod(window_of(test_set.features[0], found=[False] * 20))
        assert out.basic is None and out.info["reason"] == "no face in the window"
        # a shortened last window (12 frames) is resampled to the model's 20
        out = mod(window_of(test_set.features[0][::2][:12]))
        assert out.basic is not None
    finally:
        mod.close()


def test_face_model_order_is_checked(trained):
    _, _, path, _ = trained
    with pytest.raises(ValueError, match="order"):
        TemporalModality(path, face_labels=tuple(reversed(FER_MINI_XCEPTION)))


def test_absent_without_a_model(sample_frames):
    mod = TemporalModality()
    faces = [FaceResult(f.index, f.pts, True, raw=np.full(7, 1 / 7, np.float32)) for f in sample_frames]
    out = mod(WindowInput(full_window(0), 25.0, sample_frames, faces, None))
    assert out.basic is None and out.info["reason"] == NO_MODEL
    mod.close()


@pytest.fixture(scope="module")
def sample_frames() -> list[VideoFrame]:
    import av

    out = []
    with av.open(str(ROOT / "samples" / "astronaut.mp4")) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i % 5 == 0:
                out.append(VideoFrame(len(out), i, i / 25, 0, frame.to_ndarray(format="rgb24")))
            if len(out) == 20:
                break
    return out


def test_selective_scan_matches_the_closed_form():
    """The sequential scan equals h_t = sum_{s<=t} exp(sum_{r=s+1..t} dt_r A) dt_s B_s u_s,
    computed here independently; outputs are causal; the step size depends on the input."""
    torch.manual_seed(0)
    ssm = _modules()["SelectiveSSM"](8, d_state=4, expand=2, d_conv=3).eval()
    x = torch.randn(2, 12, 8)
    F = torch.nn.functional
    with torch.no_grad():
        y = ssm(x)
        length = x.shape[1]
        u, z = ssm.in_proj(x).chunk(2, -1)
        u = F.silu(ssm.conv(u.transpose(1, 2))[..., :length].transpose(1, 2))
        dt, b, c = torch.split(ssm.x_proj(u), [ssm.dt_rank, ssm.d_state, ssm.d_state], -1)
        dt = F.softplus(ssm.dt_proj(dt))
        a = -torch.exp(ssm.A_log)
        cum = torch.cumsum(dt.unsqueeze(-1) * a, dim=1)  # [B, L, d, N]
        ref = torch.zeros(2, length, u.shape[-1])
        for t in range(length):
            h = sum(
                torch.exp(cum[:, t] - cum[:, s]) * (dt[:, s] * u[:, s]).unsqueeze(-1) * b[:, s].unsqueeze(1)
                for s in range(t + 1)
            )
            ref[:, t] = (h * c[:, t].unsqueeze(1)).sum(-1)
        expected = ssm.out_proj((ref + u * ssm.D) * F.silu(z))
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)

        x2 = x.clone()
        x2[:, 7:] = torch.randn(2, 5, 8)  # change the future only
        torch.testing.assert_close(ssm(x2)[:, :7], y[:, :7])
        assert not torch.allclose(ssm(x2)[:, 7:], y[:, 7:])
        dt2 = F.softplus(ssm.dt_proj(torch.split(ssm.x_proj(u * 2), [ssm.dt_rank, 8], -1)[0]))
        assert not torch.allclose(dt, dt2)  # selection: Δ is a function of the input


def test_full_size_models_export(tmp_path):
    """The seeds' size (hidden 512, 4 layers) exports and runs through ONNX Runtime."""
    for arch in ("transformer", "mamba"):
        model = build_model(TrainOptions(arch=arch), 7, 20).eval()
        data = synthetic(1, seed=3)
        fake = type("R", (), {"options": TrainOptions(arch=arch), "summary": lambda self: {}})()
        path = export_onnx(model, tmp_path / f"{arch}.onnx", seq_len=20, dim=7, metadata=model_metadata(fake, data))
        assert check_onnx(model, path, data.features[:4]) < 1e-4


def test_train_temporal_command(tmp_path, capsys):
    data = synthetic(4, seed=2)
    half = len(data) // 2
    d = tmp_path / "data"
    SequenceData(data.features[:half], data.labels[:half], "face-logits", data.feature_labels, data.videos[:half]).save(
        d / "a.npz"
    )
    SequenceData(data.features[half:], data.labels[half:], "face-logits", data.feature_labels, data.videos[half:]).save(
        d / "b.npz"
    )
    loaded = load_sequences(d)
    assert len(loaded) == len(data) and loaded.videos is not None
    out = tmp_path / "m.onnx"
    rc = train_temporal_main(
        [
            "--data",
            str(d),
            "--arch",
            "mamba",
            "--out",
            str(out),
            "--hidden",
            "16",
            "--layers",
            "1",
            "--d-state",
            "4",
            "--epochs",
            "3",
            "--threads",
            "1",
        ]
    )
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    summary = json.loads(cap.out)
    assert summary["arch"] == "mamba" and summary["onnx_max_abs_diff"] < 1e-4 and out.is_file()
    assert "epoch   1/3" in cap.err  # progress on stderr
    mod = TemporalModality(out)
    assert mod.model.arch == "mamba"
    mod.close()

    # errors are one line, exit status 2
    assert train_temporal_main(["--data", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.zeros((3, 20, 7), np.float32), labels=np.array([0, 9, 1]))
    assert train_temporal_main(["--data", str(bad), "--out", str(out)]) == 2
    assert "BASIC class indices" in capsys.readouterr().err
    with pytest.raises(DataError):
        SequenceData(np.zeros((2, 20, 7)), np.array([0]))


def test_data_files_take_label_names(tmp_path):
    np.savez(
        tmp_path / "n.npz",
        features=np.random.rand(3, 20, 7).astype(np.float32),
        labels=np.array(["happy", "Sadness", "neutral"]),
    )
    d = load_sequences(tmp_path / "n.npz")
    assert d.labels.tolist() == [BASIC.index("Happiness"), BASIC.index("Sadness"), 0]
    assert d.feature_kind == "face-logits"


def test_sequences_borrow_and_resample():
    raw = np.eye(7, dtype=np.float32)
    faces = [FaceResult(i, i / 5, i in (1, 4), raw=raw[i] if i in (1, 4) else None) for i in range(6)]
    seq, n = face_sequence(faces, length=6, min_fraction=0.3)
    assert n == 2
    assert [int(np.argmax(r)) for r in seq] == [1, 1, 1, 4, 4, 4]  # ties go to the earlier face
    assert face_sequence(faces, length=6, min_fraction=0.5)[0] is None
    assert resample_indices(10, 20).tolist()[:4] == [0, 0, 1, 1] and resample_indices(30, 20)[-1] == 29


def test_clip_kind_reads_shared_features(tmp_path):
    data = synthetic(2, seed=4, dim=6)
    data = SequenceData(data.features, data.labels, "clip", (), data.videos)
    opts = TrainOptions(arch="transformer", hidden=16, heads=2, layers=1)
    model = build_model(opts, 6, 20).eval()
    fake = type("R", (), {"options": opts, "summary": lambda self: {}})()
    path = export_onnx(model, tmp_path / "clip.onnx", seq_len=20, dim=6, metadata=model_metadata(fake, data))
    mod = TemporalModality(path)
    try:
        inp = window_of(np.zeros((20, 7), np.float32))
        assert mod(inp).info["reason"] == "no CLIP image features in this window"
        inp.shared[CLIP_FEATURES] = data.features[0]
        assert mod(inp).basic is not None
    finally:
        mod.close()


def test_temporal_features_from_a_video(tmp_path, sample, capsys):
    """`cer-stream temporal-features` on the committed clip: the same face path and windows
    as the stream, window labels from a CSV (names or indices; unlabelled windows skipped)."""
    from stream.cli.offline import temporal_features_main

    labels = tmp_path / "labels.csv"
    labels.write_text("video,index,label\nastronaut,0,Happiness\nastronaut,1,0\nastronaut,2,happy\n")
    out = tmp_path / "faces.npz"
    assert temporal_features_main([str(sample), "--labels", str(labels), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["windows"] == 3 and summary["skipped_no_label"] == 1  # 10 s: windows 0..3
    d = load_sequences(out)
    # the default face model (lite: the face-api.js + mini-Xception ensemble) gives 8 basic probabilities
    assert d.features.shape == (3, 20, 8) and tuple(d.feature_labels) == BASIC
    assert d.labels.tolist() == [BASIC.index("Happiness"), 0, BASIC.index("Happiness")]
    assert d.videos.tolist() == ["astronaut"] * 3 and d.windows.tolist() == [0, 1, 2]
    np.testing.assert_allclose(d.features.sum(-1), 1.0, atol=1e-4)  # per-frame probabilities
    assert temporal_features_main([str(tmp_path / "missing.mp4"), "--labels", str(labels), "--out", str(out)]) == 2
