"""IoU tracking, stitching across segments, staging and the per-video finalize (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fer_batch.config import AnnotateConfig, VideoConfig
from fer_batch.detect import make_detector
from fer_batch.records import ITEM_COLUMNS, results_to_batch
from fer_batch.registry import resolve_model
from fer_batch.schema import EMOTIONS, SCHEMAS
from fer_batch.sink import write_commit
from fer_batch.store import Store
from fer_batch.tracking import (
    SEGMENTS_DIR,
    IouTracker,
    Stitcher,
    finalize_videos,
    greedy_match,
    iou_matrix,
    staged_segments,
    video_key,
)
from fer_batch.video import detect_segment, open_video, plan_segments
from tests.test_video import half_broken, write_video


def test_iou_and_greedy_match():
    a = np.array([[0, 0, 10, 10], [100, 100, 10, 10]])
    b = np.array([[5, 0, 10, 10], [0, 0, 10, 10], [300, 300, 5, 5]])
    iou = iou_matrix(a, b)
    assert iou[0, 1] == 1.0 and iou[0, 0] == pytest.approx(50 / 150) and iou[1].max() == 0
    assert greedy_match(a, b) == [(0, 1)]  # the best pair wins; b[0] is left over
    assert greedy_match(a, np.zeros((0, 4))) == [] and greedy_match(np.zeros((0, 4)), b) == []


def test_tracker_continues_overlapping_faces_only():
    tracker = IouTracker()
    assert list(tracker.update([[0, 0, 50, 50], [200, 0, 50, 50]])) == [0, 1]
    assert list(tracker.update([[205, 0, 50, 50], [4, 2, 50, 50]])) == [1, 0]
    assert list(tracker.update([])) == []
    assert list(tracker.update([[4, 2, 50, 50]])) == [2]  # a gap in the sampled frames ends it


def _random_video(rng, n_frames: int) -> list[np.ndarray]:
    """Boxes per frame: a few faces drifting, appearing and vanishing."""
    faces = []
    frames = []
    for _ in range(n_frames):
        if rng.random() < 0.2:
            faces.append(rng.uniform(0, 400, 2))
        faces = [f + rng.normal(0, 8, 2) for f in faces if rng.random() > 0.08]
        boxes = np.array([[x, y, 60, 60] for x, y in faces]).reshape(-1, 4).round()
        frames.append(boxes[np.lexsort((boxes[:, 1], boxes[:, 0]))] if len(boxes) else boxes)
    return frames


def _faces_table(frames: list[np.ndarray], first: int, ids: list[np.ndarray]) -> pa.Table:
    rows = []
    for k, (boxes, local) in enumerate(zip(frames, ids)):
        for i, (box, tid) in enumerate(zip(boxes, local)):
            rows.append({"frame_index": first + k, "timestamp_s": (first + k) / 10, "face_index": i,
                         "track_id": int(tid), **dict(zip(("bbox_x", "bbox_y", "bbox_w",
                                                            "bbox_h"), box.tolist())),
                         **{e: float(e == "happy") for e in EMOTIONS}})
    columns = ["frame_index", "timestamp_s", "face_index", "track_id", "bbox_x", "bbox_y",
               "bbox_w", "bbox_h", *EMOTIONS]
    return pa.Table.from_pylist(rows) if rows else pa.table({c: [] for c in columns})


@pytest.mark.parametrize("seed", range(5))
def test_stitched_segments_equal_one_pass(seed):
    rng = np.random.default_rng(seed)
    frames = _random_video(rng, 120)
    one = IouTracker()
    expected = np.concatenate([one.update(b) for b in frames])
    cuts = sorted(set(rng.integers(1, 119, 6).tolist()))
    stitcher, got = Stitcher(), []
    for start, end in zip([0, *cuts], [*cuts, 120]):
        local = IouTracker()
        ids = [local.update(b) for b in frames[start:end]]
        table = _faces_table(frames[start:end], start, ids)
        got.append(stitcher.relabel(table, start, end - 1)["track_id"].to_numpy())
    np.testing.assert_array_equal(np.concatenate(got), expected)
    tracks = stitcher.tracks_table("v", "r").to_pylist()
    assert [t["track_id"] for t in tracks] == list(range(one.next_id))
    assert sum(t["n_frames"] for t in tracks) == len(expected)
    assert all(t["emotion"] == "happy" and t["mean_happy"] == 1.0 for t in tracks)


# --- staging and finalize through the real commit writer --------------------------------


def commit_segments(path, out, segment_seconds: float, version: str = "v1") -> list[str]:
    """Detect each planned segment, give faces fixed fake scores, commit through the sink."""
    spec = resolve_model("fer-mini-xception")
    cfg = AnnotateConfig(inputs=(str(path),), output=str(out),
                         video=VideoConfig(fps=None, every_n_frames=2,
                                           segment_seconds=segment_seconds))
    detector = make_detector(cfg.detect)
    cap, info = open_video(str(path))
    cap.release()
    keys = []
    for k, (start, end) in enumerate(plan_segments(info, cfg.video)):
        item = {"source_uri": str(path), "media_type": "video", "size_bytes": 1,
                "version": version, "segment": k, "seg_start_s": start, "seg_end_s": end,
                "item_key": f"{path}|1|{version}|{k}"}
        result = detect_segment(item, cfg, spec, detector)
        batch = results_to_batch({c: np.array([item[c]], dtype=object) for c in ITEM_COLUMNS},
                                 [result], spec.input_shape, "node")
        del batch["crops"]
        scores = np.full((len(result.meta), 7), 0.1, np.float32)
        scores[:, 3] = 0.4
        batch["scores"] = np.empty(1, dtype=object)
        batch["scores"][0] = scores
        batch["classify_node"] = np.array(["node"], dtype=object)
        write_commit(batch, Store.open(str(out)), "run-1", "test-model")
        keys.append(item["item_key"])
    return keys


def _tables(out) -> dict[str, pa.Table]:
    return {name: pq.read_table(out / name, schema=schema) for name, schema in SCHEMAS.items()
            if (out / name).exists()}


def test_finalize_commits_each_video_whole_and_identically(tmp_path):
    video = write_video(tmp_path / "v.avi", 40)
    outs = {}
    for seconds in (1000.0, 1.3):
        out = tmp_path / f"out-{seconds}"
        keys = commit_segments(video, out, seconds)
        assert not (out / "faces").exists()  # nothing published before the video is whole
        assert staged_segments(_store(out), str(video), video_key(keys[0])) == set(range(len(keys)))
        assert finalize_videos(_store(out), "run-1") == 1
        assert not (out / SEGMENTS_DIR).exists()
        assert finalize_videos(_store(out), "run-1") == 0
        outs[seconds] = _tables(out)
        for name in outs[seconds]:
            for part in (out / name).glob("*.parquet"):
                assert pq.read_schema(part).remove_metadata() == SCHEMAS[name]
    whole, split = outs[1000.0], outs[1.3]
    (media,) = split["media"].to_pylist()
    assert media["status"] == "ok" and media["n_frames_sampled"] == 20 and media["fps"] == 10
    assert media["n_faces"] == len(split["faces"]) == 40
    for name in ("faces", "tracks", "media"):
        assert whole[name].drop(["run_id"]).equals(split[name].drop(["run_id"])), name
    tracks = split["tracks"].to_pylist()
    assert [t["n_frames"] for t in tracks] == [20, 20]
    assert tracks[0]["start_s"] == 0.0 and tracks[0]["end_s"] == pytest.approx(3.8)
    assert tracks[0]["mean_happy"] == pytest.approx(0.4) and tracks[0]["emotion"] == "happy"
    (marker,) = _markers(tmp_path / "out-1.3").to_pylist()
    assert marker["segment"] == -1 and marker["n_faces"] == 40 and marker["media_type"] == "video"


def _store(out) -> Store:
    return Store.open(str(out))


def _markers(out) -> pa.Table:
    from fer_batch.store import COMMIT_SCHEMA

    return pq.read_table(out / "_commits", schema=COMMIT_SCHEMA)


def test_partial_video_keeps_good_frames_and_says_what_failed(tmp_path):
    video = tmp_path / "half.avi"
    half_broken(write_video(video, 40))
    out = tmp_path / "out"
    commit_segments(video, out, 1.5)
    assert finalize_videos(_store(out), "run-1") == 1
    tables = _tables(out)
    (media,) = tables["media"].to_pylist()
    assert media["status"] == "partial" and media["n_frames_sampled"] == 10
    errors = tables["errors"].to_pylist()
    assert {e["error_type"] for e in errors} == {"FramesUndecodable"}
    assert sorted(e["frame_index"] for e in errors) == [20, 30]
    assert len(tables["faces"]) == 20 and set(tables["faces"]["frame_index"].to_pylist()) == set(
        range(0, 20, 2))


def test_unfinished_video_waits_and_other_versions_are_dropped(tmp_path):
    video = write_video(tmp_path / "v.avi", 30)
    out = tmp_path / "out"
    keys = commit_segments(video, out, 1.0)
    folder = next((out / SEGMENTS_DIR).iterdir())
    last = sorted(folder.iterdir())[-1]
    last.unlink()  # as if the run died before the last segment was committed
    assert finalize_videos(_store(out), "run-1") == 0
    assert not (out / "media").exists()
    assert staged_segments(_store(out), str(video), video_key(keys[0])) == set(range(len(keys) - 1))
    assert staged_segments(_store(out), str(video), f"{video}|1|v2") == set()  # a new version
    assert not list(folder.iterdir())


def test_a_run_that_lost_the_lease_cannot_commit_a_video(tmp_path, monkeypatch):
    """finalize_video checks the lease before its parts and again before its marker, as
    every commit does: a superseded driver publishes nothing, and the staged segments stay
    for the run that owns the output now."""
    from fer_batch import lease, tracking

    video = write_video(tmp_path / "v.avi", 20)
    out = tmp_path / "out"
    lease.take(_store(out), "run-1")
    keys = commit_segments(video, out, 1.0)
    lease.take(_store(out), "run-2")
    with pytest.raises(lease.LeaseLost, match="run-1 no longer owns"):
        finalize_videos(_store(out), "run-1")
    assert not (out / "_commits").exists() and not (out / "faces").exists()
    assert staged_segments(_store(out), str(video), video_key(keys[0])) == set(range(len(keys)))

    # Taken while the parts are being written: the parts are orphans, no marker is written.
    lease.take(_store(out), "run-1")
    tracks_table = tracking.Stitcher.tracks_table

    def taken_meanwhile(self, *args):
        lease.take(_store(out), "run-3")
        return tracks_table(self, *args)

    monkeypatch.setattr(tracking.Stitcher, "tracks_table", taken_meanwhile)
    with pytest.raises(lease.LeaseLost, match="run run-3"):
        finalize_videos(_store(out), "run-1")
    assert (out / "faces").exists() and not (out / "_commits").exists()
    monkeypatch.setattr(tracking.Stitcher, "tracks_table", tracks_table)
    assert finalize_videos(_store(out), "run-3") == 1
    assert len(_markers(out)) == 1
