"""Build the demo archive from photos that installed packages ship (no network, no ../shared).

scikit-image bundles real photographs: a portrait (astronaut), a profile (camera), and
scenes without people. The archive adds a sideways EXIF-rotated copy, a grey copy, a
non-media file and a corrupt file, so the demo shows every kind of row.
"""

from __future__ import annotations

import sys
from pathlib import Path

_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "immunohistochemistry")


def build_archive(root: Path) -> list[Path]:
    """Write the demo archive under `root`; returns the files written."""
    from PIL import Image
    from skimage import data

    (root / "scenes").mkdir(parents=True, exist_ok=True)
    written = []
    for name in _PHOTOS:
        path = root / "scenes" / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        written.append(path)
    portrait = Image.fromarray(data.astronaut())
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = root / "phone" / "IMG_0001.JPG"
    sideways.parent.mkdir(exist_ok=True)
    portrait.transpose(Image.Transpose.ROTATE_90).save(sideways, quality=90, exif=exif.tobytes())
    grey = root / "phone" / "portrait_grey.jpg"
    portrait.convert("L").save(grey, quality=90)
    broken = root / "phone" / "broken.jpg"
    broken.write_bytes(sideways.read_bytes()[:200])
    notes = root / "notes.txt"
    notes.write_text("not media: listed as skipped in the run record\n")
    return [*written, sideways, grey, broken, notes]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "demo/archive")
    files = build_archive(root)
    print(f"demo archive: {len(files)} files under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
