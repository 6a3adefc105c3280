"""Exact share of every grid cell covered by a geometry or a mask, and points counted per cell.

These are the cell-level labels an oracle hands to the loop, so they must not drift with cell size:
a small tumour covering a few 256-px cells must keep its area.

**Geometries** (:func:`geometry_cell_fractions`). The grid's cell edges (every cell start and end,
so overlapping cells with ``stride < patch`` and fractional level-0 cell sizes are handled) cut the
plane into rectangular *atoms*; each cell is a block of atoms. Per atom:

1. atoms crossed by the geometry's boundary are found arithmetically from the boundary's segments
   (segmentized to at most half a cell, each segment's bounding box mapped to atom indices with
   ``searchsorted``; conservative: an atom a segment only touches is included);
2. those boundary atoms get their exact area ``area(geometry ∩ atom)`` from shapely, clipped in
   three vectorised stages (the geometry to the atom row, that strip to blocks of 8 atoms, the block
   to the atom) so no stage intersects a box with the whole geometry more than once per row;
3. every other atom is entirely inside or entirely outside: one vectorised point-in-polygon test of
   its centre (``shapely.contains_xy`` on the prepared geometry) decides; this is a rasterisation
   at atom resolution that is exact because no boundary passes through these atoms.

Cells then sum their atoms through an integral image. The result is exact up to floating point
(relative error ~1e-12 against shapely's own area on the CAMELYON16 polygons); there is no Python
loop over cells and the work grows with the boundary's length, not the slide's area: a 100k × 100k
px slide with 256-px cells is ~150k atoms.

**Masks** (:func:`mask_box_areas`): a mask pixel ``(r, c)`` at downsample ``d`` covers level-0
``[c·d, (c+1)·d) × [r·d, (r+1)·d)``; a box's covered area is summed exactly, partial border pixels
weighted by their overlap (nine integral-image lookups per box, vectorised over boxes).

**Points** (:func:`point_cell_counts`): points are binned into atoms (half-open, like boxes) and
summed per cell, so a point in the overlap of two cells counts in both. Cell edges (and points)
are compared after rounding to 1e-6 level-0 px, so ``c · stride0 + size0`` and ``(c + 1) · stride0``
are the same edge.
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from alkit.wsi.grid import PatchGrid

__all__ = ["geometry_cell_fractions", "geometry_box_areas", "mask_box_areas", "mask_cell_fractions",
           "point_cell_counts", "points_in_box"]

_DECIMALS = 6  # cell edges are compared after rounding to 1e-6 level-0 px (c·stride0 + size0 vs (c+1)·stride0)
_BLOCK = 8     # atoms per block in the middle clipping stage


def _axis(n: int, stride0: float, size0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct cell edges along one axis and, per cell, its atom span ``[a0, a1)``."""
    starts = np.round(np.arange(n) * stride0, _DECIMALS)
    ends = np.round(np.arange(n) * stride0 + size0, _DECIMALS)
    edges = np.unique(np.concatenate([starts, ends]))
    return edges, np.searchsorted(edges, starts), np.searchsorted(edges, ends)


def _lattice(grid: PatchGrid) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    rows, cols = grid.shape
    xs, c0, c1 = _axis(cols, grid.stride0, grid.size0)
    ys, r0, r1 = _axis(rows, grid.stride0, grid.size0)
    return xs, ys, (r0, r1, c0, c1)


def _cell_sums(atoms: np.ndarray, spans: tuple[np.ndarray, ...]) -> np.ndarray:
    """Sum of ``atoms`` (ny, nx) over each cell's atom block -> (rows, cols)."""
    r0, r1, c0, c1 = spans
    integral = np.zeros((atoms.shape[0] + 1, atoms.shape[1] + 1), atoms.dtype)
    np.cumsum(np.cumsum(atoms, axis=0), axis=1, out=integral[1:, 1:])
    r0, r1 = r0[:, None], r1[:, None]
    c0, c1 = c0[None, :], c1[None, :]
    return integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]


