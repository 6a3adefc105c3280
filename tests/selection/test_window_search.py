"""Standard selection through bounds and reused window sums picks exactly what summing every window
picks: the straightforward algorithm alkit used before (kept here, verbatim in substance, as the
oracle) against :func:`select_standard` and :func:`select_on_maps` on many random maps, with ties,
NaN cells, negative values, maps smaller than the window, boxes at the edges and labeled boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import strategies._common as common
from alkit.selection.regions import Region, StandardSearch, box_array, clean_map, cover_cells, select_standard
from alkit.selection.window_bounds import block_sums, run_sums
from alkit.selection.window_search import rect_window_sums, window_sums


# ------------------------------------------------------------------ the oracle: every window summed

def _oracle_window_sums(m, wh, ww, band=32):
    height, width = m.shape
    amax = float(max(-m.min(), m.max()))
    if amax == 0.0:
        return None
    cells = max(width, (wh + 2) * ww)
    exponent = 52 - math.frexp(amax)[1] - cells.bit_length()
    oh, ow = height - wh + 1, width - ww + 1
    out = np.empty((height + 1, ow))
    scaled = np.empty((min(band, height), width))
    prefix = np.zeros((min(band, height), width + 1))
    done = 0
    for a in range(0, height, band):
        b = min(a + band, height)
        s, p = scaled[:b - a], prefix[:b - a]
        if -1000 <= exponent <= 1000:
            np.multiply(m[a:b], math.ldexp(1.0, exponent), out=s, dtype=np.float64)
        else:
            np.ldexp(m[a:b], exponent, out=s, dtype=np.float64)
        np.rint(s, out=s)
        np.cumsum(s, axis=1, out=p[:, 1:])
        np.subtract(p[:, ww:], p[:, :ow], out=out[a + 1:b + 1])
        if done == 0 and b >= wh:
            np.sum(out[1:wh + 1], axis=0, out=out[0])
            done = 1
        while 0 < done < oh and done + wh <= b:
            i = done
            np.subtract(out[i + wh], out[i], out=out[i])
            np.add(out[i], out[i - 1], out=out[i])
            done += 1
    return out[:oh]


def _oracle_suppress(scores, bx, by, bw, bh, wh, ww):
    oh, ow = scores.shape
    y0, y1 = max(by - wh + 1, 0), min(by + bh, oh)
    x0, x1 = max(bx - ww + 1, 0), min(bx + bw, ow)
    if y0 < y1 and x0 < x1:
        scores[y0:y1, x0:x1] = -np.inf
        return y0, y1
    return 0, 0


def oracle_select(score_map, size, n, labeled=()):
    """alkit's standard selection before the bounds: every window summed, greedy NMS on all of them."""
    m = clean_map(score_map)
    height, width = m.shape
    if n == 0 or m.size == 0:
        return []
    wh, ww = min(size, height), min(size, width)
    scores = _oracle_window_sums(m, wh, ww)
    if scores is None:
        return []
    for bx, by, bw, bh in cover_cells(box_array(labeled)):
        _oracle_suppress(scores, bx, by, bw, bh, wh, ww)
    rowmax = scores.max(axis=1)
    picks = []
    while len(picks) < n:
        oy = int(np.argmax(rowmax))
        if not rowmax[oy] > 0:
            break
        ox = int(np.argmax(scores[oy]))
        picks.append(Region(ox, oy, ww, wh))
        y0, y1 = _oracle_suppress(scores, ox, oy, ww, wh, wh, ww)
        rowmax[y0:y1] = scores[y0:y1].max(axis=1)
    return picks


def oracle_select_on_maps(slide, maps, n, size, labeled, strategy):
    """select_on_maps before the reuse: one selector call per pick, earlier picks passed as labeled."""
    blocked = common.labeled_cells(slide, labeled)
    names, picks, exhausted, turn = list(maps), [], set(), 0
    while len(picks) < n and len(exhausted) < len(names):
        name = names[turn % len(names)]
        turn += 1
        if name in exhausted:
            continue
        found = oracle_select(maps[name], size, 1, labeled=blocked)
        if not found:
            exhausted.add(name)
            continue
        box = tuple(int(v) for v in found[0])
        blocked.append(box)
        picks += common.to_picks(slide, [box], maps[name], strategy, name or None)
    return picks


# ------------------------------------------------------------------------------------ random maps

