"""The README's quick start installs what its first screens show (issue 20, item 7): `make run`
(`make install` first) gives `--serve` (the web extra), `cer-stream plot` (the plot extra) and
the annotated copy, without another step.  What `make install` would run is read from make
itself (``make -n``, a dry run into a folder that does not exist), not from the Makefile's text;
a full install from scratch takes minutes and belongs to CI's own `make test`."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.metadata import requires
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What each feature of the README's first screens imports, by the extra that brings it.
NEEDED = {"web": {"starlette", "uvicorn"}, "plot": {"matplotlib"}}


def install_commands(venv: Path) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(
        ["make", "-n", "install", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_make_install_installs_the_web_and_plot_extras(tmp_path: Path) -> None:
    lines = install_commands(tmp_path / "venv")
    project = [line for line in lines if re.search(r"pip .*install -e ", line)]
    assert len(project) == 1, lines
    found = re.search(r"-e '?\.\[([^\]]*)\]", project[0])
    assert found, f"make install installs no extra: {project[0]}"
    extras = set(found.group(1).split(","))
    assert set(NEEDED) <= extras
    declared = requires("cer-stream") or []  # the installed project's metadata, extras included
    for extra, modules in NEEDED.items():
        mine = [req for req in declared if re.search(rf"extra == [\"']{extra}[\"']", req)]
        names = {re.split(r"[<>=;\[ ]", req, maxsplit=1)[0].lower() for req in mine}
        assert modules <= names, (extra, declared)
    # --serve's page needs its chart library too, fetched at install time
    assert any(line.endswith("models fetch web-chart") for line in lines), lines
