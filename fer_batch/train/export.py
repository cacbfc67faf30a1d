"""Write a trained model directory that `resolve_model(DIR)` (and so annotate) can use.

The directory holds the `.keras` model (no optimizer state), its LiteRT export (checked
against it; CPU classification runs it without TensorFlow), ``registry.json`` (a
`ModelSpec` whose weights path is relative), a markdown model card, the per-epoch
curves and the validation confusion matrix as PNGs, and the validation report.
Validation numbers come from `evaluate_model`, the same code as `fer-batch evaluate`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fer_batch.config import TrainConfig
from fer_batch.evaluate import evaluate_model, plot_confusion
from fer_batch.litert import EXPORT_TOLERANCE, export_checked
from fer_batch.registry import ENTRY_FILE, ModelSpec, sha256_of
from fer_batch.schema import EMOTIONS
from fer_batch.train.loop import MODEL_FILE, STATE_FILE, TrainState

CARD_FILE = "card.md"
CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion.png"
VAL_REPORT_FILE = "val_report.json"
LITERT_SUFFIX = ".tflite"
EVAL_BATCH = 256


def plot_curves(history: tuple[dict[str, Any], ...], path: Path) -> None:
    """Loss and accuracy per epoch, training (augmented) and validation."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    epochs = [h["epoch"] + 1 for h in history]
    for i, metric in enumerate(("loss", "accuracy"), start=1):
        ax = figure.add_subplot(1, 2, i)
        for key, label in ((metric, "train"), (f"val_{metric}", "val")):
            if all(key in h for h in history):
                ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")


def provenance(cfg: TrainConfig, spec: ModelSpec) -> str:
    start = f"fine-tuned from {cfg.init_from}" if cfg.init_from else "trained from scratch"
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    return (f"fer-batch train: {spec.architecture} {start} on {cfg.train}, {cfg.epochs} epochs, "
            f"{cfg.num_workers} Ray Train workers, {when}")


