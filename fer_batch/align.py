"""Face alignment: rotate a face crop so that its eyes are level.

Used when a model's `Preprocessing.align` is true, at training and at inference alike
(`prepare_face` rotates the crop before equalising and resizing). The eyes come from the
detector's keypoints when it gave any (BlazeFace, MTCNN), from OpenCV's eye cascade
otherwise (Haar boxes; FER-2013's ready-cut faces at training). A face whose two eyes are
not found is returned unchanged: alignment is a refinement, never a reason to drop a face.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

EYE_CASCADE = "haarcascade_eye.xml"
MAX_TILT_DEG = 30.0


@lru_cache(maxsize=1)
def eye_cascade() -> Any:
    """OpenCV's eye cascade, loaded once per process."""
    import cv2

    path = cv2.data.haarcascades + EYE_CASCADE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"cannot load OpenCV's {EYE_CASCADE} from {path}; reinstall "
                           "opencv-python-headless>=4.10,<5")
    return cascade


def eye_centres(grey: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """(left, right) eye centres in the upper half of a grey face, or None if not two found."""
    height, width = grey.shape[:2]
    upper = grey[: height // 2 + height // 8]
    min_side = max(4, width // 10)
    eyes = eye_cascade().detectMultiScale(upper, scaleFactor=1.1, minNeighbors=3,
                                          minSize=(min_side, min_side))
    if len(eyes) < 2:
        return None
    biggest = sorted(eyes, key=lambda e: e[2] * e[3], reverse=True)[:2]
    centres = sorted((x + w / 2.0, y + h / 2.0) for x, y, w, h in biggest)
    (lx, ly), (rx, ry) = centres
    if rx - lx < width / 5:
        return None
    return (lx, ly), (rx, ry)


def eye_angle(grey: np.ndarray) -> float:
    """Degrees to rotate by to level the eyes; 0 when they are not found or implausibly tilted."""
    centres = eye_centres(grey)
    if centres is None:
        return 0.0
    (lx, ly), (rx, ry) = centres
    angle = math.degrees(math.atan2(ry - ly, rx - lx))
    return angle if abs(angle) <= MAX_TILT_DEG else 0.0


def keypoint_angle(eyes: np.ndarray | None) -> float | None:
    """Degrees to rotate by to level a detector's eyes, (2, 2) as the subject's left eye and
    right eye (x, y) in any pixels; None when there are none (NaN)."""
    if eyes is None or not np.isfinite(eyes).all():
        return None
    (sl_x, sl_y), (sr_x, sr_y) = np.asarray(eyes, np.float64)
    # The subject's right eye is on the image's left: from it to the left eye, as eye_angle.
    return math.degrees(math.atan2(sl_y - sr_y, sl_x - sr_x))


def rotate(face: np.ndarray, angle: float) -> np.ndarray:
    """Rotate about the centre, keeping the size; borders replicate the edge pixels."""
    import cv2

    if angle == 0.0:
        return face
    height, width = face.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, 1.0)
    return cv2.warpAffine(face, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def align_face(grey: np.ndarray) -> np.ndarray:
    """Grey uint8 face -> the same face rotated so the eyes are level."""
    return rotate(grey, eye_angle(grey))
