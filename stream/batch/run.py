"""``cer-stream batch``: many files, resumably, on local processes or a Ray cluster.

:func:`run_batch` plans the inputs (:mod:`stream.batch.plan`), skips the files that are done,
analyses the others on the chosen backend (:mod:`stream.batch.local` or
:mod:`stream.batch.ray_backend`; both run :class:`stream.batch.worker.BatchWorker`), draws a
progress bar over the files, and writes ``summary.csv`` and ``summary.json`` in the output
folder: one row per file (``ok``, ``failed``, ``skipped``: done by an earlier run, or ``not
run``: the batch was stopped first).  A file that fails is reported and the batch goes on; the
next run retries it.

    from stream.batch import BatchOptions, run_batch

    result = run_batch(BatchOptions(inputs=["videos/"], out="runs/videos", workers=2))
    print(result.status, result.counts)
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from stream.batch.plan import (
    BatchError,
    BatchItem,
    is_done,
    marker_name,
    outputs,
    plan,
    settings_digest,
    write_atomic,
)
from stream.batch.worker import FIELDS, WorkerConfig, summary_row
from stream.runtime.options import PipelineOptions

PROGRESS_MODES = ("auto", "on", "off")
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"


@dataclass(kw_only=True)
class BatchOptions:
    """A batch run.

    Attributes:
        inputs: files, folders, glob patterns and manifest CSVs (see :mod:`stream.batch.plan`).
        out: the output folder (made when missing).
        pipeline: the analysis options, as for one file (``cer-stream``'s flags).
        audio: use the files' audio tracks (``--no-audio``: False).
        csv: write ``NAME.csv`` (ABAW frame predictions) beside ``NAME.jsonl``.
        features: write ``NAME.features.jsonl`` (per-window features for ``calibrate``).
        workers: worker processes (local, default 1) or actors (Ray, default: as many as the
            cluster's CPUs hold, ``worker_cpus`` each).  Each loads the models once.
        ray: a Ray cluster address (``auto``, ``HOST:PORT``, ``ray://HOST:10001``, ``local``);
            ``None``: local processes.
        worker_cpus, worker_gpus: what each Ray actor reserves (1 CPU, no GPU).
        retries: how many times a file is retried when its worker process dies under it (1).
        progress: ``auto`` (a bar on stderr when it is a terminal), ``on`` or ``off``.
    """

    inputs: Sequence[str | os.PathLike]
    out: str | os.PathLike
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    audio: bool = True
    csv: bool = True
    features: bool = False
    workers: int | None = None
    ray: str | None = None
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0
    retries: int = 1
    progress: str = "auto"

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.retries < 0:
            raise ValueError(f"--retries must be 0 or more, got {self.retries}")
        if self.worker_cpus < 0 or self.worker_gpus < 0:
            raise ValueError("--worker-cpus and --worker-gpus cannot be negative")
        if self.progress not in PROGRESS_MODES:
            raise ValueError(f"bad progress mode {self.progress!r}: expected one of {', '.join(PROGRESS_MODES)}")


@dataclass
class BatchResult:
    """What a batch did: ``rows`` (one summary per file, in input order), ``counts`` (``ok``,
    ``failed``, ``skipped``, ``not run``), ``status`` (0: every file is done; 1: some failed;
    2: the analysis could not start, ``error`` says why; 130: interrupted)."""

    rows: list[dict[str, Any]]
    counts: dict[str, int]
    status: int
    out: Path
    elapsed_s: float
    error: str | None = None

    @property
    def media_s(self) -> float:
        return sum(r["media_s"] or 0.0 for r in self.rows if r["status"] in ("ok", "skipped"))


class _Bar:
    """A tqdm bar over the files, with the media seconds analysed and the failures beside it."""

    def __init__(self, total: int, done: int, *, mode: str, file: TextIO | None) -> None:
        file = sys.stderr if file is None else file
        try:
            tty = bool(file.isatty())
        except (AttributeError, ValueError, OSError):
            tty = False
        self.media = 0.0
        self.failed = 0
        self._bar = None
        if mode == "on" or (mode == "auto" and tty):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=done,
                unit="file",
                desc="batch",
                file=file,
                mininterval=0.2,
                dynamic_ncols=tty,
                ascii=not tty,
                leave=True,
            )
            self._postfix()

    def _postfix(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.media:.1f} s media, {self.failed} failed", refresh=False)

    def update(self, row: dict[str, Any]) -> None:
        self.media += row.get("media_s") or 0.0
        self.failed += row["status"] == "failed"
        if self._bar is not None:
            self._postfix()
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.close()


def _backend(options: BatchOptions, todo: list[BatchItem], config: WorkerConfig) -> Iterator[dict]:
    if options.ray:
        from stream.batch.ray_backend import cluster_workers, run_ray

        workers = options.workers or cluster_workers(options.worker_cpus, options.worker_gpus)
        return run_ray(
            todo,
            config,
            workers=workers,
            retries=options.retries,
            cpus=options.worker_cpus,
            gpus=options.worker_gpus,
        )
    from stream.batch.local import run_local

    return run_local(todo, config, workers=options.workers or 1, retries=options.retries)


def _check_inputs_survive(options: BatchOptions, items: list[BatchItem], out: Path) -> None:
    """:class:`BatchError` (one line) when a file the batch would write in ``out`` is one of its
    inputs (a video, or a manifest kept in the output folder under a name the batch writes,
    e.g. ``summary.csv``): it would be replaced at the end.  Same device and inode, so links
    count, not only names."""
    from stream.sinks.outputs import same_file

    written = [out / SUMMARY_CSV, out / SUMMARY_JSON]
    for item in items:
        written += [out / n for n in outputs(item.name, csv=options.csv, features=options.features).values()]
        written.append(out / marker_name(item.name))
    inputs = [Path(item.path) for item in items]
    inputs += [Path(p) for p in map(str, options.inputs) if p.lower().endswith(".csv") and Path(p).is_file()]
    for src in inputs:
        for dst in written:
            if dst.exists() and same_file(src, dst):
                raise BatchError(f"the batch would write {dst} over its input {src}: use another --out folder")


def run_batch(options: BatchOptions, *, progress_file: TextIO | None = None) -> BatchResult:
    """Analyse every file of ``options.inputs`` that is not done yet; see :class:`BatchResult`.
    Raises :class:`~stream.batch.plan.BatchError` (one line) for bad inputs, an output folder
    that cannot be used, or a Ray cluster that cannot be reached."""
    t0 = time.monotonic()
    items = plan(options.inputs)
    if not items:
        raise BatchError("no video files in the inputs")
    out = Path(options.out).expanduser().absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BatchError(f"cannot make the output folder {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise BatchError(f"cannot write in the output folder {out}")
    _check_inputs_survive(options, items, out)
    settings = settings_digest(options.pipeline, audio=options.audio)
    rows: dict[str, dict[str, Any]] = {}
    todo: list[BatchItem] = []
    for item in items:
        wanted = list(outputs(item.name, csv=options.csv, features=options.features).values())
        marker = is_done(item, out, settings=settings, wanted=wanted)
        if marker is None:
            todo.append(item)
        else:
            before = marker.get("summary") or {}
            rows[item.name] = summary_row(item, **{k: before.get(k) for k in FIELDS if k not in ("name", "path")})
            rows[item.name]["status"] = "skipped"
    config = WorkerConfig(
        pipeline=options.pipeline,
        out=str(out),
        csv=options.csv,
        features=options.features,
        audio=options.audio,
        settings=settings,
    )
    bar = _Bar(len(items), len(items) - len(todo), mode=options.progress, file=progress_file)
    connected = False
    fatal: str | None = None
    interrupted = False
    try:
        if todo:
            if options.ray:
                from stream.batch.ray_backend import connect

                connected = connect(options.ray)
            results = _backend(options, todo, config)
            try:
                for row in results:
                    if row.get("fatal"):
                        fatal = row.get("error") or "the analysis could not start"
                        break
                    rows[row["name"]] = row
                    bar.update(row)
            finally:
                close = getattr(results, "close", None)
                if close is not None:
                    close()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if connected:
            from stream.batch.ray_backend import disconnect

            disconnect()
    ordered = [rows.get(item.name) or summary_row(item, status="not run") for item in items]
    ordered = [{k: row.get(k) for k in FIELDS} for row in ordered]
    counts = {s: sum(r["status"] == s for r in ordered) for s in ("ok", "failed", "skipped", "not run")}
    elapsed = time.monotonic() - t0
    result = BatchResult(ordered, counts, 0, out, elapsed, fatal)
    result.status = 2 if fatal else 130 if interrupted else 1 if counts["failed"] else 0
    write_summary(result)
    return result


def totals(result: BatchResult) -> dict[str, Any]:
    done = [r for r in result.rows if r["status"] in ("ok", "skipped")]
    return {
        "files": len(result.rows),
        **{k.replace(" ", "_"): v for k, v in result.counts.items()},
        "windows": sum(r["windows"] or 0 for r in done),
        "media_s": round(result.media_s, 3),
        "elapsed_s": round(result.elapsed_s, 3),
        "status": result.status,
        "error": result.error,
    }


def write_summary(result: BatchResult) -> None:
    """``summary.csv`` (one row per file) and ``summary.json`` (rows and totals), atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    write_atomic(result.out / SUMMARY_CSV, text.getvalue())
    doc = {"files": result.rows, "totals": totals(result)}
    write_atomic(result.out / SUMMARY_JSON, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(result: BatchResult) -> str:
    """The summary as a text table, one line per file, and a line of totals."""
    head = ("file", "status", "windows", "media s", "elapsed s", "RTF", "error")
    lines = [
        (
            r["name"],
            r["status"],
            _cell(r["windows"]),
            _cell(r["media_s"]),
            _cell(r["elapsed_s"]),
            _cell(r["rtf"], 3),
            r["error"] or "",
        )
        for r in result.rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head[:-1])]
    right = {2, 3, 4, 5}

    def fmt(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts + [cells[-1]]).rstrip()

    t = totals(result)
    counts = ", ".join(f"{v} {k}" for k, v in result.counts.items() if v or k in ("ok", "failed"))
    foot = f"{t['files']} files: {counts}; {t['media_s']:.1f} s of media in {t['elapsed_s']:.1f} s"
    return "\n".join([fmt(head), *(fmt(line) for line in lines), foot])


__all__ = ["BatchOptions", "BatchResult", "format_table", "run_batch", "totals", "write_summary"]
