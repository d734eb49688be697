"""Drawing a frame's analysis onto the frame: the target face's box, the compound label, the top
probabilities as bars, whether the value is provisional or final, and which modalities were
present.  Pure functions over ``H x W x 3`` uint8 RGB arrays (OpenCV primitives), shared by the
annotated video (:mod:`stream.sinks.annotate`) and anything else that shows a frame."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Colours (RGB).
FINAL = (60, 220, 90)
PROVISIONAL = (255, 190, 40)
NO_VALUE = (170, 170, 170)
BAR = (80, 150, 255)
BAR_BACK = (55, 55, 55)
TEXT = (255, 255, 255)
ABSENT = (120, 120, 120)
#: Compound probabilities shown as bars.
TOP_K = 3
#: How dark the panel behind the text is (0: black, 1: unchanged).
PANEL_SHADE = 0.35

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_REF = 480.0  # the sizes below are for a frame whose shorter side is 480 pixels


def _unit(shape: tuple[int, ...]) -> float:
    return max(0.5, min(shape[0], shape[1]) / _REF)


def panel_rect(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Where :func:`draw_overlay` puts its text panel in a frame of ``shape`` (``H, W[, 3]``):
    ``(x0, y0, x1, y1)``, the top-left corner."""
    s = _unit(shape)
    m = int(round(8 * s))
    w = min(int(round(290 * s)), shape[1] - 2 * m)
    h = min(int(round((30 + 22 * TOP_K + 28) * s)), shape[0] - 2 * m)
    return m, m, m + max(w, 1), m + max(h, 1)


def scale_box(box: Sequence[float], src_size: tuple[int, int], dst_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box ``(x0, y0, x1, y1)`` in a ``src_size`` (W, H) frame, in ``dst_size`` pixels."""
    sx = dst_size[0] / max(1, src_size[0])
    sy = dst_size[1] / max(1, src_size[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    return int(round(x0 * sx)), int(round(y0 * sy)), int(round(x1 * sx)), int(round(y1 * sy))


def top_probs(probs: Sequence[float] | None, labels: Sequence[str], k: int = TOP_K) -> list[tuple[str, float]]:
    """The ``k`` most probable ``(label, p)``, most probable first (``[]`` without probabilities)."""
    if probs is None:
        return []
    pairs = [(name, float(p)) for name, p in zip(labels, probs) if p is not None]
    return sorted(pairs, key=lambda x: -x[1])[:k]


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, color, thick: int) -> None:
    cv2.putText(img, text, org, _FONT, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)  # outline: readable anywhere
    cv2.putText(img, text, org, _FONT, scale, color, thick, cv2.LINE_AA)


def draw_overlay(
    rgb: np.ndarray,
    *,
    box: Sequence[float] | None,
    label: str | None,
    probs: Sequence[float] | None,
    labels: Sequence[str],
    final: bool | None,
    present: Sequence[str] | None,
    modalities: Sequence[str] = (),
    basic_label: str | None = None,
    inplace: bool = False,
) -> np.ndarray:
    """``rgb`` with the analysis drawn on it; returns the drawn array (a copy unless ``inplace``
    and ``rgb`` is writeable).

    ``box``: the target face (x0, y0, x1, y1 in ``rgb``'s pixels), or None.  ``label``,
    ``probs`` (compound probabilities in ``labels``' order): the frame's value, or None before
    any prediction.  ``final``: True final, False provisional, None no value.  ``present``: the
    modalities that contributed to the window covering the frame; ``modalities``: all of the
    run's (absent ones are drawn grey).  ``basic_label``: the window's basic expression.
    """
    img = rgb if inplace and rgb.flags.writeable and rgb.flags.c_contiguous else np.ascontiguousarray(rgb).copy()
    s = _unit(img.shape)
    thick = max(1, int(round(1.4 * s)))
    state_color = NO_VALUE if final is None or label is None else (FINAL if final else PROVISIONAL)
    if box is not None:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        cv2.rectangle(img, (x0, y0), (x1, y1), state_color, max(2, int(round(3 * s))), cv2.LINE_AA)

    px0, py0, px1, py1 = panel_rect(img.shape)
    roi = img[py0:py1, px0:px1]
    roi[:] = (roi.astype(np.float32) * PANEL_SHADE).astype(np.uint8)
    pad = int(round(8 * s))
    x = px0 + pad
    y = py0 + int(round(22 * s))
    title = label if label is not None else "no prediction"
    _text(img, title, (x, y), 0.62 * s, TEXT, thick)
    tag = "no value" if final is None or label is None else ("final" if final else "provisional")
    tag_scale = 0.45 * s
    (tw, _), _ = cv2.getTextSize(tag, _FONT, tag_scale, 1)
    _text(img, tag, (px1 - pad - tw, y), tag_scale, state_color, max(1, thick - 1) if s < 1.5 else thick)

    bar_x = x + int(round(150 * s))
    bar_w = max(1, px1 - pad - bar_x)
    bar_h = int(round(14 * s))
    row = int(round(22 * s))
    y = py0 + int(round(32 * s))
    for name, p in top_probs(probs, labels):
        cv2.rectangle(img, (bar_x, y), (bar_x + bar_w, y + bar_h), BAR_BACK, -1)
        cv2.rectangle(img, (bar_x, y), (bar_x + int(round(bar_w * min(max(p, 0.0), 1.0))), y + bar_h), BAR, -1)
        _text(img, name, (x, y + bar_h - int(round(2 * s))), 0.42 * s, TEXT, 1)
        _text(img, f"{p * 100:.0f}%", (bar_x + 4, y + bar_h - int(round(2 * s))), 0.4 * s, TEXT, 1)
        y += row

    y = py1 - int(round(10 * s))
    names = list(modalities) or list(present or [])
    on = set(present or [])
    for name in names:
        color = FINAL if name in on else ABSENT
        _text(img, name, (x, y), 0.42 * s, color, 1)
        (tw, _), _ = cv2.getTextSize(name, _FONT, 0.42 * s, 1)
        x += tw + int(round(8 * s))
        if x >= px1:
            break
    if basic_label:
        tag_scale = 0.4 * s
        text = basic_label.lower()
        (tw, _), _ = cv2.getTextSize(text, _FONT, tag_scale, 1)
        if x + tw < px1 - pad:
            _text(img, text, (px1 - pad - tw, y), tag_scale, TEXT, 1)
    return img


__all__ = ["draw_overlay", "panel_rect", "scale_box", "top_probs"]
