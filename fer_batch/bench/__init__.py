"""`fer-batch bench`: what the pipeline delivers, and how far that is from the machine's ceiling.

Stage costs are timed in plain loops on one pinned core; the ceiling is what every
core could do if the pipeline added no overhead. End-to-end runs (cold in a fresh
process, warm inside one Ray session) are divided by that ceiling. Peers, memory
growth and a GPU sweep complete the picture. Importing this package does nothing.
"""

from fer_batch.bench.config import BenchConfig
from fer_batch.bench.run import run_bench

__all__ = ["BenchConfig", "run_bench"]
