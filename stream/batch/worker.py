"""One batch worker: a :class:`stream.Pipeline` built once, analysing files one after another.

Every backend (local processes, Ray actors) runs this class, so a file is analysed the same way
wherever it runs, and the same way as ``cer-stream --video FILE --out NAME.jsonl --csv NAME.csv``
(the same pipeline options, sinks and records).  Models load once per worker, when it is made.

:meth:`BatchWorker.analyse` writes a file's outputs under hidden part names, renames them into
place when the run has ended well, writes the ``NAME.done.json`` marker last, and returns the
file's summary (:func:`summary_row`); it never raises for a bad file.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.batch.plan import (
    MARKER_VERSION,
    BatchItem,
    input_identity,
    marker_name,
    outputs,
    part_name,
    parts_of,
    write_atomic,
)
from stream.runtime.options import PipelineOptions

if TYPE_CHECKING:
    from stream.io.sources import FileSource

#: Longest error text kept in a summary.
MAX_ERROR = 400
#: Columns of a file's summary, in the order of ``summary.csv``.
FIELDS = ("name", "path", "status", "windows", "media_s", "elapsed_s", "rtf", "reason", "warnings", "error", "worker")


@dataclass(kw_only=True)
class WorkerConfig:
    """What every worker of a batch needs (picklable: it travels to processes and Ray actors).

    Attributes:
        pipeline: the analysis options (``cer-stream``'s flags).
        out: the output folder (on a cluster, the same path on every node).
        csv: write ``NAME.csv`` (ABAW frame predictions).
        features: write ``NAME.features.jsonl`` (per-window features for ``calibrate``).
        audio: use the files' audio tracks (``--no-audio``: False).
        settings: digest of the analysis settings, kept in each marker
            (:func:`stream.batch.plan.settings_digest`).
        log_level: what a worker process logs on stderr (``error``, as a stream run: warnings
            are ``warning`` records in the file's output).
    """

    pipeline: PipelineOptions
    out: str
    csv: bool = True
    features: bool = False
    audio: bool = True
    settings: str = ""
    log_level: str = "error"


def one_line(exc: BaseException, plain: tuple[type[BaseException], ...] = ()) -> str:
    """An exception as one line: our one-line errors (and those of ``plain`` types) as they
    are, others with their type."""
    from stream.io.sources import SourceError
    from stream.runtime.lifecycle import StartupError
    from stream.sinks.outputs import SinkError

    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if not isinstance(exc, (SourceError, StartupError, SinkError, *plain)) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 3] + "..."


def summary_row(item: BatchItem, **fields: Any) -> dict[str, Any]:
    """A file's summary with every column of :data:`FIELDS` (missing ones ``None``)."""
    row: dict[str, Any] = dict.fromkeys(FIELDS)
    row.update(name=item.name, path=item.path)
    row.update(fields)
    return row


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # not every filesystem lets a folder be synced
        pass


class BatchWorker:
    """Analyses batch files with one pipeline, built once.

    A pipeline that cannot be built (a missing model, a bad option) does not raise: every
    :meth:`analyse` then returns a failed summary with ``fatal: True`` and the one-line reason,
    so that the batch stops with that error instead of failing file after file.
    """

    def __init__(self, config: WorkerConfig) -> None:
        from stream.io.sources import FileSource
        from stream.runtime.pipeline import Pipeline

        self.config = config
        self.out = Path(config.out)
        self.where = f"{socket.gethostname()}:{os.getpid()}"
        self.pipeline: Pipeline | None = None
        self.fatal: str | None = None
        pipeline = None
        try:
            pipeline = Pipeline(config.pipeline)
            pipeline.prepare(FileSource(os.devnull))  # every model a file run uses, loaded now
        except Exception as exc:
            if pipeline is not None:
                pipeline.close()
            # the model builders' errors are one line, as `cer-stream --video` prints them
            self.fatal = one_line(exc, plain=(RuntimeError, ValueError, FileNotFoundError))
            return
        self.pipeline = pipeline

    def analyse(self, item: BatchItem) -> dict[str, Any]:
        """Analyse one file; its summary (:data:`FIELDS`, ``status`` ``ok`` or ``failed``)."""
        t0 = time.monotonic()
        if self.pipeline is None:
            return summary_row(item, status="failed", error=self.fatal, worker=self.where, fatal=True)
        finals = outputs(item.name, csv=self.config.csv, features=self.config.features)
        # a file being analysed has no marker, no outputs and no parts from an earlier try
        for stale in [self.out / marker_name(item.name), *(self.out / f for f in finals.values())]:
            stale.unlink(missing_ok=True)
        for part in parts_of(self.out, item.name):
            part.unlink(missing_ok=True)
        token = str(os.getpid())
        parts = {kind: self.out / part_name(final, token) for kind, final in finals.items()}
        end: dict[str, Any] | None = None
        error: str | None = None
        identity: dict[str, Any] = {}
        try:
            from stream.io.sources import FileSource

            source = FileSource(item.path, audio=self.config.audio)
            source.check()
            identity = input_identity(item.path)  # as it was when read: a file changed since is not done
            end, error = self._run(source, parts)
        except Exception as exc:
            error = one_line(exc)
        finally:
            if error is not None or end is None:
                for part in parts.values():
                    part.unlink(missing_ok=True)
        elapsed = time.monotonic() - t0
        media = float(end["media_s"]) if end and end.get("media_s") is not None else None
        row = summary_row(
            item,
            status="failed" if error is not None else "ok",
            windows=end.get("windows") if end else None,
            media_s=round(media, 3) if media is not None else None,
            elapsed_s=round(elapsed, 3),
            rtf=round(elapsed / media, 4) if media else None,
            reason=end.get("reason") if end else None,
            warnings=end.get("warnings") if end else None,
            error=error,
            worker=self.where,
        )
        if error is not None:
            return row
        for kind, part in parts.items():
            _fsync(part)
            os.replace(part, self.out / finals[kind])
        marker = {
            "version": MARKER_VERSION,
            "name": item.name,
            "input": identity,
            "settings": self.config.settings,
            "outputs": sorted(finals.values()),
            "summary": row,
            "finished": round(time.time(), 3),
        }
        from stream.sinks.outputs import dumps

        write_atomic(self.out / marker_name(item.name), dumps(marker) + "\n", token=token)
        _fsync_dir(self.out)
        return row

    def _run(self, source: FileSource, parts: dict[str, Path]) -> tuple[dict[str, Any] | None, str | None]:
        """One run of the pipeline into ``parts``: (end record, error or ``None``)."""
        from stream.sinks.outputs import AbawCsvSink, JsonLinesSink

        assert self.pipeline is not None
        sinks: list[Any] = []
        features = None
        try:
            sinks.append(JsonLinesSink(path=parts["jsonl"], option="--out"))
            if "csv" in parts:
                sinks.append(AbawCsvSink(parts["csv"], source.name))
            if "features" in parts:
                features = JsonLinesSink(path=parts["features"], option="--dump-features")
            self.pipeline.sinks, self.pipeline.features_out = sinks, features
            end: dict[str, Any] | None = None
            last_warning = None
            for record in self.pipeline.run(source):
                if record.type == "warning":
                    last_warning = record.to_dict().get("message")
                elif record.type == "end":
                    end = record.to_dict()
        finally:
            self.pipeline.sinks, self.pipeline.features_out = [], None
            for sink in sinks + ([features] if features is not None else []):
                sink.close()
        if end is None:
            return None, "the run ended without an end record"
        lost = [f"output {name} failed: {s['error']}" for name, s in (end.get("sinks") or {}).items() if s.get("error")]
        if end.get("reason") == "error":
            return end, (last_warning or "the stream failed")[:MAX_ERROR]
        if end.get("reason") != "eof":
            return end, f"the run ended early ({end.get('reason')})"
        if lost:
            return end, lost[0][:MAX_ERROR]
        return end, None

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None


__all__ = ["FIELDS", "BatchWorker", "WorkerConfig", "one_line", "summary_row"]
