"""The detection task in the loop end to end on real synthetic slides: point oracle, RetinaNet training, F1 on test
slides, threshold choice, annotated-mitoses ratio, uncertainty acquisition on the detector's map, resume."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from alkit.al.loop import ActiveLearningLoop
from alkit.al.pool import LabeledPool
from alkit.al.uncertainty import acquisition_map
from alkit.embeddings.store import StoreHeader
from alkit.selection.strategy import Budget, get_strategy
from alkit.tasks.detection.detector import MitosisDetectorModel
from alkit.tasks.detection.examples import DetectionExample
from alkit.tasks.detection.metrics import points_in_boxes
from alkit.tasks.detection.task import DetectionTask
from conftest import mitosis_cohort, on_tissue_count

TINY = dict(mpp=0.5, patch=64, fpn_channels=32, patches_per_epoch=6, patches_per_epoch_small=6, max_epochs=1,
            batch_size=3, tile=256, accelerator="cpu", score_thresh=0.01)


@pytest.fixture(scope="module")
def mito_cohort(tmp_path_factory):
    """3 tumour slides of 2048 px (0.25 µm/px) embedded at 64 px, stride 64: 2 to label, 1 to test."""
    from alkit.embeddings.cohort import Cohort

    _, stores, oracle = mitosis_cohort(tmp_path_factory.mktemp("detloop"), n_slides=3)
    return {"train": Cohort.from_stores(stores[:2]), "test": Cohort.from_stores(stores[2:]), "oracle": oracle}


def _loop(mito_cohort, pool_path, cycles=2, validation=None, seed=0):
    task = DetectionTask(mito_cohort["oracle"], MitosisDetectorModel(seed=seed, **TINY))
    return ActiveLearningLoop(task, mito_cohort["train"], get_strategy("random"), get_strategy("uncertainty"),
                              Budget(n=1, size=512), cycles, LabeledPool.open(pool_path),
                              test_cohort=mito_cohort["test"], validation_cohort=validation, seed=seed)


def test_detection_loop_labels_trains_evaluates_acquires_and_resumes(mito_cohort, tmp_path, caplog):
    oracle, train, test = mito_cohort["oracle"], mito_cohort["train"], mito_cohort["test"]
    loop = _loop(mito_cohort, tmp_path / "pool.json")
    with caplog.at_level(logging.WARNING, logger="alkit.tasks.detection.task"):
        results = loop.run()
    assert "no validation slides" in caplog.text
    assert [r.cycle for r in results] == [0, 1]
    regions = loop.pool.regions
    assert sorted(r.cycle for r in regions) == [0, 0, 1, 1]  # one region per slide per cycle
    assert {r.strategy for r in regions if r.cycle == 1} == {"uncertainty"}
    for r in regions:  # the annotator's counts are the oracle's points inside the region
        assert (r.findings["mitoses"], r.findings["hard_negatives"]) == oracle.counts_in(r.slide, r.box)

    test_mitoses = sum(on_tissue_count(s, oracle.mitoses(s.slide_id)) for s in test)
    assert test_mitoses > 0
    all_mitoses = {s.slide_id: oracle.mitoses(s.slide_id) for s in train}
    for result in results:
        m = result.metrics
        assert m["tp"] + m["fn"] == test_mitoses  # every test mitosis on tissue is either found or missed
        assert math.isnan(m["f1"]) or 0.0 <= m["f1"] <= 1.0
        assert m["threshold_chosen_on"] == "labeled regions" and 0.0 <= m["threshold"] <= 1.0
        boxes = {}
        for r in regions:
            if r.cycle <= result.cycle:
                boxes.setdefault(r.slide, []).append(r.box)
        inside = sum(int(points_in_boxes(p, boxes.get(s, [])).sum()) for s, p in all_mitoses.items())
        assert m["annotated_mitoses"] == inside
        assert m["annotated_mitoses_ratio"] == pytest.approx(inside / sum(map(len, all_mitoses.values())))
        assert m["regions"] == 2 * (result.cycle + 1) and 0 < m["annotated_tissue_pct"] < 100
        assert set(m["f1_per_slide"]) == {s.slide_id for s in test}
    assert results[1].metrics["annotated_tissue_pct"] > results[0].metrics["annotated_tissue_pct"]

    # resuming a finished pool labels nothing and trains nothing: the same metrics come back
    saved = json.loads((tmp_path / "pool.json").read_text())
    again = _loop(mito_cohort, tmp_path / "pool.json").run()
    assert [r.metrics["f1"] for r in again] == pytest.approx([r.metrics["f1"] for r in results], nan_ok=True)
    assert json.loads((tmp_path / "pool.json").read_text()) == saved


def test_detector_map_for_acquisition(mito_cohort):
    """The detector's per-cell map: best score per cell in [0, 1], zero off tissue; entropy ranks it."""
    oracle, (slide, other) = mito_cohort["oracle"], list(mito_cohort["train"])
    task = MitosisDetectorModel(seed=1, **TINY)
    pts = oracle.mitoses(slide.slide_id)
    summary = task.fit([
        DetectionExample(slide.slide_id, slide.slide_path, [[0, 0, 2048, 2048]], pts,
                         oracle.hard_negatives(slide.slide_id), tissue_area_px=3e6),
        DetectionExample(other.slide_id, other.slide_path, np.zeros((0, 4)), oracle.mitoses(other.slide_id),
                         tissue_area_px=1e6)])  # unlabeled, but its tissue counts in the labeled share
    assert summary["labeled_tissue_share"] == pytest.approx(2048 ** 2 / 4e6)
    header = StoreHeader.load(slide.store_path)
    smap = task.predict_proba(header)
    assert smap.shape == slide.grid.shape and smap.dtype == np.float32
    valid = np.zeros(smap.shape, bool)
    valid[header.coords[:, 0], header.coords[:, 1]] = True
    assert (smap[~valid] == 0).all() and smap.max() <= 1.0 and (smap > 0).any()
    # the map's cells hold the best detection centred in them
    det, scores = task.detect(slide.slide_path, [slide.grid.bounding_box(header.coords)])
    cells = slide.grid.cells_of_points(det)
    on = valid[cells[:, 0], cells[:, 1]]
    best = {}
    for (r, c), s in zip(map(tuple, cells[on]), scores[on]):
        best[(r, c)] = max(best.get((r, c), 0.0), float(s))
    assert {k: pytest.approx(v) for k, v in best.items()} == {tuple(k): float(smap[tuple(k)])
                                                              for k in np.argwhere(smap > 0)}
    detection = DetectionTask(oracle, task)  # the task hands the model's map to acquisition
    np.testing.assert_array_equal(detection.probabilities(slide), smap)
    unc = acquisition_map(detection, slide, valid, "entropy")
    assert unc.shape == smap.shape and (unc[smap == 0] == 0).all()
    with pytest.raises(NotImplementedError, match="bald"):
        acquisition_map(detection, slide, valid, "bald", mc_samples=4)


