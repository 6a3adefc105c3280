"""k-means of embeddings, seeded: faiss when it is importable, scikit-learn otherwise.

Used by the diversity strategy (one cluster per region to annotate, the region nearest each centroid).
Both backends run Lloyd's algorithm from ``k`` distinct random rows for exactly ``niter`` iterations
(no early stop), in float32 (faiss) or float64 (scikit-learn), and assign every row to its nearest
centroid (squared L2) at the end. Results are reproducible for a given seed, backend and thread
count; the two backends do not give identical clusters.

Training on a subsample: with more than ``k · max_points_per_centroid`` rows, the centroids are fitted
on that many rows drawn at random (seeded), and all rows are assigned afterwards. faiss's own
default is 256 points per centroid; 64 (the default here) keeps the diversity strategy well inside
its time budget on a shared 2-core machine. Measured there for 200k × 512 clustered embeddings,
k = 1000, 20 iterations (``experiments/benchmarks/region_selection.py --kmeans-full``, three runs):
4.7–9.4 s on 64 000 rows against 9.5–19.5 s on all rows (and 41 s once, on Gaussian noise, while
other jobs held the cores), for an objective (mean squared distance of every row to its centroid)
0.9 % higher. Pass ``None`` to train on every row.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

Backend = Literal["auto", "faiss", "sklearn"]


def faiss_available() -> bool:
    """Whether the faiss backend can be used."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def kmeans(features: np.ndarray, k: int, seed: int = 0, niter: int = 20, *,
           backend: Backend = "auto", max_points_per_centroid: int | None = 64
           ) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the rows of ``features`` (N × d) into ``k`` groups.

    Returns ``(centroids, assignment)``: a (k, d) float32 array and an (N,) int64 array of each row's
    nearest centroid. ``backend="auto"`` takes faiss if importable, else scikit-learn; naming one
    forces it. Raises ``ValueError`` for fewer rows than clusters or non-finite features.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"features must be a 2-D array (N × d, d >= 1), got shape {x.shape}")
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= len(x):
        raise ValueError(f"k must be an integer in [1, N = {len(x)}], got {k!r}")
    if isinstance(niter, bool) or int(niter) != niter or niter < 1:
        raise ValueError(f"niter must be a positive integer, got {niter!r}")
    if not 0 <= seed < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed!r}")
    if not np.isfinite(x).all():
        raise ValueError("features must be finite")
    if max_points_per_centroid is not None and max_points_per_centroid < 1:
        raise ValueError(f"max_points_per_centroid must be >= 1 or None, got {max_points_per_centroid!r}")
    if backend == "auto":
        backend = "faiss" if faiss_available() else "sklearn"
    if backend == "faiss":
        return _kmeans_faiss(x, int(k), int(seed), int(niter), max_points_per_centroid)
    if backend == "sklearn":
        return _kmeans_sklearn(x, int(k), int(seed), int(niter), max_points_per_centroid)
    raise ValueError(f"backend must be 'auto', 'faiss' or 'sklearn', got {backend!r}")


def _kmeans_faiss(x: np.ndarray, k: int, seed: int, niter: int,
                  max_points: int | None) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1,
                      max_points_per_centroid=max_points if max_points is not None else max(len(x), 1))
    km.train(x)  # faiss subsamples (seeded) above k · max_points_per_centroid rows
    _, nearest = km.index.search(x, 1)
    log.debug("faiss k-means: %d rows, k=%d, %d iterations, objective %.6g", len(x), k, niter,
              km.obj[-1] if len(km.obj) else float("nan"))
    return np.array(km.centroids, dtype=np.float32), nearest[:, 0].astype(np.int64)


def _kmeans_sklearn(x: np.ndarray, k: int, seed: int, niter: int,
                    max_points: int | None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    train = x
    if max_points is not None and len(x) > k * max_points:
        rows = np.random.default_rng(seed).choice(len(x), size=k * max_points, replace=False)
        train = x[np.sort(rows)]
    km = KMeans(n_clusters=k, init="random", n_init=1, max_iter=niter, tol=0.0, random_state=seed,
                algorithm="lloyd")
    km.fit(train)
    assignment = km.predict(x) if train is not x else km.labels_
    log.debug("scikit-learn k-means: %d rows (%d for training), k=%d, %d iterations", len(x),
              len(train), k, niter)
    return km.cluster_centers_.astype(np.float32), np.asarray(assignment, dtype=np.int64)
