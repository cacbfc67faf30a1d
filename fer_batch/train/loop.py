"""The Ray Train worker loop: MultiWorkerMirroredStrategy, one `.keras` checkpoint per epoch.

A small custom loop over `strategy.run` rather than `model.fit`: Keras 3's `fit`
fails under MultiWorkerMirroredStrategy (its symbolic build reduces the whole
PerReplica batch eagerly), and a custom loop lets validation add up one exact
confusion matrix across workers. Each Ray Train worker holds one replica (one
device); every worker runs the same number of steps because Ray splits the
training data into equal shards and the last partial batch is dropped. Equal
shards may leave out up to (workers - 1) validation rows from the per-epoch
metrics; the exported model's final metrics come from `evaluate` over every row.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fer_batch.preprocess import scale_batch
from fer_batch.registry import ModelSpec, Preprocessing, load_keras_model
from fer_batch.train.archs import N_CLASSES, get_arch, set_phase
from fer_batch.train.augment import Augmentation, augment_batch
from fer_batch.train.cpu import cap_onednn_isa

MODEL_FILE = "model.keras"
PROGRESS_EVERY_S = 1.0
PLATEAU_PATIENCE = 3
PLATEAU_FACTOR = 0.5
STATE_FILE = "state.json"
FINE_TUNE_LR_FACTOR = 0.1
SHUFFLE_ROWS = 2048


@dataclass(frozen=True)
class TrainPlan:
    """What every worker needs, resolved by the driver (no registry or network look-ups)."""

    arch: str
    preprocessing: Preprocessing
    epochs: int
    batch_size: int
    lr: float
    lr_schedule: str = "constant"
    optimizer: str = "adam"
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    augmentation: Augmentation = field(default_factory=Augmentation)
    frozen_epochs: int = 0
    progress_path: str | None = None  # where the first worker leaves its progress
    weights: str | None = None
    init_from: ModelSpec | None = None
    class_weights: tuple[float, ...] | None = None
    augment: bool = True
    seed: int = 0
    has_val: bool = True

    def phase(self, epoch: int) -> str:
        """"all" for single-phase archs; else "head" (backbone frozen) then "top"."""
        if not get_arch(self.arch).two_phase:
            return "all"
        return "head" if epoch < self.frozen_epochs else "top"

    def lr_for(self, phase: str, epoch: int = 0,
               history: tuple[dict[str, Any], ...] = ()) -> float:
        """The phase's base rate; under "cosine" it anneals towards 0 over all the epochs;
        under "plateau" it is multiplied by PLATEAU_FACTOR each time PLATEAU_PATIENCE epochs
        of `history` pass without a lower validation loss.

        The rate depends on the epoch and the recorded history alone, so a resumed run
        trains every epoch at the rate an uninterrupted one would have used.
        """
        base = self.lr * FINE_TUNE_LR_FACTOR if phase == "top" else self.lr
        if self.lr_schedule == "cosine":
            base *= (1.0 + math.cos(math.pi * epoch / self.epochs)) / 2.0
        elif self.lr_schedule == "plateau":
            base *= PLATEAU_FACTOR ** plateaus([h["val_loss"] for h in history
                                                if h.get("phase") == phase])
        return base


def plateaus(val_losses: list[float], patience: int = PLATEAU_PATIENCE) -> int:
    """How many times the loss went `patience` epochs without a new best (Keras'
    ReduceLROnPlateau: the wait starts again after each reduction)."""
    best, wait, count = math.inf, 0, 0
    for loss in val_losses:
        if loss < best:
            best, wait = loss, 0
            continue
        wait += 1
        if wait >= patience:
            count, wait = count + 1, 0
    return count


@dataclass(frozen=True)
class TrainState:
    """Progress stored beside each checkpoint: the next epoch, its phase, per-epoch metrics."""

    next_epoch: int = 0
    phase: str | None = None
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def advance(self, metrics: dict[str, Any]) -> TrainState:
        return TrainState(metrics["epoch"] + 1, metrics["phase"], (*self.history, metrics))

    def to_json(self) -> str:
        return json.dumps({"next_epoch": self.next_epoch, "phase": self.phase,
                           "history": list(self.history)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        raw = json.loads(text)
        return cls(int(raw["next_epoch"]), raw["phase"], tuple(raw["history"]))


def restore_or_build(plan: TrainPlan, strategy: Any, checkpoint: Any) -> tuple[Any, TrainState]:
    """The latest checkpoint (model, optimizer state, progress), else a fresh model."""
    import keras

    with strategy.scope():
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                model = keras.saving.load_model(os.path.join(folder, MODEL_FILE))
                state = TrainState.from_json(Path(folder, STATE_FILE).read_text())
            set_phase(model, get_arch(plan.arch), state.phase or "all")
            return model, state
        if plan.init_from is not None:
            return load_keras_model(plan.init_from), TrainState()
        return get_arch(plan.arch).build(plan.weights), TrainState()


def enter_phase(model: Any, plan: TrainPlan, phase: str, strategy: Any) -> None:
    """Set the trainable layers for `phase` and start a fresh optimizer (the training loop
    sets its learning rate before each epoch)."""
    import keras

    set_phase(model, get_arch(plan.arch), phase)
    decay = plan.weight_decay or None
    with strategy.scope():
        if plan.optimizer == "sgd":
            optimizer = keras.optimizers.SGD(plan.lr_for(phase), momentum=0.9, nesterov=True,
                                             weight_decay=decay)
        else:
            optimizer = keras.optimizers.Adam(plan.lr_for(phase), weight_decay=decay)
        if decay:  # decay the kernels only, not biases or batch-norm scales and offsets
            optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy())
        optimizer.build(model.trainable_variables)


class Steps:
    """One phase's compiled functions: a synchronous train step, local predict, all-reduce."""

    def __init__(self, model: Any, strategy: Any, plan: TrainPlan, world_size: int) -> None:
        import keras
        import tensorflow as tf

        # One-hot targets so that label smoothing applies (the sparse loss has none).
        loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=plan.label_smoothing,
                                                       reduction=None)
        weights = tf.constant(plan.class_weights or (1.0,) * N_CLASSES, tf.float32)
        global_batch = plan.batch_size * world_size
        optimizer = model.optimizer

        def replica_step(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                per_example = (loss_fn(tf.one_hot(y, N_CLASSES), probs)
                               * tf.gather(weights, y))
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            hits = tf.equal(tf.argmax(probs, axis=1, output_type=y.dtype), y)
            return tf.stack([tf.reduce_sum(per_example), tf.reduce_sum(tf.cast(hits, tf.float32)),
                             tf.cast(tf.size(y), tf.float32)])

        def all_reduce(values: Any) -> Any:
            return strategy.reduce("SUM", strategy.run(tf.identity, args=(values,)), axis=None)

        self.train_step = tf.function(
            lambda x, y: strategy.reduce("SUM", strategy.run(replica_step, args=(x, y)), axis=None)
        )
        self.predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self.all_reduce = tf.function(all_reduce)

    def train_epoch(self, batches: Iterator[tuple[np.ndarray, np.ndarray]],
                    on_step: Any = None) -> dict[str, float]:
        totals, steps = np.zeros(3), 0
        for x, y in batches:
            totals += self.train_step(x, y).numpy()
            steps += 1
            if on_step is not None:
                on_step(steps, totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1))
        loss_sum, hits, n = totals
        return {"loss": float(loss_sum / max(n, 1)), "accuracy": float(hits / max(n, 1)),
                "steps": steps}

    def evaluate(self, batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        """Validation metrics over every worker's shard (one all-reduce per epoch)."""
        from fer_batch.evaluate import metrics_from_confusion

        confusion = np.zeros((N_CLASSES, N_CLASSES))
        loss_sum = 0.0
        for x, y in batches:
            probs = self.predict(x).numpy()
            loss_sum -= float(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).sum())
            np.add.at(confusion, (y, probs.argmax(axis=1)), 1)
        totals = self.all_reduce(np.append(confusion.ravel(), loss_sum).astype(np.float32)).numpy()
        confusion = totals[:-1].reshape(N_CLASSES, N_CLASSES).round().astype(np.int64)
        report = metrics_from_confusion(confusion)
        return {"val_loss": float(totals[-1] / max(report["n"], 1)),
                "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"]}


