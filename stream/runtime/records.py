"""The records a pipeline emits, as typed dataclasses.

Each record's :meth:`to_dict` is exactly the JSON object the command line prints (docs/outputs.md,
"Record schema"; ``stream/schema/records.schema.json``), with plain Python values (numpy arrays
and scalars become lists and numbers).  :func:`build_window_record` and
:func:`build_frames_record` are the record building the window loop does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from stream.core.labels import BASIC, COMPOUND
from stream.core.windows import Window
from stream.fusion.compound import normalise


def plain(obj: Any) -> Any:
    """Numpy arrays and scalars to Python lists and numbers, recursively (values unchanged)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


class Record:
    """Base of the record classes: ``type`` names the record, :meth:`to_dict` is its JSON."""

    type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for name in self.__dataclass_fields__:  # type: ignore[attr-defined]
            out[name] = getattr(self, name)
        return plain(out)


@dataclass
class StartRecord(Record):
    type: ClassVar[str] = "start"
    source: str
    input: str
    fps: float | None  # None: an audio-only source (no picture)
    width: int
    height: int
    duration: float | None
    live: bool
    audio: bool
    modalities: list[str]
    fusion: dict[str, Any]
    compound_method: str
    window_s: float
    hop_s: float
    basic_labels: list[str] = field(default_factory=lambda: list(BASIC))
    compound_labels: list[str] = field(default_factory=lambda: list(COMPOUND))
    #: ``cer-stream serve`` restarted this stream's analyzer: ``{"window", "after_s", "reason"}``
    #: (window indices, media time and frame numbers go on; absent otherwise)
    resumed: dict[str, Any] | None = None
    #: whether the source has a picture (False: audio-only; no frame records follow)
    video: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out.get("resumed") is None:
            out.pop("resumed", None)
        return out


@dataclass
class WindowRecord(Record):
    """One 4 s window.  ``basic``/``compound``/``label``/``basic_label`` are None when no
    modality was present; ``modalities`` holds each modality's entry (``present``, ``weight``,
    ``basic`` and its own fields, or ``reason``)."""

    type: ClassVar[str] = "window"
    index: int
    start: float
    end: float
    frames: tuple[int, int] | None  # None: an audio-only source
    analysed_frames: int
    basic: dict[str, float] | None
    compound: dict[str, float] | None
    label: str | None
    basic_label: str | None
    compound_method: str
    present: list[str]
    modalities: dict[str, dict[str, Any]]
    audio: dict[str, float] | None
    drops: dict[str, float]
    processing_ms: float
    latency_ms: float | None
    #: why ``compound`` is null in a window that has ``basic`` (``--compound pfsa`` without its
    #: feature); absent from the JSON otherwise
    compound_reason: str | None = None
    #: live runs: Unix time when the window was analysed (absent from a file run's JSON)
    wall_time: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for optional in ("compound_reason", "wall_time"):
            if out.get(optional) is None:
                out.pop(optional, None)
        return out


@dataclass
class FramesRecord(Record):
    """Frame-wise predictions (parallel lists), provisional or ``final``."""

    type: ClassVar[str] = "frames"
    final: bool
    frame_index: list[int]
    time: list[float]
    label_index: list[int | None]
    label: list[str | None]
    compound: list[list[float] | None]


@dataclass
class WarningRecord(Record):
    type: ClassVar[str] = "warning"
    message: str
    stream: str | None = None
    modality: str | None = None
    sink: str | None = None  # an output that drops records, failed or went away

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.stream is not None:
            out["stream"] = self.stream
        if self.modality is not None:
            out["modality"] = self.modality
        if self.sink is not None:
            out["sink"] = self.sink
        return out


@dataclass
class GapRecord(Record):
    """A live source was lost and came back (``end`` None: the run ended in the gap).  No frame
    exists between media times ``start`` (the last frame before) and ``end`` (the first after);
    ``windows_missing`` are the first and last index of the windows it left without a frame.

    ``cause`` ``"models"``: the source went on but ``cer-stream serve``'s model host was gone
    (restarting) from the frame at ``start`` to the first frame of the first window analysed
    whole again at ``end``; every window was written, those between without the face."""

    type: ClassVar[str] = "gap"
    start: float
    end: float | None
    reason: str
    attempts: int
    windows_missing: tuple[int, int] | None
    wall_time: float
    cause: str = "source"


