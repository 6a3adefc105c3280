"""Embedding throughput: is the encoder fed, and what does the pipeline cost on top of the forward?

Same encoder, same patches:
  (a) raw forward on in-memory uint8 tensors (preprocessing included), patches/s;
  (b) the whole pipeline from the slide file through the store (Trainer.predict, readers, writer);
  (c) the reader alone (block reads, as the pipeline reads): patches read and decoded per second with
      0, 1, 2, ... workers.
Prints patches/s of each and the ratio b/a; (c) per worker says how many readers one GPU needs.

    python experiments/benchmarks/embed_throughput.py [--encoder resnet18] [--slide PATH] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from alkit.embeddings.blocks import CohortPatches, plan_slide  # noqa: E402
from alkit.embeddings.embed import EmbedConfig, Embedder  # noqa: E402
from alkit.wsi.slide import Slide  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--slide", default=None, help="a slide file (default: a synthetic 8192 px slide)")
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--mpp", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="reader workers for (b)")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--max-patches", type=int, default=1024)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="alkit-bench-"))
    try:
        slide_path = Path(args.slide) if args.slide else _synthetic_slide(tmp)
        embedder = Embedder(EmbedConfig(encoder=args.encoder, mpp=args.mpp, patch=args.patch,
                                        batch_size=args.batch_size, num_workers=args.workers,
                                        accelerator=args.accelerator, devices=1, min_tissue=0.0),
                            tmp / "stores", progress=False)
        encoder, mpp = embedder.encoder, embedder.mpp
        _, job = embedder.job(0, slide_path)
        with Slide(slide_path) as slide:
            plan = plan_slide(slide, job)
        dataset = _FirstCells([job], args.batch_size, args.max_patches)
        n = min(len(plan["coords"]), args.max_patches)
        print(f"slide {slide_path.name}: {n} patches of {args.patch} px at {mpp} µm/px, encoder {encoder.name}, "
              f"torch threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")

        # (c) reader alone (block reads, as the pipeline reads)
        reader_rates = {}
        for workers in sorted({0, 1, 2, args.workers}):
            loader = DataLoader(dataset, batch_size=None, num_workers=workers)
            t0 = time.perf_counter()
            for _ in loader:
                pass
            reader_rates[workers] = n / (time.perf_counter() - t0)

        # (a) raw forward on in-memory tensors
        device = "cuda" if torch.cuda.is_available() and args.accelerator != "cpu" else "cpu"
        model = encoder.to(device).eval()
        batches = [b["image"] for b in DataLoader(dataset, batch_size=None, num_workers=0)]
        with torch.inference_mode():
            model(batches[0].to(device))  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            for b in batches:
                model(b.to(device))
            _sync(device)
            forward = n / (time.perf_counter() - t0)
        model.to("cpu")

        # (b) whole pipeline: slide file -> readers -> predict -> store (a cold cache); the Trainer is
        # built once per cohort, so it is built before the clock starts
        embedder.trainer  # noqa: B018
        t0 = time.perf_counter()
        embedder.predict([job], make_dataset=lambda jobs, batch: _FirstCells(jobs, batch, args.max_patches))
        pipeline = n / (time.perf_counter() - t0)

        print(f"(a) raw forward          {forward:9.1f} patches/s")
        print(f"(b) whole pipeline       {pipeline:9.1f} patches/s   (b/a = {pipeline / forward:.3f}, "
              f"{args.workers} reader workers)")
        for workers, rate in reader_rates.items():
            per = rate / max(workers, 1)
            print(f"(c) reader, {workers} workers    {rate:9.1f} patches/s   ({per:.1f} per process)")
        per_worker = reader_rates[max(reader_rates)] / max(max(reader_rates), 1)
        print(f"readers needed to feed this forward: {forward / per_worker:.1f}; "
              f"for a GPU at 3000 patches/s: {3000 / per_worker:.0f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _FirstCells(CohortPatches):
    """The block reader over a slide's first ``limit`` tissue cells (row-major)."""

    def __init__(self, jobs, batch_size: int, limit: int):
        super().__init__(jobs, batch_size)
        self.limit = limit

    def plan(self, slide, job) -> dict:
        plan = plan_slide(slide, job)
        plan["coords"] = plan["coords"][: self.limit]
        return plan


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _synthetic_slide(folder: Path) -> Path:
    from alkit.synthetic import generate_cohort

    cohort = generate_cohort(folder / "cohort", n_slides=1, size=8192, seed=0, n_caption_images=0, progress=False)
    return Path(cohort.slides[0].path)


if __name__ == "__main__":
    main()
