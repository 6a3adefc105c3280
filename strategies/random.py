"""Random regions: the baseline every initial set is compared with.

Per slide, ``n`` windows of the region size (in grid cells) at uniformly random grid positions
among those with at least ``min_tissue`` (default 10 %) tissue, none overlapping another or a
labeled region. Candidates are drawn without replacement, at most ``max_tries`` per slide; a slide
where fewer than ``n`` fit is reported as a shortfall, never padded or hidden.
"""

from __future__ import annotations

import numpy as np

from alkit.embeddings.cohort import Cohort
from alkit.selection.regions import overlap_mask
from alkit.selection.strategy import Budget, Labeled, Selection
from strategies._common import labeled_cells, to_picks, window_tissue


class RandomStrategy:
    """``n`` random non-overlapping regions per slide with at least ``min_tissue`` tissue."""

    name = "random"

    def __init__(self, min_tissue: float = 0.1, max_tries: int = 10_000):
        self.min_tissue = float(min_tissue)
        self.max_tries = int(max_tries)

    def select(self, cohort: Cohort, budget: Budget, rng: np.random.Generator,
               labeled: Labeled | None = None) -> Selection:
        selection = Selection(self.name)
        for slide in cohort:
            grid = slide.grid
            rows, cols = grid.shape
            size = grid.region_cells(budget.size)
            wh, ww = min(size, rows), min(size, cols)
            ok = window_tissue(grid.tissue_fraction, wh, ww) >= self.min_tissue
            taken = np.array(labeled_cells(slide, labeled), np.int64).reshape(-1, 4)
            candidates = np.argwhere(ok)  # (y, x) origins
            order = rng.permutation(len(candidates))[: self.max_tries]
            chosen: list[tuple[int, int, int, int]] = []
            for y, x in candidates[order]:
                if len(chosen) == budget.n:
                    break
                box = (int(x), int(y), ww, wh)
                if len(taken) and overlap_mask(box, taken).any():
                    continue
                chosen.append(box)
                taken = np.vstack([taken, np.array(box, np.int64)[None]])
            selection.regions += to_picks(slide, chosen, None, self.name)
            selection.shortfall[slide.slide_id] = budget.n - len(chosen)
        selection.report_shortfall()
        return selection
