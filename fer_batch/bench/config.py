"""The one frozen configuration a bench run receives."""

from __future__ import annotations

from dataclasses import dataclass, field

from fer_batch.config import DEFAULT_BATCH_SIZE, DETECTORS, DetectConfig

DEFAULT_OUTPUT = "bench-out/bench.json"


def _require(ok: bool, option: str, rule: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{option} {rule}; received: {value!r}")


@dataclass(frozen=True)
class BenchConfig:
    """Everything `fer-batch bench` measures; `inputs` empty means the demo archive."""

    inputs: tuple[str, ...] = ()
    output: str = DEFAULT_OUTPUT
    model: str = "fer-mini-xception"
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_sizes: tuple[int, ...] = (16, 64, 256)
    growth: tuple[int, ...] = (1, 4, 16)
    peers: bool = False
    s3: bool = False
    peer_python: str | None = None
    compare: str | None = None
    stage_sample: int = 200
    repeat: int = 2
    video_fps: float = 1.0
    manifest_lines: tuple[int, ...] = (10_000, 1_000_000)
    gpu_batch_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024)
    detect: DetectConfig = field(default_factory=DetectConfig)
    detectors: tuple[str, ...] = ("blazeface", "haar")  # compared side by side
    by_eye: str | None = None  # manifest.csv of photos with faces counted by eye

    def __post_init__(self) -> None:
        _require(self.output.endswith(".json"), "--output", "must be a .json path", self.output)
        _require(self.batch_size >= 1, "--batch-size", "must be >= 1", self.batch_size)
        for option, sizes in (("--batch-sizes", self.batch_sizes),
                              ("--gpu-batch-sizes", self.gpu_batch_sizes)):
            _require(bool(sizes) and all(b >= 1 for b in sizes), option,
                     "must be one or more integers >= 1", sizes)
        _require(1 in self.growth and all(g >= 1 for g in self.growth), "--growth",
                 "must be integers >= 1 and include 1 (the base the others compare to)",
                 self.growth)
        _require(self.stage_sample >= 1, "--stage-sample", "must be >= 1", self.stage_sample)
        _require(self.repeat >= 1, "--repeat", "must be >= 1", self.repeat)
        _require(all(n >= 1 for n in self.manifest_lines), "--manifest-lines",
                 "must be integers >= 1 (empty: skip)", self.manifest_lines)
        _require(self.video_fps > 0, "--video-fps", "must be > 0", self.video_fps)
        _require(bool(self.detectors) and set(self.detectors) <= set(DETECTORS), "--detectors",
                 f"must be one or more of {DETECTORS}", self.detectors)
        _require(self.by_eye is None or self.by_eye.endswith(".csv"), "--by-eye",
                 "must be a manifest.csv path", self.by_eye)

    @property
    def swept_batch_sizes(self) -> tuple[int, ...]:
        """The CPU sweep always includes the batch size the pipeline runs with."""
        return tuple(sorted({*self.batch_sizes, self.batch_size}))
