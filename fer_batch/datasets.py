"""The Ray Data dataset of one wave: three actor pools (fer_batch/stages.py) with their
sizes, restarts and retries. The annotate run (fer_batch/pipeline.py) and recovery's
one-item reruns (fer_batch/recovery.py) both build theirs here, from the same constants.
"""

from __future__ import annotations

import warnings
from typing import Any

import pyarrow as pa

from fer_batch.config import AnnotateConfig
from fer_batch.placement import classifier_strategy
from fer_batch.registry import Scorer
from fer_batch.stages import ClassifyStage, CommitWriter, FaceStage

TASK_RETRIES = 3
DETECT_TASKS_IN_FLIGHT = 2  # per detection actor: one decoding while one waits
# The classifier's tasks hold batch_size // CLASSIFY_BATCH_DIVISOR items (each a few faces).
CLASSIFY_BATCH_DIVISOR = 4


def build_dataset(cfg: AnnotateConfig, spec: Scorer, wave: list[pa.Table], run_id: str,
                  plan: dict[str, Any], task_retries: int = TASK_RETRIES,
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
        compute=ActorPoolStrategy(min_size=1, max_size=plan["detect_actors"],
                                  initial_size=plan["detect_actors"],
                                  max_tasks_in_flight_per_actor=detect_in_flight),
        num_cpus=1,
        max_restarts=-1,
        max_task_retries=task_retries,
    )
    ds = ds.map_batches(
        ClassifyStage,
        fn_constructor_kwargs=stage_args,
        batch_size=max(1, cfg.batch_size // CLASSIFY_BATCH_DIVISOR),
        compute=ActorPoolStrategy(size=plan["classify_actors"], **in_flight),
        num_gpus=plan["num_gpus"],
        num_cpus=plan["classify_cpus"],
        scheduling_strategy=classifier_strategy(plan),
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
