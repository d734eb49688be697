"""stream.modalities.face_crops: crop geometry for each square mode, margins, borders, on a real photograph."""

from __future__ import annotations

import numpy as np
import pytest

from stream.modalities.face import expand_box
from stream.modalities.face_crops import DEFAULT, FACEAPI, FER, CropSpec, crop_box, crop_face

skimage_data = pytest.importorskip("skimage.data")

#: The astronaut's face in skimage.data.astronaut() (512x512): a tall box, in pixels.
FACE = (170, 40, 260, 160)  # 90 wide, 120 high


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    img = skimage_data.astronaut()
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    return img


def test_plain_box_is_the_box_pixels(rgb):
    crop = crop_face(rgb, FACE, CropSpec())
    assert crop.shape == (120, 90, 3) and crop.dtype == np.uint8
    assert np.array_equal(crop, rgb[40:160, 170:260])
    assert crop.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("margin", [0.1, 0.2, 0.3])
def test_margin_is_a_fraction_of_each_side(rgb, margin):
    crop = crop_face(rgb, FACE, CropSpec(margin=margin))
    dx, dy = round(90 * margin), round(120 * margin)
    assert crop.shape[:2] == (120 + 2 * dy, 90 + 2 * dx)
    assert np.array_equal(crop, rgb[40 - dy : 160 + dy, 170 - dx : 260 + dx])


def test_default_cuts_what_stream_face_cut(rgb):
    """DEFAULT reproduces the project's former crop (expand_box with 10 %) pixel for pixel,
    also for a fractional box and one that reaches past the border."""
    for box in [(170.4, 40.6, 259.7, 160.2), (-12.3, 5.5, 80.2, 120.9), (450.0, 430.5, 511.9, 511.0)]:
        x0, y0, x1, y1 = expand_box(box, 0.10, 512, 512)
        assert np.array_equal(crop_face(rgb, box, DEFAULT), rgb[y0:y1, x0:x1])


def test_margin_in_pixels(rgb):
    crop = crop_face(rgb, FACE, CropSpec(margin_px=(10, 5)))
    assert crop.shape[:2] == (130, 110)
    assert np.array_equal(crop, rgb[35:165, 160:270])


def test_square_expand_grows_the_short_side_from_image_pixels(rgb):
    spec = CropSpec(square="expand")
    assert crop_box(FACE, spec) == (155, 40, 275, 160)  # 90 -> 120 wide, centred
    crop = crop_face(rgb, FACE, spec)
    assert crop.shape == (120, 120, 3)
    assert np.array_equal(crop, rgb[40:160, 155:275])  # real pixels, not padding
    wide = (100, 200, 220, 260)  # 120 x 60: the height grows
    assert crop_box(wide, spec) == (100, 170, 220, 290)


def test_square_expand_then_margin(rgb):
    spec = CropSpec(margin=0.25, square="expand")
    assert crop_box(FACE, spec) == (125, 10, 305, 190)  # 120 + 2 * 30
    assert crop_face(rgb, FACE, spec).shape == (180, 180, 3)


def test_square_pad_keeps_the_box_and_pads_centred(rgb):
    crop = crop_face(rgb, FACE, CropSpec(square="pad"))
    assert crop.shape == (120, 120, 3)
    assert np.array_equal(crop[:, 15:105], rgb[40:160, 170:260])
    assert not crop[:, :15].any() and not crop[:, 105:].any()  # zeros left and right
    grey = crop_face(rgb, FACE, CropSpec(square="pad", pad_value=128))
    assert (grey[:, :15] == 128).all()
    assert FACEAPI.square == "pad" and crop_face(rgb, FACE, FACEAPI).shape == (120, 120, 3)


def test_shift_moves_the_box_by_a_fraction_of_its_height(rgb):
    assert crop_box(FACE, CropSpec(shift_y=0.1)) == (170, 52, 260, 172)
    assert crop_box(FACE, CropSpec(shift_y=-0.1)) == (170, 28, 260, 148)


CORNER = (-20, -30, 60, 50)  # reaches 20 px left and 30 px above the photo


def test_border_clip_keeps_only_the_inside(rgb):
    crop = crop_face(rgb, CORNER, CropSpec())
    assert crop.shape == (50, 60, 3)
    assert np.array_equal(crop, rgb[0:50, 0:60])


def test_border_zero_pads_with_black(rgb):
    crop = crop_face(rgb, CORNER, CropSpec(border="zero"))
    assert crop.shape == (80, 80, 3)
    assert not crop[:30].any() and not crop[:, :20].any()
    assert np.array_equal(crop[30:, 20:], rgb[0:50, 0:60])


def test_border_edge_repeats_the_outer_pixels(rgb):
    crop = crop_face(rgb, CORNER, CropSpec(border="edge"))
    assert crop.shape == (80, 80, 3)
    assert np.array_equal(crop[30:, 20:], rgb[0:50, 0:60])
    assert np.array_equal(crop[0, 20:], rgb[0, 0:60])  # the top row repeated upwards
    assert np.array_equal(crop[35, :20], np.repeat(rgb[5, 0][None], 20, axis=0))


def test_border_mean_is_fers_fill(rgb):
    crop = crop_face(rgb, CORNER, CropSpec(border="mean"))
    fill = np.round(rgb[-2:].reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    assert (crop[:30] == fill).all() and (crop[:, :20] == fill).all()


def test_border_limit_clips_past_the_padding(rgb):
    crop = crop_face(rgb, CORNER, CropSpec(border="zero", border_limit=10))
    assert crop.shape == (60, 70, 3)  # 10 px of padding, the rest clipped
    assert np.array_equal(crop[10:, 10:], rgb[0:50, 0:60])


def test_fer_convention_matches_fers_own_arithmetic(rgb):
    """FER reproduces fer's FER.detect_emotions geometry (tosquare, 10 px offsets, 40 px mean
    padding of the grey frame) on the same integer box; the grey crop equals what fer cuts."""
    import cv2

    from engines.models.mini_xception import crop_face as fer_crop

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    for box in [FACE, CORNER, (440, 300, 530, 420)]:
        x0, y0, x1, y1 = box
        theirs = fer_crop(bgr, (x0, y0, x1 - x0, y1 - y0))
        ours = cv2.cvtColor(crop_face(rgb, box, FER), cv2.COLOR_RGB2GRAY)
        assert ours.shape == theirs.shape
        # the padded fill: fer takes the grey mean of the grey frame's bottom rows, we take the
        # grey of the RGB mean; the image pixels are identical
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_grey_images_and_errors(rgb):
    grey = rgb[:, :, 1].copy()
    assert crop_face(grey, FACE, CropSpec(square="pad")).shape == (120, 120)
    assert crop_face(grey, CORNER, CropSpec(border="edge")).shape == (80, 80)
    with pytest.raises(ValueError, match="outside"):
        crop_face(rgb, (600, 600, 700, 700), CropSpec())
    with pytest.raises(ValueError, match="empty"):
        crop_face(rgb, (10, 10, 10, 50), CropSpec())
    with pytest.raises(ValueError):
        CropSpec(square="circle")
    with pytest.raises(ValueError):
        CropSpec(border="wrap")
    with pytest.raises(TypeError):
        crop_face(rgb.astype(np.float32), FACE, CropSpec())
