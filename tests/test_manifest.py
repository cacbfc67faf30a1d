"""Manifests and resume planning without Ray: formats, dedup, anti-join, flat memory."""

from __future__ import annotations

import gzip
import itertools
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fer_batch import lease
from fer_batch.datasets import MAX_BLOCK_ROWS, block_sizes, blocks, waves
from fer_batch.manifest import (
    ENTRY_SCHEMA,
    check_manifest,
    fill_versions,
    iter_manifest,
    normalise_uri,
)
from fer_batch.plan import WorkPlan, commit_summary, stat_table
from fer_batch.records import ItemResult, item_key, results_to_batch
from fer_batch.sink import write_commit
from fer_batch.sources import ListingStats
from fer_batch.store import COMMIT_SCHEMA, Store


def entries(path, **kwargs) -> list[dict]:
    stats = ListingStats()
    rows = [row for t in iter_manifest(str(path), {}, stats, **kwargs) for row in t.to_pylist()]
    return rows + [{"skipped_non_media": stats.skipped_non_media}]


def test_text_manifest_skips_comments_blanks_and_non_media(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("# inputs\n/data/a.jpg\n\n  rel/b.PNG  \nnotes.txt\ns3://bkt/k/../c.jpg\n")
    rows = entries(path)
    assert [r.get("source_uri") for r in rows[:-1]] == [
        "/data/a.jpg", str(tmp_path / "rel" / "b.PNG"), "s3://bkt/k/../c.jpg"]
    assert all(r["size_bytes"] is None and r["version"] is None for r in rows[:-1])
    assert rows[-1] == {"skipped_non_media": 1}


def test_gzipped_text_manifest(tmp_path):
    path = tmp_path / "list.txt.gz"
    path.write_bytes(gzip.compress(b"/x/1.jpg\n/x/2.jpg\n"))
    assert [r.get("source_uri") for r in entries(path)[:-1]] == ["/x/1.jpg", "/x/2.jpg"]


def test_parquet_manifest_with_size_and_etag(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"n": [1, 2, 3, 4], "source_uri": [f"s3://b/{c}.jpg" for c in "abcd"],
                             "size": ["10", None, "30", "n/a"],
                             "ETag": ['"e1"', "e2", None, "e4"]}), path)
    rows = entries(path)[:-1]
    assert [(r["source_uri"], r["size_bytes"], r["version"]) for r in rows] == [
        ("s3://b/a.jpg", 10, "e1"), ("s3://b/b.jpg", None, None), ("s3://b/c.jpg", None, None),
        ("s3://b/d.jpg", None, None)]  # an unreadable size means "stat it", not a failure


def test_csv_manifest_first_column_and_relative_paths(tmp_path):
    path = tmp_path / "photos.csv"  # like ../shared/data/photos/manifest.csv: column "file"
    path.write_text('file,width,note\nx.jpg,10,"a, b"\nsub/y.png,20,c\n')
    rows = entries(path)[:-1]
    assert [r["source_uri"] for r in rows] == [str(tmp_path / "x.jpg"),
                                              str(tmp_path / "sub" / "y.png")]


def test_csv_manifest_uri_column_and_headerless(tmp_path):
    named = tmp_path / "named.csv"
    named.write_text("size,uri,etag\n5,/a.jpg,v1\n6,/b.jpg,v2\n")
    assert [(r["source_uri"], r["size_bytes"], r["version"]) for r in entries(named)[:-1]] == [
        ("/a.jpg", 5, "v1"), ("/b.jpg", 6, "v2")]
    bare = tmp_path / "bare.csv"
    bare.write_text("/a.jpg\n/b.jpg\n")
    assert [r["source_uri"] for r in entries(bare)[:-1]] == ["/a.jpg", "/b.jpg"]


def test_missing_manifest_is_a_bad_option(tmp_path):
    with pytest.raises(ValueError, match=r"--manifest does not exist .*nope\.csv"):
        check_manifest(str(tmp_path / "nope.csv"), {})


