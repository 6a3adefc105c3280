"""Mask images read as boolean arrays (alkit.annotations.masks)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from alkit.annotations import AnnotationFileError
from alkit.annotations.masks import MASK_SUFFIXES, read_mask_image


def test_grey_colour_alpha_and_tiff_masks(tmp_path):
    mask = np.zeros((40, 60), np.uint8)
    mask[5:20, 10:35] = 255
    mask[30:, 50:] = 1
    Image.fromarray(mask).save(tmp_path / "grey.png")
    tifffile.imwrite(tmp_path / "m.tif", mask)
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 1] = mask
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.dstack([rgb, np.full((40, 60), 255, np.uint8)])  # opaque alpha must not make everything inside
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    for name in ("grey.png", "m.tif", "rgb.png", "rgba.png"):
        got = read_mask_image(tmp_path / name)
        assert got.dtype == bool
        np.testing.assert_array_equal(got, mask > 0)
    assert {".png", ".tif", ".tiff"} <= MASK_SUFFIXES


def test_unreadable_and_missing_masks(tmp_path):
    (tmp_path / "bad.png").write_text("this is no image")
    with pytest.raises(AnnotationFileError, match="bad.png: cannot read as a mask image"):
        read_mask_image(tmp_path / "bad.png")
    tifffile.imwrite(tmp_path / "six.tif", np.ones((4, 4, 6), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    with pytest.raises(AnnotationFileError, match="six.tif: a mask image must be one 2-D plane"):
        read_mask_image(tmp_path / "six.tif")
    with pytest.raises(FileNotFoundError, match="absent.png: no such mask file"):
        read_mask_image(tmp_path / "absent.png")
