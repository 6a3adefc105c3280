"""Region helpers and the standard search, the gaps the mutation benchmark found: overlap of boxes one cell
wide or empty on any side, box sums' direct path up to exactly the map's size and its float64 accumulation,
:meth:`StandardSearch.block`, and the selection's debug line. Expected values by enumeration."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from alkit.selection.regions import (Region, StandardSearch, box_sums, boxes_overlap, check_selector_options,
                                    overlap_mask, select_standard, verify_picks)

#: every box with x, y in -1..2 and w, h in 0..2 (empty ones included)
SMALL_BOXES = list(itertools.product(range(-1, 3), range(-1, 3), range(3), range(3)))


def _cells(box) -> set[tuple[int, int]]:
    x, y, w, h = box
    return {(xx, yy) for xx in range(x, x + w) for yy in range(y, y + h)}


def _brute_pick(m: np.ndarray, size: int, blocked: list) -> tuple | None:
    """The first (row-major) window with the highest positive sum sharing no cell with ``blocked``."""
    height, width = m.shape
    wh, ww = min(size, height), min(size, width)
    taken = set().union(*map(_cells, blocked)) if blocked else set()
    best, best_sum = None, 0.0
    for y in range(height - wh + 1):
        for x in range(width - ww + 1):
            box = (x, y, ww, wh)
            total = float(m[y:y + wh, x:x + ww].sum())
            if total > best_sum and not (_cells(box) & taken):
                best, best_sum = box, total
    return best


def test_boxes_overlap_is_cell_set_intersection_for_every_small_pair():
    """Exhaustive: one-cell-wide boxes, empty boxes on either side, touching from all four sides."""
    for a in SMALL_BOXES:
        ca = _cells(a)
        expected = [bool(ca & _cells(b)) for b in SMALL_BOXES]
        assert [boxes_overlap(a, b) for b in SMALL_BOXES] == expected, a
        mask = overlap_mask(a, SMALL_BOXES)
        assert mask.dtype == bool and mask.tolist() == expected, a


def test_box_sums_direct_path_up_to_the_map_size_is_exact():
    """Boxes covering exactly as many cells as the map are still summed directly: small values next to a
    huge one survive (the integral image would round them away), and so does a zero box."""
    m = np.array([[1e17, 3.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 7.0]])
    cells = [(x, y, 1, 1) for y in range(3) for x in range(3)]  # 9 cells, the map's size
    np.testing.assert_array_equal(box_sums(m, cells), m.ravel())
    shifted = [(1, 0, 2, 1), (2, 1, 1, 2), (1, 2, 2, 1), (0, 1, 1, 1), (1, 1, 1, 1), (2, 0, 1, 1)]  # 9 cells
    np.testing.assert_array_equal(box_sums(m, shifted), [3.0, 7.0, 7.0, 5.0, 0.0, 0.0])


def test_box_sums_accumulate_float32_maps_in_float64():
    m = np.array([[1e8, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], np.float32)  # float32 sums drop the ones
    sums = box_sums(m, [(0, 0, 4, 1), (1, 0, 3, 1)])  # 7 cells of 8: summed box by box
    assert sums.dtype == np.float64
    np.testing.assert_array_equal(sums, [1e8 + 3, 3.0])


def _map() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.integers(0, 9, size=(7, 8)).astype(np.float64)


@pytest.mark.parametrize("box", [(0, 0, 3, 3), (2.5, 1.5, 1, 2), (5, 0, 1, 7), (-2, 3, 20, 1), (3, 3, 0, 4)])
def test_standard_search_block_keeps_later_picks_off_the_box(box):
    """Blocked boxes (fractional: every cell touched; empty: nothing) steer every later pick like labels."""
    m, size = _map(), 2
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    covered = (x0, y0, int(np.ceil(box[0] + box[2])) - x0, int(np.ceil(box[1] + box[3])) - y0)
    blocked = [covered] if box[2] > 0 and box[3] > 0 else []
    search = StandardSearch(m, size, expected=4)
    search.block(box)
    picks = []
    for _ in range(4):
        pick = search.take()
        assert pick == _brute_pick(m, size, blocked + picks)
        picks.append(pick)
    search.verify()
    assert len(search.blocked) == len(blocked)


def test_standard_search_block_is_recorded_for_verify():
    """A box blocked over a pick already taken makes :meth:`verify` fail: the block is kept, not just applied."""
    search = StandardSearch(_map(), 2)
    pick = search.take()
    search.verify()
    search.block((pick.x + 1, pick.y, 1, 1))
    with pytest.raises(AssertionError, match="overlaps another"):
        search.verify()


def test_standard_search_block_on_an_empty_map():
    search = StandardSearch(np.zeros((0, 5)), 3)
    search.block((1, 1, 2, 2))
    assert search.take() is None and search.blocked.tolist() == [[1, 1, 2, 2]]
    search.verify()


def test_select_standard_logs_what_it_picked(caplog):
    m = np.zeros((4, 6))
    m[0, 0] = m[3, 5] = 1.0
    with caplog.at_level(logging.DEBUG, logger="alkit.selection.regions"):
        picks = select_standard(m, 3, 5)
    assert picks == [(0, 0, 3, 3), (3, 1, 3, 3)]
    assert [r.getMessage() for r in caplog.records] == ["standard selection: 2 of 5 boxes of 3x3 on a 6x4 map"]


@pytest.mark.parametrize("selector, options, message", [
    ("standard", {"rule": "area"}, "the standard selector has no option 'rule' (it has none)"),
    ("adaptive", {"size": 3}, "the adaptive selector has no option 'size' "
                              "(it has 'rule', 'median_filter', 'connectivity', 'fallback')"),
])
def test_unknown_selector_option_names_the_options_there_are(selector, options, message):
    with pytest.raises(ValueError) as err:
        check_selector_options(selector, options)
    assert str(err.value) == message


@pytest.mark.parametrize("size, n, message", [
    (0, 1, "size must be a positive integer (cells), got 0"),
    (2.5, 1, "size must be a positive integer (cells), got 2.5"),
    (2, 2.5, "n must be a non-negative integer, got 2.5"),
    (2, True, "n must be a non-negative integer, got True"),
    (2, -1, "n must be a non-negative integer, got -1"),
])
def test_select_standard_refuses_bad_size_and_n(size, n, message):
    with pytest.raises(ValueError) as err:
        select_standard(np.ones((4, 4)), size, n)
    assert str(err.value) == message


def test_box_sums_refuse_infinite_values():
    for bad in (np.inf, -np.inf):
        m = np.zeros((3, 3))
        m[1, 1] = bad
        with pytest.raises(ValueError, match="^a score map must not hold infinite values$"):
            box_sums(m, [(0, 0, 1, 1)])


@pytest.mark.parametrize("pick", [Region(-1, 0, 2, 2), Region(0, -1, 2, 2), Region(4, 0, 2, 2), Region(0, 4, 2, 2),
                                  Region(1, 1, 0, 2), Region(1, 1, 2, 0)])
def test_verify_picks_refuses_a_pick_outside_the_map_or_empty(pick):
    verify_picks([Region(0, 0, 5, 5)], np.zeros((0, 4)), (5, 5))  # the whole map is fine
    with pytest.raises(AssertionError, match="outside the map or overlaps another"):
        verify_picks([pick], np.zeros((0, 4)), (5, 5))


def test_verify_picks_refuses_overlaps_with_blocked_and_earlier_picks():
    verify_picks([Region(0, 0, 2, 2), Region(2, 0, 2, 2)], np.array([[0, 2, 5, 3]]), (5, 5))
    with pytest.raises(AssertionError):
        verify_picks([Region(0, 0, 2, 2), Region(1, 1, 2, 2)], np.zeros((0, 4)), (5, 5))
    with pytest.raises(AssertionError):
        verify_picks([Region(0, 1, 2, 2)], np.array([[0, 2, 5, 3]]), (5, 5))


def test_standard_sums_stay_exact_with_large_negative_cells():
    """Cells of -1e6 among small positive integers: the fixed-point step must fit the most negative value
    too, or window sums overflow and the picks drift from the brute-force ones."""
    rng = np.random.default_rng(0)
    m = rng.integers(1, 5, size=(12, 12)).astype(np.float64)
    m[rng.random((12, 12)) < 0.2] = -1e6
    picks: list = []
    while (pick := _brute_pick(m, 3, picks)) is not None and len(picks) < 6:
        picks.append(pick)
    assert len(picks) == 6
    assert select_standard(m, 3, 6) == picks


@pytest.mark.parametrize("bad, message", [
    (np.zeros(4), "a score map must be 2-D, got shape (4,)"),
    (np.zeros((2, 2), complex), "a score map must be real-valued, got dtype complex128"),
    (np.array([["a", "b"]]), "a score map must be real-valued, got dtype <U1"),
])
def test_maps_that_are_not_2d_real_arrays_are_refused(bad, message):
    for call in (lambda: box_sums(bad, [(0, 0, 1, 1)]), lambda: select_standard(bad, 2, 1)):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message


def test_integer_and_half_precision_maps_select_like_float64():
    m = np.array([[0, 3, 1, 0], [2, 5, 0, 0], [0, 0, 0, 4]])
    expected = select_standard(m.astype(np.float64), 2, 3)
    assert expected == [(0, 0, 2, 2), (2, 1, 2, 2)]
    for dtype in (np.int8, np.uint16, np.int64, bool, np.float16, np.float32, np.longdouble):
        assert select_standard(m.astype(dtype), 2, 3) == (expected if dtype is not bool else
                                                           select_standard((m > 0).astype(float), 2, 3))
    for dtype in (np.uint8, np.float16, np.longdouble):
        np.testing.assert_array_equal(box_sums(m.astype(dtype), [(0, 0, 4, 3), (1, 0, 1, 2)]), [15.0, 8.0])


def test_box_sums_take_one_box_an_array_or_a_generator():
    m = np.arange(12, dtype=np.float64).reshape(3, 4)
    assert box_sums(m, np.array([1, 0, 2, 2])).tolist() == [1 + 2 + 5 + 6]  # one box as a 1-D array
    assert box_sums(m, (b for b in [(0, 0, 1, 3), (3, 2, 5, 5)])).tolist() == [0 + 4 + 8, 11]
    assert overlap_mask((0, 0, 2, 2), np.array([1, 1, 1, 1])).tolist() == [True]


@pytest.mark.parametrize("boxes, message", [
    ([(0, 0, 1)], "boxes must be (x, y, w, h) quadruples, got an array of shape (1, 3)"),
    (np.zeros((2, 2, 4)), "boxes must be (x, y, w, h) quadruples, got an array of shape (2, 2, 4)"),
    ([(0, 0, -1, 2)], "boxes must be finite with w, h >= 0"),
    ([(0, np.nan, 1, 2)], "boxes must be finite with w, h >= 0"),
])
def test_malformed_boxes_are_refused(boxes, message):
    with pytest.raises(ValueError) as err:
        box_sums(np.ones((3, 3)), boxes)
    assert str(err.value) == message
