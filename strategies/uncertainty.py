"""Uncertainty acquisition: regions where the current model is least sure.

Per slide, the task's per-cell probabilities (:meth:`alkit.al.task.Task.probabilities`, or its
MC-dropout samples) become an uncertainty map (:func:`alkit.al.uncertainty.acquisition_map`: entropy,
margin, least confidence, or MC-dropout BALD), a score map like any other that goes through the same
standard or adaptive selector (with its ``selector_options``), with labeled regions excluded. The
strategy needs the task being learned: pass ``task=`` or let :class:`alkit.al.loop.ActiveLearningLoop`
bind its own (:meth:`bind`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from alkit.al.task import Task
from alkit.al.uncertainty import acquisition_map, mc_samples_for
from alkit.embeddings.cohort import Cohort
from alkit.embeddings.store import StoreHeader
from alkit.selection.strategy import Budget, Labeled, Selection, StrategyError
from strategies._common import check_selector, select_on_maps


class UncertaintyStrategy:
    """``n`` regions per slide on the model's uncertainty map."""

    name = "uncertainty"

    def __init__(self, task: Task | None = None, measure: str = "entropy", selector: str = "standard",
                 mc_samples: int | None = None, selector_options: Mapping[str, Any] | None = None):
        try:
            self.mc_samples = mc_samples_for(measure, mc_samples)
        except ValueError as exc:
            raise StrategyError(str(exc)) from None
        self.measure = measure
        self.selector, self.selector_options = check_selector(selector, selector_options)
        self.task: Task | None = None
        if task is not None:
            self.bind(task)

    def bind(self, task: Task) -> None:
        """Score with ``task`` (the loop binds the task it trains)."""
        if self.mc_samples > 0 and not getattr(task, "mc_dropout", False):
            raise StrategyError(f"{self.measure} with MC-dropout samples needs a task with dropout; "
                                f"task {getattr(task, 'name', type(task).__name__)!r} has none "
                                "(use entropy, margin or least_confidence without mc_samples)")
        self.task = task

    def select(self, cohort: Cohort, budget: Budget, rng: np.random.Generator,
               labeled: Labeled | None = None) -> Selection:
        if self.task is None:
            raise StrategyError("the uncertainty strategy needs the task being learned (task=...)")
        selection = Selection(self.name)
        for slide in cohort:
            valid = StoreHeader.load(slide.store_path).embedded_mask()
            score = acquisition_map(self.task, slide, valid, self.measure, self.mc_samples)
            selection.score_maps[slide.slide_id] = {f"uncertainty:{self.measure}": score}
            picks = select_on_maps(slide, {"": score}, budget.n, slide.grid.region_cells(budget.size),
                                   self.selector, labeled, self.name, self.selector_options)
            selection.regions += picks
            selection.shortfall[slide.slide_id] = budget.n - len(picks)
        selection.report_shortfall()
        return selection
