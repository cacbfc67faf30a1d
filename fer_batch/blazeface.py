"""MediaPipe BlazeFace SSD post-processing in plain numpy.

The BlazeFace ``.tflite`` models output raw per-anchor tensors: 16 regressors (box centre offset,
box size, six keypoint offsets, all in input pixels relative to the anchor) and one score logit.
Turning those into faces needs three MediaPipe calculators, re-implemented here so that no
MediaPipe (or TensorFlow) install is needed and nothing heavier than numpy is imported:

* ``SsdAnchorsCalculator`` -> :func:`generate_anchors`
* ``TensorsToDetectionsCalculator`` (``reverse_output_order: true``, i.e. XYWH) -> :func:`decode`
* ``NonMaxSuppressionCalculator`` (``algorithm: WEIGHTED``, IoU overlap) -> :func:`weighted_nms`

The per-model options are taken from MediaPipe's graphs (see the constants below).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_KEYPOINTS = 6
NUM_COORDS = 4 + 2 * NUM_KEYPOINTS  # box (4) then keypoints (x, y) * 6
# Keypoint order in the model output (the subject's right / left, as MediaPipe names them).
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")

# TensorsToDetectionsCalculator options shared by every face graph.
SCORE_CLIPPING_THRESH = 100.0
# NonMaxSuppressionCalculator: min_suppression_threshold in every face graph.
MIN_SUPPRESSION_THRESHOLD = 0.3
# min_score_thresh of each model's graph.
SHORT_RANGE_MIN_SCORE = 0.5
BACK_MIN_SCORE = 0.65
FULL_RANGE_MIN_SCORE = 0.6


@dataclass(frozen=True)
class AnchorOptions:
    """The ``SsdAnchorsCalculatorOptions`` fields that the BlazeFace models use.

    Defaults follow MediaPipe's face graphs (``aspect_ratios: 1.0``, ``fixed_anchor_size: true``,
    offsets 0.5), not the proto defaults, since those graphs are the only users here. The input
    is square, so one ``input_size`` and one ``anchor_offset`` serve both axes.
    """

    input_size: int
    strides: tuple[int, ...]
    min_scale: float
    max_scale: float
    anchor_offset: float = 0.5
    interpolated_scale_aspect_ratio: float = 1.0
    fixed_anchor_size: bool = True
    reduce_boxes_in_lowest_layer: bool = False
    aspect_ratios: tuple[float, ...] = (1.0,)

    @property
    def num_layers(self) -> int:
        """MediaPipe requires ``num_layers == len(strides)``; derived so they can't disagree."""
        return len(self.strides)


# mediapipe/modules/face_detection/face_detection_short_range.pbtxt (tensor size, strides,
# interpolated ratio) + face_detection.pbtxt (SsdAnchorsCalculator: scales, offsets, fixed size).
SHORT_RANGE = AnchorOptions(
    input_size=128, strides=(8, 16, 16, 16), min_scale=0.1484375, max_scale=0.75,
    interpolated_scale_aspect_ratio=1.0,
)
# mediapipe/graphs/face_detection/face_detection_back_desktop_live.pbtxt as of MediaPipe 0.8.4
# (commit a9b643e0, May 2021), the last version for the 256x256 back-camera model.
BACK = AnchorOptions(
    input_size=256, strides=(16, 32, 32, 32), min_scale=0.15625, max_scale=0.75,
    interpolated_scale_aspect_ratio=1.0,
)
# mediapipe/modules/face_detection/face_detection_full_range.pbtxt + face_detection.pbtxt.
FULL_RANGE = AnchorOptions(
    input_size=192, strides=(4,), min_scale=0.1484375, max_scale=0.75,
    interpolated_scale_aspect_ratio=0.0,
)


def _layer_scale(opts: AnchorOptions, index: int) -> float:
    """Linear scale between min and max over the layers (MediaPipe's CalculateScale)."""
    n = len(opts.strides)
    if n == 1:
        return (opts.min_scale + opts.max_scale) * 0.5
    return opts.min_scale + (opts.max_scale - opts.min_scale) * index / (n - 1.0)


