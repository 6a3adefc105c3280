"""Tumour IoU, slide-averaged mIoU, false-positive rate and annotated shares, against hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alkit.tasks.segmentation.metrics import (SlideMetrics, annotated_percent, annotated_tissue_percent, annotated_tumour_percent,
                           evaluate_slide, slide_iou, summarise)


def test_slide_iou_hand_counts_and_empty_union():
    pred = np.zeros((4, 4), bool)
    truth = np.zeros((4, 4), bool)
    pred[0, :3] = True  # 3 predicted
    truth[0, 1:] = True  # 3 true, 2 shared -> IoU 2 / 4
    assert slide_iou(pred, truth) == pytest.approx(0.5)
    valid = np.ones((4, 4), bool)
    valid[0, 0] = False  # the only false positive is not evaluated
    assert slide_iou(pred, truth, valid) == pytest.approx(2 / 3)
    assert math.isnan(slide_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)))
    assert slide_iou(pred, np.zeros((4, 4), bool)) == 0.0  # false positives only
    with pytest.raises(ValueError, match="shape"):
        slide_iou(pred, truth[:3])
    with pytest.raises(ValueError, match="boolean"):
        slide_iou(pred, truth, valid.astype(int))


def test_evaluate_slide_thresholds_are_inclusive():
    prob = np.array([[0.5, 0.49, 0.9, 0.1]])
    frac = np.array([[0.5, 0.6, 0.49, 0.0]])
    m = evaluate_slide("s", prob, frac)
    # cell 0: p = 0.5 predicted, fraction 0.5 true -> TP; cell 1 FN; cell 2 FP; cell 3 TN
    assert (m.tp, m.fn, m.fp, m.tn) == (1, 1, 1, 1)
    assert m.iou == pytest.approx(1 / 3) and m.fp_rate == pytest.approx(0.5) and m.has_tumour
    valid = np.array([[True, False, True, True]])
    m2 = evaluate_slide("s", prob, frac, valid)
    assert (m2.tp, m2.fn, m2.fp, m2.tn, m2.n_cells) == (1, 0, 1, 1, 3)
    assert m2.to_dict()["iou"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="finite"):
        evaluate_slide("s", np.array([[np.nan]]), np.array([[0.0]]))


def test_summary_averages_tumour_slides_and_reports_false_positives_apart():
    a = SlideMetrics("a", tp=2, fp=1, fn=1, tn=10)  # IoU 0.5
    b = SlideMetrics("b", tp=1, fp=0, fn=0, tn=20)  # IoU 1
    clean = SlideMetrics("c", tp=0, fp=3, fn=0, tn=27)  # tumour-free, FPR 0.1
    silent = SlideMetrics("d", tp=0, fp=0, fn=0, tn=40)  # tumour-free, FPR 0, IoU undefined
    assert math.isnan(silent.iou) and not silent.has_tumour and clean.iou == 0.0
    s = summarise([a, b, clean, silent])
    assert s["iou_tumour"] == pytest.approx(0.75) and s["n_tumour_slides"] == 2
    assert s["fp_rate_tumour_free"] == pytest.approx(0.05) and s["n_tumour_free_slides"] == 2
    assert s["iou_per_slide"] == {"a": 0.5, "b": 1.0}
    empty = summarise([clean])
    assert math.isnan(empty["iou_tumour"]) and empty["n_tumour_slides"] == 0
    assert math.isnan(summarise([a])["fp_rate_tumour_free"])


def test_annotated_percent_by_hand():
    tissue = np.array([[1.0, 0.5], [0.0, 0.5]])  # total 2.0
    labeled = np.array([[True, True], [False, False]])  # 1.5 of it
    assert annotated_tissue_percent([(tissue, labeled)]) == pytest.approx(75.0)
    other = np.ones((1, 2))  # a second slide, nothing labeled: 1.5 / 4.0
    assert annotated_percent([(tissue, labeled), (other, np.zeros((1, 2), bool))]) == pytest.approx(37.5)
    assert math.isnan(annotated_tumour_percent([(np.zeros((2, 2)), labeled)]))  # tumour-free cohort
    with pytest.raises(ValueError, match="boolean"):
        annotated_percent([(tissue, labeled.astype(np.int32))])
    with pytest.raises(ValueError, match="non-negative"):
        annotated_percent([(-tissue, labeled)])


def test_annotated_tissue_percent_on_the_cohort_grids(embedded_cohort):
    grids = [s.grid for s in embedded_cohort]
    assert annotated_tissue_percent((g.tissue_fraction, np.ones(g.shape, bool)) for g in grids) == pytest.approx(100)
    assert annotated_tissue_percent((g.tissue_fraction, np.zeros(g.shape, bool)) for g in grids) == 0.0
    half = [g.shape[1] // 2 for g in grids]
    left = [(g.tissue_fraction, np.broadcast_to(np.arange(g.shape[1]) < h, g.shape)) for g, h in zip(grids, half)]
    inside = sum(g.tissue_fraction[:, :h].sum() for g, h in zip(grids, half))
    expected = inside / sum(g.tissue_fraction.sum() for g in grids)
    assert annotated_tissue_percent(left) == pytest.approx(100 * expected)


def test_evaluate_slide_refuses_maps_that_are_not_one_2d_grid():
    with pytest.raises(ValueError) as err:
        evaluate_slide("s", np.zeros((2, 2)), np.zeros((2, 3)))
    assert "(2, 2)" in str(err.value) and "(2, 3)" in str(err.value) and "2-D" in str(err.value)
    with pytest.raises(ValueError, match="2-D"):  # same shape, but not a grid
        evaluate_slide("s", np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="2-D"):
        evaluate_slide("s", np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))


def test_slide_iou_takes_float_and_integer_masks_as_truthiness():
    pred = np.array([[1.0, 1.0, 0.0, 0.0]])  # masks as read from images or arrays of 0/1 floats
    truth = np.array([[0.0, 1.0, 1.0, 0.0]])
    assert slide_iou(pred, truth) == pytest.approx(1 / 3)
    assert slide_iou(pred, truth == 1) == pytest.approx(1 / 3)
    assert slide_iou(pred == 1, truth) == pytest.approx(1 / 3)
    assert slide_iou(pred.astype(np.uint8) * 2, truth.astype(np.uint8)) == pytest.approx(1 / 3)  # labels 0/2
    assert slide_iou(pred, truth, np.array([[False, True, True, True]])) == pytest.approx(1 / 2)


def test_empty_cohorts_give_nan_without_numpy_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" / "invalid value" noise in users' logs
        assert math.isnan(slide_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)))
        s = summarise([])
        assert math.isnan(s["iou_tumour"]) and math.isnan(s["fp_rate_tumour_free"])
        assert (s["n_tumour_slides"], s["n_tumour_free_slides"], s["iou_per_slide"]) == (0, 0, {})


def test_a_slide_with_no_evaluated_cell_does_not_enter_the_false_positive_rate():
    clean = SlideMetrics("c", tp=0, fp=3, fn=0, tn=27)  # FPR 0.1
    nothing = evaluate_slide("n", np.ones((2, 2)), np.zeros((2, 2)), np.zeros((2, 2), bool))
    assert nothing.n_cells == 0 and math.isnan(nothing.fp_rate)
    s = summarise([clean, nothing])
    assert s["fp_rate_tumour_free"] == pytest.approx(0.1) and s["n_tumour_free_slides"] == 1


def test_slide_metrics_record_has_counts_and_derived_figures():
    record = SlideMetrics("a", tp=2, fp=1, fn=1, tn=6).to_dict()
    assert record == {"slide_id": "a", "tp": 2, "fp": 1, "fn": 1, "tn": 6, "iou": pytest.approx(0.5),
                      "fp_rate": pytest.approx(1 / 7), "has_tumour": True}
