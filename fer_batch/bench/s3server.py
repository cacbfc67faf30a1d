"""A real S3-protocol server for tests and the bench: moto's server as a subprocess on 127.0.0.1.

`moto_server()` starts the server in its own process, reached over HTTP like any S3
endpoint, and stops it by its PID on exit; test modules wrap it in a fixture.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BUCKET = "fer"
KEY, SECRET = "testing-key", "testing-secret"


@dataclass(frozen=True)
class S3:
    """A running server: its endpoint and fsspec storage options for it."""

    endpoint: str
    pid: int

    @property
    def options(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint, "key": KEY, "secret": SECRET}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET, region_name="us-east-1")

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server(env: dict[str, str] | None = None, timeout_s: float = 30.0) -> Iterator[S3]:
    """Start `python -m moto.server` on a free 127.0.0.1 port; stop it by PID on exit."""
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, endpoint, timeout_s, log)
        yield S3(endpoint=endpoint, pid=proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _wait_ready(proc: subprocess.Popen, endpoint: str, timeout_s: float, log) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"moto server exited: {log.read().decode(errors='replace')}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto server did not answer on {endpoint} in {timeout_s} s")


def seed(server: S3, files: dict[str, bytes], bucket: str = BUCKET) -> None:
    """Create `bucket` (if needed) and put each key's bytes."""
    client = server.client()
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)
    for key, body in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def all_keys(server: S3, bucket: str = BUCKET) -> set[str]:
    paginator = server.client().get_paginator("list_objects_v2")
    return {o["Key"] for page in paginator.paginate(Bucket=bucket)
            for o in page.get("Contents", [])}


def download(server: S3, uri: str, dest: Path) -> Path:
    """Copy an output tree from the server to `dest`, for the local invariant checks."""
    fs = server.fs()
    root = uri.removeprefix("s3://").rstrip("/")
    for path in fs.find(root):
        target = dest / path[len(root) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fs.cat_file(path))
    return dest
