"""The reference code's mitosis F1 (MITOS_WSI_CMC's KD-tree neighbourhood rule), beside alkit's own.

alkit's own F1 (:mod:`alkit.tasks.detection.metrics`) matches detections and mitoses one to one. The
reference code of the MITOS_WSI_CMC data set (the rule in ``camelyon16_protocol.json``, key
``detection_f1_mitos_wsi_cmc``) matches many to many; these functions follow its rule as written, so
both can be reported side by side. Every name carries ``reference`` so the two are never confused.

Rule, per slide (:func:`reference_marks`, :func:`f1_reference`), points level-0 ``(x, y)``:

* keep the detections with ``score > threshold`` (strictly; alkit's own keeps ``>=``);
* put the kept detections and the ground-truth points in one KD-tree; for every point ``p`` of either
  kind, ``N(p)`` = all points within ``radius`` (25 px, inclusive) of ``p``, ``p`` included;
* where ``N(p)`` holds at least one detection and one ground-truth point, every ground-truth point in
  it is marked *found* and every detection in it *correct*. So two detections on one mitosis are
  both correct (1 TP, 0 FP; alkit's own: 1 TP, 1 FP), and a point can be marked through a neighbour:
  with a mitosis at x = 0 and detections at x = 20 and 40, the neighbourhood of the first detection
  holds all three, so the second is correct though 40 px from the mitosis (1 TP, 0 FP; alkit's own:
  1 TP, 1 FP).
* TP = found ground truth, FN = ground truth not found, FP = detections not marked correct;
  ``F1 = 2 TP / (2 TP + FP + FN)``, NaN when that denominator is 0 (no point at all).

Pooled (:func:`pooled_f1_reference`): TP / FP / FN summed over slides before dividing. The threshold
(:func:`choose_threshold_reference`) is the one with the best pooled reference F1 on validation
data. The reference runs NMS first; alkit's detector's detections already are.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from alkit.tasks.detection.metrics import (MAX_THRESHOLD_CANDIDATES, RADIUS_PX, Detections, points_in_boxes,
                                          sweep_thresholds)

log = logging.getLogger(__name__)


def _points(a: object) -> np.ndarray:
    return np.asarray(a, np.float64).reshape(-1, 2)


def _f1(tp: int, fp: int, fn: int) -> float:
    d = 2 * tp + fp + fn
    return 2 * tp / d if d else math.nan


def _marks(is_det: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Marked points (found truth, correct detections) of points of kind ``is_det`` whose within-radius
    pairs (``(k, 2)`` indices, each pair once) are ``pairs``: the rule, vectorised."""
    i, j = pairs[:, 0], pairs[:, 1]
    # N(p) includes p: a detection's neighbourhood has a detection, a mitosis' has a mitosis
    has_det, has_gt = is_det.copy(), ~is_det
    np.logical_or.at(has_det, i, is_det[j])
    np.logical_or.at(has_det, j, is_det[i])
    np.logical_or.at(has_gt, i, ~is_det[j])
    np.logical_or.at(has_gt, j, ~is_det[i])
    active = has_det & has_gt  # N(p) holds both kinds: all of N(p) is marked
    marked = active.copy()
    np.logical_or.at(marked, i, active[j])
    np.logical_or.at(marked, j, active[i])
    return marked


def _pairs(points: np.ndarray, radius: float) -> np.ndarray:
    """Index pairs ``(k, 2)``, ``i < j``, of the points at most ``radius`` apart."""
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if len(points) < 2:
        return np.zeros((0, 2), np.int64)
    return cKDTree(points).query_pairs(radius, output_type="ndarray").astype(np.int64).reshape(-1, 2)


def reference_marks(detections: np.ndarray, truth: np.ndarray,
                    radius: float = RADIUS_PX) -> tuple[np.ndarray, np.ndarray]:
    """``(correct, found)``: boolean marks of the (already thresholded) detections and of the ground
    truth under the reference's neighbourhood rule (see the module doc)."""
    det, gt = _points(detections), _points(truth)
    points = np.concatenate([det, gt])
    is_det = np.arange(len(points)) < len(det)
    marked = _marks(is_det, _pairs(points, radius))
    return marked[:len(det)], marked[len(det):]


