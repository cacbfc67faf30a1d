"""Frozen, typed run configuration.

Only the CLI and ``jobs/`` build these from arguments; stages receive them whole
(through ``fn_constructor_kwargs`` for actors). Every check names the option the
way a user typed it and echoes the value received.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Detector = Literal["blazeface", "haar", "mtcnn"]
DETECTORS: tuple[str, ...] = ("blazeface", "haar", "mtcnn")

# Chosen by measurement on ../shared/data/photos (README, "Performance"): every
# downscaled copy tried (long side 1280 with floors of 24-48 px on the face) lost
# 4-10 of the 44 boxes a full-resolution scan finds, because OpenCV samples windows
# more coarsely on small levels. Full resolution plus the exact coarse-to-fine
# search (fer_batch/cascade.py) keeps all 44 at about half the CPU. min_face 50 is
# the `fer` package's setting.
DEFAULT_MAX_SIDE = 0
DEFAULT_MIN_FACE = 50
DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_PIXELS = 100_000_000
HAAR_WINDOW = 24
# BlazeFace's confidence threshold (--min-score), on its second-look score (detect.py,
# BlazeFaceDetector: the mean of the short-range model's scores on the crop and its mirror
# image), as measured by `python -m fer_batch.bench.pyramid --min-score T --scenes 1600
# --seed 7` (2026-12-07) on ../shared/data/photos (found / extra of 54 by-eye faces) and
# 1,600 FER-2013 *train* faces in scenes (found):
# 0.60: 52 / 5, 93.7%; 0.65: 52 / 1, 92.9%; 0.68: 50 / 0, 92.1%; 0.70: 50 / 0, 90.8%.
# 0.65 is the knee: from 0.60 it drops 4 false boxes for 0.8 points of recall; going on
# to 0.70 drops the last one (a motorbike's headlight, 0.68) for 2.1 points and 2 faces
# of a crowd. On the scenes no box off the face scores over 0.59.
DEFAULT_MIN_SCORE = 0.65


def _require_tta(tta: str | None) -> None:
    from fer_batch.registry import TTAS

    _require(tta is None or tta in TTAS, "--tta", f"must be one of {TTAS}", tta)


def _require(ok: bool, option: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{option} {rule}; received: {value!r}")


@dataclass(frozen=True)
class DetectConfig:
    """Face detection settings, shared by annotate, evaluate's alignment and the bench."""

    detector: Detector = "blazeface"
    max_side: int = DEFAULT_MAX_SIDE
    # In Haar's box convention for every detector (detect.HAAR_SIDE says how boxes compare).
    min_face: int = DEFAULT_MIN_FACE
    min_score: float = DEFAULT_MIN_SCORE
    scale_factor: float = 1.1
    min_neighbors: int = 5
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        _require(self.detector in DETECTORS, "--detector", f"must be one of {DETECTORS}",
                 self.detector)
        _require(self.max_side == 0 or self.max_side >= 64, "--max-side",
                 "must be 0 (full resolution) or at least 64", self.max_side)
        _require(self.min_face >= HAAR_WINDOW, "--min-face",
                 f"must be at least {HAAR_WINDOW} pixels", self.min_face)
        _require(self.scale_factor > 1.0, "--scale-factor", "must be greater than 1.0",
                 self.scale_factor)
        _require(self.min_neighbors >= 0, "--min-neighbors", "must be >= 0", self.min_neighbors)
        _require(self.max_pixels >= 1, "--max-pixels", "must be >= 1", self.max_pixels)
        _require(0.0 < self.min_score < 1.0, "--min-score", "must be in (0, 1)", self.min_score)


