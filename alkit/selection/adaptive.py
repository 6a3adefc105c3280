"""Adaptive region selection: the score map shapes the box.

Adaptive selection (:func:`select_adaptive`) lets the map shape the box: from the peak cell (the
highest cell not inside a taken or labeled box, positive), it looks for a threshold ``t`` such that
the 4-connected component of cells ``>= t`` that contains the peak has a bounding box with both
sides in ``[size/2, 3·size/2]`` (the lower bound is clipped to the map's side). Components never
enter taken or labeled cells, and a bounding box that would overlap one counts as too big. Only the
``(2L+1)²`` neighbourhood of the peak, ``L = floor(3·size/2)``, can hold an acceptable box, so each
step works on that crop. The thresholds tried are the distinct positive values of the crop and the
search bisects over them (the component grows monotonically as ``t`` falls), so it is exact and
ends after at most ``1 + ceil(log2(#values))`` labelings. When no threshold works (a plateau too
big already at the peak value, such as a flat map; a blob too small even at the lowest positive
threshold; a ridge that jumps from too thin to too long), the fallback is the ``size × size``
window (clipped to the map) that contains the peak, overlaps nothing, and is the most nearly
centred on it; when no such window exists (the peak sits in a narrow gap), the box grown greedily
from the peak cell (up, down, left, right in turn) up to ``size × size`` without overlapping. Each
box contains its peak, so picks never repeat and the loop always progresses.

The adaptive selector's options (:data:`SELECTOR_OPTIONS`, checked by :func:`check_selector_options`)
switch it to the reference implementation's rules (Qiu et al.'s AdaptiveRegionSelection code); the
defaults are the behaviour above:

* ``rule="area"``: accept a bounding box by its area, ``w·h`` in ``[l_min², l_max²]`` with
  ``l_min = floor(size/2)``, ``l_max = floor(3·size/2)`` (the lower bound is the area of the
  ``l_min × l_min`` square clipped to the map). It accepts every box ``"sides"`` accepts, and also
  elongated ones (a 12 × 6 blob with ``size = 7``); as a side may then reach ``l_max²``, the crop
  searched is ``(2·l_max² + 1)²`` (often the whole map: slower).
* ``median_filter=True``: the map (NaN as 0) first goes through a 3 × 3 median filter, zero-padded
  at the borders, so an isolated hot cell cannot become a peak; peaks, thresholds and components
  then come from the filtered map (the strategies still score a region on the unfiltered map).
* ``connectivity=8``: components are 8-connected (diagonal neighbours join), as the reference's
  contours are.
* ``fallback="half"``: the fallback window is ``l_min × l_min`` (at least 1 × 1), not
  ``size × size``; the most centred free one holding the peak is the reference's box at
  ``(px - l_min//2, py - l_min//2)``, shifted inside the map at its borders.

What is not an option: the reference bisects 10 times over percentiles 98–100 of the whole map and
tests the component by its contour; here the search is exact over the crop's values. When its
search fails with a component out of range, the reference clamps that component's box to
``[l_min, l_max]`` around its centre, a box that may miss the peak and overlap earlier picks;
here every box holds its peak and overlaps nothing, under every option.

Conventions (boxes in map cells, labeled regions, NaN, ties) are those of :mod:`alkit.selection.regions`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import scipy.ndimage as ndi

from alkit.selection.regions import (Region, box_array, check_selector_options, check_size_n, clean_map, cover_cells,
                                    verify_picks)
from alkit.wsi.box import Box

log = logging.getLogger(__name__)


def select_adaptive(score_map: np.ndarray, size: int, n: int, labeled: Iterable[Box] = (), *,
                    rule: str = "sides", median_filter: bool = False, connectivity: int = 4,
                    fallback: str = "window") -> list[Region]:
    """Boxes shaped by the map: the bounding box of the thresholded blob around each peak.

    See the module docstring for the threshold bisection, the accepted side range
    ``[size/2, 3·size/2]``, the fallback, and the options (``rule``, ``median_filter``,
    ``connectivity``, ``fallback``) that switch to the reference's rules. Peaks are taken in
    decreasing order of score (ties: smallest y, then x) among cells outside taken and labeled
    boxes, while positive.
    """
    check_selector_options("adaptive", {"rule": rule, "median_filter": median_filter,
                                        "connectivity": connectivity, "fallback": fallback})
    size, n = check_size_n(size, n)
    m = clean_map(score_map)
    height, width = m.shape
    if n == 0 or m.size == 0:
        return []
    if median_filter:  # zero padding, as scipy.signal.medfilt2d (the reference's filter)
        m = ndi.median_filter(m, size=3, mode="constant", cval=0.0)
    work = np.array(m, copy=True)  # taken and labeled cells become -inf
    blocked = cover_cells(box_array(labeled))
    for bx, by, bw, bh in blocked:
        work[max(by, 0):max(by + bh, 0), max(bx, 0):max(bx + bw, 0)] = -np.inf
    rowmax = work.max(axis=1)
    limits = _Limits.for_rule(rule, size, height, width)
    reach = limits.radius  # the crop around the peak that holds every acceptable box
    side = size if fallback == "window" else max(size // 2, 1)
    wh, ww = min(side, height), min(side, width)
    structure = _EIGHT if connectivity == 8 else None  # None: scipy's default, 4-connected
    picks: list[Region] = []
    while len(picks) < n:
        py = int(np.argmax(rowmax))
        if not rowmax[py] > 0:
            break
        px = int(np.argmax(work[py]))
        cy0, cx0 = max(py - reach, 0), max(px - reach, 0)
        crop = work[cy0:min(py + reach + 1, height), cx0:min(px + reach + 1, width)]
        bx, by, bw, bh = _adaptive_box(crop, py - cy0, px - cx0, limits, wh, ww, structure)
        pick = Region(bx + cx0, by + cy0, bw, bh)
        if np.isneginf(work[pick.y:pick.y + pick.h, pick.x:pick.x + pick.w]).any():
            raise AssertionError(f"adaptive box {pick} overlaps a taken or labeled box")  # a bug
        picks.append(pick)
        work[pick.y:pick.y + pick.h, pick.x:pick.x + pick.w] = -np.inf
        rowmax[pick.y:pick.y + pick.h] = work[pick.y:pick.y + pick.h].max(axis=1)
    verify_picks(picks, blocked, m.shape)
    log.debug("adaptive selection: %d of %d boxes (size %d, rule %s, median filter %s, %d-connected, "
              "fallback %s) on a %dx%d map", len(picks), n, size, rule, median_filter, connectivity, fallback,
              width, height)
    return picks


def _component_box(crop: np.ndarray, cy: int, cx: int, threshold: float,
                   structure: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """Bounding box (x, y, w, h) of the component of ``crop >= threshold`` holding (cy, cx): 4-connected,
    or connected by ``structure`` (:data:`_EIGHT`: 8-connected)."""
    labels, _ = ndi.label(crop >= threshold, structure=structure)
    component = labels == labels[cy, cx]
    rows = np.flatnonzero(component.any(axis=1))
    cols = np.flatnonzero(component.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


_SMALL, _OK, _BIG = 0, 1, 2
_EIGHT = np.ones((3, 3), bool)  # the 8-connected structuring element of scipy.ndimage.label


class _Limits(NamedTuple):
    """Which bounding boxes the adaptive selector accepts: both sides in ``[low, high]`` (``area``
    False; ``low`` per axis, (rows, columns)), or the area in ``[low_rows·low_cols, high²]``."""

    area: bool
    low: tuple[int, int]
    high: int

    @classmethod
    def for_rule(cls, rule: str, size: int, height: int, width: int) -> _Limits:
        """``"sides"``: ``[ceil(size/2), floor(3·size/2)]``; ``"area"``: ``[floor(size/2)², floor(3·size/2)²]``
        (the reference's ``l_min``, ``l_max``); the lower bound is clipped to the map."""
        shortest = (size + 1) // 2 if rule == "sides" else size // 2
        return cls(rule == "area", (min(shortest, height), min(shortest, width)), (3 * size) // 2)

    @property
    def radius(self) -> int:
        """The crop half-side: an acceptable box spans fewer cells, so a component reaching the crop's
        edge is too big (under ``area``, a box of area at most ``high²`` can be ``high²`` long)."""
        return self.high * self.high if self.area else self.high

    def verdict(self, w: int, h: int) -> int:
        """Too small, acceptable or too big; each of sides and area grows as the threshold falls."""
        if self.area:
            if w * h > self.high * self.high:
                return _BIG
            return _SMALL if w * h < self.low[0] * self.low[1] else _OK
        if w > self.high or h > self.high:
            return _BIG
        return _SMALL if h < self.low[0] or w < self.low[1] else _OK


def _adaptive_box(crop: np.ndarray, cy: int, cx: int, limits: _Limits, wh: int, ww: int,
                  structure: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """The adaptive box around the peak (cy, cx) of ``crop`` (blocked cells are -inf), crop coords;
    ``wh × ww``: the fallback window."""
    blocked = np.isneginf(crop)

    def state(box: tuple[int, int, int, int]) -> int:
        x, y, w, h = box
        verdict = limits.verdict(w, h)
        if verdict != _BIG and blocked[y:y + h, x:x + w].any():
            return _BIG  # grows monotonically as the threshold falls, like the sides
        return verdict

    thresholds = np.unique(crop[crop > 0])  # ascending; the last is the peak value
    small = len(thresholds) - 1  # index known to give a small box (checked next)
    box = _component_box(crop, cy, cx, thresholds[small], structure)
    verdict = state(box)
    if verdict == _OK:
        return box
    if verdict == _SMALL:
        big = -1  # lower indices (thresholds) give larger components; -1: not known yet
        while small - big > 1:
            mid = (small + big) // 2
            box = _component_box(crop, cy, cx, thresholds[mid], structure)
            verdict = state(box)
            if verdict == _OK:
                return box
            if verdict == _SMALL:
                small = mid
            else:
                big = mid
    return _fallback_box(blocked, cy, cx, wh, ww)


def _fallback_box(blocked: np.ndarray, cy: int, cx: int, wh: int, ww: int) -> tuple[int, int, int, int]:
    """The most centred free wh × ww window holding (cy, cx); else a box grown from that cell."""
    ch, cw = blocked.shape
    table = np.zeros((ch + 1, cw + 1), np.int64)
    np.cumsum(np.cumsum(blocked, axis=0), axis=1, out=table[1:, 1:])

    def count(x0: int | np.ndarray, y0: int | np.ndarray, x1: int | np.ndarray,
              y1: int | np.ndarray) -> int | np.ndarray:
        return table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]

    oy = np.arange(max(cy - wh + 1, 0), min(cy, ch - wh) + 1)[:, None]
    ox = np.arange(max(cx - ww + 1, 0), min(cx, cw - ww) + 1)[None, :]
    if oy.size and ox.size:
        free = count(ox, oy, ox + ww, oy + wh) == 0
        if free.any():
            offset = (2 * oy + wh - 1 - 2 * cy) ** 2 + (2 * ox + ww - 1 - 2 * cx) ** 2
            best = np.argmin(np.where(free, offset, np.iinfo(np.int64).max))
            i, j = np.unravel_index(best, free.shape)
            return int(ox[0, j]), int(oy[i, 0]), ww, wh
    x0, y0, x1, y1 = cx, cy, cx + 1, cy + 1
    grown = True
    while grown:
        grown = False
        if y1 - y0 < wh and y0 > 0 and count(x0, y0 - 1, x1, y0) == 0:
            y0, grown = y0 - 1, True
        if y1 - y0 < wh and y1 < ch and count(x0, y1, x1, y1 + 1) == 0:
            y1, grown = y1 + 1, True
        if x1 - x0 < ww and x0 > 0 and count(x0 - 1, y0, x0, y1) == 0:
            x0, grown = x0 - 1, True
        if x1 - x0 < ww and x1 < cw and count(x1, y0, x1 + 1, y1) == 0:
            x1, grown = x1 + 1, True
    return x0, y0, x1 - x0, y1 - y0
