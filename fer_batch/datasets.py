"""The work of a run cut into blocks and waves, and the Ray Data dataset of one wave:
three actor pools (fer_batch/stages.py) with their sizes, restarts and retries. The
annotate run (fer_batch/pipeline.py) and recovery's one-item reruns
(fer_batch/recovery.py) both build theirs here, from the same constants.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fer_batch.config import AnnotateConfig
from fer_batch.registry import Scorer
from fer_batch.resources import Resources, classifier_strategy
from fer_batch.stages import ClassifyStage, CommitWriter, FaceStage

WAVE_ITEMS = 50_000  # items per dataset: neither the driver nor the object store grows
MAX_BLOCK_ROWS = 32
GUIDE = 4
TASK_RETRIES = 3
DETECT_TASKS_IN_FLIGHT = 2  # per detection actor: one decoding while one waits
# The classifier's tasks hold batch_size // CLASSIFY_BATCH_DIVISOR items (each a few faces).
CLASSIFY_BATCH_DIVISOR = 4


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


def build_dataset(cfg: AnnotateConfig, spec: Scorer, wave: list[pa.Table], run_id: str,
                  resources: Resources, task_retries: int = TASK_RETRIES,
                  isolate: bool = False) -> Any:
    """Three actor pools. Restarts and retries are explicit: a lost node restarts its
    actors elsewhere and their in-flight batches run again (commits are idempotent); a
    batch whose retries run out is dropped and redone by fer_batch.recovery.

    `isolate` keeps one task in flight per actor, so an input that kills its worker
    takes no other task down with it (recovery's one-item reruns).

    `from_blocks` puts the wave's blocks (the driver owns them, as lineage needs) and reads
    their metadata here; `from_arrow_refs` would start a remote task per block for it,
    and with them worker processes that cost every run about 3 s before any actor starts.
    """
    import ray
    from ray.data import ActorPoolStrategy
    from ray.util.annotations import RayDeprecationWarning

    # Ray 2.60 has no named parameters yet for actor restarts/retries; the pin keeps
    # the **ray_remote_args route valid.
    warnings.filterwarnings("ignore", ".*ray_remote_args.*", RayDeprecationWarning)
    in_flight = {"max_tasks_in_flight_per_actor": 1} if isolate else {}
    detect_in_flight = 1 if isolate else DETECT_TASKS_IN_FLIGHT

    stage_args = {"cfg": cfg, "spec": spec, "run_id": run_id}  # every stage takes these
    ds = ray.data.from_blocks(wave).map_batches(
        FaceStage,
        fn_constructor_kwargs=stage_args,
        batch_size=None,  # one task per block: blocks are cut to size (block_sizes, blocks)
        compute=ActorPoolStrategy(min_size=1, max_size=resources.detect_actors,
                                  initial_size=resources.detect_actors,
                                  max_tasks_in_flight_per_actor=detect_in_flight),
        num_cpus=1,
        max_restarts=-1,
        max_task_retries=task_retries,
    )
    ds = ds.map_batches(
        ClassifyStage,
        fn_constructor_kwargs=stage_args,
        batch_size=max(1, cfg.batch_size // CLASSIFY_BATCH_DIVISOR),
        compute=ActorPoolStrategy(size=resources.classify_actors, **in_flight),
        num_gpus=resources.num_gpus,
        num_cpus=resources.classify_cpus,
        scheduling_strategy=classifier_strategy(resources),
        max_restarts=-1,
        max_task_retries=task_retries,
    )
    return ds.map_batches(
        CommitWriter,
        fn_constructor_kwargs=stage_args,
        batch_size=None,
        compute=ActorPoolStrategy(size=1, **in_flight),
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=task_retries,
    )
