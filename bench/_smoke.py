"""What every benchmark shares (a helper module, not a benchmark): its ``--smoke`` mode, and the
steps of its output (the revision it measured, the refusal of a dirty tree, the report files).

A smoke run is the benchmark's own code on a tiny input (a second or two of the sample, one
repetition, one stream, a soak shrunk to seconds), so that a benchmark that no longer runs is
caught by ``make test`` (``tests/test_bench_smoke.py``) instead of by the next person who needs
its figures.  Its numbers mean nothing as measurements; it only proves the script still produces
them.  Hence:

* it writes into a folder of its own (``--smoke-dir DIR``, else a new temporary folder, kept and
  named on stderr), never into ``bench/results/``, whose files are the reported figures;
* it exits 0 only when the report holds the numbers the benchmark exists for
  (:func:`finish`), 1 when some are missing, and :data:`SKIPPED` (77, the "skipped" status of
  automake's test harness) when this machine lacks something it needs (a GPU, the peer's
  environment), after one line saying what.

A report names the commit it measured (:func:`revision`), so a real run of a tree whose measured
files differ from that commit is refused (:func:`refuse_dirty`) unless ``--allow-dirty`` (the
report then lists the files) or ``--smoke`` (whose figures are never reported).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "astronaut.mp4"
RESULTS = ROOT / "bench" / "results"
#: Exit status of a smoke run that could not run here (and said why).
SKIPPED = 77


def add_args(parser: argparse.ArgumentParser, what: str) -> None:
    """``--smoke`` (with ``what`` it shrinks to) and ``--smoke-dir``."""
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"a check that the benchmark still runs, in seconds: {what}; writes to a temporary folder, "
        "never bench/results/; exit 0 only when its numbers came out",
    )
    parser.add_argument(
        "--smoke-dir", type=Path, metavar="DIR", help="where --smoke writes (default: a new temporary folder)"
    )


def out_dir(name: str, given: Path | None) -> Path:
    """The folder a smoke run writes into: ``given`` (created), else a new temporary folder.
    Raises ``ValueError`` for a folder inside bench/results/ (the reported figures)."""
    if given is None:
        folder = Path(tempfile.mkdtemp(prefix=f"cer-bench-{name}-smoke-"))
    else:
        folder = given.expanduser().resolve()
        if folder == RESULTS.resolve() or RESULTS.resolve() in folder.parents:
            raise ValueError(f"--smoke-dir {given}: a smoke run never writes into bench/results/")
        folder.mkdir(parents=True, exist_ok=True)
    say(name, f"writing into {folder}")
    return folder


def out_dir_or_error(prefix: str, name: str, given: Path | None) -> Path | None:
    """:func:`out_dir`, or None after one line on stderr saying why not (``prefix``, the
    benchmark's own, first): the caller exits 2, as for any usage error."""
    try:
        return out_dir(name, given)
    except ValueError as exc:
        sys.stderr.write(f"{prefix} error: {exc}\n")
        sys.stderr.flush()
        return None


def report_paths(
    prefix: str, name: str, stem: str, args: argparse.Namespace, results: Path = RESULTS
) -> tuple[Path, Path, Path | None] | None:
    """``(JSON path, markdown path, smoke folder)`` of a run's report: with ``--smoke``,
    ``stem.json`` and ``stem.md`` in its folder (:func:`out_dir`); else ``--json`` and ``--md``
    where the benchmark has them and they were given, else those names in ``results``, and no
    smoke folder.  None after one line on stderr (``prefix`` first) when the smoke folder is
    refused."""
    if args.smoke:
        folder = out_dir_or_error(prefix, name, args.smoke_dir)
        if folder is None:
            return None
        return folder / f"{stem}.json", folder / f"{stem}.md", folder
    given = (getattr(args, "json", None), getattr(args, "md", None))
    return Path(given[0] or results / f"{stem}.json"), Path(given[1] or results / f"{stem}.md"), None


def refuse_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace, names: Iterable[str]) -> None:
    """A usage error when an output path of a full run (``--json`` ...) comes with ``--smoke``:
    a smoke run's files go to its own folder, so its figures can never replace reported ones."""
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None) not in (None, "")]
    if given:
        parser.error(f"--smoke writes into --smoke-dir, not {', '.join(given)}")


