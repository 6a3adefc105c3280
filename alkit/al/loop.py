"""The region-based active-learning loop: initial set, then train → evaluate → acquire → label.

The loop knows no task: what is learned, what an annotator reports and how a model is judged are the
:class:`~alkit.al.task.Task`'s. Cycle 0 labels the regions of the initial strategy (random, diversity,
prototype, ...). Every cycle ``c`` then trains a fresh model on all regions labeled so far, evaluates
it on the test slides and records the metrics; unless it is the last cycle, the acquisition strategy
(e.g. uncertainty, which scores with this loop's task) chooses the regions of cycle ``c + 1`` and the
task's oracle reports on them.

Resuming: the pool file (:class:`~alkit.al.pool.LabeledPool`) holds every labeled region with its cycle
and the metrics of every evaluated cycle, and is saved atomically after each step. A restarted loop
skips evaluated cycles, retrains the model a missing acquisition needs (training is seeded, so it is
the same model), and never labels a cycle twice. Each cycle's random choices come from
``numpy.random.default_rng([seed, cycle])``, so an interrupted run ends where an uninterrupted
one would.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alkit.al.areas import tissue_mm2
from alkit.al.pool import LabeledPool
from alkit.al.task import Task
from alkit.embeddings.cohort import Cohort
from alkit.selection.sizing import RegionSize, select_regions
from alkit.selection.strategy import Budget, Labeled, Selection, Strategy

log = logging.getLogger(__name__)


class LoopCallback:
    """Hooks for logging (MLflow, progress); every method is optional."""

    def on_labeled(self, loop: ActiveLearningLoop, cycle: int, selection: Selection) -> None:
        """The regions of ``selection`` (with the score maps they were chosen on) were labeled and saved."""

    def on_cycle_end(self, loop: ActiveLearningLoop, cycle: int, metrics: dict) -> None:
        """Cycle ``cycle`` was trained and evaluated."""

    def on_fit_start(self, loop: ActiveLearningLoop, cycle: int) -> None:
        """The task's model is about to be trained on the regions of cycles ≤ ``cycle`` (e.g. to log
        each fit's training curves apart)."""


def train_metrics(summary: dict | None) -> dict:
    """The numbers of a fit's training summary, as a cycle's ``train_*`` metrics."""
    return {f"train_{k}": v for k, v in (summary or {}).items() if isinstance(v, (int, float))}


@dataclass
class CycleResult:
    cycle: int
    metrics: dict


