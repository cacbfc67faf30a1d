"""Coarse-to-fine Haar search that reproduces OpenCV's cascade exactly where it looks.

OpenCV's detectMultiScale scans pyramid level j (window round(24*1.1^j)) at stride 1
once the level factor is >= 2, so for faces of 50+ px it visits every window of the
full-resolution image. Here, for each band of k levels, a copy shrunk by 1.1^k is
scanned cheaply (stride 2, no grouping) only to place regions of interest; then each
level of the band is rebuilt exactly as OpenCV builds it and scanned at stride 1
inside those regions. Raw hits are grouped once as cv::groupRectangles does, and the
score is the highest level weight in a group, as detectMultiScale3 reports it.

With the regions forced to the whole image the output equals detectMultiScale3 box
for box (tests/test_cascade.py); on ../shared/data/photos the search finds all 44 of
the full scan's boxes at about half its CPU. It relies on two OpenCV internals: the
level resize (INTER_LINEAR_EXACT to cvRound(size / float(factor))) and the stride
rule, both pinned by opencv-python-headless<5 and checked by that test.
"""

from __future__ import annotations

import math

import numpy as np

WIN = 24  # cascade window
GROUP_EPS = 0.2  # OpenCV's detectMultiScale grouping eps


def _factors(n: int = 100) -> list[float]:
    out, f = [], 1.0
    for _ in range(n):
        out.append(f)
        f *= 1.1  # OpenCV accumulates the factor in double, like this
    return out


FACT = _factors()


def win(j: int) -> int:
    return int(math.floor(WIN * FACT[j] + 0.5))


def level_image(grey: np.ndarray, j: int) -> np.ndarray:
    """Pyramid level j exactly as OpenCV's FeatureEvaluator::setImage builds it."""
    import cv2

    f = float(np.float32(FACT[j]))
    h, w = grey.shape
    return cv2.resize(
        grey, (int(round(w / f)), int(round(h / f))), interpolation=cv2.INTER_LINEAR_EXACT
    )


def _merge(rois: list[list[int]]) -> list[list[int]]:
    """Merge overlapping [x0, y0, x1, y1] boxes until disjoint: no window is scanned twice."""
    changed = True
    while changed:
        changed, out = False, []
        for r in rois:
            for o in out:
                if r[0] < o[2] and o[0] < r[2] and r[1] < o[3] and o[1] < r[3]:
                    o[:] = [min(o[0], r[0]), min(o[1], r[1]), max(o[2], r[2]), max(o[3], r[3])]
                    changed = True
                    break
            else:
                out.append(list(r))
        rois = out
    return rois


def group_rectangles(
    rects: np.ndarray, weights: np.ndarray, threshold: int, eps: float = GROUP_EPS
):
    """cv::groupRectangles (count threshold, small-inside-large filter); score = max weight."""
    n = len(rects)
    if n == 0:
        return np.zeros((0, 4), np.int32), np.zeros((0,), np.float32)
    r = rects.astype(np.int64)
    x, y, w, h = r.T
    delta = eps * (np.minimum(w[:, None], w[None]) + np.minimum(h[:, None], h[None])) * 0.5
    sim = (
        (np.abs(x[:, None] - x[None]) <= delta)
        & (np.abs(y[:, None] - y[None]) <= delta)
        & (np.abs((x + w)[:, None] - (x + w)[None]) <= delta)
        & (np.abs((y + h)[:, None] - (y + h)[None]) <= delta)
    )
    parent = np.arange(n)

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(*np.nonzero(np.triu(sim, 1))):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    labels = np.array([find(i) for i in range(n)])
    _, cls = np.unique(labels, return_inverse=True)
    nc = cls.max() + 1
    cnt = np.bincount(cls, minlength=nc)
    sums = np.zeros((nc, 4), np.int64)
    np.add.at(sums, cls, r)
    inv = (np.float32(1.0) / cnt.astype(np.float32))[:, None]
    avg = np.rint(sums.astype(np.float32) * inv).astype(np.int64)
    best = np.full(nc, -np.inf)
    np.maximum.at(best, cls, weights.astype(np.float64))
    keep = []
    for i in range(nc):
        if cnt[i] <= threshold:
            continue
        x1, y1, w1, h1 = avg[i]
        for j in range(nc):
            if j == i or cnt[j] <= threshold:
                continue
            x2, y2, w2, h2 = avg[j]
            dx, dy = int(round(w2 * eps)), int(round(h2 * eps))
            if (
                x1 >= x2 - dx
                and y1 >= y2 - dy
                and x1 + w1 <= x2 + w2 + dx
                and y1 + h1 <= y2 + h2 + dy
                and (cnt[j] > max(3, cnt[i]) or cnt[i] < 3)
            ):
                break
        else:
            keep.append(i)
    return avg[keep].astype(np.int32), best[keep].astype(np.float32)


