"""Items a wave could not commit: run again one at a time, then kept as "worker" error rows.

Ray restarts a dead actor and re-runs its in-flight tasks, and rebuilds blocks lost
with a node from their lineage (build_dataset sets restarts and retries), so a lost
node costs time, not items. What retries cannot fix is an input that brings its
worker down every time (a decoder segfault, an out-of-memory kill): its block fails
for good. Ray Data drops such blocks, up to a small budget per wave; more failures
than that are systemic and fail the job with the real error.

After each wave the driver compares the number of items it fed with the commits it
was told about. Only when they differ does it read this run's completion markers (a
marker is the proof that an item's rows are written, so an item whose summary was
lost is never redone). The items left run again in a dataset of their own, one item
per task, so the neighbours of a bad input go through; an item that still fails is
committed as an error row (stage "worker") under the name of its own one-item
commit, which overwrites whatever a failed attempt left of it. Orphan part files of
failed commits are then removed, so readers of the tables see every item once.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fer_batch.config import AnnotateConfig
from fer_batch.datasets import CLASSIFY_BATCH_DIVISOR, DETECT_TASKS_IN_FLIGHT, build_dataset
from fer_batch.manifest import fill_versions
from fer_batch.plan import limited_connection
from fer_batch.records import ITEM_COLUMNS, ItemResult, results_to_batch
from fer_batch.registry import Scorer
from fer_batch.resources import Resources
from fer_batch.schema import EMOTIONS, STAGE_WORKER
from fer_batch.sink import write_commit
from fer_batch.sources import retry_transient
from fer_batch.store import Store, commit_id

FAILED_BLOCKS_MIN = 8
FAILED_BLOCKS_SHARE = 0.01
TASKS_IN_FLIGHT_PER_ACTOR = 2 * DETECT_TASKS_IN_FLIGHT  # with room for Ray's own queueing
ALONE_RETRIES = 1
ALONE_MODEL_BATCH = CLASSIFY_BATCH_DIVISOR  # so the classifier's tasks hold one item each
ERROR_TYPE = "RetriesExhausted"


class CommitLog:
    """The commits a dataset reported; a retried commit reports twice and counts once."""

    def __init__(self) -> None:
        self.items: dict[str, int] = {}

    def add(self, summary: dict[str, np.ndarray]) -> tuple[int, int, int]:
        """Record one CommitWriter summary; returns the items, faces and error items it
        newly committed."""
        items = faces = errors = 0
        for cid, n, n_faces, n_errors in zip(summary["commit"], summary["n_items"],
                                             summary["n_faces"], summary["n_errors"]):
            if str(cid) not in self.items:
                self.items[str(cid)] = int(n)
                items, faces, errors = items + int(n), faces + int(n_faces), errors + int(n_errors)
        return items, faces, errors

    @property
    def n_items(self) -> int:
        return sum(self.items.values())


def failed_blocks_budget(n_blocks: int, resources: Resources) -> int:
    """Blocks a wave may lose to failures that outlast Ray's retries before the job fails.

    At least what the pools can hold in flight: when a node dies, Ray spends a task's
    retries on the dead node's address before the node is declared dead (seconds), so
    every block in flight there can fail, and that must cost a recovery, not the job.
    """
    in_flight = TASKS_IN_FLIGHT_PER_ACTOR * (resources.detect_actors
                                             + resources.classify_actors + 1)
    return max(FAILED_BLOCKS_MIN, int(n_blocks * FAILED_BLOCKS_SHARE), in_flight)


def commit_summaries(ds: Any, budget: int) -> Iterator[dict[str, np.ndarray]]:
    """The commit summaries of a dataset from build_dataset, which may drop up to `budget`
    failed blocks (-1: any number; its context is its own). Pass the dataset itself, kept
    under no other name: when the summaries end, its actors are freed.

    An actor lives as long as a handle to it does, and a run whose tasks failed leaves
    handles in reference cycles (Ray Data's errors keep their frames): an actor that Ray
    restarted after its worker died, which the pool no longer tracks and so does not kill,
    then held a CPU until the interpreter's next cyclic collection, 71 s after a poison run
    on the test cluster, with recovery and the next run short of it. Collected here, its
    CPU is free about a second after the dataset ends.
    """
    ds.context.max_errored_blocks = budget
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    finally:
        del ds
        gc.collect()


def recover(cfg: AnnotateConfig, spec: Scorer, run_id: str, resources: Resources,
            blocks: list[pa.Table], log: CommitLog) -> int:
    """Commit every item of a finished wave that is not committed yet; returns how many.

    `blocks` are the wave's input blocks (ITEM_COLUMNS tables) and `log` the commits
    its dataset reported.
    """
    fed = sum(block.num_rows for block in blocks)
    if log.n_items >= fed:
        return 0
    items = pa.concat_tables([block.select(list(ITEM_COLUMNS)) for block in blocks],
                             promote_options="default")
    # A video segment has no marker until its video is finalized: a short wave reruns its
    # segments, which restages them under the same names.
    store = Store.open(cfg.output, cfg.storage_options)
    missing = _without(items, committed_uris(store, run_id, items["source_uri"]))
    if missing.num_rows:
        missing = _with_keys(missing, cfg.storage_options)
        alone = rerun_alone(cfg, spec, run_id, resources, missing)
        done = _done_alone(store, run_id, missing, alone)
        commit_failures(store, spec, run_id, missing.filter(pc.invert(done)))
    store.remove_orphans()
    return missing.num_rows


def committed_uris(store: Store, run_id: str, uris: pa.Array | pa.ChunkedArray,
                   commits: list[str] | None = None) -> pa.Array:
    """Which of `uris` this run's markers hold (only the markers `commits` names, if given).

    A scan of the markers joined to `uris` under DuckDB's memory limit: memory follows
    `uris`, not the output.
    """
    con = limited_connection()
    try:
        markers = retry_transient(store.markers_sql, con, commits)
        if markers is None:
            return pa.array([], pa.string())
        con.register("wanted", pa.table({"source_uri": uris}))
        found = con.execute(f"SELECT DISTINCT m.source_uri FROM {markers} m SEMI JOIN wanted w"
                            " ON m.source_uri = w.source_uri WHERE m.run_id = ?", [run_id])
        return found.to_arrow_table()["source_uri"].combine_chunks()
    finally:
        con.close()


def rerun_alone(cfg: AnnotateConfig, spec: Scorer, run_id: str, resources: Resources,
                items: pa.Table) -> CommitLog:
    """Run `items` again, one per task in every stage and one task in flight per actor (a
    neighbour of a bad input must not die with it), with a small retry budget."""
    alone = dataclasses.replace(cfg, batch_size=ALONE_MODEL_BATCH)
    blocks = [items.slice(i, 1) for i in range(items.num_rows)]  # a block is a task
    log = CommitLog()
    for summary in commit_summaries(build_dataset(alone, spec, blocks, run_id, resources,
                                                  task_retries=ALONE_RETRIES, isolate=True),
                                    -1):
        log.add(summary)
    return log


def _done_alone(store: Store, run_id: str, items: pa.Table, log: CommitLog) -> pa.Array:
    """Which items the one-at-a-time run committed (or staged): their one-item commit was
    reported. A reported commit of several items is read back from its marker."""
    names = [commit_id([key]) for key in items["item_key"].to_pylist()]
    done = pa.array([name in log.items for name in names], pa.bool_())
    others = sorted(set(log.items) - set(names))
    if others:
        marked = committed_uris(store, run_id, items["source_uri"], commits=others)
        done = pc.or_(done, pc.is_in(items["source_uri"], value_set=marked))
    return done


def commit_failures(store: Store, spec: Scorer, run_id: str, items: pa.Table) -> None:
    """Commit each item as an error row of stage "worker", one commit per item."""
    batch = _numpy(items)
    tries = f"{ALONE_RETRIES + 1} time{'s' if ALONE_RETRIES else ''}"
    for i in range(items.num_rows):
        one = {name: batch[name][i : i + 1] for name in ITEM_COLUMNS}
        result = ItemResult()
        result.add_error(STAGE_WORKER, ERROR_TYPE,
                         f"no worker finished this input: its block failed after Ray's retries "
                         f"and it failed again alone {tries} (the worker died or raised; "
                         "see the Ray logs)")
        row = results_to_batch(one, [result], spec.crop_shape, None)
        row.pop("crops")
        row["scores"] = np.empty(1, dtype=object)
        row["scores"][0] = np.zeros((0, len(EMOTIONS)), np.float32)
        row["classify_node"] = np.array([None], dtype=object)
        write_commit(row, store, run_id, spec.name)


def _with_keys(items: pa.Table, storage_options: dict[str, Any]) -> pa.Table:
    """Stat the items listed without size or version, so each has its final item_key (and so
    the name of its one-item commit) before it runs again."""
    batch = fill_versions(_numpy(items), storage_options)
    return pa.table({name: batch[name] for name in ITEM_COLUMNS}, schema=items.schema)


def _numpy(items: pa.Table) -> dict[str, np.ndarray]:
    return {name: items[name].to_numpy(zero_copy_only=False) for name in ITEM_COLUMNS}


def _without(items: pa.Table, uris: pa.Array) -> pa.Table:
    return items.filter(pc.invert(pc.is_in(items["source_uri"], value_set=uris)))
