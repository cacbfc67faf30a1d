"""Batched emotion classification.

Faces gathered from many images and frames are classified in model calls of
`batch_size` faces, never one call per face. The last call of a batch is padded
only up to a multiple of PAD_QUANTUM, so a compiled graph sees at most
batch_size / PAD_QUANTUM shapes (TensorFlow's predict function also relaxes its
batch dimension after two), and little of each call is padding: on CPU a call
costs in proportion to its size. Backend-neutral Keras only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fer_batch.preprocess import scale_batch
from fer_batch.registry import ModelSpec, load_keras_model

PAD_QUANTUM = 32


def call_size(n: int, batch_size: int) -> int:
    """Faces in the model call that takes the last `n` (< batch_size) faces of a batch."""
    return min(batch_size, -(-n // PAD_QUANTUM) * PAD_QUANTUM)


def classify(model: Any, faces: np.ndarray, spec: ModelSpec, batch_size: int) -> np.ndarray:
    """uint8 faces (n, h, w, c) -> float32 probabilities (n, 7), in calls of `batch_size`."""
    n = len(faces)
    out = np.zeros((n, len(spec.labels)), np.float32)
    for start in range(0, n, batch_size):
        chunk = faces[start : start + batch_size]
        real = len(chunk)
        if real < batch_size and (size := call_size(real, batch_size)) > real:
            pad = np.zeros((size - real, *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        probs = np.asarray(model.predict_on_batch(scale_batch(chunk, spec.preprocessing)))
        out[start : start + real] = probs[:real]
    return out


class Classifier:
    """Holds one loaded model per actor; counts model calls so tests can check batching."""

    def __init__(self, spec: ModelSpec, batch_size: int, storage_options: dict | None = None):
        self.spec = spec
        self.batch_size = batch_size
        self.model = load_keras_model(spec, storage_options)
        self.calls = 0

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        self.calls += -(-len(faces) // self.batch_size)
        return classify(self.model, faces, self.spec, self.batch_size)


class ClassifyStage:
    """Ray Data actor: classify every face of a batch of work items in batched calls."""

    def __init__(self, spec: ModelSpec, batch_size: int, storage_options: dict | None = None):
        import ray

        self.classifier = Classifier(spec, batch_size, storage_options)
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shape = self.classifier.spec.input_shape
        crops = [np.asarray(c, np.uint8).reshape(-1, *shape) for c in batch.pop("crops")]
        counts = [len(c) for c in crops]
        faces = np.concatenate(crops) if sum(counts) else np.zeros((0, *shape), np.uint8)
        probs = self.classifier(faces)
        scores = np.empty(len(counts), dtype=object)
        for i, part in enumerate(np.split(probs, np.cumsum(counts)[:-1])):
            scores[i] = part
        batch["scores"] = scores
        batch["classify_node"] = np.array([self.node_id] * len(counts), dtype=object)
        return batch
