"""Slide: metadata, resolution handling, level choice, padding and errors on real files."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import openslide
import pytest

from alkit.wsi.slide import Slide, SlideError


def test_cmu_metadata_and_reads_at_target_mpp(wsi):
    with Slide(wsi("CMU-1-Small-Region.svs")) as slide:
        assert slide.vendor == "aperio"
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.mpp_info.source == "openslide"
        assert {"label", "macro", "thumbnail"} <= set(slide.associated_images)
        assert slide.associated_image("label").dtype == np.uint8
        box = (100, 200, 1000, 800)
        half = slide.read(box, mpp=0.5)
        one = slide.read(box, mpp=1.0)
        assert half.shape == (798, 998, 3) and half.dtype == np.uint8
        assert one.shape == (399, 499, 3)
        # area averaging: the 1 µm/px read is the 0.5 µm/px read shrunk by two, to within JPEG-free rounding
        shrunk = half[:798, :998].reshape(399, 2, 499, 2, 3).mean(axis=(1, 3))
        assert np.abs(one.astype(float) - shrunk).mean() < 2.0


def test_native_read_equals_openslide_pixels(wsi):
    path = wsi("CMU-1-Small-Region.svs")
    with Slide(path) as slide:
        ours = slide.read((300, 400, 256, 128))
    raw = np.asarray(openslide.OpenSlide(str(path)).read_region((300, 400), 0, (256, 128)))[..., :3]
    np.testing.assert_array_equal(ours, raw)


def test_box_past_the_edge_is_padded_white(wsi):
    with Slide(wsi("CMU-1-Small-Region.svs")) as slide:
        w, h = slide.dimensions
        patch = slide.read((w - 100, h - 50, 200, 100))
        assert patch.shape == (100, 200, 3)
        assert (patch[:, 100:] == 255).all() and (patch[50:, :] == 255).all()
        assert (patch[:50, :100] < 250).any()  # the part inside holds tissue or glass, not padding
        assert (slide.read((-300, -300, 200, 200)) == 255).all()
        corner = slide.read((-64, -64, 128, 128))
        assert (corner[:64] == 255).all() and (corner[:, :64] == 255).all()


def test_level_choice_on_generic_tiff_pyramid(wsi):
    with Slide(wsi("boxes.tiff")) as slide:
        assert slide.vendor == "generic-tiff"
        assert slide.level_count == 4
        assert [slide.best_level(d) for d in (1, 1.9, 2, 3.9, 4, 7.9, 8.1, 100)] == [0, 0, 1, 1, 2, 2, 3, 3]
        # a read at twice the level-0 mpp comes from level 1, unresized
        got = slide.read((0, 0, 300, 250), mpp=2 * slide.mpp)
        level1 = np.asarray(openslide.OpenSlide(str(wsi("boxes.tiff"))).read_region((0, 0), 1, (150, 125)))
        np.testing.assert_array_equal(got, level1[..., :3])


def test_small_svs_and_thumbnail(wsi):
    with Slide(wsi("small.svs")) as slide:
        assert slide.dimensions == (16, 16)
        assert slide.read((0, 0, 16, 16)).shape == (16, 16, 3)
        assert slide.thumbnail(max_size=8).shape == (8, 8, 3)
    with Slide(wsi("CMU-1-Small-Region.svs")) as slide:
        thumb = slide.thumbnail(mpp=8.0)
        assert thumb.shape == (round(2967 * 0.499 / 8), round(2220 * 0.499 / 8), 3)


def test_missing_mpp_needs_an_override(wsi):
    path = wsi("tcga-cr-7395-01a-01-ts1.svs")
    with pytest.raises(SlideError) as err:
        Slide(path)
    assert str(path) in str(err.value) and "mpp" in str(err.value)
    with Slide(path, mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.mpp_info.source == "override"
        assert slide.level_count == 2
        assert slide.read((0, 0, 4443, 3567), mpp=1.0).shape == (892, 1111, 3)
    with pytest.raises(SlideError, match="positive"):
        Slide(path, mpp=-1)


def test_fallback_mpp_only_fills_missing_metadata(wsi):
    with Slide(wsi("tcga-cr-7395-01a-01-ts1.svs"), fallback_mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.mpp_info.source == "fallback"
    with Slide(wsi("CMU-1-Small-Region.svs"), fallback_mpp=0.25) as slide:
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_info.source == "openslide"
    clone = pickle.loads(pickle.dumps(Slide(wsi("tcga-cr-7395-01a-01-ts1.svs"), fallback_mpp=0.3)))
    assert clone.mpp == 0.3 and clone.mpp_info.source == "fallback"


def test_slide_pickles_as_path_and_reopens(wsi):
    slide = Slide(wsi("tcga-cr-7395-01a-01-ts1.svs"), mpp=0.3)
    clone = pickle.loads(pickle.dumps(slide))
    assert clone is not slide and clone.mpp == 0.3 and clone.dimensions == slide.dimensions
    np.testing.assert_array_equal(clone.read((10, 10, 32, 32)), slide.read((10, 10, 32, 32)))


@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "empty", "directory"])
def test_bad_inputs_raise_slide_error_naming_the_file(tmp_path, wsi, kind):
    path = tmp_path / "bad.svs"
    expected = {"missing": "no such file", "text": "no TIFF header", "truncated": "truncated or corrupt",
                "empty": "empty", "directory": "directory"}[kind]
    if kind == "text":
        path.write_text("this is not a slide\n")
    elif kind == "truncated":
        data = wsi("CMU-1-Small-Region.svs").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.touch()
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(SlideError) as err:
        Slide(path)
    assert str(path) in str(err.value)
    assert expected in err.value.reason


def test_truncated_generic_tiff_fails_with_reason(tmp_path, wsi):
    path = tmp_path / "boxes.tiff"
    shutil.copy(wsi("boxes.tiff"), path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(SlideError) as err:
        Slide(path).read((0, 0, 300, 250))
    assert str(path) in str(err.value)
