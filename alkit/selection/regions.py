"""Region selection on score maps: which size × size boxes of a slide a pathologist should annotate.

A score map is a 2-D array indexed by patch-grid cells (row = y, column = x): similarity to class
prototypes, model uncertainty, anything where higher means "more worth annotating". Everything here
works in map cells; converting to level-0 pixels is the grid's job (:mod:`alkit.wsi.grid`).

Conventions, shared by every function of this module:

* A box is ``(x, y, w, h)`` in map cells, ``x`` = column, half-open: it covers rows ``y .. y+h-1``
  and columns ``x .. x+w-1``. Two boxes overlap when they share at least one cell; boxes that only
  touch (``a.x + a.w == b.x``) do not overlap. A box with ``w <= 0`` or ``h <= 0`` is empty and
  overlaps nothing.
* ``labeled`` boxes (regions annotated earlier, of any size) may lie partly or wholly outside the
  map; fractional ones block every cell they touch. Selected boxes never overlap them nor each other,
  and always lie fully inside the map.
* NaN cells count as 0 (no tissue, no embedding). Infinite values are rejected (``ValueError``).
* Ties are broken by position: the smallest ``y`` first, then the smallest ``x`` (row-major order).
* ``n = 0``, an empty map, or a map without a positive cell give ``[]``; fewer than ``n`` boxes come
  back when no eligible box is left (callers report the shortfall).

Standard selection (:func:`select_standard`) slides a ``size × size`` window at stride 1, scores it
by the sum of the map inside it and greedily takes the best window that overlaps nothing taken or
labeled (non-maximum suppression), while that sum is positive. A window with a zero or negative sum
is never taken, so negative values (say, a score centred on zero) push windows away. On a map
smaller than ``size`` along an axis, the window is clipped to the map along that axis (a
30 × 2000 map with ``size = 64`` gets 30 × 64 windows).

Window sums are exact, not merely close: the map is first rounded to a fixed-point grid, a power of
two fine enough that every partial sum stays below 2**53 (for a 2000 × 2000 map of values in
[0, 1] with ``size = 64``, the step is 2**-38, far below float32 resolution), and then every sum is
an exact integer computation in float64. So equal windows tie exactly (a flat map is tiled in
row-major order, not in an order set by rounding noise), a window of zeros scores exactly 0 however
far it lies from the origin, and any brute-force sum of the same integers agrees. Values smaller
than the step (below ``max|map| * 2**-39`` in the example) count as 0.

Not every window is summed: :mod:`alkit.selection.window_search` bounds groups of windows from block
sums and sums exactly only those that could win, keeping the sums for later picks
(:class:`StandardSearch`); the picks are those of summing every window, ties included.

Adaptive selection, which lets the map shape each box, is :mod:`alkit.selection.adaptive`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from alkit.selection.window_search import WindowSearch
from alkit.wsi.box import Box

log = logging.getLogger(__name__)

#: each selector's options: per option its allowed values, the default (alkit's own rule) first
SELECTOR_OPTIONS: dict[str, dict[str, tuple[Any, ...]]] = {
    "standard": {},
    "adaptive": {"rule": ("sides", "area"), "median_filter": (False, True), "connectivity": (4, 8),
                 "fallback": ("window", "half")},
}


class Region(NamedTuple):
    """A box ``(x, y, w, h)`` in map cells, half-open, x = column (a plain tuple with names)."""

    x: int
    y: int
    w: int
    h: int


# --------------------------------------------------------------------------------------------- boxes

def boxes_overlap(a: Box, b: Box) -> bool:
    """Whether two half-open boxes ``(x, y, w, h)`` share a cell (touching is not overlapping)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return (aw > 0 and ah > 0 and bw > 0 and bh > 0
            and ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah)


def overlap_mask(box: Box, boxes: Iterable[Box] | np.ndarray) -> np.ndarray:
    """Which of ``boxes`` (k × 4) overlap ``box``: a boolean array of length k (vectorised)."""
    arr = box_array(boxes)
    x, y, w, h = box
    if not (w > 0 and h > 0):
        return np.zeros(len(arr), bool)
    bx, by, bw, bh = arr.T
    return ((bw > 0) & (bh > 0) & (bx < x + w) & (x < bx + bw) & (by < y + h) & (y < by + bh))