def accuracy_entry(cfg: TrainConfig, report: dict[str, Any] | None,
                   cv: dict[str, Any] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if report is not None:
        entry = {"dataset": report["data"], "metric": "accuracy",
                 "value": round(report["accuracy"], 4), "macro_f1": round(report["macro_f1"], 4),
                 "n": report["n"]}
    if cv is not None:
        entry["cross_validation"] = {"dataset": cfg.train, **cv}
    return entry


def _table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def card_text(cfg: TrainConfig, spec: ModelSpec, counts: list[int],
              history: tuple[dict[str, Any], ...], report: dict[str, Any] | None,
              cv: dict[str, Any] | None) -> str:
    """The model card: data, configuration, curves, final metrics."""
    config = {k: v for k, v in cfg.public_dict().items() if v not in (None, [], {})}
    keys = [k for k in ("epoch", "phase", "lr", "loss", "accuracy", "val_loss", "val_accuracy",
                        "val_macro_f1", "seconds") if any(k in h for h in history)]
    epochs = [[_fmt(h[k]) if k in h else "—" for k in keys] for h in history]  # —: not recorded
    parts = [
        f"# {spec.name}\n\n{spec.provenance}.\n",
        "## Data\n",
        f"- training: `{cfg.train}`, {sum(counts)} faces (augmented: {cfg.augment})",
        f"- validation: `{cfg.val}`" if cfg.val else "- validation: none",
        "\n" + _table([[n, c] for n, c in zip(EMOTIONS, counts)], ["class", "training faces"]),
        "\n## Configuration\n",
        f"```json\n{json.dumps(config, indent=1)}\n```\n",
        f"Preprocessing (identical at inference): `{json.dumps(spec.to_dict()['preprocessing'])}`,"
        f" input {list(spec.input_shape)}.\n",
        (f"LiteRT export: `{spec.litert}`, held to the Keras model's probabilities within "
         f"{EXPORT_TOLERANCE}; CPU classification runs it without TensorFlow.\n"
         if spec.litert else "No LiteRT export: CPU classification runs the Keras model.\n"),
        "## Training curves\n",
        f"![curves]({CURVES_FILE})\n",
        _table(epochs, keys),
    ]
    if report is not None:
        parts += [f"\n## Final metrics on `{report['data']}`\n",
                  f"accuracy **{report['accuracy']:.4f}**, macro-F1 {report['macro_f1']:.4f}, "
                  f"n = {report['n']}\n",
                  _table([[c, _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"]),
                           m["support"]] for c, m in report["per_class"].items()],
                         ["class", "precision", "recall", "F1", "support"]),
                  f"\n![confusion matrix]({CONFUSION_FILE})\n"]
    if cv is not None:
        parts.append(f"\n## {cv['folds']}-fold cross-validation on the training data\n\n"
                     f"accuracy {cv['accuracy_mean']:.4f} ± {cv['accuracy_std']:.4f} "
                     f"(folds: {', '.join(_fmt(a) for a in cv['per_fold'])})\n")
    return "\n".join(parts) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


def upload(local: Path, output: str, storage_options: dict[str, Any]) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(output, **storage_options)
    fs.makedirs(root, exist_ok=True)
    for path in sorted(local.iterdir()):
        fs.put_file(str(path), f"{root.rstrip('/')}/{path.name}")


def with_litert(model: Any, spec: ModelSpec, local: Path) -> ModelSpec:
    """The spec with a checked LiteRT export of `model` in `local` (fer_batch/litert.py), so
    that CPU annotate runs it without TensorFlow; unchanged, saying why on stderr, when the
    export fails (Keras exports LiteRT from the TensorFlow backend) or differs from Keras."""
    out = local / f"{spec.name}{LITERT_SUFFIX}"
    try:
        digest = export_checked(model, spec, out)
    except Exception as e:  # a converter error of any kind: the Keras model still works
        out.unlink(missing_ok=True)
        print(f"fer-batch train: no LiteRT export ({type(e).__name__}: {e}); annotate will "
              "run the Keras model on CPU too", file=sys.stderr)
        return spec
    return replace(spec, litert=out.name, litert_sha256=digest)


def export_model(cfg: TrainConfig, spec: ModelSpec, checkpoint: Any, counts: list[int],
                 cv: dict[str, Any] | None) -> dict[str, Any]:
    """Turn the final checkpoint into the output directory; return a summary."""
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        with checkpoint.as_directory() as folder:
            model = keras.saving.load_model(Path(folder, MODEL_FILE), compile=False)
            history = TrainState.from_json(Path(folder, STATE_FILE).read_text()).history
        weights = local / f"{spec.name}.keras"
        model.save(weights)
        trained = replace(spec, weights=weights.name, sha256=sha256_of(weights), card=CARD_FILE,
                          provenance=provenance(cfg, spec))
        trained = with_litert(model, trained, local)
        report = None
        if cfg.val:
            report = evaluate_model(model, trained, cfg.val, cfg.storage_options, EVAL_BATCH,
                                    option="--val", default_usage="PublicTest")
            (local / VAL_REPORT_FILE).write_text(json.dumps(report, indent=2))
            plot_confusion(report["confusion"], str(local / CONFUSION_FILE),
                           f"{spec.name}: accuracy {report['accuracy']:.3f}, n={report['n']}")
        trained = replace(trained, accuracy=accuracy_entry(cfg, report, cv))
        (local / ENTRY_FILE).write_text(json.dumps(trained.to_dict(), indent=2))
        plot_curves(history, local / CURVES_FILE)
        (local / CARD_FILE).write_text(card_text(cfg, trained, counts, history, report, cv))
        upload(local, cfg.output, cfg.storage_options)
    return {"output": cfg.output, "spec": trained.to_dict(), "history": list(history),
            "val": report, "cv": cv}
