"""Areas on a slide's patch grid in mm²: what a region or a cohort holds of a per-cell quantity.

Annotation budgets are reported in mm² of tissue (and, per task, of tumour): per-cell shares (tissue
fraction, tumour fraction) summed over the cells a level-0 box covers, times the area of one cell
step. Measuring regions and cohort totals on the same cells keeps their ratio (the annotated share)
consistent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from alkit.embeddings.cohort import CohortSlide
from alkit.selection.regions import box_sums
from alkit.wsi.grid import PatchGrid


def cell_mm2(grid: PatchGrid) -> float:
    """Area (mm²) of one grid step (stride × stride at the slide's resolution)."""
    return (grid.stride0 * grid.slide_mpp / 1000.0) ** 2


def box_mm2(slide: CohortSlide, values: np.ndarray, box: Sequence[int]) -> float:
    """The sum of per-cell ``values`` over the cells of the level-0 ``box``, in mm²."""
    cells = slide.grid.box_to_cells(tuple(box))
    if cells[2] == 0 or cells[3] == 0:
        return 0.0
    return float(box_sums(values, [cells])[0]) * cell_mm2(slide.grid)


def total_mm2(slides: Iterable[CohortSlide], values: Callable[[CohortSlide], np.ndarray]) -> float:
    """The sum of per-cell ``values(slide)`` over every cell of ``slides``, in mm²."""
    return sum(float(values(s).sum()) * cell_mm2(s.grid) for s in slides)


def tissue_mm2(slides: Iterable[CohortSlide]) -> float:
    """Tissue area (mm²) of ``slides``, from their grids' tissue fractions."""
    return total_mm2(slides, lambda s: s.grid.tissue_fraction)
