"""The reference code's CAMELYON16 scores (alkit.tasks.segmentation.reference) against a plain-loop
implementation of the written rules on generated maps, hand-computed cases (ITC size at the int(200/mpp)
boundary, hole filling, the +1e-4, slides without tumour left out, slide confidence), and their wiring
into SegmentationTask.evaluate beside alkit's own metrics."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from alkit.al.pool import LabeledPool
from alkit.tasks.segmentation.metrics import evaluate_slide, summarise
from alkit.tasks.segmentation.oracle import TumourOracle
from alkit.tasks.segmentation.reference import (auc_reference, iou_from_masks, itc_threshold_px, miou_reference,
                                                reference_mask, slide_confidence_reference, slide_iou_reference)
from alkit.tasks.segmentation.task import SegmentationTask

# -- the rules written as plain loops -------------------------------------------------------------


def _neighbours(r, c, rows, cols, diagonal):
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if (dr or dc) and (diagonal or not (dr and dc)) and 0 <= r + dr < rows and 0 <= c + dc < cols:
                yield r + dr, c + dc


def _components_loop(mask):
    """8-connected components of a boolean grid, as lists of (row, col), in raster order of first pixel."""
    rows, cols = len(mask), len(mask[0])
    seen, comps = set(), []
    for r in range(rows):
        for c in range(cols):
            if mask[r][c] and (r, c) not in seen:
                comp, todo = [], deque([(r, c)])
                seen.add((r, c))
                while todo:
                    p = todo.popleft()
                    comp.append(p)
                    for q in _neighbours(*p, rows, cols, diagonal=True):
                        if mask[q[0]][q[1]] and q not in seen:
                            seen.add(q)
                            todo.append(q)
                comps.append(comp)
    return comps


def _major_axis_loop(comp):
    """4 · sqrt(largest eigenvalue of the pixels' population covariance)."""
    n = len(comp)
    mr = sum(r for r, _ in comp) / n
    mc = sum(c for _, c in comp) / n
    a = sum((r - mr) ** 2 for r, _ in comp) / n
    b = sum((r - mr) * (c - mc) for r, c in comp) / n
    d = sum((c - mc) ** 2 for _, c in comp) / n
    return 4 * math.sqrt((a + d) / 2 + math.sqrt(((a - d) / 2) ** 2 + b * b))


def _mask_loop(prob, mpp, threshold=0.5):
    rows, cols = len(prob), len(prob[0])
    pred = [[prob[r][c] > threshold for c in range(cols)] for r in range(rows)]
    # holes: background not reached from the border through 4-connected background
    outside = set()
    todo = deque((r, c) for r in range(rows) for c in range(cols)
                 if (r in (0, rows - 1) or c in (0, cols - 1)) and not pred[r][c])
    outside.update(todo)
    while todo:
        for q in _neighbours(*todo.popleft(), rows, cols, diagonal=False):
            if not pred[q[0]][q[1]] and q not in outside:
                outside.add(q)
                todo.append(q)
    filled = [[pred[r][c] or (r, c) not in outside for c in range(cols)] for r in range(rows)]
    limit = int(200 / mpp)
    out = [[False] * cols for _ in range(rows)]
    comps = []
    for comp in _components_loop(filled):
        axis = _major_axis_loop(comp)
        assume(abs(axis - limit) > 1e-6)  # no float ties at the boundary
        if axis > limit:
            comps.append(comp)
            for r, c in comp:
                out[r][c] = True
    return out, comps


def _iou_loop(pred, truth):
    ious = []
    for cls in (False, True):
        tp = p = g = 0
        for pr, tr in zip(pred, truth):
            for a, b in zip(pr, tr):
                tp += a == cls and b == cls
                p += a == cls
                g += b == cls
        ious.append(tp / (p + g - tp + 1e-4))
    return ious


def _confidence_loop(prob, mpp):
    _, comps = _mask_loop(prob, mpp)
    if not comps:
        return 0.0
    best = comps[0]
    for comp in comps[1:]:
        if len(comp) > len(best):
            best = comp
    if not _major_axis_loop(best) > int(200 / mpp):
        return 0.0
    return max(prob[r][c] for r, c in best) * max(max(row) for row in prob)


def _auc_loop(conf, labels):
    pos = [c for c, y in zip(conf, labels) if y]
    neg = [c for c, y in zip(conf, labels) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# -- generated maps -------------------------------------------------------------------------------

LEVELS = [0.0, 0.2, 0.5, 0.50001, 0.8, 1.0]  # 0.5 itself is not tumour (p > 0.5)
MPPS = [20.0, 40.0, 57.2, 62.208, 64.0, 80.0, 150.0, 250.0]  # ITC sizes 10, 5, 3, 3, 3, 2, 1, 0 px


@st.composite
def slide_maps(draw, max_side=7):
    rows, cols = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    prob = np.array(draw(st.lists(st.sampled_from(LEVELS), min_size=rows * cols, max_size=rows * cols)))
    truth = np.array(draw(st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols)))
    return prob.reshape(rows, cols), truth.reshape(rows, cols)


@settings(max_examples=150, deadline=None)
@given(slide_maps(), st.sampled_from(MPPS))
def test_mask_and_iou_match_the_plain_loops(maps, mpp):
    prob, truth = maps
    expected, _ = _mask_loop(prob.tolist(), mpp)
    np.testing.assert_array_equal(reference_mask(prob, mpp), np.array(expected, bool))
    assert slide_iou_reference(prob, truth, mpp) == pytest.approx(_iou_loop(expected, truth.tolist()), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(slide_maps(max_side=6), min_size=1, max_size=5), st.sampled_from(MPPS))
def test_miou_and_auc_match_the_plain_loops(slides, mpp):
    probs, truths = [p for p, _ in slides], [t for _, t in slides]
    per = []
    confs = []
    for prob, truth in slides:
        mask, _ = _mask_loop(prob.tolist(), mpp)
        per.append((_iou_loop(mask, truth.tolist()), truth.any()))
        confs.append(_confidence_loop(prob.tolist(), mpp))
    got = miou_reference(probs, truths, mpp)
    counted = [ious for ious, has in per if has]
    if counted:
        normal = sum(i[0] for i in counted) / len(counted)
        tumour = sum(i[1] for i in counted) / len(counted)
        assert (got["iou_normal"], got["iou_tumour"], got["miou"]) == pytest.approx(
            (normal, tumour, (normal + tumour) / 2), abs=1e-12)
    else:
        assert math.isnan(got["miou"]) and math.isnan(got["iou_normal"]) and math.isnan(got["iou_tumour"])
    assert [s["has_tumour"] for s in got["per_slide"]] == [bool(has) for _, has in per]
    for prob, conf in zip(probs, confs):
        assert slide_confidence_reference(prob, mpp) == pytest.approx(conf, abs=1e-12)
    labels = [bool(t.any()) for t in truths]
    auc = auc_reference(probs, labels, mpp)
    if all(labels) or not any(labels):
        assert math.isnan(auc)
    else:
        assert auc == pytest.approx(_auc_loop(confs, labels), abs=1e-12)


# -- hand-computed cases --------------------------------------------------------------------------


def _map(rows, cols, *pixels, value=0.9):
    prob = np.zeros((rows, cols))
    for r, c in pixels:
        prob[r, c] = value
    return prob


def test_itc_size_is_truncated_and_strict():
    assert itc_threshold_px(64.0) == 3 and itc_threshold_px(0.243 * 2 ** 8) == 3  # int(3.125), int(3.215)
    assert itc_threshold_px(200 / 3.9) == 3 and itc_threshold_px(50.0) == 4 and itc_threshold_px(80.0) == 2
    line3 = _map(5, 7, (2, 1), (2, 2), (2, 3))  # major axis 4·sqrt(2/3) = 3.266
    line2 = _map(5, 7, (2, 1), (2, 2))  # 2.0
    diag2 = _map(5, 7, (1, 1), (2, 2))  # 4·sqrt(1/2) = 2.828
    line4 = _map(5, 7, (2, 1), (2, 2), (2, 3), (2, 4))  # 4·sqrt(5/4) = 4.472
    assert reference_mask(line3, 64.0).sum() == 3  # just above 3: kept
    assert reference_mask(diag2, 64.0).sum() == 0  # just below 3: removed
    assert reference_mask(line3, 200 / 3.9).sum() == 3  # 3.266 > int(3.9) = 3, though < 3.9
    assert reference_mask(line3, 50.0).sum() == 0 and reference_mask(line4, 50.0).sum() == 4
    assert reference_mask(line2, 80.0).sum() == 0  # axis exactly 2 = threshold: removed (strict >)
    assert reference_mask(diag2, 80.0).sum() == 2
    assert reference_mask(_map(3, 3, (1, 1)), 1000.0).sum() == 0  # threshold 0: a lone pixel (axis 0) goes too


def test_threshold_is_strict_and_holes_are_filled():
    assert reference_mask(np.full((4, 4), 0.5), 100.0).sum() == 0  # p = 0.5 is not tumour (ITC size 2)
    ring = np.full((5, 5), 0.9)
    ring[2, 2] = 0.0
    assert reference_mask(ring, 100.0).all()  # the enclosed cell becomes tumour
    open_ring = ring.copy()
    open_ring[2, 0] = open_ring[2, 1] = 0.0  # a channel to the border: no hole any more
    assert reference_mask(open_ring, 100.0).sum() == 22
    diag = np.full((4, 4), 0.9)
    diag[1, 1] = diag[2, 2] = 0.0  # background touching only diagonally is enclosed (4-connected fill)
    assert reference_mask(diag, 100.0).all()
    truth = np.ones((5, 5), bool)
    assert slide_iou_reference(ring, truth, 100.0) == pytest.approx((0.0, 25 / (25 + 1e-4)))
    # filling comes before ITC removal: a 5 x 5 ring of 16 px (hole at 1:4, 1:4) has axis 4·sqrt(2.75) = 6.63,
    # filled it is 4·sqrt(2) = 5.66; with an ITC size of int(6.5) = 6 px the filled square is removed
    hollow = np.zeros((7, 7))
    hollow[1:6, 1:6] = 0.9
    hollow[2:5, 2:5] = 0.0
    assert reference_mask(hollow, 200 / 6.5).sum() == 0
    assert reference_mask(hollow, 200 / 5.5).sum() == 25  # ITC size 5: kept, filled


def test_epsilon_and_both_classes():
    n = 100
    nothing = np.zeros((10, 10))
    normal, tumour = iou_from_masks(nothing > 0, np.zeros((10, 10), bool))
    assert tumour == 0.0 and normal == pytest.approx(n / (n + 1e-4), abs=1e-15)  # 0 / 1e-4, not NaN
    pred = np.zeros((10, 10), bool)
    pred[0:2, 0:3] = True  # 6 predicted
    truth = np.zeros((10, 10), bool)
    truth[0:2, 1:5] = True  # 8 true, 4 shared
    normal, tumour = iou_from_masks(pred, truth)
    assert tumour == pytest.approx(4 / (6 + 8 - 4 + 1e-4), abs=1e-15)
    assert normal == pytest.approx(90 / (94 + 92 - 90 + 1e-4), abs=1e-15)  # 100 - 10 in neither


def test_slides_without_tumour_are_left_out_of_the_mean():
    square = np.zeros((8, 8))
    square[2:6, 2:6] = 0.9  # 16 px, axis 4·sqrt(1.25) > 3
    truth = np.zeros((8, 8), bool)
    truth[2:6, 2:7] = True  # 20 px
    false_alarm = square.copy()  # a tumour-free slide where the model predicts 16 px
    got = miou_reference([square, false_alarm], [truth, np.zeros((8, 8), bool)], 64.0)
    tumour, normal = 16 / (16 + 20 - 16 + 1e-4), 44 / (48 + 44 - 44 + 1e-4)
    assert got["iou_tumour"] == pytest.approx(tumour) and got["iou_normal"] == pytest.approx(normal)
    assert got["miou"] == pytest.approx((tumour + normal) / 2)
    assert [s["has_tumour"] for s in got["per_slide"]] == [True, False]
    assert got["per_slide"][1]["iou_tumour"] == 0.0
    # the caller's slide labels decide when given (the reference's come from the test set's list)
    both = miou_reference([square, false_alarm], [truth, np.zeros((8, 8), bool)], 64.0, has_tumour=[True, True])
    assert both["iou_tumour"] == pytest.approx(tumour / 2)
    assert math.isnan(miou_reference([false_alarm], [np.zeros((8, 8), bool)], 64.0)["miou"])
    assert math.isnan(miou_reference([], [], 64.0)["miou"])


def test_slide_confidence_and_auc():
    prob = np.zeros((10, 10))
    prob[1:5, 1:5] = 0.6  # the largest component, max 0.7 inside
    prob[2, 2] = 0.7
    prob[7:9, 7:10] = 0.95  # smaller (6 px, axis 3.27 > 3: kept), higher probability
    prob[0, 9] = 0.99  # an ITC: removed from the mask, but the slide's max probability
    assert slide_confidence_reference(prob, 64.0) == pytest.approx(0.7 * 0.99)
    assert slide_confidence_reference(np.full((5, 5), 0.4), 64.0) == 0.0  # nothing predicted
    assert slide_confidence_reference(_map(5, 5, (2, 2)), 64.0) == 0.0  # only an ITC
    normal = np.zeros((10, 10))
    normal[4:6, 4:8] = 0.55  # 8 px, confidence 0.55²
    probs, labels = [prob, normal, np.zeros((10, 10))], [True, False, False]
    assert auc_reference(probs, labels, 64.0) == 1.0
    assert auc_reference(probs, [False, True, False], 64.0) == pytest.approx(0.5)  # 0.3025 > 0, < 0.693
    assert math.isnan(auc_reference(probs, [True, True, True], 64.0))
    assert math.isnan(auc_reference(probs, [False] * 3, 64.0))


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="boolean"):
        slide_iou_reference(np.zeros((3, 3)), np.zeros((3, 3)), 64.0)
    with pytest.raises(ValueError, match="does not match"):
        slide_iou_reference(np.zeros((3, 3)), np.zeros((3, 4), bool), 64.0)
    with pytest.raises(ValueError, match="2-D"):
        reference_mask(np.zeros(3), 64.0)
    with pytest.raises(ValueError, match="finite"):
        reference_mask(np.full((2, 2), np.nan), 64.0)
    with pytest.raises(ValueError, match="positive"):
        itc_threshold_px(0.0)
    with pytest.raises(ValueError, match="truth maps"):
        miou_reference([np.zeros((2, 2))], [], 64.0)


