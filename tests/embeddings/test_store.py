"""Embedding stores: atomic writes, cache keys, loading as a map or as rows."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from alkit.embeddings.cohort import expand_slide_paths
from alkit.wsi.slide import SlideError
from alkit.embeddings.store import EmbeddingStore, StoreError, is_cached, read_attrs, store_path, write_store

ATTRS = {"encoder": "handcrafted", "weights_id": "handcrafted-v1", "mpp": 0.5, "patch": 32, "stride": 32,
         "min_tissue": 0.5, "slide_dimensions": [640, 320], "slide_mpp": 0.25}


def test_write_load_and_map(tmp_path):
    coords = np.array([[0, 1], [2, 3], [4, 9]])
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = write_store(store_path(tmp_path, "slide A", "resnet18@/x/y.ckpt", 0.5, 32, 32), coords, feats, ATTRS)
    assert path.name == "slide-A__resnet18-x-y.ckpt__0.5mpp_32px_s32.h5"
    assert not list(tmp_path.glob(".*tmp*"))
    store = EmbeddingStore.load(path)
    assert store.grid.shape == (5, 10) and store.dim == 4
    assert store.attrs["n"] == 3 and "alkit_version" in store.attrs
    fmap, valid = store.as_map()
    assert fmap.shape == (5, 10, 4) and valid.sum() == 3
    np.testing.assert_array_equal(fmap[2, 3], feats[1])
    assert not fmap[0, 0].any() and not valid[0, 0]


def test_cache_key_attributes(tmp_path):
    path = write_store(tmp_path / "s.h5", np.zeros((0, 2)), np.zeros((0, 8), np.float32), ATTRS)
    assert is_cached(path, ATTRS)
    assert not is_cached(path, {**ATTRS, "weights_id": "other"})
    assert not is_cached(path, {**ATTRS, "mpp": 0.25})
    assert not is_cached(tmp_path / "absent.h5", ATTRS)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="2 coords but 3 feature rows"):
        write_store(tmp_path / "s.h5", np.zeros((2, 2)), np.zeros((3, 4)), ATTRS)
    assert list(tmp_path.iterdir()) == []


def test_foreign_files_are_not_stores(tmp_path):
    (tmp_path / "junk.h5").write_text("nope")
    with pytest.raises(StoreError, match="junk.h5"):
        read_attrs(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not an alkit embedding store"):
        read_attrs(tmp_path / "other.h5")
    assert not is_cached(tmp_path / "junk.h5", ATTRS)


def test_expand_slide_paths(tmp_path):
    for name in ("a.svs", "b.svs", "c.tif"):
        (tmp_path / name).touch()
    (tmp_path / "list.txt").write_text("# cohort\nc.tif\n\na.svs  # again\n")
    got = expand_slide_paths([str(tmp_path / "*.svs"), str(tmp_path / "list.txt")])
    assert got == [tmp_path / "a.svs", tmp_path / "b.svs", tmp_path / "c.tif"]
    with pytest.raises(SlideError, match="no slide matches"):
        expand_slide_paths([str(tmp_path / "*.ndpi")])
    with pytest.raises(SlideError, match="no such slide-list file"):
        expand_slide_paths([str(tmp_path / "missing.txt")])


def test_header_reads_exactly_the_rows_asked_for(tmp_path):
    """StoreHeader.read_rows equals indexing the loaded features, for rows in any order with repeats,
    runs split by gaps and by the read-size limit, and a read touching only the rows it needs."""
    from alkit.embeddings.store import StoreHeader

    rng = np.random.default_rng(0)
    n, dim = 5000, 7
    coords = np.stack(np.divmod(np.arange(n), 100), axis=1)
    feats = rng.standard_normal((n, dim)).astype(np.float16)
    path = write_store(tmp_path / "s.h5", coords, feats, {**ATTRS, "slide_dimensions": [6400, 3200]})
    header = StoreHeader.load(path)
    cases = [rng.integers(0, n, 300), np.arange(n)[::-1], np.array([n - 1, 0, 0, n - 1]),
             np.r_[np.arange(10, 40), np.arange(4000, 4100)], np.zeros(0, np.int64)]
    for rows in cases:
        for gap, chunk in [(64, 16384), (1, 1), (2, 7), (10_000, 50)]:
            got = header.read_rows(rows, gap=gap, chunk=chunk)
            assert got.dtype == np.float16 and got.shape == (len(rows), dim)
            np.testing.assert_array_equal(got, feats[rows])
    np.testing.assert_array_equal(EmbeddingStore.load(path).read_rows(cases[0]), feats[cases[0]])
    for bad in ([n], [-1]):
        with pytest.raises(IndexError, match="s.h5"):
            header.read_rows(np.array(bad))
