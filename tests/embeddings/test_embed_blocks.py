"""Block reads: patches cut from one read per block of cells equal today's per-patch ``Slide.read``."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
from torch.utils.data import DataLoader

from alkit.embeddings.blocks import (CohortPatches, SlideJob, block_cells, group_blocks, level_px, rank_jobs,
                                    read_cells)
from alkit.wsi.grid import PatchGrid
from alkit.wsi.slide import Slide


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory):
    from alkit.synthetic import generate_cohort

    cohort = generate_cohort(tmp_path_factory.mktemp("blocks"), n_slides=1, size=1536, seed=5,
                             n_caption_images=0, progress=False)
    return cohort.slides[0].path


def every_cell(grid: PatchGrid) -> np.ndarray:
    return np.argwhere(np.ones(grid.shape, bool))  # edge cells included: they reach past the slide


def direct(slide: Slide, grid: PatchGrid, cells: np.ndarray) -> np.ndarray:
    return np.stack([slide.read(tuple(b), mpp=grid.mpp, size=(grid.patch, grid.patch))
                     for b in grid.cell_boxes(cells)])


@pytest.mark.parametrize("name, factor, patch, stride, block_px", [
    ("CMU-1-Small-Region.svs", 1.0, 64, 48, 512),  # native resolution, stride < patch: one gather per block
    ("CMU-1-Small-Region.svs", 1.0, 128, 128, 2048),
    ("CMU-1-Small-Region.svs", 2.004, 128, 96, 1024),  # 1.0 µm/px from 0.499: resampled from the block
    ("CMU-1-Small-Region.svs", 0.7, 64, 40, 512),  # finer than the slide: bicubic, each from its window
    ("boxes.tiff", 2.0, 32, 24, 256),  # level 1 of a 4-level pyramid, downsample exactly 2
    ("boxes.tiff", 1.3, 48, 32, 256),
    ("synthetic", 2.0, 64, 48, 512),  # level 1 of alkit's pyramidal TIFF
    ("synthetic", 1.0, 224, 160, 2048),
    ("synthetic", 3.0, 48, 48, 1024),  # between levels 1 and 2: level 1, shrunk by 1.5
])
def test_block_cut_patches_equal_direct_reads(wsi, synthetic_slide, name, factor, patch, stride, block_px):
    path = synthetic_slide if name == "synthetic" else wsi(name)
    with Slide(path, fallback_mpp=0.5) as slide:
        grid = PatchGrid.for_slide(slide, slide.mpp * factor, patch, stride)
        cells = every_cell(grid)
        side = block_cells(grid, block_px, level_px(slide, grid))
        blocks = group_blocks(cells, side)
        assert side > 1 and len(blocks) < len(cells)  # blocks really hold several cells
        got = np.empty((len(cells), patch, patch, 3), np.uint8)
        for rows in blocks:
            got[rows] = read_cells(slide, grid, cells[rows])
        np.testing.assert_array_equal(got, direct(slide, grid, cells))
        x, y, w, h = grid.cell_boxes(cells[-1:])[0]
        assert x + w > slide.dimensions[0] or y + h > slide.dimensions[1]  # edge cells reach past the slide


def test_block_cut_patches_are_openslide_pixels_at_native_resolution(wsi):
    """An oracle outside alkit: OpenSlide's own read_region of each cell."""
    path = wsi("CMU-1-Small-Region.svs")
    osr = openslide.OpenSlide(str(path))
    with Slide(path) as slide:
        grid = PatchGrid.for_slide(slide, slide.mpp, 64, 40)
        rows, cols = grid.shape
        cells = np.array([[r, c] for r in range(0, rows - 1, 7) for c in range(0, cols - 1, 5)]
                         + [[r, c] for r in range(3) for c in range(3)])
        got = read_cells(slide, grid, cells[-9:])  # 3 × 3 overlapping neighbours from one read
        for k, (r, c) in enumerate(cells[-9:]):
            ref = np.asarray(osr.read_region((int(c * 40), int(r * 40)), 0, (64, 64)).convert("RGB"))
            np.testing.assert_array_equal(got[k], ref)
        for rows_ in group_blocks(cells, block_cells(grid, 1024)):
            block = read_cells(slide, grid, cells[rows_])
            for patch, (r, c) in zip(block, cells[rows_]):
                ref = np.asarray(osr.read_region((int(c * 40), int(r * 40)), 0, (64, 64)).convert("RGB"))
                np.testing.assert_array_equal(patch, ref)
    osr.close()


def test_levels_with_fractional_downsample_agree_within_rounding(wsi):
    """boxes.tiff's third level is 4.016x: OpenSlide places block and patch pixels a fraction of a pixel
    apart, so block-cut patches are equal to per-patch reads only up to that interpolation."""
    with Slide(wsi("boxes.tiff"), fallback_mpp=0.5) as slide:
        assert abs(slide.level_downsamples[2] - 4) > 1e-3
        grid = PatchGrid.for_slide(slide, slide.mpp * 4.0, 32, 24)
        cells = every_cell(grid)
        got = read_cells(slide, grid, cells)
        diff = np.abs(got.astype(int) - direct(slide, grid, cells))
        assert diff.mean() < 0.5 and (diff > 0).mean() < 0.05 and diff.max() <= 48  # sub-pixel shifts at colour edges


