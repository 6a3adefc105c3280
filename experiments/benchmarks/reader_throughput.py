"""Reader throughput: per-patch reads (one ``read_region`` per patch) against block reads.

For each patch size, the same tissue cells of one slide are read
  (a) as today's per-patch reader does (``PatchDataset``: one ``Slide.read`` per patch), and
  (b) by blocks (``CohortPatches``: one read per block of neighbouring cells, cut into patches),
in one process (``--workers 0``: patches/s per worker) and through a DataLoader with ``--workers``
workers. Prints patches/s over the whole run and in steady state (from the first batch on: without
starting workers and planning the slide, which a cohort pays once per worker and slide) and the speed-up;
targets per worker: 600/s at 256 px, 3,000/s at 64 px. The default slide is a synthetic 24,576² px one
(~2,300 tissue cells at 256 px, written in ~15 s).

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
    parser.add_argument("--slide", default=None, help="a slide file (default: a synthetic 24,576 px slide)")
    parser.add_argument("--size", type=int, default=24576, help="side of the synthetic slide")
    parser.add_argument("--patches", type=int, nargs="+", default=[256, 64])
    parser.add_argument("--mpp", type=float, default=None, help="target µm/px (default: the slide's own)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--block-px", type=int, default=BLOCK_PX)
    parser.add_argument("--max-patches", type=int, default=8192, help="per patch size (per-patch reads stop here)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="alkit-reader-"))
    try:
        slide_path = Path(args.slide) if args.slide else _synthetic_slide(tmp, args.size)
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
                    a, a_steady = _rate(DataLoader(per_patch, batch_size=args.batch_size, num_workers=workers))
                    b, b_steady = _rate(DataLoader(blocks, batch_size=None, num_workers=workers))
                    per = max(workers, 1)
                    print(f"{patch:4d} px, {len(cells)} patches, {workers} workers, patches/s per worker: "
                          f"per-patch {a / per:6.0f} (steady {a_steady / per:6.0f})   "
                          f"blocks {b / per:6.0f} (steady {b_steady / per:6.0f})   x{b / a:.1f}")
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


def _rate(loader: DataLoader) -> tuple[float, float]:
    """Patches/s over the whole iteration, and from the first batch on."""
    t0, n, first = time.perf_counter(), 0, None
    for batch in loader:
        if first is None:
            first = (time.perf_counter(), len(batch["image"]))
        n += len(batch["image"])
    end = time.perf_counter()
    steady = (n - first[1]) / (end - first[0]) if first and end > first[0] else float("nan")
    return n / (end - t0), steady


def _synthetic_slide(folder: Path, size: int) -> Path:
    from alkit.synthetic import generate_cohort

    cohort = generate_cohort(folder / "cohort", n_slides=1, size=size, seed=0, n_caption_images=0, progress=False)
    return Path(cohort.slides[0].path)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
