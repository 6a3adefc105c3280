"""``DiversityStrategy.region_features`` and ``encoder_for`` on small exact inputs (issue 18: mutants of
``strategies.diversity`` that the other diversity tests let live).

The slide is the real TCGA frozen section (4443 × 3567 px, no mpp metadata): its cohort grid supplies the
resolution (``grid.slide_mpp``), as a cohort embedded with ``--slide-mpp`` does. Expected features are the
encoder's embedding of the window read and padded by hand here, not through :func:`window_image`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from alkit.embeddings.cohort import CohortSlide
from alkit.embeddings.encoders import get_encoder
from alkit.selection.strategy import StrategyError, get_strategy
from alkit.wsi.grid import PatchGrid
from alkit.wsi.slide import Slide, SlideError
from strategies.diversity import _add_rows, _nearest_allowed

TCGA = "tcga-cr-7395-01a-01-ts1.svs"  # no mpp metadata
SLIDE_MPP = 0.5  # the cohort's resolution for it (what `alkit embed --slide-mpp 0.5` records in the grid)
WINDOW = 4  # cells per window side: 4 x 256 = 1024 level-0 px


@pytest.fixture(scope="module")
def encoder():
    return get_encoder("handcrafted")  # 256-px input, 97 features


@pytest.fixture(scope="module")
def tcga_slide(wsi) -> CohortSlide:
    """The TCGA slide as a cohort knows it: 256-px cells at its own 0.5 µm/px, an 18 × 14 grid."""
    grid = PatchGrid((4443, 3567), SLIDE_MPP, SLIDE_MPP, 256, 256)
    return CohortSlide("tcga", Path("tcga.h5"), wsi(TCGA), grid)


def _embed(encoder, image: np.ndarray) -> np.ndarray:
    """The encoder's L2-normalised feature of one ``(S, S, 3)`` uint8 image."""
    with torch.no_grad():
        f = encoder(torch.from_numpy(image[None])).numpy()[0].astype(np.float64)
    return f / np.linalg.norm(f)


def test_the_grid_mpp_opens_a_slide_without_mpp_metadata(tcga_slide, encoder, wsi):
    with pytest.raises(SlideError, match="no microns-per-pixel metadata"):
        Slide(wsi(TCGA))  # the slide alone cannot be read: region features must pass the grid's mpp
    strategy = get_strategy("diversity", features="region")
    feats = strategy.region_features(tcga_slide, np.array([[4, 4, WINDOW, WINDOW]]), WINDOW, encoder)
    with Slide(wsi(TCGA), mpp=SLIDE_MPP) as slide:
        image = slide.read((1024, 1024, 1024, 1024), size=(256, 256))  # cells 4..7: level-0 px 1024..2048
    assert feats.shape == (1, encoder.dim) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[0], _embed(encoder, image), atol=1e-5)


def test_a_clipped_edge_window_keeps_the_full_window_scale(tcga_slide, encoder, wsi):
    # the last column of windows starts at cell 16 and has 2 of its 4 columns (level-0 x 4096..4608, the
    # slide ends at 4443), the last row starts at cell 12 and has 2 rows (y 3072..3584, the slide ends at
    # 3567); the tissue reaches both edges in these windows (the corner one is glass but for a few pixels)
    cols, rows = tcga_slide.grid.shape[1], tcga_slide.grid.shape[0]
    assert (rows, cols) == (14, 18)
    boxes = np.array([[16, 8, 2, 4], [12, 12, 4, 2], [16, 12, 2, 2]])
    feats = get_strategy("diversity", features="region", batch_size=2).region_features(
        tcga_slide, boxes, WINDOW, encoder)
    assert feats.shape == (3, encoder.dim) and feats.dtype == np.float32
    # 1024 level-0 px fill the 256-px input: 4 level-0 px per output px, the rest white
    level0 = [(4096, 2048, 512, 1024), (3072, 3072, 1024, 512), (4096, 3072, 512, 512)]
    with Slide(wsi(TCGA), mpp=SLIDE_MPP) as slide:
        for feat, (x, y, w, h) in zip(feats, level0):
            canvas = np.full((256, 256, 3), 255, np.uint8)
            canvas[:h // 4, :w // 4] = slide.read((x, y, w, h), size=(w // 4, h // 4))
            np.testing.assert_allclose(feat, _embed(encoder, canvas), atol=1e-5)
            stretched = slide.read((x, y, w, h), size=(256, 256))  # the same box filling the input instead
            assert np.abs(feat - _embed(encoder, stretched)).max() > 1e-3


def test_no_windows_give_an_empty_float32_feature_matrix(tcga_slide, encoder):
    strategy = get_strategy("diversity", features="region")
    feats = strategy.region_features(tcga_slide, np.zeros((0, 4), np.int64), WINDOW, encoder)
    assert feats.shape == (0, encoder.dim) and feats.dtype == np.float32
    lost = CohortSlide("lost", Path("lost.h5"), Path(), tcga_slide.grid)  # no slide file: never read
    empty = strategy.region_features(lost, np.zeros((0, 4), np.int64), WINDOW, encoder)
    assert empty.shape == (0, encoder.dim) and empty.dtype == np.float32


def test_encoder_for_without_a_spec_says_how_to_fix_it():
    strategy = get_strategy("diversity", features="region")
    with pytest.raises(StrategyError) as err:
        strategy.encoder_for(None)
    assert str(err.value) == ("diversity features='region' needs the cohort's encoder, but its stores name none; "
                              "pass encoder=")


def test_encoder_for_builds_the_spec_on_the_strategy_device_once(caplog):
    strategy = get_strategy("diversity", features="region", device="meta")  # no memory, a device of its own
    with caplog.at_level(logging.INFO, logger="strategies.diversity"):
        built = strategy.encoder_for("handcrafted")
        assert strategy.encoder_for("handcrafted") is built
    assert {b.device.type for b in built.buffers()} == {"meta"}
    assert [r.getMessage() for r in caplog.records if r.name == "strategies.diversity"] == [
        "diversity: embedding regions with handcrafted on meta"]  # said once: built once


def test_add_rows_adds_every_row_even_one_and_keeps_what_was_there():
    sums = np.array([[0.0, 0.0], [1.0, 1.0], [10.0, 20.0]])
    _add_rows(sums, np.array([2]), np.array([[1.0, 2.0]], np.float32))  # a one-row chunk
    _add_rows(sums, np.array([0, 2, 0]), np.array([[1.0, 0.0], [0.5, 0.5], [2.0, 3.0]], np.float32))
    np.testing.assert_array_equal(sums, [[3.0, 3.0], [1.0, 1.0], [11.5, 22.5]])


def test_nearest_allowed_is_the_brute_force_nearest_allowed_row_across_chunks():
    rng = np.random.default_rng(5)
    x = rng.integers(-4, 5, (23, 3)).astype(np.float32)  # small integers: exact float32 distances, ties
    centroids = rng.integers(-4, 5, (4, 3)).astype(np.float32)
    centroids[0] = x[0]  # the first row is the nearest of the first centroid
    for c in range(4):
        for allowed in (np.ones(23, bool), np.arange(23) % 3 != 0, np.arange(23) >= 20):
            d = ((x.astype(np.float64) - centroids[c]) ** 2).sum(1)
            expected = int(np.flatnonzero(allowed & (d == d[allowed].min()))[0])  # ties: the lower row
            for chunk in (1, 5, 8192):
                assert _nearest_allowed(x, centroids, c, allowed, chunk=chunk) == expected
