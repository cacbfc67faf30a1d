"""What a run has left to do, worked out on disk so driver memory stays flat.

The listing (or manifest) is spilled chunk by chunk into a DuckDB database under a
temporary folder, next to the output's completion markers. Deduplication, the
anti-join against finished work and the search for stale commits (an input whose
size or version changed since it was committed) are SQL over that database with a
memory limit; the work left is streamed back in record batches. Nothing here
holds one Python object per input.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa

from fer_batch.manifest import ENTRY_SCHEMA
from fer_batch.sources import retry_transient
from fer_batch.store import Store, sql_str

# 40 MB and dedup partitions of 250k rows: with 64 MB and 1M-row partitions DuckDB's
# buffers grew the driver from 185 MB (10k lines) to 248 MB (10M, +34%); with these the
# growth is 197 -> 231 MB (+17%; fer_batch.bench.manifest_memory, DuckDB 2.0.1).
MEMORY_LIMIT = "40MB"
# One DuckDB thread. DuckDB 2.0's grouped aggregate (the dedup in WorkPlan.resolve) sizes
# its hash tables per thread and, under a 64 MB limit, fails with OutOfMemoryException
# from about 400k distinct URIs at two threads (the default on a 2-core machine; more
# cores fail sooner) instead of spilling. With one thread it spills and plans 10M lines.
# Planning is a small part of a run: 1M lines resolve in under a second on one thread.
THREADS = 1
DEDUP_ROWS = 250_000  # listed rows per dedup partition (WorkPlan._dedup)
_PREFIX = "fer-batch-plan-"
TODO_BATCH_ROWS = 4096
SORT_ROWS = 1_000_000  # listing positions per sorted range of the work left (todo)
STAT_BATCH_ROWS = 256
StatFn = Callable[[Iterator[pa.Table]], Iterator[pa.Table]]

_VKEY = "source_uri || '|' || CAST(size_bytes AS VARCHAR) || '|' || version"
_TODO = """
    CREATE TABLE todo AS
    SELECT ord, source_uri, media_type, coalesce(size_bytes, -1) AS size_bytes,
           coalesce(version, '') AS version, coalesce(vkey || '|0', '') AS item_key, listed
    FROM work w ANTI JOIN done d ON d.vkey = w.vkey
"""
"""Work left: what no marker holds at its current size and version (a vkey holds the URI).
An anti-join rather than NOT EXISTS: DuckDB's hash join spills under the memory limit."""


