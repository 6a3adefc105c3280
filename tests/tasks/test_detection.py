"""Mitosis detection: point matching / F1 / threshold choice / annotated ratio (hand-computed cases),
tiling and NMS across tile borders, patch sampling, and a tiny real RetinaNet run on CPU on a
synthetic slide's mitoses."""

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


# ------------------------------------------------------------------------------- tiling and merging

def test_tile_origins_cover_the_box():
    from alkit.tasks.detection.detector import tile_origins

    origins = tile_origins((10, 20, 300, 100), tile0=128, overlap0=28)
    xs, ys = sorted({o[0] for o in origins}), sorted({o[1] for o in origins})
    assert xs == [10, 110, 182] and ys == [20]  # stride 100; the last tile ends flush with the box
    assert tile_origins((0, 0, 50, 50), 128, 28) == [(0.0, 0.0)]
    with pytest.raises(ValueError):
        tile_origins((0, 0, 500, 500), 128, 128)


def test_nms_keeps_a_figure_seen_by_two_overlapping_tiles_once():
    from alkit.tasks.detection.detector import merge_detections

    scale, box0 = 2.0, 50.0  # level-0 px per tile px; 25-px boxes in tile px
    # one figure at level-0 (500, 300) found by the tile at (0, 0) and by the tile at (440, 0),
    # each with a slightly different box in its own tile coordinates; a second figure elsewhere
    tile_hits = [((0.0, 0.0), np.array([[238.0, 138.0, 263.0, 163.0]]), np.array([0.7])),
                 ((440.0, 0.0), np.array([[17.5, 137.0, 42.5, 162.0], [100, 100, 125, 125]]), np.array([0.9, 0.4]))]
    pts, scores = [], []
    for (tx, ty), b, s in tile_hits:
        pts.append(np.stack([tx + (b[:, 0] + b[:, 2]) / 2 * scale, ty + (b[:, 1] + b[:, 3]) / 2 * scale], 1))
        scores.append(s)
    pts, scores = np.concatenate(pts), np.concatenate(scores)
    assert np.abs(pts[0] - pts[1]).max() <= 3  # the same figure, two slightly different centres
    keep = merge_detections(pts, scores, box0, iou=0.3)
    assert keep.tolist() == [1, 2]  # the higher-scoring duplicate and the other figure
    assert merge_detections(np.zeros((0, 2)), np.zeros(0), box0).tolist() == []


# -------------------------------------------------------------------------------- real slide: sampling

@pytest.fixture(scope="module")
def mitosis_slide(tmp_path_factory):
    """One 1024-px synthetic tumour slide (0.25 µm/px) with 4 mitoses and 3 lookalikes."""
    from alkit.al.oracle import MitosisOracle
    from alkit.synthetic import generate_cohort

    cohort = generate_cohort(tmp_path_factory.mktemp("mitosis_cohort"), n_slides=1, size=1024, seed=2,
                             n_caption_images=0, progress=False, tumour_slide_fraction=1.0)
    slide = cohort.slides[0]
    oracle = MitosisOracle.from_sliderunner(cohort.mitoses_db)
    mitoses, hard = oracle.mitoses(slide.slide_id), oracle.hard_negatives(slide.slide_id)
    assert len(mitoses) >= 3 and len(hard) >= 1
    return slide, mitoses, hard


def _example(slide, mitoses, hard, regions):
    from alkit.tasks.detection.detector import DetectionExample

    return DetectionExample(slide.slide_id, slide.path, regions, mitoses, hard, tissue_area_px=slide.tissue_area_px)


def _regions_around(points: np.ndarray, side: float, size: int) -> np.ndarray:
    lo = np.clip(points - side / 2, 0, size - side)
    return np.concatenate([lo, np.full((len(points), 2), side)], axis=1)


