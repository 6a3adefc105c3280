"""The contract every registered strategy passes, on the same small embedded cohort."""

from __future__ import annotations

import numpy as np
import pytest

from alkit.al.areas import box_mm2, tissue_mm2
from alkit.al.pool import LabeledPool
from alkit.prototypes.prototype_set import ClassPrototypes, PrototypeSet
from alkit.selection.regions import boxes_overlap
from alkit.selection.strategy import (Budget, RegionPick, Selection, StrategyError, available_strategies,
                                      get_strategy)

BUDGET = Budget(n=3, size=1024)  # 4 x 4 cells of the 16 x 16 grid


def _prototypes_from(cohort) -> PrototypeSet:
    """Two classes whose prototypes are real embeddings of the cohort (enough for the contract)."""
    store = cohort.slides[0].store()
    rng = np.random.default_rng(0)
    rows = rng.choice(len(store.features), 6, replace=False)
    origin = [{"source": "test", "row": int(r)} for r in rows]
    classes = {"a": ClassPrototypes("a", store.features[rows[:3]], origin[:3]),
               "b": ClassPrototypes("b", store.features[rows[3:]], origin[3:])}
    return PrototypeSet(cohort.attrs["encoder"], cohort.attrs["dim"], cohort.attrs["weights_id"], classes)


class _SimilarityTask:
    """A stand-in trained task for the contract: tumour probability = similarity to class "a"."""

    name = "similarity"
    mc_dropout = True

    def __init__(self, prototypes: PrototypeSet):
        self.prototypes = prototypes

    def probabilities(self, slide):
        from alkit.prototypes.maps import similarity_map

        return similarity_map(slide.store(), self.prototypes["a"])

    def mc_probabilities(self, slide, samples):
        base = self.probabilities(slide)
        return np.stack([np.clip(base * (0.9 + 0.02 * i), 0, 1) for i in range(samples)])


def _build(name: str, cohort, **extra):
    prototypes = _prototypes_from(cohort)
    params = {"prototype": {"prototypes": prototypes},
              "uncertainty": {"task": _SimilarityTask(prototypes)}}.get(name, {})
    return get_strategy(name, **params, **extra)


def test_builtins_are_registered():
    assert {"random", "diversity", "prototype", "uncertainty", "full"} <= set(available_strategies())
    with pytest.raises(StrategyError, match="unknown strategy 'nope'"):
        get_strategy("nope")
    with pytest.raises(StrategyError, match="bad parameters"):
        get_strategy("random", colour="red")


def _unlabeled_embedded_cells(slide, picks, labeled) -> list[tuple[int, int]]:
    """Embedded cells whose centre lies neither in a pick nor in a labeled box (the pool's rule)."""
    pool = LabeledPool()
    pool.add([RegionPick(slide.slide_id, tuple(b), "labeled") for b in labeled], cycle=0)
    pool.add(picks, cycle=1)
    ids = pool.cell_region_ids(slide.slide_id, slide.grid)
    return [tuple(c) for c in slide.store().coords.tolist() if ids[c[0], c[1]] < 0]


@pytest.mark.parametrize("name", available_strategies())
def test_every_strategy_honours_the_contract(name, embedded_cohort):
    cohort = embedded_cohort
    first = cohort.slides[0]
    stride0 = first.grid.stride0
    labeled = {first.slide_id: [(0, 0, 2048, 1024)]}  # the top half of the top rows
    strategy = _build(name, cohort)
    selection = strategy.select(cohort, BUDGET, np.random.default_rng(7), labeled=labeled)
    assert isinstance(selection, Selection) and selection.strategy == strategy.name == name
    counts = selection.counts()
    budget_sized = getattr(strategy, "budget_sized", True)
    for slide in cohort:
        picks = selection.for_slide(slide.slide_id)
        assert len(picks) == counts.get(slide.slide_id, 0)
        if budget_sized:
            assert len(picks) <= BUDGET.n
            assert len(picks) + selection.shortfall[slide.slide_id] == BUDGET.n
        else:  # a strategy that ignores the budget (full) must label every embedded cell instead
            assert selection.shortfall[slide.slide_id] == 0
            assert _unlabeled_embedded_cells(slide, picks, labeled.get(slide.slide_id, [])) == []
        w, h = slide.grid.dimensions
        for p in picks:
            x, y, bw, bh = p.box
            assert p.strategy == name and p.slide == slide.slide_id
            assert 0 <= x and 0 <= y and x + bw <= w + stride0 and y + bh <= h + stride0
            assert bw > 0 and bh > 0
            assert set(p.to_dict()) == {"slide", "x", "y", "w", "h", "strategy", "class", "score"}
        for i, a in enumerate(picks):
            assert not any(boxes_overlap(a.box, b.box) for b in picks[i + 1:])
            assert not any(boxes_overlap(a.box, lb) for lb in labeled.get(slide.slide_id, []))
    assert sum(counts.values()) > 0
    again = _build(name, cohort).select(cohort, BUDGET, np.random.default_rng(7), labeled=labeled)
    assert [p.box for p in again.regions] == [p.box for p in selection.regions]


