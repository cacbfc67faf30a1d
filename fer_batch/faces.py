"""Detect and crop: the pure functions the detection actor (fer_batch/stages.py) calls per
image and per video frame, in the order it calls them; the bench (fer_batch/bench/stages.py)
times the same functions.

Boxes come from fer_batch/detect.py in original pixels; crops are cut in each detector's
Haar-equivalent framing (detect.FaceSide) plus the model entry's margin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fer_batch.config import DetectConfig
from fer_batch.detect import (
    Detections,
    decode_colour,
    detection_scale,
    resize_to_scale,
)
from fer_batch.images import DecodedImage, decode_image, probe_size
from fer_batch.preprocess import prepare_face, to_grey
from fer_batch.records import KEYPOINTS_AT, N_META
from fer_batch.registry import ModelSpec, Scorer, join_crops


def crop_faces(pixels: np.ndarray, scale: float, det: Detections, spec: Scorer) -> np.ndarray:
    """Each box's crop for every model of `spec`, (n, *spec.crop_shape) uint8, from pixels
    held at `scale`."""
    return join_crops(spec, [_crop_member(pixels, scale, det, m) for m in spec.members])


def _crop_member(pixels: np.ndarray, scale: float, det: Detections, spec: ModelSpec
                 ) -> np.ndarray:
    """Crop each box (plus the entry's margin); model-sized uint8."""
    height, width, channels = spec.input_shape
    out = np.zeros((len(det), height, width, channels), np.uint8)
    margin = spec.preprocessing.margin
    rows, cols = pixels.shape[:2]
    for i, (x, y, w, h) in enumerate(det.framing.haar_boxes(det.boxes)):
        x0 = int(max(0, np.floor((x - margin * w) * scale)))
        y0 = int(max(0, np.floor((y - margin * h) * scale)))
        x1 = int(min(cols, np.ceil((x + w + margin * w) * scale)))
        y1 = int(min(rows, np.ceil((y + h + margin * h) * scale)))
        if x1 > x0 and y1 > y0:
            eyes = det.keypoints[i, :2] * scale - [x0, y0]  # NaN stays NaN
            out[i] = prepare_face(pixels[y0:y1, x0:x1], spec, eyes)
    return out


def decode_for_detection(data: bytes, cfg: DetectConfig, spec: Scorer) -> DecodedImage:
    """Decode an encoded image at the smallest size detection allows, in the colour the
    detector and the model need."""
    width, height = probe_size(data)
    colour = decode_colour(cfg.detector, spec.decode_color)
    return decode_image(data, cfg.max_pixels, colour,
                        min_scale=detection_scale(width, height, cfg))


def frame_for_detection(pixels: np.ndarray, cfg: DetectConfig, spec: Scorer) -> np.ndarray:
    """A decoded video frame (BGR) in the colour the detector and the model need."""
    return to_grey(pixels) if decode_colour(cfg.detector, spec.decode_color) == "grey" else pixels


def find_faces(pixels: np.ndarray, scale: float, width: int, height: int, cfg: DetectConfig,
               detector: Any) -> Detections:
    """Detections, in the original `width` x `height` pixels, of pixels held at `scale`:
    resized to the scale `--min-face` needs first (detect.detection_scale)."""
    target = detection_scale(width, height, cfg)
    return detector(resize_to_scale(pixels, scale, target), target)


def face_meta(det: Detections, frame_index: int, timestamp_s: float) -> np.ndarray:
    """The per-face metadata matrix (see records.META_COLUMNS) for one frame."""
    n = len(det)
    meta = np.full((n, N_META), np.nan, np.float64)
    meta[:, 0] = frame_index
    meta[:, 1] = timestamp_s
    meta[:, 2] = np.arange(n)
    meta[:, 3:7] = det.boxes
    meta[:, 7] = det.scores
    meta[:, KEYPOINTS_AT:KEYPOINTS_AT + 6] = det.keypoints.reshape(n, 6)
    return meta
