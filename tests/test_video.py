"""Video sampling, segmenting and bad videos on small synthetic files (no Ray).

The helpers here write the test videos the other video tests use: a real face
(scikit-image's astronaut) pasted twice into 320x240 frames, sliding a few pixels
per frame, written with cv2.VideoWriter.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from fer_batch.config import AnnotateConfig, VideoConfig
from fer_batch.detect import make_detector
from fer_batch.images import MediaError
from fer_batch.registry import resolve_model
from fer_batch.video import (
    VideoInfo,
    detect_segment,
    frame_index_of,
    is_sampled,
    open_video,
    past_cap,
    plan_segments,
    sample_slot,
    sampling_horizon,
)

FPS = 10
WIDTH, HEIGHT = 320, 240


def _face() -> np.ndarray:
    import cv2
    from skimage import data

    bgr = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return cv2.resize(bgr[0:300, 100:350], (125, 150))


def face_frame(i: int, step: int = 2) -> np.ndarray:
    """Frame i: two astronaut faces (the second mirrored) sliding `step` px a frame, right
    then back left (0 to 28 px and back), as real faces move: no frame jumps. (A jump back
    of 28 px at the wrap of a sawtooth put a 51-px BlazeFace box at IoU 0.29-0.33 with the
    previous sampled frame, on the tracker's 0.3 threshold, so the tracks split or not by
    a pixel of JPEG noise.)"""
    face = _face()
    frame = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
    shift = 28 - abs(28 - (i * step) % 56)
    frame[40:190, 5 + shift : 130 + shift] = face
    frame[40:190, 165 + shift : 290 + shift] = face[:, ::-1]
    return frame


def write_video(path: Path, n_frames: int, fourcc: str = "MJPG", fps: float = FPS) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (WIDTH, HEIGHT))
    for i in range(n_frames):
        writer.write(face_frame(i))
    writer.release()
    return path


def write_rotated_video(path: Path, n_frames: int = 10) -> Path:
    """Frames stored sideways (as a phone does) with a 'rotate 90' display matrix in tkhd."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (HEIGHT, WIDTH))
    for i in range(n_frames):
        writer.write(cv2.rotate(face_frame(i), cv2.ROTATE_90_CLOCKWISE))
    writer.release()
    data = bytearray(path.read_bytes())
    matrix = data.find(b"tkhd") + 4 + 40  # version-0 tkhd: the matrix follows 40 bytes of fields
    data[matrix : matrix + 20] = struct.pack(">5I", 0, 0xFFFF0000, 0, 0x10000, 0)
    path.write_bytes(bytes(data))
    return path


def _boxes(data: bytearray, start: int, end: int):
    while start < end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        yield start, size, kind
        start += size


def _find_box(data: bytearray, path: bytes) -> list[int]:
    """Offsets of the MP4 boxes along `path` (b"moov/trak/..."), outermost first."""
    chain, start, end = [], 0, len(data)
    for kind in path.split(b"/"):
        start, size = next((o, n) for o, n, k in _boxes(data, start, end) if k == kind)
        chain.append(start)
        start, end = start + 8, start + size
    return chain


def make_vfr(path: Path, fast: int) -> None:
    """Make a cv2-written MP4 variable-rate: frames from `fast` on last twice as long.

    Rewrites the time-to-sample table (moov follows mdat, so no chunk offset moves)
    and scales the header durations to match.
    """
    data = bytearray(path.read_bytes())
    chain = _find_box(data, b"moov/trak/mdia/minf/stbl/stts")
    stts = chain[-1]
    old = struct.unpack(">I", data[stts : stts + 4])[0]
    count, delta = struct.unpack(">II", data[stts + 16 : stts + 24])
    new = struct.pack(">I4sIIIIII", 32, b"stts", 0, 2, fast, delta, count - fast, 2 * delta)
    data[stts : stts + old] = new
    for box in chain[:-1]:
        size = struct.unpack(">I", data[box : box + 4])[0] + len(new) - old
        data[box : box + 4] = struct.pack(">I", size)
    scale = (2 * count - fast) / count
    for path_, field in ((b"moov/mvhd", 24), (b"moov/trak/tkhd", 28),
                         (b"moov/trak/mdia/mdhd", 24), (b"moov/trak/edts/elst", 16)):
        offset = _find_box(data, path_)[-1] + field
        value = struct.unpack(">I", data[offset : offset + 4])[0]
        data[offset : offset + 4] = struct.pack(">I", round(value * scale))
    path.write_bytes(bytes(data))