def test_threshold_on_validation_slides(mito_cohort, tmp_path):
    loop = _loop(mito_cohort, tmp_path / "pool.json", cycles=1, validation=mito_cohort["test"])
    (result,) = loop.run()
    assert result.metrics["threshold_chosen_on"] == "validation"


def test_scoring_counts_points_on_tissue_cells_only(mito_cohort, tmp_path):
    slide = next(iter(mito_cohort["test"]))
    grid, coords = slide.grid, StoreHeader.load(slide.store_path).coords
    valid = StoreHeader.load(slide.store_path).embedded_mask()
    assert valid.sum() == len(coords) and valid[coords[:, 0], coords[:, 1]].all()
    (r_on, c_on), (r_off, c_off) = coords[0], np.argwhere(~valid)[0]
    s = grid.stride0
    points = np.array([[c_on * s + 1, r_on * s + 1], [c_off * s + s / 2, r_off * s + s / 2], [-5, 10],
                       [grid.dimensions[0] + 3, 0], [c_on * s + s - 0.5, r_on * s + s - 0.5]])
    loop = _loop(mito_cohort, tmp_path / "pool.json")
    assert loop.task.on_tissue(slide, points).tolist() == [True, False, False, False, True]
    assert loop.task.on_tissue(slide, np.zeros((0, 2))).shape == (0,)
