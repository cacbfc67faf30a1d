"""Decode image bytes safely: pixel limit before decoding, EXIF orientation, every mode.

Decoding may happen at a reduced size (JPEG DCT scaling through ``Image.draft``)
when the detector only needs a smaller copy; the reported width and height are
always those of the full, upright image, so boxes map back to original pixels.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from fer_batch.schema import STAGE_DECODE


class MediaError(Exception):
    """A bad input file: becomes an error row at `stage`, and the job goes on."""

    def __init__(self, stage: str, error_type: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.error_type = error_type


@dataclass(frozen=True)
class DecodedImage:
    """Pixels (grey HxW or BGR HxWx3 uint8) at `scale` times the upright original size."""

    pixels: np.ndarray
    width: int
    height: int
    scale: float


_ROTATED_ORIENTATIONS = (5, 6, 7, 8)


def _open(data: bytes, max_pixels: int):
    """Open lazily (header only) and enforce the pixel limit before any decoding."""
    from PIL import Image

    if not data:
        raise MediaError(STAGE_DECODE, "EmptyFile", "file is empty (0 bytes)")
    # Our own limit, read from the header below, replaces Pillow's fixed one: it must be
    # able to go above Pillow's 179 MP and to report the configured option.
    Image.MAX_IMAGE_PIXELS = None
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width * height > max_pixels:
        raise MediaError(
            STAGE_DECODE,
            "PixelLimitExceeded",
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (--max-pixels); not decoded",
        )
    if image.getexif().get(0x0112, 1) in _ROTATED_ORIENTATIONS:
        width, height = height, width
    return image, width, height


@contextmanager
def _as_media_errors():
    """Translate what Pillow raises for bad bytes into MediaError (stage decode)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except MediaError:
        raise
    except UnidentifiedImageError as e:
        message = "not a recognised image format (content does not match any decoder)"
        raise MediaError(STAGE_DECODE, "UnidentifiedImageError", message) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(STAGE_DECODE, type(e).__name__, f"cannot decode image: {e}") from e


def probe_size(data: bytes, max_pixels: int = 2**62) -> tuple[int, int]:
    """Upright (width, height) from the header alone."""
    with _as_media_errors():
        _, width, height = _open(data, max_pixels)
    return width, height


def decode_image(
    data: bytes, max_pixels: int, color: str = "grey", min_scale: float = 1.0
) -> DecodedImage:
    """Decode `data`; `min_scale` allows a reduced decode no smaller than that fraction.

    Raises MediaError for anything a file can be wrong with (empty, truncated, not an
    image, over the pixel limit), never for configuration problems.
    """
    from PIL import ImageOps

    with _as_media_errors():
        image, width, height = _open(data, max_pixels)
        full = image.size
        _draft(image, color, min_scale)
        pixels = _opencv_jpeg(data, image) if color == "rgb" and image.size == full else None
        if pixels is None:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy when it is upright
            pixels = _to_array(image, color)
    if pixels.size == 0:
        raise MediaError(STAGE_DECODE, "EmptyImage", "image has no pixels")
    return DecodedImage(pixels=pixels, width=width, height=height, scale=pixels.shape[1] / width)


def _draft(image, color: str, min_scale: float) -> None:
    """Ask JPEG decoders for a DCT-scaled (and, for grey, luma-only) decode."""
    if image.format != "JPEG":
        return
    width, height = image.size
    scale = min(1.0, min_scale)
    mode = "L" if color == "grey" and image.mode in ("L", "RGB", "YCbCr") else image.mode
    image.draft(mode, (int(width * scale + 0.5), int(height * scale + 0.5)))


# EXIF orientation -> the numpy view that makes the pixels upright (rows, cols, channels),
# as Pillow's ImageOps.exif_transpose turns them.
_UPRIGHT = {
    2: lambda a: a[:, ::-1],  # mirrored
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1],  # mirrored upside down
    5: lambda a: a.transpose(1, 0, 2),  # transposed
    6: lambda a: np.rot90(a, -1),  # a 90 degree clockwise turn
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transversed
    8: lambda a: np.rot90(a, 1),  # a 90 degree counter-clockwise turn
}


def _opencv_jpeg(data: bytes, image) -> np.ndarray | None:
    """A whole 8-bit colour JPEG (asked for at full size), decoded by OpenCV; else None
    (Pillow decodes).

    OpenCV decodes straight to BGR, where Pillow's pixels go through two copies (its own
    RGBX layout to RGB bytes, then RGB to BGR): 12.7 ms against 34.2 ms of CPU per photo on
    ../shared/data/photos, with the same pixels (both are libjpeg-turbo; identical on all
    13 JPEGs there, and in tests/test_images.py). Only files that end with the JPEG end
    marker: libjpeg fills a truncated file's missing rows with grey and OpenCV returns
    them, where Pillow raises (the file's error row). DCT-scaled decodes, grey, CMYK and
    other modes stay with Pillow, as does anything OpenCV declines (its own pixel limit).
    The orientation is Pillow's reading of the EXIF, the one `_open` reports the upright
    size from, not OpenCV's own parser's, so the size and the pixels cannot disagree.
    """
    if (image.format != "JPEG" or image.mode != "RGB"
            or not data[-64:].rstrip(b"\0\r\n\t ").endswith(b"\xff\xd9")):
        return None
    import cv2

    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None
    if pixels is None or pixels.shape[:2] != image.size[::-1]:
        return None
    upright = _UPRIGHT.get(image.getexif().get(0x0112, 1))
    return pixels if upright is None else np.ascontiguousarray(upright(pixels))


def _to_array(image, color: str) -> np.ndarray:
    """Any Pillow mode -> uint8 grey (HxW) or BGR (HxWx3)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        grey = np.clip(array * (255.0 / top), 0, 255).astype(np.uint8)
        return grey if color == "grey" else np.repeat(grey[:, :, None], 3, axis=2)
    if color == "grey":
        if image.mode != "L":
            rgb = image.convert("RGB") if image.mode == "CMYK" else image
            image = rgb.convert("L")
        return np.asarray(image, dtype=np.uint8)
    import cv2

    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
