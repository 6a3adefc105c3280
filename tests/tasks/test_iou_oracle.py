"""Tumour IoU with a validity mask against a plain-Python cell count (an independent oracle).

The rule (:mod:`alkit.tasks.segmentation.metrics`): a cell is predicted tumour when its probability is
``>= 0.5``, true tumour when its tumour fraction is ``>= 0.5``; only the valid cells count, on *both*
maps; IoU = |pred ∩ truth| / |pred ∪ truth|, NaN on an empty union; ``iou_tumour`` is the mean over
slides with a valid true tumour cell. The oracle walks the cells one by one. Each example also computes
what a metric that forgot the mask on one map would give, and the fixed examples make sure those
differ from the right answer, so the tests notice such a slip.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alkit.tasks.segmentation.metrics import check_mask, evaluate_slide, slide_iou, summarise


def oracle_counts(prob: list, frac: list, valid: list, mask_pred: bool = True, mask_truth: bool = True):
    """``(tp, fp, fn, tn)`` over the cells; ``mask_pred`` / ``mask_truth`` False: that map ignores the mask
    (the bug this oracle exists to catch; the negatives then count every cell)."""
    tp = fp = fn = tn = 0
    for p_row, f_row, v_row in zip(prob, frac, valid):
        for p, f, v in zip(p_row, f_row, v_row):
            pred = p >= 0.5 and (v or not mask_pred)
            true = f >= 0.5 and (v or not mask_truth)
            if not (v or pred or true):
                continue
            tp += pred and true
            fp += pred and not true
            fn += true and not pred
            tn += not pred and not true
    return tp, fp, fn, tn


def oracle_iou(prob: list, frac: list, valid: list, **kw) -> float:
    tp, fp, fn, _ = oracle_counts(prob, frac, valid, **kw)
    return math.nan if tp + fp + fn == 0 else tp / (tp + fp + fn)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


probs = st.sampled_from([0.0, 0.3, 0.49999, 0.5, 0.7, 1.0])
fracs = st.sampled_from([0.0, 0.25, 0.49999, 0.5, 0.75, 1.0])


@st.composite
def slides(draw):
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))

    def grid(elements):
        return [[draw(elements) for _ in range(cols)] for _ in range(rows)]

    return grid(probs), grid(fracs), grid(st.booleans())


@settings(max_examples=200, deadline=None, derandomize=True, database=None)  # seeded: the same examples every run
@given(slides())
def test_slide_iou_and_counts_match_the_cell_walk(slide):
    prob, frac, valid = slide
    p, f, v = np.array(prob), np.array(frac), np.array(valid, bool)
    expected = oracle_iou(prob, frac, valid)
    assert _same(slide_iou(p >= 0.5, f >= 0.5, v), expected)
    got = evaluate_slide("s", p, f, v)
    assert (got.tp, got.fp, got.fn, got.tn) == oracle_counts(prob, frac, valid)
    assert _same(got.iou, expected)
    assert got.n_cells == int(v.sum())
    # without a mask every cell counts
    all_valid = [[True] * len(r) for r in prob]
    assert _same(slide_iou(p >= 0.5, f >= 0.5), oracle_iou(prob, frac, all_valid))
    nomask = evaluate_slide("s", p, f)
    assert (nomask.tp, nomask.fp, nomask.fn, nomask.tn) == oracle_counts(prob, frac, all_valid)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)  # seeded: the same examples every run
@given(st.lists(slides(), min_size=1, max_size=4))
def test_mean_iou_over_slides_with_tumour_matches_the_cell_walk(cohort):
    results, ious = [], []
    for k, (prob, frac, valid) in enumerate(cohort):
        results.append(evaluate_slide(f"s{k}", np.array(prob), np.array(frac), np.array(valid, bool)))
        tp, fp, fn, _ = oracle_counts(prob, frac, valid)
        if tp + fn > 0:  # a valid true tumour cell: the slide counts in the mean
            ious.append(tp / (tp + fp + fn))
    out = summarise(results)
    assert out["n_tumour_slides"] == len(ious)
    assert _same(out["iou_tumour"], sum(ious) / len(ious) if ious else math.nan)


# prob / truth fraction / valid, 2 × 3; the masked-out cells disagree with the valid ones
PROB = [[0.9, 0.9, 0.1], [0.9, 0.1, 0.8]]
FRAC = [[1.0, 0.0, 0.9], [0.6, 0.7, 0.0]]
VALID = [[True, True, False], [True, True, False]]


def test_dropping_the_mask_on_either_map_changes_the_fixed_example():
    right = oracle_iou(PROB, FRAC, VALID)
    no_pred_mask = oracle_iou(PROB, FRAC, VALID, mask_pred=False)
    no_truth_mask = oracle_iou(PROB, FRAC, VALID, mask_truth=False)
    assert right == pytest.approx(2 / 4)  # valid cells: TP (0,0), (1,0); FP (0,1); FN (1,1)
    assert no_pred_mask == pytest.approx(2 / 5) and no_truth_mask == pytest.approx(2 / 5)
    p, f, v = np.array(PROB), np.array(FRAC), np.array(VALID)
    assert slide_iou(p >= 0.5, f >= 0.5, v) == pytest.approx(right)
    assert evaluate_slide("s", p, f, v).iou == pytest.approx(right)
    assert summarise([evaluate_slide("s", p, f, v)])["iou_tumour"] == pytest.approx(right)


def test_a_slide_whose_only_tumour_is_masked_out_is_tumour_free():
    prob, frac = np.array([[0.1, 0.9]]), np.array([[0.0, 1.0]])
    valid = np.array([[True, False]])
    assert math.isnan(slide_iou(prob >= 0.5, frac >= 0.5, valid))
    got = evaluate_slide("s", prob, frac, valid)
    assert not got.has_tumour and got.fp == 0 and got.tn == 1
    out = summarise([got, evaluate_slide("t", np.array([[0.9]]), np.array([[1.0]]))])
    assert out["n_tumour_slides"] == 1 and out["iou_tumour"] == 1.0 and out["fp_rate_tumour_free"] == 0.0


@pytest.mark.parametrize("mask, what", [(np.ones((2, 2), bool), "shape"), (np.ones((2, 3), int), "boolean")])
def test_check_mask_refuses_a_wrong_mask(mask, what):
    with pytest.raises(ValueError, match=what):
        check_mask(mask, (2, 3))
    with pytest.raises(ValueError, match=what):
        slide_iou(np.ones((2, 3), bool), np.ones((2, 3), bool), mask)
