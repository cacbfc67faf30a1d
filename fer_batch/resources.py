"""The run's resources: how many actors of each stage, what each holds, and where the
classifier runs.

`Resources.of_cluster` sizes the pools from the cluster's totals once per run; the
value is frozen, so every wave, recovery's reruns and the run record see the same one.

Detection actors ask only for CPUs, so on a GPU node they compete with the
classifier for the node's CPUs. Ray Data starts all actor pools of a dataset at
once, and the actors of the dataset before (the previous wave, the recovery pass,
a previous run) linger a moment after it ends: in that window a detection actor
can take a GPU node's last free CPU and leave the classifier waiting until
detection is over. A placement group holding one bundle (GPU + CPU) per classifier
for the whole run closes the window (`reserve_classifiers`): classifier actors run
inside it and nothing else can use it. Ray reschedules the bundles of a lost node
when a GPU node is available again, and the classifier restarts there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fer_batch.config import AnnotateConfig

RESERVE_WAIT_S = 120.0


@dataclasses.dataclass(frozen=True)
class Resources:
    """Actor counts and per-actor resources of one run."""

    num_gpus: float  # per classifier actor
    classify_actors: int
    classify_cpus: float  # per classifier actor
    detect_actors: int
    cluster: dict[str, float]  # the cluster's CPU and GPU totals when the run started
    classify_group: str | None = None  # the classifiers' placement group, while reserved

    @classmethod
    def of_cluster(cls, cfg: AnnotateConfig) -> Resources:
        """Size the pools from the cluster's totals (and the options that override them)."""
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
        return cls(num_gpus=num_gpus, classify_actors=classify_actors,
                   classify_cpus=classify_cpus, detect_actors=detect_actors,
                   cluster={k: total[k] for k in ("CPU", "GPU") if k in total})

    def record(self) -> dict[str, Any]:
        """What _run.json's "resources" holds."""
        return dataclasses.asdict(self)


@contextmanager
def reserve_classifiers(resources: Resources, run_id: str) -> Iterator[Resources]:
    """Hold the classifiers' bundles while the block runs; yields `resources` naming the
    placement group. Nothing is reserved on a cluster without GPUs, where the classifier
    takes no CPU."""
    if not resources.num_gpus:
        yield resources
        return
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"GPU": resources.num_gpus, "CPU": resources.classify_cpus}
    name = f"fer-batch-classify-{run_id}"
    group = placement_group([bundle] * resources.classify_actors, strategy="SPREAD", name=name)
    # Not ready in time (a busy cluster): the classifier actors wait for it all the same.
    ray.wait([group.ready()], timeout=RESERVE_WAIT_S)
    try:
        yield dataclasses.replace(resources, classify_group=name)
    finally:
        remove_placement_group(group)


def classifier_strategy(resources: Resources) -> Any:
    """The scheduling strategy for classifier actors: inside the run's reservation, if any."""
    if resources.classify_group is None:
        return "SPREAD"  # Ray Data's own default
    from ray.util import get_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(get_placement_group(resources.classify_group))
