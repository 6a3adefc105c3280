"""Score maps on a slide's patch grid: similarity to class prototypes (and, later, model uncertainty).

A score map is a float32 ``(rows, cols)`` array indexed like the slide's :class:`~alkit.grid.PatchGrid`;
region selectors (:mod:`alkit.regions`) take it as a plain array, so maps and selectors meet only
through arrays and boxes.

Similarity: for each embedded cell, the highest cosine similarity between its embedding and any of
the class's prototypes. Negative cosines are clipped to 0 — a patch pointing away from every
prototype is no evidence for the class, and window sums should not be pulled down by it — so values
lie in [0, 1]; cells without an embedding (not enough tissue) score 0. Computed in chunks of rows,
so memory is bounded by the chunk and the prototype matrix, not by the slide.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from alkit.store import EmbeddingStore

CHUNK = 32_768


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


def similarity_map(store: EmbeddingStore, prototypes: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """The slide's ``(rows, cols)`` similarity map to one class's prototypes (see module doc)."""
    rows, cols = store.grid.shape
    out = np.zeros((rows, cols), np.float32)
    if len(store.coords):
        out[store.coords[:, 0], store.coords[:, 1]] = max_cosine(store.features, prototypes, chunk)
    return out


def similarity_maps(store: EmbeddingStore, prototypes: Mapping[str, np.ndarray],
                    chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """One similarity map per class name."""
    return {name: similarity_map(store, protos, chunk) for name, protos in prototypes.items()}
