"""The labeled pool: saved on every change, reloaded to resume, never overlapping, labels per cell."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alkit.wsi.grid import PatchGrid
from alkit.al.pool import LabeledPool, PoolError
from alkit.selection.strategy import RegionPick


def _pick(slide, box, strategy="random"):
    return RegionPick(slide, box, strategy, None, 0.5)


def test_pool_saves_every_change_and_reloads(tmp_path):
    path = tmp_path / "pool.json"
    pool = LabeledPool.open(path)
    assert pool.last_cycle == -1 and not path.exists()
    pool.add([_pick("a", (0, 0, 100, 100)), _pick("b", (50, 50, 100, 100))], cycle=0,
             reports=[{"tissue_mm2": 0.5, "tumour_mm2": 0.1}, {"tissue_mm2": 0.25, "tumour_mm2": 0.0}])
    assert json.loads(path.read_text())["regions"][1]["box"] == [50, 50, 100, 100]
    pool.record_metrics(0, {"iou_tumour": 0.4})
    again = LabeledPool.open(path)
    assert again.regions == pool.regions and again.cycle_metrics == {0: {"iou_tumour": 0.4}}
    assert again.labeled() == {"a": [(0, 0, 100, 100)], "b": [(50, 50, 100, 100)]}
    used = again.budget_used(total_tissue_mm2=3.0)
    assert used["regions"] == 2 and used["tissue_pct"] == pytest.approx(25.0)
    assert again.total("tumour_mm2") == pytest.approx(0.1) and again.total("mitoses") == 0
    # findings sit beside the box in the region's JSON record, and come back as findings
    assert json.loads(path.read_text())["regions"][0]["tumour_mm2"] == 0.1
    assert again.regions[0].findings == {"tumour_mm2": 0.1}
    assert not list(tmp_path.glob(".*tmp*"))


def test_overlapping_regions_are_refused_and_nothing_is_written(tmp_path):
    pool = LabeledPool.open(tmp_path / "pool.json")
    pool.add([_pick("a", (0, 0, 100, 100))], cycle=0)
    before = (tmp_path / "pool.json").read_text()
    with pytest.raises(PoolError, match="overlaps"):
        pool.add([_pick("a", (100, 0, 50, 50)), _pick("a", (99, 99, 10, 10))], cycle=1)
    assert (tmp_path / "pool.json").read_text() == before and len(pool.regions) == 1
    pool.add([_pick("a", (100, 0, 50, 50)), _pick("b", (0, 0, 100, 100))], cycle=1)  # touching is fine
    assert pool.last_cycle == 1


def test_cells_inside_labeled_regions():
    grid = PatchGrid((1000, 600), 0.25, 0.25, 100, 100)
    pool = LabeledPool()
    pool.add([_pick("a", (0, 0, 300, 200)), _pick("a", (500, 300, 200, 250)), _pick("b", (0, 0, 1000, 600))], 0)
    ids = pool.cell_region_ids("a", grid)
    expected = np.full((6, 10), -1)
    expected[0:2, 0:3] = 0
    expected[3:5, 5:7] = 1  # centres at y=350,450 and x=550,650 fall inside; y=550 does not
    np.testing.assert_array_equal(ids, expected)
    pool.add([_pick("a", (0, 500, 100, 100))], 1)
    assert (pool.cell_region_ids("a", grid, max_cycle=0) == expected).all()
    assert pool.cell_region_ids("a", grid)[5, 0] == 3


def test_foreign_files_are_refused(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(PoolError, match="not an alkit pool"):
        LabeledPool.open(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{broken")
    with pytest.raises(PoolError, match="not valid JSON"):
        LabeledPool.open(tmp_path / "y.json")
