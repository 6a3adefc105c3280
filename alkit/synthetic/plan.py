"""The plan: where tissue, tumour, distractors and figures are, at about 1 µm per plan pixel.

:func:`make_layout` draws the tissue pieces (thresholded smooth noise), lymphoid patches, tumour
regions (polygons grown from a few foci inside the tissue until they cover the drawn fraction of
it), then the distractors (:mod:`alkit.synthetic.distractors`) and the mitotic figures /
lookalikes (:mod:`alkit.synthetic.figures`).
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import Polygon
from skimage.measure import find_contours

from alkit.synthetic.distractors import add_distractors
from alkit.synthetic.figures import place_figures
from alkit.synthetic.layout import Layout
from alkit.synthetic.noise import smooth_noise
from alkit.synthetic.stains import V_E, V_H


def _plan_factor(width: int, height: int, mpp: float) -> int:
    """Power of two; about 1 µm per plan pixel, at most ~1024 plan pixels across."""
    by_size = 2 ** max(0, math.ceil(math.log2(max(width, height) / 1024)))
    by_phys = 1
    while by_phys * 2 * mpp <= 1.0 + 1e-9:
        by_phys *= 2
    return int(max(by_size, min(4, by_phys)))


def _remove_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[lab]


def _tissue_bin(rng: np.random.Generator, ph: int, pw: int, mode: str) -> np.ndarray:
    if mode == "full":
        return np.ones((ph, pw), bool)
    m = min(ph, pw)
    yy, xx = np.ogrid[0:ph, 0:pw]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    noise = smooth_noise(rng, (ph, pw), corr=m * 0.16)
    best = None
    for _ in range(30):
        env = np.full((ph, pw), -np.inf, np.float32)
        n = int(rng.integers(1, 4)) if mode == "pieces" else 1
        for _ in range(n):
            if mode == "pieces":
                cx, cy = rng.uniform(0.25, 0.75) * pw, rng.uniform(0.25, 0.75) * ph
                r = rng.uniform(0.22, 0.36) * m / n ** 0.35
            else:  # "partial": one big piece leaving part of the field empty
                cx, cy = rng.uniform(-0.1, 1.1) * pw, rng.uniform(-0.1, 1.1) * ph
                r = rng.uniform(0.55, 0.8) * m
            rx, ry = r, r * rng.uniform(0.55, 1.0)
            th = rng.uniform(0, np.pi)
            dx, dy = xx - np.float32(cx), yy - np.float32(cy)
            xr = (dx * math.cos(th) + dy * math.sin(th)) / rx
            yr = (-dx * math.sin(th) + dy * math.cos(th)) / ry
            np.maximum(env, 1.0 - (xr * xr + yr * yr), out=env)
        mask = _remove_small(env + 0.5 * noise > 0, 0.002 * ph * pw)
        frac = float(mask.mean())
        if best is None or abs(frac - 0.4) < abs(float(best.mean()) - 0.4):
            best = mask
        if 0.2 <= frac <= 0.65:
            break
    return best


def _polys_from_field(fieldv: np.ndarray, level: float, min_area: float,
                      tol: float) -> list[Polygon]:
    """Hole-free polygons (plan coordinates x=col, y=row) enclosing ``fieldv > level``."""
    padded = np.pad(fieldv, 1, constant_values=float(fieldv.min()) - 1.0)
    parts = []
    for c in find_contours(padded, level):
        if len(c) < 4:
            continue
        p = Polygon(np.stack([c[:, 1] - 1, c[:, 0] - 1], axis=1))
        if not p.is_valid:
            p = shapely.make_valid(p)
        for g in getattr(p, "geoms", [p]):
            if isinstance(g, Polygon) and not g.is_empty:
                parts.append(Polygon(g.exterior))
    if not parts:
        return []
    merged = shapely.union_all(parts)
    out = []
    for g in getattr(merged, "geoms", [merged]):
        if isinstance(g, Polygon) and g.area >= min_area:
            s = Polygon(g.exterior).simplify(tol, preserve_topology=True)
            if s.is_valid and s.area >= min_area:
                out.append(s)
    return out


def _plan_to_level0(p: Polygon, f: int) -> np.ndarray:
    xy = np.asarray(p.exterior.coords, dtype=float)[:-1]
    return (xy + 0.5) * f - 0.5


def _tumour_regions(rng: np.random.Generator, lay: Layout,
                    target: float) -> tuple[list[np.ndarray], float]:
    """Tumour polygons (level 0) covering about ``target`` of the tissue; returns (polys, area px)."""
    tb = lay.tissue_bin
    ph, pw = tb.shape
    tissue_px = float(tb.sum())
    target_px = target * tissue_px
    dist = lay.tissue_dist
    margin = lay.um_to_plan(20.0)
    while margin > 1.0 and (dist > margin).sum() < 4 * target_px:
        margin *= 0.6
    inner = dist > margin
    idx = np.flatnonzero(inner)
    if idx.size == 0:
        return [], 0.0
    n_foci = int(rng.integers(1, 4))
    yy, xx = np.ogrid[0:ph, 0:pw]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    base_sigma = math.sqrt(target_px / (n_foci * math.pi))
    fieldv = np.zeros((ph, pw), np.float32)
    for _ in range(n_foci):
        c = int(rng.choice(idx))
        cy, cx = divmod(c, pw)
        s = base_sigma * rng.uniform(0.8, 1.3)
        fieldv += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / np.float32(2 * s * s))
    fieldv += np.float32(0.18) * smooth_noise(rng, (ph, pw), corr=max(base_sigma * 0.6, 2.0))
    fieldv[~inner] = -10.0
    vals = fieldv[inner]
    n_px = int(max(1, min(round(target_px), vals.size)))
    min_area = max(4.0, 0.02 * target_px)
    polys: list[Polygon] = []
    area = 0.0
    for _ in range(10):
        level = float(np.partition(vals, -n_px)[-n_px])
        polys = _polys_from_field(fieldv, level, min_area, tol=0.35)
        area = sum(p.area for p in polys)
        if area <= 0:
            n_px = min(vals.size, n_px * 2)
            continue
        if abs(area / target_px - 1) < 0.015:
            break
        n_px = int(max(1, min(vals.size, round(n_px * target_px / area))))
    f = lay.f
    return [_plan_to_level0(p, f) for p in polys], area * f * f


def _stain_variation(rng: np.random.Generator, lay: Layout) -> None:
    lay.v_h = (V_H * np.float32(rng.uniform(0.88, 1.12))
               * rng.uniform(0.95, 1.05, 3).astype(np.float32)).astype(np.float32)
    lay.v_e = (V_E * np.float32(rng.uniform(0.85, 1.15))
               * rng.uniform(0.95, 1.05, 3).astype(np.float32)).astype(np.float32)


def make_layout(rng: np.random.Generator, width: int, height: int, mpp: float, *,
                tissue: str = "pieces", tumour_fraction: float | None = None,
                tumour_full: bool = False, distractors: dict | None = None,
                figures: bool = True, lymph_level: float | None = None,
                ihc: str | None = None) -> Layout:
    """Plan one slide or crop: tissue, tumour, distractors and figures."""
    f = _plan_factor(width, height, mpp)
    ph, pw = math.ceil(height / f), math.ceil(width / f)
    tb = _tissue_bin(rng, ph, pw, tissue)
    sm = ndimage.gaussian_filter(tb.astype(np.float32), 1.0, mode="nearest")
    if tissue == "full":
        sm[:] = 1.0
    lay = Layout(width, height, float(mpp), f, tb, sm.astype(np.float32),
                 key=int(rng.integers(1, 2 ** 62)), ihc=ihc)
    full = tissue == "full"
    lay.tissue_dist = ndimage.distance_transform_edt(np.pad(tb, 1, constant_values=full))[1:-1, 1:-1]
    _stain_variation(rng, lay)
    tissue_px = float((lay.tissue > 0.5).sum()) * f * f
    # lymphoid patches
    lvl = rng.uniform(0.0, 1.0) if lymph_level is None else lymph_level
    if lvl > 0:
        n = smooth_noise(rng, (ph, pw), corr=lay.um_to_plan(110.0))
        lay.lymph = (np.clip((n - (1.4 - lvl)) * 1.3, 0, 1) * tb).astype(np.float32)
        if not lay.lymph.any():
            lay.lymph = None
    # tumour
    tumour_px = 0.0
    if tumour_full:
        lay.tumour_polys = [np.array([[-f, -f], [width + f, -f], [width + f, height + f],
                                      [-f, height + f]], float)]
        tumour_px = tissue_px
    elif tumour_fraction:
        lay.tumour_polys, tumour_px = _tumour_regions(rng, lay, tumour_fraction)
    if lay.tumour_polys:
        geom = shapely.MultiPolygon([Polygon(p) for p in lay.tumour_polys])
        shapely.prepare(geom)
        lay.tumour_geom = geom
    if distractors:
        add_distractors(rng, lay, distractors)
    else:
        lay.distractors = {"pen": 0, "fold": 0, "bubble": 0, "blur": 0}
    if figures:
        place_figures(rng, lay, tumour_px, tissue_px)
    lay.tissue_dist = None
    return lay
