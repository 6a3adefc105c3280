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


# -- the pool file: every field written by this version comes back; every refusal names file and problem --

def test_pool_file_written_and_read_back_with_every_field(tmp_path):
    from alkit.al.oracle import RegionReport

    path = tmp_path / "pool.json"
    pool = LabeledPool.open(path)
    assert pool.path == path and pool.regions == [] and pool.cycle_metrics == {}
    report = RegionReport("s1", (10.0, 20.0, 30.0, 40.0), 0.25, 1.2, 0.75, {"tumour_mm2": 0.3, "mitoses": 2})
    pool.add([RegionPick("s1", (10.4, 20.0, 30.0, 40.0), "prototypes", "tumour", 0.875),
              RegionPick("s1", (100, 100, 10, 10), "random")],  # no class, NaN score
             cycle=2, reports=[report, {"tissue_mm2": 0.5, "hard_negatives": None}])
    pool.record_metrics(10, {"iou_tumour": 0.5})
    pool.record_metrics(2, {"iou_tumour": 0.25})
    doc = json.loads(path.read_text())
    assert path.read_text().endswith("}\n") and len(path.read_text().splitlines()) > 20  # indented for people
    assert doc["format"] == "alkit-pool" and doc["format_version"] == 1
    assert list(doc["cycle_metrics"]) == ["2", "10"]  # sorted by cycle number, keys are strings in JSON
    first, second = doc["regions"]
    assert first == {"slide": "s1", "box": [10, 20, 30, 40], "cycle": 2, "strategy": "prototypes",
                     "cls": "tumour", "score": 0.875, "tissue_mm2": 0.75, "tumour_mm2": 0.3, "mitoses": 2}
    assert second["cls"] is None and second["score"] is None and second["tissue_mm2"] == 0.5
    assert "hard_negatives" not in second  # a finding reported as None is not recorded
    again = LabeledPool.open(path)
    assert again.regions == pool.regions and again.cycle_metrics == {2: {"iou_tumour": 0.25},
                                                                      10: {"iou_tumour": 0.5}}
    region = again.regions[0]
    assert (region.slide, region.box, region.cycle, region.strategy, region.cls, region.score) == (
        "s1", (10, 20, 30, 40), 2, "prototypes", "tumour", 0.875)
    assert region.tissue_mm2 == 0.75 and region.findings == {"tumour_mm2": 0.3, "mitoses": 2}
    assert type(region.box) is tuple and again.regions[1].findings == {}
    assert again.for_slide("s1") == again.regions and again.for_slide("s2") == []
    assert again.total("mitoses") == 2.0 and again.last_cycle == 2


def test_a_missing_tissue_area_counts_as_none_annotated(tmp_path):
    from alkit.al.oracle import RegionReport

    pool = LabeledPool.open(tmp_path / "pool.json")
    unmeasured = RegionReport("a", (0, 0, 10, 10), 0.25, 1.0, None, {"tumour_mm2": 0.0})
    pool.add([_pick("a", (0, 0, 10, 10)), _pick("a", (20, 0, 10, 10)), _pick("a", (40, 0, 10, 10))], cycle=0,
             reports=[unmeasured, {"tumour_mm2": 0.5}, {"tissue_mm2": 2}])
    assert [r.tissue_mm2 for r in pool.regions] == [0.0, 0.0, 2.0]
    assert type(pool.regions[2].tissue_mm2) is float
    assert pool.budget_used() == {"regions": 3, "tissue_mm2": 2.0}  # no cohort area: no percentage
    assert "tissue_pct" not in pool.budget_used(total_tissue_mm2=0.0)
    unreported = LabeledPool()
    unreported.add([_pick("a", (0, 0, 10, 10))], cycle=0)  # no reports at all
    assert unreported.regions[0].tissue_mm2 == 0.0 and unreported.regions[0].findings == {}