def test_patch_sampling_positives_hard_negatives_and_masking(mitosis_slide):
    from alkit.tasks.detection.detector import PatchSampler, _DetectionPatchDataset

    slide, mitoses, hard = mitosis_slide
    regions = _regions_around(np.concatenate([mitoses[:2], hard[:1]]), 300, slide.width)
    ex = _example(slide, mitoses, hard, regions)
    sampler = PatchSampler([ex], [256.0], 40, seed=5, positive_fraction=0.5, hard_negative_fraction=0.25)
    specs = sampler.draw(0)
    assert specs == PatchSampler([ex], [256.0], 40, seed=5, positive_fraction=0.5,
                                 hard_negative_fraction=0.25).draw(0)  # seeded
    assert specs != sampler.draw(1)
    for sp in specs:  # each patch lies inside one labeled region (regions are larger than patches)
        assert any(r[0] <= sp.x and sp.x + 256 <= r[0] + r[2] and r[1] <= sp.y and sp.y + 256 <= r[1] + r[3]
                   for r in regions)
    data = _DetectionPatchDataset([ex], [slide.mpp], 0.25, 256, 50.0, augment=None)
    n_boxes = [len(data[sp][1]["boxes"]) for sp in specs]
    assert sum(n > 0 for n in n_boxes) >= 0.4 * len(specs)  # positives oversampled
    # a hard negative is never a box: a patch centred on it has boxes only for real mitoses near it
    h = ex.labeled_hard_negatives()[0]
    from alkit.tasks.detection.detector import PatchSpec

    image, target = data[PatchSpec(0, h[0] - 128, h[1] - 128, 0)]
    centres = (target["boxes"][:, :2] + target["boxes"][:, 2:]).numpy() / 2 + (h - 128)
    assert all(np.linalg.norm(mitoses - c, axis=1).min() < 1 for c in centres)
    assert image.shape == (256, 256, 3) and image.dtype.is_floating_point is False
    # pixels outside the labeled regions are white: a patch straddling a region's left edge
    one = _DetectionPatchDataset([_example(slide, mitoses, hard, [[300, 300, 400, 400]])], [slide.mpp], 0.25, 256,
                                 50.0)
    image, _ = one[PatchSpec(0, 172, 300, 0)]  # columns 0..127 lie left of the region
    assert (image[:, :128].numpy() == 255).all() and (image[:, 128:].numpy() < 255).any()


def test_patches_per_epoch_rule(mitosis_slide):
    from alkit.tasks.detection.detector import MitosisDetectorTask

    slide, mitoses, hard = mitosis_slide
    task = MitosisDetectorTask(patches_per_epoch=50, patches_per_epoch_small=10)
    small = _example(slide, mitoses, hard, [[0, 0, 100, 100]])  # 10^4 px² of ~10^6 px² tissue: < 5 %
    large = _example(slide, mitoses, hard, [[0, 0, 512, 512]])
    assert task.patches_for([small])[0] == 10 and task.patches_for([small])[1] < 0.05
    assert task.patches_for([large])[0] == 50
    small.tissue_area_px = None
    assert task.patches_for([small]) == (50, None)  # tissue unknown: the full count


# --------------------------------------------------------------------------- real slide: tiny training

def test_tiny_training_and_detection_on_cpu(mitosis_slide):
    import torch

    from alkit.tasks.detection.detector import MitosisDetectorTask

    slide, mitoses, hard = mitosis_slide
    regions = _regions_around(mitoses[:3], 200, slide.width)
    ex = _example(slide, mitoses, hard, regions)
    rng_before = torch.get_rng_state()
    # 0.5 µm/px: 64-px patches (128 level-0 px), 25-px boxes; a narrow FPN keeps CPU steps cheap
    task = MitosisDetectorTask(mpp=0.5, patch=64, fpn_channels=32, patches_per_epoch=6, patches_per_epoch_small=6,
                               max_epochs=2, batch_size=3, tile=256, accelerator="cpu", seed=0, score_thresh=0.0)
    summary = task.fit([ex])
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    assert summary["epochs"] == 2 and summary["patches_per_epoch"] == 6 and summary["n_mitoses"] >= 3
    assert len(summary["epoch_losses"]) == 2 and len(summary["step_losses"]) == 4
    assert all(math.isfinite(v) for v in summary["step_losses"])

    box = (100.0, 200.0, 600.0, 500.0)
    pts, scores = task.detect(slide.path, [box])
    assert pts.shape == (len(scores), 2) and len(scores) > 0 and pts.dtype == np.float64
    assert points_in_boxes(pts, [box]).all()  # level-0 coordinates inside the requested box
    assert (np.diff(scores) <= 0).all()
    whole, whole_scores = task.detect(slide.path)  # the whole slide in 256-px tiles at 0.5 µm/px
    assert len(whole) >= len(pts) and points_in_boxes(whole, [(0, 0, slide.width, slide.height)]).all()
    # NMS across tiles: no two kept detections' level-0 boxes overlap more than the NMS IoU
    from torchvision.ops import box_iou

    from alkit.tasks.detection.detector import point_boxes

    boxes0 = torch.from_numpy(point_boxes(whole, task.box_px * 0.5 / slide.mpp))
    iou = box_iou(boxes0, boxes0) - torch.eye(len(whole), dtype=torch.float64)
    assert float(iou.max()) <= task.nms_iou + 1e-6