def _remove_abandoned(workdir: str | None) -> None:
    """Delete plan folders left by killed drivers (their pid is gone) on this machine."""
    root = workdir or tempfile.gettempdir()
    for name in os.listdir(root):
        pid = name.removeprefix(_PREFIX).split("-")[0]
        if name.startswith(_PREFIX) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkPlan:
    """Dedup + resume planning for one run, in a DuckDB file that is deleted on close."""

    def __init__(self, memory_limit: str = MEMORY_LIMIT, workdir: str | None = None) -> None:
        _remove_abandoned(workdir)
        self.dir = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=workdir)
        self.con = limited_connection(os.path.join(self.dir, "plan.duckdb"), memory_limit)
        self._exec(f"SET temp_directory = '{os.path.join(self.dir, 'spill')}'")
        self._exec("SET preserve_insertion_order = false")
        self._exec("CREATE TABLE cand (ord BIGINT, source_uri VARCHAR, media_type VARCHAR,"
                         " size_bytes BIGINT, version VARCHAR)")
        self._exec("CREATE TABLE done (commit_id VARCHAR, source_uri VARCHAR,"
                         " media_type VARCHAR, vkey VARCHAR)")
        self._rows = 0
        self.counts = {"inputs": 0, "skipped_done": 0, "stale_commits": 0, "todo": 0}

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> WorkPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_entries(self, tables: Iterable[pa.Table]) -> None:
        """Append listed inputs (ENTRY_SCHEMA tables, any size) in listing order."""
        for table in tables:
            chunk = table.cast(ENTRY_SCHEMA)
            ords = pa.array(range(self._rows, self._rows + len(chunk)), pa.int64())
            chunk = chunk.add_column(0, "ord", ords)
            self.con.register("chunk", chunk)
            self._exec("INSERT INTO cand SELECT * FROM chunk")
            self.con.unregister("chunk")
            self._rows += len(chunk)

    def load_commits(self, store: Store) -> None:
        """Read every completion marker of the output (one row per committed item)."""
        def load() -> None:
            markers = store.markers_sql(self.con)
            self._exec("DELETE FROM done")
            if markers is not None:
                self._exec("INSERT INTO done SELECT commit_id, source_uri, media_type,"
                           f" regexp_replace(item_key, '\\|[^|]*$', '') FROM {markers}")

        retry_transient(load)

    def resolve(self, stat: StatFn) -> list[str]:
        """Dedup the inputs, learn unknown versions of committed ones, find stale commits.

        `stat` maps tables of source_uri to tables of (source_uri, size_bytes, version);
        the pipeline runs it on Ray workers. Returns the ids of commits to drop: they
        hold an input whose size or version changed, and every item in them is redone.
        """
        self._dedup()
        self._stat_unknown(stat)
        self._exec(f"""CREATE TABLE work AS SELECT *, TRUE AS listed,
            CASE WHEN size_bytes IS NULL OR version IS NULL THEN NULL ELSE {_VKEY} END AS vkey
            FROM items""")
        self._exec("DROP TABLE items")
        stale = [row[0] for row in self._exec("""
            SELECT DISTINCT d.commit_id FROM done d JOIN work w USING (source_uri)
            WHERE w.vkey IS NOT NULL AND d.vkey <> w.vkey ORDER BY 1""")]
        if stale:
            self.con.register("stale", pa.table({"commit_id": pa.array(stale, pa.string())}))
            # Items of a dropped commit that this run did not list are redone too.
            self._exec("""INSERT INTO work
                SELECT (SELECT coalesce(max(ord), 0) FROM work) + row_number()
                           OVER (ORDER BY source_uri),
                       source_uri, any_value(media_type), NULL, NULL, FALSE, NULL
                FROM done
                WHERE commit_id IN (SELECT commit_id FROM stale)
                  AND source_uri NOT IN (SELECT source_uri FROM work)
                GROUP BY source_uri""")
            self._exec("DELETE FROM done WHERE commit_id IN (SELECT commit_id FROM stale)")
            self.con.unregister("stale")
        self.counts["stale_commits"] = len(stale)
        self.counts["inputs"] = self._count("SELECT count(*) FROM work WHERE listed")
        self._exec(_TODO)
        self.counts["todo"] = self._count("SELECT count(*) FROM todo")
        self.counts["skipped_done"] = self.counts["inputs"] - self._count(
            "SELECT count(*) FROM todo WHERE listed")
        return stale

    def _dedup(self) -> None:
        """`items`: the first listing of each URI, in hash partitions of DEDUP_ROWS rows.

        A grouped aggregate, not a window (the window over a million distinct URIs does
        not fit in a small memory limit), and one per partition: under a 64 MB limit,
        DuckDB 2.0's aggregate over 10M distinct URIs fails with OutOfMemoryException
        even on one thread, instead of spilling. Each partition is a scan of `cand`.
        """
        parts = max(1, math.ceil(self._rows / DEDUP_ROWS))
        self._exec("""CREATE TABLE items (ord BIGINT, source_uri VARCHAR, media_type VARCHAR,
                      size_bytes BIGINT, version VARCHAR)""")
        for part in range(parts):
            where = f"WHERE hash(source_uri) % {parts} = {part}" if parts > 1 else ""
            self._exec(f"""INSERT INTO items SELECT min(ord), source_uri,
                    arg_min(media_type, ord), arg_min(size_bytes, ord), arg_min(version, ord)
                FROM cand {where} GROUP BY source_uri""")
        self._exec("DROP TABLE cand")

    def _stat_unknown(self, stat: StatFn) -> None:
        """Stat inputs with no size/version that have a commit: were they changed?"""
        import pyarrow.parquet as pq

        need = os.path.join(self.dir, "need.parquet")
        self._exec(f"""COPY (SELECT source_uri FROM items i
            WHERE (size_bytes IS NULL OR version IS NULL)
              AND EXISTS (SELECT 1 FROM done d WHERE d.source_uri = i.source_uri))
            TO '{sql_str(need)}' (FORMAT parquet)""")
        batches = (pa.Table.from_batches([b]) for b in
                   pq.ParquetFile(need).iter_batches(batch_size=STAT_BATCH_ROWS))
        self._exec("CREATE TABLE stat (source_uri VARCHAR, size_bytes BIGINT,"
                         " version VARCHAR)")
        for result in stat(batches):
            self.con.register("result", result)
            self._exec("INSERT INTO stat SELECT source_uri, size_bytes, version"
                             " FROM result")
            self.con.unregister("result")
        self._exec("""UPDATE items SET size_bytes = s.size_bytes, version = s.version
            FROM stat s WHERE items.source_uri = s.source_uri""")

    def todo(self, rows: int = TODO_BATCH_ROWS) -> Iterator[pa.Table]:
        """The work left, in listing order, as tables of at most `rows` rows.

        DuckDB sorts it into a Parquet spill file, one range of SORT_ROWS listing positions
        at a time, and each file is read one row group at a time: a streamed query result
        would hold the whole sorted result in memory, and one external sort of 10M rows
        needs more than the memory limit (DuckDB 2.0 fails to pin its blocks under 40 MB).
        """
        import pyarrow.parquet as pq

        path = os.path.join(self.dir, "todo.parquet")
        end = self._count("SELECT coalesce(max(ord) + 1, 0) FROM todo")
        for start in range(0, end, SORT_ROWS):
            self._exec(f"""COPY (SELECT * EXCLUDE (ord, listed) FROM todo
                WHERE ord >= {start} AND ord < {start + SORT_ROWS} ORDER BY ord)
                TO '{sql_str(path)}' (FORMAT parquet, ROW_GROUP_SIZE {rows})""")
            # Neither pre-buffering nor reader threads: with either, pyarrow keeps what it
            # read ahead (a 10M-row file grew the reader by 470 MB; without, by 7 MB).
            reader = pq.ParquetFile(path, pre_buffer=False)
            for batch in reader.iter_batches(batch_size=rows, use_threads=False):
                yield pa.Table.from_batches([batch])
                pa.default_memory_pool().release_unused()  # or the allocator keeps it
            reader.close()
            os.remove(path)

    def _exec(self, sql: str) -> list[tuple]:
        """Run one statement to completion (DuckDB allows one pending result)."""
        return self.con.execute(sql).fetchall()

    def _count(self, sql: str) -> int:
        return int(self._exec(sql)[0][0])


