"""Per-stage costs in plain loops on one core, and the ceiling they imply.

`measure_stages` runs in a fresh process pinned to one core (see `run_pinned`), so
OpenCV and TensorFlow cannot borrow other cores: TensorFlow sizes its thread pools
when it starts, and only a process that is pinned (and told so) before that point
measures core-seconds. Copies of a file (same name and size) are timed once and
weighted by how often they occur, so a 20x-copied archive costs one pass.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np

from fer_batch.config import DetectConfig, VideoConfig

STEPS = ("read", "decode", "detect", "crop")
CEILING_STEPS = ("decode", "detect", "crop")  # read is I/O, reported beside the ceiling
MIN_CLASSIFY_FACES = 512


def run_pinned(fn: Callable[..., dict], *args: Any) -> dict:
    """Run `fn(*args)` in a fresh spawned process pinned to one core; returns its result."""
    core = pinnable_core()
    initializer, initargs = (os.sched_setaffinity, (0, {core})) if core is not None else (None, ())
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=initializer,
                             initargs=initargs) as pool:
        result = pool.submit(fn, *args).result()
    return {**result, "pinned_core": core}


def pinnable_core() -> int | None:
    """The last core this process may use, or None where affinity cannot be set."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    return max(os.sched_getaffinity(0))


def group_copies(entries: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Listing entries grouped by (file name, size): copies cost the same, so time one."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for entry in entries:
        key = (entry["source_uri"].rsplit("/", 1)[-1], int(entry["size_bytes"]))
        groups.setdefault(key, []).append(entry)
    return groups


def pick_sample(keys: list, sample: int) -> list:
    """At most `sample` keys, evenly spread over the listing order."""
    if len(keys) <= sample:
        return keys
    step = len(keys) / sample
    return [keys[int(i * step)] for i in range(sample)]


def measure_stages(inputs: tuple[str, ...], model: str, detect: DetectConfig,
                   batch_sizes: tuple[int, ...], sample: int, repeat: int,
                   video_fps: float) -> dict[str, Any]:
    """Time every step on the same inputs; meant to run inside `run_pinned`."""
    import cv2

    from fer_batch.detect import make_detector
    from fer_batch.registry import resolve_model
    from fer_batch.sources import ListingStats, iter_media

    cv2.setNumThreads(1)
    spec = resolve_model(model)
    detector = make_detector(detect)
    groups = group_copies(list(iter_media(inputs, {}, ListingStats())))
    timed, notes, crops = [], [], []
    for key in pick_sample(list(groups), sample):
        entry = groups[key][0]
        if entry["media_type"] == "video":
            result = time_video(entry, VideoConfig(fps=video_fps), detect, spec, detector, notes)
        else:
            result = time_image(entry["source_uri"], detect, spec, detector, repeat)
        if result is None:
            continue
        crops.append(result.pop("crops"))
        timed.append({**result, "copies": len(groups[key]), "media_type": entry["media_type"]})
    faces = np.concatenate(crops) if crops else np.zeros((0, *spec.input_shape), np.uint8)
    return {
        "files": sum(len(g) for g in groups.values()),
        "distinct_files": len(groups),
        "timed_files": len(timed),
        "per_file": weighted_means(timed),
        "classify": time_classify(spec, faces, batch_sizes, repeat, notes),
        "notes": notes,
    }


def weighted_means(timed: list[dict[str, Any]]) -> dict[str, float]:
    """Per-file means of each step's seconds and of faces/frames, weighted by copies."""
    weights = np.array([t["copies"] for t in timed], np.float64)
    if not weights.sum():
        return {}
    names = [*STEPS, "faces", "frames"]
    return {name: float(np.average([t[name] for t in timed], weights=weights)) for name in names}


def time_image(uri: str, detect: DetectConfig, spec: Any, detector: Any,
               repeat: int) -> dict[str, Any]:
    """Best-of-`repeat` seconds per step: the functions FaceStage.detect_image calls."""
    from fer_batch.detect import EMPTY
    from fer_batch.faces import crop_faces, decode_for_detection, find_faces
    from fer_batch.images import MediaError
    from fer_batch.sources import read_bytes

    best = dict.fromkeys(STEPS, math.inf)
    for _ in range(repeat):
        t = [time.perf_counter()]
        data = read_bytes(uri, {})
        t.append(time.perf_counter())
        det, crops = EMPTY, np.zeros((0, *spec.crop_shape), np.uint8)
        try:
            decoded = decode_for_detection(data, detect, spec)
            t.append(time.perf_counter())
            det = find_faces(decoded.pixels, decoded.scale, decoded.width, decoded.height,
                             detect, detector)
            t.append(time.perf_counter())
            crops = crop_faces(decoded.pixels, decoded.scale, det, spec)
        except MediaError:
            pass  # a bad file costs what it took to find out; later steps cost nothing
        t.append(time.perf_counter())
        t += [t[-1]] * (len(STEPS) + 1 - len(t))
        for i, step in enumerate(STEPS):
            best[step] = min(best[step], t[i + 1] - t[i])
    return {**best, "faces": len(det), "frames": 1, "crops": crops}


def time_video(entry: dict[str, Any], vcfg: VideoConfig, detect: DetectConfig, spec: Any,
               detector: Any, notes: list[str]) -> dict[str, Any] | None:
    """Seconds per step over a whole video, sampled as the pipeline samples it (timed once:
    a video is long enough to be stable); decode is the time spent producing sampled frames."""
    try:
        from fer_batch.video import DecodeState, LocalCopy, open_video, sampled_frames
    except ImportError as e:
        notes.append(f"video not timed ({entry['source_uri']}): fer_batch.video: {e}")
        return None
    from fer_batch.faces import crop_faces, find_faces, frame_for_detection

    spent = dict.fromkeys(STEPS, 0.0)
    faces, frames, crops = 0, 0, []
    local = LocalCopy()
    start = time.perf_counter()
    cap, info = open_video(local.get(entry["source_uri"], entry["version"], {}))
    spent["read"] = time.perf_counter() - start
    try:
        frames_iter = sampled_frames(cap, info, 0.0, math.inf, vcfg, DecodeState())
        while True:
            t0 = time.perf_counter()
            frame = next(frames_iter, None)
            t1 = time.perf_counter()
            spent["decode"] += t1 - t0
            if frame is None:
                break
            pixels = frame_for_detection(frame.pixels, detect, spec)
            det = find_faces(pixels, 1.0, pixels.shape[1], pixels.shape[0], detect, detector)
            t2 = time.perf_counter()
            crops.append(crop_faces(pixels, 1.0, det, spec))
            spent["detect"] += t2 - t1
            spent["crop"] += time.perf_counter() - t2
            faces, frames = faces + len(det), frames + 1
    finally:
        cap.release()
        local.clear()
    empty = np.zeros((0, *spec.crop_shape), np.uint8)
    return {**spent, "faces": faces, "frames": frames,
            "crops": np.concatenate(crops) if crops else empty}


def time_classify(spec: Any, faces: np.ndarray, batch_sizes: tuple[int, ...], repeat: int,
                  notes: list[str]) -> dict[str, Any]:
    """Seconds per face at each batch size, in full batches, on one thread, with what a CPU
    classification actor runs: the model's LiteRT file if it has one, else Keras."""
    from fer_batch.infer import classify
    from fer_batch.litert import load_scoring_model

    if spec.litert:
        threads = "LiteRT on one thread, process pinned to one core"
    else:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        threads = ("TensorFlow intra/inter-op threads set to 1 before start, process pinned "
                   "to one core")
    model = load_scoring_model(spec)
    if not len(faces):
        notes.append("no faces found: classification timed on blank crops")
        faces = np.zeros((1, *spec.input_shape), np.uint8)
    per_face = {}
    for batch in batch_sizes:
        n = batch * math.ceil(max(batch, MIN_CLASSIFY_FACES) / batch)
        tiled = np.resize(faces, (n, *faces.shape[1:]))
        classify(model, tiled[:batch], spec, batch)  # trace and warm this shape once
        best = math.inf
        for _ in range(repeat):
            start = time.perf_counter()
            classify(model, tiled, spec, batch)
            best = min(best, time.perf_counter() - start)
        per_face[str(batch)] = best / n
    return {"per_face_s": per_face, "threads": threads}


def ceiling(stages: dict[str, Any], cores: int, batch_size: int) -> dict[str, Any]:
    """What `cores` cores could do with zero overhead: cores / per-file core-seconds."""
    per = stages["per_file"]
    classify_s = stages["classify"]["per_face_s"][str(batch_size)] * per["faces"]
    per_file = sum(per[s] for s in CEILING_STEPS) + classify_s
    files_per_s = cores / per_file
    return {
        "cores": cores,
        "batch_size": batch_size,
        "per_file_s": per_file,
        "per_file_classify_s": classify_s,
        "files_per_s": files_per_s,
        "frames_per_s": files_per_s * per["frames"],
        "faces_per_s": files_per_s * per["faces"],
    }


def stage_rates(stages: dict[str, Any]) -> dict[str, Any]:
    """One core's rate for each step alone: files/s, and faces/s per classify batch size."""
    per = stages["per_file"]
    return {
        "files_per_s": {s: 1.0 / per[s] for s in STEPS if per.get(s, 0) > 0},
        "classify_faces_per_s": {b: 1.0 / s for b, s in stages["classify"]["per_face_s"].items()},
    }
