#!/usr/bin/env python3
"""Build the project's sample clip from real material only.

The video is a real photograph (``skimage.data.astronaut()`` by default, a
public-domain NASA portrait) moved by a slow, smooth virtual camera: pan,
zoom and a few degrees of rotation, rendered with :func:`cv2.warpAffine`.
The audio is real synthesised speech from ``espeak-ng`` (a few cheerful
English sentences), padded with silence or trimmed so that it lasts exactly
as long as the video.  The result is an H.264 (libx264, yuv420p) + AAC (mono)
MP4 written with PyAV.  Everything is deterministic for a given set of
arguments and library versions.

Usage as a script::

    python samples/make_sample.py [OUT] [--seconds S] [--fps N] [--no-audio] [--image NAME]

Usage as a module::

    from samples.make_sample import make_sample
    make_sample(tmp_path / "clip.mp4", seconds=3.0, image="retina", audio=False)
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

__all__ = [
    "AUDIO_RATE",
    "DEFAULT_OUT",
    "DEFAULT_TEXT",
    "IMAGES",
    "make_sample",
    "render_frames",
    "synthesize_speech",
    "main",
]

#: Where the CLI writes when no output path is given.
DEFAULT_OUT = Path(__file__).resolve().parent / "astronaut.mp4"

#: Spoken by espeak-ng for the audio track (about 9 s at espeak's default rate).
DEFAULT_TEXT = (
    "Hello there! What a wonderful day to be in space. "
    "The view from up here is absolutely amazing. "
    "I can see the whole planet smiling back at me!"
)

#: Sample rate of the AAC track; espeak-ng's native rate, so no resampling.
AUDIO_RATE = 22050

#: Delay before the speech starts, in seconds.
SPEECH_OFFSET_S = 0.25

#: Fade applied where the speech is cut short, to avoid an audible click.
TRIM_FADE_S = 0.05

_ESPEAK = "espeak-ng"
_ESPEAK_PACKAGE = "espeak-ng"

#: Border colour (RGB) shown where the moving image leaves the frame.
_BORDER_RGB = (16, 16, 16)


@dataclass(frozen=True)
class _Shot:
    """How the virtual camera frames one source image.

    Attributes:
        focus: Point of the source image (x, y) the camera centres on.
        zoom: Base magnification, relative to the "cover the frame" scale
            (``None``) or absolute pixels-per-source-pixel (a float).
        absolute_zoom: Whether ``zoom`` is absolute rather than relative.
        pan: Pan amplitude (x, y) in source pixels.
    """

    focus: tuple[float, float] | None
    zoom: float
    absolute_zoom: bool
    pan: tuple[float, float]


#: Source images that can be used, and how to frame each.  The astronaut's
#: face sits at about x 178-273, y 83-178 in the 512x512 source (~95 px wide),
#: so an absolute zoom of 1.5-1.8 keeps it 140-190 px wide in the output.
#:
#: The others have no face.  "retina", "moon" and "brick" gave no detection in
#: any frame with MediaPipe (short- and full-range models) or OpenCV's Haar
#: cascade; "rocket" is clean for MediaPipe's short-range model and the Haar
#: cascade but the full-range model finds spurious faces in about a third of
#: its frames.  skimage's "coffee" and "chelsea" are deliberately left out:
#: MediaPipe finds "faces" in a third of their frames.
IMAGES: dict[str, _Shot] = {
    "astronaut": _Shot(focus=(230.0, 178.0), zoom=1.5, absolute_zoom=True, pan=(22.0, 10.0)),
    "retina": _Shot(focus=None, zoom=1.05, absolute_zoom=False, pan=(40.0, 20.0)),
    "moon": _Shot(focus=None, zoom=1.05, absolute_zoom=False, pan=(20.0, 10.0)),
    "brick": _Shot(focus=None, zoom=1.05, absolute_zoom=False, pan=(20.0, 10.0)),
    "rocket": _Shot(focus=None, zoom=1.05, absolute_zoom=False, pan=(30.0, 15.0)),
}


def _load_image(name: str) -> np.ndarray:
    """Return the named ``skimage.data`` image as a contiguous RGB uint8 array."""
    if name not in IMAGES:
        raise ValueError(f"unknown image {name!r}; choose one of {sorted(IMAGES)}")
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def _camera(t: float, shot: _Shot, src_hw: tuple[int, int], out_wh: tuple[int, int]) -> np.ndarray:
    """Affine 2x3 matrix mapping source pixels to output pixels at time ``t``.

    The motion is a sum of slow sinusoids with unrelated periods, so it is
    smooth, never repeats within a clip and depends only on ``t``.
    """
    src_h, src_w = src_hw
    out_w, out_h = out_wh
    if shot.focus is None:
        fx, fy = src_w / 2.0, src_h / 2.0
    else:
        fx, fy = shot.focus
    if shot.absolute_zoom:
        base = shot.zoom
    else:
        base = shot.zoom * max(out_w / src_w, out_h / src_h)

    tau = 2.0 * math.pi
    scale = base * (1.0 + 0.10 * (1.0 - math.cos(tau * t / 7.3)))  # 1.0x .. 1.2x
    angle = 3.5 * math.sin(tau * t / 6.1) + 1.0 * math.sin(tau * t / 2.9)  # degrees
    cx = fx + shot.pan[0] * math.sin(tau * t / 8.3)
    cy = fy + shot.pan[1] * math.sin(tau * t / 5.7 + 0.7)

    m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    m[0, 2] += out_w / 2.0 - cx
    m[1, 2] += out_h / 2.0 - cy
    return m


def render_frames(*, seconds: float, fps: int, size: tuple[int, int], image: str = "astronaut") -> Iterator[np.ndarray]:
    """Yield the clip's video frames as ``(height, width, 3)`` RGB uint8 arrays.

    Args:
        seconds: Clip duration; ``round(seconds * fps)`` frames are produced.
        fps: Frame rate.
        size: Output ``(width, height)``.
        image: Name of the ``skimage.data`` image (a key of :data:`IMAGES`).
    """
    src = _load_image(image)
    shot = IMAGES[image]
    n_frames = int(round(seconds * fps))
    for i in range(n_frames):
        m = _camera(i / fps, shot, src.shape[:2], size)
        yield cv2.warpAffine(
            src,
            m,
            size,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=_BORDER_RGB,
        )


def synthesize_speech(text: str) -> np.ndarray:
    """Speak ``text`` with espeak-ng and return mono float32 samples at :data:`AUDIO_RATE`.

    Raises:
        RuntimeError: If espeak-ng is not installed or fails.
    """
    exe = shutil.which(_ESPEAK)
    if exe is None:
        raise RuntimeError(
            f"{_ESPEAK} was not found on PATH; it is needed for the sample's audio track. "
            f"Install the Debian package with `apt-get install {_ESPEAK_PACKAGE}`, "
            "or pass audio=False / --no-audio."
        )
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "speech.wav"
        proc = subprocess.run(
            [exe, "-v", "en-us", "-w", str(wav_path), text],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not wav_path.exists():
            raise RuntimeError(f"{_ESPEAK} failed (exit {proc.returncode}): {proc.stderr.strip()}")
        with wave.open(str(wav_path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise RuntimeError(
                    f"unexpected {_ESPEAK} output: {w.getnchannels()} channel(s), {8 * w.getsampwidth()}-bit"
                )
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    samples = pcm.astype(np.float32) / 32768.0
    if rate != AUDIO_RATE:
        # espeak-ng normally writes 22050 Hz; resample linearly just in case.
        n_out = int(round(len(samples) * AUDIO_RATE / rate))
        x_old = np.arange(len(samples)) / rate
        x_new = np.arange(n_out) / AUDIO_RATE
        samples = np.interp(x_new, x_old, samples).astype(np.float32)
    return samples


def _fit_audio(speech: np.ndarray, seconds: float) -> np.ndarray:
    """Place ``speech`` after a short lead-in and pad/trim it to exactly ``seconds``."""
    total = int(round(seconds * AUDIO_RATE))
    out = np.zeros(total, dtype=np.float32)
    start = min(int(round(SPEECH_OFFSET_S * AUDIO_RATE)), total)
    n = min(len(speech), total - start)
    out[start : start + n] = speech[:n]
    if n < len(speech):
        fade = min(n, int(round(TRIM_FADE_S * AUDIO_RATE)))
        if fade > 0:
            out[start + n - fade : start + n] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return out


def make_sample(
    out_path: str | Path,
    *,
    seconds: float = 10.0,
    fps: int = 25,
    size: tuple[int, int] = (640, 480),
    audio: bool = True,
    image: str = "astronaut",
    text: str = DEFAULT_TEXT,
    crf: int = 28,
    preset: str = "slow",
    keyframe_interval_s: float = 1.0,
) -> Path:
    """Write the sample clip to ``out_path`` and return it as a :class:`Path`.

    Args:
        out_path: Destination ``.mp4`` file; parent directories are created.
        seconds: Duration of both tracks.
        fps: Video frame rate.
        size: Video ``(width, height)``; both must be even (yuv420p).
        audio: Add the espeak-ng speech as a mono AAC track.
        image: ``skimage.data`` image to animate (a key of :data:`IMAGES`):
            ``"astronaut"`` has a face; ``"retina"``, ``"moon"``, ``"brick"``
            and ``"rocket"`` have none (prefer the first three for face-less
            tests, see :data:`IMAGES`).
        text: What espeak-ng says (ignored when ``audio`` is false).
        crf: libx264 constant rate factor (higher is smaller).
        preset: libx264 preset.
        keyframe_interval_s: Maximum distance between keyframes, so a stream
            client joining mid-way soon gets a decodable picture.

    Raises:
        RuntimeError: If ``audio`` is true and espeak-ng is unavailable.
        ValueError: For an unknown image or invalid size / duration / fps.
    """
    width, height = size
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"size must be positive and even, got {size}")
    if seconds <= 0 or fps <= 0:
        raise ValueError("seconds and fps must be positive")
    if image not in IMAGES:
        raise ValueError(f"unknown image {image!r}; choose one of {sorted(IMAGES)}")

    # Synthesize first so a missing espeak-ng fails before anything is written.
    pcm = _fit_audio(synthesize_speech(text), seconds) if audio else None

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    gop = max(1, int(round(keyframe_interval_s * fps)))

    with av.open(str(out), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.width = width
        vstream.height = height
        vstream.pix_fmt = "yuv420p"
        vstream.codec_context.gop_size = gop
        vstream.options = {
            "crf": str(crf),
            "preset": preset,
            "tune": "film",
            "bf": "0",  # no B-frames: simpler, in-order decoding for stream tests
            "keyint_min": str(gop),
            "sc_threshold": "0",  # keyframes strictly every `gop` frames
            "threads": "1",  # deterministic output
        }
        astream = None
        if pcm is not None:
            astream = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
            astream.bit_rate = 48_000

        v_tb = Fraction(1, fps)
        for i, rgb in enumerate(render_frames(seconds=seconds, fps=fps, size=size, image=image)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = v_tb
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))

        if astream is not None and pcm is not None:
            chunk = astream.codec_context.frame_size or 1024
            a_tb = Fraction(1, AUDIO_RATE)
            for start in range(0, len(pcm), chunk):
                block = pcm[start : start + chunk]
                aframe = av.AudioFrame.from_ndarray(block[np.newaxis, :], format="fltp", layout="mono")
                aframe.sample_rate = AUDIO_RATE
                aframe.pts = start
                aframe.time_base = a_tb
                container.mux(astream.encode(aframe))
            container.mux(astream.encode(None))
    return out


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help="output .mp4 (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration (default: %(default)s)")
    parser.add_argument("--fps", type=int, default=25, help="frame rate (default: %(default)s)")
    parser.add_argument("--no-audio", action="store_true", help="write a video-only file")
    parser.add_argument(
        "--image", default="astronaut", choices=sorted(IMAGES), help="source image (default: %(default)s)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = _parse_args(argv)
    try:
        path = make_sample(args.out, seconds=args.seconds, fps=args.fps, audio=not args.no_audio, image=args.image)
    except (RuntimeError, ValueError) as exc:
        print(f"make_sample: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
