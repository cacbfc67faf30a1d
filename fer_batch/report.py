"""`fer-batch report OUT`: one self-contained HTML page about an output.

Everything is aggregated or sampled in DuckDB over the output's committed tables
(fer_batch.query), so only small results reach Python, whatever the output's size:

- a contact sheet: per emotion, the CROPS_EACH most and least confident faces and a
  random sample of CROPS_EACH, cut again from their source files, with score, file and
  frame time, so a user can judge the labels in a minute;
- per video, the share of each emotion over time and one line per track (a person,
  at most MAX_TRACKS), coloured by its most frequent emotion, both in at most
  ``MAX_BINS`` bins of at least one second;
- the emotion distribution, media status counts, the error summary and the files that
  failed or partly failed, with their messages.

Images are inlined (data: URIs), so the page opens from disk or an object store with
no network and no other file. A chart is only drawn where there is something in it.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import numpy as np

from fer_batch.schema import EMOTIONS
from fer_batch.store import Store

MAX_BINS = 120
DEFAULT_MAX_VIDEOS = 100
CROPS_EACH = 4  # per emotion: most confident, least confident, random
CROP_PX = 96
MAX_TRACKS = 40  # track lines per video
MAX_FAILED_FILES = 200
REPORT_DIR = "report"
PAGE = "index.html"
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
_SHEET = """
    WITH ranked AS (
        SELECT source_uri, media_type, frame_index, timestamp_s, bbox_x, bbox_y, bbox_w,
               bbox_h, emotion, emotion_score,
               row_number() OVER (PARTITION BY emotion ORDER BY emotion_score DESC,
                                  source_uri, frame_index, face_index) AS top,
               row_number() OVER (PARTITION BY emotion ORDER BY emotion_score ASC,
                                  source_uri, frame_index, face_index) AS bottom,
               row_number() OVER (PARTITION BY emotion ORDER BY
                                  hash(source_uri, frame_index, face_index)) AS random
        FROM faces)
    SELECT *, CASE WHEN top <= {k} THEN 'most confident' WHEN bottom <= {k}
                   THEN 'least confident' ELSE 'random' END AS pick
    FROM ranked WHERE top <= {k} OR bottom <= {k} OR random <= {k}
    ORDER BY emotion, pick, emotion_score DESC"""
_TRACKS = """
    SELECT f.source_uri, f.track_id, min(f.timestamp_s) AS timestamp_s,
           mode(f.emotion) AS emotion
    FROM faces f JOIN ({videos}) v USING (source_uri)
    WHERE f.media_type = 'video' AND f.track_id IS NOT NULL AND f.track_id < {tracks}
          AND f.timestamp_s IS NOT NULL
    GROUP BY f.source_uri, f.track_id, CAST(floor(f.timestamp_s / v.bin_s) AS BIGINT)
    ORDER BY f.source_uri, f.track_id, timestamp_s"""
_FAILED = """
    SELECT m.source_uri, m.media_type, m.status,
           string_agg(DISTINCT e.stage || ': ' || e.error_type || ': ' || e.message, ' | ')
               AS messages
    FROM media m LEFT JOIN errors e USING (source_uri)
    WHERE m.status <> 'ok' GROUP BY ALL ORDER BY m.status, m.source_uri LIMIT {limit}"""
_ERRORS = """
    SELECT stage, error_type, count(*) AS n, count(DISTINCT source_uri) AS files,
           any_value(source_uri) AS example_uri, any_value(message) AS example
    FROM errors GROUP BY stage, error_type ORDER BY n DESC, stage, error_type"""


def report(output: str, storage_options: dict[str, Any] | None = None, dest: str | None = None,
           max_videos: int = DEFAULT_MAX_VIDEOS) -> str:
    """Write ``index.html`` under `dest` (default OUT/report); its URI."""
    from fer_batch.query import connect

    if max_videos < 0:
        raise ValueError(f"--max-videos must be >= 0; received: {max_videos!r}")
    storage_options = storage_options or {}
    con = connect(output, storage_options)
    target = (Store.open(dest, storage_options) if dest
              else Store.open(output, storage_options).folder(REPORT_DIR))
    video_sql = _VIDEOS.format(bins=MAX_BINS, limit=max_videos)
    videos = _rows(con, video_sql)
    bins = _rows(con, _BINS.format(videos=video_sql))
    tracks = _rows(con, _TRACKS.format(videos=video_sql, tracks=MAX_TRACKS))
    for video in videos:
        mine = [b for b in bins if b["source_uri"] == video["source_uri"]]
        video["timeline"] = (_data_uri(plot_timeline(video, *timeline(mine, video)))
                             if mine else None)
        lines = [t for t in tracks if t["source_uri"] == video["source_uri"]]
        video["tracks"] = _data_uri(plot_tracks(video, lines)) if lines else None
    emotions = {r["emotion"]: r["n"] for r in _rows(con, "SELECT emotion, count(*) AS n FROM faces"
                                                          " GROUP BY emotion")}
    sheet = contact_sheet(_rows(con, _SHEET.format(k=CROPS_EACH)), storage_options)
    page = render_html(
        output=output,
        videos=videos,
        n_videos=_rows(con, "SELECT count(*) AS n FROM media WHERE media_type = 'video'")[0]["n"],
        emotions=emotions,
        status=_rows(con, "SELECT media_type, status, count(*) AS n FROM media GROUP BY ALL"
                          " ORDER BY ALL"),
        errors=_rows(con, _ERRORS),
        failed=_rows(con, _FAILED.format(limit=MAX_FAILED_FILES)),
        sheet=sheet,
        distribution=_data_uri(plot_distribution(emotions)) if emotions else None,
    )
    target.write_text(target.path(PAGE), page)
    con.close()
    return target.name_of(PAGE)


def _data_uri(png: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(png).decode()}"


def contact_sheet(faces: list[dict[str, Any]], storage_options: dict[str, Any]
                  ) -> list[dict[str, Any]]:
    """The sampled faces with their crops (JPEG data URIs), cut again from the sources;
    a face whose source cannot be read any more keeps crop None and says why."""
    from fer_batch.video import LocalCopy

    copies = LocalCopy()
    cache: dict[str, Any] = {}
    try:
        for face in sorted(faces, key=lambda f: (f["source_uri"], f["frame_index"])):
            try:
                pixels = _source_pixels(face, cache, copies, storage_options)
                face["crop"], face["why"] = _crop(pixels, face), None
            except Exception as e:  # noqa: BLE001 - a moved or changed source: say so
                face["crop"], face["why"] = None, f"{type(e).__name__}: {e}"
    finally:
        copies.clear()
    return faces


def _source_pixels(face: dict[str, Any], cache: dict[str, Any], copies: Any,
                   storage_options: dict[str, Any]) -> Any:
    """RGB pixels of the face's image or video frame, in original pixels."""
    key = f"{face['source_uri']}|{face['frame_index']}"
    if key in cache:
        return cache[key]
    if len(cache) > 8:
        cache.clear()
    if face["media_type"] == "image":
        from fer_batch.images import decode_image
        from fer_batch.sources import read_bytes

        decoded = decode_image(read_bytes(face["source_uri"], storage_options), 10**9, "rgb")
        pixels = decoded.pixels[:, :, ::-1] if decoded.pixels.ndim == 3 else decoded.pixels
    else:
        import cv2

        path = copies.get(face["source_uri"], "", storage_options)
        cap = cv2.VideoCapture(path)
        try:
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(face["frame_index"]))
            ok, frame = cap.read()
        finally:
            cap.release()
        if not ok:
            raise ValueError(f"frame {face['frame_index']} cannot be read")
        pixels = frame[:, :, ::-1]
    cache[key] = pixels
    return pixels


