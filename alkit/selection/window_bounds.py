"""Upper bounds of window sums from block statistics, for :class:`alkit.selection.window_search.WindowSearch`.

The map is cut into ``BLOCK × BLOCK`` cell blocks; one pass per statistic gives each block's sum and
maximum. Window origins are grouped into origin blocks of the same size. Every window whose origin lies
in one origin block covers whole the same inner map blocks (their exact sums count) and, of the blocks
around them, a number of cells that is linear in the origin's offset inside its block along each axis
(each such cell is at most its block's maximum). So the bound is bilinear in the two offsets and its
largest value is taken at one of the four corner offsets: evaluated there (plus a margin for rounding),
it bounds every window of the origin block from above.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

BLOCK = 8  # cells per side of the blocks the bounds are computed on
RELATIVE_SLACK = 1e-4  # of a window full of the largest |value|: far above the float errors of the bounds


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


def block_reduce(a: np.ndarray, b: int, op: np.ufunc) -> np.ndarray:
    """``op`` (``np.add``, ``np.maximum``) over the ``b × b`` blocks of ``a`` (the last row and column of
    blocks may be partial). Rows first, through a reshape that puts a block's rows on their own axis
    (one pass over the map, no copy); then the columns of the b times smaller result by strided ops
    (numpy's reduction over a short inner axis is far slower)."""
    height, width = a.shape
    full_h, full_w = height // b * b, width // b * b
    rows = op.reduce(a[:full_h].reshape(full_h // b, b, width), axis=1)
    if full_h < height:
        rows = np.vstack([rows, op.reduce(a[full_h:], axis=0, keepdims=True)])
    out = rows[:, 0:full_w:b].copy()
    for k in range(1, b):
        op(out, rows[:, k:full_w:b], out=out)
    if full_w < width:
        out = np.hstack([out, op.reduce(rows[:, full_w:], axis=1, keepdims=True)])
    return out


def block_sums(a: np.ndarray, b: int) -> np.ndarray:
    """Sums of the ``b × b`` blocks of ``a`` (the last row and column of blocks may be partial)."""
    return block_reduce(a, b, np.add)


def block_maxima(a: np.ndarray, b: int) -> np.ndarray:
    """Maxima of the ``b × b`` blocks of ``a`` (the last row and column of blocks may be partial)."""
    return block_reduce(a, b, np.maximum)


def max_runs(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Maxima of ``k`` consecutive entries along ``axis`` (0 or 1; length ``n - k + 1`` there)."""
    length = a.shape[axis] - k + 1
    pieces = [a[s:s + length] if axis == 0 else a[:, s:s + length] for s in range(k)]
    out = pieces[0].copy()
    for piece in pieces[1:]:
        np.maximum(out, piece, out=out)
    return out


class Segment(NamedTuple):
    """Map blocks ``start .. start + length - 1`` (offsets from the origin block along one axis) and how
    many of their rows (or columns) a window covers: ``count + slope · d``, ``d`` the window origin's
    offset inside its origin block. ``whole``: every one of the blocks is covered whole by every window
    (the count is then per block); otherwise the cells covered are bounded by the blocks' maxima."""

    whole: bool
    start: int
    length: int
    count: int
    slope: int


def axis_segments(size: int, b: int) -> tuple[Segment, ...]:
    """How the windows of ``size`` cells whose origins share one block of ``b`` cover the map blocks along
    one axis. With ``size = q·b + r`` (q >= 1): block 0 loses the ``d`` cells before the origin, blocks
    1 .. q - 1 are covered whole, and ``r + d`` cells follow in block q (and q + 1 once they do not fit).
    A window shorter than a block covers ``size`` cells of blocks 0 (and 1)."""
    q, r = divmod(size, b)
    if q == 0:
        return (Segment(False, 0, 1 + (size + b - 2) // b, size, 0),)
    inner = (Segment(True, 1, q - 1, b, 0),) if q > 1 else ()
    return (Segment(False, 0, 1, b, -1), *inner, Segment(False, q, 1 + (r + b - 2) // b, r, 1))


def origin_block_bounds(m: np.ndarray, maxima: np.ndarray, wh: int, ww: int, n: tuple[int, int], exponent: int,
                        amax: float) -> np.ndarray:
    """Per origin block (``n``: rows × columns of ``BLOCK × BLOCK`` blocks of window origins), an upper bound
    in fixed-point steps (``2**exponent`` per unit) of the sum of every ``wh × ww`` window of ``m`` whose
    origin lies in it; ``maxima`` are ``m``'s block maxima, ``amax`` its largest ``|value|``.

    For origin offsets ``(dy, dx)`` inside the block, the bound is the sum, over pairs of a row and
    a column :class:`Segment`, of the cells covered times the largest block maximum there (block
    sums where both segments are covered whole). Maxima are taken before sums: a sum of maxima
    bounds a sum of cells, the converse does not. Each count is linear in dy or dx, so the bound
    is bilinear and its maximum over the block is at a corner offset. Errors: each cell is rounded
    to a step by at most 1/2; block sums in float32 err by below 2·BLOCK·2**-24 of the sum of
    |cells|; the float64 steps below by about 2**-53 of 2**52 each: all far below the margin.
    """
    b, e = BLOCK, exponent
    segments = (axis_segments(wh, b), axis_segments(ww, b))
    shape = tuple(n[a] + max(s.start + s.length - 1 for s in segments[a]) for a in (0, 1))

    def in_steps(blocks: np.ndarray, exponent: int) -> np.ndarray:
        """Block statistics times 2**exponent (ldexp: 2**e alone may overflow), float32, padded to
        ``shape`` (blocks beyond the map are never covered: any finite value does)."""
        scaled = np.ldexp(blocks, exponent)  # exact; below 2**52 steps, far from float32's limits
        out = np.zeros(shape, np.float32)
        rows, cols = min(len(blocks), shape[0]), min(blocks.shape[1], shape[1])
        out[:rows, :cols] = scaled[:rows, :cols]
        return out

    with np.errstate(over="ignore"):
        sums = block_sums(m, b)
    if np.isfinite(sums).all():
        whole_sums = in_steps(sums, e)
    else:  # float32 sums of values near float32's limit overflow; in steps they cannot
        whole_sums = in_steps(block_sums(np.ldexp(m, e, dtype=np.float64), b), 0)
    block_max = in_steps(maxima, e)

    cache: dict[tuple, np.ndarray] = {}

    def values(rs: Segment, cs: Segment) -> np.ndarray:
        """Per origin block: the sum of block sums (both segments whole), else the sum over the
        whole segment's blocks of the largest maximum across the other segment's blocks."""
        key = (rs.whole, rs.length, cs.whole, cs.length)
        if key not in cache:
            if rs.whole and cs.whole:
                arr = run_sums(run_sums(whole_sums, rs.length, 0), cs.length, 1)
            else:
                arr = block_max
                for axis, s in ((0, rs), (1, cs)):
                    if not s.whole and s.length > 1:
                        arr = max_runs(arr, s.length, axis)
                for axis, s in ((0, rs), (1, cs)):
                    if s.whole:
                        arr = run_sums(arr, s.length, axis)
            cache[key] = arr
        return cache[key][rs.start:rs.start + n[0], cs.start:cs.start + n[1]]

    # the bound as poly[i][j] · dy**i · dx**j: each term's weight (count + slope·dy)(count + slope·dx)
    poly = [[np.zeros(n, np.float32) for _ in range(2)] for _ in range(2)]
    for rs in segments[0]:
        for cs in segments[1]:
            if rs.whole and cs.whole:
                weights = {(0, 0): 1}
            else:
                weights = {(i, j): wr * wc for i, wr in enumerate((rs.count, rs.slope))
                           for j, wc in enumerate((cs.count, cs.slope)) if wr * wc}
            for (i, j), weight in weights.items():
                poly[i][j] += np.float32(weight) * values(rs, cs)
    bound = None
    for dy in (0, b - 1):  # the corners of the block of origins
        for dx in (0, b - 1):
            total = poly[0][0] + (dy * poly[1][0] + dx * poly[0][1] + dy * dx * poly[1][1])
            bound = total if bound is None else np.maximum(bound, total, out=bound)
    cells = wh * ww
    tiny = float(np.finfo(m.dtype).smallest_subnormal)  # float32 sums of subnormals err by this much
    margin = cells * (RELATIVE_SLACK * math.ldexp(amax, e) + math.ldexp(tiny, e) + 0.5) + 2.0
    return bound.astype(np.float64) + margin
