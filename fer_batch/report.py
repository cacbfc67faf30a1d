"""`fer-batch report OUT`: emotion timelines per video and one HTML summary page.

Everything is aggregated in DuckDB over the output's tables (fer_batch.query), so
only per-bin counts reach Python: a video's timeline splits it into at most
``MAX_BINS`` bins (at least one second each) and shows, per bin, the share of the
faces whose dominant emotion is each of the seven. The page also has the emotion
distribution over all faces, media status counts and the error summary.
"""

from __future__ import annotations

import hashlib
import html
import io
import math
from typing import Any

import numpy as np

from fer_batch.schema import EMOTIONS
from fer_batch.sink import join
from fer_batch.sources import filesystem

MAX_BINS = 120
DEFAULT_MAX_VIDEOS = 100
REPORT_DIR = "report"
COLORS = {"angry": "#d62728", "disgust": "#2ca02c", "fear": "#9467bd", "happy": "#f2c200",
          "sad": "#1f77b4", "surprise": "#ff7f0e", "neutral": "#8c8c8c"}

_VIDEOS = """
    SELECT source_uri, status, duration_s, n_frames_sampled, n_faces,
           greatest(1.0, ceil(coalesce(duration_s, 0) / {bins})) AS bin_s
    FROM media WHERE media_type = 'video' ORDER BY source_uri LIMIT {limit}"""
_BINS = """
    SELECT f.source_uri, CAST(floor(f.timestamp_s / v.bin_s) AS BIGINT) AS bin, f.emotion,
           count(*) AS n
    FROM faces f JOIN ({videos}) v USING (source_uri)
    WHERE f.media_type = 'video' AND f.timestamp_s IS NOT NULL
    GROUP BY ALL"""
_ERRORS = """
    SELECT stage, error_type, count(*) AS n, count(DISTINCT source_uri) AS files,
           any_value(source_uri) AS example_uri, any_value(message) AS example
    FROM errors GROUP BY stage, error_type ORDER BY n DESC, stage, error_type"""


def report(output: str, storage_options: dict[str, Any] | None = None, dest: str | None = None,
           max_videos: int = DEFAULT_MAX_VIDEOS) -> str:
    """Write the timelines and ``index.html`` under `dest` (default OUT/report); its URI."""
    from fer_batch.query import connect

    if max_videos < 0:
        raise ValueError(f"--max-videos must be >= 0; received: {max_videos!r}")
    storage_options = storage_options or {}
    con = connect(output, storage_options)
    fs, root = filesystem(dest or join(output, REPORT_DIR), storage_options)
    fs.makedirs(root, exist_ok=True)
    videos = _rows(con, _VIDEOS.format(bins=MAX_BINS, limit=max_videos))
    bins = _rows(con, _BINS.format(videos=_VIDEOS.format(bins=MAX_BINS, limit=max_videos)))
    for video in videos:
        mine = [b for b in bins if b["source_uri"] == video["source_uri"]]
        digest = hashlib.sha1(video["source_uri"].encode()).hexdigest()[:16]
        video["timeline"] = f"timeline-{digest}.png"
        _write(fs, join(root, video["timeline"]), plot_timeline(video, *timeline(mine, video)))
    emotions = {r["emotion"]: r["n"] for r in _rows(con, "SELECT emotion, count(*) AS n FROM faces"
                                                          " GROUP BY emotion")}
    _write(fs, join(root, "emotions.png"), plot_distribution(emotions))
    page = render_html(
        output=output,
        videos=videos,
        n_videos=_rows(con, "SELECT count(*) AS n FROM media WHERE media_type = 'video'")[0]["n"],
        emotions=emotions,
        status=_rows(con, "SELECT media_type, status, count(*) AS n FROM media GROUP BY ALL"
                          " ORDER BY ALL"),
        errors=_rows(con, _ERRORS),
    )
    _write(fs, join(root, "index.html"), page.encode())
    con.close()
    return join(dest or join(output, REPORT_DIR), "index.html")


