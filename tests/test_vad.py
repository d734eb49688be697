"""Silero VAD through the engines layer, and the per-window speech gate.

The sample clip's audio is espeak-ng speech that starts 0.25 s in (``SPEECH_OFFSET_S`` in
samples/make_sample.py) and runs to about 8.5 s of the 10 s clip.
"""

from __future__ import annotations

import numpy as np
import pytest
from audio_fixtures import RATE, decode_16k, window_input, windows_of

from stream.modalities.speech import vad as V

SPEECH_START_S = 0.25


@pytest.fixture(scope="module")
def clip(sample) -> np.ndarray:
    audio = decode_16k(sample)
    assert abs(audio.shape[0] / RATE - 10.0) < 0.1
    return audio


@pytest.fixture(scope="module")
def whole_clip_probs(clip) -> np.ndarray:
    """One streaming pass over the whole clip, chunk by chunk from sample 0."""
    vad = V.SileroVAD().load()
    return vad.probs(clip)


def test_model_comes_from_the_wheel():
    path = V.silero_model_path()
    assert path.name == "silero_vad.onnx" and path.parent.name == "data"
    vad = V.SileroVAD().load()
    assert {s.name: s.shape for s in vad.engine.inputs} == {"input": (None, None), "state": (2, None, 128), "sr": ()}


