"""The strategies' shared helpers (:mod:`strategies._common`) on small exact inputs, the details the
contract tests leave open (found by mutation testing): the selector check and its messages, labeled
boxes that fall off the grid, pick scores as box means, window tissue on non-square grids and float32
fractions, and the round-robin of several maps (cross-blocking, exhausted maps, adaptive options).
Expected values are written out by hand on a 6 × 10 grid of 100-px cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alkit.embeddings.cohort import CohortSlide
from alkit.selection.adaptive import select_adaptive
from alkit.selection.regions import boxes_overlap
from alkit.selection.strategy import RegionPick, StrategyError
from alkit.wsi.grid import PatchGrid
from strategies._common import check_selector, labeled_cells, select_on_maps, to_picks, window_tissue

SLIDE_ID = "s1"


@pytest.fixture
def slide() -> CohortSlide:
    """A 1000 × 600 px slide at 1 µm/px in 100-px cells: 6 rows × 10 columns, one cell = 100 level-0 px
    (the helpers read only the id and the grid, never the store)."""
    grid = PatchGrid((1000, 600), 1.0, 1.0, 100, 100)
    assert grid.shape == (6, 10) and grid.stride0 == 100
    return CohortSlide(SLIDE_ID, Path("unused.h5"), Path("unused.svs"), grid)


def _picks(picks: list[RegionPick]) -> list[tuple[str | None, tuple[int, int, int, int], float]]:
    assert all(p.slide == SLIDE_ID and p.strategy == "test" for p in picks)
    return [(p.cls, p.box, p.score) for p in picks]


# ------------------------------------------------------------------------------------ check_selector

def test_check_selector_passes_known_selectors_and_their_options():
    assert check_selector("standard") == ("standard", {})
    assert check_selector("standard", None) == ("standard", {})
    assert check_selector("adaptive", {"rule": "area", "fallback": "half"}) == (
        "adaptive", {"rule": "area", "fallback": "half"})


def test_check_selector_names_the_selectors_and_the_bad_option():
    with pytest.raises(StrategyError) as err:
        check_selector("best")
    assert str(err.value) == "selector must be one of ['adaptive', 'standard'], got 'best'"
    with pytest.raises(StrategyError, match=r"^selector_options: .*rule"):
        check_selector("adaptive", {"rule": "volume"})


# ------------------------------------------------------------------------------------ labeled_cells

def test_labeled_cells_keeps_boxes_on_the_grid_and_drops_those_off_it(slide):
    boxes = [(150, 150, 10, 10),    # inside one cell: (1, 1, 1, 1)
             (50, 50, 200, 100),    # touches 3 × 2 cells
             (100, 700, 200, 50),   # below the grid: 2 cells wide, 0 high
             (1100, 100, 50, 200),  # right of the grid: 0 wide, 2 high
             (950, 550, 300, 300)]  # over the corner: clipped to (9, 5, 1, 1)
    assert labeled_cells(slide, {SLIDE_ID: boxes}) == [(1, 1, 1, 1), (0, 0, 3, 2), (9, 5, 1, 1)]


def test_labeled_cells_of_a_slide_without_labels(slide):
    assert labeled_cells(slide, None) == []
    assert labeled_cells(slide, {}) == []
    assert labeled_cells(slide, {"other": [(0, 0, 100, 100)]}) == []


# ------------------------------------------------------------------------------------------ to_picks

def test_to_picks_scores_each_box_by_the_mean_of_the_map_inside(slide):
    score_map = np.arange(60, dtype=np.float64).reshape(6, 10)  # cell (row, col) = 10 row + col
    picks = to_picks(slide, [(1, 2, 3, 2), (0, 0, 1, 2), (9, 5, 1, 1)], score_map, "test", "a")
    assert picks == [RegionPick(SLIDE_ID, (100, 200, 300, 200), "test", "a", 27.0),  # cells 21..23, 31..33
                     RegionPick(SLIDE_ID, (0, 0, 100, 200), "test", "a", 5.0),        # cells 0 and 10
                     RegionPick(SLIDE_ID, (900, 500, 100, 100), "test", "a", 59.0)]
    assert all(type(p.score) is float for p in picks)


def test_to_picks_without_a_map_leaves_the_score_unknown(slide):
    picks = to_picks(slide, [(np.int64(2), np.int64(1), np.int64(4), np.int64(3))], None, "test")
    assert len(picks) == 1
    pick = picks[0]
    assert (pick.slide, pick.box, pick.strategy, pick.cls) == (SLIDE_ID, (200, 100, 400, 300), "test", None)
    assert all(type(v) is int for v in pick.box)
    assert np.isnan(pick.score)
    assert to_picks(slide, [], None, "test") == []
    assert to_picks(slide, [], np.ones((6, 10)), "test") == []


# ------------------------------------------------------------------------------------- window_tissue

def _window_means(tissue: np.ndarray, wh: int, ww: int) -> np.ndarray:
    """Every window summed on its own (float64)."""
    rows, cols = tissue.shape
    out = np.empty((rows - wh + 1, cols - ww + 1))
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            out[y, x] = tissue[y:y + wh, x:x + ww].astype(np.float64).sum() / (wh * ww)
    return out


@pytest.mark.parametrize("rows, cols, wh, ww", [(6, 10, 2, 3), (7, 3, 3, 1), (5, 4, 5, 1), (3, 8, 1, 8),
                                                (4, 4, 2, 2), (9, 7, 4, 2), (1, 1, 1, 1)])
def test_window_tissue_is_the_mean_of_every_window(rows, cols, wh, ww):
    tissue = np.random.default_rng(rows * 100 + cols).random((rows, cols))
    got = window_tissue(tissue, wh, ww)
    assert got.shape == (rows - wh + 1, cols - ww + 1)
    np.testing.assert_allclose(got, _window_means(tissue, wh, ww), rtol=0, atol=1e-12)


def test_window_tissue_of_a_small_grid_by_hand():
    tissue = np.array([[0.0, 1.0, 1.0],
                       [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(window_tissue(tissue, 1, 2), [[0.5, 1.0], [0.5, 0.25]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(window_tissue(tissue, 2, 1), [[0.25, 0.75, 0.5]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(window_tissue(tissue, 2, 3), [[0.5]], rtol=0, atol=1e-15)


def test_window_tissue_sums_float32_fractions_in_float64():
    """Stores hold tissue fractions as float32; summing them in float32 would err by ~1e-5 on 40 × 40."""
    tissue = np.random.default_rng(4).random((40, 40)).astype(np.float32)
    got = window_tissue(tissue, 1, 1)
    np.testing.assert_allclose(got, tissue.astype(np.float64), rtol=0, atol=1e-11)
    np.testing.assert_allclose(window_tissue(tissue, 3, 2), _window_means(tissue, 3, 2), rtol=0, atol=1e-11)


# ------------------------------------------------------------------------------------ select_on_maps

def _two_maps() -> dict[str, np.ndarray]:
    """Map "a": best 2 × 2 window at (0, 0) (9s), then (7, 4) (5s), then (4, 2) (1s); map "b" peaks on
    the same (0, 0) window (8s), then (0, 3) (3s), then (5, 0) (2s)."""
    a, b = np.zeros((6, 10)), np.zeros((6, 10))
    a[0:2, 0:2], a[4:6, 7:9], a[2:4, 4:6] = 9, 5, 1
    b[0:2, 0:2], b[3:5, 0:2], b[0:2, 5:7] = 8, 3, 2
    return {"a": a, "b": b}


def test_standard_maps_take_turns_and_a_pick_blocks_it_on_every_map(slide):
    picks = select_on_maps(slide, _two_maps(), 3, 2, "standard", None, "test")
    assert _picks(picks) == [("a", (0, 0, 200, 200), 9.0),    # "b" may not take this window again
                             ("b", (0, 300, 200, 200), 3.0),
                             ("a", (700, 400, 200, 200), 5.0)]


def test_standard_maps_avoid_labeled_boxes(slide):
    labeled = {SLIDE_ID: [(700, 400, 200, 200)], "other": [(0, 0, 1000, 600)]}
    picks = select_on_maps(slide, _two_maps(), 3, 2, "standard", labeled, "test", {})
    assert _picks(picks) == [("a", (0, 0, 200, 200), 9.0), ("b", (0, 300, 200, 200), 3.0),
                             ("a", (400, 200, 200, 200), 1.0)]


def test_three_maps_take_turns_in_their_order(slide):
    maps = {name: np.zeros((6, 10)) for name in "cab"}
    maps["c"][0, 0], maps["a"][0, 5], maps["b"][4, 0] = 1, 1, 1
    picks = select_on_maps(slide, maps, 3, 1, "standard", None, "test")
    assert _picks(picks) == [("c", (0, 0, 100, 100), 1.0), ("a", (500, 0, 100, 100), 1.0),
                             ("b", (0, 400, 100, 100), 1.0)]


def test_an_exhausted_map_leaves_its_turns_to_the_others(slide):
    one = np.zeros((6, 10))
    one[1, 1] = 2.0  # one positive window on the free map (ties: smallest y, then x)
    many = np.zeros((6, 10))
    many[5, 0], many[5, 3], many[5, 6], many[5, 9] = 4, 3, 2, 1
    picks = select_on_maps(slide, {"one": one, "many": many}, 5, 2, "standard", None, "test")
    assert _picks(picks) == [("one", (0, 0, 200, 200), 0.5), ("many", (0, 400, 200, 200), 1.0),
                             ("many", (200, 400, 200, 200), 0.75), ("many", (500, 400, 200, 200), 0.5),
                             ("many", (800, 400, 200, 200), 0.25)]
    # more asked for than the maps hold: every positive window once, then stop
    assert len(select_on_maps(slide, {"one": one, "many": many}, 9, 2, "standard", None, "test")) == 5
    assert select_on_maps(slide, {"none": np.zeros((6, 10))}, 3, 2, "standard", None, "test") == []


def test_no_maps_or_no_budget_give_no_picks(slide):
    for selector in ("standard", "adaptive"):
        assert select_on_maps(slide, {}, 3, 2, selector, None, "test") == []
        assert select_on_maps(slide, _two_maps(), 0, 2, selector, None, "test") == []


def test_an_unnamed_map_gives_picks_without_a_class(slide):
    picks = select_on_maps(slide, {"": _two_maps()["a"]}, 2, 2, "standard", None, "test")
    assert _picks(picks) == [(None, (0, 0, 200, 200), 9.0), (None, (700, 400, 200, 200), 5.0)]


def _plateau() -> np.ndarray:
    """A flat 2 × 4 block of ones at rows 2-3, columns 2-5."""
    m = np.zeros((6, 10))
    m[2:4, 2:6] = 1.0
    return m


def test_adaptive_uses_the_options_and_shapes_the_box(slide):
    picks = select_on_maps(slide, {"a": _plateau()}, 2, 2, "adaptive", None, "test", {"rule": "area"})
    assert _picks(picks) == [("a", (200, 200, 400, 200), 1.0)]  # the whole 4 × 2 plateau, then nothing
    picks = select_on_maps(slide, {"a": _plateau()}, 2, 2, "adaptive", None, "test", {"fallback": "half"})
    assert _picks(picks) == [("a", (200, 200, 100, 100), 1.0), ("a", (300, 200, 100, 100), 1.0)]


def test_adaptive_picks_avoid_earlier_picks_and_labeled_boxes(slide):
    picks = select_on_maps(slide, {"a": _plateau()}, 3, 2, "adaptive", None, "test")
    assert _picks(picks) == [("a", (100, 100, 200, 200), 0.25), ("a", (300, 100, 200, 200), 0.5),
                             ("a", (500, 100, 200, 200), 0.25)]  # flat: the fallback window, most centred
    labeled = {SLIDE_ID: [(100, 100, 200, 200)]}
    picks = select_on_maps(slide, {"a": _plateau(), "b": _plateau()}, 4, 2, "adaptive", labeled, "test")
    assert _picks(picks) == [("a", (300, 100, 200, 200), 0.5), ("b", (500, 100, 200, 200), 0.25),
                             ("a", (100, 300, 200, 200), 0.25), ("b", (300, 300, 300, 100), 1.0)]
    boxes = [p.box for p in picks]
    for i, box in enumerate(boxes):
        assert not boxes_overlap(box, labeled[SLIDE_ID][0])
        assert not any(boxes_overlap(box, other) for other in boxes[i + 1:])


def test_adaptive_round_robin_matches_one_selector_call_per_pick(slide):
    """The adaptive path against the selector called directly, earlier picks passed as labeled."""
    rng = np.random.default_rng(11)
    maps = {"a": rng.random((6, 10)) - 0.3, "b": rng.random((6, 10)) - 0.3}
    labeled = {SLIDE_ID: [(0, 0, 250, 150)]}
    blocked, want = [(0, 0, 3, 2)], []
    for turn in range(4):
        name = "ab"[turn % 2]
        box = tuple(int(v) for v in select_adaptive(maps[name], 2, 1, labeled=blocked)[0])
        blocked.append(box)
        want.append((name, slide.grid.cells_to_box(box)))
    picks = select_on_maps(slide, maps, 4, 2, "adaptive", labeled, "test")
    assert [(p.cls, p.box) for p in picks] == want
