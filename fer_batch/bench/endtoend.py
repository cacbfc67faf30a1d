"""End-to-end runs of the real pipeline, with the memory of the driver and its actors.

Cold: a fresh `fer-batch annotate` process, timed whole (interpreter, imports, Ray
start, actor start, model load). Warm: `pipeline.annotate` inside a process whose
Ray is already up, timed per run (actor start and model load still included, since
Ray Data starts new actor pools for every run). Memory is sampled from the process
tree: Ray's raylet is the driver's child and every actor is the raylet's child.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from fer_batch.config import AnnotateConfig, DetectConfig, VideoConfig

ACTOR_MARK = "ray::MapWorker"
_STAGE = re.compile(r"MapBatches\((\w+)\)")
SAMPLE_EVERY_S = 0.1
MB = 1024 * 1024


class RssSampler:
    """Peak RSS of one process and of the Ray Data actors below it, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = SAMPLE_EVERY_S) -> None:
        self.root = psutil.Process(pid)
        self.every_s = every_s
        self.driver_peak = 0
        self.actor_peaks: dict[int, tuple[str, int]] = {}
        self._names: dict[int, str | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def sample(self) -> None:
        try:
            self.driver_peak = max(self.driver_peak, self.root.memory_info().rss)
            children = self.root.children(recursive=True)
        except psutil.Error:
            return  # the driver has exited
        for proc in children:
            try:
                stage = self._stage_of(proc)
                if stage is not None:
                    rss = proc.memory_info().rss
                    _, peak = self.actor_peaks.get(proc.pid, (stage, 0))
                    self.actor_peaks[proc.pid] = (stage, max(peak, rss))
            except psutil.Error:
                continue  # exited between listing and reading

    def _stage_of(self, proc: psutil.Process) -> str | None:
        if proc.pid not in self._names or self._names[proc.pid] is None:
            cmdline = " ".join(proc.cmdline())
            self._names[proc.pid] = None
            if ACTOR_MARK in cmdline:
                found = _STAGE.search(cmdline)
                self._names[proc.pid] = found.group(1) if found else "MapWorker"
        return self._names[proc.pid]

    def report(self) -> dict[str, Any]:
        by_stage: dict[str, float] = {}
        for stage, peak in self.actor_peaks.values():
            by_stage[stage] = max(by_stage.get(stage, 0.0), peak / MB)
        return {
            "driver_peak_rss_mb": self.driver_peak / MB,
            "actor_peak_rss_mb": max(by_stage.values(), default=0.0),
            "actor_peak_rss_mb_by_stage": by_stage,
            "actors_seen": len(self.actor_peaks),
        }


def output_counts(output: str) -> dict[str, Any]:
    """Files, frames and faces a fresh output holds, read back from its tables."""
    import pyarrow.parquet as pq

    media = pq.read_table(Path(output) / "media",
                          columns=["media_type", "status", "n_frames_sampled"]).to_pydict()
    faces = pq.read_table(Path(output) / "faces", columns=["source_uri"])
    frames = sum(1 if kind == "image" else max(n or 0, 0)
                 for kind, n in zip(media["media_type"], media["n_frames_sampled"]))
    return {"files": len(media["media_type"]), "videos": media["media_type"].count("video"),
            "frames": frames, "faces": faces.num_rows, "errors": media["status"].count("error")}


def rates(counts: dict[str, Any], wall_s: float, ceiling: dict[str, Any]) -> dict[str, Any]:
    """files/s, frames/s, faces/s over `wall_s`, and efficiency against the ceiling."""
    files_per_s = counts["files"] / wall_s
    return {**counts, "wall_s": wall_s, "files_per_s": files_per_s,
            "frames_per_s": counts["frames"] / wall_s, "faces_per_s": counts["faces"] / wall_s,
            "efficiency": files_per_s / ceiling["files_per_s"]}


def cold_run(inputs: tuple[str, ...], output: str, model: str, batch_size: int,
             detect: DetectConfig, video_fps: float) -> dict[str, Any]:
    """Time a fresh `fer-batch annotate` process from exec to exit; sample its memory."""
    cmd = [sys.executable, "-m", "fer_batch.cli", "annotate", *inputs, "--output", output,
           "--model", model, "--batch-size", str(batch_size), "--detector", detect.detector,
           "--max-side", str(detect.max_side), "--min-face", str(detect.min_face),
           "--max-pixels", str(detect.max_pixels), "--video-fps", str(video_fps),
           "--address", "local", "--no-progress"]  # a Ray of its own, even beside a cluster
    log = Path(output).with_suffix(".log")
    with log.open("wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
        with RssSampler(proc.pid) as sampler:
            rc = proc.wait()
        wall = time.perf_counter() - start
    if rc != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"cold run failed (exit {rc}): {' '.join(cmd)}\n{tail}")
    return {"wall_s": wall, "counts": output_counts(output), "memory": sampler.report()}


def wait_actors_gone(pid: int, timeout_s: float = 60.0) -> float:
    """Wait until no Ray Data actor below `pid` is alive; returns the seconds waited.

    Ray Data lets a finished run's actors exit on their own, and a TensorFlow process
    takes about a second of CPU to exit: without this, each warm run would pay for
    its predecessor's exit instead of its own.
    """
    root, start = psutil.Process(pid), time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        alive = []
        for proc in root.children(recursive=True):
            try:
                if ACTOR_MARK in " ".join(proc.cmdline()):
                    alive.append(proc)
            except psutil.Error:
                continue
        if not alive:
            break
        psutil.wait_procs(alive, timeout=0.5)
    return time.perf_counter() - start


def warm_run(inputs: tuple[str, ...], output: str, model: str, batch_size: int,
             detect: DetectConfig, video_fps: float) -> dict[str, Any]:
    """One `pipeline.annotate` in this process (Ray already up); timed per run, from a
    machine that no earlier run's actors still occupy."""
    from fer_batch.pipeline import annotate

    cfg = AnnotateConfig(inputs=inputs, output=output, model=model, batch_size=batch_size,
                         detect=detect, video=VideoConfig(fps=video_fps), progress=False)
    wait_actors_gone(os.getpid())  # the previous run's actors, still exiting
    with RssSampler(os.getpid()) as sampler:
        start = time.perf_counter()
        annotate(cfg)
        wall = time.perf_counter() - start
    return {"wall_s": wall, "counts": output_counts(output), "memory": sampler.report()}
