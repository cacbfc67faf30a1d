"""Object storage: a real S3-protocol server (moto, a subprocess on 127.0.0.1).

Fast tests cover retries, redaction, safe output paths and flat listing; the slow
ones annotate s3:// inputs into s3:// outputs through Ray.
"""

from __future__ import annotations

import io
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from fer_batch import sources
from fer_batch.bench.s3server import BUCKET, all_keys, download, moto_server, seed
from fer_batch.cli import main
from fer_batch.paths import child
from fer_batch.sources import ListingStats, iter_media, redact, retry_transient
from fer_batch.store import Store
from tests.conftest import SHARED_DATA
from tests.invariants import check_invariant
from tests.media import write_valid_images

HOSTILE_KEYS = ("a/../../x.jpg", "/abs.jpg", "%2e%2e/y.jpg", "ü ñ 😀.jpg", "sp ace.jpg",
                "-dash.jpg", "q?x.jpg", "h#x.jpg", "..dots.jpg")


@pytest.fixture(scope="module")
def s3():
    """One moto server (a subprocess) for this module, stopped by PID afterwards."""
    with moto_server() as server:
        yield server


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(sources, "RETRY_BASE_S", 0.001)


class Flaky:
    """Fails the first `n` calls with `error`, then calls through."""

    def __init__(self, fn, n: int, error: Exception):
        self.fn, self.n, self.error, self.calls = fn, n, error, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.n:
            raise self.error
        return self.fn(*args, **kwargs)


def test_transient_errors_are_retried_permanent_ones_are_not(quick_retries):
    slow_down = Flaky(lambda: "ok", 3, OSError("503 SlowDown: please reduce your request rate"))
    assert retry_transient(slow_down) == "ok" and slow_down.calls == 4
    reset = Flaky(lambda: "ok", 2, ConnectionResetError("Connection reset by peer"))
    assert retry_transient(reset) == "ok"
    for permanent in (PermissionError("Forbidden"), FileNotFoundError("NoSuchKey")):
        denied = Flaky(lambda: "ok", 1, permanent)
        with pytest.raises(type(permanent)):
            retry_transient(denied)
        assert denied.calls == 1
    never = Flaky(lambda: "ok", 99, TimeoutError("read timed out"))
    with pytest.raises(TimeoutError):
        retry_transient(never)
    assert never.calls == sources.TRANSIENT_ATTEMPTS


def test_writes_and_listing_retry_transient_errors(quick_retries, monkeypatch):
    fs = MemoryFileSystem(skip_instance_cache=True)
    fs.store.clear()
    monkeypatch.setattr(fs, "open", Flaky(fs.open, 2, OSError("503 Service Unavailable")))
    Store(fs, "/out").write("/out/t.parquet", pa.table({"x": [1, 2]}))
    assert pq.read_table(io.BytesIO(fs.cat("/out/t.parquet"))).num_rows == 2
    for name in ("a.jpg", "sub/b.png", "notes.txt"):
        fs.pipe(f"/in/{name}", b"x")
    monkeypatch.setattr(fs, "ls", Flaky(fs.ls, 2, TimeoutError("ReadTimeout")))
    monkeypatch.setattr(fsspec.core, "url_to_fs", lambda uri, **kw: (fs, uri.split("://")[-1]))
    stats = ListingStats()
    found = [e["source_uri"] for e in iter_media(("memory:///in",), {}, stats)]
    assert found == ["memory:///in/a.jpg", "memory:///in/sub/b.png"]
    assert stats.skipped_non_media == 1


def test_secrets_are_redacted_from_text():
    options = {"endpoint_url": "http://127.0.0.1:9000", "key": "AKIA123",
               "client_kwargs": {"aws_secret_access_key": "s3cr3t/XY+z"}, "anon": False}
    text = "PermissionError: key AKIA123 secret s3cr3t/XY+z at http://127.0.0.1:9000"
    assert redact(text, options) == "PermissionError: key *** secret *** at http://127.0.0.1:9000"


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "/abs", "%2e%2e", "ü", "a b",
                                  ".hidden", "x\\y", "a/../../x.jpg"])
def test_output_paths_refuse_anything_but_plain_names(name):
    with pytest.raises(ValueError, match="unsafe output path segment"):
        child("s3://bkt/out", "faces", name)
    assert child("s3://bkt/out/", "_commits", "0a1b.parquet") == "s3://bkt/out/_commits/0a1b.parquet"


def test_flat_listing_sees_every_key_even_odd_ones(s3):
    seed(s3, {f"odd/{k}": b"x" for k in (*HOSTILE_KEYS, "notes.txt")})
    stats = ListingStats()
    found = {e["source_uri"] for e in iter_media((f"s3://{BUCKET}/odd",), s3.options, stats)}
    assert found == {f"s3://{BUCKET}/odd/{k}" for k in HOSTILE_KEYS}
    assert stats.skipped_non_media == 1


# ---------------------------------------------------------------- end to end, through Ray


def photo_files() -> dict[str, bytes]:
    """Real photos when ../shared/data is there, generated images otherwise."""
    photos = SHARED_DATA / "photos"
    if photos.is_dir():
        return {p.name: p.read_bytes() for p in sorted(photos.iterdir())
                if p.suffix in (".jpg", ".png")}
    return {}


@pytest.fixture(scope="module")
def local_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    files = photo_files()
    if files:
        for name, data in files.items():
            (root / name).write_bytes(data)
    else:
        write_valid_images(root)
    return root


def faces_per_file(result: dict) -> dict[str, list[tuple]]:
    faces = result["faces"].assign(name=result["faces"].source_uri.str.rsplit("/", n=1).str[1])
    return {name: sorted(zip(g.bbox_x, g.bbox_y, g.bbox_w, g.bbox_h, g.emotion))
            for name, g in faces.groupby("name")}


