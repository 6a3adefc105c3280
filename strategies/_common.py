"""Small pieces the built-in strategies share: labeled boxes in map cells, picks back to level 0."""

from __future__ import annotations

import numpy as np

from alkit.cohort import CohortSlide
from alkit.regions import box_sums
from alkit.strategy import Box, Labeled, RegionPick


def labeled_cells(slide: CohortSlide, labeled: Labeled | None) -> list[tuple[int, int, int, int]]:
    """The slide's labeled level-0 boxes as map-cell boxes (every cell they touch)."""
    boxes = (labeled or {}).get(slide.slide_id, ())
    cells = [slide.grid.box_to_cells(b) for b in boxes]
    return [c for c in cells if c[2] > 0 and c[3] > 0]


def to_picks(slide: CohortSlide, cell_boxes: list[Box], score_map: np.ndarray | None, strategy: str,
             cls: str | None = None) -> list[RegionPick]:
    """Map-cell boxes → level-0 picks scored by the mean of ``score_map`` inside (when there is one)."""
    if not cell_boxes:
        return []
    if score_map is None:
        scores = np.full(len(cell_boxes), np.nan)
    else:
        areas = np.array([w * h for _, _, w, h in cell_boxes], np.float64)
        scores = box_sums(score_map, cell_boxes) / areas
    return [RegionPick(slide.slide_id, slide.grid.cells_to_box(tuple(map(int, b))), strategy, cls, float(s))
            for b, s in zip(cell_boxes, scores)]


def window_tissue(tissue: np.ndarray, wh: int, ww: int) -> np.ndarray:
    """Mean tissue fraction of every ``wh × ww`` window origin, ``(rows - wh + 1, cols - ww + 1)``."""
    integral = np.zeros((tissue.shape[0] + 1, tissue.shape[1] + 1), np.float64)
    np.cumsum(np.cumsum(tissue, axis=0, dtype=np.float64), axis=1, out=integral[1:, 1:])
    sums = integral[wh:, ww:] - integral[:-wh, ww:] - integral[wh:, :-ww] + integral[:-wh, :-ww]
    return sums / (wh * ww)
