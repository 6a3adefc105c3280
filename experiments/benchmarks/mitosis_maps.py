"""Dense mitosis grids: similarity map and region selection for a 100k × 100k px slide at 64 px / stride 64.

The mitosis task embeds 64 × 64 px patches at 0.25 µm/px with stride 64: a 100,000 px slide is a
1563 × 1563 grid (2.44M cells); at 40 % tissue about 977k cells are embedded. Stored as float32
(what ``alkit embed`` writes) with C = 512 (a ResNet-18 / CLIP-sized embedding) that is 2.0 GB of
features per slide (``--dtype float16`` halves it). This script

  1. writes such a store with h5py in row chunks to a temporary folder (tissue: a seeded smooth blob
     covering ~40 % of the grid; features: Gaussian noise plus, in a few hundred small hotspots, a
     component along one of the k = 20 prototypes, so the map has structure for the selectors);
  2. times the similarity map streamed from the file (:func:`alkit.prototypes.maps.similarity_map_from_file`,
     chunk rows at a time) and, for contrast, the in-memory path (``EmbeddingStore.load`` +
     :func:`alkit.prototypes.maps.similarity_map`, --no-inmemory skips it);
  3. times :func:`alkit.selection.regions.select_standard` and :func:`alkit.selection.adaptive.select_adaptive` on that map
     with size = 8192 / 64 = 128 cells, n = 5.

Every stage runs in its own child process. Memory: ``tracemalloc`` peak of Python/numpy allocations
during the timed call (h5py's C-level buffers are not traced), and the process's peak resident set
size during the stage (Linux: the VmHWM mark reset through /proc/self/clear_refs after the imports,
so it is the stage's own; elsewhere ``ru_maxrss``), with how much it rose over the RSS after imports
(the page-cached store file is not part of RSS). Figures are logged at INFO.

    .venv/bin/python experiments/benchmarks/mitosis_maps.py [--side 1563] [--dim 512] [--dtype float32]
        [--chunk 16384] [--tmp DIR] [--keep] [--no-inmemory]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
from scipy.ndimage import gaussian_filter

log = logging.getLogger("mitosis_maps")

K_PROTOTYPES = 20
REGION_PX, PATCH_PX, N_REGIONS = 8192, 64, 5
SLIDE_MPP, MPP = 0.25, 0.25


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MB (Linux /proc; NaN elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the next stage's peak is its own (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def prototypes(dim: int, seed: int = 0) -> np.ndarray:
    """``(k, dim)`` float32 unit prototypes."""
    p = np.random.default_rng(seed).standard_normal((K_PROTOTYPES, dim), dtype=np.float32)
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def write_store_file(path: Path, side: int, dim: int, dtype: str, tissue_share: float = 0.4,
                     seed: int = 0, write_chunk: int = 65_536) -> int:
    """Write a synthetic dense store (``side × side`` grid) in row chunks; returns the embedded cells."""
    from alkit import __version__
    from alkit.embeddings.store import FORMAT_VERSION

    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.standard_normal((side, side), dtype=np.float32), side / 12)
    tissue = field >= np.quantile(field, 1.0 - tissue_share)
    coords = np.argwhere(tissue).astype(np.int32)  # row-major, as alkit embed writes them
    n = len(coords)
    # hotspots: ~300 small clusters of cells that lean towards one prototype each
    hot_centres = coords[rng.choice(n, 300, replace=False)]
    hot = np.zeros((side, side), np.int16) - 1
    for i, (r, c) in enumerate(hot_centres):
        hot[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3] = i % K_PROTOTYPES
    protos = prototypes(dim)
    slide_px = int(round(side * PATCH_PX * MPP / SLIDE_MPP))
    attrs = {"encoder": "bench", "weights_id": "bench", "dim": dim, "mpp": MPP, "patch": PATCH_PX,
             "stride": PATCH_PX, "min_tissue": 0.5, "slide": "bench", "slide_dimensions": [slide_px, slide_px],
             "slide_mpp": SLIDE_MPP, "grid_shape": [side, side], "n": n, "alkit_version": __version__,
             "format_version": FORMAT_VERSION}
    with h5py.File(path, "w") as f:
        f.attrs["alkit"] = json.dumps(attrs)
        f.create_dataset("coords", data=coords)
        f.create_dataset("tissue_fraction", data=tissue.astype(np.float16), compression="gzip")
        dset = f.create_dataset("features", shape=(n, dim), dtype=dtype)
        for start in range(0, n, write_chunk):
            stop = min(start + write_chunk, n)
            block = rng.standard_normal((stop - start, dim), dtype=np.float32)
            which = hot[coords[start:stop, 0], coords[start:stop, 1]]
            lean = which >= 0
            block[lean] += 6.0 * protos[which[lean]] * np.sqrt(dim / 16)
            dset[start:stop] = block.astype(dtype)
    return n


def _timed(fn, label: str) -> tuple[object, dict]:
    tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, {"stage": label, "seconds": round(seconds, 3), "tracemalloc_peak_mb": round(peak / 2 ** 20, 1)}


def run_stage(stage: str, store: Path, chunk: int, map_path: Path) -> dict:
    """One measured stage, in this (child) process."""
    from alkit.prototypes.maps import similarity_map, similarity_map_from_file
    from alkit.selection.adaptive import select_adaptive
    from alkit.selection.regions import select_standard
    from alkit.embeddings.store import EmbeddingStore

    protos = prototypes(int(h5py.File(store, "r")["features"].shape[1]))
    size = REGION_PX // PATCH_PX
    if stage.startswith("select"):
        np.load(map_path)  # page the map in before the baseline
    base = _status_mb("VmRSS")
    reset = _reset_peak_rss()
    if stage == "map_file":
        smap, rec = _timed(lambda: similarity_map_from_file(store, protos, chunk), stage)
        np.save(map_path, smap)
        rec["chunk"] = chunk
    elif stage == "map_inmemory":
        smap, rec = _timed(lambda: similarity_map(EmbeddingStore.load(store), protos), stage)
    elif stage in ("select_standard", "select_adaptive"):
        smap = np.load(map_path)
        fn = select_standard if stage == "select_standard" else select_adaptive
        fn(smap, size, N_REGIONS)  # warm-up
        picks, rec = _timed(lambda: fn(smap, size, N_REGIONS), stage)
        rec["regions"] = [list(map(int, p)) for p in picks]
    else:
        raise ValueError(stage)
    peak = _status_mb("VmHWM") if reset else _maxrss_mb()
    rec.update({"peak_rss_mb": round(peak, 1), "rss_before_mb": round(base, 1),
                "peak_rss_added_mb": round(peak - base, 1), "map_shape": list(smap.shape)})
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=1563, help="grid side in cells (1563: a 100k px slide)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--chunk", type=int, default=16_384, help="feature rows per streamed block")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the store (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store file")
    parser.add_argument("--no-inmemory", action="store_true", help="skip the load-everything comparison")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--map", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.stage:  # child: one stage, JSON on stdout
        sys.stdout.write(json.dumps(run_stage(args.stage, args.store, args.chunk, args.map)) + "\n")
        return

    folder = Path(tempfile.mkdtemp(prefix="alkit_mitosis_maps_", dir=args.tmp))
    try:
        store, map_path = folder / "bench.h5", folder / "map.npy"
        start = time.perf_counter()
        n = write_store_file(store, args.side, args.dim, args.dtype)
        log.info("machine: %s, %d cores, Python %s", platform.processor() or platform.machine(), os.cpu_count(),
                 platform.python_version())
        log.info("store: %d x %d grid, %d embedded cells (%.1f%%), C = %d %s, %.2f GB features, written in %.1f s",
                 args.side, args.side, n, 100 * n / args.side ** 2, args.dim, args.dtype,
                 n * args.dim * np.dtype(args.dtype).itemsize / 1e9, time.perf_counter() - start)
        stages = ["map_file", *([] if args.no_inmemory else ["map_inmemory"]), "select_standard", "select_adaptive"]
        for stage in stages:
            cmd = [sys.executable, __file__, "--stage", stage, "--store", str(store), "--map", str(map_path),
                   "--chunk", str(args.chunk)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rec = json.loads(done.stdout.strip().splitlines()[-1])
            log.info("%-16s %8.3f s   tracemalloc peak %7.1f MB   peak RSS %7.1f MB (+%6.1f MB over %6.1f MB)%s",
                     stage, rec["seconds"], rec["tracemalloc_peak_mb"], rec["peak_rss_mb"], rec["peak_rss_added_mb"],
                     rec["rss_before_mb"],
                     f"   regions {rec['regions']}" if "regions" in rec else f"   map {rec['map_shape']}")
    finally:
        if args.keep:
            log.info("kept %s", folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
