"""The speech-text ("text") modality on the sample clip, silence and a failing recogniser, with
the default recogniser (Whisper base multilingual: the clip's English is transcribed, not
translated). The audio (speech-emotion) modality's own results are tests/test_audio_modality.py's."""

from __future__ import annotations

import numpy as np
import pytest
from audio_fixtures import RATE, decode_16k, window_input, windows_of
from conftest import CollectSink

from stream.core.labels import BASIC
from stream.core.windows import Window
from stream.modalities.audio import AudioOptions, build_audio_modalities
from stream.modalities.speech.asr import SpeechRecognizer
from stream.modalities.speech.vad import SpeechGate
from stream.modalities.text import SpeechTextModality


@pytest.fixture(scope="module")
def clip(sample):
    return decode_16k(sample)


@pytest.fixture(scope="module")
def modalities():
    mods = build_audio_modalities(AudioOptions(device="cpu"))
    yield mods
    for m in mods:
        m.close()


def test_sample_clip_windows_get_transcripts_and_text_probabilities(clip, modalities):
    audio_mod, text_mod = modalities
    window, audio = next(windows_of(clip))
    inp = window_input(window, audio)
    out_audio = audio_mod(inp)
    out_text = text_mod(inp)
    assert out_audio.info["speech"] is True  # the shared speech gate's decision
    assert out_text.basic is not None, out_text.info
    assert out_text.info["asr_language"] == "en" and out_text.info["asr_task"] == "transcribe"
    assert "translation" not in out_text.info
    transcript = out_text.info["transcript"].lower()
    assert "wonderful" in transcript and "space" in transcript  # "What a wonderful day to be in space."
    assert inp.shared["transcript"].text == out_text.info["transcript"]
    assert out_text.basic.shape == (8,) and out_text.basic[BASIC.index("Other")] == 0.0
    np.testing.assert_allclose(out_text.basic.sum(), 1.0, atol=1e-5)
    assert out_text.feature.shape == (384,)  # the MiniLM embedding, for PFSA


def test_silence_runs_no_speech_to_text(modalities):
    audio_mod, text_mod = modalities
    inp = window_input(Window(0, 0.0, 4.0), np.zeros(4 * RATE, np.float32))
    audio_mod(inp)
    out = text_mod(inp)
    assert out.basic is None and out.info["reason"] == "no speech"
    assert "transcript" not in inp.shared  # Whisper was not called
    out = text_mod(window_input(Window(0, 0.0, 4.0), None))
    assert out.basic is None and out.info["reason"] == "no audio"


def test_unusable_recogniser_is_absent_with_reason(clip, tmp_path):
    text_mod = SpeechTextModality(gate=SpeechGate(), asr=SpeechRecognizer(tmp_path, device="cpu"), device="cpu")
    out = text_mod(window_input(Window(0, 0.0, 4.0), clip[: 4 * RATE]))
    assert out.basic is None and out.info["reason"] == "text modality unavailable"
    assert "not a CTranslate2 Whisper model" in out.info["error"]


def _run(path, modalities):
    from stream.modalities.base import FaceModality
    from stream.runtime.analyzer import Analyzer, Source

    sink = CollectSink()
    Analyzer(Source("video", str(path)), [sink], modalities=[FaceModality(), *modalities]).run()
    return [r for r in sink.records if r["type"] == "window"]


def test_pipeline_with_speech_modalities(sample, modalities):
    """The analyzer with face + audio + text on the sample clip: transcripts in every window,
    English on record, text probabilities in fusion."""
    wins = _run(sample, modalities)
    assert len(wins) == 4
    for w in wins:
        mods = w["modalities"]
        assert mods["audio"]["speech"] is True
        assert mods["text"]["present"] is True and mods["text"]["transcript"]
        assert mods["text"]["asr_language"] == "en" and mods["text"]["asr_task"] == "transcribe"
        assert "face" in w["present"] and "text" in w["present"]
    words = " ".join(w["modalities"]["text"]["transcript"].lower() for w in wins)
    assert "amazing" in words and "planet" in words
    # a file: each window also gets the audio after it, so one Whisper call serves several windows
    calls = [w["modalities"]["text"]["asr_calls"] for w in wins]
    assert calls[0] == 1 and sum(calls) < len(wins), calls
    for w in wins:
        text = w["modalities"]["text"]
        assert 0.5 < text["confidence"] <= 1.0 and text["asr_avg_logprob"] > -1.0  # for fusion to scale by


def test_lagged_text_modality_transcribes_each_window_once(clip):
    """Live sources run the text modality beside the stream (LaggedModality): no audio ahead,
    one Whisper call per speech window, each on the new audio and the uncommitted tail."""
    from stream.modalities.base import LaggedModality

    mods = build_audio_modalities(AudioOptions(device="cpu"), share_gate=False)
    lagged = LaggedModality(mods[1], budget_s=30.0)
    try:
        lagged.load()
        outs = [lagged(window_input(w, a)) for w, a in windows_of(clip)]
    finally:
        lagged.close()
        mods[0].close()
    assert all(o.basic is not None and o.info["lag_windows"] == 0 for o in outs), [o.info for o in outs]
    assert [o.info["asr_calls"] for o in outs] == [1] * len(outs)
    words = " ".join(o.info["transcript"].lower() for o in outs)
    assert "space" in words and "planet" in words


def test_pipeline_without_an_audio_track(video_only, modalities):
    wins = _run(video_only, modalities)
    assert wins and all(w["present"] == ["face"] for w in wins)
    assert all(w["modalities"]["audio"] == {"present": False, "reason": "no audio"} for w in wins)
    assert all(w["modalities"]["text"] == {"present": False, "reason": "no audio"} for w in wins)
