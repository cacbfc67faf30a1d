"""The row that travels between stages: one per work item (an image, or a video segment).

A work item's faces, crops and errors stay together in one row from detection to the
sink, so a commit always holds an item whole: its media row, all its face rows and
all its error rows land together or not at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fer_batch.schema import KEYPOINT_COLUMNS, STATUS_ERROR, STATUS_OK, STATUS_PARTIAL

# Columns of the per-face metadata matrix carried in `faces`.
META_COLUMNS = ("frame_index", "timestamp_s", "face_index", "bbox_x", "bbox_y", "bbox_w",
                "bbox_h", "det_score", "track_id", *KEYPOINT_COLUMNS)
KEYPOINTS_AT = META_COLUMNS.index(KEYPOINT_COLUMNS[0])
N_META = len(META_COLUMNS)

# Columns every work item carries from the listing.
ITEM_COLUMNS = ("source_uri", "media_type", "size_bytes", "version", "segment", "seg_start_s",
                "seg_end_s", "item_key")


def item_key(source_uri: str, size_bytes: int, version: str, segment: int) -> str:
    """Completion key: a changed object (new size or version) is a new key."""
    return f"{source_uri}|{size_bytes}|{version}|{segment}"


@dataclass
class ItemResult:
    """What detection made of one work item."""

    meta: np.ndarray = field(default_factory=lambda: np.zeros((0, N_META), np.float64))
    crops: np.ndarray | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    width: int = -1
    height: int = -1
    fps: float = float("nan")
    frame_count: int = -1
    duration_s: float = float("nan")
    n_frames_sampled: int = -1
    frames_failed: int = 0
    first_frame: int = -1  # first and last sampled frame of a video segment (track stitching)
    last_frame: int = -1

    def add_error(self, stage: str, error_type: str, message: str,
                  frame_index: int | None = None) -> None:
        self.errors.append({"stage": stage, "error_type": error_type, "message": message,
                            "frame_index": frame_index})

    @property
    def status(self) -> str:
        if not self.errors:
            return STATUS_OK
        if self.frames_failed and self.n_frames_sampled > 0:
            return STATUS_PARTIAL
        return STATUS_ERROR


def _objects(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def results_to_batch(items: dict[str, np.ndarray], results: list[ItemResult], crop_shape: tuple,
                     node_id: str) -> dict[str, np.ndarray]:
    """Items plus their detection results, as a numpy batch for Ray Data."""
    batch = {name: items[name] for name in ITEM_COLUMNS}
    batch["status"] = np.array([r.status for r in results], dtype=object)
    batch["errors_json"] = np.array([json.dumps(r.errors) for r in results], dtype=object)
    batch["faces"] = _objects([r.meta for r in results])
    batch["crops"] = _objects([
        r.crops if r.crops is not None else np.zeros((0, *crop_shape), np.uint8) for r in results
    ])
    for name in ("width", "height", "frame_count", "n_frames_sampled", "first_frame",
                 "last_frame"):
        batch[name] = np.array([getattr(r, name) for r in results], dtype=np.int64)
    for name in ("fps", "duration_s"):
        batch[name] = np.array([getattr(r, name) for r in results], dtype=np.float64)
    batch["detect_node"] = np.array([node_id] * len(results), dtype=object)
    return batch
