"""Real videos (../shared/data/videos): sampling, segmenting, rotation, tracks, a cut file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fer_batch.cli import main
from fer_batch.config import AnnotateConfig, VideoConfig
from fer_batch.detect import make_detector
from fer_batch.registry import resolve_model
from fer_batch.schema import SCHEMAS
from fer_batch.video import detect_segment

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
LONG = "SimpleFR__Video_2.mp4"
PORTRAIT = "face_swap_ss__test_video_03-2_faces.mp4"
NO_FACES = "face_swap_ss__test_video_06-no_faces.mp4"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not VIDEOS.is_dir(), reason=f"real videos not found at {VIDEOS}"),
]


def _annotate(out: Path, *args: str) -> None:
    assert main(["annotate", str(VIDEOS), "--output", str(out), "--no-progress", *args]) == 0


def _read(out: Path, name: str):
    return pq.read_table(out / name, schema=SCHEMAS[name]).to_pandas()


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    """The five videos at 1 fps, split in 10 s segments and whole."""
    outs = {}
    for seconds in ("10", "100000"):
        outs[seconds] = tmp_path_factory.mktemp(f"videos-{seconds}")
        _annotate(outs[seconds], "--video-fps", "1", "--segment-seconds", seconds)
    return outs


@pytest.mark.slow
def test_no_face_video_is_one_ok_row(runs):
    media = _read(runs["10"], "media").set_index("source_uri")
    row = media.loc[str(VIDEOS / NO_FACES)]
    assert (row.status, row.n_faces) == ("ok", 0)
    faces = _read(runs["10"], "faces")
    assert not (faces["source_uri"] == str(VIDEOS / NO_FACES)).any()
    assert len(media) == 5 and media.index.is_unique
    assert json.loads((runs["10"] / "_run.json").read_text())["counts"]["ok"] == 5


@pytest.mark.slow
def test_one_frame_per_second_stamped_by_the_container(runs):
    media = _read(runs["10"], "media").set_index("source_uri")
    long = media.loc[str(VIDEOS / LONG)]
    assert abs(long.n_frames_sampled - 82) <= 2
    faces = _read(runs["10"], "faces")
    stamps = faces.loc[faces["source_uri"] == str(VIDEOS / LONG), "timestamp_s"].unique()
    period = 1 / long.fps
    assert len(stamps) > 40
    assert np.all(stamps - np.floor(stamps) < period)  # first frame at or after each second


@pytest.mark.slow
def test_segmented_equals_whole(runs):
    for name, keys in (("faces", ["source_uri", "frame_index", "face_index"]),
                       ("tracks", ["source_uri", "track_id"]), ("media", ["source_uri"])):
        a = _read(runs["10"], name).drop(columns="run_id").sort_values(keys, ignore_index=True)
        b = _read(runs["100000"], name).drop(columns="run_id").sort_values(keys, ignore_index=True)
        assert len(a) > 0 and a.equals(b), name


@pytest.mark.slow
def test_portrait_faces_upright(runs):
    media = _read(runs["10"], "media").set_index("source_uri")
    row = media.loc[str(VIDEOS / PORTRAIT)]
    assert (row.width, row.height) == (720, 1280)
    faces = _read(runs["10"], "faces")
    mine = faces[faces["source_uri"] == str(VIDEOS / PORTRAIT)]
    assert len(mine) >= 2  # the frontal cascade only finds upright faces
    assert ((mine.bbox_x + mine.bbox_w) <= 720).all()
    assert ((mine.bbox_y + mine.bbox_h) <= 1280).all()


@pytest.mark.slow
def test_tracks_carry_means(runs):
    tracks = _read(runs["10"], "tracks")
    faces = _read(runs["10"], "faces")
    assert len(tracks) > 0 and tracks["n_frames"].sum() == len(faces)
    means = tracks[[c for c in tracks.columns if c.startswith("mean_")]]
    np.testing.assert_allclose(means.sum(axis=1), 1.0, atol=1e-3)
    assert (tracks["end_s"] >= tracks["start_s"]).all()
    assert (tracks.groupby("source_uri")["n_frames"].max() >= 2).any()  # some span frames


def test_video_cut_to_150kb_keeps_its_first_frames(tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes((VIDEOS / LONG).read_bytes()[:150_000])
    cfg = AnnotateConfig(inputs=(str(cut),), output=str(tmp_path / "o"),
                         video=VideoConfig(fps=None, every_n_frames=5))
    spec = resolve_model("fer-mini-xception")
    result = detect_segment({"source_uri": str(cut), "version": "", "seg_start_s": 0.0,
                             "seg_end_s": float("inf")}, cfg, spec, make_detector(cfg.detect))
    assert result.status == "partial" and 0 < result.n_frames_sampled < 20
    (error,) = result.errors
    assert error["error_type"] == "FramesUndecodable" and "1972 frames" in error["message"]
