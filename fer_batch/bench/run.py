"""One bench run: inputs, stage costs, end-to-end runs, memory growth, peers, GPU, outputs."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from fer_batch.bench import storage
from fer_batch.bench.config import BenchConfig
from fer_batch.bench.detectors import compare_detectors, read_by_eye
from fer_batch.bench.endtoend import cold_run, rates, warm_run
from fer_batch.bench.gpu import gpu_sweep
from fer_batch.bench.peers import run_fer
from fer_batch.bench.report import chart, compare, summary, write_json
from fer_batch.bench.stages import ceiling, measure_stages, run_pinned, stage_rates

WARM_UP_FILES = 4
_VERSIONED = ("fer-batch", "ray", "tensorflow", "keras", "opencv-python-headless", "numpy")


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Measure everything, write the JSON and the chart, print the headlines; returns the JSON."""
    from fer_batch.registry import resolve_model
    from fer_batch.sources import check_inputs

    resolve_model(cfg.model)  # a bad option fails before minutes of measuring
    check_inputs(cfg.inputs, {})
    if cfg.by_eye:
        read_by_eye(cfg.by_eye)
    old = _load_json(cfg.compare) if cfg.compare else None
    output = Path(cfg.output)
    with tempfile.TemporaryDirectory(prefix="fer-batch-bench-") as tmp:
        result = _measure(cfg, Path(tmp))
    write_json(result, output)
    chart(result, output.with_suffix(".png"))
    for line in summary(result):
        print(line)
    if old is not None:
        print(f"change against {cfg.compare}:")
        for line in compare(old, result):
            print(line)
    print(f"fer-batch bench: -> {output} and {output.with_suffix('.png')}")
    return result


def _measure(cfg: BenchConfig, work: Path) -> dict[str, Any]:
    from fer_batch.sources import ListingStats, iter_media

    inputs = cfg.inputs or (str(demo_archive(work / "demo")),)
    entries = list(iter_media(inputs, {}, ListingStats()))
    if not entries:
        raise ValueError(f"--input holds no images or videos; received: {list(inputs)!r}")
    result: dict[str, Any] = {
        "version": 1,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": host_info(),
        "input": input_info(cfg, inputs, entries),
    }
    stages = run_pinned(measure_stages, inputs, cfg.model, cfg.detect, cfg.swept_batch_sizes,
                        cfg.stage_sample, cfg.repeat, cfg.video_fps)
    cold = cold_run(inputs, str(work / "cold"), cfg.model, cfg.batch_size, cfg.detect,
                    cfg.video_fps)
    warm, cores = warm_series(cfg, inputs, entries, work)
    ceil = ceiling(stages, cores, cfg.batch_size)
    result["stages"] = {**stages, "rates_per_core": stage_rates(stages)}
    result["ceiling"] = ceil
    result["end_to_end"] = {
        "cold": {**rates(cold["counts"], cold["wall_s"], ceil), "memory": cold["memory"],
                 "timed": "whole `fer-batch annotate` process: start-up, Ray, actors, model"},
        "warm": {**rates(warm[1]["counts"], warm[1]["wall_s"], ceil),
                 "memory": warm[1]["memory"],
                 "timed": "annotate() after a warm-up run in the same Ray session; actor "
                          "start and model load included"},
    }
    if len(warm) > 1:
        result["end_to_end"]["warm_marginal"] = marginal(warm, ceil)
    result["memory"] = growth_report(warm, ceil)
    result["detectors"] = compare_detectors(
        cfg.detectors, cfg.detect, stages, inputs, cfg.model, cfg.batch_size, cores,
        cfg.stage_sample, cfg.repeat, cfg.video_fps, cfg.by_eye)
    result["peers"] = peers(cfg, entries, work, result) if cfg.peers else {
        "skipped": "not requested (--peers)"}
    result["storage"] = storage.measure(entries, work) if cfg.s3 else {
        "skipped": "not requested (--s3)"}
    # Imported here: `python -m fer_batch.bench.manifest_memory` runs it as __main__.
    from fer_batch.bench import manifest_memory

    result["manifest_memory"] = manifest_memory.measure(cfg.manifest_lines, work) if (
        cfg.manifest_lines) else {"skipped": "not requested (--manifest-lines '')"}
    result["gpu"] = gpu_sweep(cfg.model, cfg.gpu_batch_sizes)
    result["video"] = video_report(result, cfg.video_fps)
    result["host"]["load_avg_end"] = list(os.getloadavg())
    return result


def warm_series(cfg: BenchConfig, inputs: tuple[str, ...], entries: list[dict[str, Any]],
                work: Path) -> tuple[dict[int, dict[str, Any]], int]:
    """Warm runs at each --growth multiple inside one local Ray; also Ray's CPU count.

    A small warm-up run goes first, so the measured runs are second runs in their Ray
    session: Ray Data's own helper actors and the worker pool are already up.
    """
    import ray

    from fer_batch.session import init_ray

    started = not ray.is_initialized()
    init_ray("local" if started else None)
    try:
        cores = int(ray.cluster_resources()["CPU"])
        images_first = sorted(entries, key=lambda e: e["media_type"] != "image")
        warm_up = replicate(images_first[:WARM_UP_FILES], work / "warm-up", 1)
        warm_run((str(warm_up),), str(work / "warm-up-out"), cfg.model, cfg.batch_size,
                 cfg.detect, cfg.video_fps)
        runs = {}
        for copies in sorted(set(cfg.growth)):
            source = inputs if copies == 1 else (str(replicate(entries, work / f"x{copies}",
                                                               copies)),)
            runs[copies] = warm_run(source, str(work / f"warm-x{copies}"), cfg.model,
                                    cfg.batch_size, cfg.detect, cfg.video_fps)
    finally:
        if started:
            ray.shutdown()
    return runs, cores


