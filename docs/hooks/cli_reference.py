"""MkDocs hook: the command line reference (docs/cli.md) from the parsers themselves.

Each subcommand's ``--help`` is run as a real process (``python -m stream.cli ... --help``) when
the site is built, so the reference cannot drift from the code; a subcommand whose help fails
fails the build.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
ROOT = Path(__file__).resolve().parents[2]
#: The run command first, then every subcommand (stream.cli.main.COMMANDS), with their own subcommands.
NESTED = {"models": ["list", "fetch", "export"], "engines": ["build"]}


def _help(args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cer-stream {' '.join(args)} --help exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout.rstrip()


def reference() -> str:
    sys.path.insert(0, str(ROOT))
    from stream.cli.main import COMMANDS

    parts = ["## cer-stream (the run command)\n", "```text\n" + _help([]) + "\n```\n"]
    for name in COMMANDS:
        parts += [f"## cer-stream {name}\n", "```text\n" + _help([name]) + "\n```\n"]
        for sub in NESTED.get(name, []):
            parts += [f"### cer-stream {name} {sub}\n", "```text\n" + _help([name, sub]) + "\n```\n"]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs' signature
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference())
