"""Uncertainty measures against hand-computed values and their defining properties; maps on the grid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alkit.selection.adaptive import select_adaptive
from alkit.selection.regions import boxes_overlap, select_standard
from alkit.al.uncertainty import (MEASURES, bald, binary_probs, entropy, least_confidence, margin, uncertainty,
                               uncertainty_map)


def _h(*p: float) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def test_hand_computed_values():
    two = np.array([0.2, 0.8])
    three = np.array([0.5, 0.3, 0.2])
    assert entropy(two) == pytest.approx(0.2 * math.log(5) + 0.8 * math.log(1.25))  # 0.500402
    assert entropy(three) == pytest.approx(1.0296530140645737)
    assert margin(two) == pytest.approx(1 - (0.8 - 0.2)) and margin(three) == pytest.approx(1 - (0.5 - 0.3))
    assert least_confidence(two) == pytest.approx(0.2) and least_confidence(three) == pytest.approx(0.5)
    # two MC samples that disagree completely but are each confident: BALD = H(0.5) - H(0.9)
    samples = binary_probs(np.array([0.9, 0.1]))
    assert bald(samples) == pytest.approx(math.log(2) - _h(0.9, 0.1))  # 0.368064
    # rows are independent: a batch gives the per-row values
    batch = np.stack([two, [0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(entropy(batch), [entropy(two), math.log(2), 0.0])


def test_binary_maximum_at_one_half_and_symmetry():
    p = np.linspace(0, 1, 101)
    for measure in ("entropy", "margin", "least_confidence"):
        u = uncertainty(measure, p, binary=True)
        assert np.argmax(u) == 50 and np.all(u >= 0)
        np.testing.assert_allclose(u, u[::-1], atol=1e-12)  # p and 1 - p are equally uncertain
        assert u[0] == u[-1] == 0.0  # certain predictions score 0
        assert np.all(np.diff(u[:51]) > 0)  # rises monotonically towards 0.5
    assert uncertainty("entropy", 0.5, binary=True) == pytest.approx(math.log(2))
    assert uncertainty("margin", 0.5, binary=True) == pytest.approx(1.0)
    assert uncertainty("least_confidence", 0.5, binary=True) == pytest.approx(0.5)


def test_k_class_bounds_on_random_probabilities():
    rng = np.random.default_rng(0)
    k = 4
    probs = rng.dirichlet(np.ones(k), size=2000)
    assert np.all(entropy(probs) <= math.log(k) + 1e-12)
    assert entropy(np.full(k, 1 / k)) == pytest.approx(math.log(k))
    assert np.all((margin(probs) >= 0) & (margin(probs) <= 1))
    assert np.all((least_confidence(probs) >= 0) & (least_confidence(probs) <= 1 - 1 / k + 1e-12))


def test_bald_is_non_negative_and_zero_when_samples_agree():
    rng = np.random.default_rng(1)
    mc = rng.dirichlet(np.ones(3) * 0.5, size=(20, 500))  # (T, n, K)
    b = bald(mc)
    assert b.shape == (500,) and np.all(b >= 0)
    assert np.all(b <= entropy(mc.mean(axis=0)) + 1e-12)  # mutual information <= predictive entropy
    agree = np.repeat(rng.dirichlet(np.ones(3), size=(1, 50)), 10, axis=0)  # every sample identical
    np.testing.assert_allclose(bald(agree), 0.0, atol=1e-12)
    # uncertain but unanimous (all samples at 0.5): high entropy, zero BALD
    unanimous = np.full((8, 1), 0.5)
    assert uncertainty("bald", unanimous, mc=True, binary=True)[0] == pytest.approx(0.0, abs=1e-12)
    assert uncertainty("entropy", unanimous, mc=True, binary=True)[0] == pytest.approx(math.log(2))


def test_mc_measures_use_the_predictive_mean():
    mc = np.array([[0.9], [0.1]])  # (T=2, n=1) tumour probabilities
    assert uncertainty("entropy", mc, mc=True, binary=True)[0] == pytest.approx(math.log(2))
    assert uncertainty("least_confidence", mc, mc=True, binary=True)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="Monte-Carlo"):
        uncertainty("bald", mc[0], binary=True)


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown uncertainty measure"):
        uncertainty("variance", np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="sum to 1"):
        entropy(np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="within"):
        uncertainty("entropy", np.array([1.5]), binary=True)
    with pytest.raises(ValueError, match="finite"):
        entropy(np.array([np.nan, 1.0]))


def test_maps_score_zero_outside_valid_cells():
    rng = np.random.default_rng(2)
    p = rng.uniform(size=(5, 7))
    valid = rng.uniform(size=(5, 7)) > 0.3
    p_with_junk = np.where(valid, p, 7.0)  # cells without embeddings may hold anything
    for measure in ("entropy", "margin", "least_confidence"):
        m = uncertainty_map(measure, p_with_junk, valid)
        assert m.dtype == np.float32 and m.shape == (5, 7)
        assert np.all(m[~valid] == 0)
        np.testing.assert_allclose(m[valid], uncertainty(measure, p[valid], binary=True), rtol=1e-6)
    # class-probability maps (rows, cols, K) give the same as the binary form
    probs = binary_probs(p)
    np.testing.assert_allclose(uncertainty_map("entropy", probs, valid), uncertainty_map("entropy", p, valid))
    # MC samples first
    mc = rng.uniform(size=(6, 5, 7))
    b = uncertainty_map("bald", mc, valid, mc=True)
    assert np.all(b[~valid] == 0) and np.all(b[valid] >= 0) and np.isfinite(b).all()
    np.testing.assert_allclose(uncertainty_map("bald", binary_probs(mc), valid, mc=True), b, rtol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        uncertainty_map("entropy", p[:4], valid)
    assert set(MEASURES) == {"entropy", "margin", "least_confidence", "bald"}


def test_map_drives_the_selectors_with_labeled_regions_excluded():
    """Two uncertain blobs on a confident map; the labeled one is never picked again."""
    p = np.full((24, 24), 0.02)
    p[2:6, 2:6] = 0.5  # most uncertain, but already labeled
    p[14:18, 15:19] = 0.35
    valid = np.ones_like(p, bool)
    labeled = [(1, 1, 6, 6)]
    for measure in ("entropy", "margin", "least_confidence"):
        score = uncertainty_map(measure, p, valid)
        assert select_standard(score, 4, 1) == [(2, 2, 4, 4)]  # without exclusion: the labeled blob
        for select in (select_standard, select_adaptive):
            picks = select(score, 4, 1, labeled=labeled)
            assert len(picks) == 1 and not boxes_overlap(picks[0], labeled[0])
            x, y, w, h = picks[0]
            assert x <= 15 and y <= 14 and x + w >= 19 and y + h >= 18  # covers the other blob