@dataclass
class EndRecord(Record):
    type: ClassVar[str] = "end"
    reason: str  # eof | interrupted | error | stopped | source_lost
    windows: int
    windows_skipped: int
    frames: int | None
    frames_analysed: int
    media_s: float
    elapsed_s: float
    real_time_factor: float | None
    latency_ms: dict[str, float] | None
    drops: dict[str, float]
    warnings: int
    #: per output (``stdout``, ``out``, ``publish``, ``csv``, ``dump-features``): ``written``,
    #: ``dropped``, ``error`` (null, or why it stopped), counted before the end record itself
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    gaps: int = 0  # gap records (live sources lost, and reopened unless the run ended in the gap)
    gap_s: float = 0.0  # media seconds the gaps took
    windows_missing: int = 0  # windows gaps left without a frame
    reconnects: int = 0  # times the source was reopened after a loss


AnyRecord = StartRecord | WindowRecord | FramesRecord | WarningRecord | GapRecord | EndRecord
RECORD_TYPES: dict[str, type] = {
    c.type: c for c in (StartRecord, WindowRecord, FramesRecord, WarningRecord, GapRecord, EndRecord)
}


def from_dict(d: dict[str, Any]) -> AnyRecord:
    """The typed record for a record's JSON object (the inverse of ``to_dict``)."""
    d = dict(d)
    cls = RECORD_TYPES[d.pop("type")]
    # fields a record type does not have (``stream_id`` from ``cer-stream serve``) are left out
    fields = {f.name for f in dataclasses.fields(cls)}
    d = {k: v for k, v in d.items() if k in fields}
    if cls is WindowRecord:
        d["frames"] = tuple(d["frames"])
    if cls is GapRecord and d.get("windows_missing") is not None:
        d["windows_missing"] = tuple(d["windows_missing"])
    return cls(**d)


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of every record (``stream/schema/records.schema.json``)."""
    import json
    from importlib import resources

    return json.loads(resources.files("stream").joinpath("schema/records.schema.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- building
def build_window_record(
    w: Window,
    *,
    fps: float | None,
    total: int | None,
    analysed_frames: int,
    fused,
    outputs: dict,
    pcm: np.ndarray | None,
    coverage: float,
    drops: dict,
    processing_ms: float = 0.0,
    latency_ms: float | None = None,
) -> WindowRecord:
    """The window record for fusion result ``fused`` of modality ``outputs``."""
    basic = None if fused.basic is None else dict(zip(BASIC, fused.basic))
    basic_label = None if fused.basic is None else BASIC[int(np.argmax(fused.basic))]
    if fused.basic is not None and fused.compound is not None:
        compound: dict[str, Any] | None = dict(zip(COMPOUND, normalise(fused.compound)))
        label: str | None = COMPOUND[int(np.argmax(fused.compound))]
    else:  # nothing present, or the run's one compound method cannot score this window
        compound = label = None
    modalities = {
        name: (
            {"present": True, "weight": fused.weights.get(name), "basic": dict(zip(BASIC, out.basic)), **out.info}
            if out.basic is not None
            else {"present": False, **out.info}
        )
        for name, out in outputs.items()
    }
    if pcm is not None:
        rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if pcm.size else 0.0
        audio = {"coverage": round(coverage, 3), "rms_dbfs": round(20 * np.log10(max(rms, 1e-9)), 1)}
    else:
        audio = None
    return WindowRecord(
        index=w.index,
        start=w.start,
        end=w.end,
        frames=w.frame_range(fps, total) if fps else None,
        analysed_frames=analysed_frames,
        basic=basic,
        compound=compound,
        label=label,
        basic_label=basic_label,
        compound_method=fused.method,
        present=[name for name, out in outputs.items() if out.basic is not None],
        modalities=modalities,
        audio=audio,
        drops=drops,
        processing_ms=processing_ms,
        latency_ms=latency_ms,
        compound_reason=getattr(fused, "reason", None),
    )


def build_frames_record(rows, *, final: bool) -> FramesRecord:
    """Frame rows (``stream.runtime.timeline.FrameRow``) as one frames record."""
    return FramesRecord(
        final=final,
        frame_index=[r.index for r in rows],
        time=[round(r.time, 4) for r in rows],
        label_index=[r.label for r in rows],
        label=[None if r.label is None else COMPOUND[r.label] for r in rows],
        compound=[None if r.compound is None else np.round(normalise(r.compound), 4) for r in rows],
    )


__all__ = [
    "RECORD_TYPES",
    "AnyRecord",
    "EndRecord",
    "FramesRecord",
    "GapRecord",
    "Record",
    "StartRecord",
    "WarningRecord",
    "WindowRecord",
    "build_frames_record",
    "build_window_record",
    "from_dict",
    "load_schema",
    "plain",
]
