"""Face tracks in videos, and the per-video finalize step that stitches segments together.

Tracking is greedy IoU association between consecutive sampled frames: each face
of a frame continues the track of the face it overlaps most in the previous sampled
frame (IoU >= 0.3, best pairs first); the rest open new tracks, numbered in the
order they appear (frame, then left to right). A link depends only on the two
frames it joins, so tracking can run per segment and be stitched afterwards with
the same result as one pass over the whole video:

1. Each segment (fer_batch.video) tracks its own frames with local ids 0, 1, ...
   The commit writer does not publish it: it stages it as one Parquet file,
   ``_segments/<hash of uri>/<hash of version>-<segment>.parquet``, holding its
   classified faces, with its errors, status, frame counts and first and last
   sampled frame in the file's metadata. A staged file is the segment's commit:
   a resumed run plans only the segments of a video that are not staged yet.
2. When every segment of a video is staged (0..k, k being the open-ended last),
   the driver finalizes it: it walks the segments in order, links the faces of each
   segment's first sampled frame to those of the previous segment's last sampled
   frame with the same greedy IoU match, gives linked local tracks the id they
   continue and the others the next free id, and commits the video whole: faces,
   errors, one ``tracks`` row per track and its one media row, then a ``_commits``
   marker (segment -1), then the staged files go. Killed half-way, it leaves
   orphan parts (removed by the next run) and the staged files to redo it from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fer_batch.paths import child
from fer_batch.records import N_META
from fer_batch.schema import (
    EMOTIONS,
    ERRORS,
    ERRORS_SCHEMA,
    FACES,
    MEDIA,
    MEDIA_SCHEMA,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_PARTIAL,
    TRACKS,
    TRACKS_SCHEMA,
)
from fer_batch.store import COMMIT_SCHEMA, Store, commit_id

IOU_THRESHOLD = 0.3
FINAL_SEGMENT = -1
"""Segment number of a video's finalize commit."""
SEGMENTS_DIR = "_segments"
_HEADER = b"fer_batch_segment"
_HEADER_STR = ("source_uri", "item_key", "status", "detect_node", "classify_node")
_HEADER_INT = ("size_bytes", "segment", "first_frame", "last_frame", "n_frames_sampled",
               "frame_count", "width", "height")
_HEADER_FLOAT = ("seg_start_s", "seg_end_s", "fps", "duration_s")
_SEGMENT_FILE = re.compile(r"([0-9a-f]{8})-([0-9]{6,})\.parquet")
_BOX_COLUMNS = ("bbox_x", "bbox_y", "bbox_w", "bbox_h")


# --- association (pure) -----------------------------------------------------------------


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (n, 4 xywh) with every box in `b` (m, 4 xywh)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def greedy_match(prev: np.ndarray, cur: np.ndarray,
                 threshold: float = IOU_THRESHOLD) -> list[tuple[int, int]]:
    """One-to-one (prev, cur) pairs, best IoU first; ties broken by index for determinism."""
    iou = iou_matrix(prev, cur)
    if iou.size == 0:
        return []
    i, j = np.nonzero(iou >= threshold)
    order = np.lexsort((j, i, -iou[i, j]))
    used_prev, used_cur, pairs = set(), set(), []
    for k in order:
        p, c = int(i[k]), int(j[k])
        if p not in used_prev and c not in used_cur:
            used_prev.add(p)
            used_cur.add(c)
            pairs.append((p, c))
    return pairs


