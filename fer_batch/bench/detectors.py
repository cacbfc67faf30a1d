"""Every detector side by side: per-file stage cost, the ceiling it implies, and recall.

Stage costs come from the same pinned loop as the main stage table (`measure_stages`),
once per detector, on the bench's inputs. Recall is scored on a folder of photos with
faces counted by eye (a `manifest.csv` with `file` and `visible_human_faces_by_eye`, as
../shared/data/photos has): per file, a detector is credited with at most the by-eye
number, and boxes beyond it count as extra.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

from fer_batch.bench.stages import ceiling, measure_stages, run_pinned
from fer_batch.config import DetectConfig

BY_EYE_COLUMN = "visible_human_faces_by_eye"


def read_by_eye(manifest: str | Path) -> dict[str, int]:
    """file name -> faces counted by eye ("~30 (+ crowd)" -> 30, "1 (profile)" -> 1)."""
    try:
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ValueError(f"--by-eye cannot be read ({e.strerror}); received: "
                         f"{str(manifest)!r}") from e
    if not rows or BY_EYE_COLUMN not in rows[0] or "file" not in rows[0]:
        raise ValueError(f"--by-eye must be a CSV with columns file and {BY_EYE_COLUMN}; "
                         f"received: {str(manifest)!r}")
    return {row["file"]: int(row[BY_EYE_COLUMN].lstrip("~").split()[0]) for row in rows}


def score_counts(by_eye: dict[str, int], found: dict[str, int]) -> dict[str, Any]:
    """Faces found (at most the by-eye count per file), missed, extra boxes, recall."""
    hit = sum(min(found.get(name, 0), n) for name, n in by_eye.items())
    extra = sum(max(0, found.get(name, 0) - n) for name, n in by_eye.items())
    total = sum(by_eye.values())
    return {"by_eye": total, "found": hit, "missed": total - hit, "extra": extra,
            "recall": round(hit / total, 4) if total else 0.0,
            "per_file": {name: found.get(name, 0) for name in sorted(by_eye)}}


def count_faces(folder: str, names: list[str], detect: DetectConfig,
                detector: Any = None) -> dict[str, Any]:
    """Faces per photo, found as FaceStage finds them (decode, scale, detect), with
    `detector` (default: the one `detect` names)."""
    from fer_batch.bench.stages import time_image
    from fer_batch.detect import make_detector
    from fer_batch.registry import resolve_model

    spec = resolve_model("fer-mini-xception")  # only its colour matters to decoding
    detector = detector or make_detector(detect)
    return {name: time_image(str(Path(folder) / name), detect, spec, detector, 1)["faces"]
            for name in names}


def compare_detectors(names: tuple[str, ...], base: DetectConfig, base_stages: dict[str, Any],
                      inputs: tuple[str, ...], model: str, batch_size: int, cores: int,
                      sample: int, repeat: int, video_fps: float,
                      by_eye: str | None) -> dict[str, Any]:
    """Per detector: per-file step costs, the ceiling, and recall on the by-eye photos."""
    counts = read_by_eye(by_eye) if by_eye else None
    rows: dict[str, Any] = {}
    for name in names:
        detect = replace(base, detector=name)
        stages = base_stages if name == base.detector else run_pinned(
            measure_stages, inputs, model, detect, (batch_size,), sample, repeat, video_fps)
        per = stages["per_file"]
        ceil = ceiling(stages, cores, batch_size)
        row: dict[str, Any] = {
            "per_file_ms": {step: round(1000 * per[step], 2)
                            for step in ("decode", "detect", "crop")},
            "faces_per_file": round(per["faces"], 3),
            "ceiling_files_per_s": round(ceil["files_per_s"], 3),
            "ceiling_faces_per_s": round(ceil["faces_per_s"], 3),
        }
        if counts is not None:
            found = run_pinned(count_faces, str(Path(by_eye).parent), sorted(counts), detect)
            found.pop("pinned_core", None)
            row["by_eye"] = score_counts(counts, found)
        rows[name] = row
    return {"by_detector": rows, "by_eye": str(by_eye) if by_eye else
            "not scored: no --by-eye manifest (e.g. ../shared/data/photos/manifest.csv)"}
