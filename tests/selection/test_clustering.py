"""k-means wrapper: shapes, determinism, both backends, input checks."""

from __future__ import annotations

import numpy as np
import pytest

from alkit.selection.clustering import faiss_available, kmeans

BACKENDS = ["sklearn"] + (["faiss"] if faiss_available() else [])


def _blobs(seed: int = 0, per: int = 60, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Four well separated Gaussian blobs of ``per`` rows each, and each row's blob."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, d)) * 10
    truth = np.repeat(np.arange(4), per)
    return (centres[truth] + rng.standard_normal((len(truth), d))).astype(np.float32), truth


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_shapes_determinism_and_separated_blobs(backend):
    x, _ = _blobs()
    centroids, assignment = kmeans(x, 4, seed=3, niter=10, backend=backend)
    assert centroids.shape == (4, 8) and centroids.dtype == np.float32
    assert assignment.shape == (len(x),) and assignment.dtype == np.int64
    again = kmeans(x, 4, seed=3, niter=10, backend=backend)
    np.testing.assert_array_equal(again[0], centroids)
    np.testing.assert_array_equal(again[1], assignment)
    # each row's assignment is its nearest centroid
    nearest = np.argmin(((x[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest, assignment)
    # clustering, not noise: far below the spread around the mean (random init may merge two blobs,
    # which still leaves the objective well under a third of it; a random assignment would not)
    spread = ((x - x.mean(0)) ** 2).sum(1).mean()
    for seed in range(3):
        c, a = kmeans(x, 8, seed=seed, niter=20, backend=backend)
        assert ((x - c[a]) ** 2).sum(1).mean() < spread / 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_subsamples_above_the_cap_and_still_assigns_every_row(backend):
    x, _ = _blobs(per=200)
    centroids, assignment = kmeans(x, 4, seed=0, niter=5, backend=backend, max_points_per_centroid=10)
    assert centroids.shape == (4, 8) and assignment.shape == (800,)
    assert set(assignment.tolist()) == {0, 1, 2, 3}


def test_kmeans_k_equal_to_n_and_input_checks():
    x, _ = _blobs(per=3)
    _, assignment = kmeans(x, len(x), seed=0, niter=3)
    assert sorted(assignment.tolist()) == list(range(len(x)))
    with pytest.raises(ValueError):
        kmeans(x, len(x) + 1)
    with pytest.raises(ValueError):
        kmeans(x, 0)
    with pytest.raises(ValueError):
        kmeans(x[0], 1)
    with pytest.raises(ValueError):
        kmeans(np.where(x > 0, np.nan, x), 2)
    with pytest.raises(ValueError):
        kmeans(x, 2, backend="cuml")


def test_auto_falls_back_to_scikit_learn_without_faiss(monkeypatch):
    import alkit.selection.clustering as clustering

    x, _ = _blobs()
    monkeypatch.setattr(clustering, "faiss_available", lambda: False)
    auto = clustering.kmeans(x, 4, seed=1, niter=5)
    forced = clustering.kmeans(x, 4, seed=1, niter=5, backend="sklearn")
    np.testing.assert_array_equal(auto[1], forced[1])
    np.testing.assert_array_equal(auto[0], forced[0])
