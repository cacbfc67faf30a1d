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
    """One committed part: the part file and the marker that names it."""
    from fer_batch.store import COMMIT_SCHEMA

    (out / name).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[name]), out / name / "part-x.parquet")
    (out / "_commits").mkdir(exist_ok=True)
    pq.write_table(COMMIT_SCHEMA.empty_table(), out / "_commits" / "x.parquet")


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


def _images(page: str) -> list[bytes]:
    import base64
    import re

    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([^']+)", page)]


def test_report_writes_one_self_contained_page(output, capsys):
    assert main(["report", str(output)]) == 0
    assert capsys.readouterr().out.strip() == str(output / "report" / "index.html")
    assert [p.name for p in (output / "report").iterdir()] == ["index.html"]
    page = (output / "report" / "index.html").read_text()
    # The distribution, and for the video with faces its shares and its track lines; the
    # video that failed has no faces, so no chart, and says so.
    pngs = _images(page)
    assert len(pngs) == 3 and all(p.startswith(PNG) for p in pngs)
    assert "Videos (2 of 2)" in page and "No faces in this video" in page
    assert "cannot &lt;open&gt;" in page and "/v/&lt;b&gt;.mp4" in page and "<b>" not in page
    assert "<td>happy</td><td>2</td><td>0.5</td>" in page  # distribution over all faces
    # The failed file and its message; the contact sheet says why a crop is missing (the
    # sources of this hand-made output do not exist).
    assert "<td>/v/&lt;b&gt;.mp4</td><td>video</td><td>error</td>" in page
    assert page.count("class='face'") == 4 and "FileNotFoundError" in page


def test_report_elsewhere_and_limited(output, tmp_path):
    dest = tmp_path / "elsewhere"
    assert main(["report", str(output), "--dest", str(dest), "--max-videos", "1"]) == 0
    page = (dest / "index.html").read_text()
    assert "Videos (1 of 2)" in page and len(_images(page)) == 1  # /v/<b>.mp4 sorts first
    assert "No faces in this video" in page


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


CHECK = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.target.src)),
                        true);
window.addEventListener('load', () => {
  const images = [...document.images];
  const broken = images.filter(i => !i.complete || i.naturalWidth === 0).length;
  const out = document.createElement('pre');
  out.id = 'check';
  out.textContent = JSON.stringify({images: images.length, broken: broken,
                                    errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.slow
def test_the_report_of_a_real_run_renders_in_a_browser(ray_session, tmp_path):
    """The demo archive (photos, a broken file, a video) annotated for real, its report
    opened from disk in headless Chromium: every image loads, no errors, and the contact
    sheet shows the crops cut from the sources."""
    import json
    import re
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
    from fer_batch.demo import build_archive

    build_archive(tmp_path / "archive")
    out = tmp_path / "out"
    assert main(["annotate", str(tmp_path / "archive"), "--output", str(out),
                 "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    page = (out / "report" / "index.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 3  # crops: photos and video frames
    assert "astronaut_pan.avi" in page and "broken.jpg" in page
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", CHECK + "</body>"))
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r"<pre id=\"check\">(.*?)</pre>", done.stdout)
    assert found, done.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["images"] == page.count("<img ") and result["images"] >= 6
    assert result["broken"] == 0 and result["errors"] == [], result
