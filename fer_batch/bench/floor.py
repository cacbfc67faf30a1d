"""What a speed target against `fer` leaves the detect step, measured on this machine.

Three kinds of cold process over the same local images, each timed from exec to exit and
run in turn `--rounds` times (this host's speed drifts between minutes, so each round
compares like with like):

- `fer`'s own loop (bench/peer_fer.py), the peer of issue 11's targets;
- `fer-batch annotate`, as a user runs it;
- the floor: `fer-batch annotate` whose detect step finds nothing (`no_detection`, set up
  in every Ray worker through Ray's `worker_process_setup_hook`). It pays everything a run
  pays but detection and what faces cost: Python and Ray's start, the actors and their
  model loads, listing, reading and decoding every file, the tables' writes and commits,
  and the run's tail.

From them, per target of `--cold` x `fer` cold and `--steady` x `fer` in steady state:

- `cold_detect_budget_ms`: the CPU milliseconds per file left to detection (and to the
  crops and classification of its faces) for a cold run `--cold` x faster than `fer`'s:
  (fer's wall / cold - the floor's wall) x cores / files. Zero or less: no detector meets it.
- `steady_file_budget_ms`: the CPU milliseconds per file that every step together
  (read, decode, detect, crop, classify) may cost for `--steady` x `fer`'s files/s with
  no fixed cost at all: cores x fer's wall / (steady x files). Set it beside the stage
  loop's per-file costs (`fer-batch bench`) and `python -m fer_batch.bench.pyramid`'s
  detect milliseconds per photo.

    python -m fer_batch.bench.floor /tmp/photos380 [--rounds 2] [--cold 4] [--steady 8] \\
        [--peer-python PY] [--output bench-out/floor.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

SETUP_HOOK = "fer_batch.bench.floor.no_detection"
STAGES = "fer_batch.stages"


def _nothing(pixels: Any, scale: float) -> Any:
    from fer_batch.detect import EMPTY

    return EMPTY


def _patch(stages: Any) -> None:
    stages.make_detector = lambda cfg: _nothing


class _PatchOnImport(MetaPathFinder):
    """Patches fer_batch.stages as it is imported, so that the hook costs nothing in the
    workers that never import it (Ray Data's own helpers)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> ModuleSpec | None:
        if name != STAGES:
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


def no_detection() -> None:
    """Ray worker setup hook: every detector the stages build in this process finds no
    face, at no cost. It imports only the standard library."""
    if STAGES in sys.modules:
        _patch(sys.modules[STAGES])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def annotate_without_detection(argv: list[str]) -> int:
    """`fer-batch annotate ARGV` in a Ray of its own whose workers detect nothing.

    The hook is handed to the workers the way Ray hands them a `worker_process_setup_hook`
    (ray/_private/workers/default_worker.py reads it from this environment variable), not
    through `ray.init(runtime_env=...)`: with a job-level runtime_env the floor of 380 photos
    read 17.1 and 18.6 s, against 12.6 and 13.3 s for the same run with the detector
    patched in the source. The hook is lazy for the same reason: importing the stages in
    every worker at its start added about 1.5 s."""
    from ray._private import ray_constants

    from fer_batch import cli

    os.environ[ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR] = SETUP_HOOK  # inherited
    no_detection()  # the driver builds no detector, but it would find nothing either
    return cli.main(["annotate", *argv])


def timed(cmd: list[str], log: Path) -> float:
    """Seconds from exec to exit of `cmd`, its output in `log`; a failure raises with its
    tail."""
    env = {**os.environ, "RAY_ADDRESS": ""}  # a Ray of its own, even beside a cluster
    with log.open("wb") as sink:
        start = time.perf_counter()
        rc = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env,
                            check=False).returncode
        wall = time.perf_counter() - start
    if rc != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"exit {rc}: {' '.join(cmd)}\n{tail}")
    return wall


def budgets(fer_wall: float, floor_wall: float, files: int, cores: int, cold: float,
            steady: float) -> dict[str, float]:
    """The per-file CPU milliseconds the targets leave (see the module's docstring)."""
    return {
        "cold_detect_budget_ms": 1000 * (fer_wall / cold - floor_wall) * cores / files,
        "steady_file_budget_ms": 1000 * cores * fer_wall / (steady * files),
    }


def image_files(root: str) -> list[str]:
    """The images a run over `root` annotates, listed as the pipeline lists them; videos are
    refused (`fer`'s loop reads images only, so the files would differ)."""
    from fer_batch.sources import ListingStats, iter_media

    entries = list(iter_media((root,), {}, ListingStats()))
    videos = [e["source_uri"] for e in entries if e["media_type"] != "image"]
    if videos:
        raise ValueError(f"input must hold images only (fer's loop reads no video); "
                         f"received: {root!r}, with {videos[0]!r}")
    return [e["source_uri"] for e in entries]


def measure(root: str, rounds: int, cold: float, steady: float, peer_python: str | None,
            work: Path) -> dict[str, Any]:
    from fer_batch.bench.endtoend import output_counts
    from fer_batch.bench.peers import PEER_SCRIPT

    files = image_files(root)
    if not files:
        raise ValueError(f"input holds no images; received: {root!r}")
    listing = work / "files.txt"
    listing.write_text("\n".join(files) + "\n")
    cores = os.cpu_count() or 1
    python = sys.executable
    annotate = ["--address", "local", "--no-progress"]
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        row: dict[str, Any] = {"load_average": os.getloadavg()[0]}
        row["fer_s"] = timed([peer_python or python, str(PEER_SCRIPT), str(listing),
                              str(work / f"fer{r}.json")], work / f"fer{r}.log")
        for name, cmd in (("fer_batch", [python, "-m", "fer_batch.cli", "annotate"]),
                          ("floor", [python, "-m", "fer_batch.bench.floor", "--annotate"])):
            out = work / f"{name}{r}"
            row[f"{name}_s"] = timed([*cmd, root, "--output", str(out), *annotate],
                                     work / f"{name}{r}.log")
            row[f"{name}_counts"] = output_counts(str(out))
        row.update(budgets(row["fer_s"], row["floor_s"], len(files), cores, cold, steady))
        row["fer_batch_over_fer"] = row["fer_s"] / row["fer_batch_s"]
        runs.append(row)
    return {"input": root, "files": len(files), "cores": cores, "cold": cold,
            "steady": steady, "rounds": runs}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--annotate"]:
        return annotate_without_detection(argv[1:])
    p = argparse.ArgumentParser(prog="python -m fer_batch.bench.floor")
    p.add_argument("input", help="a local folder of images")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cold", type=float, default=4.0, help="the cold target, x fer")
    p.add_argument("--steady", type=float, default=8.0, help="the steady target, x fer")
    p.add_argument("--peer-python", default=None,
                   help="the Python that has `fer` (default: this one)")
    p.add_argument("--output", default=None, help="write the JSON here too")
    args = p.parse_args(argv)
    for option, value in (("--rounds", args.rounds), ("--cold", args.cold),
                          ("--steady", args.steady)):
        if not value > 0:
            raise ValueError(f"{option} must be > 0; received: {value!r}")
    if not Path(args.input).is_dir():
        raise ValueError(f"input must be a local folder of images; received: {args.input!r}")
    with tempfile.TemporaryDirectory(prefix="fer-batch-floor-") as work:
        result = measure(args.input, args.rounds, args.cold, args.steady, args.peer_python,
                         Path(work))
    text = json.dumps(result, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
