"""Watch a process tree's command lines for a password while it runs (credential tests)."""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import quote, unquote, unquote_to_bytes


def secret_forms(password: str) -> set[str]:
    """Every form a password may take in a text: as written, percent-decoded, percent-encoded
    (the URL as FFmpeg gets it)."""
    return {password, unquote(password), quote(password, safe=""), quote(unquote_to_bytes(password), safe="")}


def leaks(text: str | bytes, password: str) -> set[str]:
    """The forms of ``password`` found in ``text``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return {f for f in secret_forms(password) if f in text}


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo.extend(kids - found)
            found |= kids
    return found


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


class CmdlineWatch:
    """Reads the command lines of process ``pid`` and of all its descendants every 20 ms until
    it exits (or :meth:`stop`).  A process's own ``argv`` is readable by everyone from the
    moment it is started until its first lines of Python rewrite it: the samples that count
    (:attr:`seen`) are those from the first one where the root's command line is no longer
    ``argv`` on (``rewritten``)."""

    def __init__(self, pid: int, argv: list[str]) -> None:
        self.pid = pid
        self.original = "\0".join(argv).encode() + b"\0"
        self.rewritten = False
        self.seen: dict[int, set[bytes]] = {}  # pid -> its command lines after the rewrite
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.02):
            root = _cmdline(self.pid)
            if root is None or not root:  # gone (or a zombie)
                return
            if not self.rewritten and root == self.original:
                continue
            self.rewritten = True
            for pid in {self.pid, *_descendants(self.pid)}:
                line = _cmdline(pid)
                if line:
                    self.seen.setdefault(pid, set()).add(line)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)

    def children_seen(self) -> int:
        return len(set(self.seen) - {self.pid})

    def leaks(self, password: str) -> list[tuple[int, str]]:
        """``(pid, command line)`` of every sample that holds a form of ``password``."""
        return [
            (pid, line.decode("utf-8", "replace"))
            for pid, lines in self.seen.items()
            for line in lines
            if leaks(line, password)
        ]
