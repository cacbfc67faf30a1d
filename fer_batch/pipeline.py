"""The annotate job: list -> detect (CPU actors) -> classify (GPU/CPU actors) -> commit.

Everything is checked before Ray starts: the model, the inputs, the output. The
driver only streams the listing into small Arrow blocks and folds per-commit
summaries; images and crops never pass through it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from importlib import metadata
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fer_batch import lease
from fer_batch.config import AnnotateConfig
from fer_batch.datasets import build_dataset
from fer_batch.detect import check_detector
from fer_batch.manifest import ENTRY_SCHEMA, check_manifest, iter_manifest
from fer_batch.placement import reserve_classifiers
from fer_batch.plan import StatFn, WorkPlan, commit_summary, drop_commits, stat_on_workers
from fer_batch.progress import NativeStderrTo, Progress
from fer_batch.recovery import CommitLog, failed_blocks_budget, recover, tolerate_failed_blocks
from fer_batch.registry import Scorer, resolve_scorer, weights_path
from fer_batch.schema import COMMITS_DIR, RUN_RECORD, TABLES
from fer_batch.sink import ensure_tables, remove_orphans
from fer_batch.sources import (
    ListingStats,
    check_inputs,
    filesystem,
    is_local,
    iter_media,
    retry_transient,
)
from fer_batch.store import join
from fer_batch.tracking import finalize_videos
from fer_batch.video import expand_videos

LISTING_CHUNK = 10_000
WAVE_ITEMS = 50_000
MAX_BLOCK_ROWS = 32
GUIDE = 4
_VERSIONED = ("fer-batch", "ray", "tensorflow", "keras", "opencv-python-headless", "numpy",
              "pyarrow", "pillow", "fsspec", "s3fs", "duckdb", "fer", "mtcnn")


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def check_output(output: str, storage_options: dict[str, Any]) -> None:
    """Fail before anything starts if the output cannot be written; writes nothing locally."""
    fs, path = filesystem(output, storage_options)
    if not is_local(fs):
        return  # object stores: permission errors surface on the first commit, as error rows
    probe = os.path.abspath(path)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise ValueError(f"--output exists and is not a directory: {output!r}")
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--output cannot be written ({probe} is not a writable directory): "
                         f"{output!r}")


def prepare(cfg: AnnotateConfig) -> Scorer:
    """All checks that must pass before Ray starts or anything is written."""
    spec = resolve_scorer(cfg.model, cfg.tta)
    for member in spec.members:
        weights_path(member, cfg.storage_options)
    check_detector(cfg.detect)
    check_inputs(cfg.inputs, cfg.storage_options)
    check_manifest(cfg.manifest, cfg.storage_options)
    check_output(cfg.output, cfg.storage_options)
    return spec


def init_ray(address: str | None, verbose: bool = False) -> None:
    """Start or join Ray. Unless `verbose`, Ray's own lines stay in its session's log
    folder (printed once): the terminal shows fer-batch's progress and summary only."""
    import ray

    if ray.is_initialized():
        return
    quiet_ray(verbose)
    # "local" starts a fresh Ray even when another one runs on this machine; a bare
    # ray.init() would attach to it. The embedded Ray of one job has no dashboard: it
    # costs a second of start-up and a share of the CPU (start Ray yourself, with
    # `ray start --head`, and pass --address for one).
    local = address in (None, "local")
    ray.init(address=address or "local", log_to_driver=verbose,
             logging_level="INFO" if verbose else "ERROR",
             **({"include_dashboard": False} if local else {}))
    if not verbose:
        quiet_ray(verbose)  # ray.init sets its loggers up again


def ray_logs_dir() -> str | None:
    """This driver's Ray session log folder (a private API, so None when it moves)."""
    import ray

    try:
        return str(ray._private.worker.global_worker.node.get_logs_dir_path())
    except AttributeError:
        return None


def quiet_terminal(verbose: bool) -> Any:
    """Unless `verbose`: say once where Ray's logs are, and send what Ray's C++ core prints
    to this process's stderr there (fer_batch/progress.py)."""
    logs = None if verbose else ray_logs_dir()
    if logs is None:
        return contextlib.nullcontext()
    print(f"[fer-batch] Ray's logs: {logs} (--verbose shows them here)", file=sys.stderr)
    return NativeStderrTo(os.path.join(logs, "fer-batch-driver.err"))


def quiet_ray(verbose: bool) -> None:
    """Ray's and Ray Data's loggers at ERROR, and Ray Data's progress bars off."""
    import logging

    level = logging.INFO if verbose else logging.ERROR
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray._private"):
        logging.getLogger(name).setLevel(level)
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose


