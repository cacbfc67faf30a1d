"""The three Ray Data actors of an annotate run, one constructor shape for all:
``Stage(cfg, spec, run_id)``.

- `FaceStage` (CPU): read, decode, detect and crop a batch of work items (images, or
  video segments), calling the pure functions of fer_batch/faces.py and fer_batch/video.py;
- `ClassifyStage` (GPU or CPU): classify every face of a batch in batched model calls
  (fer_batch/infer.py);
- `CommitWriter` (no CPU slot): commit each classified block (fer_batch/sink.py).

Whatever goes wrong with one file becomes that item's error rows; the batch, and the job,
go on. Each actor loads what it needs (detector, model) once.
"""

from __future__ import annotations

import numpy as np

from fer_batch.config import AnnotateConfig
from fer_batch.detect import make_detector
from fer_batch.faces import crop_faces, decode_for_detection, face_meta, find_faces
from fer_batch.images import MediaError
from fer_batch.infer import Classifier
from fer_batch.manifest import fill_versions
from fer_batch.records import ITEM_COLUMNS, ItemResult, results_to_batch
from fer_batch.registry import Scorer
from fer_batch.schema import STAGE_DETECT, STAGE_READ
from fer_batch.sink import write_commit
from fer_batch.sources import read_bytes, redact
from fer_batch.store import Store
from fer_batch.video import detect_segment


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class FaceStage:
    """Read, decode, detect and crop a batch of work items."""

    def __init__(self, cfg: AnnotateConfig, spec: Scorer, run_id: str) -> None:
        self.cfg = cfg
        self.spec = spec
        self.detector = make_detector(cfg.detect)
        self.node_id = _node_id()

    def __call__(self, items: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = fill_versions(items, self.cfg.storage_options)
        results = []
        for i in range(len(items["source_uri"])):
            item = {name: items[name][i] for name in ITEM_COLUMNS}
            if item["media_type"] == "video":
                results.append(detect_segment(item, self.cfg, self.spec, self.detector))
            else:
                results.append(self.detect_image(item))
        return results_to_batch(items, results, self.spec.crop_shape, self.node_id)

    def detect_image(self, item: dict) -> ItemResult:
        result = ItemResult()
        uri = str(item["source_uri"])
        try:
            data = read_bytes(uri, self.cfg.storage_options)
        except Exception as e:  # noqa: BLE001 - any read failure is this file's error row
            result.add_error(STAGE_READ, type(e).__name__, f"cannot read {uri}: {e}")
            return result
        try:
            decoded = decode_for_detection(data, self.cfg.detect, self.spec)
            result.width, result.height = decoded.width, decoded.height
            det = find_faces(decoded.pixels, decoded.scale, decoded.width, decoded.height,
                             self.cfg.detect, self.detector)
            result.crops = crop_faces(decoded.pixels, decoded.scale, det, self.spec)
        except MediaError as e:
            result.add_error(e.stage, e.error_type, str(e))
            return result
        except Exception as e:  # noqa: BLE001 - a detector crash on odd pixels is bad data too
            result.add_error(STAGE_DETECT, type(e).__name__, f"face detection failed: {e}")
            return result
        result.meta = face_meta(det, frame_index=0, timestamp_s=float("nan"))
        return result


class ClassifyStage:
    """Classify every face of a batch of work items in batched calls."""

    def __init__(self, cfg: AnnotateConfig, spec: Scorer, run_id: str) -> None:
        import ray

        # Keras on the GPU Ray gave this actor; on CPU, the model's LiteRT file if it has one
        gpu = bool(ray.get_gpu_ids())
        self.classifier = Classifier(spec, cfg.batch_size, cfg.storage_options, gpu)
        self.node_id = _node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shape = self.classifier.spec.crop_shape
        crops = [np.asarray(c, np.uint8).reshape(-1, *shape) for c in batch.pop("crops")]
        counts = [len(c) for c in crops]
        faces = np.concatenate(crops) if sum(counts) else np.zeros((0, *shape), np.uint8)
        probs = self.classifier(faces)
        scores = np.empty(len(counts), dtype=object)
        for i, part in enumerate(np.split(probs, np.cumsum(counts)[:-1])):
            scores[i] = part
        batch["scores"] = scores
        batch["classify_node"] = np.array([self.node_id] * len(counts), dtype=object)
        return batch


class CommitWriter:
    """Commit each classified block (its parts, then its marker: fer_batch/store.py)."""

    def __init__(self, cfg: AnnotateConfig, spec: Scorer, run_id: str) -> None:
        self.store = Store.open(cfg.output, cfg.storage_options)
        self.run_id = run_id
        self.model = spec.name

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        secrets = self.store.storage_options  # error text from a store must not leak keys
        batch = {**batch, "errors_json": np.array([redact(str(t), secrets)
                                                   for t in batch["errors_json"]], dtype=object)}
        return write_commit(batch, self.store, self.run_id, self.model)
