"""`fer-batch train`: resolve everything, build Ray Datasets, run TensorflowTrainer, export.

All checks that can fail on configuration (architecture, ``--init-from``, backbone
weights, data layout, batch size) run before any worker starts. Checkpoints live
under ``TrainConfig.checkpoints``: re-running the same command resumes from the
latest one, and ``--max-failures`` lets Ray Train restart a run whose worker died.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from fer_batch.config import TrainConfig
from fer_batch.progress import TrainProgress
from fer_batch.registry import ModelSpec, resolve_model
from fer_batch.schema import EMOTIONS
from fer_batch.train.archs import Arch, get_arch
from fer_batch.train.augment import Augmentation, balanced_class_weights
from fer_batch.train.data import parse_data, ray_dataset
from fer_batch.train.loop import TrainPlan, train_loop_per_worker

CHECKPOINTS_KEPT = 2


def resolve_arch(cfg: TrainConfig) -> tuple[Arch, ModelSpec | None]:
    """The architecture to train and, with --init-from, the model to start from."""
    init = None
    if cfg.init_from:
        try:
            init = resolve_model(cfg.init_from)
        except ValueError as e:
            raise ValueError(f"--init-from: {e}".replace("--model: ", "")) from e
        if cfg.arch and cfg.arch != init.architecture:
            raise ValueError(f"--arch {cfg.arch!r} does not match --init-from model "
                             f"{init.name!r}, a {init.architecture!r}; received: {cfg.arch!r}")
    name = cfg.arch or (init.architecture if init else "")
    try:
        return get_arch(name), init
    except ValueError as e:
        raise ValueError(f"{e} (--init-from {cfg.init_from!r} has architecture {name!r}: "
                         "give --arch)") from e


def target_spec(cfg: TrainConfig, arch: Arch, init: ModelSpec | None) -> ModelSpec:
    """The registry entry the trained model will get (weights and accuracy filled at export)."""
    base = init.preprocessing if init else arch.preprocessing
    return ModelSpec(
        name=PurePosixPath(cfg.output.rstrip("/")).name or arch.name,
        architecture=arch.name,
        weights="",
        sha256=None,
        input_shape=init.input_shape if init else arch.input_shape,
        preprocessing=replace(base, align=cfg.align or base.align),
        tta=cfg.tta,
    )


def backbone_weights(cfg: TrainConfig, arch: Arch) -> str | None:
    """Resolve --backbone-weights for keras.applications backbones; fetch ImageNet once here."""
    value = cfg.backbone_weights
    if not arch.two_phase or value == "none":
        return None
    if value != "imagenet":
        if not os.path.isfile(value):
            raise ValueError(f"--backbone-weights must be imagenet, none or an existing weights "
                             f"file; received: {value!r}")
        return os.path.abspath(value)
    try:
        arch.build("imagenet")
    except Exception as e:  # keras.utils.get_file raises a bare Exception on URL failures
        raise ValueError(
            f"--backbone-weights imagenet: the ImageNet weights for {arch.name} could not be "
            f"downloaded ({e}). Without network access, use --backbone-weights none (random "
            "initialisation) or --backbone-weights PATH (a local Keras weights file, e.g. the "
            "'..._notop.h5' file from ~/.keras/models on a machine that has it)"
        ) from e
    return "imagenet"


def class_counts(dataset: Any) -> list[int]:
    labels = dataset.select_columns(["label"]).to_pandas()["label"].to_numpy()
    return np.bincount(labels.astype(np.int64), minlength=len(EMOTIONS)).tolist()


def load_datasets(cfg: TrainConfig, spec: ModelSpec) -> dict[str, Any]:
    """Materialized Ray Datasets of model-ready faces: "train" and, with --val, "val".

    Materializing once means workers only stream blocks (and augment locally): no Ray
    Data tasks compete with the training workers for CPUs during epochs.
    """
    sources = {"train": parse_data(cfg.train, "--train", "Training")}
    if cfg.val:
        sources["val"] = parse_data(cfg.val, "--val", "PublicTest")
    datasets = {}
    for name, source in sources.items():
        datasets[name] = ray_dataset(source, spec, cfg.storage_options, cfg.seed).materialize()
        if datasets[name].count() == 0:
            raise ValueError(f"--{name}: no usable labelled faces in {source.describe()}")
    return datasets


def check_batch(cfg: TrainConfig, n_rows: int, option: str = "--batch-size") -> None:
    per_worker = n_rows // cfg.num_workers
    if per_worker < cfg.batch_size:
        raise ValueError(f"{option}: {cfg.batch_size} is more than the {per_worker} training "
                         f"faces each of {cfg.num_workers} workers gets; received: "
                         f"{cfg.batch_size}")


def make_plan(cfg: TrainConfig, arch: Arch, spec: ModelSpec, init: ModelSpec | None,
              weights: str | None, counts: list[int]) -> TrainPlan:
    frozen = cfg.frozen_epochs if cfg.frozen_epochs is not None else -(-cfg.epochs // 2)
    return TrainPlan(
        arch=arch.name,
        preprocessing=spec.preprocessing,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lr_schedule=cfg.lr_schedule,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing,
        augmentation=Augmentation(crop_scale=cfg.crop_scale, erase_prob=cfg.erase_prob),
        frozen_epochs=frozen if arch.two_phase and init is None else 0,
        weights=weights,
        init_from=init,
        class_weights=balanced_class_weights(counts) if cfg.class_weights == "balanced" else None,
        augment=cfg.augment,
        seed=cfg.seed,
        has_val=cfg.val is not None,
    )


def storage_path(cfg: TrainConfig) -> str:
    path = cfg.checkpoints
    return path if "://" in path else os.path.abspath(path)


def fit(cfg: TrainConfig, plan: TrainPlan, datasets: dict[str, Any], name: str,
        loop: Callable[[dict[str, Any]], None] = train_loop_per_worker) -> Any:
    """One Ray Train run; the same `name` under the same storage path resumes."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from fer_batch.train.backend import TfConfig

    progress_path = f"{storage_path(cfg).rstrip('/')}/{name}-progress.json"
    steps = datasets["train"].count() // cfg.num_workers // plan.batch_size
    plan = replace(plan, has_val="val" in datasets, progress_path=progress_path)
    trainer = DataParallelTrainer(  # TensorflowTrainer's, without importing TensorFlow
        loop,
        backend_config=TfConfig(),
        train_loop_config={"plan": plan},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path(cfg),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        ),
        datasets=datasets,
    )
    with watch_progress(progress_path, TrainProgress(plan.epochs, steps, cfg.progress),
                        cfg.storage_options):
        return trainer.fit()


