"""List and read media through fsspec: local paths, globs, directories or any URL.

Listing streams (one directory at a time), so the driver never holds a whole
archive's listing; each item carries the object's size and version (mtime or
ETag) so a resumed run can tell a finished input from a changed one.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from fer_batch.schema import media_type_of

_GLOB_CHARS = frozenset("*?[")
TRANSIENT_ATTEMPTS = 5
RETRY_BASE_S = 0.25
T = TypeVar("T")


@dataclass
class ListingStats:
    """What the listing saw besides media: non-media files are skipped, not errors."""

    skipped_non_media: int = 0


def filesystem(uri: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a local path or URL."""
    from fsspec.core import url_to_fs

    return url_to_fs(uri, **storage_options)


def protocol_of(fs: Any) -> str:
    """An fsspec filesystem's protocol name ("file", "s3", ...)."""
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def is_local(fs: Any) -> bool:
    """Whether an fsspec filesystem is the local disk (the one answer to that question)."""
    return protocol_of(fs) in ("file", "local")


def to_uri(fs: Any, path: str) -> str:
    """The canonical URI the tables use: an absolute local path, or protocol://path."""
    return os.path.abspath(path) if is_local(fs) else f"{protocol_of(fs)}://{path}"


def _has_glob(uri: str) -> bool:
    return any(c in _GLOB_CHARS for c in uri)


def check_inputs(inputs: tuple[str, ...], storage_options: dict[str, Any]) -> None:
    """Every input must exist (or, for a glob, match something) before anything starts."""
    for uri in inputs:
        fs, path = filesystem(uri, storage_options)
        try:
            exists = bool(retry_transient(fs.glob, path)) if _has_glob(uri) else retry_transient(
                fs.exists, path)
        except PermissionError as e:
            raise ValueError(f"INPUT cannot be read (permission denied: "
                             f"{redact(str(e), storage_options)}): {uri!r}") from None
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
            for match, info in sorted(retry_transient(fs.glob, path, detail=True).items()):
                if info.get("type") == "directory":
                    yield from _walk(fs, match, stats)
                elif (item := _entry(fs, match, info, stats)) is not None:
                    yield item
        elif retry_transient(fs.isdir, path):
            yield from _walk(fs, path, stats)
        elif (item := _entry(fs, path, retry_transient(fs.info, path), stats)) is not None:
            yield item


def _walk(fs: Any, root: str, stats: ListingStats) -> Iterator[dict[str, Any]]:
    """Every file under `root`, sorted; one directory (or one page) in memory at a time."""
    if hasattr(fs, "_iterdir") and hasattr(fs, "split_path"):  # s3fs: flat, paginated
        for info in _iter_prefix(fs, root):
            if (item := _entry(fs, info["name"], info, stats)) is not None:
                yield item
        return
    pending = [root]
    while pending:
        path = pending.pop()
        listing = sorted(retry_transient(fs.ls, path, detail=True), key=lambda i: i["name"])
        fs.invalidate_cache(path)  # fsspec caches listings; a big archive must not pile up
        for info in listing:
            if info.get("type") != "directory":
                if (item := _entry(fs, info["name"], info, stats)) is not None:
                    yield item
        pending.extend(reversed([i["name"] for i in listing if i.get("type") == "directory"
                                 and i["name"].rstrip("/") != path.rstrip("/")]))


LIST_PAGE = 1000


def _iter_prefix(fs: Any, root: str) -> Iterator[dict[str, Any]]:
    """Objects under an s3fs prefix in key order, pulled one page at a time.

    A flat listing (no delimiter) also finds keys a directory walk cannot reach,
    such as ``in//x.jpg``; s3fs retries each page request on transient errors.
    """
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(root)
    prefix = f"{key.rstrip('/')}/" if key else ""
    pages = fs._iterdir(bucket, delimiter="", prefix=prefix)

    async def next_page() -> list[dict[str, Any]]:
        page = []
        try:
            while len(page) < LIST_PAGE:
                page.append(await pages.__anext__())
        except StopAsyncIteration:
            pass
        return page

    while page := sync(fs.loop, next_page):
        yield from (info for info in page if info.get("type") == "file")


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


def retry_transient(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn`, retrying transient store errors with exponential backoff.

    Listing, reading and writing all go through here; permanent errors (403, 404)
    propagate at once so they become error rows (or, in the driver, fail the run).
    """
    for attempt in range(TRANSIENT_ATTEMPTS):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - classified below; permanent ones propagate
            if attempt == TRANSIENT_ATTEMPTS - 1 or not is_transient(e):
                raise
            time.sleep(min(8.0, RETRY_BASE_S * 2**attempt))
    raise AssertionError("unreachable")


def read_bytes(uri: str, storage_options: dict[str, Any], max_bytes: int | None = None) -> bytes:
    """Whole object bytes, retrying transient store errors with exponential backoff."""

    def read() -> bytes:
        fs, path = filesystem(uri, storage_options)
        with fs.open(path, "rb") as f:
            return f.read() if max_bytes is None else f.read(max_bytes)

    return retry_transient(read)


def stat_object(uri: str, storage_options: dict[str, Any]) -> tuple[int, str]:
    """(size, version) of one object, as the listing would report them."""
    fs, path = filesystem(uri, storage_options)
    info = retry_transient(fs.info, path)
    return int(info.get("size") or 0), _version(info)


_SECRET_NAME = re.compile(r"key|secret|token|passw|credential|signature", re.IGNORECASE)


def secret_values(storage_options: dict[str, Any]) -> list[str]:
    """String values of storage options whose names look secret, nested ones included."""
    found = []
    for name, value in storage_options.items():
        if isinstance(value, dict):
            found.extend(secret_values(value))
        elif isinstance(value, str) and value and _SECRET_NAME.search(str(name)):
            found.append(value)
    return sorted(found, key=len, reverse=True)


def redact(text: str, storage_options: dict[str, Any]) -> str:
    """`text` with every secret storage option value replaced by ***."""
    for value in secret_values(storage_options):
        text = text.replace(value, "***")
    return text
