"""Patches read by blocks: one ``read_region`` per block of neighbouring cells, cut into patches.

Reading one patch per OpenSlide call pays the call, the tile lookup and the RGBA conversion per
patch, and on dense or overlapping grids decodes the same slide pixels several times. Here the
tissue cells of a slide are grouped into square blocks of about :data:`BLOCK_PX` target pixels
(aligned to the grid: block ``(i, j)`` holds cells ``[i·B, (i+1)·B) × [j·B, (j+1)·B)``, at most
:data:`MAX_BLOCK_PX` level pixels wide); the level pixels under each block are read once, from the
level :meth:`alkit.wsi.slide.Slide.read` picks for the target resolution, and cut into patches,
straight into the batch buffers (in shared memory inside DataLoader workers, so a batch reaches the
main process without a copy). Blocks are small, one 512-px tile of a typical pyramid: decoding the
tiles is the floor of any reader, and a small block decodes few tiles without tissue cells at the
tissue's edge (2048-px blocks read ~20 % fewer patches/s at 256 px, and no more at 64 px).

A patch cut from a block equals the direct read of its cell (:meth:`Slide.read` of the cell box):
both come from the same pyramid level; where the target resolution is one of the slide's levels the
patch is those level pixels, cut from the block by one gather; elsewhere each patch is resampled
from its own window of the block's pixels exactly as :meth:`Slide.read` resamples its canvas. Only
on levels whose downsample is not a whole number (4.016 for a nominal 4x) may OpenSlide place a
block's and a patch's pixels a fraction of a pixel apart (both origins are rounded to level 0).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from alkit.wsi.grid import PatchGrid
from alkit.wsi.slide import Slide, resample
from alkit.wsi.tissue import detect_tissue

#: target side of one block read, in target pixels (the block holds the cells that fit in it)
BLOCK_PX = 512
#: never read more than this side in one call (Slide.read chunks larger reads itself)
MAX_BLOCK_PX = 4096


def block_cells(grid: PatchGrid, block_px: int = BLOCK_PX, level_px: float = 1.0) -> int:
    """Cells per block side ``B``: as many as fit in ``block_px`` target pixels (at least 1), and in
    :data:`MAX_BLOCK_PX` pixels of the level read, which has ``level_px`` pixels per target pixel
    (a single-level slide read at 8x its resolution: 8)."""
    side = min(block_px, MAX_BLOCK_PX / max(level_px, 1.0))
    return max(1, int((side - grid.patch) // grid.stride + 1))


def level_px(slide: Slide, grid: PatchGrid) -> float:
    """Pixels of the level :meth:`Slide.read` reads per target pixel of ``grid``."""
    return grid.scale / slide.level_downsamples[slide.best_level(grid.scale)]


def group_blocks(cells: np.ndarray, side: int) -> list[np.ndarray]:
    """Positions into ``cells`` ((n, 2) row, col) grouped by block, blocks in row-major order and the
    cells of a block in their given order."""
    cells = np.asarray(cells, np.int64).reshape(-1, 2)
    if len(cells) == 0:
        return []
    block_row, block_col = cells[:, 0] // side, cells[:, 1] // side
    ids = block_row * (int(block_col.max()) + 1) + block_col
    order = np.argsort(ids, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(ids[order]) != 0])
    return np.split(order, starts[1:])


def read_cells(slide: Slide, grid: PatchGrid, cells: np.ndarray) -> np.ndarray:
    """The patches of ``cells`` ((k, 2) row, col, close together) as uint8 ``(k, patch, patch, 3)``, from
    one read of the level pixels under their bounding box; each patch is what :meth:`Slide.read` of
    its cell box returns (same level, same canvas pixels, same resampling)."""
    cells = np.asarray(cells, np.int64).reshape(-1, 2)
    out = np.empty((len(cells), grid.patch, grid.patch, 3), np.uint8)
    BlockRead(slide, grid, cells).cut(np.arange(len(cells)), out)
    return out


class BlockRead:
    """The level pixels under a group of cells, read once (one ``read_region``), cut into patches on
    demand: :meth:`cut` writes chosen cells' patches straight into a caller's buffer (a batch), so a
    block split between two batches is neither read twice nor copied through a block-sized array."""

    def __init__(self, slide: Slide, grid: PatchGrid, cells: np.ndarray):
        self.slide, self.grid = slide, grid
        cells = np.asarray(cells, np.int64).reshape(-1, 2)
        p = grid.patch
        self.boxes = grid.cell_boxes(cells)
        if p > MAX_BLOCK_PX or len(cells) == 0:  # Slide.read chunks such patches itself
            self.canvas = None
            return
        x, y, w, h = self.boxes.T
        level = slide.best_level(float(w[0]) / p)  # as Slide.read: level-0 px per output px
        ds = slide.level_downsamples[level]
        lx0, ly0 = np.floor(x / ds).astype(np.int64), np.floor(y / ds).astype(np.int64)
        lx1, ly1 = np.ceil((x + w) / ds).astype(np.int64), np.ceil((y + h) / ds).astype(np.int64)
        bx0, by0 = int(lx0.min()), int(ly0.min())
        self.canvas = slide.level_canvas(level, bx0, by0, int(lx1.max()), int(ly1.max()))
        # each cell's window of the canvas (level pixels, half-open) and its exact box inside that window
        self.window = np.stack([lx0 - bx0, ly0 - by0, lx1 - bx0, ly1 - by0], axis=1)
        self.src = np.stack([x / ds - lx0, y / ds - ly0, (x + w) / ds - lx0, (y + h) / ds - ly0], axis=1)
        # cells whose level pixels are the patch (the slide read at one of its own levels): cut by a gather
        self.exact = (lx1 - lx0 == p) & (ly1 - ly0 == p) & (self.src == np.array([0, 0, p, p])).all(axis=1)

    def cut(self, positions: np.ndarray, out: np.ndarray) -> None:
        """Write the patches of ``cells[positions]`` into ``out`` (``(len(positions), patch, patch, 3)``)."""
        positions = np.asarray(positions, np.int64)
        p = self.grid.patch
        if self.canvas is None:
            for k, i in enumerate(positions):
                out[k] = self.slide.read(tuple(self.boxes[i]), mpp=self.grid.mpp, size=(p, p))
            return
        exact = self.exact[positions]
        if exact.any():
            # the canvas seen as (y, x, patch, patch, 3) windows: one fancy index copies whole patches
            canvas = self.canvas
            h, w = canvas.shape[:2]
            s0, s1, s2 = canvas.strides
            windows = np.lib.stride_tricks.as_strided(canvas, (h - p + 1, w - p + 1, p, p, 3),
                                                      (s0, s1, s0, s1, s2), writeable=False)
            ox, oy = self.window[positions[exact], 0], self.window[positions[exact], 1]
            out[np.flatnonzero(exact)] = windows[oy, ox]
        for k in np.flatnonzero(~exact):  # resampled: each patch from its own window of the shared canvas
            x0, y0, x1, y1 = self.window[positions[k]]
            out[k] = resample(self.canvas[y0:y1, x0:x1], tuple(float(v) for v in self.src[positions[k]]), p, p)


@dataclass(frozen=True)
class SlideJob:
    """One slide to embed: its place in the run's slide list (which rank embeds it), its file, where
    its store goes and the attributes the store is written with (mpp, patch, stride, min_tissue)."""

    index: int
    path: Path
    slide_mpp: float | None
    out: Path
    attrs: dict


def rank_jobs(jobs: Sequence[SlideJob], rank: int, world_size: int) -> list[SlideJob]:
    """The jobs of one rank: slide ``i`` of the run's list goes to rank ``i % world_size``, so every
    rank knows its share without talking to the others, whatever is already finished."""
    return [j for j in jobs if j.index % world_size == rank]


def plan_slide(slide: Slide, job: SlideJob) -> dict:
    """What a slide's store is made of before any patch is read: its tissue cells (row-major), the
    tissue fraction of every grid cell and the grid (from ``job.attrs``)."""
    a = job.attrs
    grid = PatchGrid.for_slide(slide, a["mpp"], a["patch"], a["stride"], tissue=detect_tissue(slide))
    cells = grid.tissue_cells(a["min_tissue"]).astype(np.int32)
    return {"out": str(job.out), "attrs": job.attrs, "coords": cells,
            "tissue": grid.tissue_fraction.astype(np.float16), "grid": grid}


class CohortPatches(IterableDataset):
    """The tissue patches of a list of slides, read by blocks, as ready batches.

    Each item is a batch dict: ``image`` uint8 ``(k, patch, patch, 3)``, ``index`` (k,) rows of the
    slide's store, ``slide`` (position in ``jobs``) and, on a worker's first batch of a slide, ``plan``
    (:func:`plan_slide`, without the grid) so the writer can open the store before its first rows
    arrive. DataLoader workers share a slide's blocks (block ``k`` to worker ``(k + slide) % workers``),
    each with its own OpenSlide handle; a batch never mixes slides. A slide without tissue cells
    yields one empty batch carrying its plan, so its (empty) store is written too.
    """

    def __init__(self, jobs: Sequence[SlideJob], batch_size: int, block_px: int = BLOCK_PX):
        self.jobs, self.batch_size, self.block_px = list(jobs), int(batch_size), int(block_px)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for pos, job in enumerate(self.jobs):
            with Slide(job.path, fallback_mpp=job.slide_mpp) as slide:
                yield from self._slide_batches(slide, job, pos, worker, workers)

    def plan(self, slide: Slide, job: SlideJob) -> dict:
        """The slide's plan (:func:`plan_slide`); a subclass may restrict the cells."""
        return plan_slide(slide, job)

    def _slide_batches(self, slide: Slide, job: SlideJob, pos: int, worker: int, workers: int) -> Iterator[dict]:
        plan = self.plan(slide, job)
        grid, cells = plan.pop("grid"), plan["coords"]
        patch = grid.patch
        if len(cells) == 0:
            if pos % workers == worker:
                yield {"image": torch.zeros((0, patch, patch, 3), dtype=torch.uint8),
                       "index": torch.zeros(0, dtype=torch.int64), "slide": pos, "plan": plan}
            return
        blocks = group_blocks(cells, block_cells(grid, self.block_px, level_px(slide, grid)))
        mine = blocks[(worker - pos) % workers::workers]
        shared = get_worker_info() is not None
        first, batch, index, held = True, None, None, 0
        for k, rows in enumerate(mine):
            block = BlockRead(slide, grid, cells[rows])
            done = 0
            while done < len(rows):
                if batch is None:
                    batch = _batch_buffer((self.batch_size, patch, patch, 3), shared)
                    index = np.empty(self.batch_size, np.int64)
                take = min(self.batch_size - held, len(rows) - done)
                block.cut(np.arange(done, done + take), batch.numpy()[held:held + take])
                index[held:held + take] = rows[done:done + take]
                held, done = held + take, done + take
                if held == self.batch_size or (k == len(mine) - 1 and done == len(rows)):
                    yield {"image": batch[:held], "index": torch.from_numpy(index[:held]), "slide": pos,
                           "plan": plan if first else None}
                    first, batch, held = False, None, 0


def _batch_buffer(shape: tuple[int, ...], shared: bool) -> torch.Tensor:
    """An uninitialised uint8 batch; in a DataLoader worker one in shared memory, which the patches are
    cut into directly, so handing the batch to the main process moves a handle instead of copying it."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)  # what torch's own collate uses
    if not shared or new_shared is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = new_shared(int(np.prod(shape)))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
