"""A registry model exported to LiteRT: CPU classification without TensorFlow.

A classification actor that imports TensorFlow spends 13 s doing so alone, and 15-31 s next
to the detection actors of a 2-core machine, before it classifies a face; LiteRT imports in
under a second. Once loaded, the exported mini-XCEPTION takes 0.46 ms per face on one core
against Keras' 1.6 ms, and gives the same probabilities within 2e-6 (tests/test_litert.py).
So an entry that names a `litert` file (sha256-checked, like its weights) is run through it
on CPU; on a GPU, and for entries without one, Keras runs the model.

The file is made from the Keras weights, and a test holds the two to the same outputs:

    python -m fer_batch.litert fer-mini-xception fer_batch/models/fer-mini-xception.tflite

`fer-batch train` writes one beside every model it trains (fer_batch/train/export.py), after
the same check (`export_checked`), so a trained model classifies on CPU without TensorFlow too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fer_batch.registry import (
    ModelSpec,
    checked_file,
    load_keras_model,
    resolve_model,
    sha256_of,
)


class LiteRTModel:
    """`predict_on_batch` over a LiteRT interpreter, one thread (one actor per core), its
    input sized to each batch size asked for (classification pads calls to a few sizes)."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path), num_threads=1)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._rows = 0

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        if len(x) != self._rows:
            self._interpreter.resize_tensor_input(self._input, list(x.shape))
            self._interpreter.allocate_tensors()
            self._rows = len(x)
        self._interpreter.set_tensor(self._input, x)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()


def litert_path(spec: ModelSpec) -> Path:
    """The entry's LiteRT file, after its sha256 check."""
    return checked_file(Path(str(spec.litert)), spec.litert_sha256,
                        f"LiteRT file for model {spec.name!r}")


def load_scoring_model(spec: ModelSpec, storage_options: dict[str, Any] | None = None,
                       gpu: bool = False) -> Any:
    """What classifies the spec's faces: its LiteRT file on CPU when it has one, else Keras."""
    if spec.litert and not gpu:
        return LiteRTModel(litert_path(spec))
    return load_keras_model(spec, storage_options)


# How far the export's probabilities may be from Keras's (the default model's: 2e-6).
EXPORT_TOLERANCE = 1e-4


def export_checked(model: Any, spec: ModelSpec, out: Path, n: int = 8, seed: int = 0) -> str:
    """Write the Keras `model` (the spec's) as a LiteRT file at `out`, then hold its
    probabilities to Keras's on `n` random faces, preprocessed as the spec's are, within
    EXPORT_TOLERANCE; its sha256. Raises RuntimeError, leaving no file, when they differ."""
    from fer_batch.preprocess import scale_batch

    model.export(str(out), format="litert")
    rng = np.random.default_rng(seed)
    x = scale_batch(rng.integers(0, 256, (n, *spec.input_shape), dtype=np.uint8),
                    spec.preprocessing)
    gap = float(np.abs(LiteRTModel(out).predict_on_batch(x)
                       - np.asarray(model.predict_on_batch(x))).max())
    if not gap <= EXPORT_TOLERANCE:
        out.unlink()
        raise RuntimeError(f"the LiteRT export of {spec.name!r} differs from the Keras model "
                           f"by {gap:.3g} in probability (allowed: {EXPORT_TOLERANCE})")
    return sha256_of(out)


def export(spec: ModelSpec, out: Path) -> str:
    """Write the spec's Keras model as a LiteRT file (checked); its sha256."""
    return export_checked(load_keras_model(spec), spec, out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m fer_batch.litert")
    p.add_argument("model", help="a registry name, a trained model directory or a .keras file")
    p.add_argument("out", help="the .tflite file to write")
    args = p.parse_args(argv)
    print(f"litert_sha256 = {export(resolve_model(args.model), Path(args.out))!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
