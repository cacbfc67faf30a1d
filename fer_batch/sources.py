"""List and read media through fsspec: local paths, globs, directories or any URL.

Listing streams (one directory at a time), so the driver never holds a whole
archive's listing; each item carries the object's size and version (mtime or
ETag) so a resumed run can tell a finished input from a changed one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fer_batch.schema import media_type_of

_GLOB_CHARS = frozenset("*?[")
TRANSIENT_ATTEMPTS = 5


@dataclass
class ListingStats:
    """What the listing saw besides media: non-media files are skipped, not errors."""

    skipped_non_media: int = 0


def filesystem(uri: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a local path or URL."""
    from fsspec.core import url_to_fs

    return url_to_fs(uri, **storage_options)


def to_uri(fs: Any, path: str) -> str:
    """The canonical URI the tables use: an absolute local path, or protocol://path."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return os.path.abspath(path)
    return f"{protocol}://{path}"


def _has_glob(uri: str) -> bool:
    return any(c in _GLOB_CHARS for c in uri)


def check_inputs(inputs: tuple[str, ...], storage_options: dict[str, Any]) -> None:
    """Every input must exist (or, for a glob, match something) before anything starts."""
    for uri in inputs:
        fs, path = filesystem(uri, storage_options)
        exists = bool(fs.glob(path)) if _has_glob(uri) else fs.exists(path)
        if not exists:
            raise ValueError(f"INPUT does not exist: {uri!r}")


def _version(info: dict[str, Any]) -> str:
    """ETag for object stores, mtime otherwise: a changed object gets a new version."""
    for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "updated"):
        value = info.get(key)
        if value is not None:
            return str(value).strip('"')
    return ""


def _entry(fs: Any, path: str, info: dict[str, Any], stats: ListingStats) -> dict[str, Any] | None:
    media_type = media_type_of(path)
    if media_type is None:
        stats.skipped_non_media += 1
        return None
    return {
        "source_uri": to_uri(fs, path),
        "media_type": media_type,
        "size_bytes": int(info.get("size") or 0),
        "version": _version(info),
    }


def iter_media(
    inputs: tuple[str, ...], storage_options: dict[str, Any], stats: ListingStats
) -> Iterator[dict[str, Any]]:
    """Yield one dict per media file under `inputs`, in a deterministic order."""
    for uri in inputs:
        fs, path = filesystem(uri, storage_options)
        if _has_glob(uri):
            for match, info in sorted(fs.glob(path, detail=True).items()):
                if info.get("type") == "directory":
                    yield from _walk(fs, match, stats)
                elif (item := _entry(fs, match, info, stats)) is not None:
                    yield item
        elif fs.isdir(path):
            yield from _walk(fs, path, stats)
        elif (item := _entry(fs, path, fs.info(path), stats)) is not None:
            yield item


def _walk(fs: Any, root: str, stats: ListingStats) -> Iterator[dict[str, Any]]:
    for dirpath, _dirs, files in fs.walk(root, detail=True):
        for name in sorted(files):
            info = files[name]
            path = info.get("name") or f"{dirpath.rstrip('/')}/{name}"
            if (item := _entry(fs, path, info, stats)) is not None:
                yield item


def is_transient(error: BaseException) -> bool:
    """Store errors worth retrying: throttling, resets, timeouts, 5xx."""
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    text = f"{type(error).__name__} {error}"
    return any(
        token in text
        for token in ("SlowDown", "503", "500 ", "RequestTimeout", "Throttl", "reset by peer",
                      "ServiceUnavailable", "InternalError", "ReadTimeout", "ConnectTimeout")
    )


def read_bytes(uri: str, storage_options: dict[str, Any], max_bytes: int | None = None) -> bytes:
    """Whole object bytes, retrying transient store errors with exponential backoff."""
    for attempt in range(TRANSIENT_ATTEMPTS):
        try:
            fs, path = filesystem(uri, storage_options)
            with fs.open(path, "rb") as f:
                return f.read() if max_bytes is None else f.read(max_bytes)
        except Exception as e:  # noqa: BLE001 - classified below; permanent ones propagate
            if attempt == TRANSIENT_ATTEMPTS - 1 or not is_transient(e):
                raise
            time.sleep(min(8.0, 0.25 * 2**attempt))
    raise AssertionError("unreachable")
