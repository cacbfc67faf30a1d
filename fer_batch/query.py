"""DuckDB over an output: views `faces`, `media`, `errors` (and `tracks`) on its Parquet."""

from __future__ import annotations

from typing import Any

from fer_batch.schema import TABLES
from fer_batch.sink import join
from fer_batch.sources import filesystem


def connect(output: str, storage_options: dict[str, Any] | None = None) -> Any:
    """An in-memory DuckDB connection with one view per table found under `output`."""
    import duckdb

    fs, root = filesystem(output, storage_options or {})
    if not fs.exists(join(root, "media")):
        raise ValueError(f"OUT has no fer-batch tables (no media/ under it): {output!r}")
    con = duckdb.connect()
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = root
    if protocol not in ("file", "local"):
        con.register_filesystem(fs)  # s3fs & co. through fsspec: no DuckDB extension download
        prefix = f"{protocol}://{root}"
    for name in TABLES:
        if fs.exists(join(root, name)):
            pattern = join(prefix, name, "*.parquet")
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{pattern}')")
    return con


def run_query(output: str, sql: str, storage_options: dict[str, Any] | None = None) -> str:
    """Run `sql` against the output's views and return the rendered table."""
    import duckdb

    con = connect(output, storage_options)
    try:
        return str(con.sql(sql))
    except duckdb.Error as e:
        raise ValueError(f"SQL failed: {e}") from e
