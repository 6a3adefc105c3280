"""Labeled cells of the pool on overlapping grids (stride < patch), against plain geometry.

The rule (:meth:`LabeledPool.cell_region_ids`): a grid cell is labeled by the region of its slide whose
half-open level-0 box holds the cell's centre. The oracle places each cell from first principles, at
``(col · stride, row · stride)`` target pixels, ``patch`` wide, scaled to level 0 by ``mpp / slide_mpp``,
and tests its centre against each box with shapely (inside, or on the box's left/top edge: half-open).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, box as shapely_box

from alkit.al.pool import LabeledPool
from alkit.selection.strategy import RegionPick
from alkit.wsi.grid import PatchGrid


def _centre(grid: PatchGrid, row: int, col: int, patch: int, stride: int, scale: float) -> tuple[float, float]:
    """Cell centre in level-0 pixels, from the grid's parameters (checked against the grid's own box)."""
    x0, y0, side = col * stride * scale, row * stride * scale, patch * scale
    bx, by, bw, bh = grid.cell_box(row, col)
    assert (bx, by, bw, bh) == pytest.approx((x0, y0, side, side))
    return x0 + side / 2, y0 + side / 2


def _holds(region: tuple[int, int, int, int], x: float, y: float) -> bool:
    """Whether the half-open box holds the point: inside, or on its left or top edge but not its right or
    bottom one."""
    rx, ry, rw, rh = region
    poly = shapely_box(rx, ry, rx + rw, ry + rh)
    p = Point(x, y)
    if not poly.covers(p):
        return False
    return x != rx + rw and y != ry + rh


def expected_ids(grid: PatchGrid, patch: int, stride: int, scale: float,
                 regions: list[tuple[str, tuple[int, int, int, int], int]], slide: str,
                 max_cycle: int | None = None) -> np.ndarray:
    rows, cols = grid.shape
    out = np.full((rows, cols), -1, np.int32)
    for r in range(rows):
        for c in range(cols):
            x, y = _centre(grid, r, c, patch, stride, scale)
            for i, (s, reg, cycle) in enumerate(regions):
                if s == slide and (max_cycle is None or cycle <= max_cycle) and _holds(reg, x, y):
                    assert out[r, c] == -1, "regions overlap: the test set-up is wrong"
                    out[r, c] = i
    return out


def _pool(regions: list[tuple[str, tuple[int, int, int, int], int]]) -> LabeledPool:
    pool = LabeledPool()  # no path: nothing written
    for slide, b, cycle in regions:
        pool.add([RegionPick(slide, b, "random", None, 0.5)], cycle)
    return pool


def test_the_issue_example_labels_fifteen_cells_on_a_half_stride_grid():
    """64-px patches every 32 px: a 176 × 112 box at the origin holds 5 × 3 cell centres (stride-spaced),
    not the 3 × 2 that patch-spaced centres would give."""
    grid = PatchGrid((640, 480), 0.25, 0.25, 64, 32)
    regions = [("a", (0, 0, 176, 112), 0)]
    ids = _pool(regions).cell_region_ids("a", grid)
    assert int((ids == 0).sum()) == 15
    assert sorted(zip(*np.nonzero(ids == 0))) == [(r, c) for r in range(3) for c in range(5)]
    assert (ids == expected_ids(grid, 64, 32, 1.0, regions, "a")).all()


def test_centres_on_a_box_edge_follow_the_half_open_rule():
    """Centres at 32 + 32k: a box from x = 64 to 128 holds the centres 64 and 96, not 128."""
    grid = PatchGrid((320, 320), 0.25, 0.25, 64, 32)
    regions = [("a", (64, 64, 64, 64), 0), ("a", (192, 0, 32, 320), 1), ("b", (0, 0, 320, 320), 0)]
    ids = _pool(regions).cell_region_ids("a", grid)
    assert sorted(zip(*np.nonzero(ids == 0))) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert sorted(zip(*np.nonzero(ids == 1))) == [(r, 5) for r in range(grid.shape[0])]
    assert (ids == expected_ids(grid, 64, 32, 1.0, regions, "a")).all()
    assert (_pool(regions).cell_region_ids("a", grid, max_cycle=0) == (np.where(ids == 0, 0, -1))).all()


@st.composite
def set_ups(draw):
    patch = draw(st.integers(4, 40))
    stride = draw(st.integers(1, patch))  # stride <= patch: overlapping (or touching) cells
    scale = draw(st.sampled_from([1.0, 2.0, 0.5, 4.0]))
    # at most 12 × 12 cells (the slide may end inside the last one)
    width, height = (int(draw(st.integers(1, 12)) * stride * scale + patch * scale) - draw(st.integers(0, 3))
                     for _ in range(2))
    width, height = max(width, 1), max(height, 1)
    regions: list[tuple[str, tuple[int, int, int, int], int]] = []
    for _ in range(draw(st.integers(0, 5))):
        w, h = draw(st.integers(1, width)), draw(st.integers(1, height))
        b = (draw(st.integers(-20, width)), draw(st.integers(-20, height)), w, h)
        slide = draw(st.sampled_from(["a", "b"]))
        clash = any(s == slide and b[0] < o[0] + o[2] and o[0] < b[0] + b[2] and b[1] < o[1] + o[3]
                    and o[1] < b[1] + b[3] for s, o, _ in regions)
        if not clash:
            regions.append((slide, b, draw(st.integers(0, 2))))
    return patch, stride, scale, (width, height), regions


@settings(max_examples=100, deadline=None, derandomize=True, database=None)  # seeded: the same examples every run
@given(set_ups(), st.sampled_from([None, 0, 1]))
def test_labeled_cells_match_plain_geometry_on_overlapping_grids(set_up, max_cycle):
    patch, stride, scale, dims, regions = set_up
    grid = PatchGrid(dims, 0.25, 0.25 * scale, patch, stride)
    assert grid.scale == scale
    pool = _pool(regions)
    for slide in ("a", "b"):
        got = pool.cell_region_ids(slide, grid, max_cycle)
        assert got.shape == grid.shape and got.dtype == np.int32
        assert (got == expected_ids(grid, patch, stride, scale, regions, slide, max_cycle)).all()
