"""Speech batched across streams (issue 22): :meth:`SpeechRecognizer.words_batch` gives each item
the words :meth:`SpeechRecognizer.words` gives it alone (one encoder pass for the batch, a bad
item fails alone), and :meth:`VoiceFeatures.batch` the features :meth:`VoiceFeatures.__call__`
gives. Real models (Whisper base, the voice head's encoder), espeak-ng speech; skips without them.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_multilingual
from audio_fixtures import espeak
from test_multilingual import SPOKEN, speak
from test_whisper_encoder import joined_whisper_base

from stream.modalities.speech.voice import FEATURE_DIM, VoiceEmotion, VoiceFeatures, VoiceHead

#: the recogniser: Whisper base on the CPU, loaded once per module (test_multilingual's fixture)
asr = test_multilingual.asr

ENGLISH = [
    "Hello there, what a wonderful day to be in space.",
    "This is the worst thing that has ever happened to me, and I am really angry about it.",
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two English sentences of different lengths and one German one (the model translates it)."""
    tmp = tmp_path_factory.mktemp("batch")
    audio = [espeak(text, tmp / f"en{i}.wav") for i, text in enumerate(ENGLISH)]
    return audio + [speak(SPOKEN["de"][0], tmp / "de.wav", "de")]


def _plain(words):
    return [
        (w.text, w.translation, round(w.start, 2), round(w.end, 2), w.evidence.language, w.evidence.task) for w in words
    ]


def test_words_batch_equals_single_calls(asr, clips):
    single = [asr.words(a) for a in clips]
    encodes, batches, calls = asr.encodes, asr.encode_batches, asr.calls
    batch = asr.words_batch(clips)
    assert asr.encode_batches - batches == 1 and asr.encodes - encodes == len(clips)  # one pass, three items
    assert asr.calls - calls == len(clips)
    for one, many in zip(single, batch):
        assert not isinstance(many, Exception), many
        assert _plain(many) == _plain(one)
        # evidence equal to float noise (the batched encoder output may differ in the last bits)
        for a, b in zip(one, many):
            assert abs(a.probability - b.probability) < 0.02
            assert a.evidence.language_probability == pytest.approx(b.evidence.language_probability, abs=0.02)
    # the batch held what it should: English transcribed, German translated with its English words
    assert {w.evidence.task for w in batch[0]} == {"transcribe"}  # type: ignore[union-attr]
    german = batch[2]
    assert not isinstance(german, Exception)
    assert german[0].evidence.language == "de" and any(w.translation for w in german)
    assert "friend" in "".join(w.text for w in german if w.translation).lower()


def test_a_bad_item_fails_alone(asr, clips):
    out = asr.words_batch([clips[0], np.zeros(0, np.float32), clips[1]])
    assert isinstance(out[1], ValueError) and "non-empty" in str(out[1])
    assert not isinstance(out[0], Exception) and not isinstance(out[2], Exception)
    assert _plain(out[0]) == _plain(asr.words(clips[0]))
    with pytest.raises(ValueError, match="non-empty"):
        asr.words(np.zeros(0, np.float32))
    assert asr.words_batch([]) == []


@pytest.fixture(scope="module")
def voice_features():
    features = VoiceFeatures(joined_whisper_base(), backend="onnxruntime").load()
    yield features
    features.close()


def test_voice_features_batch_equals_single(voice_features, clips):
    short = np.zeros(1600, np.float32)  # 0.1 s: no feature, alone or batched
    items = [clips[0], short, clips[1], clips[2][: len(clips[2]) // 2 + 161]]  # odd lengths too
    single = [voice_features(a) for a in items]
    batch = voice_features.batch(items)
    assert len(batch) == len(items)
    for (x1, info1), (xb, infob) in zip(single, batch):
        assert info1 == infob
        if x1 is None:
            assert xb is None
            continue
        assert xb is not None and xb.shape == (FEATURE_DIM,)
        np.testing.assert_allclose(xb, x1, atol=1e-4, rtol=1e-4)
    assert batch[1][0] is None and all(batch[i][0] is not None for i in (0, 2, 3))


def test_voice_emotion_takes_a_feature_computed_elsewhere(voice_features, clips):
    try:
        head = VoiceHead.load()
    except Exception as exc:
        pytest.skip(f"no voice head: {exc}")
    local = VoiceEmotion(head, whisper_dir=joined_whisper_base(), backend="onnxruntime")
    remote = VoiceEmotion(head).load_head(voice_features.model_sha256)  # never loads its own encoder
    assert remote.features.encoder.engine is None
    for (x, info), audio in zip(voice_features.batch(clips), clips):
        p_local, x_local, _ = local.predict(audio)
        p_remote, x_remote, info_remote = remote.predict_from_feature(x, dict(info))
        assert p_local is not None and p_remote is not None and x_local is not None
        np.testing.assert_allclose(p_remote, p_local, atol=1e-4)
        assert info_remote["voice_windows"] == local.mean.n  # type: ignore[union-attr]
    assert remote.predict_from_feature(None, {"speech_s": 0.0})[0] is None
    assert remote.features.encoder.engine is None
    local.close()
