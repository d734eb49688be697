"""The ONNX port of Whisper base's encoder (engines.models.whisper_encoder) against CTranslate2 itself.

The whole encoder (``blocks=6, final_ln=True``) must give what ``ctranslate2.models.Whisper.encode``
gives (float32) for the log-mel of real speech (espeak-ng) that is NOT padded to 30 s; the voice
head's variant (blocks 1..3, outputs after blocks 2 and 3) is the same graph cut short.
"""

from __future__ import annotations

import numpy as np
import pytest
from audio_fixtures import espeak

from engines.models import whisper_encoder as we
from engines.models.whisper_base import WhisperBaseMissing


def joined_whisper_base():
    """The joined Whisper base folder, or a skip with its one-line reason."""
    from engines.models.whisper_base import model_dir

    try:
        return model_dir()
    except WhisperBaseMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def whisper_dir():
    return joined_whisper_base()


@pytest.fixture(scope="module")
def mel(tmp_path_factory):
    from faster_whisper.feature_extractor import FeatureExtractor

    audio = espeak("The quick brown fox jumps over the lazy dog, twice.", tmp_path_factory.mktemp("enc") / "s.wav")
    return FeatureExtractor(feature_size=80)(audio)[:, :-1]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_whole_encoder_matches_ctranslate2(whisper_dir, mel):
    import ctranslate2

    encoder = we.WhisperEncoder(whisper_dir, blocks=6, outputs=(6,), final_ln=True, backend="onnxruntime").load()
    try:
        (ours,) = encoder(mel)
    finally:
        encoder.close()
    model = ctranslate2.models.Whisper(str(whisper_dir), device="cpu", compute_type="float32")
    ref = np.asarray(model.encode(ctranslate2.StorageView.from_array(mel[None].astype(np.float32)), to_cpu=True))[0]
    assert ours.shape == ref.shape == ((mel.shape[1] + 1) // 2, 512)
    assert _cosine(ours.ravel(), ref.ravel()) > 0.999
    assert _cosine(ours, ref).min() > 0.999  # every frame, not only on average


def test_voice_variant_is_the_same_graph_cut_short(whisper_dir, mel):
    full = we.WhisperEncoder(whisper_dir, blocks=6, outputs=(2, 3, 6), backend="onnxruntime").load()
    short = we.WhisperEncoder(whisper_dir, backend="onnxruntime").load()  # blocks 1..3, outputs 2 and 3
    try:
        b2, b3, _ = full(mel)
        s2, s3 = short(mel)
    finally:
        full.close()
        short.close()
    np.testing.assert_allclose(s2, b2, atol=1e-4)
    np.testing.assert_allclose(s3, b3, atol=1e-4)
    assert short.model_sha256 is not None and len(short.model_sha256) == 64
    # the cached file is keyed by the model.bin sha256 and the layout
    path = we.ensure_onnx(whisper_dir)
    assert short.model_sha256[:16] in path.name and "b3-o23" in path.name


def test_reader_and_builder_refuse_what_they_do_not_know(tmp_path, whisper_dir):
    bad = tmp_path / "model.bin"
    bad.write_bytes((5).to_bytes(4, "little") + b"\0" * 16)
    with pytest.raises(ValueError, match="binary version 5"):
        we.read_ct2(bad)
    with pytest.raises(ValueError, match="blocks must be 1..6"):
        we.build_onnx(whisper_dir / "model.bin", blocks=7)
    encoder = we.WhisperEncoder(whisper_dir, backend="onnxruntime")
    with pytest.raises(ValueError, match="mel must be"):
        encoder(np.zeros((40, 100), np.float32))
    encoder.close()
