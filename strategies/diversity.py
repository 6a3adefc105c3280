"""Diversity sampling: regions that together cover the variety of tissue in the cohort.

Every slide is tiled into non-overlapping region-sized windows (in grid cells, from the top-left
corner; the last row and column are clipped to the map). A window's feature is the mean of the
L2-normalised embeddings of its tissue cells, normalised again; windows with less than
``min_tissue`` tissue, without embeddings, or overlapping labeled regions are left out. k-means
with k = N·n clusters (N slides, n regions per slide) runs over the windows of all slides together
(:func:`alkit.selection.clustering.kmeans`, seeded from ``rng``). Then, clusters in decreasing order of size,
each cluster takes the window nearest its centroid among those of slides that still have budget,
so no slide gets more than n; a slide gets fewer only when it has fewer eligible windows
(reported as a shortfall).
"""

from __future__ import annotations

import numpy as np

from alkit.selection.clustering import kmeans
from alkit.embeddings.cohort import Cohort, CohortSlide
from alkit.selection.regions import overlap_mask
from alkit.embeddings.store import StoreHeader
from alkit.selection.strategy import Budget, Labeled, Selection
from strategies._common import labeled_cells, to_picks


CHUNK = 16_384  # feature rows read at a time


class DiversityStrategy:
    """k-means over mean window embeddings of all slides; the window nearest each centroid."""

    name = "diversity"

    def __init__(self, min_tissue: float = 0.1, niter: int = 20):
        self.min_tissue = float(min_tissue)
        self.niter = int(niter)

    def windows(self, slide: CohortSlide, size: int, labeled: Labeled | None) -> tuple[np.ndarray, np.ndarray]:
        """Eligible windows of a slide: cell boxes ``(m, 4)`` and their features ``(m, C)``."""
        store = StoreHeader.load(slide.store_path)  # features stream in chunks: memory per chunk, not per slide
        rows, cols = slide.grid.shape
        n_r, n_c = -(-rows // size), -(-cols // size)
        window = (store.coords[:, 0] // size) * n_c + store.coords[:, 1] // size
        sums = np.zeros((n_r * n_c, store.dim), np.float64)
        for start, block in store.feature_chunks(CHUNK):
            feats = block.astype(np.float32)
            feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
            np.add.at(sums, window[start:start + len(block)], feats)
        counts = np.bincount(window, minlength=n_r * n_c)
        tissue = np.add.reduceat(np.add.reduceat(slide.grid.tissue_fraction, np.arange(0, rows, size), axis=0),
                                 np.arange(0, cols, size), axis=1).ravel()
        wr, wc = np.divmod(np.arange(n_r * n_c), n_c)
        boxes = np.stack([wc * size, wr * size, np.minimum(size, cols - wc * size),
                          np.minimum(size, rows - wr * size)], axis=1)
        ok = (counts > 0) & (tissue / (boxes[:, 2] * boxes[:, 3]) >= self.min_tissue)
        for lb in labeled_cells(slide, labeled):
            ok &= ~overlap_mask(lb, boxes)
        means = sums[ok] / counts[ok, None]
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        return boxes[ok], means.astype(np.float32)

    def select(self, cohort: Cohort, budget: Budget, rng: np.random.Generator,
               labeled: Labeled | None = None) -> Selection:
        selection = Selection(self.name)
        boxes, feats, owner = [], [], []
        for i, slide in enumerate(cohort):
            b, f = self.windows(slide, slide.grid.region_cells(budget.size), labeled)
            boxes.append(b)
            feats.append(f)
            owner.append(np.full(len(b), i))
        all_boxes, all_feats, all_owner = np.concatenate(boxes), np.concatenate(feats), np.concatenate(owner)
        k = min(len(cohort) * budget.n, len(all_feats))
        chosen: list[int] = []
        if k > 0:
            seed = int(rng.integers(0, 2**31 - 1))
            centroids, assignment = kmeans(all_feats, k, seed=seed, niter=self.niter)
            distance = _squared_distances(all_feats, centroids)
            left = np.full(len(cohort), budget.n)
            free = np.ones(len(all_feats), bool)
            sizes = np.bincount(assignment, minlength=k)
            for c in np.argsort(-sizes, kind="stable"):
                eligible = free & (left[all_owner] > 0)
                if not eligible.any():
                    break
                best = int(np.argmin(np.where(eligible, distance[:, c], np.inf)))
                chosen.append(best)
                free[best] = False
                left[all_owner[best]] -= 1
        for i, slide in enumerate(cohort):
            mine = [j for j in chosen if all_owner[j] == i]
            picks = [tuple(int(v) for v in all_boxes[j]) for j in mine]
            selection.regions += to_picks(slide, picks, None, self.name)
            selection.shortfall[slide.slide_id] = budget.n - len(picks)
        selection.report_shortfall()
        return selection


def _squared_distances(x: np.ndarray, centroids: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Squared distances ``(n, k)`` computed in row chunks (bounded temporary memory)."""
    c2 = (centroids ** 2).sum(1)
    out = np.empty((len(x), len(centroids)), np.float32)
    for s in range(0, len(x), chunk):
        block = x[s:s + chunk]
        out[s:s + chunk] = (block ** 2).sum(1)[:, None] - 2 * block @ centroids.T + c2[None]
    return out