@pytest.mark.slow
def test_s3_in_s3_out_matches_local(ray_session, s3, local_archive, tmp_path):
    seed(s3, {f"in/{p.name}": p.read_bytes() for p in local_archive.iterdir()})
    options = json.dumps({"endpoint_url": s3.endpoint, "key": "testing-key",
                          "secret": "testing-secret"})
    s3_out = f"s3://{BUCKET}/out"
    assert main(["annotate", f"s3://{BUCKET}/in", "--output", s3_out, "--no-progress",
                 "--storage-options", options]) == 0
    assert main(["annotate", str(local_archive), "--output", str(tmp_path / "local"),
                 "--no-progress"]) == 0
    remote = check_invariant(download(s3, s3_out, tmp_path / "remote"),
                             {f"s3://{BUCKET}/in/{p.name}" for p in local_archive.iterdir()})
    local = check_invariant(tmp_path / "local")
    assert faces_per_file(remote) == faces_per_file(local)
    assert remote["media"].n_faces.sum() == local["media"].n_faces.sum() > 0
    assert "testing-secret" not in json.dumps(remote["record"])

    # Resume on S3: nothing to do; then one object changes and only its commit is redone.
    assert main(["annotate", f"s3://{BUCKET}/in", "--output", s3_out, "--no-progress",
                 "--storage-options", options]) == 0
    again = check_invariant(download(s3, s3_out, tmp_path / "again"))["record"]["counts"]
    assert again["skipped_done"] == again["inputs"] and again["processed"] == 0
    name = sorted(p.name for p in local_archive.iterdir())[0]
    seed(s3, {f"in/{name}": b"no longer an image"})
    assert main(["annotate", f"s3://{BUCKET}/in", "--output", s3_out, "--no-progress",
                 "--storage-options", options]) == 0
    changed = check_invariant(download(s3, s3_out, tmp_path / "changed"))
    counts = changed["record"]["counts"]
    assert counts["stale_commits_dropped"] == 1 and counts["processed"] >= 1
    assert counts["skipped_done"] + counts["processed"] == counts["inputs"]
    row = changed["media"].set_index("source_uri").loc[f"s3://{BUCKET}/in/{name}"]
    assert row.status == "error" and row.n_faces == 0
    assert not (changed["faces"].source_uri == f"s3://{BUCKET}/in/{name}").any()


@pytest.mark.slow
def test_remote_manifest_hostile_keys_and_missing_objects(ray_session, s3, local_archive,
                                                          tmp_path):
    """Odd keys are read as themselves, missing ones become read errors, and every output
    object lands under the output prefix."""
    face = next(p for p in sorted(local_archive.iterdir()) if p.suffix == ".jpg"
                or p.name == "plain.bmp").read_bytes()
    seed(s3, {f"hostile/{k}": face for k in HOSTILE_KEYS})
    uris = [f"s3://{BUCKET}/hostile/{k}" for k in HOSTILE_KEYS]
    missing = f"s3://{BUCKET}/hostile/missing.jpg"
    sink = io.BytesIO()
    pq.write_table(pa.table({"uri": [*uris, missing, uris[0]]}), sink)
    seed(s3, {"lists/m.parquet": sink.getvalue()})
    before = all_keys(s3)
    out = f"s3://{BUCKET}/hostile-out"
    assert main(["annotate", f"s3://{BUCKET}/hostile", "--manifest", f"s3://{BUCKET}/lists/"
                 "m.parquet", "--output", out, "--no-progress", "--storage-options",
                 json.dumps(s3.options)]) == 0
    written = all_keys(s3) - before
    assert written and all(k.startswith("hostile-out/") for k in written), written
    result = check_invariant(download(s3, out, tmp_path / "out"), {*uris, missing})
    media = result["media"].set_index("source_uri")
    assert (media.loc[uris, "status"] == "ok").all()
    assert media.loc[missing, "status"] == "error"
    error = result["errors"].set_index("source_uri").loc[missing]
    assert error.stage == "read" and error.error_type == "FileNotFoundError"
    assert result["record"]["counts"]["inputs"] == len(uris) + 1


@pytest.mark.slow
def test_bad_credentials_never_leak(ray_session, tmp_path, capfd):
    """Every request is refused (403): read errors as rows, and the secret nowhere."""
    secret, key = "s3cr3t-VALUE-that-must-not-leak", "AKIAFAKEKEYFORTESTS1"
    with moto_server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as locked:
        options = json.dumps({"endpoint_url": locked.endpoint, "key": key, "secret": secret})
        manifest = tmp_path / "m.csv"
        manifest.write_text("uri,size,etag\n" + "".join(
            f"s3://{BUCKET}/in/{i}.jpg,100,e{i}\n" for i in range(3)))
        out = tmp_path / "out"
        assert main(["annotate", "--manifest", str(manifest), "--output", str(out),
                     "--no-progress", "--storage-options", options]) == 0
        assert main(["annotate", f"s3://{BUCKET}/in", "--output", str(tmp_path / "o2"),
                     "--storage-options", options]) == 2
        assert main(["annotate", "--manifest", str(manifest), "--output", f"s3://{BUCKET}/o3",
                     "--storage-options", options]) == 2
    result = check_invariant(out)
    assert (result["media"].status == "error").all() and len(result["media"]) == 3
    assert (result["errors"].stage == "read").all()
    assert result["errors"].error_type.isin(["PermissionError"]).all()
    captured = capfd.readouterr()
    assert "cannot be read (permission denied" in captured.err
    assert "--output cannot be written (permission denied" in captured.err
    for text in (captured.out, captured.err,
                 *(p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file())):
        assert secret not in text and key not in text