def box_sums(score_map: np.ndarray, boxes: Iterable[Box] | np.ndarray) -> np.ndarray:
    """The sum of the map (NaN as 0) inside each box, clipped to the map: a region's score.

    Boxes partly outside count only their cells inside; boxes wholly outside or empty sum to 0;
    fractional boxes count every cell they touch. While the boxes cover fewer cells than the map,
    each is summed directly (float64, pairwise: a box of zeros sums to exactly 0); beyond that,
    through one float64 integral image (error of order 1e-16 × the sum of |map|).
    """
    m = clean_map(score_map)
    arr = cover_cells(box_array(boxes), drop_empty=False)
    height, width = m.shape
    x0 = np.clip(arr[:, 0], 0, width)
    y0 = np.clip(arr[:, 1], 0, height)
    x1 = np.clip(arr[:, 0] + arr[:, 2], 0, width)
    y1 = np.clip(arr[:, 1] + arr[:, 3], 0, height)
    x1, y1 = np.maximum(x1, x0), np.maximum(y1, y0)
    area = int(((x1 - x0) * (y1 - y0)).sum())
    if area <= m.size:
        return np.array([m[b:d, a:c].sum(dtype=np.float64) for a, b, c, d in zip(x0, y0, x1, y1)],
                        dtype=np.float64)
    table = np.zeros((height + 1, width + 1))
    np.cumsum(m, axis=1, dtype=np.float64, out=table[1:, 1:])
    _cumsum_rows_inplace(table[1:, 1:])
    return table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]


# ---------------------------------------------------------------------------------------- selectors