def test_blocks_partition_the_cells_into_grid_aligned_squares():
    rng = np.random.default_rng(3)
    mask = rng.random((37, 53)) < 0.4
    cells = np.argwhere(mask)
    blocks = group_blocks(cells, 8)
    joined = np.concatenate(blocks)
    assert sorted(joined.tolist()) == list(range(len(cells)))  # every cell exactly once
    for rows in blocks:
        assert len({(r // 8, c // 8) for r, c in cells[rows]}) == 1  # one block each
    firsts = [tuple(cells[rows[0]] // 8) for rows in blocks]
    assert firsts == sorted(firsts)  # blocks in row-major order


def test_slide_i_goes_to_rank_i_mod_world_size(tmp_path):
    jobs = [SlideJob(i, tmp_path / f"s{i}.svs", None, tmp_path / f"s{i}.h5", {}) for i in (0, 2, 3, 4, 7)]
    shares = [rank_jobs(jobs, r, 3) for r in range(3)]
    assert [[j.index for j in share] for share in shares] == [[0, 3], [4, 7], [2]]


@pytest.mark.parametrize("workers", [0, 2])
def test_cohort_patches_yield_every_tissue_cell_once_with_its_patch(wsi, synthetic_slide, tmp_path, workers):
    slides = [wsi("CMU-1-Small-Region.svs"), synthetic_slide]
    attrs = {"mpp": 1.0, "patch": 64, "stride": 48, "min_tissue": 0.3, "dim": 4}
    jobs = [SlideJob(i, p, None, tmp_path / f"{i}.h5", attrs) for i, p in enumerate(slides)]
    dataset = CohortPatches(jobs, batch_size=24, block_px=512)
    seen: dict[int, list] = {0: [], 1: []}
    plans: dict[int, dict] = {}
    for batch in DataLoader(dataset, batch_size=None, num_workers=workers):
        pos = batch["slide"]
        if batch["plan"] is not None:
            plans.setdefault(pos, batch["plan"])
        assert pos in plans  # a worker's first batch of a slide carries its plan
        assert 0 < len(batch["index"]) <= 24
        seen[pos].append((batch["index"].numpy(), batch["image"].numpy()))
    for pos, path in enumerate(slides):
        index = np.concatenate([i for i, _ in seen[pos]])
        coords = plans[pos]["coords"]
        assert sorted(index.tolist()) == list(range(len(coords))) and len(coords) >= 12
        with Slide(path) as slide:
            grid = PatchGrid.for_slide(slide, 1.0, 64, 48)
            check = np.random.default_rng(pos).choice(len(index), 12, replace=False)
            images = np.concatenate([im for _, im in seen[pos]])
            np.testing.assert_array_equal(images[check], direct(slide, grid, coords[index[check]]))


class _NoTissue(CohortPatches):
    def plan(self, slide, job) -> dict:
        plan = super().plan(slide, job)
        plan["coords"] = plan["coords"][:0]
        return plan


def test_a_slide_without_tissue_cells_gets_its_empty_store(wsi, tmp_path):
    from alkit.embeddings.embed import EmbedConfig, Embedder
    from alkit.embeddings.store import EmbeddingStore

    batches = list(DataLoader(_NoTissue([SlideJob(0, wsi("boxes.tiff"), 0.5, tmp_path / "x.h5",
                                                  {"mpp": 1.0, "patch": 32, "stride": 32, "min_tissue": 0.5})],
                                        batch_size=8), batch_size=None, num_workers=2))
    assert len(batches) == 1 and len(batches[0]["index"]) == 0 and batches[0]["plan"] is not None
    config = EmbedConfig(encoder="handcrafted", mpp=1.0, patch=32, num_workers=0, accelerator="cpu", devices=1)
    embedder = Embedder(config, tmp_path / "stores", progress=False)
    out, job = embedder.job(0, wsi("CMU-1-Small-Region.svs"))
    embedder.predict([job], make_dataset=_NoTissue)
    store = EmbeddingStore.load(out)
    assert store.features.shape == (0, 97) and store.tissue_fraction.shape == store.grid.shape


def test_a_block_never_reads_more_than_max_block_px_level_pixels(wsi):
    from alkit.embeddings.blocks import MAX_BLOCK_PX

    with Slide(wsi("CMU-1-Small-Region.svs")) as slide:  # one level: 8x coarser reads come from level 0
        grid = PatchGrid.for_slide(slide, slide.mpp * 8, 64)
        side = block_cells(grid, 2048, level_px(slide, grid))
        assert level_px(slide, grid) == pytest.approx(8) and side > 1
        assert ((side - 1) * grid.stride + grid.patch) * grid.scale <= MAX_BLOCK_PX
