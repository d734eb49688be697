"""The public entry point: ``Pipeline(options).run(source)`` yields typed records.

    from stream import FileSource, Pipeline, PipelineOptions

    with Pipeline(PipelineOptions()) as pipeline:
        for record in pipeline.run(FileSource("clip.mp4")):
            if record.type == "window":
                print(record.index, record.label)

Models load once, when the pipeline is made (the face path) and on its first run of a kind of
source (the window modalities: a live source runs speech to text beside the stream, a file
inline), and serve every later run until :meth:`Pipeline.close`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from stream.core.logs import RecordForwarder, silence_native
from stream.io.sources import Source
from stream.modalities.base import Modality, ModalityOutput, WindowInput
from stream.runtime.delivery import RecordWriter, Sink, as_sink
from stream.runtime.observe import as_observer
from stream.runtime.options import PipelineOptions
from stream.runtime.records import AnyRecord

if TYPE_CHECKING:
    from stream.runtime.analyzer import Analyzer

_DONE = object()


class _Borrowed(Modality):
    """A modality lent to one run's wrapper: closing the wrapper does not close it."""

    def __init__(self, inner: Modality) -> None:
        self.inner = inner
        self.name = inner.name
        self.needs_frames = getattr(inner, "needs_frames", True)
        self.reads_images = getattr(inner, "reads_images", True)

    def __call__(self, inp: WindowInput) -> ModalityOutput:
        return self.inner(inp)

    def load(self) -> None:
        self.inner.load()

    def reset(self) -> None:
        self.inner.reset()


class Pipeline:
    r"""Compound expression recognition over a source, from typed options.

    ``Pipeline(options)`` loads the face path (raising ``RuntimeError``/``ValueError``/
    ``FileNotFoundError`` with a one-line message when a model or file is missing);
    :meth:`run` analyses one source and yields its records (``StartRecord``, ``WarningRecord``,
    ``WindowRecord``, ``FramesRecord``, ``EndRecord``); ``record.to_dict()`` is the JSON the
    command line prints.  ``sinks`` (:class:`stream.Sink`\ s, e.g. those of
    ``stream.sinks.outputs``, or any object with ``write(record)`` and ``close()``) and
    ``features_out`` receive each record's JSON as well.  One run at a time; :meth:`stop` (from any thread) ends the current
    run early, flushing its windows.
    """

    def __init__(
        self,
        options: PipelineOptions | None = None,
        *,
        sinks: Sequence[Sink | RecordWriter] | None = None,
        features_out: Sink | RecordWriter | None = None,
    ) -> None:
        from stream.runtime.build import build_face_analyzer

        self.options = options or PipelineOptions()
        self.sinks = [as_sink(s) for s in sinks or []]
        self.features_out = as_sink(features_out) if features_out is not None else None
        # duck-typed observers are wrapped once, here (stream.runtime.observe.as_observer)
        self.observers = [as_observer(ob) for ob in self.options.observers]
        self._run_owned: list[Modality] = []
        silence_native()  # before the face path imports MediaPipe (idempotent)
        # every cer_stream warning, at start or an hour in, becomes a `warning` record of the run
        self._forwarder = RecordForwarder().install()
        self._sets: dict[bool, list] = {}
        self._fusers: dict[bool, Any] = {}
        self._analyzer: Analyzer | None = None
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.face = build_face_analyzer(self.options.face)
        except BaseException:
            self._forwarder.remove()
            raise

    # ------------------------------------------------------------------ models
    def live(self, source: Source) -> bool:
        from stream.runtime.lifecycle import is_live

        return is_live(source, self.options.runtime)

    def prepare(self, source: Source) -> list:
        """Build (once) the modalities and fuser a run of ``source`` uses; returns the modalities.
        Raises the builders' one-line errors."""
        from stream.runtime.build import build_fuser, build_modalities

        live = self.live(source)
        if live not in self._sets:
            mods = build_modalities(self.options, self.face, live=live)
            try:
                self._fusers[live] = build_fuser(self.options.fusion, [mod.name for mod in mods], self.face)
            except BaseException:
                for mod in mods:
                    mod.close()
                raise
            self._sets[live] = mods
        return self._sets[live]

    # ------------------------------------------------------------------ runs
    def analyzer(self, source: Source, *, sinks: Sequence[Sink | RecordWriter] | None = None, on_record=None):
        """The :class:`~stream.runtime.analyzer.Analyzer` for one run of ``source`` (for callers
        that drive it themselves, like the command line: ``analyzer.run()`` returns the end
        record's JSON)."""
        from stream.modalities.base import LaggedModality
        from stream.runtime.analyzer import Analyzer

        if self._closed:
            raise RuntimeError("the pipeline is closed")
        source.check()
        live = self.live(source)
        mods = self.prepare(source)
        run_mods = []
        for mod in mods:
            if isinstance(mod, LaggedModality) and self._analyzer is not None:
                # a fresh worker for each run after the first (no results carried over)
                mod = LaggedModality(_Borrowed(mod.inner), budget_s=mod.budget_s, max_lag=mod.max_lag)
            run_mods.append(mod)
        if self._analyzer is not None:  # a later run: forget the previous stream's state
            for mod in mods:
                mod.reset()
            self.face.reset_states()
        fuser = self._fusers[live]
        self._analyzer = Analyzer(
            source,
            list(self.sinks) + list(sinks or []),
            options=self.options.runtime,
            face=self.face,
            modalities=run_mods,
            fuser=fuser,
            features_out=self.features_out,
            log_records=self._forwarder,
            observers=self.observers,
            on_record=on_record,
        )
        self._run_owned = [m for m in run_mods if m not in mods]
        return self._analyzer

    def run(self, source: Source) -> Iterator[AnyRecord]:
        """Analyse ``source`` to its end, yielding each record as it is emitted.  Errors that
        stop the stream from starting raise ``stream.runtime.lifecycle.StartupError``; a bad
        source raises ``stream.io.sources.SourceError``.  Closing the generator early stops
        the run."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("one run at a time: this pipeline is already running")
        try:
            q: queue.Queue = queue.Queue()
            analyzer = self.analyzer(source, on_record=q.put)
            failure: list[BaseException] = []

            def work() -> None:
                try:
                    analyzer.run()
                except BaseException as exc:  # handed to the consumer
                    failure.append(exc)
                finally:
                    q.put(_DONE)

            worker = threading.Thread(target=work, name="cer-pipeline", daemon=True)
            worker.start()
            try:
                while True:
                    item = q.get()
                    if item is _DONE:
                        break
                    yield item
            finally:
                if worker.is_alive():  # the consumer stopped early
                    analyzer.stop()
                    while worker.is_alive():
                        worker.join(0.1)
                self._close_run_mods()
            if failure:
                raise failure[0]
        finally:
            self._lock.release()

    def _close_run_mods(self) -> None:
        for mod in self._run_owned:
            mod.close()
        self._run_owned = []

    def stop(self) -> None:
        """End the current run early (its buffered windows are still analysed and emitted)."""
        if self._analyzer is not None:
            self._analyzer.stop()

    def close(self) -> None:
        """Free the models (and threads) of every run."""
        if self._closed:
            return
        self._closed = True
        self._close_run_mods()
        for mods in self._sets.values():
            for mod in mods:
                mod.close()
        self._sets.clear()
        self.face.close()
        self._forwarder.remove()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def options_with(options: PipelineOptions, **changes: Any) -> PipelineOptions:
    """A copy of ``options`` with some top-level fields replaced."""
    return replace(options, **changes)


__all__ = ["Pipeline", "options_with"]
