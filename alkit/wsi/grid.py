"""Patch grids: the cells every score map is indexed by, and the only place cell ↔ level-0 happens.

A grid for (slide, target mpp, patch size ``d``, stride ``s``) has cells of ``d × d`` pixels at the
target resolution, placed every ``s`` pixels from the slide's top-left corner. In level-0 pixels a
cell is ``size0 = d · mpp / slide_mpp`` wide and cells start every ``stride0 = s · mpp / slide_mpp``;
both may be fractional (a 0.499 µm/px slide read at 0.25 µm/px). Cell ``(row, col)`` covers the
level-0 box ``(col · stride0, row · stride0, size0, size0)``. The grid covers the whole slide: the
last row and column may reach past its edge (reads there are padded white, and their tissue
fraction counts the padding as background).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from alkit.wsi.slide import Slide
from alkit.wsi.tissue import TissueMask


def _count(extent0: int, size0: float, stride0: float) -> int:
    """Cells along one axis so that the slide is covered (at least one)."""
    if extent0 <= size0:
        return 1
    return math.ceil((extent0 - size0) / stride0 - 1e-9) + 1


@dataclass(frozen=True)
class PatchGrid:
    """Cells of ``patch`` px at ``mpp`` µm/px every ``stride`` px over a slide of ``dimensions``."""

    dimensions: tuple[int, int]  # slide level-0 (width, height)
    slide_mpp: float
    mpp: float
    patch: int
    stride: int
    tissue_fraction: np.ndarray | None = None  # (rows, cols) share of each cell that is tissue

    def __post_init__(self) -> None:
        if self.patch <= 0 or self.stride <= 0:
            raise ValueError(f"patch and stride must be positive, got {self.patch}, {self.stride}")
        if not (self.mpp > 0 and self.slide_mpp > 0):
            raise ValueError(f"mpp values must be positive, got {self.mpp}, {self.slide_mpp}")
        if self.tissue_fraction is not None and self.tissue_fraction.shape != self.shape:
            raise ValueError(f"tissue_fraction has shape {self.tissue_fraction.shape}, grid is {self.shape}")

    @classmethod
    def for_slide(cls, slide: Slide, mpp: float, patch: int, stride: int | None = None,
                  tissue: TissueMask | None = None) -> PatchGrid:
        """The grid of ``slide``; with a tissue mask each cell also gets its tissue fraction."""
        grid = cls(slide.dimensions, slide.mpp, float(mpp), int(patch), int(stride or patch))
        return grid if tissue is None else grid.with_tissue(tissue)

    def with_tissue(self, tissue: TissueMask) -> PatchGrid:
        """This grid with each cell's tissue fraction taken from ``tissue`` (level-0 aligned)."""
        fractions = tissue.box_fractions(self.cell_boxes()).reshape(self.shape)
        return replace(self, tissue_fraction=fractions)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """Level-0 pixels per target pixel."""
        return self.mpp / self.slide_mpp

    @property
    def size0(self) -> float:
        """Cell side in level-0 pixels."""
        return self.patch * self.scale

    @property
    def stride0(self) -> float:
        """Distance between neighbouring cells in level-0 pixels."""
        return self.stride * self.scale

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)``."""
        w, h = self.dimensions
        return _count(h, self.size0, self.stride0), _count(w, self.size0, self.stride0)

    def cell_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Level-0 box ``(x, y, w, h)`` of one cell."""
        rows, cols = self.shape
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"cell ({row}, {col}) outside a {rows}x{cols} grid")
        return (col * self.stride0, row * self.stride0, self.size0, self.size0)

    def cell_boxes(self, cells: np.ndarray | None = None) -> np.ndarray:
        """Level-0 boxes (n, 4) of ``cells`` (n, 2) as ``(row, col)``; all cells in row-major order by default."""
        if cells is None:
            rows, cols = self.shape
            rr, cc = np.divmod(np.arange(rows * cols), cols)
        else:
            cells = np.asarray(cells).reshape(-1, 2)
            rr, cc = cells[:, 0], cells[:, 1]
        boxes = np.empty((len(rr), 4), np.float64)
        boxes[:, 0] = cc * self.stride0
        boxes[:, 1] = rr * self.stride0
        boxes[:, 2:] = self.size0
        return boxes

    def bounding_box(self, cells: np.ndarray) -> tuple[float, float, float, float]:
        """Level-0 box ``(x, y, w, h)`` enclosing the ``(row, col)`` ``cells``, clipped to the slide
        (all zeros for no cells)."""
        cells = np.asarray(cells).reshape(-1, 2)
        if len(cells) == 0:
            return 0.0, 0.0, 0.0, 0.0
        (r0, c0), (r1, c1) = cells.min(axis=0), cells.max(axis=0)
        x0, y0 = float(c0 * self.stride0), float(r0 * self.stride0)
        x1 = min(float(c1 * self.stride0 + self.size0), float(self.dimensions[0]))
        y1 = min(float(r1 * self.stride0 + self.size0), float(self.dimensions[1]))
        return x0, y0, x1 - x0, y1 - y0

    def tissue_cells(self, min_fraction: float = 0.5) -> np.ndarray:
        """``(row, col)`` of the cells whose tissue fraction reaches ``min_fraction`` (row-major)."""
        if self.tissue_fraction is None:
            raise ValueError("this grid has no tissue fractions; build it with PatchGrid.for_slide(..., tissue=)")
        return np.argwhere(self.tissue_fraction >= min_fraction)

    def cells_of_points(self, points: np.ndarray) -> np.ndarray:
        """``(row, col)`` of the cell whose stride step contains each level-0 point ``(x, y)``."""
        points = np.asarray(points, np.float64).reshape(-1, 2)
        return np.floor(points[:, ::-1] / self.stride0).astype(np.int64)

    def points_on(self, mask: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Mask of the level-0 ``points`` whose cell is set in the ``(rows, cols)`` ``mask`` (False off the grid)."""
        cells = self.cells_of_points(points)
        rows, cols = self.shape
        inside = (cells[:, 0] >= 0) & (cells[:, 0] < rows) & (cells[:, 1] >= 0) & (cells[:, 1] < cols)
        found = np.zeros(len(cells), bool)
        found[inside] = mask[cells[inside, 0], cells[inside, 1]]
        return found

    def region_cells(self, size0: float) -> int:
        """A level-0 region side (e.g. 8192 px) in cells (rounded, at least 1)."""
        return max(1, round(size0 / self.stride0))

    def cells_to_box(self, box: Sequence[int]) -> tuple[int, int, int, int]:
        """Map-cell box ``(x=col, y=row, w, h)`` → level-0 box of integers covering those cells' strides.

        A ``w × h`` block of cells starting at ``(col, row)`` spans ``w · stride0`` level-0 pixels,
        so neighbouring blocks map to touching, non-overlapping level-0 boxes.
        """
        cx, cy, cw, ch = box
        x0, y0 = round(cx * self.stride0), round(cy * self.stride0)
        x1, y1 = round((cx + cw) * self.stride0), round((cy + ch) * self.stride0)
        return x0, y0, x1 - x0, y1 - y0

    def box_to_cells(self, box: Sequence[float]) -> tuple[int, int, int, int]:
        """Level-0 box → the map-cell box ``(col, row, w, h)`` of the cell strides it overlaps, clipped."""
        x, y, w, h = box
        rows, cols = self.shape
        c0, r0 = max(0, math.floor(x / self.stride0)), max(0, math.floor(y / self.stride0))
        c1 = min(cols, math.ceil((x + w) / self.stride0 - 1e-9))
        r1 = min(rows, math.ceil((y + h) / self.stride0 - 1e-9))
        return c0, r0, max(0, c1 - c0), max(0, r1 - r0)

    def to_dict(self) -> dict:
        """Geometry as plain values (for stores and logs)."""
        return {"dimensions": list(self.dimensions), "slide_mpp": self.slide_mpp, "mpp": self.mpp,
                "patch": self.patch, "stride": self.stride, "shape": list(self.shape)}