@dataclass(frozen=True)
class VideoConfig:
    """How frames are sampled from videos and how long videos are split."""

    fps: float | None = 1.0
    every_n_frames: int | None = None
    max_frames: int | None = None
    segment_seconds: float | None = None  # None: auto, from the video's length alone

    def __post_init__(self) -> None:
        _require(self.fps is None or self.fps > 0, "--video-fps", "must be > 0", self.fps)
        _require(self.every_n_frames is None or self.every_n_frames >= 1, "--every-n-frames",
                 "must be >= 1", self.every_n_frames)
        _require(self.max_frames is None or self.max_frames >= 1, "--max-frames-per-video",
                 "must be >= 1", self.max_frames)
        _require(self.segment_seconds is None or self.segment_seconds > 0,
                 "--segment-seconds", "must be > 0", self.segment_seconds)


@dataclass(frozen=True)
class AnnotateConfig:
    """Everything one annotate run needs; recorded verbatim (minus secrets) in _run.json."""

    inputs: tuple[str, ...]
    output: str
    model: str = "fer-mini-xception"
    tta: str | None = None  # None: each model's registry setting
    batch_size: int = DEFAULT_BATCH_SIZE
    detect: DetectConfig = field(default_factory=DetectConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    num_gpus: float | None = None
    detect_actors: int | None = None
    classify_actors: int | None = None
    files_per_task: int = 4  # fewest images per detection task (datasets.block_sizes)
    manifest: str | None = None
    overwrite: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict)
    address: str | None = None
    progress: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        _require(bool(self.inputs) or self.manifest is not None, "INPUT",
                 "needs at least one input path (or --manifest)", list(self.inputs))
        _require(bool(self.output), "--output", "must be a path or URI", self.output)
        _require(self.batch_size >= 1, "--batch-size", "must be >= 1", self.batch_size)
        _require_tta(self.tta)
        _require(self.num_gpus is None or self.num_gpus >= 0, "--num-gpus", "must be >= 0",
                 self.num_gpus)
        for option, value in (("--detect-actors", self.detect_actors),
                              ("--classify-actors", self.classify_actors)):
            _require(value is None or value >= 1, option, "must be >= 1", value)
        _require(self.files_per_task >= 1, "--files-per-task", "must be >= 1",
                 self.files_per_task)
        _require(isinstance(self.storage_options, dict), "--storage-options",
                 "must be a JSON object", self.storage_options)

    def public_dict(self) -> dict[str, Any]:
        """The configuration as recorded in _run.json: storage options are never written."""
        out = asdict(self)
        out["storage_options"] = sorted(self.storage_options)
        return out


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """Parse ``--storage-options`` JSON; the value is not echoed since it may hold secrets."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"--storage-options must be a JSON object; it does not parse: {e.msg}"
        ) from e
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise ValueError(f"--storage-options must be a JSON object; received a {kind}")
    return value


ClassWeights = Literal["none", "balanced"]
CLASS_WEIGHTS: tuple[str, ...] = ("none", "balanced")
LrSchedule = Literal["constant", "cosine", "plateau"]
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine", "plateau")
Optimizer = Literal["adam", "sgd"]
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
DEFAULT_TRAIN_BATCH = 64


@dataclass(frozen=True)
class TrainConfig:
    """One `fer-batch train` run. `batch_size` is per worker; checkpoints go to storage_path.

    Re-running the same command against the same `storage_path` resumes from the
    latest checkpoint, and FailureConfig restarts a run whose worker failed.
    """

    train: str
    output: str
    val: str | None = None
    arch: str | None = None
    init_from: str | None = None
    epochs: int = 10
    num_workers: int = 2
    use_gpu: bool = False
    batch_size: int = DEFAULT_TRAIN_BATCH
    lr: float = 1e-3
    lr_schedule: LrSchedule = "constant"
    optimizer: Optimizer = "adam"
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    crop_scale: float = 1.0
    erase_prob: float = 0.0
    tta: str = "none"
    frozen_epochs: int | None = None
    cv_folds: int = 0
    class_weights: ClassWeights = "none"
    backbone_weights: str = "imagenet"
    align: bool = False
    augment: bool = True
    storage_path: str | None = None
    max_failures: int = 2
    seed: int = 0
    storage_options: dict[str, Any] = field(default_factory=dict)
    address: str | None = None
    progress: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        from fer_batch.train.archs import ARCHS

        _require(bool(self.train), "--train", "must be a path or URI", self.train)
        _require(bool(self.output), "--output", "must be a directory path or URI", self.output)
        _require(self.arch is not None or self.init_from is not None, "--arch",
                 "is required unless --init-from names a model", self.arch)
        _require(self.arch is None or self.arch in ARCHS, "--arch",
                 f"must be one of {tuple(ARCHS)}", self.arch)
        _require(self.epochs >= 1, "--epochs", "must be >= 1", self.epochs)
        _require(self.num_workers >= 1, "--num-workers", "must be >= 1", self.num_workers)
        _require(self.batch_size >= 1, "--batch-size", "must be >= 1", self.batch_size)
        _require(self.lr > 0, "--lr", "must be > 0", self.lr)
        _require(self.lr_schedule in LR_SCHEDULES, "--lr-schedule",
                 f"must be one of {LR_SCHEDULES}", self.lr_schedule)
        _require(self.lr_schedule != "plateau" or self.val is not None, "--lr-schedule",
                 "plateau watches the validation loss and needs --val", self.lr_schedule)
        _require(self.optimizer in OPTIMIZERS, "--optimizer", f"must be one of {OPTIMIZERS}",
                 self.optimizer)
        _require(self.weight_decay >= 0, "--weight-decay", "must be >= 0", self.weight_decay)
        _require(0 <= self.label_smoothing < 1, "--label-smoothing", "must be in [0, 1)",
                 self.label_smoothing)
        _require(0 < self.crop_scale <= 1, "--crop-scale", "must be in (0, 1]",
                 self.crop_scale)
        _require(0 <= self.erase_prob <= 1, "--erase-prob", "must be in [0, 1]",
                 self.erase_prob)
        _require_tta(self.tta)
        _require(self.tta is not None, "--tta", "must be given for a trained model", self.tta)
        _require(self.frozen_epochs is None or 0 <= self.frozen_epochs <= self.epochs,
                 "--frozen-epochs", "must be between 0 and --epochs", self.frozen_epochs)
        _require(self.cv_folds == 0 or self.cv_folds >= 2, "--cv-folds",
                 "must be 0 (off) or at least 2", self.cv_folds)
        _require(self.class_weights in CLASS_WEIGHTS, "--class-weights",
                 f"must be one of {CLASS_WEIGHTS}", self.class_weights)
        _require(bool(self.backbone_weights), "--backbone-weights",
                 "must be imagenet, none or a weights file path", self.backbone_weights)
        _require(self.max_failures >= -1, "--max-failures", "must be >= -1 (-1: unlimited)",
                 self.max_failures)

    @property
    def checkpoints(self) -> str:
        """Where Ray Train keeps checkpoints: --storage-path, else OUTPUT/checkpoints."""
        return self.storage_path or f"{self.output.rstrip('/')}/checkpoints"

    def public_dict(self) -> dict[str, Any]:
        """The configuration as recorded in the model card: storage options are never written."""
        out = asdict(self)
        out["storage_options"] = sorted(self.storage_options)
        return out


@dataclass(frozen=True)
class EvaluateConfig:
    """One `fer-batch evaluate` run: labelled DATA, a model, where the report goes."""

    data: str
    model: str = "fer-mini-xception"
    tta: str | None = None  # None: each model's registry setting
    output: str = "report.json"
    batch_size: int = DEFAULT_BATCH_SIZE
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(bool(self.data), "DATA", "must be a path or URI", self.data)
        _require_tta(self.tta)
        _require(self.output.endswith(".json"), "--output", "must be a .json path or URI",
                 self.output)
        _require(self.batch_size >= 1, "--batch-size", "must be >= 1", self.batch_size)
