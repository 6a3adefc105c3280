"""Mitotic figures and lookalikes on the plan: how many, and where (kept apart and off the distractors).

Deleted records (only in the SlideRunner database, never drawn) sit in plain stroma, so counting
them is a visible error.
"""

from __future__ import annotations

import numpy as np
import shapely
from scipy import ndimage

from alkit.synthetic.layout import LOOKALIKE_CLASS, MITOSIS_CLASS, Figure, Layout
from alkit.synthetic.noise import sample_plan
from alkit.synthetic.sprites import BANK_SIZES, LOOKALIKE, MITOSIS


def _sample_points(rng: np.random.Generator, lay: Layout, n: int, where: str,
                   taken: list[tuple[float, float]], min_sep: float) -> list[tuple[float, float]]:
    """``n`` level-0 points ``min_sep`` apart in the tumour, the non-tumour tissue ("normal"), plain
    stroma (non-tumour, non-lymphoid) or any tissue."""
    if n <= 0:
        return []
    f = lay.f
    tb = lay.tissue_bin
    inner = lay.tissue_dist > lay.um_to_plan(10.0)
    if not inner.any():
        inner = tb
    clutter = _clutter_mask(lay)
    if clutter is not None and (inner & ~clutter).any():
        inner = inner & ~clutter
    geom = lay.tumour_geom
    if where == "tumour":
        if geom is None:
            return []
        shrunk = geom.buffer(-6.0 / lay.mpp)
        g = shrunk if not shrunk.is_empty and shrunk.area > 0.2 * geom.area else geom
        shapely.prepare(g)
        bx0, by0, bx1, by1 = g.bounds
    cand_idx = np.flatnonzero(inner)
    out: list[tuple[float, float]] = []
    placed = np.empty((len(taken) + n, 2))  # every point so far (earlier calls' first), for the spacing test
    placed[:len(taken)] = np.asarray(taken, np.float64).reshape(-1, 2)
    k = len(taken)
    for _ in range(200):
        if len(out) >= n:
            break
        if where == "tumour":
            xs = rng.uniform(bx0, bx1, 64)
            ys = rng.uniform(by0, by1, 64)
            ok = shapely.contains_xy(g, xs, ys)
            if clutter is not None:
                pc = np.clip(((xs + 0.5) / f).astype(int), 0, tb.shape[1] - 1)
                pr = np.clip(((ys + 0.5) / f).astype(int), 0, tb.shape[0] - 1)
                ok &= ~clutter[pr, pc]
        else:
            if cand_idx.size == 0:
                break
            pick = rng.choice(cand_idx, 64)
            r, c = np.divmod(pick, tb.shape[1])
            xs = (c + rng.uniform(0, 1, 64)) * f - 0.5
            ys = (r + rng.uniform(0, 1, 64)) * f - 0.5
            ok = (xs >= 0) & (ys >= 0) & (xs < lay.width) & (ys < lay.height)
            ok &= sample_plan(lay.tissue, f, xs, ys) > 0.5
            if where in ("normal", "stroma") and geom is not None:
                ok &= ~shapely.contains_xy(geom, xs, ys)
                ok &= shapely.distance(geom, shapely.points(xs, ys)) > 10.0 / lay.mpp
            if where == "stroma" and lay.lymph is not None:
                ok &= sample_plan(lay.lymph, f, xs, ys) < 0.02
        for x, y in zip(xs[ok], ys[ok]):  # in order: each accepted point constrains the next candidates
            if ((placed[:k, 0] - x) ** 2 + (placed[:k, 1] - y) ** 2 < min_sep ** 2).any():
                continue
            placed[k] = x, y
            k += 1
            out.append((float(x), float(y)))
            if len(out) >= n:
                break
    taken.extend(out)
    return out


def _clutter_mask(lay: Layout) -> np.ndarray | None:
    """Plan pixels near a distractor (figures are not placed there: nobody annotates under ink)."""
    parts = [lay.pen.max(axis=0) if lay.pen is not None else None, lay.fold, lay.bubble_rim,
             lay.bubble_in, lay.blur]
    parts = [p > 0.02 for p in parts if p is not None]
    if not parts:
        return None
    mask = np.logical_or.reduce(parts)
    return ndimage.distance_transform_edt(~mask) <= lay.um_to_plan(12.0)


def place_figures(rng: np.random.Generator, lay: Layout, tumour_area_px: float,
                  tissue_area_px: float) -> None:
    """Mitotic figures (dense in tumour, ~10x rarer elsewhere), lookalikes and deleted records."""
    mm2 = (lay.mpp * 1e-3) ** 2
    has_t = lay.tumour_geom is not None
    dens = rng.uniform(2.0, 6.0)  # per mm² in tumour
    n_t = max(int(rng.poisson(dens * tumour_area_px * mm2)), int(rng.integers(4, 7))) if has_t else 0
    n_n = int(rng.poisson(dens / 10.0 * (tissue_area_px - tumour_area_px) * mm2))
    n_l = max(int(rng.poisson(12.0 * tissue_area_px * mm2)), 3)
    n_d = int(rng.integers(1, 4)) if rng.random() < 0.6 else 0
    sep = 20.0 / lay.mpp
    taken: list[tuple[float, float]] = []
    figs: list[Figure] = []
    nb_m, nb_l = BANK_SIZES[MITOSIS], BANK_SIZES[LOOKALIKE]
    for x, y in _sample_points(rng, lay, n_t, "tumour", taken, sep):
        figs.append(Figure(x, y, MITOSIS_CLASS, False, True, int(rng.integers(nb_m))))
    for x, y in _sample_points(rng, lay, n_n, "normal", taken, sep):
        figs.append(Figure(x, y, MITOSIS_CLASS, False, False, int(rng.integers(nb_m))))
    for x, y in _sample_points(rng, lay, n_l, "any", taken, sep):
        inside = bool(has_t and shapely.contains_xy(lay.tumour_geom, x, y))
        figs.append(Figure(x, y, LOOKALIKE_CLASS, False, inside, int(rng.integers(nb_l))))
    # deleted records sit in plain stroma, where nothing is drawn: counting them is a visible error
    for x, y in _sample_points(rng, lay, n_d, "stroma", taken, sep):
        inside = bool(has_t and shapely.contains_xy(lay.tumour_geom, x, y))
        cls = MITOSIS_CLASS if rng.random() < 0.7 else LOOKALIKE_CLASS
        figs.append(Figure(x, y, cls, True, inside, 0))
    lay.figures = figs
