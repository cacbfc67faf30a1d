"""`fer-batch bench`: what the pipeline delivers, and how far that is from the machine's ceiling.

Stage costs are timed in plain loops on one pinned core; the ceiling is what every
core could do if the pipeline added no overhead. End-to-end runs (cold in a fresh
process, warm inside one Ray session) are divided by that ceiling. Peers, memory
growth and a GPU sweep complete the picture. Importing this package does nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BenchConfig", "run_bench"]


def __getattr__(name: str) -> Any:
    """BenchConfig and run_bench, imported on first use: a bench module run on its own (or
    imported by a Ray worker, as bench.floor's setup hook is) does not pay for the whole
    bench's imports."""
    if name == "BenchConfig":
        from fer_batch.bench.config import BenchConfig

        return BenchConfig
    if name == "run_bench":
        from fer_batch.bench.run import run_bench

        return run_bench
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
