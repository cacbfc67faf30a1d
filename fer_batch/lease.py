"""Which run owns an output: a fencing token for commits.

A driver killed with SIGKILL can leave Ray workers alive for a few seconds (until
they notice their raylet is gone). If the run is restarted in that window, an old
CommitWriter could land a commit for items the new run has already planned to do
again, under another commit id: a duplicate. So each run takes the output's lease
(``_lease.json``, its run id) before it plans, and every commit (fer_batch.store.Store
.begin and Commit.finish) checks, right before it writes its part files and again
before its marker, that its run still holds the lease. A writer of a superseded run
raises LeaseLost and writes nothing more; the parts it may have written are orphans
that the next run removes. What is left is the moment between the last check and the
marker write (milliseconds, one PUT on an object store), instead of the seconds a
worker takes to die.

The functions take the output's Store (fer_batch/store.py), which does the reading
and writing.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Protocol

from fer_batch.schema import LEASE
from fer_batch.sources import redact


class Store(Protocol):
    """What the lease needs of fer_batch.store.Store (which imports this module)."""

    label: str
    storage_options: dict[str, Any]

    def path(self, *segments: str) -> str: ...
    def write_text(self, path: str, text: str) -> None: ...
    def read_text(self, path: str) -> str | None: ...


class LeaseLost(RuntimeError):
    """Another run took over this output; this run must not commit anything more."""


def take(store: Store, run_id: str) -> None:
    """Make `run_id` the owner of the output (the last run to start wins)."""
    body = json.dumps({"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                       "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    try:
        store.write_text(store.path(LEASE), body)
    except PermissionError as e:  # the first write of a run: a bad option, before Ray starts
        raise ValueError(f"--output cannot be written (permission denied: "
                         f"{redact(str(e), store.storage_options)}): {store.label!r}") from None


def holder(store: Store) -> str | None:
    """The run id that owns the output, or None if no run has taken it."""
    text = store.read_text(store.path(LEASE))
    return None if text is None else json.loads(text).get("run_id")


def check(store: Store, run_id: str) -> None:
    """Raise LeaseLost unless `run_id` holds the lease (no lease at all: no fencing)."""
    owner = holder(store)
    if owner is not None and owner != run_id:
        raise LeaseLost(f"run {run_id} no longer owns {store.label!r}: run {owner} started "
                        "on it since; only one run may write an output at a time")
