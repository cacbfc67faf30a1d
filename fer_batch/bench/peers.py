"""Peers: the `fer` package on the same files, for speed and for the faces it finds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fer_batch.tracking import iou_matrix as iou  # x, y, w, h boxes, pairwise

PEER_SCRIPT = Path(__file__).with_name("peer_fer.py")
MATCH_IOU = 0.4


def matched(theirs: list[list[int]], ours: list[list[int]], threshold: float = MATCH_IOU) -> int:
    """How many of `theirs` have their own box in `ours` (greedy, best IoU first)."""
    if not theirs or not ours:
        return 0
    overlap = iou(np.array(theirs), np.array(ours))
    found = 0
    while overlap.size and overlap.max() >= threshold:
        i, j = np.unravel_index(np.argmax(overlap), overlap.shape)
        overlap[i, :], overlap[:, j] = -1, -1
        found += 1
    return found


def our_boxes(output: str) -> dict[str, list[list[int]]]:
    """Boxes per source file from a fer-batch output's faces table."""
    import pyarrow.parquet as pq

    faces = pq.read_table(Path(output) / "faces",
                          columns=["source_uri", "bbox_x", "bbox_y", "bbox_w", "bbox_h"])
    boxes: dict[str, list[list[int]]] = {}
    for row in faces.to_pylist():
        boxes.setdefault(row["source_uri"], []).append(
            [row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"]])
    return boxes


def run_fer(files: list[str], python: str | None, workdir: Path, ours: dict[str, Any],
            our_output: str) -> dict[str, Any]:
    """`fer`'s FER().detect_emotions loop as a cold process, compared with our cold run."""
    python = python or sys.executable
    listing, out = workdir / "peer_files.txt", workdir / "peer_fer.json"
    listing.write_text("\n".join(files) + "\n")
    log = workdir / "peer_fer.log"
    with log.open("wb") as sink:
        start = time.perf_counter()
        rc = subprocess.run([python, str(PEER_SCRIPT), str(listing), str(out)], stdout=sink,
                            stderr=subprocess.STDOUT, check=False).returncode
        wall = time.perf_counter() - start
    result = json.loads(out.read_text()) if out.is_file() else {}
    if "import_error" in result:
        return {"skipped": f"fer is not importable with {python}: {result['import_error']}"}
    if rc != 0:
        tail = log.read_text(errors="replace")[-1500:]
        return {"skipped": f"the fer peer failed (exit {rc}) with {python}: {tail}"}
    mine = our_boxes(our_output)
    theirs = result["boxes"]
    found = sum(matched(boxes, mine.get(path, [])) for path, boxes in theirs.items())
    fer_faces = sum(len(b) for b in theirs.values())
    files_per_s = len(files) / wall
    return {
        "python": python,
        "files": len(files),
        "cold_wall_s": wall,
        "startup_s": result["startup_s"],
        "loop_s": result["loop_s"],
        "files_per_s_cold": files_per_s,
        "files_per_s_loop": len(files) / result["loop_s"],
        "faces": fer_faces,
        "our_faces": sum(len(mine.get(path, [])) for path in theirs),
        "fer_faces_we_found": found,
        "share_of_fer_faces_we_found": found / fer_faces if fer_faces else None,
        "match_iou": MATCH_IOU,
        "speed_ratio_cold": ours["files_per_s"] / files_per_s,
    }