def batches(shard: Any, plan: TrainPlan, rng: np.random.Generator, train: bool
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(scaled float32 faces, int32 labels); only training batches are shuffled and augmented."""
    options: dict[str, Any] = {"batch_size": plan.batch_size, "batch_format": "numpy",
                               "drop_last": train}
    if train:
        options["local_shuffle_buffer_size"] = max(SHUFFLE_ROWS, plan.batch_size)
    for batch in shard.iter_batches(**options):
        faces = batch["image"]
        if train and plan.augment:
            faces = augment_batch(faces, rng, plan.augmentation)
        yield scale_batch(faces, plan.preprocessing), batch["label"].astype(np.int32)


class ProgressFile:
    """The first worker's progress (epoch, step, running loss and accuracy) as a small JSON
    file beside the checkpoints, rewritten at most every PROGRESS_EVERY_S; the driver shows
    it (fer_batch/progress.py, TrainProgress). Failing to write it never fails training."""

    def __init__(self, path: str | None, epoch: int) -> None:
        self.path, self.epoch, self._last = path, epoch, 0.0

    def __call__(self, step: int, loss: float, accuracy: float) -> None:
        if self.path is None or time.monotonic() - self._last < PROGRESS_EVERY_S:
            return
        self._last = time.monotonic()
        try:
            import fsspec

            with fsspec.open(self.path, "w") as f:
                json.dump({"epoch": self.epoch, "step": step, "loss": float(loss),
                           "accuracy": float(accuracy)}, f)
        except Exception:  # noqa: BLE001 - progress is a courtesy
            self.path = None


def report(model: Any, state: TrainState, metrics: dict[str, Any], rank: int) -> None:
    """Every worker saves (the strategy expects it); rank 0's copy becomes the checkpoint."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        model.save(os.path.join(folder, MODEL_FILE))
        Path(folder, STATE_FILE).write_text(state.to_json())
        checkpoint = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: resume or build, then train, validate and checkpoint each epoch."""
    cap_onednn_isa()  # before the first TensorFlow op of this worker
    import ray.train
    import tensorflow as tf

    plan: TrainPlan = config["plan"]
    context = ray.train.get_context()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    model, state = restore_or_build(plan, strategy, ray.train.get_checkpoint())
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if plan.has_val else None
    rng = np.random.default_rng([plan.seed, context.get_world_rank(), state.next_epoch])
    steps = None
    for epoch in range(state.next_epoch, plan.epochs):
        phase = plan.phase(epoch)
        if phase != state.phase:
            enter_phase(model, plan, phase, strategy)
            state, steps = replace(state, phase=phase), None
        steps = steps or Steps(model, strategy, plan, context.get_world_size())
        lr = plan.lr_for(phase, epoch, state.history)
        model.optimizer.learning_rate = lr
        started = time.perf_counter()
        progress = ProgressFile(plan.progress_path if context.get_world_rank() == 0 else None,
                                epoch)
        metrics: dict[str, Any] = steps.train_epoch(batches(train_shard, plan, rng, train=True),
                                                    progress)
        if val_shard is not None:
            metrics.update(steps.evaluate(batches(val_shard, plan, rng, train=False)))
        metrics.update(epoch=epoch, phase=phase, lr=lr, workers=context.get_world_size(),
                       seconds=round(time.perf_counter() - started, 2))
        state = state.advance(metrics)
        report(model, state, metrics, context.get_world_rank())
