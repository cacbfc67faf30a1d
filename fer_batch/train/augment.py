"""Training-only augmentation and class-imbalance weights.

Augmentation works on the uint8 model-sized faces that `prepare_face` produced,
before `scale_batch`, so validation, evaluation and inference see exactly the
un-augmented preprocessing path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Augmentation:
    """Random horizontal flip, small rotation and shift, brightness gain."""

    flip: bool = True
    max_rotation_deg: float = 10.0
    max_shift: float = 0.1
    max_brightness: float = 0.2


def random_affine(rng: np.random.Generator, height: int, width: int,
                  aug: Augmentation) -> np.ndarray:
    """A 2x3 matrix: rotate about the centre, maybe mirror, then shift."""
    import cv2

    angle = rng.uniform(-aug.max_rotation_deg, aug.max_rotation_deg)
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, 1.0)
    if aug.flip and rng.random() < 0.5:
        matrix[0, :] *= -1.0
        matrix[0, 2] += width - 1
    matrix[0, 2] += rng.uniform(-aug.max_shift, aug.max_shift) * width
    matrix[1, 2] += rng.uniform(-aug.max_shift, aug.max_shift) * height
    return matrix


def augment_batch(faces: np.ndarray, rng: np.random.Generator,
                  aug: Augmentation = Augmentation()) -> np.ndarray:
    """uint8 (n, h, w, c) -> uint8 (n, h, w, c), each face transformed independently."""
    import cv2

    out = np.empty_like(faces)
    _, height, width, _ = faces.shape
    for i, face in enumerate(faces):
        matrix = random_affine(rng, height, width, aug)
        warped = cv2.warpAffine(face, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT_101)
        gain = 1.0 + rng.uniform(-aug.max_brightness, aug.max_brightness)
        bright = np.clip(warped.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        out[i] = bright.reshape(face.shape)
    return out


def balanced_class_weights(counts: Sequence[int]) -> tuple[float, ...]:
    """n / (k * n_c) for each of the k classes present; absent classes get weight 1."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("class weights need at least one labelled example")
    total, k = counts.sum(), present.sum()
    weights = np.ones_like(counts)
    weights[present] = total / (k * counts[present])
    return tuple(float(w) for w in weights)