def generate_anchors(opts: AnchorOptions, height: int | None = None,
                     width: int | None = None) -> np.ndarray:
    """(n, 4) float32 x_center, y_center, w, h, normalised to [0, 1]; same order as the model's
    outputs.

    `height` and `width` (default: the model's square input) give the anchors of the same
    fully convolutional network run on a resized input: each layer's grid grows with the
    input, its per-cell anchors stay the same.

    Consecutive layers with the same stride share one grid: per cell, their anchors are emitted
    together (all of layer k's, then layer k+1's), rows outer, columns inner, as MediaPipe does.
    With ``fixed_anchor_size`` every w and h is 1, so the regressors are plain pixel offsets.
    """
    strides = opts.strides
    if not strides:
        raise ValueError("AnchorOptions.strides must not be empty")
    out: list[np.ndarray] = []
    layer = 0
    while layer < len(strides):
        sizes: list[tuple[float, float]] = []  # (w, h) per anchor of one grid cell
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            scale = _layer_scale(opts, last)
            if last == 0 and opts.reduce_boxes_in_lowest_layer:
                pairs = [(1.0, 0.1), (2.0, scale), (0.5, scale)]
            else:
                pairs = [(ratio, scale) for ratio in opts.aspect_ratios]
                if opts.interpolated_scale_aspect_ratio > 0.0:
                    scale_next = 1.0 if last == len(strides) - 1 else _layer_scale(opts, last + 1)
                    pairs.append((opts.interpolated_scale_aspect_ratio,
                                  float(np.sqrt(scale * scale_next))))
            sizes.extend((s * np.sqrt(r), s / np.sqrt(r)) for r, s in pairs)
            last += 1
        rows = int(np.ceil((height or opts.input_size) / strides[layer]))
        cols = int(np.ceil((width or opts.input_size) / strides[layer]))
        ys, xs = np.meshgrid((np.arange(rows, dtype=np.float64) + opts.anchor_offset) / rows,
                             (np.arange(cols, dtype=np.float64) + opts.anchor_offset) / cols,
                             indexing="ij")  # rows outer, columns inner
        k = len(sizes)
        wh = np.ones((k, 2)) if opts.fixed_anchor_size else np.asarray(sizes, dtype=np.float64)
        grid = np.empty((rows, cols, k, 4), dtype=np.float64)
        grid[..., 0] = xs[..., None]
        grid[..., 1] = ys[..., None]
        grid[..., 2:] = wh
        out.append(grid.reshape(-1, 4))
        layer = last
    return np.concatenate(out).astype(np.float32)