def test_standard_sized_strategies_give_budget_sized_regions(embedded_cohort):
    for name in ("random", "diversity", "prototype", "uncertainty"):
        selection = _build(name, embedded_cohort).select(embedded_cohort, BUDGET, np.random.default_rng(1))
        assert all(p.box[2] == p.box[3] == 1024 for p in selection.regions), name


def test_random_reports_shortfall_when_regions_do_not_fit(embedded_cohort, caplog):
    selection = get_strategy("random").select(embedded_cohort, Budget(n=5, size=4096), np.random.default_rng(0))
    assert all(len(selection.for_slide(s)) == 1 for s in embedded_cohort.ids)  # one slide-sized region each
    assert set(selection.shortfall.values()) == {4}
    assert "fewer than the budget asks" in caplog.text


def test_prototype_classes_share_the_budget_round_robin(embedded_cohort):
    selection = _build("prototype", embedded_cohort).select(embedded_cohort, Budget(n=3, size=1024),
                                                            np.random.default_rng(0))
    for slide in embedded_cohort.ids:
        assert [p.cls for p in selection.for_slide(slide)] == ["a", "b", "a"]
        assert set(selection.score_maps[slide]) == {"similarity:a", "similarity:b"}
    with pytest.raises(StrategyError, match="selector"):
        get_strategy("prototype", prototypes=_prototypes_from(embedded_cohort), selector="best")


def test_full_labels_every_tissue_cell_of_every_slide_whatever_the_budget(embedded_cohort):
    from strategies.full import rectangles

    for budget in (BUDGET, Budget(n=0, size=1)):
        selection = get_strategy("full").select(embedded_cohort, budget, np.random.default_rng(0))
        assert selection.shortfall == {s: 0 for s in embedded_cohort.ids}
        for slide in embedded_cohort:
            picks = selection.for_slide(slide.slide_id)
            assert len(picks) == 1  # one tissue bounding box per slide
            assert _unlabeled_embedded_cells(slide, picks, []) == []
        annotated = sum(box_mm2(embedded_cohort.slide(p.slide), embedded_cohort.slide(p.slide).grid.tissue_fraction,
                                p.box) for p in selection.regions)
        assert annotated == pytest.approx(tissue_mm2(embedded_cohort))  # 100 % of the tissue
    rng = np.random.default_rng(3)
    for _ in range(20):  # the split around labeled regions covers exactly the free cells, without overlaps
        free = rng.random((9, 11)) > 0.3
        covered = np.zeros(free.shape, int)
        for x, y, w, h in rectangles(free):
            covered[y:y + h, x:x + w] += 1
        assert (covered == free).all()


def _tumour_share(picks, synthetic_cohort) -> list[float]:
    """Share of each region covered by ground-truth tumour (the ASAP polygons, via shapely)."""
    from shapely.geometry import Polygon, box
    from shapely.ops import unary_union

    from alkit.annotations.asap import read_asap_xml

    shares = []
    for p in picks:
        polygons = [Polygon(a.coords) for a in read_asap_xml(synthetic_cohort.slide(p.slide).annotation_path)]
        region = box(p.box[0], p.box[1], p.box[0] + p.box[2], p.box[1] + p.box[3])
        shares.append(unary_union(polygons).intersection(region).area / region.area if polygons else 0.0)
    return shares


def test_prototype_regions_hold_clearly_more_tumour_than_random(embedded_cohort, synthetic_cohort):
    import json

    from alkit.captions import load_arch_set
    from alkit.embeddings.encoders import get_encoder
    from alkit.prototypes.prototype_set import build_prototypes

    truth = json.loads(synthetic_cohort.captions_truth.read_text())
    tumour_ids = [v["uuid"] for v in truth.values() if v["kind"] == "tumour"]
    prototypes = build_prototypes(load_arch_set(synthetic_cohort.captions_json.parent), {"tumor": tumour_ids},
                                  get_encoder("handcrafted"))
    tumour_slides = {s.slide_id for s in synthetic_cohort.slides if s.has_tumour}
    budget = Budget(n=1, size=1024)
    random_shares = []
    for seed in range(10):
        picks = get_strategy("random").select(embedded_cohort, budget, np.random.default_rng(seed)).regions
        random_shares += _tumour_share([p for p in picks if p.slide in tumour_slides], synthetic_cohort)
    # measured on this cohort: random 0.041 (10 seeds); prototype standard 0.12, adaptive 0.21
    for selector in ("standard", "adaptive"):
        picks = get_strategy("prototype", prototypes=prototypes, selector=selector).select(
            embedded_cohort, budget, np.random.default_rng(0)).regions
        shares = _tumour_share([p for p in picks if p.slide in tumour_slides], synthetic_cohort)
        assert np.mean(shares) >= 2.5 * np.mean(random_shares), (selector, shares, np.mean(random_shares))


def test_uncertainty_bald_takes_its_default_samples_and_refuses_too_few():
    assert get_strategy("uncertainty", measure="bald").mc_samples == 10
    assert get_strategy("uncertainty", measure="bald", mc_samples=4).mc_samples == 4
    assert get_strategy("uncertainty").mc_samples == 0
    with pytest.raises(StrategyError, match="bald needs at least 2"):
        get_strategy("uncertainty", measure="bald", mc_samples=1)
