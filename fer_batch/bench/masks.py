"""Faces behind face masks: does the detector still find them, and at which sizes?

Street photos of people in masks are a common archive (issue 11's street set was mostly
masked faces), and the shared photos have none. So masks are drawn on: each face the
detector finds in a photo, with its eyes and nose tip, gets a flat mask from the nose
bridge to under the chin, cheek to cheek (`draw_masks`; surgical blue, white or black in
turn). Then, for each face and each size in `--sizes` (Haar's convention, as `--min-face`),
the photo is shrunk so that this face is that size (never enlarged), and the detector runs
on it with and without the masks (row `as-is`: every face of the photo at its own size,
the crowd's small faces included). A face counts as found when a box overlaps its own at an
IoU of 0.4 or more. Boxes over no face of the photo are counted as `other`.

    python -m fer_batch.bench.masks ../shared/data/photos [--min-score 0.65 0.55] [--first-look]

`--first-look` adds, for each `--min-score`, the detector without its second look (the
first look's candidates and scores), to measure what the second look does to masked faces.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

SIZES = (50, 65, 80, 120)
MASK_COLOURS = ((225, 205, 170), (240, 240, 240), (50, 50, 50))  # BGR: surgical, white, black
MATCH_IOU = 0.4
AS_IS = "as-is"  # the row of every face at its own size, the photo unshrunk


def mask_polygon(box: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """(8, 2) int32 corners of a mask over a face: from a little above the nose tip (55% of
    the way from the eyes' height to the nose tip's) to 8% of the box below its bottom,
    the box's width and a little more, narrowing to the chin. `box` x, y, w, h; keypoints
    (3, 2): the two eyes and the nose tip."""
    x, y, w, h = (float(v) for v in box)
    eyes = (keypoints[0, 1] + keypoints[1, 1]) / 2
    top = 0.45 * eyes + 0.55 * keypoints[2, 1]
    bottom = y + 1.08 * h
    span = bottom - top
    return np.rint([[x - 0.02 * w, top + 0.1 * span], [x + 0.25 * w, top],
                    [x + 0.75 * w, top], [x + 1.02 * w, top + 0.1 * span],
                    [x + 0.95 * w, bottom - 0.2 * span], [x + 0.6 * w, bottom],
                    [x + 0.4 * w, bottom], [x + 0.05 * w, bottom - 0.2 * span]]).astype(np.int32)


def draw_masks(pixels: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """A copy of BGR `pixels` with a mask on each face that has keypoints, the colours of
    MASK_COLOURS in turn."""
    import cv2

    out = pixels.copy()
    for i, (box, points) in enumerate(zip(boxes, keypoints)):
        if np.isnan(points).any():
            continue
        cv2.fillPoly(out, [mask_polygon(box, points)], MASK_COLOURS[i % len(MASK_COLOURS)])
    return out


def measure(photos: list[Path], detectors: dict[str, Any], reference: Any,
            sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    """Per detector and size (and `as-is`): faces, those found bare and masked, and the
    boxes over no face of the photo.

    `reference` finds each photo's faces (and their keypoints) at full size."""
    import cv2

    from fer_batch.detect import HAAR_SIDE
    from fer_batch.tracking import iou_matrix

    rows: dict[str, dict[str, dict[str, Any]]] = {
        name: {str(s): {"faces": 0, "bare": 0, "masked": 0, "other_bare": 0, "other_masked": 0}
               for s in (AS_IS, *sizes)} for name in detectors}

    def count(size: str, kind: str, small: np.ndarray, faces: np.ndarray,
              scored: np.ndarray) -> None:
        for name, detector in detectors.items():
            found = detector(small, 1.0)
            row = rows[name][size]
            row["faces"] += len(scored) if kind == "bare" else 0
            row[kind] += int((iou_matrix(scored, found.boxes) >= MATCH_IOU).any(axis=1).sum())
            on_faces = (iou_matrix(found.boxes, faces) >= MATCH_IOU).any(axis=1)
            row["other_" + kind] += int((~on_faces).sum())

    for path in photos:
        pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if pixels is None:
            raise ValueError(f"photos: cannot read {str(path)!r} as an image")
        faces = reference(pixels, 1.0)
        keep = ~np.isnan(faces.keypoints).any(axis=(1, 2))
        boxes = faces.boxes[keep].astype(np.float64)
        if not len(boxes):
            continue
        masked = draw_masks(pixels, boxes, faces.keypoints[keep])
        for kind, source in (("bare", pixels), ("masked", masked)):
            count(AS_IS, kind, source, boxes, boxes)  # every face at its own size
        for box in boxes:
            haar_side = np.sqrt(box[2] * box[3]) / HAAR_SIDE["blazeface"]
            for size in sizes:
                f = size / haar_side
                if f > 1:  # never enlarged: a face smaller than this size is not counted
                    continue
                for kind, source in (("bare", pixels), ("masked", masked)):
                    small = cv2.resize(source, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
                    count(str(size), kind, small, boxes * f, box[None] * f)
    for sized in rows.values():
        for row in sized.values():
            for kind in ("bare", "masked"):
                row[kind + "_share"] = round(row[kind] / row["faces"], 4) if row["faces"] else 0.0
    return rows


def main(argv: list[str]) -> int:
    from fer_batch.config import DetectConfig
    from fer_batch.detect import BlazeFaceDetector
    from fer_batch.schema import IMAGE_EXTENSIONS

    p = argparse.ArgumentParser(prog="python -m fer_batch.bench.masks")
    p.add_argument("photos", help="a folder of photos with faces")
    p.add_argument("--min-score", type=float, nargs="+", default=[None],
                   help="--min-score values, one run each (default: the default)")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                   help="face sides to shrink each face to, Haar's convention")
    p.add_argument("--first-look", action="store_true",
                   help="also run without the second look, at each --min-score")
    args = p.parse_args(argv)
    for size in args.sizes:
        if size < 1:
            raise ValueError(f"--sizes must be >= 1; received: {size}")
    photos = sorted(q for q in Path(args.photos).iterdir()
                    if q.suffix.lower() in IMAGE_EXTENSIONS) if Path(args.photos).is_dir() else []
    if not photos:
        raise ValueError(f"photos must be a folder of images; received: "
                         f"{args.photos!r}")
    detectors = {}
    for score in args.min_score:
        cfg = DetectConfig() if score is None else DetectConfig(min_score=score)
        detectors[f"two looks, --min-score {cfg.min_score:g}"] = BlazeFaceDetector(cfg)
        if args.first_look:
            detectors[f"first look only, --min-score {cfg.min_score:g}"] = BlazeFaceDetector(
                cfg, second_look=False)
    out = measure(photos, detectors, BlazeFaceDetector(DetectConfig()), tuple(args.sizes))
    print(json.dumps({"photos": args.photos, "sizes": args.sizes, "results": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