class IouTracker:
    """Greedy IoU tracking over the sampled frames of one segment (local ids 0, 1, ...)."""

    def __init__(self) -> None:
        self.boxes = np.zeros((0, 4))
        self.ids = np.zeros(0, np.int64)
        self.next_id = 0

    def update(self, boxes: np.ndarray) -> np.ndarray:
        """Track ids of this frame's boxes (in face_index order)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        ids = np.full(len(boxes), -1, np.int64)
        for p, c in greedy_match(self.boxes, boxes):
            ids[c] = self.ids[p]
        for c in np.flatnonzero(ids < 0):
            ids[c] = self.next_id
            self.next_id += 1
        self.boxes, self.ids = boxes, ids
        return ids


class Stitcher:
    """Renumbers segment-local tracks into video-wide ones, segment by segment, and keeps
    each track's running totals for the tracks table."""

    def __init__(self) -> None:
        self.next_id = 0
        self.edge_boxes = np.zeros((0, 4))
        self.edge_ids = np.zeros(0, np.int64)
        self.count = np.zeros(0, np.int64)
        self.sums = np.zeros((0, len(EMOTIONS)))
        self.start = np.zeros(0)
        self.end = np.zeros(0)

    def relabel(self, faces: pa.Table, first_frame: int, last_frame: int) -> pa.Table:
        """Faces of the next segment (in frame, face_index order) with video-wide track ids."""
        frames = faces["frame_index"].to_numpy()
        local = faces["track_id"].to_numpy(zero_copy_only=False).astype(np.int64)
        boxes = np.column_stack([faces[c].to_numpy() for c in _BOX_COLUMNS]).reshape(-1, 4)
        linked: dict[int, int] = {}
        if first_frame >= 0:
            head = np.flatnonzero(frames == first_frame)
            for p, c in greedy_match(self.edge_boxes, boxes[head]):
                linked[int(local[head[c]])] = int(self.edge_ids[p])
        lut = np.zeros(int(local.max()) + 1 if len(local) else 0, np.int64)
        for lid in range(len(lut)):  # local ids are in order of appearance
            if lid in linked:
                lut[lid] = linked[lid]
            else:
                lut[lid], self.next_id = self.next_id, self.next_id + 1
        ids = lut[local]
        self._accumulate(ids, faces)
        if last_frame >= 0:
            tail = np.flatnonzero(frames == last_frame)
            self.edge_boxes, self.edge_ids = boxes[tail], ids[tail]
        column = faces.schema.get_field_index("track_id")
        return faces.set_column(column, "track_id", pa.array(ids, pa.int64()))

    def _accumulate(self, ids: np.ndarray, faces: pa.Table) -> None:
        grow = self.next_id - len(self.count)
        if grow > 0:
            self.count = np.concatenate([self.count, np.zeros(grow, np.int64)])
            self.sums = np.concatenate([self.sums, np.zeros((grow, len(EMOTIONS)))])
            self.start = np.concatenate([self.start, np.full(grow, np.inf)])
            self.end = np.concatenate([self.end, np.full(grow, -np.inf)])
        t = faces["timestamp_s"].to_numpy(zero_copy_only=False).astype(np.float64)
        scores = np.column_stack([faces[e].to_numpy() for e in EMOTIONS]).reshape(-1, 7)
        np.add.at(self.count, ids, 1)
        np.add.at(self.sums, ids, scores)
        np.minimum.at(self.start, ids, t)
        np.maximum.at(self.end, ids, t)

    def tracks_table(self, source_uri: str, run_id: str) -> pa.Table:
        n = self.next_id
        means = self.sums / np.maximum(self.count, 1)[:, None]
        columns: dict[str, Any] = {
            "source_uri": [source_uri] * n,
            "track_id": np.arange(n, dtype=np.int64),
            "start_s": self.start,
            "end_s": self.end,
            "n_frames": self.count,
        }
        for k, name in enumerate(EMOTIONS):
            columns[f"mean_{name}"] = means[:, k].astype(np.float32)
        columns["emotion"] = [EMOTIONS[k] for k in means.argmax(axis=1)] if n else []
        columns["run_id"] = [run_id] * n
        return pa.table(columns, schema=TRACKS_SCHEMA)


# --- staging (called by the commit writer) ----------------------------------------------


def video_key(item_key: str) -> str:
    """`uri|size|version` of an item key: what every segment of one video version shares."""
    return item_key.rsplit("|", 1)[0]


def _digest(text: str, n: int) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def segment_dir(store: Store, source_uri: str) -> str:
    return store.path(SEGMENTS_DIR, _digest(source_uri, 24))


def segment_name(vkey: str, segment: int) -> str:
    return f"{_digest(vkey, 8)}-{segment:06d}.parquet"


def stage_segments(store: Store, batch: dict[str, np.ndarray], faces: pa.Table,
                   run_id: str) -> None:
    """Write each video segment of a classified batch as one staged file: its faces (rows of
    `faces`, in batch order) with everything else about it in the file's metadata."""

    counts = [len(np.asarray(m).reshape(-1, N_META)) for m in batch["faces"]]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    for i in np.flatnonzero(np.asarray(batch["media_type"]) == "video"):
        header = {name: str(batch[name][i]) for name in _HEADER_STR}
        header |= {name: int(batch[name][i]) for name in _HEADER_INT}
        header |= {name: float(batch[name][i]) for name in _HEADER_FLOAT}
        header |= {"errors": json.loads(batch["errors_json"][i]), "n_faces": counts[i],
                   "run_id": run_id}
        part = faces.slice(offsets[i], counts[i])
        part = part.replace_schema_metadata({_HEADER: json.dumps(header)})
        name = segment_name(video_key(header["item_key"]), header["segment"])
        store.write(child(segment_dir(store, header["source_uri"]), name), part)


