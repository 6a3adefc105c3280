"""Detection F1 against independent brute-force oracles.

alkit's own matching (:func:`match_points`) must be a one-to-one matching within the radius (inclusive)
that first has the most matches and then the least summed distance; the oracle below finds that optimum
by exhaustive search over every partial assignment (memoised on the set of used truths), written without
scipy. The reference rule (:func:`f1_reference`) is checked against a plain-Python transcription of its
neighbourhood rule. Points are drawn on a small integer lattice so that equal distances (ties), chains
where a greedy choice loses a match, and points at exactly the radius (3-4-5 triangles) all occur.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alkit.tasks.detection.metrics import count_matches, evaluate_detections, match_points
from alkit.tasks.detection.reference import f1_reference

RADIUS = 5.0

lattice_point = st.tuples(st.integers(0, 12), st.integers(0, 12))
point_sets = st.lists(lattice_point, min_size=0, max_size=7)


def _dist(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def optimal_matching(det: list, gt: list, radius: float) -> tuple[int, float]:
    """``(matches, summed distance)`` of the best one-to-one matching: most matches, then least distance.

    Exhaustive: each detection is left unmatched or given any unused truth within ``radius``."""
    @lru_cache(maxsize=None)
    def best(i: int, used: int) -> tuple[int, float]:
        if i == len(det):
            return 0, 0.0
        n, d = best(i + 1, used)  # detection i unmatched
        for j, g in enumerate(gt):
            dist = _dist(det[i], g)
            if used >> j & 1 or dist > radius:
                continue
            m, s = best(i + 1, used | 1 << j)
            m, s = m + 1, s + dist
            if m > n or (m == n and s < d - 1e-9):
                n, d = m, s
        return n, d

    return best(0, 0)


def _check_matching(det: list, gt: list, radius: float) -> np.ndarray:
    """Run :func:`match_points` and check it is valid and optimal against the oracle."""
    got = match_points(np.asarray(det, float).reshape(-1, 2), np.asarray(gt, float).reshape(-1, 2), radius)
    assert got.shape[1] == 2 and got.dtype == np.int64
    assert len(set(got[:, 0].tolist())) == len(got), "a detection is matched twice"
    assert len(set(got[:, 1].tolist())) == len(got), "a truth is matched twice"
    assert list(got[:, 0]) == sorted(got[:, 0]), "rows are not sorted by detection index"
    total = 0.0
    for i, j in got.tolist():
        dist = _dist(det[i], gt[j])
        assert dist <= radius + 1e-12, f"pair {(i, j)} is {dist} apart, beyond {radius}"
        total += dist
    n, d = optimal_matching(det, gt, radius)
    assert len(got) == n, f"{len(got)} matches, the optimum has {n}"
    assert total == pytest.approx(d, abs=1e-9), f"summed distance {total}, the optimum {d}"
    return got


@settings(max_examples=300, deadline=None, derandomize=True, database=None)  # seeded: the same examples every run
@given(point_sets, point_sets)
def test_match_points_is_an_optimal_assignment(det, gt):
    _check_matching(det, gt, RADIUS)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)  # seeded: the same examples every run
@given(point_sets, point_sets, st.sampled_from([0.0, 1.0, 2.0, math.sqrt(2.0), 3.0, 5.0, 7.5]))
def test_match_points_is_optimal_at_any_radius(det, gt, radius):
    _check_matching(det, gt, radius)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)  # seeded: the same examples every run
@given(point_sets, point_sets)
def test_counts_and_f1_follow_the_optimal_matching(det, gt):
    n, _ = optimal_matching(det, gt, RADIUS)
    counts = count_matches(np.asarray(det, float).reshape(-1, 2), np.asarray(gt, float).reshape(-1, 2), RADIUS)
    assert (counts.tp, counts.fp, counts.fn) == (n, len(det) - n, len(gt) - n)
    denom = 2 * n + (len(det) - n) + (len(gt) - n)
    if denom == 0:
        assert math.isnan(counts.f1)
    else:
        assert counts.f1 == pytest.approx(2 * n / denom)
    # evaluate_detections: scores >= threshold are kept; drop the detections below it first
    scores = np.linspace(0.0, 1.0, len(det)) if det else np.zeros(0)
    kept = [p for p, s in zip(det, scores) if s >= 0.5]
    k, _ = optimal_matching(kept, gt, RADIUS)
    out = evaluate_detections({"s": (np.asarray(det, float).reshape(-1, 2), scores)},
                              {"s": np.asarray(gt, float).reshape(-1, 2)}, threshold=0.5, radius=RADIUS)
    pooled = out["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (k, len(kept) - k, len(gt) - k)


@pytest.mark.parametrize("det, gt, tp, total", [
    # chain: detection 0 is nearest truth 1, but truth 1 is detection 1's only reach: greedy gives 1, optimum 2
    ([(9, 0), (14, 0)], [(6, 0), (10, 0)], 2, 3.0 + 4.0),
    # chain where the closer pair must be given up: d0-g0 at 5 (exactly the radius) and d0-g1 at 1, d1-g1 at 5
    ([(5, 0), (11, 0)], [(0, 0), (6, 0)], 2, 5.0 + 5.0),
    # tie in count, least total distance decides: d0-g0 + d1-g1 = 2 + 2 beats d0-g1 + d1-g0 = 4 + 4
    ([(0, 0), (4, 0)], [(-2, 0), (6, 0)], 2, 4.0),
    # two detections on one mitosis: 1 TP (the nearer), 1 FP
    ([(0, 0), (3, 4)], [(0, 1)], 1, 1.0),
    # exactly at the radius counts, just beyond does not
    ([(0, 0), (100, 0)], [(3, 4), (103.0001, 4)], 1, 5.0),
    # three in a row, a-b-c-d: a and c reach b, c reaches d only: 2 matches
    ([(0, 0), (8, 0)], [(4, 0), (12, 0)], 2, 8.0),
])
def test_known_chains_ties_and_radius(det, gt, tp, total):
    got = _check_matching(det, gt, RADIUS)
    assert len(got) == tp
    assert sum(_dist(det[i], gt[j]) for i, j in got.tolist()) == pytest.approx(total)


def test_greedy_by_score_loses_a_match_that_the_optimum_keeps():
    """A high-scoring detection between two mitoses must not take the only mitosis another one reaches."""
    det = np.array([[9.0, 0.0], [14.0, 0.0], [40.0, 0.0]])  # the first is nearest the second mitosis
    scores = np.array([0.9, 0.8, 0.7])
    gt = np.array([[6.0, 0.0], [10.0, 0.0], [44.0, 0.0]])
    out = evaluate_detections({"s": (det, scores)}, {"s": gt}, threshold=0.5, radius=RADIUS)["pooled"]
    assert (out["tp"], out["fp"], out["fn"]) == (3, 0, 0)
    assert out["f1"] == 1.0


def reference_counts(det: list, scores: list, gt: list, threshold: float, radius: float) -> tuple[int, int, int]:
    """The reference rule as written: keep ``score > threshold``; for every point p, N(p) = points within
    ``radius`` (p included); where N(p) holds both kinds, all of N(p) is marked. TP = marked truths,
    FP = unmarked detections, FN = unmarked truths."""
    kept = [p for p, s in zip(det, scores) if s > threshold]
    points = [(p, True) for p in kept] + [(g, False) for g in gt]
    marked = [False] * len(points)
    for p, _ in points:
        hood = [k for k, (q, _) in enumerate(points) if _dist(p, q) <= radius]
        kinds = {points[k][1] for k in hood}
        if kinds == {True, False}:
            for k in hood:
                marked[k] = True
    tp = sum(1 for k, (_, is_det) in enumerate(points) if not is_det and marked[k])
    fp = sum(1 for k, (_, is_det) in enumerate(points) if is_det and not marked[k])
    return tp, fp, len(gt) - tp


@settings(max_examples=200, deadline=None, derandomize=True, database=None)  # seeded: the same examples every run
@given(point_sets, point_sets, st.data())
def test_reference_rule_matches_its_plain_transcription(det, gt, data):
    scores = data.draw(st.lists(st.sampled_from([0.2, 0.5, 0.8]), min_size=len(det), max_size=len(det)))
    tp, fp, fn = reference_counts(det, scores, gt, 0.5, RADIUS)
    got = f1_reference(np.asarray(det, float).reshape(-1, 2), np.asarray(scores, float),
                       np.asarray(gt, float).reshape(-1, 2), 0.5, RADIUS)
    assert (got["tp"], got["fp"], got["fn"]) == (tp, fp, fn)
    denom = 2 * tp + fp + fn
    assert math.isnan(got["f1"]) if denom == 0 else got["f1"] == pytest.approx(2 * tp / denom)


def test_reference_rule_marks_through_a_neighbour():
    """The module doc's example: a mitosis at x = 0, detections at 20 and 40, radius 25: 1 TP, 0 FP."""
    got = f1_reference(np.array([[20.0, 0.0], [40.0, 0.0]]), np.array([0.9, 0.9]), np.array([[0.0, 0.0]]), 0.5)
    assert (got["tp"], got["fp"], got["fn"]) == (1, 0, 0)
    assert reference_counts([(20, 0), (40, 0)], [0.9, 0.9], [(0, 0)], 0.5, 25.0) == (1, 0, 0)