def test_vad_finds_the_speech_in_the_sample(clip, whole_clip_probs):
    segments = V.speech_segments(whole_clip_probs, clip.shape[0])
    assert segments, "no speech found in the sample clip"
    first, last = segments[0][0] / RATE, segments[-1][1] / RATE
    assert abs(first - SPEECH_START_S) < 0.1  # found where espeak starts speaking
    assert 7.5 < last < 9.5
    assert whole_clip_probs[: int(0.2 * RATE) // V.CHUNK_SAMPLES].max() < 0.1  # the lead-in is silence
    gate = V.SpeechGate()
    for w, audio in windows_of(clip):
        result = gate(window_input(w, audio))
        assert result.is_speech and result.fraction > 0.5, (w, result.info())
        assert all(0 <= a < b <= w.duration for a, b in result.segments)


@pytest.mark.parametrize("kind", ["zeros", "noise"])
def test_no_speech_in_silence(kind):
    n = 4 * RATE
    audio = (
        np.zeros(n, np.float32) if kind == "zeros" else np.random.default_rng(0).normal(0.0, 0.01, n).astype(np.float32)
    )  # -40 dBFS hiss
    from stream.core.windows import Window

    result = V.SpeechGate()(window_input(Window(0, 0.0, 4.0), audio))
    assert not result.is_speech
    assert result.segments == [] and result.speech_s == 0
    assert result.probs.max() < V.VadOptions().threshold
    assert result.info() == {"speech": False, "speech_fraction": 0.0, "speech_segments": []}


def test_streaming_windows_equal_one_pass(clip, whole_clip_probs):
    """Windows overlapping by 2 s: every chunk is scored once, with the state of one pass."""
    gate = V.SpeechGate()
    calls = []
    gate.vad = _Counting(gate.vad, calls)
    n_windows = 0
    for w, audio in windows_of(clip):
        result = gate.analyse(audio, w.start)
        start = int(round(w.start * RATE))
        absolute = result.chunk_starts + start
        whole = absolute + V.CHUNK_SAMPLES <= start + audio.shape[0]  # the peeked tail chunk differs
        np.testing.assert_array_equal(result.probs[whole], whole_clip_probs[absolute[whole] // V.CHUNK_SAMPLES])
        if w.index:
            assert result.reused_chunks >= (2 * RATE) // V.CHUNK_SAMPLES  # the overlap was not re-run
        n_windows += 1
    assert gate.restarts == 0
    last_end = int(round(w.end * RATE))
    assert len(calls) == last_end // V.CHUNK_SAMPLES  # one committed call per whole chunk, no repeats
    assert n_windows == 4


class _Counting:
    """Wraps a SileroVAD and counts the calls that advance the stream."""

    def __init__(self, vad: V.SileroVAD, calls: list) -> None:
        self.vad, self.calls = vad, calls

    def __call__(self, chunk):
        self.calls.append(1)
        return self.vad(chunk)

    def feed(self, chunks):  # the gate scores a window's new chunks in one call
        self.calls.extend(1 for _ in range(len(chunks)))
        return self.vad.feed(chunks)

    def peek(self, chunk):
        return self.vad.peek(chunk)

    def reset_states(self):
        self.vad.reset_states()

    def close(self):
        self.vad.close()


def test_changed_overlap_restarts_the_stream(clip):
    """Audio that differs in the overlap (e.g. arrived late in a live run) is re-scored."""
    windows = list(windows_of(clip))
    gate = V.SpeechGate()
    gate.analyse(windows[0][1], windows[0][0].start)
    w1, a1 = windows[1]
    changed = a1.copy()
    changed[:RATE] = 0.0  # the first second of the overlap went silent
    result = gate.analyse(changed, w1.start)
    assert gate.restarts == 1 and result.reused_chunks == 0
    fresh = V.SpeechGate().analyse(changed, w1.start)
    np.testing.assert_array_equal(result.probs, fresh.probs)
    assert result.segments == fresh.segments


def test_gate_result_is_shared_per_window(clip):
    from stream.core.windows import Window

    gate = V.SpeechGate()
    inp = window_input(Window(0, 0.0, 4.0), clip[: 4 * RATE])
    first = gate(inp)
    assert inp.shared[V.SHARED_KEY] is first
    assert gate(inp) is first  # computed once per window
    assert gate(window_input(Window(0, 0.0, 4.0), None)) is None  # no audio source


def test_short_stream_is_one_window(clip):
    """A 1.5 s stream: one short window; its tail chunk is peeked, not committed."""
    from stream.core.windows import plan_windows

    audio = clip[: int(1.5 * RATE)]
    (w,) = plan_windows(1.5)
    result = V.SpeechGate().analyse(audio, w.start)
    assert result.probs.shape[0] == -(-audio.shape[0] // V.CHUNK_SAMPLES)
    assert result.is_speech and result.duration_s == pytest.approx(1.5)


def test_matches_the_packages_own_wrapper(clip, whole_clip_probs):
    """The chunk/context/state contract agrees with silero-vad's own OnnxWrapper (needs torch)."""
    torch = pytest.importorskip("torch")
    utils = pytest.importorskip("silero_vad.utils_vad")
    wrapper = utils.OnnxWrapper(str(V.silero_model_path()), force_onnx_cpu=True)
    theirs = wrapper.audio_forward(torch.from_numpy(clip), sr=RATE).numpy().reshape(-1)
    assert theirs.shape == whole_clip_probs.shape
    np.testing.assert_allclose(whole_clip_probs, theirs, atol=1e-5)
    ours = [(a, b) for a, b in V.speech_segments(whole_clip_probs, clip.shape[0])]
    ref = [
        (s["start"], s["end"])
        for s in utils.get_speech_timestamps_from_probs(
            list(map(float, theirs)), sampling_rate=RATE, audio_length_samples=clip.shape[0]
        )
    ]
    assert len(ours) == len(ref)
    for (a, b), (c, d) in zip(ours, ref):
        assert abs(a - c) <= 2 * V.CHUNK_SAMPLES and abs(b - d) <= 2 * V.CHUNK_SAMPLES


def test_a_stream_goes_on_from_a_state_handed_over(clip):
    """The public state: a fresh VAD given another's snapshot scores the next chunks exactly as
    the VAD that reached it (how the model host runs every stream on one VAD), and a snapshot
    stays what it was while its stream goes on."""
    chunks = clip[: 40 * V.CHUNK_SAMPLES].reshape(40, V.CHUNK_SAMPLES)
    a = V.SileroVAD().load()
    a.feed(chunks[:25])  # into the speech, which starts 0.25 s in
    reached = a.state
    kept = (reached.recurrent.copy(), reached.context.copy())
    assert not reached.recurrent.flags.writeable and not reached.context.flags.writeable
    assert np.abs(reached.recurrent).max() > 0  # a state, not the zeros of a new stream
    peeked = a.peek(chunks[25])
    ours = a.feed(chunks[25:])

    b = V.SileroVAD().load()
    assert not np.array_equal(b.feed(chunks[25:]), ours)  # the state matters to these scores
    b.state = reached
    assert b.peek(chunks[25]) == peeked
    np.testing.assert_array_equal(b.feed(chunks[25:]), ours)
    np.testing.assert_array_equal(b.state.recurrent, a.state.recurrent)
    np.testing.assert_array_equal(b.state.context, a.state.context)
    # the snapshot did not follow either stream, and handing it over again replays the same scores
    np.testing.assert_array_equal(reached.recurrent, kept[0])
    np.testing.assert_array_equal(reached.context, kept[1])
    b.state = reached
    np.testing.assert_array_equal(b.feed(chunks[25:]), ours)
    b.reset_states()
    assert not b.state.recurrent.any() and not b.state.context.any()
    with pytest.raises(ValueError, match="recurrent state must have shape"):
        V.VadState(np.zeros((2, 2, 128)), np.zeros(V.CONTEXT_SAMPLES))
