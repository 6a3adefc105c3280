"""Similarity maps: max cosine to prototypes, clipped to [0, 1], zero off tissue, chunk-invariant."""

from __future__ import annotations

import numpy as np
import pytest

from alkit.prototypes.maps import max_cosine, similarity_map, similarity_maps
from alkit.embeddings.store import EmbeddingStore


def _store(tmp_path, features, coords, shape=(4, 5)):
    from alkit.embeddings.store import write_store

    attrs = {"encoder": "x", "weights_id": "w", "mpp": 0.5, "patch": 10, "stride": 10, "min_tissue": 0.5,
             "slide_dimensions": [shape[1] * 20, shape[0] * 20], "slide_mpp": 0.25}
    return EmbeddingStore.load(write_store(tmp_path / "s.h5", coords, features, attrs))


def test_max_cosine_matches_brute_force_and_clips_negatives():
    rng = np.random.default_rng(0)
    feats, protos = rng.normal(size=(1000, 16)), rng.normal(size=(3, 16))
    cos = np.array([[f @ p / np.linalg.norm(f) / np.linalg.norm(p) for p in protos] for f in feats]).max(1)
    got = max_cosine(feats, protos, chunk=64)
    np.testing.assert_allclose(got, np.clip(cos, 0, 1), atol=1e-5)
    assert (cos < 0).any() and got.min() == 0.0 and got.max() <= 1.0
    np.testing.assert_array_equal(got, max_cosine(feats, protos, chunk=7))
    with pytest.raises(ValueError, match="do not match"):
        max_cosine(feats, rng.normal(size=(2, 8)))


def test_similarity_map_on_the_grid(tmp_path):
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    store = _store(tmp_path, feats, np.array([[0, 0], [1, 2], [3, 4]]))
    smap = similarity_map(store, np.array([[2.0, 0.0]]))
    assert smap.shape == (4, 5) and smap.dtype == np.float32
    assert smap[0, 0] == pytest.approx(1.0) and smap[1, 2] == pytest.approx(0.0) and smap[3, 4] == 0.0
    assert smap.sum() == pytest.approx(1.0)  # cells without embeddings score 0
    both = similarity_maps(store, {"a": np.array([[1.0, 0.0]]), "b": np.array([[0.0, 1.0], [1.0, 1.0]])})
    assert set(both) == {"a", "b"} and both["b"][1, 2] == pytest.approx(1.0)
    assert both["b"][0, 0] == pytest.approx(np.sqrt(0.5))
