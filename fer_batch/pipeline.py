"""The annotate job's order of events: check, take the lease, start Ray, plan, run the
waves (list -> detect on CPU actors -> classify on GPU/CPU actors -> commit), recover,
finalize videos, write the run record.

Everything is checked before Ray starts: the model, the inputs, the output. The
driver only streams the listing into small Arrow blocks and folds per-commit
summaries; images and crops never pass through it. The parts live elsewhere: the
output and its commits in fer_batch/store.py, blocks, waves and datasets in
fer_batch/datasets.py, actor counts in fer_batch/resources.py, the Ray session in
fer_batch/session.py.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import pyarrow as pa

from fer_batch import lease
from fer_batch.config import AnnotateConfig
from fer_batch.datasets import WAVE_ITEMS, block_sizes, blocks, build_dataset, waves, work_items
from fer_batch.detect import check_detector
from fer_batch.manifest import ENTRY_SCHEMA, check_manifest, iter_manifest
from fer_batch.plan import StatFn, WorkPlan, commit_summary, stat_on_workers
from fer_batch.progress import Progress
from fer_batch.recovery import CommitLog, commit_summaries, failed_blocks_budget, recover
from fer_batch.registry import Scorer, resolve_scorer, weights_path
from fer_batch.resources import Resources, reserve_classifiers
from fer_batch.session import init_ray, quiet_terminal
from fer_batch.sources import ListingStats, check_inputs, iter_media
from fer_batch.store import Store
from fer_batch.tracking import finalize_videos
from fer_batch.video import expand_videos

LISTING_CHUNK = 10_000
_VERSIONED = ("fer-batch", "ray", "tensorflow", "keras", "opencv-python-headless", "numpy",
              "pyarrow", "pillow", "fsspec", "s3fs", "duckdb", "fer", "mtcnn")


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def prepare(cfg: AnnotateConfig) -> Scorer:
    """All checks that must pass before Ray starts or anything is written."""
    spec = resolve_scorer(cfg.model, cfg.tta)
    for member in spec.members:
        weights_path(member, cfg.storage_options)
    check_detector(cfg.detect)
    check_inputs(cfg.inputs, cfg.storage_options)
    check_manifest(cfg.manifest, cfg.storage_options)
    Store.open(cfg.output, cfg.storage_options).check_writable()
    return spec


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


def plan_work(cfg: AnnotateConfig, store: Store, plan: WorkPlan, stats: ListingStats,
              stat: StatFn | None = None) -> None:
    """Spill the listing, read the markers, drop stale commits: `plan.todo()` is what is left.

    A stale commit holds an input that changed since; it goes whole (marker first),
    and all its items are redone, so no old row of a changed input survives.
    """
    plan.add_entries(listed_entries(cfg, stats))
    plan.load_commits(store)
    store.drop_commits(plan.resolve(stat or stat_on_workers(cfg.storage_options)))


def annotate(cfg: AnnotateConfig) -> dict[str, Any]:
    """Run one annotate job end to end; returns the run record also written to _run.json."""
    spec = prepare(cfg)
    store = Store.open(cfg.output, cfg.storage_options)
    run_id = new_run_id()
    # Taken before Ray starts: from here on, workers of an earlier run that are still
    # alive cannot commit into this output.
    lease.take(store, run_id)
    init_ray(cfg.address, cfg.verbose)
    with quiet_terminal(cfg.verbose):
        return _annotate(cfg, spec, store, run_id)


def _annotate(cfg: AnnotateConfig, spec: Scorer, store: Store, run_id: str) -> dict[str, Any]:
    started = time.time()
    if cfg.overwrite:
        store.clear()
    store.remove_orphans()
    stats = ListingStats()
    with WorkPlan() as work, reserve_classifiers(Resources.of_cluster(cfg), run_id) as resources:
        plan_work(cfg, store, work, stats)
        counts = dict(work.counts)
        run_waves(cfg, spec, store, run_id, resources, work)
    store.remove_orphans()  # parts a superseded run's workers left
    store.ensure_tables()
    record = run_record(cfg, spec, store, run_id, started, counts, stats, resources)
    store.write_record(record)
    return record


def run_waves(cfg: AnnotateConfig, spec: Scorer, store: Store, run_id: str,
              resources: Resources, work: WorkPlan) -> None:
    """Feed the work left to Ray in waves of at most WAVE_ITEMS items: one dataset each,
    then recovery of what it could not commit, then the videos it finished."""
    todo = work.counts["todo"]
    rows = block_sizes(todo, cfg.files_per_task, resources.detect_actors)
    stream = blocks((expand_videos(work_items(t), cfg) for t in work.todo()), rows)
    progress = Progress(todo, enabled=cfg.progress)
    try:
        for wave in waves(stream, WAVE_ITEMS):
            log = CommitLog()
            try:  # the wave's actors are freed before recovery, which needs their CPUs
                for summary in commit_summaries(
                        build_dataset(cfg, spec, wave, run_id, resources),
                        failed_blocks_budget(len(wave), resources)):
                    progress.update(*log.add(summary))
            except Exception:
                lease.check(store, run_id)  # the clearer error
                raise
            lease.check(store, run_id)
            progress.update(recover(cfg, spec, run_id, resources, wave, log), 0, 0)
            del wave
            finalize_videos(store, run_id)
        finalize_videos(store, run_id)  # also when no wave ran
    finally:
        progress.close()


def run_record(cfg: AnnotateConfig, spec: Scorer, store: Store, run_id: str, started: float,
               counts: dict[str, int], stats: ListingStats, resources: Resources) -> dict:
    """The run's provenance and counts; everything here is checkable against the tables."""
    summary = commit_summary(store, run_id)
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
        "resources": resources.record(),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
