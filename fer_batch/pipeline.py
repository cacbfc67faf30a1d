"""The annotate job: list -> detect (CPU actors) -> classify (GPU/CPU actors) -> commit.

Everything is checked before Ray starts: the model, the inputs, the output. The
driver only streams the listing into small Arrow blocks and folds per-commit
summaries; images and crops never pass through it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
import warnings
from importlib import metadata
from typing import Any

import numpy as np
import pyarrow as pa

from fer_batch.config import AnnotateConfig
from fer_batch.faces import FaceStage
from fer_batch.infer import ClassifyStage
from fer_batch.records import item_key
from fer_batch.registry import ModelSpec, resolve_model, weights_path
from fer_batch.schema import COMMITS_DIR, RUN_RECORD, TABLES
from fer_batch.sink import (
    ensure_tables,
    join,
    read_commits,
    remove_orphans,
    CommitWriter,
)
from fer_batch.sources import ListingStats, check_inputs, filesystem, iter_media

LISTING_CHUNK = 10_000
MAX_BLOCK_ROWS = 32
BLOCKS_PER_ACTOR = 8
PROGRESS_EVERY_S = 10.0
_VERSIONED = ("fer-batch", "ray", "tensorflow", "keras", "opencv-python-headless", "numpy",
              "pyarrow", "pillow", "fsspec", "s3fs", "duckdb", "fer", "mtcnn")


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def check_output(output: str, storage_options: dict[str, Any]) -> None:
    """Fail before anything starts if the output cannot be written; writes nothing locally."""
    fs, path = filesystem(output, storage_options)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        return  # object stores: permission errors surface on the first commit, as error rows
    probe = os.path.abspath(path)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise ValueError(f"--output exists and is not a directory: {output!r}")
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--output cannot be written ({probe} is not a writable directory): "
                         f"{output!r}")


def prepare(cfg: AnnotateConfig) -> ModelSpec:
    """All checks that must pass before Ray starts or anything is written."""
    spec = resolve_model(cfg.model)
    weights_path(spec, cfg.storage_options)
    check_inputs(cfg.inputs, cfg.storage_options)
    check_output(cfg.output, cfg.storage_options)
    return spec


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(log_to_driver=False)


def clear_output(output: str, storage_options: dict[str, Any]) -> None:
    """--overwrite: remove every table, marker and the run record."""
    fs, root = filesystem(output, storage_options)
    for name in (*TABLES, COMMITS_DIR, RUN_RECORD):
        path = join(root, name)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def block_rows(n_items: int | None, files_per_task: int, detect_actors: int) -> int:
    """Rows per input block: small runs spread over every actor, big ones keep few refs."""
    if n_items is None:
        return MAX_BLOCK_ROWS
    per_block = -(-n_items // (BLOCKS_PER_ACTOR * detect_actors))
    return int(min(MAX_BLOCK_ROWS, max(files_per_task, per_block)))


def stream_items(cfg: AnnotateConfig, done: set[str], stats: ListingStats,
                 counts: dict[str, int], detect_actors: int) -> list[Any]:
    """List inputs into small Arrow blocks in the object store, skipping items already done.

    Each block becomes one detection task, so blocks must be small enough to spread
    a small run over all actors; past the first listing chunk the run is big and
    blocks grow to MAX_BLOCK_ROWS so the driver holds few object refs.
    """
    import ray

    refs, chunk = [], []
    seen: set[str] = set()

    def flush(rows: int) -> None:
        for start in range(0, len(chunk), rows):
            refs.append(ray.put(pa.Table.from_pylist(chunk[start : start + rows])))
        chunk.clear()

    listed_all = True
    for entry in iter_media(cfg.inputs, cfg.storage_options, stats):
        if entry["source_uri"] in seen:
            continue  # the same file reached through two inputs counts once
        seen.add(entry["source_uri"])
        counts["inputs"] += 1
        key = item_key(entry["source_uri"], entry["size_bytes"], entry["version"], 0)
        if key in done:
            counts["skipped_done"] += 1
            continue
        chunk.append({**entry, "segment": 0, "seg_start_s": float("nan"),
                      "seg_end_s": float("nan"), "item_key": key})
        if len(chunk) >= LISTING_CHUNK:
            listed_all = False
            flush(block_rows(None, cfg.files_per_task, detect_actors))
    flush(block_rows(None if not listed_all else len(chunk), cfg.files_per_task, detect_actors))
    return refs


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


def build_dataset(cfg: AnnotateConfig, spec: ModelSpec, refs: list[Any], run_id: str,
                  plan: dict[str, Any]) -> Any:
    """Three actor pools. Restarts and retries are explicit: a lost node restarts its
    actors elsewhere and their in-flight batches run again (commits are idempotent)."""
    import ray
    from ray.data import ActorPoolStrategy
    from ray.util.annotations import RayDeprecationWarning

    # Ray 2.60 has no named parameters yet for actor restarts/retries; the pin keeps
    # the **ray_remote_args route valid.
    warnings.filterwarnings("ignore", ".*ray_remote_args.*", RayDeprecationWarning)

    ds = ray.data.from_arrow_refs(refs).map_batches(
        FaceStage,
        fn_constructor_kwargs={"cfg": cfg, "spec": spec},
        batch_size=cfg.files_per_task,
        compute=ActorPoolStrategy(min_size=1, max_size=plan["detect_actors"],
                                  initial_size=plan["detect_actors"],
                                  max_tasks_in_flight_per_actor=2),
        num_cpus=1,
        max_restarts=-1,
        max_task_retries=3,
    )
    ds = ds.map_batches(
        ClassifyStage,
        fn_constructor_kwargs={"spec": spec, "batch_size": cfg.batch_size,
                               "storage_options": cfg.storage_options},
        batch_size=max(1, cfg.batch_size // 4),
        compute=ActorPoolStrategy(size=plan["classify_actors"]),
        num_gpus=plan["num_gpus"],
        num_cpus=plan["classify_cpus"],
        max_restarts=-1,
        max_task_retries=3,
    )
    return ds.map_batches(
        CommitWriter,
        fn_constructor_kwargs={"output": cfg.output, "run_id": run_id, "model": spec.name,
                   "storage_options": cfg.storage_options},
        batch_size=None,
        compute=ActorPoolStrategy(size=1),
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=3,
    )


def annotate(cfg: AnnotateConfig) -> dict[str, Any]:
    """Run one annotate job end to end; returns the run record also written to _run.json."""
    spec = prepare(cfg)
    init_ray(cfg.address)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = cfg.progress
    started = time.time()
    run_id = new_run_id()
    if cfg.overwrite:
        clear_output(cfg.output, cfg.storage_options)
    remove_orphans(cfg.output, cfg.storage_options)
    done = set(read_commits(cfg.output, cfg.storage_options).column("item_key").to_pylist())
    stats = ListingStats()
    counts = {"inputs": 0, "skipped_done": 0}
    plan = plan_resources(cfg)
    refs = stream_items(cfg, done, stats, counts, plan["detect_actors"])
    todo = counts["inputs"] - counts["skipped_done"]
    if refs:
        ds = build_dataset(cfg, spec, refs, run_id, plan)
        finished_items, last = 0, time.time()
        for summary in ds.iter_batches(batch_size=None, batch_format="numpy"):
            finished_items += int(np.sum(summary["n_items"]))
            if cfg.progress and time.time() - last > PROGRESS_EVERY_S:
                last = time.time()
                print(f"[fer-batch] {finished_items}/{todo} files committed", file=sys.stderr)
    ensure_tables(cfg.output, cfg.storage_options)
    record = run_record(cfg, spec, run_id, started, counts, stats, plan)
    fs, root = filesystem(cfg.output, cfg.storage_options)
    with fs.open(join(root, RUN_RECORD), "w") as f:
        json.dump(record, f, indent=2, default=str)
    return record


def run_record(cfg: AnnotateConfig, spec: ModelSpec, run_id: str, started: float,
               counts: dict[str, int], stats: ListingStats, plan: dict[str, Any]) -> dict:
    """The run's provenance and counts; everything here is checkable against the tables."""
    commits = read_commits(cfg.output, cfg.storage_options).to_pandas()
    mine = commits[commits["run_id"] == run_id]
    wall = time.time() - started

    def tally(frame: Any) -> dict[str, int]:
        return {
            "media": int(len(frame)),
            "ok": int((frame["status"] == "ok").sum()),
            "partial": int((frame["status"] == "partial").sum()),
            "errors": int((frame["status"] == "error").sum()),
            "faces": int(frame["n_faces"].sum()),
        }

    this_run = tally(mine)
    return {
        "run_id": run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(wall, 3),
        "config": cfg.public_dict(),
        "model": {"name": spec.name, "architecture": spec.architecture, "sha256": spec.sha256,
                  "weights": spec.weights},
        "versions": {name: _version(name) for name in _VERSIONED}
        | {"python": sys.version.split()[0]},
        "counts": {
            "inputs": counts["inputs"],
            "skipped_non_media": stats.skipped_non_media,
            "skipped_done": counts["skipped_done"],
            "processed": this_run["media"],
            "ok": this_run["ok"],
            "partial": this_run["partial"],
            "errors": this_run["errors"],
            "faces": this_run["faces"],
        },
        "totals": tally(commits),
        "throughput": {
            "files_per_s": round(this_run["media"] / wall, 3) if wall else None,
            "faces_per_s": round(this_run["faces"] / wall, 3) if wall else None,
        },
        "placement": {
            "detect": _per_node(mine, "detect_node"),
            "classify": _per_node(mine, "classify_node"),
        },
        "resources": plan,
    }


def _per_node(frame: Any, column: str) -> dict[str, dict[str, int]]:
    return {str(node): {"items": int(n)} for node, n in frame.groupby(column).size().items()}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
