"""The one contract every region strategy implements, and the registry that finds them by name.

A strategy answers: given the cohort, what is already labeled and a budget, which regions next?
Initial-set strategies (random, diversity, prototype) and acquisition strategies (uncertainty) share
:class:`Strategy`. Implementations live in the ``strategies`` package (or any other installed
package) and are found through the ``alkit.strategies`` entry-point group, so ``alkit`` never imports
them: a lab ships its own strategy as a package and names it in a config like a built-in one.

Regions are level-0 pixel boxes ``(x, y, w, h)``, half-open, x = column, everywhere in this module.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from alkit.embeddings.cohort import Cohort
from alkit.errors import AlkitError
from alkit.plugins import plugin_entry, plugin_names
from alkit.wsi.box import Box

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "alkit.strategies"


class StrategyError(AlkitError, ValueError):
    """Unknown strategy, bad parameters, or inputs a strategy cannot work with."""


@dataclass(frozen=True)
class Budget:
    """``n`` regions per slide of ``size`` × ``size`` level-0 pixels (the paper: n ∈ {1,3,5}, 4096–12288 px)."""

    n: int
    size: int

    def __post_init__(self) -> None:
        if self.n < 0 or self.size <= 0:
            raise StrategyError(f"budget needs n >= 0 and size > 0, got n={self.n}, size={self.size}")


@dataclass(frozen=True)
class RegionPick:
    """One region to annotate."""

    slide: str
    box: Box  # level-0 (x, y, w, h)
    strategy: str
    cls: str | None = None  # the class whose map chose it, where a strategy has classes
    score: float = float("nan")  # the strategy's own score of the region (e.g. mean similarity)

    def to_dict(self) -> dict:
        x, y, w, h = self.box
        return {"slide": self.slide, "x": x, "y": y, "w": w, "h": h, "strategy": self.strategy,
                "class": self.cls, "score": None if np.isnan(self.score) else float(self.score)}


@dataclass
class Selection:
    """What a strategy chose: regions, the score maps it chose them from, and any shortfall."""

    strategy: str
    regions: list[RegionPick] = field(default_factory=list)
    # slide id -> map name -> (rows, cols) map on the slide's patch grid, where the strategy has one
    score_maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    shortfall: dict[str, int] = field(default_factory=dict)  # slide id -> regions asked but not found

    def for_slide(self, slide: str) -> list[RegionPick]:
        return [r for r in self.regions if r.slide == slide]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.regions:
            out[r.slide] = out.get(r.slide, 0) + 1
        return out

    def report_shortfall(self) -> None:
        """Log every slide that got fewer regions than asked for (never hidden)."""
        for slide, missing in sorted(self.shortfall.items()):
            if missing > 0:
                log.warning("%s: %s found %d region(s) fewer than the budget asks", slide, self.strategy, missing)


Labeled = Mapping[str, Sequence[Box]]  # slide id -> level-0 boxes already labeled


@runtime_checkable
class Strategy(Protocol):
    """Choose the next regions to annotate; ``labeled`` regions must not be overlapped."""

    name: str

    def select(self, cohort: Cohort, budget: Budget, rng: np.random.Generator,
               labeled: Labeled | None = None) -> Selection: ...


def available_strategies() -> list[str]:
    """Names registered in the ``alkit.strategies`` entry-point group."""
    return plugin_names(ENTRY_POINT_GROUP)


def get_strategy(name: str, **params) -> Strategy:
    """Build the strategy registered as ``name`` with its parameters (e.g. ``selector="adaptive"``)."""
    entry = plugin_entry(ENTRY_POINT_GROUP, name, "strategy", StrategyError)
    factory = entry.load()
    try:
        strategy = factory(**params)
    except TypeError as exc:
        raise StrategyError(f"strategy {name!r}: bad parameters {params}: {exc}") from None
    if not isinstance(strategy, Strategy):
        raise StrategyError(f"entry point {entry.value} does not build a Strategy (no name / select)")
    return strategy
