"""Selector options reach the selector: the prototype and uncertainty strategies take ``selector_options``,
checked in one place, and pass them to every selector call."""

from __future__ import annotations

import numpy as np
import pytest

import strategies._common as common
from alkit.prototypes.maps import similarity_map
from alkit.prototypes.prototype_set import ClassPrototypes, PrototypeSet
from alkit.selection.adaptive import select_adaptive
from alkit.selection.strategy import Budget, StrategyError, get_strategy

REFERENCE = {"rule": "area", "median_filter": True, "connectivity": 8, "fallback": "half"}


def _prototypes(cohort) -> PrototypeSet:
    store = cohort.slides[0].store()
    rows = np.random.default_rng(0).choice(len(store.features), 4, replace=False)
    origin = [{"source": "test", "row": int(r)} for r in rows]
    classes = {"a": ClassPrototypes("a", store.features[rows[:2]], origin[:2]),
               "b": ClassPrototypes("b", store.features[rows[2:]], origin[2:])}
    return PrototypeSet(cohort.attrs["encoder"], cohort.attrs["dim"], cohort.attrs["weights_id"], classes)


class _Task:
    """A stand-in trained task: tumour probability = similarity to the first class's prototypes."""

    name = "stand-in"
    mc_dropout = False

    def __init__(self, prototypes: PrototypeSet):
        self.prototypes = prototypes

    def probabilities(self, slide):
        return similarity_map(slide.store(), self.prototypes["a"])


@pytest.fixture
def calls(monkeypatch):
    """The keyword options of every adaptive-selector call the strategies make."""
    seen: list[dict] = []

    def recording(score_map, size, n, labeled=(), **options):
        seen.append(options)
        return select_adaptive(score_map, size, n, labeled, **options)

    monkeypatch.setitem(common.SELECTORS, "adaptive", recording)
    return seen


@pytest.mark.parametrize("name", ["prototype", "uncertainty"])
def test_strategies_pass_their_selector_options_to_every_call(embedded_cohort, calls, name):
    prototypes = _prototypes(embedded_cohort)
    params = {"prototypes": prototypes} if name == "prototype" else {"task": _Task(prototypes)}
    budget, rng = Budget(n=3, size=1024), np.random.default_rng(0)
    plain = get_strategy(name, selector="adaptive", **params).select(embedded_cohort, budget, rng)
    assert calls and all(c == {} for c in calls)  # no options: the selector's defaults, as before
    calls.clear()
    strategy = get_strategy(name, selector="adaptive", selector_options=REFERENCE, **params)
    assert strategy.selector == "adaptive" and strategy.selector_options == REFERENCE
    chosen = strategy.select(embedded_cohort, budget, rng)
    assert calls and all(c == REFERENCE for c in calls)
    assert len(chosen.regions) == len(plain.regions) > 0
    defaults = get_strategy(name, selector="adaptive", **params, selector_options={"rule": "sides"})
    assert [p.box for p in defaults.select(embedded_cohort, budget, rng).regions] == [p.box for p in plain.regions]


@pytest.mark.parametrize("name", ["prototype", "uncertainty"])
def test_bad_selector_options_are_strategy_errors_naming_the_option(embedded_cohort, name):
    prototypes = _prototypes(embedded_cohort)
    params = {"prototypes": prototypes} if name == "prototype" else {"task": _Task(prototypes)}
    for selector, options, message in [("standard", {"rule": "area"}, "standard selector has no option 'rule'"),
                                       ("adaptive", {"rule": "box"}, "'rule' must be one of 'sides', 'area'"),
                                       ("adaptive", {"connectivity": 6}, "'connectivity'"),
                                       ("adaptive", "area", "must be a mapping")]:
        with pytest.raises(StrategyError, match=f"selector_options: .*{message}"):
            get_strategy(name, selector=selector, selector_options=options, **params)
    with pytest.raises(StrategyError, match="selector must be one of"):
        get_strategy(name, selector="best", selector_options={}, **params)
    assert get_strategy(name, selector="standard", selector_options={}, **params).selector_options == {}