def test_normalise_uri_keeps_remote_keys_byte_for_byte():
    assert normalise_uri("s3://b/a/../../x.jpg", "/m") == "s3://b/a/../../x.jpg"
    assert normalise_uri("file:///d/../e.jpg", "/m") == "/e.jpg"
    assert normalise_uri("k/%2e%2e/y.jpg", "s3://b/lists") == "s3://b/lists/k/%2e%2e/y.jpg"


def write_marker(out, cid: str, rows: list[tuple[str, int, str]], run_id: str = "r0") -> None:
    """A completion marker for (uri, size, version) image items, as the sink writes it."""
    n = len(rows)
    columns = {name: pa.nulls(n, field.type) for name, field in
               zip(COMMIT_SCHEMA.names, COMMIT_SCHEMA)}
    columns |= {
        "item_key": pa.array([item_key(u, s, v, 0) for u, s, v in rows]),
        "source_uri": pa.array([u for u, _, _ in rows]),
        "media_type": pa.array(["image"] * n), "status": pa.array(["ok"] * n),
        "n_faces": pa.array([1] * n, pa.int64()), "segment": pa.array([0] * n, pa.int64()),
        "run_id": pa.array([run_id] * n), "detect_node": pa.array(["n1"] * n),
        "classify_node": pa.array(["n1"] * n)}
    (out / "_commits").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=COMMIT_SCHEMA), out / "_commits" / f"{cid}.parquet")
    for table in ("faces", "media", "errors"):
        (out / table).mkdir(exist_ok=True)
        (out / table / f"part-{cid}.parquet").write_bytes(b"data")


def table(rows: list[tuple]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(ENTRY_SCHEMA.names, r)) for r in rows],
                                schema=ENTRY_SCHEMA)


def no_stat(tables):
    assert not [t for t in tables if len(t)], "nothing should need a stat"
    return iter(())


def test_plan_dedups_skips_done_and_drops_stale_commits(tmp_path):
    out = tmp_path / "out"
    write_marker(out, "c1", [("/a.jpg", 1, "v"), ("/z.jpg", 9, "v")])  # /a.jpg unchanged
    write_marker(out, "c2", [("/b.jpg", 2, "v"), ("/y.jpg", 9, "v")])  # /b.jpg changed
    with WorkPlan() as plan:
        plan.add_entries([table([("/a.jpg", "image", 1, "v"), ("/b.jpg", "image", 3, "v")]),
                          table([("/a.jpg", "image", 7, "w"), ("/c.jpg", "image", 4, "v")])])
        plan.load_commits(Store.open(str(out)))
        stale = plan.resolve(no_stat)
        todo = [r for t in plan.todo() for r in t.to_pylist()]
        counts = plan.counts
    assert stale == ["c2"]
    # /b.jpg changed: its whole commit goes, so /y.jpg (not listed this time) is redone too.
    assert [(r["source_uri"], r["item_key"]) for r in todo] == [
        ("/b.jpg", "/b.jpg|3|v|0"), ("/c.jpg", "/c.jpg|4|v|0"), ("/y.jpg", "")]
    assert counts == {"inputs": 3, "skipped_done": 1, "stale_commits": 1, "todo": 3}
    Store.open(str(out)).drop_commits(stale)
    assert sorted(p.name for p in out.rglob("*c2*")) == []
    assert len(list(out.rglob("*c1*"))) == 4


def test_plan_stats_unknown_versions_only_for_committed_inputs(tmp_path):
    out = tmp_path / "out"
    write_marker(out, "c1", [("/a.jpg", 1, "v"), ("/b.jpg", 2, "v")])
    asked = []

    def stat(tables):
        for t in tables:
            asked.extend(t.column("source_uri").to_pylist())
            yield pa.table({"source_uri": t.column("source_uri"),
                            "size_bytes": pa.array([1, 5], pa.int64()),
                            "version": pa.array(["v", "v"])})

    with WorkPlan() as plan:
        plan.add_entries([table([("/a.jpg", "image", None, None), ("/b.jpg", "image", None, None),
                                 ("/new.jpg", "image", None, None)])])
        plan.load_commits(Store.open(str(out)))
        assert plan.resolve(stat) == ["c1"]  # /b.jpg is now 5 bytes
        todo = [(r["source_uri"], r["size_bytes"]) for t in plan.todo() for r in t.to_pylist()]
    assert sorted(asked) == ["/a.jpg", "/b.jpg"]  # /new.jpg is stat'ed by its worker
    assert todo == [("/a.jpg", 1), ("/b.jpg", 5), ("/new.jpg", -1)]


