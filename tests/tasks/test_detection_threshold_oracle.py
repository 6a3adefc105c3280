"""The threshold choice, box restriction and annotated-mitoses ratio of detection evaluation against
plain-Python oracles: point-by-point box tests, an exhaustive maximum matching, and a scan of every
threshold. Boxes are asymmetric (x and y differ) and points fall on their edges, so swapped axes and
closed instead of half-open edges show; several slides share one pool, so per-slide results must add up."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alkit.tasks.detection.metrics import (annotated_mitoses_ratio, choose_threshold, evaluate_detections,
                                           match_points, points_in_boxes, sweep_thresholds)

RADIUS = 4.0
coordinate = st.integers(0, 12)
point = st.tuples(coordinate, coordinate)
box = st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(0, 6), st.integers(0, 6))


def inside_any(p: tuple, boxes: list) -> bool:
    """Half-open ``x <= px < x + w`` and ``y <= py < y + h`` for some box."""
    return any(x <= p[0] < x + w and y <= p[1] < y + h for x, y, w, h in boxes)


def most_matches(det: list, gt: list, radius: float) -> int:
    """The size of a maximum one-to-one matching within ``radius`` (inclusive), by exhaustive search."""
    @lru_cache(maxsize=None)
    def best(i: int, used: int) -> int:
        if i == len(det):
            return 0
        options = [best(i + 1, used)]
        for j, g in enumerate(gt):
            if not used >> j & 1 and math.hypot(det[i][0] - g[0], det[i][1] - g[1]) <= radius:
                options.append(1 + best(i + 1, used | 1 << j))
        return max(options)
    return best(0, 0)


def pooled_f1(slides: dict, threshold: float, boxes: dict | None) -> float:
    tp = fp = fn = 0
    for sid, (det, scores, gt) in slides.items():
        if boxes is not None and sid not in boxes:
            continue
        keep = [p for p, s in zip(det, scores) if s >= threshold and (boxes is None or inside_any(p, boxes[sid]))]
        truth = [g for g in gt if boxes is None or inside_any(g, boxes[sid])]
        matched = most_matches(keep, truth, RADIUS)
        tp, fp, fn = tp + matched, fp + len(keep) - matched, fn + len(truth) - matched
    return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else math.nan


@settings(max_examples=80, deadline=None)
@given(st.lists(point, max_size=12), st.lists(box, max_size=4))
def test_points_in_boxes_equals_a_point_by_point_test(points, boxes):
    got = points_in_boxes(np.array(points, float).reshape(-1, 2), np.array(boxes, float).reshape(-1, 4))
    assert got.dtype == bool and got.tolist() == [inside_any(p, boxes) for p in points]


def test_points_on_the_edges_of_an_asymmetric_box():
    # box x in [2, 7), y in [5, 8): each edge point on either side
    pts = [[2, 5], [6.9, 7.9], [7, 6], [3, 8], [1.9, 6], [3, 4.9], [5, 2], [2, 7]]
    assert points_in_boxes(pts, [[2, 5, 5, 3]]).tolist() == [True, True, False, False, False, False, False, True]
    assert points_in_boxes([], [[2, 5, 5, 3]]).tolist() == []
    assert points_in_boxes(pts, []).tolist() == [False] * len(pts)


slide = st.tuples(st.lists(point, max_size=5), st.lists(point, max_size=4)).map(
    lambda t: (t[0], [round(0.1 * (k % 7) + 0.05, 2) for k in range(len(t[0]))], t[1]))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), slide, min_size=1, max_size=3),
       st.booleans(), st.lists(box, min_size=1, max_size=2))
def test_choose_threshold_is_the_best_of_every_score_ties_to_the_highest(slides, boxed, slide_boxes):
    detections = {s: (np.array(d, float).reshape(-1, 2), np.array(sc, float)) for s, (d, sc, _) in slides.items()}
    truth = {s: np.array(g, float).reshape(-1, 2) for s, (_, _, g) in slides.items()}
    boxes = {s: slide_boxes for s in sorted(slides)[-1:]} if boxed else None  # earlier slides: skipped
    t, f1 = choose_threshold(detections, truth, radius=RADIUS,
                             boxes=None if boxes is None else {s: np.array(b, float) for s, b in boxes.items()})
    scores = sorted({s for _, sc, _ in slides.values() for s in sc}, reverse=True)
    scan = [(c, pooled_f1(slides, c, boxes)) for c in scores]
    finite = [(c, v) for c, v in scan if not math.isnan(v)]
    if not finite:
        assert t == 0.5 and math.isnan(f1)
        return
    best = max(v for _, v in finite)
    assert f1 == pytest.approx(best)
    assert t == max(c for c, v in finite if v == pytest.approx(best))  # ties: the highest threshold
    # the result is what evaluate_detections reports at that threshold, per slide summing to the pool
    res = evaluate_detections(detections, truth, threshold=t, radius=RADIUS,
                              boxes=None if boxes is None else {s: np.array(b, float) for s, b in boxes.items()})
    assert res["threshold"] == t and res["radius"] == RADIUS and res["pooled"]["f1"] == pytest.approx(f1)
    for key in ("tp", "fp", "fn"):
        assert res["pooled"][key] == sum(v[key] for v in res["slides"].values())


def test_few_candidates_are_quantiles_of_the_scores():
    # 5 distinct scores, 2 candidates: the lowest and the highest score only
    truth = {"s": np.array([[0, 0], [10, 0], [20, 0]])}
    pts = np.array([[0, 0], [10, 0], [20, 0], [90, 0], [95, 0]])
    scores = np.array([0.9, 0.2, 0.3, 0.1, 0.5])
    assert choose_threshold({"s": (pts, scores)}, truth, radius=RADIUS) == (pytest.approx(0.2), pytest.approx(6 / 7))
    t, f1 = choose_threshold({"s": (pts, scores)}, truth, radius=RADIUS, max_candidates=2)
    assert (t, f1) == (0.1, pytest.approx(6 / 8))  # 0.9 gives 2/4; 0.1 keeps all five
    # 4 candidates: the scores nearest the quantiles 0, 1/3, 2/3, 1 (0.1, 0.2, 0.5, 0.9), not interpolated
    # values between scores (0.233 and 0.433 would keep the same detections as 0.3 and 0.5)
    t, f1 = choose_threshold({"s": (pts, scores)}, truth, radius=RADIUS, max_candidates=4)
    assert (t, f1) == (0.2, pytest.approx(6 / 7))


def test_sweep_ties_go_to_the_highest_and_no_finite_f1_gives_half():
    assert sweep_thresholds(np.array([0.2, 0.4, 0.6]), lambda t: 0.5, "F1") == (0.6, 0.5)
    assert sweep_thresholds(np.array([0.2, 0.4, 0.6]), lambda t: 1.0 - t, "F1") == (0.2, pytest.approx(0.8))
    assert sweep_thresholds(np.array([0.2, 0.4]), lambda t: 0.0, "F1") == (0.4, 0.0)  # 0 is a defined F1
    t, f1 = sweep_thresholds(np.array([0.2, 0.4]), lambda t: math.nan, "F1")
    assert t == 0.5 and math.isnan(f1)
    t, f1 = sweep_thresholds(np.array([]), lambda t: 1.0, "F1")
    assert t == 0.5 and math.isnan(f1)


def test_default_threshold_is_one_half_inclusive():
    dets = {"s": (np.array([[0, 0], [10, 0], [20, 0]]), np.array([0.49, 0.5, 0.51]))}
    truth = {"s": np.array([[0, 0], [10, 0], [20, 0]])}
    res = evaluate_detections(dets, truth, radius=RADIUS)
    assert res["threshold"] == 0.5 and (res["pooled"]["tp"], res["pooled"]["fn"]) == (2, 1)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.lists(point, max_size=6), max_size=4),
       st.dictionaries(st.sampled_from(["a", "b", "c", "e"]), st.lists(box, max_size=3), max_size=4))
def test_annotated_mitoses_ratio_counts_each_mitosis_once_over_all_slides(mitoses, regions):
    got = annotated_mitoses_ratio({s: np.array(p, float).reshape(-1, 2) for s, p in mitoses.items()},
                                  {s: np.array(b, float).reshape(-1, 4) for s, b in regions.items()})
    total = sum(len(p) for p in mitoses.values())
    inside = sum(inside_any(p, regions.get(s, [])) for s, pts in mitoses.items() for p in pts)
    if total == 0:
        assert math.isnan(got)
    else:
        assert got == pytest.approx(inside / total)


def test_slides_missing_from_either_side_count_as_empty():
    dets = {"only_det": (np.array([[0, 0], [30, 30]]), np.array([0.9, 0.1])),
            "both": (np.array([[5, 5]]), np.array([0.8]))}
    truth = {"both": np.array([[5, 6]]), "only_truth": np.array([[1, 1], [2, 2]])}
    res = evaluate_detections(dets, truth, threshold=0.5, radius=RADIUS)
    counts = {s: (v["tp"], v["fp"], v["fn"]) for s, v in res["slides"].items()}
    assert counts == {"only_det": (0, 1, 0), "both": (1, 0, 0), "only_truth": (0, 0, 2)}
    # boxes on the last slide (in sorted order) only: the slides before it are skipped, it is still evaluated
    boxed = evaluate_detections(dets, truth, threshold=0.5, radius=RADIUS, boxes={"only_truth": np.array([[0, 0, 2, 2]])})
    assert list(boxed["slides"]) == ["only_truth"] and (boxed["pooled"]["tp"], boxed["pooled"]["fn"]) == (0, 1)
    # no detection anywhere: no score to choose among, so 0.5 and NaN (not F1 0 at an invented threshold)
    t, f1 = choose_threshold({}, truth, radius=RADIUS)
    assert t == 0.5 and math.isnan(f1)
    with pytest.raises(ValueError, match="2 detections but 1 scores"):
        evaluate_detections({"s": (np.array([[0, 0], [1, 1]]), np.array([0.9]))}, {})
    with pytest.raises(ValueError, match="radius must be >= 0, got -1"):
        match_points([[0, 0]], [[0, 0]], radius=-1)