def f1_reference(detections: np.ndarray, scores: np.ndarray, truth: np.ndarray, threshold: float,
                 radius: float = RADIUS_PX) -> dict:
    """Reference F1 of one slide: ``detections`` ``(N, 2)`` with ``scores`` ``(N,)`` (kept where
    ``score > threshold``), ``truth`` ``(M, 2)``. Returns ``{"f1", "tp", "fp", "fn"}``."""
    det, gt = _points(detections), _points(truth)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(det) != len(scores):
        raise ValueError(f"{len(det)} detections but {len(scores)} scores")
    correct, found = reference_marks(det[scores > threshold], gt, radius)
    tp, fp, fn = int(found.sum()), int((~correct).sum()), int((~found).sum())
    return {"f1": _f1(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn}


def pooled_f1_reference(detections: Mapping[str, Detections], truth: Mapping[str, np.ndarray], *,
                        threshold: float, radius: float = RADIUS_PX,
                        boxes: Mapping[str, np.ndarray] | None = None) -> dict:
    """Reference F1 pooled over slides: TP / FP / FN summed, then ``F1 = 2TP / (2TP + FP + FN)``
    (NaN when 0).

    ``detections``: slide id -> ``(points (k, 2), scores (k,))``; ``truth``: slide id -> points; a slide
    in either mapping counts (missing from one: nothing there). ``boxes`` (slide id -> level-0 ``(r, 4)``
    boxes) restricts both to the points inside, skipping slides without an entry, as alkit's own
    :func:`~alkit.tasks.detection.metrics.evaluate_detections`. Returns ``{"f1", "tp", "fp", "fn",
    "threshold", "slides": {slide: {"f1", "tp", "fp", "fn"}}}``.
    """
    per: dict[str, dict] = {}
    tp = fp = fn = 0
    for slide in sorted(set(detections) | set(truth)):
        if boxes is not None and slide not in boxes:
            continue
        per[slide] = f1_reference(*_slide_points(detections, truth, slide, boxes), threshold, radius)
        tp, fp, fn = tp + per[slide]["tp"], fp + per[slide]["fp"], fn + per[slide]["fn"]
    return {"f1": _f1(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn, "threshold": float(threshold), "slides": per}


def _slide_points(detections: Mapping[str, Detections], truth: Mapping[str, np.ndarray], slide: str,
                  boxes: Mapping[str, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(detections, scores, truth)`` of one slide (none where missing), inside its ``boxes`` when given."""
    pts, scores = detections.get(slide, (np.zeros((0, 2)), np.zeros(0)))
    pts, gt = _points(pts), _points(truth.get(slide, np.zeros((0, 2))))
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(pts) != len(scores):
        raise ValueError(f"{slide}: {len(pts)} detections but {len(scores)} scores")
    if boxes is not None:
        inside = points_in_boxes(pts, boxes[slide])
        pts, scores, gt = pts[inside], scores[inside], gt[points_in_boxes(gt, boxes[slide])]
    return pts, scores, gt


def threshold_candidates_reference(detections: Mapping[str, Detections],
                                   max_candidates: int = MAX_THRESHOLD_CANDIDATES) -> np.ndarray:
    """Ascending candidate thresholds: the distinct detection scores (each keeps the scores above it),
    capped to ``max_candidates`` quantiles of them like alkit's own choice, and the float just below the
    lowest score (which keeps every detection under the strict ``>``). Empty without detections."""
    scores = np.concatenate([np.asarray(d[1], np.float64).reshape(-1) for d in detections.values()]
                            or [np.zeros(0)])
    cands = np.unique(scores)
    if len(cands) == 0:
        return cands
    if len(cands) > max_candidates:
        cands = np.unique(np.quantile(cands, np.linspace(0, 1, max_candidates), method="nearest"))
    return np.concatenate([[np.nextafter(cands[0], -np.inf)], cands])


class _SlidePairs:
    """One slide's detections and truth with their within-radius pairs, found once for every threshold."""

    def __init__(self, det: np.ndarray, scores: np.ndarray, gt: np.ndarray, radius: float) -> None:
        self.is_det = np.arange(len(det) + len(gt)) < len(det)
        self.scores = np.concatenate([scores, np.full(len(gt), np.inf)])  # truth is always kept
        self.pairs = _pairs(np.concatenate([det, gt]), radius)

    def counts(self, threshold: float) -> tuple[int, int, int]:
        """``(TP, FP, FN)`` keeping the detections with ``score > threshold``: the rule on the kept points
        (a dropped detection has no pair left, so it marks nothing)."""
        keep = self.scores > threshold
        marked = _marks(self.is_det, self.pairs[keep[self.pairs[:, 0]] & keep[self.pairs[:, 1]]])
        gt = ~self.is_det
        return (int((marked & gt).sum()), int((self.is_det & keep & ~marked).sum()), int((gt & ~marked).sum()))


def choose_threshold_reference(detections: Mapping[str, Detections], truth: Mapping[str, np.ndarray], *,
                               radius: float = RADIUS_PX, candidates: Sequence[float] | None = None,
                               boxes: Mapping[str, np.ndarray] | None = None,
                               max_candidates: int = MAX_THRESHOLD_CANDIDATES) -> tuple[float, float]:
    """``(threshold, pooled reference F1)``: the candidate (default
    :func:`threshold_candidates_reference`) with the best pooled reference F1 (as
    :func:`pooled_f1_reference`, same arguments); ties go to the highest threshold (fewest
    detections). Without a candidate (no detection) the threshold is 0.5, with its F1 (0 against
    ground truth); without a defined F1 anywhere: 0.5 and NaN, logged as a warning."""
    if candidates is None:
        cands = threshold_candidates_reference(detections, max_candidates)
    else:
        cands = np.unique(np.asarray(candidates, np.float64))
    if len(cands) == 0:
        cands = np.array([0.5])
    slides = [_SlidePairs(*_slide_points(detections, truth, slide, boxes), radius)
              for slide in sorted(set(detections) | set(truth)) if boxes is None or slide in boxes]

    def f1_at(t: float) -> float:
        tp, fp, fn = (int(v) for v in np.sum([s.counts(t) for s in slides] or [(0, 0, 0)], axis=0))
        return _f1(tp, fp, fn)

    return sweep_thresholds(cands, f1_at, "reference F1")
