"""The one place where output tables are declared.

Every writer passes these schemas explicitly, and a test compares what was written
against them, so the tables users query never drift from what this module says.
"""

from __future__ import annotations

import pyarrow as pa

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""FER-2013 label order (class index 0..6). Every model in the registry uses it."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
)
VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})

# Table (dataset directory) names under the output URI.
FACES = "faces"
MEDIA = "media"
ERRORS = "errors"
TRACKS = "tracks"
TABLES: tuple[str, ...] = (FACES, MEDIA, ERRORS, TRACKS)
RUN_RECORD = "_run.json"
COMMITS_DIR = "_commits"
LEASE = "_lease.json"

# Media status values.
STATUS_OK = "ok"
STATUS_PARTIAL = "partial"
STATUS_ERROR = "error"

# Pipeline stages, as written in errors/stage and _run.json's placement.
STAGE_READ = "read"
STAGE_DECODE = "decode"
STAGE_DETECT = "detect"
STAGE_WORKER = "worker"

_SCORES = [pa.field(name, pa.float32()) for name in EMOTIONS]
# The subject's own left and right (a frontal face's left eye is on the image's right), in
# original pixels; null where the detector gives none (Haar).
KEYPOINT_COLUMNS = ("left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y", "nose_x", "nose_y")
_KEYPOINTS = [pa.field(name, pa.float32()) for name in KEYPOINT_COLUMNS]

FACES_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("media_type", pa.string(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=False),
        pa.field("timestamp_s", pa.float64()),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("track_id", pa.int64()),
        pa.field("bbox_x", pa.int32(), nullable=False),
        pa.field("bbox_y", pa.int32(), nullable=False),
        pa.field("bbox_w", pa.int32(), nullable=False),
        pa.field("bbox_h", pa.int32(), nullable=False),
        pa.field("det_score", pa.float32(), nullable=False),
        *_KEYPOINTS,
        *_SCORES,
        pa.field("emotion", pa.string(), nullable=False),
        pa.field("emotion_score", pa.float32(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

MEDIA_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("media_type", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("n_faces", pa.int32(), nullable=False),
        pa.field("size_bytes", pa.int64()),
        pa.field("fps", pa.float64()),
        pa.field("frame_count", pa.int64()),
        pa.field("duration_s", pa.float64()),
        pa.field("n_frames_sampled", pa.int64()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("frame_index", pa.int64()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

TRACKS_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("track_id", pa.int64(), nullable=False),
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("n_frames", pa.int64(), nullable=False),
        *[pa.field(f"mean_{name}", pa.float32(), nullable=False) for name in EMOTIONS],
        pa.field("emotion", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    FACES: FACES_SCHEMA,
    MEDIA: MEDIA_SCHEMA,
    ERRORS: ERRORS_SCHEMA,
    TRACKS: TRACKS_SCHEMA,
}


def media_type_of(path: str) -> str | None:
    """Return "image", "video" or None (not media) from a path's extension, case-insensitively."""
    dot = path.rfind(".")
    if dot < 0 or "/" in path[dot:]:
        return None
    ext = path[dot:].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None

