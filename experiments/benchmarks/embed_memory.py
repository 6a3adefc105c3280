"""Peak memory of ``alkit embed`` against slide size: it must not grow with the slide.

Writes two synthetic pyramidal TIFFs (alkit.synthetic's tiled-JPEG writer, read by OpenSlide as
generic-tiff): a ``--side``² slide (default 65,536² px: 1,048,576 grid cells of 64 px) and one of a
quarter of its area, both mostly tissue (an ellipse of stained texture on glass). Each is embedded in a fresh process
by ``Embedder`` (what ``alkit embed`` runs) on the CPU; the default encoder is a seeded random
projection of each patch's 8 x 8 mean colours to ``--dim`` (512) features, so the run measures the
reader and the store writer rather than a network (``handcrafted`` resizes every patch to 256 px
and takes hours on a 1 M-cell grid on two cores; ``--encoder handcrafted`` runs it anyway). The
script prints the process's peak RSS (its own and its largest reader worker's), the cells
embedded, the wall time and the RSS ratio large / small, which should be near 1; before stores
were written incrementally, the features alone (cells x dim x 4 bytes) were held until the slide ended.

    nice python experiments/benchmarks/embed_memory.py [--side 65536] [--patch 64] [--workers 0]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from alkit.synthetic.tiff import TILE, write_pyramid  # noqa: E402

MPP = 0.25


def texture_tiles(side: int, seed: int = 0):
    """``render_tile(tx, ty)`` for a ``side``² slide: pink-purple texture inside a centred ellipse
    covering most of the slide, white glass outside; a few precomputed tiles, so writing is cheap."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:TILE, 0:TILE].astype(np.float32)
    variants = []
    for k in range(4):
        wave = 0.5 + 0.5 * np.sin(xx / (7 + k) + np.cos(yy / (11 + k)) * 3)
        noise = rng.normal(0, 6, (TILE, TILE, 1))
        pink = np.array([215, 140, 185], np.float32)
        purple = np.array([120, 70, 160], np.float32)
        rgb = pink * (1 - wave[..., None]) + purple * wave[..., None] + noise
        variants.append(np.clip(rgb, 0, 255).astype(np.uint8))
    white = np.full((TILE, TILE, 3), 242, np.uint8)
    centre, radius = side / 2, side * 0.49

    def render(tx: int, ty: int):
        x = (np.arange(TILE) + tx * TILE + 0.5 - centre) / radius
        y = (np.arange(TILE) + ty * TILE + 0.5 - centre) / radius
        inside = (x[None, :] ** 2 + y[:, None] ** 2) <= 1
        if not inside.any():
            return white, 0
        tile = variants[(tx * 7 + ty * 3) % len(variants)]
        if inside.all():
            return tile, TILE * TILE
        return np.where(inside[..., None], tile, white), int(inside.sum())

    return render


def write_slide(path: Path, side: int) -> float:
    t0 = time.perf_counter()
    write_pyramid(path, side, side, MPP, texture_tiles(side), workers=2)
    return time.perf_counter() - t0


#: the child: ``Embedder`` (what ``alkit embed`` runs) with a cheap encoder, then its peak RSS
DRIVER = r"""
import json, resource, sys
import torch
from alkit.embeddings.encoders.base import Encoder
from alkit.embeddings.encoders.registry import register_encoder
from alkit.embeddings.embed import EmbedConfig, Embedder

slide, out, encoder, mpp, patch, workers, batch, dim = sys.argv[1:]


class RandomProjection(Encoder):
    # 8 x 8 area-averaged RGB projected to `dim` by a seeded matrix: costs nothing, writes dim-wide rows
    dim, input_size, mpp, weights_id = int(dim), 8, float(mpp), "bench-projection-v1"

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(192, self.dim, generator=g), persistent=False)

    def encode_images(self, x):
        return x.flatten(1) @ self.proj


@register_encoder("bench-projection")
def _projection(weights):
    return RandomProjection()


config = EmbedConfig(encoder=encoder, mpp=float(mpp), patch=int(patch), num_workers=int(workers),
                     batch_size=int(batch), accelerator="cpu", devices=1)
import time
t0 = time.perf_counter()
Embedder(config, out, progress=False).embed([slide])
took = time.perf_counter() - t0
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("PEAK_RSS_KIB", own, kids, took)
"""


def embed(slide: Path, out: Path, encoder: str, patch: int, workers: int, batch: int, dim: int) -> dict:
    """Embed ``slide`` in a fresh process; its peak RSS (ru_maxrss of the process and of its largest worker)."""
    args = [str(slide), str(out), encoder, str(MPP), str(patch), str(workers), str(batch), str(dim)]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    own, kids, took = done.stdout.split("PEAK_RSS_KIB")[-1].split()[:3]
    import h5py

    [store] = list(out.glob("*.h5"))
    with h5py.File(store, "r") as f:
        n, dim = f["features"].shape
    return {"rss_mib": int(own) / 1024, "worker_rss_mib": int(kids) / 1024, "wall_s": wall, "embed_s": float(took),
            "cells": n, "dim": dim}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=65536, help="side of the large slide in px (level 0)")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--encoder", default="bench-projection",
                        help="bench-projection (a seeded random projection of 8x8 RGB, --dim wide) or any spec")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension of bench-projection")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--keep", default=None, help="folder to keep (and reuse) the slides in")
    args = parser.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="alkit-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = []
        for side in (args.side // 2, args.side):  # a quarter of the area, then the full slide
            slide = work / f"mem_{side}.tif"
            if not slide.exists():
                print(f"writing {slide.name} ({side} x {side} px) ...", flush=True)
                print(f"  written in {write_slide(slide, side):.0f} s", flush=True)
            out = work / f"stores_{side}"
            shutil.rmtree(out, ignore_errors=True)
            r = embed(slide, out, args.encoder, args.patch, args.workers, args.batch_size, args.dim)
            grid = math.ceil(side / args.patch) ** 2
            rows.append(r)
            print(f"{side:6d}² px, grid {grid:9,d} cells, {r['cells']:9,d} embedded × {r['dim']}-d: peak RSS "
                  f"{r['rss_mib']:7.0f} MiB (largest child {r['worker_rss_mib']:5.0f} MiB); embedding "
                  f"{r['embed_s']:5.0f} s ({r['cells'] / r['embed_s']:5.0f} cells/s), process {r['wall_s']:5.0f} s",
                  flush=True)
            shutil.rmtree(out, ignore_errors=True)
        small, large = rows
        print(f"peak RSS ratio large / small: {large['rss_mib'] / small['rss_mib']:.3f} for "
              f"{large['cells'] / small['cells']:.2f}x the cells "
              f"(features alone would be {large['cells'] * large['dim'] * 4 / 2**20:.0f} MiB vs "
              f"{small['cells'] * small['dim'] * 4 / 2**20:.0f} MiB held in memory)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
