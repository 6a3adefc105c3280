"""The contract every registered task passes, on a tiny synthetic cohort: config checks, oracle, region
reports, training examples from the pool, a real fit, the score map acquisition uses, evaluation with
the summary's metrics, and one cycle of the generic loop with uncertainty acquisition."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import shapely.geometry

from alkit.al.loop import ActiveLearningLoop
from alkit.al.oracle import NotAnnotatedError, Oracle, RegionReport
from alkit.al.pool import LabeledPool
from alkit.al.task import Task, TaskConfigError, TaskError, TaskSettings, available_tasks, task_class
from alkit.annotations.drawn import DrawnLabels
from alkit.embeddings.cohort import Cohort
from alkit.selection.strategy import Budget, get_strategy

#: CPU-sized model parameters of the built-in tasks (a third-party task runs with its defaults)
TINY = {
    "segmentation": {"max_epochs": 3, "min_epochs": 1, "patience": 1},
    "detection": dict(mpp=0.5, patch=64, fpn_channels=32, patches_per_epoch=6, patches_per_epoch_small=6,
                      max_epochs=1, batch_size=3, tile=256, accelerator="cpu"),
}
BUDGET = Budget(n=1, size=1024)


def _settings(synthetic_cohort, params: dict, **changes) -> TaskSettings:
    base = dict(params=params, ground_truth={"synthetic": str(synthetic_cohort.root)}, prototypes={},
                acquisition={"measure": "entropy"}, has_validation_slides=False, resolve=str)
    return TaskSettings(**(base | changes))


def _first(cohort: Cohort) -> Cohort:
    """The cohort's first slide alone (a small test set keeps the detector's evaluation short)."""
    return Cohort(cohort.slides[:1], cohort.attrs)


def test_builtins_are_registered():
    assert {"segmentation", "detection"} <= set(available_tasks())
    with pytest.raises(TaskError, match="unknown task 'gland'"):
        task_class("gland")


@pytest.fixture(scope="module", params=available_tasks())
def task(request, synthetic_cohort):
    cls = task_class(request.param)
    params = TINY.get(request.param, {})
    truth = cls.check_config(_settings(synthetic_cohort, params))
    return cls.from_params(cls.build_oracle(truth), params, seed=0)


def test_class_declares_summary_and_checks_its_config(task, synthetic_cohort):
    cls = type(task)
    assert isinstance(task, Task) and isinstance(task.oracle, Oracle)
    assert task_class(cls.name) is cls
    assert "annotated_tissue_pct" in cls.summary_metrics  # the x axis of every summary plot
    assert {p.metric for p in cls.summary_plots} <= set(cls.summary_metrics)
    with pytest.raises(TaskConfigError, match="key 'task'"):
        cls.check_config(_settings(synthetic_cohort, {"no_such_parameter": 1}))
    with pytest.raises(TaskConfigError, match="cohort.ground_truth"):
        cls.check_config(_settings(synthetic_cohort, {}, ground_truth={"synthetic": "/nowhere/at/all"}))


def test_region_reports_examples_fit_score_map_and_evaluation(task, embedded_cohort):
    slide = embedded_cohort.slides[0]
    box = (0, 0, 1024, 1024)
    report = task.region_report(slide, box)
    mpp = slide.grid.slide_mpp
    assert isinstance(report, RegionReport) and report.slide_id == slide.slide_id
    assert report.region_mm2 == pytest.approx(1024 * 1024 * (mpp / 1000) ** 2)
    assert 0 <= report.tissue_mm2 <= report.region_mm2 + 1e-9
    assert report.findings and all(np.isfinite(float(v)) and float(v) >= 0 for v in report.findings.values())

    pool = LabeledPool()
    picks = get_strategy("random").select(embedded_cohort, BUDGET, np.random.default_rng(0)).regions
    pool.add(picks, 0, [task.region_report(embedded_cohort.slide(p.slide), p.box) for p in picks])
    examples = task.training_examples(pool, embedded_cohort)
    assert examples
    summary = task.fit(examples)
    assert isinstance(summary, dict)

    probs = task.probabilities(slide)
    assert probs.shape == slide.grid.shape and np.isfinite(probs).all() and 0 <= probs.min() <= probs.max() <= 1
    if type(task).mc_dropout:
        samples = task.mc_probabilities(slide, 3)
        assert samples.shape == (3, *slide.grid.shape)

    metrics = task.evaluate(pool, embedded_cohort, _first(embedded_cohort))
    loop_metrics = {"annotated_tissue_pct", "regions", "annotated_tissue_mm2"}
    assert set(type(task).summary_metrics) - loop_metrics <= set(metrics)


def test_one_generic_loop_runs_the_task_with_acquisition(task, embedded_cohort, tmp_path):
    loop = ActiveLearningLoop(task, embedded_cohort, get_strategy("random"), get_strategy("uncertainty"), BUDGET, 2,
                              LabeledPool.open(tmp_path / "pool.json"), test_cohort=_first(embedded_cohort), seed=3)
    results = loop.run()
    assert [r.cycle for r in results] == [0, 1]
    pool = LabeledPool.open(tmp_path / "pool.json")
    assert {r.strategy for r in pool.regions if r.cycle == 1} == {"uncertainty"}
    for r in pool.regions:  # the pool keeps the task's own findings beside the tissue area
        assert set(r.findings) == set(task.region_report(embedded_cohort.slide(r.slide), r.box).findings)
    for result in results:
        assert set(type(task).summary_metrics) <= set(result.metrics)


def test_the_oracle_from_drawings_reports_what_was_drawn_inside_the_regions(task, embedded_cohort):
    """What an annotation session trains on: the task's oracle of people's drawings reports, for a box inside
    an annotated region, the findings its ground-truth oracle reports, with the drawn values; outside every
    region nothing is found."""
    mpp = 0.25
    tumour = shapely.box(100, 50, 200, 150)
    record = {"slide": "s", "box": [0, 0, 400, 300],
              "label": {"tumour": shapely.geometry.mapping(tumour), "mitoses": [[120.0, 60.0], [150.0, 100.0]],
                        "hard_negatives": [[180.0, 140.0]]}}
    oracle = type(task).oracle_from_drawings(DrawnLabels.from_records([record]), {"s": mpp})
    assert isinstance(oracle, Oracle)
    drawn = {"tumour_mm2": 100 * 100 * (mpp * 1e-3) ** 2, "mitoses": 2, "hard_negatives": 1}
    report = oracle.region_report("s", (50, 40, 200, 120))
    slide = embedded_cohort.slides[0]
    truth_keys = set(task.region_report(slide, (0, 0, 1024, 1024)).findings)
    assert truth_keys <= set(report.findings)  # the session's task learns from the same findings
    for key, value in report.findings.items():
        assert value == pytest.approx(drawn[key]), key
    try:  # outside every region: not annotated, or nothing drawn there
        outside = oracle.region_report("s", (1000, 1000, 100, 100)).findings
    except NotAnnotatedError:
        outside = {}
    assert all(v == 0 for v in outside.values())