def write_bad_videos(root: Path) -> dict[str, str]:
    """Every kind of bad video; returns {file name: expected media status}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mov").write_text("this is not a video\n" * 20)
    with wave.open(str(root / "audio_only.m4v"), "wb") as w:  # a WAV: no video stream at all
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 8000)
    whole = write_video(root / "whole.mp4", 40, "mp4v").read_bytes()
    (root / "whole.mp4").unlink()
    (root / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # moov is at the end: unreadable
    half_broken(write_video(root / "half_broken.avi", 40))
    return {"zero.mp4": "error", "text.mov": "error", "audio_only.m4v": "error",
            "cut.mp4": "error", "half_broken.avi": "partial"}


def half_broken(path: Path) -> None:
    """Scramble the JPEG data of every frame from the 21st on: decoding stops half-way."""
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\xff\xd8\xff"]
    for start in starts[20:]:
        for k in range(start, min(start + 400, len(data))):
            data[k] = (k * 7919) & 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def spec():
    return resolve_model("fer-mini-xception")


def _cfg(**video) -> AnnotateConfig:
    return AnnotateConfig(inputs=("x",), output="unused", video=VideoConfig(**video))


def run_segments(path: Path, cfg: AnnotateConfig, spec) -> tuple[np.ndarray, list]:
    """detect_segment over every planned segment; (all face meta, per-segment results)."""
    try:
        cap, info = open_video(str(path))
        cap.release()
    except MediaError:
        info = None
    detector = make_detector(cfg.detect)
    results = [detect_segment({"source_uri": str(path), "version": "", "seg_start_s": start,
                               "seg_end_s": end}, cfg, spec, detector)
               for start, end in plan_segments(info, cfg.video)]
    return np.concatenate([r.meta for r in results]), results


# --- pure functions ---------------------------------------------------------------------


def test_fps_sampling_takes_the_first_frame_of_each_slot():
    vcfg = VideoConfig(fps=3.0)
    times = [k / 10 for k in range(20)]
    slots = [sample_slot(t, frame_index_of(t, 10), vcfg) for t in times]
    sampled = [t for k, t in enumerate(times)
               if is_sampled(slots[k], slots[k - 1] if k else None, k > 0)]
    assert sampled == [0.0, 0.4, 0.7, 1.0, 1.4, 1.7]


def test_every_n_and_all_frames_and_cap():
    every = VideoConfig(fps=None, every_n_frames=4)
    assert [sample_slot(0, i, every) for i in (0, 3, 4, 9)] == [0, 0, 1, 2]
    assert sample_slot(1.23, 7, VideoConfig(fps=None)) is None
    capped = VideoConfig(fps=2.0, max_frames=3)
    assert not past_cap(2, 0, capped) and past_cap(3, 0, capped)
    assert past_cap(None, 5, VideoConfig(fps=None, max_frames=5))
    assert sampling_horizon(25.0, capped) == 1.5
    assert sampling_horizon(25.0, VideoConfig(fps=None, every_n_frames=5, max_frames=10)) == 2.0


def test_segments_cover_all_time_and_honour_the_cap():
    info = VideoInfo(fps=25.0, frame_count=2055, duration_s=82.2, width=1, height=1)
    segments = plan_segments(info, VideoConfig(segment_seconds=10))
    assert len(segments) == 9 and segments[0] == (0.0, 10.0) and segments[-1] == (80.0, math.inf)
    assert all(a[1] == b[0] for a, b in zip(segments, segments[1:]))
    assert plan_segments(None, VideoConfig()) == [(0.0, math.inf)]
    assert len(plan_segments(info, VideoConfig(fps=1.0, max_frames=15, segment_seconds=10))) == 2


@pytest.mark.parametrize("duration, n, size", [(82.2, 8, 82.2 / 8), (9.0, 1, None),
                                               (7200.0, 120, 60.0), (40.0, 4, 10.0)])
def test_default_segments_depend_on_the_video_alone(duration, n, size):
    """About 8 segments per video, 10 to 60 s long: a short video still spreads over
    actors, a long one is not cut finer than a seek is worth."""
    info = VideoInfo(fps=25.0, frame_count=int(duration * 25), duration_s=duration, width=1,
                     height=1)
    segments = plan_segments(info, VideoConfig())
    assert len(segments) == n and segments[-1][1] == math.inf
    if size is not None:
        assert segments[1][0] == pytest.approx(size)


# --- decoding synthetic videos ----------------------------------------------------------


@pytest.mark.parametrize("fourcc,suffix", [("MJPG", "avi"), ("mp4v", "mp4")])
@pytest.mark.parametrize("video", [
    {"fps": 3.0}, {"fps": None, "every_n_frames": 4}, {"fps": None},
    {"fps": 2.0, "max_frames": 7},
])
def test_segmenting_changes_nothing(tmp_path, spec, fourcc, suffix, video):
    path = write_video(tmp_path / f"v.{suffix}", 36, fourcc)
    whole, _ = run_segments(path, _cfg(**video, segment_seconds=1000), spec)
    split, parts = run_segments(path, _cfg(**video, segment_seconds=1.25), spec)
    assert len(parts) > 1 and len(whole) > 0
    np.testing.assert_array_equal(whole[:, :8], split[:, :8])  # all but the (local) track ids
    assert len(np.unique(whole[:, 0])) == sum(r.n_frames_sampled for r in parts)


def test_timestamps_are_presentation_times(tmp_path, spec):
    path = write_video(tmp_path / "v.mp4", 30, "mp4v")
    meta, (result,) = run_segments(path, _cfg(fps=None, segment_seconds=1000), spec)
    assert result.status == "ok" and result.n_frames_sampled == 30
    assert result.fps == FPS and result.frame_count == 30
    np.testing.assert_allclose(meta[:, 1], meta[:, 0] / FPS, atol=1e-6)
    assert set(meta[:, 2]) == {0, 1}  # two faces per frame


def test_variable_frame_rate_is_stamped_by_presentation_time(tmp_path, spec):
    path = write_video(tmp_path / "vfr.mp4", 40, "mp4v")
    make_vfr(path, 20)  # 20 frames at 0.1 s, then 20 at 0.2 s: 6 s, not 4
    whole, _ = run_segments(path, _cfg(fps=2.0, segment_seconds=1000), spec)
    split, parts = run_segments(path, _cfg(fps=2.0, segment_seconds=1.25), spec)
    stamps = np.unique(whole[:, 1]).round(6).tolist()
    assert stamps == [0.0, 0.5, 1.0, 1.5, 2.0, 2.6, 3.0, 3.6, 4.0, 4.6, 5.0, 5.6]
    np.testing.assert_array_equal(whole[:, :8], split[:, :8])
    assert len(parts) > 1


def test_one_track_per_face_within_a_segment(tmp_path, spec):
    path = write_video(tmp_path / "v.avi", 12)
    meta, (result,) = run_segments(path, _cfg(fps=None, segment_seconds=1000), spec)
    assert result.first_frame == 0 and result.last_frame == 11
    assert sorted(set(meta[:, 8])) == [0, 1]
    assert all((meta[meta[:, 2] == k, 8] == k).all() for k in (0, 1))


def test_rotation_metadata_is_honoured(tmp_path, spec):
    path = write_rotated_video(tmp_path / "phone.mp4")
    meta, (result,) = run_segments(path, _cfg(fps=None, segment_seconds=1000), spec)
    assert (result.width, result.height) == (WIDTH, HEIGHT)  # displayed size, not stored
    assert result.n_frames_sampled == 10 and len(meta) >= 10  # faces only show upright


@pytest.mark.parametrize("name,status", list({
    "zero.mp4": "error", "text.mov": "error", "audio_only.m4v": "error", "cut.mp4": "error",
    "half_broken.avi": "partial"}.items()))
def test_bad_videos_become_error_rows(tmp_path, spec, name, status):
    expected = write_bad_videos(tmp_path)
    assert expected[name] == status
    meta, results = run_segments(tmp_path / name, _cfg(fps=None, segment_seconds=1000), spec)
    (result,) = results
    assert result.status == status and result.errors
    if status == "partial":
        assert result.n_frames_sampled == 20 and len(meta) > 0
        (error,) = result.errors
        assert error["error_type"] == "FramesUndecodable" and error["frame_index"] == 20
        assert "20 of the container's 40 frames" in error["message"]


def test_half_broken_video_split_in_segments(tmp_path, spec):
    path = tmp_path / "half.avi"
    half_broken(write_video(path, 40))
    _, parts = run_segments(path, _cfg(fps=None, segment_seconds=1.5), spec)
    assert sum(r.n_frames_sampled for r in parts) == 20
    assert [r.status for r in parts] == ["ok", "partial", "error"]
    assert sum(r.frames_failed for r in parts) == 20


def test_remote_video_goes_through_one_local_copy_that_is_removed(tmp_path, spec):
    import fsspec

    from fer_batch import video

    fsspec.filesystem("memory").pipe("/remote/v.avi", write_video(tmp_path / "v.avi", 20)
                                     .read_bytes())
    uri = "memory://remote/v.avi"
    cfg = _cfg(fps=None, segment_seconds=1.0)
    entry = {"source_uri": uri, "media_type": "video", "size_bytes": -1, "version": "",
             "item_key": "", "segment": 0, "seg_start_s": math.nan, "seg_end_s": math.nan}
    items = video.plan_videos([entry], dataclasses.replace(cfg, output="memory://out"))
    assert [i["segment"] for i in items] == [0, 1] and items[0]["size_bytes"] > 0
    assert items[1]["item_key"].endswith("|1") and items[1]["seg_end_s"] == math.inf
    detector = make_detector(cfg.detect)
    results = [detect_segment(item, cfg, spec, detector) for item in items]
    assert [r.n_frames_sampled for r in results] == [10, 10]
    folder = video._ACTOR_COPY.folder
    assert folder is not None and len(list(Path(folder).iterdir())) == 1  # one copy, reused
    video._ACTOR_COPY.clear()  # what atexit does when the actor ends
    assert not Path(folder).exists()