def _crop(pixels: Any, face: dict[str, Any]) -> str:
    from PIL import Image

    rows, cols = pixels.shape[:2]
    x, y, w, h = (int(face[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
    pad = int(0.15 * max(w, h))
    x0, y0 = max(0, x - pad), max(0, y - pad)
    x1, y1 = min(cols, x + w + pad), min(rows, y + h + pad)
    image = Image.fromarray(np.ascontiguousarray(pixels[y0:y1, x0:x1]))
    image.thumbnail((CROP_PX, CROP_PX))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=85)
    return _data_uri(buf.getvalue(), "image/jpeg")


def _rows(con: Any, sql: str) -> list[dict[str, Any]]:
    result = con.execute(sql)
    names = [d[0] for d in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


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


def plot_tracks(video: dict[str, Any], faces: list[dict[str, Any]]) -> bytes:
    """One line per track (a person): each sampled frame a dot in its emotion's colour."""
    from matplotlib.figure import Figure

    ids = sorted({f["track_id"] for f in faces})
    fig = Figure(figsize=(10, 1.8 + 0.35 * len(ids)))
    ax = fig.add_subplot()
    for row, track in enumerate(ids):
        mine = [f for f in faces if f["track_id"] == track]
        ax.scatter([f["timestamp_s"] for f in mine], [row] * len(mine), s=30, marker="s",
                   c=[COLORS[f["emotion"]] for f in mine])
    ax.set_yticks(range(len(ids)), [f"track {t}" for t in ids])
    ax.set_xlabel("time (s)")
    ax.set_ylim(-0.7, len(ids) - 0.3)
    handles = [ax.scatter([], [], c=COLORS[e], marker="s", label=e) for e in EMOTIONS]
    ax.legend(handles=handles, ncol=7, fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, 1.0 + 0.9 / (1 + len(ids))), frameon=False)
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
                status: list[dict], errors: list[dict], failed: list[dict] | None = None,
                sheet: list[dict] | None = None, distribution: str | None = None) -> str:
    """The summary page; every value from the tables is escaped."""
    total = sum(emotions.values())
    parts = [f"<h1>fer-batch report</h1><p>{html.escape(output)}</p>",
             "<h2>Emotion distribution</h2>",
             f"<img src='{distribution}' alt='emotion distribution'>" if distribution
             else "<p>No faces were found.</p>",
             _table(["emotion", "faces", "share"],
                    [[e, emotions.get(e, 0), emotions.get(e, 0) / total if total else None]
                     for e in EMOTIONS]) if total else "",
             f"<h2>Faces by emotion</h2><p>For each emotion, the {CROPS_EACH} faces scored "
             f"most and least confidently and {CROPS_EACH} at random.</p>",
             _sheet_html(sheet or []),
             "<h2>Media</h2>",
             _table(["media type", "status", "files"],
                    [[s["media_type"], s["status"], s["n"]] for s in status]),
             "<h2>Errors</h2>",
             _table(["stage", "error type", "rows", "files", "example file", "example message"],
                    [[e["stage"], e["error_type"], e["n"], e["files"], e["example_uri"],
                      e["example"]] for e in errors]) if errors else "<p>No errors.</p>",
             f"<h2>Files that failed or partly failed ({len(failed or [])}"
             f"{'+' if len(failed or []) >= MAX_FAILED_FILES else ''})</h2>",
             _table(["file", "media type", "status", "messages"],
                    [[f["source_uri"], f["media_type"], f["status"], f["messages"]]
                     for f in failed]) if failed else "<p>None.</p>",
             f"<h2>Videos ({len(videos)} of {n_videos})</h2>"]
    for v in videos:
        parts.append(f"<h3>{html.escape(v['source_uri'])}</h3><p>status {html.escape(v['status'])}"
                     f", {_fmt(v['duration_s']) or 'unknown'} s, {v['n_frames_sampled']} "
                     f"sampled frames, {v['n_faces']} faces</p>")
        if v.get("timeline"):
            parts.append(f"<img src='{v['timeline']}' alt='emotion shares over time'>")
        if v.get("tracks"):
            parts.append(f"<img src='{v['tracks']}' alt='emotion per track over time'>")
        if not v.get("timeline") and not v.get("tracks"):
            parts.append("<p>No faces in this video, so no timeline.</p>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:"
             "collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
             "font-size:0.9em;text-align:left}img{max-width:100%}"
             ".sheet{display:flex;flex-wrap:wrap;gap:6px}.face{width:110px;font-size:0.7em;"
             "overflow-wrap:anywhere}.face img{width:96px;height:96px;object-fit:contain;"
             "background:#eee;display:block}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>fer-batch report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def _sheet_html(sheet: list[dict]) -> str:
    if not sheet:
        return "<p>No faces were found.</p>"
    parts = []
    for emotion in EMOTIONS:
        mine = [f for f in sheet if f["emotion"] == emotion]
        if not mine:
            continue
        parts.append(f"<h3>{emotion}</h3><div class='sheet'>")
        for pick in ("most confident", "least confident", "random"):
            for f in (f for f in mine if f["pick"] == pick):
                when = (f", {f['timestamp_s']:.2f} s" if f["timestamp_s"] is not None
                        and math.isfinite(f["timestamp_s"]) else "")
                name = f["source_uri"].rsplit("/", 1)[-1]
                image = (f"<img src='{f['crop']}' alt='{html.escape(emotion)} face'>"
                         if f["crop"] else f"<p>{html.escape(f['why'] or '')}</p>")
                parts.append(f"<div class='face'>{image}{html.escape(pick)}: "
                             f"{f['emotion_score']:.2f}<br>{html.escape(name)}{when}</div>")
        parts.append("</div>")
    return "".join(parts)