def check_selector_options(selector: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``options`` of ``selector`` checked against :data:`SELECTOR_OPTIONS`, as a plain dict.

    The one check for the strategies and the study config alike: an unknown selector, an option the
    selector does not have, or a value it does not allow raises ``ValueError`` naming it. Types
    count (``connectivity: 8.0`` and ``median_filter: 1`` are refused). Options left out are not
    filled in: the selector's defaults apply.
    """
    if selector not in SELECTOR_OPTIONS:
        raise ValueError(f"selector must be one of {sorted(SELECTOR_OPTIONS)}, got {selector!r}")
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"selector options must be a mapping of option names to values, got {options!r}")
    known = SELECTOR_OPTIONS[selector]
    checked: dict[str, Any] = {}
    for key, value in options.items():
        if key not in known:
            raise ValueError(f"the {selector} selector has no option {key!r} "
                             f"(it has {', '.join(map(repr, known)) or 'none'})")
        if not any(type(value) is type(allowed) and value == allowed for allowed in known[key]):
            raise ValueError(f"{selector} selector option {key!r} must be one of "
                             f"{', '.join(map(repr, known[key]))}, got {value!r}")
        checked[key] = value
    return checked


def select_standard(score_map: np.ndarray, size: int, n: int,
                    labeled: Iterable[Box] = ()) -> list[Region]:
    """Greedy non-maximum suppression over all ``size × size`` windows scored by their sum.

    Repeatedly takes the window with the highest sum (ties: smallest y, then x) that overlaps no
    taken and no labeled box, until ``n`` are taken or no window with a positive sum is left.
    """
    size, n = check_size_n(size, n)
    if n == 0:
        return []
    search = StandardSearch(score_map, size, labeled, expected=n)
    picks: list[Region] = []
    while len(picks) < n:
        pick = search.take()
        if pick is None:
            break
        picks.append(pick)
    search.verify()
    log.debug("standard selection: %d of %d boxes of %dx%d on a %dx%d map",
              len(picks), n, search.ww, search.wh, search.shape[1], search.shape[0])
    return picks


class StandardSearch:
    """Standard selection one pick at a time, window sums computed once and reused across picks.

    :meth:`take` returns the best free window (as :func:`select_standard` would pick next) and blocks
    it; :meth:`block` blocks a box taken elsewhere (say, from another class's map), so several maps
    can share a budget without summing their windows again for every pick.
    """

    def __init__(self, score_map: np.ndarray, size: int, labeled: Iterable[Box] = (), expected: int = 1):
        size, _ = check_size_n(size, 0)
        m, lo = _clean_map_low(score_map)  # the search takes the maximum from its block maxima
        self.shape = m.shape
        height, width = m.shape
        self.wh, self.ww = min(size, height), min(size, width)
        self.search = WindowSearch(m, self.wh, self.ww, lo, expected) if m.size else None
        self.blocked = cover_cells(box_array(labeled))
        self.taken: list[Region] = []
        if self.search is not None:
            for bx, by, bw, bh in self.blocked:
                self.search.suppress(int(bx), int(by), int(bw), int(bh))

    def take(self) -> Region | None:
        """The best free window with a positive sum, now blocked; None when there is none."""
        found = self.search.best() if self.search is not None else None
        if found is None:
            return None
        pick = Region(found[0], found[1], self.ww, self.wh)
        self.search.suppress(*pick)
        self.taken.append(pick)
        return pick

    def block(self, box: Box) -> None:
        """No later pick overlaps ``box`` (map cells; fractional boxes block every cell they touch)."""
        for bx, by, bw, bh in cover_cells(box_array([box])):
            if self.search is not None:
                self.search.suppress(int(bx), int(by), int(bw), int(bh))
            self.blocked = np.vstack([self.blocked, np.array([[bx, by, bw, bh]], self.blocked.dtype)])

    def verify(self) -> None:
        """Check the picks so far against the invariants (:func:`verify_picks`): inside the map, not
        overlapping each other, labeled or blocked boxes."""
        verify_picks(self.taken, self.blocked, self.shape)

# ---------------------------------------------------------------------------------------- internals

def check_size_n(size: int, n: int) -> tuple[int, int]:
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer (cells), got {size!r}")
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return int(size), int(n)


def clean_map(score_map: np.ndarray) -> np.ndarray:
    """The map as a float32/float64 2-D array with NaN as 0 (a copy only when NaN must go)."""
    return _clean_map_range(score_map)[0]


def _clean_map_range(score_map: np.ndarray) -> tuple[np.ndarray, float, float]:
    """:func:`clean_map` and the map's minimum and maximum (0, 0 for an empty map)."""
    m, lo = _clean_map_low(score_map)
    if m.size == 0:
        return m, 0.0, 0.0
    hi = float(m.max())
    if hi == np.inf:
        raise ValueError("a score map must not hold infinite values")
    return m, lo, hi


def _clean_map_low(score_map: np.ndarray) -> tuple[np.ndarray, float]:
    """:func:`clean_map` and the map's minimum (0 for an empty map), checked for NaN and -inf in one pass
    over the values (min propagates NaN); +inf is left to whoever takes the maximum."""
    m = np.asarray(score_map)
    if m.ndim != 2:
        raise ValueError(f"a score map must be 2-D, got shape {m.shape}")
    if m.dtype.kind in "biu":
        m = m.astype(np.float64)
    elif m.dtype.kind != "f":
        raise ValueError(f"a score map must be real-valued, got dtype {m.dtype}")
    elif m.dtype.itemsize < 4:
        m = m.astype(np.float32)
    elif m.dtype.itemsize > 8:
        m = m.astype(np.float64)
    if m.size == 0:
        return m, 0.0
    lo = m.min()
    if np.isnan(lo):
        m = np.where(np.isnan(m), m.dtype.type(0), m)
        lo = m.min()
    if lo == -np.inf:
        raise ValueError("a score map must not hold infinite values")
    return m, float(lo)


def box_array(boxes: Iterable[Box] | np.ndarray) -> np.ndarray:
    """Boxes as a (k, 4) float64 array, validated (w, h >= 0, finite)."""
    arr = np.asarray(boxes if isinstance(boxes, np.ndarray) else list(boxes), dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be (x, y, w, h) quadruples, got an array of shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr[:, 2:] < 0).any():
        raise ValueError("boxes must be finite with w, h >= 0")
    return arr


def cover_cells(arr: np.ndarray, drop_empty: bool = True) -> np.ndarray:
    """Integer boxes covering every cell the (possibly fractional) boxes touch (empty stay empty)."""
    empty = (arr[:, 2] <= 0) | (arr[:, 3] <= 0)
    x0, y0 = np.floor(arr[:, 0]), np.floor(arr[:, 1])
    x1, y1 = np.ceil(arr[:, 0] + arr[:, 2]), np.ceil(arr[:, 1] + arr[:, 3])
    out = np.stack([x0, y0, np.where(empty, 0, x1 - x0), np.where(empty, 0, y1 - y0)], axis=1)
    return out[~empty].astype(np.int64) if drop_empty else out.astype(np.int64)


def _cumsum_rows_inplace(a: np.ndarray) -> None:
    """Cumulative sum down the rows, in place (numpy's axis-0 cumsum is ~5x slower than this loop)."""
    for i in range(1, a.shape[0]):
        np.add(a[i - 1], a[i], out=a[i])


def verify_picks(picks: list[Region], blocked: np.ndarray, shape: tuple[int, int]) -> None:
    """Assert the selection's invariants (cheap: n × (n + labeled) box tests); a failure is a bug."""
    height, width = shape
    others = blocked
    for pick in picks:
        inside = pick.x >= 0 and pick.y >= 0 and pick.x + pick.w <= width and pick.y + pick.h <= height
        if not inside or pick.w < 1 or pick.h < 1 or overlap_mask(pick, others).any():
            raise AssertionError(f"selected box {pick} is outside the map or overlaps another")
        others = np.vstack([others, np.asarray(pick, dtype=others.dtype)[None]])