def plan_manifest(tmp_path, n: int, chunk: int) -> tuple[dict, int]:
    """Plan a manifest of n lines (10% repeated, a third already done); Python heap peak."""
    lines = [f"/archive/{i % (n - n // 10):07d}.jpg" for i in range(n)]
    path = tmp_path / f"m{n}.txt"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / f"out{n}"
    done = [(f"/archive/{i:07d}.jpg", 0, "") for i in range(0, n - n // 10, 3)]
    write_marker(out, "c1", done)

    def stat(tables):  # what the workers would say: nothing changed
        for t in tables:
            k = len(t)
            yield pa.table({"source_uri": t.column("source_uri"),
                            "size_bytes": pa.array(np.zeros(k, np.int64)),
                            "version": pa.array([""] * k)})

    tracemalloc.start()
    with WorkPlan(memory_limit="64MB") as plan:
        plan.add_entries(iter_manifest(str(path), {}, ListingStats(), chunk=chunk))
        plan.load_commits(Store.open(str(out)))
        plan.resolve(stat)
        streamed = sum(len(b) for b in blocks(plan.todo(rows=1024), 32))
        counts = dict(plan.counts)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert streamed == counts["todo"]
    return counts, peak


def test_100k_line_manifest_plans_in_flat_python_memory(tmp_path):
    plan_manifest(tmp_path, 1_000, chunk=5_000)  # first use: imports, caches
    small, small_peak = plan_manifest(tmp_path, 10_000, chunk=5_000)
    big, big_peak = plan_manifest(tmp_path, 100_000, chunk=5_000)
    assert big["inputs"] == 90_000 and big["skipped_done"] == 30_000 and big["todo"] == 60_000
    assert small["inputs"] == 9_000 and small["todo"] == 6_000
    # Ten times the lines, the same Python heap: nothing holds one object per input.
    assert big_peak < 1.5 * small_peak + 2**20, (small_peak, big_peak)


@pytest.mark.slow
def test_a_1m_line_manifest_plans_under_the_production_memory_limit(tmp_path):
    """Past the size where DuckDB 2.0's grouped aggregate stopped spilling (about 400k
    distinct URIs under 64 MB): the driver's own planning code, its own limits, a fresh
    process, every line streamed back exactly once."""
    from fer_batch.bench.manifest_memory import measure

    (run,) = measure((1_200_000,), tmp_path)["runs"]
    assert run["lines"] == run["streamed"] == 1_200_000


def test_each_video_segment_is_a_block_of_its_own():
    def items(types):
        return pa.table({"source_uri": [f"/{i}" for i in range(len(types))],
                         "media_type": types})

    out = list(blocks([items(["image", "video", "image"]), items(["video", "video", "image"])],
                      2))
    assert sorted(b.column("media_type").to_pylist() for b in out) == [
        ["image"], ["image", "image"], ["video"], ["video"], ["video"]]


def test_blocks_recut_a_stream_exactly():
    tables = [pa.table({"x": list(range(i, i + n))}) for i, n in ((0, 5), (5, 1), (6, 40))]
    out = list(blocks(tables, 8))
    assert [len(b) for b in out] == [8] * 5 + [6]
    assert sum((b.column("x").to_pylist() for b in out), []) == list(range(46))


def test_block_sizes_shrink_towards_the_end_of_a_run():
    sizes = list(itertools.islice(block_sizes(380, 4, 2), 40))
    cut, total = [], 0
    for rows in sizes:  # what blocks() cuts from 380 images
        cut.append(min(rows, 380 - total))
        total += cut[-1]
        if total == 380:
            break
    assert sum(cut) == 380
    assert cut[0] == MAX_BLOCK_ROWS and cut == sorted(cut, reverse=True)
    assert max(cut[-4:]) == 4  # the last tasks are small: no actor works alone at the end
    assert len(cut) < 380 / 8  # still few blocks (and commits)
    assert set(itertools.islice(block_sizes(10**7, 4, 2), 1000)) == {MAX_BLOCK_ROWS}
    assert next(block_sizes(3, 4, 16)) == 4 and next(block_sizes(3, 1, 16)) == 1


def test_blocks_follow_a_size_sequence_and_waves_group_them():
    tables = [pa.table({"x": list(range(i, i + n))}) for i, n in ((0, 7), (7, 13))]
    out = list(blocks(tables, iter([8, 5, 3, 2, 2, 2])))
    assert [len(b) for b in out] == [8, 5, 3, 2, 2]
    assert sum((b.column("x").to_pylist() for b in out), []) == list(range(20))
    assert [[len(b) for b in w] for w in waves(out, 10)] == [[8, 5], [3, 2, 2]]
    assert list(waves([], 10)) == []


def test_workers_fill_unknown_versions(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"12345")
    uris = [str(image), str(tmp_path / "gone.jpg"), "/known.jpg"]
    items = {"source_uri": np.array(uris, dtype=object),
             "size_bytes": np.array([-1, -1, 7]), "version": np.array(["", "", "v"], object),
             "segment": np.zeros(3, np.int64), "item_key": np.array(["", "", "k"], object)}
    filled = fill_versions(items, {})
    mtime = str(image.stat().st_mtime)
    assert list(filled["size_bytes"]) == [5, 0, 7]
    assert list(filled["item_key"]) == [f"{image}|5|{mtime}|0", f"{uris[1]}|0||0", "k"]
    stat = stat_table(pa.table({"source_uri": uris[:2]}), {}).to_pylist()
    assert stat == [{"source_uri": str(image), "size_bytes": 5, "version": mtime},
                    {"source_uri": uris[1], "size_bytes": 0, "version": ""}]


def test_commit_summary_counts_from_markers(tmp_path):
    out = tmp_path / "out"
    assert commit_summary(Store.open(str(out)), "r1")["totals"]["media"] == 0
    write_marker(out, "c1", [("/a.jpg", 1, "v"), ("/b.jpg", 1, "v")], run_id="r0")
    write_marker(out, "c2", [("/c.jpg", 1, "v")], run_id="r1")
    summary = commit_summary(Store.open(str(out)), "r1")
    assert summary["totals"] == {"media": 3, "ok": 3, "partial": 0, "errors": 0, "faces": 3}
    assert summary["this_run"]["media"] == 1 and summary["detect"] == {"n1": {"items": 1}}


def test_plan_folders_of_killed_drivers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"fer-batch-plan-{dead.pid}-x").mkdir()
    (tmp_path / f"fer-batch-plan-{os.getpid()}-y").mkdir()
    with WorkPlan(workdir=str(tmp_path)) as plan:
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted([f"fer-batch-plan-{os.getpid()}-y", os.path.basename(plan.dir)])
    assert not os.path.exists(plan.dir)


def _one_item_batch(uri: str) -> dict[str, np.ndarray]:
    items = {"source_uri": np.array([uri], object), "media_type": np.array(["image"], object),
             "size_bytes": np.array([5]), "version": np.array(["v"], object),
             "segment": np.zeros(1, np.int64), "seg_start_s": np.full(1, np.nan),
             "seg_end_s": np.full(1, np.nan), "item_key": np.array([item_key(uri, 5, "v", 0)],
                                                                   object)}
    batch = results_to_batch(items, [ItemResult()], (64, 64, 1), "n1")
    batch.pop("crops")
    batch["scores"] = np.empty(1, dtype=object)
    batch["scores"][0] = np.zeros((0, 7), np.float32)
    batch["classify_node"] = np.array(["n1"], dtype=object)
    return batch


def test_a_superseded_run_cannot_commit(tmp_path):
    out = str(tmp_path / "out")
    lease.take(Store.open(out), "run-old")
    write_commit(_one_item_batch("/a.jpg"), Store.open(out), "run-old", "m")
    assert len(list((tmp_path / "out" / "_commits").iterdir())) == 1
    lease.take(Store.open(out), "run-new")  # a re-run started while the old run's workers live
    with pytest.raises(lease.LeaseLost, match="run-old no longer owns .*run run-new"):
        write_commit(_one_item_batch("/b.jpg"), Store.open(out), "run-old", "m")
    assert len(list((tmp_path / "out" / "_commits").iterdir())) == 1
    assert len(list((tmp_path / "out" / "faces").iterdir())) == 1  # nothing of /b.jpg
    write_commit(_one_item_batch("/b.jpg"), Store.open(out), "run-new", "m")
    assert lease.holder(Store.open(out)) == "run-new"
    assert len(list((tmp_path / "out" / "_commits").iterdir())) == 2


_KILLED_WRITER = """
import os, sys, time
from fer_batch import store
from fer_batch.sink import write_commit
from tests.test_manifest import _one_item_batch

out, ready = sys.argv[1], sys.argv[2]
write_commit(_one_item_batch("/a.jpg"), store.Store.open(out), "run-1", "m")

def parts_written_then_wait(self, marker):  # every part is on disk: be killed here
    open(ready, "w").close()
    time.sleep(600)

store.Commit.finish = parts_written_then_wait
write_commit(_one_item_batch("/b.jpg"), store.Store.open(out), "run-1", "m")
"""


def test_readers_never_see_the_parts_of_a_writer_killed_before_its_marker(tmp_path):
    """A writer process SIGKILLed between its parts and its marker: its parts stay on disk,
    and neither `fer-batch query` nor committed_files() (the README's recipes) shows them;
    the next run's orphan removal deletes them."""
    import signal
    import time

    from fer_batch.query import committed_files, connect

    out, ready = str(tmp_path / "out"), tmp_path / "parts-written"
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, out, str(ready)],
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert writer.poll() is None, "the writer died before its parts were written"
            assert time.monotonic() < deadline, "the writer never wrote its parts"
            time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    parts = sorted((tmp_path / "out" / "media").glob("*.parquet"))
    assert len(parts) == 2 and len(list((tmp_path / "out" / "_commits").iterdir())) == 1
    assert pq.read_table(committed_files(out, "media")).column("source_uri").to_pylist() == [
        "/a.jpg"]
    con = connect(out)
    assert con.sql("SELECT source_uri FROM media").fetchall() == [("/a.jpg",)]
    assert Store.open(out).remove_orphans() == 3  # /b.jpg's faces, media and errors parts
    assert len(list((tmp_path / "out" / "media").glob("*.parquet"))) == 1


