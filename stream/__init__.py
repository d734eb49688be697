"""cer-stream: real-time zero-shot compound expression recognition.

The public API (imported lazily, so ``import stream`` stays light)::

    from stream import Pipeline, PipelineOptions, FileSource

    with Pipeline(PipelineOptions()) as pipeline:
        for record in pipeline.run(FileSource("clip.mp4")):
            ...

Options: :mod:`stream.runtime.options`; sources: :mod:`stream.io.sources`; records:
:mod:`stream.runtime.records`.  The extension points are base classes with every optional
method a no-op: :class:`Observer` (:mod:`stream.runtime.observe`), :class:`Modality`
(:mod:`stream.modalities.base`) and :class:`Sink` (:mod:`stream.runtime.delivery`).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Pipeline": "stream.runtime.pipeline",
    "PipelineOptions": "stream.runtime.options",
    "FaceOptions": "stream.runtime.options",
    "AudioOptions": "stream.runtime.options",
    "ClipOptions": "stream.runtime.options",
    "TemporalOptions": "stream.runtime.options",
    "SceneOptions": "stream.runtime.options",
    "FusionOptions": "stream.runtime.options",
    "RuntimeOptions": "stream.runtime.options",
    "Source": "stream.io.sources",
    "FileSource": "stream.io.sources",
    "RtspSource": "stream.io.sources",
    "CameraSource": "stream.io.sources",
    "MicrophoneSource": "stream.io.sources",
    "PushSource": "stream.io.sources",
    "SourceError": "stream.io.sources",
    "StartupError": "stream.runtime.lifecycle",
    "StartRecord": "stream.runtime.records",
    "WindowRecord": "stream.runtime.records",
    "FramesRecord": "stream.runtime.records",
    "WarningRecord": "stream.runtime.records",
    "GapRecord": "stream.runtime.records",
    "EndRecord": "stream.runtime.records",
    "Observer": "stream.runtime.observe",
    "FaceCall": "stream.runtime.observe",
    "Modality": "stream.modalities.base",
    "ModalityOutput": "stream.modalities.base",
    "WindowInput": "stream.modalities.base",
    "Sink": "stream.runtime.delivery",
}

__all__ = [
    "__version__",
    "Pipeline",
    "PipelineOptions",
    "FaceOptions",
    "AudioOptions",
    "ClipOptions",
    "TemporalOptions",
    "SceneOptions",
    "FusionOptions",
    "RuntimeOptions",
    "Source",
    "FileSource",
    "RtspSource",
    "CameraSource",
    "MicrophoneSource",
    "PushSource",
    "SourceError",
    "StartupError",
    "StartRecord",
    "WindowRecord",
    "FramesRecord",
    "WarningRecord",
    "GapRecord",
    "EndRecord",
    "Observer",
    "FaceCall",
    "Modality",
    "ModalityOutput",
    "WindowInput",
    "Sink",
]  # noqa: RUF022


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stream' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
