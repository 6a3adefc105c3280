"""The best free window of a score map, found exactly without summing every window.

Standard selection (:func:`alkit.selection.regions.select_standard`) needs, pick after pick, the
``wh × ww`` window with the highest sum among those that overlap nothing taken or labeled. Summing
all windows of a 2000 × 2000 map costs about as much as a box filter of the whole map; most of that
work is wasted, since only windows near the best ones can win. :class:`WindowSearch` therefore
bounds first and sums later:

* The map is cut into ``BLOCK × BLOCK`` cell blocks and the positive part of each block summed (one
  pass, float32 like the map). Window origins are grouped into blocks of the same size; every window
  whose origin lies in an origin block touches the same few map blocks, so the sum of their positive
  parts (plus a margin for rounding) bounds every such window from above.
* Exact window sums (the fixed-point arithmetic documented in :mod:`alkit.selection.regions`:
  :func:`window_sums`, or :func:`rect_window_sums` through an int64 integral image, the same
  integers) are computed only for origin blocks whose bound reaches the best exact sum found so far,
  as rectangles around connected groups of such blocks, and kept: later picks reuse them (a pick only
  marks the windows it suppresses). The first round, before any exact sum is known, takes every block
  whose bound reaches a guess of the last pick's sum (greedy selection on the block lattice), so that
  one round usually serves every pick. When the bounds prune little (a flat map), the whole map is
  summed once, which is what the straightforward algorithm always does.

Since every window that could beat or tie the best one is summed exactly, the picks, ties included
(smallest y, then smallest x), are those of summing every window.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage as ndi

BLOCK = 4  # cells per side of the blocks the bounds are computed on
SMALL_BLOCKS = 64  # maps with at most this many origin blocks are summed whole at once
DENSE_SHARE = 0.25  # once this share of the origin blocks is needed, sum the whole map at once
TILE = 1  # needed blocks in neighbouring tiles of TILE × TILE blocks are summed in one rectangle
RECT_CELLS = 1 << 20  # rectangles up to this many cells are summed through one int64 integral image
PREFETCH = 0.01  # also sum blocks whose bound is this fraction below the best sum: later picks need them
RELATIVE_SLACK = 1e-4  # float32 block sums err by far less than this; float64 box sums of them too


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


def run_sums(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Sums of ``k`` consecutive entries along ``axis`` (0 or 1 of a 2-D array; length ``n - k + 1``
    there), by doubling: sums of 1, 2, 4, ... entries, added along the binary digits of ``k``; O(log k)
    vector additions and no subtraction, so sums of non-negative numbers lose nothing to cancellation."""

    def cut(x: np.ndarray, lo: int, hi: int | None) -> np.ndarray:  # entries lo .. hi-1 along the axis
        return x[lo:hi] if axis == 0 else x[:, lo:hi]

    length = a.shape[axis] - k + 1
    out = None
    power, width, offset = a, 1, 0
    while k:
        if k & 1:
            piece = cut(power, offset, offset + length)
            out = piece.copy() if out is None else np.add(out, piece, out=out)
            offset += width
        k >>= 1
        if k:
            power = cut(power, 0, -width) + cut(power, width, None)
            width *= 2
    return out


def block_sums(a: np.ndarray, b: int) -> np.ndarray:
    """Sums of the ``b × b`` blocks of ``a`` (the last row and column of blocks may be partial)."""
    height, width = a.shape
    full_h, full_w = height // b * b, width // b * b
    rows = a[0:full_h:b].copy()  # strided adds of whole rows: faster than numpy's sum over an axis
    for k in range(1, b):
        rows += a[k:full_h:b]
    if full_h < height:
        rows = np.vstack([rows, a[full_h:].sum(axis=0, keepdims=True)])
    out = rows[:, 0:full_w:b].copy()  # strided adds: far faster than a sum over a short inner axis
    for k in range(1, b):
        out += rows[:, k:full_w:b]
    if full_w < width:
        out = np.hstack([out, rows[:, full_w:].sum(axis=1, keepdims=True)])
    return out


