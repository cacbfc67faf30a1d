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
    """Random horizontal flip, small rotation and shift, brightness gain; optionally
    random-resized crops (Szegedy et al. 2015) and random erasing (Zhong et al. 2017).

    `crop_scale` < 1: each face is first cut to a random window of `crop_scale` to all of
    its area (aspect ratio 3/4 to 4/3) and resized back. `erase_prob` > 0: with that chance
    a rectangle of 2-33% of the face (aspect 0.3 to 3.3) is replaced by uniform noise, after
    the other transforms.
    """

    flip: bool = True
    max_rotation_deg: float = 10.0
    max_shift: float = 0.1
    max_brightness: float = 0.2
    crop_scale: float = 1.0
    erase_prob: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.33)
    erase_aspect: float = 3.3


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


def random_window(rng: np.random.Generator, height: int, width: int, min_scale: float
                  ) -> tuple[int, int, int, int]:
    """(y0, x0, h, w) of a window of min_scale to all of the area, aspect 3/4 to 4/3,
    inside the face (torchvision's RandomResizedCrop, falling back to the whole face)."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)),
                    h, w)
    return 0, 0, height, width


def random_erase(face: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    """The face with one random rectangle replaced by uniform noise (in place)."""
    height, width = face.shape[:2]
    for _ in range(10):
        target = height * width * rng.uniform(*aug.erase_area)
        aspect = np.exp(rng.uniform(-np.log(aug.erase_aspect), np.log(aug.erase_aspect)))
        h = int(round(np.sqrt(target * aspect)))
        w = int(round(np.sqrt(target / aspect)))
        if 0 < h < height and 0 < w < width:
            y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            face[y:y + h, x:x + w] = rng.integers(0, 256, face[y:y + h, x:x + w].shape,
                                                  dtype=np.uint8)
            return face
    return face


def augment_batch(faces: np.ndarray, rng: np.random.Generator,
                  aug: Augmentation = Augmentation()) -> np.ndarray:
    """uint8 (n, h, w, c) -> uint8 (n, h, w, c), each face transformed independently."""
    import cv2

    out = np.empty_like(faces)
    _, height, width, _ = faces.shape
    for i, face in enumerate(faces):
        if aug.crop_scale < 1.0:
            y0, x0, h, w = random_window(rng, height, width, aug.crop_scale)
            face = cv2.resize(face[y0:y0 + h, x0:x0 + w], (width, height),
                              interpolation=cv2.INTER_LINEAR).reshape(faces.shape[1:])
        matrix = random_affine(rng, height, width, aug)
        warped = cv2.warpAffine(face, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT_101)
        gain = 1.0 + rng.uniform(-aug.max_brightness, aug.max_brightness)
        bright = np.clip(warped.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        bright = bright.reshape(faces.shape[1:])
        if aug.erase_prob and rng.random() < aug.erase_prob:
            bright = random_erase(bright, rng, aug)
        out[i] = bright
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
