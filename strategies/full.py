"""Full annotation: every tissue cell of every slide labeled — the reference of a comparison.

Not an initial-set strategy to compare but the ceiling the others are measured against (the paper's
"full annotation"): per slide, one region covering the bounding box of its tissue cells — the cells
that were embedded and every cell with a tissue fraction above zero — so the annotated tissue is
100 % of the cohort's. **The budget is ignored** (``n`` and the region size do not matter; a study
runs this strategy once per seed, see :mod:`alkit.study.run`), and there is never a shortfall.

Labeled regions are respected like in every strategy: where ``labeled`` boxes fall inside a slide's
tissue box, the rest of it is cut into non-overlapping rectangles around them (each cell a labeled
box touches is left out, so a tissue cell that a labeled box only grazes stays unlabeled). A cell
counts as labeled when its centre lies in a region (:meth:`alkit.al.pool.LabeledPool.cell_region_ids`);
with patches larger than the stride the far edges of the tissue box are stretched to hold the last
cells' centres, where no labeled box is in the way.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from alkit.embeddings.cohort import Cohort, CohortSlide
from alkit.embeddings.store import StoreHeader
from alkit.selection.regions import boxes_overlap
from alkit.selection.strategy import Box, Budget, Labeled, RegionPick, Selection
from strategies._common import labeled_cells


class FullStrategy:
    """Every tissue cell labeled: one tissue bounding box per slide (split around labeled regions)."""

    name = "full"
    #: regions are not ``budget.n`` × ``budget.size``: the contract test checks full coverage instead
    budget_sized: ClassVar[bool] = False

    def select(self, cohort: Cohort, budget: Budget, rng: np.random.Generator,
               labeled: Labeled | None = None) -> Selection:
        """The whole tissue of every slide; ``budget`` and ``rng`` are not used (nothing is random)."""
        selection = Selection(self.name)
        for slide in cohort:
            selection.regions += self.slide_regions(slide, labeled)
            selection.shortfall[slide.slide_id] = 0
        return selection

    def slide_regions(self, slide: CohortSlide, labeled: Labeled | None) -> list[RegionPick]:
        """The regions that label every tissue cell of ``slide`` outside the ``labeled`` boxes."""
        tissue = tissue_cells(slide)
        if not tissue.any():
            return []
        rows, cols = np.flatnonzero(tissue.any(axis=1)), np.flatnonzero(tissue.any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        free = np.ones((r1 - r0, c1 - c0), bool)
        for cx, cy, cw, ch in labeled_cells(slide, labeled):
            free[max(cy - r0, 0):max(cy + ch - r0, 0), max(cx - c0, 0):max(cx + cw - c0, 0)] = False
        taken = list((labeled or {}).get(slide.slide_id, ()))
        picks = []
        for x, y, w, h in rectangles(free):
            cells = (x + c0, y + r0, w, h)
            box = slide.grid.cells_to_box(cells)
            stretched = _hold_centres(slide, cells, box, right=x + w == c1 - c0, bottom=y + h == r1 - r0)
            if not any(boxes_overlap(stretched, t) for t in taken):
                box = stretched
            picks.append(RegionPick(slide.slide_id, box, self.name))
        return picks


def tissue_cells(slide: CohortSlide) -> np.ndarray:
    """``(rows, cols)`` bool: the slide's embedded cells and every cell with some tissue."""
    mask = StoreHeader.load(slide.store_path).embedded_mask()
    if slide.grid.tissue_fraction is not None:
        mask |= slide.grid.tissue_fraction > 0
    return mask


def rectangles(free: np.ndarray) -> list[Box]:
    """Non-overlapping map-cell boxes ``(x, y, w, h)`` covering exactly the ``True`` cells of ``free``:
    each row's runs of free cells, a run merged with the one above when they span the same columns."""
    done: list[Box] = []
    open_: dict[tuple[int, int], list[int]] = {}  # (x, w) -> [y, h] of a rectangle still growing
    for y, row in enumerate(free):
        padded = np.concatenate([[False], row, [False]])
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        runs = {(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])}
        for span in [s for s in open_ if s not in runs]:
            top, h = open_.pop(span)
            done.append((span[0], top, span[1], h))
        for span in sorted(runs):
            if span in open_:
                open_[span][1] += 1
            else:
                open_[span] = [y, 1]
    done += [(x, top, w, h) for (x, w), (top, h) in open_.items()]
    return sorted(done, key=lambda b: (b[1], b[0]))


def _hold_centres(slide: CohortSlide, cells: Box, box: Box, right: bool, bottom: bool) -> Box:
    """``box`` with its right / bottom edge moved out to hold the centre of its last cell column / row
    (only needed where cells are larger than their stride)."""
    grid = slide.grid
    cx, cy, cw, ch = cells
    x, y, w, h = box
    if right:
        w = max(w, math.floor((cx + cw - 1) * grid.stride0 + grid.size0 / 2) + 1 - x)
    if bottom:
        h = max(h, math.floor((cy + ch - 1) * grid.stride0 + grid.size0 / 2) + 1 - y)
    return x, y, w, h
