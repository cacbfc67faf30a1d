"""Face detection and cropping: pure functions plus one detector class per backend.

Detection runs on a reduced copy: the long side is brought down to ``max_side`` but
never so far that a ``min_face`` face falls under the cascade's 24 px window, so
shrinking costs no recall for faces the user asked for. Boxes come back in the
original image's pixel coordinates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from fer_batch import cascade
from fer_batch.config import HAAR_WINDOW, AnnotateConfig, DetectConfig
from fer_batch.images import MediaError, decode_image, probe_size
from fer_batch.manifest import fill_versions
from fer_batch.preprocess import prepare_face, to_grey
from fer_batch.records import ITEM_COLUMNS, N_META, ItemResult, results_to_batch
from fer_batch.registry import ModelSpec
from fer_batch.schema import STAGE_DETECT, STAGE_READ
from fer_batch.sources import read_bytes


@dataclass(frozen=True)
class Detections:
    """Boxes (n, 4) as int32 x, y, w, h in original pixels, and scores (n,) float32."""

    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


COARSE_TO_FINE_SCALE_FACTOR = 1.1
EMPTY = Detections(np.zeros((0, 4), np.int32), np.zeros((0,), np.float32))


def detection_scale(width: int, height: int, cfg: DetectConfig) -> float:
    """Fraction of the original size to detect at (<= 1)."""
    if cfg.max_side == 0:
        return 1.0
    shrink = cfg.max_side / max(width, height, 1)
    floor = HAAR_WINDOW / cfg.min_face
    return float(min(1.0, max(shrink, floor)))


def resize_to_scale(pixels: np.ndarray, current: float, target: float) -> np.ndarray:
    """Resize pixels held at `current` scale to `target` scale (never upsamples)."""
    import cv2

    if target >= current * 0.999:
        return pixels
    factor = target / current
    size = (max(1, round(pixels.shape[1] * factor)), max(1, round(pixels.shape[0] * factor)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


class HaarDetector:
    """OpenCV's frontal-face Haar cascade; the level weight of each box is its score.

    At the default scale factor (1.1) and for faces of 51+ px, the coarse-to-fine
    search in `cascade` replaces the full scan: the same boxes for about half the CPU.
    """

    def __init__(self, cfg: DetectConfig) -> None:
        import cv2

        cv2.setNumThreads(1)  # one actor per core; OpenCV's own threads would oversubscribe
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade at {path}")
        self._cfg = cfg

    def __call__(self, pixels: np.ndarray, scale: float) -> Detections:
        """Detect in `pixels` (held at `scale` of the original); boxes in original pixels."""
        grey = to_grey(pixels)
        min_px = max(HAAR_WINDOW, round(self._cfg.min_face * scale))
        if self._cfg.scale_factor == COARSE_TO_FINE_SCALE_FACTOR and cascade.supports(min_px):
            boxes, weights = cascade.detect(self._cascade, grey, min_px, self._cfg.min_neighbors)
            if len(boxes) == 0:
                return EMPTY
            return _to_original(boxes, weights, scale)
        boxes, _, weights = self._cascade.detectMultiScale3(
            grey,
            scaleFactor=self._cfg.scale_factor,
            minNeighbors=self._cfg.min_neighbors,
            minSize=(min_px, min_px),
            outputRejectLevels=True,
        )
        if len(boxes) == 0:
            return EMPTY
        return _to_original(np.asarray(boxes), np.ravel(weights), scale)


class MtcnnDetector:
    """MTCNN from the `mtcnn` package (weights ship inside it); confidence is the score."""

    def __init__(self, cfg: DetectConfig) -> None:
        try:
            from mtcnn import MTCNN
        except ImportError as e:
            raise RuntimeError(
                "--detector mtcnn needs the `mtcnn` package: pip install mtcnn"
            ) from e
        self._mtcnn = MTCNN()
        self._cfg = cfg

    def __call__(self, pixels: np.ndarray, scale: float) -> Detections:
        import cv2

        rgb = (
            cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
            if pixels.ndim == 2
            else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
        )
        found = self._mtcnn.detect_faces(rgb)
        min_px = self._cfg.min_face * scale
        kept = [f for f in found if min(f["box"][2], f["box"][3]) >= min_px]
        if not kept:
            return EMPTY
        boxes = np.array([f["box"] for f in kept], dtype=np.float64)
        scores = np.array([f["confidence"] for f in kept], dtype=np.float64)
        return _to_original(boxes, scores, scale)


def make_detector(cfg: DetectConfig) -> HaarDetector | MtcnnDetector:
    return HaarDetector(cfg) if cfg.detector == "haar" else MtcnnDetector(cfg)


def _to_original(boxes: np.ndarray, scores: np.ndarray, scale: float) -> Detections:
    mapped = np.rint(boxes.astype(np.float64) / scale).astype(np.int32)
    order = np.lexsort((mapped[:, 1], mapped[:, 0]))  # left to right: stable face_index
    return Detections(mapped[order], scores.astype(np.float32)[order])


def crop_faces(pixels: np.ndarray, scale: float, det: Detections, spec: ModelSpec) -> np.ndarray:
    """Crop each box (plus the entry's margin) from pixels held at `scale`; model-sized uint8."""
    height, width, channels = spec.input_shape
    out = np.zeros((len(det), height, width, channels), np.uint8)
    margin = spec.preprocessing.margin
    rows, cols = pixels.shape[:2]
    for i, (x, y, w, h) in enumerate(det.boxes.astype(np.float64)):
        x0 = int(max(0, np.floor((x - margin * w) * scale)))
        y0 = int(max(0, np.floor((y - margin * h) * scale)))
        x1 = int(min(cols, np.ceil((x + w + margin * w) * scale)))
        y1 = int(min(rows, np.ceil((y + h + margin * h) * scale)))
        if x1 > x0 and y1 > y0:
            out[i] = prepare_face(pixels[y0:y1, x0:x1], spec)
    return out


class FaceStage:
    """Ray Data actor: read, decode, detect and crop a batch of work items.

    The cascade (or MTCNN) loads once per actor. Whatever goes wrong with one file
    becomes that item's error rows; the batch, and the job, go on.
    """

    def __init__(self, cfg: AnnotateConfig, spec: ModelSpec) -> None:
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
        return results_to_batch(items, results, self.spec.input_shape, self.node_id)

    def detect_image(self, item: dict) -> ItemResult:
        result = ItemResult()
        uri = str(item["source_uri"])
        try:
            data = read_bytes(uri, self.cfg.storage_options)
        except Exception as e:  # noqa: BLE001 - any read failure is this file's error row
            result.add_error(STAGE_READ, type(e).__name__, f"cannot read {uri}: {e}")
            return result
        try:
            result.width, result.height, det, pixels, scale = self.detect_pixels(data)
            result.crops = crop_faces(pixels, scale, det, self.spec)
        except MediaError as e:
            result.add_error(e.stage, e.error_type, str(e))
            return result
        except Exception as e:  # noqa: BLE001 - a detector crash on odd pixels is bad data too
            result.add_error(STAGE_DETECT, type(e).__name__, f"face detection failed: {e}")
            return result
        result.meta = face_meta(det, frame_index=0, timestamp_s=float("nan"))
        return result

    def detect_pixels(self, data: bytes) -> tuple[int, int, Detections, np.ndarray, float]:
        """Decode at the smallest size detection allows, then detect."""
        width, height = probe_size(data)
        target = detection_scale(width, height, self.cfg.detect)
        decoded = decode_image(data, self.cfg.detect.max_pixels, self.spec.preprocessing.color,
                               min_scale=target)
        target = detection_scale(decoded.width, decoded.height, self.cfg.detect)
        det = self.detector(resize_to_scale(decoded.pixels, decoded.scale, target), target)
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
    return meta