_EIGHT = np.ones((3, 3), bool)


class WindowSearch:
    """The best free ``wh × ww`` window of a cleaned map (NaN-free, finite), pick after pick.

    :meth:`best` returns the origin of the window with the highest exact sum among those not
    suppressed (ties: smallest y, then x), or None when none has a positive sum; :meth:`suppress`
    takes out every window overlapping a box. Exact sums, once computed, are kept for later picks.
    """

    def __init__(self, m: np.ndarray, wh: int, ww: int, lo: float, hi: float, expected: int = 1):
        self.m, self.wh, self.ww = m, wh, ww
        self.expected = max(int(expected), 1)  # picks likely asked for: how far the first round reaches
        height, width = m.shape
        self.oh, self.ow = height - wh + 1, width - ww + 1
        self.rects: list[tuple[int, int, int, int]] = []  # suppressed origin ranges (y0, y1, x0, x1)
        self.nothing = not hi > 0  # no positive cell: no window can have a positive sum
        if self.nothing:
            return
        self.exponent = fixed_point_exponent(max(-lo, hi), width, wh, ww)
        b = BLOCK
        self.nbh, self.nbw = -(-self.oh // b), -(-self.ow // b)
        self.scores = np.empty((self.oh, self.ow))  # exact sums; valid inside done blocks only
        self.blockmax = np.full((self.nbh, self.nbw), -np.inf)  # best free exact sum per done block
        self.rowmax = np.full(self.nbh, -np.inf)  # the best of each row of blocks
        self.done = np.zeros((self.nbh, self.nbw), bool)
        self.dead = np.zeros((self.nbh, self.nbw), bool)  # every origin of the block suppressed
        self.bound = self._bounds(m, lo)
        self.rounds = 0  # rectangles summed so far
        self.level = np.inf  # every block whose bound reaches this level is in ``candidates``
        self.candidates = np.zeros(0, np.int64)  # flat indices of origin blocks
        if self.nbh * self.nbw <= SMALL_BLOCKS:
            self._compute_all()

    def _bounds(self, m: np.ndarray, lo: float) -> np.ndarray:
        """Per origin block, an upper bound (in steps) of every window sum whose origin lies in it."""
        b = BLOCK
        positive = block_sums(m if lo >= 0 else np.maximum(m, 0), b).astype(np.float64)
        tbh, tbw = (b + self.wh - 2) // b + 1, (b + self.ww - 2) // b + 1  # map blocks a window group touches
        padded = np.zeros((self.nbh + tbh - 1, self.nbw + tbw - 1))
        rows, cols = min(len(positive), len(padded)), min(positive.shape[1], padded.shape[1])
        padded[:rows, :cols] = positive[:rows, :cols]
        touched = run_sums(run_sums(padded, tbh, 0), tbw, 1)  # (nbh, nbw): sums of non-negative numbers
        self._lattice = touched * ((self.wh // b) * (self.ww // b) / (tbh * tbw))  # ~ sums of lattice windows
        margin = 0.5 * tbh * tbw * b * b + 2.0  # rounding each touched cell to a step moves it by <= 1/2
        touched *= 1.0 + RELATIVE_SLACK
        touched = np.ldexp(touched, self.exponent)  # 2**exponent alone may overflow (tiny maps: exponent > 1023)
        touched += margin
        return touched

    def _first_threshold(self) -> float:
        """A guess (in steps) of the sum of the ``expected``-th pick: greedy selection on the block lattice
        from the bounds scaled to the window's area. Only the amount of work of the first round depends
        on it, never the picks."""
        b = BLOCK
        sums, self._lattice = self._lattice, None  # used once, changed in place
        for y0, y1, x0, x1 in self.rects:  # lattice origins of suppressed windows
            sums[-(-y0 // b):-(-y1 // b), -(-x0 // b):-(-x1 // b)] = -np.inf
        ry, rx = -(-self.wh // b), -(-self.ww // b)  # lattice windows this far apart overlap
        value = -np.inf
        for _ in range(self.expected):
            i, j = divmod(int(np.argmax(sums)), sums.shape[1])
            if not sums[i, j] > 0:
                break
            value = float(sums[i, j])
            sums[max(i - ry + 1, 0):i + ry, max(j - rx + 1, 0):j + rx] = -np.inf
        return float(np.ldexp(value, self.exponent))

    # ------------------------------------------------------------------------------------- picks

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
            c = c[~self.done.ravel()[c] & ~self.dead.ravel()[c]]
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
        strip = self.scores[i * b:(i + 1) * b]
        valid = np.repeat(self.done[i] & (self.blockmax[i] == top), b)[:self.ow]
        hit = (strip == top) & valid[None, :]
        y, x = divmod(int(np.argmax(hit.ravel())), self.ow)
        return x, i * b + y

    def suppress(self, bx: int, by: int, bw: int, bh: int) -> None:
        """Take out every window that overlaps the box ``(bx, by, bw, bh)`` (map cells, integers)."""
        y0, y1 = max(by - self.wh + 1, 0), min(by + bh, self.oh)
        x0, x1 = max(bx - self.ww + 1, 0), min(bx + bw, self.ow)
        if self.nothing or not (y0 < y1 and x0 < x1):
            return
        self.rects.append((y0, y1, x0, x1))
        self.scores[y0:y1, x0:x1] = -np.inf
        b = BLOCK
        bi0, bi1, bj0, bj1 = y0 // b, -(-y1 // b), x0 // b, -(-x1 // b)
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
        for found in ndi.find_objects(labels):
            if found is not None:
                self._compute_rect(r0 + found[0].start, r0 + found[0].stop, c0 + found[1].start,
                                   c0 + found[1].stop)

    def _compute_rect(self, bi0: int, bi1: int, bj0: int, bj1: int) -> None:
        b = BLOCK
        self.rounds += 1
        oy0, oy1 = bi0 * b, min(bi1 * b, self.oh)
        ox0, ox1 = bj0 * b, min(bj1 * b, self.ow)
        sub = self.m[oy0:oy1 + self.wh - 1, ox0:ox1 + self.ww - 1]
        sums = rect_window_sums if sub.size <= RECT_CELLS else window_sums
        self.scores[oy0:oy1, ox0:ox1] = sums(sub, self.wh, self.ww, self.exponent)
        for y0, y1, x0, x1 in self.rects:  # suppression applies to freshly summed origins too
            ya, yb, xa, xb = max(y0, oy0), min(y1, oy1), max(x0, ox0), min(x1, ox1)
            if ya < yb and xa < xb:
                self.scores[ya:yb, xa:xb] = -np.inf
        self.done[bi0:bi1, bj0:bj1] = True
        self._refresh(bi0, bi1, bj0, bj1)

    def _refresh(self, bi0: int, bi1: int, bj0: int, bj1: int) -> None:
        """Recompute the best free exact sum of the done blocks in a range of origin blocks."""
        b = BLOCK
        sub = self.scores[bi0 * b:min(bi1 * b, self.oh), bj0 * b:min(bj1 * b, self.ow)]
        best = np.maximum.reduceat(np.maximum.reduceat(sub, np.arange(0, len(sub), b), axis=0),
                                   np.arange(0, sub.shape[1], b), axis=1)
        done = self.done[bi0:bi1, bj0:bj1]
        self.blockmax[bi0:bi1, bj0:bj1] = np.where(done & ~self.dead[bi0:bi1, bj0:bj1], best, -np.inf)
        self.rowmax[bi0:bi1] = self.blockmax[bi0:bi1].max(axis=1)
