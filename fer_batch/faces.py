"""Detect and crop: the detection actor and the pure functions it calls per image.

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
from fer_batch.images import decode_image, probe_size
from fer_batch.preprocess import prepare_face
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


def detect_pixels(data: bytes, cfg: DetectConfig, spec: Scorer,
                  detector: Any) -> tuple[int, int, Detections, np.ndarray, float]:
    """Decode an encoded image at the smallest size detection allows, then detect.

    Returns the original width and height, the detections (original pixels), and the
    decoded pixels with their scale, from which crops are cut.
    """
    width, height = probe_size(data)
    target = detection_scale(width, height, cfg)
    colour = decode_colour(cfg.detector, spec.decode_color)
    decoded = decode_image(data, cfg.max_pixels, colour, min_scale=target)
    target = detection_scale(decoded.width, decoded.height, cfg)
    det = detector(resize_to_scale(decoded.pixels, decoded.scale, target), target)
    return decoded.width, decoded.height, det, decoded.pixels, decoded.scale


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
