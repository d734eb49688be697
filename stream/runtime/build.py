"""Models from options: the face analyzer, the window modalities and the fuser.

Errors a user can fix (a missing weights file, an unavailable engine, a bad calibration file)
are raised as one-line ``RuntimeError``/``ValueError``/``FileNotFoundError``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from stream.modalities.audio import AudioOptions
from stream.runtime.options import FaceOptions, FusionOptions, PipelineOptions


def _emotion_model(opts: FaceOptions):
    """The static face model for the chosen profile/backend; errors become one-line messages."""
    from engines.select import EngineUnavailable
    from stream.modalities.face import load_face_model

    try:
        return load_face_model(
            opts.model,
            profile=opts.profile,
            backend=opts.backend,
            device=opts.device,
            weights=None if opts.weights is None else str(opts.weights),
        )
    except EngineUnavailable as exc:
        raise RuntimeError(str(exc)) from None
    except FileNotFoundError as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise RuntimeError(_as_face_weights(msg)) from None


def _as_face_weights(message: str) -> str:
    """An engines error in the words of a :class:`FaceOptions` caller: the engines layer knows
    nothing of the options and names the weights by its own argument (``--weights``, as its
    ``models`` command takes it); here they are ``FaceOptions.weights`` (the command line names
    its flag: :func:`stream.cli.flags.flag_names`)."""
    return message.replace("pass --weights PATH", "give FaceOptions.weights").replace(
        "--weights", "FaceOptions.weights"
    )


def build_face_analyzer(
    opts: FaceOptions | None = None, *, validate: bool = True, track: bool = True, instrument: bool = True
):
    """The face analyzer for ``opts``.  ``track=False``/``validate=True`` suit unrelated still
    images (every detection validated, no target kept between calls).  Its detector and model
    report per-frame times to the pipeline's observers (``stream.runtime.observe``) unless
    ``instrument=False`` (the model host, which times its own batches).

    Under ``cer-stream serve``'s model host (:mod:`stream.modalities.hosted`; the environment names
    it) the analyzer is the host's: this process loads no face model."""
    from stream.modalities.hosted import active_host

    host = active_host()
    if host is not None and track and validate:
        from stream.modalities.hosted import RemoteFaceAnalyzer

        return RemoteFaceAnalyzer(host, opts or FaceOptions())
    from stream.modalities.face import FaceAnalyzer, FaceDetector, FaceDetectorLike
    from stream.runtime.observe import instrument_face

    opts = opts or FaceOptions()
    detector: FaceDetectorLike
    if opts.detector == "tasks":
        from stream.modalities.landmarker import TaskFaceDetector

        try:
            detector = TaskFaceDetector(validate=validate, blendshapes=False, validate_every_frame=not track)
        except FileNotFoundError as exc:
            raise RuntimeError(str(exc).strip().splitlines()[0]) from None
    elif opts.detector == "legacy":
        detector = FaceDetector(validate=validate, validate_every_frame=not track)
    else:
        raise ValueError(f"unknown face detector {opts.detector!r}: legacy or tasks")
    try:
        model = _emotion_model(opts)
    except BaseException:
        detector.close()
        raise
    face = FaceAnalyzer(detector=detector, model=model, track=track)
    return instrument_face(face) if instrument else face


def audio_options(options: PipelineOptions) -> AudioOptions:
    """The audio and text modalities' options as they are built: the face's engine unless the
    audio's own options say otherwise, no text without the text modality."""
    audio_opts = options.audio
    if audio_opts.backend == "auto" and audio_opts.device == "auto":
        audio_opts = replace(audio_opts, backend=options.face.backend, device=options.face.device)
    if "text" not in set(options.modalities):
        audio_opts = replace(audio_opts, text=False)
    return audio_opts


def host_specs(options: PipelineOptions) -> dict[str, list[Any]]:
    """What a model host should load for analyzers run with ``options``: per kind of request, the
    option objects they will send (:mod:`stream.serve.model_host`)."""
    from stream.modalities.audio import audio_specs

    wanted = set(options.modalities)
    specs: dict[str, list[Any]] = {"face": [options.face]}
    if wanted & {"audio", "text"}:
        for kind, spec in audio_specs(audio_options(options)).items():
            if kind == "voice" and "audio" not in wanted:
                continue
            specs[kind] = [spec]
    return specs


def build_modalities(options: PipelineOptions, face: Any, *, live: bool) -> list:
    """The window modalities, in the order they run (later ones may use earlier results).

    ``live``: the source does not wait for the analyzer; speech to text (~0.5 s a window on 2
    CPU cores) then runs beside the stream, one hop late, with its own voice-activity gate."""
    from stream.modalities.audio import build_audio_modalities
    from stream.modalities.base import AbsentModality, FaceModality, LaggedModality
    from stream.modalities.clip import ClipLabelModality, build_clip_modality
    from stream.modalities.scene import build_scene_modality
    from stream.modalities.temporal import build_temporal_modality

    wanted = set(options.modalities)
    backend, device = options.face.backend, options.face.device
    mods: list = [FaceModality()]
    try:
        clip = None
        if "clip" in wanted:  # before temporal: it may read CLIP's features
            clip_opts = replace(
                options.clip, backend=options.clip.backend or backend, device=options.clip.device or device
            )
            mods.append(clip := build_clip_modality(clip_opts))
        if "temporal" in wanted:
            mods.append(temporal := build_temporal_modality(options.temporal, face_labels=face.model.labels))
            if (
                isinstance(clip, ClipLabelModality)  # an absent one reads no frames
                and getattr(temporal.model, "feature_kind", None) == "clip"
                and options.clip.frames is None
            ):
                clip.frames_per_window = 0  # a CLIP-feature temporal model reads every frame
        if wanted & {"audio", "text"}:
            audio_opts = audio_options(options)
            audio_mods = [m for m in build_audio_modalities(audio_opts, share_gate=not live) if m.name in wanted]
            # live: the words (a Whisper call per speech window) and the voice (an encoder pass,
            # 0.1-0.2 s beside the recogniser on 2 cores) run beside the stream, so a window's
            # record waits for neither (each says which window its result came from)
            mods += [LaggedModality(mod, max_lag=audio_opts.max_lag) if live else mod for mod in audio_mods]
        if "scene" in wanted:
            scene = build_scene_modality(options.scene)
            mods.append(
                scene if scene is not None else AbsentModality("scene", "no VLM endpoint; give one with --vlm-url")
            )
    except BaseException:
        for mod in mods:
            mod.close()
        raise
    return mods


def build_fuser(opts: FusionOptions, names: list[str], face=None):
    """The fuser for the running modalities (``ValueError`` on a bad calibration file, or on
    PFSA prototypes fitted in another face feature space than ``face``'s model gives)."""
    from stream.fusion.fuser import Fuser

    calibration = None
    if opts.calibration is not None:
        from stream.fusion.calibration import CalibrationError, load_calibration

        try:
            calibration = load_calibration(opts.calibration)
        except CalibrationError as exc:
            raise ValueError(str(exc)) from None
    spaces = None if face is None else {"face": getattr(face.model, "feature_space", None)}
    return Fuser(names, method=opts.compound, calibration=calibration, feature_spaces=spaces)


__all__ = ["audio_options", "build_face_analyzer", "build_fuser", "build_modalities", "host_specs"]
