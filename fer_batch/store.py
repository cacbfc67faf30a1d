"""The output store: the one owner of the output's layout and of its commit protocol.

An output is a root on an fsspec filesystem (local disk, S3, ...) holding one folder per
table (``faces/``, ``media/``, ``errors/``, ``tracks/``) and ``_commits/``. A commit
writes its part files, each named ``part-<commit id>.parquet``, and then its marker,
``_commits/<commit id>.parquet`` (COMMIT_SCHEMA, one row per item it holds); only a part
that a marker names is committed. Every commit checks, before its parts and again before
its marker, that its run still holds the output's lease (fer_batch/lease.py), so a run
that lost the output writes no marker, and the parts it may have left are orphans that the
next run removes (`remove_orphans`).

`Store` alone joins paths under the root (plain segments only, fer_batch.paths), knows
whether the output is local, retries its filesystem calls, writes parts atomically, reads
markers (`markers_sql`, the one reader, for DuckDB), and lists what readers may see
(`committed_files`). fer_batch/sink.py builds image commits, fer_batch/tracking.py video
commits, fer_batch/plan.py and fer_batch/recovery.py read markers, fer_batch/query.py
reads committed parts; all of them through a Store.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fer_batch import lease
from fer_batch.paths import child
from fer_batch.schema import COMMITS_DIR, RUN_RECORD, SCHEMAS, TABLES
from fer_batch.sources import filesystem, is_local, protocol_of, retry_transient

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

EMPTY_PART = "empty"  # part-empty.parquet: a table's schema where nothing was committed
_PARQUET = ".parquet"


def part_name(cid: str) -> str:
    """The file name of commit `cid`'s part in each table."""
    return f"part-{cid}{_PARQUET}"


def commit_of_part(name: str) -> str | None:
    """The commit id a part file's name holds, or None for a name that is not a part."""
    if name.startswith("part-") and name.endswith(_PARQUET):
        return name[len("part-"):-len(_PARQUET)]
    return None


def commit_id(item_keys: Any) -> str:
    digest = hashlib.sha1("\n".join(sorted(str(k) for k in item_keys)).encode())
    return digest.hexdigest()[:24]


def sql_str(text: str) -> str:
    """`text` inside a single-quoted SQL string literal (DuckDB)."""
    return text.replace("'", "''")


