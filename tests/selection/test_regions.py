"""Region selectors: properties (hypothesis), brute-force agreement, borders, flat maps, edge cases, and the
adaptive selector's reference options (area rule, median filter, 8-connectivity, half-size fallback)."""

from __future__ import annotations

import math
from collections import deque
from functools import partial

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.ndimage import gaussian_filter

from alkit.selection.adaptive import select_adaptive
from alkit.selection.regions import (SELECTOR_OPTIONS, Region, box_sums, boxes_overlap, check_selector_options,
                                    overlap_mask, select_standard)

SELECTORS = [select_standard, select_adaptive]
#: the adaptive selector with the reference's area rule, and with every reference option
AREA = partial(select_adaptive, rule="area")
REFERENCE = partial(select_adaptive, rule="area", median_filter=True, connectivity=8, fallback="half")
ALL_SELECTORS = [*SELECTORS, AREA, REFERENCE]
ALL_IDS = ["standard", "adaptive", "adaptive-area", "adaptive-reference"]
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ test-only references (loops)

def _overlap(a, b) -> bool:
    """Cell-set intersection of two integer boxes, by explicit enumeration of a's cells."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return any(bx <= x < bx + bw and by <= y < by + bh
               for y in range(ay, ay + ah) for x in range(ax, ax + aw))


def _brute_step(m: np.ndarray, size: int, taken: list) -> tuple | None:
    """The best window (sum > 0; ties: first in row-major order) overlapping nothing in ``taken``."""
    m = np.nan_to_num(m)
    height, width = m.shape
    wh, ww = min(size, height), min(size, width)
    best, best_sum = None, 0.0
    for y in range(height - wh + 1):
        for x in range(width - ww + 1):
            box = (x, y, ww, wh)
            if any(_overlap(box, t) for t in taken):
                continue
            total = math.fsum(m[y:y + wh, x:x + ww].ravel())  # correctly rounded, order-free
            if total > best_sum:
                best, best_sum = box, total
    return best


def _brute_standard(m, size, n, labeled=()):
    taken, picks = [tuple(b) for b in labeled if b[2] > 0 and b[3] > 0], []
    while len(picks) < n:
        box = _brute_step(m, size, taken + picks)
        if box is None:
            break
        picks.append(box)
    return picks


# --------------------------------------------------------------------------------- strategies

def _int_maps(max_side: int = 12, low: int = -3, high: int = 9):
    shapes = st.tuples(st.integers(1, max_side), st.integers(1, max_side))
    return shapes.flatmap(lambda s: arrays(np.float64, s, elements=st.integers(low, high).map(float)))


_boxes = st.lists(st.tuples(st.integers(-4, 14), st.integers(-4, 14), st.integers(0, 7), st.integers(0, 7)),
                  max_size=3)


def _check_selection(picks, m, n, labeled):
    height, width = m.shape
    assert len(picks) <= n
    for i, (x, y, w, h) in enumerate(picks):
        assert isinstance(picks[i], tuple) and all(type(v) is int for v in picks[i])
        assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
        for other in picks[:i]:
            assert not _overlap(picks[i], other)
        for lab in labeled:
            assert not _overlap(picks[i], lab)


# ----------------------------------------------------------------------------- standard: exact

@PROPS
@given(m=_int_maps(), size=st.integers(1, 6), n=st.integers(0, 5), labeled=_boxes)
def test_standard_equals_brute_force_at_every_step(m, size, n, labeled):
    picks = select_standard(m, size, n, labeled)
    assert picks == _brute_standard(m, size, n, labeled)
    for k in range(len(picks)):  # each greedy step alone, given the earlier ones as labeled
        step = select_standard(m, size, 1, list(labeled) + picks[:k])
        assert step == [picks[k]]


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(33, 90), st.integers(1, 45)), size=st.sampled_from([1, 2, 31, 32, 33, 40, 64]),
       seed=st.integers(0, 2**32 - 1), labeled=_boxes)
def test_standard_equals_brute_force_on_maps_taller_than_a_band(shape, size, seed, labeled):
    m = np.random.default_rng(seed).integers(-2, 6, size=shape).astype(np.float32)  # rows go in bands of 32
    assert select_standard(m, size, 3, labeled) == _brute_standard(m, size, 3, labeled)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 5))
def test_standard_float_maps_pick_a_best_window_each_step(seed, size):
    rng = np.random.default_rng(seed)
    m = rng.random((rng.integers(1, 11), rng.integers(1, 11))) - 0.3
    picks = select_standard(m, size, 4)
    for k, (x, y, w, h) in enumerate(picks):
        best = _brute_step(m, size, picks[:k])
        assert best is not None
        bx, by, bw, bh = best
        assert m[y:y + h, x:x + w].sum() == pytest.approx(m[by:by + bh, bx:bx + bw].sum(), rel=1e-9, abs=1e-12)
    if len(picks) < 4:
        assert _brute_step(m, size, picks) is None


@pytest.mark.parametrize("shape,size", [((20, 20), 5), ((300, 257), 64), ((70, 40), 64), ((1, 9), 3)])
def test_standard_single_hot_cell_in_each_corner_is_covered(shape, size):
    height, width = shape
    wh, ww = min(size, height), min(size, width)
    for y, x in [(0, 0), (0, width - 1), (height - 1, 0), (height - 1, width - 1)]:
        m = np.zeros(shape, np.float32)
        m[y, x] = 0.7
        expected = (min(x, width - ww), min(y, height - wh), ww, wh)  # the only window (or the first)
        assert select_standard(m, size, 3) == [expected]


def test_standard_exact_block_no_off_by_one():
    m = np.zeros((500, 400), np.float32)
    m[123:187, 201:265] = 1.0
    assert select_standard(m, 64, 1) == [(201, 123, 64, 64)]
    m[300:364, 7:71] = 2.0
    assert select_standard(m, 64, 5) == [(7, 300, 64, 64), (201, 123, 64, 64)]


def test_standard_edge_cell_tie_goes_to_smallest_x():
    m = np.zeros((20, 20))
    m[0, 10] = 1.0
    assert select_standard(m, 5, 1) == [(6, 0, 5, 5)]
    m = np.zeros((20, 20))
    m[10, 0] = 1.0
    assert select_standard(m, 5, 1) == [(0, 6, 5, 5)]


def test_standard_zero_windows_far_from_large_values_are_never_taken():
    rng = np.random.default_rng(3)
    m = np.zeros((600, 600))
    m[:7, :9] = rng.random((7, 9)) * 1e3 + 1e-3
    m[590:, 590:] = rng.random((10, 10)) * 1e-3 + 1e-6
    picks = select_standard(m, 4, 1000)
    assert all(m[y:y + h, x:x + w].sum() > 0 for x, y, w, h in picks)
    assert len(picks) == len(_brute_standard(m[:12, :12], 4, 1000)) + len(_brute_standard(m[580:, 580:], 4, 1000))


def test_standard_flat_map_is_tiled_row_major():
    picks = select_standard(np.full((10, 13), 0.3, np.float32), 4, 100)
    assert picks == [(x, y, 4, 4) for y in (0, 4) for x in (0, 4, 8)]


def test_standard_negative_values_repel_windows():
    m = np.full((30, 30), -1.0)
    assert select_standard(m, 5, 3) == []
    m[10:15, 20:25] = 2.0  # a window is eligible only with a positive sum
    picks = select_standard(m, 5, 10)
    assert picks[0] == (20, 10, 5, 5)
    assert all(m[y:y + h, x:x + w].sum() > 0 for x, y, w, h in picks)


def test_standard_labeled_regions_of_any_size_partly_outside():
    m = np.ones((40, 40))
    labeled = [(-10, -10, 25, 22), (30, 35, 100, 100), (20.5, 0.2, 0.1, 0.1)]
    picks = select_standard(m, 8, 50, labeled)
    _check_selection(picks, m, 50, [(-10, -10, 25, 22), (30, 35, 100, 100), (20, 0, 1, 1)])
    assert picks[0] == (21, 0, 8, 8)


# ------------------------------------------------------------------------ both: properties

@PROPS
@given(m=_int_maps(16, -2, 5), size=st.integers(1, 8), n=st.integers(0, 6), labeled=_boxes,
       nan_at=st.lists(st.tuples(st.integers(0, 15), st.integers(0, 15)), max_size=3))
def test_selector_properties(m, size, n, labeled, nan_at):
    for y, x in nan_at:
        if y < m.shape[0] and x < m.shape[1]:
            m[y, x] = np.nan
    before = m.copy()
    for select in ALL_SELECTORS:
        picks = select(m, size, n, labeled)
        _check_selection(picks, m, n, labeled)
        assert select(m.copy(), size, n, list(labeled)) == picks  # deterministic
        np.testing.assert_array_equal(m, before)  # the map is not modified
        assert select(np.nan_to_num(m), size, n, labeled) == picks  # NaN counts as 0


@PROPS
@given(m=_int_maps(16, -2, 5), size=st.integers(1, 8), n=st.integers(1, 6), labeled=_boxes)
def test_adaptive_boxes_hold_their_peak_and_stop_only_when_no_positive_cell_is_left(m, size, n, labeled):
    picks = select_adaptive(m, size, n, labeled)
    free = np.ones(m.shape, bool)
    for x, y, w, h in labeled:
        if w > 0 and h > 0:
            free[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = False
    for x, y, w, h in picks:
        masked = np.where(free, m, -np.inf)
        py, px = np.unravel_index(np.argmax(masked), m.shape)  # first maximum in row-major order
        assert masked[py, px] > 0
        assert x <= px < x + w and y <= py < y + h
        assert free[y:y + h, x:x + w].all()
        free[y:y + h, x:x + w] = False
    if len(picks) < n:
        assert not (free & (m > 0)).any()


# ------------------------------------------------------------------------------- adaptive

def _blob_map(shape, centres, sigma, seed=0):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    m = np.zeros(shape)
    for k, (cy, cx) in enumerate(centres):
        m += (1.0 - 0.05 * k) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    return m + 0.01 * np.random.default_rng(seed).random(shape)


@pytest.mark.parametrize("size,sigma", [(16, 5), (32, 9), (64, 20)])
def test_adaptive_box_sides_within_half_and_one_and_a_half_size_on_blobs(size, sigma):
    centres = [(60, 70), (250, 300), (400, 90), (120, 420), (380, 460)]
    m = _blob_map((512, 560), centres, sigma)
    picks = select_adaptive(m, size, len(centres))
    assert len(picks) == len(centres)
    for (x, y, w, h), (cy, cx) in zip(picks, centres):
        assert size / 2 <= w <= 1.5 * size and size / 2 <= h <= 1.5 * size
        assert x <= cx < x + w and y <= cy < y + h


def test_adaptive_elongated_blob_gets_an_elongated_box():
    yy, xx = np.mgrid[:200, :200]
    m = np.exp(-((yy - 100) ** 2 / (2 * 4 ** 2) + (xx - 100) ** 2 / (2 * 9 ** 2)))
    (x, y, w, h), = select_adaptive(m, 32, 1)
    assert 16 <= h < w <= 48


@pytest.mark.parametrize("shape,size", [((50, 70), 16), ((9, 40), 16), ((33, 33), 1)])
def test_flat_maps_give_non_repeating_picks_that_tile_the_map(shape, size):
    m = np.full(shape, 0.5, np.float32)
    for select in ALL_SELECTORS:
        picks = select(m, size, 10_000)
        _check_selection(picks, m, 10_000, [])
        assert len(set(picks)) == len(picks)
        if select in (select_adaptive, AREA):  # every cell is positive, so everything gets covered
            assert sum(w * h for _, _, w, h in picks) == m.size
    assert select_adaptive(m, size, 3)[0] == (0, 0, min(size, shape[1]), min(size, shape[0]))


@pytest.mark.parametrize("y,x", [(0, 0), (0, 299), (199, 0), (199, 299), (0, 150), (100, 299)])
def test_adaptive_peaks_at_borders(y, x):
    yy, xx = np.mgrid[:200, :300]
    m = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 6.0 ** 2)) + 1e-3
    (bx, by, bw, bh), *rest = select_adaptive(m, 24, 4)
    assert bx <= x < bx + bw and by <= y < by + bh
    assert bx >= 0 and by >= 0 and bx + bw <= 300 and by + bh <= 200
    assert 12 <= bw <= 36 and 12 <= bh <= 36
    _check_selection([(bx, by, bw, bh), *rest], m, 4, [])


def test_adaptive_peak_in_a_narrow_gap_between_labeled_regions():
    m = np.zeros((40, 40))
    m[20, 20] = 1.0
    m[5:35, 5:35] += 0.1
    labeled = [(0, 0, 40, 19), (0, 22, 40, 18), (0, 19, 18, 3), (23, 19, 17, 3)]
    picks = select_adaptive(m, 16, 3, labeled)
    _check_selection(picks, m, 3, labeled)
    assert picks[0] == (18, 19, 5, 3)


def test_adaptive_component_wrapping_around_a_labeled_box_is_not_taken_as_is():
    m = np.zeros((60, 60))
    m[10:40, 10:40] = 0.5
    m[25, 25] = 1.0
    labeled = [(15, 15, 8, 8)]  # inside the plateau: its bounding box would contain the labeled box
    picks = select_adaptive(m, 20, 5, labeled)
    _check_selection(picks, m, 5, labeled)


# ----------------------------------------------------------------- adaptive: today's picks

# Picks of the adaptive selector before its options existed, on the maps of the tests above: the
# defaults (rule "sides", no median filter, 4-connected, "window" fallback) must keep them exactly.
_CENTRES = [(60, 70), (250, 300), (400, 90), (120, 420), (380, 460)]


def _elongated():
    yy, xx = np.mgrid[:200, :200]
    return np.exp(-((yy - 100) ** 2 / (2 * 4 ** 2) + (xx - 100) ** 2 / (2 * 9 ** 2)))


def _border_peak(y, x):
    yy, xx = np.mgrid[:200, :300]
    return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 6.0 ** 2)) + 1e-3


def _wrapped_plateau():
    m = np.zeros((60, 60))
    m[10:40, 10:40] = 0.5
    m[25, 25] = 1.0
    return m


TODAY = [
    (lambda: _blob_map((512, 560), _CENTRES, 5), 16, 5, [],
     [(61, 51, 19, 19), (291, 241, 19, 19), (81, 391, 19, 19), (411, 111, 19, 19), (451, 371, 19, 19)]),
    (lambda: _blob_map((512, 560), _CENTRES, 9), 32, 5, [],
     [(51, 41, 39, 39), (281, 231, 39, 39), (71, 381, 39, 39), (401, 101, 39, 39), (441, 361, 39, 39)]),
    (lambda: _blob_map((512, 560), _CENTRES, 20), 64, 5, [],
     [(25, 14, 92, 93), (262, 212, 77, 77), (52, 362, 77, 77), (382, 82, 77, 77), (422, 342, 77, 77)]),
    (_elongated, 32, 1, [], [(81, 92, 39, 17)]),
    (lambda: _border_peak(0, 0), 24, 4, [], [(0, 0, 30, 30), (30, 0, 12, 30), (0, 30, 33, 15), (42, 0, 24, 24)]),
    (lambda: _border_peak(199, 299), 24, 4, [],
     [(270, 170, 30, 30), (270, 158, 30, 12), (255, 167, 15, 33), (276, 134, 24, 24)]),
    (lambda: _border_peak(0, 150), 24, 4, [],
     [(137, 0, 27, 14), (113, 0, 24, 24), (164, 0, 24, 24), (137, 14, 27, 13)]),
    (lambda: _border_peak(100, 299), 24, 4, [],
     [(286, 87, 14, 27), (276, 63, 24, 24), (262, 88, 24, 24), (276, 114, 24, 24)]),
    (_wrapped_plateau, 20, 5, [(15, 15, 8, 8)],
     [(23, 15, 20, 20), (0, 0, 15, 20), (15, 0, 20, 15), (35, 0, 20, 15), (0, 20, 15, 20)]),
    (lambda: _blob_map((30, 200), [(15, 100)], 6), 64, 1, [], [(75, 0, 50, 30)]),
]


@pytest.mark.parametrize("make,size,n,labeled,expected", TODAY)
def test_adaptive_defaults_keep_todays_picks(make, size, n, labeled, expected):
    m = make()
    assert select_adaptive(m, size, n, labeled) == expected
    assert select_adaptive(m, size, n, labeled, rule="sides", median_filter=False, connectivity=4,
                           fallback="window") == expected


# --------------------------------------------------------- adaptive options: brute force

def _median3(m: np.ndarray) -> np.ndarray:
    """3 × 3 median, zero-padded, cell by cell."""
    height, width = m.shape
    out = np.zeros_like(m)
    for y in range(height):
        for x in range(width):
            window = [m[yy, xx] if 0 <= yy < height and 0 <= xx < width else 0.0
                      for yy in range(y - 1, y + 2) for xx in range(x - 1, x + 2)]
            out[y, x] = sorted(window)[4]
    return out


def _component(values, free, start, threshold, connectivity):
    """Cells reachable from ``start`` through free cells >= threshold (breadth-first search)."""
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    seen, queue = {start}, deque([start])
    while queue:
        y, x = queue.popleft()
        for dy, dx in steps:
            cell = (y + dy, x + dx)
            if (0 <= cell[0] < values.shape[0] and 0 <= cell[1] < values.shape[1] and cell not in seen
                    and free[cell] and values[cell] >= threshold):
                seen.add(cell)
                queue.append(cell)
    return seen


def _acceptable(w, h, size, shape, rule) -> bool:
    """The size bounds, written from their definitions: sides in [ceil(size/2), floor(1.5·size)], or the
    area in [floor(size/2)², floor(1.5·size)²]; the lower bounds clipped to the map."""
    height, width = shape
    longest = math.floor(1.5 * size)
    if rule == "sides":
        low = math.ceil(size / 2)
        return min(low, height) <= h <= longest and min(low, width) <= w <= longest
    low = math.floor(size / 2)
    return min(low, height) * min(low, width) <= w * h <= longest ** 2


def _brute_adaptive_step(m, size, boxes, rule="sides", median_filter=False, connectivity=4, fallback="window"):
    """The peak, every acceptable component box (over every threshold) and the fallback window, or None."""
    values = np.nan_to_num(m).astype(np.float64)
    if median_filter:
        values = _median3(values)
    height, width = values.shape
    free = np.ones(values.shape, bool)
    for x, y, w, h in boxes:
        for yy in range(max(y, 0), min(y + h, height)):
            for xx in range(max(x, 0), min(x + w, width)):
                free[yy, xx] = False
    cells = [(values[y, x], -y, -x) for y in range(height) for x in range(width) if free[y, x]]
    if not cells or max(cells)[0] <= 0:
        return None
    _, ny, nx = max(cells)  # highest value, then smallest y, then smallest x
    peak = (-ny, -nx)
    accepted = set()
    for threshold in sorted({v for v, _, _ in cells if v > 0}, reverse=True):
        comp = _component(values, free, peak, threshold, connectivity)
        ys, xs = [c[0] for c in comp], [c[1] for c in comp]
        box = (min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1)
        x, y, w, h = box
        if free[y:y + h, x:x + w].all() and _acceptable(w, h, size, values.shape, rule):
            accepted.add(box)
    side = size if fallback == "window" else max(size // 2, 1)
    wh, ww = min(side, height), min(side, width)
    windows = [(x, y, ww, wh) for y in range(height - wh + 1) for x in range(width - ww + 1)
               if y <= peak[0] < y + wh and x <= peak[1] < x + ww and free[y:y + wh, x:x + ww].all()]
    offset = lambda b: ((2 * b[1] + wh - 1 - 2 * peak[0]) ** 2 + (2 * b[0] + ww - 1 - 2 * peak[1]) ** 2, b[1], b[0])
    return peak, accepted, min(windows, key=offset) if windows else None, (wh, ww)


_OPTIONS = st.fixed_dictionaries({}, optional={"rule": st.sampled_from(["sides", "area"]),
                                               "median_filter": st.booleans(),
                                               "connectivity": st.sampled_from([4, 8]),
                                               "fallback": st.sampled_from(["window", "half"])})


@PROPS
@given(m=_int_maps(12, -2, 6), size=st.integers(1, 8), n=st.integers(1, 5), labeled=_boxes, options=_OPTIONS)
def test_adaptive_equals_brute_force_threshold_search_under_every_option(m, size, n, labeled, options):
    picks = select_adaptive(m, size, n, labeled, **options)
    _check_selection(picks, m, n, labeled)
    taken = [tuple(b) for b in labeled if b[2] > 0 and b[3] > 0]
    for pick in picks:
        step = _brute_adaptive_step(m, size, taken, **options)
        assert step is not None
        (py, px), accepted, window, (wh, ww) = step
        x, y, w, h = pick
        assert x <= px < x + w and y <= py < y + h  # every box holds its peak
        if accepted:  # some threshold gives an acceptable component: the pick is one of them
            assert pick in accepted
        elif window is not None:  # none does: the most centred free fallback window
            assert pick == window
        else:  # no free window holds the peak: a smaller box grown from it
            assert w <= ww and h <= wh
        taken.append(pick)
    if len(picks) < n:
        assert _brute_adaptive_step(m, size, taken, **options) is None


def _blob_12x6() -> np.ndarray:
    m = np.zeros((30, 40))
    m[10:16, 10:22] = 1.0  # 6 rows, 12 columns
    return m


def test_area_rule_accepts_an_elongated_blob_that_the_sides_rule_refuses():
    m = _blob_12x6()
    # size 7: sides must lie in [4, 10] (12 is too long); the area 72 lies in [3², 10²]
    assert select_adaptive(m, 7, 1, rule="area") == [(10, 10, 12, 6)]
    assert select_adaptive(m, 7, 1, rule="area", fallback="half") == [(10, 10, 12, 6)]
    assert select_adaptive(m, 7, 1) == [(7, 7, 7, 7)]  # the fallback: a 7 × 7 window centred on the peak
    assert select_adaptive(m, 7, 1, fallback="half") == [(9, 9, 3, 3)]  # l_min = 3
    # size 8: both rules take the blob (sides in [4, 12]; area in [4², 12²])
    assert select_adaptive(m, 8, 1) == select_adaptive(m, 8, 1, rule="area") == [(10, 10, 12, 6)]
    # size 16: the blob is too small for the sides rule (6 < 8) and big enough for the area (72 >= 8²)
    assert select_adaptive(m, 16, 1, rule="area") == [(10, 10, 12, 6)]
    assert select_adaptive(m, 16, 1)[0] != (10, 10, 12, 6)


def test_area_rule_accepts_a_thin_line_far_longer_than_any_side_the_sides_rule_allows():
    m = np.zeros((5, 200))
    m[2, 10:110] = 1.0  # 1 × 100, area 100 <= 12²
    assert select_adaptive(m, 8, 1, rule="area") == [(10, 2, 100, 1)]
    assert select_adaptive(m, 8, 1) == [(6, 0, 8, 5)]


def test_median_filter_ignores_an_isolated_hot_cell():
    m = np.zeros((40, 40))
    m[30, 5] = 1.0  # one outlier cell
    m[10:18, 20:28] = 0.5  # an 8 × 8 plateau
    assert select_adaptive(m, 8, 1) == [(1, 26, 8, 8)]  # the outlier is the peak: fallback window
    assert select_adaptive(m, 8, 1, median_filter=True) == [(20, 10, 8, 8)]  # filtered away: the plateau
    assert select_adaptive(m, 8, 5, median_filter=True) == [(20, 10, 8, 8)]  # no positive cell left
    filtered = _median3(m)
    assert filtered[30, 5] == 0 and filtered[10, 20] == 0 and (filtered[10, 21:27] == 0.5).all()  # corners go


def test_eight_connectivity_joins_diagonal_neighbours():
    m = np.zeros((20, 20))
    m[np.arange(10), np.arange(10)] = 1.0
    assert select_adaptive(m, 8, 1, connectivity=8) == [(0, 0, 10, 10)]
    assert select_adaptive(m, 8, 1) == [(0, 0, 8, 8)]  # 4-connected: one cell, too small: fallback


@pytest.mark.parametrize("size,expected", [(8, (23, 18, 4, 4)), (10, (23, 18, 5, 5)), (1, (25, 20, 1, 1))])
def test_half_fallback_is_the_reference_box_around_the_peak(size, expected):
    m = np.zeros((50, 60))
    m[20, 25] = 1.0  # too small a blob for any size above 1
    l_min = max(size // 2, 1)
    (box,) = select_adaptive(m, size, 1, fallback="half")
    assert box == expected == (25 - l_min // 2, 20 - l_min // 2, l_min, l_min)  # the reference's placement
    m = np.zeros((50, 60))
    m[0, 59] = 1.0
    assert select_adaptive(m, 8, 1, fallback="half") == [(56, 0, 4, 4)]  # shifted inside, the peak kept


def test_selector_options_are_checked_in_one_place():
    assert set(SELECTOR_OPTIONS) == {"standard", "adaptive"} and SELECTOR_OPTIONS["standard"] == {}
    assert check_selector_options("adaptive") == {} == check_selector_options("standard", {})
    given_ = {"rule": "area", "median_filter": True, "connectivity": 8, "fallback": "half"}
    assert check_selector_options("adaptive", given_) == given_
    assert {k: v[0] for k, v in SELECTOR_OPTIONS["adaptive"].items()} == {
        "rule": "sides", "median_filter": False, "connectivity": 4, "fallback": "window"}  # the defaults
    for selector, options, message in [
            ("best", {}, "selector must be one of"),
            ("standard", {"rule": "area"}, "standard selector has no option 'rule'"),
            ("adaptive", {"shape": "box"}, "no option 'shape'"),
            ("adaptive", {"rule": "perimeter"}, "'rule' must be one of 'sides', 'area'"),
            ("adaptive", {"connectivity": 6}, "'connectivity'"),
            ("adaptive", {"connectivity": 8.0}, "'connectivity'"),
            ("adaptive", {"median_filter": 1}, "'median_filter'"),
            ("adaptive", {"fallback": None}, "'fallback'"),
            ("adaptive", ["rule", "area"], "mapping")]:
        with pytest.raises(ValueError, match=message):
            check_selector_options(selector, options)
    m = np.ones((10, 10))
    with pytest.raises(ValueError, match="'rule'"):
        select_adaptive(m, 4, 1, rule="box")
    with pytest.raises(ValueError, match="'connectivity'"):
        select_adaptive(m, 4, 1, connectivity=True)


# --------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("select", ALL_SELECTORS, ids=ALL_IDS)
def test_degenerate_inputs(select):
    m = np.random.default_rng(0).random((30, 30))
    assert select(m, 5, 0) == []
    assert select(np.zeros((0, 10)), 5, 3) == []
    assert select(np.zeros((12, 12)), 5, 3) == []
    assert select(np.full((12, 12), np.nan), 5, 3) == []
    assert select(-m, 5, 3) == []
    assert select(np.ones((3, 4), bool), 10, 2) == [(0, 0, 4, 3)]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            select(m, bad, 1)
    with pytest.raises(ValueError):
        select(m, 5, -1)
    with pytest.raises(ValueError):
        select(np.zeros((3, 3, 3)), 2, 1)
    with pytest.raises(ValueError):
        select(np.where(m > 0.5, np.inf, m), 5, 1)
    with pytest.raises(ValueError):
        select(m, 5, 1, [(0, 0, -1, 3)])


@pytest.mark.parametrize("scale", [1e-300, 1e-30, 1.0, 1e30, 1e300])
@pytest.mark.parametrize("select", ALL_SELECTORS, ids=ALL_IDS)
def test_extreme_magnitudes_select_like_the_unit_map(select, scale):
    m = _blob_map((120, 130), [(30, 40), (90, 100)], 5)
    assert select(m * scale, 16, 3) == select(m, 16, 3)


def test_map_smaller_than_size_clips_the_window():
    m = np.ones((30, 200))
    assert select_standard(m, 64, 2) == [(0, 0, 64, 30), (64, 0, 64, 30)]
    m = _blob_map((30, 200), [(15, 100)], 6)
    (x, y, w, h), = select_adaptive(m, 64, 1)
    assert h <= 30 and 32 <= w <= 96 and x <= 100 < x + w


@pytest.mark.parametrize("select", [*SELECTORS, REFERENCE], ids=["standard", "adaptive", "adaptive-reference"])
def test_dense_mitosis_grid_is_quick_and_sane(select):
    rng = np.random.default_rng(0)
    m = gaussian_filter(rng.random((1560, 1560), np.float32), 8)
    picks = select(m, 64, 5)
    assert len(picks) == 5
    _check_selection(picks, m, 5, [])


# -------------------------------------------------------------------------------- helpers

def test_boxes_overlap_and_overlap_mask():
    assert boxes_overlap((0, 0, 4, 4), (3, 3, 4, 4))
    assert not boxes_overlap((0, 0, 4, 4), (4, 0, 4, 4))  # touching
    assert not boxes_overlap((0, 0, 4, 4), (0, 4, 4, 4))
    assert not boxes_overlap((5, 0, 0, 10), (0, 0, 10, 10))  # empty
    assert boxes_overlap((-5, -5, 100, 100), (1, 1, 1, 1))
    others = [(3, 3, 4, 4), (4, 0, 4, 4), (0, 0, 0, 0), (-2, -2, 3, 3), (10, 10, 1, 1)]
    np.testing.assert_array_equal(overlap_mask((0, 0, 4, 4), others), [True, False, False, True, False])
    assert overlap_mask((0, 0, 4, 4), []).shape == (0,)
    assert Region(1, 2, 3, 4) == (1, 2, 3, 4) and Region(1, 2, 3, 4).w == 3


@given(m=_int_maps(14, -3, 9), boxes=st.lists(st.tuples(st.integers(-5, 16), st.integers(-5, 16),
                                                        st.integers(0, 20), st.integers(0, 20)), max_size=12))
@settings(max_examples=100, deadline=None)
def test_box_sums_equal_a_cell_by_cell_sum(m, boxes):
    sums = box_sums(m, boxes)
    assert sums.shape == (len(boxes),)
    for (x, y, w, h), s in zip(boxes, sums):
        total = sum(m[yy, xx] for yy in range(max(y, 0), min(y + h, m.shape[0]))
                    for xx in range(max(x, 0), min(x + w, m.shape[1])))
        assert s == total


def test_box_sums_integral_path_and_nan():
    rng = np.random.default_rng(1)
    m = rng.random((50, 60))
    m[3, 4] = np.nan
    boxes = rng.integers(-5, 55, size=(400, 4))
    boxes[:, 2:] = np.abs(boxes[:, 2:]) // 2
    sums = box_sums(m, boxes)  # 400 boxes cover more cells than the map: integral image
    clean = np.nan_to_num(m)
    expected = [clean[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)].sum() for x, y, w, h in boxes]
    np.testing.assert_allclose(sums, expected, rtol=1e-12, atol=1e-12)
