"""Generated test media: valid images in every awkward format, and every kind of bad file."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np


def astronaut():
    """A real portrait (public domain, bundled with scikit-image) as a PIL image."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut())


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def huge_png(path: Path, side: int = 16384) -> None:
    """A genuine side x side grey PNG (256 MP by default), streamed so it costs ~1 s."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + zero pixels
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def write_valid_images(root: Path) -> dict[str, str]:
    """Every format the decoder must accept; returns {file name: what it exercises}."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    face = astronaut()
    grey = face.convert("L")
    files = {}
    deep = (np.asarray(grey, np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(root / "deep16.png")
    files["deep16.png"] = "16-bit grey PNG"
    grey.save(root / "grey.png")
    files["grey.png"] = "8-bit grey PNG"
    face.convert("RGBA").save(root / "rgba.png")
    files["rgba.png"] = "RGBA PNG"
    face.convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.gif")
    files["palette.gif"] = "palette GIF"
    face.convert("CMYK").save(root / "cmyk.jpg", quality=90)
    files["cmyk.jpg"] = "CMYK JPEG"
    face.save(root / "plain.bmp")
    files["plain.bmp"] = "BMP"
    face.save(root / "plain.webp", quality=90)
    files["plain.webp"] = "WebP"
    face.save(root / "plain.tiff")
    files["plain.tiff"] = "TIFF"
    face.save(root / "UPPER.JPG", quality=90)
    files["UPPER.JPG"] = "upper-case extension"
    sideways = face.transpose(Image.Transpose.ROTATE_90)  # stored turned left
    exif = Image.Exif()
    exif[0x0112] = 6  # display needs a 90 degree clockwise turn
    sideways.save(root / "sideways_exif6.jpg", quality=90, exif=exif.tobytes())
    files["sideways_exif6.jpg"] = "EXIF orientation 6"
    return files


def write_bad_images(root: Path, huge: bool = True) -> dict[str, str]:
    """Every bad file the job must turn into an error row; returns {file name: expected type}."""
    root.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    astronaut().save(buf, format="JPEG", quality=90)
    (root / "empty.jpg").write_bytes(b"")
    (root / "cut200.jpg").write_bytes(buf.getvalue()[:200])
    (root / "random.jpg").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "text.png").write_text("this is not a PNG\n" * 20)
    files = {
        "empty.jpg": "EmptyFile",
        "cut200.jpg": "",
        "random.jpg": "UnidentifiedImageError",
        "text.png": "UnidentifiedImageError",
    }
    if huge:
        huge_png(root / "huge_256mp.png")
        files["huge_256mp.png"] = "PixelLimitExceeded"
    return files
