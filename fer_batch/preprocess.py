"""Face preprocessing exactly as a model's registry entry says.

Split in two so the heavy data stays small on the wire: `prepare_face` (CPU actors)
turns a crop into uint8 model-sized pixels; `scale_batch` (the classifier, once per
batch) turns those into float32 model input. Training uses the same two functions.
"""

from __future__ import annotations

import numpy as np

from fer_batch.registry import ModelSpec, Preprocessing

_IMAGENET_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def to_grey(image: np.ndarray) -> np.ndarray:
    """BGR or grey uint8 -> grey uint8 (OpenCV's luma weights)."""
    import cv2

    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def prepare_face(face: np.ndarray, spec: ModelSpec, eyes: np.ndarray | None = None) -> np.ndarray:
    """Crop pixels (BGR or grey, uint8) -> uint8 array of the model's input shape.

    `eyes` (2, 2): the detector's subject-left and subject-right eye in the crop's pixels,
    used for alignment when finite; otherwise the eye cascade finds them.
    """
    import cv2

    pre = spec.preprocessing
    height, width, channels = spec.input_shape
    if pre.align:  # eyes level, the same at training and inference
        from fer_batch.align import eye_angle, keypoint_angle, rotate

        angle = keypoint_angle(eyes)
        face = rotate(face, eye_angle(to_grey(face)) if angle is None else angle)
    if pre.color == "grey":
        face = to_grey(face)
        if pre.equalize:
            face = cv2.equalizeHist(face)
    elif face.ndim == 2:
        face = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
    elif pre.equalize:
        ycrcb = cv2.cvtColor(face, cv2.COLOR_BGR2YCrCb)
        ycrcb[:, :, 0] = cv2.equalizeHist(ycrcb[:, :, 0])
        face = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)
    interp = cv2.INTER_AREA if face.shape[0] > height else cv2.INTER_LINEAR
    face = cv2.resize(face, (width, height), interpolation=interp)
    if face.ndim == 2:
        face = face[:, :, None]
    if face.shape[2] != channels:
        face = np.repeat(face, channels, axis=2)
    return np.ascontiguousarray(face, dtype=np.uint8)


def scale_batch(faces: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 (n, h, w, c) -> float32 model input, per the entry's `scale`."""
    x = faces.astype(np.float32)
    if pre.scale == "minus1_1":
        return x / 127.5 - 1.0
    if pre.scale == "unit":
        return x / 255.0
    if pre.scale == "zscore":
        axes = tuple(range(1, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        std = x.std(axis=axes, keepdims=True)
        return (x - mean) / np.maximum(std, 1e-6)
    # "caffe": Keras ResNet50's preprocess_input (BGR channel order, ImageNet mean).
    return x - _IMAGENET_BGR_MEAN[: x.shape[-1]]
