"""Diversity's assignment of clusters to windows without the (windows × clusters) distance matrix picks
exactly what the matrix-based greedy (the straightforward algorithm, kept here as the oracle) picks:
random and clustered features, exact ties (duplicated windows, more than the candidate depth),
slides running out of budget or of windows, several distance chunks."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.diversity import _squared_distances, nearest_per_cluster


def oracle(x, centroids, assignment, owner, slides, n):
    distance = _squared_distances(x, centroids)
    left = np.full(slides, n)
    free = np.ones(len(x), bool)
    chosen = []
    for c in np.argsort(-np.bincount(assignment, minlength=len(centroids)), kind="stable"):
        eligible = free & (left[owner] > 0)
        if not eligible.any():
            break
        best = int(np.argmin(np.where(eligible, distance[:, c], np.inf)))
        chosen.append(best)
        free[best] = False
        left[owner[best]] -= 1
    return chosen


def case(rng, rows, dim, k, slides, duplicates=0.0):
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    if duplicates:  # identical windows: ties at every distance
        x[rng.random(rows) < duplicates] = x[0]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centroids = x[rng.choice(rows, k, replace=False)] + 0.05 * rng.standard_normal((k, dim)).astype(np.float32)
    assignment = rng.integers(0, k, rows)
    owner = np.sort(rng.integers(0, slides, rows))
    return x, centroids.astype(np.float32), assignment, owner


@pytest.mark.parametrize("seed", range(4))
def test_equals_the_matrix_greedy(seed):
    rng = np.random.default_rng(seed)
    for rows, dim, k, slides, n, dup in [(500, 8, 40, 12, 3, 0.0), (3000, 16, 150, 50, 3, 0.0),
                                         (400, 4, 90, 30, 3, 0.5), (60, 3, 60, 40, 2, 0.0),
                                         (9000, 6, 30, 10, 3, 0.1), (300, 5, 100, 4, 1, 0.0)]:
        x, centroids, assignment, owner = case(rng, rows, dim, k, slides, dup)
        for depth in (1, 4, 32) if rows <= 600 else (4, 32) if rows <= 8192 else (32,):  # 9000 rows: two chunks
            got = nearest_per_cluster(x, centroids, assignment, owner, slides, n, depth=depth)
            assert got == oracle(x, centroids, assignment, owner, slides, n), (rows, k, depth)
