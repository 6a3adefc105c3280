"""Training examples of the patch classifier: the labeled cells of a slide (:class:`LabeledCells`) and
the flat pool of those with an embedding in their store (:func:`gather_examples`), the cells the
classifier (:mod:`alkit.tasks.segmentation.classifier`) trains on and inference scores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from alkit.embeddings.store import EmbeddingStore, StoreHeader


@dataclass
class LabeledCells:
    """The labeled cells of one slide: ``cells`` (m, 2) grid (row, col), ``labels`` (m,) 0 normal /
    1 tumour, ``region_ids`` (m,) the labeled region each cell lies in (split unit for early stopping;
    regions are keyed by ``(slide_id, region_id)``, so ids may repeat across slides)."""

    slide_id: str
    store_path: str | os.PathLike
    cells: np.ndarray
    labels: np.ndarray
    region_ids: np.ndarray
    store: EmbeddingStore | None = field(default=None, repr=False)  # loaded store, saves a re-read
    slide_path: str | os.PathLike | None = None  # finetune: overrides the store's slide_path
    held_out: bool = False  # a validation slide's cells: the held-out set early stopping watches

    def __post_init__(self) -> None:
        self.cells = np.asarray(self.cells, np.int64).reshape(-1, 2)
        self.labels = np.asarray(self.labels).reshape(-1)
        self.region_ids = np.asarray(self.region_ids, np.int64).reshape(-1)
        if not (len(self.cells) == len(self.labels) == len(self.region_ids)):
            raise ValueError(f"{self.slide_id}: {len(self.cells)} cells, {len(self.labels)} labels and "
                             f"{len(self.region_ids)} region ids must match")
        if self.labels.size and not np.isin(self.labels, (0, 1)).all():
            raise ValueError(f"{self.slide_id}: labels must be 0 (normal) or 1 (tumour)")
        self.labels = self.labels.astype(np.int64)

    def load_store(self) -> EmbeddingStore | StoreHeader:
        """The store given, else the store's header: its features stay on disk until rows are read."""
        return self.store if self.store is not None else StoreHeader.load(self.store_path)


@dataclass
class ExamplePool:
    """All usable examples of one fit, flattened."""

    group: np.ndarray  # (n,) index into the LabeledCells list
    local: np.ndarray  # (n,) position among that LabeledCells' cells
    labels: np.ndarray  # (n,)
    regions: np.ndarray  # (n,) dense region index, one per (slide id, region id)
    rows: np.ndarray  # (n,) row of each cell in its store's features
    dropped: int  # labeled cells without an embedding
    held_out: np.ndarray | None = None  # (n,) bool: from a held-out (validation-slide) example

    def features(self, stores: Sequence[EmbeddingStore | StoreHeader]) -> np.ndarray:
        """``(n, dim)`` float32: each example's cached feature row, from the store of its group (only those
        rows are read from a :class:`StoreHeader`)."""
        feats = np.empty((len(self.labels), stores[0].dim), np.float32)
        for g, store in enumerate(stores):
            sel = np.flatnonzero(self.group == g)
            if len(sel):
                feats[sel] = store.read_rows(self.rows[sel])
        return feats


def gather_examples(examples: Sequence[LabeledCells], stores: Sequence[EmbeddingStore]) -> ExamplePool:
    """The labeled cells of ``examples`` (``stores[g]`` is the store of ``examples[g]``) that have an
    embedding, flattened; cells outside a store's grid are refused."""
    slide_index: dict[str, int] = {}
    groups, local, labels, keys, rows, dropped = [], [], [], [], [], 0
    for g, (ex, store) in enumerate(zip(examples, stores)):
        index = row_index(store)
        rr, cc = ex.cells[:, 0], ex.cells[:, 1]
        if len(rr) and (rr.min() < 0 or cc.min() < 0 or rr.max() >= index.shape[0] or cc.max() >= index.shape[1]):
            raise ValueError(f"{ex.slide_id}: labeled cells outside its {index.shape[0]}x{index.shape[1]} grid")
        row = index[rr, cc]
        kept = np.flatnonzero(row >= 0)
        dropped += len(rr) - len(kept)
        slide = slide_index.setdefault(ex.slide_id, len(slide_index))
        groups.append(np.full(len(kept), g, np.int64))
        local.append(kept)
        labels.append(ex.labels[kept])
        keys.append(np.stack([np.full(len(kept), slide, np.int64), ex.region_ids[kept]], axis=1))
        rows.append(row[kept])

    def cat(parts: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(shape, np.int64)

    all_keys = cat(keys, (0, 2))
    regions = (np.unique(all_keys, axis=0, return_inverse=True)[1].reshape(-1) if len(all_keys)
               else np.zeros(0, np.int64))
    group = cat(groups, (0,))
    held_out = np.array([ex.held_out for ex in examples], bool)[group] if len(group) else np.zeros(0, bool)
    return ExamplePool(group, cat(local, (0,)), cat(labels, (0,)), regions.astype(np.int64),
                       cat(rows, (0,)), dropped, held_out)


def row_index(store: EmbeddingStore | StoreHeader) -> np.ndarray:
    """``(rows, cols)`` int64: each cell's row in ``store.features``, -1 where not embedded."""
    index = np.full(store.grid.shape, -1, np.int64)
    index[store.coords[:, 0], store.coords[:, 1]] = np.arange(len(store.coords))
    return index