def _span(edges: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last atom index (inclusive) whose closed interval meets ``[lo, hi]``."""
    first = np.searchsorted(edges, lo, "left") - 1
    last = np.searchsorted(edges, hi, "right") - 1
    return np.clip(first, 0, len(edges) - 2), np.clip(last, -1, len(edges) - 2)


def _boundary_atoms(geom: BaseGeometry, xs: np.ndarray, ys: np.ndarray, max_len: float) -> np.ndarray:
    """Linear indices (row-major over the ``xs``/``ys`` atoms) of atoms the boundary may cross."""
    lines = shapely.get_parts(shapely.segmentize(shapely.boundary(geom), max_len))
    coords, index = shapely.get_coordinates(lines, return_index=True)
    if len(coords) < 2:
        return np.zeros(0, np.int64)
    same = index[:-1] == index[1:]
    a, b = coords[:-1][same], coords[1:][same]
    fx, lx = _span(xs, np.minimum(a[:, 0], b[:, 0]), np.maximum(a[:, 0], b[:, 0]))
    fy, ly = _span(ys, np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1]))
    nx, ny = np.maximum(lx - fx + 1, 0), np.maximum(ly - fy + 1, 0)
    count = nx * ny
    seg = np.repeat(np.arange(len(count)), count)
    k = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    ix = fx[seg] + k % nx[seg]
    iy = fy[seg] + k // nx[seg]
    return np.unique(iy * (len(xs) - 1) + ix)


def _exact_areas(geom: BaseGeometry, xs: np.ndarray, ys: np.ndarray, ix: np.ndarray,
                 iy: np.ndarray) -> np.ndarray:
    """``area(geom ∩ atom)`` for atoms ``(iy, ix)``: clip to rows, then blocks, then atoms."""
    rows, row_of = np.unique(iy, return_inverse=True)
    strips = shapely.intersection(geom, shapely.box(xs[0], ys[rows], xs[-1], ys[rows + 1]))
    block = ix // _BLOCK
    keys, block_of = np.unique(row_of * (block.max() + 1) + block, return_inverse=True)
    k_row, k_block = np.divmod(keys, block.max() + 1)
    bx0 = xs[k_block * _BLOCK]
    bx1 = xs[np.minimum((k_block + 1) * _BLOCK, len(xs) - 1)]
    blocks = shapely.intersection(strips[k_row], shapely.box(bx0, ys[rows[k_row]], bx1, ys[rows[k_row] + 1]))
    atoms = shapely.box(xs[ix], ys[iy], xs[ix + 1], ys[iy + 1])
    return shapely.area(shapely.intersection(blocks[block_of], atoms))


def _atom_areas(geom: BaseGeometry, xs: np.ndarray, ys: np.ndarray, max_len: float) -> np.ndarray:
    """Area of ``geom`` inside every atom of the lattice ``xs`` × ``ys`` -> (len(ys)-1, len(xs)-1)."""
    out = np.zeros((len(ys) - 1, len(xs) - 1), np.float64)
    if geom.is_empty or out.size == 0:
        return out
    minx, miny, maxx, maxy = geom.bounds
    # atoms [i0, i1) x [j0, j1) overlap the geometry's bounding box; all others stay 0
    i0 = max(int(np.searchsorted(xs, minx, "right")) - 1, 0)
    i1 = min(int(np.searchsorted(xs, maxx, "left")), len(xs) - 1)
    j0 = max(int(np.searchsorted(ys, miny, "right")) - 1, 0)
    j1 = min(int(np.searchsorted(ys, maxy, "left")), len(ys) - 1)
    if i0 >= i1 or j0 >= j1:
        return out
    sx, sy = xs[i0:i1 + 1], ys[j0:j1 + 1]
    sub = out[j0:j1, i0:i1]
    # 3. atoms without boundary: the centre decides (computed for all, overwritten for boundary atoms)
    shapely.prepare(geom)
    cx, cy = (sx[:-1] + sx[1:]) / 2, (sy[:-1] + sy[1:]) / 2
    inside = shapely.contains_xy(geom, cx[None, :], cy[:, None])
    sub[inside] = (np.diff(sy)[:, None] * np.diff(sx)[None, :])[inside]
    # 1.-2. boundary atoms: exact shapely areas
    lin = _boundary_atoms(geom, sx, sy, max_len)
    if lin.size:
        iy, ix = np.divmod(lin, len(sx) - 1)
        sub[iy, ix] = _exact_areas(geom, sx, sy, ix, iy)
    return out


def geometry_cell_fractions(geom: BaseGeometry | None, grid: PatchGrid) -> np.ndarray:
    """Share of each cell of ``grid`` covered by the polygonal ``geom`` (level-0 px): (rows, cols) float32.

    Exact up to floating point (see the module docstring for how); ``None`` or empty -> zeros.
    """
    rows, cols = grid.shape
    if geom is None or geom.is_empty:
        return np.zeros((rows, cols), np.float32)
    xs, ys, spans = _lattice(grid)
    atoms = _atom_areas(geom, xs, ys, max_len=max(min(grid.size0, grid.stride0) / 2, 1e-3))
    frac = _cell_sums(atoms, spans) / (grid.size0 * grid.size0)
    return np.clip(frac, 0.0, 1.0).astype(np.float32)


def geometry_box_areas(geom: BaseGeometry | None, boxes: np.ndarray) -> np.ndarray:
    """Exact area (level-0 px²) of ``geom`` inside each level-0 box ``(x, y, w, h)`` of ``boxes`` (n, 4)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if geom is None or geom.is_empty or not len(boxes):
        return np.zeros(len(boxes), np.float64)
    rects = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3])
    return shapely.area(shapely.intersection(geom, rects))


