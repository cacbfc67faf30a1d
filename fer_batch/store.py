"""The output's storage primitives, shared by every writer and reader of it: the
completion-marker schema, commit ids, path joining, the local/remote distinction and
atomic part writes.

A commit writes its part files (``faces/``, ``media/``, ``errors/``, ``tracks/``, named
``part-<commit id>.parquet``) and then its marker, ``_commits/<commit id>.parquet``; only
a part that a marker names is committed (fer_batch/sink.py writes image commits,
fer_batch/tracking.py video commits, fer_batch/query.py reads only committed parts).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fer_batch.sources import is_local, retry_transient

COMMIT_SCHEMA = pa.schema(
    [
        ("item_key", pa.string()),
        ("source_uri", pa.string()),
        ("media_type", pa.string()),
        ("segment", pa.int64()),
        ("status", pa.string()),
        ("n_faces", pa.int64()),
        ("n_errors", pa.int64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("size_bytes", pa.int64()),
        ("fps", pa.float64()),
        ("frame_count", pa.int64()),
        ("duration_s", pa.float64()),
        ("n_frames_sampled", pa.int64()),
        ("detect_node", pa.string()),
        ("classify_node", pa.string()),
        ("run_id", pa.string()),
    ]
)


def join(output: str, *parts: str) -> str:
    return "/".join([output.rstrip("/"), *parts])


EMPTY_PART = "empty"  # part-empty.parquet: a table's schema where nothing was committed


def part_name(cid: str) -> str:
    """The file name of commit `cid`'s part in each table."""
    return f"part-{cid}.parquet"


def commit_of_part(name: str) -> str | None:
    """The commit id a part file's name holds, or None for a name that is not a part."""
    if name.startswith("part-") and name.endswith(".parquet"):
        return name[len("part-"):-len(".parquet")]
    return None


def commit_id(item_keys: Any) -> str:
    digest = hashlib.sha1("\n".join(sorted(str(k) for k in item_keys)).encode())
    return digest.hexdigest()[:24]


def write_table(fs: Any, path: str, table: pa.Table) -> None:
    """Write one Parquet file; locally through a temp name so no reader sees half a file."""
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return

    def put() -> None:  # one PUT: a retry after a transient error rewrites it whole
        with fs.open(path, "wb") as f:
            pq.write_table(table, f)

    retry_transient(put)
