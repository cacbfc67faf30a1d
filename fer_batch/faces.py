"""Detect and crop: the detection actor and the pure functions it calls per image.

Boxes come from fer_batch/detect.py in original pixels; crops are cut in each detector's
Haar-equivalent framing (detect.FaceSide) plus the model entry's margin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fer_batch.config import AnnotateConfig, DetectConfig
from fer_batch.detect import (
    Detections,
    decode_colour,
    detection_scale,
    make_detector,
    resize_to_scale,
)
from fer_batch.images import MediaError, decode_image, probe_size
from fer_batch.manifest import fill_versions
from fer_batch.preprocess import prepare_face
from fer_batch.records import ITEM_COLUMNS, KEYPOINTS_AT, N_META, ItemResult, results_to_batch
from fer_batch.registry import ModelSpec, Scorer, join_crops
from fer_batch.schema import STAGE_DETECT, STAGE_READ
from fer_batch.sources import read_bytes


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


class FaceStage:
    """Ray Data actor: read, decode, detect and crop a batch of work items.

    The detector loads once per actor. Whatever goes wrong with one file
    becomes that item's error rows; the batch, and the job, go on.
    """

    def __init__(self, cfg: AnnotateConfig, spec: Scorer) -> None:
        import ray

        self.cfg = cfg
        self.spec = spec
        self.detector = make_detector(cfg.detect)
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, items: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = fill_versions(items, self.cfg.storage_options)
        results = []
        for i in range(len(items["source_uri"])):
            item = {name: items[name][i] for name in ITEM_COLUMNS}
            if item["media_type"] == "video":
                from fer_batch.video import detect_segment

                results.append(detect_segment(item, self.cfg, self.spec, self.detector))
            else:
                results.append(self.detect_image(item))
        return results_to_batch(items, results, self.spec.crop_shape, self.node_id)

    def detect_image(self, item: dict) -> ItemResult:
        result = ItemResult()
        uri = str(item["source_uri"])
        try:
            data = read_bytes(uri, self.cfg.storage_options)
        except Exception as e:  # noqa: BLE001 - any read failure is this file's error row
            result.add_error(STAGE_READ, type(e).__name__, f"cannot read {uri}: {e}")
            return result
        try:
            result.width, result.height, det, pixels, scale = detect_pixels(
                data, self.cfg.detect, self.spec, self.detector)
            result.crops = crop_faces(pixels, scale, det, self.spec)
        except MediaError as e:
            result.add_error(e.stage, e.error_type, str(e))
            return result
        except Exception as e:  # noqa: BLE001 - a detector crash on odd pixels is bad data too
            result.add_error(STAGE_DETECT, type(e).__name__, f"face detection failed: {e}")
            return result
        result.meta = face_meta(det, frame_index=0, timestamp_s=float("nan"))
        return result


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
