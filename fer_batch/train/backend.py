"""Ray Train's TensorFlow backend, without TensorFlow in the driver or the train controller.

`ray.train.tensorflow` imports TensorFlow as a package (about 15 s of CPU on this 2-core
machine), and Ray Train unpickles the trainer's backend config in its controller actor,
so `TensorflowTrainer` costs a TensorFlow import in the driver and in the controller of
every run, before any worker starts. The backend itself only writes TF_CONFIG on each
worker for `MultiWorkerMirroredStrategy`; it is the same here (ray/train/tensorflow/
config.py in Ray 2.60), run by a plain `DataParallelTrainer`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ray.train.backend import Backend, BackendConfig


def _set_tf_config(worker_addresses: list[str], index: int) -> None:
    """On one worker: the cluster of all workers and this worker's rank in it."""
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": worker_addresses},
                                          "task": {"type": "worker", "index": index}})
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # as Ray's backend sets it (tf.keras only)


class _TfConfigBackend(Backend):
    def on_start(self, worker_group: Any, backend_config: BackendConfig) -> None:
        import ray
        from ray._common.network_utils import build_address
        from ray.train._internal.utils import get_address_and_port

        def address() -> str:
            return build_address(*get_address_and_port())

        urls = worker_group.execute(address)
        ray.get([worker_group.execute_single_async(i, _set_tf_config, worker_addresses=urls,
                                                   index=i)
                 for i in range(len(worker_group))])


@dataclass
class TfConfig(BackendConfig):
    """`ray.train.tensorflow.TensorflowConfig`, importable without TensorFlow."""

    @property
    def backend_cls(self) -> type[Backend]:
        return _TfConfigBackend

    @property
    def framework(self) -> Any:
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TENSORFLOW

    def to_dict(self) -> dict[str, Any]:
        return {}
