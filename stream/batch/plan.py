"""What a batch analyses, what each file's outputs are called, and which files are done.

Inputs are files, folders (searched recursively for :data:`VIDEO_EXTENSIONS` and
:data:`AUDIO_EXTENSIONS`: a sound file is analysed audio-only), glob patterns
(``**`` included) and manifest CSVs (a ``path`` column, relative paths taken from the
manifest's folder; an optional ``name`` column names the outputs).  The same file named twice is
analysed once.

Each file's outputs are named after it: ``NAME.jsonl`` (every record, as ``--out``),
``NAME.csv`` (ABAW frame predictions, as ``--csv``), ``NAME.features.jsonl`` (as
``--dump-features``) and, written last, ``NAME.done.json`` (the file's summary: the completion
marker).  ``NAME`` is the file's stem; two inputs with the same stem (or a stem that would clash
with the batch's own ``summary.csv``) get ``STEM-<8 hex digits of the path's hash>``, stable
from one run to the next.

A file is done when its marker names the same input (path, size, modification time) and the
same analysis settings, and every output asked for exists.  Outputs and markers are written to
hidden ``.NAME.*.part`` files and renamed into place (:func:`os.replace`), so a run stopped at
any moment never leaves a file that looks complete.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: What a folder given as input is searched for (case-insensitive), recursively.
VIDEO_EXTENSIONS = (
    ".3gp",
    ".avi",
    ".flv",
    ".m4v",
    ".mkv",
    ".mov",
    ".mp4",
    ".mpeg",
    ".mpg",
    ".mts",
    ".ts",
    ".webm",
    ".wmv",
)
#: Sound files a folder is searched for too (analysed audio-only: the audio and text modalities).
AUDIO_EXTENSIONS = (".aac", ".flac", ".m4a", ".mp3", ".oga", ".ogg", ".opus", ".wav", ".wma")
#: Stems the batch uses for itself (``summary.csv``, ``summary.json``).
RESERVED = ("summary",)
#: Suffixes of a file's outputs, by kind.
SUFFIXES = {"jsonl": ".jsonl", "csv": ".csv", "features": ".features.jsonl"}
MARKER_SUFFIX = ".done.json"
PART_SUFFIX = ".part"
#: Version of the marker's layout (a marker of another version is not trusted).
MARKER_VERSION = 1


class BatchError(Exception):
    """Bad batch input (no such file, a glob that matches nothing, a bad manifest): one line."""


@dataclass(frozen=True)
class BatchItem:
    """One file of the batch: ``name`` (its outputs' stem) and ``path`` (absolute)."""

    name: str
    path: str


# --------------------------------------------------------------------------- inputs
def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _folder(path: Path) -> list[Path]:
    found = [p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS + AUDIO_EXTENSIONS and p.is_file()]
    return sorted(found)


def _manifest(path: Path) -> list[tuple[Path, str | None]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [(name or "").strip() for name in reader.fieldnames or []]
            if "path" not in fields:
                raise BatchError(f"manifest {path}: no 'path' column (header: {', '.join(fields) or 'none'})")
            rows: list[tuple[Path, str | None]] = []
            for row in reader:
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
                if not row.get("path"):
                    continue
                p = Path(row["path"]).expanduser()
                rows.append((p if p.is_absolute() else path.parent / p, row.get("name") or None))
            return rows
    except OSError as exc:
        raise BatchError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise BatchError(f"manifest {path}: not a readable CSV ({exc})") from None


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[tuple[Path, str | None]]:
    """The files ``inputs`` name, in order, each with the output name a manifest gives it (or
    ``None``).  ``BatchError`` for an input that does not exist or a pattern that matches
    nothing; a manifest row naming a missing file is kept (it fails when analysed, and the
    batch goes on)."""
    out: list[tuple[Path, str | None]] = []
    for raw in inputs:
        text = os.fspath(raw)
        path = Path(text).expanduser()
        if path.is_dir():
            out.extend((p, None) for p in _folder(path))
        elif path.is_file() and path.suffix.lower() == ".csv":
            out.extend(_manifest(path))
        elif path.exists():
            out.append((path, None))
        elif _has_magic(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                raise BatchError(f"no file matches {text}")
            for match in matches:
                p = Path(match)
                if p.is_dir():
                    out.extend((q, None) for q in _folder(p))
                elif p.is_file() and p.suffix.lower() != ".csv":
                    out.append((p, None))
        else:
            raise BatchError(f"no such file or folder: {text}")
    return out


def _short_hash(path: str) -> str:
    return hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _safe_name(name: str) -> str:
    name = name.replace(os.sep, "_").replace("/", "_").strip()
    return name if name not in ("", ".", "..") and not name.startswith(".") else f"_{name.lstrip('.')}"


def plan(inputs: Iterable[str | os.PathLike]) -> list[BatchItem]:
    """Expand ``inputs``, drop repeats of the same file, and name each file's outputs."""
    seen: set[str] = set()
    files: list[tuple[str, str | None]] = []
    for found, manifest_name in expand_inputs(inputs):
        real = os.path.realpath(found)
        if real in seen:
            continue
        seen.add(real)
        files.append((os.path.abspath(found), manifest_name))
    named = [n for _, n in files if n]
    if len({n.casefold() for n in named}) != len(named):
        dup = next(n for n in named if sum(m.casefold() == n.casefold() for m in named) > 1)
        raise BatchError(f"the manifest names two files {dup!r}")
    stems: dict[str, int] = {}
    for path, name in files:
        key = _safe_name(name or Path(path).stem).casefold()
        stems[key] = stems.get(key, 0) + 1
    taken = {n.casefold() for n in named} | set(RESERVED)
    items: list[BatchItem] = []
    for path, name in files:
        if name:
            items.append(BatchItem(_safe_name(name), path))
            continue
        stem = _safe_name(Path(path).stem)
        clash = stems[stem.casefold()] > 1 or stem.casefold() in taken
        items.append(BatchItem(f"{stem}-{_short_hash(path)}" if clash else stem, path))
    return items


# --------------------------------------------------------------------------- outputs
def outputs(name: str, *, csv: bool = True, features: bool = False) -> dict[str, str]:
    """The output file names of ``name``, by kind (``jsonl``, ``csv``, ``features``)."""
    kinds = ["jsonl"] + (["csv"] if csv else []) + (["features"] if features else [])
    return {kind: name + SUFFIXES[kind] for kind in kinds}


def marker_name(name: str) -> str:
    return name + MARKER_SUFFIX


def part_name(final: str, token: str) -> str:
    """The hidden temporary name ``final`` is written under before it is renamed into place."""
    return f".{final}.{token}{PART_SUFFIX}"


def parts_of(out: Path, name: str) -> list[Path]:
    """Leftover temporary files of ``name`` (a run that was stopped or died)."""
    finals = [marker_name(name)] + [name + s for s in SUFFIXES.values()]
    return [p for f in finals for p in out.glob(f".{glob.escape(f)}.*{PART_SUFFIX}")]


def input_identity(path: str) -> dict[str, Any]:
    """What says that an input is the file that was analysed: path, size, modification time."""
    st = os.stat(path)
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def settings_digest(pipeline_options: Any, *, audio: bool = True) -> str:
    """A short digest of the analysis settings (a file analysed with others is analysed again)."""
    opts = dataclasses.replace(pipeline_options, observers=[])
    opts = dataclasses.replace(opts, runtime=dataclasses.replace(opts.runtime, progress=False))
    fields = dataclasses.asdict(opts)
    # settings that a file's analysis never reads are left out, so that they neither send files
    # to be analysed again nor change the digests of earlier batches: how late a live source's
    # voice and words may be (a file waits for them)
    fields["audio"].pop("max_lag", None)
    text = json.dumps({"options": fields, "audio": audio}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def read_marker(out: Path, name: str) -> dict | None:
    """``NAME.done.json``, or ``None`` when missing or unreadable."""
    try:
        with open(out / marker_name(name), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == MARKER_VERSION else None


def is_done(item: BatchItem, out: Path, *, settings: str, wanted: Sequence[str]) -> dict | None:
    """The marker of ``item`` when its outputs are complete and current, else ``None``:
    the marker names this very input (path, size, modification time) and these settings, and
    every file of ``wanted`` (output names) exists."""
    marker = read_marker(out, item.name)
    if marker is None or marker.get("settings") != settings:
        return None
    try:
        if marker.get("input") != input_identity(item.path):
            return None
    except OSError:
        return None
    have = set(marker.get("outputs") or [])
    if not all(w in have and (out / w).is_file() for w in wanted):
        return None
    return marker


def write_atomic(path: Path, text: str, *, token: str | None = None) -> None:
    """Write ``text`` to ``path`` through a hidden part file, synced, then renamed into place."""
    part = path.with_name(part_name(path.name, token or str(os.getpid())))
    with open(part, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)


__all__ = [
    "BatchError",
    "BatchItem",
    "MARKER_SUFFIX",
    "RESERVED",
    "VIDEO_EXTENSIONS",
    "AUDIO_EXTENSIONS",
    "expand_inputs",
    "input_identity",
    "is_done",
    "marker_name",
    "outputs",
    "part_name",
    "parts_of",
    "plan",
    "read_marker",
    "settings_digest",
    "write_atomic",
]