def test_a_pool_without_a_path_is_never_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pool = LabeledPool()
    pool.add([_pick("a", (0, 0, 10, 10))], cycle=0)
    pool.record_metrics(0, {"iou_tumour": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_reports_must_match_the_regions_and_overlaps_name_both_boxes(tmp_path):
    pool = LabeledPool.open(tmp_path / "pool.json")
    with pytest.raises(PoolError, match=r"2 regions but 1 reports"):
        pool.add([_pick("a", (0, 0, 10, 10)), _pick("a", (20, 0, 10, 10))], cycle=0, reports=[{}])
    assert not (tmp_path / "pool.json").exists()
    pool.add([_pick("a", (0, 0, 10, 10))], cycle=3)
    with pytest.raises(PoolError) as err:
        pool.add([_pick("a", (5, 5, 10, 10))], cycle=4)
    message = str(err.value)
    assert message.startswith("a: ") and "(5, 5, 10, 10)" in message and "(0, 0, 10, 10)" in message
    assert "cycle 3" in message


def _write_pool(path, regions=None, **doc):
    body = {"format": "alkit-pool", "format_version": 1, "regions": regions or [], "cycle_metrics": {}} | doc
    path.write_text(json.dumps(body))
    return path


_GOOD = {"slide": "a", "box": [0, 0, 10, 10], "cycle": 0, "strategy": "random"}


@pytest.mark.parametrize("record, facts", [
    ([1, 2], ["region #0 is a JSON list, expected an object"]),
    (_GOOD | {"slide": "../x"}, ["region #0's slide id", "'../x'"]),
    (_GOOD | {"slide": 7}, ["region #0's slide id must be a string"]),
    (_GOOD | {"box": [0, 0, 10]}, ["region #0: 'box' must be four numbers [x, y, w, h]", "[0, 0, 10]"]),
    (_GOOD | {"box": "0 0 10 10"}, ["'box' must be four numbers", "'0 0 10 10'"]),
    (_GOOD | {"box": [0, 0, 10, True]}, ["'box' must be four numbers", "True"]),
    (_GOOD | {"box": [0, 0, 10, "10"]}, ["'box' must be four numbers"]),
    (_GOOD | {"box": [0, 0, 10, 1e999]}, ["'box' must be four numbers", "inf"]),
    (_GOOD | {"box": [0, 0, 10, 1e999 - 1e999]}, ["'box' must be four numbers", "nan"]),
    (_GOOD | {"box": [0, 0, 10, 10, 10]}, ["'box' must be four numbers"]),
    (_GOOD | {"cycle": "1"}, ["region #0: 'cycle' must be a whole number, got '1'"]),
    (_GOOD | {"cycle": True}, ["'cycle' must be a whole number, got True"]),
    (_GOOD | {"cycle": 1.0}, ["'cycle' must be a whole number, got 1.0"]),
    ({k: v for k, v in _GOOD.items() if k != "cycle"}, ["'cycle' must be a whole number, got None"]),
    (_GOOD | {"strategy": 3}, ["region #0: 'strategy' must be a string, got 3"]),
    (_GOOD | {"cls": 3}, ["region #0: 'cls' must be a string or null, got 3"]),
    (_GOOD | {"score": "high"}, ["region #0: 'score' must be a number, got 'high'"]),
    (_GOOD | {"tissue_mm2": "x"}, ["region #0: 'tissue_mm2' must be a number, got 'x'"]),
    (_GOOD | {"tissue_mm2": -1.0}, ["region #0: 'tissue_mm2' must be a finite area >= 0, got -1.0"]),
    (_GOOD | {"tumour_mm2": [1]}, ["region #0: 'tumour_mm2' must be a number, got [1]"]),
    (_GOOD | {"mitoses": True}, ["region #0: 'mitoses' must be a number, got True"]),
])
def test_a_bad_region_record_is_refused_naming_file_region_and_field(tmp_path, record, facts):
    path = _write_pool(tmp_path / "pool.json", [_GOOD | {"box": [100, 0, 10, 10]}, record])
    with pytest.raises(PoolError) as err:
        LabeledPool.open(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for fact in facts:
        assert fact.replace("#0", "#1") in message


def test_a_bad_pool_document_is_refused_naming_the_file(tmp_path):
    cases = [
        ({"format": "something-else", "regions": []}, "not an alkit pool file"),
        ({"regions": []}, "not an alkit pool file"),
        ({"format": "alkit-pool", "regions": {}}, "'regions' must be a list and 'cycle_metrics' an object"),
        ({"format": "alkit-pool", "cycle_metrics": []}, "'regions' must be a list and 'cycle_metrics' an object"),
        ({"format": "alkit-pool", "cycle_metrics": {"first": {}, "0": {}}},
         "'cycle_metrics' keys must be cycle numbers, got ['0', 'first']"),
        ({"format": "alkit-pool", "cycle_metrics": {"d": {}, "c": {}, "b": {}, "a": {}}},
         "got ['a', 'b', 'c']"),  # at most three keys shown: the message stays one short line
    ]
    for i, (doc, fact) in enumerate(cases):
        path = tmp_path / f"pool{i}.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(PoolError) as err:
            LabeledPool.open(path)
        assert str(err.value).startswith(f"{path}: ") and fact in str(err.value)
    minimal = tmp_path / "minimal.json"
    minimal.write_text(json.dumps({"format": "alkit-pool"}))  # no regions, no metrics: an empty pool
    pool = LabeledPool.open(minimal)
    assert pool.regions == [] and pool.cycle_metrics == {} and pool.path == minimal
