"""Annotate runs on a ray.cluster_utils.Cluster, in a process of its own (tests/test_cluster.py).

A Cluster needs a Ray of its own, so it cannot share the test session's; this
module runs as ``python -m tests.cluster_driver OUT`` and leaves, under OUT, the
output of each run plus ``cluster.json`` (node ids, what was removed, timings).

The cluster: a head with no CPUs, two CPU-only nodes and one node declaring a
(fake) GPU and one CPU, which the classifier takes. Everything binds to 127.0.0.1
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 stops Ray swapping 127.0.0.1 for the host's IP).

Faults are injected from the test side only, by a worker_process_setup_hook given
in this driver's runtime_env: reading an input named ``__crash__*`` kills the worker
process, one named ``__slow__*`` takes SLOW_S (so a run lasts long enough to lose a
node in), and every read of a ``__slow__`` input leaves a file naming its node.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

SLOW_S = 0.5
N_SLOW = 24
KILL_AFTER_READS = 6  # a block (4 items) done, its output not yet classified
STARTED_ENV = "FER_BATCH_TEST_STARTED_DIR"
# A run that has returned has released its actors: Ray needs about a second to kill them.
RELEASE_TIMEOUT_S = 30


def install_hooks() -> None:
    """Worker setup hook: wrap read_bytes before fer_batch.faces imports it."""
    import fer_batch.sources as sources

    real = sources.read_bytes

    def read_bytes(uri, *args, **kwargs):
        name = str(uri).rsplit("/", 1)[-1]
        if name.startswith("__crash__"):
            os._exit(1)  # what a segfaulting decoder or an OOM kill looks like to Ray
        if name.startswith("__slow__"):
            import ray

            node = ray.get_runtime_context().get_node_id()
            started = Path(os.environ[STARTED_ENV])
            (started / f"{node}-{name}-{os.getpid()}-{time.monotonic_ns()}").touch()
            time.sleep(SLOW_S)
        return real(uri, *args, **kwargs)

    sources.read_bytes = read_bytes


def write_archives(root: Path) -> dict[str, Path]:
    from tests.media import write_valid_images

    valid = root / "valid"
    write_valid_images(valid)
    images = sorted(p for p in valid.iterdir() if p.is_file())
    slow = root / "slow"
    slow.mkdir()
    for i in range(N_SLOW):
        src = images[i % len(images)]
        shutil.copy(src, slow / f"__slow__{i:02d}{src.suffix}")
    poison = root / "poison"
    poison.mkdir()
    for src in images[:6]:
        shutil.copy(src, poison / src.name)
    shutil.copy(valid / "UPPER.JPG", poison / "__crash__face.jpg")
    return {"slow": slow, "poison": poison}


def annotate_into(archive: Path, out: Path) -> float:
    from fer_batch.config import AnnotateConfig
    from fer_batch.pipeline import annotate

    start = time.time()
    annotate(AnnotateConfig(inputs=(str(archive),), output=str(out), batch_size=16,
                            progress=False))
    return round(time.time() - start, 1)


def remove_when_busy(cluster, nodes: list, started: Path, out: Path, info: dict) -> None:
    """Kill the CPU node that first starts KILL_AFTER_READS slow reads (so: mid-detection)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        reads = {n.node_id: len(list(started.glob(f"{n.node_id}-*"))) for n in nodes}
        busy = [n for n in nodes if reads[n.node_id] >= KILL_AFTER_READS]
        if busy:
            commits = out / "_commits"
            info["committed_before_removal"] = (
                len(list(commits.glob("*.parquet"))) if commits.is_dir() else 0)
            cluster.remove_node(busy[0], allow_graceful=False)
            info["removed"] = busy[0].node_id
            return
        time.sleep(0.05)


def wait_idle(timeout: float = RELEASE_TIMEOUT_S) -> float | None:
    """Seconds until the actors of the run before have released every CPU and GPU they
    held (None: not within `timeout`); the next run needs them."""
    import ray

    start = time.time()
    while time.time() - start < timeout:
        total, free = ray.cluster_resources(), ray.available_resources()
        if all(free.get(k, 0) >= total.get(k, 0) for k in ("CPU", "GPU")):
            return round(time.time() - start, 1)
        time.sleep(0.5)
    return None


def main(out: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    timings: dict[str, float] = {}
    start = time.time()
    archives = write_archives(out / "archives")
    started = out / "started"
    started.mkdir()
    local = {"node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "include_dashboard": False, **local})
    try:
        cpu = [cluster.add_node(num_cpus=1, **local) for _ in range(2)]
        gpu = cluster.add_node(num_cpus=1, num_gpus=1, **local)
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": install_hooks,
                              "env_vars": {STARTED_ENV: str(started)}})
        timings["cluster_up"] = round(time.time() - start, 1)
        released: dict[str, float | None] = {}
        timings["clean"] = annotate_into(archives["slow"], out / "clean")
        released["clean"] = wait_idle()
        timings["poison"] = annotate_into(archives["poison"], out / "poison")
        released["poison"] = wait_idle()
        info: dict = {"released_after_s": released}
        for path in started.iterdir():  # only reads of the next run count
            path.unlink()
        killer = threading.Thread(target=remove_when_busy, daemon=True,
                                  args=(cluster, cpu, started, out / "node_loss", info))
        killer.start()
        timings["node_loss"] = annotate_into(archives["slow"], out / "node_loss")
        killer.join(timeout=60)
        (out / "cluster.json").write_text(json.dumps({
            "cpu_nodes": [n.node_id for n in cpu], "gpu_node": gpu.node_id,
            "archives": {k: str(v) for k, v in archives.items()}, **info,
            "timings": timings,
        }, indent=2))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
