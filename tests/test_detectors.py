"""Both detectors on a real portrait; boxes come back in original pixels whatever the scale."""

from __future__ import annotations

import numpy as np
import pytest

from fer_batch.config import DetectConfig
from fer_batch.detect import HaarDetector, MtcnnDetector, resize_to_scale
from tests.media import astronaut

ASTRONAUT_FACE = (180, 60, 90, 110)  # x, y, w, h, roughly, in the 512x512 original


def _overlaps_face(box) -> bool:
    x, y, w, h = box
    fx, fy, fw, fh = ASTRONAUT_FACE
    return x < fx + fw and fx < x + w and y < fy + fh and fy < y + h


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return np.ascontiguousarray(np.asarray(astronaut())[:, :, ::-1])


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_haar_finds_the_face_in_original_coordinates(portrait, scale):
    det = HaarDetector(DetectConfig(min_face=50))(resize_to_scale(portrait, 1.0, scale), scale)
    assert len(det) == 1 and _overlaps_face(det.boxes[0])
    assert det.scores.dtype == np.float32 and det.scores[0] > 0


def test_haar_below_stride_one_levels_uses_full_scan(portrait):
    det = HaarDetector(DetectConfig(min_face=30))(portrait, 1.0)
    assert len(det) >= 1 and any(_overlaps_face(b) for b in det.boxes)


def test_mtcnn_finds_the_face_with_its_confidence(portrait):
    det = MtcnnDetector(DetectConfig(detector="mtcnn"))(portrait, 1.0)
    assert len(det) == 1 and _overlaps_face(det.boxes[0])
    assert 0.9 < det.scores[0] <= 1.0
