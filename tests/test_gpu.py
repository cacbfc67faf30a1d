"""On a machine with a GPU: the default model classifies there, in batches, and agrees
with the CPU. Skips (with the reason) where no GPU is visible; CI has none."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_the_default_model_classifies_on_the_gpu_as_on_the_cpu():
    import tensorflow as tf

    from fer_batch.infer import classify
    from fer_batch.registry import load_keras_model, resolve_model

    gpus = tf.config.list_physical_devices("GPU")
    assert gpus, "a GPU device file exists but TensorFlow sees no GPU (driver or CUDA wheels)"
    spec = resolve_model("fer-mini-xception")
    faces = np.random.default_rng(0).integers(0, 256, (300, 64, 64, 1), dtype=np.uint8)
    with tf.device("/GPU:0"):
        model = load_keras_model(spec)
        on_gpu = classify(model, faces, spec, batch_size=256)
    with tf.device("/CPU:0"):
        on_cpu = classify(load_keras_model(spec), faces, spec, batch_size=256)
    assert "GPU" in model.weights[0].device
    np.testing.assert_allclose(on_gpu, on_cpu, atol=2e-3)
