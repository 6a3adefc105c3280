"""Similarity maps, the gaps the mutation benchmark found: the streamed path (store path / header, every
stored dtype, every chunk size), several classes in one pass, prototypes of norm below 1, rounding above
1 clipped, float32 output, and the refusals with their messages. Expected values by brute force."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from alkit.embeddings.store import EmbeddingStore, StoreHeader, write_store
from alkit.prototypes.maps import (max_cosine, similarity_map, similarity_map_from_file, similarity_maps,
                                   similarity_maps_from_file)

SHAPE = (4, 5)
#: six embedded cells: parallel to a prototype, anti-parallel, zero, short, long, mixed signs
FEATURES = np.array([[0.3, 0.4, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0],
                     [0.01, 0.0, 0.02], [0.0, 5.0, 5.0], [2.0, -1.0, 0.5]])
COORDS = np.array([[0, 0], [0, 4], [1, 2], [2, 1], [3, 0], [3, 4]])
#: class "a": one prototype of norm 0.5; class "b": three prototypes, all of norm below 1
PROTOS = {"a": np.array([[0.5, 0.0, 0.0]]),
          "b": np.array([[0.0, 0.3, 0.4], [0.06, 0.08, 0.0], [0.0, 0.0, -0.2]])}


def _brute_cosine(feature, prototypes) -> float:
    """max over prototypes of f.p / (|f| |p|), clipped to [0, 1]; 0 for a zero feature (plain floats)."""
    f = [float(v) for v in feature]
    nf = math.sqrt(sum(v * v for v in f))
    if nf == 0:
        return 0.0
    best = max(sum(a * b for a, b in zip(f, p)) / (nf * math.sqrt(sum(float(b) ** 2 for b in p)))
               for p in prototypes)
    return min(max(best, 0.0), 1.0)


def _brute_map(features, coords, prototypes) -> np.ndarray:
    out = np.zeros(SHAPE)
    for f, (r, c) in zip(features, coords):
        out[r, c] = _brute_cosine(f, prototypes)
    return out


def _write(tmp_path: Path, features: np.ndarray, coords: np.ndarray = COORDS, name: str = "s.h5") -> Path:
    attrs = {"encoder": "x", "weights_id": "w", "mpp": 0.5, "patch": 10, "stride": 10, "min_tissue": 0.5,
             "slide_dimensions": [SHAPE[1] * 20, SHAPE[0] * 20], "slide_mpp": 0.25}
    return write_store(tmp_path / name, coords, features, attrs)


def test_max_cosine_divides_by_norms_below_one_and_returns_float32():
    """Prototypes and features shorter than 1 are normalised (not left as they are); output is float32."""
    got = max_cosine(FEATURES, PROTOS["b"])
    expected = [_brute_cosine(f, PROTOS["b"]) for f in FEATURES]
    assert got.dtype == np.float32 and got.shape == (6,)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got[0] == pytest.approx(1.0, abs=1e-6)  # (0.3, 0.4, 0) is parallel to (0.06, 0.08, 0)
    assert got[3] == pytest.approx(0.8 * 2 / math.sqrt(5), abs=1e-6)  # (0.01, 0, 0.02) against (0, 0.3, 0.4)
    assert got[2] == 0.0  # a zero feature scores 0, not NaN


def test_max_cosine_clips_rounding_above_one():
    """Each row against itself has cosine 1; float32 rounding lands above 1 for some, clipped to exactly 1."""
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(3000, 16)) * rng.uniform(0.1, 50, size=(3000, 1))
    got = max_cosine(rows, rows, chunk=512)
    assert got.max() <= 1.0 and got.min() > 0.999
    assert (got == 1.0).any()


@pytest.mark.parametrize("protos", [np.zeros((0, 3)), np.ones((2, 3, 1))], ids=["empty", "3-D"])
def test_max_cosine_refuses_prototypes_that_are_no_matrix(protos):
    with pytest.raises(ValueError, match=r"prototypes must be a non-empty \(k, C\) matrix, got shape"):
        max_cosine(FEATURES, protos)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("chunk", [0, 1, 2, 4, 6, 100])
def test_streamed_maps_match_brute_force(tmp_path, dtype, chunk):
    """Path and header inputs, all classes in one pass, any stored dtype, any chunk size."""
    feats = FEATURES.astype(dtype)
    path = _write(tmp_path, feats)
    expected = {name: _brute_map(feats, COORDS, p) for name, p in PROTOS.items()}
    for got in (similarity_maps_from_file(path, PROTOS, chunk),
                similarity_maps_from_file(StoreHeader.load(path), PROTOS, chunk),
                similarity_maps(path, PROTOS, chunk), similarity_maps(str(path), PROTOS, chunk)):
        assert set(got) == {"a", "b"}
        for name, smap in got.items():
            assert smap.shape == SHAPE and smap.dtype == np.float32
            np.testing.assert_allclose(smap, expected[name], atol=2e-6, err_msg=name)
    for name, p in PROTOS.items():
        for smap in (similarity_map(path, p, chunk), similarity_map(StoreHeader.load(path), p, chunk),
                     similarity_map_from_file(path, p, chunk)):
            assert smap.shape == SHAPE and smap.dtype == np.float32
            np.testing.assert_allclose(smap, expected[name], atol=2e-6, err_msg=name)


def test_streamed_and_loaded_agree(tmp_path):
    """A store path and the loaded store give the same maps (to float32 rounding), default chunks."""
    rng = np.random.default_rng(1)
    coords = np.array([(r, c) for r in range(SHAPE[0]) for c in range(SHAPE[1]) if (r + c) % 3])
    feats = rng.normal(size=(len(coords), 8)).astype(np.float32)
    protos = {"x": rng.normal(size=(2, 8)), "y": rng.normal(size=(5, 8)) * 0.01}
    path = _write(tmp_path, feats, coords)
    streamed, loaded = similarity_maps(path, protos), similarity_maps(EmbeddingStore.load(path), protos)
    assert set(streamed) == set(loaded) == {"x", "y"}
    for name in protos:
        np.testing.assert_allclose(streamed[name], loaded[name], atol=1e-6)
        np.testing.assert_allclose(streamed[name], _brute_map(feats, coords, protos[name]), atol=1e-5)
        assert (streamed[name][[r for r, c in coords], [c for r, c in coords]] > 0).any()


def test_streamed_clips_rounding_above_one(tmp_path):
    """Features equal to the prototypes score exactly 1 at most on the streamed path too."""
    rng = np.random.default_rng(7)
    coords = np.array([(r, c) for r in range(SHAPE[0]) for c in range(SHAPE[1])])
    feats = (rng.normal(size=(len(coords), 16)) * rng.uniform(0.1, 50, size=(len(coords), 1))).astype(np.float32)
    smap = similarity_map(_write(tmp_path, feats, coords), feats, chunk=3)
    assert smap.max() <= 1.0 and smap.min() > 0.999


def test_streamed_without_classes_or_rows(tmp_path):
    path = _write(tmp_path, FEATURES)
    assert similarity_maps_from_file(path, {}) == {} and similarity_maps(path, {}) == {}
    empty = _write(tmp_path, np.zeros((0, 3), np.float16), np.zeros((0, 2), int), name="empty.h5")
    maps = similarity_maps_from_file(empty, PROTOS)
    assert set(maps) == {"a", "b"}
    assert all(m.shape == SHAPE and m.dtype == np.float32 and not m.any() for m in maps.values())


def test_streamed_refusals_name_the_class_and_file(tmp_path):
    path = _write(tmp_path, FEATURES)
    empty = re.escape("prototypes of 'b' must be a non-empty (k, C) matrix, got shape (0, 3)")
    with pytest.raises(ValueError, match=f"^{empty}$"):
        similarity_maps_from_file(path, {"a": PROTOS["a"], "b": np.zeros((0, 3))})
    with pytest.raises(ValueError, match=r"prototypes of 'c' must be a non-empty .* got shape \(1, 3, 1\)"):
        similarity_maps_from_file(path, {"c": np.ones((1, 3, 1))})
    dims = re.escape(f"{path}: features of dimension 3 do not match prototypes of 'b' of dimension 2")
    with pytest.raises(ValueError, match=f"^{dims}$"):
        similarity_maps_from_file(path, {"a": PROTOS["a"], "b": np.ones((2, 2))})
    with pytest.raises(ValueError, match="do not match prototypes of 'map' of dimension 4"):
        similarity_map(path, np.ones((1, 4)))
