"""Data sources for training and evaluation: DATA#SPLIT parsing, folders, the FER CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fer_batch.registry import ModelSpec, Preprocessing
from fer_batch.schema import EMOTIONS
from fer_batch.train.data import (
    DataSource,
    iter_labelled,
    list_folder,
    parse_csv_batch,
    parse_data,
    read_folder_batch,
)

SIDE = 48


def pattern(label: int, seed: int) -> np.ndarray:
    """A 48x48 grey face stand-in whose class is easy to learn: one bright band per class."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (SIDE, SIDE)).astype(np.uint8)
    band = SIDE // len(EMOTIONS)
    image[label * band : (label + 1) * band, :] = 220
    return image


def make_folder(root: Path, per_class: int = 4, split: str = "train") -> Path:
    """root/split/<class>/<i>.png, `per_class` images per FER class."""
    import cv2

    for label, name in enumerate(EMOTIONS):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(str(folder / f"{i}.png"), pattern(label, seed=label * 100 + i))
    return root / split


def make_csv(path: Path, per_class: int = 2) -> Path:
    """A FER-2013-style CSV: Training and PublicTest rows for every class, plus a bad row."""
    lines = ["emotion,pixels,Usage"]
    for usage, offset in (("Training", 0), ("PublicTest", 50)):
        for label in range(len(EMOTIONS)):
            for i in range(per_class):
                pixels = " ".join(map(str, pattern(label, offset + label * 10 + i).ravel()))
                lines.append(f"{label},{pixels},{usage}")
    lines.append("3,1 2 3,Training")
    path.write_text("\n".join(lines) + "\n")
    return path


def spec(size: int = 48, channels: int = 1, **pre) -> ModelSpec:
    return ModelSpec(name="t", architecture="cnn4", weights="", sha256=None,
                     input_shape=(size, size, channels), preprocessing=Preprocessing(**pre))


def test_parse_data_splits(tmp_path):
    assert parse_data("a/fer#val", "--val") == DataSource("a/fer/val", "folder")
    assert parse_data("f.csv", "--train", "Training") == DataSource("f.csv", "csv", "Training")
    assert parse_data("f.csv#PublicTest", "--val") == DataSource("f.csv", "csv", "PublicTest")
    assert parse_data("f.csv", "DATA").usage is None
    with pytest.raises(ValueError, match="--val.*'f.csv#test'"):
        parse_data("f.csv#test", "--val")


def test_list_folder_labels_from_class_names(tmp_path):
    root = make_folder(tmp_path, per_class=2).parent
    (root / "train" / "happy" / "notes.txt").write_text("not an image")
    items = list_folder(str(root / "train"))
    assert len(items) == 14
    assert [label for _, label in items] == sorted(label for _, label in items)
    assert {label for uri, label in items if "/happy/" in uri} == {EMOTIONS.index("happy")}
    with pytest.raises(ValueError, match="DATA#SPLIT"):
        list_folder(str(root))


def test_read_folder_batch_prepares_and_skips_bad_files(tmp_path):
    folder = make_folder(tmp_path, per_class=1)
    (folder / "sad" / "broken.png").write_bytes(b"not a png")
    items = list_folder(str(folder))
    uris, labels = zip(*items)
    faces, kept, keys = read_folder_batch(uris, labels, spec(64))
    assert faces.shape == (7, 64, 64, 1) and faces.dtype == np.uint8
    assert kept.tolist() == list(range(7))
    assert len(set(keys.tolist())) == 7


def test_csv_rows_filtered_by_usage_and_validated(tmp_path):
    path = make_csv(tmp_path / "fer.csv")
    usage = parse_data(str(path), "DATA", "Training")
    batches = list(iter_labelled(usage, spec(), {}, batch_size=4))
    labels = np.concatenate([b[1] for b in batches])
    assert len(labels) == 14 and np.bincount(labels).tolist() == [2] * 7
    everything = list(iter_labelled(parse_data(str(path), "DATA"), spec(), {}, batch_size=100))
    assert sum(len(b[1]) for b in everything) == 28
    raw = {"emotion": [0], "pixels": [" ".join(["7"] * SIDE * SIDE)], "Usage": ["Training"]}
    faces, labels, _ = parse_csv_batch(raw, spec(32, equalize=True, scale="zscore"), None)
    assert faces.shape == (1, 32, 32, 1)


def test_folder_and_csv_give_identical_faces(tmp_path):
    """The same 48x48 face read from a PNG or from CSV pixels is the same model input."""
    folder = make_folder(tmp_path, per_class=1)
    csv_path = tmp_path / "one.csv"
    image = pattern(0, seed=0)
    csv_path.write_text("emotion,pixels,Usage\n0," + " ".join(map(str, image.ravel())) +
                        ",Training\n")
    from_csv = next(iter_labelled(parse_data(str(csv_path), "D"), spec(64), {}, 8))[0]
    uri = [u for u, _ in list_folder(str(folder)) if "/angry/" in u]
    from_png = read_folder_batch(uri, [0], spec(64))[0]
    np.testing.assert_array_equal(from_csv, from_png)
