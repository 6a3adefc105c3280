"""Level pixels read through OpenSlide's C call equal openslide-python's public read_region, on real files."""

from __future__ import annotations

import ctypes

import numpy as np
import openslide
import pytest

from alkit.wsi.pixels import FAST_READS, read_rgb, rgba_to_rgb

FILES = ["CMU-1-Small-Region.svs", "boxes.tiff", "tcga-cr-7395-01a-01-ts1.svs", "small.svs"]


def public(osr: openslide.OpenSlide, origin, level, size) -> np.ndarray:
    return rgba_to_rgb(np.asarray(osr.read_region(origin, level, size)))


def test_the_fast_path_is_available_with_the_pinned_openslide_python():
    assert FAST_READS, ("openslide-python no longer exposes lowlevel._read_region: every read takes the "
                        "slower public path (same pixels); update alkit.wsi.pixels")


@pytest.mark.parametrize("name", FILES)
def test_every_level_reads_the_same_pixels_as_read_region(wsi, name):
    osr = openslide.OpenSlide(str(wsi(name)))
    try:
        rng = np.random.default_rng(len(name))
        for level, (lw, lh) in enumerate(osr.level_dimensions):
            ds = osr.level_downsamples[level]
            for _ in range(3):
                w, h = int(rng.integers(1, min(lw, 700) + 1)), int(rng.integers(1, min(lh, 500) + 1))
                x, y = int(rng.integers(0, lw - w + 1)), int(rng.integers(0, lh - h + 1))
                origin = (round(x * ds), round(y * ds))
                fast = read_rgb(osr, origin, level, (w, h))
                assert fast.shape == (h, w, 3) and fast.dtype == np.uint8 and fast.flags.c_contiguous
                np.testing.assert_array_equal(fast, public(osr, origin, level, (w, h)))
                np.testing.assert_array_equal(fast, read_rgb(osr, origin, level, (w, h), fast=False))
    finally:
        osr.close()


def test_transparent_pixels_take_the_public_path_and_are_composited_on_white(wsi):
    osr = openslide.OpenSlide(str(wsi("boxes.tiff")))
    try:
        w, h = osr.dimensions
        origin, size = (w - 40, h - 30), (100, 80)  # OpenSlide's pixels past the level are transparent
        got = read_rgb(osr, origin, 0, size)
        np.testing.assert_array_equal(got, public(osr, origin, 0, size))
        assert (got[30:, :] == 255).all() and (got[:, 40:] == 255).all()
        assert not (got[:30, :40] == 255).all()  # the slide's own corner is there
    finally:
        osr.close()


def test_a_closed_slide_fails_as_read_region_does(wsi):
    osr = openslide.OpenSlide(str(wsi("boxes.tiff")))
    osr.close()
    for fast in (True, False):
        with pytest.raises(ctypes.ArgumentError, match="closed slide"):
            read_rgb(osr, (0, 0), 0, (8, 8), fast=fast)
