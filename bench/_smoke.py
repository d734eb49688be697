"""What every benchmark's ``--smoke`` mode shares (a helper module, not a benchmark).

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
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterable
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


def refuse_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace, names: Iterable[str]) -> None:
    """A usage error when an output path of a full run (``--json`` ...) comes with ``--smoke``:
    a smoke run's files go to its own folder, so its figures can never replace reported ones."""
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None) not in (None, "")]
    if given:
        parser.error(f"--smoke writes into --smoke-dir, not {', '.join(given)}")


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
    """A stand-in for ``faces_dev`` (the shared data a fresh clone lacks) in ``data/faces_dev``:
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
