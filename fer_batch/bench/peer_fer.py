"""The `fer` package's own loop over a list of images: the peer the bench compares with.

Run as a script (``python peer_fer.py FILES.txt OUT.json``) under any Python that has
`fer`, such as a separate virtual environment; it imports nothing from fer-batch.
Exit status 3 means `fer` could not be imported; OUT.json then says why.
"""

from __future__ import annotations

import json
import sys
import time

IMPORT_FAILED = 3


def main(argv: list[str]) -> int:
    files_list, out = argv
    paths = [line for line in open(files_list).read().splitlines() if line]
    start = time.perf_counter()
    try:
        from fer.fer import FER
    except Exception as e:  # noqa: BLE001 - any import failure is reported, not raised
        with open(out, "w") as f:
            json.dump({"import_error": f"{type(e).__name__}: {e}"}, f)
        return IMPORT_FAILED
    import cv2

    detector = FER()
    ready = time.perf_counter()
    boxes = {}
    for path in paths:
        image = cv2.imread(path)
        found = [] if image is None else detector.detect_emotions(image)
        boxes[path] = [[int(v) for v in face["box"]] for face in found]
    done = time.perf_counter()
    with open(out, "w") as f:
        json.dump({"startup_s": ready - start, "loop_s": done - ready, "boxes": boxes}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
