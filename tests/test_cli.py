"""The command line's behaviour on good and bad input (real subprocesses)."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cer_stream, records

from stream.core.labels import BASIC, COMPOUND
from stream.core.redact import redact


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    import cv2
    from skimage import data

    d = tmp_path_factory.mktemp("img")
    cv2.imwrite(str(d / "astronaut.png"), data.astronaut()[:, :, ::-1])
    cv2.imwrite(str(d / "bricks.png"), np.stack([data.brick()] * 3, axis=-1))
    (d / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return d


def test_images_real_face_and_faceless(images):
    proc = cer_stream("images", str(images / "astronaut.png"), str(images / "bricks.png"), check=True)
    face, none = records(proc.stdout)
    assert face["path"].endswith("astronaut.png") and face["face"] is True
    assert list(face["basic"]) == list(BASIC) and list(face["compound"]) == list(COMPOUND)
    assert max(face["basic"], key=face["basic"].get) == "Happiness"
    assert face["label"] == "Happily Surprised"  # Happiness + Surprise is the biggest pair sum
    assert abs(sum(face["compound"].values()) - 1) < 1e-3
    assert none == {"path": str(images / "bricks.png"), "face": False, "basic": None, "compound": None, "label": None}


def test_images_bad_files_are_reported_and_others_still_analysed(images):
    proc = cer_stream("images", str(images / "broken.jpg"), str(images / "missing.png"), str(images / "astronaut.png"))
    assert proc.returncode == 1
    recs = records(proc.stdout)
    assert [r.get("error") for r in recs] == ["not a readable image", "no such file", None]
    assert recs[2]["face"] is True
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 2


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cer-stream: error: ")
    for n in needles:
        assert n in lines[0], lines[0]
    assert proc.stdout == ""
    return lines[0]


def test_missing_file(tmp_path):
    _one_line_error(cer_stream("--video", str(tmp_path / "nope.mp4")), "no such file")


def test_directory_is_not_a_file(tmp_path):
    _one_line_error(cer_stream("--video", str(tmp_path)), "not a file")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    _one_line_error(cer_stream("--video", str(bad)), "cannot open video file", "Invalid data")


def test_file_without_video_stream_and_audio_off(audio_only):
    # with its audio it runs audio-only (tests/test_audio_only.py); with --no-audio nothing is left
    _one_line_error(cer_stream("--video", str(audio_only), "--no-audio"), "no video stream")


def test_camera_not_found():
    dev = next(i for i in range(64) if not Path(f"/dev/video{i}").exists())
    _one_line_error(cer_stream("--camera", str(dev)), f"camera {dev} not found", f"/dev/video{dev}")


def test_bad_camera_spec():
    _one_line_error(cer_stream("--camera", "front"), "bad camera")


def test_bad_rtsp_url():
    _one_line_error(cer_stream("--rtsp", "http://127.0.0.1/stream"), "bad RTSP URL")


def test_unreachable_rtsp_never_shows_the_password(refused_port):
    port = refused_port
    line = _one_line_error(
        cer_stream("--rtsp", f"rtsp://admin:hunter2@127.0.0.1:{port}/live", "--timeout", "3"),
        "cannot open RTSP stream",
        "Connection refused",
    )
    assert "hunter2" not in line and "admin:***@" in line


def test_mic_only_with_camera(sample):
    _one_line_error(cer_stream("--video", str(sample), "--mic"), "--mic")


def test_pfsa_without_calibration(sample):
    _one_line_error(cer_stream("--video", str(sample), "--compound", "pfsa"), "pfsa")


def test_bad_calibration_file(sample, tmp_path):
    f = tmp_path / "cal.json"
    f.write_text(json.dumps({"format": "something-else"}))
    _one_line_error(cer_stream("--video", str(sample), "--fusion", str(f)), "not a calibration file")


def test_unwritable_output(sample, tmp_path):
    _one_line_error(
        cer_stream("--video", str(sample), "--out", str(tmp_path / "no" / "dir" / "x.jsonl")), "No such file"
    )


def test_camera_capture_where_a_device_exists():
    devices = sorted(Path("/dev").glob("video*"))
    if not devices:
        pytest.skip("no V4L2 device on this machine")
    proc = cer_stream("--camera", devices[0].as_posix(), "--timeout", "5", timeout=60)
    assert proc.returncode in (0, 2)
    if proc.returncode == 0:
        assert records(proc.stdout)[0]["source"] == "camera"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("rtsp://admin:pw@10.0.0.1/s", "rtsp://admin:***@10.0.0.1/s"),
        ("open rtsp://u:p%40ss@host:554/a failed", "open rtsp://u:***@host:554/a failed"),
        ("rtsp://host/live?token=abc&x=1", "rtsp://host/live?token=***&x=1"),
        ("rtsp://host/live", "rtsp://host/live"),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("password", ["p@ss", "a:b", "x/y", "p%40ss", "@:/%40@", "s3cr@t:pw/x@"])
def test_redact_passwords_with_special_characters(password):
    text = f"cannot open rtsp://alice:{password}@127.0.0.1:8554/x (timeout)"
    out = redact(text)
    assert out == "cannot open rtsp://alice:***@127.0.0.1:8554/x (timeout)"
    assert (
        redact(f'{{"input": "rtsp://alice:{password}@h/x", "y": "q@r"}}')
        == '{"input": "rtsp://alice:***@h/x", "y": "q@r"}'
    )


def test_redact_long_text_around_urls():
    # matches start only at "://": a long word (a warning carrying a big payload) is read once,
    # not once per letter as a possible scheme (that took 0.5 s for 20 kB, minutes for 200 kB)
    word = "aB3dE9f-" * 25_000
    text = f"{word} rtsp://alice:s3cr@t@h/x {word}?token=abc {word}"
    out = redact(text)
    assert out == f"{word} rtsp://alice:***@h/x {word}?token=*** {word}"
    assert redact(word) == word


def test_redact_leaves_paths_with_at_signs():
    assert redact("rtsp://host/pa@th") == "rtsp://host/pa@th"
    assert redact("rtsp://bob@corp.com:pw@host/x") == "rtsp://bob@corp.com:***@host/x"


def test_redact_process_args_rewrites_proc_cmdline():
    import subprocess
    import sys

    code = (
        "import sys; from stream.core.redact import redact_process_args; "
        "assert redact_process_args(); print(open('/proc/self/cmdline','rb').read().decode())"
    )
    url = "rtsp://alice:p@ss:w/rd@127.0.0.1:8554/x"
    proc = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "p@ss" not in proc.stdout and "rtsp://alice:***@127.0.0.1:8554/x" in proc.stdout
