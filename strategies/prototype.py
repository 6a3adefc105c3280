"""Prototype sampling (Qiu et al., MICCAI 2024): regions most similar to typical images of a class.

Per slide, the similarity map of each class (:func:`alkit.prototypes.maps.similarity_map`: per cell the highest
cosine similarity to the class's prototypes, streamed from the store file in chunks, all classes in
one pass, so dense 64-px grids stay memory-bounded) goes through a region selector — ``standard`` (sliding
window + non-maximum suppression) or ``adaptive`` (threshold-bisection boxes; ``selector_options`` such
as ``{"rule": "area"}`` switch it to the reference's rules, :mod:`alkit.selection.regions`). Several classes share
a slide's budget round-robin, in the order given: pick 1 goes to the first class, pick 2 to the
second, ... (with n = 5 and two classes, 3 + 2), each pick avoiding all earlier picks and labeled
regions. A region's score is the mean similarity inside it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from alkit.embeddings.cohort import Cohort
from alkit.prototypes.maps import similarity_maps
from alkit.prototypes.prototype_set import PrototypeSet
from alkit.selection.strategy import Budget, Labeled, Selection, StrategyError
from strategies._common import check_selector, select_on_maps


class PrototypeStrategy:
    """Regions on the similarity maps to class prototypes; ``prototypes`` is a set or its folder,
    ``selector_options`` the selector's options (none: its defaults)."""

    name = "prototype"

    def __init__(self, prototypes: PrototypeSet | str | os.PathLike, selector: str = "standard",
                 classes: Sequence[str] | None = None, selector_options: Mapping[str, Any] | None = None):
        self.prototypes = prototypes if isinstance(prototypes, PrototypeSet) else PrototypeSet.load(prototypes)
        self.selector, self.selector_options = check_selector(selector, selector_options)
        self.classes = list(classes or self.prototypes.names)
        missing = [c for c in self.classes if c not in self.prototypes.names]
        if missing:
            raise StrategyError(f"no prototypes for {missing}; the set has {self.prototypes.names}")

    def select(self, cohort: Cohort, budget: Budget, rng: np.random.Generator,
               labeled: Labeled | None = None) -> Selection:
        self.prototypes.check_store(cohort.attrs)
        selection = Selection(self.name)
        for slide in cohort:
            maps = similarity_maps(slide.store_path, {c: self.prototypes[c] for c in self.classes})
            selection.score_maps[slide.slide_id] = {f"similarity:{c}": m for c, m in maps.items()}
            picks = select_on_maps(slide, maps, budget.n, slide.grid.region_cells(budget.size), self.selector,
                                   labeled, self.name, self.selector_options)
            selection.regions += picks
            selection.shortfall[slide.slide_id] = budget.n - len(picks)
        selection.report_shortfall()
        return selection

