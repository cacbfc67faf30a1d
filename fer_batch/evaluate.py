"""`fer-batch evaluate`: accuracy, macro-F1, per-class scores and a confusion matrix.

Runs in-process with batched `predict` (no Ray): a FER validation split is a few
thousand 48x48 faces. Faces are whole images resized by the model's own
`prepare_face` (FER images are already face crops: no detection, no margin), so
the numbers describe exactly what `annotate` does with a detected face.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from fer_batch.config import EvaluateConfig
from fer_batch.registry import ModelSpec, load_keras_model, resolve_scorer
from fer_batch.schema import EMOTIONS


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = len(EMOTIONS)
                     ) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return confusion


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (scikit-learn's zero_division=0)."""
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def metrics_from_confusion(confusion: np.ndarray, labels: tuple[str, ...] = EMOTIONS
                           ) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support.

    Macro-F1 averages over the classes that occur in the truth or the predictions
    (scikit-learn's default), so a class absent from a small dataset does not count as 0.
    """
    confusion = np.asarray(confusion, np.int64)
    hits = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _ratio(hits, predicted.astype(np.float64))
    recall = _ratio(hits, support.astype(np.float64))
    f1 = _ratio(2 * precision * recall, precision + recall)
    seen = (support + predicted) > 0
    n = int(confusion.sum())
    per_class = {
        label: {"precision": float(precision[i]), "recall": float(recall[i]),
                "f1": float(f1[i]), "support": int(support[i])}
        for i, label in enumerate(labels)
    }
    return {
        "n": n,
        "accuracy": float(hits.sum() / n) if n else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def evaluate_model(model: Any, spec: ModelSpec, data: str, storage_options: dict[str, Any],
                   batch_size: int, option: str = "DATA", default_usage: str | None = None
                   ) -> dict[str, Any]:
    """Classify every labelled face of `data` and score the predictions."""
    probs, _, labels, source = member_probabilities(model, spec, data, storage_options,
                                                    batch_size, option, default_usage)
    return {"data": source, **score(labels, probs)}


def member_probabilities(model: Any, spec: ModelSpec, data: str,
                         storage_options: dict[str, Any], batch_size: int,
                         option: str = "DATA", default_usage: str | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One model's probabilities for every labelled face of `data`, with its TTA and without
    (from the same model calls), the labels, and the data's description."""
    from fer_batch.infer import classify_with_plain
    from fer_batch.train.data import iter_labelled, parse_data

    source = parse_data(data, option, default_usage)
    with_tta, plain, labels = [], [], []
    for faces, batch_labels in iter_labelled(source, spec, storage_options, batch_size):
        if len(faces):
            probs, alone = classify_with_plain(model, faces, spec, batch_size)
            with_tta.append(probs)
            plain.append(alone)
            labels.append(np.asarray(batch_labels, np.int64))
    if not labels:
        raise ValueError(f"{option}: no labelled faces found in {source.describe()}")
    return (np.concatenate(with_tta), np.concatenate(plain), np.concatenate(labels),
            source.describe())


def score(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Metrics of the most probable class against the labels."""
    return metrics_from_confusion(confusion_matrix(labels, probs.argmax(axis=1)))


def plot_confusion(confusion: Any, path: str, title: str = "",
                   storage_options: dict[str, Any] | None = None) -> None:
    """Row-normalised confusion matrix with counts, as a PNG (Agg canvas, no pyplot state)."""
    import fsspec
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, np.int64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, label="fraction of true class")
    ticks = range(len(EMOTIONS))
    ax.set_xticks(ticks, EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(ticks, EMOTIONS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black")
    figure.tight_layout()
    with fsspec.open(path, "wb", **(storage_options or {})) as f:
        figure.savefig(f, format="png")


def confusion_png_path(report_path: str) -> str:
    """``report.json`` -> ``report.confusion.png`` beside it."""
    return report_path.removesuffix(".json") + ".confusion.png"


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Resolve and load the model(s), score DATA, write the JSON report and the confusion PNG.

    The report's metrics are those of the scorer as annotate runs it (each model's TTA, an
    ensemble's members averaged); `without_tta` gives accuracy and macro-F1 of the same
    models on the face alone, and `members` each model's own figures.
    """
    import time

    import fsspec

    started = time.perf_counter()
    scorer = resolve_scorer(cfg.model, cfg.tta)
    runs, members, labels, data = [], [], None, ""
    for member in scorer.members:
        model = load_keras_model(member, cfg.storage_options)
        probs, plain, member_labels, data = member_probabilities(
            model, member, cfg.data, cfg.storage_options, cfg.batch_size)
        if labels is not None and not np.array_equal(labels, member_labels):
            raise RuntimeError(f"{member.name}: the data changed while it was being scored")
        labels = member_labels
        runs.append((probs, plain))
        members.append({**member.describe(), **_headline(score(labels, probs)),
                        "without_tta": _headline(score(labels, plain))})
    mean = np.mean([r[0] for r in runs], axis=0)
    mean_plain = np.mean([r[1] for r in runs], axis=0)
    about = {k: v for k, v in scorer.describe().items() if k != "name"}
    report = {"model": scorer.name, **about, "data": data, **score(labels, mean),
              "without_tta": _headline(score(labels, mean_plain)),
              "wall_s": round(time.perf_counter() - started, 2)}
    if len(members) > 1:
        report["member_scores"] = members
    fs, path = fsspec.core.url_to_fs(cfg.output, **cfg.storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(report, f, indent=2)
    plot_confusion(report["confusion"], confusion_png_path(cfg.output),
                   f"{scorer.name}: accuracy {report['accuracy']:.3f}, n={report['n']}",
                   cfg.storage_options)
    return report


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