# --------------------------------------------------------------------------- the revision measured
def git(*args: str, root: Path = ROOT) -> str | None:
    """What ``git args`` prints in the checkout ``root``, less its final newline (a porcelain
    line's leading blank is part of it), or None where git is missing or fails (no checkout)."""
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.rstrip("\n")
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass(frozen=True)
class Revision:
    """The commit a run measured and the files that differ from it (None: no checkout)."""

    commit: str | None  #: ``git rev-parse HEAD``
    short: str | None  #: ``git rev-parse --short HEAD``
    describe: str | None  #: ``git describe --always``
    #: The measured files that differ from the commit (tracked changes and new files), or with
    #: no measured files named, every tracked file that does (new files do not count).
    changed: tuple[str, ...]
    measured: tuple[str, ...]

    @property
    def dirty(self) -> bool:
        return bool(self.changed)

    def label(self, name: str = "describe", mark: str = "-dirty") -> str | None:
        """The ``name`` field (``"describe"`` or ``"short"``), ``mark`` after it when something
        changed: by default what ``git describe --always --dirty`` prints (bench/latency.py's
        records write ``+dirty`` after the short hash); None outside a checkout."""
        value: str | None = getattr(self, name)
        return value + mark if value and self.dirty else value

    def record(self, name: str = "describe") -> dict[str, Any]:
        """What a report keeps: ``{"commit": ..., name: ..., "changed": [...]}``."""
        return {"commit": self.commit, name: getattr(self, name), "changed": list(self.changed)}


def revision(measured: Sequence[str] = (), root: Path = ROOT) -> Revision:
    """The :class:`Revision` of the checkout ``root``; ``measured``: the files whose changes
    count (none named: every tracked file)."""
    if measured:
        status = git("status", "--porcelain", "--", *measured, root=root)
    else:
        status = git("status", "--porcelain", "--untracked-files=no", root=root)
    return Revision(
        commit=git("rev-parse", "HEAD", root=root) or None,
        short=git("rev-parse", "--short", "HEAD", root=root) or None,
        describe=git("describe", "--always", root=root) or None,
        changed=tuple(sorted(line[3:] for line in (status or "").splitlines())),  # "XY path" lines
        measured=tuple(measured),
    )


def refuse_dirty(prefix: str, rev: Revision, args: argparse.Namespace) -> bool:
    """True, after one line on stderr (``prefix``, the benchmark's own, first), when the run
    must not go on: files it measures differ from ``rev`` and neither ``--allow-dirty`` nor
    ``--smoke`` was given (a report's figures must be those of the commit it names)."""
    if not rev.changed or getattr(args, "allow_dirty", False) or getattr(args, "smoke", False):
        return False
    what = "the measured files" if rev.measured else "tracked files"
    shown = ", ".join(rev.changed[:5]) + (f" and {len(rev.changed) - 5} more" if len(rev.changed) > 5 else "")
    sys.stderr.write(
        f"{prefix} error: {what} differ from the revision {rev.describe or 'HEAD'} ({shown}); "
        "commit them first, or pass --allow-dirty\n"
    )
    sys.stderr.flush()
    return True


def begin(
    prefix: str, name: str, stem: str, args: argparse.Namespace, measured: Sequence[str], results: Path = RESULTS
) -> tuple[Revision, Path, Path, Path | None] | None:
    """The first steps of a benchmark that names its measured files: their :func:`revision`,
    :func:`refuse_dirty`, then :func:`report_paths`; ``(revision, JSON path, markdown path,
    smoke folder)``, or None after one line on stderr (the caller exits 2)."""
    rev = revision(measured)
    if refuse_dirty(prefix, rev, args):
        return None
    paths = report_paths(prefix, name, stem, args, results)
    return None if paths is None else (rev, *paths)


def write_results(
    json_path: Path | None,
    res: Any,
    md_path: Path | None = None,
    md: str = "",
    *,
    dumps: Callable[..., str] = json.dumps,
    **options: Any,
) -> list[Path]:
    """The run's record ``res`` as ``dumps(res, **options)`` and a newline into ``json_path``,
    the markdown report ``md`` as it is into ``md_path`` (a path None: that file is not
    written); UTF-8, folders made.  The paths written."""
    written = []
    for path, text in ((json_path, None), (md_path, md)):
        if path is None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(res, **options) + "\n" if text is None else text, encoding="utf-8")
        written.append(path)
    return written


