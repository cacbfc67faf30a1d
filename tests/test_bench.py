"""`fer-batch bench`: pure helpers on small arrays, and one smoke run of the real command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fer_batch.bench import BenchConfig
from fer_batch.bench.detectors import read_by_eye, score_counts
from fer_batch.bench.peers import iou, matched
from fer_batch.bench.report import compare, flatten, load_warning, summary
from fer_batch.bench.stages import ceiling, group_copies, pick_sample

# Figures that may rightly be zero: counts of things absent, growth at a single size, the
# core the stage process was pinned to.
MAY_BE_ZERO = ("errors", "videos", "pinned_core", "driver_growth", "actor_growth",
               "manifest_memory.growth")


def test_iou_and_greedy_matching():
    a = np.array([[0, 0, 10, 10]])
    assert iou(a, np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5]])).round(3).tolist() \
        == [[1.0, 0.333, 0.0]]
    theirs = [[0, 0, 10, 10], [100, 100, 20, 20]]
    assert matched(theirs, [[1, 1, 10, 10], [0, 0, 9, 9]]) == 1  # one of ours per theirs
    assert matched(theirs, [[1, 1, 10, 10], [102, 98, 20, 20]]) == 2
    assert matched(theirs, []) == 0


def test_copies_are_timed_once_and_samples_spread():
    entries = [{"source_uri": f"/a/c{c}/{name}", "size_bytes": size}
               for c in range(3) for name, size in (("x.jpg", 10), ("y.jpg", 20))]
    groups = group_copies(entries)
    assert sorted(len(g) for g in groups.values()) == [3, 3]
    assert pick_sample(list(range(10)), 4) == [0, 2, 5, 7]
    assert pick_sample([1, 2], 5) == [1, 2]


def test_ceiling_is_cores_over_per_file_core_seconds():
    stages = {"per_file": {"decode": 0.01, "detect": 0.08, "crop": 0.002, "faces": 2.0,
                           "frames": 1.0},
              "classify": {"per_face_s": {"256": 0.004}}}
    ceil = ceiling(stages, cores=4, batch_size=256)
    assert ceil["per_file_s"] == pytest.approx(0.1)
    assert ceil["files_per_s"] == pytest.approx(40.0)
    assert ceil["faces_per_s"] == pytest.approx(80.0)


def test_by_eye_counts_credit_at_most_the_faces_seen(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,visible_human_faces_by_eye\na.jpg,~30 (+ crowd)\n"
                        "b.png,1 (profile)\nc.png,0 (cat)\nd.jpg,2\n")
    by_eye = read_by_eye(manifest)
    assert by_eye == {"a.jpg": 30, "b.png": 1, "c.png": 0, "d.jpg": 2}
    score = score_counts(by_eye, {"a.jpg": 25, "b.png": 3, "c.png": 1})
    assert (score["by_eye"], score["found"], score["missed"], score["extra"]) == (33, 26, 7, 3)
    assert score["recall"] == pytest.approx(26 / 33, abs=1e-4)
    assert score["per_file"]["d.jpg"] == 0
    (tmp_path / "bad.csv").write_text("name,faces\na.jpg,1\n")
    with pytest.raises(ValueError, match="--by-eye .*bad.csv"):
        read_by_eye(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="--by-eye cannot be read .*missing.csv"):
        read_by_eye(tmp_path / "missing.csv")


def test_compare_lists_numeric_changes():
    old = {"ceiling": {"files_per_s": 10.0}, "host": {"cpus": 2}, "notes": ["x"]}
    new = {"ceiling": {"files_per_s": 12.5}, "host": {"cpus": 4}}
    assert flatten(new) == {"ceiling.files_per_s": 12.5, "host.cpus": 4.0}
    (line,) = compare(old, new)
    assert line.startswith("ceiling.files_per_s") and line.endswith("+25.0%")


def test_a_busy_start_is_flagged():
    quiet = {"host": {"cpus": 2, "load_avg_start": [0.45, 1.4, 2.3]}}
    busy = {"host": {"cpus": 2, "load_avg_start": [1.57, 2.2, 2.3]}}
    assert load_warning(quiet["host"]) is None and summary(quiet) == []
    assert "load average 1.57 on 2 cores" in load_warning(busy["host"])
    assert summary(busy) == [load_warning(busy["host"])]


@pytest.mark.parametrize("kwargs, option", [
    ({"output": "bench.txt"}, "--output"),
    ({"growth": (4, 16)}, "--growth"),
    ({"batch_sizes": (0,)}, "--batch-sizes"),
    ({"repeat": 0}, "--repeat"),
    ({"detectors": ("haar", "viola")}, "--detectors"),
    ({"by_eye": "counts.txt"}, "--by-eye"),
])
def test_bad_options_name_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        BenchConfig(**kwargs)


def test_pipeline_batch_size_is_always_swept():
    assert BenchConfig(batch_size=100, batch_sizes=(16,)).swept_batch_sizes == (16, 100)


@pytest.mark.slow
def test_bench_smoke_on_three_demo_images(tmp_path):
    from fer_batch.demo import build_archive

    build_archive(tmp_path / "demo")
    images = tmp_path / "in"
    images.mkdir()
    for name in ("scenes/astronaut.png", "phone/IMG_0001.JPG", "phone/portrait_grey.jpg"):
        shutil.copy(tmp_path / "demo" / name, images)
    out = tmp_path / "bench" / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fer_batch.cli", "bench", "--input", str(images), "--output",
         str(out), "--growth", "1", "--repeat", "1", "--manifest-lines", "1000,5000"],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    for section in ("host", "input", "stages", "ceiling", "end_to_end", "memory", "peers",
                    "gpu", "video", "manifest_memory", "storage"):
        assert section in result, section
    assert set(result["stages"]["classify"]["per_face_s"]) == {"16", "64", "256"}
    assert {"decode", "detect", "crop"} <= set(result["stages"]["rates_per_core"]["files_per_s"])
    for run in ("cold", "warm"):
        e2e = result["end_to_end"][run]
        assert e2e["files"] == 3 and e2e["frames"] == 3
        assert set(e2e["memory"]["actor_peak_rss_mb_by_stage"]) == {
            "FaceStage", "ClassifyStage", "CommitWriter"}
    # The stage loop follows the pipeline step by step, so it finds the same faces.
    per_file = result["stages"]["per_file"]
    assert per_file["faces"] * 3 == pytest.approx(result["end_to_end"]["warm"]["faces"])
    figures = flatten({k: v for k, v in result.items() if k != "host"})
    assert len(figures) > 40
    not_positive = {k: v for k, v in figures.items()
                    if not v > 0 and not k.endswith(MAY_BE_ZERO)}
    assert not not_positive
    compared = result["detectors"]["by_detector"]
    assert set(compared) == {"blazeface", "haar"}
    assert compared["blazeface"]["faces_per_file"] == pytest.approx(per_file["faces"], abs=1e-3)
    assert result["detectors"]["by_eye"].startswith("not scored")
    assert result["peers"]["skipped"] and result["video"]["skipped"]
    assert result["storage"]["skipped"]
    runs = result["manifest_memory"]["runs"]
    assert [(r["lines"], r["streamed"]) for r in runs] == [(1000, 1000), (5000, 5000)]


def test_the_floor_budgets_are_what_the_targets_leave_per_file():
    """bench.floor: fer 80 s cold on 400 files, a floor of 12 s, 2 cores. 4x cold leaves
    (80 / 4 - 12) s x 2 cores over 400 files = 40 ms a file; 8x steady, 2 x 80 / (8 x 400)
    s = 50 ms a file for every step; a floor over fer's wall / 4 leaves less than nothing."""
    from fer_batch.bench.floor import budgets

    got = budgets(80.0, 12.0, 400, 2, 4.0, 8.0)
    assert got == pytest.approx({"cold_detect_budget_ms": 40.0, "steady_file_budget_ms": 50.0})
    assert budgets(80.0, 21.0, 400, 2, 4.0, 8.0)["cold_detect_budget_ms"] < 0


