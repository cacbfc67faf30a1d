"""Ray Train integration: 2 workers on local Ray, resume from a checkpoint, a worker failure, CV.

Tiny generated datasets (7 classes x 4 images); each test starts a real TensorflowTrainer.
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fer_batch.config import TrainConfig
from fer_batch.litert import LiteRTModel, load_scoring_model
from fer_batch.registry import load_keras_model, resolve_model, weights_path
from fer_batch.train.archs import ARCHS
from fer_batch.train.driver import fit, load_datasets, make_plan, resolve_arch, target_spec
from fer_batch.train.driver import train as run_train
from fer_batch.train.loop import MODEL_FILE, STATE_FILE, TrainState, train_loop_per_worker
from tests.test_train_data import make_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    make_folder(root, per_class=4, split="train")
    make_folder(root, per_class=2, split="val")
    return root


def config(data: Path, output: Path, **overrides) -> TrainConfig:
    values = {"train": f"{data}#train", "val": f"{data}#val", "arch": "cnn2", "epochs": 1,
              "num_workers": 2, "batch_size": 4, "output": str(output), **overrides}
    return TrainConfig(**values)


def test_two_workers_one_epoch_then_resume(ray_session, data, tmp_path):
    cfg = config(data, tmp_path / "model", lr=1e-3, lr_schedule="cosine")
    first = run_train(cfg)
    assert [(h["epoch"], h["workers"]) for h in first["history"]] == [(0, 2)]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1"} <= set(
        first["history"][0])
    out = tmp_path / "model"
    for name in ("model.keras", "registry.json", "card.md", "curves.png", "confusion.png"):
        assert (out / name).stat().st_size > 0, name
    spec = resolve_model(str(out))
    assert (spec.name, spec.architecture) == ("model", "cnn2")
    assert spec.preprocessing == ARCHS["cnn2"].preprocessing
    assert spec.input_shape == (32, 32, 1)
    assert spec.accuracy["value"] == pytest.approx(first["val"]["accuracy"], abs=1e-4)
    assert weights_path(spec).name == "model.keras"  # sha256 checked
    assert json.loads((out / "registry.json").read_text())["weights"] == "model.keras"
    assert "## Training curves" in (out / "card.md").read_text()
    model = load_keras_model(spec)
    assert model.predict_on_batch(np.zeros((2, 32, 32, 1), np.float32)).shape == (2, 7)
    # CPU annotate runs the checked LiteRT export written beside it, without TensorFlow
    assert Path(spec.litert) == (out / "model.tflite").resolve()
    lite = load_scoring_model(spec)
    assert isinstance(lite, LiteRTModel)
    x = np.random.default_rng(1).uniform(-1, 1, (5, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(lite.predict_on_batch(x), model.predict_on_batch(x), atol=1e-4)
    assert "LiteRT export: `model.tflite`" in (out / "card.md").read_text()

    second = run_train(replace(cfg, epochs=2))
    assert [h["epoch"] for h in second["history"]] == [0, 1]
    assert second["history"][0] == first["history"][0]  # resumed, not retrained
    # cosine over 2 epochs: epoch 1 trains at half the rate, and the optimizer really used it
    assert [h["lr"] for h in second["history"]] == pytest.approx([1e-3, 5e-4])
    import keras

    newest = max((out / "checkpoints").rglob(MODEL_FILE), key=lambda p: p.stat().st_mtime)
    resumed = keras.saving.load_model(newest)
    assert float(resumed.optimizer.learning_rate) == pytest.approx(5e-4)


def flaky_loop(config: dict, marker_dir: str) -> None:
    """Each worker's first attempt trains one epoch, checkpoints, then dies."""
    import ray.train

    marker = Path(marker_dir) / f"failed-{ray.train.get_context().get_world_rank()}"
    if not marker.exists():
        marker.touch()
        train_loop_per_worker({**config, "plan": replace(config["plan"], epochs=1)})
        raise RuntimeError("injected worker failure after the first checkpoint")
    train_loop_per_worker(config)


def test_worker_failure_resumes_from_checkpoint(ray_session, data, tmp_path):
    """Also the stronger recipe: SGD with Nesterov momentum and weight decay, label
    smoothing, random-resized crops and erasing, the plateau schedule across the restart."""
    cfg = config(data, tmp_path / "model", epochs=3, max_failures=1, optimizer="sgd",
                 weight_decay=1e-4, label_smoothing=0.1, crop_scale=0.8, erase_prob=0.5,
                 lr_schedule="plateau", lr=0.01)
    arch, init = resolve_arch(cfg)
    spec = target_spec(cfg, arch, init)
    datasets = load_datasets(cfg, spec)
    plan = make_plan(cfg, arch, spec, init, None, [4] * 7)
    loop = functools.partial(flaky_loop, marker_dir=str(tmp_path))
    result = fit(cfg, plan, datasets, "flaky", loop=loop)
    assert sorted(p.name for p in tmp_path.glob("failed-*")) == ["failed-0", "failed-1"]
    assert result.metrics["epoch"] == 2
    with result.checkpoint.as_directory() as folder:
        history = TrainState.from_json(Path(folder, STATE_FILE).read_text()).history
        assert Path(folder, MODEL_FILE).is_file()
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert [h["lr"] for h in history] == pytest.approx(
        [plan.lr_for("all", e, history[:e]) for e in range(3)])
    import keras

    with result.checkpoint.as_directory() as folder:
        optimizer = keras.saving.load_model(Path(folder, MODEL_FILE)).optimizer
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.nesterov
    assert optimizer.momentum == pytest.approx(0.9)
    assert optimizer.weight_decay == pytest.approx(1e-4)


def test_cross_validation_reports_mean_and_std(ray_session, data, tmp_path):
    cfg = config(data, tmp_path / "cv", val=None, cv_folds=2, class_weights="balanced",
                 num_workers=1, tta="flip")  # the folds, not the workers, are under test
    summary = run_train(cfg)
    cv = summary["cv"]
    assert cv["folds"] == 2 and len(cv["per_fold"]) == 2
    assert cv["accuracy_mean"] == pytest.approx(np.mean(cv["per_fold"]))
    assert cv["accuracy_std"] == pytest.approx(np.std(cv["per_fold"]))
    entry = json.loads((tmp_path / "cv" / "registry.json").read_text())
    assert entry["accuracy"]["cross_validation"]["folds"] == 2
    assert entry["tta"] == "flip" and resolve_model(str(tmp_path / "cv")).tta == "flip"
    assert "2-fold cross-validation" in (tmp_path / "cv" / "card.md").read_text()
