"""The mitosis detector (:class:`MitosisDetectorModel`): tiling and NMS across tile borders, patch
sampling, and a tiny real RetinaNet run on CPU on a synthetic slide's mitoses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from alkit.synthetic import generate_cohort
from alkit.tasks.detection.detector import MitosisDetectorModel
from alkit.tasks.detection.examples import DetectionExample
from alkit.tasks.detection.metrics import points_in_boxes
from alkit.tasks.detection.oracle import MitosisOracle
from alkit.tasks.detection.patches import DetectionPatchDataset, PatchSampler, PatchSpec, point_boxes
from alkit.tasks.detection.tiling import merge_detections, tile_origins


# ------------------------------------------------------------------------------- tiling and merging

def test_tile_origins_cover_the_box():
    origins = tile_origins((10, 20, 300, 100), tile0=128, overlap0=28)
    xs, ys = sorted({o[0] for o in origins}), sorted({o[1] for o in origins})
    assert xs == [10, 110, 182] and ys == [20]  # stride 100; the last tile ends flush with the box
    assert tile_origins((0, 0, 50, 50), 128, 28) == [(0.0, 0.0)]
    with pytest.raises(ValueError):
        tile_origins((0, 0, 500, 500), 128, 128)


def test_nms_keeps_a_figure_seen_by_two_overlapping_tiles_once():
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
    cohort = generate_cohort(tmp_path_factory.mktemp("mitosis_cohort"), n_slides=1, size=1024, seed=2,
                             n_caption_images=0, progress=False, tumour_slide_fraction=1.0)
    slide = cohort.slides[0]
    oracle = MitosisOracle.from_sliderunner(cohort.mitoses_db)
    mitoses, hard = oracle.mitoses(slide.slide_id), oracle.hard_negatives(slide.slide_id)
    assert len(mitoses) >= 3 and len(hard) >= 1
    return slide, mitoses, hard


def _example(slide, mitoses, hard, regions):
    return DetectionExample(slide.slide_id, slide.path, regions, mitoses, hard, tissue_area_px=slide.tissue_area_px)


def _regions_around(points: np.ndarray, side: float, size: int) -> np.ndarray:
    lo = np.clip(points - side / 2, 0, size - side)
    return np.concatenate([lo, np.full((len(points), 2), side)], axis=1)


def test_patch_sampling_positives_hard_negatives_and_masking(mitosis_slide):
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
    data = DetectionPatchDataset([ex], [slide.mpp], 0.25, 256, 50.0, augment=None)
    n_boxes = [len(data[sp][1]["boxes"]) for sp in specs]
    assert sum(n > 0 for n in n_boxes) >= 0.4 * len(specs)  # positives oversampled
    # a hard negative is never a box: a patch centred on it has boxes only for real mitoses near it
    h = ex.labeled_hard_negatives()[0]
    image, target = data[PatchSpec(0, h[0] - 128, h[1] - 128, 0)]
    centres = (target["boxes"][:, :2] + target["boxes"][:, 2:]).numpy() / 2 + (h - 128)
    assert all(np.linalg.norm(mitoses - c, axis=1).min() < 1 for c in centres)
    assert image.shape == (256, 256, 3) and image.dtype.is_floating_point is False
    # pixels outside the labeled regions are white: a patch straddling a region's left edge
    one = DetectionPatchDataset([_example(slide, mitoses, hard, [[300, 300, 400, 400]])], [slide.mpp], 0.25, 256,
                                50.0)
    image, _ = one[PatchSpec(0, 172, 300, 0)]  # columns 0..127 lie left of the region
    assert (image[:, :128].numpy() == 255).all() and (image[:, 128:].numpy() < 255).any()


def test_patches_per_epoch_rule(mitosis_slide):
    slide, mitoses, hard = mitosis_slide
    task = MitosisDetectorModel(patches_per_epoch=50, patches_per_epoch_small=10)
    small = _example(slide, mitoses, hard, [[0, 0, 100, 100]])  # 10^4 px² of ~10^6 px² tissue: < 5 %
    large = _example(slide, mitoses, hard, [[0, 0, 512, 512]])
    assert task.patches_for([small])[0] == 10 and task.patches_for([small])[1] < 0.05
    assert task.patches_for([large])[0] == 50
    small.tissue_area_px = None
    assert task.patches_for([small]) == (50, None)  # tissue unknown: the full count


# --------------------------------------------------------------------------- real slide: tiny training

def test_tiny_training_and_detection_on_cpu(mitosis_slide):
    slide, mitoses, hard = mitosis_slide
    regions = _regions_around(mitoses[:3], 200, slide.width)
    ex = _example(slide, mitoses, hard, regions)
    rng_before = torch.get_rng_state()
    # 0.5 µm/px: 64-px patches (128 level-0 px), 25-px boxes; a narrow FPN keeps CPU steps cheap
    task = MitosisDetectorModel(mpp=0.5, patch=64, fpn_channels=32, patches_per_epoch=6, patches_per_epoch_small=6,
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
    boxes0 = torch.from_numpy(point_boxes(whole, task.box_px * 0.5 / slide.mpp))
    iou = box_iou(boxes0, boxes0) - torch.eye(len(whole), dtype=torch.float64)
    assert float(iou.max()) <= task.nms_iou + 1e-6


def test_imagenet_backbone_loads_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """``backbone_weights="imagenet"`` (the paper's detector) takes torchvision's ImageNet ResNet-18 from
    the torch hub cache; here a local random-init stand-in sits where the download would be."""
    import torch
    from torchvision.models import ResNet18_Weights, resnet18

    from alkit.tasks.detection.network import build_retinanet

    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(3)
    stand_in = resnet18(weights=None).state_dict()
    torch.save(stand_in, checkpoints / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    net = build_retinanet(50.0, 128, backbone_weights="imagenet", fpn_channels=32)
    body = net.backbone.body
    assert torch.equal(body.conv1.weight, stand_in["conv1.weight"])
    assert torch.equal(body.layer4[1].conv2.weight, stand_in["layer4.1.conv2.weight"])