def _pieces(u0: np.ndarray, u1: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """An interval ``[u0, u1)`` in pixel units as three (start, stop, weight) pixel ranges:
    the first partial pixel, the full pixels, the last partial pixel (clipped to ``[0, n]``)."""
    u0, u1 = np.clip(u0, 0, n), np.clip(u1, 0, n)
    u1 = np.maximum(u1, u0)
    k0, k1 = np.floor(u0), np.floor(u1)
    single = k1 <= k0
    w_first = np.minimum(k0 + 1, u1) - u0
    w_last = np.where(single, 0.0, u1 - k1)
    full_stop = np.maximum(k1, k0 + 1)
    as_int = lambda a: np.clip(a, 0, n).astype(np.int64)  # noqa: E731
    return [(as_int(k0), as_int(k0 + 1), w_first),
            (as_int(k0 + 1), as_int(full_stop), np.ones_like(u0)),
            (as_int(k1), as_int(k1 + 1), w_last)]


def mask_box_areas(mask: np.ndarray, downsample: float, boxes: np.ndarray) -> np.ndarray:
    """Exact level-0 area (px²) of ``mask`` (bool, one pixel = ``downsample`` level-0 px) inside each
    box ``(x, y, w, h)`` of ``boxes`` (n, 4); parts of a box outside the mask count as empty."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=integral[1:, 1:])
    d = float(downsample)
    xp = _pieces(boxes[:, 0] / d, (boxes[:, 0] + boxes[:, 2]) / d, w)
    yp = _pieces(boxes[:, 1] / d, (boxes[:, 1] + boxes[:, 3]) / d, h)
    total = np.zeros(len(boxes), np.float64)
    for r0, r1, wy in yp:
        for c0, c1, wx in xp:
            s = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
            total += wy * wx * s
    return total * d * d


def mask_cell_fractions(mask: np.ndarray, downsample: float, grid: PatchGrid) -> np.ndarray:
    """Share of each cell of ``grid`` covered by ``mask`` (see :func:`mask_box_areas`): (rows, cols) float32."""
    areas = mask_box_areas(mask, downsample, grid.cell_boxes()).reshape(grid.shape)
    return np.clip(areas / (grid.size0 * grid.size0), 0.0, 1.0).astype(np.float32)


def point_cell_counts(points: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """Number of level-0 points ``(x, y)`` inside each (half-open) cell of ``grid``: (rows, cols) int64."""
    points = np.round(np.asarray(points, np.float64).reshape(-1, 2), _DECIMALS)  # as the edges are
    xs, ys, spans = _lattice(grid)
    ix = np.searchsorted(xs, points[:, 0], "right") - 1
    iy = np.searchsorted(ys, points[:, 1], "right") - 1
    ok = (ix >= 0) & (ix < len(xs) - 1) & (iy >= 0) & (iy < len(ys) - 1)
    atoms = np.bincount(iy[ok] * (len(xs) - 1) + ix[ok], minlength=(len(ys) - 1) * (len(xs) - 1))
    return _cell_sums(atoms.reshape(len(ys) - 1, len(xs) - 1).astype(np.int64), spans)


def points_in_box(points: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Boolean mask of the points ``(x, y)`` inside the half-open level-0 box ``(x, y, w, h)``."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    x, y, w, h = (float(v) for v in box)
    return (points[:, 0] >= x) & (points[:, 0] < x + w) & (points[:, 1] >= y) & (points[:, 1] < y + h)