class Store:
    """One output: an fsspec filesystem and a root under it."""

    def __init__(self, fs: Any, root: str, label: str | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.fs = fs
        self.root = root.rstrip("/") or root
        self.label = label or root  # what error messages name: the output as the user wrote it
        self.storage_options = storage_options or {}
        self.local = is_local(fs)

    @classmethod
    def open(cls, output: str, storage_options: dict[str, Any] | None = None) -> Store:
        fs, root = filesystem(output, storage_options or {})
        return cls(fs, root, output, storage_options)

    def check_writable(self) -> None:
        """Fail before anything starts if a local output cannot be written; writes nothing.
        (On an object store, permission errors surface on the lease, the run's first write.)"""
        if not self.local:
            return
        probe = os.path.abspath(self.root)
        if os.path.exists(probe) and not os.path.isdir(probe):
            raise ValueError(f"--output exists and is not a directory: {self.label!r}")
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
            raise ValueError(f"--output cannot be written ({probe} is not a writable "
                             f"directory): {self.label!r}")

    # --- paths and retried filesystem calls ------------------------------------------

    def path(self, *segments: str) -> str:
        """A path under the root; each segment one plain name (never a step outside it)."""
        return child(self.root, *segments)

    def folder(self, name: str) -> Store:
        """The Store of a folder under the root."""
        return Store(self.fs, self.path(name), self.name_of(name), self.storage_options)

    def name_of(self, *segments: str) -> str:
        """A path under the output as the user would write it (for messages and answers)."""
        return "/".join([self.label.rstrip("/"), *segments])

    def url(self, path: str) -> str:
        """`path` as readers outside fsspec (DuckDB, Polars, Spark) open it."""
        return path if self.local else f"{protocol_of(self.fs)}://{path}"

    def exists(self, path: str) -> bool:
        return retry_transient(self.fs.exists, path)

    def listing(self, path: str) -> list[str]:
        """The paths in folder `path`, sorted; [] when it does not exist."""
        if not self.exists(path):
            return []
        return sorted(retry_transient(self.fs.ls, path, detail=False))

    def rm(self, path: str, recursive: bool = False) -> None:
        retry_transient(self.fs.rm, path, recursive=recursive)

    def write_text(self, path: str, text: str) -> None:
        def write() -> None:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with self.fs.open(path, "w") as f:
                f.write(text)

        retry_transient(write)

    def read_text(self, path: str) -> str | None:
        """The text of `path` as it is now (no cached listing), or None if there is none."""
        def read() -> str | None:
            self.fs.invalidate_cache(path)  # s3fs may answer from a listing made earlier
            try:
                with self.fs.open(path, "r") as f:
                    return f.read()
            except FileNotFoundError:
                return None

        return retry_transient(read)

    def write(self, path: str, data: pa.Table | Iterable[pa.Table],
              schema: pa.Schema | None = None) -> None:
        """Write one Parquet file from a table, or from a stream of tables (cast to `schema`)
        a table at a time. Locally through a temp name, so no reader sees half a file; on an
        object store one PUT, which a retry after a transient error rewrites whole."""
        if isinstance(data, pa.Table):
            schema = schema or data.schema
            data = [data]
        elif schema is None:
            raise ValueError("a stream of tables needs its schema")
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            try:
                _write_parquet(tmp, data, schema)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            return

        def put() -> None:
            with self.fs.open(path, "wb") as f:
                _write_parquet(f, data, schema)

        if isinstance(data, list):
            retry_transient(put)
        else:  # a stream is read once: it is written without retries
            put()

    # --- the commit protocol ---------------------------------------------------------

    def marker_path(self, cid: str) -> str:
        return self.path(COMMITS_DIR, f"{cid}{_PARQUET}")

    def part_path(self, table: str, cid: str) -> str:
        return self.path(table, part_name(cid))

    def marker_files(self, commits: Iterable[str] | None = None) -> list[str]:
        """The markers there are (only those of `commits`, if given)."""
        if commits is not None:
            return [p for p in map(self.marker_path, commits) if self.exists(p)]
        return [p for p in self.listing(self.path(COMMITS_DIR)) if p.endswith(_PARQUET)]

    def committed_ids(self) -> set[str]:
        return {os.path.basename(p)[: -len(_PARQUET)] for p in self.marker_files()}

    def markers_sql(self, con: Any, commits: Iterable[str] | None = None) -> str | None:
        """A DuckDB relation over the markers (only those of `commits`, if given): the
        COMMIT_SCHEMA columns and `commit_id`; None when there are none. The one reader of
        markers: planning, the run's tallies and recovery all read them through it."""
        files = self.marker_files(commits)
        if not files:
            return None
        if not self.local:
            con.register_filesystem(self.fs)  # through fsspec: no DuckDB extension download
        if commits is None:  # the whole folder: one glob, not a list of every file
            files = [self.path(COMMITS_DIR) + f"/*{_PARQUET}"]
        listed = ", ".join(f"'{sql_str(self.url(f))}'" for f in files)
        columns = ", ".join(COMMIT_SCHEMA.names)
        return (f"(SELECT regexp_extract(filename, '([^/]+)\\{_PARQUET}$', 1) AS commit_id,"
                f" {columns} FROM read_parquet([{listed}], filename = true,"
                " union_by_name = true))")

    def begin(self, cid: str, run_id: str) -> Commit:
        """Start commit `cid` of run `run_id`: checks the lease first."""
        lease.check(self, run_id)
        return Commit(self, cid, run_id)

    def commit(self, cid: str, run_id: str, tables: dict[str, pa.Table],
               marker: pa.Table) -> None:
        """Write commit `cid` whole: its parts, then its marker."""
        commit = self.begin(cid, run_id)
        for name, table in tables.items():
            commit.write(name, table)
        commit.finish(marker)

    def remove_orphans(self) -> int:
        """Delete part files whose commit never completed (a run killed mid-commit, or one
        whose lease was taken) and temp files of interrupted writes; returns how many."""
        keep = self.committed_ids() | {EMPTY_PART}
        removed = 0
        for name in TABLES:
            for part in self.listing(self.path(name)):
                base = os.path.basename(part)
                if base.endswith(".tmp") or commit_of_part(base) not in keep:
                    self.rm(part)
                    removed += 1
        return removed

    def drop_commits(self, commits: Iterable[str]) -> None:
        """Delete whole commits (a changed input's): the marker first, so a kill midway
        leaves only orphans."""
        for cid in commits:
            for path in (self.marker_path(cid), *(self.part_path(t, cid) for t in TABLES)):
                if self.exists(path):
                    self.rm(path)

    def committed_files(self, table: str, ids: set[str] | None = None) -> list[str]:
        """The part files of `table` that a marker names (plus the empty part a finished run
        leaves for the schema), as URLs that readers open as they are."""
        if table not in SCHEMAS:
            raise ValueError(f"table must be one of {tuple(SCHEMAS)}; received: {table!r}")
        keep = (self.committed_ids() if ids is None else ids) | {EMPTY_PART}
        return [self.url(p) for p in self.listing(self.path(table))
                if commit_of_part(os.path.basename(p)) in keep]

    def ensure_tables(self) -> None:
        """Give every table at least one (empty) file so readers always see its schema."""
        for name, schema in SCHEMAS.items():
            if not self.listing(self.path(name)):
                self.write(self.part_path(name, EMPTY_PART), schema.empty_table())

    def clear(self) -> None:
        """--overwrite: remove every table, marker and the run record."""
        for name in (*TABLES, COMMITS_DIR, RUN_RECORD):
            path = self.path(name)
            if self.exists(path):
                self.rm(path, recursive=True)

    def write_record(self, record: dict[str, Any]) -> None:
        self.write_text(self.path(RUN_RECORD), json.dumps(record, indent=2, default=str))


class Commit:
    """One commit being written (Store.begin): parts with `write`, then `finish`."""

    def __init__(self, store: Store, cid: str, run_id: str) -> None:
        self.store, self.cid, self.run_id = store, cid, run_id

    def write(self, table: str, data: pa.Table | Iterable[pa.Table]) -> None:
        """Write this commit's part of `table`: a table, or a stream of tables."""
        self.store.write(self.store.part_path(table, self.cid), data, SCHEMAS[table])

    def finish(self, marker: pa.Table) -> None:
        """Check the lease again and write the marker: the commit is done."""
        lease.check(self.store, self.run_id)
        self.store.write(self.store.marker_path(self.cid), marker.cast(COMMIT_SCHEMA))


def _write_parquet(where: Any, tables: Iterable[pa.Table], schema: pa.Schema) -> None:
    with pq.ParquetWriter(where, schema) as writer:
        for table in tables:
            writer.write_table(table.cast(schema))
