"""Score maps on a slide's patch grid: similarity to class prototypes (and, later, model uncertainty).

A score map is a float32 ``(rows, cols)`` array indexed like the slide's :class:`~alkit.wsi.grid.PatchGrid`;
region selectors (:mod:`alkit.selection.regions`) take it as a plain array, so maps and selectors meet only
through arrays and boxes.

Similarity: for each embedded cell, the highest cosine similarity between its embedding and any of
the class's prototypes. Negative cosines are clipped to 0 — a patch pointing away from every
prototype is no evidence for the class, and window sums should not be pulled down by it — so values
lie in [0, 1]; cells without an embedding (not enough tissue) score 0. Computed in chunks of rows,
so memory is bounded by the chunk and the prototype matrix, not by the slide.

Dense grids (64-px patches at 0.25 µm/px: ~1M embedded cells on a 100k-px slide, 2 GB of float32
features at C = 512) need not be loaded at all: given a store *path* (or a
:class:`~alkit.embeddings.store.StoreHeader`) instead of an :class:`~alkit.embeddings.store.EmbeddingStore`, the maps are
computed streaming the HDF5 ``features`` rows in chunks (:func:`similarity_maps_from_file`), all
classes in one pass. Peak memory is then about ``chunk · C · (itemsize + 4) + chunk · K · 4`` bytes
(``chunk · C · 4`` for float32 stores)
(K: prototypes of all classes) plus, per slide, the ``(rows, cols)`` float32 maps, the tissue
fractions and the ``(n, 2)`` coords — never ``n · C``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from alkit.embeddings.store import EmbeddingStore, StoreHeader

CHUNK = 32_768
#: rows per streamed block: 16,384 × 512 float32 is 32 MB
FILE_CHUNK = 16_384
StoreLike = EmbeddingStore | StoreHeader | str | os.PathLike


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def max_cosine(features: np.ndarray, prototypes: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """``(n,)`` highest cosine similarity of each feature row to any prototype row, clipped to [0, 1]."""
    features = np.asarray(features)
    protos = _unit_rows(prototypes)
    if protos.ndim != 2 or protos.shape[0] == 0:
        raise ValueError(f"prototypes must be a non-empty (k, C) matrix, got shape {protos.shape}")
    if features.ndim != 2 or features.shape[1] != protos.shape[1]:
        raise ValueError(f"features of shape {features.shape} do not match prototypes of dimension {protos.shape[1]}")
    out = np.empty(len(features), np.float32)
    for start in range(0, len(features), chunk):
        block = _unit_rows(features[start:start + chunk])
        np.max(block @ protos.T, axis=1, out=out[start:start + chunk])
    return np.clip(out, 0.0, 1.0, out=out)


def similarity_map(store: StoreLike, prototypes: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """The slide's ``(rows, cols)`` similarity map to one class's prototypes (see module doc).

    ``store``: a loaded :class:`EmbeddingStore`, or a store path / :class:`StoreHeader` (streamed from
    disk, features never all in memory).
    """
    if not isinstance(store, EmbeddingStore):
        return similarity_maps_from_file(store, {"map": prototypes}, chunk)["map"]
    rows, cols = store.grid.shape
    out = np.zeros((rows, cols), np.float32)
    if len(store.coords):
        out[store.coords[:, 0], store.coords[:, 1]] = max_cosine(store.features, prototypes, chunk)
    return out


def similarity_maps(store: StoreLike, prototypes: Mapping[str, np.ndarray],
                    chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """One similarity map per class name (a path or header: one streamed pass for all classes)."""
    if not isinstance(store, EmbeddingStore):
        return similarity_maps_from_file(store, prototypes, chunk)
    return {name: similarity_map(store, protos, chunk) for name, protos in prototypes.items()}


def similarity_map_from_file(path: str | os.PathLike | StoreHeader, prototypes: np.ndarray,
                             chunk: int = FILE_CHUNK) -> np.ndarray:
    """:func:`similarity_map` of the store at ``path``, reading its features ``chunk`` rows at a time."""
    return similarity_maps_from_file(path, {"map": prototypes}, chunk)["map"]


def similarity_maps_from_file(path: str | os.PathLike | StoreHeader, prototypes: Mapping[str, np.ndarray],
                              chunk: int = FILE_CHUNK) -> dict[str, np.ndarray]:
    """Per class, the similarity map of the store at ``path``, in one streamed pass over its features.

    Each block of ``chunk`` rows is converted to float32 in a reused buffer, multiplied with the
    stacked unit prototypes of all classes and divided by its row norms (all-zero rows score 0);
    values agree with :func:`similarity_map` on the loaded store to float32 rounding.
    """
    header = path if isinstance(path, StoreHeader) else StoreHeader.load(path)
    if not prototypes:
        return {}
    mats = {name: _unit_rows(p) for name, p in prototypes.items()}
    for name, m in mats.items():
        if m.ndim != 2 or m.shape[0] == 0:
            raise ValueError(f"prototypes of {name!r} must be a non-empty (k, C) matrix, got shape {m.shape}")
        if m.shape[1] != header.dim:
            raise ValueError(f"{header.path}: features of dimension {header.dim} do not match prototypes of "
                             f"{name!r} of dimension {m.shape[1]}")
    stacked = np.ascontiguousarray(np.concatenate(list(mats.values()), axis=0).T)  # (C, K)
    bounds = np.cumsum([0] + [len(m) for m in mats.values()])
    rows, cols = header.grid.shape
    out = {name: np.zeros((rows, cols), np.float32) for name in mats}
    coords = header.coords
    chunk = max(1, int(chunk))
    block32 = np.empty((min(chunk, max(header.n, 1)) if header.dtype != np.float32 else 0, header.dim), np.float32)
    for start, block in header.feature_chunks(chunk):
        if block.dtype == np.float32:
            b = block  # read straight into float32: no second buffer
        else:
            b = block32[:len(block)]
            np.copyto(b, block, casting="unsafe")
        norms = np.sqrt(np.einsum("ij,ij->i", b, b))
        np.maximum(norms, 1e-12, out=norms)
        dots = b @ stacked  # (rows, K)
        r, c = coords[start:start + len(block), 0], coords[start:start + len(block), 1]
        for (name, m), lo, hi in zip(out.items(), bounds[:-1], bounds[1:]):
            best = dots[:, lo:hi].max(axis=1) / norms
            m[r, c] = np.clip(best, 0.0, 1.0)
    return out
