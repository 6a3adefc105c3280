"""The best free window of a score map, found exactly without summing every window.

Standard selection (:func:`alkit.selection.regions.select_standard`) needs, pick after pick, the
``wh × ww`` window with the highest sum among those that overlap nothing taken or labeled. Summing
all windows of a 2000 × 2000 map costs about as much as a box filter of the whole map; most of that
work is wasted, since only windows near the best ones can win. :class:`WindowSearch` therefore
bounds first and sums later:

* Window origins are grouped into ``BLOCK × BLOCK`` origin blocks, and each gets an upper bound of
  its windows' sums from the map's block sums and maxima
  (:func:`alkit.selection.window_bounds.origin_block_bounds`). On a smooth map it exceeds the best
  window of the block by a fraction of a percent.
* Exact window sums (the fixed-point arithmetic documented in :mod:`alkit.selection.regions`:
  :func:`window_sums`, or :func:`rect_window_sums` through an int64 integral image, the same
  integers) are computed only for origin blocks whose bound reaches the best exact sum found so far,
  as rectangles around connected groups of such blocks, and kept: later picks reuse them (a pick only
  marks the windows it suppresses). The first round, before any exact sum is known, takes every block
  whose bound reaches a guess of the last pick's sum (greedy selection on the block lattice), so that
  one round usually serves every pick. When the bounds prune little (a flat map), or the rectangles
  summed would cost more than summing the whole map (many small groups on a rough map: each rectangle
  has a fixed cost and reads the window's reach past it again), the whole map is summed once, which is
  what the straightforward algorithm always does; many small groups of one round are summed as their
  common bounding rectangle where that is cheaper.

Since every window that could beat or tie the best one is summed exactly, the picks, ties included
(smallest y, then smallest x), are those of summing every window.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.ndimage as ndi

from alkit.selection.window_bounds import BLOCK, block_maxima, origin_block_bounds

SMALL_BLOCKS = 64  # maps with at most this many origin blocks are summed whole at once
DENSE_SHARE = 0.25  # once this share of the origin blocks is needed, sum the whole map at once
TILE = 1  # needed blocks in neighbouring tiles of TILE × TILE blocks are summed in one rectangle
RECT_CELLS = 1 << 20  # rectangles up to this many cells are summed through one int64 integral image
PREFETCH = 0.01  # also sum blocks whose bound is this fraction below the best sum: later picks need them
#: the fixed cost of summing one more rectangle, in map cells' worth of summing (about 50 µs against 5 ns
#: a cell): many small groups are summed as their common bounding rectangle when that is cheaper, and once
#: the rectangles summed would cost more than summing the whole map, the whole map is summed instead
RECT_COST = 10_000


def fixed_point_exponent(amax: float, width: int, wh: int, ww: int) -> int:
    """The exponent ``e`` with ``amax · 2**e · cells < 2**52``, ``cells = max(width, (wh+2)·ww)``: the
    largest partial sum :func:`window_sums` forms stays exact in float64."""
    cells = max(width, (wh + 2) * ww)
    return 52 - math.frexp(amax)[1] - cells.bit_length()


def window_sums(m: np.ndarray, wh: int, ww: int, exponent: int, band: int = 32) -> np.ndarray:
    """Exact sums of all wh × ww windows of ``m``, indexed by origin (y, x), in steps of 2**-exponent.

    The map is rounded to multiples of 2**-exponent (:func:`fixed_point_exponent` keeps every partial
    sum under 2**52 steps, so float64 adds these integers exactly). Rows are processed in bands of
    ``band`` rows whose intermediates stay in cache: each band is scaled, rounded and turned into row
    window sums (a cumsum along the row), and the running column sums advance as far as the rows done
    so far allow. The output buffer is the only large allocation: the row sums of map row r go to its
    row r + 1, and the window sums of origin row i then overwrite row i, computed from row i - 1 (the
    previous window), row i (map row i - 1, leaving) and row i + wh (map row i + wh - 1, entering).
    """
    height, width = m.shape
    oh, ow = height - wh + 1, width - ww + 1
    out = np.empty((height + 1, ow))
    scaled = np.empty((min(band, height), width))
    prefix = np.zeros((min(band, height), width + 1))
    done = 0  # origin rows whose window sums are final
    for a in range(0, height, band):
        b = min(a + band, height)
        s, p = scaled[:b - a], prefix[:b - a]
        if -1000 <= exponent <= 1000:  # multiplying by an exact power of two is exact, and faster
            np.multiply(m[a:b], math.ldexp(1.0, exponent), out=s, dtype=np.float64)
        else:
            np.ldexp(m[a:b], exponent, out=s, dtype=np.float64)
        np.rint(s, out=s)
        np.cumsum(s, axis=1, out=p[:, 1:])
        np.subtract(p[:, ww:], p[:, :ow], out=out[a + 1:b + 1])  # row sums of rows a .. b-1
        if done == 0 and b >= wh:
            np.sum(out[1:wh + 1], axis=0, out=out[0])
            done = 1
        while 0 < done < oh and done + wh <= b:  # origin row i needs the row sums of rows < i + wh
            i = done
            np.subtract(out[i + wh], out[i], out=out[i])  # row i+wh-1 enters, row i-1 leaves
            np.add(out[i], out[i - 1], out=out[i])
            done += 1
    return out[:oh]


def rect_window_sums(m: np.ndarray, wh: int, ww: int, exponent: int) -> np.ndarray:
    """:func:`window_sums` for a small map, through one int64 integral image (a few numpy calls, no
    loop over rows). Integer additions wrap around modulo 2**64, and every window sum is below 2**52
    steps, so the differences of the wrapped table are exact all the same."""
    height, width = m.shape
    if -1000 <= exponent <= 1000:
        scaled = np.multiply(m, math.ldexp(1.0, exponent), dtype=np.float64)
    else:
        scaled = np.ldexp(m, exponent, dtype=np.float64)
    table = np.zeros((height + 1, width + 1), np.int64)
    np.cumsum(np.rint(scaled, out=scaled).astype(np.int64), axis=1, out=table[1:, 1:])
    np.cumsum(table, axis=0, out=table)
    sums = table[wh:, ww:] - table[:-wh, ww:] - table[wh:, :-ww] + table[:-wh, :-ww]
    return sums.astype(np.float64)


_EIGHT = np.ones((3, 3), bool)


class WindowSearch:
    """The best free ``wh × ww`` window of a cleaned map (NaN-free, minimum ``lo`` > -inf), pick after pick.

    :meth:`best` returns the origin of the window with the highest exact sum among those not
    suppressed (ties: smallest y, then x), or None when none has a positive sum; :meth:`suppress`
    takes out every window overlapping a box. Exact sums, once computed, are kept for later picks.
    Raises ``ValueError`` when the map holds +inf (its maximum comes from the block maxima, so that
    the caller's cleaning needs one pass over the map, not two).
    """

    def __init__(self, m: np.ndarray, wh: int, ww: int, lo: float, expected: int = 1):
        self.m, self.wh, self.ww = m, wh, ww
        self.expected = max(int(expected), 1)  # picks likely asked for: how far the first round reaches
        height, width = m.shape
        self.oh, self.ow = height - wh + 1, width - ww + 1
        self.rects: list[tuple[int, int, int, int]] = []  # suppressed origin ranges (y0, y1, x0, x1)
        b = BLOCK
        maxima = block_maxima(m, b)
        hi = float(maxima.max())
        if hi == np.inf:
            raise ValueError("a score map must not hold infinite values")
        self.nothing = not hi > 0  # no positive cell: no window can have a positive sum
        if self.nothing:
            return
        self.exponent = fixed_point_exponent(max(-lo, hi), width, wh, ww)
        self.nbh, self.nbw = -(-self.oh // b), -(-self.ow // b)
        self.exact: list[ExactSums] = []  # the rectangles of origin blocks summed so far
        self.owner = np.full((self.nbh, self.nbw), -1, np.int32)  # which of them holds each block's sums
        self.blockmax = np.full((self.nbh, self.nbw), -np.inf)  # best free exact sum per done block
        self.rowmax = np.full(self.nbh, -np.inf)  # the best of each row of blocks
        self.dead = np.zeros((self.nbh, self.nbw), bool)  # every origin of the block suppressed
        self.rounds = 0  # rectangles summed so far
        self.spent = 0  # their cost (:meth:`_cost`)
        self.level = np.inf  # every block whose bound reaches this level is in ``candidates``
        self.candidates = np.zeros(0, np.int64)  # flat indices of origin blocks
        if self.nbh * self.nbw <= SMALL_BLOCKS:
            self.bound = np.full((self.nbh, self.nbw), np.inf)
            self._compute_all()
        else:
            self.bound = origin_block_bounds(m, maxima, self.wh, self.ww, (self.nbh, self.nbw), self.exponent,
                                             max(-lo, hi))

    def _first_threshold(self) -> float:
        """A guess (in steps) of the sum of the ``expected``-th pick: greedy selection on the block lattice
        by the bounds. Only the amount of work of the first round depends on it, never the picks."""
        b = BLOCK
        sums = self.bound.copy()
        for y0, y1, x0, x1 in self.rects:  # origin blocks whose first origin is suppressed
            sums[-(-y0 // b):-(-y1 // b), -(-x0 // b):-(-x1 // b)] = -np.inf
        ry, rx = -(-self.wh // b), -(-self.ww // b)  # lattice windows this far apart overlap
        value = -np.inf
        for _ in range(self.expected):
            i, j = divmod(int(np.argmax(sums)), sums.shape[1])
            if not sums[i, j] > 0:
                break
            value = float(sums[i, j])
            sums[max(i - ry + 1, 0):i + ry, max(j - rx + 1, 0):j + rx] = -np.inf
        return value

    # ------------------------------------------------------------------------------------- picks

    @property
    def done(self) -> np.ndarray:
        """Which origin blocks have their exact sums."""
        return self.owner >= 0

    def best(self) -> tuple[int, int] | None:
        """``(x, y)`` of the best free window with a positive sum, or None."""
        if self.nothing:
            return None
        while True:
            top = float(self.rowmax.max())
            if self.rounds == 0:  # no exact sum yet: every block that may beat the guessed last pick
                want = self._first_threshold() * (1 - PREFETCH)
            else:  # every block that may beat the best so far, and (prefetch) a little below it
                want = top * (1 - PREFETCH)
            want = max(want, 0.0)  # no window with a sum <= 0 is ever taken
            if want < self.level:  # widen the candidates (rarely: a full pass over the bounds)
                self.level = want * (1 - PREFETCH)
                self.candidates = np.flatnonzero(self.bound.ravel() >= self.level)
                if len(self.candidates) > DENSE_SHARE * self.bound.size:
                    self._compute_all()
                    continue
            c = self.candidates
            c = c[(self.owner.ravel()[c] < 0) & ~self.dead.ravel()[c]]
            self.candidates = c  # done and dead blocks never come back
            need = c[self.bound.ravel()[c] >= want]
            if len(need) == 0 and self.rounds == 0 and len(c):  # the guess was too high
                need = c[[int(np.argmax(self.bound.ravel()[c]))]]
            if len(need) == 0:
                break
            self._compute(need)
        top = float(self.rowmax.max())
        if not top > 0:
            return None
        i = int(np.argmax(self.rowmax))  # block row of the smallest y holding the best sum
        b = BLOCK
        found = []
        for k in np.unique(self.owner[i, self.blockmax[i] == top]):  # the rectangles holding them
            r = self.exact[k]
            mine = (self.owner[i, r.bj0:r.bj1] == k) & (self.blockmax[i, r.bj0:r.bj1] == top)
            strip = r.sums[(i - r.bi0) * b:(i - r.bi0 + 1) * b]
            hit = (strip == top) & np.repeat(mine, b)[None, :strip.shape[1]]
            y, x = divmod(int(np.argmax(hit.ravel())), strip.shape[1])
            found.append((i * b + y, r.bj0 * b + x))
        y, x = min(found)  # ties: the smallest y, then x
        return x, y

    def suppress(self, bx: int, by: int, bw: int, bh: int) -> None:
        """Take out every window that overlaps the box ``(bx, by, bw, bh)`` (map cells, integers)."""
        y0, y1 = max(by - self.wh + 1, 0), min(by + bh, self.oh)
        x0, x1 = max(bx - self.ww + 1, 0), min(bx + bw, self.ow)
        if self.nothing or not (y0 < y1 and x0 < x1):
            return
        self.rects.append((y0, y1, x0, x1))
        b = BLOCK
        bi0, bi1, bj0, bj1 = y0 // b, -(-y1 // b), x0 // b, -(-x1 // b)
        for k in np.unique(self.owner[bi0:bi1, bj0:bj1]):
            if k >= 0:
                self.exact[k].suppress(y0, y1, x0, x1)
        self._refresh(bi0, bi1, bj0, bj1)
        # blocks whose every origin is suppressed: [i·b, min(i·b + b, oh)) inside [y0, y1)
        fi = [i for i in range(bi0, bi1) if i * b >= y0 and min(i * b + b, self.oh) <= y1]
        fj = [j for j in range(bj0, bj1) if j * b >= x0 and min(j * b + b, self.ow) <= x1]
        if fi and fj:
            self.dead[fi[0]:fi[-1] + 1, fj[0]:fj[-1] + 1] = True
            self.blockmax[fi[0]:fi[-1] + 1, fj[0]:fj[-1] + 1] = -np.inf
            self.rowmax[fi[0]:fi[-1] + 1] = self.blockmax[fi[0]:fi[-1] + 1].max(axis=1)

    # --------------------------------------------------------------------------------- internals

    def _compute_all(self) -> None:
        self._compute_rect(0, self.nbh, 0, self.nbw)
        self.level, self.candidates = -np.inf, np.zeros(0, np.int64)  # nothing is left to sum

    def _compute(self, flat: np.ndarray) -> None:
        """Exact sums for the bounding rectangle of every group of needed origin blocks (flat indices)."""
        rows, cols = np.divmod(flat, self.nbw)
        r0, c0 = int(rows.min()), int(cols.min())
        need = np.zeros((int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1), bool)
        need[rows - r0, cols - c0] = True
        t = TILE  # groups in neighbouring tiles of TILE × TILE blocks share a rectangle: fewer, larger ones
        nh, nw = need.shape
        if t > 1:
            padded = np.zeros((-(-nh // t) * t, -(-nw // t) * t), bool)
            padded[:nh, :nw] = need
            tiles = padded.reshape(len(padded) // t, t, padded.shape[1] // t, t).any(axis=(1, 3))
            labels, _ = ndi.label(tiles, _EIGHT)
            labels = np.repeat(np.repeat(labels, t, axis=0), t, axis=1)[:nh, :nw] * need
        else:
            labels, _ = ndi.label(need, _EIGHT)
        groups = [found for found in ndi.find_objects(labels) if found is not None]
        separate = sum(self._cost(g[0].stop - g[0].start, g[1].stop - g[1].start) for g in groups)
        joined = self._cost(nh, nw)
        if len(groups) > 1 and joined < separate:  # one rectangle is cheaper
            groups, separate = [(slice(0, nh), slice(0, nw))], joined
        if self.spent + separate > self._cost(self.nbh, self.nbw):  # past the cost of the whole map
            self._compute_all()
            return
        for found in groups:
            self._compute_rect(r0 + found[0].start, r0 + found[0].stop, c0 + found[1].start, c0 + found[1].stop)

    def _cost(self, blocks_high: int, blocks_wide: int) -> int:
        """What summing a rectangle of origin blocks costs: the map cells it reads (its origins and the
        window's reach past them) plus :data:`RECT_COST`."""
        return ((blocks_high * BLOCK + self.wh - 1) * (blocks_wide * BLOCK + self.ww - 1)) + RECT_COST

    def _compute_rect(self, bi0: int, bi1: int, bj0: int, bj1: int) -> None:
        """Exact sums of the origin blocks ``bi0 .. bi1-1 × bj0 .. bj1-1``, kept as one :class:`ExactSums`
        that owns these blocks from now on."""
        b = BLOCK
        self.rounds += 1
        self.spent += self._cost(bi1 - bi0, bj1 - bj0)
        oy0, oy1 = bi0 * b, min(bi1 * b, self.oh)
        ox0, ox1 = bj0 * b, min(bj1 * b, self.ow)
        sub = self.m[oy0:oy1 + self.wh - 1, ox0:ox1 + self.ww - 1]
        sums = rect_window_sums if sub.size <= RECT_CELLS else window_sums
        rect = ExactSums(bi0, bi1, bj0, bj1, sums(sub, self.wh, self.ww, self.exponent))
        for y0, y1, x0, x1 in self.rects:  # suppression applies to freshly summed origins too
            rect.suppress(y0, y1, x0, x1)
        self.owner[bi0:bi1, bj0:bj1] = len(self.exact)
        self.exact.append(rect)
        self._refresh(bi0, bi1, bj0, bj1)

    def _refresh(self, bi0: int, bi1: int, bj0: int, bj1: int) -> None:
        """Recompute the best free exact sum of the done blocks in a range of origin blocks."""
        b = BLOCK
        owner = self.owner[bi0:bi1, bj0:bj1]
        for k in np.unique(owner):
            if k < 0:
                continue
            r = self.exact[k]
            i0, i1, j0, j1 = max(bi0, r.bi0), min(bi1, r.bi1), max(bj0, r.bj0), min(bj1, r.bj1)
            sub = r.sums[(i0 - r.bi0) * b:(i1 - r.bi0) * b, (j0 - r.bj0) * b:(j1 - r.bj0) * b]
            best = block_maxima(sub, b)
            mine = owner[i0 - bi0:i1 - bi0, j0 - bj0:j1 - bj0] == k
            here = self.blockmax[i0:i1, j0:j1]
            here[mine] = best[mine]
        self.blockmax[bi0:bi1, bj0:bj1][self.dead[bi0:bi1, bj0:bj1]] = -np.inf
        self.rowmax[bi0:bi1] = self.blockmax[bi0:bi1].max(axis=1)


class ExactSums(NamedTuple):
    """Exact window sums (in steps) of the origins of origin blocks ``bi0 .. bi1-1 × bj0 .. bj1-1``
    (``sums[y, x]`` for origin ``(bi0·BLOCK + y, bj0·BLOCK + x)``), -inf where suppressed."""

    bi0: int
    bi1: int
    bj0: int
    bj1: int
    sums: np.ndarray

    def suppress(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """-inf for the origins ``y0 .. y1-1 × x0 .. x1-1`` (map coordinates) that lie here."""
        oy, ox = self.bi0 * BLOCK, self.bj0 * BLOCK
        ya, yb = max(y0 - oy, 0), min(y1 - oy, self.sums.shape[0])
        xa, xb = max(x0 - ox, 0), min(x1 - ox, self.sums.shape[1])
        if ya < yb and xa < xb:
            self.sums[ya:yb, xa:xb] = -np.inf
