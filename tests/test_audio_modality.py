"""The speech-emotion ("audio") modality end to end with a tiny ONNX model built here.

The model keeps the real contract (waveform [1, T] at 16 kHz -> class scores, label order in
the ``cer.labels`` metadata): two waveform statistics (mean |x|, max |x|) through a linear
layer, with random weights, and the statistics as a second output (the feature).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx
import pytest
from audio_fixtures import RATE, decode_16k, window_input, windows_of
from onnx import TensorProto, helper, numpy_helper

from stream.cli.flags import add_audio_args, audio_options
from stream.core.labels import BASIC
from stream.core.windows import Window
from stream.modalities.audio import (
    NO_MODEL,
    AudioOptions,
    SpeechEmotionModality,
    SpeechEmotionModel,
    build_audio_modalities,
)
from stream.modalities.speech.vad import SpeechGate

# Lower-case names in an order unlike BASIC's, without Other: the mapping must go by name.
LABELS = ["happy", "sad", "angry", "neutral", "surprise", "fear", "disgust"]
BY_NAME = {
    "happy": "Happiness",
    "sad": "Sadness",
    "angry": "Anger",
    "neutral": "Neutral",
    "surprise": "Surprise",
    "fear": "Fear",
    "disgust": "Disgust",
}


def tiny_model(path, *, output="logits", length=None, labels=LABELS, metadata=True, seed=0, normalize=False):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 3, (2, len(labels))).astype(np.float32)
    b = rng.normal(0, 1, len(labels)).astype(np.float32)
    nodes = [
        helper.make_node("Abs", ["waveform"], ["abs"]),
        helper.make_node("ReduceMean", ["abs"], ["mean_abs"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["abs"], ["max_abs"], axes=[1], keepdims=1),
        helper.make_node("Concat", ["mean_abs", "max_abs"], ["feature"], axis=1),
        helper.make_node("MatMul", ["feature", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["logits" if output == "logits" else "z"]),
    ]
    if output == "probs":
        nodes.append(helper.make_node("Softmax", ["z"], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes,
        "tiny-ser",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, [1, length or "T"])],
        [
            helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, len(labels)]),
            helper.make_tensor_value_info("feature", TensorProto.FLOAT, [1, 2]),
        ],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        props = {"cer.labels": json.dumps(labels), "cer.output": output, "cer.sample_rate": "16000"}
        if normalize:
            props["cer.normalize"] = "true"
        helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w, b


def expected_basic(audio, w, b, length=None, normalize=False):
    x = np.asarray(audio, np.float64)
    if length is not None:
        x = x[:length] if x.shape[0] >= length else np.pad(x, (0, length - x.shape[0]))
    if normalize:
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    feature = np.array([np.abs(x).mean(), np.abs(x).max()])
    z = feature @ w + b
    p = np.exp(z - z.max())
    p /= p.sum()
    out = np.zeros(len(BASIC))
    for name, v in zip(LABELS, p):
        out[BASIC.index(BY_NAME[name])] = v
    return out, feature


@pytest.fixture(scope="module")
def clip(sample):
    return decode_16k(sample)


def test_tiny_model_end_to_end(tmp_path, clip):
    path = tmp_path / "ser.onnx"
    w, b = tiny_model(path)
    modality = SpeechEmotionModality(path, gate=SpeechGate(), device="cpu")
    n = 0
    for win, audio in windows_of(clip):
        out = modality(window_input(win, audio))
        assert out.basic is not None, out.info
        want, feature = expected_basic(audio, w, b)
        np.testing.assert_allclose(out.basic, want, atol=1e-5)
        np.testing.assert_allclose(out.feature, feature, rtol=1e-5)
        assert out.basic[BASIC.index("Other")] == 0.0 and out.basic.sum() == pytest.approx(1.0, abs=1e-5)
        assert out.info["speech"] is True and out.info["speech_fraction"] > 0.1
        n += 1
    assert n == 4
    modality.close()


def test_fixed_length_probability_model(tmp_path, clip):
    """A model with a fixed T (3 s) and softmax inside: the window is cut, a short one padded."""
    path = tmp_path / "ser_fixed.onnx"
    length = 3 * RATE
    w, b = tiny_model(path, output="probs", length=length, seed=1)
    model = SpeechEmotionModel(path, device="cpu").load()
    assert model.length == length and model.output_kind == "probs"
    for audio in (clip[: 4 * RATE], clip[RATE : RATE + RATE * 3 // 2]):
        probs, _ = model(audio)
        want, _ = expected_basic(audio, w, b, length)
        got = np.zeros(len(BASIC))
        for name, v in zip(LABELS, probs):
            got[BASIC.index(BY_NAME[name])] = v
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_normalising_model(tmp_path, clip):
    """``cer.normalize`` = true: zero-mean unit-variance input, as WavLM's feature extractor."""
    path = tmp_path / "ser_norm.onnx"
    w, b = tiny_model(path, seed=2, normalize=True)
    model = SpeechEmotionModel(path, device="cpu").load()
    assert model.normalize
    audio = clip[: 4 * RATE]
    probs, _ = model(audio)
    want, _ = expected_basic(audio, w, b, normalize=True)
    got = np.zeros(len(BASIC))
    for name, v in zip(LABELS, probs):
        got[BASIC.index(BY_NAME[name])] = v
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_absent_without_a_model_when_the_voice_head_is_off(clip):
    """No model and ``voice=False`` (``AudioOptions.voice``): absent with the reason; by default
    the shipped voice head runs instead (tests/test_voice.py)."""
    modality = SpeechEmotionModality(None, gate=SpeechGate(), voice=False)
    out = modality(window_input(Window(0, 0.0, 4.0), clip[: 4 * RATE]))
    assert out.basic is None and out.info["reason"] == NO_MODEL
    assert out.info["speech"] is True  # the gate still reports the window's speech