def staged_segments(store: Store, source_uri: str, vkey: str) -> set[int]:
    """Segments of this version of a video already staged; other versions' files are removed."""
    done, prefix = set(), _digest(vkey, 8)
    for path in store.listing(segment_dir(store, source_uri)):
        match = _SEGMENT_FILE.fullmatch(os.path.basename(path))
        if match and match[1] == prefix:
            done.add(int(match[2]))
        else:
            store.rm(path)
    return done


def _read_header(fs: Any, path: str) -> dict[str, Any]:
    with fs.open(path, "rb") as f:
        return json.loads(pq.read_schema(f).metadata[_HEADER])


def _read_staged(fs: Any, path: str) -> pa.Table:
    """A staged segment's faces (its header is read by _read_header)."""
    with fs.open(path, "rb") as f:
        return pq.read_table(f).replace_schema_metadata(None)


# --- finalize (driver) ------------------------------------------------------------------


def finalize_videos(store: Store, run_id: str, threads: int = 8) -> int:
    """Finalize every video whose segments are all staged; returns how many were."""
    from concurrent.futures import ThreadPoolExecutor

    base = store.path(SEGMENTS_DIR)
    folders = store.listing(base)
    if not folders:
        if store.exists(base):
            store.rm(base, recursive=True)
        return 0
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(lambda folder: _finalize_folder(store, folder, run_id), folders))
    if not store.listing(base):
        store.rm(base, recursive=True)
    return done


def _finalize_folder(store: Store, folder: str, run_id: str) -> int:
    versions: dict[str, dict[int, str]] = {}
    for path in store.listing(folder):
        if match := _SEGMENT_FILE.fullmatch(os.path.basename(path)):
            versions.setdefault(match[1], {})[int(match[2])] = path
    done = 0
    for files in versions.values():
        last = max(files)
        if sorted(files) == list(range(last + 1)) and \
                math.isinf(_read_header(store.fs, files[last])["seg_end_s"]):
            finalize_video(store, [files[k] for k in range(last + 1)], run_id)
            done += 1
    if not store.listing(folder):
        store.rm(folder, recursive=True)
    return done


def finalize_video(store: Store, paths: list[str], run_id: str) -> None:
    """Stitch a video's staged segments (in order) and commit it: faces (streamed a segment
    at a time), errors, tracks and media parts, then the marker (Store.begin and
    Commit.finish check the lease before the parts and again before the marker), then
    the staged files go."""
    headers = [_read_header(store.fs, path) for path in paths]
    first = headers[0]
    final_key = f"{video_key(first['item_key'])}|{FINAL_SEGMENT}"
    commit = store.begin(commit_id([final_key]), run_id)
    stitcher = Stitcher()
    commit.write(FACES, (stitcher.relabel(_read_staged(store.fs, path), h["first_frame"],
                                          h["last_frame"]) for path, h in zip(paths, headers)))
    uri = first["source_uri"]
    errors = [{"source_uri": uri, **e, "run_id": h["run_id"]} for h in headers for e in h["errors"]]
    media = video_media_row(headers, run_id)
    marker = {**media, "item_key": final_key, "segment": FINAL_SEGMENT, "n_errors": len(errors),
              "detect_node": first["detect_node"], "classify_node": first["classify_node"]}
    commit.write(ERRORS, pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA))
    commit.write(TRACKS, stitcher.tracks_table(uri, run_id))
    commit.write(MEDIA, pa.Table.from_pylist([media], schema=MEDIA_SCHEMA))
    commit.finish(pa.Table.from_pylist([marker], schema=COMMIT_SCHEMA))
    for path in paths:
        store.rm(path)


def video_media_row(headers: list[dict], run_id: str) -> dict[str, Any]:
    """The one media row of a video, from the headers of its staged segments."""
    sampled = sum(max(0, h["n_frames_sampled"]) for h in headers)
    errors = sum(len(h["errors"]) for h in headers)
    status = STATUS_OK if not errors else STATUS_PARTIAL if sampled else STATUS_ERROR

    def known(name: str) -> Any:
        for h in headers:
            value = h[name]
            if not (isinstance(value, float) and math.isnan(value)) and value != -1:
                return value
        return None

    return {"source_uri": headers[0]["source_uri"], "media_type": "video", "status": status,
            "width": known("width"), "height": known("height"),
            "n_faces": sum(h["n_faces"] for h in headers),
            "size_bytes": headers[0]["size_bytes"], "fps": known("fps"),
            "frame_count": known("frame_count"), "duration_s": known("duration_s"),
            "n_frames_sampled": sampled, "run_id": run_id}
