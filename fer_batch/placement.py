"""Where the classifier runs: its GPU and feeding CPU are reserved for the whole run.

Detection actors ask only for CPUs, so on a GPU node they compete with the
classifier for the node's CPUs. Ray Data starts all actor pools of a dataset at
once, and the actors of the dataset before (the previous wave, the recovery pass,
a previous run) linger a moment after it ends: in that window a detection actor
can take a GPU node's last free CPU and leave the classifier waiting until
detection is over. A placement group holding one bundle (GPU + CPU) per classifier
for the whole run closes the window: classifier actors run inside it and nothing
else can use it. Ray reschedules the bundles of a lost node when a GPU node is
available again, and the classifier restarts there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

RESERVE_WAIT_S = 120.0
PLAN_KEY = "classify_group"


@contextmanager
def reserve_classifiers(plan: dict[str, Any], run_id: str) -> Iterator[None]:
    """Hold the classifiers' bundles while the block runs; records the group's name in `plan`.

    Nothing is reserved on a cluster without GPUs, where the classifier takes no CPU.
    """
    if not plan["num_gpus"]:
        yield
        return
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"GPU": plan["num_gpus"], "CPU": plan["classify_cpus"]}
    name = f"fer-batch-classify-{run_id}"
    group = placement_group([bundle] * plan["classify_actors"], strategy="SPREAD", name=name)
    # Not ready in time (a busy cluster): the classifier actors wait for it all the same.
    ray.wait([group.ready()], timeout=RESERVE_WAIT_S)
    plan[PLAN_KEY] = name
    try:
        yield
    finally:
        remove_placement_group(group)


def classifier_strategy(plan: dict[str, Any]) -> Any:
    """The scheduling strategy for classifier actors: inside the run's reservation, if any."""
    name = plan.get(PLAN_KEY)
    if name is None:
        return "SPREAD"  # Ray Data's own default
    from ray.util import get_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(get_placement_group(name))
