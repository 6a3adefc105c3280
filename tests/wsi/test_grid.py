"""PatchGrid geometry: coverage, cell boxes, conversions and tissue fractions."""

from __future__ import annotations

import numpy as np
import pytest

from alkit.wsi.grid import PatchGrid
from alkit.wsi.slide import Slide
from alkit.wsi.tissue import TissueMask, detect_tissue


@pytest.mark.parametrize("dims,slide_mpp,mpp,patch,stride", [
    ((2220, 2967), 0.499, 0.25, 256, 256),
    ((2220, 2967), 0.499, 0.5, 224, 112),
    ((4096, 4096), 0.25, 0.25, 256, 256),
    ((100, 50), 0.25, 0.25, 256, 256),
    ((100_000, 80_000), 0.25, 0.25, 64, 64),
])
def test_grid_covers_the_slide_without_a_spare_cell(dims, slide_mpp, mpp, patch, stride):
    grid = PatchGrid(dims, slide_mpp, mpp, patch, stride)
    rows, cols = grid.shape
    boxes = grid.cell_boxes().reshape(rows, cols, 4)
    last = boxes[-1, -1]
    assert last[0] + last[2] >= dims[0] - 1e-6 and last[1] + last[3] >= dims[1] - 1e-6
    if cols > 1:
        assert boxes[0, -2, 0] + boxes[0, -2, 2] < dims[0]  # one cell fewer would leave a gap
    if rows > 1:
        assert boxes[-2, 0, 1] + boxes[-2, 0, 3] < dims[1]
    assert grid.cell_box(rows - 1, cols - 1) == tuple(last)
    if cols > 1:
        assert boxes[0, 1, 0] - boxes[0, 0, 0] == pytest.approx(stride * mpp / slide_mpp)


def test_paper_geometry_region_sizes_in_cells():
    grid = PatchGrid((100_000, 80_000), 0.25, 0.25, 256, 256)
    assert [grid.region_cells(l) for l in (4096, 8192, 12288)] == [16, 32, 48]
    dense = PatchGrid((100_000, 100_000), 0.25, 0.25, 64, 64)
    assert dense.shape == (1563, 1563)


def test_cell_and_level0_conversions_round_trip():
    grid = PatchGrid((10_000, 6_000), 0.25, 0.5, 128, 128)  # stride0 = 256
    assert grid.cells_to_box((3, 2, 4, 5)) == (768, 512, 1024, 1280)
    assert grid.box_to_cells((768, 512, 1024, 1280)) == (3, 2, 4, 5)
    assert grid.box_to_cells((770, 500, 10, 20)) == (3, 1, 1, 2)  # overlapped cells
    assert grid.box_to_cells((-500, -500, 100, 100)) == (0, 0, 0, 0)
    centres = grid.cell_boxes()[:, :2] + grid.size0 / 2
    rows, cols = grid.shape
    expected = np.stack(np.divmod(np.arange(rows * cols), cols), axis=1)
    np.testing.assert_array_equal(grid.cells_of_points(centres), expected)
    with pytest.raises(IndexError):
        grid.cell_box(rows, 0)


def test_tissue_fraction_per_cell_from_mask():
    mask = np.zeros((64, 64), bool)
    mask[16:48, 8:40] = True  # level-0 x in [64, 320), y in [128, 384) at scale 8
    tissue = TissueMask(mask, scale=(8.0, 8.0), threshold=0.1)
    grid = PatchGrid((512, 512), 0.25, 0.25, 64, 64).with_tissue(tissue)
    expected = np.zeros((8, 8))
    expected[2:6, 1:5] = 1.0
    np.testing.assert_array_equal(grid.tissue_fraction, expected)
    assert set(map(tuple, grid.tissue_cells(0.5))) == {(r, c) for r in range(2, 6) for c in range(1, 5)}


def test_grid_for_real_slide_reads_patches_of_patch_size(wsi):
    with Slide(wsi("CMU-1-Small-Region.svs")) as slide:
        grid = PatchGrid.for_slide(slide, mpp=0.25, patch=256, tissue=detect_tissue(slide))
        assert grid.shape == (24, 18)
        cells = grid.tissue_cells(0.5)
        assert 0.2 < len(cells) / (24 * 18) < 0.6
        boxes = grid.cell_boxes(cells[:3])
        patches = [slide.read(tuple(b), mpp=0.25, size=(256, 256)) for b in boxes]
        assert all(p.shape == (256, 256, 3) for p in patches)
        assert np.mean([p.mean() for p in patches]) < 225  # tissue, not glass
        with pytest.raises(ValueError, match="no tissue fractions"):
            PatchGrid.for_slide(slide, mpp=0.25, patch=256).tissue_cells()
