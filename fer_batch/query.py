"""DuckDB over an output: views `faces`, `media`, `errors` (and `tracks`) on its Parquet.

Readers see committed rows only: a part file counts when a completion marker names it
(`committed_files`), so a run killed between its parts and its marker never shows half a
commit, to `fer-batch query` or to the README's pandas, Polars and Spark recipes.
"""

from __future__ import annotations

import os
from typing import Any

from fer_batch.schema import SCHEMAS, TABLES
from fer_batch.sink import committed_ids
from fer_batch.sources import filesystem, is_local, protocol_of, retry_transient
from fer_batch.store import EMPTY_PART, commit_of_part, join


def committed_files(output: str, table: str, storage_options: dict[str, Any] | None = None,
                    ids: set[str] | None = None) -> list[str]:
    """The part files of `table` that a completion marker names (plus the empty part a
    finished run leaves for the schema), as paths or URLs that readers open as they are."""
    if table not in SCHEMAS:
        raise ValueError(f"table must be one of {tuple(SCHEMAS)}; received: {table!r}")
    storage_options = storage_options or {}
    fs, root = filesystem(output, storage_options)
    folder = join(root, table)
    if not retry_transient(fs.exists, folder):
        return []
    done = committed_ids(output, storage_options) if ids is None else ids
    files = []
    for path in sorted(retry_transient(fs.ls, folder, detail=False)):
        if commit_of_part(os.path.basename(path)) in done | {EMPTY_PART}:
            files.append(path if is_local(fs) else f"{protocol_of(fs)}://{path}")
    return files


def connect(output: str, storage_options: dict[str, Any] | None = None) -> Any:
    """An in-memory DuckDB connection with one view per table found under `output`."""
    import duckdb

    fs, root = filesystem(output, storage_options or {})
    if not fs.exists(join(root, "media")):
        raise ValueError(f"OUT has no fer-batch tables (no media/ under it): {output!r}")
    con = duckdb.connect()
    if not is_local(fs):
        con.register_filesystem(fs)  # s3fs & co. through fsspec: no DuckDB extension download
    ids = committed_ids(output, storage_options or {})
    for name in TABLES:
        files = committed_files(output, name, storage_options, ids)
        if files:
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listed}])")
        elif fs.exists(join(root, name)):  # nothing committed yet: the table, empty
            con.register(f"_{name}_empty", SCHEMAS[name].empty_table())
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_empty")
    return con


def run_query(output: str, sql: str, storage_options: dict[str, Any] | None = None) -> str:
    """Run `sql` against the output's views and return the rendered table."""
    import duckdb

    con = connect(output, storage_options)
    try:
        return str(con.sql(sql))
    except duckdb.Error as e:
        raise ValueError(f"SQL failed: {e}") from e
