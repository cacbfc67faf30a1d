"""The bench's outputs: the JSON with every figure, a bar chart, and a comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HEADLINES = (
    "ceiling.files_per_s",
    "ceiling.faces_per_s",
    "end_to_end.warm.files_per_s",
    "end_to_end.warm.efficiency",
    "end_to_end.warm_marginal.files_per_s",
    "end_to_end.warm_marginal.efficiency",
    "end_to_end.cold.files_per_s",
    "end_to_end.cold.efficiency",
    "memory.driver_growth",
    "memory.actor_growth",
    "manifest_memory.growth",
    "storage.s3_over_local",
    "peers.fer.speed_ratio_cold",
    "peers.fer.share_of_fer_faces_we_found",
)


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")


def flatten(tree: Any, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf as {"dotted.path": value}."""
    if isinstance(tree, dict):
        out: dict[str, float] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix.rstrip("."): float(tree)}
    return {}


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per figure that differs between the runs: old -> new and the relative change."""
    before, after = flatten(old), flatten(new)
    lines = []
    for key in sorted(before.keys() & after.keys()):
        a, b = before[key], after[key]
        if a == b or key.startswith(("host.", "input.", "version")):
            continue
        change = f"{(b - a) / abs(a):+.1%}" if a else "n/a"
        lines.append(f"{key:60} {a:12.4g} -> {b:12.4g}  {change}")
    return lines


BUSY_LOAD_PER_CORE = 0.25


def load_warning(host: dict[str, Any]) -> str | None:
    """A warning when the machine was busy as the bench began: the stage loop (and so the
    ceiling) runs first and is the figure most sensitive to other load."""
    cpus = host.get("cpus") or 1
    load = (host.get("load_avg_start") or [0.0])[0]
    if load <= BUSY_LOAD_PER_CORE * cpus:
        return None
    return (f"warning: 1-minute load average {load:.2f} on {cpus} cores when the bench began; "
            "the stage rates and the ceiling may be low, and every efficiency high. Rerun "
            "on a quiet machine.")


def summary(result: dict[str, Any]) -> list[str]:
    """The headline figures, one per line, for the terminal."""
    flat = flatten(result)
    lines = [f"{key:45} {flat[key]:.4g}" for key in HEADLINES if key in flat]
    for name, row in result.get("detectors", {}).get("by_detector", {}).items():
        line = (f"detector {name}: detect {row['per_file_ms']['detect']:.4g} ms/file, "
                f"ceiling {row['ceiling_files_per_s']:.4g} files/s")
        if "by_eye" in row:
            eye = row["by_eye"]
            line += f", by eye {eye['found']}/{eye['by_eye']} found, {eye['extra']} extra"
        lines.append(line)
    if warning := load_warning(result.get("host", {})):
        lines.append(warning)
    for section in ("peers", "gpu", "video", "manifest_memory", "storage"):
        skipped = result.get(section, {}).get("skipped")
        if skipped:
            lines.append(f"{section} skipped: {skipped}")
    return lines


def chart(result: dict[str, Any], path: Path) -> None:
    """Horizontal bars in files/s on all cores: each step alone, the ceiling, end to end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cores = result["ceiling"]["cores"]
    per = result["stages"]["per_file"]
    classify_s = result["ceiling"]["per_file_classify_s"]
    bars = {f"{step} alone": cores / per[step] for step in ("decode", "detect", "crop")}
    if classify_s > 0:
        bars["classify alone"] = cores / classify_s
    bars["ceiling"] = result["ceiling"]["files_per_s"]
    runs = {"warm_marginal": "#1b9e77", "warm": "#66c2a5", "cold": "#fc8d62"}
    runs = {run: color for run, color in runs.items() if run in result["end_to_end"]}
    for run in runs:
        bars[f"end to end ({run.replace('_', ', ')})"] = result["end_to_end"][run]["files_per_s"]
    colors = ["#8da0cb"] * (len(bars) - len(runs) - 1) + ["#333333", *runs.values()]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(bars) + 1.2))
    names = list(bars)[::-1]
    ax.barh(names, [bars[n] for n in names], color=colors[::-1])
    ax.set_xscale("log")
    ax.set_xlabel(f"files/s on {cores} cores (log scale)")
    ax.set_title(f"fer-batch bench: {result['input']['files']} files, "
                 f"efficiency {result['end_to_end']['warm']['efficiency']:.2f} (warm)")
    for i, name in enumerate(names):
        ax.text(bars[name], i, f" {bars[name]:.3g}", va="center", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
