"""Region sizes in µm: equal physical regions on a cohort of scanners with different resolutions.

Strategies take a :class:`~alkit.selection.strategy.Budget` whose ``size`` is a level-0 pixel side, and
each slide turns it into grid cells with its own level-0 stride. A side in µm is therefore converted per
slide (``round(size_um / slide_mpp)`` level-0 px) *before* the strategy runs: :func:`select_regions`
groups the slides by that pixel side and runs the strategy once per group, on a cohort of the group's
slides, with the group's :class:`Budget`. A cohort of one resolution is one group, so the result is the
same as a ``size_px`` budget of that side. With several groups, each gets its own random stream
(``rng.spawn``) and strategies that compare slides (diversity clusters the cohort's windows) compare
them within a group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alkit.embeddings.cohort import Cohort
from alkit.selection.strategy import Budget, Labeled, Selection, Strategy, StrategyError

log = logging.getLogger(__name__)

__all__ = ["RegionSize", "select_regions", "size_px_for"]


@dataclass(frozen=True)
class RegionSize:
    """A region side: ``px`` (level 0) or ``um`` (µm), exactly one of them."""

    px: int | None = None
    um: float | None = None

    def __post_init__(self) -> None:
        if (self.px is None) == (self.um is None):
            raise StrategyError("give the region side either in level-0 px or in µm, not both / neither")
        if (self.px is not None and self.px <= 0) or (self.um is not None and not self.um > 0):
            raise StrategyError(f"region side must be positive, got {self.px if self.um is None else self.um}")

    def budget_dict(self, n: int) -> dict:
        """The budget as regions.json's provenance records it."""
        return {"n": int(n), "size_px": self.px} if self.um is None else {"n": int(n), "size_um": float(self.um)}


def size_px_for(size: RegionSize, slide_mpp: float) -> int:
    """The level-0 px side of ``size`` on a slide of ``slide_mpp`` µm/px."""
    return int(size.px) if size.um is None else max(1, round(size.um / slide_mpp))


def _merge(strategy: str, parts: Sequence[Selection], order: list[str]) -> Selection:
    merged = Selection(strategy)
    for part in parts:
        merged.score_maps.update(part.score_maps)
        merged.shortfall.update(part.shortfall)
    regions = [r for part in parts for r in part.regions]
    rank = {sid: i for i, sid in enumerate(order)}
    merged.regions = sorted(regions, key=lambda r: rank.get(r.slide, len(rank)))  # stable: each slide's own order
    return merged


def select_regions(strategy: Strategy, cohort: Cohort, n: int, size: RegionSize, rng: np.random.Generator,
                   labeled: Labeled | None = None) -> Selection:
    """``strategy.select`` with the region side converted per slide (see the module's docstring)."""
    groups: dict[int, list] = {}
    for slide in cohort:
        groups.setdefault(size_px_for(size, slide.grid.slide_mpp), []).append(slide)
    if len(groups) == 1:
        (px,) = groups
        return strategy.select(cohort, Budget(n, px), rng, labeled)
    log.info("regions of %g µm: %s", size.um, ", ".join(f"{px} px on {len(s)} slide(s)" for px, s in groups.items()))
    parts = [strategy.select(Cohort(slides, cohort.attrs), Budget(n, px), child, labeled)
             for (px, slides), child in zip(groups.items(), rng.spawn(len(groups)))]
    return _merge(parts[0].strategy, parts, cohort.ids)
