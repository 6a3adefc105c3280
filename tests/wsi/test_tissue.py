"""Tissue detection on real tiles and slides, edge cases, and box fractions against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from alkit.wsi.slide import Slide
from alkit.wsi.tissue import TissueMask, detect_tissue, tissue_mask_from_rgb

TISSUE_TILES = ["high-nuclei-score-level0.png", "medium-nuclei-score-level0.png", "tcga-lung-rgb.png",
                "tissue-level0-7352-11762-7864-12274.png", "tissue-level2-3000-7666-7096-11763.png"]
EMPTY_TILES = ["no-tissue.png", "no-tissue-red-pen.png"]


def _tile(shared_data, name: str) -> np.ndarray:
    return np.asarray(Image.open(shared_data / "tiles" / "histolab" / name).convert("RGB"))


@pytest.mark.parametrize("name", TISSUE_TILES)
def test_tissue_tiles_are_mostly_tissue(shared_data, name):
    assert tissue_mask_from_rgb(_tile(shared_data, name), mpp=0.5).fraction > 0.75


@pytest.mark.parametrize("name", EMPTY_TILES)
def test_no_tissue_tiles_are_empty_even_with_red_pen(shared_data, name):
    assert tissue_mask_from_rgb(_tile(shared_data, name), mpp=0.5).fraction < 0.02


def test_almost_white_tile_has_little_tissue(shared_data):
    assert tissue_mask_from_rgb(_tile(shared_data, "almost-white-2.png"), mpp=0.5).fraction < 0.1


def test_all_background_and_all_tissue_images():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(242, 3, (400, 400, 3)), 0, 255).astype(np.uint8)
    assert tissue_mask_from_rgb(glass, mpp=8.0).fraction == 0.0
    pink = np.clip(rng.normal((220, 150, 190), 12, (400, 400, 3)), 0, 255).astype(np.uint8)
    full = tissue_mask_from_rgb(pink, mpp=8.0)
    assert full.fraction == 1.0
    assert tissue_mask_from_rgb(np.full((5, 5, 3), 255, np.uint8), mpp=8.0).fraction == 0.0
    with pytest.raises(ValueError, match="RGB uint8"):
        tissue_mask_from_rgb(np.zeros((5, 5), np.uint8), mpp=8.0)


def test_tissue_blob_found_in_place():
    image = np.full((300, 300, 3), 245, np.uint8)
    image[100:200, 50:150] = (200, 120, 170)
    found = tissue_mask_from_rgb(image, mpp=8.0)
    assert found.scale == (1.0, 1.0)
    assert found.mask[110:190, 60:140].all() and not found.mask[:90].any() and not found.mask[:, 160:].any()


def test_box_fractions_match_brute_force():
    rng = np.random.default_rng(1)
    mask = rng.random((40, 50)) > 0.6
    tm = TissueMask(mask, scale=(4.0, 4.0), threshold=0.1)
    boxes, expected = [], []
    for _ in range(200):
        c0, r0 = rng.integers(0, 45), rng.integers(0, 35)
        c1, r1 = rng.integers(c0 + 1, 51), rng.integers(r0 + 1, 41)
        boxes.append((c0 * 4, r0 * 4, (c1 - c0) * 4, (r1 - r0) * 4))
        expected.append(mask[r0:r1, c0:c1].mean())
    np.testing.assert_allclose(tm.box_fractions(np.array(boxes)), expected)
    # a box smaller than a mask pixel takes the pixel under its centre; boxes outside count as background
    assert tm.box_fractions(np.array([[9, 9, 1, 1]]))[0] == float(mask[2, 2])
    assert tm.box_fractions(np.array([[-100, -100, 50, 50]]))[0] == 0.0
    half_out = tm.box_fractions(np.array([[-200, 0, 400, 160]]))[0]
    assert half_out == pytest.approx(mask[:, :50].sum() / (100 * 40))


def test_detect_tissue_on_real_slides(wsi):
    with Slide(wsi("CMU-1-Small-Region.svs")) as slide:
        tissue = detect_tissue(slide)
        rows, cols = tissue.mask.shape
        assert cols * tissue.scale[0] == pytest.approx(2220) and rows * tissue.scale[1] == pytest.approx(2967)
        assert 0.2 < tissue.fraction < 0.5  # a skin section with much glass around it
    with Slide(wsi("tcga-cr-7395-01a-01-ts1.svs"), mpp=0.25) as slide:
        assert 0.5 < detect_tissue(slide).fraction < 0.8