def clear_output(output: str, storage_options: dict[str, Any]) -> None:
    """--overwrite: remove every table, marker and the run record."""
    fs, root = filesystem(output, storage_options)
    for name in (*TABLES, COMMITS_DIR, RUN_RECORD):
        path = join(root, name)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def block_sizes(n_items: int, files_per_task: int, detect_actors: int) -> Iterator[int]:
    """Rows per image block: guided self-scheduling, so the tail of a run is short.

    Each block takes 1 / (GUIDE * actors) of the images still to cut, between
    `files_per_task` and MAX_BLOCK_ROWS. A big run is blocks of MAX_BLOCK_ROWS (few
    refs, few commits) until its end, where blocks shrink: the last tasks finish
    together instead of one actor working alone through a whole large block.
    """
    remaining = n_items
    while True:
        share = -(-remaining // (GUIDE * detect_actors))
        rows = min(MAX_BLOCK_ROWS, max(files_per_task, share))
        yield rows
        remaining = max(0, remaining - rows)


def listed_entries(cfg: AnnotateConfig, stats: ListingStats) -> Iterator[pa.Table]:
    """Inputs then manifest entries, as ENTRY_SCHEMA tables of a bounded size."""
    chunk: list[dict[str, Any]] = []
    for entry in iter_media(cfg.inputs, cfg.storage_options, stats):
        chunk.append(entry)
        if len(chunk) >= LISTING_CHUNK:
            yield pa.Table.from_pylist(chunk, schema=ENTRY_SCHEMA)
            chunk = []
    if chunk:
        yield pa.Table.from_pylist(chunk, schema=ENTRY_SCHEMA)
    if cfg.manifest is not None:
        yield from iter_manifest(cfg.manifest, cfg.storage_options, stats)


def plan_work(cfg: AnnotateConfig, plan: WorkPlan, stats: ListingStats,
              stat: StatFn | None = None) -> None:
    """Spill the listing, read the markers, drop stale commits: `plan.todo()` is what is left.

    A stale commit holds an input that changed since; it goes whole (marker first),
    and all its items are redone, so no old row of a changed input survives.
    """
    plan.add_entries(listed_entries(cfg, stats))
    plan.load_commits(cfg.output, cfg.storage_options)
    stale = plan.resolve(stat or stat_on_workers(cfg.storage_options))
    drop_commits(cfg.output, cfg.storage_options, stale)


def work_items(entries: pa.Table) -> pa.Table:
    """Work items (records.ITEM_COLUMNS) for listed entries: one per image."""
    n = len(entries)
    return (entries.append_column("segment", pa.array(np.zeros(n, np.int64)))
            .append_column("seg_start_s", pa.array(np.full(n, np.nan)))
            .append_column("seg_end_s", pa.array(np.full(n, np.nan))))


def blocks(tables: Iterable[pa.Table], rows: int | Iterable[int]) -> Iterator[pa.Table]:
    """Re-cut a stream of tables into blocks of `rows` rows (a fixed count, or one count
    per block); the last block may be short.

    A video segment is a block of its own: it is many frames, so it is a detection
    task of its own, and one long video spreads over every actor.
    """
    sizes = itertools.repeat(rows) if isinstance(rows, int) else iter(rows)
    want = next(sizes)
    pending: list[pa.Table] = []
    held = 0
    for table in tables:
        if "media_type" in table.column_names:
            video = pc.equal(table["media_type"], "video")
            segments = table.filter(video)
            for i in range(segments.num_rows):
                yield segments.slice(i, 1)
            table = table.filter(pc.invert(video))
        pending.append(table)
        held += len(table)
        while held >= want:
            merged = pa.concat_tables(pending)
            yield merged.slice(0, want).combine_chunks()
            pending, held = [merged.slice(want)], held - want
            want = next(sizes)
    if held:
        yield pa.concat_tables(pending).combine_chunks()


def waves(stream: Iterable[pa.Table], max_items: int) -> Iterator[list[pa.Table]]:
    """Group blocks into waves of about `max_items` rows (a wave ends at a block edge)."""
    wave: list[pa.Table] = []
    held = 0
    for block in stream:
        wave.append(block)
        held += block.num_rows
        if held >= max_items:
            yield wave
            wave, held = [], 0
    if wave:
        yield wave


def plan_resources(cfg: AnnotateConfig) -> dict[str, Any]:
    """Actor counts and per-actor resources from the cluster's totals."""
    import ray

    total = ray.cluster_resources()
    gpus = float(total.get("GPU", 0))
    cpus = float(total.get("CPU", 1))
    num_gpus = cfg.num_gpus if cfg.num_gpus is not None else (1.0 if gpus > 0 else 0.0)
    classify_actors = cfg.classify_actors or (max(1, int(gpus / num_gpus)) if num_gpus else 1)
    # On a GPU the classifier also holds one CPU to feed it; on CPU it takes no CPU slot,
    # since it is a small share of the work and would otherwise idle a detection core.
    classify_cpus = 1.0 if num_gpus else 0.0
    detect_actors = cfg.detect_actors or max(1, int(cpus - classify_cpus * classify_actors))
    return {"num_gpus": num_gpus, "classify_actors": classify_actors,
            "classify_cpus": classify_cpus, "detect_actors": detect_actors,
            "cluster": {k: total[k] for k in ("CPU", "GPU") if k in total}}


def annotate(cfg: AnnotateConfig) -> dict[str, Any]:
    """Run one annotate job end to end; returns the run record also written to _run.json."""
    spec = prepare(cfg)
    run_id = new_run_id()
    # Taken before Ray starts: from here on, workers of an earlier run that are still
    # alive cannot commit into this output.
    lease.take(cfg.output, cfg.storage_options, run_id)
    init_ray(cfg.address, cfg.verbose)
    with quiet_terminal(cfg.verbose):
        return _annotate(cfg, spec, run_id)


def _annotate(cfg: AnnotateConfig, spec: Scorer, run_id: str) -> dict[str, Any]:
    started = time.time()
    if cfg.overwrite:
        clear_output(cfg.output, cfg.storage_options)
    remove_orphans(cfg.output, cfg.storage_options)
    stats = ListingStats()
    plan = plan_resources(cfg)
    with WorkPlan() as work, reserve_classifiers(plan, run_id):
        plan_work(cfg, work, stats)
        counts = dict(work.counts)
        run_waves(cfg, spec, run_id, plan, work)
    remove_orphans(cfg.output, cfg.storage_options)  # parts a superseded run's workers left
    ensure_tables(cfg.output, cfg.storage_options)
    record = run_record(cfg, spec, run_id, started, counts, stats, plan)
    fs, root = filesystem(cfg.output, cfg.storage_options)

    def write_record() -> None:
        with fs.open(join(root, RUN_RECORD), "w") as f:
            json.dump(record, f, indent=2, default=str)

    retry_transient(write_record)
    return record


def run_waves(cfg: AnnotateConfig, spec: Scorer, run_id: str, plan: dict[str, Any],
              work: WorkPlan) -> None:
    """Feed the work left to Ray in waves of at most WAVE_ITEMS items.

    Each wave is one dataset over about WAVE_ITEMS items, so neither the driver's
    blocks nor the object store grow with the archive.
    """
    todo = work.counts["todo"]
    rows = block_sizes(todo, cfg.files_per_task, plan["detect_actors"])
    stream = blocks((expand_videos(work_items(t), cfg) for t in work.todo()), rows)
    progress = Progress(todo, enabled=cfg.progress)
    try:
        for wave in waves(stream, WAVE_ITEMS):
            ds = tolerate_failed_blocks(build_dataset(cfg, spec, wave, run_id, plan),
                                        failed_blocks_budget(len(wave), plan))
            log = CommitLog()
            try:
                for summary in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    progress.update(*log.add(summary))
            except Exception:
                lease.check(cfg.output, cfg.storage_options, run_id)  # the clearer error
                raise
            lease.check(cfg.output, cfg.storage_options, run_id)
            progress.update(recover(cfg, spec, run_id, plan, wave, log), 0, 0)
            del wave, ds
            finalize_videos(cfg.output, cfg.storage_options, run_id)
        finalize_videos(cfg.output, cfg.storage_options, run_id)  # also when no wave ran
    finally:
        progress.close()


def run_record(cfg: AnnotateConfig, spec: Scorer, run_id: str, started: float,
               counts: dict[str, int], stats: ListingStats, plan: dict[str, Any]) -> dict:
    """The run's provenance and counts; everything here is checkable against the tables."""
    summary = commit_summary(cfg.output, cfg.storage_options, run_id)
    wall = time.time() - started
    this_run = summary["this_run"]
    return {
        "run_id": run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(wall, 3),
        "config": cfg.public_dict(),
        "model": spec.describe(),
        "versions": {name: _version(name) for name in _VERSIONED}
        | {"python": sys.version.split()[0]},
        "counts": {
            "inputs": counts["inputs"],
            "skipped_non_media": stats.skipped_non_media,
            "skipped_done": counts["skipped_done"],
            "stale_commits_dropped": counts["stale_commits"],
            "processed": this_run["media"],
            "ok": this_run["ok"],
            "partial": this_run["partial"],
            "errors": this_run["errors"],
            "faces": this_run["faces"],
        },
        "totals": summary["totals"],
        "throughput": {
            "files_per_s": round(this_run["media"] / wall, 3) if wall else None,
            "faces_per_s": round(this_run["faces"] / wall, 3) if wall else None,
        },
        "placement": {
            "detect": summary["detect"],
            "classify": summary["classify"],
        },
        "resources": plan,
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
