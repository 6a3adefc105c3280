"""Point-detection evaluation for mitotic figures: F1 within a radius, one-to-one matching, a score
threshold chosen on validation data, per slide and pooled, and the annotated-mitoses ratio.

Conventions: points are level-0 ``(x, y)`` pixels (x = column), boxes level-0 ``(x, y, w, h)``,
half-open.

Matching (:func:`match_points`): a detection and a ground-truth point *may* match when their
Euclidean distance is at most ``radius`` (default 25 px at level 0, inclusive). Among those pairs
a one-to-one matching is chosen that first **maximises the number of matches** and then minimises
the summed distance (an optimal assignment, :func:`scipy.optimize.linear_sum_assignment`, solved
per connected component of the "within radius" graph so that large slides stay cheap). Each
detection and each ground truth is used at most once: two detections near one mitosis give one
true positive and one false positive. Scores do not enter the matching; thresholding happens first
(detections with ``score >= threshold`` are kept). Unlike greedy matching by descending score, the
result cannot lose a match because a high-scoring detection took the only ground truth another
detection could reach, so F1 is the best achievable for the kept detections.

Counts: TP = matched pairs, FP = unmatched detections, FN = unmatched ground truths;
``F1 = 2 TP / (2 TP + FP + FN)``, ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``;
each is ``nan`` when its denominator is 0 (e.g. F1 of a slide with neither ground truth nor
detections). Pooled metrics sum TP / FP / FN over slides before dividing (not a mean of per-slide
F1s).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

RADIUS_PX = 25.0  # level-0 pixels (6.25 µm at 0.25 µm/px)
MAX_THRESHOLD_CANDIDATES = 512

Detections = tuple[np.ndarray, np.ndarray]  # (points (k, 2), scores (k,))


def _points(a: object) -> np.ndarray:
    return np.asarray(a, np.float64).reshape(-1, 2)


@dataclass(frozen=True)
class DetectionCounts:
    """True positives, false positives and false negatives, with the derived rates."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else math.nan

    def to_dict(self) -> dict:
        return {**asdict(self), "precision": self.precision, "recall": self.recall, "f1": self.f1}


def match_points(detections: np.ndarray, truth: np.ndarray, radius: float = RADIUS_PX) -> np.ndarray:
    """One-to-one matches ``(n, 2)`` int64 of ``(detection index, truth index)`` within ``radius``.

    Maximum-cardinality matching with minimal total distance among the maximum ones (see the
    module doc); rows are sorted by detection index.
    """
    det, gt = _points(detections), _points(truth)
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if len(det) == 0 or len(gt) == 0:
        return np.zeros((0, 2), np.int64)
    pairs = cKDTree(det).sparse_distance_matrix(cKDTree(gt), radius, output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros((0, 2), np.int64)
    di, gi, dist = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64), pairs["v"].astype(np.float64)
    nd = len(det)
    # bipartite graph: detections are nodes 0..nd-1, truths nd..nd+ng-1
    graph = coo_matrix((np.ones(len(di)), (di, gi + nd)), shape=(nd + len(gt),) * 2)
    _, comp = connected_components(graph, directed=False)
    pair_comp = comp[di]
    order = np.argsort(pair_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(pair_comp[order])) + 1
    out: list[np.ndarray] = []
    for sel in np.split(order, bounds):
        d_ids, d_loc = np.unique(di[sel], return_inverse=True)
        g_ids, g_loc = np.unique(gi[sel], return_inverse=True)
        if len(sel) == 1:
            out.append(np.array([[d_ids[0], g_ids[0]]]))
            continue
        # pairs beyond the radius cost more than any set of valid pairs: cardinality comes first
        big = (radius + 1.0) * (min(len(d_ids), len(g_ids)) + 1)
        cost = np.full((len(d_ids), len(g_ids)), big)
        cost[d_loc, g_loc] = dist[sel]
        rows, cols = linear_sum_assignment(cost)
        ok = cost[rows, cols] < big
        out.append(np.stack([d_ids[rows[ok]], g_ids[cols[ok]]], axis=1))
    matches = np.concatenate(out).astype(np.int64)
    return matches[np.argsort(matches[:, 0], kind="stable")]


def count_matches(detections: np.ndarray, truth: np.ndarray, radius: float = RADIUS_PX) -> DetectionCounts:
    """TP / FP / FN of one set of (already thresholded) detections against the ground truth."""
    det, gt = _points(detections), _points(truth)
    tp = len(match_points(det, gt, radius))
    return DetectionCounts(tp, len(det) - tp, len(gt) - tp)