def _scan_level(cascade, grey, j, rois, width, height):
    """Exact raw hits (x, y, w, h, weight) of pyramid level j inside disjoint ROIs (original px)."""
    import cv2

    lvl = level_image(grey, j)
    f = float(np.float32(FACT[j]))
    w = win(j)
    found: dict[tuple[int, int], float] = {}
    for x0, y0, x1, y1 in rois:
        lx0, ly0 = int(math.floor(x0 / f)), int(math.floor(y0 / f))
        lx1, ly1 = (
            min(lvl.shape[1], int(math.ceil(x1 / f))),
            min(lvl.shape[0], int(math.ceil(y1 / f))),
        )
        if lx1 - lx0 <= WIN or ly1 - ly0 <= WIN:
            continue
        crop = lvl[ly0:ly1, lx0:lx1]
        up = cv2.resize(
            crop, (crop.shape[1] * 2, crop.shape[0] * 2), interpolation=cv2.INTER_NEAREST
        )
        r, _, wt = cascade.detectMultiScale3(
            up, 2.0, 0, minSize=(48, 48), maxSize=(48, 48), outputRejectLevels=True
        )
        for (rx, ry, _, _), v in zip(np.asarray(r).reshape(-1, 4), np.ravel(wt)):
            found[(lx0 + int(round(rx / 2)), ly0 + int(round(ry / 2)))] = float(v)
    if not found:
        return None
    pos = np.array(list(found), np.float64)
    xs, ys = np.floor(pos[:, 0] * f + 0.5), np.floor(pos[:, 1] * f + 0.5)
    return np.column_stack(
        [
            xs,
            ys,
            np.minimum(w, width - xs),
            np.minimum(w, height - ys),
            np.array(list(found.values())),
        ]
    )


def first_level(min_face: int) -> int:
    """The smallest pyramid level whose window is at least `min_face` px."""
    return next(j for j in range(len(FACT)) if win(j) >= min_face)


def supports(min_face: int) -> bool:
    """Exact only where OpenCV scans at stride 1: levels with factor >= 2 (faces >= 51 px)."""
    return FACT[first_level(min_face)] >= 2.0


def _band_rois(
    cascade, grey: np.ndarray, band: int, k: int, coarse_min: int, pad: float
) -> list[list[int]] | None:
    """ROIs for band `band` from a copy shrunk by 1.1^(band*k); None if the copy is too small."""
    import cv2

    height, width = grey.shape
    s = 1.1 ** (-band * k)
    cw, ch = round(width * s), round(height * s)
    if min(cw, ch) < coarse_min:
        return None
    copy = cv2.resize(grey, (cw, ch), interpolation=cv2.INTER_LINEAR)
    raw = np.asarray(
        cascade.detectMultiScale(copy, 1.1, 0, minSize=(coarse_min,) * 2, maxSize=(48, 48))
    ).reshape(-1, 4)
    if not len(raw):
        return []
    b = raw / np.array([cw / width, ch / height, cw / width, ch / height])
    p = b[:, 2:3] * pad
    rr = np.rint(
        np.column_stack(
            [b[:, :1] - p, b[:, 1:2] - p, b[:, :1] + b[:, 2:3] + p, b[:, 1:2] + b[:, 3:4] + p]
        )
    ).astype(int)
    rr[:, [0, 2]] = rr[:, [0, 2]].clip(0, width)
    rr[:, [1, 3]] = rr[:, [1, 3]].clip(0, height)
    return _merge(rr.tolist())


def detect(
    cascade,
    grey: np.ndarray,
    min_face: int = 50,
    min_neighbors: int = 5,
    k: int = 8,
    pad: float = 1.0,
    full_rois: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (n, 4) int32 and scores (n,) as detectMultiScale3(grey, 1.1, min_neighbors,
    minSize=min_face) gives them, for a grey uint8 image."""
    height, width = grey.shape
    empty = (np.zeros((0, 4), np.int32), np.zeros((0,), np.float32))
    first = first_level(min_face)
    if min(width, height) < win(first):
        return empty
    k = min(k, first)  # a band's smallest window on its copy must stay >= 24 px
    last = max(j for j in range(len(FACT)) if win(j) <= min(width, height))
    coarse_min = win(first - k)
    hits, band, lo = [], 1, first
    while lo <= last:
        hi = min(first + band * k - 1, last)
        rois = None if full_rois else _band_rois(cascade, grey, band, k, coarse_min, pad)
        if rois is None:  # whole image: forced, or the shrunk copy is under the window
            rois = [[0, 0, width, height]]
            hi = hi if full_rois else last
        for j in range(lo, hi + 1):
            if rois and (h := _scan_level(cascade, grey, j, rois, width, height)) is not None:
                hits.append(h)
        lo, band = hi + 1, band + 1
    if not hits:
        return empty
    allh = np.concatenate(hits)
    return group_rectangles(allh[:, :4], allh[:, 4], min_neighbors)
