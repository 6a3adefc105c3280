"""The region-based active-learning loop: initial set, then train → evaluate → acquire → label.

Cycle 0 labels the regions of the initial strategy (random, diversity, prototype, ...). Every cycle
``c`` then trains a fresh model on all regions labeled so far, evaluates it on the test slides and
records the metrics; unless it is the last cycle, the acquisition strategy (e.g. uncertainty)
chooses the regions of cycle ``c + 1`` and the oracle labels them.

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
from typing import Protocol

import numpy as np

from alkit.embeddings.cohort import Cohort, CohortSlide
from alkit.wsi.grid import PatchGrid
from alkit.al.pool import LabeledPool
from alkit.selection.regions import box_sums
from alkit.selection.strategy import Box, Budget, Selection, Strategy

log = logging.getLogger(__name__)


class TumourOracleLike(Protocol):
    def tumour_fraction(self, slide_id: str, grid: PatchGrid) -> np.ndarray: ...


class TaskLike(Protocol):
    def fit(self, examples: list) -> dict: ...

    def predict_proba(self, store) -> np.ndarray: ...


class LoopCallback:
    """Hooks for logging (MLflow, progress); every method is optional."""

    def on_labeled(self, loop: ActiveLearningLoop, cycle: int, selection: Selection) -> None:
        """The regions of ``selection`` (with the score maps they were chosen on) were labeled and saved."""

    def on_cycle_end(self, loop: ActiveLearningLoop, cycle: int, metrics: dict) -> None:
        """Cycle ``cycle`` was trained and evaluated."""


@dataclass
class CycleResult:
    cycle: int
    metrics: dict


class ActiveLearningLoop:
    """Runs ``cycles`` cycles on ``cohort`` (where regions are labeled), evaluating on ``test_cohort``."""

    def __init__(self, cohort: Cohort, initial_strategy: Strategy, acquisition: Strategy | None, task: TaskLike,
                 oracle: TumourOracleLike, budget_per_cycle: Budget, cycles: int, pool: LabeledPool,
                 test_cohort: Cohort | None = None, seed: int = 0, tumour_threshold: float = 0.5,
                 callbacks: Sequence[LoopCallback] = ()):
        if cycles < 1:
            raise ValueError(f"cycles must be >= 1, got {cycles}")
        if cycles > 1 and acquisition is None:
            raise ValueError("more than one cycle needs an acquisition strategy")
        self.cohort, self.test_cohort = cohort, test_cohort or cohort
        self.initial_strategy, self.acquisition = initial_strategy, acquisition
        self.task, self.oracle = task, oracle
        self.budget, self.cycles, self.pool = budget_per_cycle, cycles, pool
        self.seed, self.tumour_threshold = seed, tumour_threshold
        self.callbacks = list(callbacks)
        if acquisition is not None and getattr(acquisition, "task", False) is None:
            acquisition.task = task  # model-based acquisition (uncertainty) scores with this loop's model
        self._truth: dict[str, np.ndarray] = {}

    # -- ground truth and areas ------------------------------------------------------------------
    def truth(self, slide: CohortSlide) -> np.ndarray:
        """The oracle's tumour fraction of every cell of ``slide`` (cached)."""
        if slide.slide_id not in self._truth:
            self._truth[slide.slide_id] = np.asarray(self.oracle.tumour_fraction(slide.slide_id, slide.grid),
                                                     np.float32)
        return self._truth[slide.slide_id]

    @staticmethod
    def _cell_mm2(grid: PatchGrid) -> float:
        return (grid.stride0 * grid.slide_mpp / 1000.0) ** 2

    def _area_mm2(self, slide: CohortSlide, values: np.ndarray, box: Box) -> float:
        cells = slide.grid.box_to_cells(box)
        if cells[2] == 0 or cells[3] == 0:
            return 0.0
        return float(box_sums(values, [cells])[0]) * self._cell_mm2(slide.grid)

    def tissue_mm2(self) -> float:
        """Tissue area (mm²) of the cohort where regions are labeled."""
        return sum(float(s.grid.tissue_fraction.sum()) * self._cell_mm2(s.grid) for s in self.cohort)

    def totals_mm2(self) -> tuple[float, float]:
        """Tissue and tumour area (mm²) of the cohort where regions are labeled."""
        tissue = self.tissue_mm2()
        tumour = sum(float(self.truth(s).sum()) * self._cell_mm2(s.grid) for s in self.cohort)
        return tissue, tumour

    # -- steps -----------------------------------------------------------------------------------
    def _rng(self, cycle: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, cycle])

    def label(self, cycle: int, strategy: Strategy) -> list:
        """Choose the regions of ``cycle`` with ``strategy``, have them labeled, add them to the pool."""
        selection = strategy.select(self.cohort, self.budget, self._rng(cycle), labeled=self.pool.labeled())
        reports = [self.region_report(self.cohort.slide(pick.slide), pick.box) for pick in selection.regions]
        self.pool.add(selection.regions, cycle, reports)
        log.info("cycle %d: labeled %d regions with %s", cycle, len(selection.regions), strategy.name)
        for cb in self.callbacks:
            cb.on_labeled(self, cycle, selection)
        return selection.regions

    def region_report(self, slide: CohortSlide, box: Box) -> dict:
        """What the annotator reports for a labeled region: its tissue and tumour area (mm²)."""
        return {"tissue_mm2": self._area_mm2(slide, slide.grid.tissue_fraction, box),
                "tumour_mm2": self._area_mm2(slide, self.truth(slide), box)}

    def training_examples(self, max_cycle: int | None = None) -> list:
        """Labeled cells (of regions of cycles ≤ ``max_cycle``, default all) of every slide: tumour when
        the truth covers at least the threshold of the cell."""
        from alkit.tasks import LabeledCells

        examples = []
        for slide in self.cohort:
            region_of = self.pool.cell_region_ids(slide.slide_id, slide.grid, max_cycle)
            if (region_of < 0).all():
                continue
            store = slide.store()
            rid = region_of[store.coords[:, 0], store.coords[:, 1]]
            inside = rid >= 0
            if not inside.any():
                continue
            cells = store.coords[inside]
            labels = (self.truth(slide)[cells[:, 0], cells[:, 1]] >= self.tumour_threshold).astype(np.int64)
            examples.append(LabeledCells(slide.slide_id, slide.store_path, cells, labels, rid[inside]))
        return examples

    def evaluate(self) -> dict:
        """mIoU(tumour) over test slides with tumour (:mod:`alkit.tasks.segmentation.metrics`), false positives on the
        tumour-free ones, and the annotation budget used so far."""
        from alkit.tasks.segmentation.metrics import evaluate_slide, summarise

        results = []
        for slide in self.test_cohort:
            store = slide.store()
            results.append(evaluate_slide(slide.slide_id, self.task.predict_proba(store), self.truth(slide),
                                          store.embedded_mask(),
                                          truth_threshold=self.tumour_threshold))
        summary = summarise(results)
        tissue, tumour = self.totals_mm2()
        used = self.pool.budget_used(tissue, tumour)
        return {"miou_tumour": summary["miou_tumour"], "fp_rate_tumour_free": summary["fp_rate_tumour_free"],
                "annotated_tissue_pct": used.get("tissue_pct", 0.0),
                "annotated_tumour_pct": used.get("tumour_pct", 0.0),
                "regions": used["regions"], "annotated_tissue_mm2": used["tissue_mm2"]}

    def run(self) -> list[CycleResult]:
        """Run (or resume) all cycles; returns every cycle's metrics."""
        if self.pool.last_cycle < 0:
            self.label(0, self.initial_strategy)
        for cycle in range(self.cycles):
            if cycle in self.pool.cycle_metrics:
                continue
            if self.pool.last_cycle < cycle:  # interrupted before this cycle's acquisition finished
                self.task.fit(self.training_examples(max_cycle=cycle - 1))
                self.label(cycle, self.acquisition)
            summary = self.task.fit(self.training_examples())
            metrics = self.evaluate() | {f"train_{k}": v for k, v in (summary or {}).items()
                                         if isinstance(v, (int, float))}
            self.pool.record_metrics(cycle, metrics)
            log.info("cycle %d: %s", cycle, {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
            for cb in self.callbacks:
                cb.on_cycle_end(self, cycle, metrics)
            if cycle + 1 < self.cycles and self.pool.last_cycle < cycle + 1:
                self.label(cycle + 1, self.acquisition)
        return [CycleResult(c, self.pool.cycle_metrics[c]) for c in range(self.cycles)]

