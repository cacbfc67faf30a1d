"""Which run owns an output: a fencing token for commits.

A driver killed with SIGKILL can leave Ray workers alive for a few seconds (until
they notice their raylet is gone). If the run is restarted in that window, an old
CommitWriter could land a commit for items the new run has already planned to do
again, under another commit id: a duplicate. So each run takes the output's lease
(``_lease.json``, its run id) before it plans, and every commit checks, right
before it writes its part files and again before its marker, that its run still
holds the lease. A writer of a superseded run raises LeaseLost and writes nothing
more; the parts it may have written are orphans that the next run removes. What
is left is the moment between the last check and the marker write (milliseconds,
one PUT on an object store), instead of the seconds a worker takes to die.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from fer_batch.schema import LEASE
from fer_batch.sources import filesystem, redact, retry_transient
from fer_batch.store import join


class LeaseLost(RuntimeError):
    """Another run took over this output; this run must not commit anything more."""


def _path(output: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    fs, root = filesystem(output, storage_options)
    return fs, join(root, LEASE)


def take(output: str, storage_options: dict[str, Any], run_id: str) -> None:
    """Make `run_id` the owner of `output` (the last run to start wins)."""
    fs, path = _path(output, storage_options)
    body = json.dumps({"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                       "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def write() -> None:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "w") as f:
            f.write(body)

    try:
        retry_transient(write)
    except PermissionError as e:  # the first write of a run: a bad option, before Ray starts
        raise ValueError(f"--output cannot be written (permission denied: "
                         f"{redact(str(e), storage_options)}): {output!r}") from None


def holder(output: str, storage_options: dict[str, Any]) -> str | None:
    """The run id that owns `output`, or None if no run has taken it."""
    return holder_at(*filesystem(output, storage_options))


def holder_at(fs: Any, root: str) -> str | None:
    """`holder` for an output already opened as (filesystem, root)."""
    path = join(root, LEASE)

    def read() -> str | None:
        fs.invalidate_cache(path)  # s3fs may answer from a listing made earlier
        try:
            with fs.open(path, "r") as f:
                return json.load(f).get("run_id")
        except FileNotFoundError:
            return None

    return retry_transient(read)


def check(output: str, storage_options: dict[str, Any], run_id: str) -> None:
    """Raise LeaseLost unless `run_id` holds the lease (no lease at all: no fencing)."""
    check_at(*filesystem(output, storage_options), run_id, output)


def check_at(fs: Any, root: str, run_id: str, output: str | None = None) -> None:
    """`check` for an output already opened as (filesystem, root)."""
    owner = holder_at(fs, root)
    if owner is not None and owner != run_id:
        raise LeaseLost(f"run {run_id} no longer owns {output or root!r}: run {owner} started "
                        "on it since; only one run may write an output at a time")
