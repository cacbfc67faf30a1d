"""Parquet output with a commit per batch: data files first, completion marker last.

A commit writes ``faces/``, ``media/`` and ``errors/`` part files named after the
commit id (a hash of the work items it holds), then ``_commits/<id>.parquet``
listing those items. A part file without its marker is an orphan from a killed run;
`remove_orphans` deletes it before a resumed run redoes its items, so every input
ends up exactly once, whatever moment the previous run died at. Each commit first
checks that its run still owns the output (fer_batch.lease), so the workers of a
killed run cannot commit behind the back of the run that replaced it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fer_batch import lease
from fer_batch.paths import child
from fer_batch.records import KEYPOINTS_AT, N_META
from fer_batch.schema import (
    COMMITS_DIR,
    EMOTIONS,
    ERRORS,
    ERRORS_SCHEMA,
    FACES,
    FACES_SCHEMA,
    KEYPOINT_COLUMNS,
    MEDIA,
    MEDIA_SCHEMA,
    SCHEMAS,
    TABLES,
)
from fer_batch.sources import filesystem, retry_transient
from fer_batch.store import (
    COMMIT_SCHEMA,
    EMPTY_PART,
    commit_id,
    commit_of_part,
    join,
    part_name,
    write_table,
)


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


def write_commit(
    batch: dict[str, np.ndarray], output: str, run_id: str, model: str,
    storage_options: dict[str, Any], extra_tables: dict[str, pa.Table] | None = None,
) -> dict[str, np.ndarray]:
    """Write one commit (tables, then marker); return its summary for the driver."""
    fs, root = filesystem(output, storage_options)
    lease.check(output, storage_options, run_id)
    cid = commit_id(batch["item_key"])
    n_items = len(batch["item_key"])
    if "video" in batch["media_type"]:
        # Video segments are staged; a video is committed whole once all its segments are
        # (fer_batch.tracking.finalize_videos), with track ids stitched across them.
        from fer_batch.tracking import stage_segments

        staged = faces_table(batch, run_id, model)
        stage_segments(fs, root, batch, staged, run_id)
        images = np.asarray(batch["media_type"]) != "video"
        n_faces = staged.num_rows - sum(len(f) for f in batch["faces"][images])
        batch = {name: column[images] for name, column in batch.items()}
        if not images.any():
            return _summary(cid, n_items, n_faces, 0)
    else:
        n_faces = 0
    tables = {
        FACES: faces_table(batch, run_id, model),
        MEDIA: media_table(batch, run_id),
        ERRORS: errors_table(batch, run_id),
        **(extra_tables or {}),
    }
    for name, table in tables.items():
        write_table(fs, child(root, name, part_name(cid)), table)
    marker = commit_table(batch, run_id)
    lease.check(output, storage_options, run_id)
    write_table(fs, child(root, COMMITS_DIR, f"{cid}.parquet"), marker)
    errors = int((np.asarray(batch["status"]) == "error").sum())
    return _summary(cid, n_items, n_faces + tables[FACES].num_rows, errors)


def _summary(cid: str, n_items: int, n_faces: int, n_errors: int) -> dict[str, np.ndarray]:
    """What the driver hears of one commit (its progress counts; recovery's commit log)."""
    return {"commit": np.array([cid]), "n_items": np.array([n_items]),
            "n_faces": np.array([n_faces]), "n_errors": np.array([n_errors])}


def committed_ids(output: str, storage_options: dict[str, Any]) -> set[str]:
    fs, root = filesystem(output, storage_options)
    path = join(root, COMMITS_DIR)
    if not retry_transient(fs.exists, path):
        return set()
    listed = retry_transient(fs.ls, path, detail=False)
    return {os.path.basename(p)[: -len(".parquet")] for p in listed if p.endswith(".parquet")}


def remove_orphans(output: str, storage_options: dict[str, Any]) -> int:
    """Delete part files whose commit never completed (a run killed mid-commit)."""
    fs, root = filesystem(output, storage_options)
    done = committed_ids(output, storage_options)
    removed = 0
    for name in TABLES:
        path = join(root, name)
        if not retry_transient(fs.exists, path):
            continue
        for part in retry_transient(fs.ls, path, detail=False):
            base = os.path.basename(part)
            if base.endswith(".tmp") or commit_of_part(base) not in done | {EMPTY_PART}:
                retry_transient(fs.rm, part)
                removed += 1
    return removed


def read_commits(output: str, storage_options: dict[str, Any]) -> pa.Table:
    """All completion markers of the output (empty table when there are none)."""
    fs, root = filesystem(output, storage_options)
    path = join(root, COMMITS_DIR)
    if not retry_transient(fs.exists, path) or not retry_transient(fs.ls, path, detail=False):
        return COMMIT_SCHEMA.empty_table()
    return pq.read_table(path, filesystem=fs, schema=COMMIT_SCHEMA)


def ensure_tables(output: str, storage_options: dict[str, Any]) -> None:
    """Give every table at least one (empty) file so readers always see its schema."""
    fs, root = filesystem(output, storage_options)
    for name, schema in SCHEMAS.items():
        path = join(root, name)
        if not retry_transient(fs.exists, path) or not retry_transient(fs.ls, path, detail=False):
            write_table(fs, join(path, part_name(EMPTY_PART)), schema.empty_table())
