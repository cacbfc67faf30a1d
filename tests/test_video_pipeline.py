"""Videos through the whole annotate job on Ray: synthetic and bad videos next to an image."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from fer_batch.cli import main
from fer_batch.schema import SCHEMAS
from tests.invariants import check_invariant
from tests.media import astronaut
from tests.test_video import write_bad_videos, write_video

pytestmark = pytest.mark.slow
ARGS = ["--every-n-frames", "2", "--no-progress"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    write_video(root / "faces.avi", 40)
    write_video(root / "upper.MP4", 30, "mp4v")  # extensions are case-insensitive
    expected = write_bad_videos(root / "bad")
    astronaut().save(root / "photo.jpg")
    return root, {f"bad/{name}": status for name, status in expected.items()}


def _annotate(root, out, *args) -> dict:
    assert main(["annotate", str(root), "--output", str(out), *ARGS, *args]) == 0
    return json.loads((out / "_run.json").read_text())


@pytest.fixture(scope="module")
def segmented(ray_session, archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("segmented")
    _annotate(archive[0], out, "--segment-seconds", "1.5")
    return out


def _read(out, name):
    return pq.read_table(out / name, schema=SCHEMAS[name]).to_pandas()


def test_every_video_once_with_its_status(segmented, archive):
    root, bad = archive
    uris = {str(p) for p in root.rglob("*") if p.is_file()}
    tables = check_invariant(segmented, uris)
    media = tables["media"].set_index("source_uri")
    for name, status in bad.items():
        assert media.loc[str(root / name), "status"] == status, name
    video = media.loc[str(root / "faces.avi")]
    assert (video.status, video.fps, video.frame_count) == ("ok", 10, 40)
    assert video.n_frames_sampled == 20
    assert video.duration_s == pytest.approx(4.0) and video.n_faces == 40
    partial = tables["errors"][tables["errors"]["source_uri"] == str(root / "bad/half_broken.avi")]
    assert set(partial["error_type"]) == {"FramesUndecodable"}
    assert not (segmented / "_segments").exists()


def test_tracks_and_track_ids(segmented, archive):
    root, _ = archive
    faces, tracks = _read(segmented, "faces"), _read(segmented, "tracks")
    videos = faces[faces["media_type"] == "video"]
    assert videos["track_id"].notna().all() and faces.loc[
        faces["media_type"] == "image", "track_id"].isna().all()
    mine = tracks[tracks["source_uri"] == str(root / "faces.avi")].sort_values("track_id")
    assert list(mine["track_id"]) == [0, 1] and list(mine["n_frames"]) == [20, 20]
    assert mine["start_s"].tolist() == [0.0, 0.0]
    assert mine["end_s"].tolist() == pytest.approx([3.8, 3.8])
    means = mine[[c for c in mine.columns if c.startswith("mean_")]].sum(axis=1)
    assert means.round(4).tolist() == [1.0, 1.0]


def test_segmenting_gives_identical_tables(segmented, archive, tmp_path):
    _annotate(archive[0], tmp_path, "--segment-seconds", "1000")
    for name, keys in (("faces", ["source_uri", "frame_index", "face_index"]),
                       ("tracks", ["source_uri", "track_id"]), ("media", ["source_uri"])):
        a = _read(segmented, name).drop(columns="run_id").sort_values(keys, ignore_index=True)
        b = _read(tmp_path, name).drop(columns="run_id").sort_values(keys, ignore_index=True)
        assert a.equals(b), name


def test_rerun_redoes_nothing(segmented, archive):
    before = _read(segmented, "media").sort_values("source_uri", ignore_index=True)
    record = _annotate(archive[0], segmented, "--segment-seconds", "1.5")
    assert record["counts"]["processed"] == 0
    assert record["counts"]["skipped_done"] == record["counts"]["inputs"] == len(before)
    assert _read(segmented, "media").sort_values("source_uri", ignore_index=True).equals(before)
