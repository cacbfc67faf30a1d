"""The output invariant every annotate run must satisfy, as one reusable check."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from fer_batch.schema import SCHEMAS


def read(out: Path, table: str):
    return pq.read_table(out / table, schema=SCHEMAS[table]).to_pandas()


def check_invariant(out: Path, expected_uris: set[str] | None = None) -> dict:
    """Each input once in media/, errors for error rows, n_faces = face rows, counts agree."""
    media, faces, errors = read(out, "media"), read(out, "faces"), read(out, "errors")
    record = json.loads((out / "_run.json").read_text())
    assert not media["source_uri"].duplicated().any(), "an input appears twice in media/"
    if expected_uris is not None:
        assert set(media["source_uri"]) == expected_uris
    per_file = faces.groupby("source_uri").size()
    for row in media.itertuples():
        assert row.n_faces == per_file.get(row.source_uri, 0), row.source_uri
        if row.status == "error":
            assert (errors["source_uri"] == row.source_uri).any(), row.source_uri
    assert not faces.duplicated(["source_uri", "frame_index", "face_index"]).any()
    totals = record["totals"]
    assert totals["media"] == len(media)
    assert totals["faces"] == len(faces)
    assert totals["errors"] == int((media["status"] == "error").sum())
    assert totals["ok"] == int((media["status"] == "ok").sum())
    for table, schema in SCHEMAS.items():
        for part in (out / table).glob("*.parquet"):
            assert pq.read_schema(part).remove_metadata() == schema, f"{part} schema drifted"
    return {"media": media, "faces": faces, "errors": errors, "record": record}
