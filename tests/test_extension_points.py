"""The declared extension points: Observer, Modality and Sink are base classes exported from
``stream`` with every optional method a no-op, and plain objects with some of the methods still
work (wrapped once).  One in-process analyzer run on the sample clip checks that the analyzer
calls them: a modality's ``load`` before the first window, a sink that is also an observer sees
the analysed frames, a plain ``write``/``close`` writer is named after its class."""

from __future__ import annotations

import pytest


def test_extension_points_are_exported_base_classes():
    import stream
    from stream.modalities.base import Modality
    from stream.runtime.delivery import Sink
    from stream.runtime.observe import HOOKS, Observer

    assert (stream.Observer, stream.Modality, stream.Sink) == (Observer, Modality, Sink)
    assert {"Observer", "Modality", "Sink"} <= set(stream.__all__)
    quiet = Observer()
    for hook in HOOKS:
        assert callable(getattr(quiet, hook))
    assert quiet.on_capture([1]) is None and quiet.on_stage("fusion", 1.0, 0, []) is None
    with pytest.raises(TypeError):
        Modality()  # __call__ is the one method a modality must have
    with pytest.raises(TypeError):
        Sink()  # write is the one method a sink must have


def test_plain_objects_are_wrapped_once():
    from stream.runtime.delivery import Sink, as_sink
    from stream.runtime.observe import Observer, Observers

    class OnlyCapture:  # no base class, one hook
        def __init__(self):
            self.pids = None

        def on_capture(self, pids):
            self.pids = pids

    plain = OnlyCapture()
    observers = Observers([plain])
    assert isinstance(observers.items[0], Observer)
    observers.capture([7, 8])
    observers.stage("fusion", 1.0, 0, [])  # a hook it lacks: nothing happens
    assert plain.pids == [7, 8]

    class Writer:
        lossless = False

        def write(self, record):
            pass

        def close(self):
            pass

    sink = as_sink(Writer())
    assert isinstance(sink, Sink) and (sink.name, sink.lossless, sink.required) == ("Writer", False, False)
    assert as_sink(sink) is sink


def test_analyzer_calls_the_declared_hooks(sample):
    from conftest import CollectSink

    from stream import Modality, ModalityOutput, Observer, Sink
    from stream.modalities.base import FaceModality
    from stream.runtime.analyzer import Analyzer, Source

    class Counting(Modality):
        name = "counting"

        def __init__(self):
            self.loaded_before_first_window = None
            self.calls = 0

        def load(self):
            self.loaded_before_first_window = self.calls == 0

        def __call__(self, inp):
            self.calls += 1
            return ModalityOutput.absent("a test modality")

    class FrameSink(Sink, Observer):
        name = "frames"

        def __init__(self):
            self.frames = []

        def write(self, record):
            pass

        def on_frame(self, frame, face):
            self.frames.append(frame.index)

    modality, frame_sink, plain = Counting(), FrameSink(), CollectSink()
    end = Analyzer(Source("video", str(sample)), [frame_sink, plain], modalities=[FaceModality(), modality]).run()
    assert modality.loaded_before_first_window is True and modality.calls == end["windows"]
    assert frame_sink.frames and frame_sink.frames == sorted(set(frame_sink.frames))
    assert set(end["sinks"]) == {"frames", "CollectSink"}
    windows = [r for r in plain.records if r["type"] == "window"]
    assert windows and all(w["modalities"]["counting"]["reason"] == "a test modality" for w in windows)
