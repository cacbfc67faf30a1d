"""BlazeFace's pyramid settings side by side: recall on photos counted by eye, on FER-2013
faces in scenes and as face-crop images of their own, the first look's model pixels per
photo (a cost that does not depend on how fast the machine is) and the detect step's
milliseconds per photo on this machine's one core (best of TIMING_REPEAT, as the stage
loop of `fer-batch bench` times it, so the interpreters' first sizing is not counted).

    python -m fer_batch.bench.pyramid ../shared/data/photos ../shared/data/fer2013/train \\
        --scenes 400 --settings 20,4 20,2 24,4 28,4 [--min-score 0.65] [--coarsest 0 128] \\
        [--first-look]

Each setting is `finest,factor`: a --min-face face is `finest` model pixels at the finest
level, and levels are `factor` apart (fer_batch/tiling.py); each runs once per `--coarsest`
(the last level's least long side, in model pixels). Use *train* faces to choose.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

TIMING_REPEAT = 3


def parse_setting(text: str) -> tuple[float, float]:
    """'20,4' -> (20.0, 4.0); a bad one names the option and echoes it."""
    try:
        finest, factor = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--settings takes finest,factor pairs such as 20,4; "
                         f"received: {text!r}") from None
    if finest <= 0 or factor <= 1:
        raise ValueError(f"--settings needs finest > 0 and factor > 1; received: {text!r}")
    return finest, factor


def measure(photos: str, by_eye: dict[str, int], scenes: list[Any], finest: float,
            factor: float, min_score: float | None = None, coarsest: float | None = None,
            crops: dict[str, list[Any]] | None = None, second_look: bool = True
            ) -> dict[str, Any]:
    """One setting's photo counts, scene recall, face-crop recall (per crop size), model
    pixels and detect milliseconds per photo."""
    from fer_batch.bench.detectors import score_counts
    from fer_batch.bench.scenes import detect_all
    from fer_batch.bench.stages import time_image
    from fer_batch.config import DetectConfig
    from fer_batch.detect import BLAZEFACE_COARSEST, BlazeFaceDetector
    from fer_batch.registry import resolve_model

    cfg = DetectConfig(detector="blazeface") if min_score is None else DetectConfig(
        detector="blazeface", min_score=min_score)
    coarsest = BLAZEFACE_COARSEST if coarsest is None else coarsest
    detector = BlazeFaceDetector(cfg, smallest=finest, factor=factor, coarsest=coarsest,
                                 second_look=second_look)
    spec = resolve_model("fer-mini-xception")  # only its colour matters to decoding
    timed = {name: time_image(str(Path(photos) / name), cfg, spec, detector, TIMING_REPEAT)
             for name in sorted(by_eye)}
    counts = score_counts(by_eye, {name: t["faces"] for name, t in timed.items()})
    pixels = detector.pyramid_pixels / TIMING_REPEAT / max(len(by_eye), 1)
    detect_ms = 1000 * float(np.mean([t["detect"] for t in timed.values()])) if timed else None
    hits = [d is not None for d in detect_all(scenes, detector)]
    found = {name: round(float(np.mean([d is not None for d in detect_all(group, detector)])), 4)
             for name, group in (crops or {}).items()}
    return {"finest": finest, "factor": factor, "coarsest": coarsest,
            "min_score": cfg.min_score, "second_look": second_look,
            "photos_found": counts["found"],
            "photos_extra": counts["extra"], "per_file": counts["per_file"],
            "scenes_found": round(float(np.mean(hits)), 4) if hits else None,
            "crops_found": found, "model_pixels_per_photo": round(pixels),
            "detect_ms_per_photo": None if detect_ms is None else round(detect_ms, 1)}


def main(argv: list[str]) -> int:
    from fer_batch.bench.detectors import read_by_eye
    from fer_batch.bench.scenes import make_crops, make_scenes

    p = argparse.ArgumentParser(prog="python -m fer_batch.bench.pyramid")
    p.add_argument("photos", help="a folder of photos with a by-eye manifest.csv")
    p.add_argument("faces", help="FER-2013 folder <class>/*.png for the scenes (train)")
    p.add_argument("--scenes", type=int, default=400, help="faces sampled (0: all)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--settings", nargs="+", default=["20,4", "20,2", "24,4", "28,4"])
    p.add_argument("--min-score", type=float, default=None,
                   help="the second look's threshold (default: --min-score's default)")
    p.add_argument("--coarsest", type=float, nargs="+", default=[None],
                   help="the last level's least long side in model pixels, one run each "
                        "(default: the detector's; 0: no floor)")
    p.add_argument("--first-look", action="store_true",
                   help="without the second look: the first look's candidates from "
                        "--min-score (a one-level setting such as 17,100 is one model input "
                        "per 640x480 scene, as a single-inference prototype runs)")
    p.add_argument("--crops", type=int, default=150,
                   help="faces sampled as face-crop images of each size (0: none)")
    args = p.parse_args(argv)
    settings = [parse_setting(s) for s in args.settings]
    import cv2

    cv2.setNumThreads(1)  # one core, as each detection actor has
    for value in args.coarsest:
        if value is not None and value < 0:
            raise ValueError(f"--coarsest must be >= 0; received: {value!r}")
    if args.crops < 0:
        raise ValueError(f"--crops must be >= 0; received: {args.crops!r}")
    by_eye = read_by_eye(Path(args.photos) / "manifest.csv")
    scenes = make_scenes(args.faces, args.scenes, args.seed)
    crops = make_crops(args.faces, args.crops, args.seed) if args.crops else {}
    for finest, factor in settings:
        for coarsest in args.coarsest:
            print(json.dumps(measure(args.photos, by_eye, scenes, finest, factor,
                                     args.min_score, coarsest, crops,
                                     not args.first_look)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
