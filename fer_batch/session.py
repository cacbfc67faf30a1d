"""The Ray session of a job (annotate, train, bench): started or joined once, and quiet.

Unless --verbose, Ray's own log lines stay in its session's log folder (printed once) and
what Ray's C++ core prints to the driver's stderr goes there too: the terminal shows
fer-batch's progress and summary only (fer_batch/progress.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from fer_batch.progress import NativeStderrTo


def init_ray(address: str | None, verbose: bool = False) -> None:
    """Start or join Ray. Unless `verbose`, Ray's own lines stay in its session's log
    folder (printed once): the terminal shows fer-batch's progress and summary only."""
    import ray

    if ray.is_initialized():
        return
    quiet_ray(verbose)
    # "local" starts a fresh Ray even when another one runs on this machine; a bare
    # ray.init() would attach to it. The embedded Ray of one job has no dashboard: it
    # costs a second of start-up and a share of the CPU (start Ray yourself, with
    # `ray start --head`, and pass --address for one).
    local = address in (None, "local")
    ray.init(address=address or "local", log_to_driver=verbose,
             logging_level="INFO" if verbose else "ERROR",
             **({"include_dashboard": False} if local else {}))
    if not verbose:
        quiet_ray(verbose)  # ray.init sets its loggers up again


def ray_logs_dir() -> str | None:
    """This driver's Ray session log folder (a private API, so None when it moves)."""
    import ray

    try:
        return str(ray._private.worker.global_worker.node.get_logs_dir_path())
    except AttributeError:
        return None


def quiet_terminal(verbose: bool) -> Any:
    """Unless `verbose`: say once where Ray's logs are, and send what Ray's C++ core prints
    to this process's stderr there (fer_batch/progress.py)."""
    logs = None if verbose else ray_logs_dir()
    if logs is None:
        return contextlib.nullcontext()
    print(f"[fer-batch] Ray's logs: {logs} (--verbose shows them here)", file=sys.stderr)
    return NativeStderrTo(os.path.join(logs, "fer-batch-driver.err"))


def quiet_ray(verbose: bool) -> None:
    """Ray's and Ray Data's loggers at ERROR, and Ray Data's progress bars off."""
    import logging

    level = logging.INFO if verbose else logging.ERROR
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray._private"):
        logging.getLogger(name).setLevel(level)
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
