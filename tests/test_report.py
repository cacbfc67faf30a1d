"""`fer-batch report`: timelines, distribution and error summary from an output's tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fer_batch.cli import main
from fer_batch.report import timeline
from fer_batch.schema import EMOTIONS, SCHEMAS

PNG = b"\x89PNG\r\n\x1a\n"


def _write(out, name: str, rows: list[dict]) -> None:
    (out / name).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[name]), out / name / "part-x.parquet")


def _face(uri: str, media_type: str, t: float | None, emotion: str) -> dict:
    scores = {e: float(e == emotion) for e in EMOTIONS}
    return {"source_uri": uri, "media_type": media_type, "frame_index": 0, "timestamp_s": t,
            "face_index": 0, "track_id": 0 if t is not None else None, "bbox_x": 0, "bbox_y": 0,
            "bbox_w": 9, "bbox_h": 9, "det_score": 1.0, **scores, "emotion": emotion,
            "emotion_score": 1.0, "model": "m", "run_id": "r"}


def _media(uri: str, media_type: str, status: str, duration: float | None) -> dict:
    return {"source_uri": uri, "media_type": media_type, "status": status, "width": 9,
            "height": 9, "n_faces": 1, "size_bytes": 1, "fps": 10.0 if duration else None,
            "frame_count": None, "duration_s": duration, "n_frames_sampled": 3, "run_id": "r"}


@pytest.fixture()
def output(tmp_path):
    out = tmp_path / "out"
    _write(out, "media", [_media("/v/a.mp4", "video", "ok", 4.5),
                          _media("/v/<b>.mp4", "video", "error", None),
                          _media("/i/c.jpg", "image", "ok", None)])
    _write(out, "faces", [_face("/v/a.mp4", "video", 0.2, "happy"),
                          _face("/v/a.mp4", "video", 0.7, "sad"),
                          _face("/v/a.mp4", "video", 3.1, "happy"),
                          _face("/i/c.jpg", "image", None, "angry")])
    _write(out, "errors", [{"source_uri": "/v/<b>.mp4", "stage": "decode",
                            "error_type": "UnreadableVideo", "message": "cannot <open>",
                            "frame_index": None, "run_id": "r"}])
    _write(out, "tracks", [])
    return out


def test_report_writes_page_and_timelines(output, capsys):
    assert main(["report", str(output)]) == 0
    assert capsys.readouterr().out.strip() == str(output / "report" / "index.html")
    pngs = sorted((output / "report").glob("*.png"))
    assert len(pngs) == 3 and all(p.read_bytes().startswith(PNG) for p in pngs)  # 2 videos
    page = (output / "report" / "index.html").read_text()
    assert "Video timelines (2 of 2)" in page
    assert "cannot &lt;open&gt;" in page and "/v/&lt;b&gt;.mp4" in page and "<b>" not in page
    assert "<td>happy</td><td>2</td><td>0.5</td>" in page  # distribution over all faces


def test_report_elsewhere_and_limited(output, tmp_path):
    dest = tmp_path / "elsewhere"
    assert main(["report", str(output), "--dest", str(dest), "--max-videos", "1"]) == 0
    assert len(list(dest.glob("timeline-*.png"))) == 1
    assert "Video timelines (1 of 2)" in (dest / "index.html").read_text()


def test_report_on_a_missing_output_fails_cleanly(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no fer-batch tables" in capsys.readouterr().err


def test_timeline_shares_per_bin():
    video = {"duration_s": 4.5, "bin_s": 1.0}
    bins = [{"bin": 0, "emotion": "happy", "n": 1}, {"bin": 0, "emotion": "sad", "n": 3},
            {"bin": 3, "emotion": "happy", "n": 2}]
    total, shares = timeline(bins, video)
    assert list(total) == [4, 0, 0, 2, 0]
    np.testing.assert_allclose(shares[0, [3, 4]], [0.25, 0.75])
    assert shares[1].sum() == 0 and shares[3, 3] == 1.0