def test_absent_on_silence_and_without_audio(tmp_path):
    path = tmp_path / "ser.onnx"
    tiny_model(path)
    modality = SpeechEmotionModality(path, gate=SpeechGate(), device="cpu")
    out = modality(window_input(Window(0, 0.0, 4.0), np.zeros(4 * RATE, np.float32)))
    assert out.basic is None and out.info["reason"] == "no speech" and out.info["speech_fraction"] == 0.0
    out = modality(window_input(Window(1, 2.0, 6.0), None))
    assert out.basic is None and out.info["reason"] == "no audio"


def test_model_without_labels_is_reported(tmp_path, clip):
    path = tmp_path / "nolabels.onnx"
    tiny_model(path, metadata=False)
    modality = SpeechEmotionModality(path, gate=SpeechGate(), device="cpu")
    out = modality(window_input(Window(0, 0.0, 4.0), clip[: 4 * RATE]))
    assert out.basic is None and "cer.labels" in out.info["error"]
    with pytest.raises(ValueError, match="unknown emotion label"):
        bad = tmp_path / "badlabels.onnx"
        tiny_model(bad, labels=["happy", "calm", "sad", "angry", "neutral", "fear", "disgust"])
        SpeechEmotionModel(bad, device="cpu").load()


def test_build_from_command_line_options(tmp_path):
    parser = argparse.ArgumentParser()
    add_audio_args(parser)
    mods = build_audio_modalities(audio_options(parser.parse_args([])))
    assert [m.name for m in mods] == ["audio", "text"]
    assert mods[0].gate is mods[1].gate  # one VAD stream for both
    assert mods[0].model is None and mods[0].voice is not None  # the shipped voice head by default
    path = tmp_path / "ser.onnx"
    tiny_model(path)
    args = parser.parse_args(["--speech-emotion", str(path), "--no-asr", "--vad-threshold", "0.6"])
    mods = build_audio_modalities(audio_options(args))
    assert [m.name for m in mods] == ["audio"]
    assert mods[0].model.path == path and mods[0].voice is None and mods[0].gate.options.threshold == 0.6
    assert [m.name for m in build_audio_modalities(AudioOptions(text=False))] == ["audio"]


def test_registry_stamped_model_keeps_its_contract(tmp_path, clip):
    """``cer-stream models export wavlm-speech-emotion --weights FILE`` stamps the registry's
    metadata; the labels, output kind and normalisation the modality reads survive it."""
    registry = pytest.importorskip("engines.models.registry")
    src = tmp_path / "user.onnx"
    w, b = tiny_model(src, seed=3, normalize=True)
    stamped = registry.export("wavlm-speech-emotion", weights=src, cache_dir=tmp_path / "cache")
    model = SpeechEmotionModel(stamped, device="cpu").load()
    assert model.engine.metadata["cer.name"] == "wavlm-speech-emotion"
    assert model.labels == tuple(LABELS) and model.output_kind == "logits" and model.normalize
    want, _ = expected_basic(clip[: 4 * RATE], w, b, normalize=True)
    out = SpeechEmotionModality(model, gate=SpeechGate())(window_input(Window(0, 0.0, 4.0), clip[: 4 * RATE]))
    np.testing.assert_allclose(out.basic, want, atol=1e-4)
