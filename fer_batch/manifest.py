"""Manifests: input lists read in chunks, so nobody has to list millions of objects.

A manifest is a Parquet, CSV or plain-text file (local or remote) naming one input
per row: column ``uri`` or ``source_uri`` (else the first column), or one URI per
line. Optional columns ``size`` and ``etag`` (or ``version``) save a stat per object;
without them, the worker that reads an object stats it. Relative paths are taken
relative to the manifest's own folder, so a manifest travels with its files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from fer_batch.records import item_key
from fer_batch.schema import media_type_of
from fer_batch.sources import (
    ListingStats,
    filesystem,
    redact,
    retry_transient,
    stat_object,
    to_uri,
)

MANIFEST_CHUNK = 10_000
URI_COLUMNS = ("uri", "source_uri")
VERSION_COLUMNS = ("etag", "version")

ENTRY_SCHEMA = pa.schema([
    ("source_uri", pa.string()),
    ("media_type", pa.string()),
    ("size_bytes", pa.int64()),
    ("version", pa.string()),
])
"""One listed input; size_bytes and version are null when only a stat can tell."""


def manifest_format(uri: str) -> str:
    """'parquet', 'csv' or 'text', from the name (compression suffixes ignored)."""
    name = uri.lower().removesuffix(".gz").removesuffix(".bz2").removesuffix(".zst")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv" if name.endswith(".csv") else "text"


def check_manifest(uri: str | None, storage_options: dict[str, Any]) -> None:
    """--manifest must exist before anything starts."""
    if uri is None:
        return
    fs, path = filesystem(uri, storage_options)
    try:
        found = retry_transient(fs.isfile, path)
    except PermissionError as e:
        raise ValueError(f"--manifest cannot be read (permission denied: "
                         f"{redact(str(e), storage_options)}): {uri!r}") from None
    if not found:
        raise ValueError(f"--manifest does not exist or is not a file: {uri!r}")


def iter_manifest(uri: str, storage_options: dict[str, Any], stats: ListingStats,
                  chunk: int = MANIFEST_CHUNK) -> Iterator[pa.Table]:
    """Entries (ENTRY_SCHEMA) of a manifest, `chunk` rows at a time, in manifest order."""
    fs, path = filesystem(uri, storage_options)
    base = _parent_uri(fs, path)
    fmt = manifest_format(uri)
    reader = {"parquet": _parquet_batches, "csv": _csv_batches, "text": _text_batches}[fmt]
    for batch in reader(fs, path, chunk, uri):
        table = entries_table(batch, base, stats)
        if len(table):
            yield table


def _parent_uri(fs: Any, path: str) -> str:
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    return to_uri(fs, parent or ".")


def _open(fs: Any, path: str, mode: str) -> Any:
    return retry_transient(fs.open, path, mode, compression="infer")


def _parquet_batches(fs: Any, path: str, chunk: int, uri: str) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    with _open(fs, path, "rb") as f:
        pf = pq.ParquetFile(f)
        columns = _pick_columns(pf.schema_arrow.names, uri)
        for batch in pf.iter_batches(batch_size=chunk, columns=list(columns.values())):
            yield _rename(pa.Table.from_batches([batch]), columns)


def _csv_batches(fs: Any, path: str, chunk: int, uri: str) -> Iterator[pa.Table]:
    """CSV with a header row; a header-less list of media paths also works."""
    import csv as pycsv

    from pyarrow import csv

    with _open(fs, path, "rb") as f:
        names = next(pycsv.reader([f.readline().decode("utf-8-sig")]), [])
        columns = _pick_columns(names, uri)
        if not set(columns) - {"source_uri"} and media_type_of(names[0]) is not None:
            yield pa.table({"source_uri": [names[0]]})  # no header: the first row is data
            names = ["source_uri", *(f"c{i}" for i in range(1, len(names)))]
            columns = {"source_uri": "source_uri"}
        reader = csv.open_csv(
            f, read_options=csv.ReadOptions(column_names=names, block_size=1 << 20),
            convert_options=csv.ConvertOptions(
                include_columns=list(columns.values()),
                column_types={name: pa.string() for name in names}))
        for batch in reader:
            yield _rename(pa.Table.from_batches([batch]), columns)


def _text_batches(fs: Any, path: str, chunk: int, uri: str) -> Iterator[pa.Table]:
    with _open(fs, path, "rt") as f:
        lines: list[str] = []
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
            if len(lines) >= chunk:
                yield pa.table({"source_uri": pa.array(lines, pa.string())})
                lines = []
        if lines:
            yield pa.table({"source_uri": pa.array(lines, pa.string())})


def _pick_columns(names: list[str], uri: str) -> dict[str, str]:
    """{our name: manifest column} for the URI and the optional size and version."""
    if not names:
        raise ValueError(f"--manifest has no columns: {uri!r}")
    lower = {name.lower(): name for name in names}
    picked = {"source_uri": next((lower[c] for c in URI_COLUMNS if c in lower), names[0])}
    if "size" in lower:
        picked["size_bytes"] = lower["size"]
    version = next((lower[c] for c in VERSION_COLUMNS if c in lower), None)
    if version is not None:
        picked["version"] = version
    return picked


def _rename(table: pa.Table, columns: dict[str, str]) -> pa.Table:
    return pa.table({ours: table.column(theirs) for ours, theirs in columns.items()})


def entries_table(batch: pa.Table, base: str, stats: ListingStats) -> pa.Table:
    """Normalised entries: canonical URIs, media type, size and version when both are known."""
    uris, types, keep = [], [], []
    for i, raw in enumerate(batch.column("source_uri").to_pylist()):
        uri = normalise_uri(raw, base) if raw else None
        media_type = media_type_of(uri) if uri else None
        if media_type is None:
            stats.skipped_non_media += 1
            continue
        uris.append(uri)
        types.append(media_type)
        keep.append(i)
    size, version = _known_versions(batch.take(pa.array(keep, pa.int64())))
    return pa.table({"source_uri": pa.array(uris, pa.string()),
                     "media_type": pa.array(types, pa.string()),
                     "size_bytes": size, "version": version}, schema=ENTRY_SCHEMA)


def _known_versions(batch: pa.Table) -> tuple[pa.Array, pa.Array]:
    """Size and version columns; both null for a row unless the manifest gives both."""
    import pyarrow.compute as pc

    n = len(batch)
    if "size_bytes" not in batch.column_names or "version" not in batch.column_names:
        return pa.nulls(n, pa.int64()), pa.nulls(n, pa.string())
    text = pc.utf8_trim_whitespace(pc.cast(batch.column("size_bytes"), pa.string()))
    digits = pc.match_substring_regex(text, r"^[0-9]+$")  # anything else: ask a stat
    size = pc.cast(pc.if_else(digits, text, None), pa.int64())
    version = pc.utf8_trim(pc.cast(batch.column("version"), pa.string()), characters='" ')
    known = pc.and_(pc.is_valid(size), pc.is_valid(version))
    return pc.if_else(known, size, None), pc.if_else(known, version, None)


def normalise_uri(raw: str, base: str) -> str:
    """The URI the tables use: protocol://path for remote ones, an absolute path locally.

    Remote keys are kept byte for byte (``a/../x.jpg`` is a valid, distinct S3 key);
    local paths are made absolute, the way the operating system resolves them.
    """
    raw = raw.strip()
    if raw.startswith("file://"):
        raw = raw[len("file://"):]
    if "://" in raw:
        return raw
    if os.path.isabs(raw):
        return os.path.abspath(raw)
    if "://" in base:
        return f"{base.rstrip('/')}/{raw}"
    return os.path.abspath(os.path.join(base, raw))


def fill_versions(items: dict[str, np.ndarray], storage_options: dict[str, Any]
                  ) -> dict[str, np.ndarray]:
    """Stat the items the driver could not (size_bytes < 0) and give them their item_key.

    Runs in the detection workers, so a remote manifest costs the driver no stat at
    all. An object that cannot be stat'ed keeps size 0 and an empty version; its read
    fails the same way and becomes the item's error row.
    """
    sizes = np.asarray(items["size_bytes"], np.int64)
    if not (sizes < 0).any():
        return items
    out = dict(items)
    out["size_bytes"] = sizes.copy()
    out["version"] = np.array(items["version"], dtype=object)
    out["item_key"] = np.array(items["item_key"], dtype=object)
    for i in np.flatnonzero(sizes < 0):
        uri = str(items["source_uri"][i])
        try:
            size, version = stat_object(uri, storage_options)
        except Exception:  # noqa: BLE001 - the read reports it, as this item's error row
            size, version = 0, ""
        out["size_bytes"][i], out["version"][i] = size, version
        out["item_key"][i] = item_key(uri, size, version, int(items["segment"][i]))
    return out
