"""Every architecture trains on real FER-2013 faces through Ray Train, as `fer-batch train` runs.

The crash this guards against (oneDNN's AVX-512 filter-gradient kernel, see
fer_batch/train/cpu.py) only showed in a Ray Train worker on real data after some steps,
so each architecture runs STEPS real optimizer steps on a sample of the shared training
folder, every layer trainable (backbones included: their 1x1 stride-2 convolutions are
where the kernel was).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from fer_batch.config import TrainConfig
from fer_batch.schema import EMOTIONS
from fer_batch.train.archs import ARCHS
from fer_batch.train.driver import train as run_train

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

STEPS = 200
# Small batches keep the 224x224 backbones to minutes on two cores; the steps are real.
BATCH = {"resnet50": 2, "mobilenetv2": 2}
DEFAULT_BATCH = 8


def sample(src: Path, dst: Path, per_class: int) -> Path:
    """dst/<class>/: symlinks to the first `per_class` faces of each class of `src`."""
    for name in EMOTIONS:
        (dst / name).mkdir(parents=True)
        for face in sorted(os.listdir(src / name))[:per_class]:
            (dst / name / face).symlink_to(src / name / face)
    return dst


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_each_arch_trains_for_real_steps_on_fer2013(ray_session, shared_data, tmp_path, name):
    batch = BATCH.get(name, DEFAULT_BATCH)
    per_class = math.ceil(STEPS * batch / len(EMOTIONS))
    fer = shared_data / "fer2013"
    train = sample(fer / "train", tmp_path / "train", per_class)
    val = sample(fer / "val", tmp_path / "val", 4)
    cfg = TrainConfig(train=str(train), val=str(val), arch=name, epochs=1, num_workers=1,
                      batch_size=batch, frozen_epochs=0, backbone_weights="none",
                      output=str(tmp_path / "model"))
    result = run_train(cfg)
    (epoch,) = result["history"]
    assert epoch["steps"] >= STEPS and epoch["workers"] == 1, epoch
    assert epoch["phase"] == ("top" if ARCHS[name].two_phase else "all"), epoch
    assert math.isfinite(epoch["loss"]) and math.isfinite(epoch["val_loss"]), epoch
    assert 0.0 <= result["val"]["accuracy"] <= 1.0
    assert (tmp_path / "model" / "model.keras").stat().st_size > 0
