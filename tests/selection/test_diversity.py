"""The diversity strategy: its default picks follow the nearest-centroid rule, and ``features="region"``
embeds each window itself (checked against embedding the window image directly)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from alkit.embeddings.cohort import Cohort
from alkit.embeddings.encoders import get_encoder
from alkit.selection.clustering import kmeans
from alkit.selection.regions import boxes_overlap
from alkit.selection.strategy import Budget, StrategyError, get_strategy
from alkit.wsi.slide import Slide
from strategies.diversity import window_image

BUDGET = Budget(n=3, size=1024)  # 4 x 4 cells of the 16 x 16 grid: 16 windows per slide


@pytest.fixture(scope="module")
def encoder():
    return get_encoder("handcrafted")


def _labeled(cohort) -> dict:
    return {cohort.slides[0].slide_id: [(0, 0, 2048, 1024)]}  # the top half of the top rows


def _boxes(selection) -> list[tuple[str, tuple[int, int, int, int]]]:
    return [(p.slide, p.box) for p in selection.regions]


def _embed(encoder, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        f = encoder(torch.from_numpy(image[None])).numpy()[0].astype(np.float64)
    return f / np.linalg.norm(f)


def test_region_features_give_budget_sized_regions_that_honour_the_contract(embedded_cohort, encoder):
    cohort, labeled = embedded_cohort, _labeled(embedded_cohort)
    selection = get_strategy("diversity", features="region", encoder=encoder).select(
        cohort, BUDGET, np.random.default_rng(7), labeled=labeled)
    assert selection.strategy == "diversity"
    counts = selection.counts()
    for slide in cohort:
        picks = selection.for_slide(slide.slide_id)
        assert len(picks) == counts.get(slide.slide_id, 0) <= BUDGET.n
        assert len(picks) + selection.shortfall[slide.slide_id] == BUDGET.n
        w, h = slide.grid.dimensions
        for p in picks:
            x, y, bw, bh = p.box
            assert p.strategy == "diversity" and p.slide == slide.slide_id
            assert bw == bh == BUDGET.size and 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
        for i, a in enumerate(picks):
            assert not any(boxes_overlap(a.box, b.box) for b in picks[i + 1:])
            assert not any(boxes_overlap(a.box, lb) for lb in labeled.get(slide.slide_id, []))
    assert sum(counts.values()) == len(cohort) * BUDGET.n  # 16 windows per slide: no shortfall
    # the same seed gives the same picks, with the encoder the stores name built by the strategy itself
    again = get_strategy("diversity", features="region").select(cohort, BUDGET, np.random.default_rng(7),
                                                                labeled=labeled)
    assert _boxes(again) == _boxes(selection)
    assert _boxes(again) != _boxes(get_strategy("diversity").select(cohort, BUDGET, np.random.default_rng(7),
                                                                    labeled=labeled))


def test_a_window_feature_is_the_embedding_of_the_window_image(embedded_cohort, encoder):
    slide = embedded_cohort.slides[1]
    strategy = get_strategy("diversity", features="region", batch_size=2)  # several batches
    boxes, feats = strategy.windows(slide, 4, None, encoder)
    assert feats.shape == (len(boxes), encoder.dim) and len(boxes) > 2
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    j = next(i for i, b in enumerate(boxes.tolist()) if b[0] > 0 and b[1] > 0 and b[2:] == [4, 4])
    x, y, w, h = (int(v) * 256 for v in boxes[j])  # 256 level-0 px per cell (0.25 µm/px slide, 128 px at 0.5)
    with Slide(slide.slide_path) as wsi:
        image = wsi.read((x, y, w, h), size=(encoder.input_size, encoder.input_size))
    np.testing.assert_allclose(feats[j], _embed(encoder, image), atol=1e-5)


def test_a_window_clipped_at_the_map_edge_keeps_the_scale_and_is_padded_white(embedded_cohort):
    slide = embedded_cohort.slides[0]
    with Slide(slide.slide_path) as wsi:  # a 6-cell region on the 16-cell grid: the last window is 4 cells wide
        image = window_image(wsi, (3072, 0, 1024, 1536), 1536.0, 96)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image[:, :64], wsi.read((3072, 0, 1024, 1536), size=(64, 96)))
        assert (image[:, 64:] == 255).all()
        np.testing.assert_array_equal(window_image(wsi, (0, 0, 1536, 1536), 1536.0, 96),
                                      wsi.read((0, 0, 1536, 1536), size=(96, 96)))


def _nearest_centroid_outcomes(cohort, windows, rng, niter: int = 20) -> list[list]:
    """The diversity rule written out plainly: k-means, then clusters from the largest take, in turn, the
    window nearest their centroid among free windows of slides with budget left.

    Windows at the same distance from a centroid (the two members of a two-window cluster are, exactly, and
    float32 rounding in the strategy's distances decides between them) are all nearest: every choice among
    them is followed, so the result is the list of every pick list the rule allows (a farther window never
    counts as nearest).
    """
    boxes = [(s, b) for s, (bs, _) in zip(cohort, windows) for b in bs.tolist()]
    x = np.concatenate([f for _, f in windows]).astype(np.float64)
    k = min(len(cohort) * BUDGET.n, len(x))
    centroids, assignment = kmeans(x, k, seed=int(rng.integers(0, 2**31 - 1)), niter=niter)
    order = sorted(range(k), key=lambda c: -np.sum(assignment == c))  # sorted() is stable
    distances = [((x - centroids[c].astype(np.float64)) ** 2).sum(axis=1) for c in order]
    outcomes: list[list[int]] = []

    def follow(step: int, taken: list[int], left: dict) -> None:
        free = [i for i in range(len(x)) if i not in taken and left[boxes[i][0].slide_id] > 0]
        if step == len(order) or not free:
            outcomes.append(taken)
            return
        distance = distances[step]
        nearest = min(distance[i] for i in free)
        for j in (i for i in free if distance[i] <= nearest + 1e-6):
            follow(step + 1, taken + [j], {**left, boxes[j][0].slide_id: left[boxes[j][0].slide_id] - 1})

    follow(0, [], {s.slide_id: BUDGET.n for s in cohort})
    picks = []
    for taken in outcomes:  # the strategy lists picks slide by slide, each in its order of choice
        listed = [(slide.slide_id, slide.grid.cells_to_box(boxes[j][1])) for slide in cohort for j in taken
                  if boxes[j][0] is slide]
        if listed not in picks:
            picks.append(listed)
    return picks


def test_default_features_are_patch_means_and_picks_are_the_windows_nearest_the_centroids(embedded_cohort):
    cohort, labeled = embedded_cohort, _labeled(embedded_cohort)
    strategy = get_strategy("diversity")
    assert strategy.features == "patch_mean"
    windows = [strategy.windows(s, 4, labeled) for s in cohort]
    for slide, (boxes, feats) in zip(cohort, windows):  # the window feature: mean of normalised cell embeddings
        store = slide.store()
        unit = store.features / np.linalg.norm(store.features, axis=1, keepdims=True)
        for (cx, cy, cw, ch), f in zip(boxes.tolist(), feats):
            inside = ((store.coords[:, 1] >= cx) & (store.coords[:, 1] < cx + cw)
                      & (store.coords[:, 0] >= cy) & (store.coords[:, 0] < cy + ch))
            mean = unit[inside].mean(axis=0)
            np.testing.assert_allclose(f, mean / np.linalg.norm(mean), atol=1e-5)
    free = strategy.windows(cohort.slides[0], 4, None)[0].tolist()
    blocked = [b for b in free if b[1] == 0 and b[0] < 8]  # the labeled box covers cells x < 8, y < 4
    assert blocked and windows[0][0].tolist() == [b for b in free if b not in blocked]
    for seed in (0, 7):
        selection = strategy.select(cohort, BUDGET, np.random.default_rng(seed), labeled=labeled)
        allowed = _nearest_centroid_outcomes(cohort, windows, np.random.default_rng(seed))
        assert 1 <= len(allowed) <= 64  # a few exact ties (two-window clusters): the check stays sharp
        assert _boxes(selection) in allowed


def test_bad_options_and_a_store_without_its_slide_are_refused(embedded_cohort, encoder):
    with pytest.raises(StrategyError, match="features must be one of"):
        get_strategy("diversity", features="regions")
    with pytest.raises(StrategyError, match="batch_size"):
        get_strategy("diversity", features="region", batch_size=0)
    lost = Cohort([dataclasses.replace(embedded_cohort.slides[0], slide_path=Path(""))], embedded_cohort.attrs)
    with pytest.raises(StrategyError, match="names no slide file"):
        get_strategy("diversity", features="region", encoder=encoder).select(lost, BUDGET, np.random.default_rng(0))
    with pytest.raises(StrategyError, match="pass encoder="):
        get_strategy("diversity", features="region").select(Cohort(embedded_cohort.slides), BUDGET,
                                                            np.random.default_rng(0))