def random_map(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    if kind == "smooth":
        return gaussian_filter(rng.standard_normal((h, w)), rng.uniform(1, 12)).astype(rng.choice([np.float32, np.float64]))
    if kind == "levels":  # few distinct values: many exact ties
        return rng.integers(0, 3, (h, w)).astype(np.float32)
    if kind == "flat":
        return np.full((h, w), rng.choice([1.0, 0.5, 7.0]))
    if kind == "nan":
        m = rng.random((h, w)).astype(np.float32)
        m[rng.random((h, w)) < 0.4] = np.nan
        return m
    if kind == "centred":  # negative values push windows away
        return gaussian_filter(rng.standard_normal((h, w)), 4) - 0.02
    if kind == "spikes":  # sparse spikes, often on the edges and corners
        m = np.zeros((h, w))
        ys = np.concatenate([rng.integers(0, h, 4), [0, h - 1]])
        xs = np.concatenate([rng.integers(0, w, 4), [w - 1, 0]])
        m[ys, xs] = rng.random(6) + 0.5
        return m
    if kind == "tiny":  # values near the fixed-point step next to large ones
        m = rng.random((h, w)) * 1e-14
        m[rng.integers(0, h), rng.integers(0, w)] = 1.0
        return m
    if kind == "minute":  # the fixed-point exponent above 1023: 2**exponent alone is not a float
        return gaussian_filter(rng.random((h, w)), 3) * 1e-300
    if kind == "huge":
        return gaussian_filter(rng.random((h, w)), 3) * 1e300
    if kind == "integers":
        return rng.integers(-2, 5, (h, w))
    if kind == "negative":
        return -rng.random((h, w))
    return np.zeros((h, w))


KINDS = ["smooth", "levels", "flat", "nan", "centred", "spikes", "tiny", "integers", "negative", "zeros", "minute",
         "huge"]


def random_labeled(rng, h, w):
    return [(float(rng.uniform(-20, w)), float(rng.uniform(-20, h)), float(rng.uniform(0, 60)),
             float(rng.uniform(0, 60))) for _ in range(int(rng.integers(0, 4)))]


@pytest.mark.parametrize("seed", range(8))
def test_picks_equal_the_oracle_on_small_and_clipped_maps(seed):
    rng = np.random.default_rng(seed)
    for trial in range(60):
        kind = KINDS[trial % len(KINDS)]
        h, w = (int(v) for v in rng.integers(1, 160, 2))
        size = int(rng.choice([1, 2, 3, 5, 8, 13, 64, 200]))
        m, labeled, n = random_map(rng, kind, h, w), random_labeled(rng, h, w), int(rng.integers(0, 9))
        assert select_standard(m, size, n, labeled) == oracle_select(m, size, n, labeled), (kind, h, w, size, n)


@pytest.mark.parametrize("kind", KINDS)
def test_picks_equal_the_oracle_on_large_maps_where_the_bounds_prune(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    for h, w, size, n in [(700, 900, 64, 5), (523, 611, 37, 8), (400, 1300, 64, 3), (333, 333, 7, 12)]:
        m = random_map(rng, kind, h, w)
        labeled = random_labeled(rng, h, w) + [(w - 10.5, h - 10.5, 30, 30)]
        assert select_standard(m, size, n, labeled) == oracle_select(m, size, n, labeled), (h, w, size, n)
    if kind == "smooth":  # the bounds prune: most windows of a large map are never summed
        search = StandardSearch(random_map(rng, kind, 1200, 1300), 64, expected=5)
        assert len([search.take() for _ in range(5)]) == 5
        assert search.search.done.mean() < 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_every_bound_is_at_least_every_exact_window_sum_of_its_origin_block(kind):
    """The search is exact only if no window beats its origin block's bound: checked on every block against
    the oracle's sums of every window, for square and oblong windows shorter, as long as and longer than a
    block, with float32 values near the fixed-point step and near float32's limit among the kinds."""
    from alkit.selection.regions import _clean_map_low
    from alkit.selection.window_bounds import BLOCK
    from alkit.selection.window_search import WindowSearch

    rng = np.random.default_rng(100 + KINDS.index(kind))
    shapes = [(300, 420, 64, 64), (260, 300, 37, 5), (200, 260, 8, 8), (230, 190, 3, 17), (280, 280, 16, 24)]
    if kind == "smooth":
        near_limit = (gaussian_filter(rng.random((240, 250)), 3) * 3e38).astype(np.float32)
        subnormal = (rng.random((240, 250)) * 1e-40).astype(np.float32)
        maps = [(near_limit, 9, 13), (subnormal, 12, 12)]
    else:
        maps = []
    maps += [(random_map(rng, kind, h, w), wh, ww) for h, w, wh, ww in shapes]
    checked = 0
    for raw, wh, ww in maps:
        m, lo = _clean_map_low(raw)
        search = WindowSearch(m, wh, ww, lo)
        if search.nothing or not np.isfinite(search.bound).any():
            continue
        exact = window_sums(m, wh, ww, search.exponent)
        oh, ow = exact.shape
        pad = np.full((search.nbh * BLOCK, search.nbw * BLOCK), -np.inf)
        pad[:oh, :ow] = exact
        best = pad.reshape(search.nbh, BLOCK, search.nbw, BLOCK).max(axis=(1, 3))
        assert (best <= search.bound).all(), (kind, wh, ww, float((best - search.bound).max()))
        checked += 1
    assert checked or kind in ("zeros", "negative"), "no map of this kind reached the bounds"


def test_ties_break_by_row_then_column_across_blocks():
    m = np.zeros((600, 600), np.float32)
    for y, x in [(300, 500), (299, 580), (299, 20), (420, 0)]:  # equal spikes: (299, 20) first, then (299, 580)
        m[y, x] = 1.0
    picks = select_standard(m, 4, 4)
    assert picks == oracle_select(m, 4, 4)
    assert picks[0] == Region(17, 296, 4, 4)  # the smallest origin (y, then x) covering the first spike


def test_standard_search_blocks_boxes_from_elsewhere_like_labeled_ones():
    rng = np.random.default_rng(3)
    m = gaussian_filter(rng.random((500, 700)), 8)
    search = StandardSearch(m, 48, expected=4)
    first = search.take()
    elsewhere = (first.x + 60, first.y, 48, 48)
    search.block(elsewhere)
    rest = [search.take() for _ in range(3)]
    assert rest == oracle_select(m, 48, 3, labeled=[first, elsewhere])
    search.verify()


def test_the_helpers_agree_with_plain_sums():
    rng = np.random.default_rng(5)
    a = rng.random((37, 29))
    assert np.allclose(block_sums(a, 4), [[a[i:i + 4, j:j + 4].sum() for j in range(0, 29, 4)] for i in range(0, 37, 4)])
    for k in (1, 2, 5, 16, 17, 29):
        assert np.allclose(run_sums(a, k, 1), [[a[i, j:j + k].sum() for j in range(29 - k + 1)] for i in range(37)])
    q = rng.integers(-1000, 1000, (50, 60)).astype(np.float64)  # exponent 0: the integers themselves
    exact = [[q[i:i + 9, j:j + 11].sum() for j in range(50)] for i in range(42)]
    assert (rect_window_sums(q, 9, 11, 0) == exact).all() and (window_sums(q, 9, 11, 0) == exact).all()


# ------------------------------------------------------------------------------- select_on_maps

@pytest.mark.parametrize("classes", [1, 2, 3])
def test_select_on_maps_equals_one_selector_call_per_pick(embedded_cohort, classes):
    rng = np.random.default_rng(classes)
    for slide in embedded_cohort:
        rows, cols = slide.grid.shape
        maps = {f"c{k}" if classes > 1 else "": random_map(rng, KINDS[(k + classes) % 6], rows, cols)
                for k in range(classes)}
        size = max(1, min(rows, cols) // 4)
        x0, y0, w0, h0 = slide.grid.cells_to_box((0, 0, 2, 2))
        labeled = {slide.slide_id: [(x0, y0, w0, h0)]}
        for n in (1, 4, 7):
            got = common.select_on_maps(slide, maps, n, size, "standard", labeled, "test")
            want = oracle_select_on_maps(slide, maps, n, size, labeled, "test")
            assert [(p.box, p.cls) for p in got] == [(p.box, p.cls) for p in want]
            assert np.allclose([p.score for p in got], [p.score for p in want])


@pytest.mark.parametrize("kind", KINDS)
def test_the_search_never_sums_much_more_than_the_whole_map(kind):
    """Many small rectangles cost more than one pass over the map (a fixed cost each, and the window's reach
    past them read again): once the rectangles would cost more than the whole map, the whole map is summed,
    so no map costs more than about two plain passes."""
    rng = np.random.default_rng(200 + KINDS.index(kind))
    for h, w, size, n in [(900, 1000, 37, 8), (700, 800, 64, 5)]:
        m = random_map(rng, kind, h, w)
        search = StandardSearch(m, size, expected=n)
        picks = [search.take() for _ in range(n)]
        assert [p for p in picks if p is not None] == oracle_select(m, size, n, []), (h, w, size, n)
        inner = search.search
        if not inner.nothing:
            assert inner.spent <= 2 * inner._cost(inner.nbh, inner.nbw)
