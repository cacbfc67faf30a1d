"""`ray job submit` against a real head started on 127.0.0.1 (stopped by its own PID)."""

from __future__ import annotations

import os
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


def readme_commands() -> list[str]:
    """The README's job-submit block, one command per line (continuations joined)."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- job-submit-commands -->", 1)[1]
    code = block.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = code.replace("\\\n", " ").splitlines()
    return [" ".join(line.split("  #")[0].split()) for line in lines if line.strip()]


@pytest.fixture
def ray_head(tmp_path):
    """The README's commands up to `ray start --head`, run as written with a fresh HOME (so
    the token goes to a new ~/.ray/auth_token). The head gets --block and free ports on top:
    the test session's own Ray holds the defaults (another Ray's agent on 52365 makes a
    head answer "No available agent" to every submission). It runs in its own process
    group and is stopped by its PID, where the README says `ray stop`: that would stop every
    Ray on the machine."""
    commands = readme_commands()
    assert commands[:4] == [". .venv/bin/activate",
                            "ray get-auth-token --generate > /dev/null",
                            "export RAY_AUTH_MODE=token",
                            "ray start --head --dashboard-host 127.0.0.1"], commands
    assert commands[5:] == ["ray stop"], commands
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    subprocess.run(commands[1], shell=True, check=True, env=env, cwd=REPO)
    assert (home / ".ray" / "auth_token").stat().st_size > 0
    env["RAY_AUTH_MODE"] = "token"
    port, dash = _free_port(), _free_port()
    extra = [
        f"--{name}={_free_port()}"
        for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                     "runtime-env-agent-port", "metrics-export-port",
                     "object-manager-port", "node-manager-port")
    ]
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")  # AF_UNIX paths are short
    proc = subprocess.Popen(
        [*commands[3].split(), "--block", "--node-ip-address", "127.0.0.1", "--port",
         str(port), "--dashboard-port", str(dash), "--num-cpus", "2", "--temp-dir", temp_dir,
         *extra],
        stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, env=env,
        start_new_session=True, cwd=REPO,
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
    yield address, dash, env, commands[4]
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_readme_job_submit_commands_run_jobs_annotate(ray_head, tmp_path):
    address, dash, env, submit = ray_head
    # Without RAY_AUTH_MODE=token the head turns the client away: why the README exports it.
    plain = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    refused = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address],
                             capture_output=True, text=True, env=plain)
    assert refused.returncode != 0, refused.stdout
    archive = tmp_path / "archive"
    write_valid_images(archive / "good")
    write_bad_images(archive / "bad", huge=False)
    out = tmp_path / "out"
    assert "http://127.0.0.1:8265" in submit and "demo/archive" in submit
    command = (submit.replace("http://127.0.0.1:8265", address)
               .replace("demo/archive", str(archive)).replace("demo/cluster-out", str(out)))
    args = command.split()
    assert args[:2] == ["ray", "job"] and args[args.index("--") + 1] == "python"
    args[args.index("--") + 1] = sys.executable  # the venv's python, as `activate` gives
    for _ in range(10):  # the head answers before its job agent is ready to take jobs
        result = subprocess.run([*args, "--no-progress"], capture_output=True, text=True,
                                env=env, timeout=600, cwd=REPO)
        if "No available agent" not in result.stdout + result.stderr:
            break
        time.sleep(6)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    checked = check_invariant(out)
    assert checked["record"]["counts"]["inputs"] == 14
    assert checked["record"]["counts"]["errors"] == 4