def test_the_floor_hook_makes_every_stage_detector_find_nothing(monkeypatch):
    """The worker setup hook replaces the detector the stages build, whatever the config,
    with one that returns no boxes."""
    from fer_batch import stages
    from fer_batch.bench.floor import no_detection
    from fer_batch.config import DetectConfig

    monkeypatch.setattr(stages, "make_detector", stages.make_detector)  # restored after
    no_detection()
    for name in ("blazeface", "haar"):
        detector = stages.make_detector(DetectConfig(detector=name))
        found = detector(np.zeros((64, 64, 3), np.uint8), 1.0)
        assert len(found) == 0 and found.boxes.shape == (0, 4)


def test_the_floor_bench_names_bad_options_and_failed_runs(tmp_path):
    from fer_batch.bench.floor import image_files, main, timed

    with pytest.raises(ValueError, match=r"--rounds must be > 0; received: 0"):
        main([str(tmp_path), "--rounds", "0"])
    with pytest.raises(ValueError, match=r"--cold must be > 0; received: -4\.0"):
        main([str(tmp_path), "--cold", "-4"])
    with pytest.raises(ValueError, match=r"input must be a local folder.*'nowhere'"):
        main(["nowhere"])
    with pytest.raises(ValueError, match=r"input holds no images; received: "):
        main([str(tmp_path)])
    media = tmp_path / "media"
    media.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (media / name).write_bytes(b"")
    assert image_files(str(media)) == [str(media / "a.jpg"), str(media / "b.png")]
    (media / "clip.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=r"input must hold images only.*clip\.mp4"):
        image_files(str(media))
    with pytest.raises(RuntimeError, match=r"exit 3: .*\n.*boom"):
        timed([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], tmp_path / "x.log")
    assert timed([sys.executable, "-c", "pass"], tmp_path / "ok.log") > 0


def test_the_floor_hook_patches_the_stages_when_a_worker_imports_them_later():
    """In a Ray worker the hook runs before anything is imported; it imports only the
    standard library, and the stages imported afterwards build detectors that find
    nothing."""
    code = ("import sys\n"
            "from fer_batch.bench.floor import no_detection\n"
            "no_detection()\n"
            "assert 'fer_batch.stages' not in sys.modules and 'numpy' not in sys.modules\n"
            "import numpy as np\n"
            "from fer_batch import stages\n"
            "from fer_batch.config import DetectConfig\n"
            "found = stages.make_detector(DetectConfig())(np.zeros((64, 64, 3), np.uint8), 1.0)\n"
            "print(len(found))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "0"
