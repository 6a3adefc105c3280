"""The reference code's mitosis F1 (alkit.tasks.detection.reference) against a plain-loop implementation of
the written rule on generated points, hand-computed cases that separate it from alkit's one-to-one F1, the
pooled F1 and threshold choice, and their wiring into DetectionTask.evaluate beside alkit's own metrics."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alkit.al.pool import LabeledPool
from alkit.selection.strategy import RegionPick
from alkit.tasks.detection.metrics import choose_threshold, count_matches, evaluate_detections
from alkit.tasks.detection.reference import (choose_threshold_reference, f1_reference, pooled_f1_reference,
                                             reference_marks, threshold_candidates_reference)
from alkit.tasks.detection.task import DetectionTask

# -- the rule written as plain loops --------------------------------------------------------------


def _counts_loop(det, scores, gt, threshold, radius=25.0):
    kept = [tuple(p) for p, s in zip(det, scores) if s > threshold]
    points = [(p, True) for p in kept] + [(tuple(p), False) for p in gt]
    found = [False] * len(points)
    for p, _ in points:
        near = [k for k, (q, _) in enumerate(points) if (p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 <= radius ** 2]
        if any(points[k][1] for k in near) and any(not points[k][1] for k in near):
            for k in near:
                found[k] = True
    tp = sum(1 for k, (_, d) in enumerate(points) if not d and found[k])
    fn = sum(1 for k, (_, d) in enumerate(points) if not d and not found[k])
    fp = sum(1 for k, (_, d) in enumerate(points) if d and not found[k])
    return tp, fp, fn


def _f1(tp, fp, fn):
    return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else math.nan


coords = st.tuples(st.integers(0, 120), st.integers(0, 60))  # integer level-0 px: distances compare exactly
SCORES = [0.1, 0.3, 0.5, 0.7, 0.9]


@st.composite
def slide_points(draw):
    det = draw(st.lists(coords, max_size=12))
    scores = draw(st.lists(st.sampled_from(SCORES), min_size=len(det), max_size=len(det)))
    gt = draw(st.lists(coords, max_size=8))
    return np.array(det, float).reshape(-1, 2), np.array(scores, float), np.array(gt, float).reshape(-1, 2)


@settings(max_examples=300, deadline=None)
@given(slide_points(), st.sampled_from([0.0, 0.3, 0.5, 0.6]), st.sampled_from([10.0, 25.0, 40.0]))
def test_one_slide_matches_the_plain_loop(points, threshold, radius):
    det, scores, gt = points
    got = f1_reference(det, scores, gt, threshold, radius)
    tp, fp, fn = _counts_loop(det.tolist(), scores.tolist(), gt.tolist(), threshold, radius)
    assert (got["tp"], got["fp"], got["fn"]) == (tp, fp, fn)
    np.testing.assert_equal(got["f1"], _f1(tp, fp, fn))


@settings(max_examples=80, deadline=None)
@given(st.lists(slide_points(), min_size=1, max_size=4))
def test_pooled_f1_and_threshold_choice_match_the_plain_loop(slides):
    dets = {f"s{i}": (d, s) for i, (d, s, _) in enumerate(slides)}
    truth = {f"s{i}": g for i, (_, _, g) in enumerate(slides)}
    scores = sorted({float(v) for _, s, _ in slides for v in s})

    def pooled_loop(t):
        sums = np.sum([_counts_loop(d.tolist(), s.tolist(), g.tolist(), t) for d, s, g in slides], axis=0)
        return _f1(*(int(v) for v in sums)), tuple(int(v) for v in sums)

    for t in [0.0, 0.5, *scores]:
        got = pooled_f1_reference(dets, truth, threshold=t)
        f1, counts = pooled_loop(t)
        assert (got["tp"], got["fp"], got["fn"]) == counts
        np.testing.assert_equal(got["f1"], f1)
    t, f1 = choose_threshold_reference(dets, truth)
    # every kept set: all detections, or those above each distinct score
    options = [pooled_loop(-1.0)[0]] + [pooled_loop(s)[0] for s in scores]
    if not scores:  # nothing to choose: 0.5, F1 0 against ground truth
        assert t == 0.5
        np.testing.assert_equal(f1, options[0])
        return
    finite = [v for v in options if not math.isnan(v)]
    if not finite:
        assert math.isnan(f1) and t == 0.5
        return
    assert f1 == max(finite)
    np.testing.assert_equal(pooled_f1_reference(dets, truth, threshold=t)["f1"], f1)
    assert all(not pooled_loop(s)[0] >= f1 for s in scores if s > t)  # ties go to the highest threshold


# -- hand-computed cases --------------------------------------------------------------------------


def _alkit(det, gt, threshold=0.0):
    c = count_matches(np.asarray(det, float), np.asarray(gt, float))
    return c.tp, c.fp, c.fn


def _ref(det, gt, threshold=0.0, scores=None):
    got = f1_reference(np.asarray(det, float), np.ones(len(det)) if scores is None else scores,
                       np.asarray(gt, float).reshape(-1, 2), threshold)
    return got["tp"], got["fp"], got["fn"]


def test_two_detections_on_one_figure():
    det, gt = [[0, 0], [10, 0]], [[5, 0]]
    assert _ref(det, gt) == (1, 0, 0)  # reference: both detections correct, F1 1
    assert _alkit(det, gt) == (1, 1, 0)  # alkit: one-to-one, F1 2/3
    assert f1_reference(np.array(det, float), np.ones(2), np.array(gt, float), 0.5)["f1"] == 1.0


def test_points_are_marked_through_a_neighbour():
    # a detection 40 px from the only mitosis is correct through the detection between them
    assert _ref([[20, 0], [40, 0]], [[0, 0]]) == (1, 0, 0)
    assert _alkit([[20, 0], [40, 0]], [[0, 0]]) == (1, 1, 0)
    # a mitosis 40 px from the only detection is found through the mitosis between them
    assert _ref([[0, 0]], [[20, 0], [40, 0]]) == (2, 0, 0)
    assert _alkit([[0, 0]], [[20, 0], [40, 0]]) == (1, 0, 1)
    # only one step: N(det 40) = {det 20, det 40, det 60} holds no mitosis, so det 60 stays a false positive
    assert _ref([[20, 0], [40, 0], [60, 0]], [[0, 0]]) == (1, 1, 0)
    correct, found = reference_marks(np.array([[20, 0], [40, 0], [60, 0]], float), np.array([[0, 0]], float))
    assert correct.tolist() == [True, True, False] and found.tolist() == [True]


def test_radius_is_inclusive_and_threshold_strict():
    assert _ref([[15, 20]], [[0, 0]]) == (1, 0, 0)  # exactly 25 px apart
    assert _ref([[15, 20.01]], [[0, 0]]) == (0, 1, 1)
    assert _ref([[0, 0], [3, 0]], [[0, 1]], 0.5, np.array([0.5, 0.6])) == (1, 0, 0)  # 0.5 is dropped
    assert _ref([[0, 0]], [[0, 1]], 0.5, np.array([0.5])) == (0, 0, 1)
    assert evaluate_detections({"s": (np.array([[0, 0]], float), np.array([0.5]))}, {"s": np.array([[0, 1]], float)},
                               threshold=0.5)["pooled"]["tp"] == 1  # alkit's own keeps score >= threshold


def test_empty_slides_and_pooling():
    nothing = np.zeros((0, 2))
    got = f1_reference(nothing, np.zeros(0), nothing, 0.5)
    assert (got["tp"], got["fp"], got["fn"]) == (0, 0, 0) and math.isnan(got["f1"])
    assert f1_reference(nothing, np.zeros(0), np.array([[1.0, 1.0]]), 0.5) == {"f1": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert f1_reference(np.array([[1.0, 1.0]]), [0.9], nothing, 0.5) == {"f1": 0.0, "tp": 0, "fp": 1, "fn": 0}
    dets = {"a": (np.array([[0, 0], [10, 0], [300, 0]], float), np.array([0.9, 0.8, 0.7])),
            "b": (np.array([[0, 0]], float), np.array([0.9]))}
    truth = {"a": np.array([[5, 0]], float), "c": np.array([[0, 0], [100, 100]], float)}
    got = pooled_f1_reference(dets, truth, threshold=0.5)
    # a: 1 TP, 1 FP (300, 0); b: 1 FP; c (no detections): 2 FN -> 2·1 / (2 + 2 + 2)
    assert (got["tp"], got["fp"], got["fn"]) == (1, 2, 2) and got["f1"] == pytest.approx(2 / 6)
    assert set(got["slides"]) == {"a", "b", "c"}
    boxed = pooled_f1_reference(dets, truth, threshold=0.5, boxes={"a": np.array([[0, 0, 100, 100]], float)})
    assert (boxed["tp"], boxed["fp"], boxed["fn"]) == (1, 0, 0) and set(boxed["slides"]) == {"a"}
    assert math.isnan(pooled_f1_reference({}, {}, threshold=0.5)["f1"])


def test_threshold_choice():
    dets = {"s": (np.array([[5, 0], [500, 0]], float), np.array([0.9, 0.6]))}
    truth = {"s": np.array([[0, 0]], float)}
    cands = threshold_candidates_reference(dets)
    assert cands[0] < 0.6 and cands[1:].tolist() == [0.6, 0.9]
    assert (0.6 < np.nextafter(0.6, 1)) and cands[0] == np.nextafter(0.6, -np.inf)
    assert choose_threshold_reference(dets, truth) == (0.6, 1.0)  # keeps the 0.9 only
    assert choose_threshold(dets, truth) == (0.9, 1.0)  # alkit's own: the same set, kept with >=
    # two detections on one figure: both kept is no worse under the reference, so the tie goes to the top
    two = {"s": (np.array([[5, 0], [0, 5]], float), np.array([0.9, 0.6]))}
    assert choose_threshold_reference(two, truth) == (0.6, 1.0)
    assert choose_threshold(two, truth)[0] == 0.9
    t, f1 = choose_threshold_reference({}, {"s": np.zeros((0, 2))})
    assert t == 0.5 and math.isnan(f1)
    assert choose_threshold_reference({}, truth) == (0.5, 0.0)  # alkit's own: (0.5, nan)
    assert choose_threshold({}, truth)[0] == 0.5 and math.isnan(choose_threshold({}, truth)[1])
    many = {"s": (np.zeros((2000, 2)), np.linspace(0, 1, 2000))}
    assert len(threshold_candidates_reference(many, max_candidates=50)) == 51


# -- wiring into the task -------------------------------------------------------------------------


class _Oracle:
    def __init__(self, mitoses):
        self._mitoses = mitoses

    def mitoses(self, slide_id):
        return self._mitoses[slide_id]


class _FixedDetections(DetectionTask):
    """The task with a stand-in detector (fixed detections per slide) and every point on tissue."""

    def __init__(self, oracle, dets):
        super().__init__(oracle, model=SimpleNamespace())
        self.dets = dets

    def detect(self, slide, boxes=None):
        pts, scores = self.dets[slide.slide_id]
        if boxes is None:
            return pts, scores
        x, y = pts[:, 0:1], pts[:, 1:2]
        b = np.asarray(boxes, float).reshape(-1, 4)
        inside = ((x >= b[:, 0]) & (x < b[:, 0] + b[:, 2]) & (y >= b[:, 1]) & (y < b[:, 1] + b[:, 3])).any(1)
        return pts[inside], scores[inside]

    def scored_mitoses(self, cohort):
        return {s.slide_id: self.oracle.mitoses(s.slide_id) for s in cohort}


def _cohort(*ids):
    return [SimpleNamespace(slide_id=i) for i in ids]


@pytest.mark.parametrize("validation", [True, False])
def test_task_evaluate_reports_both_sets(validation):
    rng = np.random.default_rng(4)
    mitoses = {s: rng.uniform(0, 400, (12, 2)) for s in ("train", "val", "test")}
    dets = {}
    for s, pts in mitoses.items():  # near-misses, pairs on one figure and strays, with random scores
        near = pts[:8] + rng.normal(0, 8, (8, 2))
        twins = pts[:4] + rng.normal(0, 4, (4, 2))
        stray = rng.uniform(0, 400, (6, 2))
        both = np.concatenate([near, twins, stray])
        dets[s] = (both, rng.uniform(0, 1, len(both)))
    task = _FixedDetections(_Oracle(mitoses), dets)
    pool = LabeledPool()
    pool.add([RegionPick("train", (0, 0, 250, 250), "random")], 0, [{"tissue_mm2": 1.0, "mitoses": 3}])
    cohort, test = _cohort("train"), _cohort("test")
    m = task.evaluate(pool, cohort, test, _cohort("val") if validation else None)

    if validation:
        on_dets, on_truth, on_boxes = {"val": dets["val"]}, {"val": mitoses["val"]}, None
    else:
        on_boxes = {"train": np.array([[0, 0, 250, 250]], float)}
        on_dets, on_truth = {"train": task.detect(cohort[0], on_boxes["train"])}, {"train": mitoses["train"]}
    t, f1_choice = choose_threshold(on_dets, on_truth, boxes=on_boxes)
    own = evaluate_detections({"test": dets["test"]}, {"test": mitoses["test"]}, threshold=t)["pooled"]
    assert (m["threshold"], m["f1_threshold_choice"]) == (t, f1_choice)  # alkit's own, untouched
    assert (m["f1"], m["tp"], m["fp"], m["fn"]) == (own["f1"], own["tp"], own["fp"], own["fn"])
    assert m["threshold_chosen_on"] == ("validation" if validation else "labeled regions")

    t_ref, f1_ref_choice = choose_threshold_reference(on_dets, on_truth, boxes=on_boxes)
    ref = pooled_f1_reference({"test": dets["test"]}, {"test": mitoses["test"]}, threshold=t_ref)
    assert (m["threshold_reference"], m["f1_threshold_choice_reference"]) == (t_ref, f1_ref_choice)
    assert (m["f1_reference"], m["tp_reference"], m["fp_reference"], m["fn_reference"]) == (
        ref["f1"], ref["tp"], ref["fp"], ref["fn"])
    assert m["tp_reference"] + m["fn_reference"] == 12
    assert m["f1_reference"] != m["f1"] or m["threshold_reference"] != m["threshold"]  # the two rules differ here
    assert DetectionTask.summary_metrics[-5:] == ("f1_reference", "tp_reference", "fp_reference", "fn_reference",
                                                  "threshold_reference")
    assert set(DetectionTask.summary_metrics) - {"annotated_tissue_pct"} <= set(m)
