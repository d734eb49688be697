"""The live page's chart library, from the npm registry, fetched at install time (never by the browser).

``--serve`` draws its chart with uPlot (npm ``uplot@1.6.32``, MIT, Leon Sorokin: a small, fast
time-series chart on a canvas, 51 KB minified, no dependencies).  :func:`fetch` gets it the way
the face-api.js weights are fetched (``engines.models.faceapi``): ``npm pack`` into a temporary
folder, the tarball's sha512 checked against the registry's integrity string
(:data:`NPM_INTEGRITY`), then only :data:`FILES` extracted, each checked against its pinned
sha256 and written atomically to ``$CER_STREAM_CACHE/uplot-1.6.32/`` (default
``~/.cache/cer-stream/models``).  ``cer-stream models fetch web-chart`` (run by ``make
install``) calls it.  The server reads the files from there (or from ``CER_STREAM_WEB_VENDOR=DIR``)
and serves them under ``/static/vendor/``; nothing is fetched at run time, and a missing file is
one line naming the command (:func:`vendor_dir`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from engines.models.npm import NpmFetchError, NpmFiles, fetch_files
from engines.models.storage import default_cache_dir

log = logging.getLogger("cer_stream.web")

NAME = "web-chart"
NPM_PACKAGE = "uplot"
VERSION = "1.6.32"
NPM_SPEC = f"{NPM_PACKAGE}@{VERSION}"
#: The npm registry's ``dist.integrity`` of the 1.6.32 tarball.
NPM_INTEGRITY = "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
#: The files kept (name in the cache folder -> member of the tarball) and their sha256.
MEMBERS = {
    "uPlot.iife.min.js": "package/dist/uPlot.iife.min.js",
    "uPlot.min.css": "package/dist/uPlot.min.css",
    "LICENSE": "package/LICENSE",
}
FILES = {
    "uPlot.iife.min.js": "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
    "uPlot.min.css": "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
    "LICENSE": "8f989229699b4fe2f1a0432d0e9edc338a8a911e250e2d1b01ecd770a5f5b1bd",
}
CACHE_SUBDIR = f"{NPM_PACKAGE}-{VERSION}"
#: ``CER_STREAM_WEB_VENDOR=DIR``: a folder holding the files (looked at before the cache).
VENDOR_ENV = "CER_STREAM_WEB_VENDOR"
FETCH_COMMAND = f"cer-stream models fetch {NAME}"
NPM_TIMEOUT_S = 300


class FetchError(NpmFetchError):
    """The chart library could not be fetched; the message says what to do instead."""


class AssetsMissing(FileNotFoundError):
    """The chart library is not where the server looks (one line naming the fetch command)."""


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """``CACHE_DIR/uplot-1.6.32`` (default ``$CER_STREAM_CACHE`` or ``~/.cache/cer-stream/models``)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / CACHE_SUBDIR


def _hint() -> str:
    return (
        f"install Node.js/npm and run `{FETCH_COMMAND}` (or `make install`), or put "
        f"{', '.join(FILES)} (npm {NPM_SPEC}, dist/) in a folder and set {VENDOR_ENV}=DIR"
    )


def fetch(
    cache_dir: str | Path | None = None, *, tarball: str | Path | None = None, timeout: float = NPM_TIMEOUT_S
) -> Path:
    """Get uPlot's minified script, stylesheet and licence into ``cache_folder(cache_dir)``
    (returned): ``npm pack uplot@1.6.32`` (or ``tarball``, a downloaded copy), the tarball's
    sha512 and each file's sha256 checked (``engines.models.npm``).  Files already there and
    intact are kept.  Raises :class:`FetchError` (one line, naming what to do) on any failure."""
    files = NpmFiles(NAME, NPM_SPEC, NPM_INTEGRITY, MEMBERS, FILES, _hint())
    return fetch_files(files, cache_folder(cache_dir), tarball=tarball, timeout=timeout, error=FetchError)


def vendor_dir(cache_dir: str | Path | None = None, *, what: str = "--serve") -> Path:
    """The folder holding the chart library: ``$CER_STREAM_WEB_VENDOR``, else the cache folder.
    Never fetches; a missing or altered file is a one-line :class:`AssetsMissing` naming
    ``cer-stream models fetch web-chart`` (and ``what`` needs it: ``--serve``, the dashboard)."""
    if os.environ.get(VENDOR_ENV):
        folder, where = Path(os.environ[VENDOR_ENV]).expanduser(), VENDOR_ENV
    else:
        folder, where = cache_folder(cache_dir), "the model cache"
    missing = [name for name in FILES if name != "LICENSE" and not (folder / name).is_file()]
    if missing:
        raise AssetsMissing(
            f"{what} needs the chart library {NPM_SPEC}: {', '.join(missing)} not found in {folder} "
            f"({where}); run `{FETCH_COMMAND}` (or `make install`)"
        )
    return folder


__all__ = [
    "FETCH_COMMAND",
    "FILES",
    "NAME",
    "NPM_SPEC",
    "VENDOR_ENV",
    "AssetsMissing",
    "FetchError",
    "cache_folder",
    "fetch",
    "vendor_dir",
]
