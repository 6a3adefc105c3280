"""Small pieces the built-in strategies share: the region selector and its options, labeled boxes in
map cells, picks back to level 0."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from alkit.embeddings.cohort import CohortSlide
from alkit.selection.adaptive import select_adaptive
from alkit.selection.regions import StandardSearch, box_sums, check_selector_options, select_standard
from alkit.selection.strategy import Box, Labeled, RegionPick, StrategyError

SELECTORS = {"standard": select_standard, "adaptive": select_adaptive}


def check_selector(selector: str, options: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The selector's name and its options (e.g. ``{"rule": "area"}`` for ``adaptive``), checked by
    :func:`alkit.selection.regions.check_selector_options`; a bad one raises :class:`StrategyError`."""
    if selector not in SELECTORS:
        raise StrategyError(f"selector must be one of {sorted(SELECTORS)}, got {selector!r}")
    try:
        return selector, check_selector_options(selector, options)
    except ValueError as exc:
        raise StrategyError(f"selector_options: {exc}") from None


def labeled_cells(slide: CohortSlide, labeled: Labeled | None) -> list[tuple[int, int, int, int]]:
    """The slide's labeled level-0 boxes as map-cell boxes (every cell they touch)."""
    boxes = (labeled or {}).get(slide.slide_id, ())
    cells = [slide.grid.box_to_cells(b) for b in boxes]
    return [c for c in cells if c[2] > 0 and c[3] > 0]


def to_picks(slide: CohortSlide, cell_boxes: list[Box], score_map: np.ndarray | None, strategy: str,
             cls: str | None = None) -> list[RegionPick]:
    """Map-cell boxes → level-0 picks scored by the mean of ``score_map`` inside (when there is one)."""
    if not cell_boxes:
        return []
    if score_map is None:
        scores = np.full(len(cell_boxes), np.nan)
    else:
        areas = np.array([w * h for _, _, w, h in cell_boxes], np.float64)
        scores = box_sums(score_map, cell_boxes) / areas
    return [RegionPick(slide.slide_id, slide.grid.cells_to_box(tuple(map(int, b))), strategy, cls, float(s))
            for b, s in zip(cell_boxes, scores)]


def window_tissue(tissue: np.ndarray, wh: int, ww: int) -> np.ndarray:
    """Mean tissue fraction of every ``wh × ww`` window origin, ``(rows - wh + 1, cols - ww + 1)``."""
    integral = np.zeros((tissue.shape[0] + 1, tissue.shape[1] + 1), np.float64)
    np.cumsum(np.cumsum(tissue, axis=0, dtype=np.float64), axis=1, out=integral[1:, 1:])
    sums = integral[wh:, ww:] - integral[:-wh, ww:] - integral[wh:, :-ww] + integral[:-wh, :-ww]
    return sums / (wh * ww)


def select_on_maps(slide: CohortSlide, maps: dict[str, np.ndarray], n: int, size: int, selector: str,
                   labeled: Labeled | None, strategy: str,
                   options: Mapping[str, Any] | None = None) -> list[RegionPick]:
    """Up to ``n`` regions of ``size`` cells on the slide's score maps, the maps taking turns
    (round-robin in their order); no pick overlaps an earlier pick or a labeled region. ``options``
    go to the selector (checked by :func:`check_selector`).

    With the standard selector each map's window sums are computed once and reused for all its
    picks (:class:`alkit.selection.regions.StandardSearch`); a pick on one map blocks it on all.
    """
    select, options = SELECTORS[selector], dict(options or {})
    blocked = labeled_cells(slide, labeled)
    names = list(maps)
    searches = {}
    if selector == "standard" and names:
        turns = -(-n // len(names))  # picks each map gets at most
        searches = {name: StandardSearch(maps[name], size, blocked, expected=turns) for name in names}
    picks: list[RegionPick] = []
    exhausted: set[str] = set()
    turn = 0
    while len(picks) < n and len(exhausted) < len(names):
        name = names[turn % len(names)]
        turn += 1
        if name in exhausted:
            continue
        if searches:
            found = searches[name].take()
            found = [found] if found is not None else []
        else:
            found = select(maps[name], size, 1, labeled=blocked, **options)
        if not found:
            exhausted.add(name)
            continue
        box = tuple(int(v) for v in found[0])
        blocked.append(box)
        for other, search in searches.items():
            if other != name:
                search.block(box)
        picks += to_picks(slide, [box], maps[name], strategy, name or None)  # key "": no class
    for search in searches.values():
        search.verify()
    return picks
