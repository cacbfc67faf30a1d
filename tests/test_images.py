"""Image decoding: whole colour JPEGs go through OpenCV, and give Pillow's pixels exactly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

import fer_batch.images as images
from fer_batch.images import MediaError, decode_image
from tests.media import astronaut


def jpeg(orientation: int = 1, **save) -> bytes:
    """An asymmetric photo (so that every turn and mirror differs) as JPEG bytes."""
    photo = Image.fromarray(np.asarray(astronaut())[40:340, 60:260].copy())  # 200x300 RGB
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=90, exif=exif.tobytes(), **save)
    return out.getvalue()


def pillow_bgr(data: bytes) -> np.ndarray:
    """The reference: Pillow's decode, turned upright, as BGR."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert("RGB"))
    return np.asarray(image)[:, :, ::-1]


@pytest.fixture
def opencv_calls(monkeypatch) -> list[int]:
    import cv2

    calls: list[int] = []
    real = cv2.imdecode

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(cv2, "imdecode", counted)
    return calls


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_colour_jpeg_decodes_through_opencv_to_pillows_upright_pixels(opencv_calls,
                                                                      orientation):
    data = jpeg(orientation)
    decoded = decode_image(data, 10**8, "rgb")
    assert opencv_calls == [1]
    reference = pillow_bgr(data)
    assert decoded.pixels.shape == reference.shape
    assert (decoded.width, decoded.height) == reference.shape[1::-1]
    assert decoded.scale == 1.0 and decoded.pixels.flags.c_contiguous
    np.testing.assert_array_equal(decoded.pixels, reference)


def test_progressive_jpeg_gives_pillows_pixels_too(opencv_calls):
    data = jpeg(6, progressive=True)
    np.testing.assert_array_equal(decode_image(data, 10**8, "rgb").pixels, pillow_bgr(data))
    assert opencv_calls == [1]


def test_a_truncated_jpeg_is_still_a_decode_error(opencv_calls):
    """OpenCV would return a truncated file's missing rows as grey; Pillow raises."""
    data = jpeg()
    with pytest.raises(MediaError) as err:
        decode_image(data[: len(data) * 2 // 3], 10**8, "rgb")
    assert err.value.stage == "decode" and opencv_calls == []


@pytest.mark.parametrize("case", ["grey output", "grey jpeg", "cmyk", "reduced", "png"])
def test_other_decodes_stay_with_pillow(opencv_calls, case):
    photo = Image.open(io.BytesIO(jpeg()))
    out = io.BytesIO()
    if case == "grey jpeg":
        photo.convert("L").save(out, "JPEG")
    elif case == "cmyk":
        photo.convert("CMYK").save(out, "JPEG")
    elif case == "png":
        photo.save(out, "PNG")
    data = out.getvalue() or jpeg()
    color = "grey" if case == "grey output" else "rgb"
    min_scale = 0.5 if case == "reduced" else 1.0
    decoded = decode_image(data, 10**8, color, min_scale)
    assert opencv_calls == []
    assert decoded.pixels.ndim == (2 if color == "grey" else 3)
    if case == "reduced":
        assert decoded.pixels.shape[:2] == (150, 100) and decoded.scale == 0.5


def test_the_opencv_path_covers_every_exif_orientation():
    assert sorted(images._UPRIGHT) == list(range(2, 9))
