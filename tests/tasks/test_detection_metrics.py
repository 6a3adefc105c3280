"""Mitosis detection metrics (:mod:`alkit.tasks.detection.metrics`): point matching / F1 / threshold
choice / annotated ratio, on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alkit.tasks.detection.metrics import (DetectionCounts, annotated_mitoses_ratio, choose_threshold, count_matches,
                                           evaluate_detections, match_points, points_in_boxes)


# ------------------------------------------------------------------------------------------- matching

def test_two_detections_near_one_truth_give_one_tp_one_fp():
    c = count_matches([[10, 10], [12, 11]], [[11, 10]])
    assert (c.tp, c.fp, c.fn) == (1, 1, 0)
    assert c.precision == 0.5 and c.recall == 1.0 and c.f1 == pytest.approx(2 / 3)


def test_radius_boundary_is_inclusive():
    assert count_matches([[25, 0]], [[0, 0]], radius=25).tp == 1  # exactly 25 px
    assert count_matches([[15, 20]], [[0, 0]], radius=25).tp == 1  # 3-4-5: exactly 25 px
    assert count_matches([[25.01, 0]], [[0, 0]], radius=25).tp == 0


def test_empty_sets():
    none = count_matches(np.zeros((0, 2)), np.zeros((0, 2)))
    assert (none.tp, none.fp, none.fn) == (0, 0, 0) and math.isnan(none.f1) and math.isnan(none.precision)
    missed = count_matches(np.zeros((0, 2)), [[1, 1], [100, 100]])
    assert (missed.tp, missed.fp, missed.fn, missed.f1) == (0, 0, 2, 0.0) and math.isnan(missed.precision)
    spurious = count_matches([[1, 1]], np.zeros((0, 2)))
    assert (spurious.tp, spurious.fp, spurious.fn, spurious.f1) == (0, 1, 0, 0.0) and math.isnan(spurious.recall)


def test_matching_is_optimal_not_greedy():
    # d0 is nearest to truth A (19 vs 21 px) but also reaches B; d1 reaches only A. Greedy nearest
    # would give d0-A and leave d1 and B unmatched; the optimal matching pairs d0-B and d1-A.
    m = match_points([[19, 0], [-10, 0]], [[0, 0], [40, 0]], radius=25)
    assert m.tolist() == [[0, 1], [1, 0]]
    # among maximum matchings, the smallest total distance wins
    assert match_points([[0, 0], [10, 0]], [[1, 0], [11, 0]], radius=25).tolist() == [[0, 0], [1, 1]]


def test_points_in_boxes_half_open_union():
    pts = [[0, 0], [9.99, 5], [10, 5], [15, 15], [30, 30]]
    assert points_in_boxes(pts, [[0, 0, 10, 10], [12, 12, 5, 5]]).tolist() == [True, True, False, True, False]
    assert points_in_boxes(pts, np.zeros((0, 4))).tolist() == [False] * 5


# ------------------------------------------------------------------------------- per slide and pooled

def test_per_slide_and_pooled_counts():
    dets = {"a": (np.array([[0, 0], [100, 100]]), np.array([0.9, 0.2])),
            "b": (np.array([[500, 500]]), np.array([0.8]))}
    truth = {"a": np.array([[3, 4]]), "b": np.array([[0, 0]]), "c": np.array([[7, 7]])}
    res = evaluate_detections(dets, truth, threshold=0.5)
    assert res["slides"]["a"] == {"tp": 1, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert (res["slides"]["b"]["tp"], res["slides"]["b"]["fp"], res["slides"]["b"]["fn"]) == (0, 1, 1)
    assert (res["slides"]["c"]["fn"], res["slides"]["c"]["f1"]) == (1, 0.0)  # no detections at all
    pooled = res["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (1, 1, 2)
    assert pooled["f1"] == pytest.approx(2 / (2 + 1 + 2))  # summed counts, not a mean of slide F1s
    # at 0.1 the low-score detection of "a" counts as a false positive too
    assert evaluate_detections(dets, truth, threshold=0.1)["slides"]["a"]["fp"] == 1
    # restricted to boxes: only slide "a", only its first 50 x 50 px
    boxed = evaluate_detections(dets, truth, threshold=0.1, boxes={"a": np.array([[0, 0, 50, 50]])})
    assert list(boxed["slides"]) == ["a"] and (boxed["pooled"]["tp"], boxed["pooled"]["fp"]) == (1, 0)


def test_choose_threshold_maximises_pooled_f1():
    truth = {"s": np.array([[0, 0], [100, 0], [200, 0]])}
    pts = np.array([[0, 0], [100, 0], [500, 0], [200, 0], [900, 0]])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3])
    # thresholds: 0.9 -> F1 2/4; 0.8 -> 4/5; 0.7 -> 4/6; 0.6 -> 6/7 (best); 0.3 -> 6/8
    t, f1 = choose_threshold({"s": (pts, scores)}, truth)
    assert t == 0.6 and f1 == pytest.approx(6 / 7)
    # ties go to the higher threshold: two candidates with the same F1
    t2, _ = choose_threshold({"s": (np.array([[0, 0], [300, 0]]), np.array([0.9, 0.5]))}, {"s": np.array([[0, 0]])},
                             candidates=[0.9, 0.95])
    assert t2 == 0.9
    assert math.isnan(choose_threshold({}, {"s": np.zeros((0, 2))})[1])


def test_annotated_mitoses_ratio():
    mitoses = {"a": np.array([[5, 5], [15, 15], [50, 50], [10, 10]]), "b": np.array([[1, 1]])}
    regions = {"a": np.array([[0, 0, 10, 10], [5, 5, 20, 20]])}  # (5, 5) lies in both: counted once
    # inside: (5,5), (15,15), (10,10) (in the second region; the first ends before 10) -> 3 of 5
    assert annotated_mitoses_ratio(mitoses, regions) == pytest.approx(3 / 5)
    assert math.isnan(annotated_mitoses_ratio({"a": np.zeros((0, 2))}, regions))
    assert DetectionCounts(1, 2, 3) + DetectionCounts(1, 1, 1) == DetectionCounts(2, 3, 4)