# --------------------------------------------------------------------------- smoke inputs
def short_clip(dst: Path, seconds: float = 2.0, src: Path = SAMPLE) -> Path:
    """The first ``seconds`` of ``src`` (stream copy, every track) as the MP4 ``dst``.

    Packets are kept in decoding order up to the first one at or past ``seconds``, so every
    frame kept has the frames it refers to (a cut in presentation order could keep a B-frame
    without its reference)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        streams = list(inp.streams)
        mapped = {s.index: out.add_stream_from_template(s) for s in streams}
        done: set[int] = set()
        for packet in inp.demux(*streams):
            index = packet.stream.index
            if packet.dts is None or index in done:
                continue
            tb = packet.time_base
            if tb is not None and packet.dts * tb >= seconds:
                done.add(index)
                if len(done) == len(streams):
                    break
                continue
            packet.stream = mapped[index]
            out.mux(packet)
    return dst


#: faces_dev's label spellings, in its classes' order (stream.core.labels.BASIC without Other).
FACES_LABELS = ("neutral", "angry", "disgusted", "fearful", "happy", "sad", "surprised")
FACES_RATED = ("happy", "sad", "angry", "disgusted", "fearful", "surprised")


def standin_faces_dev(data: Path, n: int = 14, src: Path = SAMPLE) -> Path:
    """A stand-in for ``faces_dev`` (the data folder a fresh clone lacks) in ``data/faces_dev``:
    ``n`` frames of ``src``, half a second apart, as JPEG photographs, and a ``labels.csv`` of
    faces_dev's columns whose labels cycle through the 7 posed classes (one real face, so the
    labels are not true: the scores it gives check the code path, nothing else), three
    "people" and, on every other image, observer ratings of a Happily Surprised blend.
    Returns ``data``."""
    import csv

    import av
    import cv2

    folder = data / "faces_dev"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    with av.open(str(src)) as container:
        for frame in container.decode(video=0):
            if frame.time is None or frame.time < 0.5 * len(rows):
                continue
            name = f"images/standin-{len(rows):02d}.jpg"
            cv2.imwrite(str(folder / name), frame.to_ndarray(format="bgr24"))
            ratings = {f"rated_{r}": "" for r in FACES_RATED}
            if len(rows) % 2:
                ratings.update(rated_happy="0.50", rated_surprised="0.40", rated_sad="0.10")
            label = FACES_LABELS[len(rows) % len(FACES_LABELS)]
            rows.append({"path": name, "label": label, "person": f"s{len(rows) % 3}", "performance": label, **ratings})
            if len(rows) == n:
                break
    if len(rows) < n:
        raise ValueError(f"{src}: only {len(rows)} frames half a second apart, {n} wanted")
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return data


def say(name: str, msg: str) -> None:
    sys.stderr.write(f"[{name}] smoke: {msg}\n")
    sys.stderr.flush()


def skip(name: str, why: str) -> int:
    """One line saying what is missing here; :data:`SKIPPED`."""
    say(name, f"skipped: {why}")
    return SKIPPED


def missing_numbers(report: Any, paths: Iterable[str]) -> list[str]:
    """The ``paths`` (keys and list indices joined by ``/``: ``"latency_ms/p95"``,
    ``"batch/0/clips_per_hour"``; keys may hold dots, as ``m0.1-none`` does) that do not lead to
    a number in ``report`` (a bool, a list or a dict is no number)."""
    missing = []
    for path in paths:
        node = report
        for key in path.split("/"):
            if isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            elif isinstance(node, dict) and key in node:
                node = node[key]
            else:
                node = None
                break
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            missing.append(path)
    return missing


def finish(name: str, report: Any, paths: Iterable[str], folder: Path) -> int:
    """0 when every number in ``paths`` is in ``report`` (one line naming them and ``folder``),
    else 1 with one line naming those missing."""
    paths = list(paths)
    missing = missing_numbers(report, paths)
    if missing:
        say(name, f"FAILED: no number for {', '.join(missing)} (report in {folder})")
        return 1
    say(name, f"ok: {len(paths)} numbers produced ({', '.join(paths)}); report in {folder}")
    return 0
