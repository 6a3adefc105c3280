"""The diversity strategy on stores with known clusters: each pick is exactly the window nearest its cluster's
centre, with k = N·n clusters over the windows of all slides together.

Two real HDF5 stores (``write_store``) of 16 × 16 cells (128 px, 4 × 4 windows of 512 px each) hold features
drawn, seeded, around four orthogonal centres: every window belongs to one known cluster, all its cells
carry the same vector, and the clusters span both slides. Where k-means recovers the planted partition
(checked from the assignment it returns), its centroids are the clusters' means, so the expected picks are
computed here from the planted clusters alone: clusters from the largest take, in turn, the window nearest
their mean among the slides with budget left. The planted layout makes that budget rule bind once.
"""

from __future__ import annotations

import numpy as np
import pytest

from alkit.embeddings.cohort import Cohort
from alkit.embeddings.store import write_store
from alkit.selection.clustering import kmeans
from alkit.selection.strategy import Budget, get_strategy

CELLS, PATCH, SIDE = 16, 128, 4  # 16 x 16 cells of 128 px; a 512-px region is 4 x 4 cells
BUDGET = Budget(n=2, size=SIDE * PATCH)
DIM = 8
# the cluster of each window, row-major per slide: sizes 11, 9, 7, 5 (distinct, so the order is known)
CLUSTERS = [np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]),
            np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3])]
# the window planted nearest each cluster's centre: (slide, window). Clusters 0, 1 and 2 all have theirs
# on slide 0, so cluster 2 (third by size) finds slide 0 full and takes its nearest window on slide 1
NEAREST = {0: (0, 2), 1: (0, 7), 2: (0, 12), 3: (1, 14)}


def _window_vectors(rng: np.random.Generator) -> list[np.ndarray]:
    """Per slide ``(16, DIM)``: centre ``e_c`` plus an offset orthogonal to every centre, radius 0.01 for the
    planted nearest window and 0.15-0.35 for the others."""
    out = []
    for s, labels in enumerate(CLUSTERS):
        vecs = np.zeros((len(labels), DIM))
        for w, c in enumerate(labels):
            direction = rng.normal(size=DIM - 4)
            radius = 0.01 if NEAREST[int(c)] == (s, w) else rng.uniform(0.15, 0.35)
            vecs[w, c] = 1.0
            vecs[w, 4:] = radius * direction / np.linalg.norm(direction)
        out.append(vecs)
    return out


