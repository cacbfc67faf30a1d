"""Driver memory against manifest size: plan N lines, stream the work out, report peak RSS.

Each size runs in a fresh process (peak RSS only ever grows), through the same code
the annotate driver runs before its first wave: the manifest read in chunks, the
DuckDB plan (dedup, anti-join against the output's markers) and the work left
streamed back as the blocks Ray receives. The listed objects need not exist.

    python -m fer_batch.bench.manifest_memory 10000 1000000
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def write_manifest(path: Path, lines: int) -> Path:
    """A text manifest of `lines` distinct S3 URIs (no size column: the real worst case)."""
    with open(path, "w") as f:
        for i in range(lines):
            f.write(f"s3://bucket/archive/{i % 997:04d}/img_{i:09d}.jpg\n")
    return path


def plan_once(manifest: str, output: str) -> dict[str, Any]:
    """In this process: plan `manifest` into `output` and stream every block out."""
    from fer_batch.config import AnnotateConfig
    from fer_batch.datasets import MAX_BLOCK_ROWS, blocks, work_items
    from fer_batch.pipeline import plan_work
    from fer_batch.plan import WorkPlan
    from fer_batch.sources import ListingStats
    from fer_batch.store import Store

    before = _peak_mb()
    started = time.perf_counter()
    cfg = AnnotateConfig(inputs=(), output=output, manifest=manifest)
    with WorkPlan() as work:
        # Nothing is committed in a fresh output, so nothing needs a stat (no Ray needed).
        plan_work(cfg, Store.open(cfg.output, cfg.storage_options), work, ListingStats(),
                  stat=_no_stat)
        streamed = sum(len(b) for b in blocks((work_items(t) for t in work.todo()),
                                              MAX_BLOCK_ROWS))
        counts = dict(work.counts)
    return {"lines": counts["inputs"], "streamed": streamed, "import_rss_mb": round(before, 1),
            "peak_rss_mb": round(_peak_mb(), 1),
            "wall_s": round(time.perf_counter() - started, 2)}


def _no_stat(tables: Any) -> Any:
    for _ in tables:
        raise AssertionError("a fresh output has no commits to stat against")
    return iter(())


def _peak_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across
    exec, so a child of a big process would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def measure(sizes: tuple[int, ...], work: Path) -> dict[str, Any]:
    """Peak driver RSS per manifest size, each in its own process; growth vs the smallest."""
    runs = []
    for lines in sorted(sizes):
        manifest = write_manifest(work / f"manifest-{lines}.txt", lines)
        out = subprocess.run(
            [sys.executable, "-m", "fer_batch.bench.manifest_memory", "--one", str(manifest),
             str(work / f"out-{lines}")], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"planning {lines} lines failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        manifest.unlink()
    base = runs[0]["peak_rss_mb"]
    return {"runs": runs, "growth": round(runs[-1]["peak_rss_mb"] / base - 1, 4),
            "timed": "planning and streaming the work of a text manifest in a fresh process"}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"]:
        print(json.dumps(plan_once(argv[1], argv[2])))
        return 0
    sizes = tuple(int(a) for a in argv) or (10_000, 1_000_000)
    with tempfile.TemporaryDirectory(prefix="fer-batch-manifest-") as tmp:
        print(json.dumps(measure(sizes, Path(tmp)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