@contextlib.contextmanager
def watch_progress(path: str, shown: TrainProgress, storage_options: dict[str, Any]
                   ) -> Iterator[None]:
    """Show what the first worker writes to `path` while the block runs (a thread)."""
    import fsspec

    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(1.0):
            try:
                with fsspec.open(path, "r", **storage_options) as f:
                    shown.show(json.load(f))
            except Exception:  # noqa: BLE001 - not written yet, or mid-write: next time
                continue

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    finished = False
    try:
        yield
        finished = True
    finally:
        stop.set()
        thread.join(timeout=5)
        if finished:
            shown.finished()
        shown.close()


def _fold(batch: dict[str, np.ndarray], folds: int, fold: int, held_out: bool
          ) -> dict[str, np.ndarray]:
    keep = (batch["key"] % folds == fold) == held_out
    return {column: values[keep] for column, values in batch.items()}


def cross_validate(cfg: TrainConfig, plan: TrainPlan, dataset: Any) -> dict[str, Any]:
    """K runs, each validated on one fold of the training data (folds by a hash of each face)."""
    accuracies = []
    for fold in range(cfg.cv_folds):
        parts = {
            name: dataset.map_batches(_fold, fn_kwargs={"folds": cfg.cv_folds, "fold": fold,
                                                         "held_out": name == "val"}).materialize()
            for name in ("train", "val")
        }
        check_batch(cfg, parts["train"].count(), "--batch-size (with --cv-folds)")
        result = fit(cfg, plan, parts, f"cv{cfg.cv_folds}-fold{fold}")
        accuracies.append(float(result.metrics["val_accuracy"]))
    return {"folds": cfg.cv_folds, "accuracy_mean": float(np.mean(accuracies)),
            "accuracy_std": float(np.std(accuracies)), "per_fold": accuracies}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (optionally cross-validate first) and export the model directory."""
    from fer_batch.session import init_ray, quiet_terminal

    if not cfg.verbose:  # TensorFlow's C++ lines (the driver loads the model to export it)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    arch, init = resolve_arch(cfg)
    spec = target_spec(cfg, arch, init)
    weights = backbone_weights(cfg, arch) if init is None else None
    init_ray(cfg.address, cfg.verbose)
    with quiet_terminal(cfg.verbose):
        return _train(cfg, arch, init, spec, weights)


def _train(cfg: TrainConfig, arch: Arch, init: ModelSpec | None, spec: ModelSpec,
           weights: str | None) -> dict[str, Any]:
    from fer_batch.train.export import export_model

    datasets = load_datasets(cfg, spec)
    counts = class_counts(datasets["train"])
    check_batch(cfg, sum(counts))
    plan = make_plan(cfg, arch, spec, init, weights, counts)
    cv = cross_validate(cfg, plan, datasets["train"]) if cfg.cv_folds else None
    result = fit(cfg, plan, datasets, "train")
    return export_model(cfg, spec, result.checkpoint, counts, cv)
