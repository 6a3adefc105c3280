"""Reader throughput: per-patch reads (one ``read_region`` per patch) against block reads.

For each patch size, the same tissue cells of one slide are read
  (a) as today's per-patch reader does (``PatchDataset``: one ``Slide.read`` per patch), and
  (b) by blocks (``CohortPatches``: one read per block of neighbouring cells, cut into patches),
in one process (``--workers 0``: patches/s per worker) and through a DataLoader with ``--workers``
workers. Prints patches/s and the speed-up; targets per worker: 600/s at 256 px, 3,000/s at 64 px.

    python experiments/benchmarks/reader_throughput.py [--slide PATH] [--patches 256 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from alkit.embeddings.blocks import BLOCK_PX, CohortPatches, SlideJob, plan_slide  # noqa: E402
from alkit.embeddings.embed import PatchDataset  # noqa: E402
from alkit.wsi.grid import PatchGrid  # noqa: E402
from alkit.wsi.slide import Slide  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", default=None, help="a slide file (default: a synthetic 8192 px slide)")
    parser.add_argument("--patches", type=int, nargs="+", default=[256, 64])
    parser.add_argument("--mpp", type=float, default=None, help="target µm/px (default: the slide's own)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--block-px", type=int, default=BLOCK_PX)
    parser.add_argument("--max-patches", type=int, default=4096, help="per patch size (per-patch reads stop here)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="alkit-reader-"))
    try:
        slide_path = Path(args.slide) if args.slide else _synthetic_slide(tmp)
        with Slide(slide_path) as slide:
            mpp = args.mpp or slide.mpp
            print(f"slide {slide_path.name}: {slide.dimensions[0]} x {slide.dimensions[1]} px, "
                  f"{slide.level_count} levels, {slide.mpp:.4g} µm/px; read at {mpp:.4g} µm/px, "
                  f"blocks of {args.block_px} px")
            for patch in args.patches:
                attrs = {"mpp": mpp, "patch": patch, "stride": patch, "min_tissue": 0.5, "dim": 1}
                job = SlideJob(0, slide_path, None, tmp / "x.h5", attrs)
                cells = plan_slide(slide, job)["coords"][: args.max_patches]
                grid = PatchGrid.for_slide(slide, mpp, patch)
                per_patch = PatchDataset(slide_path, None, grid.cell_boxes(cells), cells, mpp, patch)
                # the block reader over exactly these tissue cells (the first in row-major order)
                blocks = _BlockSubset([job], args.batch_size, args.block_px, len(cells))
                for workers in sorted({0, args.workers}):
                    a = _rate(DataLoader(per_patch, batch_size=args.batch_size, num_workers=workers))
                    b = _rate(DataLoader(blocks, batch_size=None, num_workers=workers))
                    per = max(workers, 1)
                    print(f"{patch:4d} px, {workers} workers: per-patch {a:8.0f} patches/s ({a / per:6.0f} per worker)"
                          f"   blocks {b:8.0f} patches/s ({b / per:6.0f} per worker)   x{b / a:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _BlockSubset(CohortPatches):
    """CohortPatches limited to the slide's first ``limit`` tissue cells (row-major)."""

    def __init__(self, jobs, batch_size: int, block_px: int, limit: int):
        super().__init__(jobs, batch_size, block_px)
        self.limit = limit

    def plan(self, slide, job) -> dict:
        plan = plan_slide(slide, job)
        plan["coords"] = plan["coords"][: self.limit]
        return plan


def _rate(loader: DataLoader) -> float:
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["image"])
    return n / (time.perf_counter() - t0)


def _synthetic_slide(folder: Path) -> Path:
    from alkit.synthetic import generate_cohort

    cohort = generate_cohort(folder / "cohort", n_slides=1, size=8192, seed=0, n_caption_images=0, progress=False)
    return Path(cohort.slides[0].path)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
