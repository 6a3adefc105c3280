"""Cell labels from tumour polygons: exact coverage (alkit.wsi.coverage) against plain supersampled rasterisation.

For each geometry and grid it prints the time of :func:`alkit.wsi.coverage.geometry_cell_fractions` and the
relative error of the whole-slide tumour area it implies (sum of cell fractions × cell area against
shapely's area), next to the same figures for rasterising with PIL at ``k × k`` samples per cell.

    .venv/bin/python experiments/benchmarks/oracle_coverage.py [--ncrf ../shared/data/annotations/camelyon16_ncrf_json]

Geometries: the CAMELYON16 polygons (slide size = their bounding box rounded up, 0.243 µm/px) and a
synthetic 100k × 100k px slide with a wiggly tumour field (~28k vertices, boundary ~2.5M px long).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import shapely
from PIL import Image, ImageDraw
from scipy import ndimage
from shapely.geometry import Polygon
from skimage.measure import find_contours

from alkit.wsi.coverage import geometry_cell_fractions
from alkit.wsi.grid import PatchGrid


def supersampled(geom: shapely.Geometry, grid: PatchGrid, k: int) -> np.ndarray:
    """Cell fractions by PIL polygon fill at k × k samples per cell (non-overlapping grids only)."""
    rows, cols = grid.shape
    img = Image.new("L", (cols * k, rows * k), 0)
    draw = ImageDraw.Draw(img)
    scale = k / grid.stride0
    for poly in getattr(geom, "geoms", [geom]):
        draw.polygon([tuple(p) for p in np.asarray(poly.exterior.coords) * scale], fill=1)
        for hole in poly.interiors:
            draw.polygon([tuple(p) for p in np.asarray(hole.coords) * scale], fill=0)
    a = np.asarray(img, np.float64)
    return a.reshape(rows, k, cols, k).mean(axis=(1, 3))


def report(name: str, geom: shapely.Geometry, grid: PatchGrid) -> None:
    t = time.perf_counter()
    frac = geometry_cell_fractions(geom, grid)
    dt = time.perf_counter() - t
    err = float(frac.astype(np.float64).sum()) * grid.size0 ** 2 / geom.area - 1
    line = f"{name:<22} grid {grid.shape[0]:>4}x{grid.shape[1]:<4} exact {dt * 1e3:8.1f} ms  area err {err:+.1e}"
    for k in (4, 16):
        t = time.perf_counter()
        ss = supersampled(geom, grid, k)
        dt = time.perf_counter() - t
        err = float(ss.sum()) * grid.size0 ** 2 / geom.area - 1
        line += f" | PIL {k}x{k} {dt * 1e3:7.1f} ms err {err:+.1e}"
    print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ncrf", type=Path,
                    default=Path(__file__).resolve().parents[3] / "shared/data/annotations/camelyon16_ncrf_json")
    args = ap.parse_args()
    for path in sorted(args.ncrf.glob("*.json")):
        data = json.loads(path.read_text())
        geom = shapely.union_all([shapely.make_valid(Polygon(p["vertices"])) for p in data["positive"]])
        _, _, maxx, maxy = geom.bounds
        grid = PatchGrid((math.ceil(maxx / 256) * 256, math.ceil(maxy / 256) * 256), 0.243, 0.243, 256, 256)
        report(path.stem, geom, grid)
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.standard_normal((1000, 1000)), 12)
    polys = [Polygon(c[:, ::-1] * 100) for c in find_contours(field, 0.002) if len(c) > 3]
    geom = shapely.union_all(shapely.make_valid(np.array(polys, dtype=object)))
    report("synthetic 100k", geom, PatchGrid((100_000, 100_000), 0.25, 0.25, 256, 256))


if __name__ == "__main__":
    main()