class ActiveLearningLoop:
    """Runs ``cycles`` cycles of ``task`` on ``cohort`` (where regions are labeled), evaluating on
    ``test_cohort`` (default: ``cohort``); ``validation_cohort`` goes to the task's evaluation (e.g. the
    detector's threshold choice). Each cycle labels ``budget_per_cycle.n`` regions per slide of
    ``budget_per_cycle.size`` level-0 px, or, with a ``region_size`` in µm, of that side converted per
    slide (:func:`alkit.selection.sizing.select_regions`)."""

    def __init__(self, task: Task, cohort: Cohort, initial_strategy: Strategy, acquisition: Strategy | None,
                 budget_per_cycle: Budget, cycles: int, pool: LabeledPool, *, test_cohort: Cohort | None = None,
                 validation_cohort: Cohort | None = None, seed: int = 0, callbacks: Sequence[LoopCallback] = (),
                 region_size: RegionSize | None = None):
        if cycles < 1:
            raise ValueError(f"cycles must be >= 1, got {cycles}")
        if cycles > 1 and acquisition is None:
            raise ValueError("more than one cycle needs an acquisition strategy")
        self.task = task
        self.cohort, self.test_cohort, self.validation_cohort = cohort, test_cohort or cohort, validation_cohort
        self.initial_strategy, self.acquisition = initial_strategy, acquisition
        self.budget, self.cycles, self.pool = budget_per_cycle, cycles, pool
        # a side in µm: converted per slide, so a mixed-resolution cohort gets equal physical regions
        self.region_size = region_size if region_size is not None and region_size.um is not None else None
        self.seed = seed
        self.callbacks = list(callbacks)
        bind = getattr(acquisition, "bind", None)
        if bind is not None:
            bind(task)  # model-based acquisition (uncertainty) scores with this loop's task

    # -- steps -----------------------------------------------------------------------------------
    def _rng(self, cycle: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, cycle])

    def choose(self, cycle: int, strategy: Strategy, exclude: Labeled | None = None) -> Selection:
        """The regions ``strategy`` chooses for ``cycle`` (seeded by the cycle), overlapping no labeled
        region nor any box of ``exclude`` (e.g. regions an annotator skipped)."""
        labeled = self.pool.labeled()
        for slide, boxes in (exclude or {}).items():
            labeled.setdefault(slide, []).extend(boxes)
        if self.region_size is not None:
            return select_regions(strategy, self.cohort, self.budget.n, self.region_size, self._rng(cycle), labeled)
        return strategy.select(self.cohort, self.budget, self._rng(cycle), labeled=labeled)

    def record(self, cycle: int, selection: Selection, reports: Sequence | None = None) -> list:
        """Add the regions of ``selection`` to the pool as labeled in ``cycle``, with the annotator's
        ``reports`` (default: the task's own oracle reports on each region) and save."""
        if reports is None:
            reports = [self.task.region_report(self.cohort.slide(pick.slide), pick.box) for pick in selection.regions]
        self.pool.add(selection.regions, cycle, reports)
        log.info("cycle %d: labeled %d regions with %s", cycle, len(selection.regions), selection.strategy)
        for cb in self.callbacks:
            cb.on_labeled(self, cycle, selection)
        return selection.regions

    def label(self, cycle: int, strategy: Strategy) -> list:
        """Choose the regions of ``cycle`` with ``strategy``, have them reported on, add them to the pool."""
        return self.record(cycle, self.choose(cycle, strategy))

    def evaluate(self) -> dict:
        """The task's metrics of the current model and the annotation budget used so far."""
        metrics = self.task.evaluate(self.pool, self.cohort, self.test_cohort, self.validation_cohort)
        used = self.pool.budget_used(tissue_mm2(self.cohort))
        return metrics | {"annotated_tissue_pct": used.get("tissue_pct", 0.0), "regions": used["regions"],
                          "annotated_tissue_mm2": used["tissue_mm2"]}

    def fit(self, max_cycle: int | None = None) -> dict:
        """Train the task's model on the regions of cycles ≤ ``max_cycle`` (default all)."""
        for cb in self.callbacks:
            cb.on_fit_start(self, self.pool.last_cycle if max_cycle is None else max_cycle)
        return self.task.fit(self.task.training_examples(self.pool, self.cohort, max_cycle, self.validation_cohort))

    def run(self) -> list[CycleResult]:
        """Run (or resume) all cycles; returns every cycle's metrics."""
        if self.pool.last_cycle < 0:
            self.label(0, self.initial_strategy)
        for cycle in range(self.cycles):
            if cycle in self.pool.cycle_metrics:
                continue
            if self.pool.last_cycle < cycle:  # interrupted before this cycle's acquisition finished
                self.fit(max_cycle=cycle - 1)
                self.label(cycle, self.acquisition)
            summary = self.fit()
            metrics = self.evaluate() | train_metrics(summary)
            self.pool.record_metrics(cycle, metrics)
            log.info("cycle %d: %s", cycle, {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
                                             if not isinstance(v, dict)})
            for cb in self.callbacks:
                cb.on_cycle_end(self, cycle, metrics)
            if cycle + 1 < self.cycles and self.pool.last_cycle < cycle + 1:
                self.label(cycle + 1, self.acquisition)
        return [CycleResult(c, self.pool.cycle_metrics[c]) for c in range(self.cycles)]
