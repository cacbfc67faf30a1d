"""Annotate ../shared/data/photos and compare face counts with the manifest."""

from __future__ import annotations

import csv

import pytest

from fer_batch.bench.detectors import read_by_eye, score_counts
from fer_batch.cli import main
from tests.invariants import check_invariant

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

GROUP_PHOTOS = ("facenet_multiface.jpg", "retinaface_img3.jpg", "facerec_obama_and_biden.jpg",
                "simswap_mutil_people.jpg")


def test_photos_match_manifest(ray_session, shared_data, tmp_path):
    photos = shared_data / "photos"
    out = tmp_path / "out"
    assert main(["annotate", str(photos), "--output", str(out), "--no-progress"]) == 0
    uris = {str(p) for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".png")}
    result = check_invariant(out, uris)
    media = result["media"].set_index(result["media"].source_uri.str.rsplit("/", n=1).str[1])
    assert (media.status == "ok").all()
    with open(photos / "manifest.csv") as f:
        manifest = {row["file"]: row for row in csv.DictReader(f)}
    for name, row in manifest.items():
        found = int(media.loc[name, "n_faces"])
        by_eye = row["visible_human_faces_by_eye"].split()[0]
        if by_eye == "0":  # a false box may pass (counted below), not a crop of many
            assert found <= 1, f"{name}: no face by eye, found {found}"
        elif row["haar_frontalface_default_detections"] == "1" and by_eye == "1":
            assert found >= 1, f"{name}: one face, found none"
    for name in GROUP_PHOTOS:
        assert media.loc[name, "n_faces"] >= 2, name
    # BlazeFace with its second look, the default, measured 2026-12-07: 52 of the 54 faces
    # by eye, 28 in img3, one extra box (the headlight of skimage_motorcycle_left.png,
    # det_score 0.68; --min-score 0.68 drops it and 2 crowd faces, see config.py). The
    # assertions are the product's targets (issue 11); extra boxes count against 3 in all.
    score = score_counts(read_by_eye(photos / "manifest.csv"),
                         {name: int(media.loc[name, "n_faces"]) for name in manifest})
    assert score["found"] >= 50 and score["extra"] <= 3, score
    assert media.loc["retinaface_img3.jpg", "n_faces"] >= 25
    assert media.loc["skimage_camera.png", "n_faces"] == 1  # a profile
