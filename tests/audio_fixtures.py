"""Real audio for the speech tests: decoded with PyAV, spoken by espeak-ng."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

RATE = 16000


def decode_16k(path: str | Path) -> np.ndarray:
    """The first audio stream of ``path`` as float32 16 kHz mono (as the capture process resamples)."""
    from stream.io.capture import decode_audio_file

    return decode_audio_file(path)


def espeak(text: str, path: Path, *, lead_s: float = 0.5, tail_s: float = 0.5) -> np.ndarray:
    """``text`` spoken by espeak-ng, at 16 kHz, with silence before and after."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng (Debian) is not installed")
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    speech = decode_16k(path)
    return np.concatenate([np.zeros(int(lead_s * RATE), np.float32), speech, np.zeros(int(tail_s * RATE), np.float32)])


def windows_of(audio: np.ndarray):
    """(Window, samples) for each analysis window of ``audio``, as the analyzer slices them."""
    from stream.core.windows import plan_windows

    for w in plan_windows(audio.shape[0] / RATE):
        a, b = int(round(w.start * RATE)), int(round(w.end * RATE))
        chunk = audio[a:b]
        if chunk.shape[0] < b - a:
            chunk = np.pad(chunk, (0, b - a - chunk.shape[0]))
        yield w, chunk


def window_input(window, audio):
    """A WindowInput with no frames (audio-only modalities)."""
    from stream.modalities.base import WindowInput

    return WindowInput(window, 25.0, [], [], audio, 1.0 if audio is not None else 0.0)