def limited_connection(database: str = ":memory:", memory_limit: str = MEMORY_LIMIT) -> Any:
    """A DuckDB connection under the planning limits (MEMORY_LIMIT, THREADS)."""
    import duckdb

    con = duckdb.connect(database)
    con.execute(f"SET memory_limit = '{memory_limit}'").fetchall()
    con.execute(f"SET threads = {THREADS}").fetchall()
    return con


_TALLY = """count(*), count(*) FILTER (WHERE status = 'ok'),
    count(*) FILTER (WHERE status = 'partial'), count(*) FILTER (WHERE status = 'error'),
    coalesce(sum(n_faces), 0)"""


def commit_summary(store: Store, run_id: str) -> dict[str, Any]:
    """Tallies of every commit and of this run's, and where this run's items ran."""
    con = limited_connection()
    markers = retry_transient(store.markers_sql, con)
    empty = {"totals": _tally((0, 0, 0, 0, 0)), "this_run": _tally((0, 0, 0, 0, 0)),
             "detect": {}, "classify": {}}
    if markers is None:
        return empty
    run = f"run_id = '{sql_str(run_id)}'"
    out = {"totals": _tally(con.execute(f"SELECT {_TALLY} FROM {markers}").fetchall()[0]),
           "this_run": _tally(con.execute(
               f"SELECT {_TALLY} FROM {markers} WHERE {run}").fetchall()[0])}
    for stage in ("detect", "classify"):  # a "worker" error row ran on no node
        rows = con.execute(f"SELECT {stage}_node, count(*) FROM {markers} WHERE {run} "
                           f"AND {stage}_node IS NOT NULL GROUP BY 1 ORDER BY 1").fetchall()
        out[stage] = {str(node): {"items": int(n)} for node, n in rows}
    con.close()
    return out


def _tally(row: tuple) -> dict[str, int]:
    return dict(zip(("media", "ok", "partial", "errors", "faces"), (int(v) for v in row)))


def stat_table(table: pa.Table, storage_options: dict[str, Any]) -> pa.Table:
    """(source_uri, size_bytes, version) for each URI; (0, '') when it cannot be stat'ed."""
    from concurrent.futures import ThreadPoolExecutor

    from fer_batch.sources import stat_object

    def one(uri: str) -> tuple[int, str]:
        try:
            return stat_object(uri, storage_options)
        except Exception:  # noqa: BLE001 - a missing object is redone and becomes an error row
            return 0, ""

    uris = table.column("source_uri").to_pylist()
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, uris))
    return pa.table({"source_uri": pa.array(uris, pa.string()),
                     "size_bytes": pa.array([r[0] for r in results], pa.int64()),
                     "version": pa.array([r[1] for r in results], pa.string())})


def stat_on_workers(storage_options: dict[str, Any], in_flight: int = 8) -> StatFn:
    """A StatFn running `stat_table` as Ray tasks, at most `in_flight` at a time.

    It runs before any detection actor exists, so the tasks find free CPUs.
    """

    def stat(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        import ray

        task = ray.remote(num_cpus=0.25, max_retries=3)(stat_table)
        pending: list[Any] = []
        for table in tables:
            pending.append(task.remote(table, storage_options))
            if len(pending) >= in_flight:
                ready, pending = ray.wait(pending, num_returns=1)
                yield ray.get(ready[0])
        for ref in pending:
            yield ray.get(ref)

    return stat
