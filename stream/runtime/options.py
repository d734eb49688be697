"""Typed options of a :class:`stream.Pipeline`.

Every field is keyword-only and has the default the command line uses, so
``PipelineOptions()`` is ``cer-stream``'s default configuration (``--profile lite``: the face
ensemble, voice activity, Whisper tiny.en with the transcript gate and the speech text head; no
CLIP, temporal, speech-emotion or VLM model).  The command line (``stream.cli``) only maps its
flags onto these classes.

The options of a single modality live with it (``AudioOptions`` in
:mod:`stream.modalities.audio`, ``SceneOptions`` in :mod:`stream.modalities.scene`,
``ClipOptions`` in :mod:`stream.modalities.clip`, ``TemporalOptions`` in
:mod:`stream.modalities.temporal`) and are re-exported here.  ``AudioOptions`` holds the
speech-to-text ("text") settings too: the text modality reads the audio's transcript.

There are no window options: windows are 4 s long and start every 2 s
(:data:`stream.core.windows.WINDOW_S`, :data:`~stream.core.windows.HOP_S`), the method's
windows (the seeds' rule), fixed so that the records, the calibration files and the temporal
models trained on them all mean the same windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.io.capture import DEFAULT_MAX_SIDE, DEFAULT_OPEN_TIMEOUT_S, DEFAULT_READ_TIMEOUT_S
from stream.io.reconnect import ReconnectPolicy, Resume
from stream.modalities.audio import AudioOptions
from stream.modalities.clip import ClipOptions
from stream.modalities.scene import SceneOptions
from stream.modalities.temporal import TemporalOptions

#: The six modalities of the method, in the order they run.
ALL_MODALITIES = ("face", "clip", "temporal", "audio", "text", "scene")


@dataclass(kw_only=True)
class FaceOptions:
    """The static face path.

    Attributes:
        profile: ``"lite"`` (weights that ship in registry packages) or ``"paper"`` (the seeds'
            EmoAffectNet; needs ``weights``).
        model: ``"ensemble"``, ``"faceapi"``, ``"minixception"``, ``"emoaffectnet"``; ``None``: the
            profile's default (lite: ensemble, paper: emoaffectnet).
        detector: ``"legacy"`` (MediaPipe solutions, default) or ``"tasks"`` (MediaPipe Tasks).
        weights: the face model's weights (EmoAffectNet TorchScript file, face-api folder).
        backend: ``"auto"``, ``"onnxruntime"`` or ``"tensorrt"``; also used by the other
            modalities' engines unless their own options say otherwise.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    profile: str = "lite"
    model: str | None = None
    detector: str = "legacy"
    weights: str | Path | None = None
    backend: str = "auto"
    device: str = "auto"


@dataclass(kw_only=True)
class FusionOptions:
    """Fusion and basic-to-compound conversion.

    Attributes:
        compound: ``"ppa"`` (default), ``"rule1"``, ``"rule2"`` or ``"pfsa"`` (needs a calibration
            file with prototypes).
        calibration: a file written by ``cer-stream calibrate``; ``None``: equal weights.
    """

    compound: str = "ppa"
    calibration: str | Path | None = None


@dataclass(kw_only=True)
class RuntimeOptions:
    """How a stream is read and what is emitted.

    A run hands this object itself to the analyzer and its capture
    (:func:`stream.runtime.lifecycle.open_capture`), which turns it into the capture processes'
    settings in one place (:func:`stream.runtime.lifecycle.capture_configs`).

    Attributes:
        realtime: pace a file at media speed and treat it as live (``--realtime``).
        max_side: frames are scaled so the longer side is at most this many pixels (960).
        open_timeout_s, read_timeout_s: network/camera time limits (10 s each); a live source
            with no data for ``read_timeout_s`` counts as lost.
        reconnect: what a live source (RTSP, camera) does when it ends, fails or stalls
            (:class:`stream.io.reconnect.ReconnectPolicy`); default: reopen forever, at most 30 s
            apart (``ReconnectPolicy(attempts=0)`` ends the run with the source instead).
        emit_frames: emit provisional ``frames`` records (final ones are always emitted).
        progress: draw a progress bar on stderr.
        resume: a live source only: go on from where another analyzer process left the stream
            (:class:`stream.io.reconnect.Resume`: window indices, media time and frame numbers
            continue, the time between is a gap); ``cer-stream serve`` sets it on a restart.
    """

    realtime: bool = False
    max_side: int = DEFAULT_MAX_SIDE
    open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    emit_frames: bool = True
    progress: bool = False
    resume: Resume | None = None


@dataclass(kw_only=True)
class PipelineOptions:
    """Everything a :class:`stream.Pipeline` needs.

    Attributes:
        face, audio, clip, temporal, scene, fusion, runtime: per-part options (see each class).
            ``scene=None`` (default) leaves the scene modality absent ("no VLM endpoint").
        modalities: which of :data:`ALL_MODALITIES` to run; the others are left out of the
            records entirely.  Default: all six (absent ones say why in every window).
        observers: objects told about stage timings and records (see
            :class:`stream.runtime.observe.Observer`; every method is optional).
    """

    face: FaceOptions = field(default_factory=FaceOptions)
    audio: AudioOptions = field(default_factory=AudioOptions)
    clip: ClipOptions = field(default_factory=ClipOptions)
    temporal: TemporalOptions = field(default_factory=TemporalOptions)
    scene: SceneOptions | None = None
    fusion: FusionOptions = field(default_factory=FusionOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    modalities: Sequence[str] = ALL_MODALITIES
    observers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = [m for m in self.modalities if m not in ALL_MODALITIES]
        if unknown:
            raise ValueError(f"unknown modalities {', '.join(unknown)}; choose from {', '.join(ALL_MODALITIES)}")
        if "face" not in self.modalities:
            raise ValueError("the face modality cannot be left out (the window loop analyses faces)")


__all__ = [
    "ALL_MODALITIES",
    "AudioOptions",
    "ClipOptions",
    "FaceOptions",
    "FusionOptions",
    "PipelineOptions",
    "RuntimeOptions",
    "SceneOptions",
    "TemporalOptions",
]
