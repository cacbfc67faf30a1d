"""`ray job submit` against a real head started on 127.0.0.1 (stopped by its own PID)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.invariants import check_invariant
from tests.media import write_bad_images, write_valid_images

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` in its own process group: killing it stops what it started."""
    port, dash = _free_port(), _free_port()
    # Every port the head opens is a free one: another Ray on this machine (the test
    # session's own) already holds the agent's default 52365, and a head whose agent
    # cannot bind answers "No available agent" to every submission.
    agent_ports = [
        f"--{name}={_free_port()}"
        for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                     "runtime-env-agent-port", "metrics-export-port",
                     "object-manager-port", "node-manager-port")
    ]
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")  # AF_UNIX paths are short
    # Ray 2.60 clusters require a token: the head and the client share a fresh one.
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
         "--num-cpus", "2", "--temp-dir", temp_dir, *agent_ports],
        stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, env=env,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address],
                               capture_output=True, env=env)
        if probe.returncode == 0:
            break
        time.sleep(2)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail("ray head did not come up: " + (tmp_path / "head.log").read_text()[-2000:])
    yield address, env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_jobs_annotate(ray_head, tmp_path):
    address, env = ray_head
    archive = tmp_path / "archive"
    write_valid_images(archive / "good")
    write_bad_images(archive / "bad", huge=False)
    out = tmp_path / "out"
    for _ in range(10):  # the head answers before its job agent is ready to take jobs
        result = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
             "--", sys.executable, "jobs/annotate.py", str(archive), "--output", str(out),
             "--no-progress"],
            capture_output=True, text=True, env=env, timeout=600,
        )
        if "No available agent" not in result.stdout + result.stderr:
            break
        time.sleep(6)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    checked = check_invariant(out)
    assert checked["record"]["counts"]["inputs"] == 14
    assert checked["record"]["counts"]["errors"] == 4
