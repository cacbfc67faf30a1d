"""DuckDB over an output: views `faces`, `media`, `errors` (and `tracks`) on its Parquet.

Readers see committed rows only: a part file counts when a completion marker names it
(`committed_files`), so a run killed between its parts and its marker never shows half a
commit, to `fer-batch query` or to the README's pandas, Polars and Spark recipes.
"""

from __future__ import annotations

from typing import Any

from fer_batch.schema import MEDIA, SCHEMAS, TABLES
from fer_batch.store import Store, sql_str


def committed_files(output: str, table: str,
                    storage_options: dict[str, Any] | None = None) -> list[str]:
    """The part files of `table` that a completion marker names (plus the empty part a
    finished run leaves for the schema), as paths or URLs that readers open as they are:
    what the README's pandas, Polars and Spark recipes read."""
    return Store.open(output, storage_options).committed_files(table)


def connect(output: str, storage_options: dict[str, Any] | None = None) -> Any:
    """An in-memory DuckDB connection with one view per table found under `output`."""
    import duckdb

    store = Store.open(output, storage_options)
    if not store.exists(store.path(MEDIA)):
        raise ValueError(f"OUT has no fer-batch tables (no media/ under it): {output!r}")
    con = duckdb.connect()
    if not store.local:
        con.register_filesystem(store.fs)  # s3fs & co. through fsspec: no DuckDB extension
    ids = store.committed_ids()
    for name in TABLES:
        files = store.committed_files(name, ids)
        if files:
            listed = ", ".join(f"'{sql_str(f)}'" for f in files)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listed}])")
        elif store.exists(store.path(name)):  # nothing committed yet: the table, empty
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
