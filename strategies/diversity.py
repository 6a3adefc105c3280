"""Diversity sampling: regions that together cover the variety of tissue in the cohort.

Every slide is tiled into non-overlapping region-sized windows (in grid cells, from the top-left
corner; the last row and column are clipped to the map). Windows with less than ``min_tissue``
tissue, without embeddings, or overlapping labeled regions are left out. Each eligible window gets
one feature, chosen by ``features``:

* ``"patch_mean"`` (default): the mean of the L2-normalised embeddings of its tissue cells,
  normalised again. It costs one streamed pass over each store's features (no slide is read).
* ``"region"`` (the reference of Qiu et al.): the window itself, read from the slide and embedded
  once with the cohort's encoder (the spec in the stores' ``encoder`` attribute, or the ``encoder``
  object passed in), then L2-normalised. The window's level-0 box (the box a pick of it would
  have) is read at the resolution that maps a full region side onto the encoder's input side
  ``S`` (:meth:`alkit.wsi.slide.Slide.read` with ``size``; an 8192-px region for a 224-px encoder
  is read about 37× downsampled, from the coarsest pyramid level at least that fine), so a full
  window is an ``S × S`` image; a window clipped at the map's edge keeps that scale and is padded
  with white to ``S × S``, as if it went on over glass.
  Windows go through the encoder ``batch_size`` at a time on ``device`` under ``torch.no_grad``,
  in a fixed order, without progress bars: the same seed gives the same picks (on CPU; on an
  accelerator, as far as its kernels are deterministic). Cost: one slide read and one encoder
  forward per eligible window, on top of reading the stores' coordinates: a 100k × 200k px slide
  has 13 × 25 windows of 8192 px (those with tissue are embedded); each read decodes the window
  from a pyramid level near ``S`` px, but from level 0 (8192² px, slow) on a slide without coarse
  levels. The encoder is built once per strategy object and kept.

k-means with k = N·n clusters (N slides, n regions per slide) runs over the windows of all slides
together (:func:`alkit.selection.clustering.kmeans`, seeded from ``rng``). Then, clusters in
decreasing order of size, each cluster takes the window nearest its centroid among those of slides
that still have budget, so no slide gets more than n; a slide gets fewer only when it has fewer
eligible windows (reported as a shortfall).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from alkit.embeddings.cohort import Cohort, CohortSlide
from alkit.embeddings.store import StoreHeader
from alkit.selection.clustering import kmeans
from alkit.selection.regions import overlap_mask
from alkit.selection.strategy import Budget, Labeled, Selection, StrategyError
from alkit.wsi.slide import Slide
from strategies._common import labeled_cells, to_picks

if TYPE_CHECKING:
    from alkit.embeddings.encoders import Encoder

log = logging.getLogger(__name__)

CHUNK = 16_384  # feature rows read at a time
FEATURES = ("patch_mean", "region")  # the window features, the default first
WHITE = 255


class DiversityStrategy:
    """k-means over window features of all slides; the window nearest each centroid.

    ``features`` picks the window feature (module docstring): ``"patch_mean"`` (default) or
    ``"region"``; ``device``, ``batch_size`` and ``encoder`` only matter for ``"region"``. An
    ``encoder`` passed in is used where it lives (``device`` is then ignored) instead of the one the
    stores name; it should be the encoder the cohort was embedded with.
    """

    name = "diversity"

    def __init__(self, min_tissue: float = 0.1, niter: int = 20, features: str = "patch_mean",
                 device: str = "cpu", batch_size: int = 32, encoder: Encoder | None = None):
        if features not in FEATURES:
            raise StrategyError(f"diversity features must be one of {list(FEATURES)}, got {features!r}")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise StrategyError(f"diversity batch_size must be a positive integer, got {batch_size!r}")
        self.min_tissue = float(min_tissue)
        self.niter = int(niter)
        self.features = features
        self.device = device
        self.batch_size = int(batch_size)
        self.encoder = encoder
        self._built: dict[str, Encoder] = {}  # spec -> encoder built from it (once per strategy object)

    def windows(self, slide: CohortSlide, size: int, labeled: Labeled | None,
                encoder: Encoder | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Eligible windows of a slide: cell boxes ``(m, 4)`` and their features ``(m, C)``.

        ``encoder`` embeds the windows for ``features="region"`` (default: :meth:`encoder_for` the
        slide's store); it is not used for ``"patch_mean"``.
        """
        store = StoreHeader.load(slide.store_path)  # features stream in chunks: memory per chunk, not per slide
        rows, cols = slide.grid.shape
        n_r, n_c = -(-rows // size), -(-cols // size)
        window = (store.coords[:, 0] // size) * n_c + store.coords[:, 1] // size
        counts = np.bincount(window, minlength=n_r * n_c)
        tissue = np.add.reduceat(np.add.reduceat(slide.grid.tissue_fraction, np.arange(0, rows, size), axis=0),
                                 np.arange(0, cols, size), axis=1).ravel()
        wr, wc = np.divmod(np.arange(n_r * n_c), n_c)
        boxes = np.stack([wc * size, wr * size, np.minimum(size, cols - wc * size),
                          np.minimum(size, rows - wr * size)], axis=1)
        ok = (counts > 0) & (tissue / (boxes[:, 2] * boxes[:, 3]) >= self.min_tissue)
        for lb in labeled_cells(slide, labeled):
            ok &= ~overlap_mask(lb, boxes)
        if self.features == "region":
            encoder = encoder if encoder is not None else self.encoder_for(store.attrs.get("encoder"))
            return boxes[ok], self.region_features(slide, boxes[ok], size, encoder)
        sums = np.zeros((n_r * n_c, store.dim), np.float64)
        for start, block in store.feature_chunks(CHUNK):
            feats = block.astype(np.float32)
            feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
            _add_rows(sums, window[start:start + len(block)], feats)
        means = sums[ok] / counts[ok, None]
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        return boxes[ok], means.astype(np.float32)

    def encoder_for(self, spec: str | None) -> Encoder:
        """The encoder that embeds regions: the one passed in, else ``spec`` built on ``device`` (once)."""
        if self.encoder is not None:
            return self.encoder
        if not spec:
            raise StrategyError("diversity features='region' needs the cohort's encoder, but its stores name "
                                "none; pass encoder=")
        if spec not in self._built:
            from alkit.embeddings.encoders import get_encoder  # only region features need torch: fast start-up

            log.info("diversity: embedding regions with %s on %s", spec, self.device)
            self._built[spec] = get_encoder(spec, self.device)
        return self._built[spec]

    def region_features(self, slide: CohortSlide, cell_boxes: np.ndarray, size: int,
                        encoder: Encoder) -> np.ndarray:
        """L2-normalised embeddings ``(m, dim)`` of the windows ``cell_boxes`` (map cells) of ``slide``,
        each read as an ``S × S`` image (``S = encoder.input_size``) and embedded in batches."""
        import torch  # only region features need torch: fast start-up

        if len(cell_boxes) == 0:
            return np.zeros((0, encoder.dim), np.float32)
        if slide.slide_path == Path():
            raise StrategyError(f"{slide.store_path}: the store names no slide file; diversity features='region' "
                                "reads the slides")
        side = int(encoder.input_size)
        region0 = size * slide.grid.stride0  # level-0 side of a full window
        out = []
        training = encoder.training
        encoder.eval()
        try:
            with Slide(slide.slide_path, fallback_mpp=slide.grid.slide_mpp) as wsi, torch.no_grad():
                for start in range(0, len(cell_boxes), self.batch_size):
                    images = np.stack([window_image(wsi, slide.grid.cells_to_box(tuple(int(v) for v in b)),
                                                    region0, side)
                                       for b in cell_boxes[start:start + self.batch_size]])
                    out.append(encoder(torch.from_numpy(images)).float().cpu().numpy())
        finally:
            encoder.train(training)
        feats = np.concatenate(out).astype(np.float32)
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        log.debug("%s: %d windows embedded as %d-px regions", slide.slide_id, len(feats), side)
        return feats

    def select(self, cohort: Cohort, budget: Budget, rng: np.random.Generator,
               labeled: Labeled | None = None) -> Selection:
        selection = Selection(self.name)
        encoder = self.encoder_for(cohort.attrs.get("encoder")) if self.features == "region" else None
        boxes, feats, owner = [], [], []
        for i, slide in enumerate(cohort):
            b, f = self.windows(slide, slide.grid.region_cells(budget.size), labeled, encoder)
            boxes.append(b)
            feats.append(f)
            owner.append(np.full(len(b), i))
        all_boxes, all_feats, all_owner = np.concatenate(boxes), np.concatenate(feats), np.concatenate(owner)
        k = min(len(cohort) * budget.n, len(all_feats))
        chosen: list[int] = []
        if k > 0:
            seed = int(rng.integers(0, 2**31 - 1))
            centroids, assignment = kmeans(all_feats, k, seed=seed, niter=self.niter)
            chosen = nearest_per_cluster(all_feats, centroids, assignment, all_owner, len(cohort), budget.n)
        for i, slide in enumerate(cohort):
            mine = [j for j in chosen if all_owner[j] == i]
            picks = [tuple(int(v) for v in all_boxes[j]) for j in mine]
            selection.regions += to_picks(slide, picks, None, self.name)
            selection.shortfall[slide.slide_id] = budget.n - len(picks)
        selection.report_shortfall()
        return selection


def _add_rows(sums: np.ndarray, index: np.ndarray, rows: np.ndarray) -> None:
    """``sums[index[i]] += rows[i]`` for every i: one stable sort and one ``reduceat`` (numpy's
    ``add.at`` is an order of magnitude slower on feature rows)."""
    if len(index) == 0:
        return
    order = np.argsort(index, kind="stable")
    sorted_index = index[order]
    starts = np.flatnonzero(np.r_[True, sorted_index[1:] != sorted_index[:-1]])
    sums[sorted_index[starts]] += np.add.reduceat(rows[order].astype(np.float64), starts, axis=0)


def window_image(slide: Slide, box: tuple[int, int, int, int], region0: float, side: int) -> np.ndarray:
    """The level-0 ``box`` as uint8 ``(side, side, 3)``: read at ``side / region0`` output pixels per
    level-0 pixel (a full ``region0`` box fills the image), padded with white below and right."""
    x, y, w, h = box
    out_w = min(side, max(1, round(w * side / region0)))
    out_h = min(side, max(1, round(h * side / region0)))
    image = slide.read(box, size=(out_w, out_h))
    if (out_w, out_h) == (side, side):
        return image
    canvas = np.full((side, side, 3), WHITE, np.uint8)
    canvas[:out_h, :out_w] = image
    return canvas


def nearest_per_cluster(x: np.ndarray, centroids: np.ndarray, assignment: np.ndarray, owner: np.ndarray,
                        slides: int, n: int, depth: int = 32) -> list[int]:
    """Clusters in decreasing order of size (ties: lower index), each taking the row nearest its centroid
    (squared distance as :func:`_squared_distances` computes it; ties: the lower row) among rows not
    taken whose slide (``owner``) has fewer than ``n`` taken; stops when no row is eligible.

    Without the (rows × clusters) distance matrix, whose memory grows with the square of the cohort
    (windows and clusters both grow with the slides): per cluster only its ``depth`` nearest rows are
    kept, and ``limit``, a distance below which every row is among them. A cluster takes its first
    eligible candidate nearer than ``limit``; when it has none, the candidates of the clusters still
    to come are drawn again from the eligible rows only (rows never become eligible again).
    """
    k = len(centroids)
    left = np.full(slides, n)
    free = np.ones(len(x), bool)
    sizes = np.bincount(assignment, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    cand, dist, limit = _candidates(x, centroids, free, depth)
    chosen: list[int] = []

    def first_eligible(c: int) -> int | None:
        eligible = free[cand[c]] & (left[owner[cand[c]]] > 0) & (dist[c] < limit[c])
        return int(cand[c][np.argmax(eligible)]) if eligible.any() else None

    for c in order:
        best = first_eligible(c)
        if best is None:
            allowed = free & (left[owner] > 0)
            if not allowed.any():
                break
            cand, dist, limit = _candidates(x, centroids, allowed, depth)
            best = first_eligible(c)
            if best is None:  # more than ``depth`` rows tie at the nearest distance
                best = _nearest_allowed(x, centroids, int(c), allowed)
        chosen.append(best)
        free[best] = False
        left[owner[best]] -= 1
    return chosen


def _candidates(x: np.ndarray, centroids: np.ndarray, allowed: np.ndarray, depth: int,
                chunk: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per centroid, its ``depth`` nearest ``allowed`` rows in (distance, row) order, their distances, and a
    limit: every allowed row nearer than it is listed (``inf`` when all allowed rows are)."""
    k = len(centroids)
    c2 = (centroids ** 2).sum(1)
    cand = np.zeros((k, 0), np.int64)
    dist = np.zeros((k, 0), np.float32)
    limit = np.full(k, np.inf, np.float32)
    for s in range(0, len(x), chunk):  # the chunks and formula of _squared_distances: the same values
        block = x[s:s + chunk]
        d = np.empty((len(block), k), np.float32)
        d[:] = (block ** 2).sum(1)[:, None] - 2 * block @ centroids.T + c2[None]
        d = np.where(allowed[s:s + chunk, None], d, np.inf).T  # (k, rows of the chunk)
        rows = np.broadcast_to(np.arange(s, s + len(block)), d.shape)
        if d.shape[1] > depth:
            part = np.argpartition(d, depth - 1, axis=1)[:, :depth]
            kth = np.take_along_axis(d, part, axis=1).max(axis=1)  # rows left out are at least this far
            limit = np.minimum(limit, kth)
            d, rows = np.take_along_axis(d, part, axis=1), np.take_along_axis(rows, part, axis=1)
        dist, cand = np.concatenate([dist, d], axis=1), np.concatenate([cand, rows], axis=1)
        keep = np.lexsort((cand, dist), axis=1)
        dist, cand = np.take_along_axis(dist, keep, axis=1), np.take_along_axis(cand, keep, axis=1)
        if dist.shape[1] > depth:
            limit = np.minimum(limit, dist[:, depth])
            dist, cand = dist[:, :depth], cand[:, :depth]
    return cand, dist, limit


def _nearest_allowed(x: np.ndarray, centroids: np.ndarray, c: int, allowed: np.ndarray, chunk: int = 8192) -> int:
    """The allowed row nearest centroid ``c`` (ties: the lower row), with the values of :func:`_candidates`."""
    c2 = (centroids ** 2).sum(1)
    best, best_d = -1, np.inf
    for s in range(0, len(x), chunk):
        block = x[s:s + chunk]
        d = np.empty((len(block), len(centroids)), np.float32)
        d[:] = (block ** 2).sum(1)[:, None] - 2 * block @ centroids.T + c2[None]
        col = np.where(allowed[s:s + chunk], d[:, c], np.inf)
        i = int(np.argmin(col))
        if col[i] < best_d:
            best, best_d = s + i, col[i]
    return best


def _squared_distances(x: np.ndarray, centroids: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Squared distances ``(n, k)`` computed in row chunks (bounded temporary memory)."""
    c2 = (centroids ** 2).sum(1)
    out = np.empty((len(x), len(centroids)), np.float32)
    for s in range(0, len(x), chunk):
        block = x[s:s + chunk]
        out[s:s + chunk] = (block ** 2).sum(1)[:, None] - 2 * block @ centroids.T + c2[None]
    return out