@dataclass(frozen=True)
class RawDetections:
    """Decoded detections before NMS. Coordinates normalised to the model input (0..1) when they
    come from :func:`decode`; :func:`weighted_nms` keeps whatever units it is given.

    boxes (n, 4) float32 xmin, ymin, xmax, ymax; keypoints (n, 6, 2) float32 x, y in MediaPipe
    order (see ``KEYPOINT_NAMES``); scores (n,) float32 in [0, 1].
    """

    boxes: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def _empty(num_keypoints: int = NUM_KEYPOINTS) -> RawDetections:
    return RawDetections(np.zeros((0, 4), np.float32), np.zeros((0, num_keypoints, 2), np.float32),
                         np.zeros((0,), np.float32))


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """Sigmoid of the logits clipped to +-SCORE_CLIPPING_THRESH, as MediaPipe does.

    Computed in float64: exp(100) overflows float32 (which is why other ports clip at 80), but
    not float64, so the MediaPipe threshold can be kept without overflow warnings. Scores too
    small for a normal float32 become 0, as MediaPipe's float32 1 / (1 + inf) does, and so the
    cast cannot underflow either.
    """
    z = np.clip(logits.astype(np.float64), -SCORE_CLIPPING_THRESH, SCORE_CLIPPING_THRESH)
    p = 1.0 / (1.0 + np.exp(-z))
    p[p < np.finfo(np.float32).tiny] = 0.0
    return p.astype(np.float32)


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray,
           input_size: int | tuple[int, int], min_score: float) -> RawDetections:
    """Decode one image's raw tensors ((n,16) and (n,) or (n,1)); keep scores >= min_score.

    `input_size` is the side of the square input, or (height, width) of a resized one.

    A leading batch axis of 1 is accepted too. Mirrors TensorsToDetectionsCalculator with
    ``reverse_output_order`` (x before y) and x/y/w/h_scale = ``input_size``: centre and keypoints
    are ``raw / input_size * anchor_size + anchor_centre``, size is ``raw / input_size *
    anchor_size``. Boxes with a negative or NaN width/height are dropped, as MediaPipe drops them.
    Scores are thresholded before anything else is decoded, so only the survivors cost work.
    """
    anchors = np.asarray(anchors, dtype=np.float32).reshape(-1, 4)
    n = len(anchors)
    boxes_raw = np.asarray(raw_boxes, dtype=np.float32)
    if boxes_raw.size != n * NUM_COORDS:
        raise ValueError(f"raw_boxes has shape {boxes_raw.shape}; expected ({n}, {NUM_COORDS})")
    boxes_raw = boxes_raw.reshape(n, NUM_COORDS)
    logits = np.asarray(raw_scores, dtype=np.float32)
    if logits.size != n:
        raise ValueError(f"raw_scores has shape {logits.shape}; expected ({n},) or ({n}, 1)")
    scores = _sigmoid(logits.reshape(n))

    keep = np.flatnonzero(scores >= min_score)
    if keep.size == 0:
        return _empty()
    height, width = (input_size, input_size) if np.isscalar(input_size) else input_size
    reg = boxes_raw[keep].astype(np.float64) / np.tile([float(width), float(height)],
                                                       NUM_COORDS // 2)
    anc = anchors[keep].astype(np.float64)
    centre = reg[:, 0:2] * anc[:, 2:4] + anc[:, 0:2]
    size = reg[:, 2:4] * anc[:, 2:4]
    boxes = np.concatenate([centre - size / 2.0, centre + size / 2.0], axis=1)
    kps = reg[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) * anc[:, None, 2:4] + anc[:, None, 0:2]

    # NaN compares False, so this also drops NaN sizes.
    valid = (size[:, 0] >= 0) & (size[:, 1] >= 0)
    return RawDetections(boxes[valid].astype(np.float32), kps[valid].astype(np.float32),
                         scores[keep][valid])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of xmin,ymin,xmax,ymax boxes (any units); 0 where a union is empty.

    Inverted boxes count as empty (area 0), so they never overlap anything.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def weighted_nms(det: RawDetections, iou_threshold: float = MIN_SUPPRESSION_THRESHOLD
                 ) -> RawDetections:
    """MediaPipe's WEIGHTED non-max suppression: highest score first; each kept detection's box
    and keypoints are the score-weighted mean of it and every remaining detection whose IoU with
    it is > iou_threshold (those are then removed); the kept score is the top score. Output
    sorted by score desc.

    Like MediaPipe the comparison is strict (``similarity > min_suppression_threshold``). Unlike
    MediaPipe, the top detection always joins its own group, so a degenerate (zero-area) box
    cannot stop the loop early. Works in any units (normalised, or pixels when merging tiles),
    and with any number of keypoints per detection.
    """
    n = len(det.scores)
    boxes = np.asarray(det.boxes, dtype=np.float64).reshape(n, 4)
    kps = np.asarray(det.keypoints, dtype=np.float64)
    num_kp = kps.shape[1] if kps.ndim == 3 else NUM_KEYPOINTS
    if n == 0:
        return _empty(num_kp)
    kps = kps.reshape(n, num_kp * 2)
    scores = np.asarray(det.scores, dtype=np.float64).reshape(n)

    order = np.argsort(-scores, kind="stable")  # ties keep input order
    boxes, kps, scores = boxes[order], kps[order], scores[order]
    iou = iou_matrix(boxes, boxes)
    remaining = np.ones(n, dtype=bool)
    out_boxes, out_kps, out_scores = [], [], []
    while remaining.any():
        top = int(np.argmax(remaining))  # first remaining = highest score
        group = remaining & (iou[top] > iou_threshold)
        group[top] = True
        w = scores[group]
        total = w.sum()
        if total > 0:
            out_boxes.append(w @ boxes[group] / total)
            out_kps.append(w @ kps[group] / total)
        else:  # all-zero scores: a weighted mean is undefined, keep the top one as is
            out_boxes.append(boxes[top])
            out_kps.append(kps[top])
        out_scores.append(scores[top])
        remaining &= ~group
    return RawDetections(np.asarray(out_boxes, dtype=np.float32),
                         np.asarray(out_kps, dtype=np.float32).reshape(-1, num_kp, 2),
                         np.asarray(out_scores, dtype=np.float32))
