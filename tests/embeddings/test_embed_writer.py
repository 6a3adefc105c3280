"""The incremental store writer: datasets at final size, filled batch by batch, renamed when full."""

from __future__ import annotations

import numpy as np
import pytest

from alkit.atomic import TEMP_NAME
from alkit.embeddings.store import EmbeddingStore, StoreHeader, write_store
from alkit.embeddings.writer import IncrementalStore, chunk_rows

ATTRS = {"encoder": "handcrafted", "weights_id": "w", "mpp": 1.0, "patch": 64, "stride": 64, "min_tissue": 0.5,
         "slide": "s", "slide_dimensions": [640, 512], "slide_mpp": 0.5, "grid_shape": [4, 5]}


def cells_and_features(rng, dim=7):
    tissue = rng.random((4, 5)).astype(np.float32)
    coords = np.argwhere(tissue >= 0.3).astype(np.int32)
    return coords, rng.normal(size=(len(coords), dim)).astype(np.float32), tissue


def test_batches_in_any_order_give_the_store_write_store_writes(tmp_path):
    rng = np.random.default_rng(0)
    coords, feats, tissue = cells_and_features(rng)
    ref = EmbeddingStore.load(write_store(tmp_path / "ref.h5", coords, feats, ATTRS, tissue))
    store = IncrementalStore(tmp_path / "inc.h5", coords, ATTRS, feats.shape[1], tissue)
    assert TEMP_NAME.match(store.tmp.name) and not (tmp_path / "inc.h5").exists()
    order = rng.permutation(len(coords))
    for part in np.array_split(order, 4):  # scattered rows, as blocks from several workers arrive
        store.write(part, feats[part])
    assert store.complete
    got = EmbeddingStore.load(store.commit())
    np.testing.assert_array_equal(got.coords, ref.coords)
    np.testing.assert_array_equal(got.features, ref.features)
    np.testing.assert_array_equal(got.tissue_fraction, ref.tissue_fraction)
    assert got.attrs == ref.attrs and got.attrs["n"] == len(coords) and got.attrs["dim"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inc.h5", "ref.h5"]
    chunks = [block.copy() for _, block in StoreHeader.load(got.path).feature_chunks(3)]
    np.testing.assert_array_equal(np.concatenate(chunks), feats)


def test_a_store_with_rows_missing_is_never_renamed_into_place(tmp_path):
    rng = np.random.default_rng(1)
    coords, feats, tissue = cells_and_features(rng)
    store = IncrementalStore(tmp_path / "s.h5", coords, ATTRS, feats.shape[1], tissue)
    store.write(np.arange(3), feats[:3])
    with pytest.raises(ValueError, match="rows written twice"):
        store.write(np.array([2, 4]), feats[[2, 4]])
    with pytest.raises(ValueError, match="never written"):
        store.commit()
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone, no store appeared


def test_rows_outside_the_store_and_abort(tmp_path):
    rng = np.random.default_rng(2)
    coords, feats, _ = cells_and_features(rng)
    store = IncrementalStore(tmp_path / "s.h5", coords, ATTRS, feats.shape[1])
    with pytest.raises(ValueError, match="outside"):
        store.write(np.array([len(coords)]), feats[:1])
    store.abort()
    assert list(tmp_path.iterdir()) == []


def test_empty_store_and_chunk_rows(tmp_path):
    empty = IncrementalStore(tmp_path / "e.h5", np.zeros((0, 2)), ATTRS, 16, np.zeros((4, 5)))
    assert empty.complete
    store = EmbeddingStore.load(empty.commit())
    assert store.features.shape == (0, 16) and store.coords.shape == (0, 2)
    assert chunk_rows(10, 512) == 10 and chunk_rows(10**6, 512) == 128 and chunk_rows(10**6, 10**6) == 1