# -- wiring into the task -------------------------------------------------------------------------


class _FixedModel:
    """A stand-in classifier: a fixed probability map per slide (0 off the embedded cells)."""

    def __init__(self, maps):
        self.maps = maps

    def predict_proba(self, store):
        return self.maps[store.slide_id]


def test_task_evaluate_reports_both_sets(synthetic_cohort, embedded_cohort):
    oracle = TumourOracle.from_synthetic(synthetic_cohort.root)
    rng = np.random.default_rng(0)
    maps, probs, truths = {}, [], []
    for slide in embedded_cohort:
        store = slide.store()
        fraction = np.asarray(oracle.tumour_fraction(slide.slide_id, slide.grid), np.float32)
        noisy = np.clip(fraction + rng.normal(0, 0.3, fraction.shape), 0, 1).astype(np.float32)
        maps[store.slide_id] = np.where(store.embedded_mask(), noisy, 0).astype(np.float32)
        probs.append(maps[store.slide_id])
        truths.append(fraction >= 0.5)
    task = SegmentationTask(oracle, _FixedModel(maps))
    grid = embedded_cohort.slides[0].grid
    mpp = grid.stride0 * grid.slide_mpp
    assert mpp == pytest.approx(64.0)  # 128-px patches at 0.5 µm/px, as 256 px at 0.25 µm/px
    m = task.evaluate(LabeledPool(), embedded_cohort, embedded_cohort)

    own = summarise(evaluate_slide(s.slide_id, maps[s.store().slide_id], task.truth(s), s.store().embedded_mask())
                    for s in embedded_cohort)
    assert m["iou_tumour"] == own["iou_tumour"]  # alkit's own metrics are untouched
    np.testing.assert_equal(m["fp_rate_tumour_free"], own["fp_rate_tumour_free"])
    ref = miou_reference(probs, truths, mpp)
    assert sum(t.any() for t in truths) >= 1
    assert (m["miou_reference"], m["iou_normal_reference"], m["iou_tumour_reference"]) == (
        ref["miou"], ref["iou_normal"], ref["iou_tumour"])
    np.testing.assert_equal(m["auc_reference"], auc_reference(probs, [t.any() for t in truths], mpp))
    assert set(SegmentationTask.summary_metrics[-4:]) == {"miou_reference", "iou_normal_reference",
                                                         "iou_tumour_reference", "auc_reference"}
    assert set(SegmentationTask.summary_metrics) - {"annotated_tissue_pct"} <= set(m)