def _write(folder, vectors: list[np.ndarray]) -> Cohort:
    paths = []
    rows, cols = np.divmod(np.arange(CELLS * CELLS), CELLS)
    window = (rows // SIDE) * (CELLS // SIDE) + cols // SIDE
    for s, vecs in enumerate(vectors):
        attrs = {"slide": f"slide{s}", "slide_dimensions": [CELLS * PATCH] * 2, "slide_mpp": 0.5, "mpp": 0.5,
                 "patch": PATCH, "stride": PATCH, "encoder": "planted", "weights_id": "none"}
        coords = np.stack([rows, cols], axis=1)
        scale = 1 + 0.5 * (np.arange(len(window)) % 3)  # cells differ in norm only: normalised, a window is one vector
        feats = (vecs[window] * scale[:, None]).astype(np.float32)
        paths.append(write_store(folder / f"slide{s}.h5", coords, feats, attrs, np.ones((CELLS, CELLS))))
    return Cohort.from_stores(paths)


def _box(w: int) -> tuple[int, int, int, int]:
    """The level-0 box of window ``w`` (row-major over the 4 x 4 windows)."""
    r, c = divmod(w, CELLS // SIDE)
    return (c * SIDE * PATCH, r * SIDE * PATCH, SIDE * PATCH, SIDE * PATCH)


def _expected(vectors: list[np.ndarray]) -> tuple[list[tuple[str, tuple]], dict[int, tuple[int, int]]]:
    """Picks from the planted clusters: per cluster by decreasing size, the window nearest its mean among
    free windows of slides with budget left; the margin to the runner-up is checked (no near-ties)."""
    unit = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in vectors]
    windows = [(s, w) for s in range(len(unit)) for w in range(len(unit[s]))]
    x = np.array([unit[s][w] for s, w in windows])
    label = np.array([CLUSTERS[s][w] for s, w in windows])
    sizes = np.bincount(label)
    assert len(set(sizes)) == len(sizes)
    left, chosen, by_cluster = [BUDGET.n] * len(unit), [], {}
    for c in np.argsort(-sizes):
        mean = x[label == c].mean(axis=0)
        d = ((x - mean) ** 2).sum(axis=1)
        free = [i for i, (s, _) in enumerate(windows) if i not in chosen and left[s] > 0]
        order = sorted(free, key=lambda i: d[i])
        assert d[order[1]] - d[order[0]] > 1e-4  # unambiguous: float32 k-means is ~1e-6 off
        chosen.append(order[0])
        left[windows[order[0]][0]] -= 1
        by_cluster[int(c)] = windows[order[0]]
    # the strategy lists its picks slide by slide, each slide's in the order they were chosen
    picks = [(f"slide{s}", _box(windows[i][1])) for s in range(len(unit)) for i in chosen if windows[i][0] == s]
    return picks, by_cluster


def _recovered(vectors: list[np.ndarray], seed: int) -> bool:
    """Whether k-means (k = N·n over the windows of all slides, seeded as the strategy seeds it) finds the
    planted partition."""
    unit = np.concatenate([v / np.linalg.norm(v, axis=1, keepdims=True) for v in vectors]).astype(np.float32)
    k = len(vectors) * BUDGET.n
    _, assignment = kmeans(unit, k, seed=int(np.random.default_rng(seed).integers(0, 2**31 - 1)))
    label = np.concatenate(CLUSTERS)
    return all(len(set(assignment[label == c])) == 1 for c in range(k)) and len(set(assignment)) == k


def test_each_pick_is_the_window_nearest_its_planted_cluster_centre(tmp_path):
    vectors = _window_vectors(np.random.default_rng(11))
    cohort = _write(tmp_path, vectors)
    expected, by_cluster = _expected(vectors)
    # the planted layout: clusters 0, 1 take their planted nearest windows on slide 0; cluster 2 finds
    # slide 0 full and takes a window of its own on slide 1; cluster 3 its planted nearest
    assert by_cluster[0] == NEAREST[0] and by_cluster[1] == NEAREST[1] and by_cluster[3] == NEAREST[3]
    assert by_cluster[2][0] == 1 and CLUSTERS[1][by_cluster[2][1]] == 2
    strategy = get_strategy("diversity")
    recovered = 0
    for seed in range(12):
        selection = strategy.select(cohort, BUDGET, np.random.default_rng(seed))
        got = [(p.slide, p.box) for p in selection.regions]
        assert len(got) == len(cohort) * BUDGET.n and selection.shortfall == {"slide0": 0, "slide1": 0}
        if _recovered(vectors, seed):
            recovered += 1
            assert got == expected, seed
    assert recovered >= 3  # the exact check ran for several seeds


def test_k_is_slides_times_n_over_the_windows_of_all_slides(tmp_path):
    """With one slide's worth of clusters per slide (k = n, or clustering each slide alone) the picks could
    not cover all four planted clusters; with k = N·n over all windows they do, one pick each."""
    vectors = _window_vectors(np.random.default_rng(11))
    cohort = _write(tmp_path, vectors)
    strategy = get_strategy("diversity")
    box_to_window = {_box(w): w for w in range(16)}
    for seed in range(12):
        if not _recovered(vectors, seed):
            continue
        picks = strategy.select(cohort, BUDGET, np.random.default_rng(seed)).regions
        clusters = sorted(int(CLUSTERS[int(p.slide[-1])][box_to_window[p.box]]) for p in picks)
        assert clusters == [0, 1, 2, 3], seed


@pytest.mark.parametrize("seed", [3])
def test_the_strategy_reads_the_stores_features(tmp_path, seed):
    """Moving the planted nearest window of cluster 3 moves the pick (the stores are what is clustered)."""
    vectors = _window_vectors(np.random.default_rng(11))
    moved = [v.copy() for v in vectors]
    moved[1][[14, 15]] = moved[1][[15, 14]]  # swap two windows of cluster 3 on slide 1
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _write(tmp_path / "a", vectors), _write(tmp_path / "b", moved)
    strategy = get_strategy("diversity")
    a = [(p.slide, p.box) for p in strategy.select(first, BUDGET, np.random.default_rng(seed)).regions]
    b = [(p.slide, p.box) for p in strategy.select(second, BUDGET, np.random.default_rng(seed)).regions]
    assert _recovered(vectors, seed) and _recovered(moved, seed)
    assert ("slide1", _box(14)) in a and ("slide1", _box(15)) in b and ("slide1", _box(15)) not in a
