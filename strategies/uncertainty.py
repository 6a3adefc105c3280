"""Uncertainty acquisition: regions where the current model is least sure.

Per slide, the task model's per-patch uncertainty (:func:`alkit.al.uncertainty.acquisition_map`:
entropy, margin, least confidence, or MC-dropout BALD) is a score map like any other and goes
through the same standard or adaptive selector, with labeled regions excluded. The strategy needs
the trained model: pass ``task=`` or let :class:`alkit.al.loop.ActiveLearningLoop` bind its own task.
"""

from __future__ import annotations

import numpy as np

from alkit.embeddings.cohort import Cohort
from alkit.embeddings.store import StoreHeader
from alkit.selection.strategy import Budget, Labeled, Selection, StrategyError
from alkit.al.uncertainty import MEASURES, acquisition_map
from strategies._common import check_selector, select_on_maps


class UncertaintyStrategy:
    """``n`` regions per slide on the model's uncertainty map."""

    name = "uncertainty"

    def __init__(self, task=None, measure: str = "entropy", selector: str = "standard",
                 mc_samples: int | None = None):
        if measure not in MEASURES:
            raise StrategyError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
        if mc_samples is None:
            mc_samples = 10 if measure == "bald" else 0  # BALD is defined over MC-dropout samples
        if measure == "bald" and mc_samples < 2:
            raise StrategyError(f"bald needs at least 2 MC-dropout samples, got mc_samples={mc_samples}")
        self.task, self.measure, self.mc_samples = task, measure, int(mc_samples)
        self.selector = check_selector(selector)

    def select(self, cohort: Cohort, budget: Budget, rng: np.random.Generator,
               labeled: Labeled | None = None) -> Selection:
        if self.task is None:
            raise StrategyError("the uncertainty strategy needs a trained task model (task=...)")
        selection = Selection(self.name)
        from_features = getattr(self.task, "reads_features", True)
        for slide in cohort:  # a task that does not read embeddings (the detector) gets the store's header only
            store = slide.store() if from_features else StoreHeader.load(slide.store_path)
            score = acquisition_map(self.task, store, self.measure, self.mc_samples)
            selection.score_maps[slide.slide_id] = {f"uncertainty:{self.measure}": score}
            picks = select_on_maps(slide, {"": score}, budget.n, slide.grid.region_cells(budget.size),
                                   self.selector, labeled, self.name)
            selection.regions += picks
            selection.shortfall[slide.slide_id] = budget.n - len(picks)
        selection.report_shortfall()
        return selection
