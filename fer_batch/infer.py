"""Batched emotion classification.

Faces gathered from many images and frames are classified in model calls of
`batch_size` faces, never one call per face. The last call of a batch is padded
only up to a multiple of PAD_QUANTUM, so a compiled graph sees at most
batch_size / PAD_QUANTUM shapes (TensorFlow's predict function also relaxes its
batch dimension after two), and little of each call is padding: on CPU a call
costs in proportion to its size. Backend-neutral Keras only; on CPU, an entry that has a
LiteRT export runs through it instead, without TensorFlow (fer_batch/litert.py).

Test-time augmentation (a registry entry's `tta`) classifies every face as several views
and averages their probabilities; the views of a face go into the same model call as
the face, so a call of `batch_size` inputs holds batch_size / views faces. An ensemble
averages its members' probabilities, each member with its own crops and TTA.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fer_batch.litert import load_scoring_model
from fer_batch.preprocess import scale_batch
from fer_batch.registry import ModelSpec, Scorer, split_crops

PAD_QUANTUM = 32
# ten-crop: the four corners and the centre, each TEN_CROP_SIDE of the face's side and
# resized back to the model's input, and the mirror image of each (Krizhevsky et al.
# 2012; the FER-2013 VGG of Khaireddin & Chen 2021 averages these at test time).
TEN_CROP_SIDE = 0.875
VIEWS = {"none": 1, "flip": 2, "ten-crop": 10}


def tta_views(faces: np.ndarray, tta: str) -> np.ndarray:
    """uint8 faces (n, h, w, c) -> their views (VIEWS[tta] * n, h, w, c), view-major; for
    "none" and "flip" the first view is the face itself."""
    if tta == "none":
        return faces
    flipped = faces[:, :, ::-1]
    if tta == "flip":
        return np.concatenate([faces, flipped])
    import cv2

    n, h, w, c = faces.shape
    ch, cw = max(1, round(h * TEN_CROP_SIDE)), max(1, round(w * TEN_CROP_SIDE))
    corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw),
               ((h - ch) // 2, (w - cw) // 2)]
    views = []
    for y, x in corners:
        crop = faces[:, y:y + ch, x:x + cw]
        resized = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
                            for f in crop]) if n else np.zeros((0, h, w, c), faces.dtype)
        views.append(resized.reshape(n, h, w, c))
    views += [v[:, :, ::-1] for v in views]
    return np.concatenate(views)


def faces_per_call(batch_size: int, tta: str) -> int:
    """Faces whose views fill one model call of at most `batch_size` inputs."""
    return max(1, batch_size // VIEWS[tta])


def call_size(n: int, batch_size: int) -> int:
    """Faces in the model call that takes the last `n` (< batch_size) faces of a batch."""
    return min(batch_size, -(-n // PAD_QUANTUM) * PAD_QUANTUM)


def classify(model: Any, faces: np.ndarray, spec: ModelSpec, batch_size: int) -> np.ndarray:
    """uint8 faces (n, h, w, c) -> float32 probabilities (n, 7), in model calls of at most
    `batch_size` inputs, each face's TTA views averaged."""
    return _classify(model, faces, spec, batch_size, with_plain=False)[0]


def classify_with_plain(model: Any, faces: np.ndarray, spec: ModelSpec, batch_size: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """`classify`'s probabilities, and those of the face alone from the same model calls:
    evaluation reports both at the cost of one (ten-crop, whose views do not include the
    face itself, adds it to each call)."""
    return _classify(model, faces, spec, batch_size, with_plain=True)


def _classify(model: Any, faces: np.ndarray, spec: ModelSpec, batch_size: int,
              with_plain: bool) -> tuple[np.ndarray, np.ndarray]:
    n = len(faces)
    extra = int(with_plain and spec.tta == "ten-crop")  # the face itself, first
    k = VIEWS[spec.tta] + extra
    per_call = max(1, batch_size // k)
    out = np.zeros((n, len(spec.labels)), np.float32)
    plain = np.zeros_like(out)
    for start in range(0, n, per_call):
        chunk = faces[start : start + per_call]
        real = len(chunk)
        if real < per_call and (size := call_size(real, per_call)) > real:
            pad = np.zeros((size - real, *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        views = tta_views(chunk, spec.tta)
        if extra:
            views = np.concatenate([chunk, views])
        probs = np.asarray(model.predict_on_batch(scale_batch(views, spec.preprocessing)))
        probs = probs.reshape(k, len(chunk), -1)
        out[start : start + real] = probs[extra:].mean(axis=0)[:real]
        plain[start : start + real] = probs[0, :real]
    return out, plain


class Classifier:
    """Holds the loaded model(s) of one scorer per actor; counts model calls so tests can
    check batching."""

    def __init__(self, spec: Scorer, batch_size: int, storage_options: dict | None = None,
                 gpu: bool = False):
        self.spec = spec
        self.batch_size = batch_size
        self.models = [load_scoring_model(m, storage_options, gpu) for m in spec.members]
        self.calls = 0

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """(n, *spec.crop_shape) uint8 crops -> (n, 7) probabilities, members averaged."""
        members = self.spec.members
        probs = np.zeros((len(crops), len(members[0].labels)), np.float32)
        for member, model, faces in zip(members, self.models, split_crops(self.spec, crops)):
            self.calls += -(-len(faces) // faces_per_call(self.batch_size, member.tta))
            probs += classify(model, faces, member, self.batch_size)
        return probs / len(members)
