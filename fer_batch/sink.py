"""Parquet output with a commit per batch: data files first, completion marker last.

The tables of one image commit, built from a classified block: ``faces/``, ``media/``
and ``errors/`` parts named after the commit id (a hash of the work items it holds), and
the marker listing those items. fer_batch/store.py writes them (its commit protocol:
lease, parts, lease, marker), so every input ends up exactly once, whatever moment a
previous run died at.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from fer_batch.records import KEYPOINTS_AT, N_META
from fer_batch.schema import (
    EMOTIONS,
    ERRORS,
    ERRORS_SCHEMA,
    FACES,
    FACES_SCHEMA,
    KEYPOINT_COLUMNS,
    MEDIA,
    MEDIA_SCHEMA,
)
from fer_batch.store import COMMIT_SCHEMA, Store, commit_id
from fer_batch.tracking import stage_segments


def _nullable_int(value: int) -> int | None:
    return None if value < 0 else int(value)


def faces_table(batch: dict[str, np.ndarray], run_id: str, model: str) -> pa.Table:
    """One row per face, in the declared schema."""
    metas = [np.asarray(m, np.float64).reshape(-1, N_META) for m in batch["faces"]]
    counts = [len(m) for m in metas]
    meta = np.concatenate(metas) if sum(counts) else np.zeros((0, N_META))
    scores = np.concatenate([np.asarray(s, np.float32).reshape(-1, len(EMOTIONS))
                             for s in batch["scores"]]) if sum(counts) else np.zeros((0, 7))
    repeat = np.repeat(np.arange(len(counts)), counts)
    best = scores.argmax(axis=1) if len(scores) else np.zeros(0, np.int64)
    columns: dict[str, Any] = {
        "source_uri": np.asarray(batch["source_uri"], dtype=object)[repeat],
        "media_type": np.asarray(batch["media_type"], dtype=object)[repeat],
        "frame_index": meta[:, 0].astype(np.int64),
        "timestamp_s": pa.array(meta[:, 1], pa.float64(), from_pandas=True),
        "face_index": meta[:, 2].astype(np.int32),
        "track_id": pa.array(meta[:, 8], pa.float64(), from_pandas=True).cast(pa.int64()),
        "bbox_x": meta[:, 3].astype(np.int32),
        "bbox_y": meta[:, 4].astype(np.int32),
        "bbox_w": meta[:, 5].astype(np.int32),
        "bbox_h": meta[:, 6].astype(np.int32),
        "det_score": meta[:, 7].astype(np.float32),
    }
    for k, name in enumerate(KEYPOINT_COLUMNS):
        columns[name] = pa.array(meta[:, KEYPOINTS_AT + k].astype(np.float32), from_pandas=True)
    for k, name in enumerate(EMOTIONS):
        columns[name] = scores[:, k].astype(np.float32)
    columns["emotion"] = np.array([EMOTIONS[k] for k in best], dtype=object)
    columns["emotion_score"] = scores[np.arange(len(best)), best].astype(np.float32)
    columns["model"] = np.array([model] * len(meta), dtype=object)
    columns["run_id"] = np.array([run_id] * len(meta), dtype=object)
    return pa.table(columns, schema=FACES_SCHEMA)


def media_table(batch: dict[str, np.ndarray], run_id: str) -> pa.Table:
    """One row per image item (videos get theirs when all their segments are done)."""
    rows = []
    for i, media_type in enumerate(batch["media_type"]):
        if media_type != "image":
            continue
        rows.append({
            "source_uri": batch["source_uri"][i],
            "media_type": media_type,
            "status": batch["status"][i],
            "width": _nullable_int(batch["width"][i]),
            "height": _nullable_int(batch["height"][i]),
            "n_faces": len(batch["faces"][i]),
            "size_bytes": int(batch["size_bytes"][i]),
            "run_id": run_id,
        })
    return pa.Table.from_pylist(rows, schema=MEDIA_SCHEMA)


def errors_table(batch: dict[str, np.ndarray], run_id: str) -> pa.Table:
    rows = []
    for uri, text in zip(batch["source_uri"], batch["errors_json"]):
        for error in json.loads(text):
            rows.append({"source_uri": uri, **error, "run_id": run_id})
    return pa.Table.from_pylist(rows, schema=ERRORS_SCHEMA)


def commit_table(batch: dict[str, np.ndarray], run_id: str) -> pa.Table:
    n = len(batch["source_uri"])
    return pa.table({
        "item_key": batch["item_key"],
        "source_uri": batch["source_uri"],
        "media_type": batch["media_type"],
        "segment": np.asarray(batch["segment"], np.int64),
        "status": batch["status"],
        "n_faces": np.array([len(m) for m in batch["faces"]], np.int64),
        "n_errors": np.array([len(json.loads(t)) for t in batch["errors_json"]], np.int64),
        "width": np.asarray(batch["width"], np.int64),
        "height": np.asarray(batch["height"], np.int64),
        "size_bytes": np.asarray(batch["size_bytes"], np.int64),
        "fps": np.asarray(batch["fps"], np.float64),
        "frame_count": np.asarray(batch["frame_count"], np.int64),
        "duration_s": np.asarray(batch["duration_s"], np.float64),
        "n_frames_sampled": np.asarray(batch["n_frames_sampled"], np.int64),
        "detect_node": batch["detect_node"],
        "classify_node": batch["classify_node"],
        "run_id": np.array([run_id] * n, dtype=object),
    }, schema=COMMIT_SCHEMA)


def write_commit(batch: dict[str, np.ndarray], store: Store, run_id: str,
                 model: str) -> dict[str, np.ndarray]:
    """Commit one classified block (Store.commit: lease, parts, lease, marker); return its
    summary for the driver. Its video segments are staged instead (fer_batch/tracking.py):
    a video is committed whole once all its segments are, with track ids stitched."""
    cid = commit_id(batch["item_key"])
    n_items = len(batch["item_key"])
    n_faces = 0
    if "video" in batch["media_type"]:
        staged = faces_table(batch, run_id, model)
        stage_segments(store, batch, staged, run_id)
        images = np.asarray(batch["media_type"]) != "video"
        n_faces = staged.num_rows - sum(len(f) for f in batch["faces"][images])
        batch = {name: column[images] for name, column in batch.items()}
        if not images.any():
            return _summary(cid, n_items, n_faces, 0)
    tables = {FACES: faces_table(batch, run_id, model), MEDIA: media_table(batch, run_id),
              ERRORS: errors_table(batch, run_id)}
    store.commit(cid, run_id, tables, commit_table(batch, run_id))
    errors = int((np.asarray(batch["status"]) == "error").sum())
    return _summary(cid, n_items, n_faces + tables[FACES].num_rows, errors)


def _summary(cid: str, n_items: int, n_faces: int, n_errors: int) -> dict[str, np.ndarray]:
    """What the driver hears of one commit (its progress counts; recovery's commit log)."""
    return {"commit": np.array([cid]), "n_items": np.array([n_items]),
            "n_faces": np.array([n_faces]), "n_errors": np.array([n_errors])}
