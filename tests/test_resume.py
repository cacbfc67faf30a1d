"""Exactly-once resume: runs killed with SIGKILL at any moment, changed inputs, --overwrite."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fer_batch.cli import main
from tests.invariants import check_invariant, read
from tests.media import astronaut, write_valid_images

pytestmark = pytest.mark.slow

RUN_ARGS = ["--address", "local", "--no-progress", "--batch-size", "16"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """60 small images (10 formats x 6 folders): enough commits to be killed between."""
    root = tmp_path_factory.mktemp("archive")
    for copy in range(6):
        write_valid_images(root / f"copy{copy}")
    return root


def expected_uris(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file()}


def start_run(inputs: list[str], out: Path, log: Path) -> subprocess.Popen:
    """`fer-batch annotate` in its own process group, so one killpg takes the whole run."""
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "fer_batch.cli", "annotate", *inputs, "--output", str(out),
             *RUN_ARGS], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def markers(out: Path) -> set[str]:
    return {p.name for p in (out / "_commits").glob("*.parquet")}


def kill_when(proc: subprocess.Popen, ready, timeout_s: float = 240,
              wait_for_workers: bool = True) -> None:
    """SIGKILL the run's process group once `ready()` holds, then wait for its Ray to go
    (unless told not to: its workers then outlive it by seconds, still able to write)."""
    started = time.time()
    while not ready() and proc.poll() is None and time.time() - started < timeout_s:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if wait_for_workers:
        wait_for_ray_workers_to_exit(started)


def wait_for_ray_workers_to_exit(since: float, timeout_s: float = 60) -> list[str]:
    """Wait until the Ray processes the killed runs left (started since `since`, not this
    test process's own) have exited; returns those still alive at the deadline.

    Ray workers live in their own sessions and exit once their raylet is gone."""
    import os

    def alive() -> list[str]:
        own = {c.pid for c in psutil.Process(os.getpid()).children(recursive=True)}
        found = []
        for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if (p.info["create_time"] >= since and p.info["pid"] not in own
                    and ("ray::" in cmd or "raylet" in cmd)):
                found.append(f"{p.info['pid']}: {cmd[:80]}")
        return found

    deadline = time.time() + timeout_s
    while (left := alive()) and time.time() < deadline:
        time.sleep(0.5)
    return left


def test_sigkill_at_any_moment_then_rerun_is_exactly_once(archive, tmp_path):
    out, log = tmp_path / "out", tmp_path / "runs.log"
    inputs = [str(archive)]
    # During start-up (before any commit), at the first commit, and mid-way.
    t0 = time.time()
    kill_when(start_run(inputs, out, log), lambda: time.time() - t0 > 4)
    kill_when(start_run(inputs, out, log), lambda: bool(markers(out)))
    first = markers(out)
    # The last re-run starts at once, while the killed run's workers are still alive:
    # the lease (fer_batch.lease) must keep them from committing behind its back.
    since = time.time()
    kill_when(start_run(inputs, out, log), lambda: bool(markers(out) - first),
              wait_for_workers=False)
    committed = markers(out)
    assert committed, "no commit survived the kills: the test did not exercise resume"
    final = start_run(inputs, out, log)
    assert final.wait(timeout=600) == 0, log.read_text()[-3000:]
    result = check_invariant(out, expected_uris(archive))
    counts = result["record"]["counts"]
    assert counts["skipped_done"] > 0 and counts["processed"] > 0
    assert counts["skipped_done"] + counts["processed"] == counts["inputs"] == 60
    assert_every_part_committed(out)
    left = wait_for_ray_workers_to_exit(since)
    assert not left, f"the killed runs' Ray processes outlived the check: {left}"
    assert_every_part_committed(out)  # nothing landed after the final run ended either
    check_invariant(out, expected_uris(archive))


def assert_every_part_committed(out: Path) -> None:
    ids = {name.removesuffix(".parquet") for name in markers(out)}
    for table in ("faces", "media", "errors"):
        for part in (out / table).glob("*"):
            cid = part.name.removeprefix("part-").removesuffix(".parquet")
            assert cid in ids or cid == "empty", f"uncommitted part left: {part}"


def test_changed_input_is_redone_without_old_rows(ray_session, tmp_path):
    """Manifest without sizes: workers stat, the driver drops the stale commit whole."""
    root = tmp_path / "in"
    write_valid_images(root)
    names = sorted(p.name for p in root.iterdir())
    manifest = root / "list.txt"  # entries are relative to the manifest's folder
    manifest.write_text("\n".join(names) + "\n")
    out = tmp_path / "out"
    args = ["annotate", "--manifest", str(manifest), "--output", str(out), "--no-progress"]
    assert main(args) == 0
    before = check_invariant(out, expected_uris(root) - {str(manifest)})
    changed = root / "grey.png"
    assert before["media"].set_index("source_uri").loc[str(changed), "n_faces"] >= 1
    blank = astronaut().convert("L").point(lambda _: 0)  # same format, no face at all
    blank.save(changed)
    assert main(args) == 0
    after = check_invariant(out, expected_uris(root) - {str(manifest)})
    counts = after["record"]["counts"]
    assert counts["stale_commits_dropped"] >= 1 and counts["processed"] >= 1
    assert counts["skipped_done"] + counts["processed"] == counts["inputs"] == 10
    row = after["media"].set_index("source_uri").loc[str(changed)]
    assert row.n_faces == 0 and row.run_id == after["record"]["run_id"]
    assert not (after["faces"].source_uri == str(changed)).any()
    assert main([*args, "--overwrite"]) == 0
    fresh = check_invariant(out, expected_uris(root) - {str(manifest)})["record"]["counts"]
    assert fresh["skipped_done"] == 0 and fresh["processed"] == 10


def test_rerun_after_complete_run_skips_everything_via_manifest_columns(ray_session, tmp_path):
    """size + etag in the manifest: the plan needs no stat at all to skip finished inputs."""
    root = tmp_path / "in"
    write_valid_images(root)
    out = tmp_path / "out"
    assert main(["annotate", str(root), "--output", str(out), "--no-progress"]) == 0
    media = read(out, "media")
    listing = json.loads((out / "_run.json").read_text())["counts"]
    rows = ["uri,size,etag"] + [f"{p},{p.stat().st_size},{p.stat().st_mtime}"
                                for p in sorted(root.iterdir())]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    shutil.copytree(out, tmp_path / "copy")
    assert main(["annotate", "--manifest", str(manifest), "--output", str(tmp_path / "copy"),
                 "--no-progress"]) == 0
    counts = check_invariant(tmp_path / "copy")["record"]["counts"]
    assert counts["skipped_done"] == counts["inputs"] == listing["inputs"] == len(media)
    assert counts["processed"] == 0
