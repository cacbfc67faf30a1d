"""Labelled faces from the FER-2013 CSV or from ``<split>/<class>/*`` image folders.

A DATA argument is a path or fsspec URL, optionally followed by ``#SPLIT``: for a
folder, the sub-folder that holds the class folders (``fer2013#val``); for the CSV,
the ``Usage`` value to keep (``fer2013.csv#PublicTest``). Every face goes through
the model's own `prepare_face`, so training, evaluation and inference see the same
pixels. The same batch functions serve Ray Datasets (training) and an in-process
iterator (evaluation).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fer_batch.config import DEFAULT_MAX_PIXELS
from fer_batch.images import MediaError, decode_image
from fer_batch.preprocess import prepare_face
from fer_batch.registry import ModelSpec
from fer_batch.schema import EMOTIONS, media_type_of

CSV_SIDE = 48
CSV_USAGES = ("Training", "PublicTest", "PrivateTest")
CSV_COLUMNS = ("emotion", "pixels", "Usage")
FOLDER_BLOCK_ROWS = 256


@dataclass(frozen=True)
class DataSource:
    """Where labelled faces come from: a folder of class folders, or a CSV and a Usage."""

    uri: str
    kind: Literal["folder", "csv"]
    usage: str | None = None

    def describe(self) -> str:
        return f"{self.uri} (Usage={self.usage})" if self.usage else self.uri


def parse_data(text: str, option: str, default_usage: str | None = None) -> DataSource:
    """``URI[#SPLIT]`` -> DataSource; a bad CSV split raises naming `option`."""
    uri, _, split = text.partition("#")
    if not uri:
        raise ValueError(f"{option} must be a path or URL; received: {text!r}")
    if uri.lower().endswith((".csv", ".csv.gz")):
        usage = split or default_usage
        if usage is not None and usage not in CSV_USAGES:
            raise ValueError(f"{option}: the CSV split after '#' must be one of {CSV_USAGES}; "
                             f"received: {text!r}")
        return DataSource(uri, "csv", usage)
    return DataSource(f"{uri.rstrip('/')}/{split}" if split else uri, "folder")


def _labelled_dirs(fs: Any, root: str, uri: str) -> dict[str, str]:
    if not fs.isdir(root):
        raise ValueError(f"data folder not found: {uri!r}")
    dirs = {p.rstrip("/").rsplit("/", 1)[-1]: p for p in fs.ls(root, detail=False)
            if fs.isdir(p)}
    unknown = sorted(d for d in dirs if d not in EMOTIONS and not d.startswith("."))
    if unknown or not dirs:
        raise ValueError(
            f"{uri!r} must hold one folder per FER class {EMOTIONS}; found {sorted(dirs)} "
            "(give the split folder, or DATA#SPLIT, e.g. fer2013#train)"
        )
    return dirs


def list_folder(uri: str, storage_options: dict[str, Any] | None = None
                ) -> list[tuple[str, int]]:
    """(image URI, label) for every image under ``uri/<class>/``, sorted for determinism."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    dirs = _labelled_dirs(fs, root, uri)
    items: list[tuple[str, int]] = []
    for label, name in enumerate(EMOTIONS):
        if name in dirs:
            files = sorted(p for p in fs.find(dirs[name]) if media_type_of(p) == "image")
            items.extend((fs.unstrip_protocol(p), label) for p in files)
    if not items:
        raise ValueError(f"no images found under the class folders of {uri!r}")
    return items


def _empty(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.zeros((0, *spec.input_shape), np.uint8), np.zeros(0, np.int64),
            np.zeros(0, np.int64))


def _stack(faces: list[np.ndarray], labels: list[int], keys: list[int], spec: ModelSpec
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not faces:
        return _empty(spec)
    return np.stack(faces), np.asarray(labels, np.int64), np.asarray(keys, np.int64)


def read_folder_batch(uris: Sequence[str], labels: Sequence[int], spec: ModelSpec,
                      storage_options: dict[str, Any] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fetch, decode and prepare images -> (faces, labels, fold keys).

    Unreadable files are bad input, not bad configuration: they are left out.
    """
    import fsspec

    if len(uris) == 0:
        return _empty(spec)
    fs, _ = fsspec.core.url_to_fs(uris[0], **(storage_options or {}))
    faces, kept, keys = [], [], []
    for uri, label in zip(uris, labels):
        try:
            data = fs.cat_file(fsspec.core.strip_protocol(uri))
            pixels = decode_image(data, DEFAULT_MAX_PIXELS, spec.preprocessing.color).pixels
        except (OSError, MediaError):
            continue
        faces.append(prepare_face(pixels, spec))
        kept.append(int(label))
        keys.append(zlib.crc32(str(uri).encode()))
    return _stack(faces, kept, keys, spec)


def parse_csv_batch(batch: dict[str, Any], spec: ModelSpec, usage: str | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FER-2013 CSV rows -> (faces, labels, fold keys); malformed rows are left out."""
    faces, labels, keys = [], [], []
    usages = batch.get("Usage")
    for i, (emotion, text) in enumerate(zip(batch["emotion"], batch["pixels"])):
        if usage is not None and (usages is None or usages[i] != usage):
            continue
        values = np.array(str(text).split(), dtype=np.int64)
        if values.size != CSV_SIDE * CSV_SIDE or not 0 <= int(emotion) < len(EMOTIONS):
            continue
        if values.min() < 0 or values.max() > 255:
            continue
        grey = values.astype(np.uint8).reshape(CSV_SIDE, CSV_SIDE)
        faces.append(prepare_face(grey, spec))
        labels.append(int(emotion))
        keys.append(zlib.crc32(str(text).encode()))
    return _stack(faces, labels, keys, spec)


def _as_rows(faces: np.ndarray, labels: np.ndarray, keys: np.ndarray) -> dict[str, np.ndarray]:
    return {"image": faces, "label": labels, "key": keys}


def _folder_rows(batch: dict[str, np.ndarray], spec: ModelSpec,
                 storage_options: dict[str, Any]) -> dict[str, np.ndarray]:
    return _as_rows(*read_folder_batch(list(batch["uri"]), list(batch["label"]), spec,
                                       storage_options))


def _csv_rows(batch: dict[str, np.ndarray], spec: ModelSpec, usage: str | None
              ) -> dict[str, np.ndarray]:
    return _as_rows(*parse_csv_batch(batch, spec, usage))


def _arrow_filesystem(uri: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    """(pyarrow filesystem or None for local files, path) for Ray's file readers."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    if isinstance(fs, LocalFileSystem):
        return None, path
    return PyFileSystem(FSSpecHandler(fs)), path


def _csv_convert_options() -> Any:
    import pyarrow as pa
    from pyarrow import csv

    return csv.ConvertOptions(
        column_types={"emotion": pa.int64(), "pixels": pa.string(), "Usage": pa.string()},
        include_columns=list(CSV_COLUMNS), include_missing_columns=True,
    )


def ray_dataset(source: DataSource, spec: ModelSpec, storage_options: dict[str, Any],
                seed: int = 0) -> Any:
    """A Ray Dataset of model-ready uint8 faces: columns image, label, key (for CV folds).

    Folder listings are shuffled once (seeded) so that blocks mix classes.
    """
    import ray

    if source.kind == "folder":
        items = list_folder(source.uri, storage_options)
        order = np.random.default_rng(seed).permutation(len(items))
        rows = [{"uri": items[i][0], "label": items[i][1]} for i in order]
        blocks = max(1, -(-len(rows) // FOLDER_BLOCK_ROWS))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        return ds.map_batches(_folder_rows, batch_size=FOLDER_BLOCK_ROWS,
                              fn_kwargs={"spec": spec, "storage_options": storage_options})
    filesystem, path = _arrow_filesystem(source.uri, storage_options)
    ds = ray.data.read_csv(path, filesystem=filesystem, convert_options=_csv_convert_options())
    return ds.map_batches(_csv_rows, batch_size=FOLDER_BLOCK_ROWS,
                          fn_kwargs={"spec": spec, "usage": source.usage})


def iter_labelled(source: DataSource, spec: ModelSpec, storage_options: dict[str, Any],
                  batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """In-process (faces, labels) batches, for evaluation without Ray."""
    if source.kind == "folder":
        items = list_folder(source.uri, storage_options)
        for start in range(0, len(items), batch_size):
            uris, labels = zip(*items[start : start + batch_size])
            faces, labels, _ = read_folder_batch(uris, labels, spec, storage_options)
            yield faces, labels
        return
    import fsspec
    from pyarrow import csv

    read = csv.ReadOptions(block_size=1 << 22)
    with fsspec.open(source.uri, "rb", compression="infer", **storage_options) as f:
        reader = csv.open_csv(f, read_options=read, convert_options=_csv_convert_options())
        for record_batch in reader:
            batch = {name: record_batch.column(name).to_pylist() for name in CSV_COLUMNS}
            faces, labels, _ = parse_csv_batch(batch, spec, source.usage)
            yield faces, labels