def test_readers_never_see_a_commit_whose_marker_was_not_written(tmp_path, monkeypatch):
    """A writer stopped between its parts and its marker (here: its lease taken in between)
    leaves parts on disk that `fer-batch query` and committed_files() never show."""
    import pyarrow.parquet as pq

    from fer_batch import store
    from fer_batch.query import committed_files, connect

    out = str(tmp_path / "out")
    lease.take(Store.open(out), "run-1")
    write_commit(_one_item_batch("/a.jpg"), Store.open(out), "run-1", "m")
    finish = store.Commit.finish

    def stopped_before_marker(self, marker):  # every part is written by now
        lease.take(Store.open(out), "run-2")
        return finish(self, marker)

    monkeypatch.setattr(store.Commit, "finish", stopped_before_marker)
    with pytest.raises(lease.LeaseLost):
        write_commit(_one_item_batch("/b.jpg"), Store.open(out), "run-1", "m")
    on_disk = sorted((tmp_path / "out" / "media").glob("*.parquet"))
    assert len(on_disk) == 2  # the half commit's part is there
    assert set(pq.read_table(on_disk[0].parent).column("source_uri").to_pylist()) == {
        "/a.jpg", "/b.jpg"}
    visible = committed_files(out, "media")
    assert len(visible) == 1
    assert pq.read_table(visible).column("source_uri").to_pylist() == ["/a.jpg"]
    con = connect(out)
    assert con.sql("SELECT source_uri FROM media").fetchall() == [("/a.jpg",)]
    assert con.sql("SELECT count(*) FROM faces").fetchall() == [(0,)]
    with pytest.raises(ValueError, match="table must be one of"):
        committed_files(out, "fces")
