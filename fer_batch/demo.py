"""Build the demo archive from photos that installed packages ship (no network, no ../shared).

scikit-image bundles real photographs: a portrait (astronaut), a profile (camera), and
scenes without people. The archive adds a sideways EXIF-rotated copy, a grey copy, a
non-media file, a corrupt file, and a short video (a slow pan and zoom over the
astronaut), so the demo shows every kind of row, timestamps and a face track.
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
    video = write_pan_video(root / "video" / "astronaut_pan.avi", data.astronaut())
    return [*written, sideways, grey, broken, notes, video]


def write_pan_video(path: Path, rgb, seconds: float = 8.0, fps: int = 10,
                    size: tuple[int, int] = (480, 360)):
    """A camera moving slowly across `rgb` and zooming in: each frame is a window of the
    photo, from the whole of it to 60% of it around the face, resized to `size` (MJPG in
    AVI, which every OpenCV build writes and reads)."""
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    height, width = bgr.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    frames = int(seconds * fps)
    for i in range(frames):
        t = i / max(1, frames - 1)
        side = (1.0 - 0.4 * t) * min(width, height)
        cx = width / 2 + t * (225 - width / 2)   # towards the face (about x=225, y=115)
        cy = height / 2 + t * (150 - height / 2)
        x0 = int(np.clip(cx - side / 2, 0, width - side))
        y0 = int(np.clip(cy - side / 2, 0, height - side))
        window = bgr[y0:y0 + int(side), x0:x0 + int(side)]
        writer.write(cv2.resize(window, size, interpolation=cv2.INTER_AREA))
    writer.release()
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "demo/archive")
    files = build_archive(root)
    print(f"demo archive: {len(files)} files under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
