"""Pure pieces of training: augmentation, class weights, alignment, plans, config and CLI."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fer_batch import align
from fer_batch.cli import build_parser, main, train_config
from fer_batch.config import TrainConfig
from fer_batch.registry import Preprocessing
from fer_batch.train.augment import Augmentation, augment_batch, balanced_class_weights
from fer_batch.train.driver import _fold
from fer_batch.train.loop import TrainPlan, TrainState


def test_augment_keeps_shape_dtype_and_varies():
    faces = np.random.default_rng(0).integers(0, 256, (8, 48, 48, 1), dtype=np.uint8)
    out = augment_batch(faces, np.random.default_rng(1))
    assert out.shape == faces.shape and out.dtype == np.uint8
    assert not np.array_equal(out, faces)
    again = augment_batch(faces, np.random.default_rng(1))
    np.testing.assert_array_equal(out, again)


def test_augment_flip_only_mirrors():
    face = np.zeros((1, 10, 10, 1), np.uint8)
    face[0, :, :3] = 200
    flip = Augmentation(flip=True, max_rotation_deg=0, max_shift=0, max_brightness=0)
    outs = [augment_batch(face, np.random.default_rng(s), flip)[0, :, :, 0] for s in range(8)]
    assert any(np.array_equal(o, face[0, :, :, 0]) for o in outs)
    assert any(np.array_equal(o, face[0, :, ::-1, 0]) for o in outs)


def test_augment_rgb_faces():
    faces = np.full((2, 224, 224, 3), 100, np.uint8)
    assert augment_batch(faces, np.random.default_rng(0)).shape == (2, 224, 224, 3)


def test_random_resized_crops_zoom_in_and_keep_the_shape():
    # A face with a bright border: a crop of at most half the area cuts part of it away.
    face = np.zeros((1, 48, 48, 1), np.uint8)
    face[0, :2], face[0, -2:], face[0, :, :2], face[0, :, -2:] = 255, 255, 255, 255
    still = dict(flip=False, max_rotation_deg=0, max_shift=0, max_brightness=0)
    crop = Augmentation(crop_scale=0.3, **still)
    for seed in range(5):
        out = augment_batch(face, np.random.default_rng(seed), crop)
        assert out.shape == face.shape and out.dtype == np.uint8
        assert (out > 128).sum() < (face > 128).sum()
    whole = augment_batch(face, np.random.default_rng(0), Augmentation(**still))
    np.testing.assert_array_equal(whole, face)  # crop_scale 1: off


def test_random_erasing_replaces_one_rectangle():
    from fer_batch.train.augment import random_window

    face = np.full((1, 48, 48, 1), 128, np.uint8)
    still = dict(flip=False, max_rotation_deg=0, max_shift=0, max_brightness=0)
    erase = Augmentation(erase_prob=1.0, **still)
    for seed in range(10):
        out = augment_batch(face, np.random.default_rng(seed), erase)[0, :, :, 0]
        rows, cols = np.nonzero(out != 128)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert 0.01 * 48 * 48 <= box <= 0.34 * 48 * 48, box
        assert len(rows) > 0.9 * box  # one filled rectangle (noise rarely hits 128)
    never = augment_batch(face, np.random.default_rng(0), Augmentation(erase_prob=0.0, **still))
    np.testing.assert_array_equal(never, face)
    y0, x0, h, w = random_window(np.random.default_rng(0), 48, 40, 0.5)
    assert 0 <= y0 and y0 + h <= 48 and 0 <= x0 and x0 + w <= 40
    assert 0.5 * 48 * 40 * 0.9 <= h * w <= 48 * 40


def test_plateau_schedule_halves_after_three_epochs_without_a_better_val_loss():
    from fer_batch.train.loop import plateaus

    assert plateaus([1.0, 0.9, 0.8]) == 0
    assert plateaus([1.0, 1.1, 1.2, 1.3]) == 1
    assert plateaus([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]) == 2
    assert plateaus([1.0, 1.1, 1.2, 0.5, 0.6]) == 0
    plan = TrainPlan(arch="vgg", preprocessing=Preprocessing(), epochs=8, batch_size=8,
                     lr=0.1, lr_schedule="plateau")
    history = tuple({"phase": "all", "val_loss": v} for v in (1.0, 1.1, 1.2, 1.3))
    assert plan.lr_for("all", 3, history[:3]) == pytest.approx(0.1)
    assert plan.lr_for("all", 4, history) == pytest.approx(0.05)


def test_balanced_class_weights():
    weights = balanced_class_weights([10, 0, 30, 20, 0, 0, 0])
    assert weights[0] == pytest.approx(60 / (3 * 10))
    assert weights[2] == pytest.approx(60 / (3 * 30))
    assert weights[1] == 1.0
    with pytest.raises(ValueError):
        balanced_class_weights([0] * 7)


def test_align_levels_two_eyes(monkeypatch):
    face = np.zeros((48, 48), np.uint8)
    face[11:14, 11:14] = 255
    face[23:26, 35:38] = 255
    monkeypatch.setattr(align, "eye_centres", lambda grey: ((12.5, 12.5), (36.5, 24.5)))
    assert align.eye_angle(face) == pytest.approx(np.degrees(np.arctan2(12, 24)))
    out = align.align_face(face)
    left, right = (np.argwhere(half > 100)[:, 0].mean() for half in (out[:, :24], out[:, 24:]))
    assert abs(left - right) < 1.0


def test_align_without_eyes_is_identity():
    face = np.full((48, 48), 128, np.uint8)
    assert align.eye_angle(face) == 0.0
    assert align.align_face(face) is face


def test_plan_phases_and_state_roundtrip():
    plan = TrainPlan(arch="mobilenetv2", preprocessing=Preprocessing(), epochs=4, batch_size=8,
                     lr=1e-3, frozen_epochs=2)
    assert [plan.phase(e) for e in range(4)] == ["head", "head", "top", "top"]
    assert plan.lr_for("top") == pytest.approx(1e-4)
    flat = TrainPlan(arch="cnn4", preprocessing=Preprocessing(), epochs=2, batch_size=8, lr=1e-3)
    assert flat.phase(0) == "all"
    assert flat.lr_for("all", 1) == pytest.approx(1e-3)
    cosine = replace(flat, epochs=4, lr_schedule="cosine")
    assert [cosine.lr_for("all", e) for e in range(4)] == pytest.approx(
        [1e-3, 1e-3 * (1 + 2 ** -0.5) / 2, 5e-4, 1e-3 * (1 - 2 ** -0.5) / 2])
    assert replace(plan, lr_schedule="cosine").lr_for("top", 2) == pytest.approx(5e-5)
    state = TrainState().advance({"epoch": 0, "phase": "all", "loss": 1.5})
    assert state.next_epoch == 1
    assert TrainState.from_json(state.to_json()) == state


def test_folds_partition_rows():
    batch = {"key": np.arange(10), "label": np.arange(10) % 7}
    held = [_fold(batch, 3, f, True)["key"].tolist() for f in range(3)]
    assert sorted(sum(held, [])) == list(range(10))
    assert _fold(batch, 3, 0, False)["key"].tolist() == [1, 2, 4, 5, 7, 8]


def test_cli_builds_train_config():
    args = build_parser().parse_args([
        "train", "--train", "data#train", "--val", "data#val", "--arch", "cnn2", "--epochs", "3",
        "--num-workers", "2", "--output", "out", "--batch-size", "16", "--lr", "0.01",
        "--class-weights", "balanced", "--cv-folds", "3", "--backbone-weights", "none",
        "--align", "--lr-schedule", "cosine", "--optimizer", "sgd", "--weight-decay", "5e-4",
        "--label-smoothing", "0.1", "--crop-scale", "0.8", "--erase-prob", "0.5",
        "--tta", "ten-crop"])
    cfg = train_config(args)
    assert (cfg.arch, cfg.epochs, cfg.batch_size, cfg.lr, cfg.cv_folds) == ("cnn2", 3, 16, 0.01, 3)
    assert cfg.class_weights == "balanced" and cfg.align and cfg.augment
    assert cfg.lr_schedule == "cosine"
    assert (cfg.optimizer, cfg.weight_decay, cfg.label_smoothing) == ("sgd", 5e-4, 0.1)
    assert (cfg.crop_scale, cfg.erase_prob, cfg.tta) == (0.8, 0.5, "ten-crop")
    assert cfg.checkpoints == "out/checkpoints"


@pytest.mark.parametrize("overrides, option", [
    ({"arch": "vgg16"}, "--arch"),
    ({"arch": None}, "--arch"),
    ({"epochs": 0}, "--epochs"),
    ({"num_workers": 0}, "--num-workers"),
    ({"cv_folds": 1}, "--cv-folds"),
    ({"lr": 0.0}, "--lr"),
    ({"frozen_epochs": 5, "epochs": 2}, "--frozen-epochs"),
    ({"class_weights": "inverse"}, "--class-weights"),
    ({"lr_schedule": "step"}, "--lr-schedule"),
    ({"lr_schedule": "plateau"}, "--lr-schedule"),  # without --val
    ({"optimizer": "rmsprop"}, "--optimizer"),
    ({"weight_decay": -1e-4}, "--weight-decay"),
    ({"label_smoothing": 1.0}, "--label-smoothing"),
    ({"crop_scale": 0.0}, "--crop-scale"),
    ({"crop_scale": 1.5}, "--crop-scale"),
    ({"erase_prob": 1.5}, "--erase-prob"),
    ({"tta": "sideways"}, "--tta"),
])
def test_bad_train_options_raise_naming_the_option(overrides, option):
    values = {"train": "t", "output": "o", "arch": "cnn4", **overrides}
    with pytest.raises(ValueError, match=option):
        TrainConfig(**values)


def test_cli_train_reports_bad_option(capsys):
    assert main(["train", "--train", "t", "--output", "o", "--arch", "vgg16"]) == 2
    assert "--arch must be one of" in capsys.readouterr().err


def test_init_from_unknown_model_is_a_plain_error(capsys, tmp_path):
    assert main(["train", "--train", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--init-from", "no-such-model"]) == 2
    assert "--init-from: unknown model 'no-such-model'" in capsys.readouterr().err


def test_card_lists_each_epochs_learning_rate():
    from fer_batch.train.archs import ARCHS
    from fer_batch.train.driver import target_spec
    from fer_batch.train.export import card_text

    cfg = TrainConfig(train="t", output="runs/m", arch="cnn4", lr_schedule="cosine")
    spec = target_spec(cfg, ARCHS["cnn4"], None)
    history = ({"epoch": 0, "phase": "all", "loss": 1.5, "seconds": 3.0},  # before lr was kept
               {"epoch": 1, "phase": "all", "lr": 3.45e-5, "loss": 1.2, "seconds": 3.0})
    text = card_text(cfg, spec, [1] * 7, history, None, None)
    assert "| epoch | phase | lr | loss | seconds |" in text
    assert "| 0 | all | — | 1.5000 | 3.0000 |" in text
    assert "| 1 | all | 3.45e-05 | 1.2000 | 3.0000 |" in text
    assert '"lr_schedule": "cosine"' in text
