"""Classification throughput on a GPU over large batch sizes, when one is visible."""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np

GPU_DEVICE = "/dev/nvidia0"
RESNET_INPUT = (224, 224, 3)
FACES_PER_POINT = 4096


def gpu_sweep(model: str, batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    """faces/s per batch size for `model` and a ResNet50, or why it was skipped."""
    if not os.path.exists(GPU_DEVICE):
        return {"skipped": f"no GPU visible ({GPU_DEVICE} is absent)"}
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_sweep, model, batch_sizes).result()


def _sweep(model: str, batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    """Runs in a fresh process so TensorFlow's GPU set-up never touches the bench's."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return {"skipped": "a GPU device exists but TensorFlow sees none (CUDA libraries?)"}
    from fer_batch.preprocess import scale_batch
    from fer_batch.registry import load_keras_model, resolve_model

    spec = resolve_model(model)
    models = {spec.name: (load_keras_model(spec), spec.input_shape,
                          lambda x: scale_batch(x, spec.preprocessing)),
              "resnet50": (_resnet50(), RESNET_INPUT,
                           lambda x: x.astype(np.float32) - 127.5)}
    out: dict[str, Any] = {"device": gpus[0].name}
    for name, (net, shape, scale) in models.items():
        out[name] = {str(b): _faces_per_s(net, shape, scale, b) for b in batch_sizes}
    return out


def _resnet50() -> Any:
    import keras

    base = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                       input_shape=RESNET_INPUT)
    return keras.Sequential([base, keras.layers.Dense(7, activation="softmax")])


def _faces_per_s(net: Any, shape: tuple[int, ...], scale: Any, batch: int) -> float:
    """Host uint8 faces -> scaled -> model, in full batches; includes the copy to the GPU."""
    faces = np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8)
    calls = max(3, math.ceil(FACES_PER_POINT / batch))
    np.asarray(net.predict_on_batch(scale(faces)))  # trace and warm this shape
    start = time.perf_counter()
    for _ in range(calls):
        np.asarray(net.predict_on_batch(scale(faces)))
    return calls * batch / (time.perf_counter() - start)
