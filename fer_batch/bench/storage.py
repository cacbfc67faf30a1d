"""The same inputs read from local disk and from an S3-protocol server, written back alike.

A moto server on 127.0.0.1 (the test extra installs it) holds a copy of the inputs;
one fresh `fer-batch annotate` process runs local -> local and another S3 -> S3.
Both are timed from exec to exit and their faces per file compared: the store must
change the speed, never the result. Part of `fer-batch bench --s3`, or alone:

    python -m fer_batch.bench.storage /tmp/photos380
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

BUCKET = "bench"


def measure(entries: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    """Local and S3 runs over the image and video files of `entries`."""
    if not all(os.path.isabs(e["source_uri"]) for e in entries):
        return {"skipped": "the S3 comparison copies local files; --input is remote"}
    try:
        from fer_batch.bench.s3server import moto_server
    except ImportError as e:
        return {"skipped": f"the S3 comparison needs moto[server] (make setup installs it): {e}"}
    import pyarrow.parquet as pq

    local = [Path(e["source_uri"]) for e in entries]
    root = Path(os.path.commonpath([str(p.parent) for p in local]))
    with moto_server() as s3:
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        for path in local:
            client.put_object(Bucket=BUCKET, Key=f"in/{path.relative_to(root)}",
                              Body=path.read_bytes())
        # The same files by manifest on both sides: exactly the entries, nothing else.
        (work / "local.txt").write_text("".join(f"{p}\n" for p in local))
        (work / "s3.txt").write_text("".join(
            f"s3://{BUCKET}/in/{p.relative_to(root)}\n" for p in local))
        fs = s3.fs()
        runs = {
            "local": _timed(work / "local.txt", str(work / "storage-local"), {}),
            "s3": _timed(work / "s3.txt", f"s3://{BUCKET}/out", s3.options),
        }
        s3_faces = pq.read_table(f"{BUCKET}/out/faces", filesystem=fs).column(
            "source_uri").to_pylist()
    local_faces = pq.read_table(work / "storage-local" / "faces").column(
        "source_uri").to_pylist()
    # Faces per file, keyed by the path below the input root on both sides.
    per_file = Counter(str(Path(uri).relative_to(root)) for uri in local_faces)
    per_file_s3 = Counter(uri.split(f"{BUCKET}/in/", 1)[1] for uri in s3_faces)
    return {**runs, "s3_over_local": runs["s3"]["files_per_s"] / runs["local"]["files_per_s"],
            "same_faces_per_file": per_file == per_file_s3,
            "timed": "whole `fer-batch annotate` processes; the S3 server runs on this machine"}


def _timed(manifest: Path, output: str, options: dict[str, Any]) -> dict[str, Any]:
    import fsspec

    cmd = [sys.executable, "-m", "fer_batch.cli", "annotate", "--manifest", str(manifest),
           "--output", output, "--address", "local", "--no-progress", "--overwrite",
           "--storage-options", json.dumps(options)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"storage run failed (exit {proc.returncode}): {output}\n"
                           f"{proc.stderr[-2000:]}")
    with fsspec.open(f"{output}/_run.json", "r", **options) as f:
        counts = json.load(f)["counts"]
    return {"files": counts["processed"], "faces": counts["faces"], "wall_s": wall,
            "files_per_s": counts["processed"] / wall}


def main(argv: list[str]) -> int:
    """python -m fer_batch.bench.storage INPUT...: the comparison alone, as JSON."""
    import tempfile

    from fer_batch.sources import ListingStats, iter_media

    entries = list(iter_media(tuple(argv), {}, ListingStats()))
    if not entries:
        raise SystemExit(f"no images or videos in {argv!r}")
    with tempfile.TemporaryDirectory(prefix="fer-batch-storage-") as tmp:
        print(json.dumps(measure(entries, Path(tmp)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
