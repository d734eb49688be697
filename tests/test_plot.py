"""``cer-stream plot``: a real run of the sample (the command line's own ``--out`` file) drawn as a
timeline PNG, read back and checked pixel by pixel; bad input is one line and exit status 2."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cer_stream

from stream.cli.offline import plot_main
from stream.core.labels import COMPOUND
from stream.offline.plot import (
    ABSENT_COLOUR,
    BASIC_COLOURS,
    COMPOUND_COLOURS,
    GAP_COLOUR,
    MISSING_EDGE,
    PlotError,
    PlotOptions,
    load_records,
    plot_run,
)


@pytest.fixture(scope="module")
def run_file(tmp_path_factory, sample) -> Path:
    """The records of one real run of samples/astronaut.mp4 (10 s, 4 windows), as cer-stream wrote them."""
    out = tmp_path_factory.mktemp("plot") / "run.jsonl"
    cer_stream("--video", str(sample), "--quiet", "--out", str(out), check=True)
    return out


@pytest.fixture(scope="module")
def run(run_file) -> list[dict]:
    return load_records(run_file).records


def rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])


def picture(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def box(img: np.ndarray, axes: tuple[int, int, int, int], inset: int = 2) -> np.ndarray:
    left, top, right, bottom = axes
    return img[top + inset : bottom - inset, left + inset : right - inset]


def near(area: np.ndarray, colour: str | np.ndarray, tol: int = 12) -> np.ndarray:
    c = rgb(colour) if isinstance(colour, str) else colour
    return np.abs(area - c).max(axis=-1) <= tol


def window_line_columns(area: np.ndarray) -> np.ndarray:
    """Columns (fraction of the plot width) crossed top to bottom by a light grey window-start line."""
    grey = near(area, np.array([200, 200, 200]), 30) & (np.ptp(area, axis=-1) <= 4)
    return np.nonzero(grey.mean(axis=0) > 0.5)[0] / area.shape[1]


def plot_cli(*argv: str, stdin: bytes | None = None) -> int:
    return plot_main(list(argv), stdin=io.BytesIO(stdin) if stdin is not None else None)


def err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


# --------------------------------------------------------------------------- drawing
def test_real_run_drawn_with_its_compound_basic_and_modality_data(run, tmp_path):
    png = tmp_path / "timeline.png"
    summary = plot_run(run, png)
    img = picture(png)
    assert img.shape == (summary.height_px, summary.width_px, 3) and summary.width_px == 1200
    assert summary.windows == summary.windows_shown == 4 and summary.frames == 250
    assert summary.compound_source == "frames" and summary.span == (0.0, 10.0)
    start = run[0]
    assert summary.modalities == tuple(start["modalities"])
    not_white = (img < 245).any(axis=-1).mean()
    assert 0.05 < not_white < 0.6 and len(np.unique(img.reshape(-1, 3), axis=0)) > 200

    # top panel: one line per compound label; the run's label (Happily Surprised, ~0.8-0.97 in
    # every window) is drawn high, the others near 0
    comp = box(img, summary.axes["compound"])
    assert start["compound_labels"] == list(COMPOUND)
    rows = {name: np.nonzero(near(comp, c))[0] / comp.shape[0] for name, c in zip(COMPOUND, COMPOUND_COLOURS)}
    drawn = [name for name, r in rows.items() if r.size > 50]
    assert len(drawn) >= 5, drawn  # lines near 0 overlap; most still show
    top = max(rows, key=lambda n: -np.median(rows[n]) if rows[n].size else -2)
    assert top == "Happily Surprised" and np.median(rows[top]) < 0.25
    assert all(np.median(rows[n]) > 0.85 for n in drawn if n != top)
    # window starts at 2, 4, 6 s (0 s is the axis)
    assert np.allclose(window_line_columns(comp), [0.2, 0.4, 0.6], atol=0.01)

    # basic panel: Happiness high, in its own colour, and not in the compound panel
    basic = box(img, summary.axes["basic"])
    happy = np.nonzero(near(basic, BASIC_COLOURS[4]))[0] / basic.shape[0]
    assert happy.size > 20 and np.median(happy) < 0.2
    assert near(comp, BASIC_COLOURS[4]).sum() == 0

    # modality lanes: coloured where the run says the modality was present, grey where absent
    lanes = box(img, summary.axes["modalities"], inset=0)
    windows = [r for r in run if r["type"] == "window"]
    for i, name in enumerate(summary.modalities):
        lane = lanes[
            int((i + 0.2) * lanes.shape[0] / len(summary.modalities)) : int(
                (i + 0.8) * lanes.shape[0] / len(summary.modalities)
            )
        ]
        coloured = (np.ptp(lane, axis=-1) > 25).mean()
        grey = near(lane, ABSENT_COLOUR, 4).mean()
        present = [w["modalities"][name]["present"] for w in windows]
        if all(present):
            assert coloured > 0.5 and grey < 0.05, name
        elif not any(present):
            assert grey > 0.5 and coloured < 0.02, name
    assert {"face", "text"} <= {n for n in summary.modalities if windows[0]["modalities"][n]["present"]}


def test_gaps_missing_windows_and_a_run_without_frames(run, tmp_path):
    records = [r for r in run if not (r["type"] == "window" and r["index"] == 2)]  # window 2 (4-8 s) skipped
    records.insert(3, {"type": "gap", "start": 1.0, "end": 3.0, "reason": "capture stalled"})
    records.append({"type": "gap", "start": 9.0, "end": None, "reason": "stream lost"})  # never closed
    png = tmp_path / "gaps.png"
    summary = plot_run(records, png)
    assert summary.missing_windows == 1 and summary.gaps == 2 and summary.windows == 3
    img = picture(png)
    basic = box(img, summary.axes["basic"], inset=0)
    top = basic[: basic.shape[0] // 3]  # above the basic lines near 0

    def column(t: float) -> np.ndarray:
        return top[:, int(t / 10.0 * top.shape[1])]

    shade = (0.55 * 255 + 0.45 * rgb(GAP_COLOUR)).round()
    assert near(column(2.0)[:, None], shade, 4).mean() > 0.8
    assert near(column(9.5)[:, None], shade, 4).mean() > 0.8  # the open gap runs to the end
    assert near(column(0.5)[:, None], shade, 4).mean() == 0
    hatch = near(top, MISSING_EDGE, 25) & (np.ptp(top, axis=-1) <= 4)
    in_missing = hatch[:, int(0.42 * top.shape[1]) : int(0.78 * top.shape[1])].mean()
    assert in_missing > 0.05 and hatch[:, : int(0.38 * top.shape[1])].mean() < 0.005

    # no frame records: the windows' compound probabilities at their mid-times instead
    windows_only = [r for r in run if r["type"] != "frames"]
    summary = plot_run(windows_only, tmp_path / "windows.png")
    assert summary.compound_source == "windows" and summary.frames == 0
    comp = box(picture(tmp_path / "windows.png"), summary.axes["compound"])
    assert near(comp, COMPOUND_COLOURS[1]).sum() > 50


# --------------------------------------------------------------------------- command line
def test_cli_zoom_size_and_stdin(run_file, run, tmp_path, capsys):
    png = tmp_path / "zoom.png"
    argv = ("--from", "3", "--to", "7", "--width", "8", "--height", "7", "--dpi", "80")
    assert plot_cli(str(run_file), "-o", str(png), *argv) == 0
    assert capsys.readouterr().err == ""
    img = picture(png)
    assert img.shape == (7 * 80, 8 * 80, 3)
    expected = plot_run(run, tmp_path / "same.png", options=PlotOptions(width=8, height=7, dpi=80, start=3, end=7))
    assert expected.span == (3.0, 7.0)
    # only the window starts inside 3-7 s are drawn, at 4 s and 6 s: a quarter and three quarters across
    assert np.allclose(window_line_columns(box(img, expected.axes["compound"])), [0.25, 0.75], atol=0.015)

    stdin_png = tmp_path / "stdin.png"
    assert plot_cli("-", "-o", str(stdin_png), stdin=run_file.read_bytes()) == 0
    assert capsys.readouterr().err == ""
    assert picture(stdin_png).shape == (plot_run(run, tmp_path / "default.png").height_px, 1200, 3)


def test_cli_truncated_last_line_is_a_warning(run_file, tmp_path, capsys):
    data = run_file.read_bytes()
    cut = data[: data.rindex(b"\n", 0, len(data) - 1) + 40]  # the end record, cut after 39 bytes
    png = tmp_path / "cut.png"
    assert plot_cli("-", "-o", str(png), stdin=cut) == 0
    lines = err_lines(capsys)
    n = data.count(b"\n")
    assert lines == [
        f"cer-stream: warning [plot] stdin: line {n} is cut short (the run was stopped while writing it?); ignored"
    ]
    assert picture(png).shape[1] == 1200


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not_json", "run.jsonl: line 3: not JSON (Expecting value at column 1)"),
        ("not_a_record", "run.jsonl: line 2: not a cer-stream record (a JSON object with a type)"),
        ("no_window", "run.jsonl: no window record: nothing to draw (is this a cer-stream run's output?)"),
        ("bad_window", "run.jsonl: line {line}: a window record without a numeric 'start'"),
        ("binary", "run.jsonl: line 1: not JSON (not UTF-8 text)"),
        ("missing", "run.jsonl: No such file or directory"),
        ("after_end", "run.jsonl: nothing to draw after 20 s: the run covers 0-10 s"),
        ("bad_range", "--to (2 s) must be after --from (5 s)"),
        ("bad_size", "a width of 300 in at 100 dpi is over 20000 pixels"),  # a width <= 0: refused at parse time
        ("unwritable", "cannot write {out}: No such file or directory"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(case, message, run_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = _lines(run_file)
    path = tmp_path / "run.jsonl"
    extra: list[str] = []
    out = str(tmp_path / "out.png")
    if case == "not_json":
        path.write_text("\n".join([*lines[:2], "Traceback (most recent call last):", *lines[2:]]) + "\n")
    elif case == "not_a_record":
        path.write_text("\n".join([lines[0], "[1, 2, 3]", *lines[1:]]) + "\n")
    elif case == "no_window":
        path.write_text("\n".join(x for x in lines if json.loads(x)["type"] != "window") + "\n")
    elif case == "bad_window":
        recs = [json.loads(x) for x in lines]
        first = next(i for i, r in enumerate(recs) if r["type"] == "window")
        recs[first]["start"] = "zero"
        path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
        message = message.format(line=first + 1)
    elif case == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    elif case == "missing":
        pass
    else:
        path.write_bytes(run_file.read_bytes())
        extra = {
            "after_end": ["--from", "20"],
            "bad_range": ["--from", "5", "--to", "2"],
            "bad_size": ["--width", "300"],
            "unwritable": [],
        }[case]
        if case == "unwritable":
            out = str(tmp_path / "no-such-dir" / "out.png")
            message = message.format(out=out)
    assert plot_cli("run.jsonl", "-o", out, *extra) == 2
    (line,) = err_lines(capsys)
    assert line == f"cer-stream: error: {message}"
    assert not Path(out).exists()


def test_cli_without_matplotlib_says_which_extra(run_file, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    assert plot_cli(str(run_file), "-o", str(tmp_path / "x.png")) == 2
    assert err_lines(capsys) == [
        "cer-stream: error: plot needs matplotlib (the `plot` extra), which is not installed: "
        "pip install 'cer-stream[plot]'"
    ]
    with pytest.raises(PlotError, match=r"cer-stream\[plot\]"):
        plot_run([], tmp_path / "y.png")
    assert '\nplot = ["matplotlib>=3.7"]' in (ROOT / "pyproject.toml").read_text()  # the extra it names
