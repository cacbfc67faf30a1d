"""Placement, node loss and poison inputs on a four-node 127.0.0.1 cluster.

The cluster (a head with no CPUs, two CPU nodes, one node with a fake GPU and one
CPU) and its three runs live in a process of their own, tests/cluster_driver.py:
a Cluster needs its own Ray, and this session may already hold one (`ray_session`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fer_batch.recovery import CommitLog
from tests.cluster_driver import N_SLOW, RELEASE_TIMEOUT_S
from tests.invariants import check_invariant

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
DRIVER_TIMEOUT_S = 900  # minutes of margin on a busy 2-core machine
SCORES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FACE_KEY = ["source_uri", "frame_index", "face_index", "bbox_x", "bbox_y", "bbox_w", "bbox_h"]


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory):
    """Run the driver once; returns (output folder, cluster.json)."""
    out = tmp_path_factory.mktemp("cluster")
    # A Ray temp dir of its own (short: it holds AF_UNIX sockets) keeps the cluster's
    # address out of /tmp/ray, where a plain ray.init() elsewhere on this machine looks.
    ray_tmp = tempfile.mkdtemp(prefix="rayc", dir="/tmp")
    # Ray swaps 127.0.0.1 for the host's address unless it believes clusters are off.
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": "",
           "RAY_TMPDIR": ray_tmp}
    with open(out / "driver.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.cluster_driver", str(out)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=DRIVER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its group: the driver and the nodes it started
            proc.wait()
            rc = "timeout"
    shutil.rmtree(ray_tmp, ignore_errors=True)
    tail = (out / "driver.log").read_text()[-4000:]
    assert rc == 0, f"cluster driver failed ({rc}):\n{tail}"
    return out, json.loads((out / "cluster.json").read_text())


def uris(archive: str) -> set[str]:
    return {str(p) for p in Path(archive).iterdir()}


def faces_key(faces):
    """Faces in a comparable form: identity, box and scores rounded past float noise."""
    frame = faces[FACE_KEY + SCORES].copy()
    frame[SCORES] = frame[SCORES].round(4)
    return frame.sort_values(FACE_KEY).reset_index(drop=True)


@pytest.mark.parametrize("run", ["clean", "node_loss"])
def test_classify_only_on_gpu_node_detect_never(cluster_runs, run):
    out, info = cluster_runs
    record = json.loads((out / run / "_run.json").read_text())
    detect, classify = record["placement"]["detect"], record["placement"]["classify"]
    assert set(classify) == {info["gpu_node"]}
    assert detect and set(detect) <= set(info["cpu_nodes"])
    assert sum(n["items"] for n in detect.values()) == N_SLOW
    assert record["resources"]["num_gpus"] == 1 and record["resources"]["classify_cpus"] == 1


def test_node_lost_mid_run_loses_and_duplicates_nothing(cluster_runs):
    out, info = cluster_runs
    assert info.get("removed") in info["cpu_nodes"], "no CPU node was removed during the run"
    assert info["committed_before_removal"] < N_SLOW
    expected = uris(info["archives"]["slow"])
    clean = check_invariant(out / "clean", expected)
    lost = check_invariant(out / "node_loss", expected)
    assert (lost["media"]["status"] == "ok").all() and lost["errors"].empty
    assert len(lost["faces"]) == len(clean["faces"]) >= N_SLOW
    assert faces_key(lost["faces"]).equals(faces_key(clean["faces"]))
    assert lost["record"]["counts"]["processed"] == N_SLOW


def test_input_that_kills_its_worker_becomes_a_worker_error_row(cluster_runs):
    out, info = cluster_runs
    result = check_invariant(out / "poison", uris(info["archives"]["poison"]))
    media, errors, record = result["media"], result["errors"], result["record"]
    crash = media[media.source_uri.str.endswith("/__crash__face.jpg")]
    assert crash.status.tolist() == ["error"] and crash.n_faces.tolist() == [0]
    assert len(errors) == 1
    error = errors.iloc[0]
    assert (error.source_uri, error.stage, error.error_type) == (
        crash.source_uri.iloc[0], "worker", "RetriesExhausted")
    others = media[media.source_uri != crash.source_uri.iloc[0]]
    assert len(others) == 6 and (others.status == "ok").all() and (others.n_faces >= 1).all()
    assert record["counts"]["errors"] == 1 and record["counts"]["ok"] == 6
    for stage in ("detect", "classify"):  # the worker error row ran on no node
        assert "None" not in record["placement"][stage]
        assert sum(n["items"] for n in record["placement"][stage].values()) == 6


def test_commit_log_counts_a_retried_commit_once():
    log = CommitLog()
    assert log.add({"commit": np.array(["a", "b"]), "n_items": np.array([3, 2]),
                    "n_faces": np.array([4, 0]), "n_errors": np.array([0, 1])}) == (5, 4, 1)
    assert log.add({"commit": np.array(["a"]), "n_items": np.array([3]),
                    "n_faces": np.array([4]), "n_errors": np.array([0])}) == (0, 0, 0)
    assert log.n_items == 5


def test_a_finished_run_releases_every_cpu_and_gpu(cluster_runs):
    """Even after a poison run (workers killed, actors restarted, retries exhausted) the
    next run in the same Ray session gets the whole cluster."""
    _, info = cluster_runs
    released = info["released_after_s"]
    assert set(released) == {"clean", "poison"}
    for run, seconds in released.items():
        assert seconds is not None, (
            f"the {run} run's actors still held CPUs or GPUs {RELEASE_TIMEOUT_S} s after it")