def replicate(entries: list[dict[str, Any]], root: Path, copies: int) -> Path:
    """`copies` copies of every listed file under `root` (hard links where possible)."""
    from fer_batch.sources import filesystem, read_bytes

    for copy in range(copies):
        folder = root / f"copy{copy:03d}"
        folder.mkdir(parents=True)
        for i, entry in enumerate(entries):
            uri = entry["source_uri"]
            target = folder / f"{i:06d}-{uri.rsplit('/', 1)[-1]}"
            fs, path = filesystem(uri, {})
            protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
            local = bool(protocols & {"file", "local"})
            source = Path(path) if local else root / "copy000" / target.name
            if not local and copy == 0:
                target.write_bytes(read_bytes(uri, {}))
                continue
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
    return root


def marginal(warm: dict[int, dict[str, Any]], ceil: dict[str, Any]) -> dict[str, Any]:
    """Steady-state speed: the extra files of the largest warm run over its extra seconds
    against the 1x run. What every run pays once (actor start, model load, the first
    and last blocks) cancels out; what each file costs does not."""
    small, large = warm[min(warm)], warm[max(warm)]
    extra = {key: large["counts"][key] - small["counts"][key]
             for key in ("files", "videos", "frames", "faces", "errors")}
    return {**rates(extra, large["wall_s"] - small["wall_s"], ceil),
            "timed": f"(largest - 1x) / (wall at {max(warm)}x - wall at 1x), one Ray session"}


def growth_report(warm: dict[int, dict[str, Any]], ceil: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS (and speed) per archive size; growth is the largest size's peak over the
    1x peak. Efficiency per size shows how much of the 1x gap is fixed start-up cost."""
    runs = [{"copies": copies, "files": run["counts"]["files"], "wall_s": run["wall_s"],
             "efficiency": rates(run["counts"], run["wall_s"], ceil)["efficiency"],
             **run["memory"]}
            for copies, run in sorted(warm.items())]
    base, top = runs[0], runs[-1]
    return {
        "runs": runs,
        "driver_growth": top["driver_peak_rss_mb"] / base["driver_peak_rss_mb"] - 1,
        "actor_growth": top["actor_peak_rss_mb"] / base["actor_peak_rss_mb"] - 1,
    }


def peers(cfg: BenchConfig, entries: list[dict[str, Any]], work: Path,
          result: dict[str, Any]) -> dict[str, Any]:
    """The `fer` package on the same local images, against our cold run."""
    images = [e["source_uri"] for e in entries if e["media_type"] == "image"]
    if not all(os.path.isabs(uri) for uri in images):
        return {"skipped": "peers read local files only; --input is remote"}
    fer = run_fer(images, cfg.peer_python, work, result["end_to_end"]["cold"], str(work / "cold"))
    if result["input"]["videos"] and "speed_ratio_cold" in fer:
        fer["note"] = "fer read the images only; our files/s includes the videos"
    return {"fer": fer} if "skipped" not in fer else fer


def video_report(result: dict[str, Any], video_fps: float) -> dict[str, Any]:
    if not result["input"]["videos"]:
        return {"skipped": "the input has no videos"}
    warm = result["end_to_end"]["warm"]
    ceiling = result["ceiling"]["frames_per_s"]
    report = {"videos": result["input"]["videos"], "sampling_fps": video_fps,
              "frames_per_s_warm": warm["frames_per_s"], "ceiling_frames_per_s": ceiling,
              "efficiency_warm": warm["frames_per_s"] / ceiling}
    if "warm_marginal" in result["end_to_end"]:
        steady = result["end_to_end"]["warm_marginal"]["frames_per_s"]
        report |= {"frames_per_s_warm_marginal": steady,
                   "efficiency_warm_marginal": steady / ceiling}
    return report


def demo_archive(root: Path) -> Path:
    try:
        from fer_batch.demo import build_archive

        build_archive(root)
    except ImportError as e:
        raise RuntimeError("the default bench input (the demo archive) needs scikit-image: "
                           "pip install scikit-image, or pass --input") from e
    return root


def host_info() -> dict[str, Any]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "processor": _cpu_model(),
            "python": sys.version.split()[0], "load_avg_start": list(os.getloadavg()),
            "versions": versions}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def input_info(cfg: BenchConfig, inputs: tuple[str, ...], entries: list[dict]) -> dict[str, Any]:
    kinds = [e["media_type"] for e in entries]
    return {"inputs": list(cfg.inputs) or ["demo archive (fer_batch.demo)"],
            "files": len(entries), "images": kinds.count("image"),
            "videos": kinds.count("video"),
            "bytes": sum(int(e["size_bytes"]) for e in entries)}


def _load_json(path: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--compare must name a bench JSON file; received: {path!r} ({e})") from e