def _rows(con: Any, sql: str) -> list[dict[str, Any]]:
    result = con.execute(sql)
    names = [d[0] for d in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


def _write(fs: Any, path: str, data: bytes) -> None:
    with fs.open(path, "wb") as f:
        f.write(data)


def timeline(bins: list[dict[str, Any]], video: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(faces per bin, share of each emotion per bin (n_bins, 7)) for one video."""
    duration = video["duration_s"]
    last = max([b["bin"] for b in bins], default=-1)
    n_bins = max(last + 1, math.ceil(duration / video["bin_s"]) if duration else 0, 1)
    counts = np.zeros((n_bins, len(EMOTIONS)))
    for b in bins:
        if b["emotion"] in EMOTIONS and b["bin"] >= 0:
            counts[b["bin"], EMOTIONS.index(b["emotion"])] += b["n"]
    total = counts.sum(axis=1)
    shares = np.divide(counts, total[:, None], out=np.zeros_like(counts), where=total[:, None] > 0)
    return total, shares


def plot_timeline(video: dict[str, Any], total: np.ndarray, shares: np.ndarray) -> bytes:
    """Stacked bars: share of each dominant emotion per time bin (empty bins: no faces)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 2.8), dpi=100)
    ax = fig.add_subplot()
    x = np.arange(len(total)) * video["bin_s"]
    bottom = np.zeros(len(total))
    for k, name in enumerate(EMOTIONS):
        ax.bar(x, shares[:, k], width=video["bin_s"], bottom=bottom, align="edge",
               color=COLORS[name], label=name, linewidth=0)
        bottom += shares[:, k]
    ax.set_xlim(0, max(x[-1] + video["bin_s"], video["duration_s"] or 0))
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("share of faces")
    name = video["source_uri"].rsplit("/", 1)[-1]
    ax.set_title(f"{name}: {int(total.sum())} faces, {video['bin_s']:g} s bins", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return _png(fig)


def plot_distribution(emotions: dict[str, int]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3), dpi=100)
    ax = fig.add_subplot()
    ax.bar(EMOTIONS, [emotions.get(e, 0) for e in EMOTIONS], color=[COLORS[e] for e in EMOTIONS])
    ax.set_ylabel("faces")
    ax.set_title("dominant emotion, all faces", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else ""
    return str(value)


def render_html(output: str, videos: list[dict], n_videos: int, emotions: dict[str, int],
                status: list[dict], errors: list[dict]) -> str:
    """The summary page; every value from the tables is escaped."""
    total = sum(emotions.values())
    parts = [f"<h1>fer-batch report</h1><p>{html.escape(output)}</p>",
             "<h2>Emotion distribution</h2><img src='emotions.png' alt='emotion distribution'>",
             _table(["emotion", "faces", "share"],
                    [[e, emotions.get(e, 0), emotions.get(e, 0) / total if total else None]
                     for e in EMOTIONS]),
             "<h2>Media</h2>",
             _table(["media type", "status", "files"],
                    [[s["media_type"], s["status"], s["n"]] for s in status]),
             "<h2>Errors</h2>",
             _table(["stage", "error type", "rows", "files", "example file", "example message"],
                    [[e["stage"], e["error_type"], e["n"], e["files"], e["example_uri"],
                      e["example"]] for e in errors]) if errors else "<p>No errors.</p>",
             f"<h2>Video timelines ({len(videos)} of {n_videos})</h2>"]
    for v in videos:
        parts.append(f"<h3>{html.escape(v['source_uri'])}</h3><p>status {html.escape(v['status'])}"
                     f", {_fmt(v['duration_s'])} s, {v['n_frames_sampled']} sampled frames, "
                     f"{v['n_faces']} faces</p><img src='{v['timeline']}' alt='timeline'>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:"
             "collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
             "font-size:0.9em;text-align:left}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>fer-batch report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
