"""The public Python API: README's code, typed records, several runs on one pipeline,
observers, stopping early, sources and options."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)


def readme_blocks() -> list[str]:
    """The Python API page's examples (docs/python.md)."""
    return python_blocks(ROOT / "docs" / "python.md")


#: Every other Python block of the README and the documentation, as (file, block number): the
#: API page's two are run (and their output read) by test_readme_code_runs_as_scripts.
DOC_BLOCKS = [
    (path.relative_to(ROOT).as_posix(), i)
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for i in range(len(python_blocks(path)))
    if path.name != "python.md"
]


def _python(tmp_path: Path, code: str, *, how: str = "file") -> str:
    """Run ``code`` the way a user does, from the repository's folder: saved as a script and run
    (``file``), fed to ``python -`` (``stdin``: like a notebook, no ``__main__`` file to import),
    or inside a thread of that script (``thread``); its standard output."""
    if how == "thread":
        body = "\n".join("    " + line for line in code.splitlines())
        code = f"import threading\n\n\ndef job():\n{body}\n\n\nt = threading.Thread(target=job)\nt.start()\nt.join()\n"
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    cmd = [sys.executable, "-"] if how == "stdin" else [sys.executable, str(script)]
    proc = subprocess.run(
        cmd, input=code if how == "stdin" else None, capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_readme_code_runs_as_scripts(tmp_path):
    """The Python API page's code (docs/python.md), as written, saved to a file and run with python
    (no main guard: the capture process must not re-import the user's script), on
    samples/astronaut.mp4."""
    blocks = readme_blocks()
    assert len(blocks) == 2
    out = _python(tmp_path, blocks[0]).splitlines()
    assert [line.split()[0] for line in out[:4]] == ["0", "1", "2", "3"]  # the four windows
    assert "Happily Surprised" in out[0] and "'reason': 'eof'" in out[4]
    out = _python(tmp_path, blocks[1]).splitlines()
    assert out[0].startswith("['Happily Surprised'") and "'detect'" in out[0] and "'emotion'" in out[0]


def test_every_python_block_of_the_docs_runs_as_a_script(tmp_path):
    """Whatever the README and docs/ show in Python runs when saved to a file and run as written
    (the API page's two examples, whose output is read too, are the next test's)."""
    assert len(python_blocks(ROOT / "docs" / "python.md")) == 2  # the scan finds what is there
    for where, number in DOC_BLOCKS:
        _python(tmp_path, python_blocks(ROOT / where)[number])


@pytest.mark.parametrize("how", ["stdin", "thread"])
def test_a_pipeline_starts_from_a_notebook_or_a_thread(tmp_path, how):
    block = readme_blocks()[0]
    out = _python(tmp_path, block, how=how).splitlines()
    assert [line.split()[0] for line in out[:4]] == ["0", "1", "2", "3"] and "'reason': 'eof'" in out[4]


class Recorder:
    def __init__(self):
        self.stages = []
        self.windows = []
        self.calls = []
        self.pids = None

    def on_stage(self, name, ms, window_index, frames):
        self.stages.append((name, ms, window_index, list(frames)))

    def on_window(self, record):
        self.windows.append(record)

    def on_face_call(self, call):
        self.calls.append(call)

    def on_capture(self, pids):
        self.pids = pids


@pytest.fixture(scope="module")
def face_pipeline():
    from stream import Pipeline, PipelineOptions

    recorder = Recorder()
    with Pipeline(PipelineOptions(modalities=["face"], observers=[recorder])) as p:
        yield p, recorder


def test_typed_records_and_two_runs_on_one_pipeline(face_pipeline, sample):
    from stream import EndRecord, FileSource, FramesRecord, StartRecord, WindowRecord
    from stream.runtime.records import from_dict

    pipeline, _ = face_pipeline
    face = pipeline.face
    runs = [list(pipeline.run(FileSource(sample))) for _ in range(2)]
    assert pipeline.face is face  # models load once
    for recs in runs:
        assert isinstance(recs[0], StartRecord) and recs[0].modalities == ["face"]
        assert isinstance(recs[-1], EndRecord) and recs[-1].reason == "eof" and recs[-1].windows == 4
        wins = [r for r in recs if isinstance(r, WindowRecord)]
        assert [w.frames for w in wins] == [(0, 100), (50, 150), (100, 200), (150, 250)]
        finals = [i for r in recs if isinstance(r, FramesRecord) and r.final for i in r.frame_index]
        assert finals == list(range(250))  # each frame final exactly once
        for r in recs:
            assert from_dict(r.to_dict()).to_dict() == r.to_dict()
    labels = [[w.label for w in recs if w.type == "window"] for recs in runs]
    assert labels[0] == labels[1] == ["Happily Surprised"] * 4


def test_observers_get_stage_times_per_frame_and_windows(face_pipeline, sample):
    from stream import FileSource

    pipeline, rec = face_pipeline
    rec.__init__()
    recs = list(pipeline.run(FileSource(sample)))
    assert rec.pids and all(isinstance(p, int) for p in rec.pids)
    assert [w.index for w in rec.windows] == [0, 1, 2, 3]
    assert rec.windows == [r for r in recs if r.type == "window"]
    by = {}
    for name, ms, k, frames in rec.stages:
        assert ms >= 0
        by.setdefault(name, []).append((k, frames))
    # 50 analysed frames, each detected, validated and classified once
    for stage in ("detect", "validate", "emotion"):
        frames = [f for _, fr in by[stage] for f in fr]
        assert len(frames) == 50 and len(set(frames)) == 50, stage
    assert sum(len(fr) for _, fr in by["face_analysis"]) == 50
    assert [k for k, _ in by["face"]] == [0, 1, 2, 3] and len(by["fusion"]) == 4
    assert sum(len(c.frames) for c in rec.calls) == 50
    assert all(len(c.results) == len(c.times) == len(c.frames) for c in rec.calls)
    assert all(t.found for c in rec.calls for t in c.times)  # the astronaut is in every frame


def test_stopping_early_then_running_again(face_pipeline, sample):
    from stream import FileSource

    pipeline, _ = face_pipeline
    gen = pipeline.run(FileSource(sample))
    first = next(r for r in gen if r.type == "window")
    gen.close()  # leaving the loop stops the run (capture processes included)
    assert first.index == 0
    again = [r for r in pipeline.run(FileSource(sample)) if r.type == "end"]
    assert again[0].windows == 4


def test_push_source_live_never_blocks_and_skips_when_behind(face_pipeline, sample):
    """A live PushSource: frames pushed much faster than real time never block the caller; the
    analyzer drops the oldest and skips windows to keep up, as with a camera."""
    import threading

    import av

    from stream import PushSource

    pipeline, _ = face_pipeline
    source = PushSource(fps=25.0, audio=False, live=True)
    with av.open(str(sample)) as container:
        frames = [(f.to_ndarray(format="rgb24"), f.time) for f in container.decode(video=0)]

    def capture():  # 60 s of media pushed in a moment
        for rep in range(6):
            for img, t in frames:
                source.push_frame(img, t + 10.0 * rep)
        source.end()

    t = threading.Thread(target=capture)
    t.start()
    recs = list(pipeline.run(source))
    t.join()
    end = recs[-1]
    assert end.type == "end" and end.reason == "eof" and end.frames == 1500
    assert end.drops["video_ring"] > 0 or end.windows_skipped > 0


def test_sources_check_their_input(tmp_path):
    from stream import (
        CameraSource,
        FileSource,
        MicrophoneSource,
        RtspSource,
        SourceError,
    )

    with pytest.raises(SourceError, match="no such file"):
        FileSource(tmp_path / "nope.mp4").check()
    with pytest.raises(SourceError, match="bad RTSP URL"):
        RtspSource("http://cam").check()
    with pytest.raises(SourceError, match="bad camera"):
        CameraSource("front").check()
    cam = CameraSource(0, mic=MicrophoneSource("hw:1"))
    assert (cam.kind, cam.target, cam.mic, cam.audio, cam.name) == ("camera", "0", "hw:1", False, "camera0")


def test_every_exported_options_name_is_a_class_of_its_own():
    """No alias classes (WindowOptions was RuntimeOptions, TextOptions AudioOptions): each option
    class has one name, and there are no window options (the method's 4 s / 2 s windows)."""
    import stream

    options = [n for n in stream.__all__ if n.endswith("Options")]
    classes = [getattr(stream, n) for n in options]
    assert all(c.__name__ == n for n, c in zip(options, classes))
    assert len(set(classes)) == len(classes)
    for gone in ("WindowOptions", "TextOptions"):
        assert not hasattr(stream, gone)


def test_options_are_typed_keyword_only_with_the_command_lines_defaults():
    from stream import FaceOptions, PipelineOptions
    from stream.cli.flags import pipeline_options
    from stream.cli.main import run_parser

    with pytest.raises(TypeError):
        FaceOptions("paper")  # keyword-only
    with pytest.raises(ValueError, match="unknown modalities"):
        PipelineOptions(modalities=["face", "smell"])
    cli = pipeline_options(run_parser().parse_args(["--video", "x.mp4"]))
    assert cli == PipelineOptions()
    cli = pipeline_options(
        run_parser().parse_args(
            [
                "--video",
                "x.mp4",
                "--face-model",
                "faceapi",
                "--compound",
                "rule2",
                "--vlm-url",
                "http://h/v1",
                "--no-frames",
                "--speech-lag",
                "3",
            ]
        )
    )
    assert (cli.face.model, cli.fusion.compound, cli.scene.url, cli.runtime.emit_frames, cli.audio.max_lag) == (
        "faceapi",
        "rule2",
        "http://h/v1",
        False,
        3,
    )


def test_a_live_run_lets_the_voice_and_words_be_as_late_as_asked():
    """``AudioOptions.max_lag`` (``--speech-lag``) is what a live run's voice and words get; a
    file's run waits for them and wraps neither."""
    from stream import PipelineOptions
    from stream.modalities.audio import AudioOptions
    from stream.modalities.base import LaggedModality
    from stream.runtime.build import build_modalities

    opts = PipelineOptions(audio=AudioOptions(max_lag=3), modalities=["face", "audio", "text"])
    for live, want in ((True, [3, 3]), (False, [])):
        mods = build_modalities(opts, None, live=live)
        try:
            assert [m.max_lag for m in mods if isinstance(m, LaggedModality)] == want
            assert [m.name for m in mods] == ["face", "audio", "text"]
        finally:
            for m in mods:
                m.close()


def test_no_argparse_below_the_command_line():
    """Nothing below the command line knows argparse: every command maps its flags onto options."""
    proc = subprocess.run(
        ["grep", "-rlE", r"argparse|Namespace|from_args", "stream", "--include=*.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    hits = {p for p in proc.stdout.split() if not p.startswith("stream/cli/")}
    assert not hits, hits
    for sub in ("runtime", "io", "fusion", "sinks", "core"):
        assert not any(h.startswith(f"stream/{sub}/") for h in hits)


def test_top_level_help_lists_every_subcommand():
    from stream.cli.main import COMMANDS, run_parser

    text = run_parser().format_help()
    for name in COMMANDS:
        assert re.search(rf"^\s+{re.escape(name)}\s", text, re.MULTILINE), name