def _restrict(points: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
    """Mask of the points inside any of the half-open boxes (all points when ``boxes`` is None)."""
    if boxes is None:
        return np.ones(len(points), bool)
    return points_in_boxes(points, boxes)


def points_in_boxes(points: np.ndarray, boxes: Iterable[Sequence[float]]) -> np.ndarray:
    """Mask of the level-0 points inside the union of the half-open level-0 boxes ``(x, y, w, h)``."""
    pts = _points(points)
    b = np.asarray(list(boxes) if not isinstance(boxes, np.ndarray) else boxes, np.float64).reshape(-1, 4)
    if len(b) == 0 or len(pts) == 0:
        return np.zeros(len(pts), bool)
    x, y = pts[:, 0:1], pts[:, 1:2]
    inside = (x >= b[:, 0]) & (x < b[:, 0] + b[:, 2]) & (y >= b[:, 1]) & (y < b[:, 1] + b[:, 3])
    return inside.any(axis=1)


def evaluate_detections(detections: Mapping[str, Detections], truth: Mapping[str, np.ndarray], *,
                        threshold: float = 0.5, radius: float = RADIUS_PX,
                        boxes: Mapping[str, np.ndarray] | None = None) -> dict:
    """F1 per slide and pooled at a score ``threshold`` (detections with ``score >= threshold``).

    ``detections``: slide id -> ``(points (k, 2), scores (k,))``; ``truth``: slide id -> points.
    Slides in either mapping are evaluated (a slide missing from ``detections`` has none; one
    missing from ``truth`` has no mitoses). ``boxes`` (slide id -> ``(r, 4)`` level-0 boxes)
    restricts both sides to points inside the boxes, e.g. to a slide's test area; slides without
    an entry are then skipped. Returns ``{"threshold", "radius", "pooled": {...}, "slides":
    {slide: {...}}}`` with ``tp, fp, fn, precision, recall, f1`` each.
    """
    per: dict[str, dict] = {}
    pooled = DetectionCounts()
    for slide in sorted(set(detections) | set(truth)):
        if boxes is not None and slide not in boxes:
            continue
        counts = _slide_counts(detections.get(slide), truth.get(slide), threshold, radius,
                               None if boxes is None else boxes[slide])
        per[slide] = counts.to_dict()
        pooled = pooled + counts
    return {"threshold": float(threshold), "radius": float(radius), "pooled": pooled.to_dict(), "slides": per}


def _slide_counts(det: Detections | None, gt: np.ndarray | None, threshold: float, radius: float,
                  boxes: np.ndarray | None) -> DetectionCounts:
    pts, scores = (np.zeros((0, 2)), np.zeros(0)) if det is None else (_points(det[0]), np.asarray(det[1], float))
    if len(pts) != len(scores):
        raise ValueError(f"{len(pts)} detections but {len(scores)} scores")
    gt = np.zeros((0, 2)) if gt is None else _points(gt)
    keep = (scores >= threshold) & _restrict(pts, boxes)
    return count_matches(pts[keep], gt[_restrict(gt, boxes)], radius)


def choose_threshold(detections: Mapping[str, Detections], truth: Mapping[str, np.ndarray], *,
                     radius: float = RADIUS_PX, candidates: Sequence[float] | None = None,
                     boxes: Mapping[str, np.ndarray] | None = None,
                     max_candidates: int = MAX_THRESHOLD_CANDIDATES) -> tuple[float, float]:
    """The score threshold maximising pooled F1 on validation data: ``(threshold, pooled F1)``.

    Candidates default to the distinct detection scores (every threshold that changes the kept
    set); beyond ``max_candidates`` distinct scores, that many quantiles of them. Ties go to the
    highest threshold (fewest detections). With no detection or no finite F1 anywhere the
    threshold is 0.5 (and F1 ``nan`` or 0), logged as a warning.
    """
    if candidates is None:
        scores = np.concatenate([np.asarray(d[1], np.float64).reshape(-1) for d in detections.values()]
                                or [np.zeros(0)])
        cands = np.unique(scores)
        if len(cands) > max_candidates:
            cands = np.unique(np.quantile(cands, np.linspace(0, 1, max_candidates), method="nearest"))
    else:
        cands = np.unique(np.asarray(candidates, np.float64))
    return sweep_thresholds(cands, lambda t: evaluate_detections(detections, truth, threshold=t, radius=radius,
                                                                 boxes=boxes)["pooled"]["f1"], "F1")


def sweep_thresholds(candidates: np.ndarray, f1_at: Callable[[float], float], what: str) -> tuple[float, float]:
    """``(threshold, F1)`` with the best finite ``f1_at(threshold)`` over ``candidates``; ties go to the
    highest threshold (fewest detections). Without a finite F1 anywhere: 0.5 and NaN, logged."""
    best_t, best_f1 = 0.5, -1.0
    for t in np.asarray(candidates, np.float64)[::-1]:  # descending: only a strictly better F1 moves lower
        f1 = f1_at(float(t))
        if not math.isnan(f1) and f1 > best_f1:
            best_t, best_f1 = float(t), f1
    if best_f1 < 0:
        log.warning("no threshold gives a defined %s (no detections or ground truth); using %.2f", what, best_t)
        return best_t, math.nan
    return best_t, best_f1


def annotated_mitoses_ratio(mitoses: Mapping[str, np.ndarray], regions: Mapping[str, np.ndarray]) -> float:
    """Mitoses inside labeled regions / all mitoses, over all slides of ``mitoses``.

    A mitosis counts once even where labeled regions overlap; ``nan`` when there are no mitoses.
    """
    total = inside = 0
    for slide, pts in mitoses.items():
        pts = _points(pts)
        total += len(pts)
        boxes = regions.get(slide)
        if boxes is not None:
            inside += int(points_in_boxes(pts, boxes).sum())
    return inside / total if total else math.nan
