"""Video frame sampling: plan segments, decode one segment, detect faces frame by frame.

Sampling is defined on absolute time, so it does not depend on where decoding
starts: with ``--video-fps F`` a frame is sampled when ``floor(t * F)`` differs
from that of the frame decoded just before it (the first frame at or after each
1/F-second mark); with ``--every-n-frames N`` the same rule runs on
``frame_index // N``; otherwise every frame is sampled. ``t`` is the container's
presentation time of the decoded frame (OpenCV's ``CAP_PROP_POS_MSEC``, from pts),
so variable-frame-rate files are stamped right; ``frame_index`` is ``round(t * fps)``.

A video is split into segments ``[k*S, (k+1)*S)`` (the first starts at -inf, the
last ends at +inf) that different actors decode in parallel. A segment seeks to a
little before its start (OpenCV decodes forward from the keyframe before that
point), decodes forward, and keeps the sampled frames whose time it owns; the
frame just before its start tells the sampling rule whether the first owned frame
opens a new slot. So every frame is sampled by exactly one segment, and the
sampled frames are the same whatever the segment length.

Frames are decoded, detected and dropped one at a time: an actor holds a single
frame plus the small face crops of its segment.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fer_batch.config import AnnotateConfig, VideoConfig
from fer_batch.detect import EMPTY
from fer_batch.faces import crop_faces, face_meta, find_faces, frame_for_detection
from fer_batch.images import MediaError
from fer_batch.records import N_META, ItemResult, item_key
from fer_batch.registry import Scorer
from fer_batch.schema import STAGE_DECODE, STAGE_DETECT, STAGE_READ
from fer_batch.sources import filesystem, is_local, retry_transient, stat_object
from fer_batch.store import Store
from fer_batch.tracking import IouTracker, staged_segments, video_key

_SLOT_EPS = 1e-9  # a frame stamped 0.999999999 s belongs to the 1 s slot
_SEEK_MARGIN_FRAMES = 2  # seek this many frame periods before a segment's start
_END_TOLERANCE_FRAMES = 1  # frame counts of some containers are estimates
_PROBE_CHUNK = 16  # videos probed per Ray task
AUTO_SEGMENTS = 8  # a video spreads over up to this many detection tasks by default
AUTO_MIN_S = 10.0
AUTO_MAX_S = 60.0


@dataclass(frozen=True)
class VideoInfo:
    """What the container says: frames per second, frame count and duration (may be NaN)."""

    fps: float
    frame_count: int
    duration_s: float
    width: int
    height: int


@dataclass(frozen=True)
class Frame:
    index: int
    t: float
    pixels: np.ndarray


# --- sampling rule and segment plan (pure) ---------------------------------------------


def sample_slot(t: float, index: int, vcfg: VideoConfig) -> int | None:
    """The sampling slot of a frame; None means every frame is its own slot."""
    if vcfg.fps is not None:
        return math.floor(t * vcfg.fps + _SLOT_EPS)
    if vcfg.every_n_frames is not None:
        return index // vcfg.every_n_frames
    return None


def is_sampled(slot: int | None, prev_slot: int | None, has_prev: bool) -> bool:
    """A frame is sampled when it opens a new slot (or when every frame is sampled)."""
    return slot is None or not has_prev or slot != prev_slot


def past_cap(slot: int | None, index: int, vcfg: VideoConfig) -> bool:
    """--max-frames-per-video keeps the first N sampling slots of the video."""
    if vcfg.max_frames is None:
        return False
    return (index if slot is None else slot) >= vcfg.max_frames


def sampling_horizon(fps: float, vcfg: VideoConfig) -> float:
    """Time after which --max-frames-per-video samples nothing (inf without a cap)."""
    if vcfg.max_frames is None:
        return math.inf
    if vcfg.fps is not None:
        return vcfg.max_frames / vcfg.fps
    if not fps > 0:
        return math.inf
    return vcfg.max_frames * (vcfg.every_n_frames or 1) / fps


def segment_seconds(horizon: float, vcfg: VideoConfig) -> float:
    """--segment-seconds, or by default a length that depends on the video alone (so a
    resumed run cuts the same segments on any cluster): about AUTO_SEGMENTS segments,
    none shorter than AUTO_MIN_S (each costs a seek) or longer than AUTO_MAX_S."""
    if vcfg.segment_seconds is not None:
        return vcfg.segment_seconds
    return min(AUTO_MAX_S, max(AUTO_MIN_S, horizon / AUTO_SEGMENTS))


def plan_segments(info: VideoInfo | None, vcfg: VideoConfig) -> list[tuple[float, float]]:
    """[start, end) of each segment; the first starts at 0 (owning anything earlier), the last
    is open-ended, so no frame falls outside every segment whatever the container claims."""
    if info is None or not math.isfinite(info.duration_s) or info.duration_s <= 0:
        return [(0.0, math.inf)]
    horizon = min(info.duration_s, sampling_horizon(info.fps, vcfg))
    size = segment_seconds(horizon, vcfg)
    n = max(1, math.ceil(horizon / size - 1e-9))
    return [(k * size, (k + 1) * size if k < n - 1 else math.inf) for k in range(n)]


def frame_index_of(t: float, fps: float) -> int:
    return int(round(t * fps)) if fps > 0 else 0


# --- local copies of remote videos ------------------------------------------------------


class LocalCopy:
    """At most one remote video on local disk; replaced by the next one, removed at exit.

    OpenCV reads local files only. A copy lives in its own temp folder so that
    `clear` (called on switching videos, by `atexit` when the actor ends, or by the
    caller) removes it whole; local inputs are used in place.
    """

    def __init__(self) -> None:
        self.key: str | None = None
        self.folder: str | None = None
        self.path: str | None = None
        self._registered = False

    def get(self, uri: str, version: str, storage_options: dict[str, Any]) -> str:
        fs, path = filesystem(uri, storage_options)
        if is_local(fs):
            return path
        key = f"{uri}|{version}"
        if key == self.key and self.path is not None:
            return self.path
        self.clear()
        if not self._registered:
            atexit.register(self.clear)
            self._registered = True
        self.folder = tempfile.mkdtemp(prefix="fer-batch-video-")
        local = os.path.join(self.folder, "video" + os.path.splitext(path)[1].lower())
        retry_transient(fs.get_file, path, local)
        self.key, self.path = key, local
        return local

    def clear(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.key = self.folder = self.path = None


_ACTOR_COPY = LocalCopy()  # holds nothing until a remote video is first read


# --- decoding ---------------------------------------------------------------------------


def open_video(path: str) -> tuple[Any, VideoInfo]:
    """An OpenCV capture (one decode thread: one actor per core) and its container info."""
    import cv2

    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise MediaError(STAGE_DECODE, "EmptyFile", "file is empty (0 bytes)")
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if not cap.isOpened():
        raise MediaError(STAGE_DECODE, "UnreadableVideo",
                         "cannot open as a video (not a video, no video stream, or damaged "
                         "container)")
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)  # portrait phone video comes out upright
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = fps if math.isfinite(fps) and fps > 0 else float("nan")
    duration = count / fps if count > 0 and fps > 0 else float("nan")
    info = VideoInfo(fps=fps, frame_count=count if count > 0 else -1, duration_s=duration,
                     width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                     height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    return cap, info


def _grab(cap: Any) -> float | None:
    """Decode the next frame (no colour conversion); its presentation time, or None."""
    import cv2

    if not cap.grab():
        return None
    return cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0


def _seek_before(cap: Any, start: float, fps: float) -> float | None:
    """Position the capture so the next frames lead up to `start`; the first frame's time.

    OpenCV seeks to the keyframe before the target and decodes forward to it. The
    first frame must lie before `start` so the sampling rule knows the slot of the
    frame preceding the segment; if it does not, seek again further back.
    """
    import cv2

    period = 1.0 / fps if fps > 0 else 0.04
    margin = _SEEK_MARGIN_FRAMES * period
    while True:
        target = max(0.0, start - margin)
        if target > 0:
            cap.set(cv2.CAP_PROP_POS_MSEC, target * 1000.0)
        else:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        t = _grab(cap)
        if t is None or t < start or target == 0:
            return t
        margin *= 4


@dataclass
class DecodeState:
    """What decoding a segment saw, for the error rows and the media row."""

    last_index: int = -1
    stopped: bool = False  # the stream ended (or broke) before the segment did
    capped: bool = False


def sampled_frames(cap: Any, info: VideoInfo, start: float, end: float, vcfg: VideoConfig,
                   state: DecodeState) -> Iterator[Frame]:
    """Yield the sampled frames with start <= t < end, one at a time (start 0: from -inf)."""
    t = _grab(cap) if start <= 0 else _seek_before(cap, start, info.fps)
    start = -math.inf if start <= 0 else start
    has_prev, prev_slot = False, None
    while t is not None and t < end:
        index = frame_index_of(t, info.fps)
        slot = sample_slot(t, index, vcfg)
        if t >= start and is_sampled(slot, prev_slot, has_prev):
            if past_cap(slot, index, vcfg):
                state.capped = True
                return
            ok, pixels = cap.retrieve()
            if not ok:
                state.stopped = True
                return
            yield Frame(index, t, pixels)
        if t >= start:
            state.last_index = index
        has_prev, prev_slot = True, slot
        t = _grab(cap)
    state.stopped = t is None


def missing_frames(info: VideoInfo, start: float, end: float,
                   state: DecodeState) -> tuple[int, int]:
    """(first missing frame, count): frames of [start, end) that the container promises but
    the decoder never delivered."""
    if state.capped or not state.stopped or info.frame_count <= 0 or not info.fps > 0:
        return -1, 0
    last = info.frame_count - 1
    if math.isfinite(end):
        last = min(last, math.ceil(end * info.fps - 1e-6) - 1)
    first = max(state.last_index + 1, math.ceil(start * info.fps - 1e-6) if start > 0 else 0)
    missing = last - first + 1
    return (first, missing) if missing > _END_TOLERANCE_FRAMES else (-1, 0)


# --- detection on one segment -----------------------------------------------------------


def detect_frame(pixels: np.ndarray, cfg: AnnotateConfig, spec: Scorer,
                 detector: Any) -> tuple[Any, np.ndarray]:
    """Detections (original pixels) and model-sized crops of one decoded frame."""
    pixels = frame_for_detection(pixels, cfg.detect, spec)
    det = find_faces(pixels, 1.0, pixels.shape[1], pixels.shape[0], cfg.detect, detector)
    return det, crop_faces(pixels, 1.0, det, spec)


def detect_segment(item: dict, cfg: AnnotateConfig, spec: Scorer, detector: Any) -> ItemResult:
    """Decode one segment of a video and find, crop and track its faces.

    Track ids are local to the segment (see fer_batch.tracking for the stitching);
    every problem becomes an error row and the frames that decoded are kept.
    """
    result = ItemResult(n_frames_sampled=0)
    uri = str(item["source_uri"])
    try:
        path = _ACTOR_COPY.get(uri, str(item["version"]), cfg.storage_options)
    except Exception as e:  # noqa: BLE001 - any read failure is this item's error row
        result.add_error(STAGE_READ, type(e).__name__, f"cannot read {uri}: {e}")
        return result
    try:
        cap, info = open_video(path)
    except MediaError as e:
        result.add_error(e.stage, e.error_type, str(e))
        return result
    try:
        _detect_frames(cap, info, item, cfg, spec, detector, result)
    finally:
        cap.release()
    return result


def _detect_frames(cap: Any, info: VideoInfo, item: dict, cfg: AnnotateConfig, spec: Scorer,
                   detector: Any, result: ItemResult) -> None:
    start, end = float(item["seg_start_s"]), float(item["seg_end_s"])
    start = 0.0 if not math.isfinite(start) else start
    end = math.inf if math.isnan(end) else end
    result.fps, result.frame_count, result.duration_s = info.fps, info.frame_count, info.duration_s
    result.width, result.height = info.width, info.height
    if info.width * info.height > cfg.detect.max_pixels:
        result.add_error(STAGE_DECODE, "PixelLimitExceeded",
                         f"frames are {info.width}x{info.height}, over --max-pixels "
                         f"{cfg.detect.max_pixels:,}; not decoded")
        return
    tracker, metas, crops, state = IouTracker(), [], [], DecodeState()
    for frame in sampled_frames(cap, info, start, end, cfg.video, state):
        result.height, result.width = frame.pixels.shape[:2]
        if result.first_frame < 0:
            result.first_frame = frame.index
        result.last_frame = frame.index
        result.n_frames_sampled += 1
        try:
            det, crop = detect_frame(frame.pixels, cfg, spec, detector)
        except Exception as e:  # noqa: BLE001 - a detector crash on one frame is bad data
            result.add_error(STAGE_DETECT, type(e).__name__, f"face detection failed at "
                             f"t={frame.t:.3f}s: {e}", frame_index=frame.index)
            result.frames_failed += 1
            det, crop = EMPTY, np.zeros((0, *spec.crop_shape), np.uint8)
        meta = face_meta(det, frame.index, frame.t)
        meta[:, 8] = tracker.update(det.boxes)
        metas.append(meta)
        crops.append(crop)
    _report_missing(info, start, end, state, result)
    result.meta = np.concatenate(metas) if metas else np.zeros((0, N_META))
    result.crops = np.concatenate(crops) if crops else None


def _report_missing(info: VideoInfo, start: float, end: float, state: DecodeState,
                    result: ItemResult) -> None:
    first, missing = missing_frames(info, start, end, state)
    if missing:
        result.frames_failed += missing
        result.add_error(STAGE_DECODE, "FramesUndecodable",
                         f"decoding stopped at frame {first} (t={first / info.fps:.3f}s): "
                         f"{missing} of the container's {info.frame_count} frames "
                         f"({info.fps:.3f} fps) in this segment could not be decoded",
                         frame_index=first)


# --- planning (driver side; probes run as Ray tasks) ----------------------------------


def expand_videos(items: pa.Table, cfg: AnnotateConfig) -> pa.Table:
    """Work items with every video replaced by its segments not staged yet.

    Videos are probed (opened for fps and duration) before the detection actors
    start. Remote videos are probed in Ray tasks, so a remote video is copied to a
    worker, never to the driver. Up to _PROBE_CHUNK local videos are probed here: a
    local probe reads a header, and a task would first start a worker process (about
    1.5 s of CPU). Images pass through unchanged.
    """
    import ray

    video = pc.equal(items["media_type"], "video")
    if not pc.any(video).as_py():
        return items
    entries = items.filter(video).to_pylist()
    if len(entries) <= _PROBE_CHUNK and not any("://" in e["source_uri"] for e in entries):
        segments = plan_videos(entries, cfg)
    else:
        task = ray.remote(num_cpus=0.25, max_retries=3)(plan_videos)
        refs = [task.remote(entries[i : i + _PROBE_CHUNK], cfg)
                for i in range(0, len(entries), _PROBE_CHUNK)]
        segments = [row for ref in refs for row in ray.get(ref)]
    return pa.concat_tables([items.filter(pc.invert(video)),
                             pa.Table.from_pylist(segments, schema=items.schema)])


def plan_videos(entries: list[dict], cfg: AnnotateConfig) -> list[dict]:
    """Segment work items still to do for each listed video (in a task, or the driver)."""
    store = Store.open(cfg.output, cfg.storage_options)
    copy, items = LocalCopy(), []
    try:
        for entry in entries:
            uri = entry["source_uri"]
            if entry["size_bytes"] < 0:  # from a manifest without sizes: stat it here
                try:
                    entry["size_bytes"], entry["version"] = stat_object(uri, cfg.storage_options)
                except Exception:  # noqa: BLE001 - the read fails too, as an error row
                    entry["size_bytes"], entry["version"] = 0, ""
            info = probe(copy, entry, cfg.storage_options)
            key = video_key(item_key(uri, entry["size_bytes"], entry["version"], 0))
            staged = staged_segments(store, uri, key)
            for k, (start, end) in enumerate(plan_segments(info, cfg.video)):
                if k not in staged:
                    items.append({**entry, "segment": k, "seg_start_s": start, "seg_end_s": end,
                                  "item_key": f"{key}|{k}"})
    finally:
        copy.clear()
    return items


def probe(copy: LocalCopy, entry: dict, storage_options: dict[str, Any]) -> VideoInfo | None:
    """Container info, or None when the video cannot be read (its segment says why)."""
    try:
        cap, info = open_video(copy.get(entry["source_uri"], entry["version"], storage_options))
    except Exception:  # noqa: BLE001 - detect_segment reports the same failure as an error row
        return None
    cap.release()
    return info
