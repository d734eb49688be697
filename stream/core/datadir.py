"""Where the training and evaluation data lie: one folder, named by ``--data DIR`` where a tool
has that flag, else by ``$CER_STREAM_DATA``.

The project ships no data and assumes no place for it: the folder is whatever the developer
names.  It holds the public datasets below, each in its own subfolder (a tool needs only some of
them).  With no folder named, a tool that needs one stops with :class:`DataMissing`, whose one
line says what to supply; tests that need it skip with that line.  ``cer-stream train-head``,
``bench/accuracy.py``, ``bench/tracking.py``, ``bench/mediapipe_tasks.py`` and the tests all find
the folder here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

#: The environment variable naming the data folder.
DATA_ENV = "CER_STREAM_DATA"

GOEMOTIONS_DIR = "goemotions_ekman"
SCENE_DIR = "qwen_scene"
FACES_DEV = "faces_dev"

#: Subfolder -> what it holds and where it comes from (named in the one-line error).
DATASETS: dict[str, str] = {
    GOEMOTIONS_DIR: "GoEmotions with its Ekman mapping, Demszky et al. 2020, CC BY 4.0",
    SCENE_DIR: "Qwen2.5-VL scene captions of AFEW and C-EXPR-DB segments, github.com/SMIL-SPCRAS/ICCVW_25, MIT",
    FACES_DEV: "posed photographs of the Taiwan Corpora of Chinese Emotions, Chen et al. 2013; evaluation only",
}


class DataMissing(FileNotFoundError):
    """The data folder, or a file a tool needs in it, is not there (a one-line message)."""


def find_data_dir(path: str | Path | None = None) -> Path | None:
    """``path`` (a ``--data`` flag's value), else ``$CER_STREAM_DATA``, else ``None``.  The folder
    is not checked: a tool says which file it misses."""
    chosen = path if path is not None else os.environ.get(DATA_ENV) or None
    return None if chosen is None else Path(chosen).expanduser()


def missing_message(needs: Iterable[str] = tuple(DATASETS), flag: str | None = "--data DIR") -> str:
    """The one line a tool (``flag``: its option naming the folder, or ``None``) or a skipped test
    prints when no data folder is named; ``needs``: the subfolders it reads."""
    held = ", ".join(f"{name}/ ({DATASETS[name]})" for name in needs)
    how = f"pass {flag} or set ${DATA_ENV}" if flag else f"set ${DATA_ENV}"
    return f"no data folder: {how} to the folder that holds {held}"


def data_dir(
    path: str | Path | None = None, *, needs: Iterable[str] = tuple(DATASETS), flag: str | None = "--data DIR"
) -> Path:
    """:func:`find_data_dir`, or :class:`DataMissing` with :func:`missing_message` when no folder
    is named."""
    found = find_data_dir(path)
    if found is None:
        raise DataMissing(missing_message(needs, flag))
    return found


__all__ = [
    "DATASETS",
    "DATA_ENV",
    "FACES_DEV",
    "GOEMOTIONS_DIR",
    "SCENE_DIR",
    "DataMissing",
    "data_dir",
    "find_data_dir",
    "missing_message",
]
